"""numba kernel for :mod:`napari_stemcluster.core.averages`."""

from __future__ import annotations

import numba
import numpy as np

#: Detector pixels per parallel task; each task owns its slice of every sum,
#: so the accumulation order (raster order of positions) never depends on
#: the number of threads.
_CHUNK = 512


@numba.njit(cache=True, nogil=True, parallel=True)
def _accumulate(block, labels, sums):
    """Add each labelled pattern of ``block`` (P, Q) to ``sums[label - 1]``."""
    n_pos, q = block.shape
    n_lab = sums.shape[0]
    n_chunks = (q + _CHUNK - 1) // _CHUNK
    for c in numba.prange(n_chunks):
        q0 = c * _CHUNK
        q1 = min(q, q0 + _CHUNK)
        for p in range(n_pos):
            lab = labels[p]
            if lab <= 0 or lab > n_lab:
                continue
            # Loop over slices: LLVM vectorises this, not a computed range.
            dst = sums[lab - 1, q0:q1]
            src = block[p, q0:q1]
            for k in range(src.shape[0]):
                dst[k] += np.float64(src[k])


@numba.njit(cache=True, nogil=True)
def _task_bounds(labels, n_lab, n_tasks):
    """Start of each task's run of positions, and the end: equal numbers of
    labelled positions (labels ``1..n_lab``) per run, as far as they go."""
    n_pos = labels.shape[0]
    valid = 0
    for p in range(n_pos):
        if 0 < labels[p] <= n_lab:
            valid += 1
    per = (valid + n_tasks - 1) // n_tasks
    bounds = np.full(n_tasks + 1, n_pos, np.int64)
    bounds[0] = 0
    seen = 0
    t = 1
    for p in range(n_pos):
        if t >= n_tasks:
            break
        if 0 < labels[p] <= n_lab:
            seen += 1
            if seen == per * t:
                bounds[t] = p + 1
                t += 1
    return bounds


@numba.njit(cache=True, nogil=True, parallel=True)
def _accumulate_narrow(block, labels, sums, parts):
    """:func:`_accumulate` for integers, summed per task in exact partial sums.

    Task ``t`` adds a contiguous run of positions (whole patterns, read
    sequentially) into ``parts[t]`` (zeros of a dtype whose sums over the run
    are exact: a 32-bit integer dtype that cannot overflow over the run, the
    caller sizing the runs, or float64 below 2**53). The runs hold equal
    numbers of labelled positions (:func:`_task_bounds`), at most
    ``ceil(n_positions / n_tasks)`` each, so the threads share the work
    evenly whichever parts of the scan are labelled. The parts are then
    added to ``sums`` in float64. Every partial sum is an exact integer, so
    the result is the same number as :func:`_accumulate`'s. For small
    integers the 32-bit parts take half the bytes of float64 ones, and their
    adds vectorise twice as wide. Four consecutive positions with the same
    label are added together before their part (a sum of four values,
    within the same bound).
    """
    q = block.shape[1]
    n_tasks, n_lab = parts.shape[:2]
    bounds = _task_bounds(labels, n_lab, n_tasks)
    for t in numba.prange(n_tasks):
        p = bounds[t]
        end = bounds[t + 1]
        while p < end:
            lab = labels[p]
            if lab <= 0 or lab > n_lab:
                p += 1
                continue
            dst = parts[t, lab - 1]
            # Neighbours along a scan row mostly share a label: four patterns
            # of one label are added together first, so the partial sum is
            # read and written once per four patterns instead of once per
            # pattern (exact integers: the same numbers in any order).
            if p + 3 < end and labels[p + 1] == lab == labels[p + 2] == labels[p + 3]:
                a, b, c, d = block[p], block[p + 1], block[p + 2], block[p + 3]
                for k in range(q):
                    dst[k] += (a[k] + b[k]) + (c[k] + d[k])
                p += 4
            else:
                src = block[p]
                for k in range(q):
                    dst[k] += src[k]
                p += 1
    n_chunks = (q + _CHUNK - 1) // _CHUNK
    for c in numba.prange(n_lab * n_chunks):
        lab = c // n_chunks
        q0 = (c - lab * n_chunks) * _CHUNK
        q1 = min(q, q0 + _CHUNK)
        dst = sums[lab, q0:q1]
        for t in range(n_tasks):
            src = parts[t, lab, q0:q1]
            for k in range(src.shape[0]):
                dst[k] += np.float64(src[k])


def _accumulate_exact(block, labels, sums, n_tasks):
    """:func:`_accumulate` for inputs whose float64 sums are exact in any order.

    Each of ``n_tasks`` tasks adds a contiguous run of positions (whole
    patterns, read sequentially) into its own float64 copy of the sums (see
    :func:`_accumulate_narrow`). Only for integers whose sums stay below
    2**53 (the caller checks): then every partial sum is an exact integer
    and the result is the same number as :func:`_accumulate`'s, whatever the
    split.
    """
    parts = np.zeros((n_tasks, sums.shape[0], block.shape[1]), np.float64)
    _accumulate_narrow(block, labels, sums, parts)


@numba.njit(cache=True, nogil=True)
def _table_sums(labels, ms, size, total, seed):
    """One raster pass for :func:`~napari_stemcluster.core.averages.cluster_table`.

    For labels ``1..len(size)``: member counts, float64 sums of ``ms`` in
    raster order (as ``np.bincount`` adds its weights) and the flat index of
    the member of highest ``ms`` (NaN lowest, first in raster order on ties;
    ``seed`` starts at -1).
    """
    n = size.shape[0]
    best = np.empty(n, np.float64)
    big = np.finfo(np.float64).max
    for p in range(labels.shape[0]):
        a = labels[p]
        if a <= 0 or a > n:
            continue
        v = ms[p]
        size[a - 1] += 1
        total[a - 1] += v
        # the sort key of cluster_table: NaN last, infinities as the largest finite values
        if np.isnan(v):
            key = -np.inf
        elif v > big:
            key = big
        elif v < -big:
            key = -big
        else:
            key = v
        if seed[a - 1] < 0 or key > best[a - 1]:
            best[a - 1] = key
            seed[a - 1] = p
