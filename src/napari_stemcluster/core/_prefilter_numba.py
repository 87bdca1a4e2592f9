"""numba kernels of the correlative prefilter (see :mod:`.prefilter`).

The scan is processed in blocks of rows held in ring buffers: scan row ``r``
lives in slot ``r % capacity`` of each buffer, so rows read or computed for
one block are reused by the next without copying.

Every value is computed by exactly one thread with a fixed order of
operations, so results do not depend on the block size or thread count.
"""

from __future__ import annotations

import numba
import numpy as np

from ._blur import blur_flat, padded_index
from ._reduce import FASTMATH as _FASTMATH
from ._reduce import dot as _dot

# Squared norms below this fraction of the squared weighted spread count as 0.
_ZERO_NORM2 = 1e-24


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=_FASTMATH)
def normalised_vectors(raw, raw_cap, rows, qx, qy, k, w, vec, vec_cap, sums):
    """Blur, weight, centre and L2-normalise the patterns of scan ``rows``.

    ``raw[r % raw_cap, c]`` is the raveled raw pattern at ``(r, c)``; the
    unit vector goes to ``vec[r % vec_cap, c]`` (zero when the weighted,
    centred pattern is zero to rounding) and the sum of the blurred pattern
    to ``sums[r, c]`` (non-finite when the pattern holds NaN or inf).
    """
    ny = raw.shape[1]
    q = qx * qy
    r = (k.shape[0] - 1) // 2
    idx_y = padded_index(qy, r)
    idx_x = padded_index(qx, r)
    wsum = 0.0
    for i in range(q):
        wsum += w[i]
    for t in numba.prange(rows.shape[0] * ny):
        row = rows[t // ny]
        c = t % ny
        line = np.empty(qy + 2 * r, np.float32)
        tmp = np.empty(q, np.float32)
        acc = np.empty(qy, np.float32)
        b = np.empty(q, np.float32)
        blur_flat(raw[row % raw_cap, c], qx, qy, k, idx_x, idx_y, line, tmp, acc, b)
        # Weighted mean taken relative to the first pixel, so a constant
        # pattern centres to exactly zero instead of to rounding noise.
        b0 = np.float64(b[0])
        total = 0.0
        shifted = 0.0
        scale = 0.0
        for i in range(q):
            total += b[i]
            s = (b[i] - b0) * w[i]
            shifted += s
            scale += s * s
        sums[row, c] = total
        mean = b0 + shifted / wsum
        norm2 = 0.0
        for i in range(q):
            d = (b[i] - mean) * w[i]
            norm2 += d * d
        v = vec[row % vec_cap, c]
        # A norm at the rounding level of the mean (a pattern constant where
        # the weight is nonzero) is zero: normalising it would amplify noise.
        if norm2 > _ZERO_NORM2 * scale:
            inv = 1.0 / np.sqrt(norm2)
            for i in range(q):
                v[i] = np.float32((b[i] - mean) * w[i] * inv)
        else:
            for i in range(q):
                v[i] = 0.0


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=_FASTMATH)
def forward_weights(vec, vec_cap, r0, r1, nx, fwd, rmin, rmax, rh, rh_cap):
    """Mapped correlations R_hat of every forward pair starting in rows r0:r1.

    ``rh[r % rh_cap, c, k]`` receives R_hat between ``(r, c)`` and
    ``(r, c) + fwd[k]``, or 0 when that neighbour lies outside the scan. Each
    unordered pair is a forward pair of exactly one of its two ends.
    """
    ny = vec.shape[1]
    nk = fwd.shape[0]
    span = rmax - rmin
    for t in numba.prange((r1 - r0) * ny):
        r = r0 + t // ny
        c = t % ny
        a = vec[r % vec_cap, c]
        dst = rh[r % rh_cap, c]
        for k in range(nk):
            rr = r + fwd[k, 0]
            cc = c + fwd[k, 1]
            if rr < nx and cc >= 0 and cc < ny:
                x = (_dot(a, vec[rr % vec_cap, cc]) - rmin) / span
                dst[k] = np.float32(min(max(x, 0.0), 1.0))
            else:
                dst[k] = 0.0


@numba.njit(cache=True, nogil=True, parallel=True)
def weighted_average(raw, raw_cap, rh, rh_cap, r0, r1, nx, offsets, forward, pair, dst, wts):
    """Average each raw pattern of rows r0:r1 with its neighbours by R_hat.

    ``offsets`` is the full footprint (centre included); for a non-centre
    offset ``j`` the weight is the forward R_hat ``pair[j]`` stored at the
    position itself when ``forward[j]`` and at the neighbour otherwise.
    ``dst[r - r0, c]`` receives the average and ``wts[r - r0, c, j]`` the
    weight given to neighbour ``j`` (1 for the centre, 0 outside the scan).
    """
    ny = raw.shape[1]
    q = raw.shape[2]
    nk = offsets.shape[0]
    for t in numba.prange((r1 - r0) * ny):
        r = r0 + t // ny
        c = t % ny
        o = dst[r - r0, c]
        wrow = wts[r - r0, c]
        src = raw[r % raw_cap, c]
        for i in range(q):
            o[i] = np.float32(src[i])
        total = 1.0
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
            wj = rh[r % rh_cap, c, pair[j]] if forward[j] else rh[rr % rh_cap, cc, pair[j]]
            wrow[j] = wj
            if wj > 0.0:
                total += wj
                nb = raw[rr % raw_cap, cc]
                for i in range(q):
                    o[i] += wj * np.float32(nb[i])
        norm = np.float32(total)
        for i in range(q):
            o[i] = o[i] / norm
