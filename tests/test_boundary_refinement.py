"""Boundary refinement of the running-mean linkage (``grow_regions(refine=True)``)."""

import numpy as np
import pytest
from scipy import ndimage

from napari_stemcluster.core import grow_regions, mean_similarity, neighbor_similarity
from napari_stemcluster.core.linkage import pattern_features
from napari_stemcluster.core.regions import REFINE_MIN_SIZE, REFINE_PASSES
from napari_stemcluster.core.similarity import NEIGHBOR_OFFSETS
from test_auto_segmentation import ref_grow_linked
from test_regions import random_similarity


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def stays_connected(labels, x, y):
    """Plain check: the cluster of (x, y) minus (x, y) is one 8-connected piece nearby."""
    a = labels[x, y]
    window = np.zeros((3, 3), bool)
    for dx, dy in NEIGHBOR_OFFSETS:
        u, v = x + dx, y + dy
        if 0 <= u < labels.shape[0] and 0 <= v < labels.shape[1]:
            window[dx + 1, dy + 1] = labels[u, v] == a
    n = ndimage.label(window, structure=np.ones((3, 3)))[1]
    return n == 1


def ref_refine(labels, sim, threshold, link, feats, seeds, min_size, passes):
    """Plain Python version of the refinement: raster passes, sums updated per move.

    A border position goes to the neighbouring cluster with the largest
    ``beta - alpha > 0`` of the least-squares fit ``f ~ alpha A + beta B``
    (unit-sum means, ``A`` its own cluster without it).
    """
    labels = labels.copy()
    rx, ry = labels.shape
    f = feats.reshape(rx * ry, -1).astype(np.float64)
    n = labels.max()
    size = np.bincount(labels.ravel(), minlength=n + 1)
    big = size >= min_size
    big[0] = False
    sums = {a: f[(labels == a).ravel()].sum(axis=0) for a in range(1, n + 1) if big[a]}
    fixed = np.zeros(rx * ry, bool)
    fixed[seeds] = True
    for _ in range(passes):
        moved = 0
        for x in range(rx):
            for y in range(ry):
                a, p = labels[x, y], x * ry + y
                if a == 0 or fixed[p] or not big[a]:
                    continue
                cands = []
                for k, (dx, dy) in enumerate(NEIGHBOR_OFFSETS):
                    u, v = x + dx, y + dy
                    if 0 <= u < rx and 0 <= v < ry:
                        b = labels[u, v]
                        ok = b and b != a and big[b] and sim[x, y, k] >= np.float32(threshold)
                        if ok and b not in cands:
                            cands.append(b)
                if not cands:
                    continue
                rest = sums[a] - f[p]
                if rest @ rest <= 0 or rest.sum() <= 0:
                    continue
                best, gain = a, 0.0
                for b in cands:
                    e = f[p] @ sums[b]
                    if e <= 0 or e * e < link * (f[p] @ f[p]) * (sums[b] @ sums[b]):
                        continue
                    # least-squares mixture of the two unit-sum means
                    basis = np.stack([rest / rest.sum(), sums[b] / sums[b].sum()], axis=1)
                    gram = basis.T @ basis
                    if np.linalg.det(gram) <= 1e-9 * gram[0, 0] * gram[1, 1]:
                        continue
                    alpha, beta = np.linalg.solve(gram, basis.T @ f[p])
                    if beta - alpha > gain:
                        best, gain = b, beta - alpha
                if best == a or not stays_connected(labels, x, y):
                    continue
                labels[x, y] = best
                sums[a] = rest
                sums[best] = sums[best] + f[p]
                moved += 1
        if not moved:
            break
    return labels


@pytest.mark.parametrize("shape", [(16, 16), (24, 19), (1, 40), (40, 1)])
def test_refinement_matches_plain_python(rng, shape):
    sim = random_similarity(rng, shape, levels=10)
    ms = mean_similarity(sim)
    mask = rng.random(shape) > 0.05
    # two families of features, so clusters meet and borders are contested
    base = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1.0]])
    side = (np.arange(shape[1])[None, :] + rng.integers(-2, 3, shape)) > shape[1] // 2
    feats = (base[side.astype(int)] + rng.random(shape + (6,))).astype(np.float32)
    args = dict(mean_similarity=ms, mask=mask, linkage="mean", features=feats)
    grown, seeds = grow_regions(sim, 0.15, link_threshold=0.5, refine=False, **args)
    assert np.array_equal(grown, ref_grow_linked(sim, ms, mask, mask, 0.15, 0.5, feats))
    refined, seeds2 = grow_regions(sim, 0.15, link_threshold=0.5, **args)
    assert np.array_equal(seeds, seeds2)  # seeds never move
    flat_seeds = seeds[:, 0] * shape[1] + seeds[:, 1]
    want = ref_refine(grown, sim, 0.15, 0.5, feats, flat_seeds, REFINE_MIN_SIZE, REFINE_PASSES)
    np.testing.assert_array_equal(refined, want)
    assert (refined > 0).sum() == (grown > 0).sum()  # positions move, none is dropped
    if min(shape) > 1:
        assert (refined != grown).any()  # the case exercises the refinement
    for a in range(1, refined.max() + 1):  # every cluster is still one piece
        assert ndimage.label(refined == a, structure=np.ones((3, 3)))[1] <= 1


