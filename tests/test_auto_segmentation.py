"""Automatic threshold, running-mean linkage, dark-field mask and diagnostics."""

import numpy as np
import pytest
from scipy import ndimage

from napari_stemcluster import segment
from napari_stemcluster.core import grow_regions, mean_similarity, neighbor_similarity
from napari_stemcluster.core.clustering import Diagnostics, cluster_scan, link_threshold
from napari_stemcluster.core.linkage import pattern_features
from napari_stemcluster.core.masking import (
    dark_field_image,
    direct_beam,
    real_space_mask,
    signal_mask,
)
from napari_stemcluster.core.regions import seed_order
from napari_stemcluster.core.similarity import NEIGHBOR_OFFSETS
from napari_stemcluster.core.threshold import auto_threshold
from test_regions import random_similarity


@pytest.fixture
def rng():
    return np.random.default_rng(11)


# --------------------------------------------------------------------------
# running-mean linkage


def ref_grow_linked(sim, ms, mask, seed_mask, threshold, link, feats):
    """Plain Python: breadth-first growth with a running feature sum."""
    rx, ry = mask.shape
    labels = np.zeros((rx, ry), int)
    order = seed_order(ms, seed_mask & mask)
    f = feats.reshape(rx * ry, -1).astype(np.float64)
    n = 0
    for s in order:
        x0, y0 = divmod(int(s), ry)
        if labels[x0, y0]:
            continue
        n += 1
        labels[x0, y0] = n
        acc = f[s].copy()
        queue = [(x0, y0)]
        while queue:
            x, y = queue.pop(0)
            for k, (dx, dy) in enumerate(NEIGHBOR_OFFSETS):
                u, v = x + dx, y + dy
                if not (0 <= u < rx and 0 <= v < ry) or labels[u, v] or not mask[u, v]:
                    continue
                if not sim[x, y, k] >= np.float32(threshold):
                    continue
                c = f[u * ry + v]
                d = c @ acc
                if d <= 0 or d * d < link * (c @ c) * (acc @ acc):
                    continue
                labels[u, v] = n
                acc += c
                queue.append((u, v))
    return labels


@pytest.mark.parametrize("shape", [(9, 11), (1, 13), (13, 1), (1, 1), (16, 16)])
def test_mean_linkage_matches_plain_python(rng, shape):
    sim = random_similarity(rng, shape, levels=10)
    ms = mean_similarity(sim)
    mask = rng.random(shape) > 0.2
    seeds = rng.random(shape) > 0.3
    feats = rng.random(shape + (5,)).astype(np.float32)
    feats[0, 0] = 0  # a zero pattern never joins
    labels, _ = grow_regions(
        sim,
        0.4,
        mean_similarity=ms,
        mask=mask,
        linkage="mean",
        features=feats,
        link_threshold=0.8,
        seed_mask=seeds,
        refine=False,  # growth alone (the refinement: test_boundary_refinement.py)
    )
    want = ref_grow_linked(sim, ms, mask, seeds, 0.4, 0.8, feats)
    np.testing.assert_array_equal(labels, want)


def test_seed_mask_with_pair_rule(rng):
    shape = (10, 12)
    sim = random_similarity(rng, shape)
    mask = np.ones(shape, bool)
    seeds = np.zeros(shape, bool)
    seeds[5, 6] = True
    labels, s = grow_regions(sim, 0.3, mask=mask, seed_mask=seeds)
    # one cluster at most, grown from the only seed position, into unseeded positions
    assert labels.max() <= 1 and tuple(s[0]) == (5, 6)
    full, _ = grow_regions(sim, 0.3, mask=mask)
    assert set(np.flatnonzero(labels == 1)) == set(np.flatnonzero(full == full[5, 6]))


def gradient_cube(n=24, steps=None):
    """A 1xN scan whose pattern turns gradually from spot A to spot B."""
    cube = np.zeros((1, n, 8, 8), np.float32)
    w = np.clip((np.arange(n) - 4) / (n - 8), 0, 1)
    cube[0, :, 1, 1] = 1 - w
    cube[0, :, 6, 6] = w
    return cube


def test_mean_linkage_stops_chaining_through_a_gradual_transition():
    cube = gradient_cube()
    sim = neighbor_similarity(cube)
    feats = pattern_features(cube)
    assert np.nanmin(sim) > 0.99  # every neighbouring pair is alike
    pair, _ = grow_regions(sim, 0.9)
    mean, _ = grow_regions(sim, 0.9, linkage="mean", features=feats)
    assert pair.max() == 1  # the pair rule chains A to B
    assert mean.max() >= 3  # the running mean does not
    ends = mean[0, 0], mean[0, -1]
    assert ends[0] != ends[1]


