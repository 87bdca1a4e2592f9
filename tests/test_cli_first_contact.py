"""The command line as a new user meets it: help, messages, pipes, the overview."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from napari_stemcluster import cli


@pytest.fixture
def cube_file(tmp_path):
    path = tmp_path / "scan.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["data"] = rng.poisson(20, (8, 6, 12, 12)).astype(np.uint16)
    return path


def test_every_option_has_help_with_its_default_and_examples():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings or action.dest in ("file",):
                assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    # every segment option that takes a value says what it is when not given
    # (--config, --overview and --scheduler: nothing, which needs no words)
    for action in sub.choices["segment"]._actions:
        takes_value = action.option_strings and action.nargs != 0
        if takes_value and action.dest not in ("config", "overview", "scheduler", "help"):
            assert "default" in action.help, (action.dest, action.help)
    seg = " ".join(sub.choices["segment"].format_help().split())
    for text in (
        "examples:",
        "--prefilter-edge",
        "(default: 1/16 of the detector)",
        "--scan-shape 256x256",
    ):
        assert text in seg, text
    info = " ".join(sub.choices["info"].format_help().split())
    assert "Only headers and metadata are read" in info and "examples:" in info


def test_misspelt_option_gets_did_you_mean(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["segment", "--treshold", "0.9"])
    assert e.value.code == 2
    assert "--treshold: did you mean --threshold?" in capsys.readouterr().err


def test_scan_shape_as_printed_and_error_in_cli_words(tmp_path, capsys):
    path = tmp_path / "frames.npy"
    np.save(path, np.zeros((12, 4, 4), np.uint16))
    assert cli.main(["info", str(path), "--scan-shape", "4x3"]) == 0
    assert "(4, 3)" in capsys.readouterr().out
    assert cli.main(["info", str(path), "--scan-shape", "5x5"]) == 1
    err = capsys.readouterr().err
    assert "--scan-shape RX,RY" in err and "Traceback" not in err


def test_info_in_a_pipe_stops_quietly(cube_file):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        f"{sys.executable} -m napari_stemcluster info {cube_file} | head -1; "
        'echo "status=${PIPESTATUS[0]}"',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.stdout.splitlines() == [f"file: {cube_file}", "status=0"]
    assert proc.stderr == ""


def test_info_sizes_agree(cube_file, capsys):
    assert cli.main(["info", str(cube_file)]) == 0
    out = capsys.readouterr().out
    assert "size: 13.5 KiB" in out and "bytes: 13824" in out
    assert out.count("KiB") == 1  # one human-readable size, not two roundings


def test_segment_overview_and_consistent_summary(cube_file, tmp_path, capsys):
    png = tmp_path / "over.png"
    out = tmp_path / "seg.h5"
    code = cli.main(
        ["segment", str(cube_file), "-o", str(out), "--prefilter", "--overview", str(png)]
    )
    assert code == 0
    text = capsys.readouterr().out
    with Image.open(png) as im:
        assert im.size[0] > 100
    assert f"overview: {png}" in text
    assert "prefilter+similarity" in text  # the progress bars' name for the stage
    line = next(ln for ln in text.splitlines() if ln.startswith("segmented"))
    assert "in all; segmentation" in line and "/s of input" in line
    # the figures agree: throughput = input / segmentation time, and the
    # times per stage add up to the segmentation and to the total
    m = re.search(
        r"patterns, ([\d.]+) KiB\) in ([\d.]+) s in all; segmentation ([\d.]+) s, "
        r"([\d.]+) (KiB|MiB)/s",
        line,
    )
    kib, total, seg, rate = (float(g) for g in m.groups()[:4])
    rate *= 1024 if m.group(5) == "MiB" else 1
    assert kib == 8 * 6 * 12 * 12 * 2 / 1024
    # seg is printed to 0.01 s: the rate must lie between the bounds that rounding allows
    lo, hi = kib / (seg + 0.005), kib / max(seg - 0.005, 1e-9)
    assert 0.99 * lo - 0.01 <= rate <= 1.01 * hi + 0.01, (rate, lo, hi)
    stages = next(ln for ln in text.splitlines() if ln.startswith("time per stage"))
    stages = re.sub(r"\(tasks:[^)]*\)", "", stages)
    parts = [float(x) for x in re.findall(r" ([\d.]+) s", stages)]
    assert "setup (plan, kernels, thresholds)" in stages
    assert abs(sum(parts) - total) <= 0.01 * len(parts) + 0.05, (parts, total)
    seg_parts = re.search(r"prefilter\+similarity .*setup[^;]*", stages).group(0)
    assert abs(sum(float(x) for x in re.findall(r" ([\d.]+) s", seg_parts)) - seg) <= 0.02
    other = tmp_path / "seg2.h5"
    assert cli.main(["segment", str(cube_file), "-o", str(other), "--overview", "/nope/x.png"]) == 1
    assert "directory does not exist (--overview)" in capsys.readouterr().err


def test_unexpected_failure_is_one_paragraph(monkeypatch, cube_file, capsys):
    def boom(*a, **k):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr("napari_stemcluster.io.open_dataset", boom)
    assert cli.main(["info", str(cube_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stemcluster: error: RuntimeError: Nanny failed to start.")
    assert "STEMCLUSTER_DEBUG=1" in err and "Traceback" not in err


def test_hints_name_a_command_that_runs_from_here(tmp_path, monkeypatch):
    """After `./dev.sh demo` the command is not on the PATH: the hint gives its full path."""
    exe = tmp_path / "venv" / "bin" / "stemcluster"
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "argv", [str(exe), "demo"])
    assert cli._command() == str(exe)
    monkeypatch.setattr(sys, "argv", [str(Path(cli.__file__).with_name("__main__.py"))])
    assert cli._command().endswith(" -m napari_stemcluster")
    monkeypatch.setattr(sys, "argv", ["stemcluster"])
    monkeypatch.setenv("PATH", str(exe.parent))
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.chdir(exe.parent)
    assert cli._command() == "stemcluster"  # on the PATH: its short name
