"""Where the engine's block tasks run: threads of this process, or dask workers.

Every executor offers the same few operations (share an object with all
workers, submit a task, wait for the first finished tasks, cancel), so the
engine's scheduling code is the same for all of them.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time


def available_cpus() -> int:
    """CPUs this process may run on.

    Examples
    --------
    >>> available_cpus() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
    """Start worker processes with Ctrl-C ignored (they inherit it).

    Ctrl-C in a terminal reaches every process of the foreground group; the
    workers should not die with tracebacks of their own but be shut down by
    this process, which cancels the run and closes the cluster.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Blocked, not ignored: the workers inherit the blocked mask (they never
    # see Ctrl-C), while a Ctrl-C that arrives meanwhile stays pending for
    # this process and is raised as soon as the workers have started.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class Executor:
    """Base class: runs block tasks; use as a context manager or call close().

    Attributes
    ----------
    slots : int
        Tasks that run at the same time.
    numba_threads : int or None
        Threads each task's numba kernels use (None: the worker's default).
    memory_scale : int
        The memory limit applies to this many separate machines/processes
        (1 when one budget covers all tasks).
    in_process : bool
        Tasks run in this process, so results (such as blocks of patterns
        kept for a later pass) cost no transfer.
    keeps_on_workers : bool
        Tasks can keep blocks in their worker process for a later task sent
        to the same worker (:meth:`submit_to`).
    same_machine : bool
        Every task runs on this machine (threads, or a local cluster), so
        they share its page cache: blocks read ahead here serve them.
    read_ahead : bool
        A similarity task reads the next block of its slot into memory while
        it computes (HDF5 files; off by default, see the README's out-of-core
        figures).
    """

    slots: int = 1
    numba_threads: int | None = None
    memory_scale: int = 1
    #: Tasks run in this process (their results are not copied).
    in_process: bool = False
    keeps_on_workers: bool = False
    same_machine: bool = False
    read_ahead: bool = False

    def share(self, obj):
        """Make ``obj`` available to every worker; returns what tasks receive."""
        return obj

    def submit(self, fn, *args):
        """Start ``fn(*args)``; returns a future."""
        raise NotImplementedError

    def submit_to(self, where, fn, *args):
        """Start ``fn(*args)``, preferably on the worker at ``where``."""
        return self.submit(fn, *args)

    def run_everywhere(self, fn, *args) -> None:
        """Call ``fn(*args)`` once in every worker process (not in this one)."""

    def lanes(self) -> list:
        """Where each of the :attr:`slots` runs (for :meth:`submit_to`).

        Examples
        --------
        >>> ThreadExecutor(2).lanes()
        [None, None]
        """
        return [None] * self.slots

    def wait(self, futures, timeout: float):
        """Futures among ``futures`` that are done, after at most ``timeout`` s."""
        raise NotImplementedError

    def cancel(self, futures) -> None:
        """Cancel ``futures`` and return once none of them runs any more."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers (if this executor started them)."""

    def describe(self) -> str:
        return type(self).__name__

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ThreadExecutor(Executor):
    """Tasks run in threads of this process.

    The numba kernels release the GIL, so threads compute in parallel; with
    several threads one reads the next block while another computes. Each
    task's kernels use ``cpus // n_threads`` threads, so the machine is not
    oversubscribed.

    Parameters
    ----------
    n_threads : int, optional
        Default: the number of available CPUs.
    read_ahead : bool
        Each similarity task reads the next block of its thread into memory
        while it computes (HDF5 files). Off by default: on a machine busy
        with other work it made runs on threads slower, not faster.

    Examples
    --------
    >>> with ThreadExecutor(2) as ex:
    ...     fut = ex.submit(pow, 2, 10)
    ...     fut.result()
    1024
    """

    def __init__(self, n_threads: int | None = None, *, read_ahead: bool = False):
        self.read_ahead = bool(read_ahead)
        cpus = available_cpus()
        n = cpus if n_threads is None else int(n_threads)
        if n < 1:
            raise ValueError(f"n_threads must be >= 1; got {n_threads}")
        self.slots = n
        self.numba_threads = max(1, cpus // n)
        self.in_process = True
        self.same_machine = True
        self._pool = None

    def submit(self, fn, *args):
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self.slots, thread_name_prefix="stemcluster")
        return self._pool.submit(fn, *args)

    def wait(self, futures, timeout: float):
        done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return done

    def cancel(self, futures) -> None:
        for f in futures:
            f.cancel()
        # Tasks already running cannot be stopped; wait for them, so no
        # thread keeps reading the file after the caller has moved on.
        cf.wait(futures)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        return f"{self.slots} thread(s) in this process"


