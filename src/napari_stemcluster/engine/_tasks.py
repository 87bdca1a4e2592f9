"""The work of one block: read it with its halo, compute, return small results.

These functions run wherever the executor puts them: a thread of this
process or a dask.distributed worker process on another machine. They take
everything they need as (picklable) arguments and return only small arrays.
"""

from __future__ import annotations

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


def drop_kept(run: str) -> int:
    """Forget the blocks this process keeps for ``run``; returns how many.

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
    release_buffers()
    return len(keys)


def similarity_task(source, t, box, spec, raw_map=False, keep=False):
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
    seconds : (float, float)
        Time spent reading and computing.
    extras : dict
        The block's dark-field image and binned patterns when ``spec`` asks
        for them (for the regions pass).
    kept : ndarray, KeptOnWorker or None
        With ``keep``: the patterns read (over ``extended(box, spec["halo"])``),
        for the sums pass of the same block without reading it again. When
        ``keep`` is a run id (a string), the patterns stay in this process
        and a :class:`KeptOnWorker` says where.
    """
    scan = source.shape[-4:-2]
    read_ext = passes.extended(box, spec["halo"], scan)
    t0 = time.perf_counter()
    raw = source.read(t, *read_ext)
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
    return sim, mask_map, (t1 - t0, time.perf_counter() - t1), extras, kept


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
