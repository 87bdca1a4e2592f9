"""Virtual detector images: sums of each pattern over a detector mask.

Pure functions on numpy, dask, h5py or any sliceable cube. Sums accumulate
in int64 for integer data (a uint32 pattern summed over a large detector
overflows 32 bits) and float64 for float data. A dask cube gives a lazy dask
image (one output block per input block, so napari computes only the time
step on screen); any other cube is read in blocks of scan rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._validate import block_rows, check_finite_values
from .masking import annular_mask

__all__ = [
    "annular_mask",
    "default_radii",
    "detector_center",
    "detector_mask",
    "detector_radii",
    "virtual_adf",
    "virtual_bf",
    "virtual_image",
]


def detector_center(detector_shape: tuple[int, int]) -> tuple[float, float]:
    """Geometric centre ``(qx, qy)`` of a detector, in pixel coordinates.

    Examples
    --------
    >>> detector_center((4, 5))
    (1.5, 2.0)
    """
    qx, qy = (int(s) for s in detector_shape)
    return (qx - 1) / 2.0, (qy - 1) / 2.0


def default_radii(detector_shape: tuple[int, int]) -> dict[str, float]:
    """Default detector radii from the detector size (pixels).

    With ``r = min(Qx, Qy) / 2`` (the inscribed radius): annular dark field
    from ``r / 4`` to ``r``; bright field up to ``r / 8``. These suit
    nanobeam patterns, whose direct beam is a small disk at the centre;
    pass explicit radii for other geometries.

    Examples
    --------
    >>> default_radii((128, 96))
    {'adf_inner': 12.0, 'adf_outer': 48.0, 'bf_radius': 6.0}
    """
    r = min(int(s) for s in detector_shape) / 2.0
    return {"adf_inner": r / 4.0, "adf_outer": r, "bf_radius": r / 8.0}


def _masked_sum_block(block: np.ndarray, mask: np.ndarray, check: bool) -> np.ndarray:
    acc = np.int64 if block.dtype.kind in "iub" else np.float64
    out = np.sum(block, axis=(-2, -1), where=mask, dtype=acc)
    if check and acc is np.float64:
        check_finite_values(out, "virtual image")
    return out


def virtual_image(
    cube,
    mask: np.ndarray,
    *,
    check_finite: bool = True,
    progress: Callable[[int, int], None] | None = None,
):
    """Sum of every pattern over a detector ``mask``.

    Parameters
    ----------
    cube : array, shape (..., Qx, Qy)
        4D ``(Rx, Ry, Qx, Qy)`` or 5D ``(T, Rx, Ry, Qx, Qy)`` (numpy, dask,
        h5py, memmap). Integer or float.
    mask : ndarray of bool, shape (Qx, Qy)
        Detector pixels to sum.
    check_finite : bool
        Raise ValueError when a sum is NaN or inf (for a dask cube, on
        compute).
    progress : callable(done, total), optional
        Called after each block of rows (numpy/h5py cubes only; a dask cube
        returns immediately without computing).

    Returns
    -------
    image : ndarray or dask.array.Array, shape cube.shape[:-2]
        int64 for integer cubes, float64 for float cubes; lazy for a dask
        cube.

    Examples
    --------
    >>> cube = np.full((2, 3, 4, 4), 2**31, np.uint32)
    >>> virtual_image(cube, np.ones((4, 4), bool))[0, 0]  # no uint32 overflow
    np.int64(34359738368)
    """
    shape = tuple(getattr(cube, "shape", ()))
    if len(shape) not in (4, 5):
        raise ValueError(
            f"cube must be 4D (Rx, Ry, Qx, Qy) or 5D (T, Rx, Ry, Qx, Qy); got shape {shape}"
        )
    dtype = np.dtype(cube.dtype)
    if dtype.kind not in "uifb":
        raise TypeError(f"cube must hold integers or floats; got dtype {dtype}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape[-2:]:
        raise ValueError(f"mask shape {mask.shape} does not match the detector shape {shape[-2:]}")
    if not mask.any():
        raise ValueError("the detector mask selects no pixel")
    acc = np.dtype(np.int64 if dtype.kind in "iub" else np.float64)

    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        da = None
    if da is not None and isinstance(cube, da.Array):
        nd = cube.ndim
        # a block must hold whole patterns
        if len(cube.chunks[-2]) > 1 or len(cube.chunks[-1]) > 1:
            cube = cube.rechunk({nd - 2: -1, nd - 1: -1})
        return cube.map_blocks(
            _masked_sum_block,
            mask,
            check_finite,
            drop_axis=(nd - 2, nd - 1),
            dtype=acc,
            meta=np.empty((0,) * (nd - 2), dtype=acc),
        )

    # numpy, h5py, memmap, ...: blocks of scan rows, never the whole cube
    lead = shape[:-4]  # time axis, if any
    rows = shape[-4]
    out = np.empty(shape[:-2], dtype=acc)
    step = block_rows(shape[-4:], dtype.itemsize)
    steps = [(t, r0) for t in np.ndindex(*lead) for r0 in range(0, rows, step)]
    for done, (t, r0) in enumerate(steps, start=1):
        r1 = min(rows, r0 + step)
        block = cube[(*t, slice(r0, r1))]
        block = np.asarray(block.compute() if hasattr(block, "compute") else block)
        out[(*t, slice(r0, r1))] = _masked_sum_block(block, mask, check_finite)
        if progress is not None:
            progress(done, len(steps))
    return out


def detector_radii(
    detector_shape: tuple[int, int],
    detector: str = "adf",
    inner: float | None = None,
    outer: float | None = None,
) -> tuple[float, float]:
    """``(inner, outer)`` radii of a detector: those given, else :func:`default_radii`.

    For ``"bf"``, ``outer`` is the disk radius and ``inner`` defaults to 0.

    Examples
    --------
    >>> detector_radii((128, 96), "bf")
    (0.0, 6.0)
    """
    d = default_radii(detector_shape)
    if detector == "adf":
        r_in = d["adf_inner"] if inner is None else inner
        r_out = d["adf_outer"] if outer is None else outer
    elif detector == "bf":
        r_in = 0.0 if inner is None else inner
        r_out = d["bf_radius"] if outer is None else outer
    else:
        raise ValueError(f"detector must be 'adf' or 'bf'; got {detector!r}")
    return r_in, r_out


def detector_mask(
    detector_shape: tuple[int, int],
    detector: str = "adf",
    inner: float | None = None,
    outer: float | None = None,
    center: tuple[float, float] | None = None,
) -> np.ndarray:
    """Mask of an annular dark-field (``"adf"``) or bright-field (``"bf"``) detector.

    Radii default to :func:`default_radii` (for ``"bf"``, ``outer`` is the
    disk radius and ``inner`` defaults to 0). When the default radii select
    no pixel (detectors of a few pixels), ADF falls back to the whole
    detector and BF to the pixels nearest the centre; explicit radii that
    select nothing raise ValueError.

    Examples
    --------
    >>> detector_mask((4, 4), "bf", outer=1).astype(int).tolist()
    [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    det = tuple(int(s) for s in detector_shape)
    r_in, r_out = detector_radii(det, detector, inner, outer)
    mask = annular_mask(det, r_in, r_out, center)
    if mask.any():
        return mask
    if inner is not None or outer is not None:
        raise ValueError(
            f"{detector} detector with radii {r_in}..{r_out} selects no pixel of the "
            f"{det[0]}x{det[1]} detector"
        )
    if detector == "adf":
        return np.ones(det, bool)  # too small for an annulus: the whole detector
    cx, cy = detector_center(det) if center is None else center
    dist = np.hypot(np.arange(det[0])[:, None] - cx, np.arange(det[1])[None, :] - cy)
    return dist <= dist.min() + 1e-9


def virtual_adf(
    cube,
    inner: float | None = None,
    outer: float | None = None,
    center: tuple[float, float] | None = None,
    **kwargs,
):
    """Annular dark-field image (radii default to :func:`default_radii`).

    Examples
    --------
    >>> cube = np.ones((2, 2, 8, 8), np.uint16)
    >>> int(virtual_adf(cube, inner=0, outer=100)[0, 0])
    64
    """
    mask = detector_mask(tuple(cube.shape[-2:]), "adf", inner, outer, center)
    return virtual_image(cube, mask, **kwargs)


def virtual_bf(
    cube,
    radius: float | None = None,
    center: tuple[float, float] | None = None,
    **kwargs,
):
    """Bright-field image: sum inside a disk (default radius from the detector).

    Examples
    --------
    >>> cube = np.ones((2, 2, 8, 8), np.uint16)
    >>> int(virtual_bf(cube, radius=1)[0, 0])
    4
    """
    mask = detector_mask(tuple(cube.shape[-2:]), "bf", None, radius, center)
    return virtual_image(cube, mask, **kwargs)