class DistributedExecutor(Executor):
    """Tasks run on a dask.distributed cluster.

    Give one of ``client`` (an existing ``distributed.Client``), ``address``
    (a scheduler such as ``"tcp://10.0.0.5:8786"``) or ``n_workers`` (start
    a local cluster of that many single-threaded worker processes, listening
    on the loopback interface only). Workers read the file themselves, so it
    must be reachable under the same path on every worker machine.

    With ``address`` or ``client`` the memory limit applies per worker
    process; with a local cluster it covers all workers together.

    Examples
    --------
    >>> with DistributedExecutor(n_workers=2) as ex:  # doctest: +SKIP
    ...     ex.submit(pow, 2, 10).result()
    1024
    """

    def __init__(
        self, address: str | None = None, *, client=None, n_workers=None, read_ahead: bool = False
    ):
        from distributed import Client

        self.read_ahead = bool(read_ahead)

        given = sum(x is not None for x in (address, client, n_workers))
        if given != 1:
            raise ValueError("give exactly one of address, client or n_workers")
        self._cluster = None
        self._scratch = None
        self._own_client = client is None
        if client is not None:
            self.client = client
        elif address is not None:
            try:
                self.client = Client(address, timeout="10s")
            except OSError as e:
                raise ConnectionError(
                    f"cannot connect to the dask scheduler at {address!r} ({e}); is "
                    "it running and reachable from here?"
                ) from None
        else:
            n = int(n_workers)
            if n < 1:
                raise ValueError(f"n_workers must be >= 1; got {n_workers}")
            import dask
            from distributed import LocalCluster

            # Scratch space of the scheduler and workers, removed on close.
            self._scratch = tempfile.mkdtemp(prefix="stemcluster-dask-")
            try:
                config = {
                    "temporary-directory": self._scratch,
                    # dask starts workers with glibc's trim threshold lowered, so
                    # that memory returns to the OS; every block would then be
                    # read into freshly faulted pages, 2-3 times slower.
                    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                    # The sums task of a block goes to the worker that kept the
                    # block (a loose restriction); work stealing would move it to
                    # an idle worker, which reads the block again while the kept
                    # copy waits in the first one. The engine submits only a few
                    # tasks per worker at a time, so there is little to balance.
                    "distributed.scheduler.work-stealing": False,
                    # The workers' statistical profiler samples the task thread's
                    # stack every 10 ms and the system monitor runs psutil twice
                    # a second, on the event loop that also moves the results:
                    # CPU taken from the tasks on a machine the workers fill.
                    "distributed.worker.profile.enabled": False,
                    "distributed.admin.system-monitor.interval": "2s",
                }
                with dask.config.set(config), _workers_ignore_ctrl_c():
                    self._cluster = LocalCluster(
                        n_workers=n,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        # loopback only, any free port: no clash with other clusters
                        dashboard_address="127.0.0.1:0",
                        local_directory=self._scratch,
                        silence_logs=logging.ERROR,
                    )
                self.client = Client(self._cluster)
            except BaseException:  # Ctrl-C during start-up included
                if getattr(self, "_cluster", None) is not None:
                    with contextlib.suppress(Exception):
                        self._cluster.close()
                self._remove_scratch()
                raise
        workers = self.client.nthreads()
        if not workers:
            self.client.wait_for_workers(1, timeout=60)
            workers = self.client.nthreads()
        self.slots = max(1, sum(workers.values()))
        self.same_machine = self._cluster is not None or all(_is_loopback(addr) for addr in workers)
        if self._cluster is not None:
            self.numba_threads = max(1, available_cpus() // len(workers))
            self.memory_scale = 1
        else:
            self.numba_threads = None
            self.memory_scale = len(workers)
        self._shared = []

    def share(self, obj):
        fut = self.client.scatter(obj, broadcast=True, hash=False)
        self._shared.append(fut)
        return fut

    keeps_on_workers = True

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def submit_to(self, where, fn, *args):
        if where is None:
            return self.submit(fn, *args)
        # a loose restriction: another worker may run it if this one is gone
        return self.client.submit(fn, *args, pure=False, workers=[where], allow_other_workers=True)

    def run_everywhere(self, fn, *args) -> None:
        self.client.run(fn, *args)

    def lanes(self) -> list:
        # the workers' threads, one worker after the other in turn
        workers = sorted(self.client.nthreads().items())
        out = []
        for k in range(max((n for _, n in workers), default=0)):
            out += [addr for addr, n in workers if n > k]
        return out or [None] * self.slots

    def wait(self, futures, timeout: float):
        from distributed import wait

        try:
            done, _ = wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return set()
        return done

    def cancel(self, futures) -> None:
        if futures:
            self.client.cancel(list(futures))

    def release(self) -> None:
        """Drop the objects shared with the workers."""
        if self._shared:
            self.client.cancel(self._shared)
            self._shared = []

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):  # e.g. the scheduler is gone
                self.release()
            if self._own_client:
                self.client.close()
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None
        finally:
            self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            # workers stopped early may still be tidying their own folders in it
            for _ in range(20):
                shutil.rmtree(self._scratch, ignore_errors=True)
                if not os.path.exists(self._scratch):
                    break
                time.sleep(0.1)
            self._scratch = None

    def describe(self) -> str:
        n = len(self.client.nthreads())
        where = "local worker processes" if self._cluster else "dask workers"
        text = f"{n} {where} ({self.slots} threads), scheduler {self.client.scheduler.address}"
        try:
            link = self.client.dashboard_link
        except Exception:  # no dashboard
            link = None
        return f"{text}, dashboard {link}" if link else text


def get_executor(
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
) -> Executor:
    """The executor for a scheduler address, a number of local workers, or threads.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running dask scheduler: tasks run on its workers.
    workers : int, optional
        Start a local cluster of this many worker processes.
    threads : int, optional
        Threads in this process (the default executor).

    Examples
    --------
    >>> with get_executor(threads=1) as ex:
    ...     ex.describe()
    '1 thread(s) in this process'
    """
    if scheduler is not None and workers is not None:
        raise ValueError("give a scheduler address or a number of workers, not both")
    if scheduler is not None:
        return DistributedExecutor(scheduler)
    if workers is not None:
        return DistributedExecutor(n_workers=workers)
    return ThreadExecutor(threads)


def _is_loopback(address: str) -> bool:
    """Whether a worker address (``tcp://host:port``) is on this machine."""
    host = str(address).split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
