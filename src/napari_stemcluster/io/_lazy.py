"""Picklable, lazily reading array-likes and the chunking rule of every reader.

The dask graphs built by the readers never hold an open file: each array-like
below stores only a path, an internal dataset path, a shape and a dtype, and
opens the file when it is read, through a small per-process cache of open
handles. Pickling one (to send it to a dask.distributed worker process) sends
those few fields; the worker opens the file itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from functools import partial
from pathlib import Path

import numpy as np

from .errors import StemFileError

#: Target size of one dask chunk. Chunks hold whole diffraction patterns and,
#: for time series, a single time step, so that napari computes only the time
#: step on screen.
CHUNK_BYTES = 32 * 2**20

#: At most this many files stay open per process.
_MAX_OPEN = 32

_lock = threading.RLock()
_h5_handles: OrderedDict = OrderedDict()
_memmaps: OrderedDict = OrderedDict()


def _file_key(path: str) -> tuple:
    """Identify one version of a file, so a rewritten file is reopened."""
    st = os.stat(path)
    return (path, st.st_ino, st.st_mtime_ns, st.st_size)


def _evict(cache: OrderedDict, path: str | None, close) -> None:
    for key in [k for k in cache if path is None or k[0] == path]:
        pid, handle = cache.pop(key)
        if pid == os.getpid():
            close(handle)


def _close_h5(handle) -> None:
    with contextlib.suppress(Exception):  # closing a broken handle
        handle.close()


def _cached(cache: OrderedDict, key: tuple, path: str, open_, close):
    """The handle of ``key`` in ``cache``, opened with ``open_()`` if missing.

    Handles inherited across ``fork`` are never reused: the cache records the
    process id that opened each handle.
    """
    pid = os.getpid()
    with _lock:
        entry = cache.get(key)
        if entry is not None and entry[0] == pid:
            cache.move_to_end(key)
            return entry[1]
        # an older version of the same file, or a handle of another process
        _evict(cache, path, close)
        handle = open_()
        cache[key] = (pid, handle)
        while len(cache) > _MAX_OPEN:
            _, (old_pid, old) = cache.popitem(last=False)
            if old_pid == pid:
                close(old)
        return handle


def _close_memmap(_mm) -> None:
    """Memory maps close when no longer referenced."""


def open_h5(path: str):
    """An open, read-only ``h5py.File`` for ``path``, cached per process."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers bitshuffle, LZ4, ... filters)

    return _cached(_h5_handles, _file_key(path), path, partial(h5py.File, path, "r"), _close_h5)


def _map_npy(path: str):
    from .numpy_file import read_npy_header

    shape, dtype, fortran, offset = read_npy_header(path, with_offset=True)
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def open_memmap(path: str, kind: str = "raw"):
    """A read-only memory map of ``path`` (``kind`` "raw" bytes or "npy"), cached."""
    if kind == "npy":
        open_ = partial(_map_npy, path)
    else:
        open_ = partial(np.memmap, path, dtype=np.uint8, mode="r")
    return _cached(_memmaps, (*_file_key(path), kind), path, open_, _close_memmap)


def close_cached_handles(path: str | os.PathLike | None = None) -> None:
    """Close the cached open files of this process (all, or those of ``path``).

    Examples
    --------
    >>> from napari_stemcluster.io import close_cached_handles
    >>> close_cached_handles()
    """
    p = None if path is None else str(Path(path).resolve())
    with _lock:
        _evict(_h5_handles, p, _close_h5)
        _evict(_memmaps, p, _close_memmap)


# --------------------------------------------------------------------------
# index helpers


def _is_fancy(k) -> bool:
    return isinstance(k, (list, np.ndarray)) and not (isinstance(k, np.ndarray) and k.ndim == 0)


def _expand_ellipsis(key: tuple, ndim: int) -> tuple:
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = ndim - (len(key) - 1)
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    return key + (slice(None),) * (ndim - len(key))


def normalize_key(key, shape: tuple[int, ...]) -> tuple[list[slice], list[int]]:
    """Turn a numpy basic index into one slice per axis plus the int axes.

    Only basic indexing (ints, slices, Ellipsis) is supported, which is what
    dask and napari use.
    """
    if not isinstance(key, tuple):
        key = (key,)
    if len([k for k in key if k is not Ellipsis]) > len(shape):
        raise IndexError(f"too many indices: {len(key)} for shape {shape}")
    key = _expand_ellipsis(key, len(shape))
    slices, int_axes = [], []
    for ax, (k, n) in enumerate(zip(key, shape, strict=True)):
        if isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} out of range for axis of size {n}")
            slices.append(slice(i, i + 1, 1))
            int_axes.append(ax)
        elif isinstance(k, slice):
            slices.append(slice(*k.indices(n)))
        else:
            raise TypeError(f"only integer and slice indexing is supported; got {type(k).__name__}")
    return slices, int_axes


