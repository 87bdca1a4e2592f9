"""Read-ahead of the engine's blocks: the byte ranges hinted to the kernel are
exactly those the reads touch, and hints never change a result."""

import h5py
import numpy as np
import pytest

from napari_stemcluster import segment
from napari_stemcluster.engine import RunStats, ThreadExecutor, segment_chunked
from napari_stemcluster.engine._prefetch import Prefetcher
from napari_stemcluster.engine._tasks import BlockSource
from napari_stemcluster.engine.executors import _is_loopback
from napari_stemcluster.io import _chunks, open_dataset
from napari_stemcluster.io._chunks import contiguous_spans, merge_spans, prefetch
from test_engine import assert_same, grains_cube


def plain_spans(shape, itemsize, key):
    """Byte ranges of ``key`` in a C-ordered array, from a mask of the elements."""
    mask = np.zeros(shape, bool)
    mask[key] = True
    flat = np.flatnonzero(mask.ravel())
    if flat.size == 0:
        return []
    # runs of consecutive elements
    cuts = np.flatnonzero(np.diff(flat) != 1) + 1
    return [(int(r[0]) * itemsize, int(r.size) * itemsize) for r in np.split(flat, cuts)]


KEYS = [
    ((2, 3, 4, 5), (slice(0, 2), slice(1, 3))),  # a block of scan positions
    ((2, 3, 4, 5), (1, slice(0, 3), slice(0, 4))),  # a whole time step
    ((2, 3, 4, 5), (slice(None),)),  # everything
    ((1, 7, 3, 2), (slice(0, 1), slice(2, 5))),  # a 1xN scan
    ((7, 1, 3, 2), (slice(3, 7), slice(0, 1))),  # an Nx1 scan
    ((3, 4, 5, 6, 7), (2, slice(1, 3), slice(2, 5))),  # 5D, non-square detector
    ((3, 4, 5, 6, 7), (0, slice(3, 4), slice(4, 5))),  # one pattern
    ((3, 4, 5), (slice(1, 1),)),  # empty
    ((3, 4, 5), (-1, slice(-2, None))),  # negative indices
]


@pytest.mark.parametrize("itemsize", [1, 2, 4])
@pytest.mark.parametrize(("shape", "key"), KEYS)
def test_contiguous_spans_match_the_selected_elements(shape, key, itemsize):
    got = merge_spans(contiguous_spans(shape, itemsize, key))
    assert got == plain_spans(shape, itemsize, key)


def test_contiguous_spans_merge_into_one_range_past_the_limit():
    shape, key = (6, 5, 4, 3), (slice(1, 5), slice(1, 3))
    want = plain_spans(shape, 2, key)
    got = contiguous_spans(shape, 2, key, max_spans=3)
    assert len(got) == 1
    lo, n = got[0]
    # the one range covers every selected byte, from the first to the last
    assert lo == want[0][0]
    assert lo + n == want[-1][0] + want[-1][1]


def test_merge_spans():
    assert merge_spans([]) == []
    assert merge_spans([(5, 0)]) == []
    assert merge_spans([(8, 4), (0, 4), (4, 4)]) == [(0, 12)]
    assert merge_spans([(0, 10), (2, 3)]) == [(0, 10)]
    assert merge_spans([(0, 2), (3, 2)]) == [(0, 2), (3, 2)]


@pytest.fixture
def hinted(monkeypatch):
    """Capture the ranges given to the kernel instead of hinting them."""
    calls = []

    def fake(path, spans):
        spans = merge_spans(spans)
        calls.append((str(path), spans))
        return sum(n for _, n in spans)

    monkeypatch.setattr(_chunks, "willneed", fake)
    return calls


