"""Direct reads of HDF5 chunks, decoded on all cores.

h5py reads a selection one chunk after the other under its global lock, and
decompresses each chunk on that one thread: a Bitshuffle + LZ4 file is read
at the speed of one core. :class:`ChunkReader` finds the stored bytes of the
chunks of a selection itself (the file is memory-mapped; HDF5 only reports
where each chunk lies) and decodes them in a thread pool with the filters'
own C code (the Bitshuffle library that ships with hdf5plugin, called
through ctypes, and zlib), which runs without the GIL; so chunks are read
and decoded on every core. Bitshuffle-LZ4 chunks, the usual detector
format, are decoded straight into the output where the selection takes
whole runs of LZ4 blocks (whole patterns), saving a copy of every byte.

Only what is common on 4D-STEM detectors is decoded here: no filter, gzip,
shuffle and Bitshuffle (without compression or with LZ4). For any other
filter, a contiguous or virtual dataset, or a chunk that skipped a filter,
:func:`chunk_reader` returns None or the reader falls back to h5py for that
chunk, so results are always those of h5py.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import threading
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: HDF5 filter ids decoded here.
GZIP, SHUFFLE, BITSHUFFLE = 1, 2, 32008

#: Granularity of memory mappings.
_PAGE = mmap.PAGESIZE

#: Bitshuffle's compression codes (cd_values[4]).
_BSHUF_NONE, _BSHUF_LZ4 = 0, 2

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_bshuf = None


def _decode_pool() -> ThreadPoolExecutor:
    """One pool of decoding threads per process (as many as CPUs)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not on Linux
                cpus = os.cpu_count() or 1
            _pool = ThreadPoolExecutor(max(1, cpus), thread_name_prefix="stemcluster-decode")
            _pool_pid = os.getpid()
        return _pool


