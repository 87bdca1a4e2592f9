"""Diffraction-space and real-space masks."""

from __future__ import annotations

import numbers

import numpy as np

#: Real-space mask methods that threshold the mean-similarity map.
THRESHOLD_METHODS = ("triangle", "otsu")
#: Real-space mask methods that threshold a virtual image of the cube.
IMAGE_METHODS = ("dark_field",)


def annular_mask(
    detector_shape: tuple[int, int],
    inner: float = 0.0,
    outer: float = np.inf,
    center: tuple[float, float] | None = None,
) -> np.ndarray:
    """Boolean annulus ``inner <= r <= outer`` about the pattern centre.

    Parameters
    ----------
    detector_shape : (int, int)
        ``(Qx, Qy)``.
    inner, outer : float
        Radii in detector pixels.
    center : (float, float), optional
        ``(cx, cy)``; default is the geometric centre ``((Qx-1)/2, (Qy-1)/2)``.

    Returns
    -------
    ndarray of bool, shape (Qx, Qy)

    Examples
    --------
    >>> annular_mask((5, 5), 1, 1.5).astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 0, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]])
    """
    if inner < 0 or outer < inner:
        raise ValueError(f"annulus radii must satisfy 0 <= inner <= outer; got ({inner}, {outer})")
    qx, qy = detector_shape
    cx, cy = ((qx - 1) / 2, (qy - 1) / 2) if center is None else center
    x = np.arange(qx)[:, None] - cx
    y = np.arange(qy)[None, :] - cy
    r = np.hypot(x, y)
    return (r >= inner) & (r <= outer)


def resolve_q_mask(q_mask, detector_shape: tuple[int, int]) -> np.ndarray | None:
    """Turn a user's ``q_mask`` (None, bool array or radii) into a bool array."""
    if q_mask is None:
        return None
    if (
        isinstance(q_mask, tuple | list)
        and len(q_mask) == 2
        and all(isinstance(v, numbers.Real) for v in q_mask)
    ):
        return annular_mask(detector_shape, float(q_mask[0]), float(q_mask[1]))
    mask = np.asarray(q_mask)
    if mask.dtype != bool or mask.shape != tuple(detector_shape):
        raise ValueError(
            "q_mask must be a boolean array of the detector shape "
            f"{tuple(detector_shape)} or (inner, outer) radii; got "
            f"{mask.dtype} array of shape {mask.shape}"
        )
    return mask


def real_space_mask(
    mean_similarity: np.ndarray,
    method="triangle",
    *,
    min_size: int = 0,
    hole_size: int = 0,
    signal: np.ndarray | None = None,
) -> np.ndarray:
    """Positions allowed to join clusters, from the mean-similarity map.

    Parameters
    ----------
    mean_similarity : ndarray, shape (Rx, Ry)
        Output of :func:`~napari_stemcluster.core.similarity.mean_similarity`.
    method : {"triangle", "otsu", "dark_field"}, float, ndarray of bool, or None
        ``"triangle"`` or ``"otsu"`` threshold the map automatically (positions
        strictly above the threshold are kept); ``"dark_field"`` thresholds
        ``signal`` with :func:`signal_mask` instead (the map is not used); a
        float is a user threshold; a boolean array of the map's shape is used
        as given; None keeps all.
    min_size : int
        Remove connected (8-connected) mask regions smaller than this.
    hole_size : int
        Fill holes in the mask smaller than this.
    signal : ndarray, shape (Rx, Ry), optional
        Virtual image for ``"dark_field"`` (:func:`dark_field_image`).

    Returns
    -------
    ndarray of bool, shape (Rx, Ry)

    Notes
    -----
    A map with fewer than two distinct values has nothing to separate; the
    automatic methods then keep every position.

    Examples
    --------
    >>> ms = np.array([[0.1, 0.2, 0.9], [0.15, 0.95, 0.92]], np.float32)
    >>> real_space_mask(ms, 0.5)
    array([[False, False,  True],
           [False,  True,  True]])
    """
    ms = np.asarray(mean_similarity)
    if ms.ndim != 2:
        raise ValueError(f"mean_similarity must be 2-D (Rx, Ry); got shape {ms.shape}")
    if method is None:
        mask = np.ones(ms.shape, bool)
    elif isinstance(method, str) and method in IMAGE_METHODS:
        if signal is None or np.shape(signal) != ms.shape:
            raise ValueError(
                f"real_mask={method!r} needs the dark-field image of the scan "
                f"(shape {ms.shape}); got {None if signal is None else np.shape(signal)}"
            )
        mask = signal_mask(signal, method)
    elif isinstance(method, str):
        mask = _auto_threshold(ms, method)
    elif isinstance(method, numbers.Real) and not isinstance(method, bool):
        mask = ms > float(method)
    else:
        mask = np.asarray(method)
        if mask.dtype != bool or mask.shape != ms.shape:
            raise ValueError(
                "real_mask must be 'triangle', 'otsu', a float threshold, None, "
                f"or a boolean array of shape {ms.shape}; got {mask.dtype} "
                f"array of shape {mask.shape}"
            )
        mask = mask.copy()
    return _clean(mask, min_size, hole_size)


