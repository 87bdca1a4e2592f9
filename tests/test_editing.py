import dask.array as da
import numpy as np
import pytest

from napari_stemcluster.core import cluster_sums, grow_regions, neighbor_similarity
from napari_stemcluster.core.averages import cluster_table
from napari_stemcluster.core.editing import (
    changed_positions,
    merge_labels,
    merge_sums,
    read_patterns,
    split_label,
    update_sums,
    update_table,
)

from _reference import DTYPES, random_cube


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def test_changed_positions_lists_every_difference(rng):
    before = rng.integers(0, 4, (5, 7))
    after = before.copy()
    after[0, 0] = 9
    after[4, 6] = 0 if before[4, 6] else 2
    after[2, 3] += 1
    pos, old, new = changed_positions(before, after)
    assert pos.tolist() == [[0, 0], [2, 3], [4, 6]]
    assert old.tolist() == [before[0, 0], before[2, 3], before[4, 6]]
    assert new.tolist() == [9, before[2, 3] + 1, after[4, 6]]
    pos, old, new = changed_positions(before, before)
    assert pos.shape == (0, 2) and old.shape == new.shape == (0,)
    with pytest.raises(ValueError, match="equal shape"):
        changed_positions(before, before[:2])


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_read_patterns_any_order_and_backend(rng, kind):
    cube = random_cube(rng, (6, 5, 3, 4))
    arr = da.from_array(cube, chunks=(2, 5, 3, 4)) if kind == "dask" else cube
    pos = np.array([[5, 4], [0, 0], [5, 0], [2, 3], [0, 4], [2, 3]])
    got = read_patterns(arr, pos)
    assert got.dtype == cube.dtype
    np.testing.assert_array_equal(got, cube[pos[:, 0], pos[:, 1]])
    assert read_patterns(arr, np.empty((0, 2), int)).shape == (0, 3, 4)
    with pytest.raises(IndexError, match="inside"):
        read_patterns(arr, [(6, 0)])


class _Counting:
    def __init__(self, cube):
        self.cube, self.reads = cube, []
        self.shape, self.dtype, self.ndim = cube.shape, cube.dtype, cube.ndim

    def __getitem__(self, key):
        self.reads.append(key)
        return self.cube[key]


def test_read_patterns_reads_a_brush_stroke_at_once_and_scattered_ones_apart(rng):
    cube = random_cube(rng, (40, 30, 2, 3))
    counting = _Counting(cube)
    yy, xx = np.mgrid[:40, :30]
    stroke = np.argwhere((yy - 20) ** 2 + (xx - 12) ** 2 <= 36)  # a disk of radius 6
    got = read_patterns(counting, stroke[::-1])
    np.testing.assert_array_equal(got, cube[stroke[::-1, 0], stroke[::-1, 1]])
    assert counting.reads == [(slice(14, 27), slice(6, 19))]
    # far-apart positions: one small read each, never the box around them all
    counting.reads.clear()
    far = np.array([[0, 0], [39, 29], [0, 29], [20, 15]])
    np.testing.assert_array_equal(read_patterns(counting, far), cube[far[:, 0], far[:, 1]])
    assert len(counting.reads) == 3  # rows 0 (two columns, shared row), 20 and 39
    read = sum((k[0].stop - k[0].start) * (k[1].stop - k[1].start) for k in counting.reads)
    assert read <= 2 * 30 + 2


def test_read_patterns_box_waste_and_size_are_bounded(rng, monkeypatch):
    import napari_stemcluster.core.editing as editing

    cube = random_cube(rng, (12, 12, 2, 2))
    pos = rng.integers(0, 12, (50, 2))
    pos = np.unique(pos, axis=0)
    for limit in (1, 5, 10**6):
        # the byte limit (in patterns) caps every block
        monkeypatch.setattr(editing, "_READ_BYTES", limit * 4 * cube.itemsize)
        counting = _Counting(cube)
        np.testing.assert_array_equal(read_patterns(counting, pos), cube[pos[:, 0], pos[:, 1]])
        for r, c in counting.reads:
            area = (r.stop - r.start) * (c.stop - c.start)
            rows = r.stop - r.start
            assert rows == 1 or area <= limit
            inside = ((pos[:, 0] >= r.start) & (pos[:, 0] < r.stop)).sum()
            assert rows == 1 or area <= 2 * inside


