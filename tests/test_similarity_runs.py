"""The similarity kernel's compact vectors: only the q-mask's pixels.

:func:`~napari_stemcluster.core._blur.blur_runs` (blur, then keep the mask's
row segments), :func:`~napari_stemcluster.core._similarity_numba.bin_runs`
and :func:`~napari_stemcluster.core._similarity_numba.dot5` against plain
numpy/scipy versions, on masks with gaps, empty rows inside their bounding
box, masks touching the detector edges, tiny and non-square detectors, every
blur width and dtypes; then the whole kernel on such masks.
"""

import numpy as np
import pytest
from scipy import ndimage

from napari_stemcluster.core._blur import (
    blur_runs,
    blur_runs_sum,
    dark_rect,
    gaussian_kernel1d,
    padded_index,
    runs_scratch,
)
from napari_stemcluster.core._similarity_numba import bin_box, bin_runs, dot5
from napari_stemcluster.core.masking import dark_field_keep, mask_runs
from napari_stemcluster.core.similarity import (
    block_similarity,
    kernel_dtype,
    neighbor_similarity,
    similarity_plan,
)

import _reference as ref


@pytest.fixture
def rng():
    return np.random.default_rng(23)


def _masks(qx, qy):
    """Whole detector, annulus, two discs (box rows without pixels), edges, one pixel."""
    x, y = np.mgrid[0:qx, 0:qy]
    yield np.ones((qx, qy), bool)
    cx, cy = (qx - 1) / 2, (qy - 1) / 2
    d = np.hypot(x - cx, y - cy)
    ring = (d >= min(qx, qy) / 8) & (d <= 0.45 * min(qx, qy))
    if ring.any():
        yield ring
    two = np.zeros((qx, qy), bool)
    two[: max(1, qx // 4), : max(1, qy // 3)] = True  # top-left, touching two edges
    two[qx - max(1, qx // 4) :, qy - max(1, qy // 3) :] = True  # bottom-right
    yield two
    comb = np.zeros((qx, qy), bool)
    comb[:, ::3] = True  # one-pixel runs, every column group
    comb[qx // 2, :] = True
    yield comb
    one = np.zeros((qx, qy), bool)
    one[qx - 1, qy // 2] = True
    yield one


def _run_kernel(src2d, mask, sigma, scale=1.0):
    """blur_runs on one pattern, scratch and output full of NaN (stale data)."""
    qx, qy = src2d.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = np.array([rows[0], rows[-1] + 1, cols[0], cols[-1] + 1], np.int64)
    runs = mask_runs(mask[box[0] : box[1], box[2] : box[3]])
    k = gaussian_kernel1d(sigma)
    r = (len(k) - 1) // 2
    pad_n, tmp_n = runs_scratch(box, r)
    n = int(mask.sum())
    out = np.full(n + 8, np.nan, np.float32)
    got = blur_runs(
        np.ascontiguousarray(src2d).ravel(),
        qx,
        qy,
        scale,
        k,
        padded_index(qx, r),
        box,
        runs,
        np.full(pad_n, np.nan, np.float32),
        np.full(tmp_n, np.nan, np.float32),
        out,
    )
    assert got == n
    return out[:n]


def _reference(src2d, mask, sigma, scale=1.0):
    x = np.asarray(src2d, np.float64) * scale
    if len(gaussian_kernel1d(sigma)) > 1:
        x = ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=4.0)
    return x[mask]  # raster order, as the runs


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (5, 6), (12, 7), (33, 70), (64, 64)])
@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0, 3.0])
def test_blur_runs_matches_scipy(rng, shape, sigma):
    src = rng.uniform(0, 100, shape).astype(np.float32)
    for mask in _masks(*shape):
        got = _run_kernel(src, mask, sigma)
        want = _reference(src, mask, sigma)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-4)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint64, np.float64])
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_blur_runs_dtypes_and_scale(rng, dtype, sigma):
    # The kernel reads every dtype as its kernel_dtype (a few compilations
    # instead of one per dtype); the reference takes the original values.
    src = rng.integers(0, 120, (13, 17)).astype(dtype)
    seen = src.astype(kernel_dtype(dtype))
    for mask in _masks(13, 17):
        np.testing.assert_allclose(
            _run_kernel(seen, mask, sigma), _reference(src, mask, sigma), rtol=2e-6, atol=2e-4
        )
        np.testing.assert_allclose(
            _run_kernel(seen, mask, sigma, 0.125),
            _reference(src, mask, sigma, 0.125),
            rtol=2e-6,
            atol=2e-5,
        )


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_blur_runs_zero_and_constant_patterns(sigma):
    for mask in _masks(10, 11):
        assert np.all(_run_kernel(np.zeros((10, 11), np.uint16), mask, sigma) == 0)
        # A constant pattern stays constant (reflect boundary, normalised taps).
        got = _run_kernel(np.full((10, 11), 7, np.uint16), mask, sigma)
        np.testing.assert_allclose(got, 7.0, rtol=1e-6)


