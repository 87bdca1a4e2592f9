import numpy as np
import pytest
from skimage import filters

from napari_stemcluster.core import annular_mask, real_space_mask


def test_annulus_against_direct_distance():
    m = annular_mask((7, 10), 1.2, 3.0)
    for i in range(7):
        for j in range(10):
            r = np.hypot(i - 3.0, j - 4.5)
            assert m[i, j] == (1.2 <= r <= 3.0)


def test_annulus_centre_and_errors():
    m = annular_mask((5, 5), 0, 0, center=(1, 3))
    assert m.sum() == 1 and m[1, 3]
    with pytest.raises(ValueError, match="inner <= outer"):
        annular_mask((5, 5), 3, 2)


@pytest.fixture
def bimodal():
    rng = np.random.default_rng(0)
    ms = rng.normal(0.3, 0.05, (20, 30))
    ms[5:15, 8:22] = rng.normal(0.9, 0.02, (10, 14))
    return ms.astype(np.float32)


@pytest.mark.parametrize("method", ["triangle", "otsu"])
def test_automatic_thresholds(bimodal, method):
    func = filters.threshold_triangle if method == "triangle" else filters.threshold_otsu
    mask = real_space_mask(bimodal, method)
    np.testing.assert_array_equal(mask, bimodal > func(bimodal))
    assert mask[5:15, 8:22].mean() > 0.95 and mask.sum() < 200


def test_value_array_and_none(bimodal):
    np.testing.assert_array_equal(real_space_mask(bimodal, 0.6), bimodal > 0.6)
    user = bimodal > 0.5
    out = real_space_mask(bimodal, user)
    np.testing.assert_array_equal(out, user)
    assert out is not user
    assert real_space_mask(bimodal, None).all()


def test_constant_map_keeps_everything():
    assert real_space_mask(np.zeros((4, 4), np.float32), "triangle").all()


def test_small_objects_and_holes():
    ms = np.zeros((10, 10))
    ms[1:8, 1:8] = 1
    ms[4, 4] = 0  # a one-pixel hole
    ms[9, 9] = 1  # a one-pixel island
    mask = real_space_mask(ms, 0.5, min_size=2, hole_size=2)
    assert not mask[9, 9] and mask[4, 4]
    assert mask.sum() == 49


@pytest.mark.parametrize(
    "bad,match",
    [
        ("median", "unknown real-space mask"),
        (np.ones((3, 3), bool), "boolean array of shape"),
    ],
)
def test_bad_methods(bimodal, bad, match):
    with pytest.raises(ValueError, match=match):
        real_space_mask(bimodal, bad)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int16, np.uint16, ">u2", np.int32, np.uint32, np.float32]
)
@pytest.mark.parametrize(
    "shape", [(70, 50, 5, 7), (1, 9, 4, 4), (9, 1, 3, 5), (130, 90, 3, 5), (1, 3000, 2, 1)]
)
def test_sample_mean_equals_float64_sums(dtype, shape):
    """The sampled mean pattern behind the direct beam: integers summed in
    int64 give the same numbers as float64 sums of a float64 copy."""
    from napari_stemcluster.core.masking import _sample_mean

    rng = np.random.default_rng(3)
    info = np.iinfo(np.dtype(dtype)) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        cube = (rng.random(shape) * 1e3).astype(dtype)
    else:
        cube = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    rx, ry = shape[:2]
    stride = max(1, int(np.sqrt(rx * ry / 1024)))
    total = np.zeros(shape[2:])
    n = 0
    for x in range(0, rx, stride):
        for y in range(0, ry, stride):
            total += cube[x, y].astype(np.float64)
            n += 1
    np.testing.assert_array_equal(_sample_mean(cube), total / n)


def test_sample_mean_of_in_memory_cubes_longer_than_one_uint32_run():
    """An in-memory uint16 cube's sampled patterns are added in uint32 runs of
    at most 65,537 patterns: more patterns than that at the largest value
    still give the exact mean, and views or zeros the plain one."""
    from napari_stemcluster.core.masking import _sample_mean

    cube = np.full((1, 5_000_000, 1, 1), 65535, np.uint16)
    cube[0, ::7] = 65534
    stride = int(np.sqrt(cube.shape[1] / 1024))
    picked = cube[0, ::stride, 0, 0].astype(np.float64)
    assert picked.size > 65537
    np.testing.assert_array_equal(_sample_mean(cube), [[picked.sum() / picked.size]])
    small = np.random.default_rng(0).integers(0, 9, (40, 30, 4, 6)).astype(np.uint16)
    view = small[:, ::2]  # not C-contiguous: read row by row
    np.testing.assert_array_equal(_sample_mean(view), _sample_mean(view.copy()))
    np.testing.assert_array_equal(_sample_mean(np.zeros((5, 4, 3, 2), np.uint8)), 0.0)
