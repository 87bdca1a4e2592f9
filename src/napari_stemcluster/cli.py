"""The ``stemcluster`` command: inspect files and segment them without a display.

::

    stemcluster info FILE [--scan-shape RX,RY]
    stemcluster segment [FILE] [-o RESULTS.h5] [options]
    stemcluster demo [-o DIR]

Exit status: 0 on success, 1 when the data or a value cannot be used, 2 for
a wrong command line, 130 when interrupted (Ctrl-C), 143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
import time
from pathlib import Path

from . import __version__, _signals
from .config import (
    DESCRIPTIONS,
    PARAMETERS,
    ConfigError,
    load_params,
    load_settings,
    parse_text,
    save_params,
    segment_kwargs,
)
from .core.params import PARAMS

#: The bundled sample: a small in-situ growth series of polycrystalline
#: nanoparticles (arguments of napari_stemcluster.synthetic.make_polycrystal).
SAMPLE = {"scan_shape": (48, 48), "detector_shape": (64, 64), "n_times": 5, "seed": 0}

DEFAULT_OUTPUT = "stemcluster-results.h5"
DEFAULT_DEMO_DIR = "stemcluster-demo"


class UserError(Exception):
    """An error to report in one line, without a traceback."""


_EXAMPLES = """examples:
  stemcluster info scan.h5                       what a file holds (reads only metadata)
  stemcluster info frames.mib --scan-shape 256x256
  stemcluster segment scan.h5 -o seg.h5 --overview seg.png
  stemcluster segment scan.h5 --config params.toml --threshold 0.92 -o seg.h5
  stemcluster segment scan.h5 -o seg.h5 --workers 2 --memory-limit 4GB
  stemcluster demo -o stemcluster-demo           sample, results and overview picture

exit status: 0 success, 1 unusable file or value, 2 wrong command line,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM)"""


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for misspelt options."""

    def error(self, message):
        if "unrecognized arguments:" in message:
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            for sub in self._subparsers._group_actions if self._subparsers else []:
                for p in getattr(sub, "choices", {}).values():
                    known += [o for a in p._actions for o in a.option_strings if o.startswith("--")]
            hints = []
            for word in message.split(":", 1)[1].split():
                name = word.split("=", 1)[0]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
                if name.startswith("-") and close:
                    hints.append(f"{name}: did you mean {close[0]}?")
            if hints:
                message = f"{message} ({'; '.join(hints)})"
        super().error(message)


# ----------------------------------------------------------------------
# argument parsing


