"""numba kernels of the correlative prefilter (see :mod:`.prefilter`).

The scan is processed in blocks of rows held in ring buffers: scan row ``r``
lives in slot ``r % capacity`` of each buffer, so rows read or computed for
one block are reused by the next without copying. An in-memory cube is its
own raw "ring" (capacity = number of rows): it is never copied.

Every value is computed by exactly one thread with a fixed order of
operations, so results do not depend on the block size or thread count.
Inner loops live in small helper functions: LLVM leaves loops scalar in a
function with several loops and branches (measured 3-5x slower).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._blur import _weigh, pattern_scale
from ._reduce import FASTMATH as _FASTMATH
from ._reduce import dot4 as _dot4

# Squared norms below this fraction of the squared weighted spread count as 0.
_ZERO_NORM2 = 1e-24
#: Scan positions per parallel task (scratch buffers are allocated per task).
_TASK = 8
#: Pixels per chunk of the averaging (two float32 outputs of it fit in L1).
_CHUNK = 1024
#: Box rows per band of the blur.
_BAND = 8
#: Unsigned indices: no negative-index checks, loops vectorise.
U = np.uint64


# Tasks are handed out one at a time from a shared counter: a prange gives
# each thread one equal share of the iterations up front, so a thread slowed
# by other work on its core (or given the heavier strips) held up the whole
# call. Each thread's first prange iteration claims tasks until none is left
# (the others find none). Every task computes its values alone in a fixed
# order, so results do not depend on which thread runs which task.


@intrinsic
def _claim(typingctx, counter):
    """``counter[0]++`` as one atomic operation; returns the previous value."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        one = ir.Constant(ir.IntType(64), 1)
        return builder.atomic_rmw("add", ary.data, one, "monotonic")

    return types.int64(counter), codegen


@numba.njit(cache=True, nogil=True)
def _task_counter():
    # Made here, not in the parallel kernel: there numba takes an array that
    # the loop does not visibly write for a private one of each thread.
    return np.zeros(1, np.int64)


# Filling of the padded box (the steps of ``_blur.blur_box`` for any tap
# count, kept here so that the prefilter's blur does not change when that
# module's fast paths do); the weighting step is the blur module's own.


@numba.njit(cache=True, nogil=True, inline="always")
def _reflect(i, n):
    # scipy's "reflect" (half-sample symmetric) extension: period 2n. The
    # usual case, at most n outside, without the (slow) integer division.
    if i < 0 and i >= -n:
        return -1 - i
    if i >= n and i < 2 * n:
        return 2 * n - 1 - i
    if i >= 0 and i < n:
        return i
    m = i % (2 * n)
    if m < 0:
        m += 2 * n
    if m >= n:
        m = 2 * n - 1 - m
    return m


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _fill_mid(src, qy, idx_x, i0, n_rows, lo, hi, pad, wd, off):
    n = hi - lo
    for p in range(n_rows):
        s0 = idx_x[i0 + p] * qy
        mid = src[s0 + lo : s0 + hi]
        seg = pad[p * wd + off : p * wd + off + n]
        for j in range(n):
            seg[j] = np.float32(mid[j])


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _fill_mid_scaled(src, qy, idx_x, i0, n_rows, lo, hi, pad, wd, off, scale):
    n = hi - lo
    for p in range(n_rows):
        s0 = idx_x[i0 + p] * qy
        mid = src[s0 + lo : s0 + hi]
        seg = pad[p * wd + off : p * wd + off + n]
        for j in range(n):
            seg[j] = np.float32(np.float64(mid[j]) * scale)


@numba.njit(cache=True, nogil=True)
def _fill_ends(src, qy, idx_x, i0, n_rows, cols, off, n_mid, pad, wd, scale):
    # Padded columns outside the detector, reflected: at most r each side;
    # ``cols[j]`` is the source column of padded column ``j`` (see
    # :func:`_reflected_columns`: no index arithmetic per pixel).
    for p in range(n_rows):
        s0 = idx_x[i0 + p] * qy
        row = pad[p * wd : (p + 1) * wd]
        for j in range(off):
            row[j] = np.float32(np.float64(src[s0 + cols[j]]) * scale)
        for j in range(off + n_mid, wd):
            row[j] = np.float32(np.float64(src[s0 + cols[j]]) * scale)


@numba.njit(cache=True, nogil=True)
def _within(cols, off, n_mid, wd, lo, hi):
    # Whether every end column's source lies in the filled columns lo:hi.
    for j in range(wd):
        if (j < off or j >= off + n_mid) and (cols[j] < lo or cols[j] >= hi):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _copy_ends(row, cols, off, n_mid, wd, lo):
    # End columns from the filled column they reflect (at off + col - lo).
    for j in range(off):
        row[j] = row[off + cols[j] - lo]
    for j in range(off + n_mid, wd):
        row[j] = row[off + cols[j] - lo]


@numba.njit(cache=True, nogil=True)
def _reflected_columns(c0, wd, qy):
    cols = np.empty(wd, np.int64)
    for j in range(wd):
        cols[j] = _reflect(c0 + j, qy)
    return cols


# One loop per function (a branch around two loops keeps LLVM from
# vectorising either): "first" kernels set dst with the centre tap, the
# others add to it.


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _pairs4_first(src, step, k, r, n, dst):
    d = dst[0:n]
    c = src[r * step : r * step + n]
    a0 = src[(r - 1) * step : (r - 1) * step + n]
    b0 = src[(r + 1) * step : (r + 1) * step + n]
    a1 = src[(r - 2) * step : (r - 2) * step + n]
    b1 = src[(r + 2) * step : (r + 2) * step + n]
    a2 = src[(r - 3) * step : (r - 3) * step + n]
    b2 = src[(r + 3) * step : (r + 3) * step + n]
    a3 = src[(r - 4) * step : (r - 4) * step + n]
    b3 = src[(r + 4) * step : (r + 4) * step + n]
    wc, w0, w1, w2, w3 = k[r], k[r + 1], k[r + 2], k[r + 3], k[r + 4]
    for j in range(n):
        d[j] = (
            wc * c[j] + w0 * (a0[j] + b0[j]) + w1 * (a1[j] + b1[j])
            + w2 * (a2[j] + b2[j]) + w3 * (a3[j] + b3[j])
        )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _pairs4_add(src, step, k, r, t, n, dst):
    d = dst[0:n]
    a0 = src[(r - t) * step : (r - t) * step + n]
    b0 = src[(r + t) * step : (r + t) * step + n]
    a1 = src[(r - t - 1) * step : (r - t - 1) * step + n]
    b1 = src[(r + t + 1) * step : (r + t + 1) * step + n]
    a2 = src[(r - t - 2) * step : (r - t - 2) * step + n]
    b2 = src[(r + t + 2) * step : (r + t + 2) * step + n]
    a3 = src[(r - t - 3) * step : (r - t - 3) * step + n]
    b3 = src[(r + t + 3) * step : (r + t + 3) * step + n]
    w0, w1, w2, w3 = k[r + t], k[r + t + 1], k[r + t + 2], k[r + t + 3]
    for j in range(n):
        d[j] += (
            w0 * (a0[j] + b0[j]) + w1 * (a1[j] + b1[j])
            + w2 * (a2[j] + b2[j]) + w3 * (a3[j] + b3[j])
        )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _pair1_first(src, step, k, r, n, dst):
    d = dst[0:n]
    c = src[r * step : r * step + n]
    a0 = src[(r - 1) * step : (r - 1) * step + n]
    b0 = src[(r + 1) * step : (r + 1) * step + n]
    wc, w0 = k[r], k[r + 1]
    for j in range(n):
        d[j] = wc * c[j] + w0 * (a0[j] + b0[j])


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _pair1_add(src, step, k, r, t, n, dst):
    d = dst[0:n]
    a0 = src[(r - t) * step : (r - t) * step + n]
    b0 = src[(r + t) * step : (r + t) * step + n]
    w0 = k[r + t]
    for j in range(n):
        d[j] += w0 * (a0[j] + b0[j])


