"""The workflow dock, virtual detectors, threshold guidance, round trip and split confirmation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stemcluster._layers import sample_to_layers
from napari_stemcluster.core.virtual import roi_mask
from napari_stemcluster.widgets import WORKFLOW_TABS, WorkflowDock, register_tab
from napari_stemcluster.widgets._common import session, stem_meta
from napari_stemcluster.widgets._link import link_for
from napari_stemcluster.widgets._virtual import IMAGE_NAME, shapes_to_roi

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

WAIT = 30_000


def _dock(make_napari_viewer, qtbot, sample, cluster=True):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    for data, kwargs, kind in sample_to_layers(sample, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    dock = WorkflowDock(viewer)
    viewer.window.add_dock_widget(dock, name="STEM cluster")
    if cluster:
        sim = dock.stage("2. Similarity")
        sim._inner.value, sim._outer.value = 2.0, 14.0
        sim.run()
        qtbot.waitUntil(lambda: not sim.runner.running, timeout=WAIT)
        clu = dock.stage("3. Clustering")
        clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
        clu._threshold.value, clu._min_size.value = 0.8, 3
        clu.run()
        qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
        link = link_for(clu.labels_layer)
        qtbot.waitUntil(lambda: not link.runner.running, timeout=WAIT)
    return viewer, dock


def test_workflow_dock_fits_the_screen_and_takes_new_tabs(make_napari_viewer, qtbot, scan4d):
    viewer, dock = _dock(make_napari_viewer, qtbot, scan4d, cluster=False)
    qtbot.wait(100)
    titles = [dock.tabs.tabText(i) for i in range(dock.tabs.count())]
    assert titles == [t.title for t in WORKFLOW_TABS]
    assert {"2. Similarity", "3. Clustering", "Correct"} <= set(titles)
    window = viewer.window._qt_window
    assert window.height() <= 1000 and dock.height() <= 1000
    # a new stage registers itself as a tab
    from magicgui.widgets import Label

    register_tab("Extra", lambda v: Label(value="extra stage"), after="3. Clustering")
    try:
        dock2 = WorkflowDock(viewer)
        viewer.window.add_dock_widget(dock2, name="STEM cluster 2")
        titles = [dock2.tabs.tabText(i) for i in range(dock2.tabs.count())]
        assert titles[titles.index("3. Clustering") + 1] == "Extra"
        assert dock2.stage("Extra").value == "extra stage"
    finally:
        from napari_stemcluster.widgets._workflow import unregister_tab

        unregister_tab("Extra")
    assert "Extra" not in [t.title for t in WORKFLOW_TABS]


def test_virtual_detector_image_and_q_mask(make_napari_viewer, qtbot, scan4d):
    viewer, dock = _dock(make_napari_viewer, qtbot, scan4d, cluster=False)
    vd = dock.diffraction.virtual
    vd.controls.kind.value = "circle"
    vd.controls.enabled_box.value = True
    qtbot.waitUntil(lambda: vd.stride_done == 1 and vd._job is None, timeout=WAIT)
    layer = viewer.layers[IMAGE_NAME]
    cube = np.asarray(scan4d.cube, np.float64)
    mask = roi_mask(cube.shape[-2:], vd.roi)
    np.testing.assert_allclose(layer.data, (cube * mask).sum(axis=(-2, -1)))
    assert layer.scale[-1] == pytest.approx(viewer.layers["demo ADF"].scale[-1])
    # drag: the shapes move, the image follows
    shapes = [np.asarray(s) + [3.0, -2.0] for s in vd.shapes_layer.data]
    vd.shapes_layer.data = shapes
    roi = shapes_to_roi("circle", shapes)
    qtbot.waitUntil(lambda: vd.stride_done == 1 and vd._job is None and vd.roi == roi, timeout=WAIT)
    mask = roi_mask(cube.shape[-2:], roi)
    np.testing.assert_allclose(layer.data, (cube * mask).sum(axis=(-2, -1)))
    # centre of mass along qy, relative to the circle's centre
    vd.controls.signal.value = "CoM y"
    qy = np.arange(cube.shape[-1]) - roi["center"][1]
    s = (cube * mask).sum(axis=(-2, -1))
    want = np.where(s > 0, (cube * mask * qy).sum(axis=(-2, -1)) / np.where(s > 0, s, 1), 0)
    np.testing.assert_allclose(layer.data, want, atol=1e-9)
    lo, hi = layer.contrast_limits
    assert lo == pytest.approx(np.percentile(want, 0.5)) and hi > lo
    # to the q-mask and back
    vd.controls.kind.value = "annulus"
    vd.set_roi({"shape": "annulus", "center": (15.5, 15.5), "inner": 3.0, "outer": 9.0})
    vd.send_to_q_mask()
    q = session(viewer).q_mask
    assert (q["inner"], q["outer"]) == (3.0, 9.0)
    sim = dock.stage("2. Similarity")
    assert (sim._inner.value, sim._outer.value) == (3.0, 9.0)
    session(viewer).set_q_mask(1.0, 5.0)
    vd.take_from_q_mask()
    assert vd.roi["inner"] == 1.0 and vd.roi["outer"] == 5.0
    qtbot.waitUntil(lambda: vd._job is None, timeout=WAIT)


def test_threshold_guidance_follows_the_slider(make_napari_viewer, qtbot, scan4d):
    from napari_stemcluster.core.regions import grow_regions

    viewer, dock = _dock(make_napari_viewer, qtbot, scan4d)
    clu = dock.stage("3. Clustering")
    layer = clu._sim_combo.value
    sim = stem_meta(layer)["similarity"]
    ms = np.asarray(layer.data)
    mask = np.asarray(clu._mask_combo.value.data) > 0
    for thr, min_size in [(0.8, 3), (0.95, 5), (0.6, 1)]:
        clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
        clu._threshold.value, clu._min_size.value = thr, min_size
        clu.update_preview()
        want, _ = grow_regions(sim, thr, mean_similarity=ms, mask=mask, min_cluster_size=min_size)
        every, _ = grow_regions(sim, thr, mean_similarity=ms, mask=mask)
        st = clu.stats
        assert st.n_kept == want.max() == clu.preview_count
        assert st.n_clustered == np.count_nonzero(want)
        assert st.fraction == pytest.approx(np.count_nonzero(want) / mask.sum())
        assert st.n_dropped == every.max() - want.max()
        np.testing.assert_array_equal(st.sizes, np.bincount(want.ravel())[1:])
        assert clu.guidance._line.get_xdata()[0] == pytest.approx(thr)
    counts, _ = clu.guidance._hist
    assert counts.sum() == np.isfinite(sim[mask]).sum()
    # a click on a point selects its cluster; hovering a cluster rings its point
    clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
    clu._threshold.value, clu._min_size.value = 0.8, 3
    clu.update_preview()
    labels = clu.labels_layer
    last = int(labels.data.max())
    assert last >= 2
    clu.select_cluster(1)
    assert labels.selected_label == 1 and clu.guidance.highlighted == 1
    rx, ry = np.argwhere(labels.data == last)[0]
    viewer.cursor.position = tuple(labels.data_to_world((rx, ry)))
    assert clu.guidance.highlighted == last


def test_results_reopen_with_their_source(make_napari_viewer, qtbot, scan4d, tmp_path):
    import h5py

    from napari_stemcluster.io import read_results

    src = tmp_path / "scan.h5"
    with h5py.File(src, "w") as f:
        f["data"] = np.asarray(scan4d.cube)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(src), plugin="napari-stemcluster")
    dock = WorkflowDock(viewer)
    viewer.window.add_dock_widget(dock, name="STEM cluster")
    sim = dock.stage("2. Similarity")
    sim.run()
    qtbot.waitUntil(lambda: not sim.runner.running, timeout=WAIT)
    clu = dock.stage("3. Clustering")
    clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
    clu._threshold.value, clu._min_size.value = 0.8, 3
    clu.run()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    out = tmp_path / "res.h5"
    # "Save All Layers": the clusters layer among all is written
    written = viewer.layers.save(str(out), plugin="napari-stemcluster")
    assert written == [str(out)]
    saved, info = read_results(out)
    np.testing.assert_array_equal(saved.labels, clu.labels_layer.data)
    assert info["source"] == str(src)

    viewer2 = make_napari_viewer(show=True)
    layers = viewer2.open(str(out), plugin="napari-stemcluster")
    assert [type(x).__name__ for x in layers] == ["Image", "Labels", "Image"]
    seg = layers[1]
    assert stem_meta(seg)["cube"] is not None
    dock2 = WorkflowDock(viewer2)
    viewer2.window.add_dock_widget(dock2, name="STEM cluster")
    dif = dock2.diffraction
    assert dif.data_layer is layers[0] and dif.cluster_layer is seg
    state = dif.state
    assert state is not None and state.has_sums(0)  # the stored averages, no recompute
    label = int(seg.data[seg.data > 0][0])
    np.testing.assert_allclose(state.mean(0, label), saved.cluster_means[label - 1], rtol=1e-6)
    dif.controls.source.value = "selected label"
    seg.selected_label = label
    np.testing.assert_allclose(dif.average, saved.cluster_means[label - 1], rtol=1e-6)
    cor = dock2.stage("Correct")
    assert cor._layer_combo.value is seg and cor._merge.enabled
    # the source moved: the results still open (labels and map only)
    src.rename(tmp_path / "moved.h5")
    viewer3 = make_napari_viewer()
    layers3 = viewer3.open(str(out), plugin="napari-stemcluster")
    assert [type(x).__name__ for x in layers3] == ["Labels", "Image"]


def test_split_asks_before_emptying_a_cluster(make_napari_viewer, qtbot, scan4d):
    _viewer, dock = _dock(make_napari_viewer, qtbot, scan4d)
    cor = dock.stage("Correct")
    layer = dock.stage("3. Clustering").labels_layer
    cor._layer_combo.value = layer
    sizes = np.bincount(layer.data.ravel())[1:]
    label = int(np.argmax(sizes)) + 1
    layer.selected_label = label
    cor._threshold.value, cor._min_size.value = 0.999, 50
    asked = []
    cor.confirm_split = lambda parent, text: asked.append(text) or False
    before = layer.data.copy()
    assert cor.split() is None
    assert asked and f"cluster {label} ({sizes[label - 1]} positions)" in asked[0]
    np.testing.assert_array_equal(layer.data, before)
    assert "cancelled" in cor._status.value
    cor.confirm_split = lambda parent, text: True
    cor.split()
    moved = int(np.count_nonzero((before == label) & (layer.data == 0)))
    assert moved > 0.1 * sizes[label - 1]
    assert f"{moved} positions to background" in cor._status.value


def test_q_mask_settings_are_remembered_per_detector_shape(make_napari_viewer):
    from napari_stemcluster.io import StemDataset
    from napari_stemcluster.widgets import SimilarityWidget

    viewer = make_napari_viewer()
    from napari_stemcluster._layers import dataset_to_layers

    for shape, name in [((4, 4, 48, 48), "small"), ((4, 4, 128, 128), "big")]:
        ds = StemDataset.from_array(np.ones(shape, np.uint16))
        for data, kwargs, kind in dataset_to_layers(ds, name=name):
            viewer._add_layer_from_data(data, kwargs, kind)
    sim = SimilarityWidget(viewer)
    sim._layer_combo.value = viewer.layers["small"]
    sim._inner.value, sim._outer.value = 4.0, 20.0
    sim._layer_combo.value = viewer.layers["big"]
    assert sim._inner.value == 0.0 and sim._outer.value == pytest.approx(
        np.hypot(128, 128) / 2, abs=0.01
    )
    sim._outer.value = 50.0
    sim._layer_combo.value = viewer.layers["small"]
    assert (sim._inner.value, sim._outer.value) == (4.0, 20.0)
    again = SimilarityWidget(viewer)  # a new widget (a new session) remembers both
    again._layer_combo.value = viewer.layers["big"]
    assert again._outer.value == 50.0


def test_results_tab_saves_exports_and_finds_a_moved_file(
    make_napari_viewer, qtbot, scan4d, tmp_path
):
    import h5py
    from PIL import Image

    from napari_stemcluster.io import read_results

    src = tmp_path / "scan.h5"
    with h5py.File(src, "w") as f:
        f["data"] = np.asarray(scan4d.cube)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(src), plugin="napari-stemcluster")
    dock = WorkflowDock(viewer)
    viewer.window.add_dock_widget(dock, name="STEM cluster")
    sim = dock.stage("2. Similarity")
    sim.run()
    qtbot.waitUntil(lambda: not sim.runner.running, timeout=WAIT)
    clu = dock.stage("3. Clustering")
    clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
    clu._threshold.value, clu._min_size.value = 0.8, 3
    clu.run()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    labels_layer = clu.labels_layer
    qtbot.waitUntil(lambda: not link_for(labels_layer).runner.running, timeout=WAIT)
    res = dock.stage("Results")
    res._clusters.value = labels_layer
    # save in the background
    out = tmp_path / "res.h5"
    res.save_to(out)
    qtbot.waitUntil(lambda: not res.runner.running, timeout=WAIT)
    saved, _ = read_results(out)
    np.testing.assert_array_equal(saved.labels, labels_layer.data)
    # figures: a map with colour bar, the averages strip
    res._map.value = sim.similarity_layer
    res.export_map_to(tmp_path / "map.png")
    qtbot.waitUntil(lambda: not res.runner.running, timeout=WAIT)
    res.export_averages_to(tmp_path / "avg.tif")
    qtbot.waitUntil(lambda: not res.runner.running, timeout=WAIT)
    res._map.value = labels_layer
    res.export_map_to(tmp_path / "labels.png")
    qtbot.waitUntil(lambda: not res.runner.running, timeout=WAIT)
    for name in ("map.png", "avg.tif", "labels.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 300 and im.size[1] > 100
            assert len(np.unique(np.asarray(im.convert("L")))) > 5
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes left nothing behind
    # the data file moves: reopen the results, then locate it
    moved = tmp_path / "moved.h5"
    src.rename(moved)
    viewer2 = make_napari_viewer(show=True)
    (seg, _) = viewer2.open(str(out), plugin="napari-stemcluster")
    dock2 = WorkflowDock(viewer2)
    viewer2.window.add_dock_widget(dock2, name="STEM cluster")
    res2 = dock2.stage("Results")
    res2._clusters.value = seg
    assert not res2._locate.native.isHidden()
    ds = res2.locate_source(moved)
    assert ds is not None and stem_meta(seg)["cube"] is ds.cube
    assert res2._locate.native.isHidden()
    assert any((stem_meta(x) or {}).get("kind") == "virtual_image" for x in viewer2.layers)


def test_kernels_are_prepared_in_the_background(make_napari_viewer, qtbot):
    from napari_stemcluster.widgets._warmup import is_warm

    viewer = make_napari_viewer()
    dock = WorkflowDock(viewer)
    viewer.window.add_dock_widget(dock, name="STEM cluster")
    qtbot.waitUntil(is_warm, timeout=120_000)
    qtbot.waitUntil(lambda: dock.note.isHidden(), timeout=5000)


def test_similarity_takes_the_prefiltered_layer(make_napari_viewer, qtbot, scan4d):
    viewer, dock = _dock(make_napari_viewer, qtbot, scan4d, cluster=False)
    pre, sim = dock.stage("1. Prefilter"), dock.stage("2. Similarity")
    raw = viewer.layers["demo ADF"]
    assert sim._layer_combo.value is raw
    pre._radius.value = 1
    pre.run()
    qtbot.waitUntil(lambda: not pre.runner.running, timeout=WAIT)
    filtered = sim._layer_combo.value
    assert filtered is not raw and stem_meta(filtered)["kind"] == "prefiltered"


def _mark_calls(obj, name, when=lambda *a: True):
    """Record the time of each call of ``obj.<name>`` (before it runs) that ``when`` accepts."""
    import time

    times = []
    original = getattr(obj, name)

    def marked(*args):
        if when(*args):
            times.append(time.perf_counter())
        return original(*args)

    setattr(obj, name, marked)
    return times


def test_jobs_leave_the_event_loop_free(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The longest pause of a 10 ms QTimer while jobs run on a file-backed cube.

    Measured while each job computes: from its start to the delivery of its
    (first) result; starting a job and showing its result are drawing, which
    only the GUI thread can do, and are not measured. A responsiveness
    property with a generous bound; ``benchmarks/interactive.py`` measures
    the interactive figures on a 1 GiB file.
    """
    import time

    import h5py
    from qtpy.QtCore import QTimer

    import napari_stemcluster.widgets._background as background
    from napari_stemcluster.synthetic import make_polycrystal
    from napari_stemcluster.widgets._warmup import start_warm_up

    assert start_warm_up().wait(120)  # compiling is not what is measured here
    monkeypatch.setattr(background, "BACKGROUND_BYTES", 0)  # compute it in the background
    scan = make_polycrystal((64, 64), (64, 64), seed=3)
    src = tmp_path / "scan.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("data", data=np.asarray(scan.cube), chunks=(1, 64, 64, 64))
    viewer = make_napari_viewer(show=True)
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    worst = {}

    def measure(name, start, delivered):
        timer.start()
        start()  # what start() itself draws (new layers, dialogs) is not measured
        qtbot.wait(20)
        ticks.clear()
        t0 = time.perf_counter()
        qtbot.waitUntil(lambda: bool(delivered), timeout=WAIT)
        timer.stop()
        span = [t0, *(t for t in ticks if t <= delivered[0]), delivered[0]]
        worst[name] = float(np.diff(span).max() * 1000)

    opened = []
    ready = []
    original = background.BackgroundImage._on_ready

    def on_ready(self, t):
        ready.append(time.perf_counter())
        return original(self, t)

    monkeypatch.setattr(background.BackgroundImage, "_on_ready", on_ready)
    measure(
        "virtual image",
        lambda: opened.extend(viewer.open(str(src), plugin="napari-stemcluster")),
        ready,
    )
    dock = WorkflowDock(viewer)
    viewer.window.add_dock_widget(dock, name="STEM cluster")
    # docking is measured elsewhere: its canvas and tabs made before the jobs
    qtbot.waitUntil(
        lambda: (
            dock._diffraction is not None
            and dock._diffraction.built
            and len(dock.stages) == len(WORKFLOW_TABS)
        ),
        timeout=WAIT,
    )
    qtbot.wait(300)
    sim, clu = dock.stage("2. Similarity"), dock.stage("3. Clustering")
    measure("similarity", sim.run, _mark_calls(sim.runner, "_on_outcome"))
    qtbot.waitUntil(lambda: not sim.runner.running, timeout=WAIT)
    clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
    clu._threshold.value = 0.85
    clu.update_preview()  # the slider's live preview is not the job
    qtbot.wait(300)
    measure("clustering", clu.run, _mark_calls(clu.runner, "_on_outcome"))
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    vd = dock.diffraction.virtual
    coarse = _mark_calls(vd, "_on_image")
    measure("virtual detector", lambda: setattr(vd.controls.enabled_box, "value", True), coarse)
    qtbot.waitUntil(lambda: vd._job is None, timeout=WAIT)
    print("longest event-loop pause per job (ms):", worst)
    assert max(worst.values()) < 250, worst