def file_bytes(path, spans):
    with open(path, "rb") as f:
        out = b""
        for off, n in spans:
            f.seek(off)
            out += f.read(n)
    return out


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<f4", ">i4", "u1"])
@pytest.mark.parametrize(("shape", "key"), [k for k in KEYS if len(k[0]) >= 4])
def test_contiguous_prefetch_hints_exactly_the_selection(tmp_path, hinted, dtype, shape, key):
    data = (np.arange(int(np.prod(shape))) % 251).reshape(shape).astype(dtype)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=data)  # contiguous
    with h5py.File(path, "r") as f:
        n = prefetch(f["d"], key)
    assert hinted and hinted[-1][0] == str(path)
    spans = hinted[-1][1]
    # the hinted bytes are the selection's bytes as stored (file byte order)
    assert file_bytes(path, spans) == np.ascontiguousarray(data[key]).tobytes()
    assert n == data[key].nbytes


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<f4"])
def test_chunked_prefetch_hints_the_chunks_the_read_touches(tmp_path, hinted, compression, dtype):
    shape, chunks = (2, 9, 7, 5, 6), (1, 4, 3, 5, 6)
    data = (np.arange(int(np.prod(shape))) % 97).reshape(shape).astype(dtype)
    path = tmp_path / "k.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=data, chunks=chunks, compression=compression)
    key = (1, slice(3, 9), slice(2, 7))
    with h5py.File(path, "r") as f:
        ds = f["d"]
        prefetch(ds, key)
        # the plain answer: every stored chunk whose box meets the selection
        want = []
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            t, r, c = info.chunk_offset[:3]
            if t == 1 and r < 9 and r + 4 > 3 and c < 7 and c + 3 > 2:
                want.append((info.byte_offset, info.size))
    assert hinted[-1][1] == merge_spans(want)


def test_prefetch_hints_nothing_for_unwritten_chunks_and_virtual_data(tmp_path, hinted):
    path = tmp_path / "e.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", shape=(4, 4, 2, 2), dtype="u2", chunks=(2, 2, 2, 2))
        layout = h5py.VirtualLayout(shape=(4, 4, 2, 2), dtype="u2")
        layout[:] = h5py.VirtualSource(f["d"])
        f.create_virtual_dataset("v", layout)
    with h5py.File(path, "r") as f:
        assert prefetch(f["d"], (slice(0, 4),)) == 0  # never written: fill value
        assert prefetch(f["v"], (slice(0, 4),)) == 0
    assert all(not spans for _, spans in hinted)


def test_willneed_on_a_real_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(3 * 4096))
    assert _chunks.willneed(str(path), [(0, 4096), (4096, 100)]) == 4196
    assert _chunks.willneed(str(tmp_path / "missing"), [(0, 10)]) == 0
    assert _chunks.willneed(str(path), []) == 0


def test_block_source_prefetch_from_h5py_and_file_readers(tmp_path, hinted):
    cube = grains_cube(5, (6, 7), (4, 6), n_times=2)
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube)
    with h5py.File(path, "r") as f:
        src = BlockSource(f["data"])
        assert src.can_prefetch()
        assert src.prefetch(1, 2, 5, 1, 4) == cube[1, 2:5, 1:4].nbytes
    reader = open_dataset(path).source
    src = BlockSource(reader)
    assert src.can_prefetch()
    assert src.prefetch(0, 0, 6, 0, 7) == cube[0].nbytes
    assert not BlockSource(cube).can_prefetch()
    assert BlockSource(cube).prefetch(0, 0, 1, 0, 1) == 0


def test_prefetcher_hints_each_block_once_and_survives_errors():
    class Source:
        def __init__(self):
            self.calls = []

        def prefetch(self, t, *ext):
            self.calls.append((t, ext))
            return 10

    src = Source()
    p = Prefetcher(src)
    p.hint(0, (0, 2, 0, 3))
    p.hint(0, (0, 2, 0, 3))
    p.hint(1, (0, 2, 0, 3))
    p.close()
    assert src.calls == [(0, (0, 2, 0, 3)), (1, (0, 2, 0, 3))]
    assert p.hinted_bytes == 20


