"""A synthetic 5D-STEM growth series with scripted grain events.

:func:`make_growth_events` renders an in-situ series in which every grain
has a known identity through time and a script of events happens: a grain
nucleates, two particles grow into each other and merge, a grain rotates, a
grain is hidden for one time step, a grain splits in two and a grain
dissolves. It is the ground truth for following grains through time
(:mod:`napari_stemcluster.core.tracking`). Patterns are drawn with the same
physics as :func:`napari_stemcluster.synthetic.make_polycrystal` (Bragg disks,
amorphous liquid ring, direct beam, Poisson counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import synthetic as _syn

__all__ = ["GrowthSeries", "make_growth_events"]


@dataclass
class GrowthSeries:
    """A synthetic 5D-STEM series with its ground truth.

    Attributes
    ----------
    cube : ndarray of uint16, shape (T, Rx, Ry, Qx, Qy)
        Diffraction data.
    grains : ndarray of int32, shape (T, Rx, Ry)
        True grain map; 0 is liquid, ``g`` is the same grain at every step.
    areas : ndarray of int64, shape (T, G + 1)
        Pixels of each grain per step (column 0 is the liquid).
    orientations : ndarray of float64, shape (T, G + 1)
        In-plane lattice rotation of each grain per step, in degrees; NaN
        where the grain is absent (column 0 unused).
    events : list of tuple
        Scripted events ``(time, kind, grain, other)``: ``kind`` is
        ``"appear"``, ``"disappear"``, ``"merge"`` (``other`` merges into
        ``grain``) or ``"split"`` (``other`` splits off ``grain``); ``other``
        is 0 when there is none. ``time`` is the first step showing the
        change.
    hidden : dict
        ``{grain: [steps]}``: steps at which a grain is not visible although
        it exists before and after.
    roles : dict
        Grain id of each scripted role (``"steady"``, ``"rotating"``,
        ``"nucleating"``, ``"merge_target"``, ``"merge_source"``,
        ``"hidden"``, ``"splitting"``, ``"split_off"``, ``"dissolving"``).
    r_pixel_size, r_units, q_pixel_size, q_units, t_step, t_units
        Calibration.
    params : dict
        The generator's arguments.
    """

    cube: np.ndarray
    grains: np.ndarray
    areas: np.ndarray
    orientations: np.ndarray
    events: list
    hidden: dict
    roles: dict
    r_pixel_size: float
    r_units: str
    q_pixel_size: float
    q_units: str
    t_step: float
    t_units: str
    params: dict = field(default_factory=dict)

    @property
    def n_grains(self) -> int:
        """Number of grain identities ``G``."""
        return int(self.areas.shape[1] - 1)

    @property
    def calibration(self) -> dict:
        """Pixel sizes, time step and units as a dict."""
        keys = ("r_pixel_size", "r_units", "q_pixel_size", "q_units", "t_step", "t_units")
        return {k: getattr(self, k) for k in keys}


# Scripted grains on a unit square (centres as fractions of the scan) with
# radii as fractions of the smaller scan side at the first and last step;
# ``on`` is the (first, last + 1) step as fractions of the series.
_STEADY, _ROTATING, _NUCLEATING, _MERGE_T, _MERGE_S = 1, 2, 3, 4, 5
_HIDDEN, _SPLITTING, _SPLIT_OFF, _DISSOLVING = 6, 7, 8, 9
_ROLES = {
    "steady": _STEADY,
    "rotating": _ROTATING,
    "nucleating": _NUCLEATING,
    "merge_target": _MERGE_T,
    "merge_source": _MERGE_S,
    "hidden": _HIDDEN,
    "splitting": _SPLITTING,
    "split_off": _SPLIT_OFF,
    "dissolving": _DISSOLVING,
}
#: (centre, first radius, last radius) per particle-forming grain.
_LAYOUT = {
    _STEADY: ((0.18, 0.18), 0.065, 0.10),
    _ROTATING: ((0.18, 0.50), 0.075, 0.105),
    _NUCLEATING: ((0.18, 0.82), 0.045, 0.09),
    _MERGE_T: ((0.50, 0.13), 0.065, 0.125),
    _MERGE_S: ((0.50, 0.33), 0.055, 0.11),
    _HIDDEN: ((0.50, 0.72), 0.075, 0.10),
    _SPLITTING: ((0.82, 0.20), 0.09, 0.11),
    _DISSOLVING: ((0.82, 0.65), 0.095, 0.0),
}


def make_growth_events(
    scan_shape: Sequence[int] = (80, 80),
    detector_shape: Sequence[int] = (32, 32),
    *,
    n_times: int = 8,
    dose: float = 6000.0,
    rotation_per_step: float = 4.0,
    t_step: float = 2.0,
    seed: int = 0,
) -> GrowthSeries:
    """Simulate a 5D-STEM growth series with known grain identities and events.

    Eight particles in a liquid, one grain each, grow (or shrink) linearly
    in time, and the script makes things happen to them: grain
    ``roles["nucleating"]`` appears at step ``n_times // 4``; particles
    ``roles["merge_target"]`` and ``roles["merge_source"]`` grow into each
    other and, from the first step at which they touch, form one grain with
    the target's lattice; grain ``roles["rotating"]`` turns by
    ``rotation_per_step`` degrees per step; grain ``roles["hidden"]`` is
    invisible (rendered as liquid) at step ``n_times // 2``; grain
    ``roles["splitting"]`` loses a third of its area to a new grain
    ``roles["split_off"]`` (with another lattice) at step ``5 n_times // 8``;
    grain ``roles["dissolving"]`` shrinks and is gone at step
    ``3 n_times // 4``.

    Parameters
    ----------
    scan_shape : (int, int)
        Scan positions ``(Rx, Ry)``, at least 48 each.
    detector_shape : (int, int)
        Detector pixels ``(Qx, Qy)``, at least 16 each.
    n_times : int
        Number of time steps, at least 8.
    dose : float
        Expected counts of a pattern through the thickest part of a particle.
    rotation_per_step : float
        Rotation of the rotating grain between steps, in degrees.
    t_step : float
        Time between steps, in seconds (recorded as calibration).
    seed : int
        Seed of the orientations and of the counting noise.

    Returns
    -------
    GrowthSeries

    Examples
    --------
    >>> from napari_stemcluster.synthetic_series import make_growth_events
    >>> s = make_growth_events((48, 48), (16, 16), n_times=8)
    >>> s.cube.shape, s.grains.shape
    ((8, 48, 48, 16, 16), (8, 48, 48))
    >>> sorted(kind for _, kind, _, _ in s.events)
    ['appear', 'disappear', 'merge', 'split']
    >>> s.hidden
    {6: [4]}
    """
    scan_shape = _syn._shape2(scan_shape, "scan_shape", minimum=48)
    detector_shape = _syn._shape2(detector_shape, "detector_shape", minimum=16)
    n_times = _syn._int(n_times, "n_times", minimum=8)
    dose = _syn._positive(dose, "dose")
    rotation_per_step = _syn._float(rotation_per_step, "rotation_per_step", minimum=-90.0)
    t_step = _syn._positive(t_step, "t_step")
    seed = _syn._int(seed, "seed", minimum=0)
    params = {
        "scan_shape": list(scan_shape),
        "detector_shape": list(detector_shape),
        "n_times": n_times,
        "dose": dose,
        "rotation_per_step": rotation_per_step,
        "t_step": t_step,
        "seed": seed,
    }
    t_nucleate = n_times // 4
    t_hidden = n_times // 2
    t_split = (5 * n_times) // 8
    t_gone = (3 * n_times) // 4

    structure_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    srng = np.random.default_rng(structure_seq)
    g200 = 0.16 * min(detector_shape)
    n_grains = _DISSOLVING
    base_angle = srng.uniform(0.0, 360.0, n_grains + 1)
    zones = ["[001]" if srng.random() < 0.5 else "[011]" for _ in range(n_grains + 1)]
    # The split-off grain's lattice must differ clearly from its parent's.
    base_angle[_SPLIT_OFF] = base_angle[_SPLITTING] + 30.0
    zones[_SPLIT_OFF] = "[011]" if zones[_SPLITTING] == "[001]" else "[001]"
    intensity_seeds = srng.integers(0, 2**31, n_grains + 1)

    def template(g, angle):
        # The same reflection intensities at every angle: a rotating grain
        # keeps its excitation errors.
        rng = np.random.default_rng(int(intensity_seeds[g]))
        return _syn._grain_pattern(rng, detector_shape, g200, zones[g], angle)

    side = min(scan_shape)
    x = np.arange(scan_shape[0], dtype=np.float64)[:, None]
    y = np.arange(scan_shape[1], dtype=np.float64)[None, :]
    frac = np.linspace(0.0, 1.0, n_times)
    beam = _syn._disk_pattern(detector_shape, np.zeros((1, 2)), np.ones(1), g200)
    liquid = _syn._liquid_pattern(detector_shape, g200)

    # Merging: the first step at which the two particles touch.
    (ct, rt0, rt1), (cs, rs0, rs1) = _LAYOUT[_MERGE_T], _LAYOUT[_MERGE_S]
    gap = math.hypot((ct[0] - cs[0]) * scan_shape[0], (ct[1] - cs[1]) * scan_shape[1])
    radii_sum = (rt0 + rs0 + (rt1 + rs1 - rt0 - rs0) * frac) * side
    touching = np.flatnonzero(radii_sum >= gap)
    t_merge = int(touching[0]) if touching.size else n_times

    frame_seqs = noise_seq.spawn(n_times)
    grains = np.zeros((n_times, *scan_shape), np.int32)
    orient = np.full((n_times, n_grains + 1), np.nan)
    cube = np.empty((n_times, *scan_shape, *detector_shape), np.uint16)
    for t in range(n_times):
        truth = np.zeros(scan_shape, np.int32)
        thick = np.zeros(scan_shape)
        for g, (centre, r0, r1) in _LAYOUT.items():
            if g == _NUCLEATING and t < t_nucleate:
                continue
            if g == _DISSOLVING and t >= t_gone:
                continue
            if g == _NUCLEATING:
                f = (t - t_nucleate) / max(1, n_times - 1 - t_nucleate)
            elif g == _DISSOLVING:
                # Shrinks to half its radius, then is gone.
                f, r1 = t / max(1, t_gone - 1), r0 * 0.5
            else:
                f = frac[t]
            radius = (r0 + (r1 - r0) * f) * side
            cx, cy = centre[0] * scan_shape[0], centre[1] * scan_shape[1]
            dist = radius - np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            inside = dist > 0
            if g == _HIDDEN and t == t_hidden:
                continue
            # A dome-shaped thickness with a sharp edge.
            rho2 = np.clip(1.0 - dist / max(radius, 1e-9), 0.0, 1.0) ** 2
            t_map = np.where(inside, 0.6 + 0.4 * np.sqrt(1.0 - rho2), 0.0)
            owner = g
            if g == _MERGE_S and t >= t_merge:
                owner = _MERGE_T
            part = truth.copy()
            part[inside] = owner
            if g == _SPLITTING and t >= t_split:
                # A straight boundary cuts off a third of the particle's width.
                cut = inside & (y - cy > radius / 3.0)
                part[cut] = _SPLIT_OFF
            take = inside & (t_map > thick)
            truth[take] = part[take]
            thick = np.maximum(thick, t_map)
        present = np.unique(truth[truth > 0])
        for g in present:
            angle = base_angle[g] + (rotation_per_step * t if g == _ROTATING else 0.0)
            orient[t, g] = angle % 360.0
        # Component weights per position: beam, liquid, one per grain.
        comps = [beam, liquid] + [template(g, orient[t, g]) for g in present]
        weights = np.zeros((truth.size, len(comps)), np.float32)
        flat_thick = thick.ravel()
        weights[:, 0] = _syn._BEAM_WEIGHT * (1.0 - (1.0 - _syn._BEAM_IN_PARTICLE) * flat_thick)
        weights[:, 1] = _syn._LIQUID_WEIGHT * (1.0 - (1.0 - _syn._LIQUID_IN_PARTICLE) * flat_thick)
        for k, g in enumerate(present):
            sel = truth.ravel() == g
            weights[sel, 2 + k] = _syn._BRAGG_WEIGHT * flat_thick[sel]
        weights /= _syn._FULL_WEIGHT
        stack = np.stack(comps).reshape(len(comps), -1).astype(np.float32)
        frame_rng = np.random.default_rng(frame_seqs[t])
        _syn._render(
            cube[t].reshape(-1, stack.shape[1]), weights * np.float32(dose), stack, frame_rng
        )
        grains[t] = truth

    areas = np.stack([np.bincount(g.ravel(), minlength=n_grains + 1) for g in grains])
    events = [(t_nucleate, "appear", _NUCLEATING, 0)]
    if t_merge < n_times:
        events.append((t_merge, "merge", _MERGE_T, _MERGE_S))
    events += [(t_split, "split", _SPLITTING, _SPLIT_OFF), (t_gone, "disappear", _DISSOLVING, 0)]
    events.sort()
    q_pixel = (2.0 / _syn.AU_LATTICE_A) / g200
    return GrowthSeries(
        cube=cube,
        grains=grains,
        areas=areas.astype(np.int64),
        orientations=orient,
        events=events,
        hidden={_HIDDEN: [t_hidden]},
        roles=dict(_ROLES),
        r_pixel_size=1.0,
        r_units="nm",
        q_pixel_size=float(q_pixel),
        q_units="A^-1",
        t_step=t_step,
        t_units="s",
        params=params,
    )