def test_features_table_shows_the_label_once(make_napari_viewer, qtbot, scan4d):
    from napari_builtins._qt.features_table import FeaturesTable
    from qtpy.QtCore import Qt

    viewer, dock = _dock(make_napari_viewer, qtbot, scan4d)
    layer = dock.stage("3. Clustering").labels_layer
    viewer.layers.selection.active = layer
    table = FeaturesTable(viewer)
    model = table.table.model().sourceModel()
    headers = [
        str(model.headerData(i, Qt.Orientation.Horizontal)) for i in range(model.columnCount())
    ]
    assert len({h.lower() for h in headers}) == len(headers), headers  # no "Index" and "index"
    assert "Index" in " ".join(headers) and "size" in headers
    # row k is label k: napari's hover status shows that label's own size
    sizes = np.bincount(layer.data.ravel())
    assert list(layer.features["size"]) == list(sizes)
    label = int(np.argmax(sizes[1:])) + 1
    rx, ry = np.argwhere(layer.data == label)[0]
    status = layer._get_properties(layer.data_to_world((rx, ry)), world=True)
    assert f"size: {sizes[label]}" in status
    # an edit updates the table with the same layout
    new = int(layer.data.max()) + 1
    layer.data[0:2, 0:2] = new
    layer.events.paint(value=[])
    qtbot.waitUntil(lambda: len(layer.features) == new + 1, timeout=5000)
    assert layer.features["size"][new] == 4 and "index" not in layer.features


