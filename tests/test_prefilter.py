"""The correlative prefilter against a plain numpy version of the method."""

import functools
import math

import dask.array as da
import h5py
import numba
import numpy as np
import pytest
from scipy import ndimage

from napari_stemcluster.core import prefilter as _pf
from napari_stemcluster.core.prefilter import (
    _prefilter,
    prefilter_footprint,
    prefilter_weight,
)

# This module tests the exact definition (every detector pixel); the
# subsampled default is tested in test_prefilter_subsampled.py.
correlative_prefilter = functools.partial(_pf.correlative_prefilter, q_step=1)

# ---------------------------------------------------------------------------
# Reference implementation: per-position loops, float64, scipy blur.


def ref_footprint(radius):
    return [
        (dx, dy)
        for dx in range(-radius, radius + 1)
        for dy in range(-radius, radius + 1)
        if dx * dx + dy * dy <= (radius + 0.5) ** 2
    ]


def ref_weight(qx, qy, edge=None, center=None):
    if edge is None:
        edge = math.floor(min(qx, qy) / 16 + 0.5)
    cx, cy = ((qx - 1) / 2, (qy - 1) / 2) if center is None else center
    w = np.zeros((qx, qy))
    for i in range(qx):
        for j in range(qy):
            inside = edge <= i < qx - edge and edge <= j < qy - edge
            if inside:
                w[i, j] = ((i - cx) ** 2 + (j - cy) ** 2) / (qx * qy)
    return w


def ref_vectors(cube, sigma, edge=None, center=None):
    nx, ny, qx, qy = cube.shape
    w = ref_weight(qx, qy, edge, center)
    vec = np.zeros(cube.shape)
    for x in range(nx):
        for y in range(ny):
            b = cube[x, y].astype(np.float64)
            if sigma > 0:
                b = ndimage.gaussian_filter(b, sigma, mode="reflect", truncate=4.0)
            if np.ptp(b[w > 0]) == 0:  # constant where weighted: zero vector
                continue
            d = (b - (b * w).sum() / w.sum()) * w
            vec[x, y] = d / np.linalg.norm(d)
    return vec


def ref_correlations(cube, sigma=3.0, radius=4, edge=None, center=None, vec=None):
    """R for every position and footprint offset (NaN outside the scan).

    ``vec``: the unit vectors to correlate (default: :func:`ref_vectors`).
    """
    nx, ny = cube.shape[:2]
    if vec is None:
        vec = ref_vectors(cube, sigma, edge, center)
    offs = ref_footprint(radius)
    r = np.full((nx, ny, len(offs)), np.nan)
    for x in range(nx):
        for y in range(ny):
            for j, (dx, dy) in enumerate(offs):
                u, v = x + dx, y + dy
                if 0 <= u < nx and 0 <= v < ny:
                    r[x, y, j] = np.sum(vec[x, y] * vec[u, v])
    return r


def ref_prefilter(
    cube, sigma=3.0, radius=4, corr_range=(0.85, 0.95), edge=None, center=None, vec=None
):
    """The prefiltered cube and the weights, from the unit vectors ``vec`` (default:
    :func:`ref_vectors`)."""
    nx, ny = cube.shape[:2]
    raw = cube.astype(np.float64)
    r = ref_correlations(cube, sigma, radius, edge, center, vec=vec)
    rmin, rmax = corr_range
    offs = ref_footprint(radius)
    out = np.empty(cube.shape)
    weights = np.zeros((nx, ny, len(offs)))
    for x in range(nx):
        for y in range(ny):
            acc = raw[x, y].copy()
            total = 1.0
            for j, (dx, dy) in enumerate(offs):
                if (dx, dy) == (0, 0):
                    weights[x, y, j] = 1.0
                    continue
                u, v = x + dx, y + dy
                if 0 <= u < nx and 0 <= v < ny:
                    rhat = min(max((r[x, y, j] - rmin) / (rmax - rmin), 0.0), 1.0)
                    weights[x, y, j] = rhat
                    acc += rhat * raw[u, v]
                    total += rhat
            out[x, y] = acc / total
    return out, weights


