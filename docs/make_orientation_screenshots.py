"""Generate the README screenshots of the orientation & phase dock.

Run headless with::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_orientation_screenshots.py

Writes ``orientation.png`` (the dock beside the IPF-z map) and
``orientation_diffraction.png`` (the diffraction viewer with the matched
templates) to ``docs/images/`` (or the directory given as the first
argument). The scan is synthetic and seeded: 40 grains, 39 of gold and one of
rutile, each with its kinematical pattern at a known orientation near a low-
index zone axis, the direct beam about 1.7 px off the detector centre and
shifted by up to 0.4 px from grain to grain, at 2·10⁵ electrons per pattern.
"""

from __future__ import annotations

import numpy as np
from make_screenshots import output_dir, save, settle  # the same folder: run as a script

WINDOW = (1500, 950)
SCAN = (40, 48)
DETECTOR = (96, 96)
QPIX = 0.02


def grains_scan(seed: int = 7):
    """Labels of 40 Voronoi grains, their cluster averages, and a noisy cube."""
    from napari_stemcluster.core import ClusterTable, SegmentationResult, load_structure
    from napari_stemcluster.core.orientation import (
        _base_rotations,
        _rot_z,
        _rotvec,
        orientation_library,
        simulate_pattern,
    )
    from napari_stemcluster.data import builtin_cif

    rng = np.random.default_rng(seed)
    au = load_structure(builtin_cif("Au"))
    ru = load_structure(builtin_cif("TiO2"))
    libs = [orientation_library(st, 300.0, QPIX, step_deg=10.0, g_max=1.2) for st in (au, ru)]
    n = 40
    seeds = rng.uniform([0, 0], SCAN, size=(n, 2))
    rr, cc = np.mgrid[: SCAN[0], : SCAN[1]]
    d = np.hypot(rr[..., None] - seeds[:, 0], cc[..., None] - seeds[:, 1])
    labels = (np.argmin(d, axis=-1) + 1).astype(np.int32)
    axes = [(0, 0, 1), (0, 1, 1), (1, 1, 1), (1, 1, 2), (0, 1, 3), (1, 2, 3)]
    beam = np.array([(DETECTOR[0] - 1) / 2 + 1.4, (DETECTOR[1] - 1) / 2 - 0.9])
    means = []
    for i in range(n):
        phase = 1 if i == 1 else 0  # cluster 2 is rutile
        st = (au, ru)[phase]
        v = st.direct @ np.asarray(axes[i % len(axes)], float)
        v /= np.linalg.norm(v)
        tilt = _rotvec(np.radians(rng.uniform(0.3, 1.2)) * np.r_[rng.normal(size=2), 0.0])
        rot = _rot_z(rng.uniform(0, 2 * np.pi)) @ tilt @ _base_rotations(st, v[None])[0]
        centre = beam + rng.uniform(-0.4, 0.4, 2)
        means.append(simulate_pattern(libs[phase], rot, DETECTOR, center=centre, counts=2e5, rng=i))
    means = np.stack(means)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    table = ClusterTable(
        size=sizes.astype(np.int64),
        seed=np.round(seeds).astype(np.int64),
        mean_similarity=np.ones(n, np.float32),
    )
    result = SegmentationResult(
        labels=labels,
        mean_similarity=np.ones(SCAN, np.float32),
        real_mask=np.ones(SCAN, bool),
        similarity=np.ones((*SCAN, 8), np.float32),
        cluster_means=means,
        clusters=table,
    )
    # each position: its grain's pattern at 1/40 of the dose
    expected = means[labels - 1] / means.sum(axis=(1, 2))[labels - 1, None, None] * 5e3
    cube = rng.poisson(expected).astype(np.float32)
    return result, cube


def main(argv=None) -> int:
    out = output_dir(argv)
    import napari

    from napari_stemcluster._layers import dataset_to_layers, result_to_layers
    from napari_stemcluster.data import builtin_cif
    from napari_stemcluster.io import Calibration, StemDataset
    from napari_stemcluster.widgets import DiffractionViewer, OrientationWidget

    result, cube = grains_scan()
    cal = Calibration(r_pixel_size=1.0, r_units="nm", q_pixel_size=QPIX, q_units="1/angstrom")
    ds = StemDataset.from_array(cube, cal, name="grains")
    viewer = napari.Viewer(title="napari-stemcluster: orientation & phase", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    for data, kwargs, kind in dataset_to_layers(ds, name="grains ADF"):
        viewer._add_layer_from_data(data, kwargs, kind)
    for data, kwargs, kind in result_to_layers(result, cal.as_dict(), name="grains", cube=ds.cube):
        viewer._add_layer_from_data(data, kwargs, kind)
    w = OrientationWidget(viewer)
    viewer.window.add_dock_widget(w, name="Orientation & phase", area="right")
    w._cif.value = [builtin_cif("Au"), builtin_cif("TiO2")]
    w._step.value = 2.0
    w._max_angle.value = 1.2 * 19.687  # g_max 1.2 1/Å at 300 keV
    w._disk.value = 2.5
    w.run()
    w.jobs.wait()
    settle(1.0)
    print(w._status.value)
    rec = w.result.records
    print("beam centres:", rec["center"].min(0).round(2), rec["center"].max(0).round(2))
    for name in ("grains ADF", "grains", "grains mean similarity"):
        if name in viewer.layers:
            viewer.layers[name].visible = False
    viewer.layers.selection.active = viewer.layers["grains IPF z"]
    w._cluster.value = 4  # gold near [112]
    w.draw()
    viewer.reset_view()
    save(viewer.window._qt_window, out / "orientation.png")

    # the diffraction viewer: a gold grain's pattern under the mouse, rutile's average
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction", area="left")
    w.update_overlays()
    labels_layer = viewer.layers["grains"]
    dif.controls.show_peaks.value = False  # only the templates
    dif.controls.source.value = "selected label"
    labels_layer.selected_label = 2
    settle(1.0)
    pos = np.argwhere(result.labels == 1)  # gold near [001]
    where = tuple(int(v) for v in pos[len(pos) // 2])
    viewer.cursor.position = tuple(labels_layer.data_to_world(where))
    settle(1.5)
    dif.resize(900, 700)
    save(dif, out / "orientation_diffraction.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