def _results_with_source(tmp_path, cube, name="scan.h5"):
    """A data file and a results file made from it, in ``tmp_path``."""
    import h5py

    from napari_stemcluster.core import segment
    from napari_stemcluster.io import write_results

    src = tmp_path / name
    with h5py.File(src, "w") as f:
        f["data"] = cube
    result = segment(cube, threshold=0.8, min_cluster_size=3)
    out = write_results(tmp_path / "res.h5", result, source=src, source_dtype=cube.dtype)
    return src, out, result


def _notifications(monkeypatch):
    from napari.utils.notifications import notification_manager

    seen = []
    monkeypatch.setattr(notification_manager, "dispatch", seen.append)
    return seen


def test_results_find_their_moved_data_file(
    make_napari_viewer, qtbot, scan4d, tmp_path, monkeypatch
):
    import shutil

    import napari_stemcluster._reader as reader

    cube = np.asarray(scan4d.cube)
    first = tmp_path / "first"
    first.mkdir()
    src, _out, result = _results_with_source(first, cube)
    # both moved to another folder: re-attached silently (same name, shape and dtype)
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    seen = _notifications(monkeypatch)
    viewer = make_napari_viewer()
    layers = viewer.open(str(moved / "res.h5"), plugin="napari-stemcluster")
    assert [type(x).__name__ for x in layers] == ["Image", "Labels", "Image"]
    meta = stem_meta(layers[1])
    assert meta["cube"] is not None and meta["source"] == str(moved / "scan.h5")
    assert not [n for n in seen if "not found" in str(n.message)]
    # a file of the same name but another dtype beside it is not taken: the user is asked
    (moved / "scan.h5").unlink()
    import h5py

    with h5py.File(moved / "scan.h5", "w") as f:
        f["data"] = cube.astype(np.float32)
    (moved / "elsewhere").mkdir()
    real = moved / "elsewhere" / "renamed.h5"
    with h5py.File(real, "w") as f:
        f["data"] = cube
    viewer2 = make_napari_viewer()
    asked = []
    monkeypatch.setattr(
        reader, "ask_data_file", lambda parent, name, source: asked.append(source) or str(real)
    )
    layers2 = viewer2.open(str(moved / "res.h5"), plugin="napari-stemcluster")
    assert [type(x).__name__ for x in layers2] == ["Labels", "Image"]
    seg = layers2[0]
    assert stem_meta(seg)["cube"] is None
    (offer,) = [n for n in seen if "not found" in str(n.message)]
    assert str(src) in str(offer.message) and not asked  # nothing blocks until asked
    ((title, locate),) = offer.actions
    assert title.startswith("Locate")
    locate(None)
    assert asked == [str(src)]
    assert stem_meta(seg)["cube"] is not None and stem_meta(seg)["source"] == str(real)
    assert stem_meta(layers2[1])["cube"] is not None  # the similarity map too
    data = [x for x in viewer2.layers if (stem_meta(x) or {}).get("kind") == "virtual_image"]
    assert len(data) == 1
    # the data are usable: patterns and the stored averages
    dock = WorkflowDock(viewer2)
    viewer2.window.add_dock_widget(dock, name="STEM cluster")
    assert dock.diffraction.cluster_layer is seg and dock.diffraction.state is not None
    assert dock.stage("Correct")._merge.enabled
    np.testing.assert_allclose(
        dock.diffraction.state.mean(0, 1), result.cluster_means[0], rtol=1e-6
    )