# ---------------------------------------------------------------------------
# Test data


def grains_cube(nx, ny, qx, qy, seed=0, dtype=np.float64, scale=50.0):
    """Noisy patterns drifting smoothly between a few templates.

    Neighbouring patterns correlate partially, so correlations spread across
    a range instead of sitting at 0 or 1.
    """
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.2, 1.0, (3, qx, qy))
    tx = np.linspace(0, 1, nx)[:, None]
    ty = np.linspace(0, 1, ny)[None, :]
    mix = np.stack([1 - tx + 0 * ty, tx * (1 - ty), tx * ty + 0.3 * ty], -1)
    mean = scale * np.einsum("xyk,kab->xyab", mix, templates)
    cube = rng.poisson(mean).astype(np.float64)
    return cube.astype(dtype)


def spread_range(cube, sigma, radius, edge=None):
    """A corr_range around the middle of the actual correlations."""
    r = ref_correlations(cube, sigma, radius, edge)
    offs = ref_footprint(radius)
    r = np.delete(r, offs.index((0, 0)), axis=2)
    r = r[np.isfinite(r)]
    lo, hi = np.quantile(r, [0.2, 0.8])
    return float(lo), float(hi)


def assert_close(got, ref):
    scale = max(np.abs(ref).max(), 1.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)


# ---------------------------------------------------------------------------
# Footprint and weight


@pytest.mark.parametrize(("radius", "count"), [(0, 1), (1, 9), (2, 21), (4, 69)])
def test_footprint(radius, count):
    fp = prefilter_footprint(radius)
    assert fp.shape == (count, 2)
    assert fp.dtype == np.int64
    assert [tuple(d) for d in fp.tolist()] == ref_footprint(radius)
    assert tuple(fp[count // 2]) == (0, 0)
    # Point symmetric, so the forward half holds half of the non-centre offsets.
    assert {tuple(d) for d in (-fp).tolist()} == {tuple(d) for d in fp.tolist()}


@pytest.mark.parametrize("radius", [-1, 1.5, "4", True, None])
def test_footprint_rejects_bad_radius(radius):
    with pytest.raises((TypeError, ValueError), match="radius must be a non-negative"):
        prefilter_footprint(radius)


@pytest.mark.parametrize(
    ("shape", "edge", "center"),
    [
        ((192, 192), None, None),
        ((9, 13), None, None),
        ((9, 13), 0, None),
        ((16, 20), 2, (3.0, 12.5)),
        ((1, 5), 0, None),
    ],
)
def test_weight_matches_formula(shape, edge, center):
    w = prefilter_weight(shape, edge=edge, center=center)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, ref_weight(*shape, edge, center), rtol=1e-6)


def test_default_edge_is_a_sixteenth_of_the_detector():
    w = prefilter_weight((192, 192))
    assert np.all(w[:12] == 0) and np.all(w[-12:] == 0)
    assert np.all(w[:, :12] == 0) and np.all(w[:, -12:] == 0)
    assert np.all(w[12, 12:-12] > 0) and np.all(w[12:-12, 179] > 0)


@pytest.mark.parametrize(
    ("shape", "edge", "center", "match"),
    [
        ((8, 8), 4, None, "edge=4 is too large"),
        ((9, 30), 5, None, "edge=5 is too large"),
        ((8, 8), -1, None, "edge must be a non-negative"),
        ((1, 1), 0, None, "zero on every pixel"),
        ((8, 8), 0, (1.0,), "center must be two numbers"),
        ((8, 8), 0, (np.nan, 1.0), "center must be finite"),
        ((0, 8), None, None, "detector_shape must be two positive"),
        ((8,), None, None, "detector_shape must be two positive"),
    ],
)
def test_weight_rejects_bad_input(shape, edge, center, match):
    with pytest.raises(ValueError, match=match):
        prefilter_weight(shape, edge=edge, center=center)


# ---------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize(
    ("scan", "detector", "sigma", "radius"),
    [
        ((6, 7), (9, 13), 3.0, 4),  # non-square detector, blur wider than it
        ((5, 5), (12, 12), 0.0, 2),
        ((7, 6), (10, 8), 1.5, 1),
        ((1, 9), (8, 8), 1.0, 4),  # 1xN scan
        ((9, 1), (8, 8), 1.0, 4),  # Nx1 scan
        ((2, 3), (6, 7), 1.0, 4),  # footprint larger than the scan
    ],
)
def test_matches_reference(scan, detector, sigma, radius):
    cube = grains_cube(*scan, *detector, seed=sum(scan) + sum(detector))
    corr_range = spread_range(cube, sigma, radius)
    ref, ref_w = ref_prefilter(cube, sigma, radius, corr_range)
    nk = len(ref_footprint(radius))
    weights = np.full((*scan, nk), np.nan, np.float32)
    got = _prefilter(cube, sigma, radius, corr_range, None, None, None, None, weights_out=weights)
    assert got.dtype == np.float32
    assert got.shape == cube.shape
    assert_close(got, ref)
    np.testing.assert_allclose(weights, ref_w, atol=1e-4)
    # Weights strictly between 0 and 1 occur, so the linear mapping is tested.
    if nk > 1 and cube.shape[0] * cube.shape[1] > 1:
        assert np.any((ref_w > 0.05) & (ref_w < 0.95))


