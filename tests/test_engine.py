"""The chunked engine gives the in-memory result, whatever the block shape."""

import os
import threading

import dask.array as da
import h5py
import numpy as np
import pytest

from napari_stemcluster import segment
from napari_stemcluster.engine import (
    RunStats,
    ThreadExecutor,
    get_executor,
    plan_chunks,
    segment_chunked,
)
from napari_stemcluster.io import open_dataset

from _reference import random_cube


def grains_cube(seed, scan, det, n_grains=5, n_times=None, dose=400.0):
    """Voronoi grains, each with its own spot pattern, over a weak background.

    Poisson counts (uint16); with ``n_times`` the grain seeds drift between
    time steps, so every step differs.
    """
    rng = np.random.default_rng(seed)
    templates = np.full((n_grains + 1, *det), 0.02)
    for g in range(1, n_grains + 1):
        for _ in range(4):
            templates[g, rng.integers(0, det[0]), rng.integers(0, det[1])] += 1.0
    templates /= templates.sum(axis=(1, 2), keepdims=True)
    steps = []
    centres = rng.uniform(0, 1, (n_grains, 2)) * scan
    xs, ys = np.mgrid[0 : scan[0], 0 : scan[1]]
    for _ in range(n_times or 1):
        d = (xs[..., None] - centres[:, 0]) ** 2 + (ys[..., None] - centres[:, 1]) ** 2
        grain = d.argmin(axis=-1) + 1
        grain[(xs + ys) % 7 == 0] = 0  # some background positions
        steps.append(rng.poisson(dose * templates[grain]).astype(np.uint16))
        centres += rng.normal(0, 0.7, centres.shape)
    return steps[0] if n_times is None else np.stack(steps)


@pytest.fixture(scope="module")
def cube4():
    return grains_cube(3, (10, 13), (16, 20))  # non-square detector


@pytest.fixture(scope="module")
def cube5():
    return grains_cube(4, (9, 11), (16, 16), n_grains=4, n_times=3)


def assert_same(res, ref, exact_means=True):
    np.testing.assert_array_equal(res.labels, ref.labels)
    assert res.labels.dtype == ref.labels.dtype
    # bit for bit, NaN where the neighbour is outside the scan
    assert np.array_equal(res.similarity, ref.similarity, equal_nan=True)
    np.testing.assert_array_equal(res.mean_similarity, ref.mean_similarity)
    np.testing.assert_array_equal(res.real_mask, ref.real_mask)
    means = res.cluster_means if isinstance(res.cluster_means, list) else [res.cluster_means]
    want = ref.cluster_means if isinstance(ref.cluster_means, list) else [ref.cluster_means]
    assert len(means) == len(want)
    for a, b in zip(means, want, strict=True):
        assert a.dtype == np.float32 and a.shape == b.shape
        if exact_means:
            np.testing.assert_array_equal(a, b)
        else:  # float input: sums added in another order, equal to float32 rounding
            np.testing.assert_allclose(a, b, rtol=2e-7, atol=0)
    tables = res.clusters if isinstance(res.clusters, list) else [res.clusters]
    wtables = ref.clusters if isinstance(ref.clusters, list) else [ref.clusters]
    for a, b in zip(tables, wtables, strict=True):
        np.testing.assert_array_equal(a.size, b.size)
        np.testing.assert_array_equal(a.seed, b.seed)
        np.testing.assert_array_equal(a.mean_similarity, b.mean_similarity)
    assert res.params == ref.params


# ----------------------------------------------------------------------
# equivalence with core.segment


@pytest.mark.parametrize("chunks", [None, (3, 5), (1, 13), (10, 1), (4, 4), (1, 1)])
def test_4d_any_block_shape_equals_in_memory(cube4, chunks):
    ref = segment(cube4, threshold=0.85, min_cluster_size=2)
    assert ref.n_clusters >= 3  # a test with something to find
    stats = RunStats()
    res = segment_chunked(cube4, threshold=0.85, min_cluster_size=2, chunks=chunks, stats=stats)
    assert_same(res, ref)
    if chunks is not None:
        assert stats.plan.block_shape == chunks


