"""A run on a dask.distributed cluster of worker processes gives the in-memory result.

One local cluster (2 single-threaded worker processes on the loopback
interface) serves the whole module.
"""

import dataclasses
import os

import h5py
import numpy as np
import pytest

from napari_stemcluster import segment
from napari_stemcluster.engine import DistributedExecutor, RunStats, segment_chunked
from napari_stemcluster.engine.planning import plan_chunks
from napari_stemcluster.io import open_dataset
from test_engine import assert_same, grains_cube


@pytest.fixture(scope="module")
def cluster():
    with DistributedExecutor(n_workers=2) as ex:
        scratch = ex._scratch
        assert os.path.isdir(scratch)
        yield ex
    assert not os.path.exists(scratch)  # the workers' scratch space is removed


@pytest.fixture(scope="module")
def series():
    return grains_cube(7, (10, 12), (16, 16), n_grains=4, n_times=3)


def test_cluster_is_local_processes(cluster):
    assert cluster.slots == 2
    assert cluster.numba_threads >= 1
    addresses = list(cluster.client.nthreads())
    assert len(addresses) == 2
    assert all(a.startswith("tcp://127.0.0.1:") for a in addresses)
    pids = cluster.client.run(os.getpid)
    assert len(set(pids.values())) == 2  # two processes, not threads


def test_file_backed_5d_with_prefilter_equals_in_memory(cluster, series, tmp_path):
    path = tmp_path / "series.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=series, chunks=(1, 3, 12, 16, 16))
    kw = {"threshold": 0.8, "min_cluster_size": 2, "prefilter": {"radius": 2}}
    ref = segment(series, **kw)
    assert sum(ref.n_clusters) >= 4
    stats = RunStats()
    ds = open_dataset(path)  # workers open the file themselves
    res = segment_chunked(ds, **kw, executor=cluster, chunks=(3, 5), stats=stats)
    # Prefiltered similarities from worker processes have been seen one unit
    # in the last places away from the in-process ones (up to 4 ulp); the rest is exact.
    for name in ("similarity", "mean_similarity"):
        got, want = getattr(res, name), getattr(ref, name)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        finite = ~np.isnan(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-7)
    for a, b in zip(res.clusters, ref.clusters, strict=True):
        np.testing.assert_array_equal(a.size, b.size)
        np.testing.assert_array_equal(a.seed, b.seed)
        np.testing.assert_allclose(a.mean_similarity, b.mean_similarity, rtol=1e-6)
    same = {k: getattr(ref, k) for k in ("similarity", "mean_similarity", "clusters")}
    assert_same(dataclasses.replace(res, **same), ref)
    assert "local worker processes" in stats.executor
    # an h5py dataset is sent to the workers as its file name and path
    with h5py.File(path, "r") as f:
        res = segment_chunked(
            f["data"], threshold=0.8, min_cluster_size=2, executor=cluster, chunks=(4, 4)
        )
    assert_same(res, segment(series, threshold=0.8, min_cluster_size=2))


def test_numpy_input_and_client_as_executor(cluster, series):
    ref = segment(series[1], threshold=0.85, min_cluster_size=2, sigma=1.0)
    res = segment_chunked(
        series[1],
        threshold=0.85,
        min_cluster_size=2,
        sigma=1.0,
        executor=cluster.client,
        chunks=(1, 12),
    )
    assert_same(res, ref)


class Stop(Exception):
    pass


def test_cancel_and_worker_errors(cluster, series):
    def progress(done, total):
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        segment_chunked(series, executor=cluster, chunks=(2, 2), progress=progress)
    bad = series[0].astype(np.float32)
    bad[5, 6, 2, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        segment_chunked(bad, executor=cluster, chunks=(3, 3))
    # the cluster still works after both
    res = segment_chunked(series[2], executor=cluster, chunks=(5, 5))
    assert_same(res, segment(series[2]))


def _kept_blocks():
    from napari_stemcluster.engine import _tasks

    return len(_tasks._kept)


def test_workers_read_the_file_once(cluster, series, tmp_path):
    """Blocks stay in the worker that read them; the sums task is sent there."""
    path = tmp_path / "series.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=series, chunks=(1, 3, 12, 16, 16))
    kw = {"threshold": 0.8, "min_cluster_size": 2, "real_mask": None}
    ref = segment(series, **kw)
    stats = RunStats()
    res = segment_chunked(open_dataset(path), **kw, executor=cluster, chunks=(4, 5), stats=stats)
    assert_same(res, ref)
    assert stats.bytes_reused > 0
    # every kept block was summed where it was read, or read again: never both
    # the whole similarity pass was read once and nothing else (halos included)
    halo_bytes = 0
    for r0, r1, c0, c1 in stats.plan.boxes():
        h = min(10, r1 + 1) - max(0, r0 - 1)
        w = min(12, c1 + 1) - max(0, c0 - 1)
        halo_bytes += h * w * 16 * 16 * series.itemsize
    assert stats.bytes_read == 3 * halo_bytes
    assert stats.bytes_reused == stats.bytes_read  # no position without a label
    # nothing stays in the workers after the run
    assert set(cluster.client.run(_kept_blocks).values()) == {0}
    # without room for kept blocks, the sums pass reads the file again
    plan = plan_chunks(series.shape, series.dtype, block_shape=(4, 5), concurrency=2)
    stats = RunStats()
    res = segment_chunked(
        open_dataset(path),
        **kw,
        executor=cluster,
        chunks=(4, 5),
        stats=stats,
        memory_limit=plan.peak_bytes,
    )
    assert_same(res, ref)
    assert stats.bytes_reused == 0 and stats.bytes_read > 3 * halo_bytes


def test_sums_task_reads_a_block_kept_elsewhere(series):
    from napari_stemcluster.core.passes import make_spec
    from napari_stemcluster.engine._tasks import (
        BlockSource,
        drop_kept,
        similarity_task,
        sums_task,
    )

    src = BlockSource(series)
    spec = make_spec(None, None, 0.0)
    box = (0, 4, 0, 5)
    labels = np.ones((4, 5), np.int32)
    *_, kept = similarity_task(src, 1, box, spec, False, "run-a")
    assert kept.nbytes == 5 * 6 * 16 * 16 * series.itemsize  # with the halo
    ids, sums, _, reused = sums_task(src, 1, box, labels, spec, "run-b")  # not there: read
    assert reused == 0
    ids2, sums2, _, reused2 = sums_task(src, 1, box, labels, spec, "run-a")
    assert reused2 == kept.nbytes
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(sums, sums2)
    np.testing.assert_array_equal(sums[0], series[1, :4, :5].sum(axis=(0, 1), dtype=np.float64))
    assert drop_kept("run-a") == 0  # taken by its sums task
    similarity_task(src, 0, box, spec, False, "run-c")
    assert drop_kept("run-c") == 1
    # a task of a run that already ended (cancelled while it ran) keeps nothing
    similarity_task(src, 0, box, spec, False, "run-c")
    assert drop_kept("run-c") == 0