@numba.njit(cache=True, nogil=True)
def _symmetric_taps(src, step, k, n, dst):
    """``dst[j] = sum_t k[t] * src[j + t * step]`` for a symmetric ``k``.

    Mirror taps are added before they are multiplied: half the
    multiplications, and the additions run on other execution ports.
    """
    r = (k.shape[0] - 1) // 2
    if r == 0:
        d = dst[0:n]
        c = src[0:n]
        w = k[0]
        for j in range(n):
            d[j] = w * c[j]
        return
    if r >= 4:
        _pairs4_first(src, step, k, r, n, dst)
        t = 5
    else:
        _pair1_first(src, step, k, r, n, dst)
        t = 2
    while t <= r:
        if r - t + 1 >= 4:
            _pairs4_add(src, step, k, r, t, n, dst)
            t += 4
        else:
            _pair1_add(src, step, k, r, t, n, dst)
            t += 1


@numba.njit(cache=True, nogil=True)
def _blur_box(src, qx, qy, scale, k, idx_x, box, weight, pad, tmp, out):
    """Blur one raveled ``(qx, qy)`` pattern, crop it to ``box``, weight it.

    The values of :func:`._blur.blur_box` (reflect-boundary Gaussian of 1-D
    taps ``k`` of ``scale * src``, cropped to ``box``, times ``weight``) with
    the passes in the other order: the pass along the detector rows first,
    on the ``box`` rows only, then the pass along the columns. Both passes
    run over the padded buffer as one flat line, so that pass is computed on
    ``(i1 - i0) * (j1 - j0 + 2r)`` values instead of ``(i1 - i0 + 2r) * (j1 -
    j0 + 2r)`` (18 % fewer multiply-adds at 64x64, sigma 3).
    """
    nk = k.shape[0]
    r = (nk - 1) // 2
    i0, i1, j0, j1 = box[0], box[1], box[2], box[3]
    bh = i1 - i0
    bw = j1 - j0
    wd = bw + 2 * r  # row stride of the padded buffers
    lo = max(0, j0 - r)
    hi = min(qy, j1 + r)
    off = lo - (j0 - r)
    n_rows = bh + 2 * r
    if scale == 1.0:
        _fill_mid(src, qy, idx_x, i0, n_rows, lo, hi, pad, wd, off)
    else:
        _fill_mid_scaled(src, qy, idx_x, i0, n_rows, lo, hi, pad, wd, off, scale)
    if off > 0 or hi < j1 + r:
        cols = _reflected_columns(j0 - r, wd, qy)
        _fill_ends(src, qy, idx_x, i0, n_rows, cols, off, hi - lo, pad, wd, scale)
    if nk == 1:
        return _weigh(pad, wd, bh, bw, weight, out)
    # Bands of _BAND box rows: the band's intermediate values stay in L1
    # beside the padded pattern.
    band = tmp[: _BAND * wd]
    hb = tmp[_BAND * wd : 2 * _BAND * wd]
    total = 0.0
    for b0 in range(0, bh, _BAND):
        nb = min(_BAND, bh - b0)
        n = nb * wd
        _symmetric_taps(pad[b0 * wd :], wd, k, n, band)
        # Along the second axis; outputs that straddle a row end land in the
        # 2r unused columns of each row.
        _symmetric_taps(band, 1, k, n - 2 * r, hb)
        total += _weigh(hb, wd, nb, bw, weight[b0 * bw :], out[b0 * bw :])
    return total


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _moments(b, w, b0):
    shifted = 0.0
    scale = 0.0
    for k0 in range(0, b.shape[0], 256):
        x = b[k0 : k0 + 256]
        y = w[k0 : k0 + 256]
        ps = np.float32(0.0)
        pq = np.float32(0.0)
        for i in range(x.shape[0]):
            s = (x[i] - b0) * y[i]
            ps += s
            pq += s * s
        shifted += np.float64(ps)
        scale += np.float64(pq)
    return shifted, scale


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _centred_norm2(b, w, mean):
    total = 0.0
    for k0 in range(0, b.shape[0], 256):
        x = b[k0 : k0 + 256]
        y = w[k0 : k0 + 256]
        part = np.float32(0.0)
        for i in range(x.shape[0]):
            d = (x[i] - mean) * y[i]
            part += d * d
        total += np.float64(part)
    return total


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _centred_unit(b, w, mean, inv, v):
    for i in range(b.shape[0]):
        v[i] = (b[i] - mean) * w[i] * inv


@numba.njit(cache=True, nogil=True)
def _item_scale(src, scaled, v, bad, row, c):
    """The power-of-two scale of pattern ``src`` (1 unless ``scaled``), 0 for a bad one.

    Correlations do not depend on a pattern's scale: a power of two keeps
    64-bit and float values inside float32's range. A pattern holding NaN or
    inf gets ``bad[row, c] = NaN`` and a zero vector ``v``.
    """
    bad[row, c] = 0.0
    if not scaled:
        return 1.0
    scale = pattern_scale(src)
    if scale == 0.0:
        bad[row, c] = np.nan
        v[:] = 0.0
    return scale


@numba.njit(cache=True, nogil=True)
def _unit_vector(b, wm, wmsum, wv, v):
    """``v = (b - mean) wv`` L2-normalised, the mean weighted by ``wm`` (sum ``wmsum``)."""
    # Weighted mean taken relative to one pixel, so a constant pattern
    # centres to exactly zero instead of to rounding noise.
    b0 = np.float64(b[0])
    shifted, spread = _moments(b, wm, np.float32(b0))
    mean = b0 + shifted / wmsum
    norm2 = _centred_norm2(b, wv, np.float32(mean))
    # A norm at the rounding level of the mean (a pattern constant where the
    # weight is nonzero) is zero: normalising it would amplify noise.
    if norm2 > _ZERO_NORM2 * spread:
        _centred_unit(b, wv, np.float32(mean), np.float32(1.0 / np.sqrt(norm2)), v)
    else:
        v[:] = 0.0


