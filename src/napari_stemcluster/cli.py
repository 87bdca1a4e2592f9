"""The ``stemcluster`` command: inspect files and segment them without a display.

::

    stemcluster info FILE [--scan-shape RX,RY]
    stemcluster segment [FILE] [-o RESULTS.h5] [options]
    stemcluster demo [-o DIR]

Exit status: 0 on success, 1 when the data or a value cannot be used, 2 for
a wrong command line, 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
from .config import (
    DESCRIPTIONS,
    PARAMETERS,
    RUN_OPTIONS,
    ConfigError,
    load_params,
    parse_text,
    save_params,
    segment_kwargs,
)

#: The bundled sample: a small in-situ growth series of polycrystalline
#: nanoparticles (arguments of napari_stemcluster.synthetic.make_polycrystal).
SAMPLE = {"scan_shape": (48, 48), "detector_shape": (64, 64), "n_times": 5, "seed": 0}

DEFAULT_OUTPUT = "stemcluster-results.h5"
DEFAULT_DEMO_DIR = "stemcluster-demo"


class UserError(Exception):
    """An error to report in one line, without a traceback."""


# ----------------------------------------------------------------------
# argument parsing


def _typed(key):
    def convert(text):
        try:
            return parse_text(key, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = key  # argparse names the option's type in messages
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stemcluster`` (all sub-commands)."""
    parser = argparse.ArgumentParser(
        prog="stemcluster",
        description=(
            "Spatially contiguous clustering of 4D-STEM and in-situ 5D-STEM data, "
            "out of core and on a cluster."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="describe a 4D/5D-STEM file without reading it")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--scan-shape", type=_typed("scan_shape"), metavar="RX,RY")

    seg = sub.add_parser(
        "segment",
        help="segment a file (or the bundled sample) and save the results",
        description=(
            "Segment FILE block by block (memory bounded by --memory-limit) and write "
            "the results file. Without FILE, the bundled synthetic 5D sample is "
            "segmented. Parameters come from --config (TOML), overridden by options."
        ),
    )
    seg.add_argument("file", metavar="FILE", nargs="?", help="4D/5D-STEM data file")
    seg.add_argument(
        "-o",
        "--output",
        metavar="RESULTS.h5",
        default=DEFAULT_OUTPUT,
        help=f"results file (default: {DEFAULT_OUTPUT})",
    )
    seg.add_argument("--config", metavar="PARAMS.toml", help="parameter file")
    _add_parameters(seg)
    _add_run_options(seg)
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")

    demo = sub.add_parser(
        "demo",
        help="segment the bundled sample and draw an overview picture",
        description=(
            "Write the bundled synthetic 5D sample, its segmentation, the parameters "
            "used and an overview PNG into DIR."
        ),
    )
    demo.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        default=DEFAULT_DEMO_DIR,
        help=f"output directory (default: {DEFAULT_DEMO_DIR})",
    )
    demo.add_argument("-q", "--quiet", action="store_true")
    _add_strain_parser(sub)
    return parser


