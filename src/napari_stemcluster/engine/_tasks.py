"""The work of one block: read it with its halo, compute, return small results.

These functions run wherever the executor puts them: a thread of this
process or a dask.distributed worker process on another machine. They take
everything they need as (picklable) arguments and return only small arrays.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..core import passes
from ..io._chunks import recycle, release_buffers


class BlockSource:
    """Picklable reader of scan blocks of a 4D or 5D cube.

    Wraps a numpy array, an h5py dataset, a dask array, or any array-like
    that supports basic slicing (such as the lazy file readers of
    :mod:`napari_stemcluster.io`). Pickling an h5py dataset sends only the
    file name and the dataset path; each process opens the file itself.

    Examples
    --------
    >>> src = BlockSource(np.arange(2 * 3 * 1 * 1).reshape(2, 3, 1, 1))
    >>> src.read(None, 1, 2, 0, 2)[..., 0, 0]
    array([[3, 4]])
    """

    def __init__(self, data):
        self.data = data
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = np.dtype(data.dtype)
        self._kind = _kind(data)

    def read(self, t: int | None, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Patterns of scan rows ``r0:r1`` and columns ``c0:c1`` (of step ``t``)."""
        key = (slice(r0, r1), slice(c0, c1))
        if t is not None:
            key = (int(t), *key)
        if self._kind == "h5py":
            reader = self._chunk_reader()
            if reader is not None:  # chunks decoded on all cores
                return reader.read(key)
        block = self.data[key]
        if self._kind == "dask":
            block = block.compute(scheduler="synchronous")
        return np.ascontiguousarray(block)

    def prefetch(self, t: int | None, r0: int, r1: int, c0: int, c1: int) -> int:
        """Start reading a block from the disk in the background (a hint).

        For HDF5 files (an h5py dataset or the file readers' lazy arrays)
        the kernel is asked to read the stored bytes of the block now
        (``POSIX_FADV_WILLNEED``), so that the task which reads the block
        later finds it in the page cache instead of waiting on the disk
        while a core could compute. Returns the bytes hinted (0: nothing to
        hint, such as an in-memory array or a file this process cannot see).
        The page cache of a machine is shared, so a hint from the process
        that schedules the blocks serves worker processes on the same machine.

        Examples
        --------
        >>> BlockSource(np.zeros((2, 2, 3, 3))).prefetch(None, 0, 1, 0, 2)
        0
        """
        key = (slice(r0, r1), slice(c0, c1))
        if t is not None:
            key = (int(t), *key)
        try:
            ds = self._h5_dataset()
            if ds is None:
                return 0
            from ..io._chunks import prefetch

            return prefetch(ds, key)
        except Exception:  # only a hint: the read reports real errors
            return 0

    def can_prefetch(self) -> bool:
        """Whether :meth:`prefetch` can hint anything (an HDF5 file on disk).

        Examples
        --------
        >>> BlockSource(np.zeros((2, 2, 3, 3))).can_prefetch()
        False
        """
        try:
            return self._h5_dataset() is not None
        except Exception:
            return False

    def reads_ahead(self) -> bool:
        """Whether a block is worth reading ahead into memory (an HDF5 file).

        Reading an HDF5 dataset (through h5py or the file readers) fills one
        new array; an in-memory array would only be copied, and a dask
        array may concatenate pieces (twice the block in memory).

        Examples
        --------
        >>> BlockSource(np.zeros((2, 2, 3, 3))).reads_ahead()
        False
        """
        if self._kind == "h5py":
            return True
        from ..io._lazy import H5Array

        return isinstance(self.data, H5Array)

    def _h5_dataset(self):
        """The h5py dataset behind the source in this process, or None."""
        if self._kind == "h5py":
            return self.data
        path, name = getattr(self.data, "path", None), getattr(self.data, "dataset", None)
        if not (isinstance(path, str) and isinstance(name, str)) or not os.path.isfile(path):
            return None
        from ..io._lazy import H5Array, open_h5

        if not isinstance(self.data, H5Array):
            return None
        return open_h5(path)[name]

    def _chunk_reader(self):
        if not hasattr(self, "_reader"):
            from ..io._chunks import chunk_reader

            self._reader = chunk_reader(self.data)
        return self._reader

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_reader", None)
        if self._kind == "h5py":
            from ..io._lazy import H5Array

            f = self.data.file
            if f.driver != "sec2" or not os.path.isfile(f.filename):
                # an in-memory file (driver "core"): workers cannot open it
                raise TypeError(
                    f"the HDF5 dataset {self.data.name} is in a file held in memory "
                    f"(driver {f.driver!r}), which worker processes cannot open; "
                    "write it to disk, or run on threads"
                )

            # Sent as file name and dataset path; workers open the file through
            # the readers' per-process handle cache.
            state["data"] = H5Array(self.data.file.filename, self.data.name, self.shape, self.dtype)
            state["_kind"] = "array"
        return state


