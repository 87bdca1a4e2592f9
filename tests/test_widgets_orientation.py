"""The orientation dock widget, and orientation maps restored from a results file."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stemcluster._layers import result_to_layers
from napari_stemcluster.core import ClusterTable, SegmentationResult, load_structure
from napari_stemcluster.core.orientation import (
    _rot_z,
    _rotvec,
    misorientation_deg,
    orientation_library,
    simulate_pattern,
)
from napari_stemcluster.data import builtin_cif
from napari_stemcluster.widgets import OrientationWidget
from napari_stemcluster.widgets._common import stem_meta

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

QPIX = 0.02
CAL = {"q_pixel_size": QPIX, "q_units": "1/angstrom", "r_pixel_size": 1.0, "r_units": "nm"}


@pytest.fixture(scope="module")
def grains():
    """Three grains (two gold, one rutile) with kinematical cluster averages."""
    au = load_structure(builtin_cif("Au"))
    ru = load_structure(builtin_cif("TiO2"))
    lib_au = orientation_library(au, 300.0, QPIX, step_deg=10.0, g_max=1.2)
    lib_ru = orientation_library(ru, 300.0, QPIX, step_deg=10.0, g_max=1.2)
    truths = [
        _rot_z(0.4) @ _rotvec(np.radians([0.8, 0.3, 0.0])),
        _rot_z(1.1) @ _rotvec(np.radians([0.2, 0.9, 0.0])),
        _rot_z(2.0) @ _rotvec(np.radians([0.7, -0.5, 0.0])),
    ]
    libs = [lib_au, lib_ru, lib_au]
    means = np.stack(
        [
            simulate_pattern(lib, t, (96, 96), counts=2e5, rng=i)
            for i, (lib, t) in enumerate(zip(libs, truths, strict=True))
        ]
    )
    labels = np.zeros((12, 16), np.int32)
    labels[:, :6], labels[:6, 6:], labels[6:, 6:] = 1, 2, 3
    labels[0, 0] = 0
    table = ClusterTable(
        size=np.bincount(labels.ravel())[1:].astype(np.int64),
        seed=np.zeros((3, 2), np.int64),
        mean_similarity=np.ones(3, np.float32),
    )
    result = SegmentationResult(
        labels=labels,
        mean_similarity=np.ones(labels.shape, np.float32),
        real_mask=labels > 0,
        similarity=np.ones((*labels.shape, 8), np.float32),
        cluster_means=means,
        clusters=table,
    )
    return result, truths, [au, ru, au]


def test_widget_matches_and_shows_maps(make_napari_viewer, qtbot, grains, tmp_path):
    result, truths, structures = grains
    viewer = make_napari_viewer()
    for data, kwargs, kind in result_to_layers(result, CAL, name="grains"):
        viewer._add_layer_from_data(data, kwargs, kind)
    w = OrientationWidget(viewer)
    viewer.window.add_dock_widget(w, name="Orientation")
    assert w._layer_combo.value is viewer.layers["grains"]
    assert w._qpix.value == pytest.approx(QPIX)  # from the layer's calibration
    w._cif.value = [builtin_cif("Au"), builtin_cif("TiO2")]
    w._step.value = 2.0
    w._max_angle.value = 1.2 * 19.687  # g_max 1.2 1/Å at 300 keV
    w.run()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=60_000)
    assert w.jobs.last_error is None
    rec = w.result.records
    assert rec["phase"].tolist() == [0, 1, 0]
    for r, t, st in zip(rec, truths, structures, strict=True):
        assert misorientation_deg(r["rotation"], t, st) < 0.3
    names = (
        "grains IPF z",
        "grains IPF x",
        "grains IPF y",
        "grains phase",
        "grains in-plane angle",
        "grains orientation score",
    )
    for name in names:
        assert name in viewer.layers
    ipf = viewer.layers["grains IPF z"].data
    assert ipf.shape == (12, 16, 3) and ipf.dtype == np.uint8
    assert ipf[0, 0].tolist() == [0, 0, 0] and ipf[5, 3].any()
    phase = viewer.layers["grains phase"].data
    assert phase[2, 2] == 1 and phase[2, 10] == 2 and phase[0, 0] == 0
    assert stem_meta(viewer.layers["grains"])["orientation"] is w.result
    inplane = viewer.layers["grains in-plane angle"].data
    assert inplane[2, 2] == pytest.approx(rec["inplane_deg"][0]) and np.isnan(inplane[0, 0])
    # the dock's plot: the cluster average with its template and (hkl) labels
    w._cluster.value = 2
    w.draw()
    texts = [t.get_text() for t in w.figure.axes[0].texts]
    assert len(texts) > 3 and all(t.replace("-", "").isdigit() for t in texts)
    assert "Rutile" in w.figure.axes[0].get_title()
    # the IPF colour key of the cluster's phase, with its three corners named
    key_ax = w.figure.axes[1]
    assert key_ax.get_title() == "IPF colour key"
    assert sorted(t.get_text() for t in key_ax.texts) == ["[001]", "[100]", "[110]"]
    score = viewer.layers["grains orientation score"].data
    assert score[2, 2] == pytest.approx(rec["score"][0]) and np.isnan(score[0, 0])
    w.canvas.draw()
    w.native.grab().save(str(tmp_path / "orientation_widget.png"))
    assert (tmp_path / "orientation_widget.png").stat().st_size > 1000

    # saved by the napari writer with the segmentation, restored by the reader
    from napari_stemcluster._reader import get_reader
    from napari_stemcluster._writer import write_segmentation

    layer = viewer.layers["grains"]
    path = tmp_path / "seg.h5"
    write_segmentation(str(path), layer.data, {"metadata": layer.metadata})
    layers = get_reader(str(path))(str(path))
    names = [kw["name"] for _, kw, _ in layers]
    assert "seg IPF z" in names and "seg phase" in names
    restored = layers[0][1]["metadata"]["stemcluster"]["orientation"]
    np.testing.assert_array_equal(restored.records, rec)
    ipf_back = layers[names.index("seg IPF z")][0]
    np.testing.assert_array_equal(ipf_back, ipf)


def test_widget_without_layer_says_so(make_napari_viewer):
    w = OrientationWidget(make_napari_viewer())
    assert w.run() is None
    assert "No segmentation layer" in w._status.value
    w.draw()  # an empty plot, no error


def test_template_in_the_diffraction_viewer(make_napari_viewer, qtbot, grains, tmp_path):
    """The matched template, with (hkl), over the diffraction viewer's average and pattern."""
    from napari_stemcluster._layers import dataset_to_layers
    from napari_stemcluster.io import Calibration, StemDataset
    from napari_stemcluster.widgets import DiffractionViewer
    from napari_stemcluster.widgets._orientation import (
        PATTERN_TEMPLATE_LAYER,
        TEMPLATE_LAYER,
        template_spots,
    )

    result = grains[0]
    labels = result.labels
    # every position shows its cluster's pattern: the averages are the matched patterns
    cube = np.where(labels[..., None, None] > 0, result.cluster_means[labels - 1], 0)
    cube = cube.astype(np.float32)
    cal = Calibration(r_pixel_size=1.0, r_units="nm", q_pixel_size=QPIX, q_units="1/angstrom")
    ds = StemDataset.from_array(cube, cal, name="grains")
    viewer = make_napari_viewer()
    for data, kwargs, kind in dataset_to_layers(ds, name="grains ADF"):
        viewer._add_layer_from_data(data, kwargs, kind)
    for data, kwargs, kind in result_to_layers(result, CAL, name="grains", cube=ds.cube):
        viewer._add_layer_from_data(data, kwargs, kind)
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    n_before = len(dif.model.layers)
    w = OrientationWidget(viewer)
    w._cif.value = [builtin_cif("Au"), builtin_cif("TiO2")]
    w._step.value = 2.0
    w._max_angle.value = 1.2 * 19.687
    w.run()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=60_000)
    assert w.jobs.last_error is None
    names = [lay.name for lay in dif.model.layers]
    assert len(names) == n_before + 2
    # one template layer closes each panel of the grid
    stride = dif.model.grid.stride
    assert names.index(PATTERN_TEMPLATE_LAYER) == stride - 1
    assert names.index(TEMPLATE_LAYER) == 2 * stride - 1
    assert dif.model.layers[TEMPLATE_LAYER].scale[0] == pytest.approx(QPIX)

    # the average of cluster 2 (rutile) and the pattern under the mouse (cluster 1, gold)
    labels_layer = viewer.layers["grains"]
    dif.controls.source.value = "selected label"
    labels_layer.selected_label = 2
    qtbot.waitUntil(lambda: dif.label == 2, timeout=10_000)
    viewer.cursor.position = tuple(labels_layer.data_to_world((6, 2)))
    qtbot.waitUntil(lambda: dif.position == (6, 2), timeout=10_000)
    avg = dif.model.layers[TEMPLATE_LAYER]
    pat = dif.model.layers[PATTERN_TEMPLATE_LAYER]
    cache = {}
    rec = w.result.records
    for layer, label in ((avg, 2), (pat, 1)):
        pos, _, _ = template_spots(w.result, 0, label, (96, 96), cache)
        assert len(pos) > 5
        np.testing.assert_allclose(layer.data, pos)
        shown = [t for t in layer.features["hkl"] if t]
        assert len(shown) >= 5 and all(t.replace("-", "").isdigit() for t in shown)
        # the template sits on the disks of the shown pattern
        image = dif.average if layer is avg else dif.pattern
        strong = np.argsort(-np.asarray(layer.size))[:5]
        at_spots = [image[round(x), round(y)] for x, y in layer.data[strong]]
        assert np.median(at_spots) > 5 * np.median(image)
    assert rec["phase"][1] == 1 and rec["phase"][0] == 0
    # not indexed or background: nothing drawn
    viewer.cursor.position = tuple(labels_layer.data_to_world((0, 0)))
    qtbot.waitUntil(lambda: dif.position == (0, 0), timeout=10_000)
    assert len(pat.data) == 0
    dif.grab().save(str(tmp_path / "diffraction_template.png"))
    assert (tmp_path / "diffraction_template.png").stat().st_size > 1000


