"""numba kernel for :func:`napari_stemcluster.core.editing.update_sums`."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _move_patterns(sums, patterns, old, new):
    """``sums[old[k] - 1] -= patterns[k]`` and ``sums[new[k] - 1] += patterns[k]``.

    ``sums`` is ``(N, P)`` float64, ``patterns`` ``(K, P)`` of any real dtype;
    labels <= 0 are skipped. Serial: a brush stroke moves a few hundred
    patterns (milliseconds), and threads cost more than that on a busy
    machine.
    """
    for k in range(patterns.shape[0]):
        o = old[k] - 1
        w = new[k] - 1
        if o == w:
            continue
        row = patterns[k]
        if o >= 0:
            dst = sums[o]
            for j in range(row.shape[0]):
                dst[j] -= np.float64(row[j])
        if w >= 0:
            dst = sums[w]
            for j in range(row.shape[0]):
                dst[j] += np.float64(row[j])
