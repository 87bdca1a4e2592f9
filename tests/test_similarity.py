import h5py
import numpy as np
import pytest

from napari_stemcluster.core import (
    NEIGHBOR_OFFSETS,
    mean_similarity,
    neighbor_similarity,
)

from _reference import DTYPES, random_cube
from _reference import mean_similarity as ref_mean
from _reference import similarity as ref_similarity


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize(
    "shape",
    [
        (5, 6, 7, 9),
        (1, 7, 4, 4),
        (7, 1, 4, 4),
        (1, 1, 3, 3),
        (2, 2, 1, 5),
        (4, 3, 16, 11),
    ],
)
def test_matches_reference_on_odd_shapes(rng, shape):
    cube = random_cube(rng, shape)
    got = neighbor_similarity(cube)
    want = ref_similarity(cube)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=1e-5, equal_nan=True)
    assert got.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes(rng, dtype):
    cube = random_cube(rng, (4, 5, 6, 6), dtype=dtype, high=100)
    np.testing.assert_allclose(
        neighbor_similarity(cube), ref_similarity(cube), atol=1e-5, equal_nan=True
    )


def test_large_uint32_values_do_not_overflow(rng):
    cube = rng.integers(2**31, 2**32 - 1, (3, 3, 8, 8), dtype=np.uint32)
    np.testing.assert_allclose(
        neighbor_similarity(cube), ref_similarity(cube), atol=1e-5, equal_nan=True
    )


def test_out_of_scan_neighbours_are_nan_and_in_scan_are_not(rng):
    sim = neighbor_similarity(random_cube(rng, (3, 4, 4, 4)))
    rx, ry = sim.shape[:2]
    for x in range(rx):
        for y in range(ry):
            for n, (dx, dy) in enumerate(NEIGHBOR_OFFSETS):
                inside = 0 <= x + dx < rx and 0 <= y + dy < ry
                assert np.isnan(sim[x, y, n]) != inside


def test_symmetric(rng):
    sim = neighbor_similarity(random_cube(rng, (6, 5, 5, 5)))
    for n, (dx, dy) in enumerate(NEIGHBOR_OFFSETS):
        for x in range(6):
            for y in range(5):
                if 0 <= x + dx < 6 and 0 <= y + dy < 5:
                    assert sim[x, y, n] == sim[x + dx, y + dy, 7 - n]


def test_zero_and_constant_patterns():
    cube = np.zeros((3, 3, 4, 5), np.uint16)
    cube[1, 1] = 7  # constant pattern among all-zero ones
    cube[2, 2] = 3
    with np.errstate(all="raise"):
        sim = neighbor_similarity(cube)
    assert not np.isnan(sim[1, 1]).any()
    assert sim[1, 1, 7] == pytest.approx(1.0)  # two constant patterns
    assert sim[0, 0, 7] == 0.0  # zero vs constant
    assert sim[0, 0, 4] == 0.0  # zero vs zero
    np.testing.assert_allclose(sim, ref_similarity(cube), atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("q_mask", ["annulus", "array"])
def test_q_mask(rng, q_mask):
    cube = random_cube(rng, (4, 4, 9, 8))
    from napari_stemcluster.core import annular_mask

    mask = annular_mask((9, 8), 1.5, 3.5)
    arg = (1.5, 3.5) if q_mask == "annulus" else mask
    np.testing.assert_allclose(
        neighbor_similarity(cube, arg),
        ref_similarity(cube, mask),
        atol=1e-5,
        equal_nan=True,
    )


def test_blur_and_mask(rng):
    cube = random_cube(rng, (3, 4, 10, 12))
    mask = np.zeros((10, 12), bool)
    mask[2:8, 3:] = True
    np.testing.assert_allclose(
        neighbor_similarity(cube, mask, sigma=1.5),
        ref_similarity(cube, mask, sigma=1.5),
        atol=1e-5,
        equal_nan=True,
    )


def test_all_false_mask_is_an_error(rng):
    with pytest.raises(ValueError, match="selects no detector pixel"):
        neighbor_similarity(random_cube(rng, (2, 2, 3, 3)), np.zeros((3, 3), bool))


def test_bad_mask_shape(rng):
    with pytest.raises(ValueError, match="detector shape"):
        neighbor_similarity(random_cube(rng, (2, 2, 3, 3)), np.ones((4, 3), bool))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_an_error(rng, bad):
    cube = random_cube(rng, (3, 3, 4, 4), np.float32)
    cube[2, 1, 0, 3] = bad
    with pytest.raises(ValueError, match=r"NaN or inf .*\(2, 1\)"):
        neighbor_similarity(cube)


@pytest.mark.parametrize("bad", [np.zeros((3, 3, 3)), np.zeros((2, 2, 2, 2), complex)])
def test_wrong_input(bad):
    with pytest.raises((ValueError, TypeError), match=r"4-D|dtype"):
        neighbor_similarity(bad)


def test_block_size_and_sources_do_not_change_results(rng, tmp_path):
    import dask.array as da

    cube = random_cube(rng, (9, 6, 5, 5))
    full = neighbor_similarity(cube)
    for rows in (1, 2, 4):
        np.testing.assert_array_equal(neighbor_similarity(cube, _block_rows=rows), full)
    np.testing.assert_array_equal(
        neighbor_similarity(da.from_array(cube, chunks=(2, 3, 5, 5))), full
    )
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["d"] = cube
    with h5py.File(tmp_path / "c.h5", "r") as f:
        np.testing.assert_array_equal(neighbor_similarity(f["d"], _block_rows=2), full)


def test_progress_and_cancel(rng):
    cube = random_cube(rng, (6, 3, 4, 4))
    calls = []
    neighbor_similarity(cube, progress=lambda d, t: calls.append((d, t)), _block_rows=2)
    assert calls == [(1, 3), (2, 3), (3, 3)]

    class Stop(Exception):
        pass

    def cancel(done, total):
        raise Stop

    with pytest.raises(Stop):
        neighbor_similarity(cube, progress=cancel, _block_rows=2)


def test_mean_similarity_ignores_out_of_scan(rng):
    sim = neighbor_similarity(random_cube(rng, (4, 5, 4, 4)))
    np.testing.assert_allclose(mean_similarity(sim), ref_mean(sim), atol=1e-6)
    # uniform data: borders are not biased low
    flat = neighbor_similarity(np.ones((4, 5, 3, 3), np.uint8))
    np.testing.assert_array_equal(mean_similarity(flat), np.ones((4, 5), np.float32))


def test_mean_similarity_of_single_position_is_zero():
    sim = neighbor_similarity(np.ones((1, 1, 3, 3)))
    assert np.isnan(sim).all()
    assert mean_similarity(sim)[0, 0] == 0.0


def test_thread_count_does_not_change_results(rng):
    import numba

    cube = random_cube(rng, (12, 11, 8, 8))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = neighbor_similarity(cube)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = neighbor_similarity(cube)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)
