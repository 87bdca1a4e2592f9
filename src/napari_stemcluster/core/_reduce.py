"""Reduction kernel shared by the similarity and prefilter kernels."""

from __future__ import annotations

import numba
import numpy as np

#: Reassociation (for SIMD) but no "nnan"/"ninf": NaN or inf in the input must
#: survive the sums, since callers detect bad input from them.
FASTMATH = {"reassoc", "nsz", "contract"}

#: Pixels summed in float32 before the partial sum is added in float64: long
#: enough for 8- or 16-lane SIMD with unrolling, short enough that float32
#: rounding stays near 1e-7 relative whatever the detector size.
RUN = 256


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def dot(a, b):
    """``sum(a * b)`` of two 1-D arrays: float32 products, float64 run sums.

    The inner loop runs over slices of fixed origin: with a computed bound
    LLVM does not vectorise it (10x slower). The order of operations is fixed
    by the compiled code, so results do not depend on the thread count.
    """
    acc = 0.0
    for k0 in range(0, a.shape[0], RUN):
        x = a[k0 : k0 + RUN]
        y = b[k0 : k0 + RUN]
        part = np.float32(0.0)
        for k in range(x.shape[0]):
            part += np.float32(x[k]) * np.float32(y[k])
        acc += np.float64(part)
    return acc