@numba.njit(cache=True, nogil=True, parallel=True)
def normalised_vectors(
    raw, raw_cap, rows, qx, qy, scaled, k, idx_x, box, ones, w, wsum, vec, vec_cap, bad
):
    """Blur, weight, centre and L2-normalise the patterns of scan ``rows``.

    ``raw[r % raw_cap, c]`` is the raveled raw pattern at ``(r, c)``; the
    unit vector, on the detector ``box`` where the weight ``w`` (raveled on
    the box, sum ``wsum``) is nonzero, goes to ``vec[r % vec_cap, c]`` (zero
    when the weighted, centred pattern is zero to rounding). ``bad[r, c]``
    is set to NaN when the pattern holds NaN or inf (checked on float input,
    ``scaled``), else 0. ``ones`` is a box of float32 ones.
    """
    ny = raw.shape[1]
    r = (k.shape[0] - 1) // 2
    bh = box[1] - box[0]
    bw = box[3] - box[2]
    n_items = rows.shape[0] * ny
    n_tasks = (n_items + _TASK - 1) // _TASK
    counter = _task_counter()
    for _ in numba.prange(n_tasks):  # each thread's first one does the work
        while True:
            task = _claim(counter)
            if task >= n_tasks:
                break
            pad = np.empty((bh + 2 * r) * (bw + 2 * r) + 2 * r, np.float32)
            tmp = np.empty(max(bh + 2 * r, 2 * _BAND) * (bw + 2 * r), np.float32)
            b = np.empty(bh * bw, np.float32)
            for t in range(task * _TASK, min(n_items, (task + 1) * _TASK)):
                row = rows[t // ny]
                c = t % ny
                src = raw[row % raw_cap, c]
                v = vec[row % vec_cap, c]
                scale = _item_scale(src, scaled, v, bad, row, c)
                if scale == 0.0:
                    continue
                _blur_box(src, qx, qy, scale, k, idx_x, box, ones, pad, tmp, b)
                _unit_vector(b, w, wsum, w, v)


@numba.njit(cache=True, nogil=True, parallel=True)
def forward_weights(vec, vec_cap, r0, r1, nx, fwd, rmin, rmax, rh, rh_cap, strip):
    """Mapped correlations R_hat of every forward pair starting in rows r0:r1.

    ``rh[r % rh_cap, c, k]`` receives R_hat between ``(r, c)`` and
    ``(r, c) + fwd[k]``, or 0 when that neighbour lies outside the scan. Each
    unordered pair is a forward pair of exactly one of its two ends. The
    forward offsets are taken four at a time (one sweep over the pattern's
    vector per four partners); a missing partner is replaced by the vector
    itself and its result ignored. One task walks a strip of ``strip`` scan
    columns down the rows, so the partners' vectors (the next rows of the
    strip and its margins) stay in cache from one row to the next.
    """
    ny = vec.shape[1]
    nk = fwd.shape[0]
    span = rmax - rmin
    n_tasks = (ny + strip - 1) // strip
    counter = _task_counter()
    for _ in numba.prange(n_tasks):  # each thread's first one does the work
        while True:
            s = _claim(counter)
            if s >= n_tasks:
                break
            for r in range(r0, r1):
                for c in range(s * strip, min(ny, (s + 1) * strip)):
                    a = vec[r % vec_cap, c]
                    dst = rh[r % rh_cap, c]
                    for k0 in range(0, nk, 4):
                        p0 = _partner(vec, vec_cap, nx, ny, r, c, fwd, k0, a)
                        p1 = _partner(vec, vec_cap, nx, ny, r, c, fwd, k0 + 1, a)
                        p2 = _partner(vec, vec_cap, nx, ny, r, c, fwd, k0 + 2, a)
                        p3 = _partner(vec, vec_cap, nx, ny, r, c, fwd, k0 + 3, a)
                        d0, d1, d2, d3 = _dot4(a, p0, p1, p2, p3)
                        _store(dst, k0, nk, nx, ny, r, c, fwd, d0, rmin, span)
                        _store(dst, k0 + 1, nk, nx, ny, r, c, fwd, d1, rmin, span)
                        _store(dst, k0 + 2, nk, nx, ny, r, c, fwd, d2, rmin, span)
                        _store(dst, k0 + 3, nk, nx, ny, r, c, fwd, d3, rmin, span)


@numba.njit(cache=True, nogil=True, inline="always")
def _inside(nx, ny, r, c, fwd, k):
    if k >= fwd.shape[0]:
        return False
    rr = r + fwd[k, 0]
    cc = c + fwd[k, 1]
    return rr < nx and cc >= 0 and cc < ny


@numba.njit(cache=True, nogil=True, inline="always")
def _partner(vec, vec_cap, nx, ny, r, c, fwd, k, a):
    if _inside(nx, ny, r, c, fwd, k):
        return vec[(r + fwd[k, 0]) % vec_cap, c + fwd[k, 1]]
    return a


@numba.njit(cache=True, nogil=True, inline="always")
def _store(dst, k, nk, nx, ny, r, c, fwd, d, rmin, span):
    if k >= nk:
        return
    if _inside(nx, ny, r, c, fwd, k):
        x = (d - rmin) / span
        dst[k] = np.float32(min(max(x, 0.0), 1.0))
    else:
        dst[k] = 0.0


# The sums are split into "set" and "add" kernels: with a branch around two
# loops LLVM vectorises neither. Two arrays only (all neighbours are rows of
# one), so LLVM's aliasing checks stay few enough for it to vectorise.


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _set4x2(acc, raw2, p0, p1, i0, i1, i2, i3, a0, a1, a2, a3, b0, b1, b2, b3):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        x0 = np.float32(raw2[i0, i])
        x1 = np.float32(raw2[i1, i])
        x2 = np.float32(raw2[i2, i])
        x3 = np.float32(raw2[i3, i])
        acc[0, i] = a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
        acc[1, i] = b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _add4x2(acc, raw2, p0, p1, i0, i1, i2, i3, a0, a1, a2, a3, b0, b1, b2, b3):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        x0 = np.float32(raw2[i0, i])
        x1 = np.float32(raw2[i1, i])
        x2 = np.float32(raw2[i2, i])
        x3 = np.float32(raw2[i3, i])
        acc[0, i] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
        acc[1, i] += b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _set4(acc, raw2, p0, p1, i0, i1, i2, i3, a0, a1, a2, a3):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] = (
            a0 * np.float32(raw2[i0, i]) + a1 * np.float32(raw2[i1, i])
            + a2 * np.float32(raw2[i2, i]) + a3 * np.float32(raw2[i3, i])
        )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _add4(acc, raw2, p0, p1, i0, i1, i2, i3, a0, a1, a2, a3):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] += (
            a0 * np.float32(raw2[i0, i]) + a1 * np.float32(raw2[i1, i])
            + a2 * np.float32(raw2[i2, i]) + a3 * np.float32(raw2[i3, i])
        )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _divide(acc, o, norm):
    for i in range(o.shape[0]):
        o[i] = acc[i] / norm


@numba.njit(cache=True, nogil=True)
def _row_slots(r, rad, nx, cap, scale, slots):
    """``slots[i] = ((r + i - rad) % cap) * scale``, -1 for rows outside the scan.

    Ring slots of the rows around ``r``, worked out once per scan row: a
    64-bit integer division per neighbour took about a fifth of the
    averaging.
    """
    for i in range(2 * rad + 1):
        rr = r + i - rad
        slots[i] = (rr % cap) * scale if rr >= 0 and rr < nx else -1


@numba.njit(cache=True, nogil=True)
def _weights_of(rh, hrow, rad, c, ny, offsets, forward, pair, wrow):
    """Fill ``wrow`` with the weight of every footprint offset at ``(r, c)``.

    ``hrow[dr + rad]`` is the ``rh`` slot of scan row ``r + dr`` (-1 outside
    the scan, see :func:`_row_slots`). Returns ``1 + sum`` of the weights
    (float64, footprint order).
    """
    total = 1.0
    own = hrow[rad]
    for j in range(offsets.shape[0]):
        dr = offsets[j, 0]
        dc = offsets[j, 1]
        h = hrow[dr + rad]
        cc = c + dc
        if dr == 0 and dc == 0:
            wrow[j] = 1.0
        elif h < 0 or cc < 0 or cc >= ny:
            wrow[j] = 0.0
        else:
            # A forward pair's weight is stored at its first end.
            wj = rh[own, c, pair[j]] if forward[j] else rh[h, cc, pair[j]]
            wrow[j] = wj
            total += wj
    return total