def _auto_threshold(ms: np.ndarray, method: str) -> np.ndarray:
    from skimage import filters

    if method not in THRESHOLD_METHODS:
        raise ValueError(
            f"unknown real-space mask method {method!r}; expected one of "
            f"{THRESHOLD_METHODS + IMAGE_METHODS}, a float, a boolean array or None"
        )
    values = ms[np.isfinite(ms)]
    if _fewer_than_two(values):
        return np.ones(ms.shape, bool)
    func = filters.threshold_triangle if method == "triangle" else filters.threshold_otsu
    return ms > func(values)


def _fewer_than_two(values: np.ndarray) -> bool:
    """True when finite ``values`` hold fewer than two distinct numbers (no sort)."""
    return values.size == 0 or bool(values.min() == values.max())


def _clean(mask: np.ndarray, min_size: int, hole_size: int) -> np.ndarray:
    if min_size > 1:
        mask = _drop_small(mask, min_size, np.ones((3, 3), bool))
    if hole_size > 1:
        mask = ~_drop_small(~mask, hole_size, None)
    return mask


def _drop_small(mask: np.ndarray, size: int, structure) -> np.ndarray:
    """Remove connected True regions with fewer than ``size`` pixels."""
    from scipy import ndimage

    lab, _ = ndimage.label(mask, structure=structure)
    counts = np.bincount(lab.ravel())
    keep = counts >= size
    keep[0] = False
    return keep[lab]


#: Background below this fraction of the particles' dark-field signal is
#: taken for vacuum by :func:`signal_mask`.
VACUUM_RATIO = 0.05

#: Methods of :func:`signal_mask`.
SIGNAL_METHODS = IMAGE_METHODS


def direct_beam(mean_pattern: np.ndarray) -> tuple[float, float, float]:
    """Centre and radius of the direct beam in a mean diffraction pattern.

    The centre is the intensity-weighted centroid of the pixels above half
    the maximum of the (lightly blurred) pattern around its brightest pixel;
    the radius is that of a disk of the same area.

    Parameters
    ----------
    mean_pattern : ndarray, shape (Qx, Qy)

    Returns
    -------
    (cx, cy, radius) : floats, detector pixels

    Examples
    --------
    >>> p = annular_mask((32, 32), 0, 3).astype(float) * 10 + 1
    >>> cx, cy, r = direct_beam(p)
    >>> round(cx, 2), round(cy, 2), round(r, 1)
    (15.5, 15.5, 3.2)
    """
    from scipy import ndimage

    p = ndimage.gaussian_filter(np.asarray(mean_pattern, np.float64), 0.5)
    if not np.isfinite(p).all() or p.max() <= p.min():
        qx, qy = p.shape
        return (qx - 1) / 2, (qy - 1) / 2, 0.0
    half = p > p.min() + 0.5 * (p.max() - p.min())
    lab, _ = ndimage.label(half)
    blob = lab == lab.flat[int(np.argmax(p))]
    w = np.where(blob, p, 0.0)
    xs, ys = np.indices(p.shape)
    cx = float((w * xs).sum() / w.sum())
    cy = float((w * ys).sum() / w.sum())
    return cx, cy, float(np.sqrt(blob.sum() / np.pi))


