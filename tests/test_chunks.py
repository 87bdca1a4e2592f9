"""Direct chunk reads decoded in parallel give exactly what h5py reads."""

import os
import threading

import h5py
import hdf5plugin
import numpy as np
import pytest

from napari_stemcluster.engine._tasks import BlockSource
from napari_stemcluster.io import open_dataset
from napari_stemcluster.io._chunks import ChunkReader, chunk_reader
from napari_stemcluster.io._lazy import H5Array, _covering
from napari_stemcluster.io.errors import StemFileError

FILTERS = {
    "none": {},
    "gzip": {"compression": "gzip"},
    "shuffle-gzip": {"compression": "gzip", "shuffle": True},
    "shuffle": {"shuffle": True},
    "bitshuffle-lz4": dict(hdf5plugin.Bitshuffle(cname="lz4")),
    "bitshuffle": dict(hdf5plugin.Bitshuffle(cname="none")),
}

KEYS = [
    (slice(None),),
    (1, slice(2, 7), slice(1, 8)),
    (2, 6, slice(0, 9), slice(1, 4), slice(2, 5)),
    (0, slice(3, 3)),  # empty
    (-1, -2),
    (slice(1, 3), slice(0, 7), 8),
]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return rng.integers(0, 60000, (3, 7, 9, 5, 6)).astype(np.uint16)


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("dtype", ["<u2", ">u2", ">f4", "<i4", "u1"])
@pytest.mark.parametrize("chunks", [(1, 2, 4, 3, 6), (2, 3, 9, 5, 4), (1, 1, 1, 5, 6)])
def test_reads_equal_h5py(tmp_path, data, name, dtype, chunks):
    path = tmp_path / "c.h5"
    values = (data % 251).astype(dtype) if dtype == "u1" else data.astype(dtype)
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=values, chunks=chunks, **FILTERS[name])
    with h5py.File(path, "r") as f:
        d = f["d"]
        reader = chunk_reader(d)
        assert isinstance(reader, ChunkReader)
        for key in KEYS:
            got, want = reader.read(key), d[key]
            assert got.dtype == want.dtype.newbyteorder("=")  # native order
            assert got.dtype.isnative
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)
        assert reader._mapped  # the file was mapped, not read through h5py


