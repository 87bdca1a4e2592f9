"""Cosine similarity of each diffraction pattern with its 8 scan neighbours."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._blur import blur_patterns
from ._similarity_numba import _block_similarity
from ._validate import block_rows, check_cube, check_finite_values, read_rows
from .masking import resolve_q_mask

#: Scan offsets ``(drx, dry)`` of the 8 neighbours, in the order of the last
#: axis of the similarity array. Offset ``n`` and ``7 - n`` are opposite.
NEIGHBOR_OFFSETS = np.array(
    [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)],
    dtype=np.int64,
)
#: Indices of the 4 "forward" offsets; every unordered neighbour pair is one
#: forward offset from one of its two members.
FORWARD = (4, 5, 6, 7)


def neighbor_similarity(
    cube,
    q_mask=None,
    sigma: float = 0.0,
    *,
    progress: Callable[[int, int], None] | None = None,
    _block_rows: int | None = None,
) -> np.ndarray:
    """Cosine similarity between every pattern and its 8 scan neighbours.

    Each unordered pair of neighbouring patterns is computed once. The cube
    is read in blocks of scan rows, so it may be a memory map, an h5py
    dataset or a dask array larger than memory.

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy)
        4D-STEM data of any integer or float dtype.
    q_mask : ndarray of bool (Qx, Qy), or (inner, outer), optional
        Diffraction-space mask: pixels where True are compared. A pair of
        radii selects an annulus about the pattern centre (detector pixels).
    sigma : float
        Gaussian blur of each pattern before comparing, in detector pixels.
    progress : callable, optional
        Called as ``progress(done, total)`` after each block of rows; raise
        from it to cancel.

    Returns
    -------
    ndarray of float32, shape (Rx, Ry, 8)
        ``S[x, y, n]`` is the similarity with the neighbour at
        ``(x, y) + NEIGHBOR_OFFSETS[n]``; NaN where that lies outside the
        scan. A pair with an all-zero pattern has similarity 0.

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
    pix = None if mask is None or mask.all() else np.flatnonzero(mask)

    out = np.full((rx, ry, 8), np.nan, np.float32)
    itemsize = max(np.dtype(cube.dtype).itemsize, 4)
    step = _block_rows or block_rows(cube.shape, itemsize)
    starts = range(0, rx, step)
    for i, r0 in enumerate(starts):
        r1 = min(r0 + step, rx)
        block = _prepare(read_rows(cube, r0, min(r1 + 1, rx)), sigma, pix)
        # The kernel fills the forward offsets in place; out-of-scan ones stay NaN.
        sq = _block_similarity(block, r1 - r0, out[r0:r1, :, 4:])
        check_finite_values(sq, "neighbor_similarity")
        if progress is not None:
            progress(i + 1, len(starts))
    _mirror(out)
    return out


def _prepare(block: np.ndarray, sigma: float, pix: np.ndarray | None) -> np.ndarray:
    """Flatten patterns to vectors, blurring and masking when asked."""
    n, ry, qx, qy = block.shape
    if sigma > 0:
        block = blur_patterns(block, sigma)
    flat = block.reshape(n, ry, qx * qy)
    if pix is not None:
        flat = np.ascontiguousarray(flat[:, :, pix], dtype=np.float32)
    elif flat.dtype.itemsize > 4:
        # The kernel multiplies in float32; convert 64-bit input per block.
        flat = flat.astype(np.float32)
    return flat


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
