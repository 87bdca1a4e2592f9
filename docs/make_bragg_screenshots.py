"""Generate the README screenshots of the Bragg disks & strain widget.

Run headless with::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_bragg_screenshots.py

Writes ``bragg.png`` (orientation map, colour-wheel legend, diffraction
viewer with the live preview's indexed disks on the pattern under the mouse
and on its cluster average, the widget) and
``bragg_strain.png`` (the εxx map with its colour bar) to ``docs/images/``
(or the directory given as the first argument), from the bundled synthetic
sample.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_screenshots import (
    dock,
    grain_label,
    hover,
    new_viewer,
    output_dir,
    save,
    settle,
    until,
    widen,
)


def bragg(out: Path) -> None:
    from napari_stemcluster.widgets import WorkflowDock
    from napari_stemcluster.widgets._bragg import STRAIN_NAMES

    viewer = new_viewer("napari-stemcluster: Bragg disks & strain")
    viewer.open_sample("napari-stemcluster", "polycrystal")
    data = viewer.layers["polycrystal ADF"]
    wf = WorkflowDock(viewer)
    widen(viewer, dock(viewer, wf, "STEM cluster"))
    sim, clu = wf.stage("2. Similarity"), wf.stage("3. Clustering")
    wf.show_stage("2. Similarity")
    sim._layer_combo.value = data
    sim.run()
    sim.runner.wait(180)
    wf.show_stage("3. Clustering")
    clu._min_size.value = 5
    clu.run()
    clu.runner.wait(180)
    labels = clu.labels_layer
    for layer in viewer.layers:
        if layer is not labels and layer is not data:
            layer.visible = False
    wf.show_stage("Bragg disks")
    w = wf.stage("Bragg disks")
    w.run_lattices()
    w.runner.wait(180)
    w.run_strain()
    w.runner.wait(600)
    settle(1.0)
    grains = viewer.layers["true grains"].data
    label = grain_label(labels.data, grains)
    members = np.argwhere(labels.data == label)
    labels.selected_label = label
    wf.diffraction.controls.source.value = "selected label"
    hover(viewer, data, tuple(members[len(members) // 2]))
    dif = wf.diffraction
    assert dif.bragg_params is not None  # the live preview is on
    until(lambda: not dif.peaks_pending and not dif.pattern_peaks_pending)
    labels.visible = False
    for layer in w.strain_layers.values():
        layer.visible = False
    viewer.layers.selection.active = labels
    viewer.reset_view()
    settle(1.0)
    save(viewer.window._qt_window, out / "bragg.png")
    w.orientation_layer.visible = False
    exx = w.strain_layers["exx"]
    exx.visible = True
    viewer.layers.selection.active = exx
    assert STRAIN_NAMES["exx"] == exx.name
    settle(1.0)
    save(viewer.window._qt_window, out / "bragg_strain.png")
    viewer.close()


def main(argv=None) -> int:
    out = output_dir(argv)
    bragg(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