@pytest.mark.parametrize("shape,chunks", [((1, 17), (1, 4)), ((17, 1), (5, 1)), ((1, 1), None)])
def test_1xn_and_nx1_scans(shape, chunks):
    rng = np.random.default_rng(5)
    cube = rng.poisson(3.0, (*shape, 6, 7)).astype(np.uint16)
    cube[..., : shape[-1] // 2 + 1, 0, 0] += 50  # two different halves
    ref = segment(cube, threshold=0.5, min_cluster_size=1, real_mask=None)
    res = segment_chunked(cube, threshold=0.5, min_cluster_size=1, real_mask=None, chunks=chunks)
    assert_same(res, ref)


def test_prefilter_and_prefiltered_averages_with_awkward_blocks(cube4):
    kw = {
        "threshold": 0.8,
        "min_cluster_size": 2,
        "prefilter": {"radius": 2, "sigma": 1.0},
        "average": "prefiltered",
    }
    ref = segment(cube4, **kw)
    for chunks in [(3, 5), (2, 13)]:
        res = segment_chunked(cube4, **kw, chunks=chunks)
        assert_same(res, ref, exact_means=False)
    # raw averages from a prefiltered similarity: integer sums, exact
    kw["average"] = "raw"
    assert_same(segment_chunked(cube4, **kw, chunks=(3, 5)), segment(cube4, **kw))


@pytest.mark.parametrize("source", ["raw", "prefiltered"])
@pytest.mark.parametrize("mask", ["triangle", 0.9])
def test_mask_source_with_awkward_blocks(cube4, source, mask):
    kw = {
        "threshold": 0.8,
        "min_cluster_size": 2,
        "prefilter": {"radius": 2},
        "real_mask": mask,
        "mask_source": source,
    }
    ref = segment(cube4, **kw)
    for chunks in [(3, 5), (1, 13)]:
        assert_same(segment_chunked(cube4, **kw, chunks=chunks), ref)


def test_q_mask_sigma_and_mask_options(cube4):
    kw = {
        "threshold": 0.7,
        "min_cluster_size": 3,
        "q_mask": (2, 7),
        "sigma": 1.0,
        "real_mask": "otsu",
        "mask_min_size": 3,
        "mask_hole_size": 2,
    }
    assert_same(segment_chunked(cube4, **kw, chunks=(3, 4)), segment(cube4, **kw))
    user = np.zeros(cube4.shape[:2], bool)
    user[2:8, 3:11] = True
    kw["real_mask"] = user
    assert_same(segment_chunked(cube4, **kw, chunks=(4, 3)), segment(cube4, **kw))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.float32, np.float64])
def test_dtypes(dtype):
    rng = np.random.default_rng(6)
    cube = random_cube(rng, (7, 9, 5, 6)).astype(dtype)
    cube[:, :4, 0, :] += 30
    ref = segment(cube, threshold=0.6, min_cluster_size=2)
    res = segment_chunked(cube, threshold=0.6, min_cluster_size=2, chunks=(2, 3))
    assert_same(res, ref, exact_means=np.dtype(dtype).kind != "f")


def test_all_zero_and_constant_cubes():
    zero = np.zeros((5, 4, 3, 3), np.uint16)
    res = segment_chunked(zero, chunks=(2, 3))
    assert_same(res, segment(zero))
    assert res.n_clusters == 0 and res.cluster_means.shape == (0, 3, 3)
    const = np.full((5, 4, 3, 3), 7, np.uint16)
    assert_same(segment_chunked(const, chunks=(2, 3)), segment(const))


# ----------------------------------------------------------------------
# 5D


def test_5d_parallel_equals_sequential_and_in_memory(cube5):
    kw = {"threshold": 0.85, "min_cluster_size": 2}
    ref = segment(cube5, **kw)
    res = segment_chunked(cube5, **kw, chunks=(4, 5), executor=ThreadExecutor(3))
    assert_same(res, ref)
    for t in range(cube5.shape[0]):  # each step on its own
        one = segment_chunked(cube5[t], **kw, chunks=(4, 5))
        np.testing.assert_array_equal(res.labels[t], one.labels)
        np.testing.assert_array_equal(res.cluster_means[t], one.cluster_means)
    assert len(res.clusters) == cube5.shape[0]


def test_5d_time_range_and_per_step_masks(cube5):
    masks = np.ones(cube5.shape[:3], bool)
    masks[1, :3] = False
    res = segment_chunked(cube5, real_mask=masks, times=(1, 3), chunks=(3, 3))
    ref = segment(cube5[1:3], real_mask=masks[1:3])
    assert res.params.pop("time_range") == [1, 3]
    assert_same(res, ref)
    assert not res.labels[0, :3].any()


