"""Kernel of :func:`napari_stemcluster.core.orientation.orientation_library`."""

import numba
import numpy as np


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
def _overlap_score(
    g, f2, rot, q, amp, wavelength, sigma_s, alpha, power, sigma, q_limit, min_weight
):  # pragma: no cover - compiled
    """Cosine similarity of Gaussian-spot images of a template and measured disks.

    Same arithmetic as the numpy reference ``_exact_score_numpy`` in
    :mod:`napari_stemcluster.core.orientation`.
    """
    num = 0.0
    norm_t = 0.0
    inv4s2 = 1.0 / (4.0 * sigma * sigma)
    for j in range(g.shape[0]):
        x = rot[0, 0] * g[j, 0] + rot[0, 1] * g[j, 1] + rot[0, 2] * g[j, 2]
        y = rot[1, 0] * g[j, 0] + rot[1, 1] * g[j, 1] + rot[1, 2] * g[j, 2]
        z = rot[2, 0] * g[j, 0] + rot[2, 1] * g[j, 1] + rot[2, 2] * g[j, 2]
        g2 = x * x + y * y + z * z
        s = z + 0.5 * wavelength * g2
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
def _rotated_score(
    w, rot0, g, f2, q, amp, wavelength, sigma_s, alpha, power, sigma, q_limit, min_weight
):  # pragma: no cover - compiled
    """:func:`_overlap_score` at the orientation ``rodrigues(w) @ rot0``."""
    rot = _rodrigues(w) @ rot0
    return _overlap_score(
        g, f2, rot, q, amp, wavelength, sigma_s, alpha, power, sigma, q_limit, min_weight
    )
