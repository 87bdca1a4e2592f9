"""Generate the README screenshots of the docked napari workflow.

Run headless with::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

The PNGs are written to ``docs/images/`` (or the directory given as the
first argument). The data are the bundled synthetic samples, so the pictures
are reproducible.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WINDOW = (1600, 1000)


def settle(seconds: float = 0.4) -> None:
    """Let Qt lay out and paint (and queued events run) for a moment."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def save(widget, path: Path) -> None:
    settle(1.0)  # layouts and plots settle (slowly on a busy machine)
    widget.grab().save(str(path))
    print(f"wrote {path}")


def hover(viewer, layer, index) -> None:
    """Put the main viewer's cursor over a scan position, as the mouse would."""
    viewer.cursor.position = tuple(layer.data_to_world(index))
    settle(0.2)


def new_viewer(title):
    import napari

    viewer = napari.Viewer(title=title, show=True)
    viewer.window._qt_window.resize(*WINDOW)
    return viewer


def dock(viewer, widget, name, area="right", tabify=False):
    return viewer.window.add_dock_widget(widget, name=name, area=area, tabify=tabify)


def until(condition, timeout: float = 60.0) -> None:
    """Let events run until ``condition()`` holds (or ``timeout`` seconds)."""
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        settle(0.05)


def grain_label(labels, grains):
    inside = labels[(grains > 0) & (labels > 0)]
    return int(np.bincount(inside).argmax())