# ----------------------------------------------------------------------
# inputs backed by files and lazy arrays


def test_file_backed_inputs(tmp_path, cube5):
    path = tmp_path / "cube.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube5, chunks=(1, 2, 11, 16, 16))
    ref = segment(cube5, threshold=0.85, min_cluster_size=2)
    ds = open_dataset(path)
    for cube in (ds, ds.cube, da.from_array(cube5, chunks=(1, 4, 4, 16, 16))):
        res = segment_chunked(cube, threshold=0.85, min_cluster_size=2, chunks=(3, 4))
        assert_same(res, ref)
    with h5py.File(path, "r") as f:
        res = segment_chunked(f["data"], threshold=0.85, min_cluster_size=2)
    assert_same(res, ref)


class _Recorder:
    """A lazy cube that makes patterns on the fly and records every read."""

    def __init__(self, shape, dtype=np.float32):
        self.shape, self.dtype, self.ndim = shape, np.dtype(dtype), len(shape)
        self.reads = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __getitem__(self, key):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            rows, cols = key[-2], key[-1]
            r = np.arange(self.shape[-4])[rows]
            c = np.arange(self.shape[-3])[cols]
            base = np.add.outer(r, c).astype(np.float32)
            q = np.arange(np.prod(self.shape[-2:]), dtype=np.float32)
            out = np.cos(base[..., None] * 0.3 + q * 0.01) + 2.0
            out = out.reshape(len(r), len(c), *self.shape[-2:]).astype(self.dtype)
            self.reads.append(out.nbytes)
            return out
        finally:
            with self._lock:
                self.active -= 1


def test_memory_budget_bounds_blocks_whatever_the_cube_size():
    limit = 4 * 2**20
    sizes = []
    for scan in [(24, 24), (96, 96)]:
        src = _Recorder((*scan, 16, 16))
        stats = RunStats()
        res = segment_chunked(
            src,
            real_mask=None,
            memory_limit=limit,
            executor=ThreadExecutor(2),
            stats=stats,
        )
        plan = stats.plan
        assert plan.peak_bytes <= limit
        # no read larger than one task's share, never more than `concurrency` at once
        assert max(src.reads) * 2 <= plan.task_bytes
        assert src.max_active <= plan.concurrency
        assert res.labels.shape == scan
        sizes.append(max(src.reads))
    # the largest block does not grow with the cube
    assert sizes[1] <= sizes[0] * 1.5
    assert stats.plan.n_blocks > 4


@pytest.mark.parametrize("average", ["raw", "prefiltered"])
def test_read_once_when_the_budget_allows(cube5, average):
    """On threads, the sums pass adds up the blocks the similarity pass read."""
    kw = dict(threshold=0.85, min_cluster_size=2, real_mask=None, chunks=(4, 5))
    pre = average == "prefiltered"
    if pre:
        kw.update(prefilter={"radius": 1}, average=average)
    ref = segment(cube5, **{k: v for k, v in kw.items() if k != "chunks"})
    assert ref.n_clusters[0] >= 2
    seen = []

    class Counting(np.ndarray):
        def __getitem__(self, key):
            seen.append(key)
            return np.asarray(super().__getitem__(key))

    src = cube5.view(Counting)
    stats = RunStats()
    res = segment_chunked(src, **kw, executor=ThreadExecutor(2), stats=stats)
    assert_same(res, ref)
    n_blocks = 3 * stats.plan.n_blocks
    if pre:  # the sums need the prefilter's halo: read again
        assert len(seen) > n_blocks and stats.bytes_reused == 0
    else:
        assert len(seen) == n_blocks  # each block read once
        assert stats.bytes_reused > 0
        # halos included, no second pass
        assert stats.bytes_read == sum(np.asarray(cube5[k]).nbytes for k in seen)
    # a budget with no room beside the tasks: the sums pass reads the file again
    seen.clear()
    plan = plan_chunks(
        cube5.shape,
        cube5.dtype,
        block_shape=(4, 5),
        concurrency=2,
        prefilter_radius=1 if pre else None,
    )
    stats = RunStats()
    res = segment_chunked(
        src, **kw, executor=ThreadExecutor(2), stats=stats, memory_limit=plan.peak_bytes
    )
    assert_same(res, ref)
    assert len(seen) > n_blocks and stats.bytes_reused == 0


