import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_stemcluster.core import (
    NEIGHBOR_OFFSETS,
    grow_regions,
    mean_similarity,
    neighbor_similarity,
)
from napari_stemcluster.core.similarity import _mirror

from _reference import grow as ref_grow
from _reference import random_cube


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def random_similarity(rng, shape, levels=None):
    """A symmetric random similarity array with NaN outside the scan."""
    sim = np.full(shape + (8,), np.nan, np.float32)
    vals = rng.random(shape + (4,)).astype(np.float32)
    if levels is not None:  # coarse values create ties
        vals = np.round(vals * levels) / levels
    for i, n in enumerate((4, 5, 6, 7)):
        dx, dy = NEIGHBOR_OFFSETS[n]
        rx, ry = shape
        valid = np.zeros(shape, bool)
        valid[max(0, -dx) : rx - max(0, dx), max(0, -dy) : ry - max(0, dy)] = True
        sim[..., n] = np.where(valid, vals[..., i], np.nan)
    _mirror(sim)
    return sim


def components(sim, mask, threshold):
    """Independent connected components of the thresholded similarity graph."""
    rx, ry = mask.shape
    rows, cols = [], []
    for n in (4, 5, 6, 7):
        dx, dy = NEIGHBOR_OFFSETS[n]
        for x in range(rx):
            for y in range(ry):
                u, v = x + dx, y + dy
                inside = 0 <= u < rx and 0 <= v < ry
                if inside and mask[x, y] and mask[u, v] and sim[x, y, n] >= threshold:
                    rows.append(x * ry + y)
                    cols.append(u * ry + v)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(rx * ry, rx * ry))
    _, comp = connected_components(graph, directed=False)
    return comp.reshape(rx, ry)


def same_partition(a, b, where):
    pairs = set(zip(a[where].tolist(), b[where].tolist(), strict=True))
    return len(pairs) == len(set(a[where].tolist())) == len(set(b[where].tolist()))


@pytest.mark.parametrize("shape", [(9, 11), (1, 13), (13, 1), (1, 1), (2, 2), (16, 16)])
@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_matches_published_algorithm_bit_for_bit(rng, shape, threshold):
    sim = random_similarity(rng, shape, levels=10)
    ms = mean_similarity(sim)
    mask = rng.random(shape) > 0.2
    labels, seeds = grow_regions(sim, threshold, mean_similarity=ms, mask=mask, min_cluster_size=2)
    want = ref_grow(sim, ms, mask, threshold, 2)
    np.testing.assert_array_equal(labels, want)
    assert labels.dtype == np.int32
    assert len(seeds) == labels.max()


@pytest.mark.parametrize("shape", [(12, 17), (1, 40), (30, 1)])
def test_clusters_are_connected_components(rng, shape):
    sim = random_similarity(rng, shape)
    mask = rng.random(shape) > 0.1
    labels, _ = grow_regions(sim, 0.5, mask=mask)
    comp = components(sim, mask, 0.5)
    assert same_partition(labels, comp, mask)
    assert (labels[~mask] == 0).all() and (labels[mask] > 0).all()


def test_labels_in_seed_order_and_seeds_are_maxima(rng):
    sim = random_similarity(rng, (20, 20))
    ms = mean_similarity(sim)
    labels, seeds = grow_regions(sim, 0.5, mean_similarity=ms)
    seed_ms = ms[seeds[:, 0], seeds[:, 1]]
    assert np.all(np.diff(seed_ms) <= 0)
    for k, (x, y) in enumerate(seeds, start=1):
        assert labels[x, y] == k
        assert ms[x, y] == ms[labels == k].max()


def test_min_cluster_size_and_consecutive_labels(rng):
    sim = random_similarity(rng, (15, 15))
    labels, seeds = grow_regions(sim, 0.5, min_cluster_size=4)
    sizes = np.bincount(labels.ravel())[1:]
    assert (sizes >= 4).all()
    assert set(np.unique(labels)) - {0} == set(range(1, labels.max() + 1))
    assert len(seeds) == labels.max()


def test_grows_into_the_outer_rows_and_columns():
    # a uniform scan is one cluster covering everything, border included
    sim = neighbor_similarity(np.ones((6, 5, 3, 3), np.uint8))
    labels, seeds = grow_regions(sim, 0.99)
    assert (labels == 1).all()
    assert seeds.tolist() == [[0, 0]]


def test_all_false_mask_gives_no_cluster(rng):
    sim = random_similarity(rng, (5, 5))
    labels, seeds = grow_regions(sim, 0.1, mask=np.zeros((5, 5), bool))
    assert (labels == 0).all() and seeds.shape == (0, 2)


def test_nan_similarity_never_joins():
    sim = np.full((2, 2, 8), np.nan, np.float32)
    labels, _ = grow_regions(sim, -1.0)
    np.testing.assert_array_equal(labels, [[1, 2], [3, 4]])


def test_bad_shapes(rng):
    with pytest.raises(ValueError, match=r"\(Rx, Ry, 8\)"):
        grow_regions(np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="scan shape"):
        grow_regions(random_similarity(rng, (3, 3)), mask=np.ones((2, 3), bool))


def test_deterministic(rng):
    cube = random_cube(rng, (20, 20, 6, 6))
    sim = neighbor_similarity(cube)
    a = grow_regions(sim, 0.95)
    b = grow_regions(sim.copy(), 0.95)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
