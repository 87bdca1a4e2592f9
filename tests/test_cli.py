"""The ``stemcluster`` command line: info, segment, demo, errors, Ctrl-C."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from napari_stemcluster import cli, segment
from napari_stemcluster.config import load_params, save_params
from napari_stemcluster.io import read_results
from napari_stemcluster.synthetic import make_polycrystal

SMALL = {
    "scan_shape": (18, 20),
    "detector_shape": (16, 16),
    "n_times": 2,
    "n_particles": 2,
    "radius_range": (2.5, 3.5),
    "seed": 1,
}


@pytest.fixture
def small_sample(monkeypatch):
    monkeypatch.setattr(cli, "SAMPLE", SMALL)
    return make_polycrystal(**SMALL)


@pytest.fixture
def data_file(tmp_path, small_sample):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", data=small_sample.cube, chunks=(1, 9, 20, 16, 16))
        d.attrs["r_pixel_size"] = 0.5
        d.attrs["r_units"] = "nm"
    return path


def listing(path):
    return sorted(p.name for p in path.iterdir())


def test_info(data_file, capsys):
    assert cli.main(["info", str(data_file)]) == 0
    out = capsys.readouterr().out
    assert "shape: (2, 18, 20, 16, 16)" in out
    assert "format: hdf5" in out and "dtype: uint16" in out
    assert "chunks: (1, 18, 20, 16, 16)" in out
    assert "R pixel: 0.5 nm" in out
    assert f"bytes: {2 * 18 * 20 * 16 * 16 * 2}" in out


def test_segment_file_equals_in_memory(data_file, small_sample, tmp_path, capsys):
    out = tmp_path / "res.h5"
    code = cli.main(
        [
            "segment",
            str(data_file),
            "-o",
            str(out),
            "--threshold",
            "0.85",
            "--min-cluster-size",
            "2",
            "--real-mask",
            "otsu",
            "--memory-limit",
            "50MB",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    result, info = read_results(out)
    ref = segment(small_sample.cube, threshold=0.85, min_cluster_size=2, real_mask="otsu")
    np.testing.assert_array_equal(result.labels, ref.labels)
    for a, b in zip(result.cluster_means, ref.cluster_means, strict=True):
        np.testing.assert_array_equal(a, b)
    assert result.params["threshold"] == 0.85 and result.params["real_mask"] == "otsu"
    assert info["source"] == str(data_file.resolve())
    assert info["calibration"]["r_pixel_size"] == 0.5
    # the summary: clusters per time step, compression ratio, time per stage
    counts = ", ".join(f"t={t}: {n}" for t, n in enumerate(ref.n_clusters))
    assert f"clusters per time step: {counts}" in text
    assert "compression ratio" in text
    for stage in ("open", "similarity", "regions", "averages", "write"):
        assert f"{stage} " in text.split("time per stage:")[1]
    assert "memory limit 47.68 MiB" in text


def test_segment_reports_auto_threshold_and_diagnostics(data_file, small_sample, tmp_path, capsys):
    out = tmp_path / "res.h5"
    assert cli.main(["segment", str(data_file), "-o", str(out), "--threshold", "auto"]) == 0
    text = capsys.readouterr().out
    result, _ = read_results(out)
    ref = segment(small_sample.cube)
    np.testing.assert_array_equal(result.labels, ref.labels)
    assert result.params["threshold"] == "auto"
    assert result.params["threshold_used"] == [d.threshold for d in ref.diagnostics]
    assert result.params["diagnostics"][0]["clusters"] == ref.diagnostics[0].clusters
    for t, d in enumerate(ref.diagnostics):
        assert f"t={t}: {d.summary()}" in text
    # nothing clustered: the summary says why
    code = cli.main(
        [
            "segment",
            str(data_file),
            "-o",
            str(out),
            "--min-cluster-size",
            "100000",
            "--times",
            "0:1",
            "--overwrite",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "No clusters: all" in text and "lower min_cluster_size" in text


def test_config_file_and_flags_override(data_file, small_sample, tmp_path):
    params = tmp_path / "params.toml"
    save_params(params, {"threshold": 0.5, "min_cluster_size": 3, "times": "1:2"})
    out = tmp_path / "res.h5"
    args = ["segment", str(data_file), "-o", str(out), "--config", str(params), "-q"]
    assert cli.main([*args, "--threshold", "0.8"]) == 0
    result, _ = read_results(out)
    assert result.params["threshold"] == 0.8  # the flag wins
    assert result.params["min_cluster_size"] == 3  # from the file
    assert result.params["time_range"] == [1, 2] and result.labels.shape == (1, 18, 20)
    ref = segment(small_sample.cube[1:2], threshold=0.8, min_cluster_size=3)
    np.testing.assert_array_equal(result.labels, ref.labels)


def test_segment_sample_without_file(small_sample, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["segment", "--prefilter", "--prefilter-radius", "1"]) == 0
    result, info = read_results(tmp_path / "stemcluster-results.h5")
    assert result.labels.shape == (2, 18, 20)
    assert result.params["prefilter"]["radius"] == 1
    assert "synthetic sample" in info["source"]
    assert "generate sample" in capsys.readouterr().out


def test_demo_writes_results_parameters_and_picture(small_sample, tmp_path):
    from PIL import Image

    out = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out), "-q"]) == 0
    assert listing(out) == ["overview.png", "params.toml", "results.h5", "sample.h5"]
    result, _ = read_results(out / "results.h5")
    assert load_params(out / "params.toml")["threshold"] == "auto"
    img = np.asarray(Image.open(out / "overview.png"))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 600
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 50  # a picture
    # the demo's own sample file segments again from the command line
    again = tmp_path / "again.h5"
    code = cli.main(
        [
            "segment",
            str(out / "sample.h5"),
            "--config",
            str(out / "params.toml"),
            "-o",
            str(again),
            "-q",
        ]
    )
    assert code == 0
    np.testing.assert_array_equal(read_results(again)[0].labels, result.labels)


@pytest.mark.parametrize(
    "args,message",
    [
        (["segment", "--threshold", "2"], "threshold must be"),
        (["segment", "--real-mask", "li"], "real_mask must be"),
        (["segment", "--times", "3:1"], "times must be"),
        (["segment", "--workers", "0"], "workers must be"),
        (["segment", "--scheduler", "tcp://x:1", "--workers", "2"], "not allowed with"),
        (["segment", "--q-mask", "40"], "q_mask must be"),
        (["segment", "--bogus"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_options_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_files_and_values_exit_1(tmp_path, data_file, small_sample, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a cube")
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("treshold = 0.8\n")
    out = str(tmp_path / "r.h5")
    cases = [
        (["info", str(tmp_path / "missing.h5")], "file not found"),
        (["segment", str(text), "-o", out], "not a recognised 4D-STEM file"),
        (
            ["segment", str(data_file), "-o", out, "--config", str(bad_config)],
            "unknown parameter 'treshold'",
        ),
        (["segment", str(data_file), "-o", out, "--times", "0:9"], "beyond the 2 time"),
        (["segment", str(data_file), "-o", out, "--memory-limit", "1kB"], "too small"),
        (["segment", str(data_file), "-o", str(tmp_path)], "is a directory"),
        (["segment", str(data_file), "-o", str(data_file)], "source data file"),
        (["segment", "-o", str(data_file)], "holds 4D/5D-STEM data"),
        (["segment", "-o", str(tmp_path / "no" / "r.h5")], "does not exist"),
        (["segment", "--scan-shape", "4,4", "-o", out], "not to the bundled sample"),
    ]
    for args, message in cases:
        assert cli.main(args) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("stemcluster: error:") and message in err, (args, err)
        assert "Traceback" not in err
    assert not os.path.exists(out)
    # a results file is not a cube
    cli.main(["segment", str(data_file), "-o", out, "-q"])
    assert cli.main(["segment", out, "-o", str(tmp_path / "r2.h5")]) == 1
    assert "results file" in capsys.readouterr().err


def test_ctrl_c_leaves_no_partial_results(data_file, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    calls = []

    def interrupt(self, stage, done, total):
        calls.append(stage)
        if stage == "averages" and done:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._StageBars, "update", interrupt)
    out = out_dir / "res.h5"
    code = cli.main(["segment", str(data_file), "-o", str(out), "--memory-limit", "4MB"])
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert listing(out_dir) == []  # no results, no temporary file
    assert "averages" in calls

    # interrupted just before the results file is renamed into place
    monkeypatch.undo()

    def no_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", no_replace)
    assert cli.main(["segment", str(data_file), "-o", str(out), "-q"]) == 130
    monkeypatch.undo()
    assert listing(out_dir) == []


def test_python_m_runs_the_sample(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:napari_stemcluster"}
    proc = subprocess.run(
        [sys.executable, "-m", "napari_stemcluster", "segment"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "clusters per time step: t=0:" in proc.stdout
    assert "compression ratio" in proc.stdout
    assert listing(tmp_path) == [
        "stemcluster-results.h5",
        "stemcluster-results_kinetics.csv",
        "stemcluster-results_kinetics_events.csv",
        "stemcluster-results_kinetics_rates.csv",
    ]
    result, _ = read_results(tmp_path / "stemcluster-results.h5")
    assert result.labels.shape == (cli.SAMPLE["n_times"], *cli.SAMPLE["scan_shape"])
    assert min(result.n_clusters) >= 5  # the sample's grains are found