def _kind(data) -> str:
    module = type(data).__module__.split(".")[0]
    if module == "dask":
        return "dask"
    if module == "h5py":
        return "h5py"
    return "array"


@contextmanager
def _numba_threads(n: int | None):
    """Run numba kernels with ``n`` threads in this thread (None: unchanged)."""
    if not n:
        yield
        return
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(old)


#: Blocks a worker process keeps for the sums pass of the same block:
#: ``{(run, t, box): patterns}`` (a cluster's results travel, so the blocks
#: stay where they were read and the sums task is sent there).
_kept: dict = {}
_kept_lock = threading.Lock()
#: Runs whose kept blocks were dropped: a similarity task of such a run still
#: running when it ended (cancelled, or cut short by an error) keeps nothing.
_ended: deque = deque(maxlen=4096)


@dataclass(frozen=True)
class KeptOnWorker:
    """A block kept in the memory of the worker process at ``where``."""

    where: str | None
    nbytes: int


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


#: Blocks read ahead in this process for the task that will read them:
#: ``{(run, t, read_ext): Future}`` (a finished entry whose task came first
#: holds None, so that the block is not read again).
_ahead: dict = {}
_ahead_pool: cf.ThreadPoolExecutor | None = None
_ahead_pid: int | None = None


def _reader_pool() -> cf.ThreadPoolExecutor:
    """Threads that read blocks ahead (the chunks decode in the readers' pool)."""
    global _ahead_pool, _ahead_pid
    if _ahead_pool is None or _ahead_pid != os.getpid():
        _ahead_pool = cf.ThreadPoolExecutor(4, thread_name_prefix="stemcluster-ahead")
        _ahead_pid = os.getpid()
    return _ahead_pool


def read_ahead(source, run: str, t, read_ext) -> bool:
    """Start reading the block ``read_ext`` of step ``t`` into memory now.

    The task that reads that block later in this process (with the same
    ``run``) takes it instead of reading (:func:`take_read_ahead`), so a
    task slot reads its next block while it computes the current one.
    Returns False when the block's task came first, or the run has ended.

    Examples
    --------
    >>> src = BlockSource(np.arange(4).reshape(2, 2, 1, 1))
    >>> read_ahead(src, "run", None, (0, 1, 0, 2))
    True
    >>> take_read_ahead("run", None, (0, 1, 0, 2))[..., 0, 0]
    array([[0, 1]])
    >>> drop_kept("run")
    0
    """
    key = (run, t, tuple(int(v) for v in read_ext))
    with _kept_lock:
        if run in _ended or key in _ahead:
            return False
        _ahead[key] = _reader_pool().submit(source.read, t, *key[2])
    return True


def take_read_ahead(run: str | None, t, read_ext):
    """The block read ahead for ``(run, t, read_ext)``, or None (then read it).

    Waits for a read still under way; its errors are raised here, in the
    task the block belongs to. A block not read ahead yet will not be.
    """
    if run is None:
        return None
    key = (run, t, tuple(int(v) for v in read_ext))
    with _kept_lock:
        fut = _ahead.get(key)
        _ahead[key] = None  # taken, or never to be read ahead
    return None if fut is None else fut.result()


def drop_kept(run: str) -> int:
    """Forget the blocks this process keeps for ``run``; returns how many.

    Blocks read ahead for the run and not taken are dropped too (after any
    read still under way has finished, so no thread reads the file after
    the run).

    Examples
    --------
    >>> drop_kept("no such run")
    0
    """
    with _kept_lock:
        _ended.append(run)
        keys = [k for k in _kept if k[0] == run]
        for k in keys:
            del _kept[k]
        ahead = [_ahead.pop(k) for k in [k for k in _ahead if k[0] == run]]
    cf.wait([f for f in ahead if f is not None])
    release_buffers()
    return len(keys)


