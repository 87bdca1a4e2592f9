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

from ._blur import blur_box, pattern_scale
from ._reduce import FASTMATH as _FASTMATH
from ._reduce import dot4 as _dot4

# Squared norms below this fraction of the squared weighted spread count as 0.
_ZERO_NORM2 = 1e-24
#: Scan positions per parallel task (scratch buffers are allocated per task).
_TASK = 8


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
    for task in numba.prange((n_items + _TASK - 1) // _TASK):
        pad = np.empty((bh + 2 * r) * (bw + 2 * r) + 2 * r, np.float32)
        tmp = np.empty((bh + 2 * r) * (bw + 2 * r), np.float32)
        b = np.empty(bh * bw, np.float32)
        for t in range(task * _TASK, min(n_items, (task + 1) * _TASK)):
            row = rows[t // ny]
            c = t % ny
            src = raw[row % raw_cap, c]
            v = vec[row % vec_cap, c]
            scale = 1.0
            bad[row, c] = 0.0
            if scaled:
                # Correlations do not depend on a pattern's scale: a power of
                # two keeps 64-bit and float values inside float32's range.
                scale = pattern_scale(src)
                if scale == 0.0:
                    bad[row, c] = np.nan
                    v[:] = 0.0
                    continue
            blur_box(src, qx, qy, scale, k, idx_x, box, ones, pad, tmp, b)
            # Weighted mean taken relative to one pixel, so a constant
            # pattern centres to exactly zero instead of to rounding noise.
            b0 = np.float64(b[0])
            shifted, spread = _moments(b, w, np.float32(b0))
            mean = b0 + shifted / wsum
            norm2 = _centred_norm2(b, w, np.float32(mean))
            # A norm at the rounding level of the mean (a pattern constant
            # where the weight is nonzero) is zero: normalising it would
            # amplify noise.
            if norm2 > _ZERO_NORM2 * spread:
                _centred_unit(b, w, np.float32(mean), np.float32(1.0 / np.sqrt(norm2)), v)
            else:
                v[:] = 0.0


@numba.njit(cache=True, nogil=True, parallel=True)
def forward_weights(vec, vec_cap, r0, r1, nx, fwd, rmin, rmax, rh, rh_cap):
    """Mapped correlations R_hat of every forward pair starting in rows r0:r1.

    ``rh[r % rh_cap, c, k]`` receives R_hat between ``(r, c)`` and
    ``(r, c) + fwd[k]``, or 0 when that neighbour lies outside the scan. Each
    unordered pair is a forward pair of exactly one of its two ends. The
    forward offsets are taken four at a time (one sweep over the pattern's
    vector per four partners); a missing partner is replaced by the vector
    itself and its result ignored.
    """
    ny = vec.shape[1]
    nk = fwd.shape[0]
    span = rmax - rmin
    n_items = (r1 - r0) * ny
    for task in numba.prange((n_items + _TASK - 1) // _TASK):
        for t in range(task * _TASK, min(n_items, (task + 1) * _TASK)):
            r = r0 + t // ny
            c = t % ny
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


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _copy(src, o):
    for i in range(o.shape[0]):
        o[i] = np.float32(src[i])


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _axpy4(o, w0, n0, w1, n1, w2, n2, w3, n3):
    for i in range(o.shape[0]):
        o[i] += (
            w0 * np.float32(n0[i]) + w1 * np.float32(n1[i])
            + w2 * np.float32(n2[i]) + w3 * np.float32(n3[i])
        )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _divide(o, norm):
    for i in range(o.shape[0]):
        o[i] = o[i] / norm


@numba.njit(cache=True, nogil=True, parallel=True)
def weighted_average(raw, raw_cap, rh, rh_cap, r0, r1, nx, offsets, forward, pair, strip, dst, wts):
    """Average each raw pattern of rows r0:r1 with its neighbours by R_hat.

    ``offsets`` is the full footprint (centre included); for a non-centre
    offset ``j`` the weight is the forward R_hat ``pair[j]`` stored at the
    position itself when ``forward[j]`` and at the neighbour otherwise.
    ``dst[r - r0, c]`` receives the average and ``wts[r - r0, c, j]`` the
    weight given to neighbour ``j`` (1 for the centre, 0 outside the scan).

    One task walks a strip of ``strip`` scan columns down the rows, so the
    neighbourhoods of consecutive positions, which overlap, stay in cache.
    Neighbours of nonzero weight are added four per sweep over the output
    (in footprint order; a short last group is padded with zero weights).
    """
    ny = raw.shape[1]
    nk = offsets.shape[0]
    for s in numba.prange((ny + strip - 1) // strip):
        sel = np.empty(nk + 3, np.int64)
        for r in range(r0, r1):
            for c in range(s * strip, min(ny, (s + 1) * strip)):
                o = dst[r - r0, c]
                wrow = wts[r - r0, c]
                _copy(raw[r % raw_cap, c], o)
                total = 1.0
                n_sel = 0
                for j in range(nk):
                    dr = offsets[j, 0]
                    dc = offsets[j, 1]
                    rr = r + dr
                    cc = c + dc
                    if dr == 0 and dc == 0:
                        wrow[j] = 1.0
                        continue
                    if rr < 0 or rr >= nx or cc < 0 or cc >= ny:
                        wrow[j] = 0.0
                        continue
                    # A forward pair's weight is stored at its first end.
                    fw = forward[j]
                    wj = rh[r % rh_cap, c, pair[j]] if fw else rh[rr % rh_cap, cc, pair[j]]
                    wrow[j] = wj
                    if wj > 0.0:
                        total += wj
                        sel[n_sel] = j
                        n_sel += 1
                for g in range(0, n_sel, 4):
                    j0 = sel[g]
                    n0 = raw[(r + offsets[j0, 0]) % raw_cap, c + offsets[j0, 1]]
                    w0 = wrow[j0]
                    n1, w1 = _pick(raw, raw_cap, r, c, offsets, sel, wrow, g + 1, n_sel, n0)
                    n2, w2 = _pick(raw, raw_cap, r, c, offsets, sel, wrow, g + 2, n_sel, n0)
                    n3, w3 = _pick(raw, raw_cap, r, c, offsets, sel, wrow, g + 3, n_sel, n0)
                    _axpy4(o, w0, n0, w1, n1, w2, n2, w3, n3)
                _divide(o, np.float32(total))


@numba.njit(cache=True, nogil=True, inline="always")
def _pick(raw, raw_cap, r, c, offsets, sel, wrow, g, n_sel, fallback):
    if g >= n_sel:
        return fallback, np.float32(0.0)
    j = sel[g]
    return raw[(r + offsets[j, 0]) % raw_cap, c + offsets[j, 1]], wrow[j]
