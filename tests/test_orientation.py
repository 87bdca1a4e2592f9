"""Orientation libraries, template matching and orientation maps."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_stemcluster.core import (
    ORIENTATION_DTYPE,
    ipf_color_key,
    ipf_colors,
    load_structure,
    match_orientations,
    misorientation_deg,
    orientation_library,
    orientation_maps,
    reference_lattice,
)
from napari_stemcluster.core._scattering_factors import electron_scattering_factor
from napari_stemcluster.core.crystal import electron_wavelength
from napari_stemcluster.core.orientation import (
    _base_rotations,
    _exact_score,
    _fz_weight,
    _polar_fft,
    _rot_z,
    _rotvec,
    _search,
    kinematical_spots,
    simulate_pattern,
    zone_axis_twin,
)
from napari_stemcluster.data import builtin_cif

KEV, QPIX, GMAX = 300.0, 0.02, 1.2
SHAPE = (128, 128)


@pytest.fixture(scope="module")
def au():
    return load_structure(builtin_cif("Au"))


@pytest.fixture(scope="module")
def rutile():
    return load_structure(builtin_cif("TiO2"))


@pytest.fixture(scope="module")
def au_lib(au):
    return orientation_library(au, KEV, QPIX, step_deg=1.0, g_max=GMAX)


@pytest.fixture(scope="module")
def rutile_lib(rutile):
    return orientation_library(rutile, KEV, QPIX, step_deg=1.0, g_max=GMAX)


def near_axis(st, uvw, tilt_deg, rng):
    """An orientation ``tilt_deg`` off the zone axis ``uvw``, random in-plane angle."""
    v = st.direct @ np.asarray(uvw, float)
    v /= np.linalg.norm(v)
    ax = np.array([*rng.normal(size=2), 0.0])
    ax /= np.linalg.norm(ax)
    tilt = _rotvec(np.radians(tilt_deg) * ax)
    return _rot_z(rng.uniform(0, 2 * np.pi)) @ tilt @ _base_rotations(st, v[None])[0]


# ------------------------------------------------------------------ symmetry
def test_misorientation_matches_brute_force(au, rutile):
    rng = np.random.default_rng(0)
    for st in (au, rutile):
        a = Rotation.random(20, random_state=1).as_matrix()
        b = Rotation.random(20, random_state=2).as_matrix()
        got = misorientation_deg(a, b, st)
        for ra, rb, g in zip(a, b, got, strict=True):
            angles = [Rotation.from_matrix(ra.T @ rb @ s).magnitude() for s in st.proper_ops]
            assert g == pytest.approx(np.degrees(min(angles)), abs=1e-6)
        # symmetry-equivalent orientations are the same orientation
        s = st.proper_ops[rng.integers(len(st.proper_ops))]
        np.testing.assert_allclose(misorientation_deg(a, a @ s, st), 0.0, atol=1e-5)
    z45 = _rot_z(np.radians(45.0))
    assert misorientation_deg(np.eye(3), z45, au) == pytest.approx(45.0)
    assert misorientation_deg(np.eye(3), _rot_z(np.radians(90.0)), au) == pytest.approx(0.0)


def test_library_directions_cover_the_fundamental_zone(au, rutile):
    rng = np.random.default_rng(3)
    for st in (au, rutile):
        lib = orientation_library(st, KEV, QPIX, step_deg=2.0, g_max=1.0)
        w = _fz_weight(st)
        v = lib.directions
        # every library direction is its own fundamental-zone representative
        images = np.einsum("kij,nj->nki", st.proper_ops, v) @ w
        assert np.all(images.max(axis=1) <= v @ w + 1e-9)
        # every direction on the sphere is within the step of some library direction
        probe = rng.normal(size=(1000, 3))
        probe /= np.linalg.norm(probe, axis=1, keepdims=True)
        cos = np.einsum("kij,nj->nki", st.proper_ops, probe) @ v.T
        nearest = np.degrees(np.arccos(np.clip(cos.max(axis=(1, 2)), -1, 1)))
        assert nearest.max() < 2.0
        # reduced by the rotations (mirror-related directions give mirrored
        # patterns): about |sphere| / |rotation group| directions
        expected = 4 * np.pi / len(st.proper_ops) / np.radians(2.0) ** 2
        assert 0.7 * expected < len(lib) < 1.5 * expected
        # base rotations put each direction along the beam
        np.testing.assert_allclose(
            np.einsum("tij,tj->ti", lib.base, v), [[0, 0, 1]] * len(v), atol=1e-9
        )


# ------------------------------------------------------------------ templates
def test_zone_axis_spots(au_lib):
    sp = kinematical_spots(au_lib, np.eye(3))  # [001]
    assert len(sp["hkl"])
    assert np.all(sp["hkl"][:, 2] == 0)  # zero-order Laue zone only at this thickness
    r = np.hypot(*sp["q"].T) * QPIX
    np.testing.assert_allclose(
        r, np.linalg.norm(sp["hkl"], axis=1) / au_lib.structure.cell[0], rtol=1e-12
    )
    # intensities: |F|^2 times a Gaussian in the excitation error s = λg²/2
    lam = electron_wavelength(KEV)
    s = 0.5 * lam * r**2
    f = 4 * electron_scattering_factor("Au", r / 2) * np.exp(-au_lib.structure.b_iso[0] * r**2 / 4)
    expected = f**2 * np.exp(-0.5 * (s / au_lib.sigma_excitation) ** 2)
    np.testing.assert_allclose(sp["intensity"], expected, rtol=1e-9)


def test_probe_convergence_excites_more_reflections(au):
    tilt = _rotvec(np.radians([1.5, 0.0, 0.0]))
    kw = {"step_deg": 5.0, "g_max": GMAX, "sigma_excitation": 0.005}
    sharp = orientation_library(au, KEV, QPIX, **kw)
    wide = orientation_library(au, KEV, QPIX, convergence_mrad=20, **kw)
    assert len(wide.spots(tilt)["hkl"]) > len(sharp.spots(tilt)["hkl"])


def test_polar_search_equals_direct_correlation(au):
    """The FFT over in-plane angles equals the correlation evaluated angle by angle."""
    lib = orientation_library(au, KEV, QPIX, step_deg=6.0, g_max=1.0, n_angles=72)
    rng = np.random.default_rng(5)
    q = rng.uniform(-0.9, 0.9, size=(7, 2))
    amp = rng.uniform(0.5, 2.0, size=7)
    sigma = 0.03
    corr, norm = _search(lib, q, amp, sigma, np.inf)
    n = lib.n_angles
    r_k, th_k = np.hypot(*q.T), np.arctan2(q[:, 1], q[:, 0])
    sig_t = np.maximum(sigma / r_k, 3 * np.pi / n)
    for t in (0, len(lib) // 2, len(lib) - 1):
        gl = lib.g @ lib.base[t].T
        lam = lib.wavelength
        s = gl[:, 2] + 0.5 * lam * (gl**2).sum(1)
        # the library's width includes the tilt of one sampling step
        sig = np.hypot(
            lib.sigma_excitation, 0.6 * np.radians(lib.step_deg) * np.linalg.norm(gl, axis=1)
        )
        wt = np.exp(-0.5 * (s / sig) ** 2)
        keep = wt >= 0.01
        a = (lib.f2[keep] * wt[keep]) ** lib.intensity_power
        shell = np.abs(np.linalg.norm(lib.g[keep], axis=1)[:, None] - lib.shells).argmin(1)
        th_j = np.arctan2(gl[keep, 1], gl[keep, 0])
        for p in range(0, n, 7):
            phi = 2 * np.pi * p / n
            direct = 0.0
            for aj, sj, tj in zip(a, shell, th_j, strict=True):
                rad = np.exp(-0.5 * ((r_k - lib.shells[sj]) / sigma) ** 2)
                d = (tj + phi - th_k + np.pi) % (2 * np.pi) - np.pi
                ang = np.exp(-0.5 * (d / sig_t) ** 2)  # peak-1 Gaussian in angle
                direct += aj * np.sum(amp * rad * ang)
            assert corr[t, p] == pytest.approx(
                direct, rel=2e-3, abs=1e-4 * float(np.abs(corr[t]).max())
            )
        assert norm[t] == pytest.approx(np.sqrt((a * a).sum()), rel=1e-5)


def test_polar_fft_of_no_disks_is_zero(au_lib):
    e = _polar_fft(au_lib, np.zeros((0, 2)), np.zeros(0), 0.03)
    assert e.shape == (len(au_lib.shells), au_lib.n_angles // 2) and not e.any()


# ------------------------------------------------------------------ accuracy
AU_AXES = [(0, 0, 1), (0, 1, 1), (1, 1, 1), (1, 1, 2), (0, 1, 3), (1, 2, 3)]
RUTILE_AXES = [(0, 0, 1), (1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1), (2, 1, 0)]


def _check_accuracy(lib, rec, truths, bound):
    """Every answer within ``bound`` degrees of the truth or of its zone-axis twin.

    The twin (180° about the zone axis) gives the same kinematical pattern
    when only the zero-order zone is excited: then the match must say so
    with a confidence near 0.
    """
    st = lib.structure
    truths = np.array(truths)
    err = misorientation_deg(rec["rotation"], truths, st)
    twins = np.array([zone_axis_twin(t, st) for t in truths])
    err_twin = misorientation_deg(rec["rotation"], twins, st)
    assert np.all(np.minimum(err, err_twin) <= bound), (err, err_twin)
    for r, e, et in zip(rec, err, err_twin, strict=True):
        if e > bound:  # the twin was chosen: nothing tells them apart
            assert _same_pattern(lib, r["rotation"], twins[list(err_twin).index(et)]) > 0.99
            assert r["confidence"] < 0.05, (err, rec["confidence"])
    return np.minimum(err, err_twin)


def _same_pattern(lib, a, b):
    """Cosine similarity of the noise-free kinematical patterns of two orientations."""
    sp = kinematical_spots(lib, b)
    q, amp = sp["q"] * QPIX, sp["intensity"] ** lib.intensity_power
    return _exact_score(lib, a, q, amp, 1.5 * QPIX, np.inf)


def test_zone_axis_twin_gives_the_same_pattern(au_lib):
    st = au_lib.structure
    rng = np.random.default_rng(0)
    for uvw, same in (((1, 1, 1), False), ((1, 1, 2), False), ((0, 0, 1), True), ((0, 1, 1), True)):
        rot = near_axis(st, uvw, 0.0, rng)
        twin = zone_axis_twin(rot, st)
        a, b = kinematical_spots(au_lib, rot), kinematical_spots(au_lib, twin)
        key = np.lexsort(a["q"].round(6).T)
        key_b = np.lexsort(b["q"].round(6).T)
        np.testing.assert_allclose(a["q"][key], b["q"][key_b], atol=1e-9)
        np.testing.assert_allclose(a["intensity"][key], b["intensity"][key_b], rtol=1e-9)
        assert (misorientation_deg(rot, twin, st) < 1e-6) == same


@pytest.mark.parametrize(("name", "axes"), [("Au", AU_AXES), ("TiO2", RUTILE_AXES)])
def test_accuracy_at_moderate_dose(name, axes, au_lib, rutile_lib):
    lib = au_lib if name == "Au" else rutile_lib
    st = lib.structure
    rng = np.random.default_rng(11)
    truths = [near_axis(st, uvw, rng.uniform(0.5, 1.5), rng) for uvw in axes]
    patterns = np.stack(
        [
            simulate_pattern(lib, t, SHAPE, counts=1e5, background=0.005, rng=i)
            for i, t in enumerate(truths)
        ]
    )
    coarse = match_orientations(patterns, lib, refine=False)
    fine = match_orientations(patterns, lib)
    assert coarse["indexed"].all() and fine["indexed"].all()
    _check_accuracy(lib, coarse, truths, 1.0)
    _check_accuracy(lib, fine, truths, 0.2)
    assert np.all(fine["score"] >= coarse["score"] - 1e-9)
    for rec, uvw in zip(fine, axes, strict=True):
        # the reported zone axis is symmetry-equivalent to the true one
        v = st.direct @ rec["zone_axis"]
        u = st.direct @ np.asarray(uvw, float)
        cos = np.max(np.einsum("kij,j->ki", st.laue_ops, v) @ u)
        assert cos / np.linalg.norm(v) / np.linalg.norm(u) > np.cos(np.radians(0.1))


def _independent_pattern(st, rot, shape, thickness=20.0, radius=2.0, sub=5):
    """Kinematical pattern written without the library: a loop over hkl, the exact
    Ewald-sphere excitation error and the sinc² shape function of a slab. Each
    detector pixel integrates its area (``sub`` x ``sub`` samples), as a real
    pixel does: hard-edged disks sampled at pixel centres misstate the disk
    intensities by ~10 %, which moves the fitted tilt by up to ~0.7°."""
    lam = electron_wavelength(KEV)
    k = 1 / lam
    c = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2])
    off = (np.arange(sub) + 0.5) / sub - 0.5
    qx = (np.arange(shape[0])[:, None] + off).ravel()
    qy = (np.arange(shape[1])[:, None] + off).ravel()
    qx, qy = np.meshgrid(qx, qy, indexing="ij")
    img = np.zeros(qx.shape)
    img[np.hypot(qx - c[0], qy - c[1]) <= radius] = 50.0
    for h in range(-6, 7):
        for kk in range(-6, 7):
            for ll in range(-6, 7):
                if (h, kk, ll) == (0, 0, 0):
                    continue
                g = rot @ (st.reciprocal @ np.array([h, kk, ll], float))
                gn = np.linalg.norm(g)
                if gn > GMAX:
                    continue
                f = 0j
                for x, el, b in zip(st.positions, st.elements, st.b_iso, strict=True):
                    fe = electron_scattering_factor(el, gn / 2) * np.exp(-b * gn * gn / 4)
                    f += fe * np.exp(2j * np.pi * np.dot([h, kk, ll], x))
                kg = np.array([0.0, 0.0, k]) + g
                s = k - np.linalg.norm(kg)  # distance from the Ewald sphere
                inten = abs(f) ** 2 * np.sinc(thickness * s) ** 2
                if inten < 1e-6:
                    continue
                p = c + g[:2] / QPIX
                img[np.hypot(qx - p[0], qy - p[1]) <= radius] += inten / 400.0
    return img.reshape(shape[0], sub, shape[1], sub).mean(axis=(1, 3))


@pytest.mark.parametrize("thickness_nm", [0.0, 2.0])
def test_accuracy_on_an_independent_simulation(au_lib, thickness_nm):
    """A 2 nm slab (sinc² shape function, exact Ewald sphere) at moderate dose, matched
    with the library's Gaussian excitation model of about the same width, or with
    its slab model."""
    st = au_lib.structure
    lib = au_lib
    if thickness_nm:
        lib = orientation_library(st, KEV, QPIX, step_deg=1.0, g_max=GMAX, thickness_nm=2.0)
    rng = np.random.default_rng(4)
    truths = [near_axis(st, uvw, rng.uniform(0.2, 0.8), rng) for uvw in AU_AXES[:4]]
    patterns = np.stack([_independent_pattern(st, t, SHAPE) for t in truths])
    gen = np.random.default_rng(0)
    patterns = gen.poisson(patterns / patterns.sum((1, 2), keepdims=True) * 2e5)
    coarse = match_orientations(patterns, lib, refine=False)
    rec = match_orientations(patterns, lib)
    assert rec["indexed"].all()
    _check_accuracy(lib, coarse, truths, 1.0)
    _check_accuracy(lib, rec, truths, 0.2)


def test_phase_between_two_candidates(au_lib, rutile_lib):
    rng = np.random.default_rng(21)
    axes_au = [(0, 0, 1), (0, 1, 1), (1, 1, 2), (0, 1, 3), (1, 2, 3)]
    axes_ru = [(0, 0, 1), (1, 0, 0), (1, 1, 0), (1, 0, 1), (1, 1, 1)]
    patterns, truth = [], []
    for phase, lib, axes in ((0, au_lib, axes_au), (1, rutile_lib, axes_ru)):
        for _rep in range(2):
            for uvw in axes:
                rot = near_axis(lib.structure, uvw, rng.uniform(0.2, 1.5), rng)
                seed = int(rng.integers(1 << 30))
                patterns.append(simulate_pattern(lib, rot, SHAPE, counts=5e4, rng=seed))
                truth.append(phase)
    rec = match_orientations(np.stack(patterns), [au_lib, rutile_lib], refine=False)
    correct = np.mean(rec["phase"] == np.array(truth))
    assert correct >= 0.95, correct
    assert np.all(rec["phase_confidence"][rec["phase"] == np.array(truth)] > 0)


def test_too_few_disks_is_not_indexed(au_lib):
    c = (SHAPE[0] - 1) / 2
    qx, qy = np.mgrid[: SHAPE[0], : SHAPE[1]]
    two = np.zeros(SHAPE, np.float32)
    for p in [(c, c), (c + 21.2, c), (c, c + 24.5)]:
        two[np.hypot(qx - p[0], qy - p[1]) <= 2] = 10.0
    patterns = np.stack([two, np.zeros(SHAPE, np.float32), np.full(SHAPE, 3.0, np.float32)])
    rec = match_orientations(patterns, au_lib)
    assert not rec["indexed"].any()
    assert np.all(rec["phase"] == -1) and np.isnan(rec["rotation"]).all()
    assert rec["n_disks"].tolist() == [2, 0, 0]


def test_disk_arrays_and_non_square_detector(au_lib):
    """Disk arrays (structured, as from a Bragg-disk finder) give the pattern's answer."""
    rng = np.random.default_rng(8)
    truth = near_axis(au_lib.structure, (0, 1, 1), 0.7, rng)
    shape = (96, 140)
    center = (50.0, 64.0)
    pattern = simulate_pattern(au_lib, truth, shape, center=center, counts=1e5, rng=1)
    from_pattern = match_orientations(pattern, au_lib, center=center)[0]
    sp = kinematical_spots(au_lib, truth)
    disks = np.zeros(
        len(sp["q"]), [("qx", "f8"), ("qy", "f8"), ("intensity", "f8"), ("correlation", "f8")]
    )
    disks["qx"], disks["qy"] = sp["q"][:, 0] + center[0], sp["q"][:, 1] + center[1]
    disks["intensity"] = sp["intensity"]
    inside = (
        (disks["qx"] > 2)
        & (disks["qx"] < shape[0] - 3)
        & (disks["qy"] > 2)
        & (disks["qy"] < shape[1] - 3)
    )
    from_disks = match_orientations([disks[inside]], au_lib, center=center, detector_shape=shape)[0]
    for rec in (from_pattern, from_disks):
        assert rec["indexed"]
        assert misorientation_deg(rec["rotation"], truth, au_lib.structure) < 0.2
    plain = np.column_stack([disks["qx"], disks["qy"], disks["intensity"]])[inside]
    again = match_orientations(plain, au_lib, center=center, detector_shape=shape)[0]
    np.testing.assert_allclose(again["rotation"], from_disks["rotation"], atol=1e-9)
    with pytest.raises(ValueError, match="center"):
        match_orientations([plain], au_lib)
    with pytest.raises(ValueError, match="qx, qy"):
        match_orientations([np.zeros(3, [("x", "f8")])], au_lib, center=center)