@pytest.mark.parametrize("b", [1, 2, 3, 4, 5])
def test_bin_runs_equals_bin_box_of_the_zero_filled_box(rng, b):
    qx, qy = 23, 18
    by = -(-qy // b)
    bx = -(-qx // b)
    for mask in _masks(qx, qy):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        i0, i1, j0, j1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        sub = mask[i0:i1, j0:j1]
        vals = rng.uniform(0, 5, sub.shape).astype(np.float32)
        boxv = np.where(sub, vals, 0).astype(np.float32).ravel()
        for inv in (1.0, 8.0):
            want = np.full(bx * by, np.nan, np.float32)
            bin_box(boxv, i1 - i0, j1 - j0, i0, j0, b, by, inv, want)
            got = np.full(bx * by, np.nan, np.float32)
            bin_runs(vals[sub], mask_runs(sub), i0, j0, b, by, inv, got)
            np.testing.assert_array_equal(got, want)
            # And both are the plain binned sum (float64 here).
            plain = np.zeros((bx * b, by * b))
            plain[:qx, :qy][mask] = vals[sub]
            plain = plain.reshape(bx, b, by, b).sum(axis=(1, 3)).ravel() * inv
            np.testing.assert_allclose(got, plain, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 7, 255, 256, 257, 1000])
def test_dot5_matches_numpy(rng, n):
    v, a, b, c, d = rng.normal(size=(5, n)).astype(np.float32)
    got = dot5(v, a, b, c, d)
    want = [float(np.dot(v.astype(np.float64), w.astype(np.float64))) for w in (a, b, c, d, v)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "dtype",
    [
        np.uint8,
        np.int8,
        np.uint16,
        ">u2",
        np.int16,
        np.uint32,
        np.int32,
        ">i4",
        np.int64,
        np.uint64,
        np.float16,
        np.float32,
        ">f4",
        np.float64,
        ">f8",
    ],
)
def test_kernel_dtype_converts_exactly(dtype):
    # The kernel reads a block of any dtype as kernel_dtype(dtype): the
    # float32 values its arithmetic starts from are those of the original
    # values (up to 32 bits every value is exact in the kernel dtype; 64-bit
    # values the kernel always rounded through float64), so results are
    # bit-identical to a kernel compiled for the original dtype.
    dt = np.dtype(dtype)
    kd = kernel_dtype(dt)
    assert kd.isnative and kd in (np.uint8, np.uint16, np.float32, np.float64)
    if dt.kind == "f":
        info = np.finfo(dt)
        vals = np.array([0, 1, -1.5, info.max, info.min, info.tiny, info.eps, 1e-3], dt)
    else:
        info = np.iinfo(dt)
        wide = [2**24 - 3, 2**24 - 1, 2**24 + 1, 2**24 + 3, 2**31 // 5 + 1, 2**31 - 1]
        wide += [2**53 + 1, 2**63 - 1, 2**64 - 1]
        vals = [0, 1, 2, 3, info.max, info.max - 1, info.min, info.min + 1, info.max // 3]
        vals = np.array(vals + [v for v in wide if info.min <= v <= info.max], dt)
    conv = vals.astype(kd)
    if dt.itemsize < 8:
        assert np.array_equal(conv.astype(dt), vals)  # every value exact
        assert np.array_equal(conv.astype(np.float32), vals.astype(np.float32))
    else:
        assert np.array_equal(conv, vals.astype(np.float64))


def test_dark_field_of_wide_integers_is_exact():
    # int32 blocks are read as float64: the dark field's integer sums stay exact.
    rng = np.random.default_rng(5)
    cube = rng.integers(2**30 - 2**10, 2**30, (2, 3, 9, 10)).astype(np.int32)
    cube[0, 0] = 2**24 + 1  # odd values that float32 cannot hold
    beam = (4.0, 4.5, 1.0)
    dark = np.empty((2, 3), np.float32)
    neighbor_similarity(cube, (1, 4), 1.0, dark_field=dark, beam=beam)
    keep = dark_field_keep((9, 10), beam)
    want = cube[..., keep].astype(np.int64).sum(axis=-1).astype(np.float64).astype(np.float32)
    np.testing.assert_array_equal(dark, want)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, ">u2", np.int32, np.uint64, np.float32, ">f8"]
)
@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.0])
def test_kernel_with_gapped_masks_matches_reference(rng, dtype, sigma):
    # Masks with empty rows inside their bounding box, one-pixel runs and edges,
    # on a non-square detector, a 1xN and an Nx1 scan.
    for scan in ((4, 5), (1, 6), (5, 1)):
        cube = ref.random_cube(rng, scan + (14, 11), np.uint16, high=60).astype(dtype)
        for mask in list(_masks(14, 11))[1:]:
            got = neighbor_similarity(cube, mask, sigma)
            want = ref.similarity(cube, mask, sigma)
            np.testing.assert_allclose(got, want, atol=2e-6, equal_nan=True)