def transition_cube(n=40, flat=15):
    """1xN scan: spot A for ``flat`` positions, a linear turn to spot B, spot B."""
    w = np.clip((np.arange(n) - flat + 1) / (n - 2 * flat + 1), 0, 1)
    cube = np.zeros((1, n, 8, 8), np.float32)
    cube[0, :, 1, 1] = 1 - w
    cube[0, :, 6, 6] = w / 2  # B's electrons spread over two pixels, A's on one
    cube[0, :, 6, 7] = w / 2
    return cube, w


def test_refinement_moves_an_overshooting_border_to_the_middle():
    # B spreads its electrons over two pixels: the split must still fall where
    # the mixture is even (a plain cosine would favour the sharper pattern A)
    cube, w = transition_cube()
    sim = neighbor_similarity(cube)
    feats = pattern_features(cube)
    # a loose running-mean test (as at low dose): the first grain overshoots
    kw = dict(linkage="mean", features=feats, link_threshold=0.25)
    grown, _ = grow_regions(sim, 0.5, refine=False, **kw)
    refined, _ = grow_regions(sim, 0.5, **kw)
    a, b = grown[0, 0], grown[0, -1]
    assert a != b and a > 0 and b > 0
    assert (w[grown[0] == a] > 0.5).any()  # A took positions that are mostly B
    assert set(np.unique(refined)) == {a, b}
    assert (w[refined[0] == a] < 0.5).all() and (w[refined[0] == b] > 0.5).all()
    np.testing.assert_array_equal(refined[0] == a, w < 0.5)


def test_refinement_leaves_small_clusters_and_pair_rule_alone(rng):
    cube, _ = transition_cube(n=16, flat=5)  # clusters below REFINE_MIN_SIZE
    sim = neighbor_similarity(cube)
    feats = pattern_features(cube)
    kw = dict(linkage="mean", features=feats, link_threshold=0.25)
    np.testing.assert_array_equal(
        grow_regions(sim, 0.5, **kw)[0], grow_regions(sim, 0.5, refine=False, **kw)[0]
    )
    sim = random_similarity(rng, (12, 12))
    np.testing.assert_array_equal(
        grow_regions(sim, 0.3)[0], grow_regions(sim, 0.3, refine=False)[0]
    )


def test_growth_fills_the_norms_of_every_clustered_position(rng):
    """The refinement's norms come from the growth: known wherever a cluster is."""
    from napari_stemcluster.core._regions_numba import _DX, _DY, _grow_linked
    from napari_stemcluster.core.regions import seed_order

    shape = (12, 9)
    sim = random_similarity(rng, shape, levels=10)
    feats = rng.random((shape[0] * shape[1], 5)).astype(np.float32)
    feats[::7] = 0  # all-zero features: norm 0, never joins
    allowed = rng.random(shape) > 0.2
    order = seed_order(mean_similarity(sim), allowed)
    labels = np.zeros(shape, np.int32)
    seeds = np.empty(order.size, np.int64)
    norms2 = np.full(feats.shape[0], np.nan)
    t = np.float32(0.3)
    n = _grow_linked(sim, order, allowed, t, 0.6, feats, norms2, _DX, _DY, labels, seeds)
    assert n > 1
    clustered = labels.ravel() > 0
    assert np.isfinite(norms2[clustered]).all()
    for p in np.flatnonzero(np.isfinite(norms2)):
        want = 0.0
        for f in feats[p].astype(np.float64):  # float64, in column order
            want += f * f
        assert norms2[p] == want
    assert np.isnan(norms2[~allowed.ravel()]).all()  # never tested, never computed


