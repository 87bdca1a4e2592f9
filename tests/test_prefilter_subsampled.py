"""The prefilter's subsampled correlation grid (``q_step > 1``) against plain numpy."""

import numba
import numpy as np
import pytest
from scipy import ndimage

from napari_stemcluster.core import _prefilter_numba as _k
from napari_stemcluster.core import prefilter
from napari_stemcluster.core._blur import gaussian_kernel1d, padded_index
from napari_stemcluster.core.prefilter import _prefilter, correlative_prefilter, sample_weights
from test_prefilter import assert_close, grains_cube, ref_footprint, ref_prefilter, ref_weight


@pytest.fixture(autouse=True)
def small_detectors_subsample(monkeypatch):
    # Subsample the small test detectors too (see test_small_boxes_are_exact).
    monkeypatch.setattr(prefilter, "MIN_SAMPLES", 1)


# ---------------------------------------------------------------------------
# Reference: per-position loops, float64, scipy blur, samples picked by slicing.


def ref_interpolation(n, step):
    """Linear interpolation of pixels 0..n-1 from samples 0, step, ...; constant past the last."""
    m = -(-n // step)
    a = np.zeros((n, m))
    for i in range(n):
        pos = i / step
        j = int(np.floor(pos))
        if j >= m - 1:
            a[i, m - 1] = 1.0
        else:
            a[i, j] = j + 1 - pos
            a[i, j + 1] = pos - j
    return a


def ref_box(w):
    rows = np.flatnonzero(w.any(axis=1))
    cols = np.flatnonzero(w.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def ref_vectors_sub(cube, sigma, step, edge=None, center=None):
    nx, ny, qx, qy = cube.shape
    w = ref_weight(qx, qy, edge, center)
    i0, i1, j0, j1 = ref_box(w)
    wb = w[i0:i1, j0:j1]
    ax, ay = ref_interpolation(i1 - i0, step), ref_interpolation(j1 - j0, step)
    wm = ax.T @ wb @ ay
    wv = np.sqrt(ax.T @ wb**2 @ ay)
    vec = np.zeros((nx, ny) + wm.shape)
    for x in range(nx):
        for y in range(ny):
            b = cube[x, y].astype(np.float64)
            if sigma > 0:
                b = ndimage.gaussian_filter(b, sigma, mode="reflect", truncate=4.0)
            s = b[i0:i1:step, j0:j1:step]
            if np.ptp(s[wv > 0]) == 0:
                continue
            d = (s - (s * wm).sum() / wm.sum()) * wv
            vec[x, y] = d / np.linalg.norm(d)
    return vec


def ref_prefilter_sub(cube, sigma, radius, corr_range, step, edge=None, center=None):
    vec = ref_vectors_sub(cube, sigma, step, edge, center)
    return ref_prefilter(cube, sigma, radius, corr_range, edge, center, vec=vec)


def sub_range(cube, sigma, radius, step):
    """A corr_range around the middle of the subsampled correlations."""
    vec = ref_vectors_sub(cube, sigma, step)
    nx, ny = cube.shape[:2]
    r = [
        np.sum(vec[x, y] * vec[x + dx, y + dy])
        for x in range(nx)
        for y in range(ny)
        for dx, dy in ref_footprint(radius)
        if (dx, dy) != (0, 0) and 0 <= x + dx < nx and 0 <= y + dy < ny
    ]
    lo, hi = np.quantile(r, [0.2, 0.8])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------
# Weights and the blur kernel


@pytest.mark.parametrize(("n", "step"), [(1, 2), (2, 2), (7, 2), (8, 2), (10, 3), (11, 4)])
def test_interpolation_matrix_matches_reference(n, step):
    from napari_stemcluster.core.prefilter import _interpolation

    np.testing.assert_allclose(_interpolation(n, step), ref_interpolation(n, step))
    np.testing.assert_allclose(_interpolation(n, step).sum(axis=1), 1.0)


@pytest.mark.parametrize("shape", [(13, 9), (8, 8), (1, 5), (56, 56)])
@pytest.mark.parametrize("step", [2, 3])
def test_sample_weights_keep_the_totals(shape, step):
    rng = np.random.default_rng(sum(shape) + step)
    w = rng.uniform(0, 1, shape).astype(np.float32)
    wm, wv = sample_weights(w, step)
    m = (-(-shape[0] // step), -(-shape[1] // step))
    assert wm.shape == wv.shape == (m[0] * m[1],)
    assert wm.dtype == wv.dtype == np.float32
    np.testing.assert_allclose(wm.sum(), w.sum(dtype=np.float64), rtol=1e-5)
    np.testing.assert_allclose(
        (wv.astype(np.float64) ** 2).sum(), (w.astype(np.float64) ** 2).sum(), rtol=1e-5
    )


def run_blur_sub(pattern, sigma, box, step):
    qx, qy = pattern.shape
    k = gaussian_kernel1d(sigma)
    r = (len(k) - 1) // 2
    box = np.asarray(box, np.int64)
    bh, bw = int(box[1] - box[0]), int(box[3] - box[2])
    nbh, nbw = -(-bh // step), -(-bw // step)
    pad, vrows, ph, hb = (
        np.full(n, np.nan, np.float32) for n in _k.sub_scratch(bh, bw, len(k), step)
    )
    out = np.full(nbh * nbw, np.nan, np.float32)
    src = np.ascontiguousarray(pattern).ravel()
    idx = padded_index(qx, r)
    _k._blur_box_sub(src, qx, qy, 1.0, k, idx, box, step, pad, vrows, ph, hb, out)
    return out.reshape(nbh, nbw)


@pytest.mark.parametrize(
    ("shape", "sigma", "box"),
    [
        ((16, 16), 3.0, (1, 15, 1, 15)),
        ((9, 13), 3.0, (0, 9, 0, 13)),  # blur wider than the detector, whole box
        ((20, 11), 1.5, (2, 17, 3, 10)),  # non-square, odd box sizes
        ((12, 12), 0.0, (1, 11, 1, 11)),  # no blur
        ((10, 10), 1.0, (4, 5, 3, 9)),  # one box row
        ((64, 64), 3.0, (4, 60, 4, 60)),  # the defaults at 64x64: uint16 read in pairs
        ((24, 20), 1.0, (6, 18, 6, 14)),  # in pairs, no reflected columns
        ((10, 14), 3.0, (0, 10, 0, 14)),  # in pairs, blur wider than the detector
    ],
)
@pytest.mark.parametrize("step", [2, 3])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])  # the kernels' dtypes
def test_blur_box_sub_matches_scipy(shape, sigma, box, step, dtype):
    rng = np.random.default_rng(sum(shape))
    pattern = rng.integers(0, 500, shape).astype(dtype)
    got = run_blur_sub(pattern, sigma, box, step)
    b = pattern.astype(np.float64)
    if sigma > 0:
        b = ndimage.gaussian_filter(b, sigma, mode="reflect", truncate=4.0)
    i0, i1, j0, j1 = box
    ref = b[i0:i1:step, j0:j1:step]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    ("shape", "sigma", "box"),
    [
        ((64, 64), 3.0, (4, 60, 4, 60)),
        ((24, 20), 1.0, (6, 18, 6, 14)),
        ((10, 14), 3.0, (0, 10, 0, 14)),
        ((16, 18), 0.0, (2, 13, 4, 16)),  # no blur, odd box height
    ],
)
def test_step_two_reads_uint16_in_pairs_with_the_same_bits(shape, sigma, box):
    # uint16 patterns are converted two pixels per 32-bit load, float32
    # ones pixel by pixel: the same values give the same bits.
    rng = np.random.default_rng(3)
    pattern = rng.integers(0, 65536, shape).astype(np.uint16)
    pattern[0, 0] = 65535  # the high half of a pair
    got = run_blur_sub(pattern, sigma, box, 2)
    ref = run_blur_sub(pattern.astype(np.float32), sigma, box, 2)
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


# ---------------------------------------------------------------------------
# Whole prefilter


@pytest.mark.parametrize(
    ("scan", "detector", "sigma", "radius", "step"),
    [
        ((6, 7), (20, 24), 3.0, 4, 2),
        ((5, 5), (12, 17), 0.0, 2, 2),  # non-square detector, no blur
        ((7, 6), (19, 16), 1.5, 1, 3),
        ((1, 9), (16, 16), 1.0, 4, 2),  # 1xN scan
        ((9, 1), (16, 16), 1.0, 4, 2),  # Nx1 scan
        ((2, 3), (9, 10), 1.0, 4, 2),  # footprint larger than the scan
    ],
)
def test_matches_reference(scan, detector, sigma, radius, step):
    cube = grains_cube(*scan, *detector, seed=sum(scan) + sum(detector))
    corr_range = sub_range(cube, sigma, radius, step)
    ref, ref_w = ref_prefilter_sub(cube, sigma, radius, corr_range, step)
    nk = len(ref_footprint(radius))
    weights = np.full((*scan, nk), np.nan, np.float32)
    got = _prefilter(
        cube, sigma, radius, corr_range, None, None, None, None, weights_out=weights, q_step=step
    )
    assert got.dtype == np.float32
    assert_close(got, ref)
    np.testing.assert_allclose(weights, ref_w, atol=1e-4)
    if nk > 1 and cube.shape[0] * cube.shape[1] > 1:
        assert np.any((ref_w > 0.05) & (ref_w < 0.95))


def test_edge_and_center_options_match_reference():
    cube = grains_cube(4, 5, 14, 18, seed=12)
    kw = {"edge": 2, "center": (5.0, 10.5)}
    ref_v = ref_vectors_sub(cube, 1.0, 2, **kw)
    assert ref_v.shape[2:] == (5, 7)
    corr = (0.2, 0.8)
    ref, _ = ref_prefilter_sub(cube, 1.0, 2, corr, 2, **kw)
    got = correlative_prefilter(cube, 1.0, 2, corr, **kw, q_step=2)
    assert_close(got, ref)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, ">u2", np.int16, np.float32, ">f8"])