def test_kernel_zero_and_constant_patterns_with_gapped_mask():
    mask = list(_masks(12, 12))[2]
    cube = np.zeros((3, 4, 12, 12), np.uint16)
    cube[1] = 5  # a constant row between two all-zero rows
    sim = neighbor_similarity(cube, mask, 1.0)
    # Pairs with an all-zero pattern are 0, constant with constant is 1.
    assert np.all(sim[0, :, 4][:-1] == 0)
    np.testing.assert_allclose(sim[1, :-1, 4], 1.0, rtol=1e-6)
    assert np.all(sim[1, :, 6] == 0)


def test_plan_runs_cover_the_mask():
    mask = list(_masks(20, 16))[2]
    plan = similarity_plan((20, 16), mask, 1.0)
    i0, i1, j0, j1 = plan.box
    rebuilt = np.zeros((i1 - i0, j1 - j0), bool)
    for i, s, e in plan.qruns:
        rebuilt[i, s:e] = True
    np.testing.assert_array_equal(rebuilt, mask[i0:i1, j0:j1])
    assert not rebuilt.all(axis=1).all()  # box rows with gaps, and empty ones
    assert (~rebuilt.any(axis=1)).any()


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint32, np.int64, np.uint64, ">i8"])
def test_features_and_dark_field_of_converted_dtypes(dtype):
    # pattern_features and dark_field_image read these dtypes as float32 /
    # kernel_dtype blocks: one-pixel bins are float32(value) exactly as a
    # cast of the original, and the dark field's sums stay exact for
    # integers of up to 32 bits (float64 sums in raster order for 64-bit).
    from napari_stemcluster.core.linkage import pattern_features
    from napari_stemcluster.core.masking import dark_field_image

    info = np.iinfo(np.dtype(dtype))
    rng = np.random.default_rng(11)
    native = np.dtype(dtype).newbyteorder("=")
    cube = rng.integers(info.min, info.max, (2, 3, 5, 6), endpoint=True, dtype=native)
    cube = cube.astype(dtype)
    cube[0, 0, 0, :4] = [info.max, info.min, 2**24 + 1 if info.bits > 24 else 3, 0]
    feats = pattern_features(cube, dims=30)
    np.testing.assert_array_equal(feats, cube.astype(np.float32).reshape(2, 3, 30))
    beam = (2.0, 2.5, 0.5)
    keep = dark_field_keep((5, 6), beam)
    if info.bits <= 32:
        want = cube[..., keep].astype(np.int64).sum(axis=-1).astype(np.float32)
    else:
        vals = cube[..., keep].astype(np.float64)
        want = np.zeros(cube.shape[:2])
        for p in range(vals.shape[-1]):  # raster order, float64
            want += vals[..., p]
        want = want.astype(np.float32)
    np.testing.assert_array_equal(dark_field_image(cube, beam), want)


# --- the dark field summed in the blur's conversion loop ------------------------