def test_widget_beam_centre_auto_and_manual(make_napari_viewer, qtbot, grains):
    """Auto finds each average's direct beam; manual fixes it; the dock plot and the
    diffraction-viewer templates are drawn around the centre each cluster was matched with."""
    from napari_stemcluster.core.orientation import kinematical_spots
    from napari_stemcluster.widgets._orientation import _display_library, template_spots

    result = grains[0]
    viewer = make_napari_viewer()
    for data, kwargs, kind in result_to_layers(result, CAL, name="grains"):
        viewer._add_layer_from_data(data, kwargs, kind)
    w = OrientationWidget(viewer)
    assert w._center_mode.value == "auto" and not w._center_qx.enabled
    assert (w._center_qx.value, w._center_qy.value) == (47.5, 47.5)  # this detector's centre
    w._cif.value = [builtin_cif("Au"), builtin_cif("TiO2")]
    w._step.value = 2.0
    w._max_angle.value = 1.2 * 19.687
    w.run()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=60_000)
    assert w.jobs.last_error is None
    np.testing.assert_allclose(w.result.records["center"], [[47.5, 47.5]] * 3, atol=0.05)
    assert w.result.params["center"] == "auto"

    w._center_mode.value = "manual"
    assert w._center_qx.enabled and w._center_qy.enabled
    w._center_qx.value, w._center_qy.value = 46.0, 49.5
    w.run()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=60_000)
    assert w.jobs.last_error is None
    rec = w.result.records
    assert rec["center"].tolist() == [[46.0, 49.5]] * 3
    # 1.5 px off: the match is worse than around the found beam
    assert np.median(rec["score"]) < 0.95
    # the templates sit on the centre used
    k = int(np.flatnonzero(rec["indexed"])[0])
    pos, _, _ = template_spots(w.result, 0, k + 1, (96, 96), {})
    lib = _display_library(w.result, int(rec["phase"][k]), {})
    q = kinematical_spots(lib, rec["rotation"][k])["q"]
    inside = np.all((q + [46.0, 49.5] >= -0.5) & (q + [46.0, 49.5] <= 95.5), axis=1)
    np.testing.assert_allclose(pos, q[inside] + [46.0, 49.5])
    w._cluster.value = k + 1
    w.draw()
    ax = w.figure.axes[0]
    assert "beam (46.0, 49.5)" in ax.get_title()
    marker = ax.lines[0].get_xydata()[0]  # (column, row)
    np.testing.assert_allclose(marker, [49.5, 46.0])
