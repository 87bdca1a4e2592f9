"""The reliability contract on a seeded corpus of hostile and unusual files.

Every file of ``_fuzz_corpus`` goes through every entry point: Python
(``open_dataset``, reading the cube, ``read_results``), napari (``get_reader``,
and napari's reading path through npe2: file patterns, hook, reader) and the
command line (``stemcluster info`` and
``segment``, in-process). For each: no exception other than StemFileError /
ValueError, no traceback on the command line, no hang (a timeout per case),
the input files byte-identical afterwards and no partial output file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManager
from npe2.io_utils import read as npe2_read

from _fuzz_corpus import build_corpus
from napari_stemcluster._reader import get_reader
from napari_stemcluster.cli import main
from napari_stemcluster.io import StemFileError, open_dataset, read_results

SEED = 2026
PLUGIN = "napari-stemcluster"
_DIR = Path(tempfile.mkdtemp(prefix="stemcluster-fuzz-"))
CASES = {c.name: c for c in build_corpus(_DIR, SEED)}
#: Cases also segmented through the command line (every valid file, and a
#: sample of the others; all of them are opened, read and shown).
SEGMENTED = [n for n, c in CASES.items() if c.expect == "ok" or n.endswith(("flip0", "flip1"))]
#: A hang, not slowness: the kernels are compiled before the cases (see
#: ``compiled_kernels``); a loaded machine still stretches a case several times.
TIMEOUT = 60


@pytest.fixture
def scan_shape_dialog(monkeypatch):
    """A flat frame stack makes napari's reader ask for a scan shape: the user
    answers with ``answer[0]``, or cancels (None), which must give the
    reader's clear error."""
    answer = [None]
    monkeypatch.setattr("napari_stemcluster._reader.ask_scan_shape", lambda path, msg: answer[0])
    return answer


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    # napari discovers the installed plugins at start-up; so does this module
    PluginManager.instance().discover()
    assert PluginManager.instance().get_manifest(PLUGIN)
    yield
    shutil.rmtree(_DIR, ignore_errors=True)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no answer within {TIMEOUT} s")


@pytest.fixture(scope="module")
def compiled_kernels(tmp_path_factory):
    """Segment and show a tiny cube of every data type of the valid files once.

    The numba kernels are compiled per input data type (15-40 s of CPU each on
    a cold cache, then cached on disk): done here, once, they are shared by
    every case and stay out of the per-case time limit, which then catches
    hangs rather than compilation.
    """
    from napari_stemcluster._reader import read_stem

    folder = tmp_path_factory.mktemp("warm-up")
    dtypes = {
        np.dtype(c.expect_data.dtype).newbyteorder("=")
        for c in CASES.values()
        if c.expect == "ok" and c.expect_data is not None
    }
    for dt in sorted(dtypes, key=str):
        path = folder / f"{dt}.npy"
        np.save(path, (np.arange(4 * 4 * 8 * 6) % 7).reshape(4, 4, 8, 6).astype(dt))
        argv = ["segment", str(path), "-o", str(folder / f"{dt}.h5"), "-q"]
        assert main([*argv, "--min-cluster-size", "1"]) == 0
        read_stem(str(path))
    return sorted(map(str, dtypes))