def _finish(out: np.ndarray, int_axes: list[int]) -> np.ndarray:
    return out.squeeze(axis=tuple(int_axes)) if int_axes else out


# --------------------------------------------------------------------------
# array-likes


def native_dtype(dtype) -> np.dtype:
    """The dtype a file's values are handed on in: native byte order
    (``>u2`` -> ``uint16``), and float16 widened to float32 (a storage
    format only: no kernel computes in half precision)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def _native(out, dtype: np.dtype) -> np.ndarray:
    out = np.asarray(out)
    return out if out.dtype == dtype else out.astype(dtype)


class LazyArray:
    """Base of the picklable array-likes: shape, dtype, a read counter.

    ``n_reads`` counts the calls of ``__getitem__`` in this process (tests use
    it to check that opening a file reads no frames).
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    def __init__(self, shape, dtype):
        self.shape = tuple(int(s) for s in shape)
        # values come out in native byte order whatever the file stores
        # (big-endian detectors, files written on other machines)
        self.dtype = native_dtype(dtype)
        self.n_reads = 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _token(self) -> tuple:
        raise NotImplementedError

    def _get(self, key: tuple) -> np.ndarray:
        """Read a basic (int/slice) selection."""
        raise NotImplementedError

    def __getitem__(self, key) -> np.ndarray:
        self.n_reads += 1
        key = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, slice) and (k.step or 1) < 0 for k in key):
            # files read forwards only: turn reversed slices into index arrays
            key = _expand_ellipsis(key, self.ndim)
            key = tuple(
                np.arange(*k.indices(n)) if isinstance(k, slice) and (k.step or 1) < 0 else k
                for k, n in zip(key, self.shape, strict=False)
            )
        if not any(_is_fancy(k) for k in key):
            return _native(self._get(key), self.dtype)
        # integer-array (or boolean) indices, which dask may pass: read the
        # covering range, then take (orthogonal indexing, as dask does)
        key = _expand_ellipsis(key, self.ndim)
        basic, takes = [], []
        for k, n in zip(key, self.shape, strict=False):
            if _is_fancy(k):
                idx = np.asarray(k)
                idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
                idx = np.where(idx < 0, idx + n, idx)
                if idx.size and (idx.min() < 0 or idx.max() >= n):
                    raise IndexError(f"index out of range for axis of size {n}")
                lo = int(idx.min()) if idx.size else 0
                hi = int(idx.max()) + 1 if idx.size else 0
                basic.append(slice(lo, hi))
                takes.append(idx - lo)
            else:
                basic.append(k)
                takes.append(None if isinstance(k, slice) else "drop")
        out = self._get(tuple(basic))
        axis = 0
        for t in takes:
            if isinstance(t, str):
                continue
            if t is not None:
                out = np.take(out, t, axis=axis)
            axis += 1
        return _native(out, self.dtype)

    def __dask_tokenize__(self):
        return (type(self).__name__, *self._token())

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._token()[:2]} shape={self.shape} dtype={self.dtype}"


def _step_one(key: tuple) -> bool:
    """True when ``key`` holds only ints and slices of step 1."""
    return all(
        isinstance(k, (int, np.integer)) or (isinstance(k, slice) and k.step in (None, 1))
        for k in key
    )


#: Largest range read to serve a strided selection (larger ones go to h5py).
_MAX_COVER_BYTES = 64 * 2**20


def _covering(key: tuple, shape, itemsize: int):
    """``(range key, subsample key)`` for a key of ints and forward slices
    whose covering range is at most :data:`_MAX_COVER_BYTES`, else None."""
    if any(not isinstance(k, (int, np.integer, slice)) for k in key):
        return None
    key = key + (slice(None),) * (len(shape) - len(key))
    if len(key) != len(shape):
        return None
    cover, sub, n = [], [], itemsize
    for k, size in zip(key, shape, strict=True):
        if isinstance(k, slice):
            a, b, step = k.indices(size)
            if step < 1:
                return None
            b = max(a, b)
            cover.append(slice(a, b))
            sub.append(slice(0, b - a, step))
            n *= b - a
        else:
            cover.append(k)
    return (tuple(cover), tuple(sub)) if n <= _MAX_COVER_BYTES else None