@numba.njit(cache=True, nogil=True)
def _pair_sums(raw2, rrow, rad, c, ny, union, w0, w1, sel, wa, wb, acc, o0, o1, t0, t1):
    """Averages of ``(r, c)`` and ``(r, c + 1)`` in one sweep over their neighbours.

    Every neighbour with a nonzero weight for either output is converted
    once and added to both (float32 multiply-adds, four neighbours a sweep).
    """
    q = raw2.shape[1]
    nu = union.shape[0]
    n_sel = 0
    for m in range(nu):
        rb = rrow[union[m, 0] + rad]  # raw2 row of (r + dr, 0), -1 outside
        cc = c + union[m, 1]
        if rb < 0 or cc < 0 or cc >= ny:
            continue
        j0 = union[m, 2]
        j1 = union[m, 3]
        x0 = w0[j0] if j0 >= 0 else np.float32(0.0)
        x1 = w1[j1] if j1 >= 0 else np.float32(0.0)
        if x0 > 0.0 or x1 > 0.0:
            sel[n_sel] = rb + cc
            wa[n_sel] = x0
            wb[n_sel] = x1
            n_sel += 1
    for g in range(n_sel, n_sel + 3):
        sel[g] = sel[0]  # padding: weight 0 for both
        wa[g] = 0.0
        wb[g] = 0.0
    # Pixel chunks: the two outputs' chunk stays in L1 while every
    # neighbour is added to it.
    for p0 in range(0, q, _CHUNK):
        p1 = min(q, p0 + _CHUNK)
        _set4x2(
            acc, raw2, p0, p1, sel[0], sel[1], sel[2], sel[3],
            wa[0], wa[1], wa[2], wa[3], wb[0], wb[1], wb[2], wb[3],
        )  # fmt: skip
        for g in range(4, n_sel, 4):
            _add4x2(
                acc, raw2, p0, p1, sel[g], sel[g + 1], sel[g + 2], sel[g + 3],
                wa[g], wa[g + 1], wa[g + 2], wa[g + 3], wb[g], wb[g + 1], wb[g + 2], wb[g + 3],
            )  # fmt: skip
    _divide(acc[1], o1, np.float32(t1))
    _divide(acc[0], o0, np.float32(t0))


@numba.njit(cache=True, nogil=True)
def _single_sums(raw2, rrow, rad, c, offsets, w0, sel, wa, acc, o0, t0):
    """Average of ``(r, c)`` alone (the last column of an odd-width scan)."""
    q = raw2.shape[1]
    n_sel = 0
    for j in range(offsets.shape[0]):
        if w0[j] > 0.0:
            sel[n_sel] = rrow[offsets[j, 0] + rad] + c + offsets[j, 1]
            wa[n_sel] = w0[j]
            n_sel += 1
    for g in range(n_sel, n_sel + 3):
        sel[g] = sel[0]
        wa[g] = 0.0
    for p0 in range(0, q, _CHUNK):
        p1 = min(q, p0 + _CHUNK)
        _set4(acc, raw2, p0, p1, sel[0], sel[1], sel[2], sel[3], wa[0], wa[1], wa[2], wa[3])
        for g in range(4, n_sel, 4):
            _add4(
                acc, raw2, p0, p1, sel[g], sel[g + 1], sel[g + 2], sel[g + 3],
                wa[g], wa[g + 1], wa[g + 2], wa[g + 3],
            )  # fmt: skip
    _divide(acc, o0, np.float32(t0))


@numba.njit(cache=True, nogil=True, parallel=True)
def weighted_average(
    raw, raw_cap, rh, rh_cap, r0, r1, nx, offsets, forward, pair, union, strip, dst, wts
):
    """Average each raw pattern of rows r0:r1 with its neighbours by R_hat.

    ``offsets`` is the full footprint (centre included); for a non-centre
    offset ``j`` the weight is the forward R_hat ``pair[j]`` stored at the
    position itself when ``forward[j]`` and at the neighbour otherwise.
    ``dst[r - r0, c]`` receives the average and ``wts[r - r0, c, j]`` the
    weight given to neighbour ``j`` (1 for the centre, 0 outside the scan).

    Positions are averaged two at a time, ``(r, c)`` and ``(r, c + 1)`` for
    even ``c`` (a last odd column alone): every neighbour of either is
    converted once and added to both. ``union`` lists the offsets of the two
    footprints relative to ``(r, c)`` as rows ``(dr, dc, j0, j1)`` with
    ``j0``/``j1`` the footprint index for each output (-1 if not in it).
    One task walks a strip of ``strip`` (even) scan columns down the rows, so
    the neighbourhoods of consecutive positions, which overlap, stay in
    cache. The arithmetic of a position depends only on its column's parity
    and its weights, not on blocks, strips or threads.
    """
    ny = raw.shape[1]
    nu = union.shape[0]
    q = raw.shape[2]
    rad = -offsets[0, 0]  # sorted by row offset
    raw2 = raw.reshape(raw.shape[0] * ny, q)
    n_tasks = (ny + strip - 1) // strip
    counter = _task_counter()
    for _ in numba.prange(n_tasks):  # each thread's first one does the work
        while True:
            s = _claim(counter)
            if s >= n_tasks:
                break
            sel = np.empty(nu + 3, np.int64)
            acc = np.empty((2, q), np.float32)
            wa = np.zeros(nu + 3, np.float32)
            wb = np.zeros(nu + 3, np.float32)
            rrow = np.empty(2 * rad + 1, np.int64)
            hrow = np.empty(2 * rad + 1, np.int64)
            for r in range(r0, r1):
                _row_slots(r, rad, nx, raw_cap, ny, rrow)
                _row_slots(r, rad, nx, rh_cap, 1, hrow)
                for c in range(s * strip, min(ny, (s + 1) * strip), 2):
                    o0 = dst[r - r0, c]
                    w0 = wts[r - r0, c]
                    t0 = _weights_of(rh, hrow, rad, c, ny, offsets, forward, pair, w0)
                    if c + 1 < ny:
                        w1 = wts[r - r0, c + 1]
                        t1 = _weights_of(rh, hrow, rad, c + 1, ny, offsets, forward, pair, w1)
                        _pair_sums(
                            raw2, rrow, rad, c, ny, union, w0, w1, sel, wa, wb, acc,
                            o0, dst[r - r0, c + 1], t0, t1,
                        )  # fmt: skip
                    else:
                        _single_sums(raw2, rrow, rad, c, offsets, w0, sel, wa, acc[0], o0, t0)


# Exact sums of integer patterns (uint16 or uint8 rings). With weights 0 and
# 1 only (most positions inside grains: R_hat is clipped at Rmax), the
# float32 sweep above adds integers exactly (sums of at most 69 values below
# 2**16 stay below 2**24), so integer sums in int32 give the same bits. A
# running sum over the whole disk, moved along a scan row by adding the
# entering and subtracting the leaving column of the footprint (18 patterns
# at radius 4 instead of 69), minus the in-scan neighbours of weight 0, gives
# those sums with far fewer operations. A pair of positions with any weight
# strictly between 0 and 1 takes the float32 sweep, so every output keeps the
# bits of the float32 kernel.


@numba.njit(cache=True, nogil=True)
def _iset4(acc, raw2, p0, p1, i0, i1, i2, i3):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] = (np.int32(raw2[i0, i]) + np.int32(raw2[i1, i])) + (
            np.int32(raw2[i2, i]) + np.int32(raw2[i3, i])
        )


@numba.njit(cache=True, nogil=True)
def _iadd4(acc, raw2, p0, p1, i0, i1, i2, i3):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] += (np.int32(raw2[i0, i]) + np.int32(raw2[i1, i])) + (
            np.int32(raw2[i2, i]) + np.int32(raw2[i3, i])
        )


@numba.njit(cache=True, nogil=True)
def _isub4(acc, raw2, p0, p1, i0, i1, i2, i3):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] -= (np.int32(raw2[i0, i]) + np.int32(raw2[i1, i])) + (
            np.int32(raw2[i2, i]) + np.int32(raw2[i3, i])
        )


@numba.njit(cache=True, nogil=True)
def _iset1(acc, raw2, p0, p1, i0):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] = np.int32(raw2[i0, i])


@numba.njit(cache=True, nogil=True)
def _iadd1(acc, raw2, p0, p1, i0):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] += np.int32(raw2[i0, i])


@numba.njit(cache=True, nogil=True)
def _isub1(acc, raw2, p0, p1, i0):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] -= np.int32(raw2[i0, i])


@numba.njit(cache=True, nogil=True)
def _idivide(acc, o, p0, p1, norm):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        o[i] = np.float32(acc[i]) / norm


