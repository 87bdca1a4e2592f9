"""Compact per-position pattern features for the ``linkage="mean"`` growth rule."""

from __future__ import annotations

import numpy as np

from ._blur import blur_patterns
from ._linkage_numba import _bin_patterns
from ._validate import block_rows, check_cube, native_dtype, read_rows
from .masking import resolve_q_mask

#: Largest feature length: larger patterns are binned down to at most this.
FEATURE_DIMS = 1024


def feature_bins(detector_shape, dims: int = FEATURE_DIMS) -> tuple[int, int, int]:
    """Bin size ``b`` and bin grid ``(bx, by)`` of :func:`pattern_features`.

    ``b`` is the smallest bin size giving at most ``dims`` bins.

    Examples
    --------
    >>> feature_bins((64, 64)), feature_bins((7, 12), 64)
    ((2, 32, 32), (2, 4, 6))
    """
    qx, qy = (int(s) for s in detector_shape)
    if dims < 1:
        raise ValueError(f"dims must be at least 1; got {dims}")
    b = 1
    while -(-qx // b) * -(-qy // b) > dims:
        b += 1
    return b, -(-qx // b), -(-qy // b)


def feature_slots(detector_shape, q_mask=None, dims: int = FEATURE_DIMS) -> np.ndarray:
    """The bins of :func:`pattern_features` that meet the q-mask (sorted).

    The other bins are 0 for every pattern, so features restricted to these
    columns give the same dot products and norms (sums in bin order) with
    less memory: about a quarter less for an annulus that excludes the
    direct beam and the detector corners.

    Examples
    --------
    >>> feature_slots((4, 4), dims=4).tolist()
    [0, 1, 2, 3]
    >>> mask = np.zeros((4, 4), bool)
    >>> mask[3, 3] = True
    >>> feature_slots((4, 4), mask, dims=4).tolist()
    [3]
    """
    qx, qy = (int(s) for s in detector_shape)
    b, bx, by = feature_bins((qx, qy), dims)
    mask = resolve_q_mask(q_mask, (qx, qy))
    if mask is None:
        return np.arange(bx * by, dtype=np.int64)
    xs, ys = np.nonzero(mask)
    return np.unique((xs // b) * by + ys // b).astype(np.int64)


def pattern_features(cube, q_mask=None, sigma: float = 0.0, dims: int = FEATURE_DIMS):
    """Binned patterns: compact feature vectors for the running cluster mean.

    The patterns are prepared as for
    :func:`~napari_stemcluster.core.similarity.neighbor_similarity` (blur,
    then pixels outside the diffraction-space mask set to 0) and summed over
    ``b x b`` pixel bins, ``b`` the smallest integer giving at most ``dims``
    bins. Sums of features are features of sums, so the running mean of a
    cluster costs O(dims) per member. Binning averages counting noise within
    a bin while Bragg disks (several pixels wide) survive, so cosines of
    binned patterns are somewhat higher than those of the raw ones at low
    dose; :data:`~napari_stemcluster.core.clustering.LINK_FACTOR` was chosen
    with these features.

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy)
    q_mask : ndarray of bool (Qx, Qy) or (inner, outer), optional
    sigma : float
        Gaussian blur in detector pixels.
    dims : int
        Largest feature length.

    Returns
    -------
    ndarray of float32, shape (Rx, Ry, K)
        ``K = ceil(Qx / b) * ceil(Qy / b)`` (:func:`feature_bins`).

    See Also
    --------
    napari_stemcluster.core.similarity.neighbor_similarity : gives the same
        features (``features=``) while it compares the patterns, without
        another pass over the cube.

    Examples
    --------
    >>> cube = np.random.default_rng(0).poisson(5, (3, 4, 64, 64)).astype(np.uint16)
    >>> f = pattern_features(cube)
    >>> f.shape, f.dtype
    ((3, 4, 1024), dtype('float32'))
    >>> bool(np.allclose(f.sum(axis=-1), cube.sum(axis=(-2, -1))))
    True
    """
    check_cube(cube, 4)
    rx, ry, qx, qy = cube.shape
    mask = resolve_q_mask(q_mask, (qx, qy))
    if mask is not None and not mask.any():
        raise ValueError("q_mask selects no detector pixel; nothing to compare")
    b, bx, by = feature_bins((qx, qy), dims)
    xs, ys = np.indices((qx, qy))
    index = ((xs // b) * by + ys // b).astype(np.int64)
    if mask is not None:
        index[~mask] = -1
    index = index.ravel()
    out = np.empty((rx, ry, bx * by), np.float32)
    step = block_rows(cube.shape, max(np.dtype(cube.dtype).itemsize, 4))
    for r0 in range(0, rx, step):
        r1 = min(r0 + step, rx)
        block = read_rows(cube, r0, r1)
        if sigma > 0:
            block = blur_patterns(block, sigma)
        elif native_dtype(block.dtype) not in (np.uint8, np.uint16, np.float32):
            # The kernel adds float32(value): converting first gives the same
            # numbers and keeps it to three compiled versions.
            block = block.astype(np.float32)
        elif block.dtype != native_dtype(block.dtype):
            block = block.astype(native_dtype(block.dtype))  # same values, for the kernel
        flat = np.ascontiguousarray(block).reshape(-1, qx * qy)
        _bin_patterns(flat, index, out[r0:r1].reshape(-1, bx * by))
    return out