class _Buffers:
    """Output buffers of large reads, given back when their block is done.

    A fresh array of hundreds of MiB costs the kernel a page fault and a
    zeroed page for every 4 KiB or 2 MiB of it when it is first written:
    for a decoded Bitshuffle-LZ4 block that is as much CPU as the decoding.
    The engine gives a block back (:func:`recycle`) when its last task is
    done; the next read of about the same size reuses the memory. Only
    buffers made here are taken back, at most ``limit`` and ``max_bytes``
    (but always the last one), and :func:`release` frees them (at the end
    of a run).
    """

    #: Reads smaller than this are allocated as usual.
    MIN_BYTES = 16 * 2**20

    def __init__(self, limit: int, max_bytes: int = 2**30):
        self.limit = limit
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []
        self._made: dict[int, weakref.ref] = {}

    def empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if n < self.MIN_BYTES:
            return np.empty(shape, dtype)
        buf = None
        with self._lock:
            fits = [b for b in self._free if n <= b.size <= n + n // 4]
            if fits:
                buf = min(fits, key=lambda b: b.size)
                self._free = [b for b in self._free if b is not buf]
        if buf is None:
            buf = np.empty(n, np.uint8)
            with self._lock:
                self._made = {k: r for k, r in self._made.items() if r() is not None}
                self._made[id(buf)] = weakref.ref(buf)
        return buf[:n].view(dtype).reshape(shape)

    def recycle(self, arr) -> bool:
        owner = arr
        while isinstance(getattr(owner, "base", None), np.ndarray):
            owner = owner.base
        with self._lock:
            ref = self._made.get(id(owner))
            if ref is None or ref() is not owner or any(b is owner for b in self._free):
                return False
            self._free.append(owner)
            del self._free[: -self.limit]
            while len(self._free) > 1 and sum(b.size for b in self._free) > self.max_bytes:
                del self._free[0]  # the oldest first
        return True

    def release(self) -> None:
        with self._lock:
            self._free = []


#: A few blocks (256 MiB at most each): what the next reads of a run take.
_buffers = _Buffers(limit=4)


def recycle(arr) -> bool:
    """Give back the memory of a block read here, once nothing uses it.

    Returns True when ``arr`` was made by a read of this module (and is
    kept for the next read of about its size). The caller promises that
    ``arr`` and every view of it are never read or written again.

    Examples
    --------
    >>> recycle(np.zeros(3))
    False
    """
    return _buffers.recycle(arr)


def release_buffers() -> None:
    """Free the buffers kept for reuse (:func:`recycle`).

    Examples
    --------
    >>> release_buffers()
    """
    _buffers.release()


def _bitshuffle_lib():
    """The Bitshuffle functions of hdf5plugin's filter library, or None."""
    global _bshuf
    if _bshuf is None:
        try:
            import hdf5plugin

            lib = ctypes.CDLL(os.path.join(hdf5plugin.PLUGIN_PATH, "libh5bshuf.so"))
            for name in ("bshuf_decompress_lz4", "bshuf_bitunshuffle"):
                fn = getattr(lib, name)
                fn.restype = ctypes.c_int64
                fn.argtypes = [
                    ctypes.c_void_p,
                    ctypes.c_void_p,
                    ctypes.c_size_t,
                    ctypes.c_size_t,
                    ctypes.c_size_t,
                ]
            _bshuf = lib
        except (ImportError, OSError, AttributeError):
            _bshuf = False
    return _bshuf or None


def _filters(ds) -> list[tuple[int, tuple[int, ...]]] | None:
    """``[(filter id, cd_values)]`` of ``ds`` in write order, or None if one is
    not decoded here."""
    plist = ds.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _flags, values, _name = plist.get_filter(i)
        values = tuple(int(v) for v in values)
        if code == BITSHUFFLE:
            comp = values[4] if len(values) > 4 else _BSHUF_NONE
            if comp not in (_BSHUF_NONE, _BSHUF_LZ4) or _bitshuffle_lib() is None:
                return None
        elif code not in (GZIP, SHUFFLE):
            return None
        out.append((code, values))
    return out


def chunk_reader(ds) -> ChunkReader | None:
    """A :class:`ChunkReader` for the h5py dataset ``ds``, or None when h5py
    must read it (contiguous, virtual or external storage, or a filter not
    decoded here).

    Examples
    --------
    >>> import h5py, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.h5")
    >>> with h5py.File(path, "w") as f:
    ...     d = f.create_dataset("d", data=np.arange(24).reshape(4, 6), chunks=(3, 4))
    ...     chunk_reader(d).read((slice(1, 4), slice(2, 6)))
    array([[ 8,  9, 10, 11],
           [14, 15, 16, 17],
           [20, 21, 22, 23]])
    """
    import h5py

    if not isinstance(ds, h5py.Dataset) or ds.chunks is None or ds.is_virtual:
        return None
    if ds.dtype.kind not in "uif" or ds.external:
        return None
    filters = _filters(ds)
    if filters is None:
        return None
    return ChunkReader(ds, filters)


class ChunkReader:
    """Reads selections of a chunked HDF5 dataset chunk by chunk, in parallel.

    Use :func:`chunk_reader` to make one. The file is read through its own
    descriptor (opened lazily, per process) at the chunk addresses HDF5
    reports, after checking once that those bytes are what HDF5's direct
    chunk read gives; otherwise every chunk is read with h5py's direct
    chunk read (still decoded in parallel).
    """

    def __init__(self, ds, filters):
        self.ds = ds
        self.filters = filters
        self.chunks = tuple(int(c) for c in ds.chunks)
        self.shape = tuple(int(s) for s in ds.shape)
        self.file_dtype = ds.dtype
        self.dtype = self.file_dtype.newbyteorder("=")
        self.chunk_nbytes = int(np.prod(self.chunks)) * self.file_dtype.itemsize
        self._mm = None  # the file, memory-mapped read-only
        self._mapped = None  # whether the mapping is used (checked once)
        self._lock = threading.Lock()
        self._local = threading.local()
        # Bitshuffle-LZ4 chunks in native byte order decode into place.
        self._lz4_direct = (
            len(filters) == 1
            and filters[0][0] == BITSHUFFLE
            and len(filters[0][1]) > 4
            and filters[0][1][4] == _BSHUF_LZ4
            and self.file_dtype.isnative
        )
        # Unfiltered chunks in native byte order are read straight into
        # place with pread: the kernel copies from the page cache into the
        # output, with none of a mapping's page faults and unmapping.
        self._pread = not filters and self.file_dtype.isnative and hasattr(os, "preadv")
        self._fd = None  # (pid, descriptor) of the file, for pread

    # ------------------------------------------------------------------
    def read(self, key) -> np.ndarray:
        """The selection ``key`` (ints and step-1 slices), in native byte order."""
        sel, squeeze = self._normalize(key)
        out = _buffers.empty(tuple(b - a for a, b in sel), self.dtype)
        if out.size == 0:
            return out.squeeze(axis=squeeze) if squeeze else out
        grids = [range(a // c * c, b, c) for (a, b), c in zip(sel, self.chunks, strict=True)]
        offsets = [()]
        for g in grids:
            offsets = [(*o, x) for o in offsets for x in g]
        pool = _decode_pool()
        futures = [pool.submit(self._fill, off, sel, out) for off in offsets]
        errors = []
        for f in futures:  # wait for all, so none writes into out after return
            try:
                f.result()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]
        return out.squeeze(axis=squeeze) if squeeze else out

    def prefetch(self, key) -> int:
        """Ask the kernel to start reading the stored chunks of ``key`` now.

        Returns the number of file bytes hinted (0 when the chunks are not
        read through the file's own mapping). The reads run in the
        background (``POSIX_FADV_WILLNEED``), so a later :meth:`read` of the
        same selection finds them in the page cache instead of waiting on
        the disk chunk by chunk.
        """
        if not hasattr(os, "posix_fadvise"):  # pragma: no cover - not on Linux
            return 0
        sel, _ = self._normalize(key)
        if any(b <= a for a, b in sel):
            return 0
        grids = [range(a // c * c, b, c) for (a, b), c in zip(sel, self.chunks, strict=True)]
        offsets = [()]
        for g in grids:
            offsets = [(*o, x) for o in offsets for x in g]
        spans = []
        with self._lock:
            for off in offsets:
                info = self.ds.id.get_chunk_info_by_coord(off)
                if info.byte_offset is None or info.filter_mask != 0:
                    continue
                if self._mapped is None:
                    self._check_map(off, info.byte_offset, info.size)
                if not self._mapped:
                    return 0
                spans.append((info.byte_offset, info.size))
        return willneed(self.ds.file.filename, spans)

    def _normalize(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (len(self.shape) - len(key))
        sel, squeeze = [], []
        for ax, (k, n) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(k, (int, np.integer)):
                i = int(k) + n if k < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {int(k)} out of range for axis of size {n}")
                sel.append((i, i + 1))
                squeeze.append(ax)
            elif isinstance(k, slice) and k.step in (None, 1):
                a, b, _ = k.indices(n)
                sel.append((a, max(a, b)))
            else:
                raise TypeError(f"only ints and step-1 slices are read by chunks; got {k!r}")
        return sel, tuple(squeeze)

    def _fill(self, off, sel, out) -> None:
        """Decode the chunk at ``off`` and copy its part of ``sel`` into ``out``."""
        src = tuple(
            slice(max(a, o) - o, min(b, o + c) - o)
            for (a, b), o, c in zip(sel, off, self.chunks, strict=True)
        )
        dst = tuple(
            slice(max(a, o) - a, min(b, o + c) - a)
            for (a, b), o, c in zip(sel, off, self.chunks, strict=True)
        )
        if self._lz4_direct and self._fill_direct(off, src, dst, out):
            return
        if self._pread and self._fill_pread(off, src, dst, out):
            return
        chunk, span = self._chunk(off)
        out[dst] = chunk[src]
        if span is not None:
            self._unmap(*span)

    def _fill_direct(self, off, src, dst, out) -> bool:
        """Decode a Bitshuffle-LZ4 chunk straight into ``out`` (no copy).

        A chunk's part of a selection is a few runs that are contiguous both
        in the chunk and in ``out`` (whole trailing dimensions: e.g. the
        patterns of one scan row). LZ4 blocks are independent, so each run
        whose start and length are whole blocks is decoded by the library
        into its place in ``out``; runs before it that are not wanted are
        decoded into this thread's buffer and dropped. Returns False (and
        writes nothing) when the layout does not allow it: the caller then
        decodes the whole chunk and copies its part.
        """
        starts, run = self._runs(src, dst, out)
        stored = self._stored(off)
        if stored is None:
            return False
        raw, span = stored
        try:
            return self._decode_runs(raw, starts, run, out)
        finally:
            if span is not None:
                self._unmap(*span)

    def _runs(self, src, dst, out):
        """The runs of the chunk part ``src`` that are contiguous in the chunk
        and in ``out`` (at ``dst``): ``([(element offset in the chunk,
        element offset in out)], elements per run)``."""
        chunks = self.chunks
        # k: the first dimension from which the chunk's runs are contiguous
        # in out (every later dimension whole in the chunk and in out).
        k = len(chunks) - 1
        while k > 0 and src[k] == slice(0, chunks[k]) and out.shape[k] == chunks[k]:
            k -= 1
        inner = int(np.prod(chunks[k + 1 :], dtype=np.int64))
        run = (src[k].stop - src[k].start) * inner  # elements per run
        lead = [range(s.start, s.stop) for s in src[:k]]
        starts = []  # (element offset in the chunk, element offset in out)
        for idx in np.ndindex(*(len(r) for r in lead)):
            pos = [lead[i][v] for i, v in enumerate(idx)]
            c = np.ravel_multi_index((*pos, src[k].start), chunks[: k + 1]) * inner
            o = [dst[i].start + v for i, v in enumerate(idx)]
            o = np.ravel_multi_index((*o, dst[k].start), out.shape[: k + 1])
            starts.append((int(c), int(o) * int(np.prod(out.shape[k + 1 :], dtype=np.int64))))
        return starts, run

    def _fill_pread(self, off, src, dst, out) -> bool:
        """Read the runs of an unfiltered chunk straight into ``out`` (pread).

        Runs that follow each other in the file are read by one call
        (``preadv`` into their places in ``out``). Returns False (nothing
        written) when the chunk is not read through the file's own
        descriptor: the caller then reads it as any other chunk.
        """
        with self._lock:  # h5py's calls are serialised anyway
            info = self.ds.id.get_chunk_info_by_coord(off)
            addr, size = info.byte_offset, info.size
            if addr is None or info.filter_mask != 0 or size != self.chunk_nbytes:
                return False
            if self._mapped is None:
                self._check_map(off, addr, size)
            if not self._mapped:
                return False
            fd = self._file_descriptor()
        starts, run = self._runs(src, dst, out)
        item = self.file_dtype.itemsize
        flat = out.reshape(-1)
        groups = []  # [file offset, [buffers]] of runs adjacent in the file
        for c, o in starts:
            piece = flat[o : o + run].view(np.uint8)
            at = addr + c * item
            if groups and groups[-1][0] + groups[-1][1] == at and len(groups[-1][2]) < 512:
                groups[-1][1] += piece.size
                groups[-1][2].append(piece)
            else:
                groups.append([at, piece.size, [piece]])
        for at, nbytes, pieces in groups:
            done = os.preadv(fd, pieces, at)
            while done < nbytes:  # a short read: continue where it stopped
                rest, skip = [], done
                for piece in pieces:
                    if skip >= piece.size:
                        skip -= piece.size
                        continue
                    rest.append(piece[skip:])
                    skip = 0
                got = os.preadv(fd, rest, at + done)
                if got <= 0:
                    raise OSError(
                        f"{self.ds.file.filename}: a chunk of {self.ds.name} lies past the "
                        "end of the file; the file is truncated"
                    )
                done += got
        return True

    def _file_descriptor(self) -> int:
        """This process's read-only descriptor of the file (closed with the reader)."""
        pid = os.getpid()
        if self._fd is None or self._fd[0] != pid:
            fd = os.open(self.ds.file.filename, os.O_RDONLY)
            self._fd = (pid, fd)
            weakref.finalize(self, _close_fd, pid, fd)
        return self._fd[1]

    def _decode_runs(self, raw, starts, run, out) -> bool:
        """Decode the runs ``starts`` (chunk, out element offsets) of ``run``
        elements of the stored Bitshuffle-LZ4 chunk ``raw`` into ``out``;
        False (nothing written) when they are not whole LZ4 blocks."""
        item = self.file_dtype.itemsize
        if raw.size < 12:
            return False
        total = int.from_bytes(bytes(raw[:8]), "big")
        block = int.from_bytes(bytes(raw[8:12]), "big") // item
        if total != self.chunk_nbytes or block <= 0 or run % block:
            return False
        if any(c % block for c, _ in starts):
            return False
        fn = _bitshuffle_lib().bshuf_decompress_lz4
        base = raw.ctypes.data + 12
        end = raw.ctypes.data + raw.size
        at = 0  # element of the chunk the stream is at
        pos = base
        dest = out.ctypes.data
        try:
            for c, o in starts:
                if c > at:  # skip unwanted blocks: decode them into the scratch buffer
                    scratch = self._buffer((c - at) * item)
                    used = fn(pos, scratch.ctypes.data, c - at, item, block)
                    if used < 0:
                        raise OSError(used)
                    pos += used
                    at = c
                if pos >= end:
                    raise OSError(-1)
                used = fn(pos, dest + o * item, run, item, block)
                if used < 0 or pos + used > end:
                    raise OSError(used)
                pos += used
                at = c + run
        except OSError as e:
            raise OSError(
                f"{self.ds.file.filename}: a chunk of {self.ds.name} is not valid "
                f"Bitshuffle-LZ4 data (error {e.args[0]})"
            ) from None
        return True

    def _unmap(self, addr: int, size: int) -> None:
        """Drop this process's mapping of the chunk's pages once copied out.

        The pages stay in the page cache (a later read maps them again);
        without this the resident size of a reader grows by every byte of
        the file it has read, however small its blocks.
        """
        mm = getattr(self._mm, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        lo = addr // _PAGE * _PAGE
        hi = min(len(mm), -(-(addr + size) // _PAGE) * _PAGE)
        if hi > lo:
            with contextlib.suppress(OSError, ValueError):  # only a hint
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def _chunk(self, off) -> tuple[np.ndarray, tuple[int, int] | None]:
        """The whole chunk at ``off`` (full chunk shape, file byte order), and
        where it lies in the mapped file (None if not read through the map).

        May be a view of this thread's decoding buffer: copy it out before
        the next call in the same thread.
        """
        stored = self._stored(off)
        if stored is None:
            # never written (fill value) or a filter skipped: h5py knows
            shape = zip(off, self.chunks, self.shape, strict=True)
            region = tuple(slice(o, min(o + c, n)) for o, c, n in shape)
            with self._lock:  # h5py's calls are serialised anyway
                part = np.asarray(self.ds[region])
            full = np.zeros(self.chunks, self.file_dtype)
            full[tuple(slice(0, s) for s in part.shape)] = part
            return full, None
        raw, span = stored
        return self._decode(raw), span

    def _stored(self, off) -> tuple[np.ndarray, tuple[int, int] | None] | None:
        """The stored (filtered) bytes of the chunk at ``off``, and where they
        lie in the mapped file (None if not read through the map).

        None when the chunk is not stored filtered (never written, or a
        filter skipped). A mapped chunk is a view of the page cache (read it
        without a copy, then :meth:`_unmap` its span).
        """
        with self._lock:  # h5py's calls are serialised anyway
            info = self.ds.id.get_chunk_info_by_coord(off)
            addr, size = info.byte_offset, info.size
            if addr is None or info.filter_mask != 0:
                return None
            if self._mapped is None:
                self._check_map(off, addr, size)
            if not self._mapped:
                return np.frombuffer(self.ds.id.read_direct_chunk(off)[1], np.uint8), None
        mm = self._mm
        if addr + size > mm.size:
            with self._lock:  # the file grew since it was mapped (being written)
                self._mm = mm = np.memmap(self.ds.file.filename, np.uint8, "r")
            if addr + size > mm.size:
                raise OSError(
                    f"{self.ds.file.filename}: a chunk of {self.ds.name} lies past the "
                    "end of the file; the file is truncated"
                )
        return mm[addr : addr + size], (addr, size)

    def _check_map(self, off, addr, size) -> None:
        """Map the file only if the mapping gives HDF5's bytes (plain file driver)."""
        ok = False
        try:
            if self.ds.file.driver == "sec2" and self.ds.file.userblock_size == 0:
                mm = np.memmap(self.ds.file.filename, np.uint8, "r")
                want = bytes(self.ds.id.read_direct_chunk(off)[1])
                ok = addr + size <= mm.size and bytes(mm[addr : addr + size]) == want
                if ok:
                    self._mm = mm
        except (OSError, ValueError):
            ok = False
        self._mapped = ok

    def _buffer(self, n: int) -> np.ndarray:
        """This thread's reusable decoding buffer of ``n`` bytes (no page
        faults on fresh memory for every chunk)."""
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < n:
            buf = self._local.buf = np.empty(n, np.uint8)
        return buf[:n]

    def _decode(self, data: np.ndarray) -> np.ndarray:
        for code, values in reversed(self.filters):
            if code == GZIP:
                try:
                    data = np.frombuffer(zlib.decompress(data), np.uint8)
                except zlib.error as e:
                    raise OSError(
                        f"{self.ds.file.filename}: a chunk of {self.ds.name} is not valid "
                        f"gzip data ({e})"
                    ) from None
            elif code == SHUFFLE:
                data = _unshuffle(data, self.file_dtype.itemsize)
            else:
                data = _unbitshuffle(
                    data, values, self.file_dtype.itemsize, self.chunk_nbytes, self._buffer
                )
        if data.size != self.chunk_nbytes:
            raise OSError(
                f"{self.ds.file.filename}: a chunk of {self.ds.name} decodes to "
                f"{data.size} bytes, expected {self.chunk_nbytes}"
            )
        return data.view(self.file_dtype).reshape(self.chunks)


def _close_fd(pid: int, fd: int) -> None:
    if os.getpid() == pid:
        with contextlib.suppress(OSError):
            os.close(fd)


def prefetch(ds, key) -> int:
    """Hint the kernel to read the stored bytes of ``ds[key]`` ahead.

    ``key`` holds ints and step-1 slices. Chunked datasets decoded by
    :class:`ChunkReader` hint their chunks; contiguous datasets the byte
    ranges of the selection (one per run of whole trailing axes). Anything
    else (virtual, external or compact storage, another file driver) hints
    nothing. Returns the bytes hinted.

    Examples
    --------
    >>> import h5py, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "p.h5")
    >>> with h5py.File(path, "w") as f:
    ...     d = f.create_dataset("d", data=np.zeros((4, 6), np.uint16), chunks=(2, 6))
    ...     prefetch(d, (slice(0, 3), slice(0, 6))) in (0, 48)
    True
    """
    reader = _prefetch_reader(ds)
    if reader is not None:
        return reader.prefetch(key)
    if ds.chunks is not None or ds.is_virtual or ds.external:
        return 0
    if ds.file.driver != "sec2" or ds.file.userblock_size != 0:
        return 0
    start = ds.id.get_offset()
    if start is None:  # nothing written yet
        return 0
    spans = contiguous_spans(ds.shape, ds.dtype.itemsize, key)
    return willneed(ds.file.filename, [(start + o, n) for o, n in spans])


#: Chunk readers made for prefetching, per open dataset (a few at most).
_prefetch_readers: dict = {}


def _prefetch_reader(ds):
    key = (ds.file.filename, ds.name, ds.id.id)
    with _pool_lock:
        if key not in _prefetch_readers:
            if len(_prefetch_readers) > 64:
                _prefetch_readers.clear()
            _prefetch_readers[key] = chunk_reader(ds)
        return _prefetch_readers[key]


def contiguous_spans(shape, itemsize: int, key, max_spans: int = 4096):
    """``(offset, size)`` byte ranges of ``key`` in a C-ordered array.

    One range per run of the selection along the last axis that is not
    whole; more than ``max_spans`` ranges are merged into the one range
    from the first to the last byte of the selection.

    Examples
    --------
    >>> contiguous_spans((3, 4, 5), 1, (slice(1, 3), slice(1, 3)))
    [(25, 10), (45, 10)]
    """
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * (len(shape) - len(key))
    sel = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            sel.append((i, i + 1))
        else:
            a, b, _ = k.indices(n)
            sel.append((a, max(a, b)))
    if any(b <= a for a, b in sel):
        return []
    strides = [itemsize] * len(shape)
    for ax in range(len(shape) - 2, -1, -1):
        strides[ax] = strides[ax + 1] * int(shape[ax + 1])
    # the last axis whose selection is not the whole axis, or -1
    k = max((ax for ax, (a, b) in enumerate(sel) if (a, b) != (0, shape[ax])), default=-1)
    if k < 0:
        return [(0, int(np.prod(shape)) * itemsize)]
    run = (sel[k][1] - sel[k][0]) * strides[k]
    count = int(np.prod([b - a for a, b in sel[:k]])) if k else 1
    first = sum(a * s for (a, _), s in zip(sel, strides, strict=False))
    if count > max_spans:
        last = sum((b - 1) * s for (_, b), s in zip(sel[:k], strides, strict=False))
        end = last + sel[k][0] * strides[k] + run
        return [(first, end - first)]
    out = []
    for idx in np.ndindex(*[b - a for a, b in sel[:k]]):
        off = sum((a + i) * s for (a, _), i, s in zip(sel[:k], idx, strides, strict=False))
        out.append((off + sel[k][0] * strides[k], run))
    return out


def merge_spans(spans) -> list[tuple[int, int]]:
    """``(offset, size)`` byte ranges sorted and merged where they touch.

    Examples
    --------
    >>> merge_spans([(10, 5), (0, 4), (4, 2), (30, 1)])
    [(0, 6), (10, 5), (30, 1)]
    """
    out: list[list[int]] = []
    for off, size in sorted((int(o), int(n)) for o, n in spans if n > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + size - out[-1][0])
        else:
            out.append([off, size])
    return [(o, n) for o, n in out]


#: Bytes per read-ahead hint: Linux reads at most one readahead window
#: or one maximal disk request per hint (here 4-8 MiB, 128 KiB by default).
_HINT_BYTES = 4 * 2**20


def willneed(path: str, spans) -> int:
    """Hint the kernel to read the byte ranges ``spans`` of ``path`` ahead.

    Only a hint (``POSIX_FADV_WILLNEED``): the kernel starts the reads and
    returns; a file it cannot open, or a system without ``posix_fadvise``,
    hints nothing. Returns the number of bytes hinted.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     _ = f.write(bytes(100)); f.flush()
    ...     willneed(f.name, [(0, 10), (10, 20)]) in (0, 30)
    True
    """
    if not hasattr(os, "posix_fadvise"):  # pragma: no cover - not on Linux
        return 0
    spans = merge_spans(spans)
    if not spans:
        return 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    total = 0
    try:
        for off, size in spans:
            # Linux reads at most the larger of its readahead window and
            # its largest disk request per hint, ignoring the rest: in pieces.
            for lo in range(off, off + size, _HINT_BYTES):
                n = min(_HINT_BYTES, off + size - lo)
                os.posix_fadvise(fd, lo, n, os.POSIX_FADV_WILLNEED)
            total += size
    except OSError:
        pass
    finally:
        os.close(fd)
    return total


def _unshuffle(data, itemsize: int) -> np.ndarray:
    """Undo HDF5's byte shuffle (leftover bytes past whole elements stay put)."""
    if itemsize == 1:
        return np.frombuffer(data, np.uint8)
    raw = np.frombuffer(data, np.uint8)
    n = raw.size // itemsize
    out = np.empty(raw.size, np.uint8)
    out[: n * itemsize] = raw[: n * itemsize].reshape(itemsize, n).T.ravel()
    out[n * itemsize :] = raw[n * itemsize :]
    return out


def _unbitshuffle(data, values, itemsize: int, nbytes: int, buffer=None) -> np.ndarray:
    """Undo Bitshuffle (and its LZ4) with the library's own code (GIL released).

    ``buffer(n)`` gives the output array of ``n`` bytes (default: a new one).
    """
    lib = _bitshuffle_lib()
    comp = values[4] if len(values) > 4 else _BSHUF_NONE
    src = np.frombuffer(data, np.uint8)
    if comp == _BSHUF_LZ4:
        # header: uncompressed bytes (uint64 BE), block size in bytes (uint32 BE)
        nbytes = int.from_bytes(bytes(src[:8]), "big")
        block = int.from_bytes(bytes(src[8:12]), "big") // itemsize
        src = src[12:]
    else:
        block = values[3] if len(values) > 3 else 0
    out = np.empty(nbytes, np.uint8) if buffer is None else buffer(nbytes)
    if nbytes == 0:
        return out
    n = nbytes // itemsize
    fn = lib.bshuf_decompress_lz4 if comp == _BSHUF_LZ4 else lib.bshuf_bitunshuffle
    src = np.ascontiguousarray(src)
    err = fn(src.ctypes.data, out.ctypes.data, n, itemsize, block)
    if err < 0:
        raise OSError(f"Bitshuffle could not decode a chunk (error {err})")
    return out