@numba.njit(cache=True, nogil=True)
def _iapply(acc, raw2, p0, p1, idx, n, sign):
    """``acc[p0:p1] += sign * sum of the rows idx[:n]`` (sign +1 or -1)."""
    g = 0
    while g + 4 <= n:
        if sign > 0:
            _iadd4(acc, raw2, p0, p1, idx[g], idx[g + 1], idx[g + 2], idx[g + 3])
        else:
            _isub4(acc, raw2, p0, p1, idx[g], idx[g + 1], idx[g + 2], idx[g + 3])
        g += 4
    while g < n:
        if sign > 0:
            _iadd1(acc, raw2, p0, p1, idx[g])
        else:
            _isub1(acc, raw2, p0, p1, idx[g])
        g += 1


@numba.njit(cache=True, nogil=True)
def _iset(acc, raw2, p0, p1, idx, n):
    """``acc[p0:p1] = sum of the rows idx[:n]`` (``n >= 1``)."""
    if n >= 4:
        _iset4(acc, raw2, p0, p1, idx[0], idx[1], idx[2], idx[3])
        _iapply(acc, raw2, p0, p1, idx[4:], n - 4, 1)
    else:
        _iset1(acc, raw2, p0, p1, idx[0])
        _iapply(acc, raw2, p0, p1, idx[1:], n - 1, 1)


@numba.njit(cache=True, nogil=True)
def _imove4(acc, raw2, p0, p1, i0, i1, i2, i3, j0, j1, j2, j3):
    # acc += rows i - rows j: one read-modify-write of acc for eight rows.
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] += ((np.int32(raw2[i0, i]) + np.int32(raw2[i1, i])) + (
            np.int32(raw2[i2, i]) + np.int32(raw2[i3, i])
        )) - ((np.int32(raw2[j0, i]) + np.int32(raw2[j1, i])) + (
            np.int32(raw2[j2, i]) + np.int32(raw2[j3, i])
        ))  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _imove1(acc, raw2, p0, p1, i0, j0):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        acc[i] += np.int32(raw2[i0, i]) - np.int32(raw2[j0, i])


@numba.njit(cache=True, nogil=True)
def _imove(acc, raw2, p0, p1, plus, n_plus, minus, n_minus):
    """``acc[p0:p1] += sum of the rows plus[:n_plus] - sum of the rows minus[:n_minus]``.

    Integer sums are exact in any order: an entering and a leaving row are
    taken in the same sweep, so ``acc`` is read and written once per eight.
    """
    n = min(n_plus, n_minus)
    g = 0
    while g + 4 <= n:
        _imove4(
            acc, raw2, p0, p1, plus[g], plus[g + 1], plus[g + 2], plus[g + 3],
            minus[g], minus[g + 1], minus[g + 2], minus[g + 3],
        )  # fmt: skip
        g += 4
    while g < n:
        _imove1(acc, raw2, p0, p1, plus[g], minus[g])
        g += 1
    _iapply(acc, raw2, p0, p1, plus[g:], n_plus - g, 1)
    _iapply(acc, raw2, p0, p1, minus[g:], n_minus - g, -1)


@numba.njit(cache=True, nogil=True, inline="always")
def _ring_index(rrow, i, c, ny):
    # raw2 row of (r + i - rad, c), -1 outside the scan (see _row_slots).
    b = rrow[i]
    if b < 0 or c < 0 or c >= ny:
        return -1
    return b + c


@numba.njit(cache=True, nogil=True, inline="always")
def _listed(idx, n, k):
    # Whether k is among idx[:n] (short lists: a linear search).
    j = 0
    while j < n and idx[j] != k:
        j += 1
    return j < n


@numba.njit(cache=True, nogil=True)
def _idiff_divide(acc, sub, o, p0, p1, norm):
    for i in range(np.uint64(p0), np.uint64(p1)):  # unsigned: no wraparound code
        o[i] = np.float32(acc[i] - sub[i]) / norm


@numba.njit(cache=True, nogil=True)
def _exact_sums(raw2, rrow, c, ny, offsets, half, w, disk, state, lists, tmp, o, t):
    """Average of ``(r, c)`` whose weights are all 0 or 1, in int32.

    ``disk`` holds the sum of the in-scan footprint around ``(r,
    state[0])`` when ``state[0] >= 0``; when the neighbours of weight 0 are
    fewer than those of weight 1 it is moved to column ``c`` (or summed anew
    when that is cheaper) and the zeros are subtracted, else the ones are
    summed directly. The sum of the zeros, ``tmp[1]``, is kept for the
    zeros listed in ``lists[4 nk : 5 nk]`` (``state[1]`` of them, none
    valid when -1) and updated by the zeros that differ when that is cheaper
    than summing them anew: along a grain boundary the zeros of neighbouring
    positions are mostly the same. ``lists`` is int64 scratch of ``7 *
    len(offsets)``, ``tmp`` int32 ``(2, q)``.
    """
    q = raw2.shape[1]
    nk = offsets.shape[0]
    rad = (half.shape[0] - 1) // 2
    ones = lists[0:nk]
    zeros = lists[nk : 2 * nk]
    n_one = 0
    n_zero = 0
    for j in range(nk):
        k = _ring_index(rrow, offsets[j, 0] + rad, c + offsets[j, 1], ny)
        if k < 0:
            continue
        if w[j] > 0.0:
            ones[n_one] = k
            n_one += 1
        else:
            zeros[n_zero] = k
            n_zero += 1
    # The running sum pays off when weight 1 dominates: it is then moved
    # (or set up, once per row of a strip) and corrected for the zeros.
    if n_one <= n_zero:
        for p0 in range(0, q, _CHUNK):
            p1 = min(q, p0 + _CHUNK)
            _iset(tmp[0], raw2, p0, p1, ones, n_one)
            _idivide(tmp[0], o, p0, p1, np.float32(t))
        return
    enter = lists[2 * nk : 3 * nk]
    leave = lists[3 * nk : 4 * nk]
    n_in = 0
    n_out = 0
    at = state[0]
    steps = c - at if at >= 0 and at <= c else nk
    init = steps * 2 * (2 * rad + 1) >= n_one + n_zero
    if init:
        for j in range(n_one):
            enter[j] = ones[j]
        for j in range(n_zero):
            enter[n_one + j] = zeros[j]
        n_in = n_one + n_zero
    else:
        for cc in range(at, c):
            for i in range(2 * rad + 1):
                k = _ring_index(rrow, i, cc + 1 + half[i], ny)
                if k >= 0:
                    enter[n_in] = k
                    n_in += 1
                k = _ring_index(rrow, i, cc - half[i], ny)
                if k >= 0:
                    leave[n_out] = k
                    n_out += 1
    state[0] = c
    # Zeros: those new since the last sum of zeros and those gone from it.
    prev = lists[4 * nk : 5 * nk]
    new = lists[5 * nk : 6 * nk]
    gone = lists[6 * nk : 7 * nk]
    n_new = 0
    n_gone = 0
    n_prev = state[1]
    if n_zero > 0 and n_prev >= 0:
        for j in range(n_zero):
            if not _listed(prev, n_prev, zeros[j]):
                new[n_new] = zeros[j]
                n_new += 1
        for j in range(n_prev):
            if not _listed(zeros, n_zero, prev[j]):
                gone[n_gone] = prev[j]
                n_gone += 1
    update = n_zero > 0 and n_prev >= 0 and n_new + n_gone < n_zero
    if n_zero > 0:
        for j in range(n_zero):
            prev[j] = zeros[j]
        state[1] = n_zero
    zsum = tmp[1]
    for p0 in range(0, q, _CHUNK):
        p1 = min(q, p0 + _CHUNK)
        if init:
            _iset(disk, raw2, p0, p1, enter, n_in)
        else:
            _imove(disk, raw2, p0, p1, enter, n_in, leave, n_out)
        if n_zero > 0:
            if update:
                _imove(zsum, raw2, p0, p1, new, n_new, gone, n_gone)
            else:
                _iset(zsum, raw2, p0, p1, zeros, n_zero)
            _idiff_divide(disk, zsum, o, p0, p1, np.float32(t))
        else:
            _idivide(disk, o, p0, p1, np.float32(t))


