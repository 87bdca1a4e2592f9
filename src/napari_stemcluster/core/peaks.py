"""Bragg disks in an (averaged) diffraction pattern, by local contrast.

A disk-shaped filter measures how much brighter a disk of the Bragg-disk
radius is than a thin ring around it; local maxima of that contrast are the
disk centres. The ring makes the response insensitive to slowly varying
backgrounds such as the diffuse scattering of a liquid or of the direct beam's
tail.
"""

from __future__ import annotations

import numpy as np

__all__ = ["disk_contrast_kernel", "find_peaks"]


def disk_contrast_kernel(disk_radius: float, ring_width: float | None = None) -> np.ndarray:
    """Zero-sum filter: mean over a disk minus mean over the ring around it.

    Parameters
    ----------
    disk_radius : float
        Radius of the Bragg disks in detector pixels (``> 0``). A pixel
        belongs to the disk when its centre is within ``disk_radius + 0.5``.
    ring_width : float, optional
        Width of the surrounding background ring (default
        ``max(2, disk_radius)``); the ring starts one pixel outside the disk.

    Returns
    -------
    ndarray of float64, shape (K, K)
        Positive ``1 / n_disk`` on the disk, negative ``-1 / n_ring`` on the
        ring, zero elsewhere; its sum is zero.

    Examples
    --------
    >>> k = disk_contrast_kernel(1, ring_width=1)
    >>> k.shape, bool(abs(k.sum()) < 1e-12)
    ((7, 7), True)
    >>> (k > 0).astype(int)[2:5, 2:5]
    array([[1, 1, 1],
           [1, 1, 1],
           [1, 1, 1]])
    """
    r = float(disk_radius)
    if not np.isfinite(r) or r <= 0:
        raise ValueError(f"disk_radius must be a positive number of pixels; got {disk_radius!r}")
    w = max(2.0, r) if ring_width is None else float(ring_width)
    if not np.isfinite(w) or w <= 0:
        raise ValueError(f"ring_width must be a positive number of pixels; got {ring_width!r}")
    inner = r + 0.5
    outer = inner + 1.0 + w
    half = int(np.floor(outer))
    d = np.arange(-half, half + 1, dtype=np.float64)
    dist = np.hypot(d[:, None], d[None, :])
    disk = dist <= inner
    ring = (dist > inner + 1.0) & (dist <= outer)
    kernel = np.zeros(dist.shape, np.float64)
    kernel[disk] = 1.0 / disk.sum()
    kernel[ring] = -1.0 / ring.sum()
    return kernel


