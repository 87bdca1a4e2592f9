"""Virtual detector images against plain-python references."""

from __future__ import annotations

import math

import dask.array as da
import h5py
import numpy as np
import pytest

from napari_stemcluster.core import _validate
from napari_stemcluster.core.virtual import (
    annular_mask,
    default_radii,
    detector_center,
    virtual_adf,
    virtual_bf,
    virtual_image,
)


def _mask_reference(shape, inner, outer, center=None):
    cx, cy = ((shape[0] - 1) / 2, (shape[1] - 1) / 2) if center is None else center
    out = np.zeros(shape, bool)
    for i in range(shape[0]):
        for j in range(shape[1]):
            r = math.sqrt((i - cx) ** 2 + (j - cy) ** 2)
            out[i, j] = inner <= r <= outer
    return out


def _image_reference(cube, mask):
    cube = np.asarray(cube)
    scan = cube.shape[:-2]
    out = np.zeros(scan, dtype=object)
    for idx in np.ndindex(*scan):
        total = 0
        for i, j in zip(*np.nonzero(mask), strict=True):
            v = cube[idx][i, j]
            total += int(v) if cube.dtype.kind in "ui" else float(v)
        out[idx] = total
    return out


@pytest.mark.parametrize("shape", [(7, 7), (6, 10), (1, 5), (9, 2)])
@pytest.mark.parametrize(("inner", "outer"), [(0, 2), (1.5, 3), (2, 2.5)])
def test_annular_mask_matches_reference(shape, inner, outer):
    np.testing.assert_array_equal(
        annular_mask(shape, inner, outer), _mask_reference(shape, inner, outer)
    )
    np.testing.assert_array_equal(
        annular_mask(shape, inner, outer, center=(0.0, 1.0)),
        _mask_reference(shape, inner, outer, center=(0.0, 1.0)),
    )


def test_annular_mask_rejects_bad_radii():
    with pytest.raises(ValueError, match="inner <= outer"):
        annular_mask((8, 8), 3, 2)
    with pytest.raises(ValueError, match="inner <= outer"):
        annular_mask((8, 8), -1, 2)


def test_default_radii_use_smaller_side():
    d = default_radii((40, 100))
    assert d == {"adf_inner": 5.0, "adf_outer": 20.0, "bf_radius": 2.5}
    assert detector_center((40, 100)) == (19.5, 49.5)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.float32, np.float64]
)
@pytest.mark.parametrize("scan", [(3, 4), (1, 5), (5, 1), (2, 3, 2)])
def test_virtual_image_matches_reference(dtype, scan):
    rng = np.random.default_rng(3)
    cube = rng.integers(0, 120, (*scan, 6, 9)).astype(dtype)
    mask = annular_mask((6, 9), 1, 3)
    got = virtual_image(cube, mask)
    ref = _image_reference(cube, mask)
    assert got.shape == scan
    assert got.dtype == (np.float64 if np.dtype(dtype).kind == "f" else np.int64)
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=1e-12)
    lazy = virtual_image(da.from_array(cube, chunks=(1,) * (len(scan) - 1) + (2, 6, 9)), mask)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), got)


def test_uint32_sums_do_not_overflow():
    cube = np.full((2, 2, 16, 16), np.iinfo(np.uint32).max, np.uint32)
    cube[1, 1] = 7
    mask = np.ones((16, 16), bool)
    expected = 256 * (2**32 - 1)
    got = virtual_image(cube, mask)
    assert got[0, 0] == expected and got[1, 1] == 7 * 256
    assert virtual_image(da.from_array(cube, chunks=1), mask).compute()[0, 1] == expected


def test_float32_sums_accumulate_in_float64():
    cube = np.full((1, 1, 64, 64), 16777216.0, np.float32)  # 2**24
    cube[0, 0, 0, 0] = 1.0
    got = virtual_image(cube, np.ones((64, 64), bool))
    assert got[0, 0] == 16777216.0 * (64 * 64 - 1) + 1.0


def test_zero_and_constant_patterns():
    cube = np.zeros((2, 3, 5, 5), np.uint16)
    cube[1] = 4
    got = virtual_image(cube, annular_mask((5, 5), 0, 1))
    np.testing.assert_array_equal(got, [[0, 0, 0], [20, 20, 20]])


