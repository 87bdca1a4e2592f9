"""Tests of the segmentation quality metrics against direct definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from napari_stemcluster.core.metrics import (
    adjusted_rand_index,
    boundary_f1,
    contingency,
    over_under_segmentation,
)

# --------------------------------------------------------------------------
# plain references


def pair_counts(true, pred):
    """Pairs of distinct pixels: (same in both, same only in true, same only
    in pred, different in both), counted one pair at a time."""
    true, pred = np.ravel(true), np.ravel(pred)
    a = b = c = d = 0
    for i, j in itertools.combinations(range(true.size), 2):
        same_t, same_p = true[i] == true[j], pred[i] == pred[j]
        if same_t and same_p:
            a += 1
        elif same_t:
            b += 1
        elif same_p:
            c += 1
        else:
            d += 1
    return a, b, c, d


def ari_hubert_arabie(true, pred):
    """ARI as (index - expected) / (max - expected) from pair counts."""
    a, b, c, d = pair_counts(true, pred)
    pairs = a + b + c + d
    same_true, same_pred = a + b, a + c
    expected = same_true * same_pred / pairs
    maximum = (same_true + same_pred) / 2
    if maximum == expected:
        return 1.0
    return (a - expected) / (maximum - expected)


def ari_rand_form(true, pred):
    """ARI written with all four pair counts (Steinley 2004)."""
    a, b, c, d = pair_counts(true, pred)
    if b == 0 and c == 0:
        return 1.0
    return 2 * (a * d - b * c) / ((a + b) * (b + d) + (a + c) * (c + d))


def boundary_pixels(labels):
    """Pixels with a 4-neighbour of another label, one pixel at a time."""
    nx, ny = labels.shape
    out = np.zeros(labels.shape, bool)
    for x in range(nx):
        for y in range(ny):
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                u, v = x + dx, y + dy
                if 0 <= u < nx and 0 <= v < ny and labels[u, v] != labels[x, y]:
                    out[x, y] = True
    return out


def matched_fraction(src, dst, tolerance):
    """Fraction of ``src`` pixels with a ``dst`` pixel within ``tolerance``."""
    s, t = np.argwhere(src), np.argwhere(dst)
    hits = sum(any(math.dist(p, q) <= tolerance for q in t) for p in s)
    return hits / len(s)


def boundary_f1_reference(true, pred, tolerance):
    bt, bp = boundary_pixels(true), boundary_pixels(pred)
    if not bt.any() and not bp.any():
        return 1.0
    if not bt.any() or not bp.any():
        return 0.0
    precision = matched_fraction(bp, bt, tolerance)
    recall = matched_fraction(bt, bp, tolerance)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------
# adjusted Rand index


@pytest.mark.parametrize("seed", range(8))
def test_ari_matches_pair_counting(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    true = rng.integers(0, rng.integers(1, 6), n)
    pred = rng.integers(0, rng.integers(1, 6), n)
    got = adjusted_rand_index(true, pred)
    assert got == pytest.approx(ari_hubert_arabie(true, pred), abs=1e-12)
    assert got == pytest.approx(ari_rand_form(true, pred), abs=1e-12)


def test_ari_with_mask_matches_pair_counting_on_the_selection():
    rng = np.random.default_rng(42)
    true = rng.integers(0, 4, (5, 7))
    pred = rng.integers(0, 3, (5, 7))
    mask = rng.random((5, 7)) < 0.6
    got = adjusted_rand_index(true, pred, mask=mask)
    assert got == pytest.approx(ari_hubert_arabie(true[mask], pred[mask]), abs=1e-12)
    # the unmasked pixels do not matter
    pred2 = pred.copy()
    pred2[~mask] = 99
    assert adjusted_rand_index(true, pred2, mask=mask) == got


def test_ari_noisy_segmentation_against_pair_counting():
    """A realistic case: a partly correct segmentation of a 2D grain map."""
    true = np.zeros((6, 6), int)
    true[:, 3:] = 1
    true[4:, :] = 2
    pred = true.copy()
    pred[0, 0] = 7  # one stray pixel
    pred[4:, 3:] = 1  # part of grain 2 merged into grain 1
    got = adjusted_rand_index(true, pred)
    assert got == pytest.approx(ari_hubert_arabie(true, pred), abs=1e-12)
    assert 0.3 < got < 1.0


def test_ari_known_value():
    # the textbook example: 0.24 (2 - 1.2) / (4.5 - 1.2)
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def test_ari_identical_and_relabelled():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, (8, 9))
    assert adjusted_rand_index(labels, labels) == 1.0
    perm = rng.permutation(5) + 10
    assert adjusted_rand_index(labels, perm[labels]) == 1.0


def test_ari_permutation_invariance_and_symmetry():
    rng = np.random.default_rng(2)
    true = rng.integers(0, 4, 50)
    pred = rng.integers(0, 6, 50)
    ref = adjusted_rand_index(true, pred)
    perm_t = rng.permutation(4) * 3 + 1
    perm_p = rng.permutation(6) + 100
    assert adjusted_rand_index(perm_t[true], perm_p[pred]) == pytest.approx(ref, abs=1e-14)
    assert adjusted_rand_index(pred, true) == pytest.approx(ref, abs=1e-14)
    # reordering the pixels (the same way in both) changes nothing either
    order = rng.permutation(50)
    assert adjusted_rand_index(true[order], pred[order]) == pytest.approx(ref, abs=1e-14)


def test_ari_edge_cases():
    one = np.zeros(10, int)
    distinct = np.arange(10)
    assert adjusted_rand_index(one, one) == 1.0
    assert adjusted_rand_index(distinct, distinct + 5) == 1.0
    assert adjusted_rand_index(one, distinct) == 0.0
    assert adjusted_rand_index(distinct, one) == 0.0
    assert adjusted_rand_index([3], [4]) == 1.0
    assert adjusted_rand_index(one, distinct) == ari_hubert_arabie(one, distinct)


def test_ari_accepts_integer_and_bool_dtypes():
    true = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    ref = adjusted_rand_index(true, pred)
    for dtype in (np.uint8, np.int16, np.uint32, np.int64):
        assert adjusted_rand_index(true.astype(dtype), pred.astype(dtype)) == ref
    assert adjusted_rand_index(true, pred.astype(bool)) == ref


def test_ari_large_counts_are_exact():
    # 2 x 10^5 pixels: pair counts beyond 10^10, products beyond int64
    true = np.repeat([0, 1], 100_000)
    pred = true.copy()
    pred[:10] = 1
    n, moved = 200_000, 10
    a = math.comb(100_000 - moved, 2) + math.comb(100_000, 2)
    b = (100_000 - moved) * moved
    c = moved * 100_000
    d = math.comb(n, 2) - a - b - c
    expected = 2 * (a * d - b * c) / ((a + b) * (b + d) + (a + c) * (c + d))
    assert adjusted_rand_index(true, pred) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("func", [adjusted_rand_index, contingency, over_under_segmentation])
def test_empty_selection_is_an_error(func):
    labels = np.ones((3, 3), int)
    with pytest.raises(ValueError, match="no pixels to score"):
        func(labels, labels, mask=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="no pixels to score"):
        func(np.zeros(0, int), np.zeros(0, int))


@pytest.mark.parametrize("func", [adjusted_rand_index, contingency, over_under_segmentation])
def test_bad_input(func):
    a = np.zeros((3, 3), int)
    with pytest.raises(ValueError, match=r"same shape; got \(3, 3\) and \(3, 4\)"):
        func(a, np.zeros((3, 4), int))
    with pytest.raises(TypeError, match="labels_pred must be an integer label array"):
        func(a, a.astype(np.float32))
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        func(a, a, mask=np.ones((3, 3), int))
    with pytest.raises(ValueError, match=r"mask must have the labels' shape"):
        func(a, a, mask=np.ones((3, 2), bool))


# --------------------------------------------------------------------------
# contingency


def test_contingency_literal():
    true = np.array([[1, 1, 2], [2, 2, 0]])
    pred = np.array([[5, 5, 5], [7, 7, 7]])
    table, t, p = contingency(true, pred)
    np.testing.assert_array_equal(table, [[0, 1], [2, 0], [1, 2]])
    np.testing.assert_array_equal(t, [0, 1, 2])
    np.testing.assert_array_equal(p, [5, 7])
    assert table.dtype == np.int64


def test_contingency_with_mask_and_against_loop():
    rng = np.random.default_rng(5)
    true = rng.integers(-2, 3, (6, 5))
    pred = rng.integers(10, 14, (6, 5))
    mask = rng.random((6, 5)) < 0.7
    table, t, p = contingency(true, pred, mask=mask)
    assert table.sum() == mask.sum()
    np.testing.assert_array_equal(t, np.unique(true[mask]))
    np.testing.assert_array_equal(p, np.unique(pred[mask]))
    for i, ti in enumerate(t):
        for j, pj in enumerate(p):
            assert table[i, j] == np.sum(mask & (true == ti) & (pred == pj))


# --------------------------------------------------------------------------
# boundary F1


def test_boundary_f1_literals():
    true = np.zeros((6, 6), int)
    true[:, 3:] = 1
    shifted = np.zeros((6, 6), int)
    shifted[:, 4:] = 1
    assert boundary_f1(true, true) == 1.0
    assert boundary_f1(true, true + 3) == 1.0  # only where labels change matters
    assert boundary_f1(true, shifted, tolerance=1) == 1.0
    assert boundary_f1(true, shifted, tolerance=0) == pytest.approx(0.5)
    far = np.zeros((6, 6), int)
    far[:, 5:] = 1  # boundary columns 4, 5 against 2, 3
    assert boundary_f1(true, far, tolerance=0) == 0.0
    assert boundary_f1(true, far, tolerance=1) == pytest.approx(0.5)
    assert boundary_f1(true, far, tolerance=2) == 1.0


def test_boundary_f1_no_boundaries():
    flat = np.zeros((4, 4), int)
    split = flat.copy()
    split[2:] = 1
    assert boundary_f1(flat, flat + 1) == 1.0
    assert boundary_f1(flat, split) == 0.0
    assert boundary_f1(split, flat) == 0.0


def test_boundary_f1_precision_and_recall():
    true = np.zeros((8, 8), int)
    true[:, 4:] = 1  # boundary columns 3, 4: 16 pixels
    pred = true.copy()
    pred[:4, :2] = 2  # an extra boundary in the top left
    # recall 1, precision 16 / (16 + extra pixels)
    extra = boundary_pixels(pred) & ~boundary_pixels(true)
    precision = 16 / (16 + extra.sum())
    assert boundary_f1(true, pred, tolerance=0) == pytest.approx(2 * precision / (precision + 1))


@pytest.mark.parametrize("tolerance", [0, 1, 1.5, 2])
@pytest.mark.parametrize("seed", range(3))
def test_boundary_f1_against_reference(seed, tolerance):
    rng = np.random.default_rng(seed)
    # blocky random maps, so that boundaries are lines rather than noise
    true = np.kron(rng.integers(0, 3, (4, 3)), np.ones((3, 4), int))
    pred = true.copy()
    flip = rng.random(true.shape) < 0.08
    pred[flip] = rng.integers(0, 3, flip.sum())
    got = boundary_f1(true, pred, tolerance=tolerance)
    assert got == pytest.approx(boundary_f1_reference(true, pred, tolerance), abs=1e-12)


def test_boundary_f1_non_square_and_thin_maps():
    true = np.array([[0, 0, 1, 1, 1]])
    pred = np.array([[0, 1, 1, 1, 1]])
    assert boundary_f1(true, pred, tolerance=0) == pytest.approx(
        boundary_f1_reference(true, pred, 0)
    )
    assert boundary_f1(true.T, pred.T, tolerance=1) == 1.0


def test_boundary_f1_pools_frames_of_a_stack():
    rng = np.random.default_rng(9)
    true = np.kron(rng.integers(0, 3, (3, 3, 2)), np.ones((1, 3, 3), int))
    pred = true.copy()
    pred[rng.random(pred.shape) < 0.1] = 5
    b_true = [boundary_pixels(f) for f in true]
    b_pred = [boundary_pixels(f) for f in pred]
    pairs = list(zip(b_true, b_pred, strict=True))
    hit_pred = sum(matched_fraction(bp, bt, 1) * bp.sum() for bt, bp in pairs)
    hit_true = sum(matched_fraction(bt, bp, 1) * bt.sum() for bt, bp in pairs)
    precision = hit_pred / sum(bp.sum() for _, bp in pairs)
    recall = hit_true / sum(bt.sum() for bt, _ in pairs)
    expected = 2 * precision * recall / (precision + recall)
    assert boundary_f1(true, pred, tolerance=1) == pytest.approx(expected)
    # frames are not compared with each other: a stack of identical frames
    # scores like one frame
    one = true[0]
    assert boundary_f1(np.stack([one, one]), np.stack([pred[0], pred[0]])) == pytest.approx(
        boundary_f1(one, pred[0])
    )


def test_boundary_f1_bad_input():
    a = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match="tolerance must be finite and >= 0"):
        boundary_f1(a, a, tolerance=-1)
    with pytest.raises(ValueError, match="tolerance must be finite"):
        boundary_f1(a, a, tolerance=float("inf"))
    with pytest.raises(ValueError, match="tolerance must be a number"):
        boundary_f1(a, a, tolerance="one")
    with pytest.raises(ValueError, match="2-D label maps"):
        boundary_f1(np.zeros(5, int), np.zeros(5, int))
    with pytest.raises(ValueError, match="same shape"):
        boundary_f1(a, np.zeros((4, 5), int))
    with pytest.raises(TypeError, match="integer label array"):
        boundary_f1(a.astype(float), a)


# --------------------------------------------------------------------------
# over- and under-segmentation


def test_over_under_perfect():
    true = np.array([[1, 1, 2], [1, 2, 2]])
    s = over_under_segmentation(true, true * 10 + 3)
    assert s["clusters_per_grain"] == 1.0
    assert s["grains_per_cluster"] == 1.0
    assert s["effective_clusters_per_grain"] == pytest.approx(1.0)
    assert s["effective_grains_per_cluster"] == pytest.approx(1.0)
    assert s["grain_coverage"] == 1.0
    assert s["cluster_purity"] == 1.0
    assert (s["n_true"], s["n_pred"]) == (2, 2)


def test_over_segmentation_literal():
    # grain 1 (4 px) split evenly in two clusters, grain 2 (2 px) intact
    true = [1, 1, 1, 1, 2, 2]
    pred = [1, 1, 3, 3, 2, 2]
    s = over_under_segmentation(true, pred)
    assert s["clusters_per_grain"] == pytest.approx((4 * 2 + 2 * 1) / 6)
    assert s["grains_per_cluster"] == 1.0
    assert s["effective_clusters_per_grain"] == pytest.approx((4 * 2 + 2 * 1) / 6)
    assert s["grain_coverage"] == pytest.approx(4 / 6)
    assert s["cluster_purity"] == 1.0
    assert (s["n_true"], s["n_pred"]) == (2, 3)


def test_under_segmentation_literal():
    # two grains of 3 px merged into one cluster
    true = [1, 1, 1, 2, 2, 2]
    pred = [4, 4, 4, 4, 4, 4]
    s = over_under_segmentation(true, pred)
    assert s["clusters_per_grain"] == 1.0
    assert s["grains_per_cluster"] == 2.0
    assert s["effective_grains_per_cluster"] == pytest.approx(2.0)
    assert s["grain_coverage"] == 1.0
    assert s["cluster_purity"] == pytest.approx(0.5)


def test_stray_pixels_count_little_in_effective_numbers():
    # grain of 10 px with one stray predicted pixel
    true = [1] * 10
    pred = [1] * 9 + [2]
    s = over_under_segmentation(true, pred)
    assert s["clusters_per_grain"] == 2.0
    p = np.array([0.9, 0.1])
    assert s["effective_clusters_per_grain"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert s["effective_clusters_per_grain"] < 1.4
    assert s["grain_coverage"] == pytest.approx(0.9)


def test_over_under_with_mask_ignores_unselected_pixels():
    true = np.array([[0, 0, 1, 1], [0, 0, 2, 2]])
    pred = np.array([[7, 8, 1, 1], [9, 7, 2, 2]])
    s = over_under_segmentation(true, pred, mask=true > 0)
    assert s["clusters_per_grain"] == 1.0
    assert s["grains_per_cluster"] == 1.0
    assert (s["n_true"], s["n_pred"]) == (2, 2)
    everything = over_under_segmentation(true, pred)
    assert everything["clusters_per_grain"] > 1.0


# --------------------------------------------------------------------------
# grain_scores: every position counts, background included


def test_grain_scores_literal():
    from napari_stemcluster.core.metrics import grain_scores

    true = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    pred = np.array([0, 5, 0, 5, 5, 5, 0, 6, 6, 5])
    s = grain_scores(true, pred)
    assert s["ari"] == pytest.approx(adjusted_rand_index(true, pred))
    np.testing.assert_allclose(s["grain_recall"], [3 / 4, 2 / 3])
    assert s["recall"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    # cluster 5: {bg 1, g1 3, g2 1} -> majority 3 of 5; cluster 6: 2 of 2
    assert s["purity"] == pytest.approx(5 / 7)
    assert s["background_share"] == pytest.approx(1 / 7)
    assert s["coverage"] == pytest.approx(6 / 7)
    # grains in cluster 5: g1 3, g2 1 -> perplexity of (3/4, 1/4); cluster 6: 1
    h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert s["grains_per_cluster"] == pytest.approx((np.exp(h) * 4 + 1 * 2) / 6)
    assert (s["n_grains"], s["n_clusters"]) == (2, 2)


def test_grain_scores_cannot_be_gamed():
    from napari_stemcluster.core.metrics import grain_scores

    true = np.zeros((20, 20), int)
    true[2:8, 2:8] = 1
    true[10:18, 10:18] = 2
    perfect = grain_scores(true, true)
    assert perfect["ari"] == 1 and perfect["recall"] == 1 and perfect["purity"] == 1
    assert perfect["background_share"] == 0 and perfect["grains_per_cluster"] == 1
    # clustering nothing: recall and ARI 0, no purity to speak of
    nothing = grain_scores(true, np.zeros_like(true))
    assert nothing["ari"] == 0 and nothing["recall"] == 0 and nothing["coverage"] == 0
    assert np.isnan(nothing["purity"]) and np.isnan(nothing["background_share"])
    # clustering the background with the grains is seen
    halo = true.copy()
    halo[1:9, 1:9] = np.where(halo[1:9, 1:9] == 0, 1, halo[1:9, 1:9])
    h = grain_scores(true, halo)
    assert h["recall"] == 1 and h["background_share"] > 0.2 and h["ari"] < 0.9
    # one cluster for both grains
    merged = grain_scores(true, (true > 0).astype(int))
    assert merged["grains_per_cluster"] > 1.8 and merged["purity"] < 1
    # an ARI over grain pixels alone would call the halo perfect
    assert adjusted_rand_index(true, halo, mask=true > 0) == 1.0


def test_grain_scores_stack_and_errors():
    from napari_stemcluster.core.metrics import grain_scores

    true = np.zeros((2, 5, 5), int)
    true[:, 1:4, 1:4] = 1
    assert grain_scores(true, true * 7)["ari"] == 1
    with pytest.raises(ValueError, match="same shape"):
        grain_scores(true, true[0])
    with pytest.raises(TypeError):
        grain_scores(true.astype(float), true)