def _gib_cube_file(path):
    """A 1 GiB HDF5 cube: 128 x 256 scan of 128 x 128 uint16 patterns (contiguous).

    The 64 x 64 polycrystal, its patterns enlarged to 128 x 128 and the
    scan tiled 2 x 4 (grains repeat; written row block by row block).
    """
    import h5py

    from napari_stemcluster.synthetic import make_polycrystal

    small = np.asarray(make_polycrystal((64, 64), (64, 64), seed=3).cube)
    big = small.repeat(2, axis=2).repeat(2, axis=3)  # 64 MiB
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", (128, 256, 128, 128), np.uint16)
        for i in range(2):
            for j in range(4):
                ds[64 * i : 64 * (i + 1), 64 * j : 64 * (j + 1)] = big
    return big


def _file_mean(path, labels, label):
    """Mean pattern of ``label`` read from the file one scan row at a time (float64)."""
    import h5py

    total, n = 0.0, 0
    with h5py.File(path, "r") as f:
        for row in np.unique(np.nonzero(labels == label)[0]):
            members = labels[row] == label
            total = total + f["data"][row][members].sum(axis=0, dtype=np.float64)
            n += int(members.sum())
    return total / n


def test_the_workflow_on_a_gib_file_leaves_the_event_loop_free(make_napari_viewer, qtbot, tmp_path):
    """The longest pause of a 10 ms QTimer through the workflow on a 1 GiB file-backed cube.

    Each action is measured from its call until the events it causes have
    been processed (half a second later): opening the file (its virtual
    image computed in the background), docking the workflow (the canvas is
    made one layer per event-loop turn, each layer's shaders compiled in a
    turn after it, no full garbage collection inside a step), the
    similarity and clustering jobs
    with the first drawing of their layers, docking a second diffraction
    viewer, and saving edited labels from napari's File menu (the writer
    takes the cluster averages the viewer keeps, it does not read the cube
    again). The background virtual image is bounded at 250 ms. Docking and
    drawing new layers are napari building visuals and OpenGL compiling
    their shaders, which Qt allows only in the GUI thread: bounded
    generously here (the software renderer on a busy machine; docking took
    8-18 s before the canvas was made in steps, 0.5-0.6 s on a quiet machine
    before the compiling had turns of its own and the garbage collection was
    held off, up to 2.7 s with these tests sharing the 2 cores with a load
    average of 11): docking at 4 s, the jobs at 3 s, saving at 1.5 s.
    ``test_jobs_leave_the_event_loop_free`` bounds the jobs' computing at
    250 ms; ``benchmarks/interactive.py`` measures all of it on a 2 GiB file.
    """
    import time

    from qtpy.QtCore import QTimer

    from napari_stemcluster.io import read_results
    from napari_stemcluster.widgets import DiffractionViewer
    from napari_stemcluster.widgets._background import BackgroundImage
    from napari_stemcluster.widgets._warmup import start_warm_up

    assert start_warm_up().wait(300)  # compiling is not what is measured here
    src = tmp_path / "scan.h5"
    _gib_cube_file(src)
    assert src.stat().st_size >= 2**30
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    worst = {}

    def measure(name, action, until=lambda: True):
        timer.start()
        qtbot.wait(50)
        ticks.clear()
        t0 = time.perf_counter()
        out = action()
        qtbot.waitUntil(until, timeout=4 * WAIT)
        qtbot.wait(500)
        t1 = time.perf_counter()
        timer.stop()
        worst[name] = float(np.diff([t0, *ticks, t1]).max() * 1000)
        print(f"{name}: {t1 - t0:.1f} s, longest pause {worst[name]:.0f} ms")
        return out

    opened = measure("opening the file", lambda: viewer.open(str(src), plugin="napari-stemcluster"))
    data = opened[0]
    if isinstance(data.data, BackgroundImage):
        measure("virtual image in the background", lambda: None, lambda: data.data.ready(0))
    built, docks = [], []

    def dock_workflow():
        dock = WorkflowDock(viewer)
        built.append((dock._diffraction, dict(dock.stages)))  # what the constructor built
        docks.append(dock)
        return viewer.window.add_dock_widget(dock, name="STEM cluster").widget()

    def dock_complete():
        dock = docks[0]
        dif = dock._diffraction
        return dif is not None and dif.built and len(dock.stages) == len(WORKFLOW_TABS)

    dock = measure("first docking of the workflow", dock_workflow, dock_complete)
    canvas, stages = built[0]
    assert canvas is None and list(stages) == ["Open"]  # the rest came in later turns
    assert dock.diffraction.built
    sim, clu = dock.stage("2. Similarity"), dock.stage("3. Clustering")
    sim._inner.value, sim._outer.value = 0.0, 40.0
    measure("similarity job", sim.run, lambda: not sim.runner.running)
    clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
    clu._threshold.value = 0.85
    measure("first clustering, its new layers drawn", clu.run, lambda: not clu.runner.running)
    layer = clu.labels_layer
    qtbot.waitUntil(lambda: not link_for(layer).runner.running, timeout=4 * WAIT)
    difs = []

    def dock_viewer():
        difs.append(DiffractionViewer(viewer))
        viewer.window.add_dock_widget(difs[0], name="Diffraction")

    measure("docking a diffraction viewer", dock_viewer, lambda: difs[0].built)
    dif = difs[0]
    assert dif.cluster_layer is layer
    # an edit, then File > Save Selected Layers
    label = int(layer.data.max())
    layer.data[:6, :6] = label
    layer.events.paint(value=[])
    qtbot.wait(50)
    viewer.layers.selection.active = layer
    out = tmp_path / "edited.h5"
    measure(
        "saving edited labels (File menu)",
        lambda: viewer.layers.save(str(out), selected=True, plugin="napari-stemcluster"),
    )
    saved, _ = read_results(out)
    np.testing.assert_array_equal(saved.labels, layer.data)
    np.testing.assert_allclose(
        saved.cluster_means[label - 1], _file_mean(src, layer.data, label), rtol=1e-5
    )
    print("longest event-loop pause (ms):", {k: round(v) for k, v in worst.items()})
    if "virtual image in the background" in worst:  # a pure background job
        assert worst["virtual image in the background"] < 250, worst
    # The rest includes napari and OpenGL making visuals in the GUI thread
    # (and, on a busy machine, threads competing for the cores): generous
    # bounds, met with a wide margin on a quiet machine (0.1-1.2 s), that the
    # previous pauses did not meet (saving 3 s, the jobs 2.5-3 s, docking
    # 8-18 s). The jobs' results arrive one new layer per turn.
    assert worst["saving edited labels (File menu)"] < 1500, worst
    assert worst["first docking of the workflow"] < 4000, worst
    assert worst["docking a diffraction viewer"] < 4000, worst
    assert worst["similarity job"] < 3000, worst
    assert worst["first clustering, its new layers drawn"] < 3000, worst
    assert max(worst.values()) < 5000, worst