def _typed(key):
    def convert(text):
        if key == "scan_shape":  # shapes are printed as 48x48: accept them so
            text = text.lower().replace("x", ",").replace("×", ",")
        try:
            return parse_text(key, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = key  # argparse names the option's type in messages
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stemcluster`` (all sub-commands)."""
    parser = _Parser(
        prog="stemcluster",
        description=(
            "Spatially contiguous clustering of 4D-STEM and in-situ 5D-STEM data, "
            "out of core and on a cluster."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser(
        "info",
        help="describe a 4D/5D-STEM file without reading it",
        description=(
            "Print the format, shape, dtype, chunks, calibration, size and notes of FILE "
            "(EMD/py4DSTEM, Arina/EIGER master, generic HDF5, Merlin .mib/.hdr, .npy) or "
            "of a results file. Only headers and metadata are read."
        ),
        epilog="examples:\n  stemcluster info scan.h5\n  stemcluster info frames.mib "
        "--scan-shape 64x64\n  stemcluster info series.h5 --scan-shape 10,64,64",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("file", metavar="FILE", help="data file or results file")
    info.add_argument(
        "--scan-shape",
        type=_typed("scan_shape"),
        metavar="RX,RY",
        help="scan shape of a flat stack of frames: RX,RY or RXxRY (T,RX,RY for a "
        "time series); default: from the file",
    )

    seg = sub.add_parser(
        "segment",
        help="segment a file (or the bundled sample) and save the results",
        description=(
            "Segment FILE block by block (memory bounded by --memory-limit) and write "
            "the results file. Without FILE, the bundled synthetic 5D sample is "
            "segmented. Parameters come from --config (TOML), overridden by options. "
            "For 5D data the grains are followed through time: persistent ids, events "
            "and kinetics go into the results file (/tracking) and RESULTS_kinetics.csv, "
            "RESULTS_kinetics_rates.csv and RESULTS_kinetics_events.csv beside it."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seg.add_argument("file", metavar="FILE", nargs="?", help="4D/5D-STEM data file")
    seg.add_argument(
        "-o",
        "--output",
        metavar="RESULTS.h5",
        default=DEFAULT_OUTPUT,
        help=f"results file (default: {DEFAULT_OUTPUT})",
    )
    seg.add_argument(
        "--config", metavar="PARAMS.toml", help="parameter file (options given here override it)"
    )
    seg.add_argument(
        "--overview",
        metavar="PNG",
        help="also draw the overview picture of `stemcluster demo` (virtual ADF, mean "
        "similarity, clusters, largest cluster averages); reads the cube once more",
    )
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
    demo.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    _add_orient_parser(sub)
    _add_strain_parser(sub)
    _add_track_parser(sub)
    return parser


def _add_orient_parser(sub):
    orient = sub.add_parser(
        "orient",
        help="orientation and phase of every cluster of a results file, from CIF files",
        description=(
            "Match the cluster-averaged patterns of RESULTS.h5 against kinematical "
            "templates of one or more crystal structures (CIF files; several give a "
            "phase map) and store orientation, phase, score and confidence of each "
            "cluster in the results file."
        ),
    )
    orient.add_argument("results", metavar="RESULTS.h5", help="results file of 'segment'")
    orient.add_argument(
        "--cif", action="append", required=True, metavar="FILE.cif", help="a candidate phase"
    )
    orient.add_argument("--energy", type=float, default=300.0, help="beam energy, keV")
    orient.add_argument(
        "--q-pixel-size",
        type=float,
        default=None,
        help="1/Å per detector pixel (default: the results file's calibration, if in 1/Å)",
    )
    orient.add_argument("--step", type=float, default=1.0, help="library step, degrees")
    orient.add_argument(
        "--max-angle", type=float, default=30.0, help="largest scattering angle 2θ, mrad"
    )
    orient.add_argument(
        "--sigma-excitation", type=float, default=0.02, help="excitation-error width, 1/Å"
    )
    orient.add_argument("--convergence", type=float, default=0.0, help="semi-angle, mrad")
    orient.add_argument(
        "--thickness",
        type=float,
        default=0.0,
        help="slab thickness, nm: sinc² excitation weight instead of the Gaussian (0: Gaussian)",
    )
    orient.add_argument("--disk-radius", type=float, default=2.0, help="Bragg disk radius, px")
    orient.add_argument("--min-disks", type=int, default=4, help="fewer: not indexed")
    orient.add_argument(
        "--center",
        type=_beam_center_arg,
        default="auto",
        metavar="auto|QX,QY",
        help="direct beam, px: 'auto' finds it in every cluster average (default); "
        "QX,QY fixes it for all",
    )
    orient.add_argument("-q", "--quiet", action="store_true", help="print nothing")


def _beam_center_arg(text: str):
    """``--center``: "auto" or "QX,QY" (pixels)."""
    if text.strip().lower() == "auto":
        return "auto"
    parts = text.replace(" ", "").split(",")
    try:
        qx, qy = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or two pixel positions 'QX,QY' (e.g. 63.5,64.2); got {text!r}"
        ) from None
    if not all(v == v and abs(v) != float("inf") for v in (qx, qy)):  # NaN or inf
        raise argparse.ArgumentTypeError(f"the beam centre must be finite; got {text!r}")
    return (qx, qy)


#: What an option without a value means, for the help text.
_UNSET = {
    "q_mask": "the whole detector",
    "scan_shape": "from the file; also written RXxRY",
    "times": "all",
}


def _default_text(p) -> str:
    d = p.default
    if d is None:
        unset = _UNSET.get(p.name)
        return f" (default: {unset})" if unset and "(default" not in p.help else ""
    if isinstance(d, bool):
        return " (default: on)" if d else " (default: off)"
    if isinstance(d, tuple | list):
        return f" (default: {','.join(str(v) for v in d)})"
    return f" (default: {d})"


def _add_option(group, p):
    flag = "--" + p.name.replace("_", "-")
    if p.kind == "bool":
        group.add_argument(
            flag,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=p.help + _default_text(p),
        )
        return
    limits = ""
    if p.kind in ("float", "int", "pair") and p.low is not None:
        limits = f" [{_number(p.low)}..{_number(p.high)}]"
    group.add_argument(
        flag, type=_typed(p.name), metavar=p.metavar, help=p.help + limits + _default_text(p)
    )


def _number(v) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e12 else f"{v:g}"


def _add_parameters(p):
    """One option per parameter of the parameter model, help and defaults from it."""
    g = p.add_argument_group("segmentation parameters")
    for param in PARAMS:
        if param.group == "science":
            _add_option(g, param)


def _add_run_options(p):
    g = p.add_argument_group("data and execution")
    exclusive = g.add_mutually_exclusive_group()
    for param in PARAMS:
        if param.group == "science":
            continue
        _add_option(exclusive if param.name in ("scheduler", "workers") else g, param)
    g.add_argument(
        "--trust-config",
        action="store_true",
        help="accept execution settings (scheduler, workers, memory_limit) from the "
        "--config file; only for files you wrote yourself",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing results file given with -o",
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
    previous = _signals.install()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command == "info":
            return _info(args)
        if args.command == "segment":
            return _segment(args)
        if args.command == "orient":
            return _orient(args)
        if args.command == "strain":
            return _strain(args)
        if args.command == "track":
            return _track_results(args)
        return _demo(args)
    except KeyboardInterrupt as e:  # SIGINT or SIGTERM (see _signals)
        _signals.unmute()
        print(_signals.message(e), file=sys.stderr)
        return _signals.status(e)
    except BrokenPipeError:
        # the reader of our output went away (`stemcluster info FILE | head -2`):
        # stop quietly, and keep Python from complaining when it flushes stdout
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:
        interrupt = _signals.swallowed(e)
        if interrupt is None:
            return _report_error(e)
        _signals.unmute()
        print(_signals.message(interrupt), file=sys.stderr)
        return _signals.status(interrupt)
    finally:
        _signals.restore(previous)


def _report_error(e: Exception) -> int:
    """One paragraph on stderr for a failed run; the exit status 1."""
    # ValueError covers the readers' StemFileError and ConfigError.
    if isinstance(e, (UserError, ValueError, OSError, MemoryError, OverflowError)):
        print(f"stemcluster: error: {_one_paragraph(e)}", file=sys.stderr)
        return 1
    if os.environ.get("STEMCLUSTER_DEBUG"):
        raise e
    # a failure of ours or of a library: still one paragraph
    print(
        f"stemcluster: error: {type(e).__name__}: {_one_paragraph(e)} (an unexpected "
        "failure; run again with STEMCLUSTER_DEBUG=1 for the traceback and report it)",
        file=sys.stderr,
    )
    return 1


def _one_paragraph(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, PermissionError) and e.filename:
        return f"{e.filename}: permission denied"
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, MemoryError):
        return "not enough memory" + (f" ({text})" if text else "")
    return text or type(e).__name__


def _info(args) -> int:
    from .io import StemFileError, detect_format, open_dataset

    try:
        kind = detect_format(args.file)
    except StemFileError:
        kind = None  # open_dataset says why
    if kind == "results":
        return _info_results(args.file)
    ds = open_dataset(args.file, args.scan_shape)
    d = ds.describe()
    print(f"file: {d['path']}")
    print(f"shape: {d['shape']}")
    print(ds.summary())
    print(f"bytes: {d['bytes']}")  # exact; the summary gives it in KiB/MiB/GiB
    return 0


def _info_results(path) -> int:
    from .io import read_results

    result, info = read_results(path)
    n = result.n_clusters
    print(f"file: {info['path']}")
    print(f"format: napari-stemcluster results (version {info['format_version']})")
    print(f"source: {info['source']}")
    print(f"labels: {tuple(result.labels.shape)}")
    print(f"clusters: {', '.join(map(str, n)) if isinstance(n, list) else n}")
    print(f"written by: napari-stemcluster {info['software_version']}, {info['created']}")
    return 0


def _gather_params(args) -> dict:
    """Parameters: settings file < parameter file < command line.

    Execution settings come from the user's settings file and the command
    line; from the parameter file only with ``--trust-config`` (see
    :func:`~napari_stemcluster.config.load_params`).
    """
    import warnings

    params = dict(load_settings())
    if args.config:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            params.update(load_params(args.config, trust=args.trust_config))
        for w in caught:
            print(f"stemcluster: warning: {w.message}", file=sys.stderr)
    for param in PARAMS:
        value = getattr(args, param.name, None)
        if value is not None:
            params[param.name] = value
    if args.scheduler is not None:
        params.pop("workers", None)  # the command line's --scheduler wins
    if args.workers is not None:
        params.pop("scheduler", None)
    if params.get("scheduler") is not None and params.get("workers") is not None:
        raise UserError("scheduler and workers are both set; give one of them")
    return params


def _segment(args) -> int:
    params = _gather_params(args)
    out = Path(args.output)
    _check_output(out, args.file, args.overwrite)
    if args.overview and not Path(args.overview).resolve().parent.is_dir():
        raise UserError(f"{Path(args.overview).parent}: directory does not exist (--overview)")
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
    written = _write(out, result, source, ds, seconds, args.overwrite)
    if not args.quiet:
        _summary(ds, result, stats, seconds, written)
    if args.overview:
        from .engine.overview import render_overview

        png = render_overview(ds.cube, result, Path(args.overview))
        if not args.quiet:
            print(f"overview: {png}")
    return 0


def _check_output(out: Path, source, overwrite: bool) -> None:
    """Refuse a results path that cannot be written, before any work is done.

    The rule is the API's (:func:`napari_stemcluster.io.output.check_output`).
    """
    from .io.output import check_output

    try:
        check_output(out, source=source, overwrite=overwrite, option="--overwrite")
    except FileExistsError as e:
        raise UserError(str(e)) from None


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
        # worker start-up cannot be torn down half-way: a signal meanwhile is
        # recorded and raised once the executor can be closed cleanly
        with _signals.deferred():
            executor = get_executor(params.get("scheduler"), params.get("workers"))
        with executor as ex:
            _signals.raise_pending()
            seconds["start workers"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = segment_chunked(
                ds,
                **kwargs,
                times=times,
                executor=ex,
                memory_limit=params.get("memory_limit"),
                on_stage=_stage_callback(bars),
                stats=stats,
            )
            seconds["segment"] = time.perf_counter() - t0
    finally:
        if bars is not None:
            bars.close()
    return result, stats, seconds


def _stage_callback(bars):
    """Progress after every block: an interrupt that was swallowed stops the run here."""

    def on_stage(stage, done, total):
        _signals.raise_pending()
        if bars is not None:
            bars.update(stage, done, total)

    return on_stage


def _write(out: Path, result, source, ds, seconds, overwrite):
    """Write the results beside ``out`` under a unique name, then rename it over.

    Signals are recorded, not raised, while the file is written (a signal
    inside h5py could be swallowed); one that came is honoured before the
    rename, so an interrupted run leaves the previous ``out`` untouched and
    no temporary file. The output rule of the API is checked again just
    before the rename (the file may have appeared while segmenting).
    """
    import uuid

    from .io import write_results
    from .io.output import check_output

    tracking = kinetics = None
    if result.is_time_series:
        tracking, kinetics = _track(result, ds.calibration, seconds)
    t0 = time.perf_counter()
    csvs = _kinetics_paths(out) if tracking is not None else []
    if not overwrite:
        existing = [p for p in csvs if p.exists()]
        if existing:
            raise UserError(f"{existing[0]}: exists; pass --overwrite to replace it")
    out = Path(os.path.abspath(out))
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with _signals.deferred():
            write_results(
                tmp,
                result,
                source=source,
                calibration=ds.calibration,
                tracking=tracking,
                kinetics=kinetics,
            )
            if _signals.pending() is None:
                check_output(out, source=source, overwrite=overwrite, option="--overwrite")
                os.replace(tmp, out)
    except FileExistsError as e:  # appeared while segmenting
        raise UserError(f"{e} (--overwrite)") from None
    finally:
        tmp.unlink(missing_ok=True)
    _signals.raise_pending()
    if tracking is not None:
        from .io._analysis_tracking import write_kinetics_csv

        # Beside the results file: <stem>_kinetics.csv, _rates.csv, _events.csv
        # (each written atomically; an interrupt now stops after the one in progress).
        seconds["kinetics_csv"] = write_kinetics_csv(csvs[0], kinetics, tracking)
    seconds["write"] = time.perf_counter() - t0
    return out


def _kinetics_paths(out: Path) -> list[Path]:
    """The CSV files written beside a 5D results file."""
    stem = f"{out.stem}_kinetics"
    return [out.with_name(f"{stem}{tail}.csv") for tail in ("", "_rates", "_events")]


def _track(result, calibration, seconds):
    """Persistent grain ids, events and kinetics of a 5D result."""
    from .core.tracking import EVENT_KINDS, track_series
    from .io import Calibration

    t0 = time.perf_counter()
    tracking, kinetics = track_series(
        result, Calibration.from_dict(calibration).as_dict(), orientations="pattern"
    )
    seconds["track"] = time.perf_counter() - t0
    seconds["n_tracks"] = tracking.n_tracks
    seconds["n_events"] = {k: int((tracking.events["kind"] == k).sum()) for k in EVENT_KINDS}
    return tracking, kinetics


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
            label = _stage_label(stage, {"prefilter": self.prefilter})
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


def _stage_label(stage: str, params: dict | None) -> str:
    """The name a stage has in the progress bars and the summary alike."""
    if stage == "similarity" and (params or {}).get("prefilter"):
        return "prefilter+similarity"
    return stage


def _summary(ds, result, stats, seconds, path):
    from .engine.planning import format_bytes

    counts = [len(step.clusters) for step in result.steps()]
    raw = stats.input_bytes
    size = os.path.getsize(path)
    tracked = {k: seconds.pop(k) for k in ("kinetics_csv", "n_tracks", "n_events") if k in seconds}
    total = sum(seconds.values())
    steps = len(counts)
    scan = "x".join(str(s) for s in ds.shape[-4:-2])
    det = "x".join(str(s) for s in ds.shape[-2:])
    seg = max(seconds["segment"], 1e-9)
    print(
        f"segmented {steps} time step(s) of {scan} scan positions ({det} patterns, "
        f"{format_bytes(raw)}) in {total:.1f} s in all; segmentation {seg:.2f} s, "
        f"{format_bytes(raw / seg)}/s of input"
    )
    print(f"plan: {stats.plan.describe()}")
    print(f"ran on: {stats.executor}")
    _print_diagnostics(result)
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
            parts.append(f"{_stage_label(stage, result.params)} {st[stage]:.2f} s{extra}")
    # The parts add up to the total: for one time step the stages run one
    # after the other and what they leave of the segmentation is setup (plan,
    # kernels loaded or compiled, thresholds); with several, the stages of
    # different steps run at once and their spans overlap.
    staged = sum(st.get(s, 0.0) for s in ("similarity", "regions", "averages"))
    rest = seg - staged
    if steps == 1:
        # from the printed figures, so that the printed parts add up exactly
        shown = sum(round(st.get(s, 0.0), 2) for s in ("similarity", "regions", "averages"))
        parts.append(f"setup (plan, kernels, thresholds) {max(round(seg, 2) - shown, 0.0):.2f} s")
    elif rest >= 0.005:
        parts.append(f"rest of the segmentation (setup; stages of time steps overlap) {rest:.2f} s")
    elif rest <= -0.005:
        parts.append(f"(the stages of different time steps overlapped by {-rest:.2f} s)")
    if "track" in seconds:
        parts.append(f"track grains {seconds['track']:.2f} s")
    parts.append(f"write {seconds['write']:.2f} s")
    print("time per stage: " + "; ".join(parts))
    if tracked:
        events = ", ".join(f"{n} {k}" for k, n in tracked["n_events"].items() if n)
        print(f"grains followed through time: {tracked['n_tracks']} tracks; events: {events}")
        csvs = ", ".join(str(p) for p in tracked["kinetics_csv"])
        print(f"kinetics: {csvs} and {path}:/tracking")
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
    from .io.output import atomic_output
    from .synthetic import make_polycrystal

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.quiet else print
    t0 = time.perf_counter()
    sample = make_polycrystal(**SAMPLE)
    data_path = out / "sample.h5"
    with atomic_output(data_path) as tmp, h5py.File(tmp, "w") as f:
        d = f.create_dataset(
            "data",
            data=sample.cube,
            chunks=(1, min(8, sample.cube.shape[1]), *sample.cube.shape[2:]),
            compression="gzip",
            compression_opts=4,
            shuffle=True,
        )
        d.attrs.update(_calibration(sample))
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
    tracking, kinetics = _track(result, ds.calibration, {})
    results_path = write_results(
        out / "results.h5",
        result,
        source=str(data_path.resolve()),
        calibration=ds.calibration,
        overwrite=True,
        tracking=tracking,
        kinetics=kinetics,
    )
    png = render_overview(ds.cube, result, out / "overview.png", tracking, kinetics)
    say(
        f"clusters per time step: {', '.join(str(c) for c in result.n_clusters)} "
        f"({sample.n_grains} grains in the ground truth)"
    )
    say(f"results: {results_path}")
    say(f"parameters: {out / 'params.toml'}")
    say(f"overview: {png}")
    say(
        f"done in {time.perf_counter() - t0:.1f} s; try: {_command()} segment "
        f"{data_path} --config {out / 'params.toml'} -o {out / 'again.h5'}"
    )
    return 0


def _command() -> str:
    """How to call this command again from here (it may not be on the PATH, e.g. via dev.sh)."""
    import shutil

    exe = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if Path(exe).name == "stemcluster" and shutil.which("stemcluster") != exe:
        return exe
    if Path(exe).name == "__main__.py":
        return f"{Path(sys.executable).name} -m napari_stemcluster"
    return "stemcluster"


__all__ = ["DESCRIPTIONS", "SAMPLE", "build_parser", "main"]


def _orient(args) -> int:
    """``stemcluster orient``: orientation of every cluster, saved into the results file."""
    import time

    import numpy as np

    from .core.orientation import orient_clusters
    from .io import normalize_units, read_results, save_orientation

    result, info = read_results(args.results)
    cal = info["calibration"]
    qp = args.q_pixel_size
    if qp is None:
        units = normalize_units(cal.get("q_units"))
        scale = {"1/angstrom": 1.0, "1/nm": 0.1}.get(units)
        if scale is None:
            raise UserError(
                f"{args.results}: Q calibration is in {cal.get('q_units')!r}, not 1/Å "
                "or 1/nm; give --q-pixel-size"
            )
        qp = float(cal["q_pixel_size"]) * scale
    t0 = time.perf_counter()

    def progress(done, total):
        if not args.quiet:
            print(f"\rmatched {done}/{total} clusters", end="", file=sys.stderr, flush=True)

    res = orient_clusters(
        result.cluster_means,
        args.cif,
        args.energy,
        qp,
        step_deg=args.step,
        max_angle_mrad=args.max_angle,
        sigma_excitation=args.sigma_excitation,
        convergence_mrad=args.convergence,
        thickness_nm=args.thickness,
        disk_radius=args.disk_radius,
        min_disks=args.min_disks,
        center=args.center,
        progress=progress,
    )
    save_orientation(args.results, res)
    if not args.quiet:
        rec = res.records
        print(file=sys.stderr)
        print(f"{args.results}: {len(rec)} clusters in {time.perf_counter() - t0:.1f} s")
        print(f"  indexed: {int(rec['indexed'].sum())}")
        if len(rec):
            lo, hi = rec["center"].min(axis=0), rec["center"].max(axis=0)
            how = "found per cluster" if args.center == "auto" else "given"
            print(
                f"  direct beam ({how}): qx {lo[0]:.2f}-{hi[0]:.2f}, qy {lo[1]:.2f}-{hi[1]:.2f} px"
            )
        for k, st in enumerate(res.structures):
            sel = rec["phase"] == k
            if sel.any():
                n = int(sel.sum())
                print(
                    f"  {st.name} ({st.spacegroup}): {n} cluster{'' if n == 1 else 's'}, "
                    f"median score {np.median(rec['score'][sel]):.3f}"
                )
    return 0


def _print_diagnostics(result) -> None:
    """Threshold, mask, clustered fraction and, without clusters, why."""
    diags = result.diagnostics
    if diags is None:
        return
    diags = diags if isinstance(diags, list) else [diags]
    t0 = result.params.get("time_range", [0])[0]
    for i, d in enumerate(diags):
        prefix = f"t={t0 + i}: " if len(diags) > 1 else ""
        print(f"{prefix}{d.summary()}")


# ---------------------------------------------------------------------------
# stemcluster strain: Bragg disks, lattices, orientation and strain


def _add_strain_parser(sub) -> None:
    from .core import find_bragg_disks, strain_map

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
    p.add_argument(
        "--scan-shape",
        type=_typed("scan_shape"),
        metavar="RX,RY",
        help="scan shape of a flat stack of frames: RX,RY or RXxRY (default: from the file)",
    )
    p.add_argument("-o", "--output", metavar="OUT.h5", help="default: RESULTS_bragg.h5")
    p.add_argument("--probe-radius", type=float, metavar="PX", help="disk radius (default: auto)")
    p.add_argument(
        "--template",
        choices=("synthetic", "central"),
        default="synthetic",
        help=(
            "probe template: a synthetic soft-edged disk (default) or the central disk of "
            "the largest cluster's average"
        ),
    )
    p.add_argument(
        "--vacuum",
        metavar="MASK.npy",
        help="probe template from the average of a vacuum region (bool scan mask in a .npy file)",
    )
    g = p.add_argument_group("detection (defaults as find_bragg_disks)")
    for flag, kind, text in _BRAGG_OPTIONS:
        g.add_argument(flag, type=kind, metavar="X", help=_bragg_help(flag, text))
    g.add_argument("--ring", action="store_true", help="background-subtracted (ring) kernel")
    g.add_argument(
        "--subpixel",
        choices=("dft", "parabolic", "none"),
        help=f"default: {_default_of(find_bragg_disks, '--subpixel')}",
    )
    min_indexed = _default_of(strain_map, "--min-indexed")
    p.add_argument(
        "--min-indexed",
        type=int,
        default=min_indexed,
        metavar="N",
        help=f"fewest indexed disks for a strain value (default: {min_indexed})",
    )
    p.add_argument(
        "--reference-region",
        metavar="MASK.npy",
        help=(
            "strain relative to the median lattice of each cluster inside this region "
            "(bool scan mask, or (T, RX, RY) for a time series, in a .npy file)"
        ),
    )
    p.add_argument("--no-strain", action="store_true", help="cluster lattices only (fast)")
    p.add_argument(
        "--reference",
        choices=("fit", "orientation"),
        help=(
            "strain reference of each cluster: its fitted average lattice, or the crystal "
            "lattice of its matched orientation (`stemcluster orient`); default: "
            "orientation when RESULTS.h5 holds one, else fit"
        ),
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.h5")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")


#: Detection options of ``stemcluster strain``: flag, type and help; the
#: defaults shown are those of :func:`~napari_stemcluster.core.find_bragg_disks`.
_BRAGG_OPTIONS = (
    ("--corr-power", float, "1: cross-correlation, 0: phase correlation"),
    ("--sigma", float, "smoothing of the correlation in pixels"),
    ("--min-spacing", float, "minimum disk distance in pixels (default: the disk radius)"),
    ("--min-relative", float, "fraction of the strongest disk"),
    ("--min-absolute", float, "least correlation peak, 0 for none"),
    ("--min-snr", float, "standard deviations above the correlation noise"),
    ("--edge", int, "ignore disks this close to the border (default: the disk radius)"),
    ("--max-count", int, "most disks per pattern"),
)


def _default_of(func, flag: str):
    """The default of the keyword of ``func`` that the option ``flag`` sets."""
    import inspect

    return inspect.signature(func).parameters[flag[2:].replace("-", "_")].default


def _bragg_help(flag: str, text: str) -> str:
    """``text`` with the default of ``find_bragg_disks`` (when it has a value)."""
    from .core import find_bragg_disks

    default = _default_of(find_bragg_disks, flag)
    return text if default is None else f"{text} (default {default:g})"


def _scan_mask(path, shape, what: str):
    import numpy as np

    try:
        mask = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the {what} mask ({e})") from None
    if mask.shape not in (tuple(shape), tuple(shape[-2:])):
        raise UserError(
            f"{path}: the {what} mask has shape {mask.shape}; expected the scan shape "
            f"{tuple(shape[-2:])}" + (f" or {tuple(shape)}" if len(shape) == 3 else "")
        )
    if mask.dtype.kind not in "biu":
        raise UserError(f"{path}: the {what} mask must be bool or integer; got {mask.dtype}")
    if not mask.any():
        raise UserError(f"{path}: the {what} mask selects no scan position")
    return mask != 0


def _strain_template(args, result, means, open_cube):
    """The probe template chosen on the command line (None: synthetic disk)."""
    import numpy as np

    from .core import probe_from_pattern, probe_from_region

    if args.vacuum:
        region = _scan_mask(args.vacuum, result.labels.shape, "vacuum")
        cube = open_cube("(the --vacuum template averages its patterns)")
        if cube.ndim == 5:  # the first time step with vacuum in the region
            region = np.broadcast_to(region, result.labels.shape)
            t = int(np.flatnonzero(region.reshape(len(region), -1).any(1))[0])
            cube, region = cube[t], region[t]
        try:
            return probe_from_region(cube, region, radius=args.probe_radius)
        except ValueError as e:
            raise UserError(f"{args.vacuum}: {e}") from None
    if args.template == "central":
        tables = result.clusters if result.is_time_series else [result.clusters]
        t = next((i for i, m in enumerate(means) if len(m)), None)
        if t is None:
            raise UserError("no clusters: there is no cluster average to take a template from")
        largest = int(np.argmax(tables[t].size))
        try:
            return probe_from_pattern(np.asarray(means[t][largest]), radius=args.probe_radius)
        except ValueError as e:
            raise UserError(f"the largest cluster's average: {e}") from None
    return None


def _strain(args) -> int:
    import numpy as np

    from .core import cluster_lattices, strain_map
    from .io import open_dataset, read_results, write_results

    src = Path(args.results)
    out = Path(args.output) if args.output else src.with_name(f"{src.stem}_bragg.h5")
    if out.resolve() == src.resolve():
        raise UserError(f"{out}: is the input results file; choose another output name")
    _check_output(out, args.data, args.overwrite)
    result, info = read_results(src)
    detect = {} if args.probe_radius is None else {"probe_radius": args.probe_radius}
    for flag, _, _ in _BRAGG_OPTIONS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key) is not None:
            detect[key] = getattr(args, key)
    if args.ring:
        detect["ring"] = True
    if args.subpixel:
        detect["subpixel"] = args.subpixel
    ts = result.is_time_series
    means = list(result.cluster_means) if ts else [result.cluster_means]
    started = time.perf_counter()
    opened = []

    def open_cube(why="(or use --no-strain)"):
        if not opened:
            data = args.data or info.get("source")
            if not data or not Path(data).exists():
                raise UserError(
                    f"{src}: the source data {data!r} is not available; give it with --data " + why
                )
            ds = open_dataset(data, args.scan_shape)
            if tuple(ds.cube.shape[:-2]) != tuple(result.labels.shape):
                raise UserError(
                    f"{data}: scan shape {tuple(ds.cube.shape[:-2])} differs from the labels "
                    f"{tuple(result.labels.shape)} in {src}"
                )
            opened.append(ds.cube)
        return opened[0]

    region = None
    if args.reference_region and not args.no_strain:
        region = _scan_mask(args.reference_region, result.labels.shape, "reference region")
        region = np.broadcast_to(region, result.labels.shape)
    template = _strain_template(args, result, means, open_cube)
    stored = dict(detect)  # the template array is not a parameter to store
    if template is not None:
        detect["template"] = template
        stored["template"] = "vacuum region" if args.vacuum else "central disk"
    try:
        lattices = [cluster_lattices(np.asarray(m), **detect) for m in means]
    except ValueError as e:
        raise UserError(f"Bragg disk detection: {e}") from None
    strain = None
    if not args.no_strain:
        cube = open_cube()

        def report(done, total):
            if not args.quiet:
                print(f"\rstrain: {done}/{total} positions", end="", file=sys.stderr)

        orientation = info.get("orientation")
        reference = args.reference or ("orientation" if orientation is not None else "fit")
        refs = lattices
        if reference == "orientation":
            if orientation is None:
                raise UserError(
                    f"{src}: holds no orientation; run `stemcluster orient` first or use "
                    "--reference fit"
                )
            from .core import orientation_reference

            refs = orientation_reference(orientation, lattices)
            missing = sum(int((~np.isfinite(r.g1).all(axis=1)).sum()) for r in refs)
            if missing and not args.quiet:
                print(f"clusters without an orientation reference: {missing}", file=sys.stderr)
        strain = strain_map(
            cube,
            result.labels,
            refs,
            min_indexed=args.min_indexed,
            progress=report,
            **detect,
        )
        if not args.quiet:
            print(file=sys.stderr)
        if region is not None:
            from .core import rereference

            if not (region & np.isfinite(strain.exx)).any():
                raise UserError(
                    f"{args.reference_region}: no position of the reference region has a "
                    "strain value"
                )
            strain = rereference(strain, result.labels, region)
    params = {"min_indexed": args.min_indexed, **stored}
    if strain is not None:
        params["reference"] = "region" if region is not None else reference
    written = write_results(
        out,
        result,
        source=info.get("source"),
        calibration=info.get("calibration"),
        overwrite=args.overwrite,
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


# ---------------------------------------------------------------------------
# stemcluster track: (re)link the grains of a 5D results file


def _add_track_parser(sub) -> None:
    p = sub.add_parser(
        "track",
        help="link the grains of a 5D results file through time, by its orientation results",
        description=(
            "Give the clusters of every time step of a 5D results file persistent grain ids "
            "(overlap, averaged patterns and, when the file holds them, the orientation "
            "results of `stemcluster orient` or the lattices of `stemcluster strain`), "
            "record the events and the kinetics, and store them in the file (atomically) "
            "and in the RESULTS_kinetics*.csv files beside it (replaced). Run it after "
            "`stemcluster orient` to link by the crystal orientations; this replaces the "
            "tracks (and any corrections) stored in the file."
        ),
    )
    p.add_argument("results", metavar="RESULTS.h5", help="5D results file of 'segment'")
    p.add_argument(
        "--orientation",
        choices=("auto", "orientation", "bragg", "none"),
        default="auto",
        help="orientations used for linking: the /orientation results, the /bragg "
        "lattices, or none; default: orientation when the file holds it, else bragg, "
        "else none",
    )
    p.add_argument(
        "--max-gap",
        type=int,
        default=1,
        metavar="N",
        help="steps a grain may be missing and keep its id (default: 1)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")


def _track_results(args) -> int:
    """``stemcluster track``: link a 5D results file and store tracks, events, kinetics."""
    from .core.tracking import EVENT_KINDS, track_series
    from .io import read_results
    from .io._analysis_tracking import save_tracking, write_kinetics_csv

    if args.max_gap < 0:
        raise UserError(f"--max-gap must be >= 0; got {args.max_gap}")
    src = Path(args.results)
    result, info = read_results(src)
    if not result.is_time_series:
        raise UserError(f"{src}: holds a 4D segmentation; linking needs a 5D (time series) one")
    found = {"orientation": info.get("orientation"), "bragg": info.get("bragg")}
    choice = args.orientation
    if choice == "auto":
        choice = next((k for k, v in found.items() if v is not None), "none")
    elif choice != "none" and found[choice] is None:
        hint = "stemcluster orient" if choice == "orientation" else "stemcluster strain"
        raise UserError(f"{src}: holds no {choice} results; run `{hint}` first")
    orientations = found.get(choice) if choice != "none" else None
    t0 = time.perf_counter()
    tracking, kinetics = track_series(
        result,
        info["calibration"],
        orientations="pattern" if orientations is None else orientations,
        max_gap=args.max_gap,
    )
    save_tracking(src, tracking, kinetics)
    csvs = write_kinetics_csv(_kinetics_paths(src)[0], kinetics, tracking)
    if not args.quiet:
        counts = {k: int((tracking.events["kind"] == k).sum()) for k in EVENT_KINDS}
        by = "overlap, patterns" + ("" if orientations is None else f", {choice} results")
        events = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no events"
        print(
            f"{src}: {tracking.n_tracks} grains over {tracking.n_steps} steps, linked by "
            f"{by} in {time.perf_counter() - t0:.2f} s; {events}"
        )
        print(f"  kinetics: {', '.join(str(p) for p in csvs)}")
    return 0