@pytest.mark.parametrize("chunked", [False, True])
def test_engine_reads_ahead_with_identical_results(tmp_path, chunked):
    cube = grains_cube(6, (12, 10), (8, 6), n_times=3)
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube, chunks=(1, 3, 10, 8, 6) if chunked else None)
    ref = segment(cube, threshold=0.9)
    stats = RunStats()
    with ThreadExecutor(2) as ex:
        res = segment_chunked(
            open_dataset(path), threshold=0.9, executor=ex, chunks=(5, 4), stats=stats
        )
    assert_same(res, ref)
    if chunked:  # whole chunks are hinted: at least what the tasks read
        assert stats.bytes_prefetched >= stats.bytes_read
    else:  # contiguous: exactly the blocks read (with halos)
        assert stats.bytes_prefetched == stats.bytes_read
    # an in-memory cube: nothing to hint
    stats = RunStats()
    segment_chunked(cube, threshold=0.9, chunks=(5, 4), stats=stats)
    assert stats.bytes_prefetched == 0


def test_loopback_addresses():
    assert _is_loopback("tcp://127.0.0.1:8786")
    assert _is_loopback("tcp://localhost:1")
    assert _is_loopback("tcp://[::1]:8786")
    assert not _is_loopback("tcp://10.0.0.3:8786")
    assert not _is_loopback("tls://node1:8786")


def test_willneed_hints_in_pieces_covering_the_spans(tmp_path, monkeypatch):
    # Linux reads at most one readahead window per hint: long ranges are cut
    path = tmp_path / "p.bin"
    path.write_bytes(bytes(10))
    calls = []
    monkeypatch.setattr(_chunks.os, "posix_fadvise", lambda fd, o, n, a: calls.append((o, n, a)))
    monkeypatch.setattr(_chunks, "_HINT_BYTES", 100)
    spans = [(1000, 250), (5, 100), (1250, 10), (40, 3)]
    assert _chunks.willneed(str(path), spans) == 360  # overlaps once
    assert all(n <= 100 and a == _chunks.os.POSIX_FADV_WILLNEED for _, n, a in calls)
    assert merge_spans([(o, n) for o, n, _ in calls]) == merge_spans(spans)
    assert len(calls) == len(set(calls))


# --------------------------------------------------------------------------
# blocks read into memory ahead of their task (reading overlaps computing)


def _pending(run):
    from napari_stemcluster.engine import _tasks

    return [k for k, f in _tasks._ahead.items() if k[0] == run and f is not None]


@pytest.mark.parametrize("dtype", [np.uint16, ">f4"])
def test_blocks_read_ahead_give_identical_results(tmp_path, monkeypatch, dtype):
    # 5D, non-square detector, awkward blocks, a big-endian float file
    cube = grains_cube(7, (11, 9), (8, 6), n_times=3).astype(dtype)
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube, chunks=(1, 2, 9, 8, 6))
    ref = segment(cube.astype(cube.dtype.newbyteorder("=")), threshold=0.9)
    stats = RunStats()
    with ThreadExecutor(2, read_ahead=True) as ex:
        res = segment_chunked(
            open_dataset(path), threshold=0.9, executor=ex, chunks=(4, 5), stats=stats
        )
    assert_same(res, ref)
    # a task may start before the one ahead of it in its slot asks for its
    # block (it then reads it itself)
    assert 0 < stats.bytes_read_ahead <= stats.bytes_read
    from napari_stemcluster.engine import _tasks

    assert not [f for f in _tasks._ahead.values() if f is not None]  # none left
    # one slot: every task but the first finds its block read ahead
    stats = RunStats()
    with ThreadExecutor(1, read_ahead=True) as ex:
        res1 = segment_chunked(
            open_dataset(path), threshold=0.9, executor=ex, chunks=(4, 5), stats=stats
        )
    assert_same(res1, ref)
    first = 5 * 6 * 8 * 6 * cube.dtype.itemsize  # rows 0:5, columns 0:6 with the halo
    assert stats.bytes_read_ahead == stats.bytes_read - first
    # without the read-ahead (threads by default): the same result
    stats = RunStats()
    res2 = segment_chunked(open_dataset(path), threshold=0.9, chunks=(4, 5), stats=stats)
    assert_same(res2, ref)
    assert stats.bytes_read_ahead == 0
    monkeypatch.setattr(BlockSource, "reads_ahead", lambda self: False)  # not a file
    stats = RunStats()
    with ThreadExecutor(2, read_ahead=True) as ex:
        segment_chunked(open_dataset(path), threshold=0.9, executor=ex, chunks=(4, 5), stats=stats)
    assert stats.bytes_read_ahead == 0