def similarity_task(source, t, box, spec, raw_map=False, keep=False, ahead=None):
    """The similarity pass of one block (:func:`~napari_stemcluster.core.passes.similarity_block`).

    The block is read with the halo the pass needs, so values are
    bit-identical to the unchunked computation, and errors name global scan
    positions and the time step.

    Returns
    -------
    sim : ndarray of float32, shape (h, w, 8)
    mask_map : ndarray of float32, shape (h, w), or None
        With ``raw_map``: the mean similarity of the raw (unprefiltered)
        patterns, which the real-space mask thresholds.
    seconds : (float, float, bool)
        Time spent reading (or waiting for the block read ahead) and
        computing, and whether the block had been read ahead.
    extras : dict
        The block's dark-field image and binned patterns when ``spec`` asks
        for them (for the regions pass).
    kept : ndarray, KeptOnWorker or None
        With ``keep``: the patterns read (over ``extended(box, spec["halo"])``),
        for the sums pass of the same block without reading it again. When
        ``keep`` is a run id (a string), the patterns stay in this process
        and a :class:`KeptOnWorker` says where.

    ``ahead`` is ``(run, next)``: the block may have been read ahead for
    this task under ``run`` (:func:`read_ahead`), and ``next`` (``(t,
    read_ext)`` or None) is the block of the next task this process will
    run in the same slot, read ahead while this one computes.
    """
    scan = source.shape[-4:-2]
    read_ext = passes.extended(box, spec["halo"], scan)
    run, nxt = ahead if ahead is not None else (None, None)
    t0 = time.perf_counter()
    raw = take_read_ahead(run, t, read_ext)
    was_ahead = raw is not None
    if raw is None:
        raw = source.read(t, *read_ext)
    if nxt is not None:
        read_ahead(source, run, *nxt)
    t1 = time.perf_counter()
    with _numba_threads(spec.get("numba_threads")):
        extras = {}
        sim, mask_map, _ = passes.similarity_block(
            raw, read_ext, box, spec, raw_map=raw_map, t=t, extras=extras
        )
    kept = raw if keep else None
    if not keep:
        recycle(raw)  # nothing refers to the block any more
    if isinstance(keep, str):
        with _kept_lock:
            if keep not in _ended:
                _kept[(keep, t, tuple(box))] = raw
        kept = KeptOnWorker(_worker_address(), raw.nbytes)
    return sim, mask_map, (t1 - t0, time.perf_counter() - t1, was_ahead), extras, kept


def sums_task(source, t, box, labels, spec, kept=None):
    """The sums pass of one block (:func:`~napari_stemcluster.core.passes.sums_block`).

    Returns
    -------
    ids : ndarray of int64, shape (k,)
        The labels present (sorted).
    sums : ndarray of float64, shape (k, Qx, Qy)
    seconds : (float, float)
        Time spent reading and computing.
    reused : int
        Bytes of ``kept`` used instead of reading (0: the file was read).

    ``kept`` may give the patterns the similarity pass read for this block
    (only when the sums need no halo): the file is then not read again. A
    run id (a string) looks them up among the blocks this process keeps; a
    block that is not there (the task ran on another worker) is read.
    """
    scan = source.shape[-4:-2]
    t0 = time.perf_counter()
    if isinstance(kept, str):
        with _kept_lock:
            kept = _kept.pop((kept, t, tuple(box)), None)
    if kept is not None and not spec["sums_halo"]:
        raw, read_ext = kept, passes.extended(box, spec["halo"], scan)
    else:
        read_ext = passes.extended(box, spec["sums_halo"], scan)
        raw = source.read(t, *read_ext)
    t1 = time.perf_counter()
    with _numba_threads(spec.get("numba_threads")):
        if raw is kept and read_ext != tuple(box):
            # The kept block has the similarity's halo: add it up whole with
            # the halo unlabelled rather than copy out the box (same
            # positions in the same order, so the same sums bit for bit).
            r0, r1, c0, c1 = read_ext
            wide = np.zeros((r1 - r0, c1 - c0), np.asarray(labels).dtype)
            wide[box[0] - r0 : box[1] - r0, box[2] - c0 : box[3] - c0] = labels
            ids, sums = passes.sums_block(None, read_ext, read_ext, wide, spec, data=raw)
        else:
            ids, sums = passes.sums_block(raw, read_ext, box, labels, spec)
    reused = raw.nbytes if raw is kept else 0
    recycle(raw)  # the block's last task: its memory serves the next read
    if isinstance(kept, np.ndarray) and kept is not raw:
        recycle(kept)  # kept, but the sums needed a wider read
    return ids, sums, (t1 - t0, time.perf_counter() - t1), reused


#: Kept for older imports: the block geometry lives in core.passes.
_extended = passes.extended