def test_default_parameters_match_reference():
    cube = grains_cube(5, 6, 24, 20, seed=11, scale=400.0)
    ref, ref_w = ref_prefilter(cube)
    assert_close(correlative_prefilter(cube), ref)
    assert np.any(ref_w[..., :34] > 0)  # some neighbours are averaged in


def test_edge_and_center_options_match_reference():
    cube = grains_cube(4, 5, 14, 18, seed=12)
    kw = {"edge": 2, "center": (5.0, 10.5)}
    corr_range = spread_range(cube, 1.0, 2, edge=2)
    ref, _ = ref_prefilter(cube, 1.0, 2, corr_range, **kw)
    got = correlative_prefilter(cube, 1.0, 2, corr_range, **kw)
    assert_close(got, ref)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.float32, np.float64]
)
def test_input_dtypes(dtype):
    cube = grains_cube(5, 4, 10, 11, seed=13, dtype=dtype, scale=40.0)
    corr_range = spread_range(cube, 1.0, 2)
    ref, _ = ref_prefilter(cube, 1.0, 2, corr_range)
    got = correlative_prefilter(cube, 1.0, 2, corr_range)
    assert got.dtype == np.float32
    assert_close(got, ref)


def test_big_endian_and_float16_input():
    cube = grains_cube(4, 4, 8, 8, seed=14, scale=30.0)
    expected = correlative_prefilter(cube, 1.0, 2, (0.0, 0.5))
    for dtype in (">u2", ">f8", np.float16):
        got = correlative_prefilter(cube.astype(dtype), 1.0, 2, (0.0, 0.5))
        np.testing.assert_array_equal(got, expected)


def test_one_by_one_scan_returns_the_pattern():
    cube = np.arange(30, dtype=np.uint16).reshape(1, 1, 5, 6)
    got = correlative_prefilter(cube)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, cube)


def test_radius_zero_returns_the_cube():
    cube = grains_cube(3, 4, 6, 6, seed=15, dtype=np.uint16)
    np.testing.assert_array_equal(correlative_prefilter(cube, radius=0), cube)


def test_constant_and_empty_patterns_are_left_alone():
    # Constant patterns centre to zero vectors: R = 0 with every neighbour, so
    # nothing is averaged in and each pattern comes out unchanged.
    rng = np.random.default_rng(16)
    cube = np.zeros((4, 5, 9, 13), np.uint16)
    cube[...] = rng.integers(0, 1000, (4, 5))[:, :, None, None]
    cube[1, 2] = 0
    got = correlative_prefilter(cube, 3.0, 4, (0.1, 0.2))
    np.testing.assert_array_equal(got, cube)


