"""Bragg-disk detection: throughput, and the signal gain of cluster averages.

    python benchmarks/bragg.py            # both parts, a few minutes on 2 cores
    python benchmarks/bragg.py --quick    # fewer repeats

Throughput: ``find_bragg_disks`` on stacks of Poisson patterns (64x64 and
128x128), with the sub-pixel DFT refinement (default) and the parabola,
against the per-pattern disk-contrast peak finder the diffraction viewer
used before (``core.peaks.find_peaks``), measured in the same process
(median of repeats); the hybrid strain pass over a scan in positions/s;
peak memory as the largest traced allocation (tracemalloc).

Signal gain: patterns with known disks (``_bragg_synth``: disk intensity
falling with the scattering vector, a diffuse halo, Poisson noise) at
several doses; a "cluster average" of N positions is the mean of N
independent draws. For single patterns and averages of 25 and 100 we
report the recall of the true disks, the median sub-pixel error of the
found ones, and the highest scattering vector among correctly indexed disks
(in units of |g1|): the paper's claim that clustering recovers weak,
high-angle disks, measured.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
import warnings

import numpy as np

from napari_stemcluster._bragg_synth import disk_pattern, lattice_vectors, match
from napari_stemcluster.core import cluster_lattices, find_bragg_disks, fit_lattice, strain_map
from napari_stemcluster.core.bragg import BraggWarning
from napari_stemcluster.core.peaks import find_peaks


def _stack(q: int, n: int, dose: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lam, _ = disk_pattern((q, q), *lattice_vectors(q / 5.6, 12.0), radius=q / 25, dose=None)
    return rng.poisson(lam[None] * dose, size=(n, q, q)).astype(np.uint16)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_mb(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def throughput(repeats: int) -> None:
    print("## Throughput (patterns/s; median of", repeats, "repeats)\n")
    print("| detector | method | patterns/s | disks/pattern | peak memory | vs. find_peaks |")
    print("| --- | --- | --- | --- | --- | --- |")
    for q, n in ((64, 1024), (128, 256)):
        stack = _stack(q, n, 20000.0)
        radius = q / 25
        find_bragg_disks(stack[:4], probe_radius=radius)  # compile the numba kernel
        sub = stack[: max(16, n // 8)]
        t_ref = _median_time(lambda s=sub, r=radius: [find_peaks(p, r) for p in s], repeats)
        ref_rate = len(sub) / t_ref
        for mode in ("dft", "parabolic"):
            out = find_bragg_disks(stack, probe_radius=radius, subpixel=mode)
            t = _median_time(
                lambda m=mode, s=stack, r=radius: find_bragg_disks(s, probe_radius=r, subpixel=m),
                repeats,
            )
            mem = _peak_mb(
                lambda m=mode, s=stack, r=radius: find_bragg_disks(s, probe_radius=r, subpixel=m)
            )
            rate = n / t
            print(
                f"| {q}x{q} | find_bragg_disks ({mode}) | {rate:,.0f} | "
                f"{np.mean([len(o) for o in out]):.1f} | {mem:.0f} MiB | {rate / ref_rate:.2f}x |"
            )
        print(f"| {q}x{q} | find_peaks (per pattern, no DFT) | {ref_rate:,.0f} | – | – | 1 |")
    # The strain pass: detection + indexing + local fit at every position.
    q = 64
    scan = (32, 32)
    stack = _stack(q, scan[0] * scan[1], 20000.0, seed=1).reshape(*scan, q, q)
    labels = np.ones(scan, np.int32)
    table = cluster_lattices(stack.mean(axis=(0, 1))[None], probe_radius=q / 25)
    t = _median_time(lambda: strain_map(stack, labels, table, probe_radius=q / 25), repeats)
    print(
        f"\nHybrid strain pass, {scan[0]}x{scan[1]} scan of {q}x{q} patterns: "
        f"{scan[0] * scan[1] / t:,.0f} positions/s ({t:.2f} s)\n"
    )


def signal_gain(n_lattices: int) -> None:
    print("## Signal gain of cluster averages\n")
    print(
        "64x64 patterns, disks of radius 2.5 px, |g1| = 11 px, intensity "
        "exp(-(|g|/1.2|g1|)^2), 5 % diffuse halo; dose = expected counts per "
        f"pattern; {n_lattices} random lattices per row.\n"
    )
    print(
        "| dose / pattern | averaged patterns | recall (all disks) | recall (|g| > 2|g1|) "
        "| median error (px) | highest indexed |g| / |g1| |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for dose in (100.0, 300.0, 1000.0, 3000.0):
        for n_avg in (1, 25, 100):
            rng = np.random.default_rng(7)
            found, total, near_f, near_t, errs, reach = 0, 0, 0, 0, [], []
            for _ in range(n_lattices):
                g1, g2 = lattice_vectors(11.0, rng.uniform(0, 90))
                c = 31.5 + rng.uniform(-1.5, 1.5, 2)
                lam, truth = disk_pattern((64, 64), g1, g2, center=c, dose=None, decay=1.2)
                draws = rng.poisson(lam[None] * dose, size=(n_avg, 64, 64))
                avg = draws.mean(axis=0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", BraggWarning)
                    d, beam = find_bragg_disks(avg, return_beam=True)
                pos = np.stack([d["qx"], d["qy"]], axis=1)
                m = match(pos, truth.positions)
                glen = np.hypot(*(truth.positions - truth.center).T) / 11.0
                ok = m >= 0
                found += int(ok.sum())
                total += len(m)
                near_f += int((ok & (glen > 2.0)).sum())
                near_t += int((glen > 2.0).sum())
                errs.extend(np.hypot(*(pos[m[ok]] - truth.positions[ok]).T))
                fit = fit_lattice(d, center=beam if np.all(np.isfinite(beam)) else None)
                best = 0.0
                if fit.ok:
                    # Correctly indexed: the disk is a true one and its index maps onto it.
                    for j in np.flatnonzero(fit.indexed):
                        q = fit.center + fit.hk[j] @ np.array([fit.g1, fit.g2])
                        near = np.min(np.hypot(*(truth.positions - q).T)) if len(m) else 9.0
                        if near <= 1.0:
                            best = max(best, float(np.hypot(*(q - fit.center))) / 11.0)
                reach.append(best)
            err = f"{np.median(errs):.3f}" if errs else "–"
            print(
                f"| {dose:,.0f} | {n_avg} | {found / total:.2f} | {near_f / max(near_t, 1):.2f} "
                f"| {err} | {np.median(reach):.2f} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    throughput(1 if args.quick else 3)
    signal_gain(4 if args.quick else 8)


if __name__ == "__main__":
    main()
