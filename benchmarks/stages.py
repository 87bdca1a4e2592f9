"""Per-stage throughput and peak memory of the core algorithm.

Run ``python benchmarks/stages.py`` (add ``--quick`` for a smaller run). Every
stage runs in a fresh process so its peak memory is its own: the peak resident
set size during the stage, less the process's size before the input cube was
made, is reported as a multiple of the input cube. Each stage is compared with
a straightforward per-position Python loop of the same math, timed on a
subset of positions and extrapolated to the whole scan.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

CONFIGS = {
    "256x256 scan, 64x64 det": (256, 256, 64, 64),
    "128x128 scan, 128x128 det": (128, 128, 128, 128),
}
QUICK = {"128x128 scan, 64x64 det": (128, 128, 64, 64)}
STAGES = ("prefilter", "similarity", "averages")


# --- memory helpers -----------------------------------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets the peak RSS (VmHWM) of this process.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# --- inputs -------------------------------------------------------------------


def make_cube(shape, seed=0):
    """Grain-like uint16 cube built block by block (no large temporaries)."""
    rx, ry, qx, qy = shape
    rng = np.random.default_rng(seed)
    n_grains = 40
    templates = rng.random((n_grains, qx, qy)) ** 8 * 400 + 5
    cx, cy = rng.random((2, n_grains)) * [[rx], [ry]]
    cube = np.empty(shape, np.uint16)
    xs, ys = np.mgrid[0:rx, 0:ry]
    grain = np.argmin((xs[..., None] - cx) ** 2 + (ys[..., None] - cy) ** 2, axis=-1)
    for r in range(rx):
        cube[r] = rng.poisson(templates[grain[r]]).astype(np.uint16)
    return cube, grain


def grain_similarity(shape, seed=0):
    """A realistic similarity array: high inside Voronoi grains, low across."""
    from napari_stemcluster.core.similarity import NEIGHBOR_OFFSETS, _mirror

    rx, ry = shape
    rng = np.random.default_rng(seed)
    n = max(4, rx * ry // 900)
    cx, cy = rng.random((2, n)) * [[rx], [ry]]
    xs, ys = np.mgrid[0:rx, 0:ry]
    grain = np.zeros(shape, np.int64)
    best = np.full(shape, np.inf)
    for k in range(n):
        d = (xs - cx[k]) ** 2 + (ys - cy[k]) ** 2
        grain = np.where(d < best, k, grain)
        best = np.minimum(best, d)
    sim = np.full(shape + (8,), np.nan, np.float32)
    for i in (4, 5, 6, 7):
        dx, dy = NEIGHBOR_OFFSETS[i]
        shifted = np.full(shape, -1)
        shifted[: rx - max(dx, 0), max(-dy, 0) : ry - max(dy, 0)] = grain[
            max(dx, 0) :, max(dy, 0) : ry - max(-dy, 0) if dy < 0 else None
        ][:, : ry - abs(dy)]
        same = shifted == grain
        val = np.where(same, 0.97, 0.6) + rng.normal(0, 0.01, shape)
        valid = np.zeros(shape, bool)
        valid[: rx - max(dx, 0), max(-dy, 0) : ry - max(dy, 0)] = True
        sim[..., i] = np.where(valid, val, np.nan)
    _mirror(sim)
    return sim


# --- straightforward per-position loops (the published style) ------------------


def loop_similarity(cube, n_rows):
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    rx, ry = cube.shape[:2]
    t = time.perf_counter()
    for x in range(n_rows):
        for y in range(ry):
            a = cube[x, y].astype(np.float64)
            for dx, dy in offsets:
                if 0 <= x + dx < rx and 0 <= y + dy < ry:
                    b = cube[x + dx, y + dy].astype(np.float64)
                    np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b))
    return (time.perf_counter() - t) * rx / n_rows


def loop_prefilter(cube, n_pos):
    from scipy import ndimage

    rx, ry, qx, qy = cube.shape
    q = np.mgrid[0:qx, 0:qy].astype(np.float64)
    w = ((q[0] - (qx - 1) / 2) ** 2 + (q[1] - (qy - 1) / 2) ** 2) / (qx * qy)
    offs = [(dx, dy) for dx in range(-4, 5) for dy in range(-4, 5) if dx * dx + dy * dy <= 20.25]

    def norm(p):
        g = ndimage.gaussian_filter(p.astype(np.float64), 3)
        v = (g - (g * w).sum() / w.sum()) * w
        return v / np.linalg.norm(v)

    t = time.perf_counter()
    for i in range(n_pos):
        x, y = divmod(i, ry)
        x += rx // 2
        a = norm(cube[x, y])
        acc = cube[x, y].astype(np.float64)
        tot = 1.0
        for dx, dy in offs:
            if (dx, dy) != (0, 0) and 0 <= x + dx < rx and 0 <= y + dy < ry:
                r = float(a.ravel() @ norm(cube[x + dx, y + dy]).ravel())
                r = min(max((r - 0.85) / 0.1, 0.0), 1.0)
                acc += r * cube[x + dx, y + dy]
                tot += r
        acc / tot
    return (time.perf_counter() - t) * rx * ry / n_pos


def loop_averages(cube, labels, n_rows):
    n = labels.max()
    sums = np.zeros((n + 1,) + cube.shape[2:])
    rx, ry = labels.shape
    t = time.perf_counter()
    for x in range(n_rows):
        for y in range(ry):
            sums[labels[x, y]] += cube[x, y]
    return (time.perf_counter() - t) * rx / n_rows


def loop_grow(sim, ms, threshold):
    """Published-style growth: argmax seed search, list membership tests."""
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    rx, ry = ms.shape
    labels = np.zeros((rx, ry), int)
    t = time.perf_counter()
    k = 0
    while True:
        free = np.where(labels == 0, ms, -np.inf)
        s = int(np.argmax(free))
        if free.flat[s] == -np.inf:
            break
        k += 1
        cluster = [divmod(s, ry)]
        i = 0
        while i < len(cluster):
            x, y = cluster[i]
            i += 1
            for n, (dx, dy) in enumerate(offsets):
                u, v = x + dx, y + dy
                inside = 0 <= u < rx and 0 <= v < ry
                # "not in cluster" scans the list: O(n^2) in the cluster size
                if (
                    inside
                    and labels[u, v] == 0
                    and (u, v) not in cluster
                    and sim[x, y, n] >= threshold
                ):
                    cluster.append((u, v))
        for x, y in cluster:
            labels[x, y] = k
    return time.perf_counter() - t


# --- one stage in this process -------------------------------------------------


def child(stage: str, shape) -> dict:
    from napari_stemcluster.core import (
        cluster_means,
        grow_regions,
        mean_similarity,
        neighbor_similarity,
    )

    shape = tuple(shape)
    if stage == "grow":
        sim = grain_similarity(shape)
        ms = mean_similarity(sim)
        grow_regions(sim[:8, :8], 0.9)  # compile outside the timing
        times = []
        for _ in range(5):
            t = time.perf_counter()
            labels, _ = grow_regions(sim, 0.9, mean_similarity=ms, min_cluster_size=5)
            times.append(time.perf_counter() - t)
        small = tuple(min(s, 128) for s in shape)
        sim_s = grain_similarity(small)
        ms_s = mean_similarity(sim_s)
        t_ours_small = min(
            _timed(lambda: grow_regions(sim_s, 0.9, mean_similarity=ms_s)) for _ in range(3)
        )
        return {
            "seconds": min(times),
            "clusters": int(labels.max()),
            "loop_seconds_small": loop_grow(sim_s, ms_s, 0.9),
            "ours_seconds_small": t_ours_small,
            "small": small,
        }
    warm = make_cube((6, 6) + shape[2:])[0]
    if stage == "prefilter":
        from napari_stemcluster.core.prefilter import correlative_prefilter

        correlative_prefilter(warm)
        # The float32 output is a cube in its own right (it can also be an
        # on-disk array); it is allocated before the baseline so that the
        # reported peak is the input plus the stage's working memory.
        run = lambda: correlative_prefilter(cube, out=out)  # noqa: E731
        loop = lambda: loop_prefilter(cube, 24)  # noqa: E731
    elif stage == "similarity":
        neighbor_similarity(warm)
        run = lambda: neighbor_similarity(cube)  # noqa: E731
        loop = lambda: loop_similarity(cube, 1)  # noqa: E731
    elif stage == "averages":
        cluster_means(warm, np.ones((6, 6), np.int32))
        run = lambda: cluster_means(cube, (grain + 1).astype(np.int32))  # noqa: E731
        loop = lambda: loop_averages(cube, (grain + 1).astype(np.int32), 2)  # noqa: E731
    else:
        raise ValueError(stage)
    # Measured after compiling (on the small cube) and before the real cube.
    before = _status("VmRSS")
    cube, grain = make_cube(shape)
    if stage == "prefilter":
        out = np.zeros(cube.shape, np.float32)
        before += out.nbytes
    _reset_peak()
    seconds = _timed(run)
    peak = _status("VmHWM") - before
    seconds = min(seconds, _timed(run))
    return {
        "seconds": seconds,
        "cube_bytes": int(cube.nbytes),
        "patterns": int(shape[0] * shape[1]),
        # the cube is part of the peak: (cube + working memory) / cube
        "peak_ratio": peak / cube.nbytes,
        "loop_seconds": loop(),
    }


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_child(stage, shape) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, json.dumps(list(shape))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small configuration")
    ap.add_argument("--stages", default=",".join((*STAGES, "grow")))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return 0
    import numba

    print(f"numba threads: {numba.get_num_threads()}")
    stages = args.stages.split(",")
    configs = QUICK if args.quick else CONFIGS
    head = (
        f"{'stage':<11}{'data':<27}{'time s':>8}{'GB/s':>8}{'patt/s':>10}"
        f"{'peak/in':>9}{'loop s':>9}{'speedup':>9}"
    )
    print(head)
    print("-" * len(head))
    for stage in (s for s in stages if s != "grow"):
        for name, shape in configs.items():
            r = run_child(stage, shape)
            if "error" in r:
                print(f"{stage:<11}{name:<27}  {r['error']}")
                continue
            gbs = r["cube_bytes"] / r["seconds"] / 1e9
            pps = r["patterns"] / r["seconds"]
            print(
                f"{stage:<11}{name:<27}{r['seconds']:>8.3f}{gbs:>8.2f}{pps:>10.0f}"
                f"{r['peak_ratio']:>9.2f}{r['loop_seconds']:>9.1f}"
                f"{r['loop_seconds'] / r['seconds']:>9.0f}"
            )
    if "grow" in stages:
        shape = (256, 256) if args.quick else (512, 512)
        r = run_child("grow", shape)
        if "error" in r:
            print(f"grow: {r['error']}")
        else:
            small = "x".join(map(str, r["small"]))
            print(
                f"\nregion growing, {shape[0]}x{shape[1]} scan: {r['seconds'] * 1e3:.1f} ms "
                f"({r['clusters']} clusters); on {small}: {r['ours_seconds_small'] * 1e3:.2f} ms "
                f"vs {r['loop_seconds_small']:.1f} s for the published-style loop "
                f"({r['loop_seconds_small'] / r['ours_seconds_small']:.0f}x)"
            )
    print(
        "peak/in: peak resident memory during the stage (input cube included) / input size;\n"
        "         the prefilter's float32 output cube is allocated beforehand and not counted"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