@pytest.mark.parametrize("with_map", [True, False])
@pytest.mark.parametrize("shape", [(9, 8), (1, 11), (10, 1)])
def test_update_table_equals_the_recomputed_table(rng, with_map, shape):
    labels = rng.integers(0, 5, shape)
    ms = rng.uniform(0, 1, shape).astype(np.float32) if with_map else None
    table = cluster_table(labels, ms)
    for step in range(6):
        edited = labels.copy()
        flat = edited.ravel()
        idx = rng.choice(flat.size, size=max(1, flat.size // 4), replace=False)
        flat[idx] = rng.integers(0, 8 if step % 2 else 5, idx.size)  # new labels too
        if step == 3:
            edited[edited == edited.max()] = 0  # the highest label erased: table shrinks
        _, old, new = changed_positions(labels, edited)
        table = update_table(table, edited, np.concatenate([old, new]), ms)
        want = cluster_table(edited, ms)
        np.testing.assert_array_equal(table.size, want.size)
        np.testing.assert_array_equal(table.seed, want.seed)
        np.testing.assert_array_equal(table.mean_similarity, want.mean_similarity)
        labels = edited


def test_update_table_touches_only_the_given_labels():
    labels = np.array([[1, 1, 2, 2, 3]])
    table = cluster_table(labels)
    stale = update_table(table, np.array([[1, 2, 2, 2, 3]]), [])  # nothing declared
    np.testing.assert_array_equal(stale.size, table.size)
    fresh = update_table(table, np.array([[1, 2, 2, 2, 3]]), [1, 2])
    assert fresh.size.tolist() == [1, 3, 1]


def test_update_sums_from_every_dtype_and_signs(rng):
    for dtype in (np.uint8, np.uint16, np.int32, np.float32, np.float64, bool):
        patterns = (rng.uniform(0, 3, (6, 2, 3)) > 1).astype(dtype)
        sums = rng.uniform(0, 5, (3, 2, 3))
        counts = np.array([5, 5, 5])
        old = np.array([1, 0, 2, 3, 2, 1])
        new = np.array([2, 1, 0, 3, 4, 1])  # unchanged positions (3->3, 1->1) are no-ops
        want = sums.copy()
        p = patterns.astype(np.float64)
        for k in range(6):
            if old[k] != new[k] and old[k]:
                want[old[k] - 1] -= p[k]
        want = np.concatenate([want, np.zeros((1, 2, 3))])
        for k in range(6):
            if old[k] != new[k] and new[k]:
                want[new[k] - 1] += p[k]
        got, c = update_sums(sums.copy(), counts.copy(), patterns, old, new)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert c.tolist() == [5 - 1 + 1, 5 + 1 - 2, 5, 1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 6, 5, 4), (1, 9, 3, 3), (9, 1, 4, 2)])
