"""Ctrl-C and SIGTERM for the command line: honoured at every moment of a run.

The ``stemcluster`` command starts in :func:`run`, which installs the
handlers before anything heavy is imported, so an interrupt during imports,
worker start-up, computation or the final write always ends the same way:
one line on stderr, exit status 130 (Ctrl-C, SIGINT) or 143 (SIGTERM), the
previous results file untouched and no temporary file left behind.

While the results file is committed (:func:`deferred`), a signal is only
recorded; the writer checks :func:`pending` before the final rename.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

#: Exit status per signal (128 + the signal number, the shell's convention).
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

_state = {"deferred": 0, "pending": None}


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM; carries the signal."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(_NAMES.get(signum, str(signum)))
        self.signum = signum


def _handler(signum, frame):
    # Recorded even when raised: library code (h5py's read path) can swallow
    # an exception raised from a handler, and the run must still stop.
    _state["pending"] = signum
    if _state["deferred"]:
        return
    _quiet_teardown()
    raise Interrupted(signum)


def _quiet_teardown() -> None:
    """Mute stderr until :func:`unmute`: the run is torn down on purpose.

    dask.distributed (and its worker processes, which share our stderr)
    complain about cancelled operations, closed streams and vanished scratch
    folders while a cluster shuts down early; the user gets one line instead.
    """
    import logging

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    if _state.get("saved_stderr") is None:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
            _state["saved_stderr"] = saved
        except (OSError, ValueError):  # no real stderr (embedded, closed)
            pass


def unmute() -> None:
    """Give stderr back after an interrupt was torn down."""
    saved = _state.pop("saved_stderr", None)
    if saved is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def raise_pending() -> None:
    """Raise the interrupt recorded while deferred, if any (then forget it)."""
    signum, _state["pending"] = _state["pending"], None
    if signum is not None:
        _quiet_teardown()
        raise Interrupted(signum)


def install() -> dict | None:
    """Install the handlers (main thread only); returns the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {}
    ours = False
    for sig in EXIT_STATUS:
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue  # ignored on purpose by whoever started us (nohup, `cmd &`)
        previous[sig] = signal.signal(sig, _handler)
        ours = ours or previous[sig] is _handler
    if not ours:  # a signal recorded by an outer install() must not be forgotten
        _state["pending"] = None
    return previous


def swallowed(error: BaseException) -> Interrupted | None:
    """The interrupt behind ``error`` when a library turned it into another exception.

    A handler's exception raised inside library code (an import, h5py's read
    path) can come out as an ``ImportError`` or ``RuntimeError``; the signal was
    recorded all the same, and the run must end as interrupted, not as failed.
    """
    signum = _state["pending"]
    if signum is None or isinstance(error, KeyboardInterrupt):
        return None
    return Interrupted(signum)


def restore(previous: dict | None) -> None:
    """Put back the handlers :func:`install` replaced (and stderr)."""
    unmute()
    if not previous:
        return
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def deferred():
    """Record signals instead of raising them (around a commit that must not tear)."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1


def pending() -> int | None:
    """The signal recorded while deferred, if any."""
    return _state["pending"]


def status(error: BaseException) -> int:
    """Exit status of an interrupt."""
    return EXIT_STATUS.get(getattr(error, "signum", signal.SIGINT), 130)


def message(error: BaseException, what: str = "no results written") -> str:
    """The one line printed on an interrupt."""
    name = _NAMES.get(getattr(error, "signum", signal.SIGINT), "Ctrl-C")
    return f"stemcluster: interrupted ({name}); {what}"


def run() -> None:
    """Entry point of the ``stemcluster`` command (handlers first, then imports)."""
    install()
    try:
        try:
            from .cli import main
        except Exception as e:  # an interrupt that an imported library re-raised as its own
            raise (swallowed(e) or e) from None
        raise_pending()  # an interrupt that an imported library swallowed whole
        code = main()
    except KeyboardInterrupt as e:  # before main() took over
        unmute()
        print(message(e), file=sys.stderr)
        code = status(e)
    # the run is over and has said so: a signal during the interpreter's own
    # shutdown must not turn a finished run into a traceback or a silent death
    for sig in EXIT_STATUS:
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)