@pytest.mark.parametrize("shape", [(1, 9), (7, 1), (5, 6), (12, 7), (33, 70)])
@pytest.mark.parametrize("sigma", [0.6, 1.0, 3.0])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_blur_runs_sum_is_blur_runs_plus_the_rectangle_sum(rng, shape, sigma, dtype):
    qx, qy = shape
    info = np.iinfo(dtype)
    src = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    # The kernel reads int16 cubes as float32 (kernel_dtype): the int64 path.
    src = src.astype(kernel_dtype(src.dtype))
    k = gaussian_kernel1d(sigma)
    r = (len(k) - 1) // 2
    for mask in _masks(qx, qy):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        box = np.array([rows[0], rows[-1] + 1, cols[0], cols[-1] + 1], np.int64)
        runs = mask_runs(mask[box[0] : box[1], box[2] : box[3]])
        pad_n, tmp_n = runs_scratch(box, r)
        n = int(mask.sum())
        out = np.full(n + 8, np.nan, np.float32)
        total = blur_runs_sum(
            src.ravel(),
            qx,
            qy,
            k,
            padded_index(qx, r),
            box,
            runs,
            np.full(pad_n, np.nan, np.float32),
            np.full(tmp_n, np.nan, np.float32),
            out,
        )
        np.testing.assert_array_equal(out[:n], _run_kernel(src, mask, sigma))
        r0, r1, c0, c1 = dark_rect((qx, qy), box, r)
        assert total == int(src[r0:r1, c0:c1].astype(np.int64).sum())


def _dark_reference(cube, beam):
    """Plain numpy: the exact integer sum of the kept pixels, as float32."""
    keep = dark_field_keep(cube.shape[-2:], beam)
    return (np.asarray(cube, np.int64) * keep).sum((-2, -1)).astype(np.float64).astype(np.float32)


@pytest.mark.parametrize(
    "scan, det, q_mask, beam",
    [
        ((1, 6), (16, 16), (2, 5), (8.0, 8.0, 1.0)),  # 1xN scan, beam inside the rectangle
        ((5, 1), (20, 13), None, (1.2, 11.5, 1.5)),  # whole detector, beam at a corner
        ((3, 4), (24, 18), "corner", (20.0, 3.0, 1.2)),  # small box: most pixels outside
        ((4, 3), (13, 29), "corner", (6.0, 14.0, 3.0)),  # disc across the rectangle's edge
    ],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, ">u2", np.int16, np.int32])
def test_fused_dark_field_matches_numpy_and_the_separate_sum(rng, scan, det, q_mask, beam, dtype):
    if q_mask == "corner":
        q_mask = np.zeros(det, bool)
        q_mask[1:6, 2:7] = True  # the blur reads rows 0..9 and columns 0..10 only
    info = np.iinfo(np.dtype(dtype))
    cube = rng.integers(info.min, info.max, (*scan, *det), endpoint=True).astype(dtype)
    cube[0, 0] = 0  # an all-zero pattern
    if cube.shape[1] > 1:
        cube[0, 1] = info.max  # a constant one at the top of the range
    want = _dark_reference(cube, beam)
    plan = similarity_plan(det, q_mask, 1.0, cube.dtype, beam=beam)
    assert plan.dark_split is not None
    for p in (plan, plan._replace(dark_split=None)):  # fused, and summed separately
        dark = np.full(scan, np.nan, np.float32)
        out = np.full((*scan, 4), np.nan, np.float32)
        block_similarity(cube, scan[0], p, out, dark_field=dark)
        np.testing.assert_array_equal(dark, want)
    dark = np.full(scan, np.nan, np.float32)
    neighbor_similarity(cube, q_mask, 1.0, dark_field=dark, beam=beam)
    np.testing.assert_array_equal(dark, want)


def test_dark_split_only_for_exact_input_with_a_blur():
    beam = (4.0, 4.0, 1.0)
    assert similarity_plan((9, 9), (1, 3), 1.0, np.uint16, beam=beam).dark_split is not None
    assert similarity_plan((9, 9), (1, 3), 0.0, np.uint16, beam=beam).dark_split is None
    assert similarity_plan((9, 9), (1, 3), 1.0, np.float32, beam=beam).dark_split is None
    assert similarity_plan((9, 9), (1, 3), 1.0, np.uint16).dark_split is None
    plus, minus = similarity_plan((30, 30), (1, 3), 1.0, np.uint16, beam=(2, 2, 1)).dark_split
    # Rectangle rows 6..24 of 30: rows outside it are kept (plus); the
    # beam's disc lies outside the rectangle, so nothing is taken off.
    assert plus.shape[1] == 2 and len(plus) > 0 and len(minus) == 0
