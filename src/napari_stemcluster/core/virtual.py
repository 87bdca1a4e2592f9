"""Virtual detector images: sums of each pattern over a detector mask.

Pure functions on numpy, dask, h5py or any sliceable cube. Sums accumulate
in int64 for integer data (a uint32 pattern summed over a large detector
overflows 32 bits) and float64 for float data. A dask cube gives a lazy dask
image (one output block per input block, so napari computes only the time
step on screen); any other cube is read in blocks of scan rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ._validate import block_rows, check_finite_values
from .masking import annular_mask

__all__ = [
    "BINNED_BUDGET",
    "ROI_SHAPES",
    "BinnedCube",
    "VirtualImages",
    "annular_mask",
    "binned_layout",
    "coarse_first_rows",
    "default_radii",
    "detector_center",
    "detector_mask",
    "detector_radii",
    "roi_mask",
    "virtual_adf",
    "virtual_bf",
    "virtual_detector",
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
    shape, dtype, mask = _checked(cube, mask)
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


# ---------------------------------------------------------------------------
# arbitrary detectors: point, circle, annulus, rectangle; centre of mass

#: Detector shapes understood by :func:`roi_mask`.
ROI_SHAPES = ("point", "circle", "annulus", "rectangle")


def roi_mask(detector_shape: tuple[int, int], roi: dict) -> np.ndarray:
    """Boolean detector mask of a virtual-detector region, in detector pixels.

    Parameters
    ----------
    detector_shape : (int, int)
        ``(Qx, Qy)``.
    roi : dict
        ``{"shape": "point", "center": (cx, cy)}``: the pixel nearest the
        centre (clipped to the detector);
        ``{"shape": "circle", "center": ..., "radius": r}``: ``|q - c| <= r``;
        ``{"shape": "annulus", "center": ..., "inner": a, "outer": b}``:
        ``a <= |q - c| <= b``;
        ``{"shape": "rectangle", "start": (x0, y0), "stop": (x1, y1)}``: the
        pixels whose centres lie in ``[x0, x1] x [y0, y1]``.
        ``center`` defaults to the detector centre.

    Returns
    -------
    ndarray of bool, shape (Qx, Qy)
        May select no pixel (a region off the detector).

    Examples
    --------
    >>> roi_mask((4, 4), {"shape": "point", "center": (1.2, 2.9)}).nonzero()
    (array([1]), array([3]))
    >>> roi_mask((3, 4), {"shape": "rectangle", "start": (0, 1), "stop": (1, 2)}).astype(int)
    array([[0, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    det = tuple(int(s) for s in detector_shape)
    kind = roi.get("shape")
    if kind not in ROI_SHAPES:
        raise ValueError(f"detector shape must be one of {ROI_SHAPES}; got {kind!r}")
    center = roi.get("center")
    cx, cy = detector_center(det) if center is None else (float(center[0]), float(center[1]))
    if kind == "point":
        mask = np.zeros(det, bool)
        mask[int(np.clip(round(cx), 0, det[0] - 1)), int(np.clip(round(cy), 0, det[1] - 1))] = True
        return mask
    if kind == "circle":
        return annular_mask(det, 0.0, max(float(roi["radius"]), 0.0), (cx, cy))
    if kind == "annulus":
        inner, outer = sorted((max(float(roi["inner"]), 0.0), max(float(roi["outer"]), 0.0)))
        return annular_mask(det, inner, outer, (cx, cy))
    (x0, y0), (x1, y1) = roi["start"], roi["stop"]
    x0, x1 = sorted((float(x0), float(x1)))
    y0, y1 = sorted((float(y0), float(y1)))
    x = np.arange(det[0])[:, None]
    y = np.arange(det[1])[None, :]
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _as_numpy(block) -> np.ndarray:
    if hasattr(block, "compute"):
        block = block.compute()
    return np.ascontiguousarray(block)


class VirtualImages(NamedTuple):
    """Images of one virtual detector (see :func:`virtual_detector`)."""

    #: Sum of each pattern over the detector, float64.
    intensity: np.ndarray
    #: Centre of mass inside the detector along Qx, in pixels from ``center``.
    com_x: np.ndarray
    #: Centre of mass along Qy.
    com_y: np.ndarray


def virtual_detector(
    cube,
    mask: np.ndarray,
    *,
    center: tuple[float, float] | None = None,
    stride: int = 1,
    strided_reads: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_block: Callable[[tuple, VirtualImages], None] | None = None,
    threads: bool = True,
) -> VirtualImages:
    """Integrated intensity and centre of mass of every pattern over a detector mask.

    Parameters
    ----------
    cube : array, shape (Rx, Ry, Qx, Qy) or (T, Rx, Ry, Qx, Qy)
        numpy, memmap, h5py, dask or any sliceable array; read in blocks of
        scan rows (never whole).
    mask : ndarray of bool, shape (Qx, Qy)
        The detector pixels (any shape, e.g. from :func:`roi_mask`).
    center : (float, float), optional
        Origin of the centre of mass (default: the detector centre).
    stride : int
        Take every ``stride``-th scan row and column only: a coarse image
        read ``stride**2`` times faster, for a first look at large scans.
    strided_reads : bool, optional
        With ``stride > 1``, read only the strided positions (fast for
        numpy and contiguous HDF5 datasets) rather than whole scan rows
        subsampled in memory (faster for chunked HDF5 and dask, whose
        strided reads go chunk by chunk). Default: strided when the cube
        has no ``chunks`` (or they are None).
    progress : callable(done, total), optional
        Called after each block.
    on_block : callable(index, VirtualImages), optional
        Called after each block with the output index it filled (a tuple of
        slices into the result) and the block's images, so a display can
        show the image growing.
    threads : bool
        Sum the patterns of a block in parallel (numba threads); False
        keeps to the calling thread (a background job beside a GUI, or a
        machine whose cores are busy).

    Returns
    -------
    VirtualImages
        ``intensity``, ``com_x``, ``com_y``: float64 arrays of shape
        ``(ceil(Rx / stride), ceil(Ry / stride))`` (with ``T`` in front for
        5D). The centre of mass of a pattern without counts in the mask is 0.

    Examples
    --------
    >>> cube = np.zeros((1, 2, 3, 3), np.uint16)
    >>> cube[0, 0, 2, 1] = 4  # one bright pixel below the centre
    >>> cube[0, 1, 1, 1] = 1
    >>> out = virtual_detector(cube, np.ones((3, 3), bool))
    >>> out.intensity.tolist(), out.com_x.tolist(), out.com_y.tolist()
    ([[4.0, 1.0]], [[1.0, 0.0]], [[0.0, 0.0]])
    """
    from ._virtual_numba import _detector_sums, _detector_sums_serial

    kernel = _detector_sums if threads else _detector_sums_serial
    shape, dtype, mask = _checked(cube, mask)
    det = shape[-2:]
    stride = int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1; got {stride}")
    cx, cy = detector_center(det) if center is None else (float(center[0]), float(center[1]))
    idx = np.flatnonzero(mask).astype(np.int64)
    qx, qy = np.divmod(idx, det[1])
    wx = (qx - cx).astype(np.float64)
    wy = (qy - cy).astype(np.float64)
    lead = shape[:-4]
    rows, cols = shape[-4], shape[-3]
    out_shape = (*lead, -(-rows // stride), -(-cols // stride))
    total = np.zeros(out_shape)
    com_x = np.zeros(out_shape)
    com_y = np.zeros(out_shape)
    # blocks of about BLOCK_BYTES of patterns actually read
    step = block_rows((out_shape[-2], out_shape[-1], *det), dtype.itemsize)
    steps = [(t, r0) for t in np.ndindex(*lead) for r0 in range(0, out_shape[-2], step)]
    for done, (t, r0) in enumerate(steps, start=1):
        r1 = min(out_shape[-2], r0 + step)
        if strided_reads is None:
            strided_reads = getattr(cube, "chunks", None) is None
        if stride == 1:
            block = _as_numpy(cube[(*t, slice(r0, r1))])
        elif strided_reads:
            rsel = slice(r0 * stride, min(rows, r1 * stride), stride)
            block = _as_numpy(cube[(*t, rsel, slice(None, None, stride))])
        else:
            # whole rows, subsampled in memory: files are chunked by scan rows,
            # and a strided read through HDF5 is many times slower than that
            picked = range(r0 * stride, min(rows, r1 * stride), stride)
            block = np.stack([_as_numpy(cube[(*t, r)])[::stride] for r in picked])
        if block.dtype == bool:
            block = block.view(np.uint8)
        n = block.shape[0] * block.shape[1]
        s, sx, sy = (np.empty(n) for _ in range(3))
        if len(idx):
            kernel(block.reshape(n, -1), idx, wx, wy, s, sx, sy)
        else:
            s[:], sx[:], sy[:] = 0.0, 0.0, 0.0
        if dtype.kind == "f" and not np.isfinite(s).all():
            i, j = np.argwhere(~np.isfinite(s.reshape(block.shape[:2])))[0]
            bad = (*t, (r0 + int(i)) * stride, int(j) * stride)
            raise ValueError(
                f"virtual detector: the cube contains NaN or inf (first affected pattern "
                f"at scan index {bad}); replace or mask those values"
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            mx = np.where(s != 0, sx / np.where(s != 0, s, 1.0), 0.0)
            my = np.where(s != 0, sy / np.where(s != 0, s, 1.0), 0.0)
        where = (*t, slice(r0, r1))
        part = VirtualImages(*(a.reshape(block.shape[:2]) for a in (s, mx, my)))
        total[where], com_x[where], com_y[where] = part
        if on_block is not None:
            on_block(where, part)
        if progress is not None:
            progress(done, len(steps))
    return VirtualImages(total, com_x, com_y)


# ---------------------------------------------------------------------------
# a detector-binned copy of the cube, for virtual images at interactive rates

#: Default memory budget of a :class:`BinnedCube` (bytes).
BINNED_BUDGET = 512 * 2**20


def binned_layout(
    scan_shape: tuple[int, int],
    detector_shape: tuple[int, int],
    budget: int = BINNED_BUDGET,
    factor: int = 4,
) -> tuple[int, int]:
    """Detector bin ``factor`` and scan step of a :class:`BinnedCube` within ``budget``.

    The detector is binned ``factor x factor`` (smaller for detectors under
    ``16 * factor`` pixels, so a bin stays a small part of a disk); when even
    that copy exceeds ``budget`` (float32), only every ``step``-th scan row
    and column is kept.

    Returns
    -------
    factor, step : int

    Examples
    --------
    >>> binned_layout((256, 256), (128, 128))  # 256 MiB: every position, 4x4 bins
    (4, 1)
    >>> binned_layout((1024, 1024), (128, 128))  # 4 GiB at 4x4: every 3rd position
    (4, 3)
    >>> binned_layout((10, 10), (24, 24))
    (1, 1)
    """
    rx, ry = (int(s) for s in scan_shape)
    qx, qy = (int(s) for s in detector_shape)
    factor = int(max(1, min(int(factor), min(qx, qy) // 16)))
    per_pattern = -(-qx // factor) * -(-qy // factor) * 4
    step = 1
    while -(-rx // step) * -(-ry // step) * per_pattern > budget and step < max(rx, ry):
        step += 1
    return factor, step


def coarse_first_rows(n: int, first: int = 16) -> np.ndarray:
    """Scan rows in coarse-to-fine order: every ``first``-th row, then the rows between.

    An image filled in this order is soon complete at low resolution and
    refines evenly, rather than growing from the top.

    Examples
    --------
    >>> coarse_first_rows(9, first=4).tolist()
    [0, 4, 8, 2, 6, 1, 3, 5, 7]
    """
    n = int(n)
    seen = np.zeros(n, bool)
    order = []
    step = max(1, int(first))
    while True:
        rows = np.arange(0, n, step)
        rows = rows[~seen[rows]]
        seen[rows] = True
        order.extend(rows.tolist())
        if step == 1:
            break
        step = max(1, step // 2)
    return np.asarray(order, np.int64)


class BinnedCube:
    """A detector-binned (and maybe scan-subsampled) float32 copy of one 4D scan.

    Filled block by block while the file is read once (:meth:`add_rows`); then
    :meth:`images` gives the integrated intensity and centre of mass of any
    detector mask in tens of milliseconds, close to the exact image: each bin
    counts with the fraction of its pixels inside the mask (and the mean
    position of those pixels for the centre of mass), which is exact when
    the intensity is even within a bin.

    Parameters
    ----------
    scan_shape : (int, int)
        ``(Rx, Ry)`` of the full scan.
    detector_shape : (int, int)
    factor : int
        Detector bin size in pixels.
    step : int
        Keep every ``step``-th scan row and column.

    Examples
    --------
    >>> cube = np.ones((3, 4, 8, 8), np.uint16)
    >>> binned = BinnedCube((3, 4), (8, 8), factor=4)
    >>> binned.add_rows(0, cube)
    >>> binned.complete, binned.data.shape  # 2 x 2 bins of 3 x 4 positions
    (True, (4, 3, 4))
    >>> mask = np.zeros((8, 8), bool)
    >>> mask[:, :3] = True  # 3/4 of the left bins
    >>> binned.images(mask).intensity[0, 0]
    np.float64(24.0)
    """

    def __init__(
        self,
        scan_shape: tuple[int, int],
        detector_shape: tuple[int, int],
        factor: int = 4,
        step: int = 1,
    ):
        self.scan_shape = tuple(int(s) for s in scan_shape)
        self.detector_shape = tuple(int(s) for s in detector_shape)
        self.factor = int(factor)
        self.step = int(step)
        if self.factor < 1 or self.step < 1:
            raise ValueError(f"factor and step must be >= 1; got {factor}, {step}")
        rx, ry = self.scan_shape
        qx, qy = self.detector_shape
        self.bins_shape = (-(-qx // self.factor), -(-qy // self.factor))
        #: The kept scan positions of every bin: bin-major ``(B, rows, cols)``,
        #: so a virtual image reads only the bins its detector covers.
        self.data = np.zeros(
            (self.bins_shape[0] * self.bins_shape[1], -(-rx // self.step), -(-ry // self.step)),
            np.float32,
        )
        self.filled = np.zeros(self.data.shape[1], bool)
        #: Sum of every pattern added (float64, full detector resolution): the
        #: shape of the intensity inside each bin, for partly covered bins.
        self.pattern_sum = np.zeros(self.detector_shape)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def complete(self) -> bool:
        """Whether every (kept) scan row has been added."""
        return bool(self.filled.all())

    def add_rows(self, r0: int, block, mask: np.ndarray | None = None) -> np.ndarray | None:
        """Bin scan rows ``r0 : r0 + len(block)`` of the full scan into the copy.

        Parameters
        ----------
        r0 : int
            First scan row of ``block``.
        block : ndarray, shape (rows, Ry, Qx, Qy)
            Whole scan rows as read.
        mask : ndarray of bool, shape (Qx, Qy), optional
            Also return the sum of every pattern of ``block`` over this mask
            (float64, shape ``(rows, Ry)``), computed in the same pass.

        Returns
        -------
        ndarray or None
        """
        from ._virtual_numba import _bin_and_sum

        block = np.asarray(block)
        if block.ndim != 4 or block.shape[1] != self.scan_shape[1]:
            raise ValueError(
                f"block must hold whole scan rows (rows, {self.scan_shape[1]}, Qx, Qy); "
                f"got shape {block.shape}"
            )
        if block.shape[2:] != self.detector_shape:
            raise ValueError(
                f"block patterns {block.shape[2:]} do not match the detector {self.detector_shape}"
            )
        if block.dtype == bool:
            block = block.view(np.uint8)
        rows, cols = block.shape[:2]
        s = self.step
        # the whole block when a mask sum is wanted, else only the kept rows
        keep = [r for r in range(r0, r0 + rows) if r % s == 0]
        use = np.arange(rows) if mask is not None else np.array([r - r0 for r in keep], int)
        part = np.ascontiguousarray(block[use] if len(use) != rows else block)
        flat = part.reshape(-1, *self.detector_shape)
        kind, size = part.dtype.kind, part.dtype.itemsize
        acc = np.empty(
            self.detector_shape[1],
            np.float64 if kind == "f" else (np.uint32 if size <= 2 else np.int64),
        )
        idx = (
            np.flatnonzero(np.asarray(mask, bool)).astype(np.int64)
            if mask is not None
            else np.empty(0, np.int64)
        )
        if mask is not None and np.shape(mask) != self.detector_shape:
            raise ValueError(
                f"mask shape {np.shape(mask)} does not match the detector {self.detector_shape}"
            )
        bins = np.empty((len(flat), *self.bins_shape), np.float32)
        out = np.empty(len(flat))
        _bin_and_sum(flat, idx, self.factor, acc, bins, out, self.pattern_sum)
        bins = bins.reshape(len(use), cols, *self.bins_shape)
        for r in keep:
            i = (r - r0) if mask is not None else keep.index(r)
            self.data[:, r // s, :] = bins[i, ::s].reshape(-1, self.data.shape[0]).T
            self.filled[r // s] = True
        return out.reshape(rows, cols) if mask is not None else None

    def weights(self, mask: np.ndarray, center: tuple[float, float] | None = None) -> np.ndarray:
        """Per-bin weights ``(B, 3)``: mask coverage and first moments of the masked pixels.

        Within a bin, intensity is assumed to be distributed as in the sum
        of all patterns added (:attr:`pattern_sum`; evenly where that is 0):
        column 0 is the fraction of the bin's intensity on ``mask`` pixels,
        columns 1 and 2 that fraction weighted by each pixel's ``qx - cx``
        and ``qy - cy``. A steep direct beam cut by the detector's edge is
        then split between inside and outside as the average pattern splits
        it.
        """
        mask = np.asarray(mask, bool)
        if mask.shape != self.detector_shape:
            raise ValueError(
                f"mask shape {mask.shape} does not match the detector shape {self.detector_shape}"
            )
        qx, qy = self.detector_shape
        if center is None:
            center = detector_center((qx, qy))
        cx, cy = float(center[0]), float(center[1])
        f = self.factor
        bx, by = self.bins_shape
        px, py = bx * f - qx, by * f - qy

        def per_bin(a):
            a = np.pad(a, ((0, px), (0, py)))
            return a.reshape(bx, f, by, f).sum(axis=(1, 3))

        ref = np.clip(self.pattern_sum, 0.0, None)
        ref_bins = per_bin(ref)
        even = ref_bins <= 0  # no intensity known: evenly within the bin
        count = per_bin(np.ones((qx, qy)))
        # per-pixel share of its bin's intensity
        up = np.repeat(np.repeat(np.where(even, count, ref_bins), f, 0), f, 1)[:qx, :qy]
        ev = np.repeat(np.repeat(even, f, 0), f, 1)[:qx, :qy]
        share = np.where(ev, 1.0, ref) / up
        m = mask * share
        dx = (np.arange(qx) - cx)[:, None]
        dy = (np.arange(qy) - cy)[None, :]
        w = np.stack([per_bin(m), per_bin(m * dx), per_bin(m * dy)], axis=-1)
        return w.reshape(-1, 3).astype(np.float32)

    def images(self, mask: np.ndarray, center: tuple[float, float] | None = None) -> VirtualImages:
        """Integrated intensity and centre of mass of ``mask`` from the binned copy.

        Returns
        -------
        VirtualImages
            float64 images of the kept scan positions (shape
            ``(ceil(Rx / step), ceil(Ry / step))``); rows not yet added are 0.
            The centre of mass is in pixels from ``center`` (default: the
            detector centre), 0 where the detector holds no counts.
        """
        from ._virtual_numba import _weighted_bins

        w = self.weights(mask, center)
        nb, nr, nc = self.data.shape
        bins = np.flatnonzero(w[:, 0] > 0).astype(np.int64)
        out = np.empty((3, nr * nc), np.float32)
        _weighted_bins(self.data.reshape(nb, nr * nc), bins, w, out)
        s, sx, sy = out.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mx = np.where(s != 0, sx / np.where(s != 0, s, 1.0), 0.0)
            my = np.where(s != 0, sy / np.where(s != 0, s, 1.0), 0.0)
        return VirtualImages(*(a.reshape(nr, nc) for a in (s, mx, my)))


def _checked(cube, mask):
    """Shape, dtype and boolean mask of a 4D/5D cube and its detector mask (validated)."""
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
    return shape, dtype, mask
