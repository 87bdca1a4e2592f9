"""numba kernel for :mod:`napari_stemcluster.core.similarity`.

Each pattern is read once, converted to float32, blurred, cropped to the
bounding box of the q-mask and multiplied by the mask while it is in cache,
then dotted with its already prepared neighbours. The scan is cut into
strips of columns, one task each, so that the prepared vectors of two scan
rows of a strip stay in the core's cache; the patterns of the column on
either side of a strip are prepared again by that strip (they are cheap
next to a trip to memory). Every value depends only on the two patterns of
its pair, so results do not depend on block size, strip width or threads.

The same pass can also give, for free while each pattern is in cache, the
inputs of the regions pass: the binned (blurred, masked) pattern of every
position, as :func:`~napari_stemcluster.core.linkage.pattern_features`,
and the raw counts outside the direct beam, as
:func:`~napari_stemcluster.core.masking.dark_field_image`.
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
def _prepare(src, qx, qy, scale, k, idx_x, box, weight, line, tmp, out):
    """Vector of one pattern into ``out``; returns its squared norm (NaN if bad)."""
    if scale == 0.0:  # NaN or inf in the pattern
        out[:] = 0.0
        return np.nan
    return blur_box(src, qx, qy, scale, k, idx_x, box, weight, line, tmp, out)


@numba.njit(cache=True, nogil=True, inline="always")
def _bins_2(dst, w, m):
    for t in range(m):
        d = dst[t]
        d += w[2 * t]
        d += w[2 * t + 1]
        dst[t] = d


@numba.njit(cache=True, nogil=True, inline="always")
def _bins_3(dst, w, m):
    for t in range(m):
        d = dst[t]
        d += w[3 * t]
        d += w[3 * t + 1]
        d += w[3 * t + 2]
        dst[t] = d


@numba.njit(cache=True, nogil=True, inline="always")
def _bins_4(dst, w, m):
    for t in range(m):
        d = dst[t]
        d += w[4 * t]
        d += w[4 * t + 1]
        d += w[4 * t + 2]
        d += w[4 * t + 3]
        dst[t] = d


@numba.njit(cache=True, nogil=True, inline="always")
def _bins_n(dst, w, m, b):
    for t in range(m):
        d = dst[t]
        for c in range(b):
            d += w[b * t + c]
        dst[t] = d


@numba.njit(cache=True, nogil=True)
def bin_box(v, bh, bw, i0, j0, b, by, inv_scale, feat):
    """Sum the box vector ``v`` (``bh x bw`` at ``(i0, j0)``) into ``b x b`` bins.

    ``feat`` (row-major bins of ``by`` columns over the whole detector) is
    overwritten; bins outside the box are 0. Every bin adds its pixels in
    raster order, starting from 0, as
    :func:`~napari_stemcluster.core._linkage_numba._bin_patterns` does
    (pixels outside the q-mask are 0 in ``v`` and add nothing). No fastmath
    here: the order of the float32 sums is the reference's. ``inv_scale``
    undoes the kernel's power-of-two scaling (exact).
    """
    for t in range(feat.shape[0]):
        feat[t] = 0.0
    # Per box row: a partial bin at each end, whole bins between. The whole
    # bins take a loop of constant stride (inlined), which vectorises; a
    # stride only known at run time does not (4x slower, measured).
    lead = min(bw, (b - j0 % b) % b)
    nfull = (bw - lead) // b
    tail = lead + nfull * b
    for i in range(bh):
        base = ((i0 + i) // b) * by
        vrow = v[i * bw : (i + 1) * bw]
        for j in range(lead):
            feat[base + (j0 + j) // b] += vrow[j]
        first = base + (j0 + lead) // b
        dst = feat[first : first + nfull]
        w = vrow[lead:tail]
        if b == 2:
            _bins_2(dst, w, nfull)
        elif b == 1:
            for t in range(nfull):
                dst[t] += w[t]
        elif b == 4:
            _bins_4(dst, w, nfull)
        elif b == 3:
            _bins_3(dst, w, nfull)
        else:
            _bins_n(dst, w, nfull, b)
        for j in range(tail, bw):
            feat[base + (j0 + j) // b] += vrow[j]
    if inv_scale != 1.0:
        # In float64, where the power of two is exact; one rounding to float32.
        for t in range(feat.shape[0]):
            feat[t] = np.float32(np.float64(feat[t]) * inv_scale)


@numba.njit(cache=True, nogil=True)
def dark_sum(src, runs, exact):
    """Sum of the raw values of the ``(Qx, Qy)`` pattern ``src`` over ``runs``.

    ``runs`` ``(n, 3)`` are the kept pixels as row segments ``(row, start,
    stop)`` in raster order. Returns a float64. ``exact``: integers of up to
    32 bits, whose float64 sums in raster order are exact, so an int64 sum
    in any order (vectorised) is the same number. Otherwise the float64 sum
    runs in raster order. ``src`` needs contiguous rows only.
    """
    if exact:
        acc = 0
        for r in range(runs.shape[0]):
            seg = src[runs[r, 0]][runs[r, 1] : runs[r, 2]]
            part = 0
            for y in range(seg.shape[0]):
                part += np.int64(seg[y])
            acc += part
        return np.float64(acc)
    total = 0.0
    for r in range(runs.shape[0]):
        row = src[runs[r, 0]]
        for y in range(runs[r, 1], runs[r, 2]):
            total += row[y]
    return total


@numba.njit(cache=True, nogil=True, parallel=True)
def fused_similarity(
    block,
    n_out,
    qx,
    qy,
    scaled,
    k,
    box,
    weight,
    strip,
    out,
    sq,
    bins,
    feats,
    runs,
    exact,
    signal,
    slots,
):
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

    Optional outputs for the output rows (empty arrays skip them): ``feats``
    ``(n_out, Ry, K)`` receives the patterns binned by :func:`bin_box` with
    ``bins = (b, bx, by)``, or with ``slots`` (non-empty) only the bins
    ``slots`` (those that meet the q-mask; the others are always 0);
    ``signal`` ``(n_out, Ry)`` the float32 :func:`dark_sum`
    of the raw patterns over the pixel ``runs`` of the kept mask (``exact`` for
    integers of up to 32 bits).
    """
    n_rows, ry, _ = block.shape
    nk = k.shape[0]
    r = (nk - 1) // 2
    bh = box[1] - box[0]
    bw = box[3] - box[2]
    n = bh * bw
    idx_x = padded_index(qx, r)
    want_feats = feats.shape[0] > 0
    want_signal = signal.shape[0] > 0
    b = bins[0] if want_feats else 1
    by = bins[2] if want_feats else 1
    compact = want_feats and slots.shape[0] > 0
    n_slots = slots.shape[0]
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
        # All bins of one pattern, in cache, when only some are kept.
        full = np.empty(bins[1] * bins[2] if compact else 1, np.float32)
        for row in range(n_rows):
            prev, cur = cur, prev
            prev_sq, cur_sq = cur_sq, prev_sq
            for y in range(lo, hi):
                c = y - lo
                v = cur[c]
                src = block[row, y]
                scale = pattern_scale(src) if scaled else 1.0
                cur_sq[c] = _prepare(src, qx, qy, scale, k, idx_x, box, weight, line, tmp, v)
                if y >= c0 and y < c1:
                    sq[row, y] = cur_sq[c]
                    if row < n_out:
                        # The pattern is in cache: its other per-position outputs.
                        if want_feats:
                            inv = 1.0 / scale if scale != 0.0 else 1.0
                            if compact:
                                bin_box(v, bh, bw, box[0], box[2], b, by, inv, full)
                                fo = feats[row, y]
                                for i in range(n_slots):
                                    fo[i] = full[slots[i]]
                            else:
                                bin_box(v, bh, bw, box[0], box[2], b, by, inv, feats[row, y])
                        if want_signal:
                            signal[row, y] = np.float32(
                                dark_sum(src.reshape((qx, qy)), runs, exact)
                            )
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
