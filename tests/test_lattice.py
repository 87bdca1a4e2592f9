"""Lattice fitting, indexing, cluster lattices and orientation maps."""

import numpy as np
import pytest

from napari_stemcluster._bragg_synth import disk_pattern, lattice_vectors
from napari_stemcluster.core import (
    DISK_DTYPE,
    LatticeFit,
    cluster_lattices,
    find_bragg_disks,
    fit_lattice,
    orientation_map,
)
from napari_stemcluster.core.lattice import index_disks


def _lattice_points(g1, g2, center, n=3, skip_origin=True):
    hk = np.array([(h, k) for h in range(-n, n + 1) for k in range(-n, n + 1)])
    if skip_origin:
        hk = hk[np.any(hk != 0, axis=1)]
    return np.asarray(center) + hk @ np.array([g1, g2]), hk


def _same_lattice(fit, g1, g2, tol=1e-3):
    """The fitted basis spans the same lattice (integer change of basis, det +-1)."""
    m = np.linalg.solve(np.array([g1, g2]).T, np.array([fit.g1, fit.g2]).T)
    return np.allclose(m, np.rint(m), atol=tol) and abs(abs(np.linalg.det(m)) - 1) < tol


@pytest.mark.parametrize("angle", [0.0, 17.0, 44.0, 73.5])
@pytest.mark.parametrize("gamma,ratio", [(90, 1.0), (60, 1.0), (75, 1.3)])
def test_exact_lattice_recovered_with_free_or_given_center(angle, gamma, ratio):
    g1, g2 = lattice_vectors(9.0, angle, gamma, ratio)
    pos, _hk = _lattice_points(g1, g2, (40.3, 37.9))
    for center in (None, (40.3, 37.9)):
        fit = fit_lattice(pos, center=center)
        assert fit.ok and fit.n_indexed == len(pos)
        assert _same_lattice(fit, g1, g2)
        assert fit.residual < 1e-9
        np.testing.assert_allclose(fit.center, (40.3, 37.9), atol=1e-9)
        # Indices reproduce the positions.
        np.testing.assert_allclose(fit.center + fit.hk @ np.array([fit.g1, fit.g2]), pos, atol=1e-9)
        assert fit.g1[0] * fit.g2[1] - fit.g1[1] * fit.g2[0] > 0
        assert fit.angle <= 90.0 + 1e-9


def test_robust_to_missing_and_spurious_disks():
    rng = np.random.default_rng(0)
    g1, g2 = lattice_vectors(10.0, 23.0, 80, 1.15)
    pos, _hk = _lattice_points(g1, g2, (32, 32), n=3)
    keep = rng.random(len(pos)) > 0.35  # a third missing
    junk = rng.uniform(0, 64, (6, 2))  # spurious detections
    noisy = np.vstack([pos[keep] + rng.normal(0, 0.1, (keep.sum(), 2)), junk])
    fit = fit_lattice(noisy, center=(32, 32))
    assert fit.ok and _same_lattice(fit, g1, g2, tol=0.02)
    assert fit.indexed[: keep.sum()].all()
    assert fit.indexed[keep.sum() :].sum() <= 1  # a random point rarely lands on the lattice
    assert fit.residual < 0.2


def test_indices_agree_with_truth_up_to_lattice_symmetry():
    g1, g2 = lattice_vectors(12.0, 5.0, 90, 1.4)  # rectangular: only +-g1 equivalent
    pos, hk = _lattice_points(g1, g2, (30, 30), n=2)
    fit = fit_lattice(pos, center=(30, 30))
    g1f, _g2f, hkf = fit  # unpacks
    sign = 1 if np.dot(g1f, g1) > 0 else -1
    np.testing.assert_allclose(g1f, sign * g1, atol=1e-9)
    np.testing.assert_array_equal(hkf, sign * hk)


def test_known_in_plane_rotation_from_patterns_within_0_2_degrees():
    rng = np.random.default_rng(1)
    for angle in (3.0, 17.0, 38.5, 61.2, 84.0):
        g1, g2 = lattice_vectors(11.0, angle)
        p, _truth = disk_pattern((64, 64), g1, g2, dose=50000.0, rng=rng)
        d, beam = find_bragg_disks(p, return_beam=True)
        fit = fit_lattice(d, center=beam)
        assert fit.ok
        # A square lattice: the rotation is defined modulo 90 degrees.
        err = (fit.rotation - angle + 45) % 90 - 45
        assert abs(err) < 0.2, (angle, fit.rotation)
        assert abs(fit.lengths[0] - 11.0) < 0.05


def test_too_few_collinear_and_empty_give_messages_not_exceptions():
    empty = np.zeros(0, DISK_DTYPE)
    for disks, msg in (
        (empty, "0 disk"),
        (np.array([[0.0, 0], [10, 0]]), "2 disk"),
        (np.array([[0.0, 0], [10, 0], [20, 0], [30, 0]]), "line"),
        (np.array([[0.0, 0], [0.5, 0], [0.2, 0.3]]), "too close"),
    ):
        fit = fit_lattice(disks)
        assert isinstance(fit, LatticeFit) and not fit.ok
        assert msg in fit.message
        assert np.isnan(fit.g1).all() and fit.n_indexed == 0
        assert np.isnan(fit.rotation) and np.isnan(fit.angle)
    with pytest.raises(ValueError, match="NaN"):
        fit_lattice(np.array([[0.0, np.nan], [1, 1], [2, 2]]))
    with pytest.raises(ValueError, match="tolerance"):
        fit_lattice(np.zeros((3, 2)), tolerance=0.7)
    fit = fit_lattice(np.ones((4, 2)), reference=([1, 0], [2, 0]), center=(0, 0))
    assert not fit.ok and "collinear" in fit.message