def _add_parameters(p):
    g = p.add_argument_group("segmentation parameters")
    g.add_argument(
        "--threshold",
        type=_typed("threshold"),
        metavar="S",
        help="minimum neighbour similarity to join a cluster (0.9)",
    )
    g.add_argument(
        "--min-cluster-size",
        type=_typed("min_cluster_size"),
        metavar="N",
        help="drop smaller clusters (5)",
    )
    g.add_argument(
        "--prefilter",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the correlative prefilter first (off)",
    )
    g.add_argument(
        "--prefilter-sigma",
        type=_typed("prefilter_sigma"),
        metavar="S",
        help="prefilter blur in detector pixels (3)",
    )
    g.add_argument(
        "--prefilter-radius",
        type=_typed("prefilter_radius"),
        metavar="R",
        help="prefilter neighbourhood radius in scan pixels (4)",
    )
    g.add_argument(
        "--corr-range",
        type=_typed("corr_range"),
        metavar="A,B",
        help="prefilter correlation range (0.85,0.95)",
    )
    g.add_argument(
        "--prefilter-edge",
        type=_typed("prefilter_edge"),
        metavar="PX",
        help="detector border ignored by the prefilter",
    )
    g.add_argument(
        "--q-mask",
        type=_typed("q_mask"),
        metavar="INNER,OUTER",
        help="compare only this annulus of the detector (pixels)",
    )
    g.add_argument(
        "--sigma",
        type=_typed("sigma"),
        metavar="S",
        help="blur patterns before comparing, detector pixels (0)",
    )
    g.add_argument(
        "--real-mask",
        type=_typed("real_mask"),
        metavar="triangle|otsu|none|VALUE",
        help="real-space mask of the mean similarity (triangle)",
    )
    g.add_argument("--mask-min-size", type=_typed("mask_min_size"), metavar="N")
    g.add_argument("--mask-hole-size", type=_typed("mask_hole_size"), metavar="N")
    g.add_argument(
        "--average",
        type=_typed("average"),
        metavar="raw|prefiltered",
        help="cube the cluster averages are taken from (raw)",
    )
    g.add_argument(
        "--mask-source",
        type=_typed("mask_source"),
        metavar="raw|prefiltered",
        help="with --prefilter: whose mean similarity the real-space mask thresholds (raw)",
    )


def _add_run_options(p):
    g = p.add_argument_group("data and execution")
    g.add_argument(
        "--times",
        type=_typed("times"),
        metavar="A:B",
        help="time steps A..B-1 of a 5D file (default: all)",
    )
    g.add_argument(
        "--scan-shape",
        type=_typed("scan_shape"),
        metavar="RX,RY",
        help="scan shape of a flat stack of frames",
    )
    x = g.add_mutually_exclusive_group()
    x.add_argument(
        "--scheduler",
        type=_typed("scheduler"),
        metavar="ADDRESS",
        help="run on the workers of this dask scheduler",
    )
    x.add_argument(
        "--workers",
        type=_typed("workers"),
        metavar="N",
        help="run on N local worker processes (default: threads)",
    )
    g.add_argument(
        "--memory-limit",
        type=_typed("memory_limit"),
        metavar="SIZE",
        help="memory budget, e.g. 4GB (default: a quarter of RAM); with --scheduler, per worker",
    )


# ----------------------------------------------------------------------
# entry point


