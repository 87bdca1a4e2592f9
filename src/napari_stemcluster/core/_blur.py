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
    # scipy's "reflect" (half-sample symmetric) extension: period 2n.
    m = i % (2 * n)
    if m < 0:
        m += 2 * n
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


@numba.njit(cache=True, nogil=True, inline="always")
def blur_flat(src, qx, qy, k, idx_x, idx_y, line, tmp, acc, out):
    """Blur one raveled ``(qx, qy)`` pattern ``src`` into float32 ``out``.

    ``idx_x``/``idx_y`` come from :func:`padded_index` with the kernel radius;
    ``line`` (``qy + 2r``), ``tmp`` (``qx * qy``) and ``acc`` (``qy``) are
    float32 scratch buffers, so callers allocate them once per thread.
    """
    nk = k.shape[0]
    # Both passes run over contiguous rows so that the inner loops vectorise:
    # each source row is reflect-padded into a buffer once, then every tap adds
    # a shifted contiguous slice of it. Row views (rather than computed flat
    # indices) let the compiler drop negative-index checks and vectorise.
    for i in range(qx):
        srow = src[i * qy : (i + 1) * qy]
        for j in range(qy + nk - 1):
            line[j] = np.float32(srow[idx_y[j]])
        trow = tmp[i * qy : (i + 1) * qy]
        for j in range(qy):
            trow[j] = 0.0
        for t in range(nk):
            w = k[t]
            shifted = line[t : t + qy]
            for j in range(qy):
                trow[j] += w * shifted[j]
    for i in range(qx):
        for j in range(qy):
            acc[j] = 0.0
        for t in range(nk):
            w = k[t]
            row = idx_x[i + t]
            trow = tmp[row * qy : (row + 1) * qy]
            for j in range(qy):
                acc[j] += w * trow[j]
        orow = out[i * qy : (i + 1) * qy]
        for j in range(qy):
            orow[j] = acc[j]


@numba.njit(cache=True, nogil=True, parallel=True)
def _blur_stack(src, qx, qy, k, out):
    r = (k.shape[0] - 1) // 2
    idx_y = padded_index(qy, r)
    idx_x = padded_index(qx, r)
    for p in numba.prange(src.shape[0]):
        line = np.empty(qy + 2 * r, np.float32)
        tmp = np.empty(qx * qy, np.float32)
        acc = np.empty(qy, np.float32)
        blur_flat(src[p], qx, qy, k, idx_x, idx_y, line, tmp, acc, out[p])


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


def box_scratch(box, r: int) -> tuple[int, int]:
    """Sizes of the two float32 scratch buffers :func:`blur_box` needs."""
    bh = int(box[1] - box[0])
    bw = int(box[3] - box[2])
    width = bw + 2 * r
    return (bh + 2 * r) * width + 2 * r, (bh + 2 * r) * width


# The loops below live in separate small functions on purpose: in one
# function with several loops and branches LLVM leaves them scalar (5-8x
# slower, measured).


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _fill_mid(src, qy, idx_x, i0, n_rows, lo, hi, pad, wd, off):
    n = hi - lo
    for p in range(n_rows):
        s0 = idx_x[i0 + p] * qy
        mid = src[s0 + lo : s0 + hi]
        seg = pad[p * wd + off : p * wd + off + n]
        for j in range(n):
            seg[j] = np.float32(mid[j])


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _fill_mid_scaled(src, qy, idx_x, i0, n_rows, lo, hi, pad, wd, off, scale):
    n = hi - lo
    for p in range(n_rows):
        s0 = idx_x[i0 + p] * qy
        mid = src[s0 + lo : s0 + hi]
        seg = pad[p * wd + off : p * wd + off + n]
        for j in range(n):
            seg[j] = np.float32(np.float64(mid[j]) * scale)


@numba.njit(cache=True, nogil=True)
def _fill_ends(src, qy, idx_x, i0, n_rows, c0, off, n_mid, pad, wd, scale):
    # Padded columns outside the detector, reflected: at most r each side.
    for p in range(n_rows):
        s0 = idx_x[i0 + p] * qy
        for j in range(off):
            pad[p * wd + j] = np.float32(np.float64(src[s0 + _reflect(c0 + j, qy)]) * scale)
        for j in range(off + n_mid, wd):
            pad[p * wd + j] = np.float32(np.float64(src[s0 + _reflect(c0 + j, qy)]) * scale)


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
    wd = bw + 2 * r  # row stride of the padded buffers
    # Rows i0 - r .. i1 + r - 1 and columns j0 - r .. j1 + r - 1, reflected
    # at the detector edges, as float32 rows of stride wd.
    lo = max(0, j0 - r)
    hi = min(qy, j1 + r)
    off = lo - (j0 - r)
    n_rows = bh + 2 * r
    if scale == 1.0:
        _fill_mid(src, qy, idx_x, i0, n_rows, lo, hi, pad, wd, off)
    else:
        _fill_mid_scaled(src, qy, idx_x, i0, n_rows, lo, hi, pad, wd, off, scale)
    if off > 0 or hi < j1 + r:
        _fill_ends(src, qy, idx_x, i0, n_rows, j0 - r, off, hi - lo, pad, wd, scale)
    if nk == 1:
        return _weigh(pad, wd, bh, bw, weight, out)
    # Both passes run over the whole buffer as one flat line: long
    # contiguous loops vectorise, and the values that spill across a row
    # end land in the 2r unused columns of the next row. Columns 0 .. bw - 1
    # of each row of the result are the box.
    n = n_rows * wd
    for j in range(n, n + 2 * r):
        pad[j] = 0.0  # read only into unused columns; keep it a plain number
    taps_pass(pad, 1, k, n, tmp)
    taps_pass(tmp, wd, k, bh * wd, pad)  # the padded pattern is no longer needed
    return _weigh(pad, wd, bh, bw, weight, out)