def dark_field_image(cube, beam: tuple[float, float, float] | None = None) -> np.ndarray:
    """Counts of every pattern outside the direct beam (a virtual dark field).

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy)
    beam : (cx, cy, radius), optional
        Direct beam; default from :func:`direct_beam` of the mean pattern of
        up to 1024 evenly spread positions. Pixels within ``1.5 * radius + 1``
        of the centre are left out (:func:`dark_field_keep`).

    Returns
    -------
    ndarray of float32, shape (Rx, Ry)
        The float64 sum of each pattern's kept pixels, rounded to float32.

    See Also
    --------
    napari_stemcluster.core.similarity.neighbor_similarity : gives the same
        image (``dark_field=``) while it compares the patterns, without
        another pass over the cube.

    Examples
    --------
    >>> cube = np.zeros((1, 2, 16, 16), np.uint16)
    >>> cube[..., 7:9, 7:9] = 50  # direct beam
    >>> cube[0, 1, 2, 2] = 3      # scattered
    >>> dark_field_image(cube)
    array([[0., 3.]], dtype=float32)
    """
    from ._linkage_numba import _masked_sums
    from ._validate import block_rows, check_cube, kernel_dtype, native_dtype

    check_cube(cube, 4)
    rx, ry, qx, qy = cube.shape
    if beam is None:
        beam = direct_beam(_sample_mean(cube))
    runs = mask_runs(dark_field_keep((qx, qy), beam))
    kind = native_dtype(cube.dtype)
    # The kernel's few dtypes (the same sums, see kernel_dtype); the exact
    # integer sums are chosen by the cube's own dtype.
    exact = dark_exact(kind, (qx, qy))
    kind = kernel_dtype(kind)
    out = np.empty((rx, ry), np.float32)
    step = block_rows(cube.shape, max(np.dtype(cube.dtype).itemsize, kind.itemsize))
    for r0 in range(0, rx, step):
        r1 = min(r0 + step, rx)
        block = cube[r0:r1]
        if hasattr(block, "compute"):
            block = block.compute()
        # A numpy view is summed where it lies (a crop of a larger block
        # needs no copy); only other byte orders and dtypes are converted.
        block = np.asarray(block)
        if block.dtype != kind or block.strides[-1] != block.itemsize:
            block = np.ascontiguousarray(block, dtype=kind)
        _masked_sums(block, runs, exact, out[r0:r1])
    return out


def dark_field_keep(detector_shape, beam: tuple[float, float, float]) -> np.ndarray:
    """Pixels :func:`dark_field_image` sums: those outside ``1.5 * radius + 1``.

    Examples
    --------
    >>> int(dark_field_keep((8, 8), (3.5, 3.5, 1.0)).sum())  # 16 pixels within 2.5
    48
    """
    cx, cy, r = beam
    return ~annular_mask(tuple(detector_shape), 0.0, 1.5 * r + 1.0, center=(cx, cy))


def mask_runs(mask: np.ndarray) -> np.ndarray:
    """The True pixels of a 2-D mask as row segments ``(row, start, stop)``.

    In raster order, so that sums over them add the pixels in the same order
    as a loop over the mask.

    Examples
    --------
    >>> mask_runs(np.array([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]], bool)).tolist()
    [[0, 0, 2], [0, 3, 4], [2, 1, 3]]
    """
    mask = np.asarray(mask, bool)
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, stops = np.nonzero(edges == -1)
    return np.stack([rows, starts, stops], axis=1).astype(np.int64).reshape(-1, 3)


def dark_exact(dtype, detector_shape) -> bool:
    """True when an integer sum of a pattern equals its float64 sum in raster order.

    Integers of up to 32 bits, on detectors of fewer than 2**21 pixels: every
    partial sum is then an integer below 2**53, exact in float64.

    Examples
    --------
    >>> dark_exact(np.uint16, (256, 256)), dark_exact(np.float32, (256, 256))
    (True, False)
    """
    dtype = np.dtype(dtype)
    pixels = int(detector_shape[0]) * int(detector_shape[1])
    return dtype.kind in "ui" and dtype.itemsize <= 4 and pixels < 2**21