def test_unwritten_chunks_give_the_fill_value(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("d", shape=(5, 7), dtype="u2", chunks=(2, 3), fillvalue=9)
        d[0:2, 0:3] = 1  # one chunk written
    with h5py.File(path, "r") as f:
        got = chunk_reader(f["d"]).read((slice(None), slice(None)))
        np.testing.assert_array_equal(got, f["d"][()])
    assert got[0, 0] == 1 and got[4, 6] == 9


def test_not_decoded_here_returns_none(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("contiguous", data=np.ones((4, 4), "u2"))
        f.create_dataset("lz4", data=np.ones((4, 4), "u2"), chunks=(2, 2), **hdf5plugin.LZ4())
        f.create_dataset("fletcher", data=np.ones((4, 4), "u2"), chunks=(2, 2), fletcher32=True)
        f.create_dataset("strings", data=np.array([b"ab", b"cd"]), chunks=(1,))
    with h5py.File(path, "r") as f:
        for name in f:
            assert chunk_reader(f[name]) is None, name
    assert chunk_reader(np.ones((2, 2))) is None


def test_bad_keys(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=np.ones((4, 4), "u2"), chunks=(2, 2))
    with h5py.File(path, "r") as f:
        reader = chunk_reader(f["d"])
        with pytest.raises(IndexError, match="out of range"):
            reader.read((4,))
        with pytest.raises(TypeError, match="step-1 slices"):
            reader.read((slice(None, None, 2),))


def test_corrupt_chunk_is_a_clear_error(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "z", data=np.arange(64, dtype="u2").reshape(8, 8), chunks=(4, 8), compression="gzip"
        )
    with h5py.File(path, "r+") as f:
        f["z"].id.write_direct_chunk((4, 0), b"not gzip at all", filter_mask=0)
    with h5py.File(path, "r") as f:
        reader = chunk_reader(f["z"])
        np.testing.assert_array_equal(reader.read((slice(0, 4),)), f["z"][0:4])
        with pytest.raises(OSError, match="not valid gzip"):
            reader.read((slice(None),))
    # through the file readers: the message names the file and dataset
    arr = H5Array(str(path), "/z", (8, 8), np.dtype("u2"))
    with pytest.raises(StemFileError, match=r"c\.h5: reading dataset /z failed"):
        arr[:]


def test_threads_reading_at_once(tmp_path, data):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=data, chunks=(1, 2, 4, 5, 6), **FILTERS["bitshuffle-lz4"])
    errors = []
    with h5py.File(path, "r") as f:
        reader = chunk_reader(f["d"])

        def work(t):
            try:
                for _ in range(20):
                    np.testing.assert_array_equal(reader.read((t,)), data[t])
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors


def test_lazy_array_and_block_source_use_chunks(tmp_path, data):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        # chunks that do not align with any block of the engine
        f.create_dataset("data", data=data.astype(">u2"), chunks=(2, 3, 4, 5, 6), **FILTERS["gzip"])
    ds = open_dataset(path)
    src = ds.source
    assert isinstance(src, H5Array)
    np.testing.assert_array_equal(src[1, 2:5, 3:9], data[1, 2:5, 3:9])
    assert src[1, 2:5, 3:9].dtype == np.uint16
    assert src._reader[1] is not None
    # strided selections: the covering range, subsampled
    np.testing.assert_array_equal(src[0, 1:2, ::4], data[0, 1:2, ::4])
    np.testing.assert_array_equal(src[..., 0, 0], data[..., 0, 0])
    np.testing.assert_array_equal(src[2, ::3, 1::2, ::2], data[2, ::3, 1::2, ::2])
    # pickled without the reader, which is rebuilt where it is read
    import pickle

    again = pickle.loads(pickle.dumps(src))
    assert "_reader" not in again.__dict__
    np.testing.assert_array_equal(again[2, 0:2], data[2, 0:2])
    with h5py.File(path, "r") as f:
        block = BlockSource(f["data"])
        np.testing.assert_array_equal(block.read(1, 1, 6, 2, 9), data[1, 1:6, 2:9])
        np.testing.assert_array_equal(block.read(0, 0, 7, 0, 9), data[0])
        assert block._reader is not None
        assert "_reader" not in block.__getstate__()


def test_covering_only_for_small_ranges():
    assert _covering((0, slice(1, 9, 4)), (2, 10, 3), 2) == (
        (0, slice(1, 9), slice(0, 3)),
        (slice(0, 8, 4), slice(0, 3, 1)),
    )
    assert _covering((slice(None, None, 2),), (2**26, 2), 2) is None  # too large
    assert _covering((np.array([1, 2]),), (4,), 2) is None


@pytest.mark.parametrize("name", ["shuffle", "none"])  # mapped; read with pread
def test_file_growing_after_it_was_mapped(tmp_path, data, name):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w", libver="latest") as f:
        d = f.create_dataset(
            "d", shape=(3, 7, 9, 5, 6), dtype="u2", chunks=(1, 7, 9, 5, 6), **FILTERS[name]
        )
        d[0] = data[0]
    reader_file = h5py.File(path, "r", swmr=False)
    try:
        reader = chunk_reader(reader_file["d"])
        np.testing.assert_array_equal(reader.read((0,)), data[0])
        size = reader._mm.size
    finally:
        reader_file.close()
    with h5py.File(path, "a") as f:
        f["d"][1:] = data[1:]  # new chunks, past the old end of the file
    with h5py.File(path, "r") as f:
        reader = chunk_reader(f["d"])
        reader.read((0,))
        reader._mm = reader._mm[:size]  # as if mapped before the file grew
        np.testing.assert_array_equal(reader.read((slice(None),)), data)
        if name == "none":  # unfiltered chunks are read with pread, not mapped
            assert reader._pread and reader._mm.size == size
        else:
            assert reader._mm.size > size


def _rss_file() -> int:
    """Resident bytes of this process that map files (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    pytest.skip(
        "the kernel reports no RssFile in /proc/self/status (Linux >= 4.5 does): "
        "file-mapped resident memory cannot be measured here"
    )


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_reading_a_file_does_not_keep_it_mapped(tmp_path, compression):
    """The pages of chunks read stay in the page cache, not in this process."""
    path = tmp_path / "big.h5"
    data = np.random.default_rng(0).integers(0, 50, (128, 64, 32, 32), dtype=np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=data, chunks=(4, 64, 32, 32), compression=compression)
    with h5py.File(path, "r") as f:
        reader = chunk_reader(f["d"])
        reader.read((slice(0, 4),))  # map the file
        before = _rss_file()
        for r in range(0, 128, 4):
            np.testing.assert_array_equal(reader.read((slice(r, r + 4),)), data[r : r + 4])
        grown = _rss_file() - before
    assert reader._mapped
    # 16 MiB read (less with gzip); about a chunk (512 KiB) per thread stays mapped
    assert grown < 4 * 2**20, grown


@pytest.mark.parametrize("nelems", [0, 1024])  # the library's default block, and a small one
def test_lz4_chunks_decode_into_place(tmp_path, monkeypatch, nelems):
    # Patterns of whole Bitshuffle blocks: the runs of a chunk inside a
    # selection are decoded straight into the output (halo rows included).
    rng = np.random.default_rng(3)
    values = rng.integers(0, 300, (2, 9, 10, 32, 64)).astype("<u2")
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "d",
            data=values,
            chunks=(1, 4, 4, 32, 64),
            **hdf5plugin.Bitshuffle(nelems=nelems, cname="lz4"),
        )
    used = []
    direct = ChunkReader._fill_direct
    monkeypatch.setattr(
        ChunkReader, "_fill_direct", lambda self, *a: used.append(direct(self, *a)) or used[-1]
    )
    keys = [
        (slice(None),),
        (1, slice(3, 8)),  # rows cutting chunks: leading blocks skipped
        (0, slice(0, 9), slice(2, 7)),
        (slice(0, 2), 3, slice(1, 10), slice(3, 30)),  # partial patterns: copied
        (1, 4, 5),
    ]
    with h5py.File(path, "r") as f:
        reader = chunk_reader(f["d"])
        for key in keys:
            np.testing.assert_array_equal(reader.read(key), f["d"][key])
    assert any(used) and not all(used)


def test_lz4_corrupt_chunk_decoded_in_place_is_a_clear_error(tmp_path):
    path = tmp_path / "c.h5"
    values = np.arange(2 * 4 * 32 * 64, dtype="<u2").reshape(2, 4, 32, 64)
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "d", data=values, chunks=(1, 4, 32, 64), **hdf5plugin.Bitshuffle(cname="lz4")
        )
        good = bytearray(d.id.read_direct_chunk((1, 0, 0, 0))[1])
    with h5py.File(path, "r+") as f:
        # a valid header, then garbage where the LZ4 blocks should be
        f["d"].id.write_direct_chunk((1, 0, 0, 0), bytes(good[:12]) + b"\xff" * 40)
    with h5py.File(path, "r") as f:
        reader = chunk_reader(f["d"])
        np.testing.assert_array_equal(reader.read((0,)), values[0])
        with pytest.raises(OSError, match="not valid Bitshuffle-LZ4"):
            reader.read((1,))


def test_read_buffers_are_reused_only_when_given_back():
    from napari_stemcluster.io._chunks import _Buffers

    pool = _Buffers(limit=2)
    pool.MIN_BYTES = 1000
    small = pool.empty((10,), np.uint16)  # under the threshold: a plain array
    assert not pool.recycle(small)
    a = pool.empty((4, 300), ">u2")
    assert a.shape == (4, 300) and a.dtype == np.dtype(">u2") and a.flags.c_contiguous
    assert not pool.recycle(np.zeros(1200, np.uint16))  # not made here
    view = a[1:3]
    assert pool.recycle(view)  # any view gives back the whole buffer
    assert not pool.recycle(a)  # already given back
    b = pool.empty((2, 600), np.uint16)  # same size: the same memory
    assert np.shares_memory(a, b)
    assert pool.recycle(b)
    c = pool.empty((2, 900), np.uint16)  # 50 % larger: a new buffer
    assert not np.shares_memory(b, c)
    d = pool.empty((4, 250), np.uint16)  # a sixth smaller: still fits
    assert np.shares_memory(b, d)
    for arr in (c, d, pool.empty((5, 200), np.float32)):
        pool.recycle(arr)
    assert len(pool._free) == 2  # at most ``limit`` kept
    pool.max_bytes = 2500
    pool.recycle(pool.empty((4, 300), np.uint16))
    assert [b.size for b in pool._free] == [2400]  # and at most ``max_bytes``, but one
    pool.release()
    assert not pool._free


def test_unfiltered_chunks_are_read_into_place(tmp_path, monkeypatch):
    """pread of the runs of a chunk straight into the output, adjacent runs in
    one call: the values h5py reads, for every kind of selection."""
    rng = np.random.default_rng(5)
    values = rng.integers(0, 65535, (2, 9, 10, 3, 5)).astype("<u2")  # non-square
    path = tmp_path / "u.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=values, chunks=(1, 4, 4, 3, 5))
        f.create_dataset("z", data=np.zeros((4, 4, 2, 2), "<f4"), chunks=(2, 1, 2, 2))
    calls = []
    preadv = os.preadv
    monkeypatch.setattr(
        os, "preadv", lambda fd, bufs, at: calls.append(len(bufs)) or preadv(fd, bufs, at)
    )
    keys = [
        (slice(None),),
        (1, slice(3, 8)),  # rows cutting chunks
        (0, slice(0, 9), slice(2, 7)),  # halo-like block: columns cutting chunks
        (slice(0, 2), 3, slice(1, 10), slice(1, 3), slice(2, 5)),  # partial patterns
        (1, 4, 5),  # one pattern
        (0, 8, slice(0, 10)),  # a 1xN row of the last, partial chunk
        (1, slice(0, 9), 9),  # an Nx1 column
    ]
    with h5py.File(path, "r") as f:
        reader = chunk_reader(f["d"])
        assert reader._pread
        for key in keys:
            np.testing.assert_array_equal(reader.read(key), f["d"][key])
        assert calls and max(calls) > 1  # runs adjacent in the file: one call
        z = chunk_reader(f["z"])  # all-zero float data
        np.testing.assert_array_equal(z.read((slice(1, 4), slice(0, 3))), f["z"][1:4, 0:3])


def test_short_reads_are_continued_and_a_truncated_file_is_a_clear_error(tmp_path, monkeypatch):
    values = np.arange(2 * 4 * 4 * 6, dtype="<u2").reshape(2, 4, 4, 6)
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=values, chunks=(1, 4, 4, 6))
    preadv = os.preadv

    def short(fd, bufs, at):  # at most 10 bytes per call
        head = bufs[0][:10]
        return preadv(fd, [head], at)

    with h5py.File(path, "r") as f:
        reader = chunk_reader(f["d"])
        monkeypatch.setattr(os, "preadv", short)
        np.testing.assert_array_equal(reader.read((slice(None),)), values)
        monkeypatch.setattr(os, "preadv", lambda fd, bufs, at: 0)  # end of file
        with pytest.raises(OSError, match=r"s\.h5: a chunk of /d lies past the end"):
            reader.read((1,))
