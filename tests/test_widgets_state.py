"""ClusterState: cluster sums and tables that follow label edits (no GUI needed)."""

import dask.array as da
import numpy as np
import pytest

from napari_stemcluster.core import (
    cluster_sums,
    cluster_table,
    grow_regions,
    mean_similarity,
    neighbor_similarity,
)
from napari_stemcluster.widgets._state import ClusterState

from _reference import random_cube


@pytest.fixture
def rng():
    return np.random.default_rng(21)


def _assert_matches_recomputed(state, t=0):
    lab = state.step_labels(t)
    n = int(lab.max(initial=0))
    want_sums, want_counts = cluster_sums(state.step_cube(t), lab, n)
    sums, counts = state.sums(t)
    np.testing.assert_array_equal(counts[:n], want_counts)
    assert not counts[n:].any()
    np.testing.assert_allclose(sums[:n], want_sums, rtol=1e-10, atol=1e-7)
    want = cluster_table(lab, state.step_mean_similarity(t), n)
    got = state.table(t)
    np.testing.assert_array_equal(got.size, want.size)
    np.testing.assert_array_equal(got.seed, want.seed)


def test_paint_like_edits_update_sums_incrementally(rng):
    cube = random_cube(rng, (9, 8, 5, 6))
    labels = rng.integers(0, 4, (9, 8)).astype(np.int32)
    ms = rng.uniform(0, 1, (9, 8)).astype(np.float32)
    state = ClusterState(labels, cube, mean_similarity=ms)
    seen = []
    state.changed.connect(seen.append)
    state.ensure_sums(0)
    assert seen == [(0,)] and not state.edited
    labels[2:5, 1:4] = 7  # a new label painted
    labels[0, :] = 0  # erased
    labels[8, 7] = 2
    assert state.sync() == (0,)
    assert state.edited and seen[-1] == (0,)
    _assert_matches_recomputed(state)
    assert state.sync() == ()  # nothing new


def test_reads_only_changed_patterns(rng):
    cube = random_cube(rng, (6, 6, 4, 4))
    reads = []

    class Counting:
        shape, dtype, ndim = cube.shape, cube.dtype, cube.ndim

        def __getitem__(self, key):
            reads.append(key)
            return cube[key]

    labels = np.ones((6, 6), np.int32)
    state = ClusterState(labels, Counting())
    state.ensure_sums(0)
    reads.clear()
    labels[3, 2] = 2
    labels[3, 4] = 2
    state.sync()
    assert reads == [(3, slice(2, 5))]  # one row span, not the cube
    _assert_matches_recomputed(state)


def test_time_series_steps_are_independent_and_lazy(rng):
    cube = np.stack([random_cube(rng, (5, 6, 4, 4)) for _ in range(3)])
    cube = da.from_array(cube, chunks=(1, 5, 6, 4, 4))
    labels = rng.integers(0, 3, (3, 5, 6)).astype(np.int32)
    state = ClusterState(labels, cube)
    assert state.time_series and state.n_steps == 3
    assert not state.has_sums(1)
    labels[1, 0, 0] = 5  # edit before the sums exist: nothing to update yet
    assert state.sync() == (1,)
    entry = state.compute_sums(2)
    labels[2, 1, 1] = 4  # an edit while the sums were being computed
    state.install_sums(2, entry)
    _assert_matches_recomputed(state, 2)
    state.ensure_sums(1)
    _assert_matches_recomputed(state, 1)
    np.testing.assert_allclose(state.mean(1, 5), np.asarray(cube[1, 0, 0], np.float32), rtol=1e-6)
    assert state.mean(1, 99) is None and state.mean(0, 1) is None  # absent / not cached
    feats = state.features(1)
    assert "index" not in feats and len(feats["size"]) == state.step_labels(1).max() + 1
    assert feats["size"][0] == np.count_nonzero(state.step_labels(1) == 0)  # row 0: background
    with pytest.raises(IndexError, match="outside"):
        state.step_labels(3)


def test_budget_evicts_least_recently_used_steps(rng):
    cube = np.stack([random_cube(rng, (4, 4, 3, 3)) for _ in range(4)])
    labels = np.ones((4, 4, 4), np.int32)
    state = ClusterState(labels, cube, sums_budget=1)  # keeps only the newest step
    state.ensure_sums(0)
    state.ensure_sums(1)
    assert not state.has_sums(0) and state.has_sums(1)
    labels[0, 0, 0] = 2  # an edit of an evicted step is not lost: labels are the truth
    state.sync()
    state.ensure_sums(0)
    _assert_matches_recomputed(state, 0)


def test_merge_updates_sums_without_reading(rng):
    cube = random_cube(rng, (7, 7, 4, 5))
    labels = rng.integers(1, 5, (7, 7)).astype(np.int32)
    state = ClusterState(labels, cube)
    state.ensure_sums(0)
    state.cube = None  # any read would fail
    indices, values, target = state.merge(0, [4, 2])
    assert target == 2 and set(values.tolist()) == {2}
    assert (labels[indices] == 4).all()
    labels[indices] = values  # the caller writes (Labels.data_setitem)
    state.cube = cube
    assert state.sync() == (0,) and state.edited
    assert not (labels == 4).any()
    _assert_matches_recomputed(state)
    with pytest.raises(ValueError, match="at least two"):
        state.merge(0, [1])
    with pytest.raises(ValueError, match="non-empty"):
        state.merge(0, [4, 9])


def test_split_regrows_from_stored_similarity(rng):
    cube = np.zeros((6, 9, 6, 6))
    base = rng.uniform(5, 10, (6, 6))
    for j in range(3):
        pat = base.copy()
        pat[j, j] += 6.0
        cube[:, 3 * j : 3 * j + 3] = pat
    cube += rng.uniform(0, 0.01, cube.shape)
    sim = neighbor_similarity(cube)
    ms = mean_similarity(sim)
    labels, _ = grow_regions(sim, 0.8, mean_similarity=ms)
    assert labels.max() == 1
    state = ClusterState(labels, cube, similarity=sim, mean_similarity=ms)
    state.ensure_sums(0)
    indices, values, new_ids = state.split(0, 1, 0.99)
    assert len(new_ids) == 2
    labels[indices] = values
    state.sync()
    assert len(np.unique(labels)) == 3
    _assert_matches_recomputed(state)
    none = state.split(0, 1, 0.5)
    assert none[2] == [] and len(none[1]) == 0
    nosim = ClusterState(labels.copy(), cube)
    with pytest.raises(ValueError, match="similarity"):
        nosim.split(0, 1, 0.99)


def test_bad_construction():
    cube = np.zeros((4, 4, 2, 2))
    with pytest.raises(ValueError, match="integer"):
        ClusterState(np.zeros((4, 4)), cube)
    with pytest.raises(ValueError, match="scan shape"):
        ClusterState(np.zeros((4, 5), int), cube)
    with pytest.raises(ValueError, match="similarity"):
        ClusterState(np.zeros((4, 4), int), cube, similarity=np.zeros((4, 4, 4)))
    state = ClusterState(np.zeros((4, 4), int), cube)
    with pytest.raises(ValueError, match="do not match"):
        state.replace_labels(np.zeros((3, 3), int))


@pytest.mark.parametrize("name", ["_state", "_correction", "_diffraction"])
def test_widget_module_examples_run(name):
    import doctest
    import importlib

    module = importlib.import_module(f"napari_stemcluster.widgets.{name}")
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(module, globs={"np": np, **vars(module)}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0