def find_peaks(
    pattern,
    disk_radius: float = 2.0,
    *,
    min_distance: int | None = None,
    threshold_rel: float = 0.05,
    threshold_abs: float = 0.0,
    max_peaks: int | None = None,
    mask=None,
    exclude_border: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and intensities of the Bragg disks in one diffraction pattern.

    Parameters
    ----------
    pattern : array_like, shape (Qx, Qy)
        A diffraction pattern, typically a cluster average. Any real dtype.
    disk_radius : float
        Bragg-disk radius in detector pixels.
    min_distance : int, optional
        Minimum separation of two peaks in pixels (default
        ``max(1, round(2 * disk_radius))``).
    threshold_rel : float
        Keep peaks whose intensity exceeds this fraction (0 to 1) of the
        strongest peak's.
    threshold_abs : float
        Keep peaks whose intensity exceeds this value.
    max_peaks : int, optional
        Keep at most this many, strongest first.
    mask : array_like of bool, shape (Qx, Qy), optional
        Only peaks whose (pixel) centre lies where ``mask`` is True.
    exclude_border : int, optional
        Ignore peaks closer than this to the detector border (default
        ``ceil(disk_radius)``: such disks are cut off, and the reflected
        background makes false maxima there).

    Returns
    -------
    positions : ndarray of float64, shape (N, 2)
        Disk centres ``(qx, qy)`` in pixel coordinates, refined to sub-pixel
        precision, strongest first.
    intensities : ndarray of float64, shape (N,)
        Integrated intensity of each disk above the local background (the
        contrast response times the number of disk pixels).

    Raises
    ------
    ValueError
        If the pattern is not 2-D or holds NaN or inf, or for invalid
        parameters.

    Notes
    -----
    The pattern is correlated with :func:`disk_contrast_kernel` (reflecting
    the pattern at the detector border), local maxima are found with
    :func:`skimage.feature.peak_local_max`, and each position is refined to
    the centroid of the positive response in its 3x3 neighbourhood. A flat
    (constant or all-zero) pattern has no peaks.

    Examples
    --------
    >>> p = np.zeros((32, 32))
    >>> yy, xx = np.mgrid[:32, :32]
    >>> p[np.hypot(yy - 10, xx - 20) <= 2.5] = 5.0
    >>> p[np.hypot(yy - 22, xx - 8) <= 2.5] = 2.0
    >>> pos, inten = find_peaks(p, disk_radius=2)
    >>> pos
    array([[10., 20.],
           [22.,  8.]])
    >>> inten.round(1)
    array([105.,  42.])
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max

    img = np.asarray(pattern)
    if img.ndim != 2:
        raise ValueError(f"pattern must be 2-D (Qx, Qy); got shape {img.shape}")
    if img.dtype.kind not in "uifb":
        raise TypeError(f"pattern must hold integers or floats; got dtype {img.dtype}")
    img = img.astype(np.float64)
    if not np.all(np.isfinite(img)):
        raise ValueError("pattern contains NaN or inf; replace those values first")
    if not 0.0 <= float(threshold_rel) <= 1.0:
        raise ValueError(f"threshold_rel must be within [0, 1]; got {threshold_rel!r}")
    kernel = disk_contrast_kernel(disk_radius)
    n_disk = int((kernel > 0).sum())
    if min_distance is None:
        min_distance = max(1, round(2 * float(disk_radius)))
    if int(min_distance) < 1:
        raise ValueError(f"min_distance must be >= 1; got {min_distance!r}")
    if exclude_border is None:
        exclude_border = int(np.ceil(float(disk_radius)))
    if int(exclude_border) < 0:
        raise ValueError(f"exclude_border must be >= 0; got {exclude_border!r}")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != img.shape:
            raise ValueError(f"mask must have the pattern's shape {img.shape}; got {mask.shape}")
    empty = (np.empty((0, 2), np.float64), np.empty(0, np.float64))
    if img.size == 0:
        return empty

    response = ndimage.correlate(img, kernel, mode="reflect")
    # A zero-sum filter on a flat pattern leaves only rounding noise.
    tol = 1e-9 * max(float(np.abs(img).max()), 1e-300)
    allowed = np.ones(img.shape, bool) if mask is None else mask.copy()
    b = int(exclude_border)
    if b:
        allowed[:b] = allowed[-b:] = False
        allowed[:, :b] = allowed[:, -b:] = False
    if not (allowed & (response > tol)).any():
        return empty
    strongest = float(response[allowed].max())
    floor = max(float(threshold_rel) * strongest, float(threshold_abs) / n_disk, tol)
    # Maxima of the whole response, so that a cut-off disk at the border is
    # not replaced by a false maximum just inside the excluded band.
    coords = peak_local_max(
        response, min_distance=int(min_distance), threshold_abs=floor, exclude_border=False
    )
    coords = coords[allowed[coords[:, 0], coords[:, 1]]] if coords.size else coords
    if coords.size == 0:
        return empty
    intensities = response[coords[:, 0], coords[:, 1]] * n_disk
    positions = _refine(response, coords)
    order = np.lexsort((coords[:, 1], coords[:, 0], -intensities))
    if max_peaks is not None:
        order = order[: max(0, int(max_peaks))]
    return positions[order], intensities[order]


def _refine(response: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Centroid of the positive response in the 3x3 window about each peak."""
    padded = np.pad(np.clip(response, 0.0, None), 1)  # outside the detector weighs 0
    d = np.array([-1, 0, 1])
    dx = np.repeat(d, 3)
    dy = np.tile(d, 3)
    win = padded[coords[:, :1] + 1 + dx, coords[:, 1:] + 1 + dy]  # (N, 9)
    total = win.sum(axis=1)
    out = coords.astype(np.float64)
    ok = total > 0
    out[ok, 0] += (win[ok] * dx).sum(axis=1) / total[ok]
    out[ok, 1] += (win[ok] * dy).sum(axis=1) / total[ok]
    return out
