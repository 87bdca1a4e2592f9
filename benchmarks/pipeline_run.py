"""One benchmark run in its own process; prints a JSON line with the figures.

``python benchmarks/pipeline_run.py '{"path": ..., "mode": "engine", ...}'``

mode "memory" loads the whole cube with h5py and runs ``core.segment``;
mode "engine" runs ``engine.segment_chunked`` on the file, on threads
(``workers`` null) or on a local cluster of ``workers`` processes; mode
"read" only reads the whole file with h5py, one chunk-aligned slab at a time
(the raw read throughput the engine is compared with); mode "chunks" reads
the same slabs through the file readers (chunks decoded on all cores).
``repeat`` runs the timed part that many times; the median run is reported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import sys
import time


def drop_cache(path: str) -> None:
    """Evict the file's pages from the page cache (no root needed), so that
    the next read comes from the disk, as for a file larger than RAM."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_read(path: str) -> int:
    """Read the whole file in 8 MiB pieces (the disk's throughput); returns bytes."""
    total = 0
    buf = bytearray(8 * 2**20)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def disk_ticks(path: str) -> int | None:
    """Milliseconds the disk holding ``path`` has spent with I/O in flight
    (``/proc/diskstats``), or None where that is not known."""
    try:
        dev = os.stat(path).st_dev
        want = (os.major(dev), os.minor(dev))
        with open("/proc/diskstats") as f:
            for line in f:
                p = line.split()
                if (int(p[0]), int(p[1])) == want:
                    return int(p[12])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_seconds() -> float:
    """CPU time of this process and its children alive now (dask workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def main(spec: dict) -> dict:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Bitshuffle/LZ4 filter)
    import numpy as np

    from napari_stemcluster import segment
    from napari_stemcluster.engine import RunStats, get_executor, segment_chunked
    from napari_stemcluster.io import open_dataset

    out = {"spec": spec}
    if spec.get("prefetch") is False:
        # the comparator without read-ahead: the engine sees no file to hint
        from napari_stemcluster.engine._tasks import BlockSource

        BlockSource.can_prefetch = lambda self: False
    if spec.get("read_ahead") is not None:
        # blocks read into memory ahead of their task, or not, whatever the
        # executor's default (the comparator of that choice)
        from napari_stemcluster.engine import DistributedExecutor, ThreadExecutor

        ahead = bool(spec["read_ahead"])
        for cls in (DistributedExecutor, ThreadExecutor):
            cls.__init__ = functools.partialmethod(cls.__init__, read_ahead=ahead)
    repeat = int(spec.get("repeat", 1))
    cold = bool(spec.get("cold"))
    if spec["mode"] == "disk":
        # the plain file, sequentially: what the disk (or page cache) gives
        times = []
        for _ in range(repeat):
            if cold:
                drop_cache(spec["path"])
            t0, c0 = time.perf_counter(), cpu_seconds()
            total = disk_read(spec["path"])
            times.append(time.perf_counter() - t0)
            out.setdefault("all_cpu", []).append(cpu_seconds() - c0)
        out["all_seconds"] = times
        out["seconds"] = float(np.median(times))
        out["cpu_seconds"] = float(np.median(out["all_cpu"]))
        out["bytes"] = total
        return out
    if spec["mode"] in ("read", "chunks"):
        # "read": h5py, one chunk-aligned slab after the other (the comparator);
        # "chunks": the same slabs through the readers' parallel chunk decoding
        with h5py.File(spec["path"], "r") as f:
            d = f["data"]
            step = d.chunks[1] if d.chunks else 4
            src = d if spec["mode"] == "read" else open_dataset(spec["path"]).source
            times = []
            for _ in range(repeat):
                if cold:
                    drop_cache(spec["path"])
                d0 = disk_ticks(spec["path"])
                t0, c0 = time.perf_counter(), cpu_seconds()
                total = 0
                for t in range(d.shape[0]):
                    for r in range(0, d.shape[1], step):
                        total += src[t, r : r + step].nbytes
                times.append(time.perf_counter() - t0)
                out.setdefault("all_cpu", []).append(cpu_seconds() - c0)
                d1 = disk_ticks(spec["path"])
                if d0 is not None and d1 is not None:
                    out.setdefault("all_busy", []).append((d1 - d0) / 1000 / times[-1])
            out["all_seconds"] = times
            out["seconds"] = float(np.median(times))
            out["cpu_seconds"] = float(np.median(out["all_cpu"]))
            if out.get("all_busy"):
                out["disk_busy"] = float(np.median(out["all_busy"]))
            out["bytes"] = total
        return out
    kwargs = {"prefilter": bool(spec["prefilter"])}
    if spec.get("q_mask") is not None:
        kwargs["q_mask"] = tuple(spec["q_mask"])
    if spec.get("sigma"):
        kwargs["sigma"] = float(spec["sigma"])
    # Load the compiled kernels (numba's cache) before timing, in every process.
    with h5py.File(spec["path"], "r") as f:
        tiny = f["data"][0, :6, :6]
    segment(tiny, **kwargs)
    if spec["mode"] == "memory":
        t0 = time.perf_counter()
        with h5py.File(spec["path"], "r") as f:
            cube = f["data"][()]
        out["load_seconds"] = time.perf_counter() - t0
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            res = segment(cube, **kwargs)
            times.append(time.perf_counter() - t0)
        out["all_seconds"] = times
        out["seconds"] = float(np.median(times))
        out["bytes"] = cube.nbytes
    else:
        ds = open_dataset(spec["path"])
        t0 = time.perf_counter()
        runs = []
        with get_executor(workers=spec["workers"]) as ex:
            segment_chunked(tiny, **kwargs, executor=ex, chunks=(3, 3))
            out["start_seconds"] = time.perf_counter() - t0
            for _ in range(repeat):
                if cold:
                    drop_cache(spec["path"])
                stats = RunStats()
                d0 = disk_ticks(spec["path"])
                t0, c0 = time.perf_counter(), cpu_seconds()
                res = segment_chunked(
                    ds, **kwargs, executor=ex, memory_limit=spec["memory_limit"], stats=stats
                )
                dt = time.perf_counter() - t0
                d1 = disk_ticks(spec["path"])
                busy = None if d0 is None or d1 is None else (d1 - d0) / 1000 / dt
                runs.append((dt, stats, cpu_seconds() - c0, busy))
        # the median run (by total time) gives every figure
        runs.sort(key=lambda r: r[0])
        seconds, stats, cpu, busy = runs[len(runs) // 2]
        out["cpu_seconds"] = cpu
        out["disk_busy"] = busy
        out["all_seconds"] = [r[0] for r in runs]
        out["seconds"] = seconds
        out["bytes"] = ds.nbytes
        out["plan"] = stats.plan.describe()
        out["plan_peak_bytes"] = stats.plan.peak_bytes
        out["concurrency"] = stats.plan.concurrency
        out["stage_seconds"] = stats.stage_seconds
        out["task_seconds"] = stats.task_seconds
        out["bytes_read"] = stats.bytes_read
        out["bytes_reused"] = stats.bytes_reused
        out["bytes_prefetched"] = stats.bytes_prefetched
        out["bytes_read_ahead"] = stats.bytes_read_ahead
    out["clusters"] = res.n_clusters
    out["labels_sha1"] = hashlib.sha1(np.ascontiguousarray(res.labels)).hexdigest()
    out["maxrss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["maxrss_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return out


if __name__ == "__main__":
    load0 = os.getloadavg()[0]
    result = main(json.loads(sys.argv[1]))
    result["load"] = [load0, os.getloadavg()[0]]
    print("RESULT " + json.dumps(result), flush=True)
