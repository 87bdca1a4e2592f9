"""The prefilter's kernels, one at a time, against plain numpy versions."""

import numba
import numpy as np
import pytest
from scipy import ndimage

from napari_stemcluster.core import _prefilter_numba as _k
from napari_stemcluster.core import prefilter
from napari_stemcluster.core._blur import gaussian_kernel1d, padded_index
from napari_stemcluster.core.prefilter import (
    _pair_union,
    _prefilter,
    prefilter_footprint,
)
from test_prefilter import correlative_prefilter, grains_cube, ref_prefilter, spread_range

# ---------------------------------------------------------------------------
# Blur of the weight's box


def blur_box_numpy(pattern, sigma, box, weight):
    """scipy's reflect Gaussian of the whole pattern, cropped, weighted."""
    b = pattern.astype(np.float64)
    if sigma > 0:
        b = ndimage.gaussian_filter(b, sigma, mode="reflect", truncate=4.0)
    i0, i1, j0, j1 = box
    return b[i0:i1, j0:j1] * weight


def run_blur_box(pattern, sigma, box, weight):
    qx, qy = pattern.shape
    k = gaussian_kernel1d(sigma)
    r = (len(k) - 1) // 2
    box = np.asarray(box, np.int64)
    bh, bw = int(box[1] - box[0]), int(box[3] - box[2])
    wd = bw + 2 * r
    pad = np.full((bh + 2 * r) * wd + 2 * r, np.nan, np.float32)
    tmp = np.full(max(bh + 2 * r, 2 * _k._BAND) * wd, np.nan, np.float32)
    out = np.full(bh * bw, np.nan, np.float32)
    src = np.ascontiguousarray(pattern).ravel()
    total = _k._blur_box(
        src,
        qx,
        qy,
        1.0,
        k,
        padded_index(qx, r),
        box,
        np.ascontiguousarray(weight, np.float32).ravel(),
        pad,
        tmp,
        out,
    )
    return out.reshape(bh, bw), total


@pytest.mark.parametrize(
    ("shape", "sigma", "box"),
    [
        ((64, 64), 3.0, (4, 60, 4, 60)),  # the default setting
        ((9, 13), 3.0, (0, 9, 0, 13)),  # blur wider than the detector: reflected twice
        ((9, 13), 3.0, (2, 7, 1, 12)),
        ((20, 11), 1.0, (3, 17, 0, 11)),  # non-square, box at the column edges
        ((40, 40), 2.0, (1, 39, 5, 35)),  # more box rows than one band
        ((12, 12), 0.0, (2, 10, 2, 10)),  # no blur
        ((1, 7), 1.5, (0, 1, 0, 7)),  # a single detector row
        ((7, 1), 1.5, (0, 7, 0, 1)),  # a single detector column
    ],
)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])  # the kernels' dtypes
def test_blur_box_matches_scipy(shape, sigma, box, dtype):
    rng = np.random.default_rng(sum(shape) + int(10 * sigma))
    pattern = rng.integers(0, 1000, shape).astype(dtype)
    weight = rng.uniform(0.1, 1.0, (box[1] - box[0], box[3] - box[2]))
    got, total = run_blur_box(pattern, sigma, box, weight.astype(np.float32))
    ref = blur_box_numpy(pattern, sigma, box, weight)
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())
    np.testing.assert_allclose(total, np.sum(ref**2), rtol=1e-5)