def test_input_dtypes(dtype):
    cube = grains_cube(5, 4, 16, 14, seed=13, scale=40.0)
    corr_range = sub_range(cube, 1.0, 2, 2)
    ref, _ = ref_prefilter_sub(cube, 1.0, 2, corr_range, 2)
    got = correlative_prefilter(cube.astype(dtype), 1.0, 2, corr_range, q_step=2)
    assert got.dtype == np.float32
    assert_close(got, ref)


def test_constant_and_empty_patterns_are_left_alone():
    cube = grains_cube(4, 5, 16, 16, seed=3, scale=60.0)
    cube[1, 1] = 0
    cube[2, 3] = 7
    weights = np.full((4, 5, 21), np.nan, np.float32)
    got = _prefilter(
        cube, 1.0, 2, (-0.5, 0.5), None, None, None, None, weights_out=weights, q_step=2
    )
    ref, ref_w = ref_prefilter_sub(cube, 1.0, 2, (-0.5, 0.5), 2)
    assert_close(got, ref)
    # R = 0 with every neighbour: weight (0 - Rmin) / (Rmax - Rmin) = 0.5.
    inside = np.isfinite(ref_w[1, 1]) & (ref_w[1, 1] > 0)
    np.testing.assert_allclose(weights[1, 1][inside & (np.arange(21) != 10)], 0.5, atol=1e-6)
    zero = correlative_prefilter(np.zeros((3, 4, 16, 16), np.uint16), q_step=2)
    assert not zero.any()