@pytest.mark.parametrize("shape", [(7, 9), (1, 13), (11, 1)])
@pytest.mark.parametrize("k", [1, 5, 70, 200])
def test_slot_sums_equal_a_raster_loop(shape, k):
    """The refinement's cluster sums, parallel over feature columns: the same
    numbers as adding the members in raster order, for any column split."""
    from napari_stemcluster.core._regions_numba import _slot_sums

    rng = np.random.default_rng(k)
    n = shape[0] * shape[1]
    labels = rng.integers(0, 5, n).astype(np.int32)
    slot = np.array([-1, 0, -1, 1, 2], np.int64)  # label 2 takes no part
    feats = (rng.random((n, k)) * 10.0 ** rng.integers(-6, 6, (n, k))).astype(np.float32)
    want = np.zeros((3, k))
    for p in range(n):
        if slot[labels[p]] >= 0:
            want[slot[labels[p]]] += feats[p].astype(np.float64)
    for width in (1, 16, 64, 256):
        got = np.zeros((3, k))
        _slot_sums(labels, slot, feats, got, width)
        np.testing.assert_array_equal(got, want)


def _contested_case(rng, shape):
    """Grown labels of two contested feature families, as in the plain-Python test."""
    sim = random_similarity(rng, shape, levels=10)
    ms = mean_similarity(sim)
    mask = rng.random(shape) > 0.05
    base = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1.0]])
    side = (np.arange(shape[1])[None, :] + rng.integers(-2, 3, shape)) > shape[1] // 2
    feats = (base[side.astype(int)] + rng.random(shape + (6,))).astype(np.float32)
    grown, seeds = grow_regions(
        sim, 0.15, mean_similarity=ms, mask=mask, linkage="mean", features=feats,
        link_threshold=0.5, refine=False,
    )  # fmt: skip
    return sim, grown, seeds, feats.reshape(shape[0] * shape[1], -1)


def _slots(grown, seeds, shape):
    n = int(grown.max())
    big = np.bincount(grown.ravel(), minlength=n + 1) >= REFINE_MIN_SIZE
    big[0] = False
    slot = np.full(n + 1, -1, np.int64)
    slot[big] = np.arange(int(big.sum()))
    fixed = np.zeros(shape, bool)
    fixed[seeds[:, 0], seeds[:, 1]] = True
    return slot, fixed, int(big.sum())


@pytest.mark.parametrize("shape", [(16, 16), (24, 19), (1, 40), (40, 1)])
def test_contested_marks_the_clusters_of_border_positions(rng, shape):
    from napari_stemcluster.core._regions_numba import _DX, _DY, _contested

    sim, grown, seeds, _ = _contested_case(rng, shape)
    slot, fixed, m = _slots(grown, seeds, shape)
    want = np.zeros(m, bool)
    count = 0
    for x in range(shape[0]):
        for y in range(shape[1]):
            a = grown[x, y]
            if a == 0 or fixed[x, y] or slot[a] < 0:
                continue
            near = []
            for k, (dx, dy) in enumerate(NEIGHBOR_OFFSETS):
                u, v = x + dx, y + dy
                if 0 <= u < shape[0] and 0 <= v < shape[1]:
                    b = grown[u, v]
                    if b and b != a and slot[b] >= 0 and sim[x, y, k] >= np.float32(0.15):
                        near.append(b)
            if near:
                count += 1
                want[slot[[a, *near]]] = True
    got = np.zeros(m, bool)
    assert _contested(grown, sim, np.float32(0.15), fixed, slot, _DX, _DY, got) == count
    np.testing.assert_array_equal(got, want)
    # a fixed position's border does not count; nor does a border below the threshold
    none = np.zeros(m, bool)
    assert _contested(grown, sim, np.float32(1.5), fixed, slot, _DX, _DY, none) == 0
    assert not none.any()


@pytest.mark.parametrize("shape", [(16, 16), (24, 19), (13, 30)])
def test_refinement_sums_made_when_needed_equal_those_made_first(rng, shape):
    """Cluster sums summed by the refinement when a border first needs them give
    the same moves, labels and sums as all sums made up front (raster order)."""
    from napari_stemcluster.core._regions_numba import (
        _DX,
        _DY,
        _refine_boundaries,
        _slot_sums,
    )

    sim, grown, seeds, feats = _contested_case(rng, shape)
    slot, fixed, m = _slots(grown, seeds, shape)
    norms2 = np.einsum("ij,ij->i", feats.astype(np.float64), feats.astype(np.float64))
    for p in range(feats.shape[0]):  # column order, as the growth's
        t = 0.0
        for f in feats[p].astype(np.float64):
            t += f * f
        norms2[p] = t
    full = np.zeros((m, feats.shape[1]))
    _slot_sums(grown.ravel(), slot, feats, full, 64)
    args = (sim, np.float32(0.15), 0.5, feats, norms2, fixed, slot)
    first, lazy = grown.copy(), grown.copy()
    sums_first, sums_lazy = full.copy(), np.full_like(full, np.nan)
    ready = np.zeros(m, bool)
    moves = _refine_boundaries(first, *args, sums_first, np.ones(m, bool), _DX, _DY, 8)
    assert _refine_boundaries(lazy, *args, sums_lazy, ready, _DX, _DY, 8) == moves
    assert moves > 0  # the case exercises the moves
    np.testing.assert_array_equal(lazy, first)
    assert ready.any()
    np.testing.assert_array_equal(sums_lazy[ready], sums_first[ready])


