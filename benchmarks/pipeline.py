"""Whole-pipeline throughput and peak memory of the chunked engine.

Run ``python benchmarks/pipeline.py`` for a file that fits in memory (about
a minute): the in-memory path (h5py load + ``core.segment``) and the chunked
engine on threads, 1 and 2 worker processes, each with and without the
correlative prefilter. ``--big`` generates an HDF5 file of at least 1.5
times this machine's RAM, segments it with 1 and 2 worker processes under
``--memory-limit`` (default 4GB), and deletes it afterwards (``--keep`` to
keep it).

Every run is a fresh process; its peak memory is the largest sum of the
resident set sizes of the process and all its children (the dask workers),
sampled every 50 ms. Throughput is GB (1e9 bytes) of input per second of
segmentation (worker start-up excluded; the in-memory path's load from
the file is listed separately).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from napari_stemcluster.engine.planning import format_bytes, total_memory  # noqa: E402
from pipeline_data import write_cube  # noqa: E402


def run(spec: dict) -> dict:
    """Run one configuration in a subprocess, sampling its memory."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "pipeline_run.py"), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = [0]
    stop = threading.Event()

    def sample():
        try:
            p = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            total = 0
            try:
                for q in [p, *p.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        total += q.memory_info().rss
            except psutil.NoSuchProcess:
                break
            peak[0] = max(peak[0], total)
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec} failed:\n{err[-3000:]}")
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["peak_tree_rss"] = peak[0]
    return result


def describe(r: dict) -> str:
    s = r["spec"]
    if s["mode"] == "memory":
        return "in-memory (h5py load + core.segment)"
    if s["workers"] is None:
        return "engine, threads in one process"
    return f"engine, {s['workers']} worker process{'es' if s['workers'] > 1 else ''}"


def total_seconds(r: dict) -> float:
    """Time from the file to the result (the in-memory path loads the file first)."""
    return r["seconds"] + r.get("load_seconds", 0.0)


def table(results: list[dict], budget: str) -> str:
    base = {
        r["spec"]["prefilter"]: r["bytes"] / total_seconds(r)
        for r in results
        if r["spec"]["mode"] == "memory"
    }
    head = (
        "| path | prefilter | time (s) | GB/s | vs in-memory (load + segment) "
        "| peak RSS (process tree) |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in results:
        pre = r["spec"]["prefilter"]
        rate = r["bytes"] / total_seconds(r)
        ratio = f"{rate / base[pre]:.2f}x" if pre in base else "-"
        time_s = f"{total_seconds(r):.1f}"
        gbs = f"{rate / 1e9:.3f}"
        if r["spec"]["mode"] == "memory":
            time_s += f" ({r['load_seconds']:.1f} load + {r['seconds']:.1f} segment)"
            gbs += f" ({r['bytes'] / r['seconds'] / 1e9:.3f} without the load)"
        lines.append(
            f"| {describe(r)} | {'yes' if pre else 'no'} | {time_s} | {gbs} | {ratio} "
            f"| {format_bytes(r['peak_tree_rss'])} |"
        )
    lines.append(f"\nmemory limit of the engine runs: {budget}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true", help="file >= 1.5x RAM (slow)")
    p.add_argument("--memory-limit", default=None, help="engine budget (--big: 4GB)")
    p.add_argument("--steps", type=int, help="time steps of the generated file")
    p.add_argument("--dir", help="where to write the file (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the generated file")
    p.add_argument(
        "--runs",
        default=None,
        help="comma-separated: memory, threads, 1, 2 (default: all for the small "
        "file, 1,2 with --big)",
    )
    p.add_argument("--no-prefilter-runs", action="store_true")
    p.add_argument("--json", help="also write all figures to this JSON file")
    args = p.parse_args(argv)

    ram = total_memory()
    if args.big:
        scan, det = (256, 256), (128, 128)
        step = scan[0] * scan[1] * det[0] * det[1] * 2
        n_steps = args.steps or math.ceil(1.5 * ram / step)
        budget = args.memory_limit or "4GB"
        runs = (args.runs or "1,2").split(",")
    else:
        scan, det = (128, 128), (64, 64)
        step = scan[0] * scan[1] * det[0] * det[1] * 2
        n_steps = args.steps or 3
        budget = args.memory_limit
        runs = (args.runs or "memory,threads,1,2").split(",")
    size = n_steps * step
    print(
        f"machine: {os.cpu_count()} CPUs, {format_bytes(ram)} RAM; file: {n_steps} x "
        f"{scan[0]}x{scan[1]} scan x {det[0]}x{det[1]} uint16 = {format_bytes(size)} "
        f"({size / ram:.2f}x RAM)",
        flush=True,
    )
    if args.big:
        free = shutil.disk_usage(args.dir or tempfile.gettempdir()).free
        if free < size * 1.05:
            print(f"not enough disk space: {format_bytes(free)} free", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="stemcluster-bench-", dir=args.dir))
    path = tmp / "cube.h5"
    results = []
    try:
        t0 = time.perf_counter()
        write_cube(path, n_steps, scan, det, log=print if args.big else None)
        print(f"generated {path} in {time.perf_counter() - t0:.0f} s", flush=True)
        prefilters = [False] if args.no_prefilter_runs else [False, True]
        for pre in prefilters:
            for kind in runs:
                spec = {"path": str(path), "prefilter": pre, "memory_limit": budget}
                if kind == "memory":
                    spec.update(mode="memory", workers=None)
                else:
                    workers = None if kind == "threads" else int(kind)
                    spec.update(mode="engine", workers=workers)
                r = run(spec)
                results.append(r)
                print(
                    f"{describe(r)}, prefilter {pre}: {r['seconds']:.1f} s, "
                    f"{r['bytes'] / r['seconds'] / 1e9:.3f} GB/s, peak "
                    f"{format_bytes(r['peak_tree_rss'])}; {r.get('plan', '')}",
                    flush=True,
                )
        for pre in prefilters:
            hashes = {r["labels_sha1"] for r in results if r["spec"]["prefilter"] == pre}
            status = "identical" if len(hashes) == 1 else "DIFFERENT"
            print(f"labels of all runs (prefilter {pre}): {status}")
        print()
        print(table(results, budget or "default (a quarter of RAM)"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
