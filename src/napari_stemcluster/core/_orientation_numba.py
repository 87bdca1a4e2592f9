"""Kernel of :func:`napari_stemcluster.core.orientation.orientation_library`."""

import numba
import numpy as np

#: Gaussian width (times 1/thickness) with the FWHM of the slab's sinc² (0.886 / 2.355).
SINC2_SIGMA = 0.376


@numba.njit(cache=True, nogil=True)
def _angular_series(theta, amp, entry, n_entries, n_terms):  # pragma: no cover - compiled
    """``out[entry[k], m] += amp[k] * exp(i m theta[k])`` for ``m < n_terms``.

    The powers of ``exp(i theta)`` come from a running product, which is much
    cheaper than one complex exponential per term.
    """
    out = np.zeros((n_entries, n_terms), np.complex128)
    for k in range(theta.shape[0]):
        z = np.cos(theta[k]) + 1j * np.sin(theta[k])
        w = amp[k] + 0j
        row = entry[k]
        for m in range(n_terms):
            out[row, m] += w
            w *= z
    return out


@numba.njit(cache=True, nogil=True)
def _overlap_score(rot, model):  # pragma: no cover - compiled
    """Cosine similarity of Gaussian-spot images of a template and measured disks.

    ``model`` is the tuple ``(g, f2, q, amp, wavelength, sigma_s, alpha,
    power, sigma, q_limit, min_weight, thickness)`` of
    :func:`napari_stemcluster.core.orientation._score_model`. Same arithmetic
    as the numpy reference ``_exact_score_numpy`` in
    :mod:`napari_stemcluster.core.orientation`.
    """
    g, f2, q, amp, wavelength, sigma_s, alpha, power, sigma, q_limit, min_weight, thickness = model
    num = 0.0
    norm_t = 0.0
    inv4s2 = 1.0 / (4.0 * sigma * sigma)
    for j in range(g.shape[0]):
        x = rot[0, 0] * g[j, 0] + rot[0, 1] * g[j, 1] + rot[0, 2] * g[j, 2]
        y = rot[1, 0] * g[j, 0] + rot[1, 1] * g[j, 1] + rot[1, 2] * g[j, 2]
        z = rot[2, 0] * g[j, 0] + rot[2, 1] * g[j, 1] + rot[2, 2] * g[j, 2]
        g2 = x * x + y * y + z * z
        s = z + 0.5 * wavelength * g2
        if thickness > 0.0:  # slab shape function, see _excitation_weight
            w0 = SINC2_SIGMA / thickness
            arg = np.pi * thickness * s / np.sqrt(1.0 + alpha * alpha * (g2 - z * z) / (w0 * w0))
            w = 1.0 if abs(arg) < 1e-12 else (np.sin(arg) / arg) ** 2
        else:
            sig2 = sigma_s * sigma_s + alpha * alpha * (g2 - z * z)
            w = np.exp(-0.5 * s * s / sig2)
        if w < min_weight or x * x + y * y > q_limit * q_limit:
            continue
        a = (f2[j] * w) ** power
        norm_t += a * a
        acc = 0.0
        for k in range(q.shape[0]):
            dx = x - q[k, 0]
            dy = y - q[k, 1]
            d2 = dx * dx + dy * dy
            if d2 < 36.0 * sigma * sigma:  # beyond, exp(-9) is negligible
                acc += np.exp(-d2 * inv4s2) * amp[k]
        num += a * acc
    norm_e = 0.0
    for k in range(q.shape[0]):
        norm_e += amp[k] * amp[k]
    if norm_t <= 0.0 or norm_e <= 0.0:
        return 0.0
    return num / (np.sqrt(norm_t) * np.sqrt(norm_e))


@numba.njit(cache=True, nogil=True)
def _rodrigues(w):  # pragma: no cover - compiled
    """Rotation matrix of the rotation vector ``w`` (radians)."""
    t = np.sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2])
    out = np.eye(3)
    if t < 1e-15:
        return out
    kx, ky, kz = w[0] / t, w[1] / t, w[2] / t
    k = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
    return out + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


@numba.njit(cache=True, nogil=True)
def _rotated_score(w, rot0, model):  # pragma: no cover - compiled
    """:func:`_overlap_score` at the orientation ``rodrigues(w) @ rot0``."""
    return _overlap_score(_rodrigues(w) @ rot0, model)


