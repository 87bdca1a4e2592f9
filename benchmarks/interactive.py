"""Interactive figures of the napari workflow on a file-backed cube.

    python benchmarks/interactive.py [--rows 256] [--cols 256] [--keep] [--no-gui]

Writes a ``rows x cols`` scan of 128x128 uint16 patterns (256 x 256: 2 GiB)
to an HDF5 file in the temporary directory (deleted afterwards unless
``--keep``), opens it as napari does, and measures, as medians of repeats:

- hover: one pattern read straight from the file (``read_pattern``, what the
  diffraction viewer does) against the same pattern through the dask cube;
- paint: 300 positions repainted, then the cluster sums, table and seeds
  brought up to date (``ClusterState.sync`` + ``seed_points``), with the
  patterns read from the file's array-like and, as comparator, through dask;
- merge: two clusters merged (sums updated without reading);
- virtual detector: the coarse first image and the full image of an annulus;
- in napari (unless ``--no-gui``): the longest pause of a 10 ms QTimer while
  the file opens, the workflow dock docks, the similarity and clustering
  jobs run and their layers are drawn, a diffraction viewer docks, and
  edited labels are saved from the File menu.

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


def gui_responsiveness(path: Path) -> None:
    """Longest pause of a 10 ms QTimer while opening, docking, drawing and saving in napari.

    Comparator: saving edited labels as the writer did before (cluster means
    recomputed from the file), timed in the same run.
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
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()

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
        t0 = time.perf_counter()
        out = action()
        wait(until)
        pump(0.5)
        gap = np.diff([t0, *ticks, time.perf_counter()]).max() * 1000
        print(f"event loop, longest pause: {name}: {gap:.0f} ms")
        return out

    viewer.window._qt_window.resize(1600, 1000)
    pump(0.5)
    (layer,) = measure("open the file", lambda: viewer.open(str(path), plugin="napari-stemcluster"))
    if isinstance(layer.data, BackgroundImage):
        measure("virtual image computed", lambda: None, lambda: layer.data.ready(0))
    dock = measure(
        "dock the workflow",
        lambda: viewer.window.add_dock_widget(WorkflowDock(viewer), name="STEM cluster"),
    ).widget()
    wait(lambda: len(dock.stages) == len(dock._specs))
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
    measure(
        "dock a diffraction viewer",
        lambda: viewer.window.add_dock_widget(DiffractionViewer(viewer), name="Diffraction"),
    )
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
    viewer.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=256)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--no-gui", action="store_true", help="skip the napari hover figure (needs a display)"
    )
    args = ap.parse_args(argv)

    from napari_stemcluster.core.virtual import roi_mask, virtual_detector
    from napari_stemcluster.io import open_dataset
    from napari_stemcluster.widgets._link import seed_points
    from napari_stemcluster.widgets._state import ClusterState
    from napari_stemcluster.widgets._virtual import coarse_stride, strided_reads_fast

    path = Path(tempfile.gettempdir()) / f"stemcluster_interactive_{os.getpid()}.h5"
    t0 = time.perf_counter()
    write_cube(path, args.rows, args.cols)
    size = path.stat().st_size
    print(f"wrote {path.name}: {size / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s")
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
        print(
            f"paint 300 positions -> sums, table, seeds: {pf:.1f} ms (patterns from the file), "
            f"{pd:.1f} ms through dask ({pd / pf:.1f}x)"
        )
        print(f"merge two clusters: {mf:.2f} ms (file), {md:.2f} ms (dask)")

        if not args.no_gui:
            gui_hover(path, spots)
            gui_responsiveness(path)

        mask = roi_mask(ds.detector_shape, {"shape": "annulus", "inner": 16, "outer": 60})
        stride = coarse_stride((rows, cols))
        fast = strided_reads_fast(ds.source)
        coarse = median_ms(
            lambda: virtual_detector(ds.source, mask, stride=stride, strided_reads=fast), 3
        )
        full = median_ms(lambda: virtual_detector(ds.source, mask), 3)

        def numpy_image():  # h5py blocks of 16 rows, masked sum in numpy
            import h5py

            with h5py.File(path, "r") as f:
                d = f["data"]
                for r in range(0, rows, 16):
                    np.sum(d[r : r + 16], axis=(-2, -1), where=mask, dtype=np.int64)

        plain = median_ms(numpy_image, 1)
        print(
            f"virtual detector (annulus, {int(mask.sum())} pixels): first coarse image "
            f"(stride {stride}) {coarse:.0f} ms, full image {full:.0f} ms; comparator: "
            f"h5py + numpy masked sum {plain:.0f} ms ({plain / full:.1f}x)"
        )
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory: {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