def test_incremental_update_equals_recomputed_sums(rng, dtype, shape):
    cube = random_cube(rng, shape, dtype)
    labels = rng.integers(0, 4, shape[:2])
    sums, counts = cluster_sums(cube, labels, 3)
    edited = labels.copy()
    flat = edited.ravel()
    idx = rng.choice(flat.size, size=max(1, flat.size // 3), replace=False)
    flat[idx] = rng.integers(0, 6, idx.size)  # includes brand-new labels 4, 5
    flat[idx[0]] = 5
    pos, old, new = changed_positions(labels, edited)
    sums, counts = update_sums(sums, counts, read_patterns(cube, pos), old, new)
    want_sums, want_counts = cluster_sums(cube, edited, 5)
    assert sums.shape == want_sums.shape
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-10, atol=1e-6)


def test_update_sums_checks_input():
    sums, counts = np.zeros((2, 3, 3)), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="same length"):
        update_sums(sums, counts, np.zeros((2, 3, 3)), [1], [2])
    with pytest.raises(ValueError, match="do not match"):
        update_sums(sums, counts, np.zeros((1, 4, 3)), [1], [2])
    bad = np.zeros((1, 3, 3))
    bad[0, 1, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        update_sums(sums, counts, bad, [1], [2])


def test_merge_labels_and_sums_match_recomputation(rng):
    cube = random_cube(rng, (8, 6, 4, 4))
    labels = rng.integers(0, 6, (8, 6))
    labels.flat[:5] = [1, 2, 3, 4, 5]
    sums, counts = cluster_sums(cube, labels, 5)
    merged, target = merge_labels(labels, [5, 2, 4])
    assert target == 2
    assert not np.isin(merged, [4, 5]).any()
    assert (merged[labels == 4] == 2).all() and (merged[labels == 1] == 1).all()
    s, c = merge_sums(sums, counts, [5, 2, 4])
    want_s, want_c = cluster_sums(cube, merged, 5)
    np.testing.assert_array_equal(c, want_c)
    np.testing.assert_allclose(s, want_s)
    # an explicit target beyond the current labels grows the arrays
    merged, target = merge_labels(labels, [1, 3], target=7)
    s, c = merge_sums(sums, counts, [1, 3], target=7)
    np.testing.assert_allclose(s, cluster_sums(cube, merged, 7)[0])
    assert c[6] == counts[0] + counts[2]
    with pytest.raises(ValueError, match="positive"):
        merge_labels(labels, [0, 1])
    with pytest.raises(ValueError, match="positive"):
        merge_labels(labels, [])


def _three_grain_cube(rng):
    """One cluster at threshold 0.8 that falls apart into 3 pieces at 0.99."""
    cube = np.zeros((6, 9, 6, 6))
    base = rng.uniform(5, 10, (6, 6))
    for j, col in enumerate((slice(0, 3), slice(3, 6), slice(6, 9))):
        pat = base.copy()
        pat[j, j] += 6.0  # a distinct extra reflection per grain
        cube[:, col] = pat
    return cube


def test_split_label_regrows_at_higher_threshold(rng):
    cube = _three_grain_cube(rng)
    sim = neighbor_similarity(cube)
    labels, _ = grow_regions(sim, 0.8)
    assert labels.max() == 1
    labels = labels.astype(np.int32)
    labels[0, 0] = 0  # an unassigned position stays unassigned
    labels_with_other = labels.copy()
    labels_with_other[5, 8] = 4  # another cluster keeps its label
    out, new_ids = split_label(labels_with_other, 1, sim, 0.99)
    assert out.dtype == labels.dtype
    assert new_ids == [5, 6]
    assert out[0, 0] == 0 and out[5, 8] == 4
    pieces = {int(v) for v in np.unique(out[:, :3][out[:, :3] > 0])}
    assert len(pieces) == 1
    for col in (slice(0, 3), slice(3, 6), slice(6, 8)):
        vals = np.unique(out[1:, col])
        assert len(vals) == 1  # each grain is one piece
    assert sorted(np.unique(out[out > 0]).tolist()) == [1, 4, 5, 6]
    # the result equals region growing restricted to the cluster
    want, _ = grow_regions(sim, 0.99, mask=labels_with_other == 1)
    for piece in np.unique(want[want > 0]):
        assert len(np.unique(out[want == piece])) == 1


def test_split_min_size_and_no_split(rng):
    cube = _three_grain_cube(rng)
    sim = neighbor_similarity(cube)
    labels = np.ones((6, 9), np.int32)
    labels[:, 8] = 2  # the third grain is now 2 columns in label 1 ...
    labels[:, 6:8] = 1
    out, new_ids = split_label(labels, 1, sim, 0.99, min_size=13)
    # pieces: 18, 18 and 12 positions; the 12-position piece is dropped
    assert len(new_ids) == 1
    assert (out[:, 6:8] == 0).all() and (out[:, 8] == 2).all()
    same, none = split_label(labels, 1, sim, 0.5)
    assert none == [] and np.array_equal(same, labels)
    with pytest.raises(ValueError, match="no member"):
        split_label(labels, 7, sim, 0.9)
    with pytest.raises(ValueError, match=r"\(Rx, Ry, 8\)"):
        split_label(labels, 1, sim[:, :, :4], 0.9)
