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
