"""Correlative prefilter: average each pattern with its correlated neighbours.

Every diffraction pattern is compared with the patterns of nearby scan
positions; neighbours whose (blurred, radially weighted) patterns correlate
strongly are averaged into it, uncorrelated ones are left out. Noise drops
inside grains while boundaries between grains stay sharp.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import numpy as np

from . import _prefilter_numba as _k
from ._blur import gaussian_kernel1d
from ._validate import BLOCK_BYTES, block_rows, check_cube, check_finite_values, read_rows

__all__ = ["correlative_prefilter", "prefilter_footprint", "prefilter_weight"]


def prefilter_footprint(radius: int) -> np.ndarray:
    """Scan offsets compared by the prefilter: a disk of the given radius.

    Parameters
    ----------
    radius : int
        Disk radius in scan pixels, ``>= 0``. An offset ``(dx, dy)`` belongs to
        the disk when ``dx**2 + dy**2 <= (radius + 0.5)**2``.

    Returns
    -------
    ndarray of int64, shape (K, 2)
        Offsets ``(dx, dy)`` sorted by ``dx`` then ``dy``, the centre
        ``(0, 0)`` included (at index ``K // 2``).

    Examples
    --------
    >>> prefilter_footprint(1)
    array([[-1, -1],
           [-1,  0],
           [-1,  1],
           [ 0, -1],
           [ 0,  0],
           [ 0,  1],
           [ 1, -1],
           [ 1,  0],
           [ 1,  1]])
    >>> len(prefilter_footprint(4))
    69
    """
    radius = _check_int(radius, "radius")
    d = np.arange(-radius, radius + 1, dtype=np.int64)
    dx, dy = np.meshgrid(d, d, indexing="ij")
    inside = dx**2 + dy**2 <= (radius + 0.5) ** 2
    return np.stack([dx[inside], dy[inside]], axis=1)


def prefilter_weight(detector_shape, edge: int | None = None, center=None) -> np.ndarray:
    """Radial detector weight used when correlating patterns.

    ``w(q) = r(q)**2 / (Qx * Qy)`` with ``r`` the distance from the pattern
    centre, set to zero within ``edge`` pixels of the detector border. It
    suppresses the bright, uninformative central beam and the detector edge.

    Parameters
    ----------
    detector_shape : tuple of int
        ``(Qx, Qy)``.
    edge : int, optional
        Border width set to zero, in detector pixels. Default: ``min(Qx, Qy) /
        16`` rounded to the nearest integer (12 for a 192-pixel detector);
        ``0`` keeps the whole detector.
    center : tuple of float, optional
        Pattern centre ``(cx, cy)`` in pixel coordinates. Default: the mean
        pixel coordinate ``((Qx - 1) / 2, (Qy - 1) / 2)``.

    Returns
    -------
    ndarray of float32, shape (Qx, Qy)

    Raises
    ------
    ValueError
        If the shape, ``edge`` or ``center`` is invalid, or if no pixel keeps
        a nonzero weight.

    Examples
    --------
    >>> w = prefilter_weight((5, 5), edge=1)
    >>> (w * 25).round(2)
    array([[0., 0., 0., 0., 0.],
           [0., 2., 1., 2., 0.],
           [0., 1., 0., 1., 0.],
           [0., 2., 1., 2., 0.],
           [0., 0., 0., 0., 0.]], dtype=float32)
    """
    try:
        qx, qy = (operator.index(s) for s in detector_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"detector_shape must be two positive integers (Qx, Qy); got {detector_shape!r}"
        ) from None
    if qx < 1 or qy < 1:
        raise ValueError(f"detector_shape must be two positive integers (Qx, Qy); got {(qx, qy)}")
    # Default: a sixteenth of the detector, halves rounded up.
    edge = math.floor(min(qx, qy) / 16 + 0.5) if edge is None else _check_int(edge, "edge")
    if 2 * edge >= min(qx, qy):
        raise ValueError(
            f"edge={edge} is too large for a {qx}x{qy} detector: zeroing "
            f"{edge} pixels at each border leaves no pixel (need 2 * edge < "
            f"{min(qx, qy)})"
        )
    if center is None:
        cx, cy = (qx - 1) / 2, (qy - 1) / 2
    else:
        try:
            cx, cy = (float(v) for v in center)
        except (TypeError, ValueError):
            raise ValueError(f"center must be two numbers (cx, cy); got {center!r}") from None
        if not (math.isfinite(cx) and math.isfinite(cy)):
            raise ValueError(f"center must be finite; got {(cx, cy)}")
    x = np.arange(qx, dtype=np.float64)[:, None] - cx
    y = np.arange(qy, dtype=np.float64)[None, :] - cy
    w = (x**2 + y**2) / (qx * qy)
    if edge:
        w[:edge] = 0
        w[-edge:] = 0
        w[:, :edge] = 0
        w[:, -edge:] = 0
    w = w.astype(np.float32)
    if not np.any(w > 0):
        raise ValueError(
            f"the weight is zero on every pixel of the {qx}x{qy} detector "
            f"(edge={edge}, center={(cx, cy)}); patterns cannot be correlated"
        )
    return w


def correlative_prefilter(
    cube,
    sigma: float = 3.0,
    radius: int = 4,
    corr_range: tuple[float, float] = (0.85, 0.95),
    edge: int | None = None,
    center=None,
    out=None,
    progress: Callable[[int, int], None] | None = None,
    *,
    _block_rows: int | None = None,
) -> np.ndarray:
    """Average every pattern with the neighbours it correlates with.

    For each scan position ``p`` the patterns within ``radius`` are compared
    with ``p`` by a weighted correlation ``R`` of their blurred patterns, and
    the raw patterns are averaged with weights ``R_hat = clip((R - Rmin) /
    (Rmax - Rmin), 0, 1)``::

        I'(p) = (I(p) + sum_i R_hat_i I(q_i)) / (1 + sum_i R_hat_i)

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy)
        4D-STEM data of any integer or float dtype: numpy, memmap, h5py
        dataset or dask array. It is read in blocks of scan rows, so on-disk
        cubes are never loaded whole.
    sigma : float
        Gaussian blur (detector pixels) applied before correlating; ``0``
        disables it. The averaged patterns are never blurred.
    radius : int
        Neighbourhood radius in scan pixels, see :func:`prefilter_footprint`
        (69 positions for ``radius=4``); ``0`` returns the cube as float32.
    corr_range : (float, float)
        ``(Rmin, Rmax)``: correlations up to ``Rmin`` get weight 0, from
        ``Rmax`` on weight 1, linear in between.
    edge, center
        Detector border width and pattern centre of the correlation weight,
        see :func:`prefilter_weight`.
    out : array_like, optional
        float32 array of the cube's shape to write into (numpy, memmap or
        h5py dataset); written block by block and returned.
    progress : callable, optional
        ``progress(done, total)`` is called with the number of scan rows
        finished after each block; raise from it to cancel.

    Returns
    -------
    ndarray or ``out``
        float32 filtered cube, shape ``(Rx, Ry, Qx, Qy)``.

    Raises
    ------
    ValueError
        For invalid parameters, or if the cube holds NaN or inf.

    Notes
    -----
    Before correlating, each blurred pattern ``I`` is multiplied by the
    weight ``w`` of :func:`prefilter_weight` after subtracting its weighted
    mean, ``v = (I - sum(I w) / sum(w)) w``, and scaled to unit L2 norm, so
    ``R = v_p . v_q``. A pattern whose ``v`` is identically zero (e.g. a
    constant or empty pattern) has ``R = 0`` with every neighbour. Each
    unordered pair is correlated once. Neighbours outside the scan are
    absent, so border positions average over fewer patterns.

    The result does not depend on how the scan is split into blocks nor on
    the number of threads.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> grain = rng.uniform(0, 50, (16, 16))
    >>> cube = rng.poisson(np.broadcast_to(grain, (6, 6, 16, 16)))
    >>> filtered = correlative_prefilter(cube, sigma=1, radius=2,
    ...                                  corr_range=(0.0, 0.5))
    >>> filtered.shape, filtered.dtype
    ((6, 6, 16, 16), dtype('float32'))
    >>> bool(np.std(filtered - grain) < 0.5 * np.std(cube - grain))
    True
    """
    return _prefilter(
        cube,
        sigma,
        radius,
        corr_range,
        edge,
        center,
        out,
        progress,
        block=_block_rows,
    )


def _prefilter(
    cube, sigma, radius, corr_range, edge, center, out, progress, block=None, weights_out=None
):
    """Implementation of :func:`correlative_prefilter`.

    ``weights_out``, a float32 ``(Rx, Ry, K)`` array, receives the weight of
    every footprint offset (1 for the centre, 0 outside the scan).
    """
    check_cube(cube, 4, "cube")
    nx, ny, qx, qy = (int(s) for s in cube.shape)
    q = qx * qy
    sigma = _check_sigma(sigma)
    offsets = prefilter_footprint(radius)
    radius = int(offsets[:, 0].max())
    rmin, rmax = _check_range(corr_range)
    w = prefilter_weight((qx, qy), edge=edge, center=center).reshape(q)
    if progress is not None and not callable(progress):
        raise TypeError(
            f"progress must be callable as progress(done, total); got {type(progress).__name__}"
        )

    # Forward half of the footprint: every unordered pair {p, p + d} is the
    # forward pair of exactly one end. For each full-footprint offset record
    # whether it is forward and which forward offset (d or -d) it pairs with.
    is_fwd = (offsets[:, 0] > 0) | ((offsets[:, 0] == 0) & (offsets[:, 1] > 0))
    fwd = np.ascontiguousarray(offsets[is_fwd])
    fwd_index = {tuple(d): i for i, d in enumerate(fwd.tolist())}
    pair = np.array(
        [fwd_index.get((dx, dy), fwd_index.get((-dx, -dy), -1)) for dx, dy in offsets.tolist()],
        dtype=np.int64,
    )

    direct = out is None
    if out is None:
        out = np.empty(cube.shape, np.float32)
    else:
        direct = _check_out(out, cube.shape)

    if block is None:
        block = block_rows(cube.shape, 4, BLOCK_BYTES // 2)
    block = max(1, min(int(block), nx))

    # Ring buffers (row r in slot r % capacity), sized for one block of output
    # rows plus the halo each stage needs: raw rows r0-radius .. r1+radius,
    # vectors r0 .. r1+radius, forward weights r0-radius .. r1.
    dtype = np.dtype(cube.dtype)
    if dtype == np.float16:  # no float16 arithmetic in the kernels
        dtype = np.dtype(np.float32)
    elif not dtype.isnative:
        dtype = dtype.newbyteorder("=")
    raw_cap = min(nx, block + 2 * radius)
    vec_cap = min(nx, block + radius)
    raw = np.empty((raw_cap, ny, q), dtype)
    vec = np.empty((vec_cap, ny, q), np.float32)
    rh = np.zeros((vec_cap, ny, len(fwd)), np.float32)
    sums = np.zeros((nx, ny), np.float64)
    wts = np.empty((block, ny, len(offsets)), np.float32)
    buf = None if direct else np.empty((block, ny, q), np.float32)
    k = gaussian_kernel1d(sigma)

    done = 0  # rows read and turned into vectors
    for r0 in range(0, nx, block):
        r1 = min(nx, r0 + block)
        hi = min(nx, r1 + radius)
        if done < hi:
            rows = read_rows(cube, done, hi).reshape(hi - done, ny, q)
            for r in range(done, hi):
                raw[r % raw_cap] = rows[r - done]
            del rows
            _k.normalised_vectors(
                raw,
                raw_cap,
                np.arange(done, hi, dtype=np.int64),
                qx,
                qy,
                k,
                w,
                vec,
                vec_cap,
                sums,
            )
            if not np.all(np.isfinite(sums[done:hi])):
                check_finite_values(sums, "correlative_prefilter")
            done = hi
        _k.forward_weights(vec, vec_cap, r0, r1, nx, fwd, rmin, rmax, rh, vec_cap)
        dst = out[r0:r1].reshape(r1 - r0, ny, q) if direct else buf[: r1 - r0]
        _k.weighted_average(
            raw,
            raw_cap,
            rh,
            vec_cap,
            r0,
            r1,
            nx,
            offsets,
            is_fwd,
            pair,
            dst,
            wts[: r1 - r0],
        )
        if not direct:
            out[r0:r1] = dst.reshape(r1 - r0, ny, qx, qy)
        if weights_out is not None:
            weights_out[r0:r1] = wts[: r1 - r0]
        if progress is not None:
            progress(r1, nx)
    return out


def _check_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a non-negative integer; got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a non-negative integer; got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {value}")
    return value


def _check_sigma(sigma) -> float:
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"sigma must be a number >= 0; got {sigma!r}") from None
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0; got {sigma}")
    return sigma


def _check_range(corr_range) -> tuple[float, float]:
    try:
        rmin, rmax = (float(v) for v in corr_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"corr_range must be two numbers (Rmin, Rmax); got {corr_range!r}"
        ) from None
    if not (math.isfinite(rmin) and math.isfinite(rmax)):
        raise ValueError(f"corr_range must be finite; got {(rmin, rmax)}")
    if rmax <= rmin:
        raise ValueError(f"corr_range (Rmin, Rmax) needs Rmax > Rmin; got {(rmin, rmax)}")
    return rmin, rmax


def _check_out(out, shape) -> bool:
    """Validate ``out``; True when the kernels can write into it directly."""
    oshape = getattr(out, "shape", None)
    odtype = getattr(out, "dtype", None)
    if oshape is None or odtype is None or not hasattr(out, "__setitem__"):
        raise TypeError(
            "out must be an array supporting slice assignment (numpy, memmap, "
            f"h5py dataset); got {type(out).__name__}"
        )
    if tuple(oshape) != tuple(shape):
        raise ValueError(f"out must have the cube's shape {tuple(shape)}; got {tuple(oshape)}")
    if np.dtype(odtype) != np.float32:
        raise ValueError(f"out must be float32; got dtype {np.dtype(odtype)}")
    if isinstance(out, np.ndarray):
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        return bool(out.flags.c_contiguous and out.dtype.isnative)
    return False
