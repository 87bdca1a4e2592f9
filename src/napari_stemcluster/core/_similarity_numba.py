"""numba kernel for :mod:`napari_stemcluster.core.similarity`.

Each pattern is read once, converted to float32 and blurred while it is in
cache, keeping only the pixels of the q-mask (a compact vector, run after
run of the mask's row segments), then dotted with its already prepared
neighbours. The scan is cut into
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

from ._blur import blur_runs, blur_runs_sum, padded_index, pattern_scale
from ._reduce import FASTMATH, RUN


@numba.njit(cache=True, nogil=True, inline="always")
def _cosine(dot, na2, nb2):
    den = np.sqrt(na2) * np.sqrt(nb2)
    if den == 0.0 or not np.isfinite(den):
        return 0.0
    return min(1.0, max(-1.0, dot / den))


@numba.njit(cache=True, nogil=True)
def _prepare(src, qx, qy, scale, k, idx_x, box, runs, line, tmp, out, with_sum):
    """Vector of one pattern into ``out``; False (and zeros) if it holds NaN or inf.

    With ``with_sum`` (integer patterns, a blur) also the int64 sum of the
    raw values the blur reads directly (:func:`~napari_stemcluster.core._blur.blur_runs_sum`),
    else 0.
    """
    if scale == 0.0:  # NaN or inf in the pattern
        out[:] = 0.0
        return False, 0
    if with_sum:
        return True, blur_runs_sum(src, qx, qy, k, idx_x, box, runs, line, tmp, out)
    blur_runs(src, qx, qy, scale, k, idx_x, box, runs, line, tmp, out)
    return True, 0


@numba.njit(cache=True, nogil=True)
def range_sum(src, ranges):
    """Exact int64 sum of an integer raveled pattern over flat ``(start, stop)`` ranges."""
    acc = 0
    for t in range(ranges.shape[0]):
        seg = src[ranges[t, 0] : ranges[t, 1]]
        part = 0
        for y in range(seg.shape[0]):
            part += np.int64(seg[y])
        acc += part
    return acc


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def dot5(v, a, b, c, d):
    """``(v . a, v . b, v . c, v . d, v . v)``: float32 products, float64 run sums.

    One sweep over ``v`` for its four earlier neighbours and its own squared
    norm (an extra multiply-add per lane, no extra load). Sums of ``RUN``
    products in float32, added in float64, as
    :func:`~napari_stemcluster.core._reduce.dot4`; the order of operations
    is fixed by the compiled code, so results do not depend on threads,
    blocks or strips.
    """
    sa = 0.0
    sb = 0.0
    sc = 0.0
    sd = 0.0
    sv = 0.0
    for k0 in range(0, v.shape[0], RUN):
        x = v[k0 : k0 + RUN]
        xa = a[k0 : k0 + RUN]
        xb = b[k0 : k0 + RUN]
        xc = c[k0 : k0 + RUN]
        xd = d[k0 : k0 + RUN]
        pa = np.float32(0.0)
        pb = np.float32(0.0)
        pc = np.float32(0.0)
        pd = np.float32(0.0)
        pv = np.float32(0.0)
        for k in range(x.shape[0]):
            xk = x[k]
            pa += xk * xa[k]
            pb += xk * xb[k]
            pc += xk * xc[k]
            pd += xk * xd[k]
            pv += xk * xk
        sa += np.float64(pa)
        sb += np.float64(pb)
        sc += np.float64(pc)
        sd += np.float64(pd)
        sv += np.float64(pv)
    return sa, sb, sc, sd, sv


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


@numba.njit(cache=True, nogil=True, inline="always")
def _bins(dst, w, m, b):
    # Whole bins of ``b`` values: the common widths take a loop of constant
    # stride (inlined), which vectorises; a stride only known at run time
    # does not (4x slower, measured).
    if b == 2:
        _bins_2(dst, w, m)
    elif b == 1:
        for t in range(m):
            dst[t] += w[t]
    elif b == 4:
        _bins_4(dst, w, m)
    elif b == 3:
        _bins_3(dst, w, m)
    else:
        _bins_n(dst, w, m, b)


@numba.njit(cache=True, nogil=True, inline="always")
def _bin_row(vrow, bw, j0, base, b, feat):
    # Add the ``bw`` values of ``vrow`` (detector columns j0..) to the bins
    # of the bin row starting at ``base``: a partial bin at each end, whole
    # bins between (:func:`_bins`).
    lead = min(bw, (b - j0 % b) % b)
    nfull = (bw - lead) // b
    tail = lead + nfull * b
    for j in range(lead):
        feat[base + (j0 + j) // b] += vrow[j]
    first = base + (j0 + lead) // b
    _bins(feat[first : first + nfull], vrow[lead:tail], nfull, b)
    for j in range(tail, bw):
        feat[base + (j0 + j) // b] += vrow[j]


@numba.njit(cache=True, nogil=True, inline="always")
def _unscale(feat, inv_scale):
    if inv_scale != 1.0:
        # In float64, where the power of two is exact; one rounding to float32.
        for t in range(feat.shape[0]):
            feat[t] = np.float32(np.float64(feat[t]) * inv_scale)


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
    for i in range(bh):
        _bin_row(v[i * bw : (i + 1) * bw], bw, j0, ((i0 + i) // b) * by, b, feat)
    _unscale(feat, inv_scale)


@numba.njit(cache=True, nogil=True)
def bin_layout(runs, i0, j0, b, by):
    """Where the pixels of each run go in :func:`bin_runs_laid`: no division per pattern.

    Per run ``(lead, lead_bin, first, nfull, tail, tail_bin)``: ``lead``
    pixels into bin ``lead_bin`` (a partial bin), ``nfull`` whole bins of
    ``b`` pixels from bin ``first``, ``tail`` pixels into ``tail_bin``.
    """
    lay = np.empty((runs.shape[0], 6), np.int64)
    for t in range(runs.shape[0]):
        n = runs[t, 2] - runs[t, 1]
        js = j0 + runs[t, 1]
        base = ((i0 + runs[t, 0]) // b) * by
        lead = min(n, (b - js % b) % b)
        nfull = (n - lead) // b
        first = base + (js + lead) // b
        lay[t, 0] = lead
        lay[t, 1] = base + js // b
        lay[t, 2] = first
        lay[t, 3] = nfull
        lay[t, 4] = n - lead - nfull * b
        lay[t, 5] = first + nfull
    return lay


@numba.njit(cache=True, nogil=True)
def bin_runs_laid(v, lay, b, inv_scale, feat):
    """:func:`bin_runs` with the run layout of :func:`bin_layout` (no divisions)."""
    for t in range(feat.shape[0]):
        feat[t] = 0.0
    o = 0
    for t in range(lay.shape[0]):
        lead = lay[t, 0]
        nfull = lay[t, 3]
        tail = lay[t, 4]
        for j in range(lead):
            feat[lay[t, 1]] += v[o + j]
        o += lead
        first = lay[t, 2]
        _bins(feat[first : first + nfull], v[o : o + nfull * b], nfull, b)
        o += nfull * b
        for j in range(tail):
            feat[lay[t, 5]] += v[o + j]
        o += tail
    _unscale(feat, inv_scale)


@numba.njit(cache=True, nogil=True)
def bin_runs(v, runs, i0, j0, b, by, inv_scale, feat):
    """:func:`bin_box` of a compact vector: the values at the pixels of ``runs``.

    ``runs`` ``(row, start, stop)`` are in the coordinates of a box at
    ``(i0, j0)``, in raster order, so every bin still adds its pixels in
    raster order, starting from 0 (the pixels left out are those that add
    0 in :func:`bin_box`).
    """
    bin_runs_laid(v, bin_layout(runs, i0, j0, b, by), b, inv_scale, feat)


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


@numba.njit(cache=True, nogil=True)
def flat_ranges(runs, qy):
    """``runs`` ``(row, start, stop)`` as ranges ``(start, stop)`` of the raveled pattern.

    Runs that end one row where the next begins (whole rows) are merged:
    for a mask that keeps all but a small disc, most rows are whole, and one
    long sum replaces many short ones (and their scalar remainders).
    """
    out = np.empty((runs.shape[0], 2), np.int64)
    m = 0
    for t in range(runs.shape[0]):
        a = runs[t, 0] * qy + runs[t, 1]
        b = runs[t, 0] * qy + runs[t, 2]
        if m > 0 and out[m - 1, 1] == a:
            out[m - 1, 1] = b
        else:
            out[m, 0] = a
            out[m, 1] = b
            m += 1
    return out[:m]


@numba.njit(cache=True, nogil=True)
def dark_sum_flat(src, ranges, exact):
    """:func:`dark_sum` of a raveled pattern over :func:`flat_ranges` (same value).

    The same pixels in the same (raster) order; the integer sums of
    ``exact`` input do not depend on the order anyway. 8- and 16-bit
    values are summed in int32 in pieces of up to 32767 (exact, twice the
    SIMD lanes of int64).
    """
    if exact:
        small = src.itemsize <= 2
        acc = 0
        for r in range(ranges.shape[0]):
            a = ranges[r, 0]
            b = ranges[r, 1]
            if small:
                while a < b:
                    seg = src[a : min(b, a + 32767)]
                    p32 = np.int32(0)
                    for y in range(seg.shape[0]):
                        # Kept int32 (numba widens int32 + int32 to int64).
                        p32 = np.int32(p32 + np.int32(seg[y]))
                    acc += np.int64(p32)
                    a += 32767
            else:
                seg = src[a:b]
                part = 0
                for y in range(seg.shape[0]):
                    part += np.int64(seg[y])
                acc += part
        return np.float64(acc)
    total = 0.0
    for r in range(ranges.shape[0]):
        for y in range(ranges[r, 0], ranges[r, 1]):
            total += src[y]
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
    qruns,
    strip,
    out,
    sq,
    bins,
    feats,
    runs,
    exact,
    signal,
    slots,
    dark_plus,
    dark_minus,
):
    """Cosine similarity of each pattern with its 4 forward neighbours.

    ``block`` is ``(n_rows, Ry, Qx * Qy)`` of any native real dtype; rows
    ``0..n_out-1`` are output rows and a following row, when present, is the
    halo needed for the downward neighbours. ``out`` is ``(n_out, Ry, 4)``
    for the offsets (0, 1), (1, -1), (1, 0), (1, 1); pairs leaving the block
    are left untouched. ``k`` are the blur taps, ``box`` the ``(i0, i1, j0,
    j1)`` bounding box of the q-mask, ``qruns`` ``(m, 3)`` the mask's row
    segments ``(row, start, stop)`` in box coordinates (raster order);
    ``scaled`` asks for a per-pattern power-of-two scale (64-bit and float
    input). ``strip`` is the number of scan columns per task. ``sq``
    ``(n_rows, Ry)`` receives every pattern's squared norm, non-finite when
    the pattern holds NaN or inf.

    Optional outputs for the output rows (empty arrays skip them): ``feats``
    ``(n_out, Ry, K)`` receives the patterns binned by :func:`bin_runs` with
    ``bins = (b, bx, by)``, or with ``slots`` (non-empty) only the bins
    ``slots`` (those that meet the q-mask; the others are always 0);
    ``signal`` ``(n_out, Ry)`` the float32 :func:`dark_sum`
    of the raw patterns over the pixel ``runs`` of the kept mask (``exact`` for
    integers of up to 32 bits).

    ``dark_plus`` and ``dark_minus`` (flat ``(start, stop)`` ranges, or
    ``dark_plus`` with no column to leave it off) split that sum for exact
    input with a blur: the rectangle the blur reads anyway
    (:func:`~napari_stemcluster.core._blur.dark_rect`, summed in its
    conversion loop), plus the kept pixels outside it, minus the pixels of
    the rectangle that are not kept. Integer sums, so the same value.
    """
    n_rows, ry, _ = block.shape
    nk = k.shape[0]
    r = (nk - 1) // 2
    n = 0
    for t in range(qruns.shape[0]):
        n += qruns[t, 2] - qruns[t, 1]
    # Rows of whole cache lines with room for the 8-float overflow of
    # blur_runs' last run.
    ns = (n + 8 + 15) // 16 * 16
    bh = box[1] - box[0]
    bw = box[3] - box[2]
    idx_x = padded_index(qx, r)
    want_feats = feats.shape[0] > 0
    want_signal = signal.shape[0] > 0
    b = bins[0] if want_feats else 1
    by = bins[2] if want_feats else 1
    compact = want_feats and slots.shape[0] > 0
    n_slots = slots.shape[0]
    lay = bin_layout(qruns, box[0], box[2], b, by)
    franges = flat_ranges(runs, qy)
    with_sum = want_signal and exact and not scaled and nk > 1 and dark_plus.shape[1] == 2
    if compact:
        # Bin straight into the kept bins: a run's whole bins meet the mask
        # and lie in one bin row, so their slots are consecutive too.
        slot_of = np.full(bins[1] * bins[2], -1, np.int64)
        for i in range(n_slots):
            slot_of[slots[i]] = i
        for t in range(lay.shape[0]):
            if lay[t, 0] > 0:
                lay[t, 1] = slot_of[lay[t, 1]]
            if lay[t, 3] > 0:
                lay[t, 2] = slot_of[lay[t, 2]]
            if lay[t, 4] > 0:
                lay[t, 5] = slot_of[lay[t, 5]]
    n_strips = (ry + strip - 1) // strip
    for s in numba.prange(n_strips):
        c0 = s * strip
        c1 = min(ry, c0 + strip)
        lo = max(0, c0 - 1)
        hi = min(ry, c1 + 1)
        nc = hi - lo
        prev = np.empty((nc, ns), np.float32)
        cur = np.empty((nc, ns), np.float32)
        prev_sq = np.empty(nc, np.float64)
        cur_sq = np.empty(nc, np.float64)
        wd = bw + 2 * r
        line = np.empty((bh + 2 * r) * wd + 2 * r, np.float32)
        tmp = np.empty((bh + 2 * r) * wd + 16, np.float32)
        for row in range(n_rows):
            prev, cur = cur, prev
            prev_sq, cur_sq = cur_sq, prev_sq
            for y in range(lo, hi):
                c = y - lo
                vs = cur[c]
                v = vs[:n]
                src = block[row, y]
                scale = pattern_scale(src) if scaled else 1.0
                good, rect_sum = _prepare(
                    src, qx, qy, scale, k, idx_x, box, qruns, line, tmp, vs, with_sum
                )
                # The new pattern meets its 4 earlier neighbours: the row above
                # at y-1, y, y+1 (pairs owned by them) and the left one (owned
                # by it). Missing partners are replaced by v and ignored.
                up = row > 0
                pl = prev[c - 1, :n] if up and y > lo else v
                pc = prev[c, :n] if up else v
                pr = prev[c + 1, :n] if up and y + 1 < hi else v
                left = cur[c - 1, :n] if y > lo else v
                d_ul, d_u, d_ur, d_l, nv = dot5(v, pl, pc, pr, left)
                if not good:
                    nv = np.nan
                cur_sq[c] = nv
                if y >= c0 and y < c1:
                    sq[row, y] = cur_sq[c]
                    if row < n_out:
                        # The pattern is in cache: its other per-position outputs.
                        if want_feats:
                            inv = 1.0 / scale if scale != 0.0 else 1.0
                            bin_runs_laid(v, lay, b, inv, feats[row, y])
                        if with_sum:
                            total = (
                                rect_sum + range_sum(src, dark_plus) - range_sum(src, dark_minus)
                            )
                            signal[row, y] = np.float32(np.float64(total))
                        elif want_signal:
                            signal[row, y] = np.float32(dark_sum_flat(src, franges, exact))
                if up:
                    if y - 1 >= c0 and y - 1 < c1:  # (r-1, y-1) -> (1, 1)
                        out[row - 1, y - 1, 3] = _cosine(d_ul, prev_sq[c - 1], nv)
                    if y >= c0 and y < c1:  # (r-1, y) -> (1, 0)
                        out[row - 1, y, 2] = _cosine(d_u, prev_sq[c], nv)
                    if y + 1 >= c0 and y + 1 < c1:  # (r-1, y+1) -> (1, -1)
                        out[row - 1, y + 1, 1] = _cosine(d_ur, prev_sq[c + 1], nv)
                if row < n_out and y - 1 >= c0 and y - 1 < c1:  # (r, y-1) -> (0, 1)
                    out[row, y - 1, 0] = _cosine(d_l, cur_sq[c - 1], nv)