def test_undo_at_another_time_step_goes_there_and_says_so(
    make_napari_viewer, qtbot, scan5d, monkeypatch
):
    import napari_stemcluster.widgets._link as link_module

    viewer, dock = _dock(make_napari_viewer, qtbot, scan5d)
    layer = dock.stage("3. Clustering").labels_layer
    assert layer.ndim == 3
    cor = dock.stage("Correct")
    cor._layer_combo.value = layer
    said = []
    monkeypatch.setattr("napari.utils.notifications.show_info", said.append)
    viewer.dims.set_current_step(0, 0)
    a, b = (int(v) for v in np.unique(layer.data[0][layer.data[0] > 0])[:2])
    before = layer.data[0].copy()
    cor._merge_list.value = f"{a}, {b}"
    assert cor.merge() == min(a, b)
    assert not (layer.data[0] == max(a, b)).any()
    viewer.dims.set_current_step(0, 2)  # the user moves on in time, then presses Ctrl-Z
    assert link_module.layer_step(viewer, layer) == 2
    layer.undo()
    link_for(layer).flush()
    np.testing.assert_array_equal(layer.data[0], before)
    assert link_module.layer_step(viewer, layer) == 0  # the slider went to the undone step
    assert any("time step 0" in m for m in said), said
    # the Correct tab's undo names the step too
    cor._merge_list.value = f"{a}, {b}"
    cor.merge()
    viewer.dims.set_current_step(0, 1)
    assert cor.undo() == (0,) and "time step(s) 0" in cor._status.value
