"""Gaussian blur of a stack of diffraction patterns (numba kernel).

Equivalent to ``scipy.ndimage.gaussian_filter(p, sigma, mode="reflect",
truncate=4.0)`` applied to every pattern ``p``, but parallel over patterns,
free of the GIL, and writing float32 without a float64 copy of the stack.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._reduce import FASTMATH

TRUNCATE = 4.0


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian weights with scipy.ndimage's radius convention.

    ``sigma <= 0`` gives the single tap ``[1.0]`` (no blur).
    """
    if sigma <= 0:
        return np.ones(1, np.float32)
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


@numba.njit(cache=True, nogil=True, inline="always")
def _reflect(i, n):
    # scipy's "reflect" (half-sample symmetric) extension: period 2n. The
    # first two branches cover kernels narrower than the detector.
    if 0 <= i < n:
        return i
    if -n <= i < 0:
        return -1 - i
    if n <= i < 2 * n:
        return 2 * n - 1 - i
    m = i % (2 * n)
    if m >= n:
        m = 2 * n - 1 - m
    return m


@numba.njit(cache=True, nogil=True)
def padded_index(n, r):
    """Source index of each position of a length-``n`` line padded by ``r``."""
    idx = np.empty(n + 2 * r, np.int64)
    for i in range(n + 2 * r):
        idx[i] = _reflect(i - r, n)
    return idx


@numba.njit(cache=True, nogil=True)
def _blur_stack(src, qx, qy, k, out):
    r = (k.shape[0] - 1) // 2
    idx_x = padded_index(qx, r)
    box = np.array([0, qx, 0, qy], np.int64)
    ones = np.ones(qx * qy, np.float32)
    pad_n, tmp_n = _scratch(qx, qy, r)
    _blur_chunks(src, qx, qy, k, idx_x, box, ones, pad_n, tmp_n, out)


