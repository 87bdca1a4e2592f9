import dask.array as da
import numpy as np
import pytest

from napari_stemcluster.core import cluster_means, cluster_sums, cluster_table

from _reference import DTYPES, random_cube
from _reference import cluster_means as ref_means


@pytest.fixture
def rng():
    return np.random.default_rng(5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 7, 5, 9), (1, 9, 4, 4), (9, 1, 3, 5)])
def test_means_match_reference(rng, dtype, shape):
    cube = random_cube(rng, shape, dtype)
    labels = rng.integers(0, 4, shape[:2]).astype(np.int32)
    labels.flat[:3] = [1, 2, 3]  # every label present
    got = cluster_means(cube, labels)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref_means(cube, labels), rtol=1e-6)


def test_uint32_sums_do_not_overflow():
    cube = np.full((4, 4, 2, 2), 2**32 - 1, np.uint32)
    sums, counts = cluster_sums(cube, np.ones((4, 4), np.int32))
    assert sums[0, 0, 0] == 16 * float(2**32 - 1)
    assert counts.tolist() == [16]


def test_empty_labels_and_background():
    cube = np.arange(2 * 3 * 2 * 2, dtype=np.uint16).reshape(2, 3, 2, 2)
    labels = np.array([[0, 3, 3], [0, 1, 0]])
    means = cluster_means(cube, labels)
    assert means.shape == (3, 2, 2)
    np.testing.assert_array_equal(means[1], 0)  # label 2 has no member
    np.testing.assert_allclose(means[2], cube[0, 1:].mean(axis=0))
    assert cluster_means(cube, np.zeros((2, 3), int)).shape == (0, 2, 2)


def test_partial_sums_merge_by_addition(rng):
    cube = random_cube(rng, (10, 6, 4, 4))
    labels = rng.integers(0, 5, (10, 6))
    whole, counts = cluster_sums(cube, labels, 4)
    top, ct = cluster_sums(cube[:3], labels[:3], 4)
    bottom, cb = cluster_sums(cube[3:], labels[3:], 4)
    np.testing.assert_allclose(top + bottom, whole)
    np.testing.assert_array_equal(ct + cb, counts)


def test_blocks_dask_and_threads_bit_for_bit(rng):
    import numba

    cube = random_cube(rng, (11, 7, 6, 5), np.float32)
    labels = rng.integers(0, 6, (11, 7))
    want = cluster_sums(cube, labels)[0]
    np.testing.assert_array_equal(cluster_sums(cube, labels, _block_rows=2)[0], want)
    np.testing.assert_array_equal(cluster_sums(da.from_array(cube, chunks=3), labels)[0], want)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(cluster_sums(cube, labels)[0], want)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.int32])
def test_position_parallel_integer_sums_equal_raster_order(rng, dtype):
    """Integer sums take the position-parallel kernel: the same numbers bit for bit."""
    from napari_stemcluster.core._averages_numba import _accumulate, _accumulate_exact
    from napari_stemcluster.core.averages import sum_dtype

    info = np.iinfo(dtype)
    cube = rng.integers(max(info.min, -(2**31)), info.max, (9, 13, 5, 7), endpoint=True)
    cube = cube.astype(dtype)
    labels = rng.integers(-1, 5, (9, 13))
    flat = cube.reshape(-1, 35).astype(sum_dtype(dtype))  # as cluster_sums gives the kernels
    want = np.zeros((4, 35))
    _accumulate(flat, labels.ravel().astype(np.int64), want)
    for tasks in (2, 3, 5):
        got = np.zeros((4, 35))
        _accumulate_exact(flat, labels.ravel().astype(np.int64), got, tasks)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(cluster_sums(cube, labels, 4)[0].reshape(4, 35), want)


def test_position_parallel_sums_only_where_exact():
    from napari_stemcluster.core.averages import _exact_tasks

    assert _exact_tasks(np.float32, 10, 2, 16) == 1  # float sums depend on order
    assert _exact_tasks(np.uint64, 10, 2, 16) == 1  # may exceed 2**53
    assert _exact_tasks(np.uint32, 2**22, 2, 16) == 1  # 2**32 * 2**22 > 2**53
    assert _exact_tasks(np.uint16, 10, 10**6, 4096) == 1  # copies too large
    import numba

    if numba.get_num_threads() > 1:
        assert _exact_tasks(np.uint16, 10, 2, 16) == numba.get_num_threads()