def test_tight_budget_runs_fewer_tasks_than_threads():
    src = _Recorder((40, 40, 32, 32))
    stats = RunStats()
    segment_chunked(
        src, memory_limit=2**20, executor=ThreadExecutor(2), stats=stats, real_mask=None
    )
    assert stats.plan.concurrency == 1 and stats.plan.n_blocks > 2
    assert src.max_active == 1
    assert stats.plan.peak_bytes <= 2**20


# ----------------------------------------------------------------------
# the chunk planner


@pytest.mark.parametrize(
    "shape,dtype,limit,conc,radius",
    [
        ((256, 256, 128, 128), np.uint16, "1GiB", 2, None),
        ((512, 512, 192, 192), np.uint16, "8GB", 4, 4),
        ((30, 64, 64, 96, 96), np.uint32, "512MiB", 8, None),
        ((10, 13, 8, 8), np.float64, 10**6, 2, 2),
        ((1, 4000, 64, 64), np.float32, "100MB", 2, None),
    ],
)
def test_plan_respects_the_budget(shape, dtype, limit, conc, radius):
    from napari_stemcluster.engine.planning import bytes_per_pattern, parse_memory

    plan = plan_chunks(shape, dtype, memory_limit=limit, concurrency=conc, prefilter_radius=radius)
    assert plan.peak_bytes <= parse_memory(limit)
    assert 1 <= plan.concurrency <= conc
    h, w = plan.block_shape
    g = plan.halo
    assert g == 1 + (radius or 0)
    rx, ry = shape[-4:-2]
    ext = min(rx, h + 2 * g) * min(ry, w + 2 * g)
    per = bytes_per_pattern(shape[-2:], np.dtype(dtype).itemsize, radius is not None)
    assert plan.task_bytes == ext * per
    # the boxes partition the scan
    cover = np.zeros((rx, ry), int)
    for r0, r1, c0, c1 in plan.boxes():
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all() and len(plan.boxes()) == plan.n_blocks


def test_plan_small_budget_fewer_tasks_then_error():
    shape = (64, 64, 64, 64)
    roomy = plan_chunks(shape, np.uint16, memory_limit="2GB", concurrency=4)
    assert roomy.concurrency == 4
    tight = plan_chunks(shape, np.uint16, memory_limit="2MB", concurrency=4)
    assert tight.concurrency < 4 and tight.peak_bytes <= 2e6
    assert tight.block_shape[0] * tight.block_shape[1] < 64 * 64
    with pytest.raises(ValueError, match=r"memory limit .* is too small"):
        plan_chunks(shape, np.uint16, memory_limit="200kB", concurrency=4)
    with pytest.raises(ValueError, match=r"blocks of 64x64 .* more than the memory"):
        plan_chunks(shape, np.uint16, memory_limit="2MB", block_shape=(64, 64))
    with pytest.raises(ValueError, match="two positive integers"):
        plan_chunks(shape, np.uint16, block_shape=(0, 3))


def test_plan_whole_scan_when_small_and_aligned_to_file_chunks():
    small = plan_chunks((10, 13, 8, 8), np.uint16, memory_limit="1GB")
    assert small.block_shape == (10, 13) and small.n_blocks == 1
    # large enough to need several blocks: rows are multiples of the file chunk
    plan = plan_chunks(
        (300, 300, 128, 128),
        np.uint16,
        memory_limit="1GB",
        concurrency=2,
        source_chunks=(4, 300),
    )
    assert plan.n_blocks > 1 and plan.block_shape[0] % 4 == 0
    # a halo into the next chunk column decodes it whole: whole-width blocks
    # of narrow chunks rather than square blocks that straddle them
    shape = (2, 128, 128, 64, 64)
    plain = plan_chunks(shape, np.uint16, memory_limit="5GB", concurrency=2)
    chunked = plan_chunks(
        shape, np.uint16, memory_limit="5GB", concurrency=2, source_chunks=(4, 64)
    )
    assert plain.block_shape == (64, 64)
    assert chunked.block_shape[1] == 128 and chunked.block_shape[0] % 4 == 0
    # chunks larger than any block that fits: blocks as without them, not 1x1
    big = plan_chunks(
        (8, *shape[1:]), np.uint16, memory_limit="300MB", concurrency=2, source_chunks=(64, 128)
    )
    free = plan_chunks((8, *shape[1:]), np.uint16, memory_limit="300MB", concurrency=2)
    assert big.block_shape == free.block_shape and min(big.block_shape) > 8
    # enough blocks for every task slot
    assert plan_chunks((8, 8, 4, 4), np.uint8, concurrency=4).n_blocks >= 4


