"""numba kernel for :func:`napari_stemcluster.core.virtual.virtual_detector`."""

from __future__ import annotations

import numba


@numba.njit(cache=True, nogil=True, parallel=True)
def _detector_sums(block, idx, wx, wy, out_sum, out_x, out_y):
    """Masked sum and first moments of each pattern of ``block``.

    ``block`` is ``(n, Qx*Qy)``; ``idx`` are the flat detector pixels of the
    mask and ``wx``, ``wy`` their coordinates relative to the centre. Sums are
    float64, so integer data up to 2**53 per pattern sum exactly.
    """
    n = block.shape[0]
    m = idx.shape[0]
    for i in numba.prange(n):
        s = 0.0
        sx = 0.0
        sy = 0.0
        row = block[i]
        for k in range(m):
            v = float(row[idx[k]])
            s += v
            sx += v * wx[k]
            sy += v * wy[k]
        out_sum[i] = s
        out_x[i] = sx
        out_y[i] = sy
