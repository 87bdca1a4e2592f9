"""Segmentation parameters as a TOML file, shared by the GUI and the command line.

A parameter file is flat ``key = value`` TOML. Its keys are the long options
of ``stemcluster segment`` with ``_`` for ``-``::

    # napari-stemcluster segmentation parameters
    threshold = 0.9
    min_cluster_size = 5
    prefilter = true
    prefilter_sigma = 3.0
    prefilter_radius = 4
    corr_range = [0.85, 0.95]
    q_mask = [10.0, 40.0]
    real_mask = "triangle"

Algorithm parameters (:data:`PARAMETERS`) describe the segmentation; run
options (:data:`RUN_OPTIONS`) say which part of the data to segment and
where. Absent keys take their defaults; unknown keys and bad values are
errors that name the file and the key.
"""

from __future__ import annotations

import math
import numbers
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path

from .core import params as _model
from .core.params import PREFILTER_NAMES, ParameterError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Algorithm parameters and their defaults (those of
#: :func:`napari_stemcluster.core.segment`), from the one parameter model
#: :mod:`napari_stemcluster.core.params`. ``None`` means "not set".
PARAMETERS = {
    p.name: list(p.default) if isinstance(p.default, tuple) else p.default
    for p in _model.PARAMS
    if p.group == "science"
}

#: Options of a run that are not part of the algorithm: which data
#: (``times``, ``scan_shape``) and the execution settings.
RUN_OPTIONS = {p.name: p.default for p in _model.PARAMS if p.group != "science"}

#: Execution settings: never taken from a shared parameter file.
EXECUTION = _model.EXECUTION

#: What each key holds, for messages and ``--help``.
DESCRIPTIONS = {p.name: p.requirement for p in _model.PARAMS}

#: Largest parameter or settings file read (bytes).
MAX_FILE_BYTES = 2**20

#: Keys of ``SegmentationResult.params`` that are parameters as they are.
_SCALARS = (
    "threshold",
    "min_cluster_size",
    "sigma",
    "mask_min_size",
    "mask_hole_size",
    "average",
    "mask_source",
    "linkage",
)


class ConfigError(ParameterError):
    """A parameter file or value that cannot be used.

    Examples
    --------
    >>> issubclass(ConfigError, ValueError)
    True
    """


def validate(key: str, value, where: str = ""):
    """The canonical form of one parameter value, or a :class:`ConfigError`.

    The checks (and messages) are those of
    :func:`napari_stemcluster.core.params.check`.

    Parameters
    ----------
    key : str
        A key of :data:`PARAMETERS` or :data:`RUN_OPTIONS`.
    value
        Its value as read from TOML (or given in Python).
    where : str
        Prefix of error messages (e.g. the file name).

    Examples
    --------
    >>> validate("q_mask", (10, 40))
    [10.0, 40.0]
    >>> validate("real_mask", 0.5)
    0.5
    >>> validate("linkage", "single")
    Traceback (most recent call last):
        ...
    napari_stemcluster.config.ConfigError: linkage must be 'mean' or 'pair'; got 'single'
    """
    return _model.check(key, value, where, ConfigError)


def parse_text(key: str, text: str):
    """A value given as text on the command line, in canonical form.

    Lists are comma separated (``"10,40"``); ``times`` is ``"A:B"``.

    Examples
    --------
    >>> parse_text("corr_range", "0.8,0.9")
    [0.8, 0.9]
    >>> parse_text("times", "2:5")
    [2, 5]
    >>> parse_text("real_mask", "otsu")
    'otsu'
    """
    return _model.parse_text(key, text, error=ConfigError)


# ----------------------------------------------------------------------
# files


def check_params(params: dict, where: str = "") -> dict:
    """Validate every key and value of ``params``; returns the canonical dict.

    Examples
    --------
    >>> check_params({"threshold": 1, "prefilter": True})
    {'threshold': 1.0, 'prefilter': True}
    """
    if not isinstance(params, dict):
        raise ConfigError(f"{where + ': ' if where else ''}parameters must be a table")
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            prefix = f"{where}: " if where else ""
            raise ConfigError(
                f"{prefix}[{key}] tables are not used; write every parameter as a "
                "top-level 'key = value'"
            )
        out[key] = validate(key, value, where)
    return out


def read_small_file(
    path: str | os.PathLike, what: str, limit: int = MAX_FILE_BYTES, error=None
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Device files, FIFOs and directories are refused before anything is
    read, and no more than ``limit + 1`` bytes are ever read, so a path such
    as ``/dev/zero`` (or a symbolic link to it) cannot exhaust memory.

    Raises
    ------
    ConfigError
        (or ``error``) naming the file and what was expected.

    Examples
    --------
    >>> read_small_file("/dev/zero", "parameter file")
    Traceback (most recent call last):
        ...
    napari_stemcluster.config.ConfigError: /dev/zero: the parameter file must be a regular file
    """
    error = error or ConfigError
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{path}: the {what} must be a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if len(data) > limit:
        raise error(f"{path}: the {what} is larger than {limit} bytes; not a {what}")
    return data


def _read_toml(path: Path, what: str) -> dict:
    try:
        text = read_small_file(path, what).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not a valid TOML file ({e})") from None


def load_params(path: str | os.PathLike, *, trust: bool = False) -> dict:
    """Read and validate a parameter file; returns only the keys it sets.

    A parameter file is data that may come from someone else: it may not
    set execution settings (:data:`EXECUTION`: a scheduler address, a
    number of workers, a memory limit), which decide where the data is sent
    and how much of this machine is used. ``trust=True`` (``--trust-config``)
    accepts them with a warning, for files of one's own.

    Raises
    ------
    ConfigError
        For a missing, malformed or oversized file, unknown keys, bad values
        or (without ``trust``) execution settings; the message names the
        file and the key.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "params.toml")
    >>> save_params(p, {"threshold": 0.85, "prefilter": True})
    >>> load_params(p)
    {'threshold': 0.85, 'prefilter': True}
    """
    path = Path(path)
    data = _read_toml(path, "parameter file")
    params = check_params(data, str(path))
    execution = [k for k in params if k in EXECUTION]
    if execution and not trust:
        raise ConfigError(
            f"{path}: {', '.join(execution)}: execution settings are not accepted from "
            "a parameter file (they decide where the data is sent); give them on the "
            "command line or in your settings file, or pass --trust-config for a file "
            "you wrote yourself"
        )
    if execution:
        warnings.warn(
            f"{path}: using execution settings from a parameter file "
            f"({', '.join(execution)}) because it is trusted",
            UserWarning,
            stacklevel=2,
        )
    return params


def settings_path() -> Path:
    """The user's own settings file (execution settings of this machine).

    ``$STEMCLUSTER_SETTINGS`` if set, else
    ``$XDG_CONFIG_HOME/napari-stemcluster/settings.toml`` (default
    ``~/.config/...``).

    Examples
    --------
    >>> settings_path().name
    'settings.toml'
    """
    env = os.environ.get("STEMCLUSTER_SETTINGS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "napari-stemcluster" / "settings.toml"


def load_settings(path: str | os.PathLike | None = None) -> dict:
    """Execution settings from the user's settings file (empty if there is none).

    The file holds only :data:`EXECUTION` keys and must belong to the user
    who runs the program and not be writable by others.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "settings.toml"
    >>> _ = p.write_text("workers = 2")
    >>> load_settings(p)
    {'workers': 2}
    """
    path = settings_path() if path is None else Path(path)
    if not path.exists():
        return {}
    st = path.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise ConfigError(
            f"{path}: the settings file must belong to you and not be writable by others"
        )
    params = check_params(_read_toml(path, "settings file"), str(path))
    other = [k for k in params if k not in EXECUTION]
    if other:
        raise ConfigError(
            f"{path}: a settings file holds only {', '.join(EXECUTION)}; got {', '.join(other)}"
        )
    return params


def save_params(path: str | os.PathLike, params: dict) -> None:
    """Write parameters as a TOML file readable by :func:`load_params`.

    Keys set to None are left out (they take their defaults when read).
    The file is replaced atomically (a uniquely named temporary file in the
    same folder, removed on every error).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "params.toml"
    >>> save_params(p, {"q_mask": [10, 40], "real_mask": "otsu"})
    >>> print(p.read_text())
    # napari-stemcluster segmentation parameters
    q_mask = [10.0, 40.0]
    real_mask = "otsu"
    <BLANKLINE>
    """
    path = Path(path)
    clean = check_params(dict(params), str(path))
    order = list(_model.BY_NAME)
    lines = ["# napari-stemcluster segmentation parameters"]
    for key in sorted(clean, key=order.index):
        if clean[key] is not None:
            lines.append(f"{key} = {_toml(clean[key])}")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically, through a unique temporary file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write_bytes(p, b"x")
    >>> p.read_bytes()
    b'x'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _toml(value) -> str:
    """One TOML value (bool, int, float, str or a flat list of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_string(s: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n"}
    escapes.update({"\f": "\\f", "\r": "\\r"})
    out = []
    for ch in s:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ----------------------------------------------------------------------
# to and from the arguments of segment()


def segment_kwargs(params: dict) -> dict:
    """Keyword arguments of :func:`napari_stemcluster.core.segment` (and of
    :func:`napari_stemcluster.engine.segment_chunked`) from parameters.

    Missing keys take their defaults; run options are ignored.

    Examples
    --------
    >>> kw = segment_kwargs({"prefilter": True, "prefilter_radius": 2,
    ...                      "real_mask": "none"})
    >>> kw["prefilter"]["radius"], kw["real_mask"]
    (2, None)
    """
    p = {**PARAMETERS, **{k: v for k, v in check_params(params).items() if v is not None}}
    prefilter = False
    if p["prefilter"]:
        prefilter = {k: p[name] for k, name in PREFILTER_NAMES.items()}
        prefilter["corr_range"] = tuple(prefilter["corr_range"])
    real_mask = p["real_mask"]
    if real_mask == "none":
        real_mask = None
    return {
        "threshold": p["threshold"],
        "min_cluster_size": p["min_cluster_size"],
        "q_mask": None if p["q_mask"] is None else tuple(p["q_mask"]),
        "sigma": p["sigma"],
        "prefilter": prefilter,
        "real_mask": real_mask,
        "mask_min_size": p["mask_min_size"],
        "mask_hole_size": p["mask_hole_size"],
        "average": p["average"],
        "mask_source": p["mask_source"],
        "linkage": p["linkage"],
    }


def params_from_result(params: dict) -> dict:
    """Parameters (for :func:`save_params`) from ``SegmentationResult.params``.

    Array-valued masks cannot be written to a parameter file; they are
    left out (q_mask) or saved as ``"none"`` (real_mask) and a ConfigError
    is raised only for values that are not understood at all.

    Examples
    --------
    >>> from napari_stemcluster import segment
    >>> import numpy as np
    >>> res = segment(np.ones((3, 3, 4, 4)), prefilter={"radius": 1}, real_mask=None)
    >>> p = params_from_result(res.params)
    >>> p["prefilter"], p["prefilter_radius"], p["real_mask"]
    (True, 1, 'none')
    """
    out = {key: params[key] for key in _SCALARS if key in params}
    q = params.get("q_mask")
    if isinstance(q, list | tuple):
        out["q_mask"] = list(q)
    rm = params.get("real_mask", "triangle")
    out["real_mask"] = "none" if rm is None or str(rm).startswith("array") else rm
    pre = params.get("prefilter")
    out["prefilter"] = bool(pre)
    if pre:
        for k, name in PREFILTER_NAMES.items():
            value = pre.get(k, PARAMETERS[name])
            if value is not None:  # the automatic edge stays unset
                out[name] = list(value) if k == "corr_range" else value
    return check_params(out)