def test_step_one_is_the_exact_path():
    cube = grains_cube(5, 6, 24, 20, seed=11, scale=400.0)
    w = np.full((5, 6, 69), np.nan, np.float32)
    exact = _prefilter(cube, 3.0, 4, (0.85, 0.95), None, None, None, None, weights_out=w)
    np.testing.assert_array_equal(correlative_prefilter(cube, q_step=1), exact)
    assert not np.array_equal(correlative_prefilter(cube), exact)  # the default subsamples


def test_small_boxes_are_exact(monkeypatch):
    monkeypatch.setattr(prefilter, "MIN_SAMPLES", 8)
    cube = grains_cube(4, 5, 17, 17, seed=4, scale=300.0)  # box 15x15 < 8 * 2
    np.testing.assert_array_equal(
        correlative_prefilter(cube, q_step=2), correlative_prefilter(cube, q_step=1)
    )
    big = grains_cube(3, 4, 36, 34, seed=4, scale=300.0)  # box 32x30 >= 16
    assert not np.array_equal(
        correlative_prefilter(big, 1.0, 1, (0.0, 0.5), q_step=2),
        correlative_prefilter(big, 1.0, 1, (0.0, 0.5), q_step=1),
    )


@pytest.mark.parametrize("block", [1, 2, 5])
def test_block_size_does_not_change_the_result(block):
    cube = grains_cube(9, 7, 20, 20, seed=5, scale=200.0)
    expected = correlative_prefilter(cube, 2.0, 3, (0.5, 0.9), q_step=2)
    got = correlative_prefilter(cube, 2.0, 3, (0.5, 0.9), q_step=2, _block_rows=block)
    np.testing.assert_array_equal(got, expected)


def test_thread_count_does_not_change_the_result():
    cube = grains_cube(9, 11, 20, 20, seed=6, scale=200.0)
    expected = correlative_prefilter(cube, 2.0, 3, (0.5, 0.9), q_step=2)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        got = correlative_prefilter(cube, 2.0, 3, (0.5, 0.9), q_step=2)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("q_step", "error", "match"),
    [(0, ValueError, "q_step"), (-1, ValueError, "q_step"), (1.5, TypeError, "q_step"),
     (True, TypeError, "q_step")],
)  # fmt: skip
def test_invalid_step(q_step, error, match):
    with pytest.raises(error, match=match):
        correlative_prefilter(np.ones((2, 2, 8, 8)), q_step=q_step)


def test_segment_passes_the_step_on():
    from napari_stemcluster.core import segment
    from napari_stemcluster.core.params import ParameterError

    cube = grains_cube(6, 6, 16, 16, seed=2, scale=300.0)
    res = segment(cube, prefilter={"q_step": 2}, real_mask=None)
    assert res.params["prefilter"]["q_step"] == 2
    with pytest.raises((ValueError, ParameterError), match="q_step"):
        segment(cube, prefilter={"q_step": 0}, real_mask=None)