def _sample_mean(cube) -> np.ndarray:
    rx, ry = cube.shape[:2]
    stride = max(1, int(np.sqrt(rx * ry / 1024)))
    dtype = np.dtype(getattr(cube, "dtype", np.float64))
    # Integers of up to 32 bits are summed as int64 without a float64 copy:
    # exact, as the float64 sums are (every partial sum is an integer below
    # 2**53 for the at most ~1024 patterns sampled), so the same numbers.
    exact = dtype.kind in "iu" and dtype.itemsize <= 4
    # A row of at most 65537 unsigned 8- or 16-bit patterns sums in uint32
    # without overflow (half the bytes of int64 to add: 1.5x faster).
    narrow = dtype.kind == "u" and dtype.itemsize <= 2 and -(-ry // stride) <= 65537
    if (
        isinstance(cube, np.ndarray)
        and cube.dtype in (np.dtype(np.uint8), np.dtype(np.uint16))
        and cube.flags.c_contiguous
    ):
        # An in-memory cube: the sampled patterns added in one compiled call,
        # in exact integer sums (the same numbers).
        from ._linkage_numba import _sampled_sums

        n = -(-rx // stride) * -(-ry // stride)
        # uint32 parts of at most 65,537 patterns each cannot overflow
        tasks = max(1, -(-n // 65537))
        parts = np.zeros((tasks, cube[0, 0].size), np.uint32)
        _sampled_sums(cube.reshape(rx, ry, -1), stride, parts)
        total = parts.sum(axis=0, dtype=np.int64).reshape(cube.shape[-2:])
        return total.astype(np.float64) / n
    total = np.zeros(cube.shape[-2:], np.int64 if exact else np.float64)
    n = 0
    for x in range(0, rx, stride):
        # slices only: some lazy array-likes support nothing else
        if exact:
            row = np.asarray(cube[x : x + 1, ::stride])
            if narrow:
                total += np.add.reduce(row[0], axis=0, dtype=np.uint32)
            else:
                total += row.sum(axis=(0, 1), dtype=np.int64)
        else:
            row = np.asarray(cube[x : x + 1, ::stride], dtype=np.float64)
            total += row.sum(axis=(0, 1))
        n += row.shape[0] * row.shape[1]
    return total.astype(np.float64) / max(n, 1)


def signal_mask(image: np.ndarray, method: str = "dark_field") -> np.ndarray:
    """Positions with scattering signal above the background's, from a virtual image.

    Otsu's threshold of the logarithm of the image (plus one): liquid and
    particles differ by factors rather than by offsets, and the logarithmic
    threshold keeps the thin rims of particles. When the background this
    finds holds less than :data:`VACUUM_RATIO` of the particles' median
    signal (vacuum), Otsu's threshold of the image itself is used instead,
    which stops about halfway up each particle edge rather than in the faint
    tail where the probe is mostly in vacuum. An image with fewer than two
    distinct values keeps every position.

    Parameters
    ----------
    image : ndarray, shape (Rx, Ry)
        E.g. :func:`dark_field_image`.
    method : {"dark_field"}
        The kind of image (recorded in the parameters).

    Returns
    -------
    ndarray of bool, shape (Rx, Ry)

    Examples
    --------
    >>> signal_mask(np.array([[0, 1, 2, 900], [1000, 1100, 0, 1]]))
    array([[False, False, False,  True],
           [ True,  True, False, False]])
    """
    from skimage import filters

    if method not in SIGNAL_METHODS:
        raise ValueError(f"signal_mask must be one of {SIGNAL_METHODS} or None; got {method!r}")
    lin = np.clip(np.asarray(image, np.float64), 0, None)
    img = np.log1p(lin)
    values = img[np.isfinite(img)]
    if _fewer_than_two(values):
        return np.ones(img.shape, bool)
    mask = img > filters.threshold_otsu(values)
    low, high = lin[~mask], lin[mask]
    if low.size and high.size and np.median(low) < VACUUM_RATIO * np.median(high):
        # Vacuum: the background is near 0 and on a log scale the faint tail
        # of every particle edge (probe mostly in vacuum) looks like signal;
        # the linear threshold cuts about halfway up the edge instead.
        mask = lin > filters.threshold_otsu(lin[np.isfinite(lin)])
    return mask
