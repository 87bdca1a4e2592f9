"""Gaussian blur of a stack of diffraction patterns (numba kernel).

Equivalent to ``scipy.ndimage.gaussian_filter(p, sigma, mode="reflect",
truncate=4.0)`` applied to every pattern ``p``, but parallel over patterns,
free of the GIL, and writing float32 without a float64 copy of the stack.
"""

from __future__ import annotations

import numba
import numpy as np

TRUNCATE = 4.0


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian weights with scipy.ndimage's radius convention.

    ``sigma <= 0`` gives the single tap ``[1.0]`` (no blur).
    """
    if sigma <= 0:
        return np.ones(1, np.float32)
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


@numba.njit(cache=True, nogil=True, inline="always")
def _reflect(i, n):
    # scipy's "reflect" (half-sample symmetric) extension: period 2n.
    m = i % (2 * n)
    if m < 0:
        m += 2 * n
    if m >= n:
        m = 2 * n - 1 - m
    return m


@numba.njit(cache=True, nogil=True)
def padded_index(n, r):
    """Source index of each position of a length-``n`` line padded by ``r``."""
    idx = np.empty(n + 2 * r, np.int64)
    for i in range(n + 2 * r):
        idx[i] = _reflect(i - r, n)
    return idx


@numba.njit(cache=True, nogil=True, inline="always")
def blur_flat(src, qx, qy, k, idx_x, idx_y, line, tmp, acc, out):
    """Blur one raveled ``(qx, qy)`` pattern ``src`` into float32 ``out``.

    ``idx_x``/``idx_y`` come from :func:`padded_index` with the kernel radius;
    ``line`` (``qy + 2r``), ``tmp`` (``qx * qy``) and ``acc`` (``qy``) are
    float32 scratch buffers, so callers allocate them once per thread.
    """
    nk = k.shape[0]
    # Both passes run over contiguous rows so that the inner loops vectorise:
    # each source row is reflect-padded into a buffer once, then every tap adds
    # a shifted contiguous slice of it. Row views (rather than computed flat
    # indices) let the compiler drop negative-index checks and vectorise.
    for i in range(qx):
        srow = src[i * qy : (i + 1) * qy]
        for j in range(qy + nk - 1):
            line[j] = np.float32(srow[idx_y[j]])
        trow = tmp[i * qy : (i + 1) * qy]
        for j in range(qy):
            trow[j] = 0.0
        for t in range(nk):
            w = k[t]
            shifted = line[t : t + qy]
            for j in range(qy):
                trow[j] += w * shifted[j]
    for i in range(qx):
        for j in range(qy):
            acc[j] = 0.0
        for t in range(nk):
            w = k[t]
            row = idx_x[i + t]
            trow = tmp[row * qy : (row + 1) * qy]
            for j in range(qy):
                acc[j] += w * trow[j]
        orow = out[i * qy : (i + 1) * qy]
        for j in range(qy):
            orow[j] = acc[j]


@numba.njit(cache=True, nogil=True, parallel=True)
def _blur_stack(src, qx, qy, k, out):
    r = (k.shape[0] - 1) // 2
    idx_y = padded_index(qy, r)
    idx_x = padded_index(qx, r)
    for p in numba.prange(src.shape[0]):
        line = np.empty(qy + 2 * r, np.float32)
        tmp = np.empty(qx * qy, np.float32)
        acc = np.empty(qy, np.float32)
        blur_flat(src[p], qx, qy, k, idx_x, idx_y, line, tmp, acc, out[p])


def blur_patterns(stack: np.ndarray, sigma: float, out: np.ndarray | None = None):
    """Gaussian-blur each pattern of a ``(..., Qx, Qy)`` stack into float32.

    Parameters
    ----------
    stack : ndarray
        Patterns of any integer or float dtype; leading axes are flattened.
    sigma : float
        Standard deviation in detector pixels; ``0`` returns a float32 copy.
    out : ndarray, optional
        float32 array of the same shape to write into.

    Returns
    -------
    ndarray
        float32 array of ``stack.shape``.

    Examples
    --------
    >>> from scipy import ndimage
    >>> stack = np.random.default_rng(0).uniform(0, 1, (2, 9, 13))
    >>> blurred = blur_patterns(stack, 3.0)
    >>> ref = ndimage.gaussian_filter(stack[1], 3.0, mode="reflect", truncate=4.0)
    >>> bool(np.allclose(blurred[1], ref, atol=1e-6))
    True
    """
    stack = np.asarray(stack)
    if out is None:
        out = np.empty(stack.shape, np.float32)
    elif not (
        isinstance(out, np.ndarray)
        and out.shape == stack.shape
        and out.dtype == np.float32
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise ValueError(
            f"out must be a writeable C-contiguous float32 array of shape {stack.shape}"
        )
    if sigma <= 0:
        out[...] = stack
        return out
    qx, qy = stack.shape[-2:]
    src = np.ascontiguousarray(stack)
    if not src.dtype.isnative or src.dtype == np.float16:
        src = src.astype(np.float32)  # the kernel needs native-endian numbers
    _blur_stack(
        src.reshape(-1, qx * qy),
        qx,
        qy,
        gaussian_kernel1d(sigma),
        out.reshape(-1, qx * qy),
    )
    return out