@pytest.mark.parametrize(
    "text,value",
    [("4GB", 4 * 10**9), ("512 MiB", 512 * 2**20), ("1e6", 10**6), (2048, 2048)],
)
def test_parse_memory(text, value):
    from napari_stemcluster.engine import parse_memory

    assert parse_memory(text) == value


@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, True, None, "0"])
def test_parse_memory_rejects(bad):
    from napari_stemcluster.engine import parse_memory

    with pytest.raises(ValueError, match="memory limit"):
        parse_memory(bad)


# ----------------------------------------------------------------------
# progress, cancellation, errors


def test_progress_and_stages(cube5):
    seen, stages = [], {}
    segment_chunked(
        cube5,
        chunks=(4, 4),
        progress=lambda d, t: seen.append((d, t)),
        on_stage=lambda s, d, t: stages.__setitem__(s, (d, t)),
    )
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1] > 0
    assert stages["similarity"] == (27, 27)  # 3 steps x 9 blocks
    assert stages["regions"] == (3, 3)
    assert stages["averages"] == (27, 27)


class Stop(Exception):
    pass


def test_cancel_from_progress_stops_the_run(cube5):
    src = _Recorder((3, 30, 30, 16, 16))
    calls = []

    def progress(done, total):
        calls.append(done)
        if done >= 3:
            raise Stop

    ex = ThreadExecutor(2)
    with pytest.raises(Stop):
        segment_chunked(src, chunks=(5, 5), progress=progress, executor=ex)
    n_reads = len(src.reads)
    assert n_reads < 3 * 36  # far from all the blocks
    assert src.active == 0  # no task is left running
    # the executor is still usable
    res = segment_chunked(cube5, executor=ex)
    assert_same(res, segment(cube5))
    ex.close()
    assert len(src.reads) == n_reads


def test_keyboard_interrupt_propagates(cube4):
    def progress(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_chunked(cube4, chunks=(2, 2), progress=progress)


def test_nan_input_is_a_clear_error(cube4):
    cube = cube4.astype(np.float32)
    cube[7, 9, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        segment_chunked(cube, chunks=(3, 5))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"average": "mean"}, "average must be"),
        ({"prefilter": {"radius": 2, "bogus": 1}}, "unknown prefilter option"),
        ({"prefilter": {"corr_range": (0.9, 0.1)}}, "corr_range"),
        ({"real_mask": "li"}, "unknown real-space mask method"),
        ({"real_mask": np.ones((3, 3), bool)}, "real_mask must be"),
        ({"q_mask": np.ones((2, 2), bool)}, "q_mask must be"),
        ({"sigma": -1}, "sigma must be"),
        ({"times": (0, 2)}, "5D"),
        ({"memory_limit": "1kB"}, "too small"),
        ({"chunks": (2, -1)}, "two positive integers"),
    ],
)
def test_bad_arguments_fail_before_reading(kwargs, match):
    src = _Recorder((6, 7, 16, 16))
    with pytest.raises((ValueError, TypeError), match=match):
        segment_chunked(src, **kwargs)
    assert src.reads == []


@pytest.mark.parametrize("times", [(2, 5), (1, 1), "0:2"])
def test_bad_time_ranges(cube5, times):
    with pytest.raises(ValueError, match="times"):
        segment_chunked(cube5, times=times)


def test_get_executor_choices():
    with get_executor(threads=3) as ex:
        assert isinstance(ex, ThreadExecutor) and ex.slots == 3
        assert ex.submit(sum, [1, 2]).result() == 3
    with pytest.raises(ValueError, match="not both"):
        get_executor("tcp://127.0.0.1:1", 2)
    with pytest.raises(ValueError, match="n_threads"):
        ThreadExecutor(0)


