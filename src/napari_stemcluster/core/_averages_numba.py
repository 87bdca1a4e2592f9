"""numba kernel for :mod:`napari_stemcluster.core.averages`."""

from __future__ import annotations

import numba
import numpy as np

#: Detector pixels per parallel task; each task owns its slice of every sum,
#: so the accumulation order (raster order of positions) never depends on
#: the number of threads.
_CHUNK = 512


@numba.njit(cache=True, nogil=True, parallel=True)
def _accumulate(block, labels, sums):
    """Add each labelled pattern of ``block`` (P, Q) to ``sums[label - 1]``."""
    n_pos, q = block.shape
    n_lab = sums.shape[0]
    n_chunks = (q + _CHUNK - 1) // _CHUNK
    for c in numba.prange(n_chunks):
        q0 = c * _CHUNK
        q1 = min(q, q0 + _CHUNK)
        for p in range(n_pos):
            lab = labels[p]
            if lab <= 0 or lab > n_lab:
                continue
            # Loop over slices: LLVM vectorises this, not a computed range.
            dst = sums[lab - 1, q0:q1]
            src = block[p, q0:q1]
            for k in range(src.shape[0]):
                dst[k] += np.float64(src[k])
