"""Synthetic 4D-STEM and in-situ 5D-STEM data of polycrystalline nanoparticles.

The generator produces a diffraction cube together with its ground truth
(grain map, particle mask, grain orientations), so that segmentations can be
scored quantitatively (see :mod:`napari_stemcluster.core.metrics`). It uses
only numpy and scipy and is fast enough for tests, sample data and demos.

Model
-----
Gold-like fcc nanoparticles (ellipses of random size and aspect ratio) sit in
a liquid. Each particle is split into one or more grains (a Voronoi partition
of the particle), and every grain is a single crystal seen along an fcc
``[001]`` or ``[011]`` zone axis with its own in-plane rotation. The expected
diffraction pattern at scan position ``x`` is a weighted sum of a few fixed
components::

    lambda(x, q) = dose * (w_beam(x) B(q) + w_liquid(x) L(q)
                           + sum_g w_g(x) G_g(q))

where ``B`` is the direct-beam disk at the pattern centre, ``L`` the broad,
diffuse scattering of the liquid (an amorphous ring over a broad halo) and
``G_g`` the Bragg-disk pattern of grain ``g`` (disk intensity decaying with
``|g|``), each normalised to unit sum. The weights encode the particle
thickness, the soft particle edge and the mixing of two grains across a grain
boundary over ``boundary_width`` scan pixels (the probe overlaps both); larger
particles are thicker and scatter more. The recorded pattern is a Poisson
draw of ``lambda``. A particle thus scatters
strongly into a few sharp disks, which makes neighbouring patterns of one
grain nearly identical, whereas the liquid scatters weakly and diffusely, so
its patterns are dominated by counting noise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special

__all__ = ["SyntheticScan", "make_polycrystal"]

#: fcc lattice parameter of gold, in angstrom; sets the reciprocal-space scale.
AU_LATTICE_A = 4.078

# Relative strength of the pattern components. Most counts of a particle
# pattern fall into a few sharp Bragg disks; the direct beam is kept modest (a
# strong direct beam, identical everywhere, would make every pattern alike).
# Away from particles only the direct beam and the weak, diffuse liquid
# scattering remain, so liquid patterns hold fewer counts spread over many
# pixels and are dominated by counting noise. The values are tuned so that at
# the default dose neighbouring patterns of one grain have a cosine
# similarity of about 0.96, those across a grain boundary mostly below 0.9,
# and the liquid's mean neighbour similarity (about 0.55) sits well below the
# grains' (about 0.86), with the liquid forming the dominant histogram peak
# (which the triangle threshold relies on).
_BRAGG_WEIGHT = 0.725
_BEAM_WEIGHT = 0.025
_LIQUID_WEIGHT = 0.25
#: Fraction of the direct beam that remains where a particle scatters it.
_BEAM_IN_PARTICLE = 0.6
#: Fraction of the liquid signal that remains where a particle displaces it.
_LIQUID_IN_PARTICLE = 0.5
#: Total weight at full particle thickness; dividing by it makes ``dose`` the
#: expected count of such a pattern.
_FULL_WEIGHT = (
    _BRAGG_WEIGHT + _BEAM_WEIGHT * _BEAM_IN_PARTICLE + _LIQUID_WEIGHT * _LIQUID_IN_PARTICLE
)
#: |g| (in units of |g200|) over which Bragg intensities fall by 1/e.
_BRAGG_DECAY = 0.7
#: Radius of the direct-beam and Bragg disks, in units of |g200|.
_DISK_RADIUS = 0.25
#: Bragg templates of two grains of one particle must be at least this
#: dissimilar (cosine), so that the grains are distinguishable.
_MAX_GRAIN_COSINE = 0.25


@dataclass
class SyntheticScan:
    """A synthetic 4D-STEM scan or 5D-STEM series with its ground truth.

    Attributes
    ----------
    cube : ndarray of uint16
        Diffraction data, shape ``(Rx, Ry, Qx, Qy)`` or ``(T, Rx, Ry, Qx, Qy)``.
    grains : ndarray of int32
        True grain map, shape ``(Rx, Ry)`` or ``(T, Rx, Ry)``: 0 is the liquid
        background, ``1..G`` are grain ids (the same id is the same grain at
        every time step).
    particles : ndarray of bool
        Same shape as ``grains``: True inside a particle.
    orientations : ndarray of float64, shape (G,)
        In-plane lattice rotation of each grain, in degrees; grain ``g`` is
        ``orientations[g - 1]``.
    r_pixel_size, r_units : float, str
        Scan step and its unit.
    q_pixel_size, q_units : float, str
        Detector pixel size in reciprocal space and its unit.
    params : dict
        Every argument of the generator call (JSON-serialisable), enough to
        regenerate the same data.
    zone_axes : tuple of str
        Zone axis (``"[001]"`` or ``"[011]"``) of each grain, matching
        ``orientations``.
    """

    cube: np.ndarray
    grains: np.ndarray
    particles: np.ndarray
    orientations: np.ndarray
    r_pixel_size: float
    r_units: str
    q_pixel_size: float
    q_units: str
    params: dict
    zone_axes: tuple = field(default_factory=tuple)

    @property
    def n_grains(self) -> int:
        """Number of grains ``G``."""
        return int(self.orientations.shape[0])


def make_polycrystal(
    scan_shape: Sequence[int] = (64, 64),
    detector_shape: Sequence[int] = (64, 64),
    *,
    n_times: int | None = None,
    n_particles: int = 6,
    grains_per_particle: int | Sequence[int] = (1, 3),
    dose: float = 6000.0,
    boundary_width: float = 0.5,
    growth: float = 2.0,
    radius_range: Sequence[float] | None = None,
    seed: int | None = 0,
) -> SyntheticScan:
    """Simulate a 4D-STEM scan (or a 5D-STEM growth series) of nanoparticles.

    Polycrystalline gold-like nanoparticles in a liquid: each particle is
    split into grains with their own lattice orientation, every grain gives a
    spot pattern of Bragg disks, the liquid adds a broad amorphous ring
    everywhere, patterns mix across grain boundaries, and counts are Poisson
    distributed.

    Parameters
    ----------
    scan_shape : (int, int)
        Number of scan positions ``(Rx, Ry)``.
    detector_shape : (int, int)
        Detector size ``(Qx, Qy)``, at least 16 pixels each; need not be
        square.
    n_times : int or None
        None gives a 4D cube. An int gives a 5D series of that many frames in
        which the particles grow (radii increase linearly in time from
        ``1/growth`` of their final size), grains keep their identities and
        orientations, and every frame has fresh counting noise.
    n_particles : int
        Number of particles; they do not overlap (at their final size) and
        stay inside the scan.
    grains_per_particle : int or (int, int)
        Number of grains per particle, or an inclusive range to draw from.
    dose : float
        Expected electron counts of a pattern through the thickest part of a
        particle of the largest size; thinner parts hold fewer, liquid
        patterns about a third of it, spread thinly over a broad ring. The
        default is a moderate dose: neighbouring raw patterns of one grain
        have a cosine similarity of about 0.96, patterns across a grain
        boundary mostly below 0.9, and the liquid's mean neighbour similarity
        (about 0.55) lies well below the grains'. Ten times less (600) brings
        the similarity within a grain down to about 0.7.
    boundary_width : float
        Width, in scan pixels, over which the pattern changes from one grain
        to the next (and from particle to liquid at a particle's edge), as
        when the probe overlaps both. 0 gives sharp boundaries. Positions
        within about a quarter of this width of a boundary hold nearly even
        mixtures, and two such neighbours on either side of a boundary can be
        more similar than 0.9; wider boundaries make that more frequent.
    growth : float
        Ratio of the final to the first particle radius in a 5D series
        (>= 1). Ignored for 4D.
    radius_range : (float, float) or None
        Range of the particles' mean radius in scan pixels (final size in a
        5D series). Default ``(0.08, 0.17) * min(scan_shape)``.
    seed : int or None
        Seed of the random generator. The particle geometry and orientations
        depend on the seed only, not on ``dose``, ``n_times`` or
        ``boundary_width``, so data sets differing in those share their
        ground truth. None draws a fresh seed (recorded in ``params``).

    Returns
    -------
    SyntheticScan
        The cube (uint16; counts saturate at 65535) and its ground truth.
        The scan step is 1 nm; the detector is calibrated so that the Au
        {200} reflections lie at 0.16 of the smaller detector size from the
        centre.

    Raises
    ------
    ValueError
        If an argument is out of range, or the particles do not fit into the
        scan.

    Notes
    -----
    Poisson counts are drawn with a tabulated inverse distribution function
    for expectations below 16 and with numpy's sampler above, which is
    several times faster than drawing every pixel with
    ``numpy.random.Generator.poisson``. Each expectation below 16 is randomly
    rounded to one of the two neighbouring tabulated values (at most 3.2 %
    apart) so that its mean is kept; expectations below 1e-6 are raised to
    1e-6.

    Examples
    --------
    >>> from napari_stemcluster.synthetic import make_polycrystal
    >>> scan = make_polycrystal((32, 32), (32, 32), n_particles=2, seed=1)
    >>> scan.cube.shape, scan.cube.dtype
    ((32, 32, 32, 32), dtype('uint16'))
    >>> scan.grains.shape, int(scan.grains.max()) == scan.n_grains
    ((32, 32), True)
    >>> series = make_polycrystal((32, 32), (32, 32), n_times=3, n_particles=2)
    >>> series.cube.shape
    (3, 32, 32, 32, 32)
    >>> bool((series.particles.sum(axis=(1, 2)) > 0).all())
    True
    """
    scan_shape = _shape2(scan_shape, "scan_shape", minimum=1)
    detector_shape = _shape2(detector_shape, "detector_shape", minimum=16)
    if n_times is not None:
        n_times = _int(n_times, "n_times", minimum=1)
    n_particles = _int(n_particles, "n_particles", minimum=0)
    gpp = _grain_range(grains_per_particle)
    dose = _positive(dose, "dose")
    boundary_width = _float(boundary_width, "boundary_width", minimum=0.0)
    growth = _float(growth, "growth", minimum=1.0)
    if radius_range is None:
        lo, hi = 0.08 * min(scan_shape), 0.17 * min(scan_shape)
        radius_range = (max(lo, 1.5), max(hi, 2.0))
    radius_range = _radius_range(radius_range)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    seed = _int(seed, "seed", minimum=0)

    params = {
        "scan_shape": list(scan_shape),
        "detector_shape": list(detector_shape),
        "n_times": n_times,
        "n_particles": n_particles,
        "grains_per_particle": list(gpp),
        "dose": dose,
        "boundary_width": boundary_width,
        "growth": growth,
        "radius_range": list(radius_range),
        "seed": seed,
    }

    structure_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    srng = np.random.default_rng(structure_seq)

    g200 = 0.16 * min(detector_shape)  # detector pixels from centre to {200}
    particles = _place_particles(srng, scan_shape, n_particles, radius_range)
    grains = _make_grains(srng, particles, gpp, detector_shape, g200)

    # Pattern components: direct beam, liquid, then one template per grain.
    comps = np.empty((2 + len(grains), *detector_shape), np.float32)
    comps[0] = _disk_pattern(detector_shape, np.zeros((1, 2)), np.ones(1), g200)
    comps[1] = _liquid_pattern(detector_shape, g200)
    for i, grain in enumerate(grains):
        comps[2 + i] = grain["template"]
    comps = comps.reshape(len(comps), -1)

    n_frames = 1 if n_times is None else n_times
    if n_times is None or n_times == 1:
        scales = [1.0]
    else:
        scales = list(np.linspace(1.0 / growth, 1.0, n_frames))
    cube = np.empty((n_frames, *scan_shape, *detector_shape), np.uint16)
    truth = np.zeros((n_frames, *scan_shape), np.int32)
    inside = np.zeros((n_frames, *scan_shape), bool)
    for t, (scale, frame_seq) in enumerate(zip(scales, noise_seq.spawn(n_frames), strict=True)):
        weights, truth[t], inside[t] = _scan_weights(
            scan_shape, particles, grains, scale, boundary_width
        )
        _render(
            cube[t].reshape(-1, comps.shape[1]),
            weights * np.float32(dose),
            comps,
            np.random.default_rng(frame_seq),
        )

    if n_times is None:
        cube, truth, inside = cube[0], truth[0], inside[0]
    q_pixel = (2.0 / AU_LATTICE_A) / g200
    return SyntheticScan(
        cube=cube,
        grains=truth,
        particles=inside,
        orientations=np.array([g["angle"] for g in grains], np.float64),
        r_pixel_size=1.0,
        r_units="nm",
        q_pixel_size=float(q_pixel),
        q_units="A^-1",
        params=params,
        zone_axes=tuple(g["zone"] for g in grains),
    )


# --------------------------------------------------------------------------
# argument checks


def _int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def _float(value, name, minimum):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}; got {value}")
    return value


def _positive(value, name):
    value = _float(value, name, 0.0)
    if value <= 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    return value


def _shape2(shape, name, minimum):
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a pair of ints; got {shape!r}") from None
    if len(shape) != 2:
        raise ValueError(f"{name} must be a pair of ints; got {shape!r}")
    return tuple(_int(s, name, minimum) for s in shape)


def _grain_range(gpp):
    if isinstance(gpp, (int, np.integer)) and not isinstance(gpp, bool):
        gpp = (gpp, gpp)
    lo, hi = _shape2(gpp, "grains_per_particle", minimum=1)
    if lo > hi:
        raise ValueError(f"grains_per_particle must be (min, max) with min <= max; got {gpp!r}")
    return lo, hi


def _radius_range(rr):
    try:
        lo, hi = (float(v) for v in rr)
    except (TypeError, ValueError):
        raise ValueError(f"radius_range must be a pair of numbers; got {rr!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 1.0 <= lo <= hi):
        raise ValueError(f"radius_range must be (min, max) with 1 <= min <= max; got {rr!r}")
    return lo, hi


# --------------------------------------------------------------------------
# structure


def _place_particles(rng, scan_shape, n_particles, radius_range, tries=2000):
    """Random non-overlapping ellipses inside the scan (at their final size)."""
    placed = []
    gap = 2.0  # liquid pixels kept between particles
    for _ in range(n_particles):
        for _ in range(tries):
            radius = rng.uniform(*radius_range)
            aspect = rng.uniform(1.0, 1.35)
            a, b = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
            margin = a + 1.0
            lo = np.full(2, margin)
            hi = np.array(scan_shape, float) - 1.0 - margin
            if np.any(hi < lo):
                continue
            centre = rng.uniform(lo, hi)
            if all(np.hypot(*(centre - p["centre"])) >= a + p["a"] + gap for p in placed):
                placed.append(
                    {
                        "centre": centre,
                        "a": a,
                        "b": b,
                        "phi": rng.uniform(0.0, math.pi),
                        "r_max": radius_range[1],
                    }
                )
                break
        else:
            raise ValueError(
                f"cannot fit {n_particles} non-overlapping particles of radius "
                f"{radius_range[0]:g}-{radius_range[1]:g} into a scan of "
                f"{scan_shape[0]}x{scan_shape[1]}; use fewer or smaller particles "
                "or a larger scan"
            )
    return placed


def _make_grains(rng, particles, gpp, detector_shape, g200):
    """Grain seeds (in each particle's unit-disk frame) and orientations."""
    grains = []
    for pid, part in enumerate(particles):
        n = int(rng.integers(gpp[0], gpp[1] + 1))
        # Seeds spread around the particle centre so each grain gets a
        # sizeable wedge of the particle.
        start = rng.uniform(0.0, 2.0 * math.pi)
        angles = start + 2.0 * math.pi * (np.arange(n) + rng.uniform(-0.15, 0.15, n)) / n
        radii = rng.uniform(0.35, 0.6, n) if n > 1 else np.zeros(1)
        seeds = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        part["seeds"] = seeds
        part["grain_ids"] = []
        mine = []
        for _ in range(n):
            for _attempt in range(200):
                zone = "[001]" if rng.random() < 0.5 else "[011]"
                angle = float(rng.uniform(0.0, 360.0))
                template = _grain_pattern(rng, detector_shape, g200, zone, angle)
                if all(_cosine(template, other["template"]) <= _MAX_GRAIN_COSINE for other in mine):
                    break
            grain = {"particle": pid, "zone": zone, "angle": angle, "template": template}
            mine.append(grain)
            grains.append(grain)
            part["grain_ids"].append(len(grains))  # 1-based id
    return grains


def _cosine(a, b):
    return float(np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _reciprocal_lattice(zone):
    """In-plane reciprocal lattice points in units of |g200| (origin excluded)."""
    n = np.arange(-8, 9)
    h, k = np.meshgrid(n, n, indexing="ij")
    if zone == "[001]":
        # hk0 with h, k even: a square lattice with spacing g200.
        pts = np.stack([h.ravel(), k.ravel()], axis=1).astype(float)
    else:
        # h, k, -k all even or all odd: g = (h, k sqrt 2) / 2 in g200 units.
        keep = (h - k) % 2 == 0
        pts = np.stack([h[keep] / 2.0, k[keep] / math.sqrt(2.0)], axis=1)
    return pts[np.any(pts != 0, axis=1)]


def _disk_radius(g200):
    return max(1.2, _DISK_RADIUS * g200)


def _detector_grid(detector_shape):
    qx = np.arange(detector_shape[0], dtype=np.float64) - (detector_shape[0] - 1) / 2
    qy = np.arange(detector_shape[1], dtype=np.float64) - (detector_shape[1] - 1) / 2
    return qx[:, None], qy[None, :]


def _disk_pattern(detector_shape, centres, intensities, g200):
    """Sum of anti-aliased disks at ``centres`` (pixels from the pattern centre)."""
    qx, qy = _detector_grid(detector_shape)
    r = _disk_radius(g200)
    out = np.zeros(detector_shape, np.float64)
    for (cx, cy), inten in zip(centres, intensities, strict=True):
        dist = np.sqrt((qx - cx) ** 2 + (qy - cy) ** 2)
        out += inten * np.clip(r + 0.5 - dist, 0.0, 1.0)
    total = out.sum()
    return out / total if total > 0 else out


def _grain_pattern(rng, detector_shape, g200, zone, angle):
    """Bragg-disk pattern of one grain, normalised to unit sum."""
    pts = _reciprocal_lattice(zone)
    length = np.hypot(pts[:, 0], pts[:, 1])
    # Keep reflections that reach the detector and are not negligibly weak
    # (below 1e-4 of the strongest possible).
    reach = 0.5 * math.hypot(*detector_shape) + _disk_radius(g200)
    keep = (length * g200 <= reach) & (length <= _BRAGG_DECAY * math.sqrt(math.log(1e4)))
    pts, length = pts[keep], length[keep]
    theta = math.radians(angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    centres = pts @ rot.T * g200
    # Intensity falls with |g| (form factor and thermal diffuse damping); a
    # random factor per reflection mimics excitation errors of a slightly
    # tilted crystal.
    intensity = np.exp(-((length / _BRAGG_DECAY) ** 2)) * rng.uniform(0.5, 1.0, len(length))
    return _disk_pattern(detector_shape, centres, intensity, g200)


def _liquid_pattern(detector_shape, g200):
    """Diffuse scattering of the liquid: an amorphous ring over a broad halo."""
    qx, qy = _detector_grid(detector_shape)
    q = np.sqrt(qx**2 + qy**2) / g200
    ring = np.exp(-0.5 * ((q - 0.65) / 0.25) ** 2) + np.exp(-0.5 * (q / 2.5) ** 2)
    return ring / ring.sum()


def _scan_weights(scan_shape, particles, grains, scale, boundary_width):
    """Per-position component weights, the true grain map and particle mask.

    Returns weights of shape ``(Rx * Ry, 2 + G)`` (direct beam, liquid, one
    column per grain) in units of ``dose``.
    """
    rx, ry = scan_shape
    x = np.arange(rx, dtype=np.float64)[:, None]
    y = np.arange(ry, dtype=np.float64)[None, :]
    n_grains = len(grains)
    grain_w = np.zeros((rx, ry, n_grains))
    thick = np.zeros((rx, ry))
    truth = np.zeros((rx, ry), np.int32)
    for part in particles:
        a, b = part["a"] * scale, part["b"] * scale
        c, s = math.cos(part["phi"]), math.sin(part["phi"])
        dx, dy = x - part["centre"][0], y - part["centre"][1]
        u = (c * dx + s * dy) / a  # particle frame, unit disk
        v = (-s * dx + c * dy) / b
        rho = np.sqrt(u**2 + v**2)
        # Signed distance (pixels) to the ellipse edge, to first order.
        grad = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        dist = np.where(rho > 1e-9, (1.0 - rho) * rho / np.maximum(grad, 1e-12), min(a, b))
        edge = _ramp(dist, boundary_width)
        # Thicker in the middle, as for a rounded particle.
        t = edge * (0.6 + 0.4 * np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0)))
        # Larger particles are thicker and scatter more strongly (growing
        # particles spread sideways, like platelets, keeping their thickness).
        t *= 0.5 + 0.5 * min(1.0, math.sqrt(part["a"] * part["b"]) / part["r_max"])
        thick = np.maximum(thick, t)

        ids = part["grain_ids"]
        seeds = part["seeds"]
        # Squared distance to each seed in the unit-disk frame; the nearest
        # seed owns the position (Voronoi).
        d2 = np.stack([(u - sx) ** 2 + (v - sy) ** 2 for sx, sy in seeds], axis=-1)
        own = np.argmin(d2, axis=-1)
        d2_own = np.take_along_axis(d2, own[..., None], axis=-1)[..., 0]
        # Relative weight of each grain: 1 for the own grain; for grain k
        # s / (1 - s), where s is the share k would take at this distance
        # from the own/k bisector if only those two grains met, so that
        # after normalising two grains mix exactly as ``_ramp`` says.
        rel = np.zeros(d2.shape)
        scale_px = math.sqrt(a * b)  # unit-disk frame to pixels, roughly
        for k in range(len(seeds)):
            sep = np.hypot(*(seeds[k][:, None, None] - seeds[own].transpose(2, 0, 1)))
            with np.errstate(invalid="ignore", divide="ignore"):
                h = (d2[..., k] - d2_own) / (2.0 * sep) * scale_px
            share = np.where(sep > 0, 1.0 - _ramp(h, boundary_width), 0.0)
            rel[..., k] = share / (1.0 - np.minimum(share, 0.5))
        np.put_along_axis(rel, own[..., None], 1.0, axis=-1)
        mix = rel / rel.sum(axis=-1, keepdims=True)
        inside = dist > 0
        for k, gid in enumerate(ids):
            grain_w[..., gid - 1] += t * mix[..., k]
        truth[inside] = np.asarray(ids, np.int32)[own[inside]]

    beam = _BEAM_WEIGHT * (1.0 - (1.0 - _BEAM_IN_PARTICLE) * thick)
    liquid = _LIQUID_WEIGHT * (1.0 - (1.0 - _LIQUID_IN_PARTICLE) * thick)
    weights = np.empty((rx * ry, 2 + n_grains), np.float32)
    weights[:, 0] = beam.ravel() / _FULL_WEIGHT
    weights[:, 1] = liquid.ravel() / _FULL_WEIGHT
    weights[:, 2:] = grain_w.reshape(rx * ry, n_grains) * (_BRAGG_WEIGHT / _FULL_WEIGHT)
    return weights, truth, truth > 0


def _ramp(dist, width):
    """Share of the near side at signed distance ``dist`` from a boundary."""
    if width <= 0:
        return np.where(dist > 0, 1.0, np.where(dist < 0, 0.0, 0.5))
    return np.clip(0.5 + dist / width, 0.0, 1.0)


# --------------------------------------------------------------------------
# Poisson counts

#: Patterns rendered per block; keeps the float intermediates small.
_BLOCK_PIXELS = 1 << 19

# Tabulated Poisson sampler. Expectations are binned by their float32 bit
# pattern (sign-free exponent and the top _SUB mantissa bits), i.e. on a
# geometric grid with 2**_SUB steps per octave, between 2**_LO_EXP and
# 2**_HI_EXP.
_SUB = 5
_SHIFT = 23 - _SUB
_LO_EXP, _HI_EXP = -20, 4
_UBITS = 12
_KMAX = 64
_AMBIGUOUS = np.uint8(128)


def _level_code(exp):
    return int(np.array(2.0**exp, np.float32).view(np.int32) >> _SHIFT)


@functools.cache
def _poisson_table():
    """Inverse Poisson CDF for every tabulated expectation and ``u`` bin.

    Entry ``[level, bin]`` is the count for any ``u`` in the bin, or that
    count with the high bit set when the CDF jumps inside the bin (then the
    count is resolved exactly from ``cdf``).
    """
    base = _level_code(_LO_EXP)
    n_levels = _level_code(_HI_EXP) - base + 1
    codes = (np.arange(n_levels, dtype=np.int32) + base) << _SHIFT
    lam = codes.view(np.float32).astype(np.float64)
    cdf = special.pdtr(np.arange(_KMAX)[None, :], lam[:, None])
    cdf[:, -1] = 1.0
    edges = np.arange(2**_UBITS + 1, dtype=np.float64) / 2**_UBITS
    # One searchsorted over all rows: shift row i by 2 i to keep it sorted.
    shift = 2.0 * np.arange(n_levels)[:, None]
    pos = np.searchsorted((cdf + shift).ravel(), (edges[None, :] + shift).ravel())
    pos = pos.reshape(n_levels, -1) - _KMAX * np.arange(n_levels)[:, None]
    lo, hi = pos[:, :-1], pos[:, 1:]
    table = lo.astype(np.uint8) | np.where(hi > lo, _AMBIGUOUS, 0).astype(np.uint8)
    return base, table.ravel(), cdf


def _poisson(rng, lam, out):
    """Poisson counts of float32 expectations ``lam`` (1-D) into uint16 ``out``."""
    base, table, cdf = _poisson_table()
    # Expectations below the table are raised to its first level (adding at
    # most 1e-6 to the mean); those above are drawn exactly further down.
    clipped = np.clip(lam, np.float32(2.0**_LO_EXP), np.float32(2.0**_HI_EXP))
    bits = clipped.view(np.int32)
    # One random 32-bit word per pixel: the low bits round the expectation
    # to a table level, the high bits pick the bin of the uniform variate.
    rnd = rng.bit_generator.random_raw((lam.size + 1) // 2).view(np.uint32)
    rnd = rnd[: lam.size]
    low = (1 << _SHIFT) - 1
    # Round up with probability equal to the position between the two
    # neighbouring levels (the float32 mantissa is linear between them), so
    # the mean is kept exactly.
    up = (rnd & np.uint32(low)).view(np.int32) < (bits & np.int32(low))
    index = bits  # reuse the buffer: level index, then table index
    index >>= _SHIFT
    index -= base
    index += up
    index <<= _UBITS
    index |= (rnd >> np.uint32(32 - _UBITS)).view(np.int32)
    code = table[index]
    out[:] = code
    amb = np.flatnonzero(code >= _AMBIGUOUS)
    if amb.size:
        # The CDF jumps inside the bin: draw the uniform variate within the
        # bin and invert the exact CDF of that level.
        idx = index[amb]
        ubin = idx & ((1 << _UBITS) - 1)
        u = (ubin + rng.random(amb.size)) / 2**_UBITS
        out[amb] = (cdf[idx >> _UBITS] < u[:, None]).sum(axis=1)
    big = np.flatnonzero(lam >= np.float32(2.0**_HI_EXP))
    if big.size:
        out[big] = np.minimum(rng.poisson(lam[big].astype(np.float64)), 65535)


def _render(out, weights, comps, rng):
    """Expected patterns ``weights @ comps``, Poisson-sampled, into ``out``.

    ``weights[:, :2]`` (direct beam and liquid) are dense; the grain columns
    are non-zero only on their particle, so each block multiplies only the
    grain columns and rows it touches.
    """
    n_pos, n_pix = out.shape
    step = max(1, _BLOCK_PIXELS // n_pix)
    for p0 in range(0, n_pos, step):
        w = weights[p0 : p0 + step]
        lam = _matmul(w[:, :2], comps[:2])
        grain_w = w[:, 2:]
        rows = np.flatnonzero(grain_w.any(axis=1))
        if rows.size:
            cols = np.flatnonzero(grain_w[rows].any(axis=0))
            lam[rows] += _matmul(grain_w[np.ix_(rows, cols)], comps[2 + cols])
        _poisson(rng, lam.reshape(-1), out[p0 : p0 + step].reshape(-1))


def _matmul(a, b):
    # einsum's own loop rather than BLAS: the inner dimension is tiny, and a
    # multithreaded BLAS competing with other busy threads slows this down
    # many times over.
    return np.einsum("ik,kj->ij", a, b, optimize=False)
