"""The one declaration of every segmentation parameter.

Each :class:`Param` holds a name, a kind, a default, the allowed range or
choices and a one-line description. Everything else is derived from this
table: the defaults of :func:`~napari_stemcluster.core.segment` and
:func:`~napari_stemcluster.engine.segment_chunked`, the prefilter defaults,
the validation (one message per parameter, the same in Python, in a
parameter file and on the command line), the TOML parameter files of
:mod:`napari_stemcluster.config`, the options and help of ``stemcluster
segment`` and the defaults of the napari widgets.

Parameters come in three groups (:attr:`Param.group`):

``"science"``
    What the segmentation computes. Shareable: written to and read from
    parameter files.
``"data"``
    Which part of a file to segment (time steps, scan shape). Harmless in a
    shared parameter file.
``"execution"``
    Where and with how many resources the work runs (scheduler address,
    workers, memory limit). Accepted from the command line or a local
    settings file only: a parameter file from someone else must not choose
    the machines that receive the data (see the README's security model).
"""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass

#: The largest integer a count parameter may hold (int32 labels and sizes).
MAX_COUNT = 2**31 - 1


class ParameterError(ValueError):
    """A parameter value outside its declared type, range or choices.

    Examples
    --------
    >>> try:
    ...     check("threshold", 2)
    ... except ParameterError as e:
    ...     print(e)
    threshold must be 'auto' or a similarity between -1 and 1; got 2
    """


@dataclass(frozen=True)
class Param:
    """Declaration of one parameter.

    Attributes
    ----------
    name : str
        Key in parameter files; ``--name-with-dashes`` on the command line.
    kind : str
        ``"float"``, ``"int"``, ``"bool"``, ``"choice"``, ``"pair"``
        (two numbers), ``"real_mask"`` (a choice or a number; also the
        threshold, ``"auto"`` or a number), ``"times"``,
        ``"shape"``, ``"address"`` or ``"size"`` (bytes).
    default
        Value when not given (``None``: not set).
    help : str
        One-line description (command-line help, tooltips).
    low, high : float, optional
        Inclusive range of numbers (of each element for pairs).
    choices : tuple of str
        Allowed words for ``"choice"`` and ``"real_mask"``.
    group : {"science", "data", "execution"}
        See the module docstring.
    metavar : str
        Placeholder on the command line.
    prefilter_key : str, optional
        Key in :func:`segment`'s ``prefilter`` dict for prefilter options.
    """

    name: str
    kind: str
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    group: str = "science"
    metavar: str = ""
    prefilter_key: str | None = None

    @property
    def shareable(self) -> bool:
        """True unless this is an execution setting."""
        return self.group != "execution"

    @property
    def requirement(self) -> str:
        """What a valid value is, for error messages."""
        lo, hi = _fmt(self.low), _fmt(self.high)
        k = self.kind
        if self.name == "threshold":
            return f"'auto' or a similarity between {lo} and {hi}"
        if k == "float":
            return f"a number between {lo} and {hi}"
        if k == "int":
            return f"an integer between {lo} and {hi}"
        if k == "bool":
            return "true or false"
        if k == "choice":
            return " or ".join(repr(c) for c in self.choices)
        if k == "real_mask":
            words = ", ".join(repr(c) for c in self.choices)
            return f"{words} or a mean-similarity threshold between {lo} and {hi}"
        if self.name == "q_mask":
            return f"two radii [inner, outer] with {lo} <= inner <= outer <= {hi}"
        if self.name == "corr_range":
            return f"two correlations [Rmin, Rmax] with {lo} <= Rmin < Rmax <= {hi}"
        if k == "times":
            return "time steps 'A:B' (or [A, B]) with 0 <= A < B"
        if k == "shape":
            return f"[Rx, Ry] or [T, Rx, Ry], integers between 1 and {hi}"
        if k == "address":
            return "a dask scheduler address such as 'tcp://host:8786'"
        if k == "size":
            return "a size such as '4GB' or a number of bytes, at most 1 EiB"
        raise AssertionError(k)  # pragma: no cover


def _fmt(v) -> str:
    if v is None:
        return ""
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


