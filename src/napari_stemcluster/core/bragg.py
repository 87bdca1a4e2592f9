"""Bragg disks: probe templates and template-matching disk detection.

A diffraction pattern is cross-correlated with a probe template (the
direct-beam disk of vacuum, the central disk of a pattern, or a synthetic
soft-edged disk), with an optional *correlation power* between plain
cross-correlation (1) and phase correlation (0). Local maxima of the
correlation above a noise-, relative- and absolute threshold, at least
``min_spacing`` apart, are the disk centres; each is refined to sub-pixel
precision by an upsampled local DFT of the correlation (or a parabola). The
direct beam is recognised as the centre of inversion symmetry of the disks
(Friedel pairs) and reported separately.

Stacks are processed in blocks with batched real FFTs, so the same call
serves one cluster average and every probe position of a scan.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np

__all__ = [
    "DISK_DTYPE",
    "estimate_probe_radius",
    "find_bragg_disks",
    "probe_from_pattern",
    "probe_from_region",
    "ring_kernel",
    "synthetic_probe",
]

#: Fields of a disk list: position (pixels, pattern axis order), integrated
#: intensity (counts within the probe radius) and correlation peak value.
DISK_DTYPE = np.dtype(
    [("qx", np.float64), ("qy", np.float64), ("intensity", np.float64), ("correlation", np.float64)]
)

#: Patterns per batched FFT.
BLOCK = 128

#: With fewer disks than this (per pattern, median over a stack) from a
#: template more than TOO_LARGE times the radius of the brightest disk, the
#: template's size is named as the likely cause.
FEW = 4
TOO_LARGE = 2.5


class BraggWarning(UserWarning):
    """Nothing (or only the direct beam) was found in a pattern."""


def _empty() -> np.ndarray:
    return np.zeros(0, DISK_DTYPE)


# ---------------------------------------------------------------------------
# probe templates


def synthetic_probe(radius: float, edge_width: float = 1.0) -> np.ndarray:
    """A disk of ``radius`` pixels with a soft (linear) edge, normalised to unit sum.

    Parameters
    ----------
    radius : float
        Disk radius in detector pixels (``> 0``).
    edge_width : float
        Width of the linear fall-off from 1 to 0 across the edge, centred on
        ``radius`` (``>= 0``; 0 gives an anti-aliased hard edge of one pixel).

    Returns
    -------
    ndarray of float32, shape (K, K), K odd
        The template, centred on the middle pixel ``(K // 2, K // 2)``.

    Examples
    --------
    >>> t = synthetic_probe(2.0)
    >>> t.shape, bool(abs(t.sum() - 1) < 1e-6), bool(t[4, 4] == t.max())
    ((9, 9), True, True)
    """
    r = float(radius)
    w = float(edge_width)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"probe radius must be a positive number of pixels; got {radius!r}")
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"edge_width must be >= 0 pixels; got {edge_width!r}")
    w = max(w, 1.0)
    half = math.ceil(r + w / 2) + 1
    d = np.arange(-half, half + 1, dtype=np.float64)
    dist = np.hypot(d[:, None], d[None, :])
    t = np.clip((r + w / 2 - dist) / w, 0.0, 1.0)
    return (t / t.sum()).astype(np.float32)


def ring_kernel(template, ring_width: float | None = None) -> np.ndarray:
    """Background-subtracted template: the template minus its sum spread over a ring.

    The kernel sums to zero, so a slowly varying background (diffuse
    scattering, the tail of the direct beam) gives no response.

    Parameters
    ----------
    template : array_like, shape (K, K)
        A centred probe template (for instance from :func:`synthetic_probe`).
    ring_width : float, optional
        Width of the ring in pixels (default: the template's radius, at least
        2). The ring starts one pixel outside the template's support.

    Returns
    -------
    ndarray of float32
        A larger, centred, zero-sum kernel whose positive part is the
        template (normalised to unit sum).

    Examples
    --------
    >>> k = ring_kernel(synthetic_probe(2.0))
    >>> k.shape, bool(abs(float(k.sum())) < 1e-6), bool(k.min() < 0)
    ((15, 15), True, True)
    """
    t = _check_template(template)
    t = t / t.sum()
    kx, ky = t.shape
    cx, cy = (kx - 1) / 2, (ky - 1) / 2
    yy, xx = np.mgrid[:kx, :ky]
    support = t > 0.01 * t.max()
    r_out = float(np.max(np.hypot(xx[support] - cy, yy[support] - cx)))
    radius = _template_radius(t)
    w = max(2.0, radius) if ring_width is None else float(ring_width)
    if not math.isfinite(w) or w <= 0:
        raise ValueError(f"ring_width must be a positive number of pixels; got {ring_width!r}")
    inner = r_out + 1.0
    outer = inner + w
    half = math.ceil(outer) + 1
    size = 2 * half + 1
    k = np.zeros((size, size), np.float64)
    ox, oy = half - kx // 2, half - ky // 2
    k[ox : ox + kx, oy : oy + ky] = t
    d = np.arange(size) - half
    dist = np.hypot(d[:, None], d[None, :])
    ring = (dist > inner) & (dist <= outer)
    k[ring] -= 1.0 / ring.sum()
    return k.astype(np.float32)


def probe_from_pattern(pattern, radius: float | None = None, margin: float = 2.0) -> np.ndarray:
    """The central (direct-beam) disk of a pattern, cut out and centred, as a template.

    The disk is the bright blob closest to the pattern centre among those at
    least half as bright as the brightest; outside ``radius + margin`` the
    template is zero, and the local background (the median of a ring around
    the disk) is subtracted.

    Parameters
    ----------
    pattern : array_like, shape (Qx, Qy)
        A vacuum pattern, or any pattern whose direct beam stands out.
    radius : float, optional
        Disk radius in pixels (default: from the area of the blob above half
        its peak).
    margin : float
        Pixels kept outside the radius (the soft edge of the probe).

    Returns
    -------
    ndarray of float32, shape (K, K), K odd
        Centred, unit-sum template.

    Raises
    ------
    ValueError
        If the pattern is not 2-D, not finite, or has no bright disk.

    Examples
    --------
    >>> yy, xx = np.mgrid[:48, :48]
    >>> p = (np.hypot(yy - 23.3, xx - 25.0) <= 4).astype(float) * 100
    >>> t = probe_from_pattern(p)
    >>> t.shape[0] % 2, round(float(t.sum()), 6)
    (1, 1.0)
    """
    from scipy import ndimage

    p = _as_pattern(pattern, "pattern")
    if not np.any(p > 0) or float(p.max() - p.min()) <= 0:
        raise ValueError("pattern is empty or flat: there is no disk to take a probe template from")
    sm = ndimage.gaussian_filter(p, 1.0)
    base = float(np.median(sm))
    top = float(sm.max())
    lab, n = ndimage.label(sm > base + 0.5 * (top - base))
    if n == 0:
        raise ValueError("no bright disk found in the pattern")
    centre = (np.array(p.shape) - 1) / 2
    idx = np.arange(1, n + 1)
    coms = np.array(ndimage.center_of_mass(sm - base, lab, idx)).reshape(n, 2)
    dist = np.hypot(*(coms - centre).T)
    which = int(np.argmin(dist))
    area = float(np.sum(lab == which + 1))
    r = math.sqrt(area / math.pi) if radius is None else float(radius)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"radius must be a positive number of pixels; got {radius!r}")
    c = coms[which]
    half = math.ceil(r + margin) + 1
    d = np.arange(-half, half + 1, dtype=np.float64)
    # Sample the pattern on a grid centred exactly on the disk (linear interpolation).
    gx = c[0] + d[:, None] + 0 * d[None, :]
    gy = c[1] + 0 * d[:, None] + d[None, :]
    cut = ndimage.map_coordinates(p, [gx, gy], order=1, mode="constant", cval=0.0)
    dist = np.hypot(d[:, None], d[None, :])
    ring = (dist > r + margin) & (dist <= r + margin + 2)
    bg = float(np.median(cut[ring])) if ring.any() else 0.0
    t = np.where(dist <= r + margin, np.clip(cut - bg, 0.0, None), 0.0)
    if not t.sum() > 0:
        raise ValueError("the central disk of the pattern is not above its background")
    return (t / t.sum()).astype(np.float32)


def probe_from_region(cube, region, radius: float | None = None, block_rows: int = 16):
    """Probe template from the average of the patterns in a scan region (vacuum).

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy)
        numpy, h5py or dask 4D cube (one time step of a 5D cube).
    region : array_like of bool, shape (Rx, Ry)
        Positions to average (a vacuum area, where only the direct beam is seen).
    radius : float, optional
        Passed to :func:`probe_from_pattern`.
    block_rows : int
        Scan rows read at a time.

    Returns
    -------
    ndarray of float32
        Centred, unit-sum template.

    Examples
    --------
    >>> cube = np.zeros((4, 4, 32, 32), np.uint16)
    >>> cube[..., 14:19, 14:19] = 50
    >>> probe_from_region(cube, np.ones((4, 4), bool)).shape
    (13, 13)
    """
    region = np.asarray(region, bool)
    if getattr(cube, "ndim", 0) != 4:
        raise ValueError(
            f"cube must be 4-D (Rx, Ry, Qx, Qy); got shape {getattr(cube, 'shape', ())}"
        )
    if region.shape != tuple(cube.shape[:2]):
        raise ValueError(
            f"region must have the scan shape {tuple(cube.shape[:2])}; got {region.shape}"
        )
    if not region.any():
        raise ValueError("the reference region is empty: select at least one scan position")
    total = np.zeros(cube.shape[2:], np.float64)
    rows = np.flatnonzero(region.any(axis=1))
    for r0 in range(0, len(rows), block_rows):
        rr = rows[r0 : r0 + block_rows]
        block = np.asarray(cube[int(rr[0]) : int(rr[-1]) + 1])
        sel = region[int(rr[0]) : int(rr[-1]) + 1]
        total += block[sel].sum(axis=0, dtype=np.float64)
    return probe_from_pattern(total / region.sum(), radius=radius)


def estimate_probe_radius(pattern) -> float:
    """Radius (pixels) of the brightest disk of a pattern, from its area above half maximum.

    Used when neither a template nor a radius is given. Returns 2.0 for an
    empty or flat pattern.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :40]
    >>> p = (np.hypot(yy - 20, xx - 20) <= 3.5).astype(float)
    >>> round(estimate_probe_radius(p), 1)
    3.4
    """
    from scipy import ndimage

    p = np.asarray(pattern, np.float64)
    if p.size == 0 or not np.all(np.isfinite(p)) or float(p.max() - p.min()) <= 0:
        return 2.0
    sm = ndimage.gaussian_filter(p, 0.7)
    base = float(np.median(sm))
    top = float(sm.max())
    lab, _ = ndimage.label(sm > base + 0.5 * (top - base))
    which = lab[np.unravel_index(int(np.argmax(sm)), sm.shape)]
    area = float(np.sum(lab == which))
    r = math.sqrt(area / math.pi)
    return float(np.clip(r, 1.0, max(1.0, min(p.shape) / 8)))


def _estimate_stack_radius(patterns, n: int, single: bool) -> float:
    """Median radius over up to 16 patterns spread through the stack (non-flat ones)."""
    if single:
        return estimate_probe_radius(patterns)
    radii = []
    for i in np.unique(np.linspace(0, n - 1, min(n, 16)).astype(int)):
        p = np.asarray(patterns[int(i)], np.float64)
        if p.size and np.all(np.isfinite(p)) and float(p.max() - p.min()) > 0:
            radii.append(estimate_probe_radius(p))
    return float(np.median(radii)) if radii else 2.0


def _template_radius(t: np.ndarray) -> float:
    """Effective radius of a template's positive part (area above half maximum)."""
    pos = np.clip(t, 0, None)
    return max(0.5, math.sqrt(float(np.sum(pos >= 0.5 * pos.max())) / math.pi))


