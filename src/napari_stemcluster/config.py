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

import difflib
import math
import numbers
import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Algorithm parameters and their defaults (those of
#: :func:`napari_stemcluster.core.segment`). ``None`` means "not set".
PARAMETERS = {
    "threshold": "auto",
    "min_cluster_size": 5,
    "q_mask": None,
    "sigma": 0.0,
    "prefilter": False,
    "prefilter_sigma": 3.0,
    "prefilter_radius": 4,
    "corr_range": [0.85, 0.95],
    "prefilter_edge": None,
    "real_mask": "dark_field",
    "mask_min_size": 0,
    "mask_hole_size": 0,
    "average": "raw",
    "mask_source": "raw",
    "linkage": "mean",
}

#: Options of a run that are not part of the algorithm.
RUN_OPTIONS = {
    "times": None,
    "scan_shape": None,
    "scheduler": None,
    "workers": None,
    "memory_limit": None,
}

#: What each key holds, for messages and ``--help``.
DESCRIPTIONS = {
    "threshold": "'auto' or a similarity between -1 and 1",
    "linkage": "'mean' or 'pair'",
    "min_cluster_size": "an integer >= 0",
    "q_mask": "two radii [inner, outer] with 0 <= inner <= outer",
    "sigma": "a number >= 0",
    "prefilter": "true or false",
    "prefilter_sigma": "a number >= 0",
    "prefilter_radius": "an integer >= 0",
    "corr_range": "two correlations [Rmin, Rmax] with Rmin < Rmax",
    "prefilter_edge": "an integer >= 0",
    "real_mask": "'dark_field', 'triangle', 'otsu', 'none' or a mean-similarity threshold",
    "mask_min_size": "an integer >= 0",
    "mask_hole_size": "an integer >= 0",
    "average": "'raw' or 'prefiltered'",
    "mask_source": "'raw' or 'prefiltered'",
    "times": "time steps 'A:B' (or [A, B]) with 0 <= A < B",
    "scan_shape": "[Rx, Ry] or [T, Rx, Ry], positive integers",
    "scheduler": "a dask scheduler address such as 'tcp://host:8786'",
    "workers": "an integer >= 1",
    "memory_limit": "a size such as '4GB' or a number of bytes",
}


#: Keys holding an integer >= 0.
_COUNTS = (
    "min_cluster_size",
    "mask_min_size",
    "mask_hole_size",
    "prefilter_radius",
    "prefilter_edge",
)
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


class ConfigError(ValueError):
    """A parameter file or value that cannot be used.

    Examples
    --------
    >>> issubclass(ConfigError, ValueError)
    True
    """


# ----------------------------------------------------------------------
# validation of single values


def _fail(key, value, where=""):
    prefix = f"{where}: " if where else ""
    raise ConfigError(f"{prefix}{key} must be {DESCRIPTIONS[key]}; got {value!r}")


def _number(key, value, where):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(key, value, where)
    value = float(value)
    if not math.isfinite(value):
        _fail(key, value, where)
    return value


def _integer(key, value, where, minimum=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            _fail(key, value, where)
    value = int(value)
    if value < minimum:
        _fail(key, value, where)
    return value


def _pair(key, value, where):
    return [_number(key, v, where) for v in _pair_any(key, value, where)]


def validate(key: str, value, where: str = ""):
    """The canonical form of one parameter value, or a :class:`ConfigError`.

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
    if key not in PARAMETERS and key not in RUN_OPTIONS:
        _unknown(key, where)
    if value is None:
        return None
    if key == "threshold" and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if key == "linkage":
        if value not in ("mean", "pair"):
            _fail(key, value, where)
        return value
    if key == "threshold":
        v = _number(key, value, where)
        if not -1.0 <= v <= 1.0:
            _fail(key, value, where)
        return v
    if key in _COUNTS:
        return _integer(key, value, where)
    if key == "workers":
        return _integer(key, value, where, minimum=1)
    if key in ("sigma", "prefilter_sigma"):
        v = _number(key, value, where)
        if v < 0:
            _fail(key, value, where)
        return v
    if key == "prefilter":
        if not isinstance(value, bool):
            _fail(key, value, where)
        return value
    if key == "q_mask":
        inner, outer = _pair(key, value, where)
        if not 0 <= inner <= outer:
            _fail(key, value, where)
        return [inner, outer]
    if key == "corr_range":
        lo, hi = _pair(key, value, where)
        if not lo < hi:
            _fail(key, value, where)
        return [lo, hi]
    if key == "real_mask":
        if isinstance(value, str):
            v = value.strip().lower()
            if v in ("triangle", "otsu", "none", "dark_field"):
                return v
            _fail(key, value, where)
        return _number(key, value, where)
    if key in ("average", "mask_source"):
        if value not in ("raw", "prefiltered"):
            _fail(key, value, where)
        return value
    if key == "times":
        if isinstance(value, str):
            return _parse_times(value, where)
        a, b = (_integer(key, v, where) for v in _pair_any(key, value, where))
        if not a < b:
            _fail(key, value, where)
        return [a, b]
    if key == "scan_shape":
        if not isinstance(value, list | tuple) or len(value) not in (2, 3):
            _fail(key, value, where)
        return [_integer(key, v, where, minimum=1) for v in value]
    if key == "scheduler":
        if not isinstance(value, str) or not value.strip():
            _fail(key, value, where)
        return value.strip()
    if key == "memory_limit":
        from .engine.planning import parse_memory

        try:
            parse_memory(value)
        except ValueError:
            _fail(key, value, where)
        return value
    raise AssertionError(key)  # pragma: no cover - every key handled above


def _pair_any(key, value, where):
    if not isinstance(value, list | tuple) or len(value) != 2:
        _fail(key, value, where)
    return value


def _parse_times(text, where):
    a, sep, b = text.partition(":")
    try:
        start, stop = int(a), int(b)
    except ValueError:
        _fail("times", text, where)
    if not sep or not 0 <= start < stop:
        _fail("times", text, where)
    return [start, stop]


def _unknown(key, where):
    known = [*PARAMETERS, *RUN_OPTIONS]
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    prefix = f"{where}: " if where else ""
    raise ConfigError(
        f"{prefix}unknown parameter {key!r}{hint}; expected one of {', '.join(known)}"
    )


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
    text = text.strip()
    if key in ("q_mask", "corr_range", "scan_shape"):
        parts = [p.strip() for p in text.split(",")]
        try:
            value = [int(p) if key == "scan_shape" else float(p) for p in parts if p]
        except ValueError:
            _fail(key, text)
        if len(value) != len(parts):
            _fail(key, text)
    elif key == "real_mask":
        try:
            value = float(text)
        except ValueError:
            value = text
    elif key == "threshold" and text.lower() == "auto":
        value = "auto"
    elif key in ("threshold", "sigma", "prefilter_sigma"):
        try:
            value = float(text)
        except ValueError:
            _fail(key, text)
    elif key in (*_COUNTS, "workers"):
        try:
            value = int(text)
        except ValueError:
            _fail(key, text)
    else:
        value = text
    return validate(key, value)


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


def load_params(path: str | os.PathLike) -> dict:
    """Read and validate a parameter file; returns only the keys it sets.

    Raises
    ------
    ConfigError
        For a missing or malformed file, unknown keys or bad values; the
        message names the file and the key.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "params.toml")
    >>> save_params(p, {"threshold": 0.85, "prefilter": True})
    >>> load_params(p)
    {'threshold': 0.85, 'prefilter': True}
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the parameter file ({e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not a valid TOML file ({e})") from None
    return check_params(data, str(path))


def save_params(path: str | os.PathLike, params: dict) -> None:
    """Write parameters as a TOML file readable by :func:`load_params`.

    Keys set to None are left out (they take their defaults when read).
    The file is replaced atomically.

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
    order = [*PARAMETERS, *RUN_OPTIONS]
    lines = ["# napari-stemcluster segmentation parameters"]
    for key in sorted(clean, key=order.index):
        if clean[key] is not None:
            lines.append(f"{key} = {_toml(clean[key])}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
        prefilter = {
            "sigma": p["prefilter_sigma"],
            "radius": p["prefilter_radius"],
            "corr_range": tuple(p["corr_range"]),
            "edge": p["prefilter_edge"],
        }
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
        out["prefilter_sigma"] = pre.get("sigma", PARAMETERS["prefilter_sigma"])
        out["prefilter_radius"] = pre.get("radius", PARAMETERS["prefilter_radius"])
        out["corr_range"] = list(pre.get("corr_range", PARAMETERS["corr_range"]))
        if pre.get("edge") is not None:
            out["prefilter_edge"] = pre["edge"]
    return check_params(out)