class H5Array(LazyArray):
    """One HDF5 dataset, read on demand through the per-process handle cache.

    Parameters
    ----------
    path : str
        The HDF5 file.
    dataset : str
        Path of the dataset inside the file.
    shape, dtype
        Shape and dtype of the dataset (known from opening its metadata).
    """

    def __init__(self, path: str, dataset: str, shape, dtype):
        super().__init__(shape, dtype)
        self.path = str(path)
        self.dataset = dataset

    def _token(self) -> tuple:
        return (self.path, self.dataset, *_file_key(self.path)[1:])

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_reader", None)  # holds an open dataset of this process
        return state

    def _chunks(self, f):
        """The parallel chunk reader of the dataset in the open file ``f``, or None."""
        cached = getattr(self, "_reader", None)
        if cached is None or cached[0] is not f:
            from ._chunks import chunk_reader

            cached = self._reader = (f, chunk_reader(f[self.dataset]))
        return cached[1]

    def _get(self, key: tuple) -> np.ndarray:
        try:
            f = open_h5(self.path)
            reader = self._chunks(f)
            if reader is not None:
                # chunks read and decoded on all cores (same values as h5py)
                if _step_one(key):
                    return reader.read(key)
                cover = _covering(key, self.shape, self.dtype.itemsize)
                if cover is not None:
                    # HDF5's strided selections are slow (seconds for a few
                    # rows of patterns): read the range, then subsample
                    return reader.read(cover[0])[cover[1]]
            ds = f[self.dataset]
            out = ds[key]
        except FileNotFoundError as e:
            raise StemFileError(
                f"{self.path}: file disappeared while reading dataset {self.dataset}"
            ) from e
        except (OSError, KeyError, RuntimeError) as e:
            raise StemFileError(
                f"{self.path}: reading dataset {self.dataset} failed ({e}); the "
                "file may be truncated or corrupt, or need a compression filter "
                "that is not installed"
            ) from e
        return np.asarray(out)


class NpyArray(LazyArray):
    """A ``.npy`` file, memory-mapped (never unpickled) on demand."""

    def __init__(self, path: str, shape, dtype):
        super().__init__(shape, dtype)
        self.path = str(path)

    def _token(self) -> tuple:
        return (self.path, *_file_key(self.path)[1:])

    def _get(self, key: tuple) -> np.ndarray:
        mm = open_memmap(self.path, "npy")
        # copy: never hand memory-mapped views to computations
        return np.array(mm[key])


class ConcatFrames(LazyArray):
    """Frame stacks ``(n_i, Qx, Qy)`` of several array-likes, one after another.

    Used for detectors that split one acquisition over several data files.
    """

    def __init__(self, parts: list[LazyArray]):
        frame_shape = parts[0].shape[1:]
        n = sum(p.shape[0] for p in parts)
        super().__init__((n, *frame_shape), parts[0].dtype)
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [p.shape[0] for p in parts])

    def _token(self) -> tuple:
        return tuple(p.__dask_tokenize__() for p in self.parts)

    def _get(self, key: tuple) -> np.ndarray:
        slices, int_axes = normalize_key(key, self.shape)
        fs = slices[0]
        lo, hi, step = fs.start, fs.stop, fs.step
        qkey = tuple(slices[1:])
        if step != 1 or hi <= lo:
            idx = np.arange(lo, hi, step)
            blocks = [self._read_range(i, i + 1, qkey) for i in idx]
            shape = (
                0,
                *[len(range(*s.indices(n))) for s, n in zip(qkey, self.shape[1:], strict=True)],
            )
            out = np.concatenate(blocks) if blocks else np.empty(shape, self.dtype)
        else:
            out = self._read_range(lo, hi, qkey)
        return _finish(out, int_axes)

    def _read_range(self, lo: int, hi: int, qkey: tuple) -> np.ndarray:
        blocks = []
        for i, part in enumerate(self.parts):
            a, b = max(lo, self.starts[i]), min(hi, self.starts[i + 1])
            if a < b:
                off = self.starts[i]
                blocks.append(part[(slice(a - off, b - off), *qkey)])
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