#: Every parameter, in the order of parameter files and ``--help``.
PARAMS: tuple[Param, ...] = (
    Param("threshold", "real_mask", "auto",
          "minimum neighbour similarity to join a cluster (auto: from the data, per time step)",
          -1.0, 1.0, choices=("auto",), metavar="S|auto"),
    Param("min_cluster_size", "int", 5, "drop smaller clusters (scan positions)",
          0, MAX_COUNT, metavar="N"),
    Param("q_mask", "pair", None,
          "compare only this annulus of the detector, radii in detector pixels",
          0.0, 65536.0, metavar="INNER,OUTER"),
    Param("sigma", "float", 0.0, "blur patterns before comparing, detector pixels",
          0.0, 256.0, metavar="S"),
    Param("prefilter", "bool", False, "run the correlative prefilter first"),
    Param("prefilter_sigma", "float", 3.0, "prefilter blur in detector pixels",
          0.0, 256.0, metavar="S", prefilter_key="sigma"),
    Param("prefilter_radius", "int", 4, "prefilter neighbourhood radius in scan pixels",
          0, 32, metavar="R", prefilter_key="radius"),
    Param("corr_range", "pair", (0.85, 0.95),
          "prefilter correlation range: weights rise from 0 at Rmin to 1 at Rmax",
          -1.0, 1.0, metavar="RMIN,RMAX", prefilter_key="corr_range"),
    Param("prefilter_edge", "int", None,
          "detector border ignored by the prefilter, pixels (default: 1/16 of the detector)",
          0, 65536, metavar="PX", prefilter_key="edge"),
    Param("prefilter_q_step", "int", 2,
          "prefilter correlates every N-th detector pixel in each direction (1: every pixel)",
          1, 4, metavar="N", prefilter_key="q_step"),
    Param("real_mask", "real_mask", "dark_field",
          "real-space mask: dark-field image, or the mean similarity (automatic, none, a value)",
          -2.0, 2.0, choices=("dark_field", "triangle", "otsu", "none"),
          metavar="dark_field|triangle|otsu|none|VALUE"),
    Param("mask_min_size", "int", 0, "remove mask regions smaller than this",
          0, MAX_COUNT, metavar="N"),
    Param("mask_hole_size", "int", 0, "fill mask holes smaller than this",
          0, MAX_COUNT, metavar="N"),
    Param("average", "choice", "raw", "cube the cluster averages are taken from",
          choices=("raw", "prefiltered"), metavar="raw|prefiltered"),
    Param("mask_source", "choice", "raw",
          "with the prefilter: whose mean similarity the real-space mask thresholds",
          choices=("raw", "prefiltered"), metavar="raw|prefiltered"),
    Param("linkage", "choice", "mean",
          "growth rule: also match the cluster's running mean pattern, or pairs only (paper)",
          choices=("mean", "pair"), metavar="mean|pair"),
    Param("times", "times", None, "time steps A..B-1 of a 5D file (default: all)",
          group="data", metavar="A:B"),
    Param("scan_shape", "shape", None, "scan shape of a flat stack of frames",
          1, MAX_COUNT, group="data", metavar="RX,RY"),
    Param("scheduler", "address", None, "run on the workers of this dask scheduler",
          group="execution", metavar="ADDRESS"),
    Param("workers", "int", None, "run on N local worker processes (default: threads)",
          1, 1024, group="execution", metavar="N"),
    Param("memory_limit", "size", None,
          "memory budget (default: a quarter of RAM); with --scheduler, per worker",
          1, 2.0**60, group="execution", metavar="SIZE"),
)  # fmt: skip

#: Parameters by name.
BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}

#: Defaults of every parameter (``None``: not set).
DEFAULTS: dict[str, object] = {p.name: p.default for p in PARAMS}

#: Names of the parameters that say what is computed (parameter files).
SCIENCE: tuple[str, ...] = tuple(p.name for p in PARAMS if p.group == "science")

#: Names of the execution settings (never from a shared parameter file).
EXECUTION: tuple[str, ...] = tuple(p.name for p in PARAMS if p.group == "execution")

#: Options of ``prefilter=True``: ``correlative_prefilter`` keywords and defaults.
PREFILTER_DEFAULTS: dict[str, object] = {
    p.prefilter_key: p.default for p in PARAMS if p.prefilter_key is not None
}
#: The parameter model's name of each prefilter option (``"radius"`` ->
#: ``"prefilter_radius"``), in declaration order.
PREFILTER_NAMES: dict[str, str] = {
    p.prefilter_key: p.name for p in PARAMS if p.prefilter_key is not None
}