@numba.njit(cache=True, nogil=True, parallel=True)
def _blur_chunks(src, qx, qy, k, idx_x, box, ones, pad_n, tmp_n, out):
    n = src.shape[0]
    chunk = 16
    for c in numba.prange((n + chunk - 1) // chunk):
        pad = np.empty(pad_n, np.float32)
        tmp = np.empty(tmp_n, np.float32)
        for p in range(c * chunk, min(n, (c + 1) * chunk)):
            blur_box(src[p], qx, qy, 1.0, k, idx_x, box, ones, pad, tmp, out[p])


def blur_patterns(stack: np.ndarray, sigma: float, out: np.ndarray | None = None):
    """Gaussian-blur each pattern of a ``(..., Qx, Qy)`` stack into float32.

    Parameters
    ----------
    stack : ndarray
        Patterns of any integer or float dtype; leading axes are flattened.
    sigma : float
        Standard deviation in detector pixels; ``0`` returns a float32 copy.
    out : ndarray, optional
        float32 array of the same shape to write into.

    Returns
    -------
    ndarray
        float32 array of ``stack.shape``.

    Examples
    --------
    >>> from scipy import ndimage
    >>> stack = np.random.default_rng(0).uniform(0, 1, (2, 9, 13))
    >>> blurred = blur_patterns(stack, 3.0)
    >>> ref = ndimage.gaussian_filter(stack[1], 3.0, mode="reflect", truncate=4.0)
    >>> bool(np.allclose(blurred[1], ref, atol=1e-6))
    True
    """
    stack = np.asarray(stack)
    if out is None:
        out = np.empty(stack.shape, np.float32)
    elif not (
        isinstance(out, np.ndarray)
        and out.shape == stack.shape
        and out.dtype == np.float32
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise ValueError(
            f"out must be a writeable C-contiguous float32 array of shape {stack.shape}"
        )
    if sigma <= 0:
        out[...] = stack
        return out
    qx, qy = stack.shape[-2:]
    src = np.ascontiguousarray(stack)
    if not src.dtype.isnative or src.dtype == np.float16:
        src = src.astype(np.float32)  # the kernel needs native-endian numbers
    _blur_stack(
        src.reshape(-1, qx * qy),
        qx,
        qy,
        gaussian_kernel1d(sigma),
        out.reshape(-1, qx * qy),
    )
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def pattern_scale(src):
    """Power of two bringing the largest ``|value|`` of ``src`` into [0.5, 1).

    Scaling by a power of two is exact, so a pattern of 64-bit integers or
    floats (up to 1e308) is converted to float32 and squared without
    overflow or underflow. Returns 0.0 when ``src`` holds NaN or inf, and 1.0
    for an all-zero pattern.
    """
    top = 0.0
    probe = 0.0
    for i in range(src.shape[0]):
        x = np.float64(src[i])
        probe += x * 0.0  # NaN for NaN or inf, 0 otherwise
        ax = abs(x)
        if ax > top:
            top = ax
    if probe != 0.0:
        return 0.0
    if top == 0.0:
        return 1.0
    return math.ldexp(1.0, -math.frexp(top)[1])


# Scratch of :func:`blur_box` for a box of ``bh x bw`` and radius ``r``: ``pad``
# holds the ``bh + 2r`` source rows of the box widened by ``r`` columns each
# side (``W = bw + 2r`` values a row) as float32, ``tmp`` the ``bh`` rows of
# its vertical blur, with the same row stride. (Rows padded to whole vectors
# for aligned loads were measured no faster, and sometimes much slower.)
U = np.uint64  # unsigned indices: no negative-index checks, loops vectorise
RUN = 256  # squares summed in float32 runs, as in _reduce.dot


@numba.njit(cache=True, nogil=True)
def _scratch(bh, bw, r):
    wd = bw + 2 * r
    return (bh + 2 * r) * wd + 2 * r, (bh + 2 * r) * wd


def box_scratch(box, r: int) -> tuple[int, int]:
    """Sizes of the two float32 scratch buffers :func:`blur_box` needs."""
    return _scratch(int(box[1] - box[0]), int(box[3] - box[2]), int(r))


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _fill(src, qy, idx_x, i0, nr, c0, W, pad, scale):
    # pad row p, column c = scale * src[idx_x[i0 + p], reflect(c0 + c)].
    lo = max(0, c0)
    hi = min(qy, c0 + W)
    a = lo - c0  # pad columns a .. b - 1 lie on the detector
    b = hi - c0
    n = U(max(0, hi - lo))
    for p in range(nr):
        s = U(idx_x[i0 + p] * qy + lo)
        d = U(p * W + a)
        if scale == 1.0:
            for j in range(n):
                pad[d + j] = np.float32(src[s + j])
        else:
            for j in range(n):
                pad[d + j] = np.float32(np.float64(src[s + j]) * scale)
    if a > 0 or b < W:
        _fill_ends(src, qy, idx_x, i0, nr, c0, W, pad, scale, a, b)


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _fill_sum(src, qx, qy, idx_x, i0, r, nr, c0, W, pad):
    """:func:`_fill` (scale 1) that also sums the integer pattern where it reads it.

    Returns the exact int64 sum of the detector rectangle the pad is filled
    from: rows ``max(0, i0 - r) .. min(qx, i0 - r + nr)`` (the rows read
    directly; reflected rows are copies and not counted), columns ``max(0,
    c0) .. min(qy, c0 + W)``. The sum rides on the conversion loop, which
    has the value in a register anyway. 8- and 16-bit rows are summed in
    int32 (exact for rows of up to 32767 pixels), wider ones in int64.
    """
    lo = max(0, c0)
    hi = min(qy, c0 + W)
    a = lo - c0
    b = hi - c0
    n = U(max(0, hi - lo))
    small = src.itemsize <= 2 and hi - lo <= 32767
    total = 0
    for p in range(nr):
        row = i0 - r + p
        s = U(idx_x[i0 + p] * qy + lo)
        d = U(p * W + a)
        if row < 0 or row >= qx:
            for j in range(n):
                pad[d + j] = np.float32(src[s + j])
        elif small:
            part = np.int32(0)
            for j in range(n):
                x = src[s + j]
                pad[d + j] = np.float32(x)
                part = np.int32(part + np.int32(x))  # int32 lanes: twice int64's
            total += np.int64(part)
        else:
            wide = 0
            for j in range(n):
                x = src[s + j]
                pad[d + j] = np.float32(x)
                wide += np.int64(x)
            total += wide
    if a > 0 or b < W:
        _fill_ends(src, qy, idx_x, i0, nr, c0, W, pad, 1.0, a, b)
    return total


@numba.njit(cache=True, nogil=True)
def _fill_ends(src, qy, idx_x, i0, nr, c0, W, pad, scale, a, b):
    # Columns beyond the detector edges (at most r each side), reflected: a
    # copy of a column already converted when there is one.
    for c in range(W):
        if a <= c < b:
            continue
        col = _reflect(c0 + c, qy)
        m = col - c0
        if a <= m < b:
            for p in range(nr):
                pad[p * W + c] = pad[p * W + m]
        else:
            for p in range(nr):
                x = np.float64(src[idx_x[i0 + p] * qy + col])
                pad[p * W + c] = np.float32(x * scale)


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _vertical9(pad, W, k, bh, tmp):
    # tmp row i = sum_t k[t] pad row i + t (9 taps, symmetric pairs added
    # first) over all W columns. Four output rows per sweep share their 12
    # input rows: 3 loads per output instead of 9 (the loop is load-bound).
    w0, w1, w2, w3, w4 = k[0], k[1], k[2], k[3], k[4]
    s = U(W)
    i = 0
    while i + 4 <= bh:
        b = U(i * W)
        o = b
        for j in range(s):
            q = b + j
            x0 = pad[q]
            x1 = pad[q + s]
            x2 = pad[q + U(2) * s]
            x3 = pad[q + U(3) * s]
            x4 = pad[q + U(4) * s]
            x5 = pad[q + U(5) * s]
            x6 = pad[q + U(6) * s]
            x7 = pad[q + U(7) * s]
            x8 = pad[q + U(8) * s]
            x9 = pad[q + U(9) * s]
            x10 = pad[q + U(10) * s]
            x11 = pad[q + U(11) * s]
            tmp[o + j] = w4 * x4 + w3 * (x3 + x5) + w2 * (x2 + x6) + w1 * (x1 + x7) + w0 * (x0 + x8)
            tmp[o + s + j] = (
                w4 * x5 + w3 * (x4 + x6) + w2 * (x3 + x7) + w1 * (x2 + x8) + w0 * (x1 + x9)
            )
            tmp[o + U(2) * s + j] = (
                w4 * x6 + w3 * (x5 + x7) + w2 * (x4 + x8) + w1 * (x3 + x9) + w0 * (x2 + x10)
            )
            tmp[o + U(3) * s + j] = (
                w4 * x7 + w3 * (x6 + x8) + w2 * (x5 + x9) + w1 * (x4 + x10) + w0 * (x3 + x11)
            )
        i += 4
    while i < bh:
        q0 = U(i * W)
        o = q0
        for j in range(s):
            q = q0 + j
            tmp[o + j] = (
                w4 * pad[q + U(4) * s]
                + w3 * (pad[q + U(3) * s] + pad[q + U(5) * s])
                + w2 * (pad[q + U(2) * s] + pad[q + U(6) * s])
                + w1 * (pad[q + s] + pad[q + U(7) * s])
                + w0 * (pad[q] + pad[q + U(8) * s])
            )
        i += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _sweep(i, bh, bw, n8, reach, size):
    # Length of the sweep over output row i: whole vectors (n8) when the
    # overflow stays inside the output, the weights and the source (which
    # reaches ``reach``), else the row's exact length bw.
    if i + 1 < bh and i * bw + n8 <= bh * bw and reach <= size:
        return n8
    return bw


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _horizontal9(tmp, W, k, bh, bw, weight, out):
    # out row i = weight * (9-tap blur along tmp row i). Every row but the
    # last is swept in whole 8-float vectors: the values past its end land at
    # the start of the next row, which is computed afterwards and overwrites
    # them (no scalar remainder loop).
    w0, w1, w2, w3, w4 = k[0], k[1], k[2], k[3], k[4]
    n8 = (bw + 7) // 8 * 8
    for i in range(bh):
        n = U(_sweep(i, bh, bw, n8, i * W + n8 + 8, tmp.shape[0]))
        b = U(i * W)
        o = U(i * bw)
        for j in range(n):
            q = b + j
            out[o + j] = weight[o + j] * (
                w4 * tmp[q + U(4)]
                + w3 * (tmp[q + U(3)] + tmp[q + U(5)])
                + w2 * (tmp[q + U(2)] + tmp[q + U(6)])
                + w1 * (tmp[q + U(1)] + tmp[q + U(7)])
                + w0 * (tmp[q] + tmp[q + U(8)])
            )


# Other tap counts: flat passes over the whole buffer (long loops, taps in
# groups of up to nine per sweep), then the weight.


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _nine_taps(src, step, k, t, n, dst):
    d = dst[0:n]
    s0 = src[t * step : t * step + n]
    s1 = src[(t + 1) * step : (t + 1) * step + n]
    s2 = src[(t + 2) * step : (t + 2) * step + n]
    s3 = src[(t + 3) * step : (t + 3) * step + n]
    s4 = src[(t + 4) * step : (t + 4) * step + n]
    s5 = src[(t + 5) * step : (t + 5) * step + n]
    s6 = src[(t + 6) * step : (t + 6) * step + n]
    s7 = src[(t + 7) * step : (t + 7) * step + n]
    s8 = src[(t + 8) * step : (t + 8) * step + n]
    w0, w1, w2, w3, w4 = k[t], k[t + 1], k[t + 2], k[t + 3], k[t + 4]
    w5, w6, w7, w8 = k[t + 5], k[t + 6], k[t + 7], k[t + 8]
    if t == 0:
        for j in range(n):
            d[j] = (
                w0 * s0[j] + w1 * s1[j] + w2 * s2[j] + w3 * s3[j] + w4 * s4[j]
                + w5 * s5[j] + w6 * s6[j] + w7 * s7[j] + w8 * s8[j]
            )  # fmt: skip
    else:
        for j in range(n):
            d[j] += (
                w0 * s0[j] + w1 * s1[j] + w2 * s2[j] + w3 * s3[j] + w4 * s4[j]
                + w5 * s5[j] + w6 * s6[j] + w7 * s7[j] + w8 * s8[j]
            )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def taps_pass(src, step, k, n, dst):
    """``dst[j] = sum_t k[t] * src[j + t * step]`` for ``j < n``.

    Taps are applied up to eight per sweep, so each sweep loads ``dst`` once
    for up to eight products instead of once per tap (the loop is bound by
    loads and stores, not by arithmetic).
    """
    nk = k.shape[0]
    t = 0
    while t < nk:
        g = nk - t
        if g == 9:  # sigma 1 (and the last 9 of sigma 3): one sweep, not 8 + 1
            _nine_taps(src, step, k, t, n, dst)
            t += 9
            continue
        if g >= 8:
            g = 8
        elif g >= 4:
            g = 4
        elif g >= 2:
            g = 2
        d = dst[0:n]
        s0 = src[t * step : t * step + n]
        w0 = k[t]
        if g == 1:
            if t == 0:
                for j in range(n):
                    d[j] = w0 * s0[j]
            else:
                for j in range(n):
                    d[j] += w0 * s0[j]
            t += 1
            continue
        s1 = src[(t + 1) * step : (t + 1) * step + n]
        w1 = k[t + 1]
        if g == 2:
            if t == 0:
                for j in range(n):
                    d[j] = w0 * s0[j] + w1 * s1[j]
            else:
                for j in range(n):
                    d[j] += w0 * s0[j] + w1 * s1[j]
            t += 2
            continue
        s2 = src[(t + 2) * step : (t + 2) * step + n]
        s3 = src[(t + 3) * step : (t + 3) * step + n]
        w2 = k[t + 2]
        w3 = k[t + 3]
        if g == 4:
            if t == 0:
                for j in range(n):
                    d[j] = w0 * s0[j] + w1 * s1[j] + w2 * s2[j] + w3 * s3[j]
            else:
                for j in range(n):
                    d[j] += w0 * s0[j] + w1 * s1[j] + w2 * s2[j] + w3 * s3[j]
            t += 4
            continue
        s4 = src[(t + 4) * step : (t + 4) * step + n]
        s5 = src[(t + 5) * step : (t + 5) * step + n]
        s6 = src[(t + 6) * step : (t + 6) * step + n]
        s7 = src[(t + 7) * step : (t + 7) * step + n]
        w4 = k[t + 4]
        w5 = k[t + 5]
        w6 = k[t + 6]
        w7 = k[t + 7]
        if t == 0:
            for j in range(n):
                d[j] = (
                    w0 * s0[j] + w1 * s1[j] + w2 * s2[j] + w3 * s3[j]
                    + w4 * s4[j] + w5 * s5[j] + w6 * s6[j] + w7 * s7[j]
                )  # fmt: skip
        else:
            for j in range(n):
                d[j] += (
                    w0 * s0[j] + w1 * s1[j] + w2 * s2[j] + w3 * s3[j]
                    + w4 * s4[j] + w5 * s5[j] + w6 * s6[j] + w7 * s7[j]
                )  # fmt: skip
        t += 8


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _weigh(buf, wd, bh, bw, weight, out):
    total = 0.0
    for i in range(bh):
        brow = buf[i * wd : i * wd + bw]
        orow = out[i * bw : (i + 1) * bw]
        wrow = weight[i * bw : (i + 1) * bw]
        part = np.float32(0.0)
        for j in range(bw):
            v = brow[j] * wrow[j]
            orow[j] = v
            part += v * v
        total += np.float64(part)
    return total


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _crop(src, qy, i0, j0, bh, bw, scale, weight, out):
    # No blur: out = weight * scale * src on the box, rows overflowing as in
    # _horizontal9.
    n8 = (bw + 7) // 8 * 8
    for i in range(bh):
        n = U(_sweep(i, bh, bw, n8, (i0 + i) * qy + j0 + n8, src.shape[0]))
        s = U((i0 + i) * qy + j0)
        o = U(i * bw)
        if scale == 1.0:
            for j in range(n):
                out[o + j] = weight[o + j] * np.float32(src[s + j])
        else:
            for j in range(n):
                out[o + j] = weight[o + j] * np.float32(np.float64(src[s + j]) * scale)


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _squares(out, n):
    total = 0.0
    for c in range(0, n, RUN):
        x = out[c : c + RUN]
        part = np.float32(0.0)
        for j in range(x.shape[0]):
            part += x[j] * x[j]
        total += np.float64(part)
    return total


@numba.njit(cache=True, nogil=True)
def blur_box(src, qx, qy, scale, k, idx_x, box, weight, pad, tmp, out):
    """Blur one raveled ``(qx, qy)`` pattern, crop it to ``box``, weight it.

    ``out`` (``(i1 - i0) * (j1 - j0)`` float32, for ``box = (i0, i1, j0,
    j1)``) receives ``weight * G(scale * src)`` on the box, with ``G`` the
    reflect-boundary Gaussian of 1-D taps ``k`` (one tap: no blur): the same
    values as blurring the whole pattern and cropping afterwards, but only
    the rows and columns the box needs are computed. ``idx_x`` comes from
    :func:`padded_index` ``(qx, r)``; ``pad`` and ``tmp`` are float32
    scratch of the sizes :func:`box_scratch` gives. ``scale`` 1.0 skips the
    scaling. Returns the float64 sum of squares of ``out``.
    """
    nk = k.shape[0]
    r = (nk - 1) // 2
    i0, i1, j0, j1 = box[0], box[1], box[2], box[3]
    bh = i1 - i0
    bw = j1 - j0
    if nk == 1:
        _crop(src, qy, i0, j0, bh, bw, scale, weight, out)
        return _squares(out, bh * bw)
    nr = bh + 2 * r
    W = bw + 2 * r
    # Vertical pass first (its four-row sweeps load least), then the
    # horizontal one, weighted, straight into ``out``.
    _fill(src, qy, idx_x, i0, nr, j0 - r, W, pad, scale)
    if nk == 9:  # sigma 1, the usual setting
        _vertical9(pad, W, k, bh, tmp)
        _horizontal9(tmp, W, k, bh, bw, weight, out)
        return _squares(out, bh * bw)
    # Both passes over the whole buffer as one flat line: the values that
    # spill across a row end land in the 2r unused columns of the next row.
    n = nr * W
    for j in range(n, n + 2 * r):
        pad[j] = 0.0  # read only into unused columns; keep it a plain number
    taps_pass(pad, 1, k, n, tmp)
    taps_pass(tmp, W, k, bh * W, pad)
    return _weigh(pad, W, bh, bw, weight, out)


# --- compact output: only the pixels of a q-mask -------------------------------
#
# The q-mask is given as its row segments ``runs`` ``(m, 3)`` = ``(row, start,
# stop)`` in box coordinates and raster order; the output vector holds the
# blurred values of those pixels only, run after run (``runs_len`` of them).
# Compared with the box vector of :func:`blur_box` there are no zero lanes for
# the dot products and no weight to multiply. Output buffers need 8 floats of slack after the
# last value (the runs are swept in whole 8-float vectors; the overflow of a
# run is overwritten by the next one) and ``tmp`` 16 floats beyond its
# ``bh * W`` values (see :func:`runs_scratch`).


def runs_scratch(box, r: int) -> tuple[int, int]:
    """Sizes of the two float32 scratch buffers :func:`blur_runs` needs."""
    pad_n, tmp_n = box_scratch(box, r)
    return pad_n, tmp_n + 16


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _horizontal9_runs(tmp, W, k, runs, out):
    # out (compact) = 9-tap blur along tmp at the runs' pixels, each run
    # swept in whole 8-float vectors (its overflow is overwritten by the next
    # run, the last one's lands in the slack).
    w0, w1, w2, w3, w4 = k[0], k[1], k[2], k[3], k[4]
    o = 0
    for t in range(runs.shape[0]):
        n = runs[t, 2] - runs[t, 1]
        b = U(runs[t, 0] * W + runs[t, 1])
        d = U(o)
        for j in range(U((n + 7) // 8 * 8)):
            q = b + j
            out[d + j] = (
                w4 * tmp[q + U(4)]
                + w3 * (tmp[q + U(3)] + tmp[q + U(5)])
                + w2 * (tmp[q + U(2)] + tmp[q + U(6)])
                + w1 * (tmp[q + U(1)] + tmp[q + U(7)])
                + w0 * (tmp[q] + tmp[q + U(8)])
            )
        o += n


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _crop_runs(src, qy, i0, j0, runs, scale, out):
    # No blur: out (compact) = scale * src at the runs' pixels; whole
    # 8-float sweeps where the source has room for the overflow.
    o = 0
    size = src.shape[0]
    for t in range(runs.shape[0]):
        n = runs[t, 2] - runs[t, 1]
        s0 = (i0 + runs[t, 0]) * qy + j0 + runs[t, 1]
        m = (n + 7) // 8 * 8
        if s0 + m > size:
            m = n
        s = U(s0)
        d = U(o)
        if scale == 1.0:
            for j in range(U(m)):
                out[d + j] = np.float32(src[s + j])
        else:
            for j in range(U(m)):
                out[d + j] = np.float32(np.float64(src[s + j]) * scale)
        o += n


@numba.njit(cache=True, nogil=True)
def _gather_runs(buf, W, runs, out):
    o = 0
    for t in range(runs.shape[0]):
        b = runs[t, 0] * W + runs[t, 1]
        for j in range(runs[t, 2] - runs[t, 1]):
            out[o + j] = buf[b + j]
        o += runs[t, 2] - runs[t, 1]


@numba.njit(cache=True, nogil=True)
def blur_runs_sum(src, qx, qy, k, idx_x, box, runs, pad, tmp, out):
    """:func:`blur_runs` (scale 1, ``len(k) > 1``) of an integer pattern, plus a sum.

    Returns the exact int64 sum of the raw values in the rectangle that
    the blur reads directly (:func:`dark_rect`), taken in the conversion
    loop, so a sum over (nearly) the whole pattern costs no second read.
    """
    r = (k.shape[0] - 1) // 2
    i0, i1, j0, j1 = box[0], box[1], box[2], box[3]
    bh = i1 - i0
    W = j1 - j0 + 2 * r
    total = _fill_sum(src, qx, qy, idx_x, i0, r, bh + 2 * r, j0 - r, W, pad)
    if k.shape[0] == 9:
        _vertical9(pad, W, k, bh, tmp)
        _horizontal9_runs(tmp, W, k, runs, out)
        return total
    m = (bh + 2 * r) * W
    for j in range(m, m + 2 * r):
        pad[j] = 0.0
    taps_pass(pad, 1, k, m, tmp)
    taps_pass(tmp, W, k, bh * W, pad)
    _gather_runs(pad, W, runs, out)
    return total


def dark_rect(detector_shape, box, r: int) -> tuple[int, int, int, int]:
    """Rows and columns ``(r0, r1, c0, c1)`` whose values :func:`blur_runs_sum` sums.

    ``box`` grown by the blur radius ``r``, clipped to the detector.

    Examples
    --------
    >>> dark_rect((8, 8), (2, 6, 1, 7), 4)
    (0, 8, 0, 8)
    """
    qx, qy = (int(v) for v in detector_shape)
    i0, i1, j0, j1 = (int(v) for v in box)
    return max(0, i0 - r), min(qx, i1 + r), max(0, j0 - r), min(qy, j1 + r)


@numba.njit(cache=True, nogil=True)
def blur_runs(src, qx, qy, scale, k, idx_x, box, runs, pad, tmp, out):
    """Blur one raveled ``(qx, qy)`` pattern and keep the q-mask's pixels.

    The values of :func:`blur_box` with a 0/1 weight, but only at the pixels
    of ``runs`` (``(row, start, stop)`` in ``box`` coordinates, raster
    order), written one after the other into ``out``. ``out`` needs 8 floats beyond the
    ``n = sum(stop - start)`` values, ``pad`` and ``tmp`` the sizes
    :func:`runs_scratch` gives. Returns ``n``. (No sum of squares here: the
    similarity kernel takes it in the sweep of its dot products.)
    """
    nk = k.shape[0]
    r = (nk - 1) // 2
    i0, i1, j0, j1 = box[0], box[1], box[2], box[3]
    bh = i1 - i0
    bw = j1 - j0
    n = 0
    for t in range(runs.shape[0]):
        n += runs[t, 2] - runs[t, 1]
    if nk == 1:
        _crop_runs(src, qy, i0, j0, runs, scale, out)
        return n
    nr = bh + 2 * r
    W = bw + 2 * r
    _fill(src, qy, idx_x, i0, nr, j0 - r, W, pad, scale)
    if nk == 9:  # sigma 1, the usual setting
        # The vertical pass over whole rows of the box: restricted to the
        # columns each group of rows needs it compiled to a slower loop
        # (its row sweeps no longer one stride long), which ate the gain.
        _vertical9(pad, W, k, bh, tmp)
        _horizontal9_runs(tmp, W, k, runs, out)
        return n
    m = nr * W
    for j in range(m, m + 2 * r):
        pad[j] = 0.0
    taps_pass(pad, 1, k, m, tmp)
    taps_pass(tmp, W, k, bh * W, pad)
    _gather_runs(pad, W, runs, out)
    return n