def test_linkage_arguments():
    sim = neighbor_similarity(gradient_cube())
    with pytest.raises(ValueError, match="linkage"):
        grow_regions(sim, 0.9, linkage="single")
    with pytest.raises(ValueError, match="needs features"):
        grow_regions(sim, 0.9, linkage="mean")
    with pytest.raises(ValueError, match="features must have shape"):
        grow_regions(sim, 0.9, linkage="mean", features=np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="seed_mask"):
        grow_regions(sim, 0.9, seed_mask=np.ones((2, 2), bool))


def test_link_threshold_is_between_threshold_and_one():
    for t in (0.2, 0.5, 0.9, 1.0):
        assert t <= link_threshold(t) <= 1.0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("det", [(8, 8), (7, 12), (40, 33)])
def test_pattern_features_against_numpy(rng, dtype, det):
    cube = rng.integers(0, 9, (3, 2, *det)).astype(dtype)
    qm = np.zeros(det, bool)
    qm[1:-1, 2:] = True
    f = pattern_features(cube, q_mask=qm, dims=64)
    b = 1
    while -(-det[0] // b) * -(-det[1] // b) > 64:
        b += 1
    padded = np.zeros((3, 2, -(-det[0] // b) * b, -(-det[1] // b) * b))
    padded[..., : det[0], : det[1]] = cube * qm
    want = padded.reshape(3, 2, padded.shape[2] // b, b, padded.shape[3] // b, b).sum((3, 5))
    np.testing.assert_allclose(f, want.reshape(3, 2, -1), rtol=1e-6)
    blurred = pattern_features(cube, sigma=1.0, dims=10**6)
    ref = ndimage.gaussian_filter(cube.astype(np.float64), (0, 0, 1, 1), mode="reflect")
    np.testing.assert_allclose(blurred, ref.reshape(3, 2, -1), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------
# dark-field mask


def test_direct_beam_finds_an_offset_beam():
    p = np.ones((40, 30))
    xs, ys = np.indices(p.shape)
    p[(xs - 22.0) ** 2 + (ys - 11.0) ** 2 <= 16] = 100
    cx, cy, r = direct_beam(p)
    assert abs(cx - 22) < 0.1 and abs(cy - 11) < 0.1 and 3.5 < r < 4.5
    assert direct_beam(np.zeros((4, 6))) == (1.5, 2.5, 0.0)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_dark_field_image_against_numpy(rng, dtype):
    cube = rng.integers(0, 50, (5, 3, 12, 10)).astype(dtype)
    beam = (6.0, 4.0, 2.0)
    xs, ys = np.indices((12, 10))
    outside = np.hypot(xs - 6, ys - 4) > 1.5 * 2 + 1
    want = (cube * outside).sum(axis=(-2, -1))
    np.testing.assert_allclose(dark_field_image(cube, beam), want)
    assert dark_field_image(np.zeros((1, 4, 8, 8), np.uint8)).sum() == 0


def test_signal_mask_liquid_and_vacuum():
    rng = np.random.default_rng(0)
    img = np.full((20, 20), 1000.0) + rng.normal(0, 5, (20, 20))  # liquid
    img[5:12, 5:12] = 3000  # particle
    img[5:12, 4] = 2000  # its rim: half the particle signal over the liquid
    m = signal_mask(img)
    assert m[5:12, 5:12].all() and m[5:12, 4].all()
    assert m.sum() - 7 * 8 <= 0.01 * (400 - 7 * 8)  # (almost) no liquid
    vac = np.where(img > 1100, img, rng.poisson(0.5, img.shape))
    vac[5:12, 4] = 60  # probe mostly in vacuum: not the particle
    m = signal_mask(vac)
    assert m[5:12, 5:12].all() and not m[5:12, 4].any() and m.sum() == 49
    assert signal_mask(np.zeros((3, 3))).all()
    with pytest.raises(ValueError, match="signal_mask"):
        signal_mask(img, "bright")


def test_real_space_mask_dark_field_needs_the_image():
    ms = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="dark-field image"):
        real_space_mask(ms, "dark_field")
    sig = np.zeros((3, 4))
    sig[1, 1:3] = 100
    np.testing.assert_array_equal(real_space_mask(ms, "dark_field", signal=sig), sig > 0)


# --------------------------------------------------------------------------
# automatic threshold


def test_auto_threshold_follows_the_noise_level(rng):
    sim = np.full((10, 10, 8), 0.5, np.float32)
    sim[..., 0] = rng.uniform(0.9, 1.0, (10, 10))  # best neighbour of each position
    want = 0.88 * np.quantile(sim[..., 0], 0.1)
    assert auto_threshold(sim) == pytest.approx(round(want, 2))
    mask = np.zeros((10, 10), bool)
    mask[:2] = True
    assert auto_threshold(sim, mask) == pytest.approx(
        round(0.88 * np.quantile(sim[:2, :, 0], 0.1), 2)
    )
    assert auto_threshold(sim, np.zeros((10, 10), bool)) == 0.9
    sim[..., 0] = np.nan  # out-of-scan neighbours are ignored
    assert auto_threshold(sim) == 0.44
    with pytest.raises(ValueError, match="shape"):
        auto_threshold(np.zeros((3, 3)))


# --------------------------------------------------------------------------
# diagnostics


def two_grains(n=8, q=6):
    cube = np.zeros((n, n, q, q), np.uint16)
    cube[:, : n // 2, 1, 1] = 100
    cube[:, n // 2 :, 4, 4] = 100
    cube[..., 0, 5] = 5  # a little common signal
    return cube


def test_diagnostics_count_everything():
    cube = two_grains()
    cube[0, 0] = 0
    cube[0, 0, 3, 0] = 100  # a lone position unlike its neighbours
    res = segment(cube, real_mask=None, min_cluster_size=2)
    d = res.diagnostics
    assert isinstance(d, Diagnostics)
    assert (d.positions, d.in_mask, d.clusters) == (64, 64, 2)
    assert d.dropped_small == 1 and d.dropped_positions == 1
    assert d.clustered == 63 and d.clustered_fraction == pytest.approx(63 / 64)
    assert d.threshold_source == "auto" and res.params["threshold_used"] == d.threshold
    assert res.params["diagnostics"]["clusters"] == 2
    assert not d.reason and not d.warnings


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"real_mask": np.zeros((8, 8), bool)}, "mask kept no position"),
        ({"threshold": 0.999, "real_mask": None}, "no neighbour pair"),
        ({"real_mask": None, "min_cluster_size": 40}, "smaller than min_cluster_size"),
    ],
)
def test_zero_clusters_come_with_a_reason(kwargs, reason):
    cube = two_grains()
    rng = np.random.default_rng(1)
    cube = cube + rng.poisson(30, cube.shape).astype(np.uint16) if "threshold" in kwargs else cube
    res = segment(cube, **kwargs)
    d = res.diagnostics
    assert d.clusters == 0 and reason in d.reason and d.suggestion
    assert reason in d.summary()


@pytest.mark.parametrize(
    "cube, warning",
    [(np.zeros((5, 5, 4, 4), np.uint8), "zero"), (np.ones((5, 5, 4, 4), np.uint8), "identical")],
)
def test_degenerate_input_warns(cube, warning):
    d = segment(cube).diagnostics
    assert any(warning in w for w in d.warnings)


def test_5d_diagnostics_per_time_step():
    cube = np.stack([two_grains(), two_grains()])
    cube[1] = 0
    res = segment(cube, real_mask=None)
    assert len(res.diagnostics) == 2
    assert res.diagnostics[0].clusters == 2 and res.diagnostics[1].clusters == 0
    assert len(res.params["threshold_used"]) == 2


def test_cluster_scan_threshold_arguments():
    cube = two_grains()
    sim = neighbor_similarity(cube)
    ms = mean_similarity(sim)
    labels, _, d = cluster_scan(sim, ms, threshold=0.5, real_mask=None)
    assert d.threshold == 0.5 and d.threshold_source == "fixed" and labels.max() == 2
    for bad in ("high", None, True):
        with pytest.raises(ValueError, match="threshold"):
            cluster_scan(sim, ms, threshold=bad, real_mask=None)
    with pytest.raises(ValueError, match="threshold"):
        segment(cube, threshold="high")
    with pytest.raises(ValueError, match="linkage"):
        segment(cube, linkage="single")


def _plain_auto_threshold(sim, mask):
    """Obviously right: each masked position's best finite neighbour, a loop."""
    from napari_stemcluster.core.threshold import AUTO_FACTOR, AUTO_QUANTILE

    best = []
    for (x, y), keep in np.ndenumerate(mask):
        vals = [float(v) for v in sim[x, y] if not np.isnan(v)]
        if keep and vals and np.isfinite(max(vals)):
            best.append(np.float32(max(vals)))
    if len(best) < 4:
        return 0.9
    t = AUTO_FACTOR * float(np.quantile(np.array(best, np.float32), AUTO_QUANTILE))
    return float(np.clip(round(t, 2), 0.05, 0.99))


@pytest.mark.parametrize("shape", [(9, 11), (1, 16), (16, 1), (2, 2)])
def test_auto_threshold_equals_a_plain_loop(shape):
    from napari_stemcluster.core.threshold import auto_threshold

    rng = np.random.default_rng(shape[0])
    sim = rng.random((*shape, 8)).astype(np.float32)
    sim[rng.random(sim.shape) < 0.3] = np.nan
    sim[0, 0] = np.nan  # no neighbour at all
    sim.flat[9] = np.inf
    sim.flat[17] = -np.inf
    for mask in (np.ones(shape, bool), rng.random(shape) < 0.6):
        assert auto_threshold(sim, mask) == _plain_auto_threshold(sim, mask)
    assert auto_threshold(sim) == _plain_auto_threshold(sim, np.ones(shape, bool))
    assert auto_threshold(sim.astype(np.float64)) == auto_threshold(sim)
