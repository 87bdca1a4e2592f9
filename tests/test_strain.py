"""Hybrid strain maps on synthetic scans with known strain fields."""

import numpy as np
import pytest

from napari_stemcluster._bragg_synth import disk_pattern, lattice_vectors, rotation, strained
from napari_stemcluster.core import (
    StrainResult,
    cluster_lattices,
    rereference,
    strain_from_lattices,
    strain_map,
)

G1, G2 = lattice_vectors(11.0, 12.0)


def _scan(field, shape=(4, 5), dose=None, seed=0, qshape=(64, 64)):
    """Cube whose pattern at (i, j) has displacement gradient field(i, j)."""
    rng = np.random.default_rng(seed)
    cube = np.zeros((*shape, *qshape), np.float32)
    for i in range(shape[0]):
        for j in range(shape[1]):
            a, b = strained(G1, G2, field(i, j))
            cube[i, j] = disk_pattern(qshape, a, b, dose=dose, rng=rng)[0]
    return cube


def test_strain_from_lattices_plain_cases():
    g1, g2 = np.array([10.0, 0.0]), np.array([0.0, 10.0])
    # Pure rotation by 2 degrees.
    r = rotation(2.0)
    exx, eyy, exy, rot = strain_from_lattices(g1, g2, r @ g1, r @ g2)
    assert abs(exx) < 1e-12 and abs(eyy) < 1e-12 and abs(exy) < 1e-12
    assert abs(rot - 2.0) < 1e-9
    # Shear.
    a, b = strained(g1, g2, [[0, 0.01], [0.01, 0]])
    exx, eyy, exy, rot = strain_from_lattices(g1, g2, a, b)
    assert abs(exy - 0.01) < 1e-12 and abs(rot) < 1e-9
    # Broadcasting and NaN.
    out = strain_from_lattices(g1, g2, np.full((3, 2), np.nan), np.tile(g2, (3, 1)))
    assert all(o.shape == (3,) and np.isnan(o).all() for o in out)


def test_uniform_one_percent_strain_within_0_05_percent():
    field = np.array([[0.01, 0.0], [0.0, 0.01]])
    cube = _scan(lambda i, j: field, shape=(3, 4))
    labels = np.ones((3, 4), np.int32)
    res = strain_map(cube, labels, [[G1, G2]])  # reference: the unstrained lattice
    assert isinstance(res, StrainResult) and res.exx.dtype == np.float32
    np.testing.assert_allclose(res.exx, 0.01, atol=5e-4)
    np.testing.assert_allclose(res.eyy, 0.01, atol=5e-4)
    np.testing.assert_allclose(res.exy, 0.0, atol=5e-4)
    np.testing.assert_allclose(res.rotation, 0.0, atol=0.03)
    assert (res.n_indexed >= 5).all()


def test_uniform_strain_at_moderate_dose_mean_within_0_05_percent():
    field = np.array([[0.01, 0.0], [0.0, -0.005]])
    cube = _scan(lambda i, j: field, shape=(4, 4), dose=2e5, seed=1)
    res = strain_map(cube, np.ones((4, 4), np.int32), [[G1, G2]])
    assert abs(np.nanmean(res.exx) - 0.01) < 5e-4
    assert abs(np.nanmean(res.eyy) + 0.005) < 5e-4
    assert np.nanstd(res.exx) < 1e-3


def test_linear_gradient_reproduced_relative_to_the_cluster_average():
    # exx grows by 0.4 % per scan row, a rotation by 0.1 degree per column.
    def field(i, j):
        t = np.radians(0.1 * j)
        return np.array([[0.004 * i, -t], [t, 0.0]])

    cube = _scan(field, shape=(5, 4))
    labels = np.ones((5, 4), np.int32)
    table = cluster_lattices(cube.mean(axis=(0, 1))[None])
    assert table.n_indexed[0] >= 10
    res = strain_map(cube, labels, table)
    rows = np.nanmean(res.exx, axis=1)
    slope = np.polyfit(np.arange(5), rows, 1)[0]
    assert abs(slope - 0.004) < 2e-4
    assert abs(np.nanmean(res.exx)) < 1e-3  # relative to the average lattice
    cols = np.nanmean(res.rotation, axis=0)
    assert abs(np.polyfit(np.arange(4), cols, 1)[0] - 0.1) < 0.02
    np.testing.assert_allclose(res.eyy, 0.0, atol=1e-3)


