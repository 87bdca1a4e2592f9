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
    settle()
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


def grain_label(labels, grains):
    inside = labels[(grains > 0) & (labels > 0)]
    return int(np.bincount(inside).argmax())


def workflow_4d(out: Path) -> None:
    from napari_stemcluster.widgets import (
        ClusteringWidget,
        CorrectionWidget,
        DiffractionViewer,
        PrefilterWidget,
        SimilarityWidget,
    )

    viewer = new_viewer("napari-stemcluster: 4D-STEM workflow")
    viewer.open_sample("napari-stemcluster", "polycrystal")
    data = viewer.layers["polycrystal ADF"]

    pre = PrefilterWidget(viewer)
    sim = SimilarityWidget(viewer)
    clu = ClusteringWidget(viewer)
    cor = CorrectionWidget(viewer)
    dif = DiffractionViewer(viewer)
    docks = {
        "prefilter": dock(viewer, pre, "1. Prefilter"),
        "similarity": dock(viewer, sim, "2. Similarity & mask", tabify=True),
        "clustering": dock(viewer, clu, "3. Clustering", tabify=True),
        "correction": dock(viewer, cor, "Label correction", tabify=True),
    }
    # below the tabbed stage widgets, not a tab among them
    dif_dock = dock(viewer, dif, "Diffraction viewer")
    layout_docks(viewer, dif_dock, docks["prefilter"])

    # 1. prefilter
    pre._radius.value = 2
    pre._corr_range.value = (0.8, 0.95)
    pre.run()
    pre.runner.wait(120)
    docks["prefilter"].raise_()
    save(docks["prefilter"], out / "prefilter.png")

    # 2. similarity and mask, on the raw data (the prefiltered layer is also offered)
    sim._layer_combo.value = data
    sim._inner.value, sim._outer.value, sim._sigma.value = 4.0, 30.0, 0.0
    sim.run()
    sim.runner.wait(120)
    viewer.layers[f"{data.name} prefiltered"].visible = False
    grains = viewer.layers["true grains"].data
    inside = np.argwhere(grains > 0)
    hover(viewer, data, tuple(inside[len(inside) // 3]))
    docks["similarity"].raise_()
    save(docks["similarity"], out / "similarity.png")
    save(viewer.window._qt_window, out / "similarity_window.png")

    # 3. clustering
    sim.similarity_layer.visible = False
    clu._threshold.value, clu._min_size.value = 0.85, 5
    clu.update_preview()
    clu.run()
    clu.runner.wait(120)
    labels = clu.labels_layer
    labels.opacity = 0.55
    sim.mask_layer.visible = False
    docks["clustering"].raise_()
    save(docks["clustering"], out / "clustering.png")

    # 4. the diffraction viewer following the mouse over a grain
    label = grain_label(labels.data, grains)
    members = np.argwhere(labels.data == label)
    rx, ry = members[len(members) // 2]
    hover(viewer, data, (rx, ry))
    viewer.layers.selection.active = labels
    save(dif_dock, out / "diffraction.png")
    save(viewer.window._qt_window, out / "workflow.png")

    # 5. label correction
    docks["correction"].raise_()
    sizes = np.bincount(labels.data.ravel())[1:]
    a, b = (int(i) + 1 for i in np.argsort(sizes)[::-1][:2])
    cor._merge_list.value = f"{a}, {b}"
    save(docks["correction"], out / "correction.png")
    viewer.close()


def workflow_5d(out: Path) -> None:
    from napari_stemcluster.widgets import ClusteringWidget, DiffractionViewer, SimilarityWidget

    viewer = new_viewer("napari-stemcluster: 5D-STEM time series")
    viewer.open_sample("napari-stemcluster", "growth_series")
    data = viewer.layers["growth series ADF"]
    sim = SimilarityWidget(viewer)
    clu = ClusteringWidget(viewer)
    dif = DiffractionViewer(viewer)
    sim_dock = dock(viewer, sim, "2. Similarity & mask")
    clu_dock = dock(viewer, clu, "3. Clustering", tabify=True)
    dif_dock = dock(viewer, dif, "Diffraction viewer")
    layout_docks(viewer, dif_dock, sim_dock)
    sim._inner.value, sim._outer.value, sim._sigma.value = 3.0, 22.0, 0.0
    sim.run()
    sim.runner.wait(120)
    sim.similarity_layer.visible = False
    sim.mask_layer.visible = False
    clu._threshold.value = 0.85
    clu.run()
    clu.runner.wait(120)
    clu_dock.raise_()
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
    save(viewer.window._qt_window, out / "time_series.png")
    viewer.close()


def layout_docks(viewer, diffraction_dock, stage_dock) -> None:
    """Right column 560 px wide; the diffraction viewer gets most of its height."""
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    settle(0.2)
    window.resizeDocks([diffraction_dock], [560], Qt.Orientation.Horizontal)
    window.resizeDocks([stage_dock, diffraction_dock], [380, 600], Qt.Orientation.Vertical)
    settle(0.2)
    viewer.reset_view()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "images"
    out.mkdir(parents=True, exist_ok=True)
    # Start from default widget parameters, not the ones saved on this machine.
    os.environ["NAPARI_STEMCLUSTER_SETTINGS"] = str(
        Path(tempfile.mkdtemp(prefix="stemcluster-shots-")) / "settings.json"
    )
    workflow_4d(out)
    workflow_5d(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
