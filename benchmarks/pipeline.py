"""Whole-pipeline throughput and peak memory of the chunked engine.

Run ``python benchmarks/pipeline.py`` for two files that fit in memory
(about 5 minutes; ``--repeat 1`` for about 2): the same 256 MiB 5D cube
written uncompressed and with Bitshuffle + LZ4, each segmented by the
chunked engine on threads and on 2 worker processes with the settings
microscopists use (an annulus q-mask excluding the direct beam, blur σ 1).
The comparator is the raw h5py read throughput of the same file, measured in
the same run (before and after the engine runs; the median of all repeats).
The file readers' parallel chunk read of the same file is listed beside it.
Every process repeats its timed part ``--repeat`` times (default 3) and
reports the median run; the table also gives each pass's throughput
(similarity, averages) against the read, and the bytes read from the file
per input byte (1.00x: read once). ``--plain`` adds runs without mask and
blur and with the prefilter; ``--runs memory,threads,1,2`` chooses
executors. ``--big`` generates files larger than this machine's RAM (1.15x
by default, time steps of 128² scan positions x 128² uint16, 512 MiB each),
runs them under ``--memory-limit`` (default 4GB), evicts each file from the
page cache before every run (so every run reads it from the disk, also an
LZ4 file smaller than RAM), adds a plain sequential read of the file (the
disk's throughput) beside the comparators, and deletes the files afterwards
(``--keep`` to keep them; ``--dir D --reuse`` uses files kept in ``D``).
The table also gives the CPU seconds per GB of every run (workers included),
the figure a busy machine disturbs least.

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
    if s["mode"] == "read":
        return "h5py read of the file (comparator)"
    if s["mode"] == "disk":
        return "plain sequential read of the file (the disk)"
    if s["mode"] == "chunks":
        return "file readers' parallel chunk read"
    if s["mode"] == "memory":
        return "in-memory (h5py load + core.segment)"
    ahead = s.get("read_ahead")
    plain = "" if ahead is None else (" (blocks read ahead)" if ahead else " (no block read-ahead)")
    if s["workers"] is None:
        return f"engine, threads in one process{plain}"
    return f"engine, {s['workers']} worker process{'es' if s['workers'] > 1 else ''}{plain}"


def settings(spec: dict) -> str:
    if spec["mode"] in ("read", "chunks", "disk"):
        return "-"
    parts = []
    if spec.get("q_mask"):
        parts.append("annulus")
    if spec.get("sigma"):
        parts.append(f"σ {spec['sigma']:g}")
    if spec.get("prefilter"):
        parts.append("prefilter")
    return ", ".join(parts) or "no mask, σ 0"


def total_seconds(r: dict) -> float:
    """Time from the file to the result (the in-memory path loads the file first)."""
    return r["seconds"] + r.get("load_seconds", 0.0)


def pass_figures(r: dict, stage: str, base: float | None) -> dict | None:
    """Throughput of one pass and of its parts (read alone, compute alone).

    A pass's time is the time its tasks took (reading and computing), summed
    and divided by the tasks run at once: the passes of different time steps
    overlap, so their wall times do not add up. "read" and "compute" are the
    same figure for each part alone: the smaller one limits the pass.
    """
    if r["spec"]["mode"] != "engine":
        return None
    t_read, t_comp = r.get("task_seconds", {}).get(stage, [0.0, 0.0])
    conc = r["concurrency"]
    sec = (t_read + t_comp) / conc
    if not sec:
        return None
    rate = r["bytes"] / sec
    return {
        "rate": rate,
        "ratio": rate / base if base else None,
        # under 10 ms in all: the pass took kept blocks, it read nothing
        "read": r["bytes"] / (t_read / conc) if t_read > 1e-2 else math.inf,
        "compute": r["bytes"] / (t_comp / conc) if t_comp else math.inf,
    }


def _gbs(x: float) -> str:
    return "no read (kept blocks)" if math.isinf(x) else f"{x / 1e9:.3f}"


def table(results: list[dict], budget: str) -> str:
    read = {
        r["spec"]["file"]: r["bytes"] / r["seconds"] for r in results if r["spec"]["mode"] == "read"
    }
    head = (
        "| file | path | settings | time (s) | GB/s | h5py read of the file, same run (GB/s) "
        "| vs read | similarity pass GB/s (vs read) | averages pass GB/s (vs read) "
        "| file bytes read / input | read ahead / input | CPU s per GB | disk busy "
        "| peak RSS | load avg |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    parts = [
        "| file | path | pass | pass GB/s | its reads alone GB/s | its compute alone GB/s "
        "| limited by |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rate = r["bytes"] / total_seconds(r)
        base = read.get(r["spec"]["file"])
        engine = r["spec"]["mode"] != "read"
        ratio = f"{100 * rate / base:.0f} %" if base and engine else "-"
        cells = []
        for stage in ("similarity", "averages"):
            f = pass_figures(r, stage, base)
            if f is None:
                cells.append("-")
                continue
            pct = f" ({100 * f['ratio']:.0f} %)" if f["ratio"] is not None else ""
            cells.append(f"{f['rate'] / 1e9:.3f}{pct}")
            limit = "compute" if f["compute"] < f["read"] else "read"
            parts.append(
                f"| {r['spec']['file']} | {describe(r)} | {stage} | {f['rate'] / 1e9:.3f} "
                f"| {_gbs(f['read'])} | {_gbs(f['compute'])} | {limit} |"
            )
        reads = f"{r['bytes_read'] / r['bytes']:.2f}x" if "bytes_read" in r else "-"
        load = r.get("load")
        load = f"{load[0]:.1f}-{load[1]:.1f}" if load else "-"
        ahead = f"{r['bytes_read_ahead'] / r['bytes']:.2f}" if "bytes_read_ahead" in r else "-"
        cpu = r.get("cpu_seconds")
        cpu = f"{cpu / (r['bytes'] / 1e9):.2f}" if cpu else "-"
        busy = r.get("disk_busy")
        busy = f"{100 * busy:.0f} %" if busy is not None else "-"
        lines.append(
            f"| {r['spec']['file']} | {describe(r)} | {settings(r['spec'])} "
            f"| {total_seconds(r):.2f} | {rate / 1e9:.3f} | {base / 1e9 if base else 0:.3f} "
            f"| {ratio} | {cells[0]} | {cells[1]} | {reads} | {ahead} | {cpu} | {busy} "
            f"| {format_bytes(r['peak_tree_rss'])} | {load} |"
        )
    lines.append(
        f"\nmemory limit of the engine runs: {budget}. Times are medians of the repeats "
        "in each process; a pass's time is its tasks' time (read + compute) summed and divided "
        "by the tasks run at once. read ahead: bytes of blocks a task read into memory for "
        "the next task of its slot while computing. CPU s per GB: CPU time of the run's "
        "processes (workers included) per GB of input, which a busy machine disturbs least. "
        "disk busy: share of the run's time the file's disk had reads in flight "
        "(/proc/diskstats; other processes' I/O included). load avg: the "
        "machine's 1-minute load average at the start and end of the run.\n\n"
        "Where each pass's time goes (same runs):\n"
    )
    return "\n".join(lines + parts)


def _matches(path: Path, shape: tuple) -> bool:
    """Whether ``path`` is a benchmark file of this shape (to reuse it)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return tuple(f["data"].shape) == tuple(shape)
    except (OSError, KeyError):
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true", help="file >= 1.5x RAM (slow)")
    p.add_argument("--memory-limit", default=None, help="engine budget (--big: 4GB)")
    p.add_argument("--steps", type=int, help="time steps of the generated file")
    p.add_argument("--dir", help="where to write the file (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="use the files already in --dir (cube-<kind>.h5) when their shape matches",
    )
    p.add_argument(
        "--runs",
        default=None,
        help="comma-separated executors: memory, threads, 1, 2 (default: threads,2)",
    )
    p.add_argument(
        "--files",
        default="uncompressed,bitshuffle-lz4",
        help="comma-separated: uncompressed, bitshuffle-lz4",
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="also run without q-mask and blur, and with the prefilter",
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="timed repeats per process (median reported)"
    )
    p.add_argument(
        "--read-ahead-comparators",
        action="store_true",
        help="also run every engine path with the opposite of its default for blocks "
        "read into memory ahead of their task (on; the default is off)",
    )
    p.add_argument("--json", help="also write all figures to this JSON file")
    args = p.parse_args(argv)

    ram = total_memory()
    if args.big:
        # 512 MiB per time step: a 4 GB budget keeps a whole step's blocks
        # for the averages, so the file is read once.
        scan, det = (128, 128), (128, 128)
        step = scan[0] * scan[1] * det[0] * det[1] * 2
        n_steps = args.steps or math.ceil(1.15 * ram / step)
        budget = args.memory_limit or "4GB"
    else:
        scan, det = (128, 128), (64, 64)
        step = scan[0] * scan[1] * det[0] * det[1] * 2
        n_steps = args.steps or 2
        budget = args.memory_limit
    runs = (args.runs or "threads,2").split(",")
    files = args.files.split(",")
    # The realistic settings: an annulus excluding the direct beam, blur σ 1.
    ring = [min(det) / 16, 0.45 * min(det)]
    configs = [{"q_mask": ring, "sigma": 1.0, "prefilter": False}]
    if args.plain:
        configs += [
            {"q_mask": None, "sigma": 0.0, "prefilter": False},
            {"q_mask": None, "sigma": 0.0, "prefilter": True},
        ]
    size = n_steps * step
    print(
        f"machine: {os.cpu_count()} CPUs, {format_bytes(ram)} RAM; file: {n_steps} x "
        f"{scan[0]}x{scan[1]} scan x {det[0]}x{det[1]} uint16 = {format_bytes(size)} "
        f"({size / ram:.2f}x RAM)",
        flush=True,
    )
    if args.big and not args.reuse:
        free = shutil.disk_usage(args.dir or tempfile.gettempdir()).free
        if free < size * 1.05:  # one file at a time
            print(f"not enough disk space: {format_bytes(free)} free", file=sys.stderr)
            return 1
    if args.reuse and not args.dir:
        print("--reuse needs --dir", file=sys.stderr)
        return 1
    tmp = (
        Path(args.dir)
        if args.reuse
        else Path(tempfile.mkdtemp(prefix="stemcluster-bench-", dir=args.dir))
    )
    results = []
    try:
        for kind in files:
            path = tmp / f"cube-{kind}.h5"
            t0 = time.perf_counter()
            compression = None if kind == "uncompressed" else kind
            if args.reuse and _matches(path, (n_steps, *scan, *det)):
                print(f"reusing {path}", flush=True)
            else:
                write_cube(
                    path,
                    n_steps,
                    scan,
                    det,
                    log=print if args.big else None,
                    compression=compression,
                )
                print(
                    f"generated {path.name} in {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
            on_disk = path.stat().st_size
            print(
                f"{path.name}: {format_bytes(on_disk)} on disk ({on_disk / ram:.2f}x RAM; "
                f"{format_bytes(psutil.virtual_memory().available)} of memory available)",
                flush=True,
            )
            # The read comparator runs first and last: the page cache and the
            # machine's load change between runs, so both bracket the engine.
            # With --big every run starts with the file evicted from the page
            # cache, so each reads it from the disk (a file larger than RAM
            # would not be cached anyway; an LZ4 file may be smaller).
            specs = [{"mode": "read"}, {"mode": "chunks"}]
            if args.big:
                specs.insert(0, {"mode": "disk"})
            for cfg in configs:
                for run_kind in runs:
                    spec = {**cfg, "memory_limit": budget}
                    if run_kind == "memory":
                        spec.update(mode="memory", workers=None)
                    else:
                        workers = None if run_kind == "threads" else int(run_kind)
                        spec.update(mode="engine", workers=workers)
                    specs.append(spec)
                if args.read_ahead_comparators:
                    for run_kind in runs:
                        if run_kind != "memory":
                            workers = None if run_kind == "threads" else int(run_kind)
                            spec = {**cfg, "memory_limit": budget, "mode": "engine"}
                            specs.append(spec | {"workers": workers, "read_ahead": True})
            specs.append({"mode": "read"})
            reads = []
            for spec in specs:
                spec.update(path=str(path), file=kind, repeat=args.repeat, cold=args.big)
                r = run(spec)
                if spec["mode"] == "read":
                    reads.append(r)
                    continue
                results.append(r)
                print(
                    f"{kind}: {describe(r)}, {settings(spec)}: {r['seconds']:.2f} s "
                    f"(runs {', '.join(f'{t:.2f}' for t in r.get('all_seconds', []))}), "
                    f"{r['bytes'] / r['seconds'] / 1e9:.3f} GB/s, peak "
                    f"{format_bytes(r['peak_tree_rss'])}; stages {r.get('stage_seconds')}, "
                    f"task read/compute {r.get('task_seconds')}; {r.get('plan', '')}",
                    flush=True,
                )
            times = sorted(t for r in reads for t in r["all_seconds"])
            rates = ", ".join(f"{reads[0]['bytes'] / t / 1e9:.3f}" for t in times)
            comparator = {**reads[0], "seconds": times[len(times) // 2], "all_seconds": times}
            comparator["peak_tree_rss"] = max(r["peak_tree_rss"] for r in reads)
            print(
                f"{kind}: h5py read {rates} GB/s (repeats before and after the engine "
                "runs; the median is the comparator)",
                flush=True,
            )
            results.append(comparator)
            if not args.keep:
                path.unlink()
            elif args.reuse:
                print(f"kept {path}")
        for kind in files:
            for cfg in configs:
                hashes = {
                    r["labels_sha1"]
                    for r in results
                    if r["spec"]["file"] == kind
                    and r["spec"]["mode"] not in ("read", "chunks", "disk")
                    and all(r["spec"].get(k) == v for k, v in cfg.items())
                }
                status = "identical" if len(hashes) <= 1 else "DIFFERENT"
                print(f"labels of all {kind} runs with {settings(cfg | {'mode': ''})}: {status}")
        print()
        print(table(results, budget or "default (a quarter of RAM)"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        elif args.reuse:
            for kind in files:
                (tmp / f"cube-{kind}.h5").unlink(missing_ok=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
