"""Ctrl-C (SIGINT) and SIGTERM stop ``stemcluster segment`` at every moment.

Each run replaces an earlier results file; whenever the signal comes
(imports, worker start-up, computation, the final write) the command must
exit 130 (SIGINT) or 143 (SIGTERM) with one line on stderr, leave the
earlier results file byte-identical, and leave no temporary file, scratch
folder or worker process behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

from conftest import make_result
from napari_stemcluster import _signals, cli
from napari_stemcluster.io import write_results

STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A cube that takes several seconds with the prefilter, and an earlier result."""
    d = tmp_path_factory.mktemp("signals")
    rng = np.random.default_rng(0)
    # the prefilter makes each run several seconds of work even on an idle
    # machine (a threads-only run of this file takes about 3 s there)
    with h5py.File(d / "scan.h5", "w") as f:
        f["data"] = rng.integers(0, 40, (24, 40, 40, 48, 48), dtype=np.uint16)
    with h5py.File(d / "tiny.h5", "w") as f:
        f["data"] = rng.integers(0, 40, (4, 4, 8, 8), dtype=np.uint16)
    write_results(d / "previous.h5", make_result(np.ones((4, 4), np.int32)))
    return d


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def popen():
    """Start commands whose pipes are closed and processes reaped whatever the test does."""
    started = []

    def start(*args, **kwargs):
        started.append(_start(*args, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps the process and closes its pipes


def _start(workdir: Path, out: Path, scratch: Path, workers: bool) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "TMPDIR": str(scratch),  # the workers' scratch folders land here
    }
    # small blocks: many tasks, each cancelled quickly
    argv = ["segment", str(workdir / "scan.h5"), "-o", str(out), "--prefilter", "-q"]
    argv += ["--memory-limit", "48MB", "--overwrite"]
    if workers:
        argv += ["--workers", "2"]
    return subprocess.Popen(
        [sys.executable, "-m", "napari_stemcluster", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_as_from_a_terminal,
    )


def _as_from_a_terminal():
    # A shell starts the command with default signal handling and nothing
    # blocked; whatever the test process itself inherited or changed (an
    # ignored or blocked SIGINT) must not leak into the command under test.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _wait_for_children(proc: subprocess.Popen, n: int, timeout: float = 60) -> list:
    parent = psutil.Process(proc.pid)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        kids = [k for k in parent.children(recursive=True) if k.is_running()]
        if len(kids) >= n:
            return kids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail("the worker processes did not start")


@pytest.mark.parametrize(
    ("sig", "moment"),
    [
        (signal.SIGINT, "imports"),
        (signal.SIGINT, "worker start-up"),
        (signal.SIGINT, "compute"),
        (signal.SIGTERM, "worker start-up"),
    ],
)
def test_signal_stops_the_run_cleanly(workdir, tmp_path, popen, sig, moment):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "results.h5"
    out.write_bytes((workdir / "previous.h5").read_bytes())
    before = _digest(out)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = popen(workdir, out, scratch, workers=True)
    kids = []
    if moment == "imports":
        time.sleep(0.4)  # numpy, h5py, dask are still being imported
    elif moment == "worker start-up":
        kids = _wait_for_children(proc, 1)  # the first worker process is starting
    else:
        kids = _wait_for_children(proc, 2)
        time.sleep(1.0)  # the workers compute blocks
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == STATUS[sig], err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("stemcluster: interrupted (")
    assert _digest(out) == before  # the earlier results are untouched
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.h5"]  # no temporary file
    assert list(scratch.iterdir()) == []  # no scratch folder of the workers
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive, f"worker processes left running: {alive}"


@pytest.fixture
def terminal_signals():
    """Signals handled as in a process started from a terminal, for this test only.

    Earlier tests (worker start-up, GUI event loops) may have left SIGINT
    ignored in this process; the command then rightly keeps ignoring it.
    """
    saved = {sig: signal.getsignal(sig) for sig in STATUS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_signal_while_writing_keeps_the_previous_file(
    workdir, tmp_path, monkeypatch, capsys, terminal_signals
):
    """A signal inside the write is honoured before the rename: nothing is replaced."""
    out = tmp_path / "results.h5"
    out.write_bytes((workdir / "previous.h5").read_bytes())
    before = _digest(out)
    real = write_results

    def write_then_signal(path, *args, **kwargs):
        real(path, *args, **kwargs)
        os.kill(os.getpid(), sig)  # arrives while the results file is being committed
        return path

    monkeypatch.setattr("napari_stemcluster.io.write_results", write_then_signal)
    for sig in (signal.SIGINT, signal.SIGTERM):
        code = cli.main(["segment", str(workdir / "tiny.h5"), "-o", str(out), "-q", "--overwrite"])
        err = capsys.readouterr().err
        assert code == STATUS[sig], err
        assert [ln for ln in err.splitlines() if ln.strip()] == [
            _signals.message(_signals.Interrupted(sig))
        ]
        assert _digest(out) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["results.h5"]
    # the handlers of the calling process are back
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or not isinstance(
        signal.getsignal(signal.SIGTERM), type(_signals._handler)
    )


def _wait_for_compute(proc: subprocess.Popen, cpu_seconds: float, timeout: float = 60) -> None:
    # The run is computing once its thread pool is up and it has used some
    # CPU time: a signal at a fixed wall-clock moment would race the end of
    # the run on an idle machine and the imports on a loaded one.
    me = psutil.Process(proc.pid)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "the run ended before the signal"
        with contextlib.suppress(psutil.NoSuchProcess):
            times = me.cpu_times()
            if me.num_threads() > 2 and times.user + times.system > cpu_seconds:
                return
        time.sleep(0.02)
    pytest.fail("the run did not start computing")


def test_threads_run_without_workers_stop_too(workdir, tmp_path, popen):
    out = tmp_path / "results.h5"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = popen(workdir, out, scratch, workers=False)
    _wait_for_compute(proc, cpu_seconds=1.5)  # of about 4.5 s; imports take 0.7 s
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "stemcluster: interrupted (Ctrl-C); no results written"
    ]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [scratch]


def _interrupt_wrapped_by_a_library(*_args):
    # A library catching the handler's exception and raising its own (as an
    # import machinery or a C extension's error path may do).
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler runs here
    except BaseException as e:
        raise RuntimeError("library failure") from e
    raise AssertionError("the signal did not arrive")


def test_interrupt_turned_into_another_error_still_ends_as_interrupted(
    monkeypatch, capsys, terminal_signals
):
    monkeypatch.setattr(cli, "_info", _interrupt_wrapped_by_a_library)
    assert cli.main(["info", "scan.h5"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "stemcluster: interrupted (Ctrl-C); no results written"
    # without a signal the same failure is an error, not an interrupt
    monkeypatch.setattr(cli, "_info", lambda args: (_ for _ in ()).throw(RuntimeError("x")))
    assert cli.main(["info", "scan.h5"]) == 1
    assert "RuntimeError: x" in capsys.readouterr().err


def test_interrupt_wrapped_during_the_imports_ends_as_interrupted(
    monkeypatch, capsys, terminal_signals
):
    class Importing(type(cli)):
        def __getattr__(self, name):
            _interrupt_wrapped_by_a_library()

    monkeypatch.setitem(sys.modules, "napari_stemcluster.cli", Importing("napari_stemcluster.cli"))
    saved = {sig: signal.getsignal(sig) for sig in STATUS}
    try:
        with pytest.raises(SystemExit) as exit_:
            _signals.run()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert exit_.value.code == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err
