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


def _odd_values(rng, shape):
    """float32 values of every kind: wide exponents, ties, signed zeros, inf, NaN."""
    v = rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 4, shape)
    v = v.astype(np.float32)
    pick = rng.random(shape)
    v[pick < 0.1] = np.float32(0.5)  # ties
    v[(pick >= 0.1) & (pick < 0.15)] = np.nan
    v[(pick >= 0.15) & (pick < 0.18)] = np.float32(-0.0)
    v[(pick >= 0.18) & (pick < 0.21)] = np.float32(0.0)
    v[(pick >= 0.21) & (pick < 0.23)] = np.inf
    v[(pick >= 0.23) & (pick < 0.25)] = -np.inf
    return v


@pytest.mark.parametrize("shape", [(13, 17), (1, 40), (40, 1), (1, 1)])
def test_mean_similarity_map_equals_mean_similarity_bit_for_bit(rng, shape):
    from napari_stemcluster.core.regions import mean_similarity_map
    from napari_stemcluster.core.similarity import mean_similarity as plain

    sim = _odd_values(rng, (*shape, 8))
    sim[..., ::3][sim[..., ::3] == np.inf] = 0.25  # a few infinities only
    got = mean_similarity_map(sim)
    assert got.dtype == np.float32
    with np.errstate(invalid="ignore"):  # inf - inf: NaN in both
        want = plain(sim)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # numpy adds eight float64 values pairwise: this row rounds to 1 + 2**-23
    # that way and to 1 added one after the other
    row = np.array([8, 2**-21, 2**-50, 2**-50, 0, 0, 0, 0], np.float32).reshape(1, 1, 8)
    assert mean_similarity_map(row)[0, 0] == plain(row)[0, 0] == np.float32(1 + 2**-23)
    rand = random_similarity(rng, shape)
    np.testing.assert_array_equal(mean_similarity_map(rand), plain(rand))
    # other dtypes go to the plain function
    np.testing.assert_array_equal(mean_similarity_map(rand.astype(">f4")), plain(rand))


def _plain_seed_order(ms, mask):
    ms = np.asarray(ms, np.float64).ravel()
    idx = np.flatnonzero(np.asarray(mask).ravel()) if mask is not None else np.arange(ms.size)
    out = sorted(idx, key=lambda p: (-np.nan_to_num(ms[p], nan=-np.inf), p))
    return np.array(out, np.int64)


@pytest.mark.parametrize("shape", [(13, 17), (1, 40), (40, 1), (1, 1)])
def test_seed_order_of_float32_maps_equals_the_plain_sort(rng, shape):
    from napari_stemcluster.core.regions import seed_order

    ms = _odd_values(rng, shape)
    mask = rng.random(shape) > 0.3
    for m in (None, mask, np.zeros(shape, bool)):
        got = seed_order(ms, m)
        np.testing.assert_array_equal(got, _plain_seed_order(ms, m))
        assert got.dtype == np.int64
        # the float64 path (any other dtype) gives the same order
        np.testing.assert_array_equal(seed_order(ms.astype(np.float64), m), got)
    const = np.full(shape, 0.7, np.float32)  # all ties: raster order
    np.testing.assert_array_equal(seed_order(const), np.arange(const.size))
