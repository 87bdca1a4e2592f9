"""numba kernel of the Bragg-disk refinement: upsampled local DFT of a correlation."""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath=True)
def _columns(rows_re, rows_im, wy, ny, y0, step, half, out):  # pragma: no cover
    """Second half of the local DFT: sum the row transforms over ``ky`` at each ``y``."""
    u = 2 * half + 1
    nyh = rows_re.shape[1]
    cy = np.empty(nyh)
    sy = np.empty(nyh)
    for j in range(u):
        y = y0 + (j - half) * step
        for ky in range(nyh):
            ph = 2.0 * math.pi * ky * y / ny
            cy[ky] = wy[ky] * math.cos(ph)
            sy[ky] = wy[ky] * math.sin(ph)
        for i in range(u):
            acc = 0.0
            for ky in range(nyh):
                acc += rows_re[i, ky] * cy[ky] - rows_im[i, ky] * sy[ky]
            out[i, j] = acc


@numba.njit(cache=True, nogil=True)
def _frequencies(nx, ny, nyh):  # pragma: no cover - compiled
    """Signed row frequencies and the half spectrum's column weights."""
    kx = np.empty(nx)
    for k in range(nx):
        kx[k] = k if k < (nx + 1) // 2 else k - nx
    wy = np.full(nyh, 2.0)
    wy[0] = 1.0
    if ny % 2 == 0:
        wy[nyh - 1] = 1.0
    return kx, wy


@numba.njit(cache=True, nogil=True, fastmath=True)
def _local_grid(spec_re, spec_im, kx, wy, nx, ny, x0, y0, step, half, out):
    """Correlation (real part of the inverse half-spectrum DFT) on a small grid.

    ``out[i, j]`` is the correlation at ``(x0 + (i - half) * step,
    y0 + (j - half) * step)``; columns 1..Ny/2-1 of the half spectrum count
    twice (weights ``wy``). Real arithmetic on the spectrum's real and
    imaginary parts, so that the inner loops vectorise.
    """
    u = 2 * half + 1
    nyh = spec_re.shape[1]
    rows_re = np.zeros((u, nyh))
    rows_im = np.zeros((u, nyh))
    for i in range(u):
        x = x0 + (i - half) * step
        for k in range(nx):
            ph = 2.0 * math.pi * kx[k] * x / nx
            c = math.cos(ph)
            s = math.sin(ph)
            for ky in range(nyh):
                sr = spec_re[k, ky]
                si = spec_im[k, ky]
                rows_re[i, ky] += sr * c - si * s
                rows_im[i, ky] += sr * s + si * c
    _columns(rows_re, rows_im, wy, ny, y0, step, half, out)


@numba.njit(cache=True, nogil=True)
def _peak_of(grid, half):
    """Argmax of a small grid and a parabola through it (offsets in grid steps)."""
    u = 2 * half + 1
    bi, bj = 0, 0
    best = grid[0, 0]
    for i in range(u):
        for j in range(u):
            if grid[i, j] > best:
                best = grid[i, j]
                bi, bj = i, j
    dx, dy = 0.0, 0.0
    if 0 < bi < u - 1:
        a, m, b = grid[bi - 1, bj], grid[bi, bj], grid[bi + 1, bj]
        den = a - 2 * m + b
        if den < 0:
            dx = min(0.5, max(-0.5, 0.5 * (a - b) / den))
    if 0 < bj < u - 1:
        a, m, b = grid[bi, bj - 1], grid[bi, bj], grid[bi, bj + 1]
        den = a - 2 * m + b
        if den < 0:
            dy = min(0.5, max(-0.5, 0.5 * (a - b) / den))
    return bi - half + dx, bj - half + dy


@numba.njit(cache=True, nogil=True)
def dft_refine(spec, pos, nx, ny, up):
    """Refine ``pos`` (P, 2) to the maximum of the trigonometric interpolant.

    The starting points come from a parabola through the 3x3 neighbourhood
    (within 0.3 px of the maximum); the interpolant is evaluated on a grid
    of step ``1/up`` over +-0.3 px about them, and a parabola through the
    best grid point and its neighbours gives the final offset.
    """
    nyh = spec.shape[1]
    kx, wy = _frequencies(nx, ny, nyh)
    out = pos.copy()
    spec_re = np.ascontiguousarray(spec.real).astype(np.float64)
    spec_im = np.ascontiguousarray(spec.imag).astype(np.float64)
    half = max(1, math.ceil(0.3 * up))
    grid = np.empty((2 * half + 1, 2 * half + 1))
    for p in range(pos.shape[0]):
        x, y = pos[p, 0], pos[p, 1]
        _local_grid(spec_re, spec_im, kx, wy, nx, ny, x, y, 1.0 / up, half, grid)
        dx, dy = _peak_of(grid, half)
        out[p, 0] = x + dx / up
        out[p, 1] = y + dy / up
    return out


@numba.njit(cache=True, nogil=True, fastmath=True)
def _local_grid_c(spec, kx, wy, nx, ny, x0, y0, step, half, out):  # pragma: no cover
    """:func:`_local_grid` reading a complex half spectrum directly.

    The real and imaginary parts are widened to float64 element by element,
    the same values ``_local_grid`` gets from its float64 copies.
    """
    u = 2 * half + 1
    nyh = spec.shape[1]
    rows_re = np.zeros((u, nyh))
    rows_im = np.zeros((u, nyh))
    sr = np.empty(nyh)
    si = np.empty(nyh)
    cx = np.empty(u)
    sx = np.empty(u)
    for k in range(nx):
        for ky in range(nyh):
            v = spec[k, ky]
            sr[ky] = np.float64(v.real)
            si[ky] = np.float64(v.imag)
        for i in range(u):
            ph = 2.0 * math.pi * kx[k] * (x0 + (i - half) * step) / nx
            cx[i] = math.cos(ph)
            sx[i] = math.sin(ph)
        for i in range(u):
            c = cx[i]
            s = sx[i]
            for ky in range(nyh):
                rows_re[i, ky] += sr[ky] * c - si[ky] * s
                rows_im[i, ky] += sr[ky] * s + si[ky] * c
    _columns(rows_re, rows_im, wy, ny, y0, step, half, out)


@numba.njit(cache=True, nogil=True, parallel=True)
def dft_refine_many(specs, which, pos, nx, ny, up):  # pragma: no cover - compiled
    """:func:`dft_refine` of the points ``pos`` (P, 2) of patterns ``which`` (P,).

    ``specs`` is the block's half spectra (B, Nx, Ny // 2 + 1); the points
    are refined in parallel (``prange``), each exactly as ``dft_refine``
    refines it.
    """
    nyh = specs.shape[2]
    kx, wy = _frequencies(nx, ny, nyh)
    out = pos.copy()
    half = max(1, math.ceil(0.3 * up))
    for p in numba.prange(pos.shape[0]):
        grid = np.empty((2 * half + 1, 2 * half + 1))
        x, y = pos[p, 0], pos[p, 1]
        _local_grid_c(specs[which[p]], kx, wy, nx, ny, x, y, 1.0 / up, half, grid)
        dx, dy = _peak_of(grid, half)
        out[p, 0] = x + dx / up
        out[p, 1] = y + dy / up
    return out
