"""Tests of the synthetic 4D/5D-STEM generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage, stats
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.filters import threshold_triangle

from napari_stemcluster import synthetic
from napari_stemcluster.core.metrics import (
    adjusted_rand_index,
    over_under_segmentation,
)
from napari_stemcluster.synthetic import SyntheticScan, make_polycrystal

OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shift_slices(n, d):
    """Slices ``src``, ``dst`` with ``dst = src + d`` inside ``range(n)``."""
    return slice(max(0, -d), n - max(0, d)), slice(max(0, d), n - max(0, -d))


def neighbour_cosines(cube):
    """Cosine of each raw pattern with its 8 scan neighbours, NaN off the scan."""
    rx, ry = cube.shape[:2]
    flat = cube.reshape(rx, ry, -1).astype(np.float32)
    norm = np.linalg.norm(flat, axis=-1, keepdims=True)
    flat /= np.where(norm > 0, norm, 1)
    sims = np.full((rx, ry, 8), np.nan, np.float32)
    for n, (dx, dy) in enumerate(OFFSETS):
        sx, tx = _shift_slices(rx, dx)
        sy, ty = _shift_slices(ry, dy)
        sims[sx, sy, n] = np.einsum("ijk,ijk->ij", flat[sx, sy], flat[tx, ty])
    return sims


def pair_similarities(sims, grains):
    """Similarities of neighbour pairs inside one grain and across two grains."""
    rx, ry = grains.shape
    within, across = [], []
    for n, (dx, dy) in enumerate(OFFSETS):
        sx, tx = _shift_slices(rx, dx)
        sy, ty = _shift_slices(ry, dy)
        a, b, s = grains[sx, sy], grains[tx, ty], sims[sx, sy, n]
        within.append(s[(a > 0) & (a == b)])
        across.append(s[(a > 0) & (b > 0) & (a != b)])
    return np.concatenate(within), np.concatenate(across)


def connected_clusters(sims, threshold=0.9, min_size=5):
    """Plain reference of the default segmentation: triangle mask on the mean
    similarity, connected components of neighbour pairs >= threshold, small
    clusters dropped."""
    rx, ry = sims.shape[:2]
    mean = np.nanmean(sims, axis=-1)
    mask = mean > threshold_triangle(mean)
    index = np.arange(rx * ry).reshape(rx, ry)
    rows, cols = [], []
    for n, (dx, dy) in enumerate(OFFSETS):
        sx, tx = _shift_slices(rx, dx)
        sy, ty = _shift_slices(ry, dy)
        ok = (sims[sx, sy, n] >= threshold) & mask[sx, sy] & mask[tx, ty]
        rows.append(index[sx, sy][ok])
        cols.append(index[tx, ty][ok])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(rx * ry,) * 2)
    _, labels = connected_components(graph, directed=False)
    labels = labels.reshape(rx, ry) + 1
    labels[~mask] = 0
    small = np.bincount(labels.ravel()) < min_size
    small[0] = True
    labels[small[labels]] = 0
    return np.unique(labels, return_inverse=True)[1].reshape(rx, ry), mask


@pytest.fixture(scope="module")
def default_scan():
    return make_polycrystal()


@pytest.fixture(scope="module")
def default_sims(default_scan):
    return neighbour_cosines(default_scan.cube)


# --------------------------------------------------------------------------
# shapes, dtypes, ground truth


def test_default_shapes_and_dtypes(default_scan):
    scan = default_scan
    assert isinstance(scan, SyntheticScan)
    assert scan.cube.shape == (64, 64, 64, 64)
    assert scan.cube.dtype == np.uint16
    assert scan.grains.shape == (64, 64)
    assert scan.grains.dtype == np.int32
    assert scan.particles.shape == (64, 64)
    assert scan.particles.dtype == bool
    g = scan.n_grains
    assert scan.orientations.shape == (g,)
    assert scan.orientations.dtype == np.float64
    assert np.all((scan.orientations >= 0) & (scan.orientations < 360))
    assert len(scan.zone_axes) == g
    assert set(scan.zone_axes) <= {"[001]", "[011]"}
    # 6 particles of 1..3 grains, every id 1..G present
    assert 6 <= g <= 18
    assert set(np.unique(scan.grains)) == set(range(g + 1))
    assert (scan.r_pixel_size, scan.r_units) == (1.0, "nm")
    assert scan.q_units == "A^-1"
    assert scan.q_pixel_size > 0
    assert scan.cube.max() > 0


def test_grains_inside_particles(default_scan):
    scan = default_scan
    assert np.array_equal(scan.particles, scan.grains > 0)
    assert not np.any(scan.grains[~scan.particles])
    # six separate particles, each a single connected blob
    _, n_blobs = ndimage.label(scan.particles)
    assert n_blobs == 6
    assert 0.1 < scan.particles.mean() < 0.6


def test_params_json_and_regenerate():
    scan = make_polycrystal((24, 20), (32, 24), n_particles=2, dose=500, seed=3)
    text = json.dumps(scan.params)
    again = make_polycrystal(**json.loads(text))
    assert np.array_equal(again.cube, scan.cube)
    assert np.array_equal(again.grains, scan.grains)
    assert scan.params["dose"] == 500.0
    assert scan.params["detector_shape"] == [32, 24]
    assert scan.params["n_times"] is None


def test_seed_none_is_recorded_and_reproducible():
    scan = make_polycrystal((16, 16), (16, 16), n_particles=1, seed=None)
    assert isinstance(scan.params["seed"], int)
    again = make_polycrystal(**scan.params)
    assert np.array_equal(again.cube, scan.cube)


def test_deterministic_for_a_seed():
    kw = dict(scan_shape=(20, 24), detector_shape=(24, 24), n_particles=2)
    a = make_polycrystal(**kw, seed=5)
    b = make_polycrystal(**kw, seed=5)
    c = make_polycrystal(**kw, seed=6)
    assert np.array_equal(a.cube, b.cube)
    assert np.array_equal(a.grains, b.grains)
    assert np.array_equal(a.orientations, b.orientations)
    assert not np.array_equal(a.cube, c.cube)


def test_structure_does_not_depend_on_dose_or_boundary_width():
    kw = dict(scan_shape=(32, 32), detector_shape=(32, 32), n_particles=3, seed=2)
    a = make_polycrystal(**kw, dose=6000)
    b = make_polycrystal(**kw, dose=100, boundary_width=2.0)
    assert np.array_equal(a.grains, b.grains)
    assert np.array_equal(a.orientations, b.orientations)
    assert a.zone_axes == b.zone_axes
    # ... but the counts scale with the dose
    assert a.cube.sum() > 40 * b.cube.sum()


def test_dose_sets_the_counts(default_scan):
    scan = default_scan
    counts = scan.cube.sum(axis=(-2, -1), dtype=np.int64)
    liquid = counts[~scan.particles].mean()
    inside = counts[scan.particles]
    # liquid patterns hold about a third of the dose, particles up to the dose
    dose = scan.params["dose"]
    assert 0.2 * dose < liquid < 0.45 * dose
    assert inside.mean() > 1.5 * liquid
    assert inside.max() < 1.2 * dose


def test_non_square_detector_and_scan():
    scan = make_polycrystal((40, 56), (48, 80), n_particles=3, seed=4)
    assert scan.cube.shape == (40, 56, 48, 80)
    assert scan.grains.shape == (40, 56)
    # the direct beam sits at the pattern centre of liquid patterns
    mean_liquid = scan.cube[~scan.particles].mean(axis=0)
    peak = np.unravel_index(np.argmax(mean_liquid), mean_liquid.shape)
    assert abs(peak[0] - 23.5) <= 1 and abs(peak[1] - 39.5) <= 1


def test_bragg_disks_at_calibrated_distance(default_scan):
    """A [001] grain's brightest spots are the {200} disks at |g200|."""
    scan = default_scan
    g = scan.zone_axes.index("[001]") + 1
    pattern = scan.cube[scan.grains == g].astype(np.float64).mean(axis=0)
    qx, qy = np.meshgrid(np.arange(64) - 31.5, np.arange(64) - 31.5, indexing="ij")
    radius = np.hypot(qx, qy)
    off_centre = np.where(radius > 6, pattern, 0)
    peak = np.unravel_index(np.argmax(off_centre), pattern.shape)
    g200_px = 0.16 * 64
    assert abs(radius[peak] - g200_px) < 1.5
    # the calibration puts Au {200} (d = a/2) at that distance
    assert np.isclose(scan.q_pixel_size * g200_px, 2 / synthetic.AU_LATTICE_A)


