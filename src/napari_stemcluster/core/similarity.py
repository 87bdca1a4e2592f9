"""Cosine similarity of each diffraction pattern with its 8 scan neighbours."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np

from ._blur import dark_rect, gaussian_kernel1d
from ._similarity_numba import flat_ranges, fused_similarity
from ._validate import (
    block_rows,
    check_cube,
    check_finite_values,
    kernel_dtype,
    native_dtype,
    read_rows,
)
from .linkage import feature_bins, feature_slots
from .masking import dark_exact, dark_field_keep, mask_runs, resolve_q_mask

#: Scan offsets ``(drx, dry)`` of the 8 neighbours, in the order of the last
#: axis of the similarity array. Offset ``n`` and ``7 - n`` are opposite.
NEIGHBOR_OFFSETS = np.array(
    [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)],
    dtype=np.int64,
)
#: Indices of the 4 "forward" offsets; every unordered neighbour pair is one
#: forward offset from one of its two members.
FORWARD = (4, 5, 6, 7)
#: Cache budget of one strip's prepared vectors (two scan rows of it): three
#: quarters of a 2 MiB L2, leaving room for the blur's scratch and the
#: pattern. Wider strips prepare fewer halo columns twice (at 128 x 128
#: patterns with the annulus, 17 columns a strip instead of 10: about 7 %
#: less CPU time, measured; 1 MiB before).
STRIP_BYTES = 3 << 19


def neighbor_similarity(
    cube,
    q_mask=None,
    sigma: float = 0.0,
    *,
    progress: Callable[[int, int], None] | None = None,
    features: np.ndarray | None = None,
    dark_field: np.ndarray | None = None,
    beam: tuple[float, float, float] | None = None,
    feature_dims: int | None = None,
    _block_rows: int | None = None,
) -> np.ndarray:
    """Cosine similarity between every pattern and its 8 scan neighbours.

    Each unordered pair of neighbouring patterns is computed once. The cube
    is read in blocks of scan rows, so it may be a memory map, an h5py
    dataset or a dask array larger than memory. Each pattern is converted to
    float32, blurred and masked once, while it is in cache (no copy of the
    cube in any other dtype), then dotted with its neighbours.

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy)
        4D-STEM data of any integer or float dtype, either byte order.
        Patterns of 64-bit or float data are scaled by a power of two
        before the float32 arithmetic, so values up to the dtype's limits
        (uint64 near 2**64, float64 up to 1e308 or down to 1e-300) neither
        overflow nor underflow.
    q_mask : ndarray of bool (Qx, Qy), or (inner, outer), optional
        Diffraction-space mask: pixels where True are compared. A pair of
        radii selects an annulus about the pattern centre (detector pixels).
    sigma : float
        Gaussian blur of each pattern before comparing, in detector pixels.
    progress : callable, optional
        Called as ``progress(done, total)`` after each block of rows; raise
        from it to cancel.
    features : ndarray of float32, shape (Rx, Ry, K), optional
        Filled with the binned patterns of
        :func:`~napari_stemcluster.core.linkage.pattern_features` (``K``
        bins, :func:`~napari_stemcluster.core.linkage.feature_bins` of at
        most ``K``), from the blurred, masked patterns while they are
        compared: no second pass over the cube. Equal to
        ``pattern_features`` up to float32 rounding of the blur. With
        ``feature_dims``, ``K`` may also be the number of those bins that
        meet the q-mask (:func:`~napari_stemcluster.core.linkage.feature_slots`):
        then only they are written, in order (the others are always 0).
    dark_field : ndarray of float32, shape (Rx, Ry), optional
        Filled with the dark-field image of the patterns,
        bit-identical to
        :func:`~napari_stemcluster.core.masking.dark_field_image` with the
        same ``beam``.
    beam : (cx, cy, radius), optional
        Direct beam for ``dark_field``; by default found as
        ``dark_field_image`` does.
    feature_dims : int, optional
        The ``dims`` of the features' bins (default ``K``).

    Returns
    -------
    ndarray of float32, shape (Rx, Ry, 8)
        ``S[x, y, n]`` is the similarity with the neighbour at
        ``(x, y) + NEIGHBOR_OFFSETS[n]``; NaN where that lies outside the
        scan. A pair with an all-zero pattern has similarity 0.

    Raises
    ------
    ValueError
        If the cube holds NaN or inf (anywhere in a pattern, masked or
        not), naming the first such pattern's index in ``cube``.

    Examples
    --------
    >>> cube = np.zeros((1, 3, 2, 2), np.uint16)
    >>> cube[0, :, 0, 0] = 1
    >>> cube[0, 2, 1, 1] = 1
    >>> s = neighbor_similarity(cube)
    >>> s[0, :, 4]  # similarity with the right-hand neighbour
    array([1.        , 0.70710677,        nan], dtype=float32)
    """
    check_cube(cube, 4)
    rx, ry, qx, qy = cube.shape
    mask = resolve_q_mask(q_mask, (qx, qy))
    if mask is not None and not mask.any():
        raise ValueError("q_mask selects no detector pixel; nothing to compare")
    dims = None
    if features is not None:
        width = np.shape(features)[-1] if np.ndim(features) == 3 else 0
        dims = width if feature_dims is None else int(feature_dims)
        _check_out("features", features, (rx, ry, width))
    if dark_field is not None:
        _check_out("dark_field", dark_field, (rx, ry))
        if beam is None:
            from .masking import _sample_mean, direct_beam

            beam = direct_beam(_sample_mean(cube))
    else:
        beam = None
    plan = similarity_plan((qx, qy), mask, sigma, cube.dtype, feature_dims=dims, beam=beam)

    out = np.full((rx, ry, 8), np.nan, np.float32)
    step = _block_rows or _rows_per_block(cube, plan, progress)
    starts = range(0, rx, step)
    for i, r0 in enumerate(starts):
        r1 = min(r0 + step, rx)
        block = read_rows(cube, r0, min(r1 + 1, rx))
        # The kernel fills the forward offsets in place; out-of-scan ones stay NaN.
        sq = block_similarity(
            block,
            r1 - r0,
            plan,
            out[r0:r1, :, 4:],
            features=None if features is None else features[r0:r1],
            dark_field=None if dark_field is None else dark_field[r0:r1],
        )
        check_finite_values(sq, "neighbor_similarity", offset=(r0, 0))
        if progress is not None:
            progress(i + 1, len(starts))
    _mirror(out)
    return out


def _rows_per_block(cube, plan, progress) -> int:
    """Scan rows per kernel call.

    An in-memory C-contiguous cube of the kernel's dtype is read without a
    copy, so without progress to report it is one call: every call ends in
    a wait for the slowest thread and prepares its halo row twice (about a
    sixth of the CPU time at 128 x 128 patterns in 64 MiB blocks, measured).
    Otherwise blocks of about 64 MiB, budgeting the conversion copy.
    """
    whole = (
        progress is None
        and isinstance(cube, np.ndarray)
        and not isinstance(cube, np.memmap)  # a file: read in blocks that stay cached
        and cube.flags.c_contiguous
        and cube.dtype == plan.dtype
    )
    if whole:
        return int(cube.shape[0])
    size = max(np.dtype(cube.dtype).itemsize, plan.dtype.itemsize)
    return block_rows(cube.shape, size)


class SimilarityPlan(NamedTuple):
    """Everything the similarity kernel needs besides the patterns.

    Built once per cube by :func:`similarity_plan` and reused for every
    block, so a block-wise caller (such as the chunked engine) pays for it once.
    """

    detector: tuple[int, int]
    taps: np.ndarray  # float32 1-D Gaussian taps (one tap: no blur)
    box: np.ndarray  # int64 (i0, i1, j0, j1): bounding box of the q-mask
    weight: np.ndarray  # float32 raveled q-mask on the box
    dtype: np.dtype  # dtype the kernel reads (kernel_dtype of the cube's)
    scaled: bool  # scale each pattern by a power of two (wide or float input)
    bins: tuple[int, int, int] | None = None  # features: (b, bx, by) of feature_bins
    runs: np.ndarray | None = None  # dark field: (row, start, stop) of the pixels summed
    slots: np.ndarray | None = None  # features: the bins that meet the q-mask (feature_slots)
    qruns: np.ndarray | None = None  # int64 (row, start, stop) of the q-mask in box coordinates
    exact: bool | None = None  # dark field: integer sums (dark_exact of the cube's dtype)
    dark_split: tuple | None = None  # dark field, exact with a blur: (plus, minus) of _dark_split


def similarity_plan(
    detector_shape,
    q_mask=None,
    sigma: float = 0.0,
    dtype=np.uint16,
    *,
    feature_dims: int | None = None,
    beam: tuple[float, float, float] | None = None,
):
    """Prepare the q-mask, blur taps and input dtype for :func:`block_similarity`.

    Parameters
    ----------
    detector_shape : (int, int)
        ``(Qx, Qy)``.
    q_mask : ndarray of bool (Qx, Qy), or (inner, outer), optional
        As for :func:`neighbor_similarity`.
    sigma : float
        Gaussian blur in detector pixels.
    dtype : dtype
        dtype of the cube (any byte order).
    feature_dims : int, optional
        Let :func:`block_similarity` also give the binned patterns of
        :func:`~napari_stemcluster.core.linkage.pattern_features` with this
        ``dims``.
    beam : (cx, cy, radius), optional
        Let :func:`block_similarity` also give the dark-field image
        (:func:`~napari_stemcluster.core.masking.dark_field_image`) with
        this direct beam.

    Returns
    -------
    SimilarityPlan

    Examples
    --------
    >>> plan = similarity_plan((8, 8), (1, 2), sigma=1.0)
    >>> plan.box.tolist(), len(plan.taps)
    ([2, 6, 2, 6], 9)
    """
    qx, qy = (int(s) for s in detector_shape)
    mask = resolve_q_mask(q_mask, (qx, qy))
    if mask is None:
        mask = np.ones((qx, qy), bool)
    if not mask.any():
        raise ValueError("q_mask selects no detector pixel; nothing to compare")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0; got {sigma}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = np.array([rows[0], rows[-1] + 1, cols[0], cols[-1] + 1], np.int64)
    weight = np.ascontiguousarray(mask[box[0] : box[1], box[2] : box[3]], np.float32).ravel()
    kind = native_dtype(dtype)
    # float32 squares overflow above ~1.8e19 and underflow below ~1e-19; only
    # 64-bit integers and floats can reach that, so only they are rescaled.
    scaled = kind.kind == "f" or kind.itemsize > 4
    bins = slots = None
    if feature_dims is not None:
        bins = feature_bins((qx, qy), int(feature_dims))
        slots = feature_slots((qx, qy), mask, int(feature_dims))
    runs = None if beam is None else mask_runs(dark_field_keep((qx, qy), beam))
    taps = gaussian_kernel1d(sigma)
    # The kernel keeps only the q-mask's pixels, as row segments of the box.
    qruns = mask_runs(mask[box[0] : box[1], box[2] : box[3]]).astype(np.int64)
    exact = dark_exact(kind, (qx, qy))
    split = None
    if beam is not None and exact and len(taps) > 1:
        split = _dark_split((qx, qy), dark_field_keep((qx, qy), beam), box, (len(taps) - 1) // 2)
    return SimilarityPlan(
        (qx, qy),
        taps,
        box,
        weight,
        kernel_dtype(kind),
        scaled,
        bins,
        runs,
        slots,
        qruns,
        exact,
        split,
    )


def _dark_split(detector, keep, box, r):
    """The dark-field sum as the blur's rectangle, plus and minus a few ranges.

    The blur converts every pixel of :func:`~napari_stemcluster.core._blur.dark_rect`
    and sums it on the way (exact integers); the dark field is that sum,
    plus the kept pixels outside the rectangle, minus the pixels inside it
    that are not kept (the direct beam's disc). Returned as flat ``(start,
    stop)`` ranges of the raveled pattern.
    """
    r0, r1, c0, c1 = dark_rect(detector, box, r)
    rect = np.zeros(detector, bool)
    rect[r0:r1, c0:c1] = True
    qy = int(detector[1])
    plus = flat_ranges(mask_runs(keep & ~rect), qy)
    minus = flat_ranges(mask_runs(~keep & rect), qy)
    return plus, minus


def block_similarity(
    block,
    n_out: int,
    plan: SimilarityPlan,
    out=None,
    *,
    features: np.ndarray | None = None,
    dark_field: np.ndarray | None = None,
) -> np.ndarray:
    """Forward-neighbour similarity of one block of scan rows.

    The building block of :func:`neighbor_similarity` for callers that read
    the cube themselves: the patterns are converted, blurred and masked once
    each, in cache, and every pair inside the block is computed once.

    Parameters
    ----------
    block : ndarray, shape (n_rows, Ry, Qx, Qy)
        Patterns of consecutive scan rows; rows ``n_out:`` (at most one) are
        only the neighbours of the last output row.
    n_out : int
        Number of output rows.
    plan : SimilarityPlan
        From :func:`similarity_plan`.
    out : ndarray of float32, shape (n_out, Ry, 4), optional
        Receives the similarity with the neighbours at ``NEIGHBOR_OFFSETS[4:]``
        (``(0, 1), (1, -1), (1, 0), (1, 1)``); pairs that leave the block are
        left as they are (the default is NaN).
    features : ndarray of float32, shape (n_out, Ry, K), optional
        C-contiguous; receives the binned patterns of the output rows (the
        plan needs ``feature_dims``, see :func:`neighbor_similarity`): all
        bins, or (``K == len(plan.slots)``) those that meet the q-mask.
    dark_field : ndarray of float32, shape (n_out, Ry), optional
        Receives the dark-field image of the output rows (the plan needs
        ``beam``).

    Returns
    -------
    ndarray of float64, shape (n_rows, Ry)
        Squared norm of every (blurred, masked) pattern; NaN or inf where the
        pattern holds NaN or inf. ``out`` is filled in place.

    Examples
    --------
    >>> cube = np.zeros((2, 2, 3, 3), np.uint16)
    >>> cube[..., 1, 1] = 1
    >>> cube[1, 1, 0, 0] = 1
    >>> out = np.full((1, 2, 4), np.nan, np.float32)
    >>> sq = block_similarity(cube, 1, similarity_plan((3, 3)), out)
    >>> out[0, 0]  # right, down-left, down, down-right
    array([1.        ,        nan, 1.        , 0.70710677], dtype=float32)
    """
    block = np.asarray(block)
    n_rows, ry, qx, qy = block.shape
    if (qx, qy) != plan.detector:
        raise ValueError(
            f"block detector shape {(qx, qy)} does not match the plan's {plan.detector}"
        )
    if not 0 <= n_out <= n_rows <= n_out + 1:
        raise ValueError(f"n_out={n_out} does not fit a block of {n_rows} rows")
    if out is None:
        out = np.full((n_out, ry, 4), np.nan, np.float32)
    bins, feats, slots = _NO_BINS, _NO_FEATURES, _NO_SLOTS
    if features is not None:
        if plan.bins is None:
            raise ValueError("features need a plan made with feature_dims")
        b, bx, by = plan.bins
        width = bx * by
        if np.ndim(features) == 3 and features.shape[-1] == len(plan.slots) < width:
            width, slots = len(plan.slots), plan.slots
        _check_out("features", features, (n_out, ry, width))
        if not features.flags.c_contiguous:
            raise ValueError("features must be C-contiguous")
        bins, feats = np.array([b, bx, by], np.int64), features
    runs, signal = _NO_RUNS, _NO_SIGNAL
    plus, minus = _NO_SPLIT, _NO_RANGES
    if dark_field is not None:
        if plan.runs is None:
            raise ValueError("dark_field needs a plan made with beam")
        _check_out("dark_field", dark_field, (n_out, ry))
        runs, signal = plan.runs, dark_field
        if plan.dark_split is not None:
            plus, minus = plan.dark_split
    qruns = plan.qruns
    if qruns is None:  # a plan built by hand, without the mask's runs
        i0, i1, j0, j1 = (int(v) for v in plan.box)
        qruns = mask_runs(plan.weight.reshape(i1 - i0, j1 - j0) != 0)
    flat = np.ascontiguousarray(block, dtype=plan.dtype).reshape(n_rows, ry, qx * qy)
    sq = np.empty((n_rows, ry), np.float64)
    fused_similarity(
        flat,
        n_out,
        qx,
        qy,
        plan.scaled,
        plan.taps,
        plan.box,
        qruns,
        _strip(ry, plan),
        out,
        sq,
        bins,
        feats,
        runs,
        dark_exact(plan.dtype, plan.detector) if plan.exact is None else plan.exact,
        signal,
        slots,
        plus,
        minus,
    )
    return sq


# Empty stand-ins for the kernel's optional outputs (same types, so one
# compiled version serves calls with and without them).
_NO_BINS = np.zeros(3, np.int64)
_NO_SLOTS = np.zeros(0, np.int64)
_NO_FEATURES = np.zeros((0, 0, 0), np.float32)
_NO_RUNS = np.zeros((0, 3), np.int64)
_NO_SIGNAL = np.zeros((0, 0), np.float32)
_NO_RANGES = np.zeros((0, 2), np.int64)
_NO_SPLIT = np.zeros((0, 0), np.int64)  # no column: the kernel sums the dark field itself


def _check_out(name: str, arr, shape) -> None:
    """Raise unless ``arr`` is a writeable float32 array of ``shape``."""
    if not (
        isinstance(arr, np.ndarray)
        and arr.dtype == np.float32
        and arr.shape == tuple(shape)
        and arr.flags.writeable
    ):
        got = f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}"
        raise ValueError(
            f"{name} must be a writeable float32 array of shape {tuple(shape)}; got {got}"
        )


def _strip(ry: int, plan: SimilarityPlan) -> int:
    """Scan columns per task: two rows of a strip's vectors fit in ``STRIP_BYTES``.

    At least two strips per thread, as many strips for each thread and of
    equal widths: the kernel's loop over strips is split into equal runs of
    strips per thread, so one narrow last strip would leave a thread idle
    (at 128 columns and 128 x 128 patterns with an annulus, 17 a strip gave
    two threads 75 and 67 columns to prepare, halos included; 16 a strip
    gives 71 each).
    """
    n = int(np.count_nonzero(plan.weight))
    width = max(4, STRIP_BYTES // (2 * 4 * n) - 2)
    threads = numba.get_num_threads()
    per_thread = max(1, -(-ry // (2 * threads)))
    strips = -(-ry // max(1, min(width, per_thread)))
    strips = -(-strips // threads) * threads
    return int(max(1, -(-ry // strips)))


def _mirror(sim: np.ndarray) -> None:
    """Fill the 4 backward offsets from the forward ones (S is symmetric)."""
    rx, ry = sim.shape[:2]
    for n in FORWARD:
        dx, dy = NEIGHBOR_OFFSETS[n]
        # S[x + dx, y + dy, 7 - n] = S[x, y, n] wherever both are in the scan.
        xs = slice(max(0, -dx), rx - max(0, dx))
        ys = slice(max(0, -dy), ry - max(0, dy))
        xd = slice(max(0, dx), rx - max(0, -dx))
        yd = slice(max(0, dy), ry - max(0, -dy))
        sim[xd, yd, 7 - n] = sim[xs, ys, n]


def mean_similarity(similarity: np.ndarray) -> np.ndarray:
    """Mean similarity over the in-scan neighbours of each position.

    Out-of-scan neighbours (NaN) are left out of the mean rather than counted
    as -1, so border positions are not biased low. A position without any
    neighbour (a 1x1 scan) gets 0.

    Parameters
    ----------
    similarity : ndarray, shape (..., 8)
        Output of :func:`neighbor_similarity`.

    Returns
    -------
    ndarray of float32, shape ``similarity.shape[:-1]``

    Examples
    --------
    >>> s = np.full((1, 2, 8), np.nan, np.float32)
    >>> s[0, 0, 4] = s[0, 1, 3] = 0.5
    >>> mean_similarity(s)
    array([[0.5, 0.5]], dtype=float32)
    """
    similarity = np.asarray(similarity)
    valid = ~np.isnan(similarity)
    count = valid.sum(axis=-1)
    total = np.where(valid, similarity, 0).sum(axis=-1, dtype=np.float64)
    mean = np.divide(total, count, out=np.zeros(count.shape), where=count > 0)
    return mean.astype(np.float32)