@numba.njit(cache=True, nogil=True, inline="always")
def _binary(w):
    # All weights 0 or 1 (a loop with an early exit: numba compiles no
    # generators).
    j = 0
    while j < w.shape[0] and (w[j] == 0.0 or w[j] == 1.0):
        j += 1
    return j == w.shape[0]


@numba.njit(cache=True, nogil=True, parallel=True)
def weighted_average_int(
    raw, raw_cap, rh, rh_cap, r0, r1, nx, offsets, forward, pair, union, half, strip, dst, wts
):
    """:func:`weighted_average` of a uint16 or uint8 ring, same results.

    A pair of positions whose weights are all 0 or 1 is summed exactly in
    int32 (:func:`_exact_sums`), a pair with any other weight by the float32
    sweep of :func:`weighted_average`. ``half[i]`` is the footprint's
    half-width in scan row ``i - radius``.
    """
    ny = raw.shape[1]
    nk = offsets.shape[0]
    nu = union.shape[0]
    q = raw.shape[2]
    raw2 = raw.reshape(raw.shape[0] * ny, q)
    n_tasks = (ny + strip - 1) // strip
    counter = _task_counter()
    for _ in numba.prange(n_tasks):  # each thread's first one does the work
        while True:
            s = _claim(counter)
            if s >= n_tasks:
                break
            sel = np.empty(nu + 3, np.int64)
            acc = np.empty((2, q), np.float32)
            wa = np.zeros(nu + 3, np.float32)
            wb = np.zeros(nu + 3, np.float32)
            disk = np.empty(q, np.int32)
            tmp = np.empty((2, q), np.int32)
            lists = np.empty(7 * nk, np.int64)
            state = np.empty(2, np.int64)
            rad = (half.shape[0] - 1) // 2
            rrow = np.empty(2 * rad + 1, np.int64)
            hrow = np.empty(2 * rad + 1, np.int64)
            for r in range(r0, r1):
                _row_slots(r, rad, nx, raw_cap, ny, rrow)
                _row_slots(r, rad, nx, rh_cap, 1, hrow)
                state[0] = -1
                state[1] = -1
                for c in range(s * strip, min(ny, (s + 1) * strip), 2):
                    o0 = dst[r - r0, c]
                    w0 = wts[r - r0, c]
                    t0 = _weights_of(rh, hrow, rad, c, ny, offsets, forward, pair, w0)
                    if c + 1 < ny:
                        o1 = dst[r - r0, c + 1]
                        w1 = wts[r - r0, c + 1]
                        t1 = _weights_of(rh, hrow, rad, c + 1, ny, offsets, forward, pair, w1)
                        if _binary(w0) and _binary(w1):
                            _exact_sums(
                                raw2, rrow, c, ny, offsets, half, w0, disk, state, lists, tmp,
                                o0, t0,
                            )  # fmt: skip
                            _exact_sums(
                                raw2, rrow, c + 1, ny, offsets, half, w1, disk, state, lists,
                                tmp, o1, t1,
                            )  # fmt: skip
                        else:
                            _pair_sums(
                                raw2, rrow, rad, c, ny, union, w0, w1, sel, wa, wb, acc, o0, o1,
                                t0, t1,
                            )  # fmt: skip
                    elif _binary(w0):
                        _exact_sums(
                            raw2, rrow, c, ny, offsets, half, w0, disk, state, lists, tmp, o0,
                            t0,
                        )  # fmt: skip
                    else:
                        _single_sums(raw2, rrow, rad, c, offsets, w0, sel, wa, acc[0], o0, t0)


# Subsampled correlation grid (``q_step > 1``): the blurred pattern is only
# needed at every ``step``-th box row and column. The pass along the
# detector rows runs on the sampled rows only; for the pass along the
# columns each sampled row is split into ``step`` phases (columns ``step m
# + p``), so that output column ``m`` is a sum of contiguous runs of the
# phases with the taps ``k[p::step]``: plain loops that vectorise, instead
# of a strided gather.


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _tap_set(src, w, n, dst):
    d = dst[0:n]
    s = src[0:n]
    for j in range(n):
        d[j] = w * s[j]


@numba.njit(cache=True, nogil=True)
def _phases(row, step, n_ph, stride, ph):
    # ph[p * stride + m] = row[step * m + p] (beyond the row: 0, never used).
    n = row.shape[0]
    for p in range(step):
        for m in range(n_ph):
            i = step * m + p
            ph[p * stride + m] = row[i] if i < n else np.float32(0.0)


# The pass along the detector rows on the sampled rows only: the padded
# rows are stored phase by phase (row ``p`` in slot ``(p % step) * rpp + p //
# step``), so for every tap the source rows of all sampled output rows are
# one contiguous run and each tap is one long loop over all of them (a
# separate short loop per sampled row left a scalar remainder in each).
# Mirror taps are added before they are multiplied, grouped as in
# :func:`_symmetric_taps`, so the values are the same.


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _runs4_first(c, a0, b0, a1, b1, a2, b2, a3, b3, wc, w0, w1, w2, w3, n, dst):
    d = dst[0:n]
    c = c[0:n]
    a0 = a0[0:n]
    b0 = b0[0:n]
    a1 = a1[0:n]
    b1 = b1[0:n]
    a2 = a2[0:n]
    b2 = b2[0:n]
    a3 = a3[0:n]
    b3 = b3[0:n]
    for j in range(n):
        d[j] = (
            wc * c[j] + w0 * (a0[j] + b0[j]) + w1 * (a1[j] + b1[j])
            + w2 * (a2[j] + b2[j]) + w3 * (a3[j] + b3[j])
        )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _runs4_add(a0, b0, a1, b1, a2, b2, a3, b3, w0, w1, w2, w3, n, dst):
    d = dst[0:n]
    a0 = a0[0:n]
    b0 = b0[0:n]
    a1 = a1[0:n]
    b1 = b1[0:n]
    a2 = a2[0:n]
    b2 = b2[0:n]
    a3 = a3[0:n]
    b3 = b3[0:n]
    for j in range(n):
        d[j] += (
            w0 * (a0[j] + b0[j]) + w1 * (a1[j] + b1[j])
            + w2 * (a2[j] + b2[j]) + w3 * (a3[j] + b3[j])
        )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _runs1_first(c, a0, b0, wc, w0, n, dst):
    d = dst[0:n]
    c = c[0:n]
    a0 = a0[0:n]
    b0 = b0[0:n]
    for j in range(n):
        d[j] = wc * c[j] + w0 * (a0[j] + b0[j])


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _runs1_add(a0, b0, w0, n, dst):
    d = dst[0:n]
    a0 = a0[0:n]
    b0 = b0[0:n]
    for j in range(n):
        d[j] += w0 * (a0[j] + b0[j])


