"""Segmentation quality on synthetic data with a known grain map.

Run ``python benchmarks/quality.py``. For a range of electron doses and grain
boundary widths it segments the same synthetic nanoparticle scan (same
geometry and orientations, different noise or boundary blur) with and without
the correlative prefilter and prints:

- ARI: adjusted Rand index between the true grains and the clusters, over
  the true grain pixels (background-labelled pixels count as one more class);
- boundary F1: agreement of cluster and grain boundaries within 1 pixel;
- coverage: fraction of grain pixels assigned to a cluster;
- clusters/grain and grains/cluster: over- and under-segmentation, over the
  assigned grain pixels (1.00 and 1.00 is a perfect match);
- contrast: median neighbour similarity inside grains minus the median across
  grain boundaries (what the threshold has to separate).

Each scan is segmented with the defaults (triangle mask, threshold 0.9), without
the prefilter ("no"), with it and the mask thresholding the raw cube's mean
similarity (the default, "raw map"), and with it and the mask thresholding the
prefiltered cube's map, as the paper orders the steps ("pre. map").
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from napari_stemcluster import segment
from napari_stemcluster.core import metrics
from napari_stemcluster.synthetic import make_polycrystal


def evaluate(scan, **kwargs) -> dict:
    t = time.perf_counter()
    res = segment(scan.cube, **kwargs)
    seconds = time.perf_counter() - t
    grains = scan.grains
    on_grains = grains > 0
    assigned = on_grains & (res.labels > 0)
    split = (
        metrics.over_under_segmentation(grains, res.labels, mask=assigned)
        if assigned.any()
        else {"clusters_per_grain": np.nan, "grains_per_cluster": np.nan}
    )
    return {
        "coverage": float(assigned.sum() / max(on_grains.sum(), 1)),
        "ari": metrics.adjusted_rand_index(grains, res.labels, mask=on_grains),
        "bf1": metrics.boundary_f1(grains, res.labels, tolerance=1),
        "split": split,
        "contrast": metrics.similarity_contrast(res.similarity, grains),
        "clusters": res.n_clusters,
        "seconds": seconds,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=int, default=64, help="scan size (square)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    base = make_polycrystal((args.scan, args.scan), (64, 64), seed=args.seed)
    dose0 = base.params["dose"]
    width0 = base.params["boundary_width"]
    rows = [(dose0 * f, width0) for f in (1.0, 0.3, 0.1, 0.03)]
    rows += [(dose0, w) for w in (0.0, 1.5, 3.0)]
    head = (
        f"{'dose':>7} {'bnd width':>9} {'prefilter':>10} {'ARI':>6} {'bnd F1':>7} "
        f"{'coverage':>8} {'clust/grain':>11} {'grain/clust':>11} {'contrast':>9} {'N':>4}"
    )
    print(f"{base.n_grains} true grains, {args.scan}x{args.scan} scan, 64x64 patterns")
    print(head)
    print("-" * len(head))
    for dose, width in rows:
        scan = make_polycrystal(
            (args.scan, args.scan), (64, 64), dose=dose, boundary_width=width, seed=args.seed
        )
        configs = (
            ("no", {}),
            ("raw map", {"prefilter": True}),
            ("pre. map", {"prefilter": True, "mask_source": "prefiltered"}),
        )
        for name, kwargs in configs:
            r = evaluate(scan, **kwargs)
            s = r["split"]
            print(
                f"{dose:>7.0f} {width:>9.1f} {name:>10} "
                f"{r['ari']:>6.3f} {r['bf1']:>7.3f} {r['coverage']:>8.2f} "
                f"{s['clusters_per_grain']:>11.2f} {s['grains_per_cluster']:>11.2f} "
                f"{r['contrast']:>9.3f} {r['clusters']:>4}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
