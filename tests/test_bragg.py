"""Bragg-disk detection: templates, accuracy on known disks, stacks, bad input."""

import math
import warnings

import numpy as np
import pytest

from napari_stemcluster._bragg_synth import disk_pattern, lattice_vectors, match
from napari_stemcluster.core import (
    DISK_DTYPE,
    find_bragg_disks,
    probe_from_pattern,
    probe_from_region,
    ring_kernel,
    synthetic_probe,
)
from napari_stemcluster.core import _bragg_numba as kern
from napari_stemcluster.core.bragg import BraggWarning, _template_radius


def _positions(d):
    return np.stack([d["qx"], d["qy"]], axis=1)


def _random_patterns(n, dose, seed=0, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g1, g2 = lattice_vectors(11.3, angle=rng.uniform(0, 90))
        c = (np.array(shape) - 1) / 2 + rng.uniform(-2, 2, 2)
        out.append(disk_pattern(shape, g1, g2, center=c, dose=dose, rng=rng))
    return out


# ----------------------------------------------------------------- templates
def test_synthetic_probe_is_centred_unit_sum_and_soft():
    t = synthetic_probe(3.0, edge_width=2.0)
    k = t.shape[0] // 2
    assert t.shape[0] == t.shape[1] and t.shape[0] % 2 == 1
    assert abs(t.sum() - 1) < 1e-6
    np.testing.assert_allclose(t, t[::-1, ::-1], atol=1e-7)  # point-symmetric about the centre
    assert t[k, k] == t.max()
    edge = t[k, k + 3]  # on the nominal radius: half height of the soft edge
    assert 0.3 * t.max() < edge < 0.7 * t.max()
    with pytest.raises(ValueError, match="probe radius"):
        synthetic_probe(0)


def test_ring_kernel_sums_to_zero_and_ignores_flat_background():
    k = ring_kernel(synthetic_probe(2.0))
    assert abs(float(k.sum())) < 1e-6
    assert k[k.shape[0] // 2, k.shape[1] // 2] > 0 and k.min() < 0
    # A disk on a strong flat background is found with the ring kernel.
    p, truth = disk_pattern((64, 64), *lattice_vectors(12.0), dose=None, background=0.6)
    d = find_bragg_disks(p, probe_radius=2.5, ring=True)
    assert (match(_positions(d), truth.positions) >= 0).mean() > 0.9


def test_probe_from_pattern_and_region_recover_the_disk_radius():
    yy, xx = np.mgrid[:48, :40]
    beam = (np.hypot(yy - 22.3, xx - 18.8) <= 4.0) * 100.0
    t = probe_from_pattern(beam + 2.0)  # background is subtracted
    assert abs(t.sum() - 1) < 1e-6
    assert 3.5 < _template_radius(t) < 4.5
    # Centred: the centroid is the middle pixel.
    k = np.arange(t.shape[0]) - t.shape[0] // 2
    assert abs(float((t.sum(1) * k).sum())) < 0.05 and abs(float((t.sum(0) * k).sum())) < 0.05
    cube = np.broadcast_to(beam.astype(np.uint16), (3, 5, 48, 40))
    region = np.zeros((3, 5), bool)
    region[1:, 2:] = True
    np.testing.assert_allclose(probe_from_region(cube, region), t, atol=1e-6)
    with pytest.raises(ValueError, match="region is empty"):
        probe_from_region(cube, np.zeros((3, 5), bool))
    with pytest.raises(ValueError, match="empty or flat"):
        probe_from_pattern(np.zeros((16, 16)))


# ------------------------------------------------------------------ accuracy
def test_noise_free_positions_within_0_02_px():
    errs = []
    for p, truth in _random_patterns(6, None, seed=1):
        d = find_bragg_disks(p)  # defaults: radius estimated
        m = match(_positions(d), truth.positions)
        strong = truth.expected > 0.004  # fraction of the pattern's counts
        assert (m[strong] >= 0).all()
        errs.append(np.hypot(*(_positions(d)[m[strong]] - truth.positions[strong]).T))
    assert np.median(np.concatenate(errs)) < 0.02


def test_subpixel_error_at_moderate_dose_below_0_1_px_and_recall():
    """Dose 20,000 counts per pattern; disks holding >= 100 counts (0.5 %)."""
    errs, recalled, spurious = [], [], 0
    for p, truth in _random_patterns(12, 20000.0, seed=2):
        d = find_bragg_disks(p)  # defaults, radius estimated
        m = match(_positions(d), truth.positions)
        strong = truth.expected >= 100
        recalled.append(m[strong] >= 0)
        ok = strong & (m >= 0)
        errs.append(np.hypot(*(_positions(d)[m[ok]] - truth.positions[ok]).T))
        spurious += len(d) - int((m >= 0).sum())
    errs = np.concatenate(errs)
    recall = np.concatenate(recalled).mean()
    assert recall >= 0.95
    assert np.sqrt(np.mean(errs**2)) <= 0.15  # dominated by the weakest disks
    assert np.median(errs) <= 0.1
    assert spurious <= 2


def test_strong_disks_subpixel_rms_below_0_1_px():
    """Moderate dose (20,000 counts per pattern), defaults: disks of >= 400 counts."""
    errs = []
    for p, truth in _random_patterns(12, 20000.0, seed=3):
        d = find_bragg_disks(p)
        m = match(_positions(d), truth.positions)
        ok = (truth.expected >= 400) & (m >= 0)
        errs.append(np.hypot(*(_positions(d)[m[ok]] - truth.positions[ok]).T))
    errs = np.concatenate(errs)
    assert len(errs) > 50
    assert np.sqrt(np.mean(errs**2)) <= 0.1


def test_direct_beam_found_even_when_weaker_than_the_disks():
    for beam_fraction in (0.3, 0.005):
        p, truth = disk_pattern(
            (72, 64),
            *lattice_vectors(10.0, 20),
            center=(34.2, 30.7),
            dose=None,
            beam_fraction=beam_fraction,
        )
        d, beam = find_bragg_disks(p, probe_radius=2.5, return_beam=True)
        assert np.hypot(*(beam - truth.center)) < 0.05
        assert np.min(np.hypot(*(_positions(d) - truth.center).T)) > 5  # not among the disks


def test_dft_kernel_matches_the_explicit_inverse_dft():
    rng = np.random.default_rng(4)
    nx, ny = 11, 9  # odd: no Nyquist term, whose interpolation is ambiguous
    img = rng.normal(size=(nx, ny))
    spec = np.fft.rfft2(img)
    x0, y0 = 5.3, 4.1

    def corr_at(x, y):  # plain trigonometric interpolation of img
        kx = np.fft.fftfreq(nx)[:, None] * nx
        ky = np.fft.fftfreq(ny)[None, :] * ny
        full = np.fft.fft2(img)
        return float(np.real(np.sum(full * np.exp(2j * np.pi * (kx * x / nx + ky * y / ny)))))

    grid = np.empty((5, 5))
    kx = np.fft.fftfreq(nx) * nx
    wy = np.full(ny // 2 + 1, 2.0)
    wy[0] = 1.0
    kern._local_grid(spec.real.copy(), spec.imag.copy(), kx, wy, nx, ny, x0, y0, 0.25, 2, grid)
    for i in range(5):
        for j in range(5):
            ref = corr_at(x0 + (i - 2) * 0.25, y0 + (j - 2) * 0.25)
            assert abs(grid[i, j] - ref) < 1e-9 * max(1, abs(ref))
    # On the integer grid the interpolant is the image itself.
    kern._local_grid(spec.real.copy(), spec.imag.copy(), kx, wy, nx, ny, 3.0, 3.0, 1.0, 2, grid)
    np.testing.assert_allclose(grid / (nx * ny), img[1:6, 1:6], atol=1e-12)
    # The refinement finds the maximum of a smooth peak to a fraction of the grid step.
    xx, yy = np.mgrid[:nx, :ny]
    peak = np.exp(-((xx - 5.37) ** 2 + (yy - 3.81) ** 2) / 4.0)
    spec = np.fft.rfft2(peak)
    got = kern.dft_refine(spec, np.array([[5.2, 3.9]]), nx, ny, 20)
    np.testing.assert_allclose(got[0], [5.37, 3.81], atol=0.02)


# ---------------------------------------------------------------- stacks etc.
def test_stack_equals_single_calls_for_any_leading_shape_and_dtype():
    pats = np.stack([p for p, _ in _random_patterns(5, 5000.0, seed=5)] + [np.zeros((64, 64))])
    singles = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BraggWarning)
        for p in pats:
            singles.append(find_bragg_disks(p, probe_radius=2.5))
    stack = find_bragg_disks(pats.astype(np.uint16).reshape(2, 3, 64, 64), probe_radius=2.5)
    assert len(stack) == 6
    for a, b in zip(stack, singles, strict=True):
        assert a.dtype == DISK_DTYPE
        np.testing.assert_allclose(_positions(a), _positions(b), atol=1e-9)
        np.testing.assert_allclose(a["intensity"], b["intensity"])
    assert len(stack[-1]) == 0
    calls = []
    find_bragg_disks(pats, probe_radius=2.5, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)


def test_non_square_detector_and_axis_order():
    p = np.zeros((40, 70))
    yy, xx = np.mgrid[:40, :70]
    for cx, cy in [(19.5, 34.5), (9.5, 34.5), (29.5, 34.5), (19.5, 14.5), (19.5, 54.5)]:
        p += np.clip(3.5 - np.hypot(yy - cx, xx - cy), 0, 1)
    d, beam = find_bragg_disks(p, probe_radius=3, return_beam=True)
    np.testing.assert_allclose(beam, [19.5, 34.5], atol=0.02)
    got = sorted(map(tuple, _positions(d).round(1)))
    assert got == [(9.5, 34.5), (19.5, 14.5), (19.5, 54.5), (29.5, 34.5)]


def test_options_change_results_sensibly():
    p, truth = disk_pattern((64, 64), *lattice_vectors(11.0, 7), dose=None)
    full = find_bragg_disks(p, probe_radius=2.5)
    assert len(find_bragg_disks(p, probe_radius=2.5, max_count=3)) == 3
    np.testing.assert_array_equal(
        find_bragg_disks(p, probe_radius=2.5, max_count=3)["qx"], full["qx"][:3]
    )
    assert np.all(np.diff(full["correlation"]) <= 0)  # strongest first
    edge = find_bragg_disks(p, probe_radius=2.5, edge=15)
    assert len(edge) < len(full)
    assert np.all((_positions(edge) >= 14.5) & (_positions(edge) <= 64 - 15))
    few = find_bragg_disks(p, probe_radius=2.5, min_relative=0.5)
    assert 0 < len(few) < len(full)
    thr = float(np.median(full["correlation"]))
    strong = find_bragg_disks(p, probe_radius=2.5, min_absolute=thr)
    assert 0 < len(strong) < len(full)
    assert np.all(strong["correlation"] >= thr)
    above = full["qx"][full["correlation"] > thr]
    np.testing.assert_array_equal(strong["qx"], above[: len(strong)])
    for mode in ("parabolic", "none"):
        d = find_bragg_disks(p, probe_radius=2.5, subpixel=mode)
        m = match(_positions(d), truth.positions)
        tol = 0.5 if mode == "none" else 0.15
        ok = m >= 0
        assert np.all(np.hypot(*(_positions(d)[m[ok]] - truth.positions[ok]).T) < tol)
    phase = find_bragg_disks(p, probe_radius=2.5, corr_power=0.3)
    # Sharper peaks, and more ringing: the strongest maxima are the true disks.
    m = match(truth.positions, _positions(phase[:8]), tol=0.3)
    assert np.all(m >= 0)
    spaced = find_bragg_disks(p, probe_radius=2.5, min_spacing=15)
    d2 = np.hypot(*(_positions(spaced)[:, None] - _positions(spaced)[None]).transpose(2, 0, 1))
    assert np.all(d2[np.triu_indices(len(spaced), 1)] >= 15)


# ---------------------------------------------------------------- bad input
def test_empty_and_constant_patterns_warn_and_return_empty():
    for p in (np.zeros((32, 32)), np.full((32, 32), 7, np.uint8)):
        with pytest.warns(BraggWarning, match="empty or flat"):
            d, beam = find_bragg_disks(p, return_beam=True)
        assert d.dtype == DISK_DTYPE and len(d) == 0
        assert np.all(np.isnan(beam))
    with pytest.warns(BraggWarning, match="any of the 3 patterns"):
        assert [len(x) for x in find_bragg_disks(np.zeros((3, 16, 16)))] == [0, 0, 0]


def test_direct_beam_only_pattern():
    p = disk_pattern((64, 64), dose=None, beam_fraction=1.0, background=0.0, hk_max=0)[0]
    with pytest.warns(BraggWarning, match="only the direct beam"):
        d, beam = find_bragg_disks(p, return_beam=True)
    assert len(d) == 0
    np.testing.assert_allclose(beam, [31.5, 31.5], atol=0.02)


def test_wrong_template_and_parameters_give_clear_messages():
    p = np.random.default_rng(0).poisson(5, (32, 32))
    with pytest.raises(ValueError, match="larger than the patterns"):
        find_bragg_disks(p, template=np.ones((40, 9)))
    with pytest.raises(ValueError, match="template is empty"):
        find_bragg_disks(p, template=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="template must be a 2-D"):
        find_bragg_disks(p, template=np.ones(5))
    with pytest.raises(ValueError, match="template contains NaN"):
        find_bragg_disks(p, template=np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="pattern contains NaN"):
        find_bragg_disks(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match=r"pattern \(1,\) contains NaN"):
        find_bragg_disks(np.stack([np.ones((8, 8)), np.full((8, 8), np.nan)]))
    with pytest.raises(ValueError, match="subpixel"):
        find_bragg_disks(p, subpixel="gauss")
    with pytest.raises(ValueError, match="corr_power"):
        find_bragg_disks(p, corr_power=2)
    with pytest.raises(ValueError, match="min_spacing"):
        find_bragg_disks(p, min_spacing=0)
    with pytest.raises(ValueError, match=r"\(Qx, Qy\)"):
        find_bragg_disks(np.ones(5))
    with pytest.raises(TypeError, match="dtype"):
        find_bragg_disks(np.array([["a"] * 4] * 4))
    # A template as large as the pattern is accepted (Poisson noise: no disk).
    with pytest.warns(BraggWarning):
        assert isinstance(find_bragg_disks(p, template=np.ones((32, 32))), np.ndarray)


def test_template_of_the_wrong_size_gives_a_clear_result_or_message():
    """Disks of radius 2.5 px, 11.3 px apart, 20,000 counts."""
    p, truth = disk_pattern(
        (64, 64), *lattice_vectors(11.3, 17), dose=20000, rng=np.random.default_rng(0)
    )
    # Too small: every disk is still found, without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", BraggWarning)
        for small in (find_bragg_disks(p, probe_radius=1.0), find_bragg_disks(p, probe_radius=2.5)):
            assert (match(_positions(small), truth.positions) >= 0).mean() >= 0.95
    # Too large: disks merge in the correlation; the warning names both radii.
    for kw in ({"probe_radius": 8.0}, {"template": synthetic_probe(10.0)}):
        with pytest.warns(BraggWarning, match="much larger than the disks") as rec:
            d = find_bragg_disks(p, **kw)
        assert len(d) < 4
        msg = next(str(r.message) for r in rec if "much larger" in str(r.message))
        suggested = float(msg.split("probe_radius=")[1].split(",")[0])
        assert 1.8 <= suggested <= 3.0
    # A stack warns once, from its median result.
    with pytest.warns(BraggWarning, match="much larger than the disks") as rec:
        find_bragg_disks(np.stack([p, p, p]), probe_radius=8.0)
    assert sum("much larger" in str(r.message) for r in rec) == 1


def test_any_scale_of_values_gives_the_same_disks_or_a_clear_error():
    p, _ = disk_pattern((64, 64), *lattice_vectors(11.3, 17), dose=None)

    def ordered(d):  # equally strong disks may swap places in the strongest-first order
        xy = _positions(d)
        return xy[np.lexsort(xy.round(2).T[::-1])]

    ref = ordered(find_bragg_disks(p))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or underflow inside numpy
        for scale in (1e-12, 1e9, 1e14):
            d = find_bragg_disks(p * (scale / p.max()))
            np.testing.assert_allclose(ordered(d), ref, atol=1e-3)
    with pytest.raises(ValueError, match="beyond the float32 range"):
        find_bragg_disks(p * 1e300)
    with pytest.raises(ValueError, match="beyond the float32 range"):
        find_bragg_disks(np.stack([p, p * 1e300]))


def test_dask_and_memmap_inputs(tmp_path):
    da = pytest.importorskip("dask.array")
    pats = np.stack([p for p, _ in _random_patterns(3, 8000.0, seed=6)]).astype(np.uint16)
    ref = find_bragg_disks(pats, probe_radius=2.5)
    lazy = find_bragg_disks(da.from_array(pats, chunks=(1, 64, 64)), probe_radius=2.5)
    np.save(tmp_path / "p.npy", pats)
    mm = find_bragg_disks(np.load(tmp_path / "p.npy", mmap_mode="r"), probe_radius=2.5)
    for a, b, c in zip(ref, lazy, mm, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert math.isfinite(float(ref[0]["intensity"][0]))


def test_low_dose_threshold_adapts_to_counts_and_averages():
    """Sparse single patterns give no spurious disks; averages find many more."""
    rng = np.random.default_rng(8)
    single_found = avg_found = total = spurious = 0
    for _ in range(6):
        lam, truth = disk_pattern((64, 64), *lattice_vectors(11.0, rng.uniform(0, 90)), dose=None)
        draws = rng.poisson(lam[None] * 300.0, size=(25, 64, 64))
        for img, is_avg in ((draws[0].astype(np.uint16), False), (draws.mean(axis=0), True)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BraggWarning)
                d = find_bragg_disks(img)
            m = match(_positions(d), truth.positions)
            spurious += len(d) - int((m >= 0).sum())
            if is_avg:
                avg_found += int((m >= 0).sum())
            else:
                single_found += int((m >= 0).sum())
        total += len(truth.positions)
    assert spurious <= 2
    assert avg_found / total >= single_found / total + 0.2
