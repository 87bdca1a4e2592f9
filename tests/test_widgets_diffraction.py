"""Linked diffraction viewer, label correction and 5D browsing, driven programmatically."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stemcluster._layers import sample_to_layers
from napari_stemcluster.core import cluster_sums, cluster_table
from napari_stemcluster.widgets import (
    ClusteringWidget,
    CorrectionWidget,
    DiffractionViewer,
    SimilarityWidget,
)
from napari_stemcluster.widgets._bragg import bragg_display
from napari_stemcluster.widgets._common import stem_meta
from napari_stemcluster.widgets._diffraction import MARKER_NAME, scale_pattern
from napari_stemcluster.widgets._link import link_for, seed_points

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

#: Milliseconds to wait for a background job.
WAIT = 30_000


def _workflow(make_napari_viewer, qtbot, sample, show=False):
    """Viewer with the sample, its similarity, mask and clusters, and a diffraction viewer."""
    viewer = make_napari_viewer(show=show)
    for data, kwargs, kind in sample_to_layers(sample, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    data = viewer.layers["demo ADF"]
    sim = SimilarityWidget(viewer)
    sim._inner.value, sim._outer.value = 2.0, 14.0
    sim.run()
    qtbot.waitUntil(lambda: not sim.runner.running, timeout=WAIT)
    clu = ClusteringWidget(viewer)
    clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
    clu._threshold.value, clu._min_size.value = 0.8, 3
    clu.run()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    layer = clu.labels_layer
    link = link_for(layer)
    qtbot.waitUntil(lambda: not link.runner.running, timeout=WAIT)
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    dif.controls.scaling.value = "linear"
    return viewer, data, layer, dif, sim, clu


def _has_label(layer, label):
    """The features table has a row for ``label`` with positions (row k is label k)."""
    sizes = layer.features["size"]
    return len(sizes) > label and sizes[label] > 0


def _hover(qtbot, viewer, layer, dif, index):
    """Move the main viewer's cursor over a scan index of ``layer``."""
    viewer.cursor.position = tuple(layer.data_to_world(index))
    want = tuple(int(i) for i in index[-2:])
    qtbot.waitUntil(lambda: dif.position == want, timeout=5000)


def _grain_cluster(labels, grains):
    """The largest cluster inside a grain (not the liquid around the particles)."""
    inside = labels[(grains > 0) & (labels > 0)]
    return int(np.bincount(inside).argmax())


def _cluster_mean(cube, labels, label):
    return cube[labels == label].astype(np.float64).mean(axis=0)