def test_constant_and_empty_patterns_among_others():
    cube = grains_cube(5, 5, 10, 10, seed=17)
    cube[0, 0] = 0
    cube[2, 3] = 17.0
    cube[4, 4] = 0
    corr_range = spread_range(cube, 1.0, 2)
    ref, ref_w = ref_prefilter(cube, 1.0, 2, corr_range)
    assert ref_w[2, 3, 6] == 0  # the constant pattern is uncorrelated
    got = correlative_prefilter(cube, 1.0, 2, corr_range)
    assert_close(got, ref)
    np.testing.assert_array_equal(got[2, 3], cube[2, 3])


# ---------------------------------------------------------------------------
# Structure of the computation


def test_each_pair_gets_one_weight():
    # The weight of q in p's average is the weight of p in q's average: one
    # correlation per unordered pair, credited to both ends.
    cube = grains_cube(7, 6, 9, 9, seed=18)
    fp = prefilter_footprint(3)
    index = {tuple(d): j for j, d in enumerate(fp.tolist())}
    weights = np.full((7, 6, len(fp)), np.nan, np.float32)
    _prefilter(
        cube,
        1.0,
        3,
        spread_range(cube, 1.0, 3),
        None,
        None,
        None,
        None,
        block=2,
        weights_out=weights,
    )
    assert np.any((weights > 0) & (weights < 1))
    for x in range(7):
        for y in range(6):
            for j, (dx, dy) in enumerate(fp.tolist()):
                u, v = x + dx, y + dy
                if 0 <= u < 7 and 0 <= v < 6:
                    assert weights[x, y, j] == weights[u, v, index[(-dx, -dy)]]
                else:
                    assert weights[x, y, j] == 0


@pytest.mark.parametrize("block", [1, 2, 3, 5])
def test_block_size_does_not_change_the_result(block):
    cube = grains_cube(11, 7, 12, 10, seed=19, dtype=np.uint16)
    corr_range = spread_range(cube, 2.0, 4)
    whole = correlative_prefilter(cube, 2.0, 4, corr_range, _block_rows=11)
    got = correlative_prefilter(cube, 2.0, 4, corr_range, _block_rows=block)
    np.testing.assert_array_equal(got, whole)


def test_thread_count_does_not_change_the_result():
    cube = grains_cube(9, 8, 16, 16, seed=20)
    corr_range = spread_range(cube, 2.0, 3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = correlative_prefilter(cube, 2.0, 3, corr_range, _block_rows=3)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = correlative_prefilter(cube, 2.0, 3, corr_range, _block_rows=4)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


# ---------------------------------------------------------------------------
# Array types


@pytest.fixture
def cube_and_expected():
    cube = grains_cube(9, 5, 8, 10, seed=21, dtype=np.uint16)
    return cube, correlative_prefilter(cube, 1.0, 2, (0.0, 0.6))


def test_h5py_input_and_output(tmp_path, cube_and_expected):
    cube, expected = cube_and_expected
    with h5py.File(tmp_path / "data.h5", "w") as f:
        src = f.create_dataset("cube", data=cube, chunks=(2, 3, 8, 10))
        dst = f.create_dataset("filtered", shape=cube.shape, dtype=np.float32)
        result = correlative_prefilter(src, 1.0, 2, (0.0, 0.6), out=dst, _block_rows=2)
        assert result is dst
        np.testing.assert_array_equal(dst[...], expected)


def test_dask_input(cube_and_expected):
    cube, expected = cube_and_expected
    lazy = da.from_array(cube, chunks=(4, 2, 8, 10))
    got = correlative_prefilter(lazy, 1.0, 2, (0.0, 0.6), _block_rows=3)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, expected)


def test_memmap_input_and_output(tmp_path, cube_and_expected):
    cube, expected = cube_and_expected
    src = np.lib.format.open_memmap(tmp_path / "in.npy", "w+", dtype=cube.dtype, shape=cube.shape)
    src[...] = cube
    dst = np.lib.format.open_memmap(tmp_path / "out.npy", "w+", dtype=np.float32, shape=cube.shape)
    assert correlative_prefilter(src, 1.0, 2, (0.0, 0.6), out=dst) is dst
    dst.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_non_contiguous_numpy_out(cube_and_expected):
    cube, expected = cube_and_expected
    base = np.zeros((*cube.shape[:3], 2 * cube.shape[3]), np.float32)
    out = base[..., ::2]
    correlative_prefilter(cube, 1.0, 2, (0.0, 0.6), out=out, _block_rows=4)
    np.testing.assert_array_equal(out, expected)
    assert np.all(base[..., 1::2] == 0)


