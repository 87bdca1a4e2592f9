import numpy as np
import pytest

from napari_stemcluster.core.peaks import disk_contrast_kernel, find_peaks


def _disks(shape, centres, heights, radius, background=None):
    qx, qy = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape) if background is None else background.astype(float).copy()
    for (cx, cy), h in zip(centres, heights, strict=True):
        out[np.hypot(qx - cx, qy - cy) <= radius + 0.5] += h
    return out


def _reference_peaks(pattern, radius, min_distance, threshold_rel):
    """Plain loops: contrast at every pixel, keep strict local maxima."""
    k = disk_contrast_kernel(radius)
    h = k.shape[0] // 2
    padded = np.pad(pattern.astype(float), h, mode="symmetric")
    qx, qy = pattern.shape
    resp = np.zeros(pattern.shape)
    for x in range(qx):
        for y in range(qy):
            resp[x, y] = (padded[x : x + 2 * h + 1, y : y + 2 * h + 1] * k).sum()
    found = []
    top = resp.max()
    for x in range(qx):
        for y in range(qy):
            win = resp[
                max(0, x - min_distance) : x + min_distance + 1,
                max(0, y - min_distance) : y + min_distance + 1,
            ]
            if resp[x, y] > max(threshold_rel * top, 1e-9) and resp[x, y] == win.max():
                found.append((x, y))
    return found


def test_kernel_is_zero_sum_disk_minus_ring():
    k = disk_contrast_kernel(2.0)
    assert abs(k.sum()) < 1e-12
    n_disk = (k > 0).sum()
    assert n_disk == 21  # pixel centres within 2.5 of the middle
    np.testing.assert_allclose(k[k > 0], 1 / n_disk)
    c = k.shape[0] // 2
    assert k[c, c] > 0 and k[c, c + 3] == 0 and k[c, c + 4] < 0  # gap, then ring


@pytest.mark.parametrize("bad", [0, -1, np.nan])
def test_kernel_rejects_bad_radius(bad):
    with pytest.raises(ValueError, match="disk_radius"):
        disk_contrast_kernel(bad)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32, np.float64])
def test_finds_disks_on_a_sloped_background_in_any_dtype(dtype):
    shape = (40, 36)  # non-square detector
    centres = [(8, 9), (20, 18), (31, 27), (12, 29)]
    heights = [40, 100, 25, 60]
    qx, qy = np.mgrid[:40, :36]
    background = 50 + 2.0 * qx + 1.0 * qy  # a ramp the ring cancels
    p = _disks(shape, centres, heights, 2, background).astype(dtype)
    pos, inten = find_peaks(p, disk_radius=2)
    order = np.argsort(heights)[::-1]
    np.testing.assert_allclose(pos, np.array(centres, float)[order], atol=1e-9)
    np.testing.assert_allclose(inten, np.array(heights, float)[order] * 21, rtol=1e-9)


def test_matches_plain_loop_reference_on_noise():
    rng = np.random.default_rng(3)
    p = _disks((30, 30), [(7, 7), (15, 22), (24, 10)], [30, 20, 12], 2)
    p = rng.poisson(p + 5).astype(np.uint16)
    pos, _ = find_peaks(p, disk_radius=2, min_distance=4, threshold_rel=0.3)
    want = _reference_peaks(p, 2, 4, 0.3)
    assert {(7, 7), (15, 22), (24, 10)} <= set(want)
    assert sorted(tuple(c) for c in np.round(pos).astype(int)) == sorted(want)


def test_subpixel_refinement_moves_towards_true_centre():
    qx, qy = np.mgrid[:32, :32]
    p = np.exp(-((qx - 15.3) ** 2 + (qy - 10.7) ** 2) / (2 * 1.5**2))
    pos, _ = find_peaks(p, disk_radius=1.5)
    assert pos.shape == (1, 2)
    assert abs(pos[0, 0] - 15.3) < 0.3 and abs(pos[0, 1] - 10.7) < 0.3
    assert pos[0, 0] > 15 and pos[0, 1] < 11  # moved off the integer maximum


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_flat_patterns_have_no_peaks(value):
    pos, inten = find_peaks(np.full((16, 20), value))
    assert pos.shape == (0, 2) and inten.shape == (0,)


def test_thresholds_max_peaks_and_mask():
    centres = [(8, 8), (8, 24), (24, 8), (24, 24)]
    p = _disks((32, 32), centres, [100, 50, 20, 5], 2)
    assert len(find_peaks(p, 2)[0]) == 4
    assert len(find_peaks(p, 2, threshold_rel=0.3)[0]) == 2
    assert len(find_peaks(p, 2, threshold_abs=21 * 30)[0]) == 2
    pos, _ = find_peaks(p, 2, max_peaks=1)
    np.testing.assert_allclose(pos, [[8, 8]])
    mask = np.zeros((32, 32), bool)
    mask[16:, :] = True
    pos, _ = find_peaks(p, 2, mask=mask)
    np.testing.assert_allclose(pos, [[24, 8], [24, 24]])


def test_min_distance_keeps_one_of_two_close_disks():
    p = _disks((32, 32), [(16, 10), (16, 17)], [100, 60], 2)
    assert len(find_peaks(p, 2, min_distance=3)[0]) == 2
    pos, _ = find_peaks(p, 2, min_distance=10)
    np.testing.assert_allclose(pos, [[16, 10]], atol=0.1)  # the other disk nudges it


def test_border_disks_are_excluded_unless_asked():
    p = _disks((24, 24), [(0, 12), (12, 12)], [80, 50], 2)
    np.testing.assert_allclose(find_peaks(p, 2)[0], [[12, 12]])
    pos, _ = find_peaks(p, 2, exclude_border=0)
    assert len(pos) == 2 and abs(pos[0, 0]) < 0.5


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        find_peaks(np.zeros((2, 3, 4)))
    p = np.zeros((8, 8))
    p[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        find_peaks(p)
    with pytest.raises(ValueError, match="mask"):
        find_peaks(np.zeros((8, 8)), mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="threshold_rel"):
        find_peaks(np.zeros((8, 8)), threshold_rel=2)