def test_background_and_too_few_disks_are_nan_not_zero():
    cube = _scan(lambda i, j: np.zeros((2, 2)), shape=(2, 3))
    cube[1, 2] = 0.0  # an empty pattern inside the cluster
    labels = np.array([[0, 1, 1], [1, 1, 1]], np.int32)
    res = strain_map(cube, labels, [[G1, G2]])
    assert np.isnan(res.exx[0, 0]) and res.n_indexed[0, 0] == 0
    assert np.isnan(res.exx[1, 2]) and np.isnan(res.rotation[1, 2])
    assert np.isfinite(res.exx[labels > 0][:-1]).all()
    strict = strain_map(cube, labels, [[G1, G2]], min_indexed=500)
    assert np.isnan(strict.exx).all() and strict.n_indexed.max() > 0


def test_default_minimum_is_five_indexed_disks():
    """4 indexed disks give NaN, 5 a value (the disks beyond are erased)."""
    yy, xx = np.mgrid[:64, :64]
    cube = np.zeros((1, 2, 64, 64), np.float32)
    for j, n in enumerate((4, 5)):
        p, truth = disk_pattern((64, 64), G1, G2, dose=None, hk_max=2)
        order = np.argsort(-truth.expected)
        for q in truth.positions[order[n:]]:
            p[np.hypot(yy - q[0], xx - q[1]) <= 5] = 0.0
        cube[0, j] = p
    res = strain_map(cube, np.ones((1, 2), np.int32), [[G1, G2]])
    assert res.n_indexed.tolist() == [[4, 5]]
    assert np.isnan(res.exx[0, 0]) and np.isnan(res.rotation[0, 0])
    assert abs(res.exx[0, 1]) < 5e-4
    assert np.isfinite(
        strain_map(cube, np.ones((1, 2), np.int32), [[G1, G2]], min_indexed=4).exx
    ).all()


def test_time_series_progress_and_cancel():
    cube = _scan(lambda i, j: np.diag([0.002 * j, 0.0]), shape=(2, 3))
    cube5 = np.stack([cube, cube])
    labels = np.array([[[1, 1, 1], [1, 1, 0]], [[1, 1, 1], [2, 2, 2]]], np.int32)
    ref = np.array([[G1, G2], [G1, G2]])
    calls = []
    res = strain_map(cube5, labels, ref, block_rows=1, progress=lambda d, t: calls.append((d, t)))
    assert res.exx.shape == (2, 2, 3)
    assert calls[-1] == (11, 11) and len(calls) == 4
    np.testing.assert_allclose(res.exx[1, 1], [0.0, 0.002, 0.004], atol=5e-4)
    assert np.isnan(res.exx[0, 1, 2])

    class Stop(Exception):
        pass

    def cancel(done, total):
        raise Stop

    with pytest.raises(Stop):
        strain_map(cube5, labels, ref, progress=cancel)


def test_rereference_to_a_region():
    cube = _scan(lambda i, j: np.diag([0.003 * j, 0.0]), shape=(2, 4))
    labels = np.ones((2, 4), np.int32)
    res = strain_map(cube, labels, [[G1, G2]])
    region = np.zeros((2, 4), bool)
    region[:, 2] = True  # column with 0.6 % strain
    new = rereference(res, labels, region)
    np.testing.assert_allclose(new.exx[:, 2], 0.0, atol=2e-4)
    np.testing.assert_allclose(new.exx[:, 0], (1 / 1.006) - 1, atol=3e-4)
    np.testing.assert_array_equal(new.g1, res.g1)  # local lattices unchanged
    with pytest.raises(ValueError, match="empty"):
        rereference(res, labels, np.zeros((2, 4), bool))


def test_bad_inputs():
    cube = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match="does not match labels"):
        strain_map(cube, np.ones((3, 2), int), [[G1, G2]])
    with pytest.raises(ValueError, match="reference must be"):
        strain_map(cube, np.ones((2, 3), int), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="the reference has 1 clusters"):
        strain_map(cube, np.full((2, 3), 2), [[G1, G2]])
    with pytest.raises(ValueError, match="integer"):
        strain_map(cube, np.ones((2, 3)), [[G1, G2]])
    # NaN reference: NaN strain, no exception.
    res = strain_map(
        _scan(lambda i, j: np.zeros((2, 2)), (1, 2)),
        np.ones((1, 2), int),
        np.full((1, 2, 2), np.nan),
    )
    assert np.isnan(res.exx).all()