def test_record_fields_describe_the_rotation(au_lib):
    truth = _rot_z(np.radians(30.0)) @ _rotvec(np.radians([0.6, 0.3, 0.0]))  # near [001]
    rec = match_orientations(simulate_pattern(au_lib, truth, SHAPE), au_lib)[0]
    rot = rec["rotation"]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    assert sorted(np.abs(rec["zone_axis"]).tolist()) == [0, 0, 1]
    # in-plane angle of the crystal's a axis, modulo the 4-fold axis
    assert (rec["inplane_deg"] - 30.0 + 45.0) % 90.0 - 45.0 == pytest.approx(0.0, abs=0.3)
    assert 0 < rec["score"] <= 1.0 + 1e-9 and 0 <= rec["confidence"] <= 1
    assert rec.dtype == ORIENTATION_DTYPE


# ------------------------------------------------------------------ outputs
def test_ipf_colors_and_key(au, rutile):
    def corner(v):
        v = np.asarray(v, float) / np.linalg.norm(v)
        return _base_rotations(au, v[None])[0]

    assert ipf_colors(corner([0, 0, 1]), au).tolist() == [255, 0, 0]
    assert ipf_colors(corner([1, 0, 1]), au).tolist() == [0, 255, 0]
    assert ipf_colors(corner([1, 1, 1]), au).tolist() == [0, 0, 255]
    # symmetry-equivalent orientations have the same colour, along every axis
    rots = Rotation.random(10, random_state=3).as_matrix()
    for st in (au, rutile):
        for d in np.eye(3):
            a = ipf_colors(rots, st, d)
            b = ipf_colors(rots @ st.proper_ops[3], st, d)
            np.testing.assert_array_equal(a, b)
    nan = ipf_colors(np.full((3, 3), np.nan), au)
    assert nan.tolist() == [0, 0, 0]
    for st in (au, rutile):
        img, labels = ipf_color_key(st, 64)
        assert img.shape == (64, 64, 4) and img[..., 3].any() and not img[..., 3].all()
        assert len(labels) == 3