@pytest.fixture
def deadline(compiled_kernels):
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _snapshot(folder: Path) -> dict:
    """Hash of every regular file below ``folder`` (FIFOs and links left alone)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[p] = stat.S_IFMT(st.st_mode)
    return out


def _allowed(call):
    """Run ``call``; return ("ok", value) or ("refused", message). Others fail the test."""
    try:
        return "ok", call()
    except (StemFileError, ValueError) as e:
        assert str(e).strip(), "an error without a message"
        return "refused", str(e)


def _check_cli(capsys, argv) -> int:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code in (0, 1), (code, err)
    if code:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and lines[0].startswith("stemcluster: error:"), err
    return code, err


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_entry_point_keeps_the_contract(name, tmp_path, capsys, deadline, scan_shape_dialog):
    case = CASES[name]
    path = str(case.path)
    before = _snapshot(_DIR)

    # Python: open (metadata only), then read every value
    outcome, ds = _allowed(lambda: open_dataset(path, case.scan_shape))
    if outcome == "ok":
        got_outcome, values = _allowed(lambda: ds.cube.compute())
        if case.expect_data is not None:
            assert got_outcome == "ok", values
            # native byte order; float16 widened to float32
            want = np.asarray(case.expect_data).dtype.newbyteorder("=")
            assert values.dtype == (np.float32 if want == np.float16 else want)
            np.testing.assert_array_equal(values, case.expect_data)
    # every file through read_results too: only results files may open
    got_results, _ = _allowed(lambda: read_results(path))
    if case.kind == "results":
        outcome = got_results
    else:
        assert got_results == "refused", f"{name} read as a results file"
    if case.expect == "ok":
        assert outcome == "ok", ds
    elif case.expect == "error":
        assert outcome == "refused", f"{name} was accepted"

    # napari: get_reader never raises; napari's reading path (npe2: the
    # manifest's file patterns, the hook, then the reader) works or explains
    reader = get_reader(path)
    # a stack that needs a scan shape: first cancelled, then answered
    for answer in [None, case.scan_shape] if case.scan_shape else [None]:
        scan_shape_dialog[0] = answer
        got, layers = _allowed(lambda: npe2_read([path], stack=False, plugin_name=PLUGIN))
        if answer is None and case.scan_shape and reader is not None:
            assert got == "refused" and "Scan shape field" in layers, layers
    if got == "ok":
        assert reader is not None
        assert isinstance(layers, list) and layers and all(len(t) == 3 for t in layers)
        if case.expect_data is not None:  # the virtual image of the scan
            assert layers[0][0].shape[-2:] == case.expect_data.shape[-4:-2]
    elif case.expect == "ok" and not (case.kind == "npy" and case.scan_shape):
        # (a 3D .npy is any volume; napari opens it with its own reader, and
        # the "Open 4D-STEM file" widget with a scan shape)
        pytest.fail(f"napari refused a valid file: {layers}")
    elif reader is None:  # npe2's own words: no reader for this file
        assert "refused the file" in layers or "not a compatible reader" in layers, layers

    # command line
    info = ["info", path] + (
        ["--scan-shape", "x".join(map(str, case.scan_shape))] if case.scan_shape else []
    )
    code, err = _check_cli(capsys, info)
    if case.expect == "ok":
        assert code == 0, err
    if name in SEGMENTED and case.kind != "results":
        out = tmp_path / "out" / "seg.h5"
        out.parent.mkdir()
        argv = ["segment", path, "-o", str(out), "-q", "--min-cluster-size", "1"]
        if case.scan_shape:
            argv += ["--scan-shape", ",".join(map(str, case.scan_shape))]
        code, err = _check_cli(capsys, argv)
        left = sorted(p.name for p in out.parent.iterdir())
        if code == 0:
            assert left == ["seg.h5"]
            read_results(out)
        else:
            assert left == [], f"partial output left behind: {left}"
        if case.expect == "ok":
            assert code == 0, f"a valid file was not segmented: {name}: {err}"

    assert _snapshot(_DIR) == before, "an input file was modified"


def test_corpus_is_large_and_seeded(tmp_path):
    assert len(CASES) >= 150
    kinds = {c.kind for c in CASES.values()}
    assert kinds == {"emd", "hdf5", "arina", "merlin", "npy", "results"}
    again = build_corpus(tmp_path, SEED)
    assert [c.name for c in again] == list(CASES)
    for c in again:
        ref = CASES[c.name]
        # HDF5 files hold absolute link paths, timestamps and UUIDs: compare the others
        if c.path.suffix in (".npy", ".mib") and c.path.is_file():
            assert c.path.read_bytes() == ref.path.read_bytes(), c.name


@pytest.mark.parametrize("name", ["fifo-scan.h5", "arina-fifolink", "merlin-hdrzero"])
def test_command_line_process_never_hangs_or_tracebacks(name, tmp_path):
    case = CASES[name]
    out = tmp_path / "seg.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for argv in (["info", str(case.path)], ["segment", str(case.path), "-o", str(out), "-q"]):
        proc = subprocess.run(
            [sys.executable, "-m", "napari_stemcluster", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        if case.expect == "error":
            assert proc.returncode == 1, proc.stderr
            assert proc.stderr.startswith("stemcluster: error:"), proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr
    assert not out.exists() or case.expect == "ok"


def test_byte_order_and_float16_segment_as_native(tmp_path, capsys, compiled_kernels):
    """The same values stored big-endian, or as float16, give the same segmentation."""
    rng = np.random.default_rng(7)
    spots = np.zeros((2, 10, 10))
    spots[0, 2, 2] = spots[1, 7, 6] = 400  # two grains: a Bragg spot each
    grain = (np.arange(6) >= 3).astype(int)  # columns 0-2 and 3-5
    base = (rng.poisson(5, (8, 6, 10, 10)) + spots[grain]).astype(np.uint16)
    results = {}
    for dt in ("<u2", ">u2", "<f4", "<f2", ">f8", "<f8"):
        path = tmp_path / f"cube{dt[1:]}{'be' if dt[0] == '>' else ''}.npy"
        np.save(path, base.astype(dt))
        out = tmp_path / f"{path.stem}.h5"
        assert main(["segment", str(path), "-o", str(out), "-q", "--real-mask", "none"]) == 0
        result, _ = read_results(out)
        results[dt] = result
    for a, b in (("<u2", ">u2"), ("<f4", "<f2"), ("<f8", ">f8"), ("<u2", "<f8")):
        np.testing.assert_array_equal(results[a].labels, results[b].labels)
        np.testing.assert_allclose(
            results[a].mean_similarity, results[b].mean_similarity, atol=1e-6
        )
    assert results["<u2"].n_clusters == 2  # and the segmentation is the right one