@numba.njit(cache=True, nogil=True)
def _sampled_rows(pad, at, k, n, dst):
    """``dst[a * wd + j] = sum_t k[t] pad[at[t] + a * wd + j]``, symmetric ``k``.

    ``at[t]`` is where the source rows of tap ``t`` start (see above).
    """
    r = (k.shape[0] - 1) // 2
    if r == 0:
        _tap_set(pad[at[0] :], k[0], n, dst)
        return
    c = pad[at[r] :]
    if r >= 4:
        _runs4_first(
            c,
            pad[at[r - 1] :], pad[at[r + 1] :], pad[at[r - 2] :], pad[at[r + 2] :],
            pad[at[r - 3] :], pad[at[r + 3] :], pad[at[r - 4] :], pad[at[r + 4] :],
            k[r], k[r + 1], k[r + 2], k[r + 3], k[r + 4], n, dst,
        )  # fmt: skip
        t = 5
    else:
        _runs1_first(c, pad[at[r - 1] :], pad[at[r + 1] :], k[r], k[r + 1], n, dst)
        t = 2
    while t <= r:
        if r - t + 1 >= 4:
            _runs4_add(
                pad[at[r - t] :], pad[at[r + t] :], pad[at[r - t - 1] :], pad[at[r + t + 1] :],
                pad[at[r - t - 2] :], pad[at[r + t + 2] :], pad[at[r - t - 3] :],
                pad[at[r + t + 3] :], k[r + t], k[r + t + 1], k[r + t + 2], k[r + t + 3], n, dst,
            )  # fmt: skip
            t += 4
        else:
            _runs1_add(pad[at[r - t] :], pad[at[r + t] :], k[r + t], n, dst)
            t += 1


@numba.njit(cache=True, nogil=True)
def _phase_starts(nk, step, plane, row, at):
    """``at[t] = ((t % step) * plane + t // step) * row`` without divisions."""
    p = 0
    m = 0
    for t in range(nk):
        at[t] = (p * plane + m) * row
        p += 1
        if p == step:
            p = 0
            m += 1


@numba.njit(cache=True, nogil=True)
def sub_scratch(bh, bw, nk, step):
    """Sizes of the scratch of :func:`_blur_box_sub`: ``pad, vrows, ph, hb``."""
    r = (nk - 1) // 2
    wd = bw + 2 * r
    rpp = (bh + 2 * r + step - 1) // step
    nbh = (bh + step - 1) // step
    n_ph = (bw + step - 1) // step + (nk + step - 1) // step
    n_pad = step * rpp * wd + 2 * r
    if step == 2:  # the two planes of :func:`_blur_box_sub2`
        n_pad = max(n_pad, 2 * 2 * rpp * n_ph)
    return n_pad, nbh * wd, step * (nbh + 1) * n_ph, nbh * n_ph


@numba.njit(cache=True, nogil=True, inline="always")
def _column_taps(ph, k, nbh, n_ph, nbw, at, hb, out):
    """The pass along the detector columns of the subsampled blur, into ``out``.

    ``ph`` holds the column phases of the sampled rows (row stride ``n_ph``,
    phase planes ``stride`` apart; tap ``t`` starts at ``at[t]``, see
    :func:`_phase_starts` with row 1); the taps run over all of them as one
    line into ``hb``, whose first ``nbw`` values per sampled row are the
    output. Mirror taps are added before they are multiplied, four pairs
    a sweep (:func:`_sampled_rows`): a third of the loads and stores of
    ``hb`` that one sweep per tap took.
    """
    n = nbh * n_ph
    _sampled_rows(ph, at, k, n, hb)
    for a in range(nbh):
        o = out[a * nbw : (a + 1) * nbw]
        h = hb[a * n_ph : a * n_ph + nbw]
        for b in range(nbw):
            o[b] = h[b]


@numba.njit(cache=True, nogil=True, inline="always")
def _box_geometry(k, box, qy):
    """The padded geometry of a blur of the q-mask's box ``(i0, i1, j0, j1)``.

    ``(nk, r, i0, j0, j1, bh, bw, wd, lo, hi, off, n_rows)``: the taps and
    their radius, the box's first row and columns, its size, the padded row
    width, the detector columns read (``lo:hi``), where they start in a
    padded row, and the padded rows.
    """
    nk = k.shape[0]
    r = (nk - 1) // 2
    i0, i1, j0, j1 = box[0], box[1], box[2], box[3]
    bh = i1 - i0
    bw = j1 - j0
    lo = max(0, j0 - r)
    hi = min(qy, j1 + r)
    return nk, r, i0, j0, j1, bh, bw, bw + 2 * r, lo, hi, lo - (j0 - r), bh + 2 * r


@numba.njit(cache=True, nogil=True)
def _blur_box_sub(src, qx, qy, scale, k, idx_x, box, step, pad, vrows, ph, hb, out):
    """The blurred ``box`` of one raveled pattern at every ``step``-th pixel.

    ``out[a * nbw + b]`` is the value of :func:`_blur_box` (unit weight) at
    box pixel ``(step a, step b)``, ``nbw = ceil(bw / step)``; the arithmetic
    differs (other summation order), the values agree to float32 rounding.
    The padded rows are stored phase by phase, so the pass along the
    detector rows runs each tap group over all sampled rows at once
    (:func:`_sampled_rows`). The phases of all sampled rows are laid out one
    after the other (row stride ``n_ph``), so the pass along the columns
    runs each tap over them as one line; outputs straddling a row end land
    in unused columns of ``hb``. Scratch sizes: :func:`sub_scratch`.
    """
    if step == 2:
        _blur_box_sub2(src, qy, scale, k, idx_x, box, pad, ph, hb, out)
        return
    nk, r, i0, j0, j1, bh, bw, wd, lo, hi, off, n_rows = _box_geometry(k, box, qy)
    rpp = (n_rows + step - 1) // step
    ends = off > 0 or hi < j1 + r
    cols = _reflected_columns(j0 - r, wd, qy) if ends else idx_x
    # The pass along the detector rows treats every column alike, so the
    # reflected end columns can be copied after it, on the sampled rows
    # only (same values), when their sources are among the filled columns.
    late = ends and _within(cols, off, hi - lo, wd, lo, hi)
    for phase in range(step):  # (integer divisions per row were measurable)
        slot = phase * rpp
        for p in range(phase, n_rows, step):
            row = pad[slot * wd :]
            slot += 1
            if scale == 1.0:
                _fill_mid(src, qy, idx_x, i0 + p, 1, lo, hi, row, wd, off)
            else:
                _fill_mid_scaled(src, qy, idx_x, i0 + p, 1, lo, hi, row, wd, off, scale)
            if ends and not late:
                _fill_ends(src, qy, idx_x, i0 + p, 1, cols, off, hi - lo, row, wd, scale)
    nbh = (bh + step - 1) // step
    nbw = (bw + step - 1) // step
    n_ph = nbw + (nk + step - 1) // step
    stride = nbh * n_ph + n_ph  # one phase plane, with a spare row
    at = np.empty(nk, np.int64)
    _phase_starts(nk, step, rpp, wd, at)
    _sampled_rows(pad, at, k, nbh * wd, vrows)
    if late:
        for a in range(nbh):
            _copy_ends(vrows[a * wd : (a + 1) * wd], cols, off, hi - lo, wd, lo)
    for a in range(nbh):
        _phases(vrows[a * wd : (a + 1) * wd], step, n_ph, stride, ph[a * n_ph :])
    _phase_starts(nk, step, stride, 1, at)
    _column_taps(ph, k, nbh, n_ph, nbw, at, hb, out)


# Step 2 (the default): the padded rows are split into their even and odd
# columns while they are converted (two "planes"), so the pass along the
# detector rows writes the phases of the pass along the columns directly;
# a uint16 pattern is read as uint32 pairs (low half: the even column). The
# values and their arithmetic are those of the general path above.


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _fill2_packed(src32, idx_x, i0, qy2, b2, n_rows, rpp, n_ph, m0, m1, pad, plane):
    # Padded row p (slot (p % 2) rpp + p // 2) from source row idx_x[i0 + p]:
    # columns 2m and 2m + 1 (m0 <= m < m1) from the uint32 at b2 + m.
    n = U(m1 - m0)
    for p in range(n_rows):
        slot = (p % 2) * rpp + p // 2
        s = U(idx_x[i0 + p] * qy2 + b2 + m0)
        d = U(slot * n_ph + m0)
        for m in range(U(0), n):
            x = src32[s + m]
            pad[d + m] = np.float32(x & U(0xFFFF))
            pad[U(plane) + d + m] = np.float32(x >> U(16))