# ---------------------------------------------------------------------------
# Errors, progress and cancellation


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_non_finite_input_is_an_error(bad, sigma):
    cube = grains_cube(6, 4, 8, 8, seed=22)
    cube[5, 2, 0, 7] = bad
    with pytest.raises(ValueError, match=r"NaN or inf.*\(5, 2\)"):
        correlative_prefilter(cube, sigma, 1, _block_rows=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"radius": -1}, ValueError, "radius must be a non-negative integer"),
        ({"radius": 2.5}, TypeError, "radius must be a non-negative integer"),
        ({"corr_range": (0.9, 0.9)}, ValueError, "Rmax > Rmin"),
        ({"corr_range": (0.95, 0.85)}, ValueError, "Rmax > Rmin"),
        ({"corr_range": (0.5,)}, ValueError, "corr_range must be two numbers"),
        ({"corr_range": (np.nan, 1.0)}, ValueError, "corr_range must be finite"),
        ({"edge": 4}, ValueError, "edge=4 is too large for a 8x9 detector"),
        ({"sigma": -1.0}, ValueError, "sigma must be a finite number >= 0"),
        ({"sigma": "big"}, TypeError, "sigma must be a number"),
        ({"out": np.zeros((3, 4, 8, 9))}, ValueError, "out must be float32"),
        ({"out": np.zeros((3, 4, 9, 8), np.float32)}, ValueError, "cube's shape"),
        ({"out": [1, 2]}, TypeError, "out must be an array"),
        ({"progress": 3}, TypeError, "progress must be callable"),
    ],
)
def test_invalid_parameters(kwargs, error, match):
    cube = np.ones((3, 4, 8, 9), np.uint16)
    with pytest.raises(error, match=match):
        correlative_prefilter(cube, **kwargs)


