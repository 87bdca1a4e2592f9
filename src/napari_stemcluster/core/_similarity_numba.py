"""numba kernels for :mod:`napari_stemcluster.core.similarity`."""

from __future__ import annotations

import numba
import numpy as np

from ._reduce import dot as _dot


@numba.njit(cache=True, nogil=True, parallel=True)
def _block_similarity(block, n_out, out):
    """Cosine similarity of each pattern with its 4 forward neighbours.

    ``block`` is ``(n_rows, Ry, Q)``; rows ``0..n_out-1`` are output rows and
    a following row, when present, is the halo needed for the downward
    neighbours. ``out`` is ``(n_out, Ry, 4)`` for the offsets (0, 1),
    (1, -1), (1, 0), (1, 1); pairs leaving the block are left untouched.
    Returns the squared norm of every pattern in the block.
    """
    n_rows, ry, _ = block.shape
    sq = np.empty((n_rows, ry), np.float64)
    for i in numba.prange(n_rows * ry):
        r = i // ry
        y = i - r * ry
        sq[r, y] = _dot(block[r, y], block[r, y])
    for i in numba.prange(n_out * ry):
        r = i // ry
        y = i - r * ry
        a = block[r, y]
        na = np.sqrt(sq[r, y])
        for d in range(4):
            if d == 0:
                rr, yy = r, y + 1
            else:
                rr, yy = r + 1, y + d - 2
            if rr >= n_rows or yy < 0 or yy >= ry:
                continue
            den = na * np.sqrt(sq[rr, yy])
            if den == 0.0 or not np.isfinite(den):
                s = 0.0
            else:
                s = _dot(a, block[rr, yy]) / den
                s = min(1.0, max(-1.0, s))
            out[r, y, d] = s
    return sq