def test_non_finite_values_raise():
    cube = np.ones((2, 2, 4, 4), np.float32)
    cube[1, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf.*\(1, 0\)"):
        virtual_image(cube, np.ones((4, 4), bool))
    lazy = virtual_image(da.from_array(cube, chunks=(1, 2, 4, 4)), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        lazy.compute()
    out = virtual_image(cube, np.ones((4, 4), bool), check_finite=False)
    assert np.isnan(out[1, 0]) and out[0, 0] == 16


def test_bad_arguments():
    cube = np.ones((2, 2, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="does not match the detector shape"):
        virtual_image(cube, np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="selects no pixel"):
        virtual_image(cube, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match=r"4D .* or 5D"):
        virtual_image(np.ones((4, 4, 4)), np.ones((4, 4), bool))
    with pytest.raises(TypeError, match="integers or floats"):
        virtual_image(np.ones((1, 1, 2, 2), complex), np.ones((2, 2), bool))


def test_dask_image_is_lazy_and_one_block_per_time_step():
    calls = []

    def count(block):
        calls.append(block.shape)
        return block

    cube = da.from_array(np.ones((4, 3, 5, 6, 6), np.uint16), chunks=(1, 3, 5, 6, 6))
    cube = cube.map_blocks(count, dtype=np.uint16, meta=np.empty((0,) * 5, np.uint16))
    image = virtual_adf(cube)
    assert calls == [] and image.shape == (4, 3, 5) and image.chunks[0] == (1, 1, 1, 1)
    image[2].compute()
    assert calls == [(1, 3, 5, 6, 6)]  # only the time step asked for


def test_dask_cube_split_over_the_detector_is_rechunked():
    cube = np.random.default_rng(0).integers(0, 9, (3, 3, 8, 8)).astype(np.uint16)
    lazy = da.from_array(cube, chunks=(2, 2, 4, 4))
    mask = annular_mask((8, 8), 1, 3)
    np.testing.assert_array_equal(virtual_image(lazy, mask).compute(), virtual_image(cube, mask))


def test_h5py_cube_read_in_blocks_with_progress(tmp_path, monkeypatch):
    cube = np.random.default_rng(1).integers(0, 1000, (2, 5, 4, 6, 7)).astype(np.uint32)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["c"] = cube
    monkeypatch.setattr(_validate, "BLOCK_BYTES", 2 * 4 * 6 * 7 * 4)  # 2 rows per block
    import napari_stemcluster.core.virtual as virtual_mod

    monkeypatch.setattr(
        virtual_mod,
        "block_rows",
        lambda shape, itemsize: _validate.block_rows(shape, itemsize, 2 * 4 * 6 * 7 * 4),
    )
    seen = []
    mask = annular_mask((6, 7), 0, 2)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        got = virtual_image(f["c"], mask, progress=lambda d, t: seen.append((d, t)))
        assert seen == [(i, 6) for i in range(1, 7)]  # 2 steps x 3 blocks of rows
        np.testing.assert_array_equal(got, virtual_image(cube, mask))

        def cancel(done, total):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            virtual_image(f["c"], mask, progress=cancel)


def test_adf_and_bf_defaults_non_square_and_tiny():
    rng = np.random.default_rng(2)
    cube = rng.integers(0, 50, (2, 3, 20, 30)).astype(np.uint16)
    d = default_radii((20, 30))
    np.testing.assert_array_equal(
        virtual_adf(cube), virtual_image(cube, annular_mask((20, 30), d["adf_inner"], 10))
    )
    np.testing.assert_array_equal(
        virtual_bf(cube), virtual_image(cube, annular_mask((20, 30), 0, d["bf_radius"]))
    )
    np.testing.assert_array_equal(
        virtual_adf(cube, inner=2, outer=4, center=(5, 5)),
        virtual_image(cube, annular_mask((20, 30), 2, 4, (5, 5))),
    )
    tiny = rng.integers(0, 50, (2, 2, 1, 1)).astype(np.uint16)
    np.testing.assert_array_equal(virtual_adf(tiny), tiny[..., 0, 0])
    np.testing.assert_array_equal(virtual_bf(tiny), tiny[..., 0, 0])
    two = rng.integers(0, 50, (2, 2, 2, 2)).astype(np.uint16)
    np.testing.assert_array_equal(virtual_bf(two), two.sum(axis=(2, 3)))  # 4 nearest pixels


def test_detector_mask_defaults_and_explicit_radii():
    from napari_stemcluster.core.virtual import detector_mask

    np.testing.assert_array_equal(detector_mask((16, 12), "adf"), annular_mask((16, 12), 1.5, 6))
    np.testing.assert_array_equal(detector_mask((16, 12), "bf"), annular_mask((16, 12), 0, 0.75))
    np.testing.assert_array_equal(
        detector_mask((16, 12), "bf", outer=3), annular_mask((16, 12), 0, 3)
    )
    with pytest.raises(ValueError, match="selects no pixel"):
        detector_mask((16, 12), "adf", inner=20, outer=21)
    with pytest.raises(ValueError, match="'adf' or 'bf'"):
        detector_mask((16, 12), "haadf")


# ---------------------------------------------------------------------------
# arbitrary detectors and centre of mass


def _reference_detector(cube, mask, center):
    """Plain numpy: per-pattern masked sum and centre of mass (0 without counts)."""
    c = np.asarray(cube, np.float64)
    qx, qy = np.meshgrid(
        np.arange(c.shape[-2]) - center[0], np.arange(c.shape[-1]) - center[1], indexing="ij"
    )
    s = (c * mask).sum(axis=(-2, -1))
    sx = (c * mask * qx).sum(axis=(-2, -1))
    sy = (c * mask * qy).sum(axis=(-2, -1))
    safe = np.where(s != 0, s, 1.0)
    return s, np.where(s != 0, sx / safe, 0.0), np.where(s != 0, sy / safe, 0.0)


@pytest.mark.parametrize(
    "roi",
    [
        {"shape": "point", "center": (2.4, 5.6)},
        {"shape": "circle", "center": (3.0, 2.0), "radius": 2.5},
        {"shape": "annulus", "inner": 1.5, "outer": 3.0},
        {"shape": "rectangle", "start": (4.2, 0), "stop": (1, 3.9)},
    ],
)
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_virtual_detector_matches_numpy(roi, dtype):
    from napari_stemcluster.core.virtual import roi_mask, virtual_detector

    rng = np.random.default_rng(3)
    cube = rng.integers(0, 500, (5, 3, 7, 9)).astype(dtype)  # non-square detector, 5x3 scan
    cube[0, 0] = 0  # an empty pattern: centre of mass 0, no warning
    mask = roi_mask((7, 9), roi)
    assert mask.any()
    center = (3.0, 4.0)
    want = _reference_detector(cube, mask, center)
    for threads in (True, False):
        got = virtual_detector(cube, mask, threads=threads)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
        assert got.com_x[0, 0] == 0 and got.intensity[0, 0] == 0


def test_roi_mask_shapes_against_numpy():
    from napari_stemcluster.core.virtual import roi_mask

    x, y = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    r = np.hypot(x - 2.0, y - 5.0)
    circle = roi_mask((6, 8), {"shape": "circle", "center": (2, 5), "radius": 2})
    np.testing.assert_array_equal(circle, r <= 2)
    ann = roi_mask((6, 8), {"shape": "annulus", "center": (2, 5), "inner": 3, "outer": 1})
    np.testing.assert_array_equal(ann, (r >= 1) & (r <= 3))  # radii in either order
    rect = roi_mask((6, 8), {"shape": "rectangle", "start": (1.5, -3), "stop": (3, 2)})
    np.testing.assert_array_equal(rect, (x >= 1.5) & (x <= 3) & (y <= 2))
    point = roi_mask((6, 8), {"shape": "point", "center": (-4, 99)})  # clipped to the detector
    assert point.sum() == 1 and point[0, 7]
    off = roi_mask((6, 8), {"shape": "circle", "center": (50, 50), "radius": 1})
    assert not off.any()
    with pytest.raises(ValueError, match="detector shape must be one of"):
        roi_mask((6, 8), {"shape": "polygon"})


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_virtual_detector_stride_blocks_and_5d(stride, monkeypatch):
    import dask.array as da

    import napari_stemcluster.core.virtual as virtual

    rng = np.random.default_rng(1)
    cube = rng.poisson(3.0, (2, 7, 5, 4, 4)).astype(np.uint16)
    mask = np.zeros((4, 4), bool)
    mask[1:, :3] = True
    monkeypatch.setattr(virtual, "block_rows", lambda *a, **k: 2)  # several blocks per step
    seen = []
    got = virtual.virtual_detector(
        da.from_array(cube, chunks=(1, 3, 2, 4, 4)),
        mask,
        center=(0.5, 1.0),
        stride=stride,
        on_block=lambda where, part: seen.append((where, part.intensity.shape)),
    )
    sub = cube[:, ::stride, ::stride]
    want = _reference_detector(sub, mask, (0.5, 1.0))
    for g, w in zip(got, want, strict=True):
        assert g.shape == sub.shape[:3]
        np.testing.assert_allclose(g, w, rtol=1e-12)
    covered = np.zeros(sub.shape[:3], int)
    for where, _ in seen:
        covered[where] += 1
    assert (covered == 1).all()  # every output position filled exactly once


def test_virtual_detector_h5py_and_errors(tmp_path):
    import h5py

    from napari_stemcluster.core.virtual import virtual_detector

    cube = np.arange(2 * 3 * 4 * 4, dtype=np.uint32).reshape(2, 3, 4, 4)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["d"] = cube
    mask = np.ones((4, 4), bool)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        for strided in (None, True, False):  # both ways of reading every other position
            got = virtual_detector(f["d"], mask, stride=2, strided_reads=strided)
            np.testing.assert_array_equal(got.intensity, cube[::2, ::2].sum(axis=(-2, -1)))
    bad = cube.astype(np.float32)
    bad[1, 2, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"scan index \(1, 2\)"):
        virtual_detector(bad, mask)
    with pytest.raises(ValueError, match="mask shape"):
        virtual_detector(cube, np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="stride"):
        virtual_detector(cube, mask, stride=0)
    empty = virtual_detector(cube, np.zeros((4, 4), bool))
    assert not empty.intensity.any() and not empty.com_x.any()


# ---------------------------------------------------------------------------
# the binned copy behind interactive previews


def _bins_reference(cube, f):
    """Plain numpy: zero-pad the detector to a multiple of f, sum f x f blocks."""
    c = np.asarray(cube, np.float64)
    qx, qy = c.shape[-2:]
    bx, by = -(-qx // f), -(-qy // f)
    pad = np.zeros(c.shape[:-2] + (bx * f, by * f))
    pad[..., :qx, :qy] = c
    return pad.reshape(*c.shape[:-2], bx, f, by, f).sum(axis=(-3, -1))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, bool])
@pytest.mark.parametrize(("det", "f"), [((8, 8), 4), ((7, 5), 2), ((6, 9), 3), ((5, 4), 1)])
@pytest.mark.parametrize("step", [1, 2, 3])
def test_binned_cube_matches_numpy_bins_and_masked_sums(dtype, det, f, step):
    from napari_stemcluster.core.virtual import BinnedCube

    rng = np.random.default_rng(3)
    cube = (rng.uniform(0, 50, (7, 5, *det)) * (rng.uniform(size=(7, 5, *det)) > 0.3)).astype(dtype)
    mask = rng.uniform(size=det) > 0.5
    binned = BinnedCube((7, 5), det, factor=f, step=step)
    sums = []
    for r0, r1 in ((0, 3), (3, 4), (4, 7)):  # uneven blocks of whole rows
        assert not binned.complete
        sums.append(binned.add_rows(r0, cube[r0:r1], mask))
    assert binned.complete
    want = _bins_reference(cube[::step, ::step], f)  # (rows, cols, bx, by)
    got = binned.data.reshape(*want.shape[2:], *want.shape[:2])
    np.testing.assert_allclose(np.moveaxis(got, (0, 1), (2, 3)), want, rtol=1e-6)
    np.testing.assert_allclose(
        np.concatenate(sums), np.asarray(cube, np.float64)[..., mask].sum(-1), rtol=1e-12
    )
    # without a mask: bins only
    other = BinnedCube((7, 5), det, factor=f, step=step)
    assert other.add_rows(0, cube) is None
    np.testing.assert_array_equal(other.data, binned.data)


@pytest.mark.parametrize("center", [None, (2.3, 5.6)])
def test_binned_images_are_exact_for_bin_aligned_masks(center):
    from napari_stemcluster.core.virtual import BinnedCube, virtual_detector

    rng = np.random.default_rng(4)
    cube = rng.poisson(20, (6, 5, 12, 10)).astype(np.uint16)
    binned = BinnedCube((6, 5), (12, 10), factor=2)
    binned.add_rows(0, cube)
    # a union of whole 2x2 bins, incl. the short edge bins
    mask = np.zeros((12, 10), bool)
    mask[2:6, 4:10] = True
    mask[10:, :2] = True
    got = binned.images(mask, center)
    # centre of mass: inside a bin, intensity is taken as distributed like the
    # sum of all patterns; compare with a cube whose patterns are
    total = cube.sum(axis=(0, 1), dtype=np.float64)
    model = np.zeros(cube.shape)
    bins = _bins_reference(cube, 2)
    for i in range(12):
        for j in range(10):
            block = total[i - i % 2 : i - i % 2 + 2, j - j % 2 : j - j % 2 + 2]
            model[..., i, j] = bins[..., i // 2, j // 2] * total[i, j] / block.sum()
    want = virtual_detector(model, mask, center=center)
    exact = virtual_detector(cube, mask, center=center)
    np.testing.assert_allclose(got.intensity, exact.intensity, rtol=1e-6)
    np.testing.assert_allclose(got.com_x, want.com_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.com_y, want.com_y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "roi",
    [
        {"shape": "annulus", "center": (6.3, 5.2), "inner": 2.2, "outer": 4.9},
        {"shape": "circle", "center": (3.0, 7.7), "radius": 2.6},
        {"shape": "rectangle", "start": (1.4, 0.2), "stop": (9.1, 6.6)},
        {"shape": "point", "center": (5, 5)},
    ],
)
def test_binned_images_weigh_partly_covered_bins_exactly_for_even_bins(roi):
    """A cube even within each bin: the fractional coverage makes the preview exact."""
    from napari_stemcluster.core.virtual import BinnedCube, roi_mask, virtual_detector

    rng = np.random.default_rng(5)
    coarse = rng.uniform(0, 10, (4, 3, 4, 4)).astype(np.float32)
    cube = np.repeat(np.repeat(coarse, 3, -2), 3, -1)[..., :11, :10]  # 3x3 bins, short edges
    mask = roi_mask((11, 10), roi)
    binned = BinnedCube((4, 3), (11, 10), factor=3)
    binned.add_rows(0, cube)
    got = binned.images(mask, roi.get("center"))
    want = virtual_detector(cube, mask, center=roi.get("center"))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_binned_cube_rejects_bad_blocks_and_masks():
    from napari_stemcluster.core.virtual import BinnedCube

    binned = BinnedCube((3, 4), (6, 6), factor=2)
    with pytest.raises(ValueError, match="whole scan rows"):
        binned.add_rows(0, np.zeros((1, 3, 6, 6)))
    with pytest.raises(ValueError, match="do not match the detector"):
        binned.add_rows(0, np.zeros((1, 4, 6, 5)))
    with pytest.raises(ValueError, match="mask shape"):
        binned.images(np.ones((5, 6), bool))
    with pytest.raises(ValueError, match=">= 1"):
        BinnedCube((3, 4), (6, 6), factor=0)
    # rows not added yet read as zero; an empty mask gives zeros
    assert not binned.images(np.zeros((6, 6), bool)).intensity.any()


def test_binned_layout_stays_within_the_budget():
    from napari_stemcluster.core.virtual import binned_layout

    for scan, det, budget in [((256, 256), (128, 128), 2**28), ((300, 200), (256, 256), 2**26)]:
        f, step = binned_layout(scan, det, budget)
        n = -(-scan[0] // step) * -(-scan[1] // step) * -(-det[0] // f) * -(-det[1] // f) * 4
        assert n <= budget
        assert step == 1 or (
            -(-scan[0] // (step - 1))
            * -(-scan[1] // (step - 1))
            * (n // max(1, -(-scan[0] // step) * -(-scan[1] // step)))
            > budget
        )
    assert binned_layout((4, 4), (32, 32), 10**9) == (2, 1)  # small detectors: smaller bins


def test_binned_images_split_a_steep_beam_like_the_average_pattern():
    """Patterns that are scaled copies of one steep profile: exact for any detector."""
    from napari_stemcluster.core.virtual import BinnedCube, roi_mask, virtual_detector

    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[:17, :17] - 8.0
    beam = 1000 * np.exp(-(xx**2 + yy**2) / 3.0) + 0.5
    scale = rng.uniform(0.5, 2.0, (5, 4))
    cube = (scale[..., None, None] * beam).astype(np.float32)
    binned = BinnedCube((5, 4), (17, 17), factor=4)
    binned.add_rows(0, cube[:2])
    binned.add_rows(2, cube[2:])
    roi = {"shape": "annulus", "center": (8.4, 7.7), "inner": 1.7, "outer": 6.2}
    mask = roi_mask((17, 17), roi)
    got = binned.images(mask, roi["center"])
    want = virtual_detector(cube, mask, center=roi["center"])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    # weights from an even split would be far off here
    even = BinnedCube((5, 4), (17, 17), factor=4)
    even.add_rows(0, cube)
    even.pattern_sum[:] = 0.0
    assert not np.allclose(even.images(mask, roi["center"]).intensity, want.intensity, rtol=0.05)
