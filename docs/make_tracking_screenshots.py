"""Generate the README pictures of grains followed through time.

Run headless with::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_tracking_screenshots.py

Writes ``docs/images/kinetics_widget.png`` (the viewer with the tracked
grains and the docked *Grain kinetics* widget) and
``docs/images/tracking_overview.png`` (the demo's overview of a tracked
series), or into the directory given as the first argument. The data are the
synthetic growth series of :mod:`napari_stemcluster.synthetic_series`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

WINDOW = (1600, 1000)


def settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def main(out: Path) -> None:
    import napari

    from napari_stemcluster import segment
    from napari_stemcluster._layers import result_to_layers
    from napari_stemcluster.core.tracking import track_series
    from napari_stemcluster.core.virtual import virtual_adf
    from napari_stemcluster.engine.overview import render_overview
    from napari_stemcluster.io import Calibration
    from napari_stemcluster.synthetic_series import make_growth_events
    from napari_stemcluster.widgets import KineticsWidget

    out.mkdir(parents=True, exist_ok=True)
    series = make_growth_events()
    result = segment(series.cube, threshold=0.9, min_cluster_size=5, real_mask=0.5)
    tracking, kinetics = track_series(result, series.calibration)
    path = render_overview(series.cube, result, out / "tracking_overview.png", tracking, kinetics)
    print(f"wrote {path}")

    viewer = napari.Viewer(title="napari-stemcluster: grain kinetics", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    scale, units = Calibration.from_dict(series.calibration).real_space_scale(3)
    viewer.add_image(
        np.asarray(virtual_adf(series.cube), np.float32),
        name="growth ADF",
        scale=scale,
        units=units,
        colormap="gray",
    )
    for data, kwargs, kind in result_to_layers(result, series.calibration, "growth clusters"):
        viewer._add_layer_from_data(data, kwargs, kind)
    viewer.layers["growth clusters"].visible = False
    widget = KineticsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Grain kinetics", area="right")
    widget._layer_combo.value = viewer.layers["growth clusters"]
    widget.link()
    widget.runner.wait(60)
    layer = widget.tracks_layer
    layer.opacity = 0.6
    merged = series.roles["merge_target"]  # the grain two particles merge into
    track = int(np.bincount(layer.data[6][series.grains[6] == merged]).argmax())
    widget.select(track, step=6)
    settle(1.0)
    shot = out / "kinetics_widget.png"
    viewer.window._qt_window.grab().save(str(shot))
    print(f"wrote {shot}")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "images")