def main(argv: list[str] | None = None) -> int:
    """Run ``stemcluster`` with ``argv`` (default: the process arguments).

    Returns the exit status.

    Examples
    --------
    >>> main(["info", "missing.h5"])  # doctest: +SKIP
    stemcluster: error: ...missing.h5: file not found
    1
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            return _info(args)
        if args.command == "segment":
            return _segment(args)
        if args.command == "strain":
            return _strain(args)
        return _demo(args)
    except KeyboardInterrupt:
        print("\nstemcluster: interrupted; no results written", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError) as e:
        # ValueError covers the readers' StemFileError and ConfigError.
        print(f"stemcluster: error: {e}", file=sys.stderr)
        return 1


def _info(args) -> int:
    from .engine.planning import format_bytes
    from .io import open_dataset

    ds = open_dataset(args.file, args.scan_shape)
    d = ds.describe()
    print(f"file: {d['path']}")
    print(f"shape: {d['shape']}")
    print(ds.summary())
    print(f"bytes: {d['bytes']} ({format_bytes(d['bytes'])})")
    return 0


def _gather_params(args) -> dict:
    params = {}
    if args.config:
        params.update(load_params(args.config))
    for key in [*PARAMETERS, *RUN_OPTIONS]:
        value = getattr(args, key, None)
        if value is not None:
            params[key] = value
    if args.scheduler is not None and params.get("workers") is not None:
        params.pop("workers")  # the command line's --scheduler wins over the file
    if args.workers is not None:
        params.pop("scheduler", None)
    return params


def _segment(args) -> int:
    params = _gather_params(args)
    out = Path(args.output)
    _check_output(out, args.file)
    opened = time.perf_counter()
    if args.file is None:
        ds, source = _sample_dataset(params)
    else:
        from .io import open_dataset

        shape = params.get("scan_shape")
        ds = open_dataset(args.file, None if shape is None else tuple(shape))
        source = str(Path(args.file).resolve())
    t_open = time.perf_counter() - opened
    first = "open" if args.file else "generate sample"
    result, stats, seconds = _run(ds, params, quiet=args.quiet, first={first: t_open})
    written = _write(out, result, source, ds, seconds)
    if not args.quiet:
        _summary(ds, result, stats, seconds, written)
    return 0


def _check_output(out: Path, source) -> None:
    """Refuse a results path that cannot be written, before any work is done."""
    if out.is_dir():
        raise UserError(f"{out}: is a directory; give the results file name with -o")
    if not out.parent.resolve().is_dir():
        raise UserError(f"{out.parent}: directory does not exist")
    if not out.exists():
        return
    if source is not None and out.resolve() == Path(source).resolve():
        raise UserError(
            f"{out}: is the source data file; refusing to overwrite it, choose "
            "another results file name"
        )
    from .io import StemFileError, detect_format

    try:
        kind = detect_format(out)
    except StemFileError:
        kind = None
    if kind not in (None, "results"):
        raise UserError(
            f"{out}: holds 4D/5D-STEM data ({kind}); refusing to overwrite it with "
            "results, choose another file name"
        )


def _sample_dataset(params):
    from .io import StemDataset
    from .synthetic import make_polycrystal

    if params.get("scan_shape") is not None:
        raise UserError("--scan-shape applies to a FILE, not to the bundled sample")
    sample = make_polycrystal(**SAMPLE)
    args = ", ".join(f"{k}={v!r}" for k, v in SAMPLE.items())
    return (
        StemDataset.from_array(sample.cube, _calibration(sample)),
        f"synthetic sample: make_polycrystal({args})",
    )


def _calibration(sample) -> dict:
    """Pixel sizes and units of a synthetic sample."""
    return {k: getattr(sample, k) for k in ("r_pixel_size", "r_units", "q_pixel_size", "q_units")}


def _run(ds, params, *, quiet, first):
    from .engine import RunStats, get_executor, segment_chunked

    kwargs = segment_kwargs(params)
    times = params.get("times")
    if times is not None:
        if ds.ndim != 5:
            raise UserError("--times selects time steps of a 5D file; this file is 4D")
        if times[1] > ds.shape[0]:
            raise UserError(
                f"--times {times[0]}:{times[1]} is beyond the {ds.shape[0]} time "
                f"steps of the file (use A:B with B <= {ds.shape[0]})"
            )
    stats = RunStats()
    bars = None if quiet else _StageBars(bool(kwargs["prefilter"]))
    seconds = dict(first)
    try:
        t0 = time.perf_counter()
        with get_executor(params.get("scheduler"), params.get("workers")) as ex:
            seconds["start workers"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = segment_chunked(
                ds,
                **kwargs,
                times=times,
                executor=ex,
                memory_limit=params.get("memory_limit"),
                on_stage=None if bars is None else bars.update,
                stats=stats,
            )
            seconds["segment"] = time.perf_counter() - t0
    finally:
        if bars is not None:
            bars.close()
    return result, stats, seconds


def _write(out: Path, result, source, ds, seconds):
    from .io import write_results

    t0 = time.perf_counter()
    path = write_results(out, result, source=source, calibration=ds.calibration, overwrite=True)
    seconds["write"] = time.perf_counter() - t0
    return path


class _StageBars:
    """One progress bar per stage (on stderr; hidden when it is not a terminal)."""

    def __init__(self, prefilter: bool):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bars = {}
        self.prefilter = prefilter

    def update(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            label = "prefilter+similarity" if (stage == "similarity" and self.prefilter) else stage
            bar = self._tqdm(
                total=total,
                desc=f"{label:>20}",
                unit="block" if stage != "regions" else "step",
                position=len(self.bars),
                leave=True,
                disable=None,
                file=sys.stderr,
            )
            self.bars[stage] = bar
        if done > bar.n:
            bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _summary(ds, result, stats, seconds, path):
    from .engine.planning import format_bytes

    n = result.n_clusters
    counts = n if isinstance(n, list) else [n]
    raw = stats.input_bytes
    size = os.path.getsize(path)
    total = sum(seconds.values())
    steps = len(counts)
    scan = "x".join(str(s) for s in ds.shape[-4:-2])
    det = "x".join(str(s) for s in ds.shape[-2:])
    print(
        f"segmented {steps} time step(s) of {scan} scan positions ({det} patterns, "
        f"{format_bytes(raw)}) in {total:.1f} s, {raw / 1e9 / max(seconds['segment'], 1e-9):.3f} "
        "GB/s of input"
    )
    print(f"plan: {stats.plan.describe()}")
    print(f"ran on: {stats.executor}")
    if steps == 1:
        print(f"clusters: {counts[0]}")
    else:
        t0 = result.params.get("time_range", [0])[0]
        print(
            "clusters per time step: " + ", ".join(f"t={t0 + i}: {c}" for i, c in enumerate(counts))
        )
    st = stats.stage_seconds
    read = stats.task_seconds
    label = next(iter(seconds))
    parts = [f"{label} {seconds[label]:.2f} s"]
    if seconds.get("start workers", 0) > 0.05:
        parts.append(f"start workers {seconds['start workers']:.2f} s")
    for stage in ("similarity", "regions", "averages"):
        if stage in st:
            extra = ""
            if stage in read:
                extra = f" (tasks: read {read[stage][0]:.2f} s, compute {read[stage][1]:.2f} s)"
            parts.append(f"{stage} {st[stage]:.2f} s{extra}")
    parts.append(f"write {seconds['write']:.2f} s")
    print("time per stage: " + "; ".join(parts))
    print(
        f"results: {path} ({format_bytes(size)}); compression ratio "
        f"{raw / max(size, 1):.1f} (raw cube bytes / results file bytes)"
    )


# ----------------------------------------------------------------------
# demo


def _demo(args) -> int:
    import h5py

    from .engine import RunStats, segment_chunked
    from .engine.overview import render_overview
    from .io import open_dataset, write_results
    from .synthetic import make_polycrystal

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.quiet else print
    t0 = time.perf_counter()
    sample = make_polycrystal(**SAMPLE)
    data_path = out / "sample.h5"
    tmp = out / ".sample.h5.tmp"
    try:
        with h5py.File(tmp, "w") as f:
            d = f.create_dataset(
                "data",
                data=sample.cube,
                chunks=(1, min(8, sample.cube.shape[1]), *sample.cube.shape[2:]),
                compression="gzip",
                compression_opts=4,
                shuffle=True,
            )
            d.attrs.update(_calibration(sample))
        os.replace(tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)
    say(
        f"sample: {data_path} ({SAMPLE['n_times']} time steps of "
        f"{SAMPLE['scan_shape'][0]}x{SAMPLE['scan_shape'][1]} scan positions, "
        f"{SAMPLE['detector_shape'][0]}x{SAMPLE['detector_shape'][1]} patterns)"
    )
    params = dict(PARAMETERS)
    save_params(out / "params.toml", params)
    ds = open_dataset(data_path)
    stats = RunStats()
    result = segment_chunked(ds, **segment_kwargs(params), stats=stats)
    results_path = write_results(
        out / "results.h5",
        result,
        source=str(data_path.resolve()),
        calibration=ds.calibration,
        overwrite=True,
    )
    png = render_overview(ds.cube, result, out / "overview.png")
    say(
        f"clusters per time step: {', '.join(str(c) for c in result.n_clusters)} "
        f"({sample.n_grains} grains in the ground truth)"
    )
    say(f"results: {results_path}")
    say(f"parameters: {out / 'params.toml'}")
    say(f"overview: {png}")
    say(
        f"done in {time.perf_counter() - t0:.1f} s; try: stemcluster segment "
        f"{data_path} --config {out / 'params.toml'} -o {out / 'again.h5'}"
    )
    return 0


__all__ = ["DESCRIPTIONS", "SAMPLE", "build_parser", "main"]


# ---------------------------------------------------------------------------
# stemcluster strain: Bragg disks, lattices, orientation and strain


def _add_strain_parser(sub) -> None:
    p = sub.add_parser(
        "strain",
        help="Bragg disks, lattice and orientation per cluster, and hybrid strain maps",
        description=(
            "Find the Bragg disks of every cluster average of RESULTS.h5, fit each "
            "cluster's lattice (orientation map), and, unless --no-strain, index every "
            "position's own disks against its cluster's lattice for strain maps. Writes "
            "a new results file with the /bragg group; RESULTS.h5 is not modified."
        ),
    )
    p.add_argument("results", metavar="RESULTS.h5", help="results file of `stemcluster segment`")
    p.add_argument("--data", metavar="FILE", help="4D/5D-STEM file (default: the recorded source)")
    p.add_argument("--scan-shape", type=_typed("scan_shape"), metavar="RX,RY")
    p.add_argument("-o", "--output", metavar="OUT.h5", help="default: RESULTS_bragg.h5")
    p.add_argument("--probe-radius", type=float, metavar="PX", help="disk radius (default: auto)")
    p.add_argument("--min-indexed", type=int, default=5, metavar="N", help="default: 5")
    p.add_argument("--no-strain", action="store_true", help="cluster lattices only (fast)")
    p.add_argument("-q", "--quiet", action="store_true")


def _strain(args) -> int:
    import numpy as np

    from .core import cluster_lattices, strain_map
    from .io import open_dataset, read_results, write_results

    src = Path(args.results)
    out = Path(args.output) if args.output else src.with_name(f"{src.stem}_bragg.h5")
    if out.resolve() == src.resolve():
        raise UserError(f"{out}: is the input results file; choose another output name")
    _check_output(out, args.data)
    result, info = read_results(src)
    detect = {} if args.probe_radius is None else {"probe_radius": args.probe_radius}
    ts = result.is_time_series
    means = list(result.cluster_means) if ts else [result.cluster_means]
    started = time.perf_counter()
    lattices = [cluster_lattices(np.asarray(m), **detect) for m in means]
    strain = None
    if not args.no_strain:
        data = args.data or info.get("source")
        if not data or not Path(data).exists():
            raise UserError(
                f"{src}: the source data {data!r} is not available; give it with --data "
                "(or use --no-strain)"
            )
        ds = open_dataset(data, args.scan_shape)
        if tuple(ds.cube.shape[:-2]) != tuple(result.labels.shape):
            raise UserError(
                f"{data}: scan shape {tuple(ds.cube.shape[:-2])} differs from the labels "
                f"{tuple(result.labels.shape)} in {src}"
            )

        def report(done, total):
            if not args.quiet:
                print(f"\rstrain: {done}/{total} positions", end="", file=sys.stderr)

        strain = strain_map(
            ds.cube,
            result.labels,
            lattices,
            min_indexed=args.min_indexed,
            progress=report,
            **detect,
        )
        if not args.quiet:
            print(file=sys.stderr)
    params = {"min_indexed": args.min_indexed, **detect}
    written = write_results(
        out,
        result,
        source=info.get("source"),
        calibration=info.get("calibration"),
        overwrite=out.exists(),
        bragg={"lattices": lattices, "strain": strain, "params": params},
    )
    if not args.quiet:
        n = sum(len(t) for t in lattices)
        found = sum(int(np.isfinite(t.g1).all(axis=1).sum()) for t in lattices)
        print(f"clusters with a lattice: {found} of {n}")
        if strain is not None:
            ok = np.isfinite(strain.exx)
            print(
                f"positions with strain: {int(ok.sum())} of {int((result.labels > 0).sum())}"
                + (
                    f"; median |exx| {np.nanmedian(np.abs(strain.exx)) * 100:.3f} %"
                    if ok.any()
                    else ""
                )
            )
        print(f"time: {time.perf_counter() - started:.2f} s")
        print(f"written: {written}")
    return 0
