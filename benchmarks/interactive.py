"""Interactive figures of the napari workflow on a file-backed cube.

    python benchmarks/interactive.py [--rows 256] [--cols 256] [--keep] [--no-gui]
    python benchmarks/interactive.py --responsiveness [--sample-pauses] [--path FILE]
    python benchmarks/interactive.py --hover [--path FILE]

Writes a ``rows x cols`` scan of 128x128 uint16 patterns (256 x 256: 2 GiB)
to an HDF5 file in the temporary directory (deleted afterwards unless
``--keep``), opens it as napari does, and measures, as medians of repeats:

- hover: one pattern read straight from the file (``read_pattern``, what the
  diffraction viewer does) against the same pattern through the dask cube;
- paint: 300 positions repainted, then the cluster sums, table and seeds
  brought up to date (``ClusterState.sync`` + ``seed_points``), with the
  patterns read from the file's array-like and, as comparator, through dask;
- merge: two clusters merged (sums updated without reading);
- virtual detector: the background pass that reads the file once at open
  (virtual ADF plus the binned copy of the cube) against the dask pass it
  replaces; the image of a moved detector from the binned copy (the first
  image after an ROI change), its error against the exact image, and the
  exact image read from the file coarse rows first; as comparators, the
  strided coarse image and an h5py + numpy masked sum. With the GUI, the same
  in napari: ROI change to first image shown, and to exact image shown;
- in napari (unless ``--no-gui``): the longest pause of a 10 ms QTimer while
  the file opens, the workflow dock docks, the similarity and clustering
  jobs run and their layers are drawn, a diffraction viewer docks, and
  edited labels are saved from the File menu.

``--path FILE`` reuses a cube written by ``--keep`` (writing 2 GiB takes minutes).
``--responsiveness`` and ``--hover`` measure only those figures in napari;
``--sample-pauses`` adds, for each action, the GUI thread's calls sampled
during its longest pause.

Peak memory (resident set) is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def write_cube(path: Path, rows: int, cols: int, q: int = 128) -> None:
    import h5py

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:q, :q] - (q - 1) / 2
    base = (2000 * np.exp(-(xx**2 + yy**2) / 40.0)).astype(np.float32)
    with h5py.File(path, "w") as f:
        # contiguous, as py4DSTEM and most acquisition software write a cube
        ds = f.create_dataset("data", (rows, cols, q, q), np.uint16)
        for r in range(rows):
            ds[r] = rng.poisson(base + 5 * (r % 7), (cols, q, q)).astype(np.uint16)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def gui_hover(path: Path, spots) -> None:
    """Hover in napari: the diffraction viewer's handler, pattern read to layer updated.

    The canvas paint that follows is napari's and depends on the graphics
    driver; it is not included.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_stemcluster.widgets import DiffractionViewer

    viewer = napari.Viewer(show=True)
    (layer,) = viewer.open(str(path), plugin="napari-stemcluster")
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction viewer")
    QApplication.processEvents()
    times = {"random positions": [], "a sweep along a row": []}
    sweep = [(spots[0][0], c) for c in range(min(100, layer.data.shape[1]))]
    for name, positions in (("random positions", spots[:100]), ("a sweep along a row", sweep)):
        for index in positions:
            viewer.cursor.position = tuple(layer.data_to_world(index))
            t = time.perf_counter()
            dif.on_mouse_move()
            times[name].append(1000 * (time.perf_counter() - t))
            end = time.perf_counter() + 0.016  # a 60 Hz mouse; read-ahead runs meanwhile
            while time.perf_counter() < end:
                QApplication.processEvents()
    for name, ts in times.items():
        print(
            f"hover in napari ({name}): median {statistics.median(ts):.1f} ms, "
            f"90th percentile {np.percentile(ts, 90):.1f} ms (pattern read and shown)"
        )
    viewer.close()


