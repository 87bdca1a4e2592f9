"""Where the widgets' passes run: threads here, or a dask scheduler from the settings.

The widgets run the passes of :mod:`napari_stemcluster.core.passes` through
the chunked engine, like ``stemcluster segment``: blocks of patterns with
bounded memory, on the threads of this process by default. An entry
``"execution": {"scheduler": "tcp://host:8786", "memory_limit": "8GB"}`` in
the widget settings file (the user's own file, never a shared parameter
file) sends them to the workers of that dask scheduler instead.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..core.params import check
from ._common import load_settings

#: Key of the execution settings in the widget settings file.
SETTINGS_KEY = "execution"


def execution_settings() -> dict:
    """Checked ``scheduler`` and ``memory_limit`` from the widget settings (may be empty).

    Examples
    --------
    >>> isinstance(execution_settings(), dict)
    True
    """
    saved = load_settings(SETTINGS_KEY)
    out = {}
    for key in ("scheduler", "memory_limit"):
        if saved.get(key) is not None:
            out[key] = check(key, saved[key], "widget settings")
    return out


@contextmanager
def widget_executor():
    """The executor for one widget job and its memory limit (None: default).

    Examples
    --------
    >>> with widget_executor() as (ex, limit):  # doctest: +SKIP
    ...     ex.describe()
    """
    from ..engine import get_executor

    settings = execution_settings()
    with get_executor(settings.get("scheduler")) as ex:
        yield ex, settings.get("memory_limit")