def test_in_memory_hdf5_runs_on_threads_and_is_refused_by_workers(cube5):
    import pickle

    from napari_stemcluster.engine._tasks import BlockSource

    with h5py.File("in-memory.h5", "w", driver="core", backing_store=False) as f:
        d = f.create_dataset("data", data=cube5[0], chunks=(3, 4, 6, 6))
        res = segment_chunked(d, threshold=0.85, real_mask=None, chunks=(4, 5))
        assert_same(res, segment(cube5[0], threshold=0.85, real_mask=None))
        with pytest.raises(TypeError, match="held in memory"):
            pickle.dumps(BlockSource(d))
    assert not os.path.exists("in-memory.h5")


def test_mean_linkage_cuts_components_so_sums_wait_for_the_labels():
    """Why the sums pass needs the labels (kept blocks or a second read).

    Sums accumulated during the similarity pass per connected component of
    the block's threshold graph would give the cluster sums exactly only if
    every cluster were a union of such components. That holds for
    ``linkage="pair"`` with a fixed threshold (clusters are the components),
    not for the default ``"mean"``: across a gradual transition every
    neighbouring pair passes the threshold, yet growth splits the component.
    """
    from napari_stemcluster.core.regions import grow_regions
    from napari_stemcluster.core.similarity import neighbor_similarity

    n = 40
    angle = np.linspace(0, np.pi / 2, n)
    cube = np.zeros((1, n, 4, 4), np.float32)
    cube[0, :, 0, 0] = np.cos(angle)
    cube[0, :, 3, 3] = np.sin(angle)
    sim = neighbor_similarity(cube)
    assert np.nanmin(sim) >= 0.95  # one component of the threshold graph
    pair, _ = grow_regions(sim, 0.95, linkage="pair")
    mean, _ = grow_regions(sim, 0.95, linkage="mean", features=cube.reshape(1, n, 16))
    assert set(pair.ravel()) == {1}
    assert len(set(mean.ravel())) > 1


def test_series_larger_than_the_budget_is_read_about_once():
    """Room for one time step's blocks is kept free, so they wait for the sums."""
    cube = grains_cube(4, (48, 40), (16, 16), n_grains=4, n_times=4, dose=2000.0)
    kw = dict(threshold=0.85, min_cluster_size=2, real_mask=None)
    ref = segment(cube, **kw)
    assert min(ref.n_clusters) >= 2
    budget = 3 * cube[0].nbytes  # the file is 4 steps
    stats = RunStats()
    res = segment_chunked(cube, **kw, memory_limit=budget, stats=stats, executor=ThreadExecutor(2))
    assert_same(res, ref)
    assert stats.plan.memory_limit == budget and stats.plan.peak_bytes <= budget
    assert stats.bytes_reused > 0.5 * cube.nbytes
    # halos of small blocks included; a second read of the file would be >= 2x
    assert stats.bytes_read < 1.6 * cube.nbytes


def test_block_memory_reused_between_reads(tmp_path, cube5, monkeypatch):
    # Every block read through the chunk reader comes from (and goes back
    # to) the reuse pool: same results, fewer fresh allocations.
    import hdf5plugin

    from napari_stemcluster.io import _chunks

    buffers = _chunks._Buffers(limit=2)
    monkeypatch.setattr(buffers, "MIN_BYTES", 0)
    monkeypatch.setattr(_chunks, "_buffers", buffers)
    made = []
    empty = buffers.empty
    monkeypatch.setattr(buffers, "empty", lambda *a: made.append(len(buffers._free)) or empty(*a))
    path = tmp_path / "cube.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "data", data=cube5, chunks=(1, 3, 11, 16, 16), **hdf5plugin.Bitshuffle(cname="lz4")
        )
    ref = segment(cube5, threshold=0.85, min_cluster_size=2, q_mask=(1, 7), sigma=1.0)
    for memory_limit in (None, "420kB"):  # blocks kept for the sums, or read twice
        res = segment_chunked(
            open_dataset(path),
            threshold=0.85,
            min_cluster_size=2,
            q_mask=(1, 7),
            sigma=1.0,
            chunks=(3, 11),
            memory_limit=memory_limit,
        )
        assert_same(res, ref)
        assert not buffers._free  # given back at the end of the run
    assert len(made) > 6 and any(made)  # some reads found a buffer to reuse
