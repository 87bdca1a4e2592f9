"""One output rule for the API and the command line; temporary files never stay."""

import os
import tempfile

import h5py
import numpy as np
import pytest

from conftest import blocks_labels, make_result
from napari_stemcluster import cli
from napari_stemcluster.io import StemFileError, read_results, write_results
from napari_stemcluster.io.output import atomic_output, check_output


@pytest.fixture
def cube_file(tmp_path):
    path = tmp_path / "scan.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["data"] = rng.poisson(5, (6, 7, 8, 8)).astype(np.uint16)
    return path


def _others(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("my notes\n")
    images = tmp_path / "images.h5"
    with h5py.File(images, "w") as f:
        f["img"] = np.zeros((4, 5, 6), np.float32)  # a stack of 2D images
    return [text, images]


def test_api_replaces_only_earlier_results_and_only_with_overwrite(tmp_path):
    result = make_result(blocks_labels())
    for other in _others(tmp_path):
        before = other.read_bytes()
        for overwrite in (False, True):
            with pytest.raises(StemFileError, match="refusing"):
                write_results(other, result, overwrite=overwrite)
        assert other.read_bytes() == before
    path = write_results(tmp_path / "seg.h5", result)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_results(path, result)
    write_results(path, result, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.h5", "notes.txt", "seg.h5"]


def test_cli_follows_the_same_rule(tmp_path, cube_file, capsys):
    for other in _others(tmp_path):
        before = other.read_bytes()
        for extra in ([], ["--overwrite"]):
            assert cli.main(["segment", str(cube_file), "-o", str(other), "-q", *extra]) == 1
            err = capsys.readouterr().err
            assert "refusing" in err and "Traceback" not in err
        assert other.read_bytes() == before
    out = tmp_path / "r.h5"
    assert cli.main(["segment", str(cube_file), "-o", str(out), "-q"]) == 0
    first = out.read_bytes()
    assert cli.main(["segment", str(cube_file), "-o", str(out), "-q", "--threshold", "0.5"]) == 1
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == first
    args = ["segment", str(cube_file), "-o", str(out), "-q", "--threshold", "0.5", "--overwrite"]
    assert cli.main(args) == 0
    assert read_results(out)[0].params["threshold"] == 0.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_temporary_files_are_unique_and_removed_on_every_exit(tmp_path, error):
    target = tmp_path / "out.h5"
    target.write_text("previous")
    with pytest.raises(error), atomic_output(target) as a, atomic_output(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(".out.h5.") and a.exists()
        a.write_text("half written")
        raise error
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_permission_errors_name_the_path(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(StemFileError, match=f"{tmp_path}: permission denied"):
        write_results(tmp_path / "seg.h5", make_result(blocks_labels()))
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(StemFileError, match="permission denied"):
        check_output(tmp_path / "seg.h5")


def test_source_and_directories_are_refused(tmp_path, cube_file):
    with pytest.raises(StemFileError, match="is the source data file"):
        check_output(cube_file, source=cube_file, overwrite=True)
    with pytest.raises(StemFileError, match="is a directory"):
        check_output(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_output(tmp_path / "no" / "r.h5")