@numba.njit(cache=True, nogil=True)
def _nelder_mead(rot0, step, model, xatol, fatol, maxiter):  # pragma: no cover - compiled
    """Maximise :func:`_rotated_score` over the rotation vector, Nelder-Mead.

    The standard (non-adaptive) simplex of Nelder and Mead with reflection 1,
    expansion 2, contraction 0.5 and shrink 0.5, the initial simplex
    ``0, step * e_i`` and the stopping rule "every vertex within ``xatol``
    and every value within ``fatol`` of the best": the same iterates as
    ``scipy.optimize.minimize(method="Nelder-Mead")`` with those options,
    without a Python call per evaluation. Returns ``(w, best score)``.
    """
    n = 3
    sim = np.zeros((n + 1, n))
    for i in range(n):
        sim[i + 1, i] = step
    fsim = np.empty(n + 1)
    for k in range(n + 1):
        fsim[k] = -_rotated_score(sim[k], rot0, model)
    order = np.argsort(fsim, kind="mergesort")
    sim = sim[order].copy()
    fsim = fsim[order].copy()
    it = 1
    xbar = np.empty(n)
    while it < maxiter:
        dx = 0.0
        df = 0.0
        for k in range(1, n + 1):
            df = max(df, abs(fsim[0] - fsim[k]))
            for i in range(n):
                dx = max(dx, abs(sim[k, i] - sim[0, i]))
        if dx <= xatol and df <= fatol:
            break
        for i in range(n):
            acc = 0.0
            for k in range(n):
                acc += sim[k, i]
            xbar[i] = acc / n
        xr = 2.0 * xbar - sim[n]
        fxr = -_rotated_score(xr, rot0, model)
        shrink = False
        if fxr < fsim[0]:
            xe = 3.0 * xbar - 2.0 * sim[n]
            fxe = -_rotated_score(xe, rot0, model)
            if fxe < fxr:
                sim[n] = xe
                fsim[n] = fxe
            else:
                sim[n] = xr
                fsim[n] = fxr
        elif fxr < fsim[n - 1]:
            sim[n] = xr
            fsim[n] = fxr
        elif fxr < fsim[n]:
            xc = 1.5 * xbar - 0.5 * sim[n]
            fxc = -_rotated_score(xc, rot0, model)
            if fxc <= fxr:
                sim[n] = xc
                fsim[n] = fxc
            else:
                shrink = True
        else:
            xcc = 0.5 * xbar + 0.5 * sim[n]
            fxcc = -_rotated_score(xcc, rot0, model)
            if fxcc < fsim[n]:
                sim[n] = xcc
                fsim[n] = fxcc
            else:
                shrink = True
        if shrink:
            for k in range(1, n + 1):
                sim[k] = sim[0] + 0.5 * (sim[k] - sim[0])
                fsim[k] = -_rotated_score(sim[k], rot0, model)
        it += 1
        order = np.argsort(fsim, kind="mergesort")
        sim = sim[order].copy()
        fsim = fsim[order].copy()
    return sim[0].copy(), -fsim[0]


@numba.njit(cache=True, nogil=True)
def _overlap_scores(rots, model):  # pragma: no cover - compiled
    """:func:`_overlap_score` of each rotation of ``rots`` (K, 3, 3)."""
    out = np.empty(rots.shape[0])
    for k in range(rots.shape[0]):
        out[k] = _overlap_score(rots[k], model)
    return out


@numba.njit(cache=True, nogil=True)
def _aperture_disks(pattern, pos, r_ap, r_out):  # pragma: no cover - compiled
    """Background-subtracted centroid and sum of each disk in an aperture.

    For each ``pos[i]``: the background is the median over the ring
    ``r_ap + 1 < d <= r_out``; the signal ``max(pattern - bg, 0)`` within
    ``d <= r_ap`` gives the centroid and the integrated intensity (rows
    ``qx, qy, intensity``; the peak position and 0 when there is no signal).
    """
    nx, ny = pattern.shape
    h = int(np.ceil(r_out))
    out = np.zeros((pos.shape[0], 3))
    ring = np.empty((2 * h + 2) * (2 * h + 2))
    for i in range(pos.shape[0]):
        px, py = pos[i, 0], pos[i, 1]
        x0, x1 = max(0, int(px) - h), min(nx, int(px) + h + 2)
        y0, y1 = max(0, int(py) - h), min(ny, int(py) + h + 2)
        n_ring = 0
        for x in range(x0, x1):
            for y in range(y0, y1):
                d = np.sqrt((x - px) ** 2 + (y - py) ** 2)
                if d > r_ap + 1.0 and d <= r_out:
                    ring[n_ring] = pattern[x, y]
                    n_ring += 1
        bg = np.median(ring[:n_ring]) if n_ring else 0.0
        tot = 0.0
        sx = 0.0
        sy = 0.0
        for x in range(x0, x1):
            for y in range(y0, y1):
                dx = x - px
                dy = y - py
                if np.sqrt(dx * dx + dy * dy) <= r_ap:
                    v = pattern[x, y] - bg
                    if v > 0.0:
                        tot += v
                        sx += v * dx
                        sy += v * dy
        if tot > 0.0:
            out[i, 0] = px + sx / tot
            out[i, 1] = py + sy / tot
            out[i, 2] = tot
        else:
            out[i, 0] = px
            out[i, 1] = py
    return out


@numba.njit(cache=True, nogil=True)
def _template_sums(offsets, entry_shell, entry_fft, entry_norm2, ehat, ok_shell):
    """Per template: angular spectrum of the shell-wise products, and the template norm².

    ``x[t, m] = sum_e entry_fft[e, m] * ehat[shell[e], m]`` over the entries
    ``e`` of template ``t`` (``offsets[t]:offsets[t + 1]``), and
    ``norm2[t] = sum_e entry_norm2[e]`` over the entries of usable shells.
    """
    n_t = offsets.shape[0] - 1
    n_m = entry_fft.shape[1]
    x = np.zeros((n_t, n_m), np.complex128)
    norm2 = np.zeros(n_t)
    for t in range(n_t):
        for e in range(offsets[t], offsets[t + 1]):
            sh = entry_shell[e]
            if not ok_shell[sh]:
                continue
            norm2[t] += entry_norm2[e]
            for m in range(n_m):
                x[t, m] += entry_fft[e, m] * ehat[sh, m]
    return x, norm2