class GapSampler:
    """Samples the GUI thread's stack every ``every`` s while the event loop is paused.

    A watchdog thread: once the last timer tick is older than ``after`` s, it
    records the main thread's stack until the next tick, so the longest pause
    of an action can be attributed to the calls that made it.
    """

    def __init__(self, ticks: list, after: float = 0.04, every: float = 0.01):
        import threading

        self.ticks, self.after, self.every = ticks, after, every
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self.main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            last = self.ticks[-1] if self.ticks else None
            now = time.perf_counter()
            if last is None or now - last < self.after:
                continue
            frame = sys._current_frames().get(self.main)
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
                frame = frame.f_back
            self.samples.append((now, tuple(reversed(stack))))

    def report(self, t0: float, t1: float, top: int = 70) -> None:
        """Prints the frames seen most often in the samples between t0 and t1."""
        inside = [s for t, s in self.samples if t0 <= t <= t1]
        if not inside:
            return
        counts: dict[str, int] = {}
        depth: dict[str, int] = {}
        for stack in inside:
            for d, f in enumerate(dict.fromkeys(stack)):
                counts[f] = counts.get(f, 0) + 1
                depth[f] = min(depth.get(f, d), d)
        print(f"  {len(inside)} samples in the longest pause; frames in >= 10 % (count, depth):")
        common = [f for f in counts if counts[f] >= max(2, len(inside) // 10)]
        for f in sorted(common, key=lambda f: (depth[f], -counts[f]))[:top]:
            print(f"    {counts[f]:4d} {depth[f]:3d} {f}")

    def stop(self) -> None:
        self._stop.set()


def gui_responsiveness(path: Path, sample: bool = False) -> None:
    """Longest pause of a 10 ms QTimer while opening, docking, drawing and saving in napari.

    Comparator: saving edited labels as the writer did before (cluster means
    recomputed from the file), timed in the same run. With ``sample``, the GUI
    thread's stack is sampled during pauses and the frames of each action's
    longest pause are printed.
    """
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_stemcluster._layers import layers_to_result
    from napari_stemcluster.widgets import DiffractionViewer, WorkflowDock
    from napari_stemcluster.widgets._background import BackgroundImage
    from napari_stemcluster.widgets._link import link_for
    from napari_stemcluster.widgets._warmup import start_warm_up

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    start_warm_up().wait(600)  # kernels compiled once per machine: not measured
    ticks: list[float] = []
    cpu: list[float] = []  # the process's CPU time at each tick
    gui: list[float] = []  # the GUI thread's own CPU time at each tick
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(
        lambda: (
            cpu.append(time.process_time()),
            gui.append(time.thread_time()),
            ticks.append(time.perf_counter()),
        )
    )
    timer.start()
    sampler = GapSampler(ticks) if sample else None

    def pump(seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.002)

    def wait(cond):
        while not cond():
            app.processEvents()
            time.sleep(0.002)

    def measure(name, action, until=lambda: True):
        pump(0.05)
        ticks.clear()
        cpu.clear()
        gui.clear()
        t0, c0, g0 = time.perf_counter(), time.process_time(), time.thread_time()
        out = action()
        wait(until)
        pump(0.5)
        times = [t0, *ticks, time.perf_counter()]
        n = len(ticks)
        cpus = [c0, *cpu[:n], time.process_time()]
        guis = [g0, *gui[:n], time.thread_time()]
        k = int(np.argmax(np.diff(times)))
        gap = (times[k + 1] - times[k]) * 1000
        # CPU time of the process (all its threads) in the longest pause, and
        # the most CPU time between two ticks: less dependent on other jobs
        # sharing the cores than the pause itself; the GUI thread's own CPU
        # time leaves out the workers' too (the least noisy of the figures)
        in_gap = (cpus[k + 1] - cpus[k]) * 1000
        most = float(np.diff(cpus).max()) * 1000
        gui_most = float(np.diff(guis).max()) * 1000
        print(
            f"event loop, longest pause: {name}: {gap:.0f} ms (CPU in it {in_gap:.0f} ms; "
            f"most CPU between two ticks {most:.0f} ms; the GUI thread's most CPU between "
            f"two ticks {gui_most:.0f} ms; load average {os.getloadavg()[0]:.1f})"
        )
        if sampler is not None:
            sampler.report(times[k], times[k + 1])
            g = int(np.argmax(np.diff(guis)))
            if g != k:  # the GUI thread's longest stretch of work is another pause
                print(
                    f"  the GUI thread's most CPU between two ticks, in a pause of "
                    f"{(times[g + 1] - times[g]) * 1000:.0f} ms:"
                )
                sampler.report(times[g], times[g + 1])
        return out

    viewer.window._qt_window.resize(1600, 1000)
    pump(0.5)
    (layer,) = measure("open the file", lambda: viewer.open(str(path), plugin="napari-stemcluster"))
    if isinstance(layer.data, BackgroundImage):
        # until the GUI thread has shown it (its progress and ready signals
        # handled), not only until the worker has it: the queued progress
        # updates otherwise fall into the next action (the GiB workflow test
        # waits only until the worker has it)
        def shown():
            return layer.data.ready(0) and id(layer) in layer.data._contrast_done

        measure("virtual image computed", lambda: None, shown)
    docks = []

    def dock_workflow():
        docks.append(WorkflowDock(viewer))
        viewer.window.add_dock_widget(docks[0], name="STEM cluster")

    def dock_complete():  # the canvas and the tabs are made in later event-loop turns
        dif = docks[0]._diffraction
        return dif is not None and dif.built and len(docks[0].stages) == len(docks[0]._specs)

    measure("dock the workflow (canvas and tabs made)", dock_workflow, dock_complete)
    dock = docks[0]
    sim = dock.stage("2. Similarity")
    sim._inner.value, sim._outer.value = 0.0, 40.0
    measure("similarity job", sim.run, lambda: not sim.runner.running)
    clu = dock.stage("3. Clustering")
    clu._mode.value, clu._linkage.value = "manual", "pair"
    clu._threshold.value = 0.9
    measure("clustering job, new layers drawn", clu.run, lambda: not clu.runner.running)
    labels = clu.labels_layer
    wait(lambda: not link_for(labels).runner.running)
    clu._threshold.value = 0.88
    measure("clustering again, drawn into its layers", clu.run, lambda: not clu.runner.running)
    wait(lambda: not link_for(labels).runner.running)
    difs = []

    def dock_viewer():
        difs.append(DiffractionViewer(viewer))
        viewer.window.add_dock_widget(difs[0], name="Diffraction")

    measure("dock a diffraction viewer (canvas made)", dock_viewer, lambda: difs[0].built)
    labels.data[10:30, 10:30] = 1  # a hand edit
    labels.events.paint(value=[])
    pump(0.5)
    viewer.layers.selection.active = labels
    out = path.with_name(path.stem + "_results.h5")
    try:
        measure(
            "save edited labels (File > Save Selected Layers)",
            lambda: viewer.layers.save(str(out), selected=True, plugin="napari-stemcluster"),
        )
        t = time.perf_counter()
        layers_to_result(labels.data, labels.metadata)
        print(
            f"  comparator: cluster means recomputed from the file (the previous writer): "
            f"{1000 * (time.perf_counter() - t):.0f} ms"
        )
    finally:
        out.unlink(missing_ok=True)
    timer.stop()
    if sampler is not None:
        sampler.stop()
    viewer.close()


def previous_paint(cube, labels) -> float:
    """The same brush strokes as the previous implementation handled them (median ms)."""
    from napari_stemcluster.core.averages import cluster_sums, cluster_table
    from napari_stemcluster.core.editing import changed_positions

    before = labels.copy()
    sums, _counts = cluster_sums(cube, before, int(before.max()))
    times = []
    for k in range(5):
        after = before.copy()
        r0 = 20 + 40 * k
        after[r0 : r0 + 20, 32:47] = 1
        t = time.perf_counter()
        pos, old, new = changed_positions(before, after)
        out = np.empty((len(pos), *cube.shape[2:]), cube.dtype)
        for row in np.unique(pos[:, 0]):  # one read per scan row
            idx = np.flatnonzero(pos[:, 0] == row)
            c = pos[idx, 1]
            out[idx] = np.asarray(cube[int(row), c.min() : c.max() + 1])[c - c.min()]
        np.isfinite(out.reshape(len(out), -1).sum(axis=1)).all()
        for sign, labs in ((-1.0, old), (1.0, new)):
            for lab in np.unique(labs[labs > 0]):
                members = labs == lab
                sums[lab - 1] += sign * out[members].sum(axis=0, dtype=np.float64)
        cluster_table(after)
        times.append(1000 * (time.perf_counter() - t))
        before = after
    return statistics.median(times)


ROIS = [  # detectors as dragged: off-centre, fractional radii
    {"shape": "annulus", "center": (63.7, 64.2), "inner": 16.3, "outer": 60.2},
    {"shape": "circle", "center": (62.9, 63.6), "radius": 9.4},
    {"shape": "annulus", "center": (64.4, 63.1), "inner": 5.6, "outer": 21.7},
    {"shape": "rectangle", "start": (40.2, 70.5), "stop": (90.6, 101.3)},
]


def virtual_figures(ds, path: Path) -> None:
    """Background pass, preview from the binned copy, its error, and the exact image."""
    import h5py

    from napari_stemcluster._layers import dataset_to_layers
    from napari_stemcluster.core._validate import block_rows
    from napari_stemcluster.core.virtual import (
        BinnedCube,
        binned_layout,
        coarse_first_rows,
        detector_mask,
        roi_mask,
        virtual_detector,
    )
    from napari_stemcluster.widgets._background import READ_BYTES
    from napari_stemcluster.widgets._virtual import coarse_stride, strided_reads_fast

    rows, cols = ds.scan_shape
    det = ds.detector_shape
    adf = detector_mask(det, "adf")
    src = ds.source
    # the pass at open: before, the dask image napari computed; now direct reads + binning
    (lazy, _kw, _k) = dataset_to_layers(ds)[0]
    t = time.perf_counter()
    for r0 in range(0, rows, lazy.chunks[0][0]):
        np.asarray(lazy[r0 : r0 + lazy.chunks[0][0]].compute())
    dask_pass = time.perf_counter() - t
    factor, step = binned_layout((rows, cols), det)
    binned = BinnedCube((rows, cols), det, factor, step)
    t = time.perf_counter()
    n = block_rows((rows, cols, *det), np.dtype(src.dtype).itemsize, READ_BYTES)
    for r0 in range(0, rows, n):
        binned.add_rows(r0, np.asarray(src[r0 : r0 + n]), adf)
    direct_pass = time.perf_counter() - t
    print(
        f"open (background pass): virtual ADF + binned copy ({factor}x{factor} bins, "
        f"{binned.nbytes / 2**20:.0f} MiB) {direct_pass:.2f} s; comparator: the dask ADF "
        f"alone {dask_pass:.2f} s ({dask_pass / direct_pass:.2f}x)"
    )
    previews, errors = [], []
    for roi in ROIS:
        mask = roi_mask(det, roi)
        center = roi.get("center")
        binned.images(mask, center)
        previews.append(median_ms(lambda m=mask, c=center: binned.images(m, c), 5))
        got = binned.images(mask, center)
        exact = virtual_detector(src, mask, center=center)
        rel = np.abs(got.intensity - exact.intensity) / exact.intensity.mean()
        com = max(np.abs(got.com_x - exact.com_x).max(), np.abs(got.com_y - exact.com_y).max())
        spread = max(np.ptp(exact.com_x), np.ptp(exact.com_y))
        errors.append((roi["shape"], np.median(rel), rel.max(), com, spread))
    print(
        f"virtual detector, image from the binned copy after an ROI change: median over "
        f"{len(ROIS)} detectors {statistics.median(previews):.0f} ms (max {max(previews):.0f} ms)"
    )
    for shape, med, mx, com, spread in errors:
        print(
            f"  preview error ({shape}): intensity median {100 * med:.2f} %, max "
            f"{100 * mx:.2f} % of the mean; centre of mass max {com:.2f} px "
            f"(exact image spans {spread:.2f} px)"
        )
    mask = roi_mask(det, ROIS[0])

    def exact_coarse_first():
        out = np.empty((rows, cols))
        for r in coarse_first_rows(rows):
            block = np.asarray(src[r : r + 1])
            out[r] = virtual_detector(block, mask, threads=False).intensity[0]
        return out

    exact = median_ms(exact_coarse_first, 3)
    stride = coarse_stride((rows, cols))
    fast = strided_reads_fast(src)
    coarse = median_ms(lambda: virtual_detector(src, mask, stride=stride, strided_reads=fast), 3)

    def numpy_image():  # h5py blocks of 16 rows, masked sum in numpy
        with h5py.File(path, "r") as f:
            d = f["data"]
            for r in range(0, rows, 16):
                np.sum(d[r : r + 16], axis=(-2, -1), where=mask, dtype=np.int64)

    plain = median_ms(numpy_image, 1)
    print(
        f"virtual detector (annulus, {int(mask.sum())} pixels), exact image read coarse rows "
        f"first: {exact:.0f} ms; comparators: strided coarse image (stride {stride}) "
        f"{coarse:.0f} ms, h5py + numpy masked sum {plain:.0f} ms ({plain / exact:.2f}x)"
    )


def gui_virtual(path: Path) -> None:
    """In napari: ROI change -> first image shown, and -> exact image shown."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_stemcluster.widgets import DiffractionViewer

    viewer = napari.Viewer(show=True)
    (layer,) = viewer.open(str(path), plugin="napari-stemcluster")
    t = time.perf_counter()
    assert layer.data.wait(0, timeout=300)
    dt = time.perf_counter() - t
    print(f"napari: file opened, background virtual image + binned copy {dt:.1f} s")
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction viewer")
    vd = dif.virtual
    vd.controls.kind.value = "annulus"
    vd.controls.enabled_box.value = True

    def wait(cond, timeout=120.0):
        end = time.perf_counter() + timeout
        while not cond() and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.002)

    wait(lambda: vd.stride_done == 1 and vd._job is None)
    first, exact, drag = [], [], []
    for roi in ROIS * 2:
        # dragging: preview only
        vd.set_roi(roi, draw=False, compute=False)
        vd.compute(coarse_only=True)
        wait(lambda: "first" in vd.timing)
        drag.append(1000 * (vd.timing["first"] - vd.timing["requested"]))
        wait(lambda: vd._job is None)
        # the drag stops: preview then exact
        vd.compute()
        wait(lambda: "exact" in vd.timing and vd._job is None)
        first.append(1000 * (vd.timing["first"] - vd.timing["requested"]))
        exact.append(vd.timing["exact"] - vd.timing["requested"])
    print(
        f"napari virtual detector (file-backed): ROI change -> image shown, median "
        f"{statistics.median(drag):.0f} ms while dragging (max {max(drag):.0f} ms), "
        f"{statistics.median(first):.0f} ms after the drag stops; exact image shown "
        f"{statistics.median(exact):.1f} s"
    )
    viewer.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=256)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--path", type=Path, help="an existing cube (from --keep) instead of a new one")
    ap.add_argument(
        "--no-gui", action="store_true", help="skip the napari hover figure (needs a display)"
    )
    ap.add_argument(
        "--responsiveness",
        action="store_true",
        help="only the longest event-loop pauses in napari (with --path: minutes, not tens)",
    )
    ap.add_argument(
        "--hover",
        action="store_true",
        help="only the hover figure in napari (with --path: a minute)",
    )
    ap.add_argument(
        "--sample-pauses",
        action="store_true",
        help="with --responsiveness: print the GUI thread's calls during each longest pause",
    )
    args = ap.parse_args(argv)

    from napari_stemcluster.io import open_dataset
    from napari_stemcluster.widgets._link import seed_points
    from napari_stemcluster.widgets._state import ClusterState

    if args.path is not None:
        path = args.path
        args.keep = True
    else:
        path = Path(tempfile.gettempdir()) / f"stemcluster_interactive_{os.getpid()}.h5"
        t0 = time.perf_counter()
        write_cube(path, args.rows, args.cols)
        print(f"wrote {path.name} in {time.perf_counter() - t0:.1f} s")
    size = path.stat().st_size
    print(f"cube: {path.name}, {size / 2**30:.2f} GiB, file-backed (HDF5, contiguous)")
    if args.hover:
        try:
            rows, cols = open_dataset(path).scan_shape
            rng = np.random.default_rng(1)
            spots = [tuple(int(v) for v in rng.integers(0, (rows, cols))) for _ in range(100)]
            gui_hover(path, spots)
        finally:
            if not args.keep:
                path.unlink(missing_ok=True)
        return 0
    if args.responsiveness:
        try:
            gui_responsiveness(path, sample=args.sample_pauses)
        finally:
            if not args.keep:
                path.unlink(missing_ok=True)
        return 0
    try:
        ds = open_dataset(path)
        rows, cols = ds.scan_shape
        rng = np.random.default_rng(1)
        spots = [tuple(int(v) for v in rng.integers(0, (rows, cols))) for _ in range(200)]
        it = iter(spots * 10)
        direct = median_ms(lambda: ds.read_pattern(next(it)), 200)
        via_dask = median_ms(lambda: np.asarray(ds.cube[next(it)].compute()), 200)
        print(
            f"hover (one pattern): read_pattern {direct:.2f} ms, through dask "
            f"{via_dask:.2f} ms ({via_dask / direct:.1f}x)"
        )

        # clusters: vertical stripes of 16 columns
        labels = (np.arange(cols)[None, :] // 16 + 1).repeat(rows, 0).astype(np.int32)
        results = {}
        for name, cube in (("file", ds.source), ("dask", ds.cube)):
            state = ClusterState(labels.copy(), cube)
            state.ensure_sums(0)
            paint, merge = [], []
            for k in range(5):
                r0 = 20 + 40 * k
                # a brush stroke: 300 positions of label 1 in the stripe of label 3
                state.labels[r0 : r0 + 20, 32:47] = 1
                t = time.perf_counter()
                state.sync()
                seed_points(state)
                paint.append(1000 * (time.perf_counter() - t))
                t = time.perf_counter()
                pair = [(2, 3), (4, 5), (6, 7), (8, 2), (4, 6)][k]
                idx, values, _ = state.merge(0, list(pair))
                state.labels[idx] = values
                state.sync()
                merge.append(1000 * (time.perf_counter() - t))
            results[name] = (statistics.median(paint), statistics.median(merge))
        (pf, mf), (pd, md) = results["file"], results["dask"]
        prev = previous_paint(ds.source, labels)
        print(
            f"paint 300 positions -> sums, table, seeds: {pf:.1f} ms (patterns from the file); "
            f"comparators: through dask {pd:.1f} ms ({pd / pf:.1f}x), the previous "
            f"implementation (one read per scan row, numpy sums, whole table) {prev:.1f} ms "
            f"({prev / pf:.1f}x)"
        )
        print(f"merge two clusters: {mf:.2f} ms (file), {md:.2f} ms (dask)")

        if not args.no_gui:
            gui_hover(path, spots)
            gui_responsiveness(path)

        virtual_figures(ds, path)
        if not args.no_gui:
            gui_virtual(path)
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory: {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
