"""numba kernel for :func:`napari_stemcluster.core.virtual.virtual_detector`."""

from __future__ import annotations

import numba


@numba.njit(cache=True, nogil=True, inline="always")
def _pattern_sums(row, idx, wx, wy):
    """Masked sum and first moments of one flat pattern (float64)."""
    s = 0.0
    sx = 0.0
    sy = 0.0
    for k in range(idx.shape[0]):
        v = float(row[idx[k]])
        s += v
        sx += v * wx[k]
        sy += v * wy[k]
    return s, sx, sy


@numba.njit(cache=True, nogil=True, parallel=True)
def _detector_sums(block, idx, wx, wy, out_sum, out_x, out_y):
    """Masked sum and first moments of each pattern of ``block``.

    ``block`` is ``(n, Qx*Qy)``; ``idx`` are the flat detector pixels of the
    mask and ``wx``, ``wy`` their coordinates relative to the centre. Sums are
    float64, so integer data up to 2**53 per pattern sum exactly.
    """
    for i in numba.prange(block.shape[0]):
        out_sum[i], out_x[i], out_y[i] = _pattern_sums(block[i], idx, wx, wy)


@numba.njit(cache=True, nogil=True)
def _detector_sums_serial(block, idx, wx, wy, out_sum, out_x, out_y):
    """:func:`_detector_sums` in the calling thread only.

    For a background pass beside a GUI: it leaves the other cores to the
    event loop, and on a busy machine it is faster than waiting for every
    thread of a parallel loop.
    """
    for i in range(block.shape[0]):
        out_sum[i], out_x[i], out_y[i] = _pattern_sums(block[i], idx, wx, wy)


@numba.njit(cache=True, nogil=True)
def _bin_and_sum(block, idx, factor, acc, out_bins, out_sum, total):
    """Detector bins of ``factor x factor`` pixels and the masked sum of each pattern.

    ``block`` is ``(n, Qx, Qy)``; ``out_bins`` ``(n, ceil(Qx/f), ceil(Qy/f))``
    float32 (sums of the pixels of each bin; edge bins hold fewer pixels);
    ``idx`` the flat detector pixels of a mask and ``out_sum`` ``(n,)``
    float64 the sum over them (both from one read of each pattern). ``acc``
    is a scratch row of ``Qy`` in an exact accumulator type (uint32 for
    8- and 16-bit data, int64 or float64 otherwise). ``total`` ``(Qx, Qy)``
    float64 accumulates the sum of all patterns.
    """
    n, qx, qy = block.shape
    nbx, nby = out_bins.shape[1], out_bins.shape[2]
    m = idx.shape[0]
    for i in range(n):
        pat = block[i]
        for bx in range(nbx):
            acc[:] = 0
            # sum the bin's detector rows first: contiguous, vectorised adds
            for x in range(bx * factor, min(qx, bx * factor + factor)):
                row = pat[x]
                trow = total[x]
                for y in range(qy):
                    acc[y] += row[y]
                    trow[y] += row[y]
            for by in range(nby):
                y0 = by * factor
                t = acc[y0]
                for y in range(y0 + 1, min(qy, y0 + factor)):
                    t += acc[y]
                out_bins[i, bx, by] = t
        flat = pat.ravel()
        s = 0.0
        for k in range(m):
            s += flat[idx[k]]
        out_sum[i] = s


@numba.njit(cache=True, nogil=True)
def _weighted_bins(data, bins, w, out):
    """``out[j] = sum_b w[b, j] * data[b]`` over the listed ``bins`` (j = 0, 1, 2).

    ``data`` is bin-major ``(B, N)`` float32, so each bin is one contiguous
    run of scan positions (vectorised multiply-adds), and bins outside the
    detector (zero weight) are never read.
    """
    n = data.shape[1]
    a = out[0]
    b = out[1]
    c = out[2]
    a[:] = 0.0
    b[:] = 0.0
    c[:] = 0.0
    for k in bins:
        row = data[k]
        w0 = w[k, 0]
        w1 = w[k, 1]
        w2 = w[k, 2]
        for i in range(n):
            v = row[i]
            a[i] += v * w0
            b[i] += v * w1
            c[i] += v * w2
