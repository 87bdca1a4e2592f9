"""The direct beam: found in each pattern, given, stored, and read from older files."""

import numpy as np
import pytest

from napari_stemcluster.core import load_structure, match_orientations, orientation_library
from napari_stemcluster.core.orientation import ORIENTATION_DTYPE, simulate_pattern
from napari_stemcluster.data import builtin_cif
from test_orientation import (
    AU_AXES,
    GMAX,
    KEV,
    QPIX,
    SHAPE,
    _check_accuracy,
    _grain_result,
    near_axis,
)

DETECTOR_CENTRE = np.array([(SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2])


@pytest.fixture(scope="module")
def au_lib():
    au = load_structure(builtin_cif("Au"))
    return orientation_library(au, KEV, QPIX, step_deg=1.0, g_max=GMAX)


@pytest.fixture(scope="module")
def shifted(au_lib):
    """Patterns whose direct beam is a few (non-integer) pixels off the detector
    centre, by a different amount in each, at moderate dose."""
    rng = np.random.default_rng(31)
    st = au_lib.structure
    axes = AU_AXES[:2] + AU_AXES[3:5]
    truths = [near_axis(st, uvw, rng.uniform(0.5, 1.5), rng) for uvw in axes]
    shifts = np.array([[2.37, -1.62], [-3.18, 0.71], [1.44, 2.83], [-0.93, -2.56]])
    centres = DETECTOR_CENTRE + shifts
    patterns = np.stack(
        [
            simulate_pattern(au_lib, t, SHAPE, center=c, counts=1e5, background=0.005, rng=i)
            for i, (t, c) in enumerate(zip(truths, centres, strict=True))
        ]
    )
    return patterns, truths, centres


def test_auto_centre_matches_a_shifted_beam(au_lib, shifted):
    patterns, truths, centres = shifted
    rec = match_orientations(patterns, au_lib)  # center="auto" is the default
    assert rec["indexed"].all()
    np.testing.assert_allclose(rec["center"], centres, atol=0.05)
    _check_accuracy(au_lib, rec, truths, 0.2)
    # the same patterns matched around the detector centre: the test can fail
    forced = match_orientations(patterns, au_lib, center=DETECTOR_CENTRE)
    np.testing.assert_array_equal(forced["center"], np.tile(DETECTOR_CENTRE, (4, 1)))
    with pytest.raises(AssertionError):
        _check_accuracy(au_lib, forced, truths, 0.2)
    assert np.median(forced["score"]) < np.median(rec["score"]) - 0.1
    # None is the detector centre too
    none = match_orientations(patterns[:1], au_lib, center=None)
    np.testing.assert_array_equal(none["rotation"], forced["rotation"][:1])


def test_explicit_centres_override(au_lib, shifted):
    patterns, truths, centres = shifted
    per_pattern = match_orientations(patterns[:2], au_lib, center=centres[:2])
    np.testing.assert_array_equal(per_pattern["center"], centres[:2])
    _check_accuracy(au_lib, per_pattern, truths[:2], 0.2)
    one = match_orientations(patterns[:1], au_lib, center=tuple(centres[0]))
    np.testing.assert_array_equal(one["center"][0], centres[0])
    np.testing.assert_allclose(one["rotation"], per_pattern["rotation"][:1], atol=1e-12)
    with pytest.raises(ValueError, match="center"):
        match_orientations(patterns[:2], au_lib, center=centres[:3])
    with pytest.raises(ValueError, match="center"):
        match_orientations(patterns[:1], au_lib, center=(np.nan, 3.0))
    with pytest.raises(ValueError, match="auto"):
        match_orientations(patterns[:1], au_lib, center="middle")


def test_auto_centre_of_disk_arrays_and_empty_patterns(au_lib):
    disks = np.array([[10.0, 20.0, 1.0], [30.0, 40.0, 2.0]])
    rec = match_orientations(disks, au_lib, detector_shape=(64, 80))
    assert rec["center"].tolist() == [[31.5, 39.5]]  # no pattern: the detector centre
    with pytest.raises(ValueError, match="center"):
        match_orientations(disks, au_lib)
    # no beam in a blank or flat pattern: the detector centre, not indexed
    blank = np.stack([np.zeros((40, 50), np.float32), np.full((40, 50), 2.0, np.float32)])
    rec = match_orientations(blank, au_lib)
    assert rec["center"].tolist() == [[19.5, 24.5]] * 2 and not rec["indexed"].any()


def test_orient_clusters_stores_the_centre(au_lib, shifted, tmp_path):
    """Round trip of the centres through the results file; older files (without
    them) read as the detector centre."""
    import h5py

    from napari_stemcluster.core import orient_clusters
    from napari_stemcluster.io import read_results, save_orientation, write_results

    patterns, truths, centres = shifted
    result = _grain_result(au_lib, truths[:3])
    result.cluster_means = patterns[:3]
    lib_kw = {"step_deg": 2.0, "g_max": GMAX}
    res = orient_clusters(patterns[:3], builtin_cif("Au"), KEV, QPIX, **lib_kw)
    assert res.params["center"] == "auto"
    np.testing.assert_allclose(res.records["center"], centres[:3], atol=0.05)
    np.testing.assert_allclose(res.centers(SHAPE), res.records["center"])
    _check_accuracy(au_lib, res.records, truths[:3], 0.3)
    path = write_results(tmp_path / "seg.h5", result)
    save_orientation(path, res)
    back = read_results(path)[1]["orientation"]
    np.testing.assert_array_equal(back.records["center"], res.records["center"])
    assert back.params["center"] == "auto"

    # given explicitly, for all or per cluster
    fixed = orient_clusters(
        patterns[:3], builtin_cif("Au"), KEV, QPIX, center=(60.0, 61.5), **lib_kw
    )
    assert fixed.records["center"].tolist() == [[60.0, 61.5]] * 3
    assert fixed.params["center"] == "explicit"
    each = orient_clusters(patterns[:3], builtin_cif("Au"), KEV, QPIX, center=centres[:3], **lib_kw)
    np.testing.assert_array_equal(each.records["center"], centres[:3])
    with pytest.raises(ValueError, match="one per cluster"):
        orient_clusters(patterns[:3], builtin_cif("Au"), KEV, QPIX, center=centres, **lib_kw)

    # a file written before the centre was stored
    with h5py.File(path, "r+") as f:
        del f["orientation/center"]
    old = read_results(path)[1]["orientation"]
    assert old.records["center"].tolist() == [[63.5, 63.5]] * 3
    np.testing.assert_array_equal(old.records["rotation"], res.records["rotation"])
    # records without a centre (NaN) are drawn around the detector centre
    rec = np.zeros(2, ORIENTATION_DTYPE)
    rec["center"] = [[np.nan, np.nan], [10.0, 12.0]]
    partial = type(res)(rec, np.array([0, 2]), res.structures, {})
    assert partial.centers((96, 100)).tolist() == [[47.5, 49.5], [10.0, 12.0]]


def test_cli_orient_center(au_lib, shifted, tmp_path, capsys):
    from napari_stemcluster.cli import build_parser, main
    from napari_stemcluster.io import read_results, write_results

    patterns, truths, centres = shifted
    result = _grain_result(au_lib, truths[:3])
    result.cluster_means = patterns[:3]
    path = write_results(
        tmp_path / "seg.h5", result, calibration={"q_pixel_size": QPIX, "q_units": "1/angstrom"}
    )
    cif = str(builtin_cif("Au"))
    args = ["orient", str(path), "--cif", cif, "--step", "2", "--max-angle", str(GMAX * 19.687)]
    assert main(args) == 0  # --center auto by default
    out = capsys.readouterr().out
    assert "direct beam (found per cluster)" in out
    back = read_results(path)[1]["orientation"]
    np.testing.assert_allclose(back.records["center"], centres[:3], atol=0.05)
    _check_accuracy(au_lib, back.records, truths[:3], 0.3)
    assert main([*args, "--center", "60.5, 66", "-q"]) == 0
    back = read_results(path)[1]["orientation"]
    assert back.records["center"].tolist() == [[60.5, 66.0]] * 3
    assert back.params["center"] == "explicit"
    parser = build_parser()
    assert parser.parse_args([*args, "--center", "AUTO"]).center == "auto"
    for bad in ("1,2,3", "left", "nan,3"):
        with pytest.raises(SystemExit):
            parser.parse_args([*args, "--center", bad])
        assert "QX,QY" in capsys.readouterr().err or bad == "nan,3"