def test_reference_mode_keeps_the_reference_basis_and_fits_the_local_one():
    g1, g2 = np.array([10.0, 0.0]), np.array([0.0, 10.0])
    local1, local2 = g1 * 1.02, np.array([0.5, 10.0])
    pos, hk = _lattice_points(local1, local2, (32.2, 31.7), n=2)
    fit = fit_lattice(pos, center=(32.0, 32.0), reference=(g1, g2))
    np.testing.assert_allclose(fit.g1, local1, atol=1e-9)
    np.testing.assert_allclose(fit.g2, local2, atol=1e-9)
    np.testing.assert_allclose(fit.center, (32.2, 31.7), atol=1e-9)  # origin fitted
    np.testing.assert_array_equal(fit.hk, hk)


def test_fit_unpacks_as_g1_g2_and_integer_indices_of_every_disk():
    g1, g2 = np.array([9.0, 3.0]), np.array([-3.0, 9.0])
    pos, _ = _lattice_points(g1, g2, (30, 30), n=2)
    disks = np.zeros(len(pos) + 1, DISK_DTYPE)
    disks["qx"], disks["qy"] = np.append(pos[:, 0], 5.0), np.append(pos[:, 1], 51.0)
    a, b, hk = fit_lattice(disks, center=(30, 30))
    assert a.shape == b.shape == (2,) and hk.shape == (len(disks), 2)
    assert hk.dtype.kind == "i"
    np.testing.assert_allclose(30 + hk[:-1] @ np.array([a, b]), pos, atol=1e-9)


def test_rank_check_matches_matrix_rank():
    from napari_stemcluster.core.lattice import _rank_ok

    def plain(hk, free):
        a = np.column_stack([hk, np.ones(len(hk))]) if free else hk.astype(float)
        return len(hk) >= a.shape[1] and np.linalg.matrix_rank(a) == a.shape[1]

    rng = np.random.default_rng(0)
    for n in range(7):
        for _ in range(300):
            hk = rng.integers(-2, 3, (n, 2))
            if n and rng.random() < 0.4:  # collinear, through the origin or not
                hk = np.outer(rng.integers(-3, 4, n), rng.integers(-2, 3, 2))
                hk = hk + rng.integers(-1, 2, 2) * (rng.random() < 0.5)
            for free in (True, False):
                assert _rank_ok(hk, free) == plain(hk, free), (hk.tolist(), free)


def test_index_disks_plain():
    hk, ok = index_disks([[10.4, 0.2], [5.1, 5.0], [-20.0, 10.0]], [10, 0], [0, 10], [0, 0], 0.1)
    assert hk.tolist() == [[1, 0], [1, 0], [-2, 1]]
    assert ok.tolist() == [True, False, True]


@pytest.mark.parametrize("seed", [0, 1])  # 0: napari's sample data
def test_cluster_lattices_on_the_sample_data_match_the_true_orientations(seed):
    from napari_stemcluster import segment
    from napari_stemcluster.synthetic import make_polycrystal

    scan = make_polycrystal(seed=seed)
    res = segment(scan.cube, threshold=0.9, min_cluster_size=5)
    table = cluster_lattices(res.cluster_means)  # defaults, nothing tuned
    assert len(table) == len(res.clusters)
    checked = 0
    for i in range(len(table)):
        grain = np.bincount(scan.grains[res.labels == i + 1]).argmax()
        assert table.n_disks[i] >= 4
        if grain and scan.zone_axes[grain - 1] == "[001]":
            truth = scan.orientations[grain - 1] % 90
            err = (table.rotation[i] - truth + 45) % 90 - 45
            assert abs(err) < 0.2
            assert abs(table.angle[i] - 90) < 0.5
            checked += 1
    assert checked >= 4
    cols = table.as_dict()
    assert set(cols) >= {"g1_length", "g2_length", "angle", "rotation", "n_indexed", "residual"}
    omap = orientation_map(res.labels, table.rotation)
    assert omap.dtype == np.float32 and omap.shape == res.labels.shape
    assert np.isnan(omap[res.labels == 0]).all()
    lab = res.labels[res.labels > 0]
    np.testing.assert_allclose(omap[res.labels > 0], table.rotation[lab - 1].astype(np.float32))


def test_cluster_lattices_empty_and_blank_clusters():
    t = cluster_lattices(np.zeros((0, 16, 16)))
    assert len(t) == 0
    t = cluster_lattices(np.zeros((2, 32, 32)))
    assert np.isnan(t.g1).all() and t.n_indexed.tolist() == [0, 0]
    # No lattice: NaN in the orientation map (not 0, which is an orientation).
    assert np.isnan(orientation_map(np.array([[1, 2], [0, 2]]), t.rotation)).all()
    np.testing.assert_array_equal(
        orientation_map(np.array([[1, 2]]), [np.nan, 5.0]), np.array([[np.nan, 5]], np.float32)
    )
    with pytest.raises(ValueError, match=r"\(N, Qx, Qy\)"):
        cluster_lattices(np.zeros((16, 16)))


def test_orientation_map_time_series_and_errors():
    labels = np.array([[[1, 0]], [[2, 1]]])
    out = orientation_map(labels, [[10.0], [20.0, 30.0]])
    np.testing.assert_array_equal(out, np.array([[[10, np.nan]], [[30, 20]]], np.float32))
    with pytest.raises(ValueError, match="one rotation array per time step"):
        orientation_map(labels, [[10.0]])
    with pytest.raises(ValueError, match="only 1 rotations"):
        orientation_map(np.array([[2]]), [1.0])