def test_in_memory_and_dask_cubes_are_not_read_ahead():
    cube = grains_cube(8, (6, 5), (4, 4), n_times=2)
    stats = RunStats()
    with ThreadExecutor(2, read_ahead=True) as ex:
        segment_chunked(cube, threshold=0.9, chunks=(2, 5), stats=stats, executor=ex)
    assert stats.bytes_read_ahead == 0
    import dask.array as da

    assert not BlockSource(da.from_array(cube, chunks=(1, 2, 5, 4, 4))).reads_ahead()


def test_read_ahead_is_taken_once_and_dropped_with_its_run(tmp_path):
    from napari_stemcluster.engine._tasks import drop_kept, read_ahead, take_read_ahead

    cube = grains_cube(9, (6, 7), (5, 3), n_times=2)  # non-square detector
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube, chunks=(1, 2, 7, 5, 3))
    src = BlockSource(open_dataset(path).source)
    assert src.reads_ahead()
    with h5py.File(path, "r") as f:
        assert BlockSource(f["data"]).reads_ahead()
    ext = (1, 4, 0, 7)
    assert read_ahead(src, "r1", 1, ext)
    assert not read_ahead(src, "r1", 1, ext)  # asked once
    np.testing.assert_array_equal(take_read_ahead("r1", 1, ext), cube[1, 1:4, 0:7])
    assert take_read_ahead("r1", 1, ext) is None  # taken
    assert not read_ahead(src, "r1", 1, ext)  # its task has read it: never again
    # a task that comes before the read-ahead of its block reads it itself,
    # and the late request reads nothing
    assert take_read_ahead("r1", 0, (0, 1, 0, 1)) is None
    assert not read_ahead(src, "r1", 0, (0, 1, 0, 1))
    assert take_read_ahead(None, 0, ext) is None  # no run: nothing read ahead
    # blocks never taken are dropped with the run; the run then reads none
    assert read_ahead(src, "r1", 0, (0, 6, 0, 1))  # a 6x1 column
    assert _pending("r1")
    drop_kept("r1")
    assert not _pending("r1")
    assert not read_ahead(src, "r1", 0, (0, 6, 0, 1))


def test_errors_of_a_block_read_ahead_are_raised_by_its_task():
    from napari_stemcluster.engine._tasks import drop_kept, read_ahead, take_read_ahead

    class Broken:
        shape, dtype = (4, 4, 2, 2), np.dtype(np.uint16)

        def __getitem__(self, key):
            raise OSError("chunk 3 is corrupt")

    src = BlockSource(Broken())
    assert read_ahead(src, "r2", None, (0, 2, 0, 4))
    with pytest.raises(OSError, match="chunk 3 is corrupt"):
        take_read_ahead("r2", None, (0, 2, 0, 4))
    drop_kept("r2")


def test_thread_lanes_and_read_ahead_defaults():
    assert ThreadExecutor(3).lanes() == [None, None, None]
    assert not ThreadExecutor().read_ahead and ThreadExecutor(read_ahead=True).read_ahead
    from napari_stemcluster.engine import DistributedExecutor

    assert not DistributedExecutor.read_ahead  # measured slower on the quiet machine