def test_pattern_under_the_mouse(make_napari_viewer, qtbot, scan4d):
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_to_layers(scan4d, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    layer = viewer.layers["demo ADF"]
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    assert dif.data_layer is layer and dif.cluster_layer is None
    dif.controls.scaling.value = "linear"
    reads = []
    cube = stem_meta(layer)["cube"]

    class Counting:
        shape, dtype, ndim = cube.shape, cube.dtype, cube.ndim

        def __getitem__(self, key):
            reads.append(key)
            return cube[key]

    stem_meta(layer)["cube"] = Counting()
    for rx, ry in [(3, 4), (31, 0), (17, 22)]:
        _hover(qtbot, viewer, layer, dif, (rx, ry))
        np.testing.assert_array_equal(dif.pattern, scan4d.cube[rx, ry])
        np.testing.assert_array_equal(dif.pattern_layer.data, scan4d.cube[rx, ry])
    assert all(len(k) == 2 and all(isinstance(i, int) for i in k) for k in reads)
    # one pattern per move, never the cube, plus the 8 neighbours read ahead
    assert len(reads) <= 3 * 9
    # a neighbour read ahead is shown without reading again
    qtbot.waitUntil(lambda: len(dif._prefetched) == 8, timeout=5000)
    before = len(reads)
    _hover(qtbot, viewer, layer, dif, (18, 22))
    np.testing.assert_array_equal(dif.pattern, scan4d.cube[18, 22])
    assert reads[before : before + 1] != [(18, 22)]
    _hover(qtbot, viewer, layer, dif, (17, 22))
    # outside the scan nothing changes
    viewer.cursor.position = (-5.0, 3.0)
    qtbot.wait(60)
    assert dif.position == (17, 22)
    # display scaling changes the view, not the data
    dif.controls.scaling.value = "log"
    np.testing.assert_allclose(dif.pattern_layer.data, np.log1p(scan4d.cube[17, 22]), rtol=1e-6)
    np.testing.assert_array_equal(dif.pattern, scan4d.cube[17, 22])
    dif.controls.scaling.value = "power"
    dif.controls.gamma.value = 0.25
    np.testing.assert_allclose(
        dif.pattern_layer.data, scan4d.cube[17, 22].astype(np.float32) ** 0.25, rtol=1e-6
    )
    lo, hi = dif.pattern_layer.contrast_limits
    shown = dif.pattern_layer.data
    assert lo == pytest.approx(np.percentile(shown, 0.5))
    assert hi == pytest.approx(np.percentile(shown, 99.8))


def test_scale_pattern():
    p = np.array([[0, 3], [8, -1]], np.int32)
    assert scale_pattern(p, "linear") is p
    np.testing.assert_allclose(scale_pattern(p, "log"), np.log1p([[0, 3], [8, 0]]))
    np.testing.assert_allclose(scale_pattern(p, "power", 0.5), [[0, 3**0.5], [8**0.5, 0]])
    with pytest.raises(ValueError, match="scaling"):
        scale_pattern(p, "sqrt")


def test_cluster_average_peaks_and_marker(make_napari_viewer, qtbot, scan4d):
    viewer, data, layer, dif, _, clu = _workflow(make_napari_viewer, qtbot, scan4d)
    assert dif.cluster_layer is layer
    labels = layer.data.copy()
    label = _grain_cluster(labels, scan4d.grains)
    rx, ry = np.argwhere(labels == label)[0]
    _hover(qtbot, viewer, data, dif, (rx, ry))
    assert dif.label == label
    want = _cluster_mean(scan4d.cube, labels, label)
    np.testing.assert_allclose(dif.average, want, rtol=1e-5)
    np.testing.assert_allclose(dif.average_layer.data, want, rtol=1e-5)
    pos, _, hk = bragg_display(dif.average, radius=dif.controls.disk_radius.value)
    assert len(pos) >= 3  # a grain average shows Bragg disks
    # the disks are searched for in a worker thread and shown when found
    qtbot.waitUntil(lambda: not dif.peaks_pending, timeout=WAIT)
    assert list(dif.peaks_layer.features["hk"]) == hk
    np.testing.assert_allclose(dif.peaks_layer.data, pos)
    marker = viewer.layers[MARKER_NAME]
    qtbot.waitUntil(lambda: len(marker.data) == 1, timeout=WAIT)  # a turn after the layer
    table = cluster_table(labels, stem_meta(layer)["result"].mean_similarity)
    np.testing.assert_allclose(marker.data, [table.seed[label - 1]])
    assert marker.features["size"][0] == table.size[label - 1]
    assert viewer.layers.selection.active is not marker  # the user's layer stays active
    assert f"cluster {label}: {table.size[label - 1]} positions" in dif.text_overlay.text
    # background: no average
    rx0, ry0 = np.argwhere(labels == 0)[0]
    _hover(qtbot, viewer, data, dif, (rx0, ry0))
    assert dif.label is None and dif.average is None and len(marker.data) == 0
    # the selected label instead of the one under the mouse
    dif.controls.source.value = "selected label"
    layer.selected_label = label
    np.testing.assert_allclose(dif.average, want, rtol=1e-5)
    # clustering again into the same layer: the viewer follows the new clusters
    clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
    clu._threshold.value = 0.95
    clu.run()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    assert clu.labels_layer is layer and not np.array_equal(layer.data, labels)
    new_label = int(layer.selected_label)
    assert (layer.data == new_label).any()
    want = _cluster_mean(scan4d.cube, layer.data, new_label)
    # the viewer follows new clusters in an event-loop turn of its own
    qtbot.waitUntil(
        lambda: dif.average is not None and np.allclose(dif.average, want, rtol=1e-5),
        timeout=WAIT,
    )


def test_edits_update_averages_and_features(make_napari_viewer, qtbot, scan4d, tmp_path):
    viewer, data, layer, dif, _, _ = _workflow(make_napari_viewer, qtbot, scan4d)
    state = link_for(layer).state
    ms = stem_meta(layer)["result"].mean_similarity
    cube = scan4d.cube

    def check():
        lab = layer.data
        n = int(lab.max())
        sums, counts = cluster_sums(cube, lab, n)
        got_sums, got_counts = state.sums(0)
        np.testing.assert_array_equal(got_counts[:n], counts)
        np.testing.assert_allclose(got_sums[:n], sums)
        table = cluster_table(lab, ms, n)
        np.testing.assert_array_equal(layer.features["size"][1:], table.size)
        np.testing.assert_array_equal(layer.features["seed_ry"][1:], table.seed[:, 1])

    label = int(layer.data[layer.data > 0][0])
    rx, ry = np.argwhere(layer.data == label)[0]
    _hover(qtbot, viewer, data, dif, (rx, ry))
    before = dif.average.copy()
    # 1. paint a brush stroke with a new label
    layer.selected_label = 40
    layer.brush_size = 3
    layer.paint((rx, ry), 40)
    qtbot.waitUntil(lambda: state.sums(0)[0].shape[0] >= 40, timeout=5000)
    check()
    qtbot.waitUntil(lambda: dif.label == 40, timeout=5000)
    np.testing.assert_allclose(dif.average, _cluster_mean(cube, layer.data, 40), rtol=1e-5)
    assert not np.allclose(dif.average, before)
    # 2. fill a whole cluster with another label
    other = int(np.unique(layer.data[(layer.data > 0) & (layer.data != 40)])[-1])
    ox, oy = np.argwhere(layer.data == other)[0]
    layer.fill((ox, oy), 41)
    qtbot.waitUntil(lambda: _has_label(layer, 41), timeout=5000)
    check()
    assert not (layer.data == other).any()
    # 3. assign data directly and announce it
    layer.data[0:3, 0:3] = 42
    layer.events.paint(value=[])
    qtbot.waitUntil(lambda: _has_label(layer, 42), timeout=5000)
    check()
    # 4. undo restores the sums too
    layer.undo()
    qtbot.waitUntil(lambda: (layer.data == other).any(), timeout=5000)
    link_for(layer).flush()
    check()
    assert state.edited
    # the edited layer saves with the plugin's writer, averages recomputed from the cube
    from napari_stemcluster._writer import write_segmentation
    from napari_stemcluster.io import read_results

    (path,) = write_segmentation(str(tmp_path / "seg.h5"), layer.data, {"metadata": layer.metadata})
    saved, _ = read_results(path)
    np.testing.assert_array_equal(saved.labels, layer.data)
    n = len(saved.clusters)
    np.testing.assert_allclose(saved.cluster_means, state.means(0)[:n], rtol=1e-5, atol=1e-6)


def test_merge_and_split_actions(make_napari_viewer, qtbot, scan4d):
    viewer, _data, layer, dif, _sim, _clu = _workflow(make_napari_viewer, qtbot, scan4d)
    corr = CorrectionWidget(viewer)
    corr.reset_choices()
    assert corr._layer_combo.value is layer
    state = link_for(layer).state
    cube = scan4d.cube
    sizes = np.bincount(layer.data.ravel())[1:]
    a, b = (int(i) + 1 for i in np.argsort(sizes)[::-1][:2])
    # merge via the "selected label" list and the button
    layer.selected_label = b
    corr.add_selected()
    layer.selected_label = a
    corr.add_selected()
    assert corr._merge_list.value == f"{b}, {a}"
    corr._merge.changed.emit(True)
    low, high = min(a, b), max(a, b)
    assert not (layer.data == high).any() and layer.selected_label == low
    np.testing.assert_allclose(state.mean(0, low), _cluster_mean(cube, layer.data, low), rtol=1e-5)
    size = dict(enumerate(layer.features["size"]))  # row k: label k
    assert size.get(high, 0) == 0
    assert size[low] == sizes[a - 1] + sizes[b - 1]
    dif.controls.source.value = "selected label"
    np.testing.assert_allclose(dif.average, _cluster_mean(cube, layer.data, low), rtol=1e-5)
    # split the merged cluster again at a higher threshold: regions grown inside it
    corr._threshold.value = 0.8005
    new_ids = corr.split()
    assert new_ids, "the merged label should fall apart again"
    for lab in [low, *new_ids]:
        np.testing.assert_allclose(
            state.mean(0, lab), _cluster_mean(cube, layer.data, lab), rtol=1e-5
        )
    n = int(layer.data.max())
    np.testing.assert_allclose(state.sums(0)[0][:n], cluster_sums(cube, layer.data, n)[0])
    # a label that cannot split is reported, not changed
    before = layer.data.copy()
    corr._threshold.value = -1.0
    assert corr.split() == []
    np.testing.assert_array_equal(layer.data, before)
    # the same actions from the keyboard: Shift-A adds the selected label, Shift-M merges
    from napari.utils.key_bindings import coerce_keybinding

    keys = {k: layer.keymap[coerce_keybinding(k)] for k in ("Shift-A", "Shift-M", "Shift-S")}
    first, second = (int(v) for v in np.unique(layer.data[layer.data > 0])[:2])
    for label in (first, second):
        layer.selected_label = label
        keys["Shift-A"](layer)
    keys["Shift-M"](layer)
    assert not (layer.data == second).any()
    np.testing.assert_allclose(
        state.mean(0, first), _cluster_mean(cube, layer.data, first), rtol=1e-5
    )
    # a merge that cannot be done is a notification, not an exception
    corr._merge_list.value = str(first)
    assert corr.merge() is None
    corr._merge_list.value = "x"
    assert corr.merge() is None


def test_time_series_browsing_and_edits_survive(make_napari_viewer, qtbot, scan5d):
    viewer, data, layer, dif, _, _ = _workflow(make_napari_viewer, qtbot, scan5d)
    cube = scan5d.cube
    assert layer.ndim == 3 and dif.data_layer is data
    state = link_for(layer).state
    for t in range(3):
        viewer.dims.set_current_step(0, t)
        labels = layer.data[t]
        label = int(np.bincount(labels.ravel())[1:].argmax() + 1)
        rx, ry = np.argwhere(labels == label)[0]
        _hover(qtbot, viewer, data, dif, (t, rx, ry))
        assert dif.t == t
        np.testing.assert_array_equal(dif.pattern, cube[t, rx, ry])
        qtbot.waitUntil(lambda lab=label: dif.label == lab, timeout=WAIT)
        np.testing.assert_allclose(dif.average, _cluster_mean(cube[t], labels, label), rtol=1e-5)
        np.testing.assert_array_equal(
            layer.features["size"], np.bincount(labels.ravel(), minlength=labels.max() + 1)
        )
    # the time slider alone updates the pattern at the same scan position
    viewer.dims.set_current_step(0, 0)
    qtbot.waitUntil(lambda: dif.t == 0, timeout=5000)
    np.testing.assert_array_equal(dif.pattern, cube[0, rx, ry])
    # edit step 0, go to step 2 and back: the edit and its averages are kept
    layer.data_setitem((np.array([0]), np.array([1]), np.array([1])), 50)
    link_for(layer).flush()
    viewer.dims.set_current_step(0, 2)
    viewer.dims.set_current_step(0, 0)
    assert layer.data[0, 1, 1] == 50
    np.testing.assert_allclose(state.mean(0, 50), cube[0, 1, 1], rtol=1e-6)
    assert _has_label(layer, 50)
    # closing the diffraction viewer and opening a new one shows the edited cluster
    viewer.window.remove_dock_widget(dif)
    dif2 = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif2, name="Diffraction 2")
    dif2.controls.scaling.value = "linear"  # remembered: may not complete the canvas
    qtbot.waitUntil(lambda: dif2.built, timeout=WAIT)  # made in steps meanwhile
    assert dif2.cluster_layer is layer
    _hover(qtbot, viewer, data, dif2, (0, 1, 1))
    assert dif2.label == 50
    np.testing.assert_allclose(dif2.average, cube[0, 1, 1], rtol=1e-6)