def unknown(key, where: str = "", error=ParameterError):
    """Raise ``error`` for an unknown key, suggesting the closest one.

    Examples
    --------
    >>> try:
    ...     unknown("treshold")
    ... except ParameterError as e:
    ...     print(str(e)[:56])
    unknown parameter 'treshold' (did you mean 'threshold'?)
    """
    close = difflib.get_close_matches(str(key), list(BY_NAME), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    prefix = f"{where}: " if where else ""
    raise error(f"{prefix}unknown parameter {key!r}{hint}; expected one of {', '.join(BY_NAME)}")


def check(key: str, value, where: str = "", error=ParameterError):
    """The canonical form of one parameter value, or ``error`` with one message.

    Parameters
    ----------
    key : str
        A name of :data:`PARAMS`.
    value
        The value, as given in Python or read from TOML.
    where : str
        Prefix of the message (a file name, an option).
    error : type
        Exception class raised (a subclass of :class:`ParameterError`).

    Returns
    -------
    The value in canonical form: floats, ints, lists for pairs; None stays
    None.

    Examples
    --------
    >>> check("q_mask", (10, 40))
    [10.0, 40.0]
    >>> check("real_mask", "OTSU")
    'otsu'
    >>> try:
    ...     check("sigma", 1e308)
    ... except ParameterError as e:
    ...     print(e)
    sigma must be a number between 0 and 256; got 1e+308
    """
    p = BY_NAME.get(key)
    if p is None:
        unknown(key, where, error)
    if value is None:
        return None

    def fail():
        prefix = f"{where}: " if where else ""
        raise error(f"{prefix}{key} must be {p.requirement}; got {value!r}")

    def number(v, integer=False):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            fail()
        integral = isinstance(v, numbers.Integral) or (
            isinstance(v, float) and math.isfinite(v) and v.is_integer()
        )
        if integer and not integral:
            fail()
        v = int(v) if integer else float(v)
        if not math.isfinite(v):
            fail()
        if (p.low is not None and v < p.low) or (p.high is not None and v > p.high):
            fail()
        return v

    def pair(v, integer=False):
        if not isinstance(v, list | tuple) or len(v) != 2:
            fail()
        return [number(x, integer) for x in v]

    k = p.kind
    if k == "float":
        return number(value)
    if k == "int":
        return number(value, integer=True)
    if k == "bool":
        if not isinstance(value, bool):
            fail()
        return value
    if k == "choice":
        if value not in p.choices:
            fail()
        return value
    if k == "real_mask":
        if isinstance(value, str):
            v = value.strip().lower()
            if v not in p.choices:
                fail()
            return v
        return number(value)
    if k == "pair":
        a, b = pair(value)
        if not (a <= b if key == "q_mask" else a < b):
            fail()
        return [a, b]
    if k == "times":
        if isinstance(value, str):
            first, sep, second = value.partition(":")
            try:
                value_ = [int(first), int(second)]
            except ValueError:
                fail()
            if not sep:
                fail()
        else:
            value_ = value
        if not isinstance(value_, list | tuple) or len(value_) != 2:
            fail()
        a, b = value_
        for v in (a, b):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                fail()
        if not 0 <= a < b <= MAX_COUNT:
            fail()
        return [int(a), int(b)]
    if k == "shape":
        if not isinstance(value, list | tuple) or len(value) not in (2, 3):
            fail()
        return [number(v, integer=True) for v in value]
    if k == "address":
        if not isinstance(value, str) or not value.strip():
            fail()
        return value.strip()
    if k == "size":
        n = _bytes(value)
        if n is None or not (p.low <= n <= p.high):
            fail()
        return value
    raise AssertionError(k)  # pragma: no cover


def _bytes(value) -> float | None:
    """Bytes of a size given as a number or text such as "4GB" (None if not a size)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        n = float(value)
    elif isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            n = float(parse_bytes(value.strip()))
        except (ValueError, TypeError, KeyError, OverflowError):
            return None
    else:
        return None
    return n if math.isfinite(n) else None


def parse_text(key: str, text: str, where: str = "", error=ParameterError):
    """A value typed as text (command line), checked by :func:`check`.

    Lists are comma separated (``"10,40"``); ``times`` is ``"A:B"``.

    Examples
    --------
    >>> parse_text("corr_range", "0.8,0.9")
    [0.8, 0.9]
    >>> try:
    ...     parse_text("prefilter_radius", "100000")
    ... except ParameterError as e:
    ...     print(e)
    prefilter_radius must be an integer between 0 and 32; got '100000'
    """
    p = BY_NAME.get(key)
    if p is None:
        unknown(key, where, error)
    text = text.strip()

    def fail():
        prefix = f"{where}: " if where else ""
        raise error(f"{prefix}{key} must be {p.requirement}; got {text!r}")

    convert = {"float": float, "int": int}
    try:
        if p.kind in ("pair", "shape"):
            parts = [s.strip() for s in text.split(",")]
            value = [(int if p.kind == "shape" else float)(s) for s in parts]
        elif p.kind == "real_mask":
            try:
                value = float(text)
            except ValueError:
                value = text
        elif p.kind in convert:
            value = convert[p.kind](text)
        elif p.kind == "bool":
            value = {"true": True, "false": False}.get(text.lower(), text)
        else:
            value = text
    except ValueError:
        fail()
    try:
        return check(key, value, where, error)
    except ParameterError:
        fail()


def prefilter_options(prefilter) -> dict | None:
    """Full, checked :func:`correlative_prefilter` options from ``segment``'s ``prefilter``.

    Examples
    --------
    >>> prefilter_options({"radius": 2})["radius"]
    2
    >>> prefilter_options(False) is None
    True
    """
    if prefilter is False or prefilter is None:
        return None
    if prefilter is True:
        return dict(PREFILTER_DEFAULTS)
    if not isinstance(prefilter, dict):
        raise TypeError(f"prefilter must be a bool or a dict; got {type(prefilter).__name__}")
    unknown_keys = set(prefilter) - set(PREFILTER_DEFAULTS)
    if unknown_keys:
        raise ValueError(
            f"unknown prefilter option(s) {sorted(unknown_keys)}; expected "
            f"{sorted(PREFILTER_DEFAULTS)}"
        )
    out = {**PREFILTER_DEFAULTS, **prefilter}
    for k, name in PREFILTER_NAMES.items():
        if k != "corr_range":
            check(name, out[k])
    checked = check("corr_range", out["corr_range"])
    if checked is not None:
        out["corr_range"] = tuple(checked)
    return out
