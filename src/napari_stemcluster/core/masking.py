"""Diffraction-space and real-space masks."""

from __future__ import annotations

import numbers

import numpy as np

#: Real-space mask methods that threshold the mean-similarity map.
THRESHOLD_METHODS = ("triangle", "otsu")


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
) -> np.ndarray:
    """Positions allowed to join clusters, from the mean-similarity map.

    Parameters
    ----------
    mean_similarity : ndarray, shape (Rx, Ry)
        Output of :func:`~napari_stemcluster.core.similarity.mean_similarity`.
    method : {"triangle", "otsu"}, float, ndarray of bool, or None
        ``"triangle"`` or ``"otsu"`` threshold the map automatically (positions
        strictly above the threshold are kept); a float is a user threshold; a
        boolean array of the map's shape is used as given; None keeps all.
    min_size : int
        Remove connected (8-connected) mask regions smaller than this.
    hole_size : int
        Fill holes in the mask smaller than this.

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
            f"{THRESHOLD_METHODS}, a float, a boolean array or None"
        )
    values = ms[np.isfinite(ms)]
    if np.unique(values).size < 2:
        return np.ones(ms.shape, bool)
    func = filters.threshold_triangle if method == "triangle" else filters.threshold_otsu
    return ms > func(values)


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
