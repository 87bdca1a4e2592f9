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


# --- blur_box against scipy: borders, tiny detectors, every sigma and dtype ---


def _blur_box(src2d, box, sigma, weight=None, scale=1.0, pad_extra=0, tmp_extra=0, offset=0):
    """Run the kernel on one pattern; scratch buffers full of NaN (stale data)."""
    from napari_stemcluster.core._blur import blur_box, box_scratch, padded_index

    qx, qy = src2d.shape
    i0, i1, j0, j1 = box
    if weight is None:
        weight = np.ones((i1 - i0, j1 - j0), np.float32)
    k = gaussian_kernel1d(sigma)
    r = (len(k) - 1) // 2
    pad_n, tmp_n = box_scratch(box, r)
    pad = np.full(pad_n + pad_extra + offset, np.nan, np.float32)[offset:]
    tmp = np.full(tmp_n + tmp_extra + offset, np.nan, np.float32)[offset:]
    out = np.full(weight.size + offset, np.nan, np.float32)[offset:]
    sq = blur_box(
        np.ascontiguousarray(src2d).ravel(),
        qx,
        qy,
        scale,
        k,
        padded_index(qx, r),
        np.array(box, np.int64),
        np.ascontiguousarray(weight, np.float32).ravel(),
        pad,
        tmp,
        out,
    )
    return out.reshape(weight.shape), sq


def _reference(src2d, box, sigma, weight, scale=1.0):
    i0, i1, j0, j1 = box
    x = np.asarray(src2d, np.float64) * scale
    if sigma > 0 and len(gaussian_kernel1d(sigma)) > 1:
        x = ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=4.0)
    return x[i0:i1, j0:j1] * weight