class FrameCube(LazyArray):
    """A cube ``scan_shape + detector_shape`` over a flat sequence of frames.

    ``base`` is any array-like whose leading axes index frames in scan
    order (row-major) and whose last two axes are the detector; its frames
    are given the new ``scan_shape`` (2 axes for a 4D cube, 3 for a time
    series). Reads are exact: only the requested frames are read, one
    contiguous run of frames at a time.
    """

    def __init__(self, base: LazyArray, scan_shape: tuple[int, ...]):
        self.base = base
        self.scan_shape = tuple(int(s) for s in scan_shape)
        self.base_scan = tuple(base.shape[:-2])
        n = int(np.prod(self.base_scan, dtype=np.int64))
        if int(np.prod(self.scan_shape, dtype=np.int64)) != n:
            raise ValueError(f"scan shape {self.scan_shape} does not hold {n} frames")
        super().__init__(self.scan_shape + tuple(base.shape[-2:]), base.dtype)

    def _token(self) -> tuple:
        return (self.base.__dask_tokenize__(), self.scan_shape)

    def _get(self, key: tuple) -> np.ndarray:
        slices, int_axes = normalize_key(key, self.shape)
        nscan = len(self.scan_shape)
        ranges = [np.arange(s.start, s.stop, s.step) for s in slices[:nscan]]
        qkey = tuple(slices[nscan:])
        qshape = tuple(
            len(range(*s.indices(n))) for s, n in zip(qkey, self.shape[nscan:], strict=True)
        )
        sel_shape = tuple(len(r) for r in ranges)
        if 0 in sel_shape:
            return _finish(np.empty(sel_shape + qshape, self.dtype), int_axes)
        grids = np.meshgrid(*ranges, indexing="ij")
        flat = np.ravel_multi_index(grids, self.scan_shape).ravel()
        # split into contiguous runs of frames, each read in one go
        breaks = np.flatnonzero(np.diff(flat) != 1) + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [flat.size]))
        blocks = [
            self._read_frames(int(flat[a]), int(flat[b - 1]) + 1, qkey)
            for a, b in zip(starts, stops, strict=True)
        ]
        out = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        return _finish(out.reshape(sel_shape + qshape), int_axes)

    def _read_frames(self, lo: int, hi: int, qkey: tuple) -> np.ndarray:
        """Frames ``lo:hi`` (flat scan order) as ``(hi - lo, qx, qy)``."""
        if len(self.base_scan) == 1:
            return self.base[(slice(lo, hi), *qkey)]
        # a base with several scan axes: read along its last scan axis
        blocks = []
        inner = self.base_scan[-1]
        while lo < hi:
            idx = np.unravel_index(lo, self.base_scan)
            run = min(hi - lo, inner - int(idx[-1]))
            key = (
                *(int(i) for i in idx[:-1]),
                slice(int(idx[-1]), int(idx[-1]) + run),
                *qkey,
            )
            blocks.append(self.base[key])
            lo += run
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


# --------------------------------------------------------------------------
# chunks and dask


def choose_chunks(
    shape: tuple[int, ...],
    itemsize: int,
    file_chunks: tuple[int, ...] | None = None,
    target_bytes: int = CHUNK_BYTES,
) -> tuple[int, ...]:
    """Dask chunk shape: whole patterns, one time step, aligned to the file.

    Scan axes are grown from the innermost outwards in multiples of the file's
    chunk along that axis until a chunk is about ``target_bytes``; the
    detector axes are always whole; the time axis of a 5D cube keeps the
    file's chunk (1 for unchunked files).

    Examples
    --------
    >>> choose_chunks((10, 64, 64, 128, 128), 2)
    (1, 16, 64, 128, 128)
    >>> choose_chunks((64, 64, 128, 128), 2, file_chunks=(4, 4, 128, 128))
    (16, 64, 128, 128)
    """
    shape = tuple(int(s) for s in shape)
    nscan = len(shape) - 2
    if file_chunks is None:
        base = [1] * nscan
    else:
        base = [max(1, min(int(c), n)) for c, n in zip(file_chunks, shape, strict=False)]
        base = base[:nscan]
    pattern_bytes = max(1, shape[-2] * shape[-1] * itemsize)
    budget = max(1, target_bytes // pattern_bytes)
    chunks = list(base)
    first_growable = 1 if nscan == 3 else 0
    for ax in range(nscan - 1, first_growable - 1, -1):
        others = int(np.prod([chunks[a] for a in range(nscan) if a != ax]))
        room = max(1, budget // max(others, 1))
        if room >= shape[ax]:
            chunks[ax] = shape[ax]
            continue
        chunks[ax] = min(shape[ax], max(base[ax], (room // base[ax]) * base[ax]))
        break
    return (*chunks, shape[-2], shape[-1])


def as_dask(source: LazyArray, chunks: tuple[int, ...], name: str):
    """Wrap a picklable array-like in a dask array without reading from it."""
    import dask.array as da

    return da.from_array(
        source,
        chunks=chunks,
        name=name,
        lock=False,
        asarray=False,
        fancy=True,  # lets dask pass sub-chunk selections (one pattern) to the file
        inline_array=False,
        meta=np.empty((0,) * len(source.shape), dtype=source.dtype),
    )
