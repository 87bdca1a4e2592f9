"""Speed of orientation mapping per cluster versus per probe position.

Run ``python benchmarks/orientation.py`` (``--quick`` for a smaller run).

Prints:

* library build: templates per second, size and peak memory;
* matching all cluster averages of a 512x512-scan-sized clustering
  (``--clusters`` averages, default 300: N_cluster / N_probe ~ 1e-3):
  matches per second and total seconds;
* the comparator, matching every probe position of that scan: per-position
  time measured on ``--sample`` single (low-dose) patterns in the same
  process, extrapolated to 512 x 512 positions; and the measured time ratio;
* a small scan matched both ways in full (every position, and its cluster
  averages), for a ratio with nothing extrapolated;
* the orientation error of cluster averages versus single patterns.

Patterns are kinematical simulations of gold near random zone axes, with
Poisson noise: single patterns at ``--dose`` electrons, averages at
``dose x cluster size``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np

from napari_stemcluster.core import (
    load_structure,
    match_orientations,
    misorientation_deg,
    orientation_library,
)
from napari_stemcluster.core.orientation import (
    _base_rotations,
    _rot_z,
    _rotvec,
    simulate_pattern,
)
from napari_stemcluster.data import builtin_cif

AXES = [(0, 0, 1), (0, 1, 1), (1, 1, 2), (0, 1, 3), (1, 2, 3), (0, 1, 2)]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _orientations(st, n, rng):
    out = []
    for i in range(n):
        v = st.direct @ np.asarray(AXES[i % len(AXES)], float)
        v /= np.linalg.norm(v)
        ax = np.array([*rng.normal(size=2), 0.0])
        ax /= np.linalg.norm(ax)
        tilt = _rotvec(np.radians(rng.uniform(0.3, 1.2)) * ax)
        out.append(_rot_z(rng.uniform(0, 2 * np.pi)) @ tilt @ _base_rotations(st, v[None])[0])
    return np.array(out)


def _patterns(lib, rots, shape, counts, seed):
    return np.stack(
        [simulate_pattern(lib, r, shape, counts=counts, rng=seed + i) for i, r in enumerate(rots)]
    )


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer clusters and samples")
    p.add_argument("--clusters", type=int, default=300)
    p.add_argument("--sample", type=int, default=60, help="single patterns timed")
    p.add_argument("--dose", type=float, default=3000.0, help="electrons per single pattern")
    p.add_argument("--step", type=float, default=1.0, help="library step, degrees")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.clusters, args.sample, args.repeats = 60, 20, 1
    shape = (128, 128)
    qpix, scan = 0.02, (512, 512)
    n_probe = scan[0] * scan[1]
    rng = np.random.default_rng(0)
    st = load_structure(builtin_cif("Au"))

    rss0 = _peak_mb()
    t_lib, lib = _timed(
        lambda: orientation_library(st, 300.0, qpix, step_deg=args.step, g_max=1.2), 1
    )
    print(f"library: Au, step {args.step} deg, {len(lib)} directions x {lib.n_angles} in-plane")
    print(
        f"  build {t_lib:.2f} s = {len(lib) / t_lib:.0f} templates/s "
        f"({len(lib) * lib.n_angles / t_lib:.3g} orientations/s); "
        f"{lib.entry_fft.nbytes / 1e6:.1f} MB; peak RSS +{_peak_mb() - rss0:.0f} MB"
    )
    match_orientations(_patterns(lib, _orientations(st, 2, rng), shape, 1e6, 0), lib)  # warm

    # cluster averages: mean cluster size N_probe / N_cluster positions each
    size = n_probe / args.clusters
    truth_c = _orientations(st, args.clusters, rng)
    avgs = _patterns(lib, truth_c, shape, args.dose * size, 100)
    # threads (default) and one thread, alternating so both see the same machine load
    # one thread (default) and two, alternating so both see the same machine load
    one, two = [], []
    for _ in range(args.repeats):
        t, rec_c = _timed(lambda: match_orientations(avgs, lib), 1)
        one.append(t)
        two.append(_timed(lambda: match_orientations(avgs, lib, workers=2), 1)[0])
    t_c, t_c2 = statistics.median(one), statistics.median(two)
    print(
        f"cluster averages: {args.clusters} clusters of a {scan[0]}x{scan[1]} scan "
        f"(R = N_cluster/N_probe = {args.clusters / n_probe:.1e})"
    )
    print(f"  {t_c:.2f} s = {args.clusters / t_c:.1f} matches/s (median of {args.repeats})")
    print(
        f"  two threads (workers=2, {os.cpu_count()} cores): {t_c2:.2f} s, "
        f"{t_c / t_c2:.2f}x the speed of one"
    )

    truth_s = _orientations(st, args.sample, rng)
    singles = _patterns(lib, truth_s, shape, args.dose, 10_000)
    t_s, rec_s = _timed(lambda: match_orientations(singles, lib), args.repeats)
    per = t_s / args.sample
    t_all = per * n_probe
    print(
        f"every probe position: {per * 1e3:.1f} ms per pattern ({args.sample} timed) "
        f"-> {t_all / 3600:.2f} h for {n_probe} positions (extrapolated)"
    )
    print(f"  measured time ratio clusters / every position: {t_c / t_all:.1e}")

    # a small scan matched both ways in full: nothing extrapolated
    grains, per_grain = 6, 64
    truth_g = _orientations(st, grains, rng)
    full = _patterns(lib, np.repeat(truth_g, per_grain, axis=0), shape, args.dose, 20_000)
    t_full, _ = _timed(lambda: match_orientations(full, lib), 1)
    means = full.reshape(grains, per_grain, *shape).mean(axis=1)
    t_mean, _ = _timed(lambda: match_orientations(means, lib), args.repeats)
    print(
        f"small scan, {grains * per_grain} positions in {grains} clusters: every position "
        f"{t_full:.2f} s, cluster averages {t_mean:.3f} s; ratio {t_mean / t_full:.1e} "
        f"(N_cluster/N_probe = {grains / (grains * per_grain):.1e})"
    )

    def err(rec, truth):
        e = misorientation_deg(rec["rotation"], truth, st)
        return np.nanmedian(np.where(rec["indexed"], e, np.nan)), rec["indexed"].mean()

    ec, ic = err(rec_c, truth_c)
    es, is_ = err(rec_s, truth_s)
    print(
        f"median orientation error: cluster averages {ec:.3f} deg ({100 * ic:.0f}% indexed), "
        f"single patterns at {args.dose:.0f} e- {es:.3f} deg ({100 * is_:.0f}% indexed)"
    )
    print(f"peak RSS {_peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