def _check_template(template) -> np.ndarray:
    t = np.asarray(template)
    if t.ndim != 2:
        raise ValueError(f"template must be a 2-D array; got shape {t.shape}")
    if t.dtype.kind not in "uifb":
        raise TypeError(f"template must hold numbers; got dtype {t.dtype}")
    t = t.astype(np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError("template contains NaN or inf")
    if not np.any(t > 0):
        raise ValueError(
            "template is empty (no positive values): take it from a region with the direct "
            "beam, or use probe_radius for a synthetic disk"
        )
    return t


#: Largest pattern value: the correlation and noise estimate are computed in float32.
FLOAT32_SAFE = 1e15  # squares of differences (noise estimate) stay finite in float32
_TOO_LARGE_VALUES = (
    "pattern values up to {:.3g} are beyond the float32 range the correlation uses; "
    "rescale the data (detection does not depend on the scale)"
)


def _as_pattern(pattern, name: str) -> np.ndarray:
    p = np.asarray(pattern)
    if p.ndim != 2:
        raise ValueError(f"{name} must be 2-D (Qx, Qy); got shape {p.shape}")
    if p.dtype.kind not in "uifb":
        raise TypeError(f"{name} must hold integers or floats; got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains NaN or inf; replace those values first")
    if p.size and float(np.abs(p).max()) > FLOAT32_SAFE:
        raise ValueError(_TOO_LARGE_VALUES.format(float(np.abs(p).max())))
    return p


# ---------------------------------------------------------------------------
# detection


def find_bragg_disks(
    patterns,
    template=None,
    probe_radius: float | None = None,
    *,
    ring: bool = False,
    corr_power: float = 1.0,
    sigma: float = 1.5,
    min_spacing: float | None = None,
    min_relative: float = 0.005,
    min_absolute: float = 0.0,
    min_snr: float = 5.0,
    edge: int | None = None,
    max_count: int = 200,
    subpixel: str = "dft",
    upsample: int = 10,
    beam: tuple[float, float] | None = None,
    return_beam: bool = False,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
):
    """Find the Bragg disks of one diffraction pattern or a stack of them.

    Parameters
    ----------
    patterns : array_like, shape (Qx, Qy) or (..., Qx, Qy)
        One pattern, or a stack (any leading shape; numpy, h5py or dask),
        of any real dtype. Stacks are read and processed in blocks.
    template : array_like, shape (K, L), optional
        Probe template centred on pixel ``(K // 2, L // 2)``, at most the
        pattern's size (see :func:`synthetic_probe`, :func:`probe_from_pattern`,
        :func:`probe_from_region`). Default: a synthetic disk of
        ``probe_radius``.
    probe_radius : float, optional
        Disk radius in pixels for the synthetic template (default: estimated
        from the mean of the first patterns with :func:`estimate_probe_radius`).
    ring : bool
        Subtract a ring around the template (:func:`ring_kernel`): insensitive
        to smooth backgrounds.
    corr_power : float
        1 is cross-correlation, 0 phase correlation, in between a hybrid
        (sharper peaks, more noise as it goes to 0).
    sigma : float
        Gaussian smoothing of the correlation, in pixels (0 = none). The
        default 1.5 removes the aliasing of sharp disk edges that otherwise
        pulls sub-pixel positions towards pixel centres (by up to 0.05 px).
    min_spacing : float, optional
        Minimum distance of two disks in pixels (default
        ``max(2, probe radius)``); the weaker of two closer maxima is dropped.
    min_relative : float
        Keep maxima whose correlation exceeds this fraction of the pattern's
        strongest.
    min_absolute : float
        Keep maxima whose correlation exceeds this value.
    min_snr : float
        Keep maxima whose correlation exceeds the pattern's background
        level (25th percentile of the correlation) by this many standard
        deviations of the correlation noise, estimated from the pattern's
        background pixels: the threshold adapts to the dose without tuning.
    edge : int, optional
        Ignore maxima closer than this to the detector border (default:
        the probe radius, rounded up: such disks are cut off).
    max_count : int
        Keep at most this many disks per pattern, strongest first.
    subpixel : {"dft", "parabolic", "none"}
        Refinement: local upsampled DFT of the correlation (most accurate,
        followed by a parabola on the fine grid), a parabola through the
        3x3 neighbourhood, or integer pixels.
    upsample : int
        Upsampling factor of the ``"dft"`` refinement.
    beam : (float, float), optional
        Approximate direct-beam position; the detected maximum nearest to it
        is the beam. Default: found from the symmetry of the disks.
    return_beam : bool
        Also return the direct-beam position(s).
    progress : callable, optional
        ``progress(done, total)`` after each block of patterns (may raise to
        cancel).
    workers : int
        Threads for the FFTs (``scipy.fft`` workers).

    Returns
    -------
    disks : structured ndarray or list of them
        For one pattern, an array of :data:`DISK_DTYPE` (``qx``, ``qy``,
        ``intensity``, ``correlation``), strongest first, without the direct
        beam; for a stack, a flat list of such arrays in C order of the
        leading axes.
    beam : ndarray of float64, shape (2,) or (N, 2)
        Only with ``return_beam``: the direct-beam position ``(qx, qy)`` of
        each pattern (NaN when none was found).

    Warns
    -----
    BraggWarning
        For a single pattern that is empty or flat, or in which no disk (or
        only the direct beam) passes the thresholds; for a stack in which no
        pattern has a disk; when a given template or ``probe_radius`` is
        much larger than the disks and few disks were found.

    Notes
    -----
    ``intensity`` is the sum of the pattern within the probe radius of the
    integer peak position; ``correlation`` the (refined) correlation peak.
    The direct beam is the detected maximum about which the most other
    maxima have a partner at the mirrored position (Friedel pairs); with no
    such symmetry, the strongest maximum closest to the detector centre.

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :64]
    >>> p = np.zeros((64, 64))
    >>> for cx, cy in [(31.5, 31.5), (21.5, 31.5), (41.5, 31.5), (31.5, 21.5), (31.5, 41.5)]:
    ...     p += 100 * (np.hypot(yy - cx, xx - cy) <= 3)
    >>> d, beam = find_bragg_disks(p, probe_radius=3, return_beam=True)
    >>> len(d), beam.round(2)
    (4, array([31.5, 31.5]))
    >>> np.sort(d["qx"]).round(2)
    array([21.5, 31.5, 31.5, 41.5])
    """
    if getattr(patterns, "ndim", None) is None:
        patterns = np.asarray(patterns)
    ndim = patterns.ndim
    if ndim < 2:
        raise ValueError(f"patterns must be (Qx, Qy) or (..., Qx, Qy); got shape {patterns.shape}")
    if getattr(patterns, "dtype", np.dtype(float)).kind not in "uifb":
        raise TypeError(f"patterns must hold integers or floats; got dtype {patterns.dtype}")
    single = ndim == 2
    qshape = tuple(int(s) for s in patterns.shape[-2:])
    lead = tuple(int(s) for s in patterns.shape[:-2])
    n = int(np.prod(lead)) if lead else 1
    flat = patterns.reshape((n, *qshape)) if not single else None

    img = _as_pattern(patterns, "pattern") if single else None
    p = _params(
        corr_power, sigma, min_relative, min_absolute, min_snr, max_count, subpixel, upsample, beam
    )
    if min(qshape) < 3:
        raise ValueError(f"patterns must be at least 3x3 pixels; got {qshape}")
    probe_radius_given = template is None and probe_radius is not None
    if template is None:
        if probe_radius is None:
            probe_radius = _estimate_stack_radius(img if single else flat, n, single)
            # An estimate never makes a template larger than the patterns.
            probe_radius = min(probe_radius, max(0.5, (min(qshape) - 1) / 2 - 2.5))
        t = synthetic_probe(probe_radius)
    else:
        t = _check_template(template)
    if ring:
        t = ring_kernel(t)
    if t.shape[0] > qshape[0] or t.shape[1] > qshape[1]:
        raise ValueError(
            f"template of shape {t.shape} is larger than the patterns {qshape}: use a smaller "
            "probe radius or crop the template to the disk (probe_from_pattern does this)"
        )
    radius = _template_radius(t)
    if min_spacing is None:
        min_spacing = max(2.0, radius)
    if not math.isfinite(float(min_spacing)) or float(min_spacing) < 1:
        raise ValueError(f"min_spacing must be >= 1 pixel; got {min_spacing!r}")
    if edge is None:
        edge = math.ceil(radius)
    edge = int(edge)
    if edge < 0:
        raise ValueError(f"edge must be >= 0; got {edge!r}")
    p.update(min_spacing=float(min_spacing), edge=edge, radius=radius)

    det = _Detector(t, qshape, p, workers)
    chosen = template is not None or probe_radius_given
    if single:
        disks, beams = det.run(img[None])
        d, b = disks[0], beams[0]
        _warn_single(img, d, b)
        if chosen and len(d) < FEW:
            _warn_size(radius, lambda: estimate_probe_radius(img))
        return (d, b) if return_beam else d

    out: list[np.ndarray] = []
    beams = np.full((n, 2), np.nan)
    for i0 in range(0, n, BLOCK):
        i1 = min(n, i0 + BLOCK)
        block = np.asarray(flat[i0:i1])
        if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
            bad = i0 + int(np.flatnonzero(~np.isfinite(block).reshape(i1 - i0, -1).all(1))[0])
            where = tuple(int(i) for i in np.unravel_index(bad, lead))
            raise ValueError(f"pattern {where} contains NaN or inf")
        if block.dtype.kind == "f" and block.size and float(np.abs(block).max()) > FLOAT32_SAFE:
            raise ValueError(_TOO_LARGE_VALUES.format(float(np.abs(block).max())))
        d, b = det.run(block)
        out.extend(d)
        beams[i0:i1] = b
        if progress is not None:
            progress(i1, n)
    if n and not any(len(x) for x in out):
        warnings.warn(
            f"no Bragg disks found in any of the {n} patterns; lower min_snr or min_relative, "
            "or check probe_radius / the template",
            BraggWarning,
            stacklevel=2,
        )
    if n and chosen and np.median([len(x) for x in out]) < FEW:
        _warn_size(radius, lambda: _estimate_stack_radius(flat, n, False))
    return (out, beams) if return_beam else out


def _params(
    corr_power, sigma, min_relative, min_absolute, min_snr, max_count, subpixel, upsample, beam
):
    def num(v, name, lo=None, hi=None):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number; got {v!r}") from None
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" within [{lo}, {hi}]" if hi is not None else f" >= {lo}"
            raise ValueError(f"{name} must be a finite number{rng}; got {v!r}")
        return v

    if subpixel not in ("dft", "parabolic", "none"):
        raise ValueError(f"subpixel must be 'dft', 'parabolic' or 'none'; got {subpixel!r}")
    if beam is not None:
        beam = np.asarray(beam, np.float64)
        if beam.shape != (2,) or not np.all(np.isfinite(beam)):
            raise ValueError(f"beam must be (qx, qy); got {beam!r}")
    mc = int(num(max_count, "max_count", 1))
    up = int(num(upsample, "upsample", 2, 256))
    return {
        "corr_power": num(corr_power, "corr_power", 0.0, 1.0),
        "sigma": num(sigma, "sigma", 0.0),
        "min_relative": num(min_relative, "min_relative", 0.0, 1.0),
        "min_absolute": num(min_absolute, "min_absolute", 0.0) if min_absolute else 0.0,
        "min_snr": num(min_snr, "min_snr", 0.0),
        "max_count": mc,
        "subpixel": subpixel,
        "upsample": up,
        "beam": beam,
    }


def _warn_size(radius: float, estimate: Callable[[], float]) -> None:
    """Warn when few disks were found with a template much larger than the disks.

    Checked only when the result is poor: the radius estimate from the
    brightest disk is too small at low dose to judge a good result by.
    """
    est = estimate()
    if radius > TOO_LARGE * est:
        warnings.warn(
            f"the probe template (radius {radius:.1f} px) is much larger than the disks "
            f"(radius about {est:.1f} px, from the brightest disk): neighbouring disks merge "
            f"in the correlation; use probe_radius={est:.1f}, or leave it unset to estimate it",
            BraggWarning,
            stacklevel=3,
        )


def _warn_single(img, d, b):
    if float(img.max() - img.min()) <= 0 if img.size else True:
        msg = "pattern is empty or flat (constant): no Bragg disks"
    elif len(d) == 0 and np.all(np.isfinite(b)):
        msg = (
            "only the direct beam was found, no Bragg disks: the pattern may be of vacuum or "
            "amorphous material; lower min_snr or min_relative to look for weaker disks"
        )
    elif len(d) == 0:
        msg = (
            "no Bragg disks found above the thresholds; lower min_snr or min_relative, or "
            "check probe_radius / the template"
        )
    else:
        return
    warnings.warn(msg, BraggWarning, stacklevel=3)


class _Detector:
    """Batched correlation, peak finding and refinement for one parameter set."""

    def __init__(self, template: np.ndarray, qshape, p: dict, workers: int):
        from scipy import fft as sfft

        self.p = p
        self.qshape = qshape
        self.workers = max(1, int(workers))
        kx, ky = template.shape
        # Zero padding at the end keeps the circular correlation from wrapping.
        nx = sfft.next_fast_len(qshape[0] + kx // 2 + 1, real=True)
        ny = sfft.next_fast_len(qshape[1] + ky // 2 + 1, real=True)
        self.nshape = (nx, ny)
        tpad = np.zeros((nx, ny), np.float64)
        tpad[:kx, :ky] = template
        tpad = np.roll(tpad, (-(kx // 2), -(ky // 2)), axis=(0, 1))  # centre at (0, 0)
        self.tconj = np.conj(sfft.rfft2(tpad)).astype(np.complex64)
        if p["sigma"] > 0:
            fx = np.fft.fftfreq(nx)[:, None]
            fy = np.fft.rfftfreq(ny)[None, :]
            g = np.exp(-2 * np.pi**2 * p["sigma"] ** 2 * (fx**2 + fy**2))
            self.tconj = (self.tconj * g).astype(np.complex64)
        # Noise gain of the filter: white noise of std s gives correlation noise s * gain.
        self.gain = float(np.sqrt(np.sum(sfft.irfft2(self.tconj, s=(nx, ny)) ** 2)))
        # Disk footprint for the integrated intensity.
        r = p["radius"]
        h = math.ceil(r)
        d = np.arange(-h, h + 1)
        m = np.hypot(d[:, None], d[None, :]) <= r + 0.5
        self.foot = np.argwhere(m) - h

    def run(self, block: np.ndarray):
        from scipy import fft as sfft

        p = self.p
        b = block.shape[0]
        qx, qy = self.qshape
        nx, ny = self.nshape
        pad = np.zeros((b, nx, ny), np.float32)
        pad[:, :qx, :qy] = block
        spec = sfft.rfft2(pad, workers=self.workers)
        spec *= self.tconj
        if p["corr_power"] < 1.0:
            mag = np.abs(spec)
            scale = mag.max(axis=(1, 2), keepdims=True)
            eps = 1e-6 * np.where(scale > 0, scale, 1.0)
            spec /= (mag + eps) ** np.float32(1.0 - p["corr_power"])
        corr = sfft.irfft2(spec, s=(nx, ny), workers=self.workers)[:, :qx, :qy]
        disks, beams = [], np.full((b, 2), np.nan)
        cands = _candidates(corr, p, _pixel_noise(block) * self.gain)
        flat = block.reshape(b, -1)
        constant = flat.max(axis=1) == flat.min(axis=1)  # padding edges are not disks
        found = []
        for i in range(b):
            found.append(None if constant[i] else self._one(corr[i], cands[i]))
        if p["subpixel"] == "dft":
            # one parallel pass refines the disks of every pattern of the block
            from ._bragg_numba import dft_refine_many

            which = [np.full(len(f[3]), i) for i, f in enumerate(found) if f is not None]
            if which and sum(len(w) for w in which):
                pts = np.concatenate([f[2][f[3]] for f in found if f is not None])
                nx, ny = self.nshape
                done = dft_refine_many(
                    spec, np.concatenate(which), pts.astype(np.float64), nx, ny, p["upsample"]
                )
                k = 0
                for f in found:
                    if f is not None:
                        f[2][f[3]] = done[k : k + len(f[3])]
                        k += len(f[3])
        for i in range(b):
            if found[i] is None:
                disks.append(_empty())
                continue
            d, beam = self._finish(block[i], *found[i])
            disks.append(d)
            beams[i] = beam
        return disks, beams

    def _one(self, c, cand):
        """Maxima, direct beam and the points to refine of one pattern."""
        p = self.p
        if cand is None or len(cand) == 0:
            return cand, None, np.zeros((0, 2)), np.zeros(0, np.int64), -1, np.zeros(0, np.int64)
        vals = c[cand[:, 0], cand[:, 1]]
        order = np.argsort(-vals, kind="stable")
        cand, vals = cand[order], vals[order]
        keep = _suppress(cand, p["min_spacing"], limit=4 * p["max_count"] + 1)
        cand, vals = cand[keep], vals[keep]
        pos = cand + _parabola(c, cand) if p["subpixel"] != "none" else cand.astype(float)
        ib = _beam_index(pos, vals, p["beam"], self.qshape, tol=max(1.5, 0.5 * p["radius"]))
        qx, qy = self.qshape
        e = p["edge"]
        inside = (
            (cand[:, 0] >= e) & (cand[:, 0] < qx - e) & (cand[:, 1] >= e) & (cand[:, 1] < qy - e)
        )
        if ib >= 0:
            inside[ib] = False
        idx = np.flatnonzero(inside)[: p["max_count"]]
        todo = idx if ib < 0 else np.append(idx, ib)
        return cand, vals, pos, todo, ib, idx

    def _finish(self, img, cand, vals, pos, todo, ib, idx):
        """Disk table and direct beam of one pattern from its (refined) points."""
        if vals is None:
            return _empty(), (np.nan, np.nan)
        beam = (np.nan, np.nan) if ib < 0 else tuple(pos[ib])
        out = np.zeros(len(idx), DISK_DTYPE)
        out["qx"] = pos[idx, 0]
        out["qy"] = pos[idx, 1]
        out["correlation"] = vals[idx]
        out["intensity"] = self._intensity(img, cand[idx])
        return out, beam

    def _intensity(self, img, cand):
        if len(cand) == 0:
            return np.zeros(0)
        qx, qy = self.qshape
        xs = cand[:, 0:1] + self.foot[None, :, 0]
        ys = cand[:, 1:2] + self.foot[None, :, 1]
        ok = (xs >= 0) & (xs < qx) & (ys >= 0) & (ys < qy)
        vals = img[np.clip(xs, 0, qx - 1), np.clip(ys, 0, qy - 1)]
        return np.where(ok, vals, 0).sum(axis=1, dtype=np.float64)


def _pixel_noise(block: np.ndarray) -> np.ndarray:
    """Per-pattern noise std of the background pixels (up to the 75th percentile).

    From the differences of horizontally adjacent background pixels, so
    that disks and smooth backgrounds do not count as noise; 0 for a
    noise-free pattern. For sparse counts, at least the Poisson noise of the
    background rate.
    """
    b = block.shape[0]
    v = block.reshape(b, block.shape[1], -1).astype(np.float32)
    flat = v.reshape(b, -1)
    low = flat.min(axis=1)
    p75, p99 = np.percentile(flat, [75, 99], axis=1)
    lim = p75[:, None, None]
    left, right = v[:, :, :-1], v[:, :, 1:]
    ok = (left <= lim) & (right <= lim)
    d = np.where(ok, right - left, 0.0)
    n = np.maximum(ok.sum(axis=(1, 2)), 1)
    mean = d.sum(axis=(1, 2)) / n
    var = np.where(ok, (d - mean[:, None, None]) ** 2, 0.0).sum(axis=(1, 2)) / n
    sigma = np.sqrt(var / 2.0)
    # Sparse counts (at low dose most pixels are 0, so are their differences):
    # the Poisson noise of the background level, from the pixels below the
    # 99th percentile (the disks excluded). Values are counts times a quantum
    # q (1 for raw counts, 1/N for the mean of N patterns), so the variance
    # is level * q.
    sparse = p75 <= low
    if sparse.any():
        above = flat - low[:, None]
        below = flat <= p99[:, None]
        level = np.where(below, above, 0.0).sum(1) / np.maximum(below.sum(1), 1)
        quantum = np.where(above > 0, above, np.inf).min(axis=1)
        quantum = np.where(np.isfinite(quantum), quantum, 0.0)
        sigma = np.where(sparse, np.maximum(sigma, np.sqrt(level * quantum)), sigma)
    return sigma


def _candidates(corr: np.ndarray, p: dict, noise: np.ndarray) -> list:
    """Integer local maxima above the thresholds, per pattern of the block."""
    b, qx, qy = corr.shape
    pad = np.pad(corr, ((0, 0), (1, 1), (1, 1)), mode="constant", constant_values=-np.inf)
    c = pad[:, 1:-1, 1:-1]
    is_max = np.ones(corr.shape, bool)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx == 0 and dy == 0:
                continue
            nb = pad[:, 1 + dx : 1 + dx + qx, 1 + dy : 1 + dy + qy]
            # Ties: strictly greater than the neighbours that come later in raster order.
            is_max &= (c > nb) if (dx, dy) > (0, 0) else (c >= nb)
    flatc = corr.reshape(b, -1)
    top = flatc.max(axis=1)
    base = np.percentile(flatc, 25, axis=1)
    span = top - flatc.min(axis=1)
    thr = np.maximum.reduce(
        [
            p["min_relative"] * top,
            np.full(b, p["min_absolute"]),
            base + p["min_snr"] * noise,
            flatc.min(axis=1) + 1e-6 * span,  # a flat pattern has no maxima
        ]
    )
    is_max &= corr > thr[:, None, None]
    is_max &= (span > 1e-12 * np.maximum(np.abs(top), 1e-300))[:, None, None]
    bi, xi, yi = np.nonzero(is_max)
    splits = np.searchsorted(bi, np.arange(1, b))
    xy = np.stack([xi, yi], axis=1)
    return np.split(xy, splits)


def _suppress(cand: np.ndarray, spacing: float, limit: int) -> np.ndarray:
    """Greedy non-maximum suppression of candidates sorted strongest first."""
    cand = cand[:limit] if len(cand) > limit else cand
    n = len(cand)
    keep = np.ones(n, bool)
    if n < 2:
        return np.flatnonzero(keep)
    d2 = ((cand[:, None, :] - cand[None, :, :]) ** 2).sum(-1)
    close = d2 < spacing**2
    for i in range(n):
        if keep[i]:
            later = close[i, i + 1 :]
            keep[i + 1 :] &= ~later
    return np.flatnonzero(keep)


def _parabola(c: np.ndarray, cand: np.ndarray) -> np.ndarray:
    qx, qy = c.shape
    x, y = cand[:, 0], cand[:, 1]
    off = np.zeros((len(cand), 2))
    for axis, (lo, hi) in enumerate(((x - 1, x + 1), (y - 1, y + 1))):
        n = (qx, qy)[axis]
        ok = (lo >= 0) & (hi < n)
        lo, hi = np.clip(lo, 0, n - 1), np.clip(hi, 0, n - 1)
        if axis == 0:
            a, m, b = c[lo, y], c[x, y], c[hi, y]
        else:
            a, m, b = c[x, lo], c[x, y], c[x, hi]
        den = a - 2 * m + b
        with np.errstate(divide="ignore", invalid="ignore"):
            o = np.where(ok & (den < 0), 0.5 * (a - b) / den, 0.0)
        off[:, axis] = np.clip(o, -0.5, 0.5)
    return off


def _beam_index(pos, vals, hint, qshape, tol: float) -> int:
    """Index of the direct beam among the maxima (strongest first), or -1."""
    n = len(pos)
    if n == 0:
        return -1
    if hint is not None:
        d = np.hypot(*(pos - hint).T)
        i = int(np.argmin(d))
        return i if d[i] <= max(3.0, 2 * tol) else -1
    from scipy.spatial import cKDTree

    centre = (np.array(qshape) - 1) / 2
    # Candidates: the strongest maxima and those nearest the detector centre
    # (the beam may be weaker than the disks).
    near = np.argsort(np.hypot(*(pos - centre).T), kind="stable")[:16]
    which = np.unique(np.concatenate([np.arange(min(n, 16)), near]))
    cands = pos[which]
    m = len(which)
    # For each candidate centre c, count maxima p whose mirror 2c - p is a maximum.
    mirror = (2 * cands[:, None, :] - pos[None, :, :]).reshape(-1, 2)
    d, _ = cKDTree(pos).query(mirror, distance_upper_bound=tol)
    hit = np.isfinite(d).reshape(m, n)
    hit[np.arange(m), which] = False
    score = hit.sum(axis=1)
    vals = vals[which]
    dist = np.hypot(*(cands - centre).T)
    if score.max() >= 2:
        best = np.flatnonzero(score == score.max())
        # Equal symmetry: the stronger, then the more central.
        return int(which[best[np.lexsort((dist[best], -vals[best]))][0]])
    inner = np.flatnonzero(dist <= 0.25 * min(qshape))
    if inner.size:
        return int(which[inner[np.argmax(vals[inner])]])  # strongest near the centre
    return -1
