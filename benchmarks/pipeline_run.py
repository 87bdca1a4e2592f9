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

import hashlib
import json
import os
import resource
import sys
import time


def main(spec: dict) -> dict:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Bitshuffle/LZ4 filter)
    import numpy as np

    from napari_stemcluster import segment
    from napari_stemcluster.engine import RunStats, get_executor, segment_chunked
    from napari_stemcluster.io import open_dataset

    out = {"spec": spec}
    repeat = int(spec.get("repeat", 1))
    if spec["mode"] in ("read", "chunks"):
        # "read": h5py, one chunk-aligned slab after the other (the comparator);
        # "chunks": the same slabs through the readers' parallel chunk decoding
        with h5py.File(spec["path"], "r") as f:
            d = f["data"]
            step = d.chunks[1] if d.chunks else 4
            src = d if spec["mode"] == "read" else open_dataset(spec["path"]).source
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                total = 0
                for t in range(d.shape[0]):
                    for r in range(0, d.shape[1], step):
                        total += src[t, r : r + step].nbytes
                times.append(time.perf_counter() - t0)
            out["all_seconds"] = times
            out["seconds"] = float(np.median(times))
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
                stats = RunStats()
                t0 = time.perf_counter()
                res = segment_chunked(
                    ds, **kwargs, executor=ex, memory_limit=spec["memory_limit"], stats=stats
                )
                runs.append((time.perf_counter() - t0, stats))
        # the median run (by total time) gives every figure
        runs.sort(key=lambda r: r[0])
        seconds, stats = runs[len(runs) // 2]
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