@numba.njit(cache=True, nogil=True)
def _fill2(src, qy, idx_x, i0, n_rows, rpp, n_ph, cols, j_lo, j_hi, shift, pad, plane, scale):
    # Padded columns j_lo <= j < j_hi of every padded row into the planes:
    # column j of source column cols[j], or j + shift when cols is empty.
    for p in range(n_rows):
        slot = (p % 2) * rpp + p // 2
        s0 = idx_x[i0 + p] * qy
        for j in range(j_lo, j_hi):
            c = j + shift if cols.shape[0] == 0 else cols[j]
            x = src[s0 + c]
            v = np.float32(x) if scale == 1.0 else np.float32(np.float64(x) * scale)
            pad[(j % 2) * plane + slot * n_ph + j // 2] = v


@numba.njit(cache=True, nogil=True)
def _sub2_plan(qy, k, idx_x, box):
    """Index arrays of :func:`_blur_box_sub2`, the same for every pattern.

    One int64 array: the tap starts of the pass along the rows (``nk``) and
    along the columns (``nk``), the source column of every padded column
    (``wd``, reflected at the detector's ends), and where each end column
    is copied to and from in the phases (``n_end`` each).
    """
    nk, r, _i0, j0, _j1, bh, bw, wd, lo, hi, off, n_rows = _box_geometry(k, box, qy)
    n_mid = hi - lo
    rpp = (n_rows + 1) // 2
    nbh = (bh + 1) // 2
    n_ph = (bw + 1) // 2 + (nk + 1) // 2
    stride = nbh * n_ph + n_ph
    n_end = wd - n_mid
    plan = np.zeros(2 * nk + wd + 2 * n_end, np.int64)
    _phase_starts(nk, 2, rpp, n_ph, plan[:nk])
    _phase_starts(nk, 2, stride, 1, plan[nk : 2 * nk])
    cols = plan[2 * nk : 2 * nk + wd]
    cols[:] = _reflected_columns(j0 - r, wd, qy)
    to = plan[2 * nk + wd : 2 * nk + wd + n_end]
    frm = plan[2 * nk + wd + n_end :]
    e = 0
    for j in range(wd):
        if j < off or j >= off + n_mid:
            f = off + cols[j] - lo
            to[e] = (j % 2) * stride + j // 2
            frm[e] = (f % 2) * stride + f // 2
            e += 1
    return plan


@numba.njit(cache=True, nogil=True)
def _blur_box_sub2(src, qy, scale, k, idx_x, box, pad, ph, hb, out):
    """:func:`_blur_box_sub` for ``step == 2``: same values, same arithmetic."""
    plan = _sub2_plan(qy, k, idx_x, box)
    _blur_box_sub2_planned(src, qy, scale, k, idx_x, box, pad, ph, hb, out, plan)


@numba.njit(cache=True, nogil=True)
def _blur_box_sub2_planned(src, qy, scale, k, idx_x, box, pad, ph, hb, out, plan):
    """:func:`_blur_box_sub2` with its index arrays made (:func:`_sub2_plan`)."""
    nk, r, i0, _j0, j1, bh, bw, wd, lo, hi, off, n_rows = _box_geometry(k, box, qy)
    n_mid = hi - lo
    rpp = (n_rows + 1) // 2
    nbh = (bh + 1) // 2
    nbw = (bw + 1) // 2
    n_ph = nbw + (nk + 1) // 2
    plane = 2 * rpp * n_ph
    stride = nbh * n_ph + n_ph  # one phase plane of ``ph``, with a spare row
    n_end = wd - n_mid
    ends = off > 0 or hi < j1 + r
    cols = plan[2 * nk : 2 * nk + wd] if ends else idx_x[:0]
    late = ends and _within(cols, off, n_mid, wd, lo, hi)
    shift = lo - off  # source column of padded column j in the middle
    if (
        src.itemsize == 2  # the uint16 ring (scale 1)
        and qy % 2 == 0
        and shift % 2 == 0
        and off % 2 == 0
        and n_mid % 2 == 0
        and src.shape[0] % 2 == 0
    ):
        _fill2_packed(
            src.view(np.uint32), idx_x, i0, qy // 2, shift // 2, n_rows, rpp, n_ph,
            off // 2, (off + n_mid) // 2, pad, plane,
        )  # fmt: skip
    else:
        _fill2(src, qy, idx_x, i0, n_rows, rpp, n_ph, idx_x[:0], off, off + n_mid, shift,
               pad, plane, scale)  # fmt: skip
    if ends and not late:
        _fill2(src, qy, idx_x, i0, n_rows, rpp, n_ph, cols, 0, off, 0, pad, plane, scale)
        _fill2(src, qy, idx_x, i0, n_rows, rpp, n_ph, cols, off + n_mid, wd, 0, pad, plane,
               scale)  # fmt: skip
    at = plan[:nk]
    _sampled_rows(pad, at, k, nbh * n_ph, ph)
    _sampled_rows(pad[plane:], at, k, nbh * n_ph, ph[stride:])
    if late:
        # End columns copied from the (filled) columns they reflect, on the
        # sampled rows only: the pass along the rows treats columns alike.
        to = plan[2 * nk + wd : 2 * nk + wd + n_end]
        frm = plan[2 * nk + wd + n_end :]
        for a in range(nbh):
            row = ph[a * n_ph :]
            for e in range(n_end):
                row[to[e]] = row[frm[e]]
    _column_taps(ph, k, nbh, n_ph, nbw, plan[nk : 2 * nk], hb, out)


@numba.njit(cache=True, nogil=True, parallel=True)
def normalised_vectors_sub(
    raw, raw_cap, rows, qx, qy, scaled, k, idx_x, box, step, wm, wmsum, wv, vec, vec_cap, bad
):
    """:func:`normalised_vectors` on the grid of every ``step``-th box pixel.

    The weighted mean uses the sample weights ``wm`` (sum ``wmsum``), the
    vector the weights ``wv``: ``v = (b - mean) wv``, L2-normalised, with
    ``b`` the blurred pattern at the samples (see :func:`_blur_box_sub`).
    """
    ny = raw.shape[1]
    nk = k.shape[0]
    n_pad, n_rows, n_ph, n_hb = sub_scratch(box[1] - box[0], box[3] - box[2], nk, step)
    n_s = wm.shape[0]
    n_items = rows.shape[0] * ny
    # The step-2 blur's index arrays, made once for all patterns.
    plan = _sub2_plan(qy, k, idx_x, box) if step == 2 else np.zeros(0, np.int64)
    n_tasks = (n_items + _TASK - 1) // _TASK
    counter = _task_counter()
    for _ in numba.prange(n_tasks):  # each thread's first one does the work
        while True:
            task = _claim(counter)
            if task >= n_tasks:
                break
            pad = np.zeros(n_pad, np.float32)  # end columns filled late stay 0
            vrows = np.empty(n_rows, np.float32)
            ph = np.zeros(n_ph, np.float32)
            hb = np.empty(n_hb, np.float32)
            b = np.empty(n_s, np.float32)
            for t in range(task * _TASK, min(n_items, (task + 1) * _TASK)):
                row = rows[t // ny]
                c = t % ny
                src = raw[row % raw_cap, c]
                v = vec[row % vec_cap, c]
                scale = _item_scale(src, scaled, v, bad, row, c)
                if scale == 0.0:
                    continue
                if step == 2:
                    _blur_box_sub2_planned(src, qy, scale, k, idx_x, box, pad, ph, hb, b, plan)
                else:
                    _blur_box_sub(src, qx, qy, scale, k, idx_x, box, step, pad, vrows, ph, hb, b)
                _unit_vector(b, wm, wmsum, wv, v)
