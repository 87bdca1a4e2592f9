"""Per-stage throughput and peak memory of the core algorithm.

Run ``python benchmarks/stages.py`` (about 3-4 minutes; ``--quick`` for one
small configuration, ``--segment`` for only the similarity with an annulus
and sigma 1, ``segment`` and where its time goes). Each configuration runs in a fresh process on an
in-memory uint16 cube of grain-like Poisson patterns:

- similarity for {no q-mask, annulus} x {sigma 0, sigma 1}, the correlative
  prefilter (defaults, and its exact path ``q_step=1``), the cluster averages
  and the whole ``segment`` with an annulus and sigma 1;
- for every row: GB/s of uint16 input, patterns/s, peak memory / input (the
  peak resident set during the stage, input included, over the input size;
  the prefilter's float32 output is allocated beforehand) and the ratio to a
  2-thread memory-read bandwidth measured in the same process (a parallel
  sum over a 256 MiB array, median of repeats, before and after the stages);
- comparators measured in the same process: a plain vectorised numpy
  implementation of the whole ``segment`` (annulus, sigma 1; scipy blur,
  masked einsum dots, sparse connected components, sparse-matrix sums; run
  on a quarter of the scan and scaled up) and, as before, straightforward
  per-position Python loops (timed on a few positions and extrapolated);
- where the time of ``segment`` goes: wall and CPU seconds of each of its
  steps (the similarity pass, the regions pass with its mask, threshold,
  growth and refinement, the sums pass), beside the plain similarity.

Times are medians of repeats. On a shared machine quote ratios (to the
bandwidth, to the comparators) rather than absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CONFIGS = {
    "256x256 scan, 64x64 det": (256, 256, 64, 64),
    "128x128 scan, 128x128 det": (128, 128, 128, 128),
}
QUICK = {"128x128 scan, 64x64 det": (128, 128, 64, 64)}
REPEATS = 3


def annulus(det):
    """The realistic q-mask: excludes the direct beam and the detector corners."""
    q = min(det)
    return (q / 16, 0.45 * q)


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


# --- bandwidth and the vectorised numpy comparator ------------------------------


def read_bandwidth(repeats=5) -> float:
    """2-thread memory-read bandwidth (GB/s): parallel sum of a 256 MiB array."""
    import numba

    @numba.njit(parallel=True, cache=False)
    def total(a):
        s = 0
        for i in numba.prange(a.shape[0]):
            s += a[i]  # integer sums vectorise: the loop is bound by memory
        return s

    a = np.ones(256 * 2**20 // 8, np.int64)
    total(a[:1000])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        total(a)
        times.append(time.perf_counter() - t)
    return a.nbytes / float(np.median(times)) / 1e9


def numpy_segment(cube, q_mask, sigma, threshold=0.9, min_size=5):
    """The whole method as a plain vectorised numpy/scipy script."""
    from scipy import ndimage, sparse
    from scipy.sparse.csgraph import connected_components
    from skimage.filters import threshold_triangle

    from napari_stemcluster.core import annular_mask

    rx, ry, qx, qy = cube.shape
    mask = annular_mask((qx, qy), *q_mask)
    x = ndimage.gaussian_filter(cube.astype(np.float32), (0, 0, sigma, sigma), mode="reflect")
    v = x[:, :, mask]
    del x
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-30)
    sim = np.full((rx, ry, 8), np.nan, np.float32)
    offs = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    for n, (dx, dy) in enumerate(offs):
        a = v[max(0, -dx) : rx - max(0, dx), max(0, -dy) : ry - max(0, dy)]
        b = v[max(0, dx) : rx - max(0, -dx), max(0, dy) : ry - max(0, -dy)]
        sim[max(0, -dx) : rx - max(0, dx), max(0, -dy) : ry - max(0, dy), n] = np.einsum(
            "xyk,xyk->xy", a, b
        )
    ms = np.nanmean(sim, axis=-1)
    keep = ms > threshold_triangle(ms)
    idx = np.arange(rx * ry).reshape(rx, ry)
    rows, cols = [], []
    for n, (dx, dy) in enumerate(offs[4:], start=4):
        sl = (slice(max(0, -dx), rx - max(0, dx)), slice(max(0, -dy), ry - max(0, dy)))
        dl = (slice(max(0, dx), rx - max(0, -dx)), slice(max(0, dy), ry - max(0, -dy)))
        ok = (sim[sl + (n,)] >= threshold) & keep[sl] & keep[dl]
        rows.append(idx[sl][ok])
        cols.append(idx[dl][ok])
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    graph = sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(rx * ry,) * 2)
    _, comp = connected_components(graph, directed=False)
    comp = np.where(keep.ravel(), comp, -1)
    sizes = np.bincount(comp[comp >= 0])
    big = np.flatnonzero(sizes >= min_size)
    lut = np.full(sizes.size, -1)
    lut[big] = np.arange(big.size)
    labels = np.where(comp >= 0, lut[np.maximum(comp, 0)], -1)
    sel = np.flatnonzero(labels >= 0)
    member = sparse.csr_matrix(
        (np.ones(sel.size, np.float32), (labels[sel], sel)), shape=(big.size, rx * ry)
    )
    sums = member @ cube.reshape(rx * ry, qx * qy).astype(np.float32)
    return labels.reshape(rx, ry), sums / np.maximum(sizes[big], 1)[:, None]


# --- where the time of segment goes ---------------------------------------------

#: The steps of ``segment`` timed by :func:`segment_steps`: (label, module,
#: function, depth); the function is wrapped where its caller looks it up
#: (the first of ``a|b`` that exists, for older versions).
SEGMENT_STEPS = [
    ("checks and parameters", "pipeline", "segment_params", 0),
    ("direct beam (sampled mean)", "pipeline", "dark_field_beam", 0),
    ("similarity pass", "passes", "similarity_block", 0),
    ("regions pass", "passes", "grow_step", 0),
    ("mean similarity", "passes", "mean_similarity_map|mean_similarity", 1),
    ("real-space mask", "clustering", "real_space_mask", 1),
    ("auto threshold", "clustering", "auto_threshold", 1),
    ("seed order", "regions", "seed_order", 1),
    ("growth, mean linkage", "regions", "_grow_linked_fast|_grow_linked", 1),
    ("boundary refinement", "regions", "_refine|_refine_boundaries", 1),
    ("diagnostics", "clustering", "_explain", 1),
    ("cluster table", "passes", "cluster_table", 1),
    ("sums pass (averages)", "passes", "step_sums", 0),
    ("result", "passes", "finish_step", 0),
]


def segment_steps(run, repeats=REPEATS) -> dict:
    """Median wall and CPU seconds of every step of ``segment`` over ``repeats`` runs.

    ``run()`` calls ``segment``; the steps of :data:`SEGMENT_STEPS` are
    timed by wrapping their functions for the duration (a few microseconds
    per call). ``total`` is the whole call and ``other`` what no step covers.
    """
    import importlib

    spent = {}
    undo = []
    for label, mod_name, func, _ in SEGMENT_STEPS:
        mod = importlib.import_module(f"napari_stemcluster.core.{mod_name}")
        func = next((f for f in func.split("|") if hasattr(mod, f)), None)
        if func is None:
            continue
        orig = getattr(mod, func)

        def timed(*a, _orig=orig, _label=label, **k):
            t, c = time.perf_counter(), time.process_time()
            try:
                return _orig(*a, **k)
            finally:
                w, p = spent.get(_label, (0.0, 0.0))
                spent[_label] = (w + time.perf_counter() - t, p + time.process_time() - c)

        setattr(mod, func, timed)
        undo.append((mod, func, orig))
    runs = []
    try:
        for _ in range(repeats):
            spent.clear()
            t, c = time.perf_counter(), time.process_time()
            run()
            spent["total"] = (time.perf_counter() - t, time.process_time() - c)
            runs.append(dict(spent))
    finally:
        for mod, func, orig in undo:
            setattr(mod, func, orig)
    out = {
        k: [float(np.median([r.get(k, (0.0, 0.0))[i] for r in runs])) for i in (0, 1)]
        for k in runs[0]
    }
    top = [label for label, _, _, depth in SEGMENT_STEPS if depth == 0]
    out["other"] = [
        max(0.0, out["total"][i] - sum(out.get(k, (0, 0))[i] for k in top)) for i in (0, 1)
    ]
    return out


def print_segment_steps(steps: dict, sim_seconds: float | None, bandwidth: float, nbytes: int):
    """The breakdown of :func:`segment_steps` as an indented table."""
    print(
        f"  where segment's time goes (medians; wall and CPU seconds of this process, "
        f"read BW {bandwidth:.1f} GB/s = {nbytes / bandwidth / 1e9 * 1e3:.0f} ms for the cube)"
    )
    for label, _, _, depth in [*SEGMENT_STEPS, ("other", 0, 0, 0), ("total", 0, 0, 0)]:
        if label in steps:
            wall, cpu = steps[label]
            name = f"{'  ' * depth}{label:<{30 - 2 * depth}}"
            print(f"    {name}{wall * 1e3:>8.1f} ms{cpu * 1e3:>8.1f} ms CPU")
    if sim_seconds:
        beside = steps["total"][0] - sim_seconds
        print(
            f"    beside the plain similarity (annulus, σ 1: {sim_seconds * 1e3:.1f} ms): "
            f"{beside * 1e3:.1f} ms"
        )


# --- what the similarity pass of segment adds to the similarity ----------------------


def similarity_extras(cube, ring, repeats=REPEATS) -> dict:
    """Median wall and CPU seconds of the similarity alone and with segment's extras.

    The extras are what the similarity pass of ``segment`` (defaults) asks
    the same kernel sweep for: the binned patterns of the ``"mean"`` linkage
    (only the bins that meet the q-mask) and the dark-field image; the
    output arrays are made fresh each time, as in ``segment`` (and, to show
    what the page faults of fresh memory cost, the binned patterns once more
    into a buffer whose pages are already resident). Interleaved.
    """
    from napari_stemcluster.core import neighbor_similarity
    from napari_stemcluster.core.linkage import FEATURE_DIMS, feature_slots
    from napari_stemcluster.core.masking import _sample_mean, direct_beam, resolve_q_mask

    rx, ry, qx, qy = cube.shape
    k = len(feature_slots((qx, qy), resolve_q_mask(ring, (qx, qy)), FEATURE_DIMS))
    beam = direct_beam(_sample_mean(cube))

    # A buffer written once beforehand: its pages are resident, so the
    # difference to fresh memory is the page faults (and the kernel's zeroing).
    touched = np.ones((rx, ry, k), np.float32)

    def run(feats, dark):
        f = (touched if feats == "reused" else np.empty((rx, ry, k), np.float32)) if feats else None
        d = np.empty((rx, ry), np.float32) if dark else None
        neighbor_similarity(
            cube, ring, 1.0, features=f, feature_dims=FEATURE_DIMS, dark_field=d, beam=beam
        )

    cases = {
        "alone": (False, False),
        f"+ binned patterns (K={k})": (True, False),
        "+ binned, into touched memory": ("reused", False),
        "+ dark-field image": (False, True),
        "+ both (segment's pass)": (True, True),
    }
    spent = {name: [] for name in cases}
    for _ in range(repeats):
        for name, args in cases.items():
            t, c = time.perf_counter(), time.process_time()
            run(*args)
            spent[name].append((time.perf_counter() - t, time.process_time() - c))
    return {
        name: [float(np.median([v[i] for v in vals])) for i in (0, 1)]
        for name, vals in spent.items()
    }


def print_similarity_extras(extras: dict) -> None:
    """The figures of :func:`similarity_extras` as an indented table."""
    print("  the similarity (annulus, σ 1) alone and with segment's extras (medians)")
    for name, (wall, cpu) in extras.items():
        print(f"    {name:<30}{wall * 1e3:>8.1f} ms{cpu * 1e3:>8.1f} ms CPU")


# --- one configuration in this process ---------------------------------------------


def _timed(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _stage(fn, cube_bytes, repeats=REPEATS):
    """Median time and peak memory / input of ``fn`` (the cube is resident)."""
    before = _status("VmRSS")
    _reset_peak()
    seconds = _timed(fn, repeats)
    peak = _status("VmHWM") - before + cube_bytes
    return seconds, peak / cube_bytes


def child(shape, path, only_segment=False) -> dict:
    from napari_stemcluster.core import cluster_means, neighbor_similarity, segment
    from napari_stemcluster.core.prefilter import correlative_prefilter

    shape = tuple(shape)
    ring = annulus(shape[2:])
    warm, wgrain = make_cube((6, 6) + shape[2:])
    for qm in (None, ring):
        for sig in (0.0, 1.0):
            neighbor_similarity(warm, qm, sig)
    correlative_prefilter(warm)
    correlative_prefilter(warm, q_step=1)
    cluster_means(warm, (wgrain + 1).astype(np.int32))
    segment(warm, q_mask=ring, sigma=1.0)
    bw = [read_bandwidth()]

    cube = np.load(path)
    grain = np.load(path.replace(".npy", "-grain.npy"))
    rows = []
    nbytes = int(cube.nbytes)

    def add(name, fn, repeats=REPEATS, **extra):
        seconds, peak = _stage(fn, nbytes, repeats)
        rows.append({"stage": name, "seconds": seconds, "peak_ratio": peak, **extra})

    if only_segment:
        # The similarity alone and segment, interleaved, then the breakdown.
        for _ in range(REPEATS):
            add("similarity, annulus, σ 1", lambda: neighbor_similarity(cube, ring, 1.0), 1)
            add("segment, annulus, σ 1", lambda: segment(cube, q_mask=ring, sigma=1.0), 1)
        merged = {}
        for row in rows:
            merged.setdefault(row["stage"], []).append(row)
        rows = [
            {
                "stage": k,
                "seconds": float(np.median([r["seconds"] for r in v])),
                "peak_ratio": max(r["peak_ratio"] for r in v),
            }
            for k, v in merged.items()
        ]
        steps = segment_steps(lambda: segment(cube, q_mask=ring, sigma=1.0))
        bw.append(read_bandwidth())
        return {
            "rows": rows,
            "cube_bytes": nbytes,
            "patterns": int(shape[0] * shape[1]),
            "bandwidth": float(np.median(bw)),
            "numpy_segment_seconds": float("nan"),
            "loop_seconds": {},
            "segment_steps": steps,
            "similarity_extras": similarity_extras(cube, ring),
        }
    for qm, label in ((None, "no mask"), (ring, "annulus")):
        for sig in (0.0, 1.0):
            add(
                f"similarity, {label}, σ {sig:g}",
                lambda qm=qm, sig=sig: neighbor_similarity(cube, qm, sig),
            )
    # The float32 output is a cube in its own right (it can be an on-disk
    # array); made resident before the stage so the peak is the working memory.
    held = [np.empty(cube.shape, np.float32)]
    held[0].fill(0)
    add("prefilter (r 4, σ 3)", lambda: correlative_prefilter(cube, out=held[0]), repeats=2)
    add(
        "prefilter, exact (q_step 1)",
        lambda: correlative_prefilter(cube, out=held[0], q_step=1),
        repeats=2,
    )
    held.clear()
    labels = (grain + 1).astype(np.int32)
    add("cluster averages", lambda: cluster_means(cube, labels))
    add("segment, annulus, σ 1", lambda: segment(cube, q_mask=ring, sigma=1.0), repeats=2)
    steps = segment_steps(lambda: segment(cube, q_mask=ring, sigma=1.0))

    # Comparators, in this process.
    part = cube[: max(8, shape[0] // 4)]
    np_seconds = _timed(lambda: numpy_segment(part, ring, 1.0), 1) * shape[0] / part.shape[0]
    loops = {
        "similarity, no mask, σ 0": loop_similarity(cube, 1),
        "prefilter (r 4, σ 3)": loop_prefilter(cube, 12),
        "cluster averages": loop_averages(cube, labels, 2),
    }
    bw.append(read_bandwidth())
    return {
        "rows": rows,
        "cube_bytes": nbytes,
        "patterns": int(shape[0] * shape[1]),
        "bandwidth": float(np.median(bw)),
        "numpy_segment_seconds": np_seconds,
        "loop_seconds": loops,
        "segment_steps": steps,
    }


def grow_child(shape) -> dict:
    from napari_stemcluster.core import grow_regions, mean_similarity

    shape = tuple(shape)
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
    t_small = min(
        _timed(lambda: grow_regions(sim_s, 0.9, mean_similarity=ms_s), 1) for _ in range(3)
    )
    return {
        "seconds": float(np.median(times)),
        "clusters": int(labels.max()),
        "loop_seconds_small": loop_grow(sim_s, ms_s, 0.9),
        "ours_seconds_small": t_small,
        "small": small,
    }


def run_child(*args) -> dict:
    cmd = [sys.executable, __file__, "--child", *(json.dumps(a) for a in args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small configuration")
    ap.add_argument("--no-grow", action="store_true", help="skip the region-growing row")
    ap.add_argument(
        "--segment",
        action="store_true",
        help="only the similarity (annulus, σ 1), segment and where its time goes",
    )
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        parsed = [json.loads(a) for a in args.child]
        result = grow_child(*parsed[1:]) if parsed[0] == "grow" else child(*parsed)
        print(json.dumps(result))
        return 0
    import numba

    print(f"numba threads: {numba.get_num_threads()}; times are medians of repeats")
    configs = QUICK if args.quick else CONFIGS
    head = (
        f"{'stage':<27}{'time s':>8}{'GB/s':>7}{'patt/s':>10}{'peak/in':>8}"
        f"{'% of BW':>8}{'vs numpy seg':>13}{'vs loop':>9}"
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="stemcluster-stages-") as tmp:
        for name, shape in configs.items():
            path = os.path.join(tmp, "cube.npy")
            cube, grain = make_cube(shape)
            np.save(path, cube)
            np.save(path.replace(".npy", "-grain.npy"), grain)
            del cube
            r = run_child(list(shape), path, args.segment)
            results[name] = r
            print(f"\n{name} (uint16, {np.prod(shape) * 2 / 2**30:.2f} GiB)")
            if "error" in r:
                print(f"  {r['error']}")
                continue
            bw = r["bandwidth"]
            print(f"2-thread memory-read bandwidth, same process: {bw:.1f} GB/s")
            print(head)
            print("-" * len(head))
            npseg = r["numpy_segment_seconds"]
            for row in r["rows"]:
                gbs = r["cube_bytes"] / row["seconds"] / 1e9
                vs_np = npseg / row["seconds"]
                loop = r["loop_seconds"].get(row["stage"])
                print(
                    f"{row['stage']:<27}{row['seconds']:>8.3f}{gbs:>7.2f}"
                    f"{r['patterns'] / row['seconds']:>10.0f}{row['peak_ratio']:>8.2f}"
                    f"{100 * gbs / bw:>7.1f}%{vs_np:>12.1f}x"
                    + (f"{loop / row['seconds']:>8.0f}x" if loop else f"{'':>9}")
                )
            print(
                f"{'numpy segment (comparator)':<27}{npseg:>8.2f}"
                f"{r['cube_bytes'] / npseg / 1e9:>7.2f}{r['patterns'] / npseg:>10.0f}"
            )
            sim = next(
                (x["seconds"] for x in r["rows"] if x["stage"] == "similarity, annulus, σ 1"), None
            )
            print_segment_steps(r["segment_steps"], sim, bw, r["cube_bytes"])
            if "similarity_extras" in r:
                print_similarity_extras(r["similarity_extras"])
    if not (args.no_grow or args.segment):
        shape = (256, 256) if args.quick else (512, 512)
        r = run_child("grow", list(shape))
        results["grow"] = r
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
        "\npeak/in: peak resident memory during the stage (input cube included) / input size;\n"
        "         the prefilter's float32 output cube is allocated beforehand and not counted.\n"
        "% of BW: GB/s of uint16 input / the 2-thread read bandwidth of the same process.\n"
        "vs numpy seg: time of the vectorised numpy segment (annulus, σ 1) / time of the row."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