def test_blur_box_of_a_constant_is_the_constant():
    pattern = np.full((30, 26), 7, np.uint16)
    box = (3, 27, 2, 24)
    got, _ = run_blur_box(pattern, 3.0, box, np.ones((24, 22), np.float32))
    np.testing.assert_allclose(got, 7.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# Weighted average of neighbours


def weighted_average_numpy(cube, offsets, rhat_of):
    """``(I + sum R I_q) / (1 + sum R)`` with ``rhat_of(p, q)`` the weight."""
    nx, ny = cube.shape[:2]
    out = np.empty(cube.shape)
    for x in range(nx):
        for y in range(ny):
            acc = cube[x, y].astype(np.float64)
            total = 1.0
            for dx, dy in offsets.tolist():
                u, v = x + dx, y + dy
                if (dx, dy) != (0, 0) and 0 <= u < nx and 0 <= v < ny:
                    w = rhat_of((x, y), (u, v))
                    acc += w * cube[u, v]
                    total += w
            out[x, y] = acc / total
    return out


def kernel_inputs(offsets):
    """Forward offsets, pair indices, union and row half-widths of a footprint."""
    is_fwd = (offsets[:, 0] > 0) | ((offsets[:, 0] == 0) & (offsets[:, 1] > 0))
    fwd = offsets[is_fwd]
    index = {tuple(d): i for i, d in enumerate(fwd.tolist())}
    pair = np.array(
        [index.get((dx, dy), index.get((-dx, -dy), -1)) for dx, dy in offsets.tolist()],
        np.int64,
    )
    radius = int(offsets[:, 0].max())
    half = np.array(
        [max(dc for dr, dc in offsets.tolist() if dr == i - radius) for i in range(2 * radius + 1)],
        np.int64,
    )
    return is_fwd, fwd, index, pair, _pair_union(offsets), half


def run_weighted_average(raw, rh, offsets, strip, cap=None):
    """Run the kernel the filter uses for ``raw``'s dtype; ``(dst, wts)``."""
    nx, ny = raw.shape[:2]
    cap = nx if cap is None else cap
    is_fwd, _, _, pair, union, half = kernel_inputs(offsets)
    dst = np.full(raw.shape, np.nan, np.float32)
    wts = np.full((nx, ny, len(offsets)), np.nan, np.float32)
    if raw.dtype == np.uint16:
        _k.weighted_average_int(
            raw, cap, rh, nx, 0, nx, nx, offsets, is_fwd, pair, union, half, strip, dst, wts
        )
    else:
        _k.weighted_average(
            raw, cap, rh, nx, 0, nx, nx, offsets, is_fwd, pair, union, strip, dst, wts
        )
    return dst, wts


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
@pytest.mark.parametrize("scan", [(5, 7), (4, 6), (1, 9), (9, 1), (3, 2)])
@pytest.mark.parametrize("dtype", [np.uint16, ">i4", np.float64])
def test_weighted_average_matches_numpy(radius, scan, dtype):
    # Random symmetric weights with exact zeros and ones, so the paired
    # positions often need a neighbour for one of them only.
    nx, ny = scan
    rng = np.random.default_rng(radius * 100 + nx * 10 + ny)
    cube = rng.integers(0, 500, (nx, ny, 5, 6)).astype(dtype)
    offsets = prefilter_footprint(radius)
    _, fwd, index, _, _, _ = kernel_inputs(offsets)
    rh = rng.choice([0.0, 0.0, 0.3, 0.75, 1.0], (nx, ny, len(fwd))).astype(np.float32)

    def rhat_of(p, q):
        d = (q[0] - p[0], q[1] - p[1])
        if d in index:
            return float(rh[p[0], p[1], index[d]])
        return float(rh[q[0], q[1], index[(-d[0], -d[1])]])

    # The kernels see the block in the filter's ring dtype.
    ring = prefilter.ring_dtype(cube.dtype.newbyteorder("="))
    raw = np.ascontiguousarray(cube.astype(ring)).reshape(nx, ny, -1)
    ref = weighted_average_numpy(cube, offsets, rhat_of)
    for strip in (2, 4):
        dst, wts = run_weighted_average(raw, rh, offsets, strip)
        np.testing.assert_allclose(dst.reshape(cube.shape), ref, rtol=2e-6, atol=1e-4)
    centre = len(offsets) // 2
    assert np.all(wts[..., centre] == 1)


@pytest.mark.parametrize("radius", [1, 2, 4])
@pytest.mark.parametrize("scan", [(7, 13), (1, 11), (10, 1), (6, 2)])
@pytest.mark.parametrize("fractional", [0.0, 0.01, 0.3])
def test_integer_sums_are_the_float32_sweep_bit_for_bit(radius, scan, fractional):
    # uint16 rings are summed in int32 where a pair's weights are all 0 or 1
    # (running disk sums, corrected for the zeros) and by the float32 sweep
    # elsewhere: the result must be the float32 sweep's, bit for bit, up to
    # the largest uint16 values, for any strip width and ring capacity.
    nx, ny = scan
    rng = np.random.default_rng(radius * 1000 + nx * 10 + ny + int(fractional * 100))
    cube = rng.integers(0, 65536, (nx, ny, 7, 5), dtype=np.uint16)
    cube[rng.random((nx, ny)) < 0.2] = 65535
    offsets = prefilter_footprint(radius)
    _, fwd, _, _, _, _ = kernel_inputs(offsets)
    rh = (rng.random((nx, ny, len(fwd))) < 0.85).astype(np.float32)
    rh[rng.random((nx, ny)) < 0.15] = 0.0  # positions that correlate with nobody
    rh[rng.random(rh.shape) < fractional] = 0.5
    expected, expected_w = run_weighted_average(
        cube.reshape(nx, ny, -1).astype(np.float32), rh, offsets, 2
    )
    for strip in (2, 4, 100):
        got, w = run_weighted_average(cube.reshape(nx, ny, -1), rh, offsets, strip)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(w, expected_w)
    # A ring of fewer rows than the scan (slot r % cap) holding the same rows.
    cap = min(nx, 2 * radius + 1)
    if cap < nx:
        # Only the last `cap` rows are in the ring, so check the rows whose
        # neighbourhood lies in them.
        ring = np.empty((cap, ny, 35), np.uint16)
        for r in range(nx - cap, nx):
            ring[r % cap] = cube[r].reshape(ny, -1)
        is_fwd, _, _, pair, union, half = kernel_inputs(offsets)
        r0 = nx - cap + radius
        dst = np.full((nx - r0, ny, 35), np.nan, np.float32)
        wts = np.empty((nx - r0, ny, len(offsets)), np.float32)
        _k.weighted_average_int(
            ring, cap, rh, nx, r0, nx, nx, offsets, is_fwd, pair, union, half, 4, dst, wts
        )
        np.testing.assert_array_equal(dst, expected[r0:])


@pytest.mark.parametrize("radius", [2, 4])
@pytest.mark.parametrize("scan", [(9, 23), (12, 4), (1, 17)])
def test_integer_sums_along_grain_boundaries(radius, scan):
    # Weight 1 inside a grain, 0 across its boundary (R_hat clipped at the
    # ends of corr_range): the zeros of neighbouring positions along a
    # boundary are mostly the same, and their sum is updated from one
    # position to the next. Bit for bit the float32 sweep, and numpy.
    nx, ny = scan
    rng = np.random.default_rng(nx * ny + radius)
    cube = rng.integers(0, 65536, (nx, ny, 4, 6), dtype=np.uint16)
    cube[0, 0] = 65535
    x, y = np.mgrid[0:nx, 0:ny]
    grain = (2 * x + y > ny) + 2 * (x - y > 1) + 4 * (y % 11 > 7)  # oblique boundaries
    offsets = prefilter_footprint(radius)
    _, fwd, index, _, _, _ = kernel_inputs(offsets)
    rh = np.zeros((nx, ny, len(fwd)), np.float32)
    for i, (dx, dy) in enumerate(fwd.tolist()):
        inside = (x + dx < nx) & (y + dy >= 0) & (y + dy < ny)
        u, v = np.clip(x + dx, 0, nx - 1), np.clip(y + dy, 0, ny - 1)
        rh[..., i] = inside & (grain[u, v] == grain)
    expected, _ = run_weighted_average(cube.reshape(nx, ny, -1).astype(np.float32), rh, offsets, 2)
    for strip in (2, 6, 100):
        got, _ = run_weighted_average(cube.reshape(nx, ny, -1), rh, offsets, strip)
        np.testing.assert_array_equal(got, expected)

    def rhat_of(p, q):
        d = (q[0] - p[0], q[1] - p[1])
        if d in index:
            return float(rh[p[0], p[1], index[d]])
        return float(rh[q[0], q[1], index[(-d[0], -d[1])]])

    ref = weighted_average_numpy(cube.astype(np.float64), offsets, rhat_of)
    np.testing.assert_allclose(got.reshape(cube.shape), ref, rtol=1e-6)


def test_ring_dtypes():
    # Three kernel dtypes only; each conversion keeps every value exactly as
    # the kernels would convert it.
    expected = {
        "u1": "uint16", "u2": "uint16", "i1": "float32", "i2": "float32", "i4": "float32",
        "u4": "float32", "f4": "float32", "i8": "float64", "u8": "float64", "f8": "float64",
    }  # fmt: skip
    for code, ring in expected.items():
        assert prefilter.ring_dtype(np.dtype(code)) == np.dtype(ring)
    big = np.array([2**31 - 1, -(2**31), 16777217, 2**32 - 1], np.int64)
    for dt in (np.int32, np.uint32):
        x = big[(big >= np.iinfo(dt).min) & (big <= np.iinfo(dt).max)].astype(dt)
        # numpy's conversion rounds like the kernels' float32(x).
        np.testing.assert_array_equal(x.astype(np.float32), [np.float32(int(v)) for v in x])


def test_pair_union_lists_both_footprints():
    offsets = prefilter_footprint(2)
    union = _pair_union(offsets)
    index = {tuple(d): j for j, d in enumerate(offsets.tolist())}
    assert len({(dr, dc) for dr, dc, _, _ in union.tolist()}) == len(union)
    for dr, dc, j0, j1 in union.tolist():
        assert j0 == index.get((dr, dc), -1)
        assert j1 == index.get((dr, dc - 1), -1)
        assert j0 >= 0 or j1 >= 0
    assert sum(j0 >= 0 for _, _, j0, _ in union.tolist()) == len(offsets)
    assert sum(j1 >= 0 for _, _, _, j1 in union.tolist()) == len(offsets)


# ---------------------------------------------------------------------------
# The whole filter: radii, blur, borders, strips


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
@pytest.mark.parametrize("sigma", [0.0, 1.0])
@pytest.mark.parametrize("scan", [(6, 7), (5, 1), (1, 6), (2, 2)])
def test_radii_and_scans_match_reference(radius, sigma, scan):
    cube = grains_cube(*scan, 7, 9, seed=radius + 7 * scan[1], dtype=np.uint16)
    corr_range = spread_range(cube, sigma, radius)
    ref, ref_w = ref_prefilter(cube, sigma, radius, corr_range)
    weights = np.empty(ref_w.shape, np.float32)
    got = _prefilter(cube, sigma, radius, corr_range, None, None, None, None, weights_out=weights)
    scale = max(np.abs(ref).max(), 1.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(weights, ref_w, atol=1e-4)


@pytest.mark.parametrize("strip", [2, 4, 6, 100])
def test_strip_width_does_not_change_the_result(monkeypatch, strip):
    cube = grains_cube(8, 11, 10, 9, seed=31, dtype=np.uint16)
    corr_range = spread_range(cube, 1.0, 3)
    expected = correlative_prefilter(cube, 1.0, 3, corr_range)
    monkeypatch.setattr(prefilter, "_strip", lambda *args, **kwargs: strip)
    for block in (1, 3, 8):
        got = correlative_prefilter(cube, 1.0, 3, corr_range, _block_rows=block)
        np.testing.assert_array_equal(got, expected)


def test_all_zero_cube_stays_zero():
    cube = np.zeros((4, 5, 8, 8), np.uint16)
    got = correlative_prefilter(cube)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, 0)


# ---------------------------------------------------------------------------
# Tasks handed out from a shared counter


@numba.njit(parallel=True)
def _claim_all(n_tasks, claims, owner):
    counter = _k._task_counter()
    for w in numba.prange(n_tasks):
        while True:
            t = _k._claim(counter)
            if t >= n_tasks:
                break
            claims[t] += 1
            owner[t] = w
    return counter[0]


@pytest.mark.parametrize("n_tasks", [0, 1, 2, 3, 1000])
def test_every_task_is_claimed_once(n_tasks):
    claims = np.zeros(n_tasks, np.int64)
    owner = np.full(n_tasks, -1, np.int64)
    final = _claim_all(n_tasks, claims, owner)
    # Every prange iteration stops after one claim past the end.
    assert final == 2 * n_tasks
    np.testing.assert_array_equal(claims, 1)
    assert np.all((owner >= 0) & (owner < n_tasks))
