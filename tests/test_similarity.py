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


# --- fused mask + blur kernel: the numerical contract ---------------------------


@pytest.mark.parametrize("shape", [(5, 7, 12, 9), (1, 6, 10, 10), (6, 1, 7, 13), (3, 4, 1, 8)])
@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.5])
def test_annulus_and_blur_match_reference_on_awkward_shapes(rng, shape, sigma):
    from napari_stemcluster.core import annular_mask

    cube = random_cube(rng, shape)
    mask = annular_mask(shape[2:], 1.0, 4.0)
    got = neighbor_similarity(cube, mask, sigma)
    np.testing.assert_allclose(got, ref_similarity(cube, mask, sigma), atol=1e-6, equal_nan=True)


def test_mask_touching_the_detector_edge_with_blur(rng):
    cube = random_cube(rng, (4, 5, 9, 11))
    mask = np.zeros((9, 11), bool)
    mask[0, :] = mask[:, -1] = True  # the blur must reflect across these edges
    mask[4, 3] = True
    np.testing.assert_allclose(
        neighbor_similarity(cube, mask, 1.5),
        ref_similarity(cube, mask, 1.5),
        atol=1e-6,
        equal_nan=True,
    )


@pytest.mark.parametrize("dtype", [">u2", ">i4", ">f4", ">f8", "<f8", np.float16, np.int8])
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_byte_orders_and_small_floats(rng, dtype, sigma):
    cube = random_cube(rng, (4, 5, 8, 7), np.uint8, high=100).astype(dtype)
    from napari_stemcluster.core import annular_mask

    ref = ref_similarity(cube.astype(np.float64), annular_mask((8, 7), 1, 3), sigma)
    got = neighbor_similarity(cube, (1, 3), sigma)
    np.testing.assert_allclose(got, ref, atol=1e-6, equal_nan=True)
    if np.dtype(dtype).itemsize > 1:  # byte order does not change a single bit
        native = cube.astype(np.dtype(dtype).newbyteorder("="))
        np.testing.assert_array_equal(got, neighbor_similarity(native, (1, 3), sigma))


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [
        (np.uint64, 2**63 - 2**40, 2**64 - 2**12),
        (np.int64, -(2**63), 2**63 - 1),
        (np.float32, 1e19, 3e38),
        (np.float64, 1e200, 1e300),
        (np.float64, 1e-300, 1e-290),
        (np.float32, 1e-30, 1e-25),
    ],
)
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_extreme_values_do_not_overflow(rng, dtype, low, high, sigma):
    if np.dtype(dtype).kind == "f":
        cube = rng.uniform(0, 1, (3, 4, 6, 6)) * (high - low) + low
    else:
        info = np.iinfo(dtype)
        cube = rng.integers(max(low, info.min), high, (3, 4, 6, 6), dtype=dtype, endpoint=True)
    cube = cube.astype(dtype)
    cube[1, 1] = cube[1, 1, ::-1]  # neighbours that differ
    ref = ref_similarity(_scaled_float64(cube), None, sigma)
    got = neighbor_similarity(cube, None, sigma)
    assert np.isfinite(got[~np.isnan(ref)]).all()
    np.testing.assert_allclose(got, ref, atol=1e-6, equal_nan=True)


def _scaled_float64(cube):
    """float64 cube scaled per pattern into [-1, 1] (cosines are scale-free)."""
    x = cube.astype(np.float64)
    top = np.abs(x).max(axis=(2, 3), keepdims=True)
    return x / np.where(top > 0, top, 1)


