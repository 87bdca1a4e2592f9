"""numba kernel for :mod:`napari_stemcluster.core.similarity`.

Each pattern is read once, converted to float32, blurred, cropped to the
bounding box of the q-mask and multiplied by the mask while it is in cache,
then dotted with its already prepared neighbours. The scan is cut into
strips of columns, one task each, so that the prepared vectors of two scan
rows of a strip stay in the core's cache; the patterns of the column on
either side of a strip are prepared again by that strip (they are cheap
next to a trip to memory). Every value depends only on the two patterns of
its pair, so results do not depend on block size, strip width or threads.
"""

from __future__ import annotations

import numba
import numpy as np

from ._blur import blur_box, padded_index, pattern_scale
from ._reduce import dot4


@numba.njit(cache=True, nogil=True, inline="always")
def _cosine(dot, na2, nb2):
    den = np.sqrt(na2) * np.sqrt(nb2)
    if den == 0.0 or not np.isfinite(den):
        return 0.0
    return min(1.0, max(-1.0, dot / den))


@numba.njit(cache=True, nogil=True)
def _prepare(src, qx, qy, scaled, k, idx_x, box, weight, line, tmp, out):
    """Vector of one pattern into ``out``; returns its squared norm (NaN if bad)."""
    scale = 1.0
    if scaled:
        scale = pattern_scale(src)
        if scale == 0.0:  # NaN or inf in the pattern
            out[:] = 0.0
            return np.nan
    return blur_box(src, qx, qy, scale, k, idx_x, box, weight, line, tmp, out)


@numba.njit(cache=True, nogil=True, parallel=True)
def fused_similarity(block, n_out, qx, qy, scaled, k, box, weight, strip, out, sq):
    """Cosine similarity of each pattern with its 4 forward neighbours.

    ``block`` is ``(n_rows, Ry, Qx * Qy)`` of any native real dtype; rows
    ``0..n_out-1`` are output rows and a following row, when present, is the
    halo needed for the downward neighbours. ``out`` is ``(n_out, Ry, 4)``
    for the offsets (0, 1), (1, -1), (1, 0), (1, 1); pairs leaving the block
    are left untouched. ``k`` are the blur taps, ``box`` the ``(i0, i1, j0,
    j1)`` detector box and ``weight`` the raveled float32 mask on it;
    ``scaled`` asks for a per-pattern power-of-two scale (64-bit and float
    input). ``strip`` is the number of scan columns per task. ``sq``
    ``(n_rows, Ry)`` receives every pattern's squared norm, non-finite when
    the pattern holds NaN or inf.
    """
    n_rows, ry, _ = block.shape
    nk = k.shape[0]
    r = (nk - 1) // 2
    bh = box[1] - box[0]
    bw = box[3] - box[2]
    n = bh * bw
    idx_x = padded_index(qx, r)
    n_strips = (ry + strip - 1) // strip
    for s in numba.prange(n_strips):
        c0 = s * strip
        c1 = min(ry, c0 + strip)
        lo = max(0, c0 - 1)
        hi = min(ry, c1 + 1)
        nc = hi - lo
        prev = np.empty((nc, n), np.float32)
        cur = np.empty((nc, n), np.float32)
        prev_sq = np.empty(nc, np.float64)
        cur_sq = np.empty(nc, np.float64)
        wd = bw + 2 * r
        line = np.empty((bh + 2 * r) * wd + 2 * r, np.float32)
        tmp = np.empty((bh + 2 * r) * wd, np.float32)
        for row in range(n_rows):
            prev, cur = cur, prev
            prev_sq, cur_sq = cur_sq, prev_sq
            for y in range(lo, hi):
                c = y - lo
                v = cur[c]
                cur_sq[c] = _prepare(
                    block[row, y], qx, qy, scaled, k, idx_x, box, weight, line, tmp, v
                )
                if y >= c0 and y < c1:
                    sq[row, y] = cur_sq[c]
                # The new pattern meets its 4 earlier neighbours: the row above
                # at y-1, y, y+1 (pairs owned by them) and the left one (owned
                # by it). Missing partners are replaced by v and ignored.
                up = row > 0
                pl = prev[c - 1] if up and y > lo else v
                pc = prev[c] if up else v
                pr = prev[c + 1] if up and y + 1 < hi else v
                left = cur[c - 1] if y > lo else v
                d_ul, d_u, d_ur, d_l = dot4(v, pl, pc, pr, left)
                nv = cur_sq[c]
                if up:
                    if y - 1 >= c0 and y - 1 < c1:  # (r-1, y-1) -> (1, 1)
                        out[row - 1, y - 1, 3] = _cosine(d_ul, prev_sq[c - 1], nv)
                    if y >= c0 and y < c1:  # (r-1, y) -> (1, 0)
                        out[row - 1, y, 2] = _cosine(d_u, prev_sq[c], nv)
                    if y + 1 >= c0 and y + 1 < c1:  # (r-1, y+1) -> (1, -1)
                        out[row - 1, y + 1, 1] = _cosine(d_ur, prev_sq[c + 1], nv)
                if row < n_out and y - 1 >= c0 and y - 1 < c1:  # (r, y-1) -> (0, 1)
                    out[row, y - 1, 0] = _cosine(d_l, cur_sq[c - 1], nv)