def test_no_particles_gives_liquid_only():
    scan = make_polycrystal((16, 16), (16, 16), n_particles=0)
    assert scan.n_grains == 0
    assert scan.orientations.shape == (0,)
    assert not scan.grains.any()
    assert not scan.particles.any()
    assert scan.cube.sum() > 0


def test_single_grain_particles():
    scan = make_polycrystal((48, 48), (32, 32), n_particles=4, grains_per_particle=1)
    assert scan.n_grains == 4
    labels, n = ndimage.label(scan.particles)
    assert n == 4
    for blob in range(1, n + 1):
        assert np.unique(scan.grains[labels == blob]).size == 1


def test_saturates_instead_of_wrapping():
    kw = dict(scan_shape=(8, 8), detector_shape=(16, 16), n_particles=1, seed=1)
    low = make_polycrystal(**kw, dose=1e5)
    high = make_polycrystal(**kw, dose=1e8)
    bright = low.cube > 200  # expected > 2e5 counts at the high dose
    assert bright.any()
    assert np.all(high.cube[bright] == 65535)


# --------------------------------------------------------------------------
# 5D growth series


@pytest.fixture(scope="module")
def series():
    return make_polycrystal((40, 40), (32, 32), n_times=5, n_particles=3, seed=7)


def test_series_shapes(series):
    assert series.cube.shape == (5, 40, 40, 32, 32)
    assert series.cube.dtype == np.uint16
    assert series.grains.shape == (5, 40, 40)
    assert series.particles.shape == (5, 40, 40)
    assert series.params["n_times"] == 5


