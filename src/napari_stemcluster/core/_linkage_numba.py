"""numba kernels for :mod:`napari_stemcluster.core.linkage` and the dark-field image."""

from __future__ import annotations

import numba
import numpy as np

from ._similarity_numba import dark_sum


@numba.njit(cache=True, nogil=True, parallel=True)
def _bin_patterns(stack, index, out):
    """``out[i, index[p]] += stack[i, p]`` for every pixel ``p`` with ``index[p] >= 0``."""
    n, npix = stack.shape
    k = out.shape[1]
    for i in numba.prange(n):
        acc = np.zeros(k, np.float32)
        for p in range(npix):
            j = index[p]
            if j >= 0:
                acc[j] += np.float32(stack[i, p])
        out[i, :] = acc


@numba.njit(cache=True, nogil=True, parallel=True)
def _masked_sums(block, runs, exact, out):
    """``out[i, j]`` = float64 sum of ``block[i, j]`` over the pixel ``runs``, as float32.

    ``block`` is ``(n, m, Qx, Qy)`` with contiguous detector rows (it may be
    a crop of a larger array); the sums are those of the similarity kernel
    (:func:`~napari_stemcluster.core._similarity_numba.dark_sum`).
    """
    n, m = block.shape[:2]
    for t in numba.prange(n * m):
        i = t // m
        j = t - i * m
        out[i, j] = np.float32(dark_sum(block[i, j], runs, exact))


@numba.njit(cache=True, nogil=True, inline="always")
def _sampled(cube, stride, ny, i):
    # The i-th sampled pattern (raster order) of cube[::stride, ::stride].
    a = i // ny
    return cube[a * stride, (i - a * ny) * stride]


@numba.njit(cache=True, nogil=True)
def _sampled_sums(cube, stride, parts):
    """Integer sums of the patterns ``cube[::stride, ::stride]`` (exact).

    ``cube`` is ``(Rx, Ry, Q)``; run ``t`` of the sampled positions (raster
    order) is added into ``parts[t]`` (uint32: the caller makes the runs
    short enough not to overflow). Integer sums are exact, so
    ``parts.sum(0)`` is the same for any split. One thread: the few MiB
    sampled are read faster than a parallel launch wakes the others on a
    busy machine.
    """
    rx, ry, q = cube.shape
    nx = (rx + stride - 1) // stride
    ny = (ry + stride - 1) // stride
    n = nx * ny
    n_tasks = parts.shape[0]
    per = (n + n_tasks - 1) // n_tasks
    for t in range(n_tasks):
        dst = parts[t]
        i = t * per
        end = min(n, (t + 1) * per)
        # Four patterns added together before the part: it is read and
        # written once per four patterns (exact integers, the same sums).
        while i + 4 <= end:
            a = _sampled(cube, stride, ny, i)
            b = _sampled(cube, stride, ny, i + 1)
            c = _sampled(cube, stride, ny, i + 2)
            d = _sampled(cube, stride, ny, i + 3)
            for k in range(q):
                dst[k] += (np.uint32(a[k]) + np.uint32(b[k])) + (np.uint32(c[k]) + np.uint32(d[k]))
            i += 4
        while i < end:
            src = _sampled(cube, stride, ny, i)
            for k in range(q):
                dst[k] += np.uint32(src[k])
            i += 1