def test_refinement_without_a_contested_border_moves_nothing():
    """Two clusters apart (background between them): no contested border, so
    the refinement returns before making any sum, and nothing moves."""
    from napari_stemcluster.core._regions_numba import _DX, _DY, _contested

    shape = (12, 12)
    sim = np.full((*shape, 8), 0.9, np.float32)
    mask = np.ones(shape, bool)
    mask[:, 5:7] = False
    feats = np.ones((*shape, 4), np.float32)
    kw = dict(mask=mask, linkage="mean", link_threshold=0.5)
    grown, _ = grow_regions(sim, 0.5, features=feats, refine=False, **kw)
    assert grown.max() == 2
    slot = np.array([-1, 0, 1], np.int64)
    involved = np.zeros(2, bool)
    fixed = np.zeros(shape, bool)
    assert _contested(grown, sim, np.float32(0.5), fixed, slot, _DX, _DY, involved) == 0
    refined, _ = grow_regions(sim, 0.5, features=feats, **kw)
    np.testing.assert_array_equal(refined, grown)


def _grow_both(sim, order, allowed, t, link, feats):
    from napari_stemcluster.core._regions_numba import (
        _DX,
        _DY,
        _grow_linked,
        _grow_linked_fast,
    )

    out = []
    for kernel in (_grow_linked, _grow_linked_fast):
        labels = np.zeros(allowed.shape, np.int32)
        seeds = np.empty(order.size, np.int64)
        norms2 = np.full(feats.shape[0], np.nan)
        r = kernel(sim, order, allowed, np.float32(t), link, feats, norms2, _DX, _DY, labels, seeds)
        n, regrown = (r, 0) if kernel is _grow_linked else r
        out.append((labels, seeds[:n].copy(), regrown, norms2))
    return out


@pytest.mark.parametrize("shape", [(17, 13), (1, 40), (40, 1), (1, 1)])
@pytest.mark.parametrize("link", [0.3, 0.8, 0.95])
def test_vectorised_growth_gives_the_exact_growth(rng, shape, link):
    """The growth with vectorised linkage tests: labels and seeds of the
    column-order growth, on features whose values span many magnitudes."""
    from napari_stemcluster.core.regions import seed_order

    sim = random_similarity(rng, shape, levels=10)
    k = 37
    feats = rng.random((shape[0] * shape[1], k)) * 10.0 ** rng.integers(-8, 8, (1, k))
    feats = (feats + rng.random((shape[0] * shape[1], 1)) * 5).astype(np.float32)
    allowed = rng.random(shape) > 0.1
    order = seed_order(mean_similarity(sim), allowed)
    (want, wseeds, _, _), (got, gseeds, _, _) = _grow_both(sim, order, allowed, 0.2, link, feats)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(gseeds, wseeds)


def test_vectorised_growth_regrows_tests_too_close_to_call(rng):
    """Identical features with link 1 (the squared cosine is 1 to the last bit),
    all-zero and non-finite features: the bounds cannot decide, the cluster is
    grown again in column order, and the labels are still the exact ones."""
    from napari_stemcluster.core.regions import seed_order

    shape = (9, 11)
    sim = random_similarity(rng, shape, levels=10)
    allowed = np.ones(shape, bool)
    order = seed_order(mean_similarity(sim), allowed)
    same = np.tile(rng.random(6).astype(np.float32), (shape[0] * shape[1], 1))
    zeros = np.zeros_like(same)
    odd = same.copy()
    odd[5, 2] = np.inf
    odd[40, 0] = np.nan
    for feats, link in ((same, 1.0), (zeros, 0.5), (odd, 0.5)):
        with np.errstate(invalid="ignore", over="ignore"):
            (want, wseeds, _, wn), (got, gseeds, regrown, gn) = _grow_both(
                sim, order, allowed, 0.2, link, feats
            )
        assert regrown > 0
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(gseeds, wseeds)
        known = ~np.isnan(gn)  # norms of regrown clusters: the column-order ones
        assert known.any()
        np.testing.assert_array_equal(gn[known], wn[known])
