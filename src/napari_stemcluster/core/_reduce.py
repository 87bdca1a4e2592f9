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


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def dot4(v, a, b, c, d):
    """``(v . a, v . b, v . c, v . d)`` with the arithmetic of :func:`dot`.

    One sweep over ``v`` for four partners: a quarter of the loads of ``v``
    and four independent sums, which :func:`dot` alone cannot overlap.
    """
    sa = 0.0
    sb = 0.0
    sc = 0.0
    sd = 0.0
    for k0 in range(0, v.shape[0], RUN):
        x = v[k0 : k0 + RUN]
        xa = a[k0 : k0 + RUN]
        xb = b[k0 : k0 + RUN]
        xc = c[k0 : k0 + RUN]
        xd = d[k0 : k0 + RUN]
        pa = np.float32(0.0)
        pb = np.float32(0.0)
        pc = np.float32(0.0)
        pd = np.float32(0.0)
        for k in range(x.shape[0]):
            xk = np.float32(x[k])
            pa += xk * np.float32(xa[k])
            pb += xk * np.float32(xb[k])
            pc += xk * np.float32(xc[k])
            pd += xk * np.float32(xd[k])
        sa += np.float64(pa)
        sb += np.float64(pb)
        sc += np.float64(pc)
        sd += np.float64(pd)
    return sa, sb, sc, sd
