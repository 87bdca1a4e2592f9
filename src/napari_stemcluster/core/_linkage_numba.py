"""numba kernels for :mod:`napari_stemcluster.core.linkage` and the dark-field image."""

from __future__ import annotations

import numba
import numpy as np


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
def _masked_sums(stack, keep, out):
    """``out[i] = sum of stack[i]`` over the pixels where ``keep``, in float64."""
    n, qx, qy = stack.shape
    for i in numba.prange(n):
        acc = 0.0
        for x in range(qx):
            for y in range(qy):
                if keep[x, y]:
                    acc += stack[i, x, y]
        out[i] = acc
