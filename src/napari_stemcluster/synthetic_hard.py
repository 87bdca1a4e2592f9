"""Harder synthetic 4D-STEM scans: bent grains, overlaps, thickness, mistilt, vacuum.

:func:`make_hard_scan` extends the model of
:func:`napari_stemcluster.synthetic.make_polycrystal` (same particles, grains,
Bragg templates and Poisson counts) with what makes real data hard to segment:

- **gradual transitions inside a grain** (``bend``): the lattice of every grain
  rotates continuously along a random direction, ``bend`` degrees per scan
  pixel, as in a bent or mosaic crystal;
- **small mistilts** (``mistilt``): along the same direction the relative
  intensities of the reflections drift (excitation errors of a slightly
  tilting crystal), by up to ``mistilt`` of their value per 10 pixels;
- **thickness variation** (``thickness_variation``): a smooth random field
  scales the scattering of the particles by ``1 ± thickness_variation``;
- **overlapping particles** (``overlap``): that many extra single-grain
  particles are placed across the edge of existing ones; where two lattices
  overlap the pattern holds both, and the truth gives the overlap its own
  label (it is a distinct diffraction signature);
- **vacuum or liquid** (``background``): in vacuum nothing scatters outside the
  particles, the electrons the liquid would scatter stay in the direct beam,
  so background patterns are all alike (mean similarity near 1);
- any detector size from 16 pixels (48-256 in the benchmarks).

The truth is the same kind of :class:`~napari_stemcluster.synthetic.SyntheticScan`:
``grains`` 0 for background, one id per grain (and per overlap region).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from . import synthetic as _syn
from .synthetic import SyntheticScan

__all__ = ["make_hard_scan"]

#: Orientation step (degrees) of the templates a bent grain is built from;
#: positions between two steps mix the two templates linearly.
_BEND_STEP = 0.5


def make_hard_scan(
    scan_shape: Sequence[int] = (48, 48),
    detector_shape: Sequence[int] = (64, 64),
    *,
    background: str = "liquid",
    dose: float = 6000.0,
    boundary_width: float = 0.5,
    bend: float = 0.0,
    mistilt: float = 0.0,
    thickness_variation: float = 0.0,
    overlap: int = 0,
    n_particles: int = 5,
    grains_per_particle: int | Sequence[int] = (1, 3),
    seed: int = 0,
) -> SyntheticScan:
    """Simulate a 4D-STEM scan of nanoparticles with the hard cases of real data.

    Parameters
    ----------
    scan_shape, detector_shape : (int, int)
        Scan positions and detector pixels (detector at least 16 each).
    background : {"liquid", "vacuum"}
        What surrounds the particles.
    dose : float
        As for :func:`~napari_stemcluster.synthetic.make_polycrystal`.
    boundary_width : float
        Width (scan pixels) of the mixing across grain boundaries and
        particle edges.
    bend : float
        In-plane lattice rotation, degrees per scan pixel, inside each grain.
    mistilt : float
        Relative drift of the reflection intensities per 10 scan pixels.
    thickness_variation : float
        Amplitude (0-0.9) of a smooth random thickness field.
    overlap : int
        Number of extra particles placed overlapping existing ones.
    n_particles : int
        Number of (non-overlapping) particles before the extra ones.
    grains_per_particle : int or (int, int)
        Grains per particle, or an inclusive range.
    seed : int
        Random seed; geometry and orientations depend on it only (not on
        ``dose``, ``boundary_width`` or ``background``).

    Returns
    -------
    SyntheticScan
        ``params`` records every argument.

    Examples
    --------
    >>> from napari_stemcluster.synthetic_hard import make_hard_scan
    >>> scan = make_hard_scan((24, 24), (32, 32), n_particles=2, bend=0.5, overlap=1)
    >>> scan.cube.shape, scan.cube.dtype
    ((24, 24, 32, 32), dtype('uint16'))
    >>> int(scan.grains.max()) == scan.n_grains
    True
    """
    scan_shape = _syn._shape2(scan_shape, "scan_shape", minimum=4)
    detector_shape = _syn._shape2(detector_shape, "detector_shape", minimum=16)
    if background not in ("liquid", "vacuum"):
        raise ValueError(f"background must be 'liquid' or 'vacuum'; got {background!r}")
    dose = _syn._positive(dose, "dose")
    boundary_width = _syn._float(boundary_width, "boundary_width", minimum=0.0)
    bend = _syn._float(bend, "bend", minimum=0.0)
    mistilt = _syn._float(mistilt, "mistilt", minimum=0.0)
    thickness_variation = _syn._float(thickness_variation, "thickness_variation", minimum=0.0)
    if thickness_variation > 0.9:
        raise ValueError(f"thickness_variation must be <= 0.9; got {thickness_variation}")
    overlap = _syn._int(overlap, "overlap", minimum=0)
    n_particles = _syn._int(n_particles, "n_particles", minimum=0)
    gpp = _syn._grain_range(grains_per_particle)
    seed = _syn._int(seed, "seed", minimum=0)
    params = {
        "generator": "make_hard_scan",
        "scan_shape": list(scan_shape),
        "detector_shape": list(detector_shape),
        "background": background,
        "dose": dose,
        "boundary_width": boundary_width,
        "bend": bend,
        "mistilt": mistilt,
        "thickness_variation": thickness_variation,
        "overlap": overlap,
        "n_particles": n_particles,
        "grains_per_particle": list(gpp),
        "seed": seed,
    }
    structure_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    srng = np.random.default_rng(structure_seq)
    g200 = 0.16 * min(detector_shape)
    lo, hi = 0.09 * min(scan_shape), 0.17 * min(scan_shape)
    radius_range = (max(lo, 1.5), max(hi, 2.0))
    particles = _syn._place_particles(srng, scan_shape, n_particles, radius_range)
    grains = _syn._make_grains(srng, particles, gpp, detector_shape, g200)
    weights, truth, _ = _syn._scan_weights(scan_shape, particles, grains, 1.0, boundary_width)

    # Extra particles across the edge of existing ones (one grain each).
    extra_truth = np.zeros(scan_shape, np.int32)
    for _ in range(overlap if particles else 0):
        host = particles[int(srng.integers(len(particles)))]
        r = srng.uniform(*radius_range) * 0.8
        ang = srng.uniform(0, 2 * math.pi)
        dist = host["a"] * 0.9
        centre = host["centre"] + dist * np.array([math.cos(ang), math.sin(ang)])
        centre = np.clip(centre, r + 1, np.array(scan_shape, float) - r - 2)
        part = {"centre": centre, "a": r, "b": r * 0.9, "phi": srng.uniform(0, math.pi)}
        part["r_max"] = radius_range[1]
        new = _syn._make_grains(srng, [part], (1, 1), detector_shape, g200)
        w2, t2, _ = _syn._scan_weights(scan_shape, [part], new, 1.0, boundary_width)
        grains.extend(new)
        extra = np.zeros((weights.shape[0], 1), np.float32)
        extra[:, 0] = w2[:, 2]
        weights = np.concatenate([weights, extra], axis=1)
        extra_truth[t2 > 0] = len(grains)

    n_grains = len(grains)
    rx, ry = scan_shape
    xs, ys = np.meshgrid(np.arange(rx, dtype=float), np.arange(ry, dtype=float), indexing="ij")
    gw = weights[:, 2:].reshape(rx, ry, n_grains).copy()
    if thickness_variation > 0:
        field = ndimage.gaussian_filter(srng.standard_normal(scan_shape), 0.15 * min(scan_shape))
        field /= max(np.abs(field).max(), 1e-12)
        gw *= (1.0 + thickness_variation * field)[..., None]

    # Components: beam, background, then for each grain its templates.
    comps = [
        _syn._disk_pattern(detector_shape, np.zeros((1, 2)), np.ones(1), g200).ravel(),
        _syn._liquid_pattern(detector_shape, g200).ravel(),
    ]
    cols = [weights[:, 0], weights[:, 1]]
    for g, grain in enumerate(grains):
        w = gw[..., g]
        on = w > 0
        if not on.any():
            continue
        pts, length = _reflections(grain["zone"], detector_shape, g200)
        base = np.exp(-((length / _syn._BRAGG_DECAY) ** 2)) * srng.uniform(0.5, 1.0, len(length))
        drift = srng.choice((-1.0, 1.0), len(length))
        direction = srng.uniform(0, 2 * math.pi)
        # Signed distance along the grain's bend direction from its centroid.
        cx, cy = xs[on].mean(), ys[on].mean()
        d = (xs - cx) * math.cos(direction) + (ys - cy) * math.sin(direction)
        if bend > 0 or mistilt > 0:
            span = np.abs(d[on]).max() + 1.0
            if bend > 0:
                n_lv = int(np.clip(math.ceil(2 * span * bend / _BEND_STEP) + 1, 2, 64))
            else:
                n_lv = int(np.clip(span + 1, 2, 16))
            levels = np.linspace(-span, span, n_lv)
        else:
            levels = np.zeros(1)
        # Split each position's weight between the two nearest levels.
        pos = np.interp(d, levels, np.arange(levels.size))
        k0 = np.floor(pos).astype(int)
        k1 = np.minimum(k0 + 1, levels.size - 1)
        frac = pos - k0
        for k, dk in enumerate(levels):
            inten = base * np.clip(1.0 + mistilt * drift * dk / 10.0, 0.05, None)
            angle = grain["angle"] + bend * dk
            comps.append(_template(pts, inten, angle, detector_shape, g200))
            share = np.where(k0 == k, 1 - frac, 0.0) + np.where(k1 == k, frac, 0.0)
            cols.append((w * share).ravel().astype(np.float32))
    weights = np.stack(cols, axis=1).astype(np.float32)
    comps = np.stack(comps).astype(np.float32)
    if background == "vacuum":
        # No liquid: its electrons stay in the direct beam.
        weights[:, 0] += weights[:, 1]
        weights[:, 1] = 0.0

    cube = np.empty((rx, ry, *detector_shape), np.uint16)
    _syn._render(
        cube.reshape(rx * ry, -1),
        weights * np.float32(dose),
        comps,
        np.random.default_rng(noise_seq),
    )
    both = (truth > 0) & (extra_truth > 0)
    truth = np.where(extra_truth > 0, extra_truth, truth)
    n_ids = n_grains
    if both.any():
        # Two lattices in one pattern: a class of its own.
        n_ids += 1
        truth[both] = n_ids
    angles = [g["angle"] for g in grains] + ([np.nan] if n_ids > n_grains else [])
    zones = tuple(g["zone"] for g in grains) + (("overlap",) if n_ids > n_grains else ())
    return SyntheticScan(
        cube=cube,
        grains=truth.astype(np.int32),
        particles=truth > 0,
        orientations=np.array(angles, np.float64),
        r_pixel_size=1.0,
        r_units="nm",
        q_pixel_size=float((2.0 / _syn.AU_LATTICE_A) / g200),
        q_units="A^-1",
        params=params,
        zone_axes=zones,
    )


def _reflections(zone, detector_shape, g200):
    pts = _syn._reciprocal_lattice(zone)
    length = np.hypot(pts[:, 0], pts[:, 1])
    reach = 0.5 * math.hypot(*detector_shape) + _syn._disk_radius(g200)
    keep = (length * g200 <= reach) & (length <= _syn._BRAGG_DECAY * math.sqrt(math.log(1e4)))
    return pts[keep], length[keep]


def _template(pts, intensity, angle, detector_shape, g200):
    theta = math.radians(angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return _syn._disk_pattern(detector_shape, pts @ rot.T * g200, intensity, g200).ravel()