def test_series_particles_grow(series):
    area = series.particles.sum(axis=(1, 2))
    assert np.all(np.diff(area) > 0)
    assert area[-1] > 2.5 * area[0]  # radius doubles (growth=2)
    # every particle pixel stays a particle pixel later on
    assert np.all(series.particles[1:] >= series.particles[:-1])


def test_series_grain_identities_fixed(series):
    ids = [set(np.unique(frame)) - {0} for frame in series.grains]
    assert all(s == set(range(1, series.n_grains + 1)) for s in ids)
    # a grain keeps its place as it grows: its pixels mostly keep their id
    # (not all: grain boundaries scale about the particle centre)
    for t in range(4):
        before, after = series.grains[t], series.grains[t + 1]
        inside = before > 0
        assert np.mean(after[inside] == before[inside]) > 0.9
        for g in range(1, series.n_grains + 1):
            region = before == g
            assert np.mean(after[region] == g) > 0.5


def test_series_last_frame_matches_4d():
    series = make_polycrystal((32, 32), (32, 32), n_times=3, n_particles=2, seed=9)
    single = make_polycrystal((32, 32), (32, 32), n_particles=2, seed=9)
    assert np.array_equal(series.grains[-1], single.grains)
    assert np.array_equal(series.orientations, single.orientations)


def test_series_fresh_noise_each_frame(series):
    # far from the particles the expected pattern is the same in every frame
    liquid = ~series.particles.any(axis=0)
    x, y = np.argwhere(liquid)[0]
    frames = series.cube[:, x, y].reshape(5, -1)
    assert not np.array_equal(frames[0], frames[1])
    total = frames.sum(axis=1)
    assert np.all(np.abs(total - total.mean()) < 6 * np.sqrt(total.mean()) + 1)


def test_n_times_one_is_5d():
    scan = make_polycrystal((16, 16), (16, 16), n_times=1, n_particles=1)
    assert scan.cube.shape == (1, 16, 16, 16, 16)
    assert scan.grains.shape == (1, 16, 16)


# --------------------------------------------------------------------------
# what the clustering needs


def test_within_grain_neighbours_are_alike(default_scan, default_sims):
    within, _ = pair_similarities(default_sims, default_scan.grains)
    assert np.median(within) > 0.95
    assert np.mean(within >= 0.9) > 0.9


def test_across_boundary_neighbours_differ(default_scan, default_sims):
    _, across = pair_similarities(default_sims, default_scan.grains)
    assert across.size > 50
    assert np.median(across) < 0.9
    assert np.mean(across < 0.9) > 0.9


def test_liquid_less_self_similar_than_grains(default_scan, default_sims):
    mean = np.nanmean(default_sims, axis=-1)
    particles = default_scan.particles
    assert mean[~particles].mean() < mean[particles].mean() - 0.15
    assert np.median(mean[~particles]) < np.median(mean[particles]) - 0.25
    # the triangle threshold of the mean-similarity map finds the particles
    mask = mean > threshold_triangle(mean)
    assert np.mean(mask == particles) > 0.95
    assert np.mean(mask[particles]) > 0.9


@pytest.mark.parametrize("seed", [1, 2])
def test_similarity_properties_other_seeds(seed):
    scan = make_polycrystal(seed=seed)
    sims = neighbour_cosines(scan.cube)
    within, across = pair_similarities(sims, scan.grains)
    mean = np.nanmean(sims, axis=-1)
    assert np.median(within) > 0.95
    assert np.median(across) < 0.9
    assert mean[~scan.particles].mean() < mean[scan.particles].mean() - 0.15


def test_low_dose_degrades_similarity(default_scan, default_sims):
    low = make_polycrystal(dose=default_scan.params["dose"] / 10)
    assert np.array_equal(low.grains, default_scan.grains)
    low_within, _ = pair_similarities(neighbour_cosines(low.cube), low.grains)
    within, _ = pair_similarities(default_sims, default_scan.grains)
    assert np.median(low_within) < np.median(within) - 0.1
    assert np.median(low_within) < 0.9