def workflow_4d(out: Path) -> None:
    from napari_stemcluster.widgets import WorkflowDock

    viewer = new_viewer("napari-stemcluster: 4D-STEM workflow")
    viewer.open_sample("napari-stemcluster", "polycrystal")
    data = viewer.layers["polycrystal ADF"]
    wf = WorkflowDock(viewer)
    wf_dock = dock(viewer, wf, "STEM cluster")
    widen(viewer, wf_dock)
    until(lambda: wf._diffraction is not None and wf._diffraction.built)  # made in steps
    pre, sim = wf.stage("1. Prefilter"), wf.stage("2. Similarity")
    clu, cor = wf.stage("3. Clustering"), wf.stage("Correct")

    # 1. prefilter
    wf.show_stage("1. Prefilter")
    pre._radius.value = 2
    pre._corr_range.value = (0.8, 0.95)
    pre.run()
    pre.runner.wait(120)
    save(pre.native, out / "prefilter.png")

    # 2. similarity and mask, on the raw data (the prefiltered layer is also offered)
    wf.show_stage("2. Similarity")
    sim._layer_combo.value = data
    sim._inner.value, sim._outer.value, sim._sigma.value = 4.0, 30.0, 0.0
    sim.run()
    sim.runner.wait(120)
    viewer.layers[f"{data.name} prefiltered"].visible = False
    grains = viewer.layers["true grains"].data
    inside = np.argwhere(grains > 0)
    hover(viewer, data, tuple(inside[len(inside) // 3]))
    save(sim.native, out / "similarity.png")
    save(viewer.window._qt_window, out / "similarity_window.png")

    # 3. clustering, with the threshold guidance
    wf.show_stage("3. Clustering")
    sim.similarity_layer.visible = False
    clu._min_size.value = 5  # the threshold: automatic (the default)
    clu.run()
    clu.runner.wait(120)
    labels = clu.labels_layer
    labels.opacity = 0.55
    sim.mask_layer.visible = False
    label = grain_label(labels.data, grains)
    members = np.argwhere(labels.data == label)
    rx, ry = members[len(members) // 2]
    hover(viewer, data, (rx, ry))
    save(clu.native, out / "clustering.png")

    # 4. the diffraction viewer following the mouse over a grain
    viewer.layers.selection.active = labels
    until(lambda: not wf.diffraction.peaks_pending)  # Bragg disks found in a worker
    save(wf.diffraction, out / "diffraction.png")
    save(viewer.window._qt_window, out / "workflow.png")

    # 5. label correction
    wf.show_stage("Correct")
    sizes = np.bincount(labels.data.ravel())[1:]
    a, b = (int(i) + 1 for i in np.argsort(sizes)[::-1][:2])
    cor._merge_list.value = f"{a}, {b}"
    save(cor.native, out / "correction.png")

    # 6. results: save, figures, moved data file
    wf.show_stage("Results")
    res = wf.stage("Results")
    res._clusters.value = labels
    res._map.value = sim.similarity_layer
    save(res.native, out / "results.png")
    export = Path(tempfile.mkdtemp(prefix="stemcluster-shots-"))
    res.export_averages_to(out / "cluster_averages.png")
    res.runner.wait(120)
    res.export_map_to(export / "map.png")
    res.runner.wait(120)

    # 7. a virtual annular detector dragged on the pattern
    labels.visible = False
    vd = wf.diffraction.virtual
    vd.controls.kind.value = "annulus"
    vd.controls.enabled_box.value = True
    vd.set_roi({"shape": "annulus", "center": (31.5, 31.5), "inner": 9.0, "outer": 14.0})
    end = time.monotonic() + 60
    while not (vd.stride_done == 1 and vd._job is None) and time.monotonic() < end:
        settle(0.1)
    settle(0.5)
    save(viewer.window._qt_window, out / "virtual_detector.png")
    viewer.close()


def open_widget(out: Path) -> None:
    """The Open tab with a flat frame stack that needs a scan shape."""
    import h5py

    from napari_stemcluster._reader import OpenStemWidget

    path = Path(tempfile.mkdtemp(prefix="stemcluster-shots-")) / "frames.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = np.ones((24 * 32, 64, 64), np.uint16)
    viewer = new_viewer("napari-stemcluster: open")
    widget = OpenStemWidget(viewer)
    dock(viewer, widget, "Open 4D-STEM file")
    widget._path.value = path
    settle(0.3)
    widget._scan.value = "24, 32"
    save(widget.native, out / "open_widget.png")
    viewer.close()
    path.unlink()


def widen(viewer, dock_widget, width: int = 780) -> None:
    from qtpy.QtCore import Qt

    settle(0.2)
    viewer.window._qt_window.resizeDocks([dock_widget], [width], Qt.Orientation.Horizontal)
    settle(0.2)
    viewer.reset_view()


def workflow_5d(out: Path) -> None:
    from napari_stemcluster.widgets import WorkflowDock

    viewer = new_viewer("napari-stemcluster: 5D-STEM time series")
    viewer.open_sample("napari-stemcluster", "growth_series")
    data = viewer.layers["growth series ADF"]
    wf = WorkflowDock(viewer)
    widen(viewer, dock(viewer, wf, "STEM cluster"))
    sim, clu = wf.stage("2. Similarity"), wf.stage("3. Clustering")
    sim._inner.value, sim._outer.value, sim._sigma.value = 3.0, 22.0, 0.0
    sim.run()
    sim.runner.wait(120)
    sim.similarity_layer.visible = False
    sim.mask_layer.visible = False
    wf.show_stage("3. Clustering")
    clu.run()  # the automatic threshold of every time step
    clu.runner.wait(120)
    labels = clu.labels_layer
    labels.opacity = 0.55
    t = 6
    viewer.dims.set_current_step(0, t)
    settle(0.5)
    grains = viewer.layers["true grains"].data[t]
    label = grain_label(labels.data[t], grains)
    members = np.argwhere(labels.data[t] == label)
    rx, ry = members[len(members) // 2]
    hover(viewer, data, (t, rx, ry))
    viewer.layers.selection.active = labels
    until(lambda: wf._diffraction is not None and wf._diffraction.built)
    until(lambda: not wf.diffraction.peaks_pending)
    save(viewer.window._qt_window, out / "time_series.png")
    viewer.close()


def output_dir(argv=None) -> Path:
    """The folder the pictures go to (first argument, else docs/images), made ready.

    Widgets start from their default parameters, not the ones saved on this machine.
    """
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "images"
    out.mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_STEMCLUSTER_SETTINGS"] = str(
        Path(tempfile.mkdtemp(prefix="stemcluster-shots-")) / "settings.json"
    )
    return out


def main(argv=None) -> int:
    out = output_dir(argv)
    workflow_4d(out)
    workflow_5d(out)
    open_widget(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