def test_orientation_maps_follow_the_labels(au, rutile):
    rec = np.zeros(3, ORIENTATION_DTYPE)
    rec["rotation"] = [np.eye(3), _rotvec([0.3, 0.2, 0.1]), np.full((3, 3), np.nan)]
    rec["indexed"] = [True, True, False]
    rec["phase"] = [0, 1, -1]
    rec["score"] = [0.9, 0.8, 0.0]
    labels = np.array([[0, 1, 1], [2, 3, 0]])
    maps = orientation_maps(labels, rec, [au, rutile])
    assert maps["phase"].tolist() == [[-1, 0, 0], [1, -1, -1]]
    np.testing.assert_allclose(maps["score"], [[np.nan, 0.9, 0.9], [0.8, np.nan, np.nan]])
    assert maps["ipf_z"][0, 1].tolist() == [255, 0, 0]
    assert (
        maps["ipf_x"][1, 0].tolist() == ipf_colors(rec["rotation"][1], rutile, (1, 0, 0)).tolist()
    )
    assert maps["ipf_z"][0, 0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="records"):
        orientation_maps(labels + 5, rec, [au, rutile])


def test_reference_lattice(au_lib):
    rot = _rot_z(np.radians(20.0)) @ _rotvec(np.radians([0.3, 0.0, 0.0]))
    g, hkl = reference_lattice(rot, au_lib)
    assert sorted(np.abs(hkl).sum(1).tolist()) == [2, 2]  # two {200}
    np.testing.assert_allclose(np.hypot(*g.T), 2 / au_lib.structure.cell[0] / QPIX, rtol=1e-3)
    assert abs(g[0] @ g[1]) < 1e-6 * (g[0] @ g[0])
    # the lattice vectors are where the template puts those reflections
    sp = kinematical_spots(au_lib, rot)
    for gv, h in zip(g, hkl, strict=True):
        i = np.flatnonzero(np.all(sp["hkl"] == h, axis=1))
        np.testing.assert_allclose(sp["q"][i[0]], gv, atol=1e-9)
    with pytest.raises(ValueError, match="rotation"):
        reference_lattice(np.full((3, 3), np.nan), au_lib)