def test_wider_boundaries_mix_neighbours(default_scan):
    sharp = make_polycrystal(boundary_width=0.0)
    wide = make_polycrystal(boundary_width=3.0)
    _, across_sharp = pair_similarities(neighbour_cosines(sharp.cube), sharp.grains)
    _, across_wide = pair_similarities(neighbour_cosines(wide.cube), wide.grains)
    assert np.median(across_wide) > np.median(across_sharp) + 0.1
    # sharp boundaries: pure patterns of two differently oriented grains
    assert across_sharp.max() < 0.9


def test_default_scan_is_solvable(default_scan, default_sims):
    """The plain default segmentation recovers every grain of the default scan."""
    labels, _ = connected_clusters(default_sims)
    particles = default_scan.particles
    assigned = particles & (labels > 0)
    assert assigned.sum() > 0.8 * particles.sum()
    assert adjusted_rand_index(default_scan.grains, labels, mask=assigned) > 0.99
    seg = over_under_segmentation(default_scan.grains, labels, mask=assigned)
    assert seg["n_pred"] == seg["n_true"] == default_scan.n_grains
    assert not np.any(labels[~particles & ~_dilated(particles)])


def _dilated(mask):
    return ndimage.binary_dilation(mask, iterations=2)


# --------------------------------------------------------------------------
# argument checks


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(scan_shape=(64,)), ValueError, "scan_shape must be a pair"),
        (dict(scan_shape=(0, 8)), ValueError, "scan_shape must be >= 1"),
        (dict(detector_shape=(8, 64)), ValueError, "detector_shape must be >= 16"),
        (dict(scan_shape=(64.0, 64)), TypeError, "scan_shape must be an int"),
        (dict(n_times=0), ValueError, "n_times must be >= 1"),
        (dict(n_particles=-1), ValueError, "n_particles must be >= 0"),
        (dict(n_particles=2.5), TypeError, "n_particles must be an int"),
        (dict(grains_per_particle=(3, 1)), ValueError, "min <= max"),
        (dict(grains_per_particle=0), ValueError, "grains_per_particle"),
        (dict(dose=0), ValueError, "dose must be > 0"),
        (dict(dose=float("nan")), ValueError, "dose must be a finite"),
        (dict(dose="a lot"), TypeError, "dose must be a number"),
        (dict(boundary_width=-1), ValueError, "boundary_width"),
        (dict(growth=0.5), ValueError, "growth must be a finite number >= 1"),
        (dict(radius_range=(5, 2)), ValueError, "radius_range"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_polycrystal(**kwargs)


def test_too_many_particles():
    with pytest.raises(ValueError, match="cannot fit 40 non-overlapping particles"):
        make_polycrystal((32, 32), (16, 16), n_particles=40)


# --------------------------------------------------------------------------
# Poisson sampler


@pytest.mark.parametrize("lam", [0.0, 1e-7, 0.003, 0.05, 0.5, 3.0, 7.77, 15.99, 16.0, 40.0])
def test_poisson_sampler_matches_poisson(lam):
    n = 200_000
    rng = np.random.default_rng(11)
    out = np.empty(n, np.uint16)
    synthetic._poisson(rng, np.full(n, lam, np.float32), out)
    k_max = int(lam + 8 * np.sqrt(lam) + 4)
    observed = np.bincount(out, minlength=k_max + 1)
    assert observed[k_max + 1 :].sum() == 0
    observed = observed[: k_max + 1]
    expected = n * stats.poisson.pmf(np.arange(k_max + 1), max(lam, 2.0**-20))
    # mean within 5 standard errors
    se = np.sqrt(max(lam, 1e-6) / n)
    assert abs(out.mean() - lam) < 5 * se + 2e-6
    # chi-square over the well-populated counts
    keep = expected > 20
    if keep.sum() > 1:
        obs, exp = observed[keep], expected[keep]
        exp = exp * obs.sum() / exp.sum()
        assert stats.chisquare(obs, exp).pvalue > 1e-4


def test_poisson_sampler_mixed_expectations_and_saturation():
    rng = np.random.default_rng(3)
    lam = rng.exponential(3.0, 300_000).astype(np.float32)
    lam[:10] = 1e6  # beyond uint16
    out = np.empty(lam.size, np.uint16)
    synthetic._poisson(rng, lam, out)
    assert np.all(out[:10] == 65535)
    rest, lam_rest = out[10:].astype(np.float64), lam[10:].astype(np.float64)
    # E[k - lam] = 0 and Var[k - lam] = E[lam] for a Poisson draw
    resid = rest - lam_rest
    assert abs(resid.mean()) < 5 * np.sqrt(lam_rest.mean() / resid.size)
    assert abs(resid.var() / lam_rest.mean() - 1) < 0.02


def test_poisson_sampler_does_not_modify_input():
    lam = np.linspace(0, 30, 1000, dtype=np.float32)
    copy = lam.copy()
    synthetic._poisson(np.random.default_rng(0), lam, np.empty(1000, np.uint16))
    assert np.array_equal(lam, copy)
