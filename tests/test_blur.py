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