def test_read_only_out_is_rejected():
    out = np.zeros((2, 2, 4, 4), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        correlative_prefilter(np.ones((2, 2, 4, 4)), out=out, edge=0)


@pytest.mark.parametrize(
    ("cube", "match"),
    [
        (np.ones((3, 4, 5)), "must be 4-D"),
        (np.ones((3, 0, 4, 4)), "empty axis"),
        (np.ones((2, 2, 4, 4), bool), "integers or floats"),
        ([[1, 2]], "must be an array"),
    ],
)
def test_invalid_cube(cube, match):
    with pytest.raises((TypeError, ValueError), match=match):
        correlative_prefilter(cube)


def test_progress_reports_rows():
    cube = grains_cube(7, 3, 8, 8, seed=23)
    calls = []
    correlative_prefilter(cube, progress=lambda d, t: calls.append((d, t)), _block_rows=3)
    assert calls == [(3, 7), (6, 7), (7, 7)]


def test_cancel_by_raising_from_progress():
    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    cube = grains_cube(7, 3, 8, 8, seed=24)
    out = np.full(cube.shape, -1, np.float32)
    with pytest.raises(Cancelled):
        correlative_prefilter(cube, out=out, progress=cancel, _block_rows=2)
    # Only the first block was written before the callback stopped the run.
    assert np.all(out[2:] == -1)
    assert not np.any(out[:2] == -1)


# ---------------------------------------------------------------------------
# What the filter is for


def spot_pattern(q, centres):
    x, y = np.mgrid[:q, :q]
    return 2 + sum(40 * np.exp(-((x - a) ** 2 + (y - b) ** 2) / 4) for a, b in centres)


def test_denoises_within_grains_without_mixing_them():
    q = 32
    grain_a = spot_pattern(q, [(16, 16), (10, 10), (22, 22), (10, 22), (22, 10)])
    grain_b = spot_pattern(q, [(16, 16), (8, 16), (24, 16), (16, 8), (16, 24)])
    truth = np.empty((10, 12, q, q))
    truth[:, :6] = grain_a
    truth[:, 6:] = grain_b
    rng = np.random.default_rng(25)
    cube = rng.poisson(truth).astype(np.uint16)

    fp = prefilter_footprint(4)
    weights = np.empty((10, 12, len(fp)), np.float32)
    out = _prefilter(cube, 3.0, 4, (0.85, 0.95), None, None, None, None, weights_out=weights)

    # Neighbours across the grain boundary get no weight, neighbours within a
    # grain do.
    cols = np.arange(12)[None, :, None] + fp[None, None, :, 1]
    rows = np.arange(10)[:, None, None] + fp[None, None, :, 0]
    inside = (cols >= 0) & (cols < 12) & (rows >= 0) & (rows < 10)
    same = (np.arange(12)[None, :, None] < 6) == (cols < 6)
    assert np.all(weights[inside & ~same] == 0)
    assert np.mean(weights[inside & same] > 0.5) > 0.9

    for half in (slice(0, 6), slice(6, 12)):
        noise_before = np.sqrt(np.mean((cube[:, half] - truth[:, half]) ** 2))
        noise_after = np.sqrt(np.mean((out[:, half] - truth[:, half]) ** 2))
        assert noise_after < noise_before / 3

    # Nothing leaks across: new noise in grain B leaves grain A untouched.
    other = cube.copy()
    other[:, 6:] = rng.poisson(truth[:, 6:])
    out2 = correlative_prefilter(other)
    np.testing.assert_array_equal(out2[:, :6], out[:, :6])
    assert not np.array_equal(out2[:, 6:], out[:, 6:])


# ---------------------------------------------------------------------------
# Dtypes, extreme values and memory


@pytest.mark.parametrize("dtype", [">u2", ">f8", ">i4", np.int64, np.uint64, np.int8])
def test_byte_orders_and_wide_integers_match_reference(dtype):
    cube = grains_cube(5, 4, 10, 9, seed=23, scale=40.0)
    corr_range = spread_range(cube, 1.0, 2)
    ref, _ = ref_prefilter(cube, 1.0, 2, corr_range)
    got = correlative_prefilter(cube.astype(dtype), 1.0, 2, corr_range)
    assert_close(got, ref)


@pytest.mark.parametrize(
    ("dtype", "factor"), [(np.uint64, 2.0**56), (np.float32, 1e30), (np.float64, 1e-30)]
)
def test_extreme_values_correlate_like_their_rescaled_cube(dtype, factor):
    cube = grains_cube(5, 4, 10, 9, seed=24, scale=40.0)
    corr_range = spread_range(cube, 1.0, 2)
    _, ref_w = ref_prefilter(cube, 1.0, 2, corr_range)
    big = (cube * factor).astype(dtype)
    weights = np.empty(ref_w.shape, np.float32)
    got = _prefilter(big, 1.0, 2, corr_range, None, None, None, None, weights_out=weights)
    np.testing.assert_allclose(weights, ref_w, atol=2e-5)
    assert np.all(np.isfinite(got))
    ref, _ = ref_prefilter(big.astype(np.float64), 1.0, 2, corr_range)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_values_beyond_float32_are_reported_as_such():
    cube = grains_cube(4, 3, 8, 8, seed=25)
    cube[2, 1] *= 1e300
    with pytest.raises(ValueError, match=r"\(2, 1\) holds values up to .*float32 range"):
        correlative_prefilter(cube, 1.0, 1)


def test_in_memory_cube_is_not_copied(monkeypatch):
    # A native in-memory cube is read in place: the raw-row ring and the
    # per-block reads are never used.
    from napari_stemcluster.core import prefilter

    cube = grains_cube(6, 5, 8, 8, seed=26, dtype=np.uint16)
    expected = correlative_prefilter(cube, 1.0, 2, (0.0, 0.6), _block_rows=2)

    def fail(*args):
        raise AssertionError("read_rows called for an in-memory cube")

    monkeypatch.setattr(prefilter, "read_rows", fail)
    np.testing.assert_array_equal(
        correlative_prefilter(cube, 1.0, 2, (0.0, 0.6), _block_rows=2), expected
    )
