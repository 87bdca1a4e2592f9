"""The numba Gaussian blur against scipy.ndimage.gaussian_filter."""

import numpy as np
import pytest
from scipy import ndimage

from napari_stemcluster.core._blur import blur_patterns, gaussian_kernel1d


def scipy_blur(stack, sigma):
    """Reference: scipy on every pattern, in float64."""
    stack = np.asarray(stack, dtype=np.float64)
    flat = stack.reshape(-1, *stack.shape[-2:])
    out = [ndimage.gaussian_filter(p, sigma, mode="reflect", truncate=4.0) for p in flat]
    return np.array(out).reshape(stack.shape)


def assert_close(got, ref):
    scale = max(np.abs(ref).max(), 1.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize(
    ("shape", "sigma"),
    [
        ((4, 16, 16), 1.0),
        ((3, 9, 13), 3.0),  # kernel radius 12 exceeds the detector: reflects twice
        ((2, 3, 5), 2.0),
        ((2, 1, 7), 1.5),  # single-row and single-column detectors
        ((2, 7, 1), 1.5),
        ((2, 3, 64, 64), 3.0),  # leading axes are flattened
        ((2, 20, 11), 0.7),
    ],
)
def test_matches_scipy(shape, sigma):
    rng = np.random.default_rng(sum(shape))
    stack = rng.uniform(0, 100, shape)
    got = blur_patterns(stack, sigma)
    assert got.dtype == np.float32
    assert got.shape == stack.shape
    assert_close(got, scipy_blur(stack, sigma))


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.float32, np.float64, ">u2"]
)
def test_input_dtypes(dtype):
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 200, (3, 10, 12)).astype(dtype)
    assert_close(blur_patterns(stack, 2.0), scipy_blur(stack, 2.0))


def test_float16_input():
    stack = np.random.default_rng(4).uniform(0, 10, (2, 8, 8)).astype(np.float16)
    assert_close(blur_patterns(stack, 1.0), scipy_blur(stack, 1.0))


def test_non_contiguous_input():
    base = np.random.default_rng(5).uniform(0, 1, (12, 10, 3))
    stack = base.transpose(2, 0, 1)  # (3, 12, 10), not C-contiguous
    assert not stack.flags.c_contiguous
    assert_close(blur_patterns(stack, 1.2), scipy_blur(stack, 1.2))


def test_sigma_zero_is_a_float32_copy():
    stack = np.arange(2 * 4 * 5, dtype=np.uint16).reshape(2, 4, 5)
    got = blur_patterns(stack, 0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, stack)


def test_tiny_sigma_has_a_single_tap():
    # scipy's kernel radius is int(4 * sigma + 0.5) = 0 here: no blur at all.
    stack = np.random.default_rng(6).uniform(0, 1, (2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(blur_patterns(stack, 0.1), stack)
    np.testing.assert_array_equal(gaussian_kernel1d(0.1), [1.0])


def test_kernel_matches_scipy_weights():
    k = gaussian_kernel1d(3.0)
    assert k.shape == (25,)  # radius int(4 * 3 + 0.5) = 12
    np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-6)
    impulse = np.zeros(41)
    impulse[20] = 1
    ref = ndimage.gaussian_filter1d(impulse, 3.0, truncate=4.0)[8:33]
    np.testing.assert_allclose(k, ref, rtol=1e-6)


def test_constant_pattern_stays_constant():
    stack = np.full((2, 9, 13), 7.0)
    got = blur_patterns(stack, 3.0)
    assert np.ptp(got[0]) == 0 and np.ptp(got[1]) == 0
    np.testing.assert_allclose(got, 7.0, rtol=1e-6)


def test_out_argument():
    rng = np.random.default_rng(7)
    stack = rng.uniform(0, 1, (3, 8, 9))
    out = np.full(stack.shape, np.nan, np.float32)
    assert blur_patterns(stack, 1.0, out=out) is out
    assert_close(out, scipy_blur(stack, 1.0))


@pytest.mark.parametrize(
    "out",
    [
        np.empty((3, 8, 9), np.float64),
        np.empty((3, 8, 8), np.float32),
        np.empty((3, 9, 8), np.float32).transpose(0, 2, 1),
    ],
)
def test_bad_out_is_rejected(out):
    with pytest.raises(ValueError, match="C-contiguous float32"):
        blur_patterns(np.zeros((3, 8, 9)), 1.0, out=out)


def test_non_finite_values_propagate():
    # The prefilter relies on NaN/inf reaching the blurred pattern's sum.
    stack = np.ones((2, 10, 10))
    stack[0, 0, 0] = np.nan
    stack[1, 9, 4] = np.inf
    got = blur_patterns(stack, 3.0)
    assert np.isnan(got[0].sum())
    assert not np.isfinite(got[1].sum())


@pytest.mark.parametrize(
    ("shape", "box", "sigma"),
    [
        ((16, 16), (2, 14, 2, 14), 1.0),
        ((9, 13), (0, 9, 0, 13), 1.0),  # the whole detector
        ((9, 13), (0, 3, 10, 13), 3.0),  # a corner; the kernel is wider than the detector
        ((7, 1), (2, 5, 0, 1), 1.5),  # a single-column detector
        ((12, 10), (4, 5, 3, 4), 0.0),  # one pixel, no blur
        ((20, 11), (5, 15, 1, 9), 2.5),  # 21 taps: 8 + 8 + 4 + 1 per sweep
    ],
)
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_blur_box_matches_cropped_scipy(shape, box, sigma, scale):
    from napari_stemcluster.core._blur import blur_box, box_scratch, padded_index

    rng = np.random.default_rng(8)
    qx, qy = shape
    src = rng.integers(0, 1000, shape).astype(np.uint16)
    i0, i1, j0, j1 = box
    weight = rng.uniform(0, 1, (i1 - i0, j1 - j0)).astype(np.float32)
    k = gaussian_kernel1d(sigma)
    r = (len(k) - 1) // 2
    pad_n, tmp_n = box_scratch(box, r)
    out = np.empty(weight.size, np.float32)
    sq = blur_box(
        src.ravel(),
        qx,
        qy,
        scale,
        k,
        padded_index(qx, r),
        np.array(box, np.int64),
        weight.ravel(),
        np.full(pad_n, np.nan, np.float32),  # stale scratch must not leak in
        np.full(tmp_n, np.nan, np.float32),
        out,
    )
    ref = (
        scipy_blur(src * scale, sigma)[i0:i1, j0:j1] * weight
        if sigma
        else src[i0:i1, j0:j1] * scale * weight
    )
    assert_close(out.reshape(weight.shape), ref)
    np.testing.assert_allclose(sq, (ref.astype(np.float64) ** 2).sum(), rtol=1e-5)


def test_pattern_scale():
    from napari_stemcluster.core._blur import pattern_scale

    assert pattern_scale(np.array([3.0, -5.0])) == 2.0**-3  # |max| 5 -> [0.5, 1)
    assert pattern_scale(np.zeros(4)) == 1.0
    assert pattern_scale(np.array([1.0, np.nan])) == 0.0
    assert pattern_scale(np.array([np.inf, 1.0])) == 0.0
    big = np.array([2**64 - 1], np.uint64)
    assert 0.5 <= big[0] * pattern_scale(big) < 1
