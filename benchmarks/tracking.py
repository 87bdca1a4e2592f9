"""Linking time per step of a long series of large scans, and its accuracy.

Run ``python benchmarks/tracking.py`` (``--quick`` for a smaller run). The
input is a 20-step series of 512x512 label maps with about 300 grains per
step (a Voronoi partition whose seeds drift, grow or shrink, nucleate and
vanish, with the label numbers shuffled at every step, as independent
clustering of each step gives them) and one 64x64 cluster-averaged pattern
per cluster. Reported: the median time per step of
:func:`napari_stemcluster.core.tracking.link_clusters` (with and without the
patterns, and with the patterns and orientation results: one crystal
orientation per cluster, compared by misorientation modulo the cubic
symmetry), of :func:`~napari_stemcluster.core.tracking.grain_kinetics`, the
share of true grain-steps given their grain's track, and the peak memory
above the input. The comparator, measured in the same process, is
:func:`napari_stemcluster.core.grow_regions` on one 512x512 step (the
pipeline's own per-step clustering, after the similarity), so the ratio says
what linking adds to segmenting a step.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections import Counter

import numpy as np
from scipy import ndimage

from napari_stemcluster.core import grain_kinetics, grow_regions, link_clusters


def make_series(n_steps, shape, n_grains, qshape, seed=0):
    """Drifting Voronoi grains with shuffled labels; truth and patterns."""
    rng = np.random.default_rng(seed)
    n_total = int(n_grains * 1.3)
    centres = rng.uniform(0, 1, (n_total, 2)) * shape
    velocity = rng.normal(0, 0.6, (n_total, 2))
    born = np.where(rng.random(n_total) < 0.15, rng.integers(1, n_steps, n_total), 0)
    dies = np.where(rng.random(n_total) < 0.1, rng.integers(1, n_steps, n_total), n_steps)
    templates = rng.random((n_total, *qshape)).astype(np.float32) ** 6
    grid = np.stack(np.mgrid[0 : shape[0], 0 : shape[1]], axis=-1).reshape(-1, 2)
    truth = np.zeros((n_steps, *shape), np.int32)
    labels = np.zeros_like(truth)
    means = []
    tree_cls = __import__("scipy.spatial", fromlist=["cKDTree"]).cKDTree
    for t in range(n_steps):
        alive = np.flatnonzero((born <= t) & (dies > t))
        pos = centres[alive] + t * velocity[alive]
        _, owner = tree_cls(pos).query(grid)
        g = (alive[owner] + 1).reshape(shape).astype(np.int32)
        # Grain boundaries one pixel wide stay unassigned, as in real maps.
        edge = ndimage.morphological_gradient(g, size=2) > 0
        g[edge] = 0
        truth[t] = g
        ids = np.unique(g[g > 0])
        perm = rng.permutation(len(ids)) + 1
        lut = np.zeros(n_total + 1, np.int32)
        lut[ids] = perm
        labels[t] = lut[g]
        m = np.empty((len(ids), *qshape), np.float32)
        m[perm - 1] = templates[ids - 1] + rng.normal(0, 0.02, (len(ids), *qshape))
        means.append(m)
    return truth, labels, means


def make_orientations(truth, labels, seed=0):
    """An OrientationResult: one gold orientation per grain, 0.5 deg noise per cluster."""
    from scipy.spatial.transform import Rotation

    from napari_stemcluster.core import load_structure
    from napari_stemcluster.core.orientation import ORIENTATION_DTYPE, OrientationResult
    from napari_stemcluster.data import builtin_cif

    rng = np.random.default_rng(seed)
    base = Rotation.random(int(truth.max()) + 1, random_state=rng)
    counts = [int(lab.max()) for lab in labels]
    rec = np.zeros(sum(counts), ORIENTATION_DTYPE)
    row = 0
    for t, n in enumerate(counts):
        grain = np.zeros(n + 1, np.int64)
        sel = labels[t] > 0
        grain[labels[t][sel]] = truth[t][sel]
        noise = Rotation.from_rotvec(rng.normal(0, np.radians(0.5), (n, 3)))
        rot = (noise * base[grain[1:]]).as_matrix()
        rec["rotation"][row : row + n] = rot
        rec["inplane_deg"][row : row + n] = np.degrees(np.arctan2(rot[:, 1, 0], rot[:, 0, 0]))
        row += n
    rec["indexed"] = True
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    au = load_structure(builtin_cif("Au"))
    return OrientationResult(records=rec, offsets=offsets, structures=[au])


def accuracy(truth, tracks):
    pairs = []
    for t in range(truth.shape[0]):
        tt, kk = truth[t].ravel(), tracks[t].ravel()
        sel = tt > 0
        for g, k in Counter(zip(tt[sel].tolist(), kk[sel].tolist(), strict=True)).items():
            pairs.append((g[0], t, g[1], k))
    best = {}
    for g, t, k, n in pairs:
        cur = best.get((g, t))
        if cur is None or n > cur[1]:
            best[(g, t)] = (k, n)
    usual = {}
    for (g, _), (k, _) in best.items():
        usual.setdefault(g, Counter())[k] += 1
    usual = {g: c.most_common(1)[0][0] for g, c in usual.items()}
    good = sum(1 for (g, _), (k, _) in best.items() if usual[g] == k)
    return good / len(best)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8 steps of 256x256")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    n_steps, shape, n_grains = (8, (256, 256), 80) if args.quick else (20, (512, 512), 300)
    qshape = (64, 64)
    truth, labels, means = make_series(n_steps, shape, n_grains, qshape)
    counts = [len(m) for m in means]
    print(
        f"{n_steps} steps of {shape[0]}x{shape[1]} scans, {min(counts)}-{max(counts)} "
        f"clusters per step, {qshape[0]}x{qshape[1]} patterns"
    )

    def timed(fn):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)), out

    link_clusters(labels[:2], means[:2])  # warm-up (imports)
    t_link, tr = timed(lambda: link_clusters(labels, means))
    t_overlap, tr_o = timed(lambda: link_clusters(labels))
    orient = make_orientations(truth, labels)
    t_orient, tr_r = timed(lambda: link_clusters(labels, means, orientations=orient))
    t_kin, _ = timed(lambda: grain_kinetics(tr))
    tracemalloc.start()
    link_clusters(labels, means)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    input_bytes = labels.nbytes + sum(m.nbytes for m in means)

    rng = np.random.default_rng(1)
    sim = rng.uniform(0.8, 1.0, (*shape, 8)).astype(np.float32)
    grow_regions(sim[:8, :8], 0.9)  # compile
    t_grow, _ = timed(lambda: grow_regions(sim, 0.9))

    per = n_steps - 1
    print(f"link (overlap + patterns): {t_link / per * 1e3:.1f} ms per step")
    print(f"link (overlap only):       {t_overlap / per * 1e3:.1f} ms per step")
    print(f"link (+ orientation results): {t_orient / per * 1e3:.1f} ms per step")
    print(f"kinetics:                  {t_kin / n_steps * 1e3:.1f} ms per step")
    print(f"comparator grow_regions on one {shape[0]}x{shape[1]} step: {t_grow * 1e3:.1f} ms")
    print(f"ratio link per step / grow_regions: {t_link / per / t_grow:.2f}")
    print(
        f"peak memory of linking (Python allocations): {peak / 2**20:.0f} MiB "
        f"({peak / input_bytes:.2f}x the labels and patterns)"
    )
    print(f"accuracy (grain-steps on their grain's track): {accuracy(truth, tr.tracks):.4f}")
    print(f"accuracy without patterns:                     {accuracy(truth, tr_o.tracks):.4f}")
    print(f"accuracy with orientation results:             {accuracy(truth, tr_r.tracks):.4f}")
    kinds = Counter(tr.events["kind"].tolist())
    print("events: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))


if __name__ == "__main__":
    main()