# ------------------------------------------------------------------ per cluster, file, CLI
def _grain_result(lib, truths, calibration_units="1/angstrom"):
    """A 6x8 scan of three grains whose cluster averages are kinematical patterns."""
    from napari_stemcluster.core import ClusterTable, SegmentationResult

    labels = np.zeros((6, 8), np.int32)
    labels[:, :3], labels[:3, 3:], labels[3:, 3:] = 1, 2, 3
    labels[0, 0] = 0
    means = np.stack(
        [simulate_pattern(lib, t, (96, 96), counts=2e5, rng=i) for i, t in enumerate(truths)]
    )
    n = len(truths)
    table = ClusterTable(
        size=np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64),
        seed=np.zeros((n, 2), np.int64),
        mean_similarity=np.ones(n, np.float32),
    )
    return SegmentationResult(
        labels=labels,
        mean_similarity=np.ones(labels.shape, np.float32),
        real_mask=labels > 0,
        similarity=np.ones((*labels.shape, 8), np.float32),
        cluster_means=means,
        clusters=table,
    )


def test_orient_clusters_save_and_restore(au_lib, rutile_lib, tmp_path):
    from napari_stemcluster.core import orient_clusters
    from napari_stemcluster.io import read_results, save_orientation, write_results

    rng = np.random.default_rng(2)
    truths = [
        near_axis(au_lib.structure, (0, 0, 1), 0.8, rng),
        near_axis(rutile_lib.structure, (0, 0, 1), 0.8, rng),
        near_axis(au_lib.structure, (0, 1, 1), 0.8, rng),
    ]
    libs = (au_lib, rutile_lib, au_lib)
    result = _grain_result(au_lib, truths[:1] * 3)
    result.cluster_means = np.stack(
        [
            simulate_pattern(lb, t, (96, 96), counts=2e5, rng=i)
            for i, (lb, t) in enumerate(zip(libs, truths, strict=True))
        ]
    )
    structures = [au_lib.structure, rutile_lib.structure]
    calls = []
    res = orient_clusters(
        result.cluster_means,
        structures,
        KEV,
        QPIX,
        step_deg=2.0,
        g_max=GMAX,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert res.records["phase"].tolist() == [0, 1, 0]
    for rec, t, lb in zip(res.records, truths, libs, strict=True):
        assert misorientation_deg(rec["rotation"], t, lb.structure) < 0.3
    assert calls[-1] == (3, 3)
    maps = res.maps(result.labels)
    assert maps["phase"][0, 0] == -1 and maps["phase"][5, 7] == 0 and maps["phase"][0, 5] == 1

    path = write_results(tmp_path / "seg.h5", result)
    before = read_results(path)[1]["orientation"]
    assert before is None
    save_orientation(path, res)
    _, info = read_results(path)
    back = info["orientation"]
    np.testing.assert_array_equal(back.records, res.records)
    np.testing.assert_array_equal(back.offsets, res.offsets)
    assert [s.spacegroup for s in back.structures] == ["F m -3 m", "P 42/m n m"]
    np.testing.assert_array_equal(back.maps(result.labels)["ipf_z"], maps["ipf_z"])
    # written together with the segmentation, too
    path2 = write_results(tmp_path / "seg2.h5", result, orientation=res)
    np.testing.assert_array_equal(read_results(path2)[1]["orientation"].records, res.records)
    with pytest.raises(ValueError, match="3 clusters"):
        short = type(res)(res.records[:2], np.array([0, 2]), res.structures, {})
        save_orientation(path, short)


def test_cli_orient(au_lib, tmp_path, capsys):
    from napari_stemcluster.cli import main
    from napari_stemcluster.io import read_results, write_results

    rng = np.random.default_rng(5)
    truths = [
        near_axis(au_lib.structure, uvw, 0.8, rng) for uvw in [(0, 0, 1), (0, 1, 1), (1, 1, 2)]
    ]
    result = _grain_result(au_lib, truths)
    path = write_results(
        tmp_path / "seg.h5",
        result,
        calibration={"q_pixel_size": QPIX * 10, "q_units": "1/nm"},
    )
    cif = str(builtin_cif("Au"))
    args = ["orient", str(path), "--cif", cif, "--step", "2", "--max-angle", str(GMAX * 19.687)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 clusters" in out and "indexed: 3" in out
    rec = read_results(path)[1]["orientation"].records
    _check_accuracy(au_lib, rec, truths, 0.3)
    assert read_results(path)[1]["orientation"].params["thickness_nm"] == 0.0
    # the slab model, from the command line
    assert main([*args, "--thickness", "2", "-q"]) == 0
    back = read_results(path)[1]["orientation"]
    assert back.params["thickness_nm"] == 2.0
    _check_accuracy(au_lib, back.records, truths, 0.3)
    # a file calibrated in pixels needs --q-pixel-size
    bare = write_results(tmp_path / "bare.h5", result)
    assert main(["orient", str(bare), "--cif", cif, "-q"]) == 1
    assert "q-pixel-size" in capsys.readouterr().err


def test_compiled_score_equals_numpy(au_lib):
    from napari_stemcluster.core.orientation import _exact_score_numpy

    rng = np.random.default_rng(9)
    for k in range(6):
        rot = Rotation.random(random_state=k).as_matrix()
        sp = kinematical_spots(au_lib, rot)
        q = sp["q"] * QPIX + rng.normal(scale=0.005, size=sp["q"].shape)
        amp = rng.uniform(0.1, 2, size=len(q))
        for limit in (np.inf, 0.7):
            a = _exact_score(au_lib, rot, q, amp, 0.03, limit)
            b = _exact_score_numpy(au_lib, rot, q, amp, 0.03, limit)
            assert a == pytest.approx(b, rel=1e-6, abs=1e-12)
    empty = np.zeros((0, 2))
    assert _exact_score(au_lib, np.eye(3), empty, np.zeros(0), 0.03, np.inf) == 0.0
    assert _exact_score_numpy(au_lib, np.eye(3), empty, np.zeros(0), 0.03, np.inf) == 0.0


def test_compiled_rodrigues_equals_scipy():
    from napari_stemcluster.core._orientation_numba import _rodrigues

    for w in ([0.0, 0.0, 0.0], [0.1, -0.2, 0.3], [2.0, 1.0, -1.5], [0.0, 0.0, np.pi]):
        expected = Rotation.from_rotvec(w).as_matrix()
        np.testing.assert_allclose(_rodrigues(np.array(w)), expected, atol=1e-12)
        np.testing.assert_allclose(_rotvec(np.array(w)), expected, atol=1e-12)


def test_orient_clusters_time_series(au_lib):
    from napari_stemcluster.core import orient_clusters
    from napari_stemcluster.io._analysis_orientation import orientation_to_layers

    rng = np.random.default_rng(6)
    truths = [near_axis(au_lib.structure, (0, 0, 1), 0.7, rng) for _ in range(3)]
    means = [simulate_pattern(au_lib, t, (96, 96), counts=2e5, rng=i) for i, t in enumerate(truths)]
    steps = [np.stack(means[:2]), np.stack(means[2:])]
    res = orient_clusters(steps, builtin_cif("Au"), KEV, QPIX, step_deg=3.0, g_max=GMAX)
    assert res.offsets.tolist() == [0, 2, 3]
    assert len(res.step(0)) == 2 and len(res.step(1)) == 1
    labels = np.array([[[1, 2], [0, 2]], [[1, 1], [0, 0]]], np.int32)
    layers = orientation_to_layers(labels, res, {"r_pixel_size": 2.0, "r_units": "nm"}, "s")
    ipf = layers[0][0]
    assert ipf.shape == (2, 2, 2, 3)
    expected = res.maps(labels[1], 1)["ipf_z"]
    np.testing.assert_array_equal(ipf[1], expected)
    assert (
        ipf[1, 0, 0].tolist() == ipf_colors(res.records["rotation"][2], au_lib.structure).tolist()
    )
    assert layers[0][1]["scale"] == (1.0, 2.0, 2.0)


def test_threads_give_the_same_answer(au_lib, rutile_lib):
    rng = np.random.default_rng(13)
    truths = [near_axis(au_lib.structure, uvw, 0.8, rng) for uvw in AU_AXES[:5]]
    patterns = np.stack(
        [simulate_pattern(au_lib, t, SHAPE, counts=1e5, rng=i) for i, t in enumerate(truths)]
    )
    patterns[2] = 0.0  # a not-indexed pattern among them
    one = match_orientations(patterns, [au_lib, rutile_lib], workers=1)
    three = match_orientations(patterns, [au_lib, rutile_lib], workers=3)
    for name in ORIENTATION_DTYPE.names:
        np.testing.assert_array_equal(one[name], three[name])
    assert one["indexed"].tolist() == [True, True, False, True, True]
    with pytest.raises(ValueError, match="workers"):
        match_orientations(patterns, au_lib, workers=0)


def test_slab_shape_function(au):
    """With a thickness the weight is the slab's sinc²(t s), everywhere it is used."""
    tilt = _rot_z(0.3) @ _rotvec(np.radians([1.2, 0.4, 0.0]))
    slab = orientation_library(au, KEV, QPIX, step_deg=5.0, g_max=GMAX, thickness_nm=3.0)
    assert slab.thickness == pytest.approx(30.0) and slab.params["thickness_nm"] == 3.0
    assert slab.sigma_excitation == pytest.approx(0.376 / 30.0)
    sp = kinematical_spots(slab, tilt)
    gl = slab.g @ tilt.T
    s = gl[:, 2] + 0.5 * slab.wavelength * (gl**2).sum(1)
    w = np.sinc(30.0 * s) ** 2
    keep = w >= 0.01
    np.testing.assert_allclose(sp["intensity"], slab.f2[keep] * w[keep], rtol=1e-9)
    np.testing.assert_array_equal(sp["hkl"], slab.hkl[keep])
    # a convergent probe widens the central lobe
    wide = orientation_library(
        au, KEV, QPIX, step_deg=5.0, g_max=GMAX, thickness_nm=3.0, convergence_mrad=10
    )
    assert len(wide.spots(tilt)["hkl"]) > len(sp["hkl"])
    # the compiled score uses the same weight as the numpy reference
    from napari_stemcluster.core.orientation import _exact_score_numpy

    rng = np.random.default_rng(2)
    for lib in (slab, wide):
        for k in range(4):
            rot = Rotation.random(random_state=10 + k).as_matrix()
            spots = kinematical_spots(lib, rot)
            q = spots["q"] * QPIX + rng.normal(scale=0.004, size=spots["q"].shape)
            amp = rng.uniform(0.1, 2, size=len(q))
            a = _exact_score(lib, rot, q, amp, 0.03, np.inf)
            assert a == pytest.approx(_exact_score_numpy(lib, rot, q, amp, 0.03, np.inf), rel=1e-6)
    with pytest.raises(ValueError, match="thickness_nm"):
        orientation_library(au, KEV, QPIX, step_deg=5.0, g_max=GMAX, thickness_nm=-1)
