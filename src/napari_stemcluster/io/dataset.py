"""The data model every reader returns: a lazy cube with its calibration."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._lazy import FrameCube, LazyArray, as_dask, choose_chunks
from .errors import StemFileError

#: Units spelled the way detector software writes them, mapped to names that
#: napari (pint) understands. "A" is the angstrom in microscopy files, not the
#: ampere.
_UNIT_ALIASES = {
    "a": "angstrom",
    "å": "angstrom",
    "ang": "angstrom",
    "angstroms": "angstrom",
    "pixels": "pixel",
    "px": "pixel",
    "a^-1": "1/angstrom",
    "å^-1": "1/angstrom",
    "1/a": "1/angstrom",
    "nm^-1": "1/nm",
    "": "pixel",
}


def normalize_units(units: str | bytes | None) -> str:
    """Return ``units`` in a spelling napari understands (``"A"`` -> angstrom).

    Examples
    --------
    >>> normalize_units("A")
    'angstrom'
    >>> normalize_units(b"nm")
    'nm'
    """
    if units is None:
        return "pixel"
    if isinstance(units, bytes):
        units = units.decode("utf-8", "replace")
    u = str(units).strip()
    return _UNIT_ALIASES.get(u.lower(), u)


@dataclass
class Calibration:
    """Pixel sizes and units of a cube.

    Attributes
    ----------
    r_pixel_size : float
        Real-space step between scan positions (both scan axes).
    r_units : str
        Units of ``r_pixel_size`` ("pixel" when uncalibrated).
    q_pixel_size : float
        Size of one detector pixel in reciprocal space.
    q_units : str
        Units of ``q_pixel_size``.
    t_step : float or None
        Time between scans of a time series, if known.
    t_units : str or None
        Units of ``t_step``.

    Examples
    --------
    >>> cal = Calibration(r_pixel_size=0.5, r_units="nm")
    >>> Calibration.from_dict(cal.as_dict()) == cal
    True
    """

    r_pixel_size: float = 1.0
    r_units: str = "pixel"
    q_pixel_size: float = 1.0
    q_units: str = "pixel"
    t_step: float | None = None
    t_units: str | None = None

    def __post_init__(self):
        for name in ("r_pixel_size", "q_pixel_size"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                v = 1.0  # an unset or broken calibration: fall back to pixels
            setattr(self, name, v)
        if self.t_step is not None:
            t = float(self.t_step)
            self.t_step = t if math.isfinite(t) and t > 0 else None

    def as_dict(self) -> dict:
        """Plain, JSON-serialisable form (the form stored in layer metadata).

        Examples
        --------
        >>> Calibration().as_dict()["r_units"]
        'pixel'
        """
        return {
            "r_pixel_size": self.r_pixel_size,
            "r_units": self.r_units,
            "q_pixel_size": self.q_pixel_size,
            "q_units": self.q_units,
            "t_step": self.t_step,
            "t_units": self.t_units,
        }

    @classmethod
    def from_dict(cls, d: dict | Calibration | None) -> Calibration:
        """Build from :meth:`as_dict` output (unknown keys are ignored).

        Examples
        --------
        >>> Calibration.from_dict({"r_pixel_size": 2.0}).r_pixel_size
        2.0
        """
        if d is None:
            return cls()
        if isinstance(d, Calibration):
            return d
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in dict(d).items() if k in keys})

    def real_space_scale(self, ndim: int) -> tuple[tuple[float, ...], tuple[str, ...]]:
        """napari ``scale`` and ``units`` of a real-space layer of ``ndim`` axes.

        A leading time axis (``ndim == 3``) gets the time step (or 1).

        Examples
        --------
        >>> Calibration(r_pixel_size=0.5, r_units="A").real_space_scale(3)
        ((1.0, 0.5, 0.5), ('pixel', 'angstrom', 'angstrom'))
        """
        r = (self.r_pixel_size, self.r_pixel_size)
        ru = (normalize_units(self.r_units),) * 2
        if ndim == 2:
            return r, ru
        t = self.t_step if self.t_step is not None else 1.0
        tu = normalize_units(self.t_units) if self.t_step is not None else "pixel"
        return (t, *r), (tu, *ru)


@dataclass
class StemDataset:
    """A 4D or 5D-STEM cube on disk, read lazily, with what describes it.

    Attributes
    ----------
    cube : dask.array.Array
        ``(Rx, Ry, Qx, Qy)`` or ``(T, Rx, Ry, Qx, Qy)``; chunks hold whole
        patterns and one time step, aligned with the file's chunks.
    calibration : Calibration
        Real/reciprocal pixel sizes and units, time step if known.
    path : Path or None
        The file opened (None for data made in memory).
    dataset : str or None
        Internal path of the data inside the file (HDF5), if any.
    format : str
        One of "emd", "hdf5", "arina", "merlin", "npy", "memory".
    flatfield : ndarray of float32 or None
        Per-pixel gain correction factors (multiply), Arina/EIGER only.
    pixel_mask : ndarray of uint32 or None
        Nonzero marks a defective pixel (Arina/EIGER only).
    notes : list of str
        Remarks made while opening (e.g. which of several datasets was taken).
    metadata : dict
        Small format-specific values (detector settings), JSON-serialisable.
    source : LazyArray or None
        The picklable array-like the cube reads from.

    Examples
    --------
    >>> import numpy as np
    >>> ds = StemDataset.from_array(np.zeros((2, 3, 4, 5), np.uint16))
    >>> ds.scan_shape, ds.detector_shape
    ((2, 3), (4, 5))
    """

    cube: Any
    calibration: Calibration = field(default_factory=Calibration)
    path: Path | None = None
    dataset: str | None = None
    format: str = "memory"
    flatfield: np.ndarray | None = None
    pixel_mask: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    source: LazyArray | None = None

    # ------------------------------------------------------------------
    @classmethod
    def from_array(
        cls,
        data,
        calibration: Calibration | dict | None = None,
        *,
        name: str = "memory",
        **kwargs,
    ) -> StemDataset:
        """Wrap an in-memory (or dask) 4D/5D array as a dataset.

        Examples
        --------
        >>> import numpy as np
        >>> StemDataset.from_array(np.ones((1, 2, 3, 4))).cube.chunksize
        (1, 2, 3, 4)
        """
        import dask.array as da

        if len(getattr(data, "shape", ())) not in (4, 5):
            raise StemFileError(
                f"{name}: expected a 4D (Rx, Ry, Qx, Qy) or 5D (T, Rx, Ry, Qx, Qy) "
                f"array; got shape {tuple(getattr(data, 'shape', ()))}"
            )
        if isinstance(data, da.Array):
            cube = data.rechunk({data.ndim - 2: -1, data.ndim - 1: -1})
        else:
            data = np.asarray(data)
            chunks = choose_chunks(data.shape, data.dtype.itemsize)
            cube = da.from_array(data, chunks=chunks, name=f"stem-{name}-{id(data):x}")
        return cls(
            cube=cube,
            calibration=Calibration.from_dict(calibration),
            format="memory",
            **kwargs,
        )

    # ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.cube.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.cube.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_time_series(self) -> bool:
        """True for a 5D ``(T, Rx, Ry, Qx, Qy)`` cube."""
        return self.ndim == 5

    @property
    def scan_shape(self) -> tuple[int, ...]:
        """``(Rx, Ry)``, or ``(T, Rx, Ry)`` for a time series."""
        return self.shape[:-2]

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    # ------------------------------------------------------------------
    def describe(self) -> dict:
        """Shape, dtype, chunks, size and calibration, without reading data.

        Examples
        --------
        >>> import numpy as np
        >>> StemDataset.from_array(np.zeros((2, 2, 4, 4), np.uint8)).describe()["bytes"]
        64
        """
        return {
            "path": None if self.path is None else str(self.path),
            "format": self.format,
            "dataset": self.dataset,
            "shape": self.shape,
            "dtype": str(self.dtype),
            "scan_shape": self.scan_shape,
            "detector_shape": self.detector_shape,
            "chunks": tuple(int(c) for c in self.cube.chunksize),
            "n_chunks": int(np.prod(self.cube.numblocks)),
            "bytes": self.nbytes,
            "calibration": self.calibration.as_dict(),
            "flatfield": self.flatfield is not None,
            "pixel_mask": self.pixel_mask is not None,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """A few human-readable lines (used by the GUI and the CLI).

        Examples
        --------
        >>> import numpy as np
        >>> print(StemDataset.from_array(np.zeros((2, 2, 4, 4))).summary().splitlines()[0])
        format: memory
        """
        d = self.describe()
        cal = self.calibration
        lines = [f"format: {d['format']}"]
        if d["dataset"]:
            lines.append(f"dataset: {d['dataset']}")
        kind = "time series (T, Rx, Ry)" if self.is_time_series else "scan (Rx, Ry)"
        lines += [
            f"{kind}: {d['scan_shape']}",
            f"detector (Qx, Qy): {d['detector_shape']}",
            f"dtype: {d['dtype']}, size: {_human_bytes(d['bytes'])}",
            f"chunks: {d['chunks']} ({d['n_chunks']} chunks)",
            f"R pixel: {cal.r_pixel_size:g} {cal.r_units}, "
            f"Q pixel: {cal.q_pixel_size:g} {cal.q_units}",
        ]
        if cal.t_step is not None:
            lines.append(f"time step: {cal.t_step:g} {cal.t_units or ''}".rstrip())
        if self.flatfield is not None or self.pixel_mask is not None:
            have = [
                n
                for n, a in (("flatfield", self.flatfield), ("pixel mask", self.pixel_mask))
                if a is not None
            ]
            lines.append("detector corrections available: " + ", ".join(have))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def read_pattern(self, index: tuple[int, ...]) -> np.ndarray:
        """One diffraction pattern, read straight from the file.

        ``index`` is ``(rx, ry)`` or ``(t, rx, ry)``.

        Examples
        --------
        >>> import numpy as np
        >>> ds = StemDataset.from_array(np.arange(16).reshape(2, 2, 2, 2))
        >>> ds.read_pattern((1, 0)).tolist()
        [[8, 9], [10, 11]]
        """
        index = tuple(int(i) for i in index)
        if len(index) != len(self.scan_shape):
            raise IndexError(
                f"pattern index needs {len(self.scan_shape)} values "
                f"{'(t, rx, ry)' if self.is_time_series else '(rx, ry)'}; got {index}"
            )
        if self.source is not None:
            return np.asarray(self.source[index])
        return np.asarray(self.cube[index].compute())

    def corrected_cube(self, *, flatfield: bool = True, pixel_mask: bool = True):
        """The cube with the detector's flatfield and pixel mask applied, lazily.

        Defective pixels (nonzero ``pixel_mask``) become 0; the flatfield
        multiplies every pattern and makes the result float32. Nothing is
        read until the returned dask array is computed.

        Examples
        --------
        >>> import numpy as np
        >>> ds = StemDataset.from_array(np.ones((1, 1, 2, 2), np.uint32))
        >>> ds.pixel_mask = np.array([[0, 1], [0, 0]], np.uint32)
        >>> ds.corrected_cube().compute()[0, 0].tolist()
        [[1, 0], [1, 1]]
        """
        cube = self.cube
        mask = self.pixel_mask if pixel_mask else None
        ff = self.flatfield if flatfield else None
        if mask is None and ff is None:
            return cube
        keep = None if mask is None else (np.asarray(mask) == 0)
        gain = None if ff is None else np.asarray(ff, dtype=np.float32)
        dtype = np.float32 if gain is not None else cube.dtype

        def _apply(block):
            out = block.astype(np.float32) * gain if gain is not None else block.copy()
            if keep is not None:
                out *= keep.astype(out.dtype)
            return out

        return cube.map_blocks(_apply, dtype=dtype)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------
# shared helpers of the readers


#: How to give a scan shape, in every front end's words.
SCAN_SHAPE_HINT = (
    "; give the scan shape: scan_shape=(Rx, Ry) (or (T, Rx, Ry) for a time series) "
    "in Python, --scan-shape RX,RY on the command line, or the Scan shape field of "
    "the 'Open 4D-STEM file' widget in napari"
)


def check_scan_shape_arg(scan_shape, where: str) -> tuple[int, ...] | None:
    """Validate a user scan shape: None, or 2 (Rx, Ry) or 3 (T, Rx, Ry) ints > 0.

    Examples
    --------
    >>> check_scan_shape_arg([4, "2"], "scan.mib")
    (4, 2)
    """
    if scan_shape is None:
        return None
    try:
        shape = tuple(int(s) for s in scan_shape)
    except (TypeError, ValueError):
        raise StemFileError(
            f"{where}: scan_shape must be 2 integers (Rx, Ry) or 3 (T, Rx, Ry); got {scan_shape!r}"
        ) from None
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
        raise StemFileError(
            f"{where}: scan_shape must be 2 positive integers (Rx, Ry) or 3 "
            f"(T, Rx, Ry); got {scan_shape!r}"
        )
    return shape


def resolve_scan_shape(
    n_frames: int,
    scan_shape,
    *,
    where: str,
    hint: tuple[int, ...] | None = None,
    square_ok: bool = True,
    notes: list[str] | None = None,
) -> tuple[int, ...]:
    """The scan shape of ``n_frames`` frames stored one after another.

    ``scan_shape`` (from the user) wins; a 2-value shape whose size divides
    the frame count opens a time series of ``n_frames / (Rx * Ry)`` scans.
    Otherwise ``hint`` (from the file's header), then a square scan when
    ``square_ok`` and ``n_frames`` is a perfect square.

    Examples
    --------
    >>> resolve_scan_shape(16, None, where="scan.h5")
    (4, 4)
    >>> resolve_scan_shape(24, (2, 3), where="scan.h5")
    (4, 2, 3)
    """
    user = check_scan_shape_arg(scan_shape, where)
    if user is not None:
        n_user = int(np.prod(user))
        if n_user == n_frames:
            return user
        if len(user) == 2 and n_frames % n_user == 0:
            t = n_frames // n_user
            if notes is not None:
                notes.append(
                    f"{n_frames} frames = {t} scans of {user[0]}x{user[1]}: opened as a time series"
                )
            return (t, *user)
        raise StemFileError(
            f"{where}: scan shape {user} needs {n_user} frames"
            + (" per scan" if len(user) == 2 else "")
            + f" but the file holds {n_frames} frames, which "
            + ("it does not divide" if len(user) == 2 else "does not match")
            + "; give a scan shape (scan_shape=, --scan-shape RX,RY) whose product "
            + ("divides" if len(user) == 2 else "equals")
            + f" {n_frames}"
        )
    if hint is not None and int(np.prod(hint)) == n_frames:
        return tuple(int(h) for h in hint)
    side = math.isqrt(n_frames)
    if square_ok and side * side == n_frames and n_frames > 0:
        if notes is not None:
            notes.append(f"scan shape {side}x{side} assumed from {n_frames} frames")
        return (side, side)
    raise StemFileError(
        f"{where}: holds {n_frames} frames in one flat stack and the scan shape "
        "cannot be read from the file"
        + ("" if not square_ok else f" ({n_frames} is not a perfect square)")
        + SCAN_SHAPE_HINT
    )


def apply_scan_shape(source: LazyArray, scan_shape, *, where: str, notes: list[str]) -> LazyArray:
    """``source`` with the user's scan shape: given to a 3D frame stack
    ``(N, Qx, Qy)``, or reinterpreting the scan axes of a 4D/5D cube.

    Returns ``source`` itself when nothing changes (so its file chunks still
    apply), else a :class:`FrameCube` over it.

    Examples
    --------
    >>> from napari_stemcluster.io._lazy import NpyArray
    >>> src = NpyArray("c.npy", (4, 2, 3, 3), np.uint8)
    >>> apply_scan_shape(src, (2, 4), where="c.npy", notes=[]).shape
    (2, 4, 3, 3)
    """
    user = check_scan_shape_arg(scan_shape, where)
    if source.ndim == 3:
        shape = resolve_scan_shape(source.shape[0], user, where=where, square_ok=False, notes=notes)
        return FrameCube(source, shape)
    if user is None or user == source.shape[:-2]:
        return source
    n = math.prod(source.shape[:-2])
    return FrameCube(source, resolve_scan_shape(n, user, where=where, notes=notes))


def build_dataset(
    source: LazyArray,
    *,
    path: Path,
    dataset: str | None,
    format: str,
    file_chunks: tuple[int, ...] | None = None,
    **kwargs,
) -> StemDataset:
    """Chunk ``source`` and wrap it in a :class:`StemDataset` (reads nothing).

    Examples
    --------
    >>> from napari_stemcluster.io._lazy import NpyArray
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "c.npy")
    >>> np.save(p, np.zeros((2, 2, 3, 3), np.uint8))
    >>> build_dataset(NpyArray(p, (2, 2, 3, 3), np.uint8), path=p, dataset=None,
    ...               format="npy").cube.chunksize
    (2, 2, 3, 3)
    """
    if source.ndim not in (4, 5):
        raise StemFileError(
            f"{path}: dataset {dataset or '(whole file)'} has shape {source.shape}; "
            "expected 4D (Rx, Ry, Qx, Qy) or 5D (T, Rx, Ry, Qx, Qy)"
        )
    if source.dtype.kind not in "uif":
        raise StemFileError(
            f"{path}: dataset {dataset or '(whole file)'} holds {source.dtype} values; "
            "expected integers or floats"
        )
    if 0 in source.shape:
        raise StemFileError(
            f"{path}: dataset {dataset or '(whole file)'} is empty (shape {source.shape})"
        )
    chunks = choose_chunks(source.shape, source.dtype.itemsize, file_chunks)
    from dask.base import tokenize

    name = f"stem-{format}-{tokenize(source, source.shape)}"
    cube = as_dask(source, chunks, name)
    return StemDataset(
        cube=cube, path=path, dataset=dataset, format=format, source=source, **kwargs
    )
