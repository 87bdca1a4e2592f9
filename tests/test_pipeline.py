import json

import numpy as np
import pytest

import napari_stemcluster
from napari_stemcluster import segment
from napari_stemcluster.core import SegmentationResult

from _reference import grow as ref_grow
from _reference import mean_similarity as ref_mean
from _reference import random_cube, two_region_cube
from _reference import similarity as ref_similarity


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def test_public_names():
    assert napari_stemcluster.segment is segment
    assert isinstance(napari_stemcluster.__version__, str)


def test_4d_result_against_reference_stages(rng):
    cube = two_region_cube(rng, scan=(9, 12), split=5, dose=2000)
    res = segment(cube, threshold=0.8, min_cluster_size=3, real_mask=None)
    assert isinstance(res, SegmentationResult)
    sim = ref_similarity(cube)
    ms = ref_mean(sim)
    np.testing.assert_allclose(res.similarity, sim, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(res.mean_similarity, ms, atol=1e-5)
    want = ref_grow(res.similarity, res.mean_similarity, np.ones((9, 12), bool), 0.8, 3)
    np.testing.assert_array_equal(res.labels, want)
    assert res.labels.dtype == np.int32 and res.labels.shape == (9, 12)
    assert res.mean_similarity.dtype == np.float32 and res.real_mask.dtype == bool
    # the two halves are recovered
    assert res.n_clusters == 2
    assert len(np.unique(res.labels[:, :5])) == 1 and len(np.unique(res.labels[:, 5:])) == 1
    for k in (1, 2):
        np.testing.assert_allclose(
            res.cluster_means[k - 1], cube[res.labels == k].mean(axis=0), rtol=1e-5
        )
    assert res.clusters.size.sum() == 9 * 12
    json.dumps(res.params)  # every parameter is recorded, serialisable


def test_5d_is_per_time_step(rng):
    steps = [two_region_cube(rng, scan=(6, 8), split=s, dose=3000) for s in (2, 4, 6)]
    cube = np.stack(steps)
    res = segment(cube, threshold=0.8, min_cluster_size=2, real_mask=None)
    assert res.labels.shape == (3, 6, 8) and res.is_time_series
    assert isinstance(res.cluster_means, list) and len(res.cluster_means) == 3
    for t, step in enumerate(steps):
        one = segment(step, threshold=0.8, min_cluster_size=2, real_mask=None)
        np.testing.assert_array_equal(res.labels[t], one.labels)
        np.testing.assert_array_equal(res.cluster_means[t], one.cluster_means)
    assert res.n_clusters == [2, 2, 2]


def test_real_mask_options(rng):
    cube = random_cube(rng, (6, 6, 4, 4))
    user = np.zeros((6, 6), bool)
    user[1:4, 1:4] = True
    res = segment(cube, threshold=0.0, min_cluster_size=1, real_mask=user)
    assert (res.labels[~user] == 0).all() and (res.labels[user] == 1).all()
    res = segment(cube, real_mask=2.0)  # nothing above 2: no cluster
    assert res.n_clusters == 0 and res.cluster_means.shape == (0, 4, 4)
    five = np.stack([cube, cube])
    masks = np.stack([user, ~user])
    res = segment(five, threshold=0.0, min_cluster_size=1, real_mask=masks)
    np.testing.assert_array_equal(res.real_mask, masks)
    with pytest.raises(ValueError, match="one \\(Rx, Ry\\) mask per time step"):
        segment(five, real_mask=masks[:1])


def test_q_mask_and_sigma_reach_similarity(rng):
    cube = random_cube(rng, (4, 5, 8, 8))
    res = segment(cube, q_mask=(1, 3), sigma=1.0, real_mask=None)
    from napari_stemcluster.core import annular_mask

    want = ref_similarity(cube, annular_mask((8, 8), 1, 3), sigma=1.0)
    np.testing.assert_allclose(res.similarity, want, atol=1e-5, equal_nan=True)
    assert res.params["q_mask"] == [1.0, 3.0] and res.params["sigma"] == 1.0


def test_degenerate_all_zero_cube():
    res = segment(np.zeros((5, 4, 3, 3), np.uint16))
    assert (res.mean_similarity == 0).all()
    assert res.n_clusters == 0


def test_progress_reaches_total(rng):
    seen = []
    segment(random_cube(rng, (4, 4, 3, 3)), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and all(d <= t for d, t in seen)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"average": "mean"}, "average must be"),
        ({"prefilter": {"radius": 2, "bogus": 1}}, "unknown prefilter option"),
        ({"prefilter": "yes"}, "prefilter must be"),
    ],
)
def test_bad_arguments(rng, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        segment(random_cube(rng, (3, 3, 2, 2)), **kwargs)


def test_wrong_dimensionality():
    with pytest.raises(ValueError, match="4-D"):
        segment(np.zeros((3, 3, 3)))


@pytest.mark.parametrize("source", ["raw", "prefiltered"])
def test_mask_source_with_prefilter(rng, source):
    from napari_stemcluster.core import (
        correlative_prefilter,
        mean_similarity,
        neighbor_similarity,
        real_space_mask,
    )

    cube = two_region_cube(rng, scan=(12, 12), split=6, dose=300)
    res = segment(cube, prefilter={"radius": 2}, real_mask="otsu", mask_source=source)
    filtered = correlative_prefilter(cube, radius=2)
    ms_pre = mean_similarity(neighbor_similarity(filtered))
    ms_raw = mean_similarity(neighbor_similarity(cube))
    np.testing.assert_array_equal(res.mean_similarity, ms_pre)  # seeds: prefiltered
    want = real_space_mask(ms_raw if source == "raw" else ms_pre, "otsu")
    np.testing.assert_array_equal(res.real_mask, want)
    assert res.params["mask_source"] == source
    with pytest.raises(ValueError, match="mask_source must be"):
        segment(cube, mask_source="both")