def test_q_mask_overlay_follows_and_edits_the_similarity_radii(make_napari_viewer, qtbot, scan4d):
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_to_layers(scan4d, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    sim = SimilarityWidget(viewer)
    dif = DiffractionViewer(viewer)
    sim._inner.value, sim._outer.value = 3.0, 10.0
    shapes = dif.q_mask_layer.data
    assert len(shapes) == 2
    centre = np.array([15.5, 15.5])
    radii = sorted(float((s.max(0) - s.min(0)).mean() / 2) for s in shapes)
    assert radii == pytest.approx([3.0, 10.0])
    for s in shapes:
        np.testing.assert_allclose(s.mean(0), centre)
    # drag the outer circle wider in the diffraction viewer
    outer = int(np.argmax([np.ptp(s[:, 0]) for s in shapes]))
    new = [s.copy() for s in shapes]
    new[outer] = centre + (new[outer] - centre) * 1.2
    dif.q_mask_layer.data = new
    assert sim._outer.value == pytest.approx(12.0)
    assert sim._inner.value == pytest.approx(3.0)
    assert sim.q_mask() == pytest.approx((3.0, 12.0))
    sim._use_q_mask.value = False
    assert len(dif.q_mask_layer.data) == 0
    dif.controls.edit_q_mask.value = True
    assert dif.model.layers.selection.active is dif.q_mask_layer


def test_docked_workflow_screenshot_is_not_blank(make_napari_viewer, qtbot, scan4d):
    viewer, data, layer, dif, sim, clu = _workflow(make_napari_viewer, qtbot, scan4d, show=True)
    corr = CorrectionWidget(viewer)
    for widget, name in ((sim, "Similarity"), (clu, "Clustering"), (corr, "Correction")):
        viewer.window.add_dock_widget(widget, name=name, area="right", tabify=True)
    window = viewer.window._qt_window
    window.resize(1500, 950)
    rx, ry = np.argwhere(layer.data > 0)[0]
    _hover(qtbot, viewer, data, dif, (rx, ry))
    qtbot.wait(300)
    image = window.grab().toImage()
    from qtpy.QtGui import QImage

    image = image.convertToFormat(QImage.Format.Format_RGB888)
    w, h = image.width(), image.height()
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    arr = np.frombuffer(ptr, np.uint8).reshape(h, image.bytesPerLine())[:, : 3 * w]
    arr = arr.reshape(h, w, 3)

    def region_std(widget):
        top_left = widget.mapTo(window, widget.rect().topLeft())
        x, y = top_left.x(), top_left.y()
        sub = arr[y : y + widget.height(), x : x + widget.width()]
        assert sub.size > 0
        return float(sub.std())

    # its canvas would stop drawing in a floating window (no shared GL contexts)
    from qtpy.QtWidgets import QDockWidget

    dock = dif.parent()
    while not isinstance(dock, QDockWidget):
        dock = dock.parent()
    assert not dock.features() & QDockWidget.DockWidgetFeature.DockWidgetFloatable
    main_canvas = viewer.window._qt_viewer.canvas.native
    assert region_std(main_canvas) > 5
    assert region_std(dif.qt_viewer.canvas.native) > 5
    assert region_std(dif.controls.native) > 5
    assert region_std(clu.native) > 5


def _held_jobs(runner):
    """Jobs of ``runner`` wait for the returned event before computing."""
    import threading

    gate = threading.Event()
    start = runner.start

    def held(fn, **kwargs):
        def work(progress):
            gate.wait(WAIT / 1000)
            return fn(progress)

        return start(work, **kwargs)

    runner.start = held
    return gate


def _sample_with_similarity(make_napari_viewer, qtbot, scan4d):
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_to_layers(scan4d, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    sim = SimilarityWidget(viewer)
    sim._inner.value, sim._outer.value = 2.0, 14.0
    sim.run()
    qtbot.waitUntil(lambda: not sim.runner.running, timeout=WAIT)
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    dif.finish_building()
    clu = ClusteringWidget(viewer)
    clu._mode.value, clu._linkage.value = "manual", "pair"
    clu._threshold.value, clu._min_size.value = 0.8, 3
    return viewer, dif, clu


def test_a_clustering_job_makes_its_seeds_and_marker_layers_while_it_computes(
    make_napari_viewer, qtbot, scan4d
):
    viewer, dif, clu = _sample_with_similarity(make_napari_viewer, qtbot, scan4d)
    data = viewer.layers["demo ADF"]
    active = viewer.layers.selection.active
    gate = _held_jobs(clu.runner)
    clu.run()
    qtbot.waitUntil(lambda: MARKER_NAME in viewer.layers, timeout=WAIT)
    seeds, marker = viewer.layers["clusters seeds"], viewer.layers[MARKER_NAME]
    assert clu.runner.worker is not None  # made while the job computes
    for layer in (seeds, marker):  # hidden, empty, placed like the data
        assert not layer.visible and len(layer.data) == 0
        np.testing.assert_allclose(layer.scale, data.scale)
    assert viewer.layers.selection.active is active  # the user's layer stays active
    gate.set()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    layer = viewer.layers["clusters"]
    names = [x.name for x in viewer.layers]
    assert names[-3:] == ["clusters", "clusters seeds", MARKER_NAME]
    assert clu.labels_layer is layer and clu.seeds_layer is seeds and seeds.visible
    state = link_for(layer).state
    points, feats = seed_points(state)
    np.testing.assert_allclose(seeds.data, points)
    assert list(seeds.features["label"]) == list(feats["label"])
    assert len(points) == int(layer.data.max()) > 1
    # the marker made ahead serves the first cluster shown
    labels = layer.data.copy()
    label = _grain_cluster(labels, scan4d.grains)
    _hover(qtbot, viewer, data, dif, tuple(np.argwhere(labels == label)[0]))
    qtbot.waitUntil(lambda: len(marker.data) == 1 and marker.visible, timeout=WAIT)
    table = cluster_table(labels, stem_meta(layer)["result"].mean_similarity)
    np.testing.assert_allclose(marker.data, [table.seed[label - 1]])
    assert viewer.layers[MARKER_NAME] is marker


def test_a_cancelled_clustering_job_removes_the_layers_made_for_it(
    make_napari_viewer, qtbot, scan4d
):
    viewer, dif, clu = _sample_with_similarity(make_napari_viewer, qtbot, scan4d)
    before = [x.name for x in viewer.layers]
    gate = _held_jobs(clu.runner)
    clu.run()
    qtbot.waitUntil(lambda: MARKER_NAME in viewer.layers, timeout=WAIT)
    clu.runner.cancel(silent=True)
    gate.set()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    qtbot.wait(100)
    assert clu.runner.last_cancelled
    assert [x.name for x in viewer.layers] == before
    assert clu.seeds_layer is None and dif._marker is None
    # the next job makes them again, and uses them
    clu.runner.start = type(clu.runner).start.__get__(clu.runner)
    clu.run()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    names = [x.name for x in viewer.layers]
    assert names.index("clusters") + 1 == names.index("clusters seeds")
    assert clu.seeds_layer.visible and len(clu.seeds_layer.data) > 1