def test_mixed_scales_and_zero_patterns(rng):
    cube = rng.uniform(0, 1, (3, 3, 5, 5))
    cube[0] *= 1e30
    cube[1, 1] = 0
    cube[2] *= 1e-30
    np.testing.assert_allclose(
        neighbor_similarity(cube, None, 1.0),
        ref_similarity(_scaled_float64(cube), None, 1.0),
        atol=1e-6,
        equal_nan=True,
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("q_mask", [None, (1, 2)])
def test_non_finite_reports_the_position_in_the_cube_passed_in(rng, bad, q_mask):
    cube = random_cube(rng, (7, 4, 6, 6), np.float64)
    cube[5, 3, 0, 0] = bad  # outside the annulus: still bad input
    with pytest.raises(ValueError, match=r"NaN or inf .*\(5, 3\)"):
        neighbor_similarity(cube, q_mask, 1.0, _block_rows=2)


def test_strip_width_does_not_change_results(rng, monkeypatch):
    from napari_stemcluster.core import similarity

    cube = random_cube(rng, (6, 11, 8, 9))
    whole = neighbor_similarity(cube, (1, 3.5), 1.0)
    for width in (1, 2, 3, 5, 100):
        monkeypatch.setattr(similarity, "_strip", lambda ry, plan, w=width: w)
        np.testing.assert_array_equal(neighbor_similarity(cube, (1, 3.5), 1.0), whole)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_strips_split_evenly_between_threads(monkeypatch, threads):
    """The kernel gives each thread an equal run of strips: strips of equal
    width, as many for every thread, where the scan width allows it."""
    from napari_stemcluster.core import similarity

    monkeypatch.setattr(similarity.numba, "get_num_threads", lambda: threads)
    plan = similarity.similarity_plan((128, 128), (8, 57.6), 1.0)
    budget = similarity.STRIP_BYTES // (2 * 4 * int(np.count_nonzero(plan.weight))) - 2
    for ry in (64, 128, 256, 512):
        width = similarity._strip(ry, plan)
        strips = -(-ry // width)
        assert strips % threads == 0 and strips >= 2 * threads, (ry, width)
        assert width <= budget
    assert 128 % similarity._strip(128, plan) == 0  # the benchmark's scan: equal strips
    for ry in range(1, 300):
        width = similarity._strip(ry, plan)
        assert 1 <= width <= max(4, budget)
        # never fewer strips than the old rule (width capped by the budget
        # and by two strips per thread) gave
        old = max(1, min(max(4, budget), -(-ry // (2 * threads))))
        assert -(-ry // width) >= -(-ry // old)


def test_block_similarity_building_block(rng):
    from napari_stemcluster.core.similarity import block_similarity, similarity_plan

    cube = random_cube(rng, (5, 4, 7, 7), np.float32)
    plan = similarity_plan((7, 7), (1, 3), 1.0, cube.dtype)
    full = neighbor_similarity(cube, (1, 3), 1.0)
    out = np.full((2, 4, 4), np.nan, np.float32)
    sq = block_similarity(cube[1:4], 2, plan, out)
    np.testing.assert_array_equal(out, full[1:3, :, 4:])
    assert sq.shape == (3, 4) and np.all(sq > 0)
    with pytest.raises(ValueError, match="detector shape"):
        block_similarity(cube[:, :, :6], 2, plan)


def test_one_kernel_call_only_for_in_memory_cubes_of_the_kernel_dtype(tmp_path, monkeypatch):
    # Without progress, an in-memory C-contiguous cube of the kernel's dtype
    # is one call (no copy); memory maps, other dtypes (converted block by
    # block), strided views and progress keep 64 MiB blocks. Same values.
    from napari_stemcluster.core import similarity as sim_mod

    calls = []
    real = sim_mod.block_similarity

    def counted(block, *a, **k):
        calls.append(block.shape[0])
        return real(block, *a, **k)

    monkeypatch.setattr(sim_mod, "block_similarity", counted)
    monkeypatch.setattr(sim_mod, "block_rows", lambda shape, size, *a: 2)
    rng = np.random.default_rng(5)
    cube = rng.integers(0, 50, (7, 3, 5, 4)).astype(np.uint16)
    mm = np.lib.format.open_memmap(tmp_path / "c.npy", "w+", np.uint16, cube.shape)
    mm[:] = cube
    want = neighbor_similarity(cube, (0.5, 2), 1.0, _block_rows=2)
    for arr, progress, n_calls in [
        (cube, None, 1),
        (cube, lambda done, total: None, 4),
        (mm, None, 4),
        (cube.astype(np.int16), None, 4),
        (np.asfortranarray(cube), None, 4),
    ]:
        calls.clear()
        got = neighbor_similarity(arr, (0.5, 2), 1.0, progress=progress)
        assert len(calls) == n_calls
        np.testing.assert_array_equal(got, want)