def test_nan_input_is_an_error(rng):
    cube = random_cube(rng, (3, 3, 2, 2), np.float64)
    cube[1, 1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        cluster_means(cube, np.ones((3, 3), int))


def test_label_shape_and_dtype_errors(rng):
    cube = random_cube(rng, (3, 3, 2, 2))
    with pytest.raises(ValueError, match="scan shape"):
        cluster_means(cube, np.ones((3, 2), int))
    with pytest.raises(TypeError, match="integers"):
        cluster_means(cube, np.ones((3, 3)))


def test_table_seed_is_highest_similarity_member():
    labels = np.array([[1, 1, 0], [2, 1, 2]])
    ms = np.array([[0.5, 0.8, 0.9], [0.7, 0.8, 0.75]])
    t = cluster_table(labels, ms)
    assert t.size.tolist() == [3, 2]
    assert t.seed.tolist() == [[0, 1], [1, 2]]  # tie 0.8: first in raster order
    np.testing.assert_allclose(t.mean_similarity, [0.7, 0.725], rtol=1e-6)
    feats = t.as_dict()
    assert feats["label"].tolist() == [1, 2]


def test_table_without_map_uses_centroid_and_handles_gaps():
    labels = np.zeros((5, 5), int)
    labels[1:4, 1:4] = 3
    t = cluster_table(labels)
    assert t.size.tolist() == [0, 0, 9]
    assert t.seed.tolist() == [[-1, -1], [-1, -1], [2, 2]]
    assert np.isnan(t.mean_similarity).all()


def _plain_sums(cube, labels, n):
    """Obviously right: a Python loop adding each labelled pattern in float64."""
    sums = np.zeros((n, *cube.shape[2:]))
    for (x, y), lab in np.ndenumerate(labels):
        if 0 < lab <= n:
            sums[lab - 1] += cube[x, y].astype(np.float64)
    return sums


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, ">u2", ">i2"])
@pytest.mark.parametrize("shape", [(6, 7, 5, 9), (1, 9, 4, 4), (9, 1, 3, 5), (4, 5, 1, 1)])
def test_narrow_integer_sums_equal_a_plain_loop(rng, dtype, shape):
    """Small integers are summed in 32-bit parts: the same numbers as a float64 loop."""
    info = np.iinfo(np.dtype(dtype))
    cube = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    labels = rng.integers(-1, 5, shape[:2])
    want = _plain_sums(cube, labels, 4)
    np.testing.assert_array_equal(cluster_sums(cube, labels, 4)[0], want)
    np.testing.assert_array_equal(cluster_sums(cube, labels, 4, _block_rows=2)[0], want)
    flat = np.ascontiguousarray(cube, np.dtype(dtype).newbyteorder("=")).reshape(
        -1, shape[2] * shape[3]
    )
    from napari_stemcluster.core._averages_numba import _accumulate_narrow

    acc = np.uint32 if info.min == 0 else np.int32
    for tasks in (1, 2, 5):
        got = np.zeros((4, flat.shape[1]))
        parts = np.zeros((tasks, 4, flat.shape[1]), acc)
        _accumulate_narrow(flat, labels.ravel().astype(np.int64), got, parts)
        np.testing.assert_array_equal(got.reshape(want.shape), want)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_narrow_sums_of_label_runs_equal_a_plain_loop(rng, dtype):
    """Runs of one label (1 to 9 positions, across scan rows and the ends of
    the parallel tasks' ranges, with background and out-of-range labels
    between them) are added a few patterns at a time: still the plain loop's
    numbers, extremes of the dtype included."""
    from napari_stemcluster.core._averages_numba import _accumulate_narrow

    info = np.iinfo(dtype)
    shape = (7, 11, 3, 5)
    cube = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    cube[2:4] = info.max
    cube[4, :6] = info.min
    lengths = rng.integers(1, 10, 40)
    values = rng.integers(-1, 6, 40)
    flat = np.repeat(values, lengths)[: shape[0] * shape[1]]
    flat = np.pad(flat, (0, shape[0] * shape[1] - flat.size), constant_values=2)
    labels = flat.reshape(shape[:2])
    labels[5] = 3  # a whole scan row of one label
    want = _plain_sums(cube, labels, 4)
    np.testing.assert_array_equal(cluster_sums(cube, labels, 4)[0], want)
    acc = np.uint32 if info.min == 0 else np.int32
    for tasks in (1, 2, 3, 7):
        got = np.zeros((4, 15))
        parts = np.zeros((tasks, 4, 15), acc)
        _accumulate_narrow(cube.reshape(-1, 15), labels.ravel().astype(np.int64), got, parts)
        np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_sum_tasks_share_the_labelled_positions_evenly(rng):
    """Each task's run of positions holds as many labelled positions as the
    others (give or take the rounding), wherever the labels are."""
    from napari_stemcluster.core._averages_numba import _task_bounds

    for n_tasks in (1, 2, 3, 7):
        for labels in (
            np.r_[np.zeros(700, np.int64), rng.integers(1, 4, 300)],  # labels at the end only
            rng.integers(-1, 6, 1001),  # background, labels beyond n_lab, negatives
            np.zeros(50, np.int64),
            np.ones(5, np.int64),
        ):
            b = _task_bounds(labels, 4, n_tasks)
            assert b[0] == 0 and b[-1] == labels.size and np.all(np.diff(b) >= 0)
            valid = (labels > 0) & (labels <= 4)
            counts = [int(valid[b[t] : b[t + 1]].sum()) for t in range(n_tasks)]
            per = -(-int(valid.sum()) // n_tasks)
            assert sum(counts) == valid.sum() and max(counts) <= per
            assert all(c == per for c in counts[: int(valid.sum()) // max(per, 1)])


def test_narrow_sums_of_one_labelled_half_cannot_overflow():
    """All labelled positions in the second half of the scan at the largest
    value: the runs are cut by labelled positions, each within a 32-bit sum."""
    n = 2 * 65_537 + 6
    cube = np.full((n, 1, 2, 1), 65535, np.uint16)
    labels = np.zeros((n, 1), np.int32)
    labels[n // 3 :] = 1
    labels[-7] = 2
    sums, counts = cluster_sums(cube, labels)
    m = n - n // 3 - 1
    assert sums[0, 0, 0] == 65535.0 * m and sums[1, 1, 0] == 65535.0
    assert counts.tolist() == [m, 1]


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_narrow_sums_cannot_overflow(dtype):
    """More extreme values than one 32-bit sum can hold: split into more parts."""
    from napari_stemcluster.core.averages import _narrow_parts

    info = np.iinfo(dtype)
    n = 2**32 // 2**15 + 3  # a 32-bit sum of this many int16 minima overflows
    n = 65_540 if dtype == np.uint16 else n
    value = info.max if dtype == np.uint16 else info.min
    cube = np.full((n, 1, 2, 1), value, dtype)
    cube[:, :, 1] = 1
    _, tasks = _narrow_parts(dtype, n, 1, 2)
    assert tasks >= 2
    sums, counts = cluster_sums(cube, np.ones((n, 1), np.int32))
    assert sums[0, 0, 0] == float(value) * n and sums[0, 1, 0] == n
    assert counts.tolist() == [n]


def test_narrow_sums_only_for_small_integers():
    from napari_stemcluster.core.averages import _narrow_parts

    assert _narrow_parts(np.float32, 10, 2, 16) is None
    assert _narrow_parts(np.uint32, 10, 2, 16) is None  # 32-bit sums could overflow
    assert _narrow_parts(np.uint16, 10, 10**6, 4096) is None  # copies too large
    assert _narrow_parts(np.int16, 10, 2, 16)[0] == np.int32
    assert _narrow_parts(np.uint8, 10, 2, 16)[0] == np.uint32


def test_non_contiguous_and_float16_cubes(rng):
    cube = random_cube(rng, (6, 8, 4, 6), np.uint16)
    labels = rng.integers(0, 4, (6, 8))
    view = cube[:, 1:6, :, 1:5]  # a crop: not contiguous
    np.testing.assert_array_equal(
        cluster_sums(view, labels[:, 1:6], 3)[0], _plain_sums(view, labels[:, 1:6], 3)
    )
    half = cube.astype(np.float16)
    np.testing.assert_array_equal(cluster_sums(half, labels, 3)[0], _plain_sums(half, labels, 3))


def _plain_table(labels, ms, n):
    """Obviously right: per label, its members' count, float64 sum in raster
    order and first member (raster order) of highest similarity, NaN lowest."""
    size, total, seed = np.zeros(n, np.int64), np.zeros(n), np.full((n, 2), -1)
    best = np.full(n, np.nan)
    for (x, y), lab in np.ndenumerate(labels):
        if 0 < lab <= n:
            v = float(ms[x, y])
            size[lab - 1] += 1
            total[lab - 1] += v
            key = -np.inf if np.isnan(v) else float(np.clip(v, -1e308, 1e308))
            if seed[lab - 1, 0] < 0 or key > best[lab - 1]:
                best[lab - 1], seed[lab - 1] = key, (x, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return size, seed, (total / size).astype(np.float32)


@pytest.mark.parametrize("shape", [(7, 9), (1, 12), (12, 1), (1, 1)])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.int8])
def test_table_equals_a_plain_loop(rng, shape, dtype):
    labels = rng.integers(0, 6, shape).astype(dtype)
    if np.dtype(dtype).kind == "i":
        labels[rng.random(shape) < 0.1] = -1
    ms = rng.choice([0.25, 0.5, 0.75, 1.0], shape).astype(np.float32)  # ties
    ms[rng.random(shape) < 0.2] = np.nan
    ms.flat[0] = np.inf
    for n in (None, 7):
        t = cluster_table(labels, ms, n)
        k = int(labels.max(initial=0)) if n is None else n
        size, seed, msim = _plain_table(labels, ms, k)
        np.testing.assert_array_equal(t.size, size)
        np.testing.assert_array_equal(t.seed, seed)
        np.testing.assert_array_equal(t.mean_similarity, msim)
    empty = cluster_table(np.zeros(shape, dtype), ms)
    assert len(empty) == 0 and empty.seed.shape == (0, 2)


@pytest.mark.parametrize(
    "dtype", [np.int8, ">i2", np.uint32, ">i4", np.int64, np.uint64, np.float16, ">f4", ">f8"]
)
def test_converted_dtypes_give_the_sums_of_their_own_values(rng, dtype):
    """Cubes are read in a few kernel dtypes: the sums are those of the cube's own values."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        cube = rng.normal(0, 1e3, (5, 6, 3, 4))
    else:
        info = np.iinfo(dtype)
        if dtype.itemsize == 8:  # beyond 2**53: each value rounds through float64
            cube = rng.integers(2**60, 2**62, (5, 6, 3, 4), dtype=np.int64)
        else:
            cube = rng.integers(info.min, info.max, (5, 6, 3, 4), endpoint=True)
    cube = cube.astype(dtype)
    labels = rng.integers(-1, 4, (5, 6))
    want = np.zeros((3, 3, 4))
    for x, y in np.ndindex(5, 6):  # raster order, float64 of each value
        if labels[x, y] > 0:
            want[labels[x, y] - 1] += cube[x, y].astype(np.float64)
    for rows in (None, 2):  # the whole cube in one call, and blocks
        got, counts = cluster_sums(cube, labels, 3, _block_rows=rows)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(counts, np.bincount(labels[labels > 0] - 1, minlength=3))


def test_a_converted_cube_is_read_in_blocks():
    """Never a float64 copy of a whole cube: converted cubes go block by block."""
    from napari_stemcluster.core._validate import block_rows
    from napari_stemcluster.core.averages import _sum_rows, sum_dtype

    wide = np.zeros((8192, 8, 16, 16), np.uint32)  # 64 MiB, C-contiguous
    assert _sum_rows(wide, sum_dtype(wide.dtype)) == block_rows(wide.shape, 8) == 4096
    narrow = np.zeros((64, 8, 16, 16), np.uint16)
    assert _sum_rows(narrow, sum_dtype(narrow.dtype)) == 64  # summed where it lies