def _boxes(qx, qy):
    """Whole detector, touching each edge, interior, single rows/columns."""
    yield (0, qx, 0, qy)
    yield (0, max(1, qx // 2), 0, max(1, qy // 2))  # top-left corner
    yield (qx - max(1, qx // 3), qx, qy - max(1, qy // 3), qy)  # bottom-right corner
    yield (qx // 2, qx // 2 + 1, 0, qy)  # one full row
    yield (0, qx, qy // 2, qy // 2 + 1)  # one full column
    if qx > 4 and qy > 4:
        yield (2, qx - 2, 1, qy - 3)  # interior, within the blur radius of the edges


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize(
    "shape",
    [(16, 16), (9, 13), (13, 9), (1, 12), (12, 1), (2, 3), (5, 5), (64, 40), (20, 21)],
)
def test_blur_box_borders_and_sizes(shape, sigma):
    # Detectors smaller than the blur radius (sigma 3 reaches 12 pixels)
    # reflect more than once; box widths around multiples of 8 exercise the
    # whole-vector sweeps and their overflow into the next row.
    rng = np.random.default_rng(sum(shape) + int(10 * sigma))
    src = rng.integers(0, 1000, shape).astype(np.uint16)
    for box in _boxes(*shape):
        i0, i1, j0, j1 = box
        weight = rng.uniform(0, 1, (i1 - i0, j1 - j0)).astype(np.float32)
        weight[rng.random(weight.shape) < 0.3] = 0  # masked-out pixels
        got, sq = _blur_box(src, box, sigma, weight)
        ref = _reference(src, box, sigma, weight)
        assert_close(got, ref)
        assert np.all(got[weight == 0] == 0)
        np.testing.assert_allclose(sq, (ref.astype(np.float64) ** 2).sum(), rtol=1e-5)


@pytest.mark.parametrize("bw", range(1, 19))
def test_blur_box_every_row_width(bw):
    # Rows of every length modulo the vector width, a few rows high.
    rng = np.random.default_rng(bw)
    src = rng.uniform(0, 10, (12, 24)).astype(np.float32)
    box = (3, 9, 2, 2 + bw)
    for sigma in (0.0, 1.0, 2.0):
        got, _ = _blur_box(src, box, sigma)
        assert_close(got, _reference(src, box, sigma, 1.0))


@pytest.mark.parametrize(
    "dtype",
    [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64],
)
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_blur_box_dtypes(dtype, sigma):
    rng = np.random.default_rng(11)
    src = rng.integers(0, 100, (10, 11)).astype(dtype)
    box = (1, 9, 0, 7)
    weight = np.ones((8, 7), np.float32)
    got, _ = _blur_box(src, box, sigma, weight)
    assert_close(got, _reference(src, box, sigma, weight))
    got, _ = _blur_box(src, box, sigma, weight, scale=0.125)  # power-of-two rescale
    assert_close(got, _reference(src, box, sigma, weight, scale=0.125))


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0, 3.0])
def test_blur_patterns_byte_orders(byteorder, sigma):
    rng = np.random.default_rng(12)
    native = rng.integers(0, 60000, (3, 7, 10)).astype(np.uint16)
    stack = native.astype(np.dtype(np.uint16).newbyteorder(byteorder))
    assert_close(blur_patterns(stack, sigma), scipy_blur(native, sigma))


@pytest.mark.parametrize("sigma", [0.0, 1.0, 3.0])
def test_blur_box_zero_and_constant_patterns(sigma):
    zeros = np.zeros((9, 10), np.uint16)
    got, sq = _blur_box(zeros, (1, 8, 2, 10), sigma)
    assert np.all(got == 0) and sq == 0.0
    const = np.full((9, 10), 500, np.uint16)
    got, sq = _blur_box(const, (0, 9, 0, 10), sigma)
    np.testing.assert_allclose(got, 500.0, rtol=1e-6)  # the taps sum to 1
    np.testing.assert_allclose(sq, 90 * 500.0**2, rtol=1e-5)


@pytest.mark.parametrize("sigma", [0.0, 1.0, 1.5, 3.0])
def test_blur_box_independent_of_scratch_and_addresses(sigma):
    # Bit-identical results whatever the scratch sizes, their stale contents
    # and the buffers' alignment.
    rng = np.random.default_rng(13)
    src = rng.integers(0, 4000, (40, 37)).astype(np.uint16)
    box = (3, 35, 4, 33)
    weight = (rng.random((32, 29)) < 0.8).astype(np.float32)
    first, sq0 = _blur_box(src, box, sigma, weight)
    for pad_extra, tmp_extra, offset in [(0, 0, 1), (13, 7, 3), (1000, 1000, 5), (64, 0, 7)]:
        got, sq = _blur_box(
            src, box, sigma, weight, pad_extra=pad_extra, tmp_extra=tmp_extra, offset=offset
        )
        np.testing.assert_array_equal(got, first)
        assert sq == sq0


def test_blur_patterns_whole_detector_tiny():
    # Detectors smaller than the kernel, one row, one column, one pixel.
    rng = np.random.default_rng(14)
    for shape in [(1, 1), (1, 5), (5, 1), (2, 2), (3, 4)]:
        stack = rng.uniform(0, 100, (2, *shape))
        for sigma in (0.5, 1.0, 3.0):
            assert_close(blur_patterns(stack, sigma), scipy_blur(stack, sigma))


@pytest.mark.parametrize("sigma", [0.0, 1.0])
@pytest.mark.parametrize("scan", [(1, 9), (9, 1), (3, 4)])
def test_similarity_with_annulus_matches_numpy(scan, sigma):
    # The fused kernel (blur, crop, mask, dots) against scipy + numpy.
    from napari_stemcluster.core import annular_mask, neighbor_similarity

    rng = np.random.default_rng(15)
    det = (12, 10)
    cube = rng.poisson(30, (*scan, *det)).astype(np.uint16)
    ring = (1.5, 5.0)
    got = neighbor_similarity(cube, ring, sigma)
    mask = annular_mask(det, *ring)
    x = cube.astype(np.float64)
    if sigma:
        x = ndimage.gaussian_filter(x, (0, 0, sigma, sigma), mode="reflect", truncate=4.0)
    v = x[:, :, mask]
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    for n, (dx, dy) in enumerate(offsets):
        for x0 in range(scan[0]):
            for y0 in range(scan[1]):
                x1, y1 = x0 + dx, y0 + dy
                if 0 <= x1 < scan[0] and 0 <= y1 < scan[1]:
                    assert got[x0, y0, n] == pytest.approx(v[x0, y0] @ v[x1, y1], abs=2e-6)
                else:
                    assert np.isnan(got[x0, y0, n])