# ------------------------------------------------------- results file and CLI
def _segmented_sample(tmp_path):
    from napari_stemcluster import segment
    from napari_stemcluster.io import write_results
    from napari_stemcluster.synthetic import make_polycrystal

    scan = make_polycrystal(scan_shape=(24, 24), n_particles=2, seed=3)
    data = tmp_path / "scan.npy"
    np.save(data, scan.cube)
    res = segment(scan.cube, threshold=0.9, min_cluster_size=5)
    seg = write_results(tmp_path / "seg.h5", res, source=data)
    return scan, res, data, seg


def test_results_file_round_trip_and_cli(tmp_path, capsys):
    import h5py

    from napari_stemcluster.cli import main
    from napari_stemcluster.io import read_results

    _scan, res, data, seg = _segmented_sample(tmp_path)
    before = seg.read_bytes()
    assert main(["strain", str(seg)]) == 0
    assert seg.read_bytes() == before  # the input is never modified
    out = tmp_path / "seg_bragg.h5"
    text = capsys.readouterr().out
    assert "clusters with a lattice" in text and "positions with strain" in text
    result, info = read_results(out)
    np.testing.assert_array_equal(result.labels, res.labels)
    bragg = info["bragg"]
    table = bragg["lattices"][0]
    assert len(table) == len(res.clusters)
    assert np.isfinite(table.g1).all(axis=1).sum() >= 1
    strain = bragg["strain"]
    assert strain.exx.shape == res.labels.shape
    assert np.isnan(strain.exx[res.labels == 0]).all()
    assert np.isfinite(strain.exx).sum() > 0.5 * (res.labels > 0).sum()
    with h5py.File(out, "r") as f:
        assert set(f["bragg"]) >= {"g1", "g2", "orientation", "disks", "strain", "offsets"}
        omap = f["bragg/orientation"][()]
    lab = res.labels
    np.testing.assert_allclose(
        omap[lab > 0], table.rotation[lab[lab > 0] - 1].astype(np.float32), equal_nan=True
    )
    # The disks and their indices come back as written.
    from napari_stemcluster.core import cluster_lattices

    again = cluster_lattices(res.cluster_means)
    for a, b in zip(again.disks, table.disks, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(again.hk, table.hk, strict=True):
        np.testing.assert_array_equal(a, b)
    # Lattices only, and a clear error without the data.
    assert main(["strain", str(seg), "--no-strain", "-o", str(tmp_path / "l.h5"), "-q"]) == 0
    assert read_results(tmp_path / "l.h5")[1]["bragg"]["strain"] is None
    data.unlink()
    assert main(["strain", str(seg), "-o", str(tmp_path / "x.h5")]) == 1
    assert "--data" in capsys.readouterr().err
    assert main(["strain", str(seg), "-o", str(seg)]) == 1


def test_cli_detection_options_templates_and_reference_region(tmp_path, capsys):
    """The command line takes the widget's settings and gives what the API gives."""
    from napari_stemcluster.cli import main
    from napari_stemcluster.core import (
        cluster_lattices,
        probe_from_pattern,
        probe_from_region,
        rereference,
        strain_map,
    )
    from napari_stemcluster.io import read_results

    scan, res, _data, seg = _segmented_sample(tmp_path)
    opts = ["--min-snr", "4", "--min-relative", "0.01", "--max-count", "30", "--sigma", "1"]
    kw = {"min_snr": 4.0, "min_relative": 0.01, "max_count": 30, "sigma": 1.0}
    # The central disk of the largest cluster's average as the template.
    out = tmp_path / "central.h5"
    assert main(["strain", str(seg), "--template", "central", *opts, "-o", str(out), "-q"]) == 0
    template = probe_from_pattern(res.cluster_means[int(np.argmax(res.clusters.size))])
    want = cluster_lattices(res.cluster_means, template=template, **kw)
    got = read_results(out)[1]["bragg"]
    np.testing.assert_array_equal(got["lattices"][0].g1, want.g1)
    assert got["params"]["template"] == "central disk" and got["params"]["min_snr"] == 4.0
    np.testing.assert_array_equal(
        got["strain"].exx, strain_map(scan.cube, res.labels, want, template=template, **kw).exx
    )
    # A vacuum region (the liquid around the particles) and a strain reference region.
    vacuum = tmp_path / "vacuum.npy"
    np.save(vacuum, res.labels == 0)
    region = np.zeros(res.labels.shape, bool)
    region[:, : res.labels.shape[1] // 2] = True
    ref = tmp_path / "ref.npy"
    np.save(ref, region)
    out = tmp_path / "vac.h5"
    args = ["strain", str(seg), "--vacuum", str(vacuum), "--reference-region", str(ref)]
    assert main([*args, "-o", str(out), "-q"]) == 0
    template = probe_from_region(scan.cube, res.labels == 0)
    want = cluster_lattices(res.cluster_means, template=template)
    expect = rereference(
        strain_map(scan.cube, res.labels, want, template=template), res.labels, region
    )
    got = read_results(out)[1]["bragg"]
    assert got["params"]["template"] == "vacuum region" and got["params"]["reference"] == "region"
    np.testing.assert_array_equal(got["strain"].exx, expect.exx)
    # Bad masks and thresholds: clear messages naming the file, exit code 1.
    np.save(tmp_path / "bad.npy", np.ones((3, 3), bool))
    capsys.readouterr()
    bad = ["--vacuum", str(tmp_path / "bad.npy")]
    assert main(["strain", str(seg), *bad, "-o", str(tmp_path / "b.h5")]) == 1
    assert "bad.npy" in capsys.readouterr().err
    assert main(["strain", str(seg), "--min-snr", "-1", "-o", str(tmp_path / "c.h5")]) == 1
    assert "min_snr" in capsys.readouterr().err


def test_results_without_bragg_read_as_none(tmp_path):
    from napari_stemcluster.io import read_results

    _, _, _, seg = _segmented_sample(tmp_path)
    assert read_results(seg)[1]["bragg"] is None


def test_time_series_analysis_round_trip(tmp_path):
    from conftest import make_result
    from napari_stemcluster.core import cluster_lattices
    from napari_stemcluster.io import read_results, write_results

    labels = np.array([[[1, 1], [2, 0]], [[1, 0], [0, 0]]], np.int32)
    res = make_result(labels, qshape=(64, 64))
    p, _ = disk_pattern((64, 64), *lattice_vectors(11.0, 30), dose=None)
    res.cluster_means[0][0] = p
    lattices = [cluster_lattices(m) for m in res.cluster_means]
    cube = np.broadcast_to(p.astype(np.float32), (2, 2, 2, 64, 64))
    strain = strain_map(cube, labels, lattices)
    bragg = {"lattices": lattices, "strain": strain, "params": {"probe_radius": None}}
    write_results(tmp_path / "r.h5", res, bragg=bragg)
    back = read_results(tmp_path / "r.h5")[1]["bragg"]
    assert len(back["lattices"]) == 2
    for a, b in zip(back["lattices"], lattices, strict=True):
        np.testing.assert_array_equal(a.g1, b.g1)
        np.testing.assert_array_equal(a.n_indexed, b.n_indexed)
    for name in StrainResult.MAPS:
        np.testing.assert_array_equal(getattr(back["strain"], name), getattr(strain, name))
    assert back["params"] == {"probe_radius": None}
    with pytest.raises(ValueError, match="time steps"):
        write_results(tmp_path / "s.h5", res, bragg={"lattices": lattices[:1]})


def _orientation_case(scan=(2, 3), dose=None):
    """Au at a known [001] orientation, uniformly strained relative to its CIF lattice."""
    from scipy.spatial.transform import Rotation

    from napari_stemcluster.core import load_structure, orientation_library
    from napari_stemcluster.core.orientation import reference_lattice
    from napari_stemcluster.data import builtin_cif

    st = load_structure(builtin_cif("Au"))
    lib = orientation_library(st, 300.0, 0.03, step_deg=5.0, g_max=1.6)
    truth = Rotation.from_euler("z", 17, degrees=True).as_matrix()
    g = reference_lattice(truth, lib)[0]
    field = np.array([[0.01, 0.0], [0.0, -0.005]])
    a, b = strained(g[0], g[1], field)
    rng = np.random.default_rng(0)
    n = scan[0] * scan[1]
    pats = [disk_pattern((96, 96), a, b, dose=dose, radius=2.5, rng=rng)[0] for _ in range(n)]
    return st, np.stack(pats).reshape(*scan, 96, 96).astype(np.float32)


def test_orientation_reference_recovers_strain_against_the_crystal_lattice():
    from napari_stemcluster.core import orientation_reference
    from napari_stemcluster.core.orientation import orient_clusters

    st, cube = _orientation_case()
    mean = cube.mean(axis=(0, 1))[None]
    ores = orient_clusters(mean, st, 300.0, 0.03, step_deg=2.0, g_max=1.6)
    assert ores.records["indexed"].all()
    lat = cluster_lattices(mean)
    refs = orientation_reference(ores, lat)
    assert len(refs) == 1 and np.isfinite(refs[0].g1).all()
    np.testing.assert_array_equal(refs[0].center, lat.center)
    labels = np.ones(cube.shape[:2], np.int32)
    res = strain_map(cube, labels, refs)
    np.testing.assert_allclose(res.exx, 0.01, atol=5e-4)
    np.testing.assert_allclose(res.eyy, -0.005, atol=5e-4)
    np.testing.assert_allclose(res.exy, 0.0, atol=5e-4)
    # The cluster's own (strained) average as reference sees no strain at all.
    fit = strain_map(cube, labels, lat)
    np.testing.assert_allclose(fit.exx, 0.0, atol=2e-4)
    # Not indexed: NaN reference, NaN strain (never 0); time steps as a list.
    ores.records["indexed"][:] = False
    none = orientation_reference(ores)
    assert np.isnan(none[0].g1).all() and np.isnan(none[0].center).all()
    assert np.isnan(strain_map(cube, labels, none).exx).all()
    per_step = [np.stack([refs[0].g1, refs[0].g2], axis=1)]
    again = strain_map(cube[None], labels[None], per_step)
    np.testing.assert_allclose(again.exx[0], res.exx, atol=1e-6)
    with pytest.raises(ValueError, match="per time step"):
        orientation_reference(ores, [lat, lat])


def test_cli_strain_uses_the_matched_orientation(tmp_path, capsys):
    from napari_stemcluster.cli import main
    from napari_stemcluster.core import segment
    from napari_stemcluster.core.orientation import orient_clusters
    from napari_stemcluster.io import read_results, save_orientation, write_results

    st, cube = _orientation_case(scan=(6, 6), dose=5e5)
    data = tmp_path / "scan.npy"
    np.save(data, cube)
    res = segment(cube, threshold=0.5, min_cluster_size=5)
    assert len(res.clusters) >= 1
    seg = write_results(tmp_path / "seg.h5", res, source=data)
    # Without an orientation, asking for it is a clear error; fit is the default.
    assert main(["strain", str(seg), "--reference", "orientation", "-q"]) == 1
    assert "stemcluster orient" in capsys.readouterr().err
    assert main(["strain", str(seg), "-o", str(tmp_path / "fit.h5"), "-q"]) == 0
    fit = read_results(tmp_path / "fit.h5")[1]["bragg"]
    assert fit["params"]["reference"] == "fit"
    inside = res.labels > 0
    assert np.nanmax(np.abs(fit["strain"].exx[inside])) < 3e-3
    save_orientation(
        seg, orient_clusters(res.cluster_means, st, 300.0, 0.03, step_deg=2.0, g_max=1.6)
    )
    assert main(["strain", str(seg), "-o", str(tmp_path / "ori.h5"), "-q"]) == 0
    ori = read_results(tmp_path / "ori.h5")[1]["bragg"]
    assert ori["params"]["reference"] == "orientation"
    exx, eyy = ori["strain"].exx[inside], ori["strain"].eyy[inside]
    assert np.isfinite(exx).mean() > 0.9
    assert abs(np.nanmedian(exx) - 0.01) < 5e-4 and abs(np.nanmedian(eyy) + 0.005) < 5e-4
    # --reference fit still available when an orientation exists.
    assert (
        main(["strain", str(seg), "--reference", "fit", "-o", str(tmp_path / "f2.h5"), "-q"]) == 0
    )
    assert read_results(tmp_path / "f2.h5")[1]["bragg"]["params"]["reference"] == "fit"
