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
from ._blur import gaussian_kernel1d, padded_index
from ._validate import BLOCK_BYTES, check_cube, check_finite_values, native_dtype, read_rows

__all__ = ["correlative_prefilter", "prefilter_footprint", "prefilter_weight"]

#: Cache budget of the raw patterns one averaging task works on at a time.
STRIP_BYTES = 2 << 20

#: ``q_step`` applies only when both sides of the weight's box hold at least
#: this many samples; smaller detectors are correlated on every pixel.
MIN_SAMPLES = 8


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
    q_step: int = 2,
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
    q_step : int
        Blur and correlate on every ``q_step``-th detector pixel in each
        direction (``1``: every pixel, the exact definition). The sums of
        the correlation become sums over the samples with the weights of
        linear interpolation (:func:`sample_weights`). The default 2 is 1.4-2x
        as fast at 64x64 and changes ``R`` by about 0.002-0.009 RMS on
        realistic scans (see the README). Used only when both sides of the
        weight's box hold at least 8 samples.

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
        q_step=q_step,
    )


def _prefilter(
    cube,
    sigma,
    radius,
    corr_range,
    edge,
    center,
    out,
    progress,
    block=None,
    weights_out=None,
    q_step=1,
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
    q_step = _check_step(q_step)
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
    union = _pair_union(offsets)
    # Half-width of the footprint in each of its rows (for running disk sums).
    half = np.zeros(2 * int(offsets[:, 0].max()) + 1, np.int64)
    np.maximum.at(half, offsets[:, 0] - offsets[:, 0].min(), offsets[:, 1])

    direct = out is None
    if out is None:
        out = np.empty(cube.shape, np.float32)
    else:
        direct = _check_out(out, cube.shape)

    # The correlation only looks at the box where the weight is nonzero.
    w2 = w.reshape(qx, qy)
    rows_in = np.flatnonzero(w2.any(axis=1))
    cols_in = np.flatnonzero(w2.any(axis=0))
    box = np.array([rows_in[0], rows_in[-1] + 1, cols_in[0], cols_in[-1] + 1], np.int64)
    w_box = np.ascontiguousarray(w2[box[0] : box[1], box[2] : box[3]]).ravel()
    wsum = float(w_box.sum(dtype=np.float64))
    if min(box[1] - box[0], box[3] - box[2]) < MIN_SAMPLES * q_step:
        q_step = 1
    if q_step > 1:
        wm, wv = sample_weights(w2[box[0] : box[1], box[2] : box[3]], q_step)
        wmsum = float(wm.sum(dtype=np.float64))
        n_vec = wm.size
    else:
        n_vec = w_box.size
    ones = np.ones(w_box.size, np.float32)
    k = gaussian_kernel1d(sigma)
    idx_x = padded_index(qx, (len(k) - 1) // 2)

    dtype = native_dtype(cube.dtype)
    scaled = dtype.kind == "f" or dtype.itemsize > 4
    in_itemsize = dtype.itemsize
    dtype = ring_dtype(dtype)
    # An in-memory cube in a dtype the kernels read is its own ring buffer of
    # raw rows (capacity nx): nothing is copied.
    in_place = isinstance(cube, np.ndarray) and cube.dtype == dtype and cube.flags.c_contiguous
    # Working memory is kept to a few percent of a large cube (at least one
    # row per block). Vectors are needed for few rows at a time (they are
    # large); the averaging works on blocks of ``block`` rows, as many as
    # the raw-row ring (unless the cube is read in place), the output block
    # (unless written in place) and the small weight ring allow.
    # Every parallel call ends in a wait for the slowest thread (long on a
    # busy machine), so vectors are made several rows per call when the
    # budget allows: up to 6 % of the cube (at least 16 MiB) for them, 2.5 %
    # for the rest.
    cube_bytes = nx * ny * q * in_itemsize
    budget = max(1, min(BLOCK_BYTES, cube_bytes // 40))
    vec_row = ny * n_vec * 4
    vec_budget = min(BLOCK_BYTES, max(cube_bytes * 6 // 100, 16 * 2**20))
    vec_block = max(1, min(nx, vec_budget // vec_row - radius))
    if block is None:
        row_cost = ny * (len(fwd) + len(offsets)) * 4  # forward weights and wts
        row_cost += 0 if in_place else ny * q * dtype.itemsize
        row_cost += 0 if direct else ny * q * 4
        block = max(1, budget // max(row_cost, 1) - 2 * radius)
    block = max(1, min(int(block), nx))
    vec_block = min(vec_block, block)

    # Ring buffers (row r in slot r % capacity): raw rows r0-radius ..
    # r1+radius of the averaging block, vectors of vec_block + radius rows,
    # forward weights r0-radius .. r1.
    raw_cap = nx if in_place else min(nx, block + 2 * radius)
    vec_cap = min(nx, vec_block + radius)
    rh_cap = min(nx, block + radius)
    raw = cube.reshape(nx, ny, q) if in_place else np.empty((raw_cap, ny, q), dtype)
    vec = np.empty((vec_cap, ny, n_vec), np.float32)
    rh = np.zeros((rh_cap, ny, len(fwd)), np.float32)
    bad = np.zeros((nx, ny), np.float64)
    wts = np.empty((block, ny, len(offsets)), np.float32)
    buf = None if direct else np.empty((block, ny, q), np.float32)
    strip = _strip(ny, len(offsets), radius, q * dtype.itemsize)
    vec_strip = _strip(ny, len(fwd), radius, n_vec * 4, rows=radius + 1)

    read = 0  # raw rows in the ring
    done = 0  # rows turned into vectors
    fwd_done = 0  # rows whose forward weights are known
    for r0 in range(0, nx, block):
        r1 = min(nx, r0 + block)
        hi = min(nx, r1 + radius)
        if read < hi and not in_place:
            rows = read_rows(cube, read, hi).reshape(hi - read, ny, q)
            _check_float32_range(rows, read)
            for r in range(read, hi):
                raw[r % raw_cap] = rows[r - read]
            del rows
        elif read < hi and dtype.itemsize == 8 and dtype.kind == "f":
            _check_float32_range(cube[read:hi], read)
        read = max(read, hi)
        while fwd_done < r1:
            s1 = min(r1, fwd_done + vec_block)
            need = min(nx, s1 + radius)
            if done < need and q_step > 1:
                _k.normalised_vectors_sub(
                    raw,
                    raw_cap,
                    np.arange(done, need, dtype=np.int64),
                    qx,
                    qy,
                    scaled,
                    k,
                    idx_x,
                    box,
                    q_step,
                    wm,
                    wmsum,
                    wv,
                    vec,
                    vec_cap,
                    bad,
                )
            elif done < need:
                _k.normalised_vectors(
                    raw,
                    raw_cap,
                    np.arange(done, need, dtype=np.int64),
                    qx,
                    qy,
                    scaled,
                    k,
                    idx_x,
                    box,
                    ones,
                    w_box,
                    wsum,
                    vec,
                    vec_cap,
                    bad,
                )
            if done < need:
                check_finite_values(bad[done:need], "correlative_prefilter", offset=(done, 0))
                done = need
            _k.forward_weights(
                vec, vec_cap, fwd_done, s1, nx, fwd, rmin, rmax, rh, rh_cap, vec_strip
            )
            fwd_done = s1
        dst = out[r0:r1].reshape(r1 - r0, ny, q) if direct else buf[: r1 - r0]
        if dtype == np.uint16:
            _k.weighted_average_int(
                raw, raw_cap, rh, rh_cap, r0, r1, nx, offsets, is_fwd, pair, union, half,
                strip, dst, wts[: r1 - r0],
            )  # fmt: skip
        else:
            _k.weighted_average(
                raw, raw_cap, rh, rh_cap, r0, r1, nx, offsets, is_fwd, pair, union, strip,
                dst, wts[: r1 - r0],
            )  # fmt: skip
        if not direct:
            out[r0:r1] = dst.reshape(r1 - r0, ny, qx, qy)
        if weights_out is not None:
            weights_out[r0:r1] = wts[: r1 - r0]
        if progress is not None:
            progress(r1, nx)
    return out


def ring_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the kernels read a (native) input dtype as.

    The kernels are compiled for three dtypes only: uint16 (the common
    detector dtype, averaged with exact integer sums; uint8 is widened to
    it), float32 (every other integer dtype of at most 4 bytes, float16 and
    float32: the kernels convert each value to float32 anyway, so converting
    a block first gives the same bits) and float64 (float64 and 64-bit
    integers: the correlation scales them in float64 before rounding to
    float32, which keeps values from 1e-300 to 1e300 and integers up to
    2**64 in range; the averages of 64-bit integers beyond 2**53 may differ
    from a direct conversion by one float32 rounding).

    Examples
    --------
    >>> [str(ring_dtype(np.dtype(t))) for t in ("u1", "i2", "u4", "i8", "f4")]
    ['uint16', 'float32', 'float32', 'float64', 'float32']
    """
    if dtype in (np.uint8, np.uint16):
        return np.dtype(np.uint16)
    if dtype.itemsize > 4:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _interpolation(n: int, step: int) -> np.ndarray:
    """``(n, m)`` weights of linear interpolation from samples ``0, step, ...``.

    Row ``i`` interpolates pixel ``i`` of a length-``n`` line from its two
    nearest samples; pixels past the last sample take its value. Every row
    sums to 1.
    """
    m = -(-n // step)
    a = np.zeros((n, m), np.float64)
    for i in range(n):
        j, f = divmod(i, step)
        if j >= m - 1:
            a[i, m - 1] = 1.0
        else:
            a[i, j] = 1.0 - f / step
            a[i, j + 1] = f / step
    return a


def sample_weights(w_box: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the subsampled correlation grid (``q_step > 1``).

    The correlation sums ``sum(f w)`` (weighted mean) and ``sum(f g w**2)``
    (inner products) over the box are replaced by sums over the samples
    ``(step a, step b)`` of the linear interpolant of ``f`` and ``f g``:
    sample weights ``A.T @ w @ B`` and ``A.T @ w**2 @ B`` with ``A``, ``B``
    the interpolation matrices of the box's rows and columns. Both keep the
    totals of ``w`` and ``w**2`` exactly, so the quadrature is exact for
    patterns linear between samples.

    Parameters
    ----------
    w_box : ndarray, shape (bh, bw)
        The weight of :func:`prefilter_weight` on its nonzero box.
    step : int
        Sample spacing in pixels.

    Returns
    -------
    wm, wv : ndarray of float32, raveled ``(ceil(bh / step), ceil(bw / step))``
        Weights of the mean, and the vector weight ``sqrt(A.T @ w**2 @ B)``.

    Examples
    --------
    >>> wm, wv = sample_weights(np.ones((4, 3), np.float32), 2)
    >>> wm.reshape(2, 2)
    array([[2.25, 2.25],
           [3.75, 3.75]], dtype=float32)
    >>> float(wm.sum()), float((wv**2).sum())
    (12.0, 12.0)
    """
    bh, bw = w_box.shape
    ax = _interpolation(bh, step)
    ay = _interpolation(bw, step)
    w64 = w_box.astype(np.float64)
    wm = ax.T @ w64 @ ay
    wv = np.sqrt(ax.T @ (w64 * w64) @ ay)
    return wm.astype(np.float32).ravel(), wv.astype(np.float32).ravel()


def _check_step(q_step) -> int:
    step = _check_int(q_step, "q_step")
    if step < 1:
        raise ValueError(f"q_step must be an integer >= 1; got {step}")
    return step


def _pair_union(offsets: np.ndarray) -> np.ndarray:
    """Offsets of the footprints of ``(r, c)`` and ``(r, c + 1)`` from ``(r, c)``.

    Rows ``(dr, dc, j0, j1)``: ``j0`` is the footprint index of the offset
    for ``(r, c)``, ``j1`` that of ``(dr, dc - 1)`` for ``(r, c + 1)``, -1
    where the offset is outside that footprint. Sorted by ``(dr, dc)``.
    """
    index = {tuple(d): j for j, d in enumerate(offsets.tolist())}
    both = sorted(set(index) | {(dr, dc + 1) for dr, dc in index})
    return np.array(
        [(dr, dc, index.get((dr, dc), -1), index.get((dr, dc - 1), -1)) for dr, dc in both],
        dtype=np.int64,
    ).reshape(-1, 4)


def _strip(ny: int, n_offsets: int, radius: int, pattern_bytes: int, rows=None) -> int:
    """Scan columns per task: the ``rows`` (default ``2 radius + 1``) rows of a
    strip's neighbourhood fit in L2."""
    import numba

    rows = 2 * radius + 1 if rows is None else rows
    threads = numba.get_num_threads()
    fit = STRIP_BYTES // max(1, rows * pattern_bytes) - 2 * radius
    per_thread = max(1, -(-ny // (2 * threads)))
    strip = int(max(1, min(max(fit, 8), per_thread)))
    strip += strip % 2  # even: column pairs (2k, 2k + 1) never split
    # Each thread takes the same number of strips (13 strips of 20 columns
    # left one thread 24 columns more work at 256 columns): narrower strips,
    # down to half the width, when that gives a multiple of the threads.
    for s in range(strip, max(1, strip // 2) - 1, -2):
        if -(-ny // s) % threads == 0:
            return s
    return strip


def _check_float32_range(rows: np.ndarray, first_row: int) -> None:
    """Raise if float64 values cannot be averaged into the float32 output."""
    if rows.dtype.kind != "f" or rows.dtype.itemsize <= 4:
        return
    top = np.abs(rows).max(axis=tuple(range(2, rows.ndim)))
    over = np.isfinite(top) & (top > np.finfo(np.float32).max)  # NaN/inf: reported later
    if np.any(over):
        r, c = np.argwhere(over)[0]
        raise ValueError(
            f"correlative_prefilter: the pattern at scan index ({first_row + int(r)}, "
            f"{int(c)}) holds values up to {float(top[r, c]):.3g}, beyond the float32 "
            "range of the filtered cube; rescale the data first"
        )


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
