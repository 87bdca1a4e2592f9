"""The README's promises: its Python examples run, its figures and picture are current.

Every ```python block of the README runs as a script (in a fresh process, in a
folder holding small files under the names the examples use); the only block
not run is marked in the README itself and needs a SLURM cluster. The 4D row
of the compression table is recomputed, the demo picture in docs/images is
compared with what ``stemcluster demo`` draws now, and the commands of the
README's first lines work from any folder.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from napari_stemcluster.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_RUN = "<!-- not run by tests/test_readme.py:"


def python_blocks() -> list[tuple[int, str, bool]]:
    """``(line, code, run)`` of every ```python block."""
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            j = start
            while lines[j].strip() != "```":
                j += 1
            before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            blocks.append(
                (start + 1, "\n".join(lines[start:j]) + "\n", not before.startswith(NOT_RUN))
            )
            i = j
        i += 1
    return blocks


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory):
    """Small files named as in the README's examples."""
    d = tmp_path_factory.mktemp("readme")
    rng = np.random.default_rng(0)
    # an Arina master file with one data file: 256x256 scan positions of 4x4 pixels
    frames = rng.integers(0, 50, (256 * 256, 4, 4), dtype=np.uint16)
    with h5py.File(d / "scan_data_000001.h5", "w") as f:
        f.create_dataset("entry/data/data", data=frames, chunks=(4096, 4, 4))
    with h5py.File(d / "scan_master.h5", "w") as f:
        f["entry/data/data_000001"] = h5py.ExternalLink("scan_data_000001.h5", "/entry/data/data")
    # a small in-situ series
    with h5py.File(d / "insitu_series.h5", "w") as f:
        f["data"] = rng.poisson(30, (2, 12, 12, 16, 16)).astype(np.uint16)
    return d


BLOCKS = python_blocks()


@pytest.mark.parametrize(
    "line", [ln for ln, _, run in BLOCKS if run], ids=lambda ln: f"README.md:{ln}"
)
def test_python_example_runs_as_a_script(line, example_folder, tmp_path):
    code = next(c for ln, c, _ in BLOCKS if ln == line)
    script = tmp_path / f"example_{line}.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=example_folder,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_only_marked_blocks_are_not_run():
    skipped = [(ln, code) for ln, code, run in BLOCKS if not run]
    assert len(BLOCKS) >= 4
    assert [("SLURMCluster" in code) for _, code in skipped] == [True]
    for _, code in skipped:
        ast.parse(code)  # still valid Python


def test_compression_row_of_the_readme_is_current(tmp_path):
    from napari_stemcluster import segment
    from napari_stemcluster._sample_data import POLYCRYSTAL_4D
    from napari_stemcluster.io import write_results
    from napari_stemcluster.synthetic import make_polycrystal

    row = next(ln for ln in README.read_text().splitlines() if ln.startswith("| 4D polycrystal"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    kib, ratio = float(cells[2].split()[0]), float(cells[3])
    cube = make_polycrystal(**POLYCRYSTAL_4D).cube
    out = write_results(tmp_path / "r.h5", segment(cube, threshold=0.9, sigma=1.0))
    size = out.stat().st_size
    assert abs(size / 1024 - kib) / kib < 0.03, (size / 1024, kib)
    assert abs(cube.nbytes / size - ratio) / ratio < 0.03, (cube.nbytes / size, ratio)


def test_demo_picture_is_what_the_demo_draws(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "demo"), "-q"]) == 0
    drawn = np.asarray(Image.open(tmp_path / "demo" / "overview.png").convert("RGB"))
    shown = np.asarray(Image.open(ROOT / "docs" / "images" / "demo_overview.png").convert("RGB"))
    assert drawn.shape == shown.shape and np.array_equal(drawn, shown), (
        "docs/images/demo_overview.png is out of date: regenerate it with "
        "`stemcluster demo -o DIR` and copy DIR/overview.png there"
    )


def test_dev_sh_takes_paths_from_the_callers_folder(tmp_path, example_folder):
    """`dev.sh run FILE -o OUT` from another folder: both relative to that folder."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    # stands in for the installed command: the source tree of this test run
    (venv / "bin" / "stemcluster").write_text(
        f"#!/bin/sh\nPYTHONPATH={os.pathsep.join(sys.path)} exec {sys.executable} "
        '-m napari_stemcluster "$@"\n'
    )
    (venv / "bin" / "stemcluster").chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: nothing to install
    os.utime(venv / ".installed", (2**31, 2**31))
    work = tmp_path / "mydata"
    work.mkdir()
    (work / "mine.h5").write_bytes((example_folder / "insitu_series.h5").read_bytes())
    env = {**os.environ, "STEMCLUSTER_VENV": str(venv)}
    dev = str(ROOT / "dev.sh")
    proc = subprocess.run(
        [dev, "run", "mine.h5", "-o", "out.h5", "-q"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (work / "out.h5").is_file()
    assert not (ROOT / "out.h5").exists()
    proc = subprocess.run(
        [dev, "info", "mine.h5"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "shape: (2, 12, 12, 16, 16)" in proc.stdout
    proc = subprocess.run([dev], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and re.search(r"usage: \./dev\.sh run", proc.stderr)


def test_readme_lint_command_passes():
    ruff = Path(sys.executable).with_name("ruff")
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([str(ruff), *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dependency_list_of_the_readme_matches_pyproject():
    """The README's "the library and the command line need ..." names every dependency."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the tomli dependency
        import tomli as tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in deps}
    text = " ".join(README.read_text().split())
    sentence = re.search(r"The library and the command line need (.*?);", text).group(1)
    listed = set(re.findall(r"[a-z][a-z0-9_-]+", sentence.lower()))
    missing = sorted(n for n in names if n not in listed)
    assert not missing, f"README's dependency list lacks {missing}"
