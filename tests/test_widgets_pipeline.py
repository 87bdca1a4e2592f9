"""Stage widgets (prefilter, similarity & mask, clustering) driven programmatically."""

import gc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stemcluster._layers import sample_to_layers
from napari_stemcluster.config import load_params
from napari_stemcluster.core import (
    cluster_sums,
    cluster_table,
    grow_regions,
    mean_similarity,
    neighbor_similarity,
    real_space_mask,
)
from napari_stemcluster.core.masking import dark_field_image
from napari_stemcluster.core.params import DEFAULTS
from napari_stemcluster.core.prefilter import correlative_prefilter
from napari_stemcluster.widgets import ClusteringWidget, PrefilterWidget, SimilarityWidget
from napari_stemcluster.widgets._common import stem_meta
from napari_stemcluster.widgets._link import link_for

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

#: Milliseconds to wait for a background job.
WAIT = 30_000


def _viewer_with(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_to_layers(sample, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    return viewer, viewer.layers["demo ADF"]


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT)


def _similarity(qtbot, viewer, data_layer, inner=2.0, outer=14.0, sigma=0.0):
    w = SimilarityWidget(viewer)
    w._layer_combo.value = data_layer
    w._inner.value, w._outer.value, w._sigma.value = inner, outer, sigma
    w.run()
    _wait(qtbot, w)
    assert w.runner.last_error is None
    return w


def test_prefilter_in_memory_keeps_the_original(make_napari_viewer, qtbot, scan4d):
    viewer, data = _viewer_with(make_napari_viewer, scan4d)
    w = PrefilterWidget(viewer)
    assert w._layer_combo.value is data  # only cube layers are offered
    assert [c for c in w._layer_combo.choices] == [data]
    w._sigma.value, w._radius.value, w._corr_range.value = 1.0, 2, (0.5, 0.9)
    w.run()
    _wait(qtbot, w)
    out = w.last_layer
    assert out is not None and out is not data and data in viewer.layers
    meta = stem_meta(out)
    assert meta["kind"] == "prefiltered" and not meta["on_disk"]
    want = correlative_prefilter(scan4d.cube, sigma=1.0, radius=2, corr_range=(0.5, 0.9))
    np.testing.assert_array_equal(meta["cube"], want)
    assert meta["raw_cube"] is stem_meta(data)["cube"]
    assert out.data.shape == (32, 32) and np.ptp(out.data) > 0
    np.testing.assert_array_equal(out.scale, data.scale)
    assert meta["prefilter"] == {
        "sigma": 1.0,
        "radius": 2,
        "q_step": 2,
        "corr_range": [0.5, 0.9],
        "edge": None,
    }
    assert "in memory" in w._status.value


def test_prefilter_current_step_on_disk(make_napari_viewer, qtbot, scan5d, tmp_path):
    viewer, _data = _viewer_with(make_napari_viewer, scan5d)
    viewer.dims.set_current_step(0, 2)
    w = PrefilterWidget(viewer)
    w.memory_limit = 0  # force the temporary-file path
    w._radius.value, w._scope.value = 1, "current time step"
    w._edge_auto.value, w._edge.value = False, 2
    w.run()
    _wait(qtbot, w)
    meta = stem_meta(w.last_layer)
    assert meta["on_disk"] and meta["time_step"] == 2
    cube = meta["cube"]
    assert hasattr(cube, "dask") and cube.shape == (32, 32, 32, 32)  # lazy, one step
    want = correlative_prefilter(scan5d.cube[2], radius=1, edge=2)
    np.testing.assert_array_equal(np.asarray(cube), want)
    # the temporary file disappears with the layer
    store = Path(meta["store"])
    assert store.is_file() and store.stat().st_size >= want.nbytes
    folder = store.parent
    viewer.layers.remove(w.last_layer)
    w.last_layer = None
    del meta, cube
    gc.collect()
    qtbot.waitUntil(lambda: not folder.exists(), timeout=5000)


def test_similarity_layers_and_mask_methods(make_napari_viewer, qtbot, scan4d):
    viewer, data = _viewer_with(make_napari_viewer, scan4d)
    w = _similarity(qtbot, viewer, data, inner=2.0, outer=14.0, sigma=1.0)
    sim_layer, mask_layer = w.similarity_layer, w.mask_layer
    want_sim = neighbor_similarity(scan4d.cube, (2.0, 14.0), 1.0)
    meta = stem_meta(sim_layer)
    np.testing.assert_allclose(meta["similarity"], want_sim, rtol=1e-6)
    want_ms = mean_similarity(want_sim)
    np.testing.assert_allclose(sim_layer.data, want_ms, rtol=1e-6)
    assert meta["params"] == {"q_mask": [2.0, 14.0], "sigma": 1.0, "prefilter": None}
    # the default, as in core: the dark-field image of the same pass, thresholded
    assert w._method.value == "dark_field" == DEFAULTS["real_mask"]
    signal = dark_field_image(scan4d.cube)
    np.testing.assert_array_equal(meta["signal"], signal)
    np.testing.assert_array_equal(
        mask_layer.data, real_space_mask(want_ms, "dark_field", signal=signal)
    )
    assert stem_meta(mask_layer)["real_mask"] == "dark_field"
    w._method.value = "triangle"
    np.testing.assert_array_equal(mask_layer.data, real_space_mask(want_ms, "triangle"))
    assert 0 < mask_layer.data.sum() < mask_layer.data.size
    w._method.value = "otsu"
    np.testing.assert_array_equal(mask_layer.data, real_space_mask(want_ms, "otsu"))
    w._method.value = "manual"
    w._value.value = 0.6
    np.testing.assert_array_equal(mask_layer.data, want_ms > 0.6)
    w._min_size.value = 20
    np.testing.assert_array_equal(
        mask_layer.data, real_space_mask(want_ms, 0.6, min_size=20).astype(np.uint8)
    )
    assert stem_meta(mask_layer)["real_mask"] == pytest.approx(0.6)
    # running again updates the same two layers
    n_layers = len(viewer.layers)
    w.run()
    _wait(qtbot, w)
    assert len(viewer.layers) == n_layers and w.similarity_layer is sim_layer


def test_mask_of_prefiltered_data_thresholds_the_raw_map(make_napari_viewer, qtbot, scan4d):
    viewer, _ = _viewer_with(make_napari_viewer, scan4d)
    pre = PrefilterWidget(viewer)
    pre._sigma.value, pre._radius.value = 1.0, 2
    pre.run()
    _wait(qtbot, pre)
    w = _similarity(qtbot, viewer, pre.last_layer, inner=2.0, outer=14.0)
    w._method.value = "triangle"
    filtered = stem_meta(pre.last_layer)["cube"]
    ms_pre = mean_similarity(neighbor_similarity(filtered, (2.0, 14.0)))
    ms_raw = mean_similarity(neighbor_similarity(scan4d.cube, (2.0, 14.0)))
    np.testing.assert_allclose(w.similarity_layer.data, ms_pre, rtol=1e-6)  # shown: prefiltered
    np.testing.assert_array_equal(w.mask_layer.data, real_space_mask(ms_raw, "triangle"))
    w._method.value = "otsu"  # changing the method keeps using the raw map
    np.testing.assert_array_equal(w.mask_layer.data, real_space_mask(ms_raw, "otsu"))


def _paper_rules(w):
    """The paper's rules: a fixed threshold and the pair linkage."""
    w._mode.value, w._linkage.value = "manual", "pair"


def _cluster(qtbot, viewer, sim_widget, threshold=0.8, min_size=3):
    w = ClusteringWidget(viewer)
    _paper_rules(w)
    w.reset_choices()
    w._sim_combo.value = sim_widget.similarity_layer
    w._mask_combo.value = sim_widget.mask_layer
    w._threshold.value, w._min_size.value = threshold, min_size
    w.run()
    _wait(qtbot, w)
    assert w.runner.last_error is None
    return w


def test_clustering_preview_labels_features_and_averages(make_napari_viewer, qtbot, scan4d):
    viewer, data = _viewer_with(make_napari_viewer, scan4d)
    s = _similarity(qtbot, viewer, data)
    s._method.value = "triangle"
    w = ClusteringWidget(viewer)
    _paper_rules(w)
    assert w._sim_combo.value is s.similarity_layer
    assert w._mask_combo.value is s.mask_layer  # picked automatically
    sim = stem_meta(s.similarity_layer)["similarity"]
    ms = s.similarity_layer.data
    mask = s.mask_layer.data > 0
    for thr in (0.7, 0.95):
        w._threshold.value = thr
        w.preview_count = None
        qtbot.waitUntil(lambda: w.preview_count is not None, timeout=5000)
        want, _ = grow_regions(sim, thr, mean_similarity=ms, mask=mask, min_cluster_size=5)
        assert w.preview_count == want.max()
        assert f"{want.max()} clusters" in w._preview.value
    w._threshold.value, w._min_size.value = 0.8, 3
    w.run()
    _wait(qtbot, w)
    layer = w.labels_layer
    want, _ = grow_regions(sim, 0.8, mean_similarity=ms, mask=mask, min_cluster_size=3)
    np.testing.assert_array_equal(layer.data, want)
    n = int(want.max())
    assert n >= 3
    table = cluster_table(want, ms, n)
    assert "index" not in layer.features  # napari's table shows the row number (= label)
    np.testing.assert_array_equal(layer.features["size"][1:], table.size)
    np.testing.assert_array_equal(layer.features["seed_rx"][1:], table.seed[:, 0])
    assert layer.features["size"][0] == np.count_nonzero(want == 0)
    np.testing.assert_allclose(layer.features["mean_similarity"][1:], table.mean_similarity)
    np.testing.assert_array_equal(w.seeds_layer.data, table.seed)
    state = link_for(layer).state
    sums, counts = cluster_sums(scan4d.cube, want, n)
    np.testing.assert_allclose(state.sums(0)[0], sums)
    result = stem_meta(layer)["result"]
    np.testing.assert_allclose(result.cluster_means, sums / counts[:, None, None], rtol=1e-6)
    assert result.params["threshold"] == pytest.approx(0.8)
    assert "clusters" in w._status.value


def test_clustering_time_series_follows_time(make_napari_viewer, qtbot, scan5d):
    viewer, data = _viewer_with(make_napari_viewer, scan5d)
    s = _similarity(qtbot, viewer, data)
    sim = stem_meta(s.similarity_layer)["similarity"]
    assert sim.shape == (3, 32, 32, 8)
    w = _cluster(qtbot, viewer, s)
    layer = w.labels_layer
    assert layer.data.shape == (3, 32, 32)
    ms, mask = s.similarity_layer.data, s.mask_layer.data > 0
    for t in range(3):
        want, _ = grow_regions(sim[t], 0.8, mean_similarity=ms[t], mask=mask[t], min_cluster_size=3)
        np.testing.assert_array_equal(layer.data[t], want)
    assert w.seeds_layer.data.shape[1] == 3  # (t, rx, ry)
    for t in (2, 0):
        viewer.dims.set_current_step(0, t)
        table = cluster_table(layer.data[t], ms[t])
        np.testing.assert_array_equal(layer.features["size"][1:], table.size)
    link = link_for(layer)
    qtbot.waitUntil(lambda: not link.runner.running, timeout=WAIT)
    for t in range(3):
        assert link.state.has_sums(t)


def test_rerun_asks_before_replacing_an_edited_layer(make_napari_viewer, qtbot, scan4d):
    viewer, data = _viewer_with(make_napari_viewer, scan4d)
    s = _similarity(qtbot, viewer, data)
    w = _cluster(qtbot, viewer, s)
    first = w.labels_layer
    questions = []

    def answer(reply):
        def confirm(parent, text):
            questions.append(text)
            return reply

        return confirm

    w.confirm = answer("replace")
    w.run()  # not edited: replaced without asking
    _wait(qtbot, w)
    assert questions == [] and w.labels_layer is first
    first.data_setitem((np.array([5]), np.array([5])), 77)
    link_for(first).flush()
    assert link_for(first).state.edited
    w.confirm = answer("cancel")
    assert w.run() is None
    assert len(questions) == 1 and "hand edits" in questions[0]
    assert first.data[5, 5] == 77
    w.confirm = answer("new")
    w.run()
    _wait(qtbot, w)
    assert w.labels_layer is not first and first in viewer.layers
    assert first.data[5, 5] == 77 and w.labels_layer.data[5, 5] != 77
    second = w.labels_layer
    second.data_setitem((np.array([5]), np.array([6])), 78)
    link_for(second).flush()
    w.confirm = answer("replace")
    w._threshold.value = 0.9
    w.run()
    _wait(qtbot, w)
    assert w.labels_layer is second and second.data[5, 6] != 78
    assert not link_for(second).state.edited


def test_export_parameters_as_cli_config(make_napari_viewer, qtbot, scan4d, tmp_path):
    viewer, _data = _viewer_with(make_napari_viewer, scan4d)
    p = PrefilterWidget(viewer)
    p._radius.value, p._corr_range.value = 1, (0.6, 0.9)
    p.run()
    _wait(qtbot, p)
    s = _similarity(qtbot, viewer, p.last_layer, inner=3.0, outer=12.0, sigma=0.5)
    s._method.value = "otsu"
    s._hole_size.value = 4
    w = ClusteringWidget(viewer)
    w._sim_combo.value, w._mask_combo.value = s.similarity_layer, s.mask_layer
    assert w.params()["threshold"] == "auto" and w.params()["linkage"] == "mean"
    _paper_rules(w)
    w._threshold.value, w._min_size.value, w._average.value = 0.85, 7, "prefiltered"
    path = tmp_path / "params.toml"
    w.ask_path = lambda parent: str(path)
    w._export.changed.emit(True)  # the button
    got = load_params(path)
    assert got["threshold"] == pytest.approx(0.85)
    assert got["min_cluster_size"] == 7
    assert got["q_mask"] == [3.0, 12.0] and got["sigma"] == 0.5
    assert got["prefilter"] is True and got["prefilter_radius"] == 1
    assert got["corr_range"] == [0.6, 0.9]
    assert got["real_mask"] == "otsu" and got["mask_hole_size"] == 4
    assert got["average"] == "prefiltered" and got["linkage"] == "pair"


class _SlowCube:
    """A cube that takes a while per block of rows, to cancel mid-way."""

    def __init__(self, cube):
        self._cube = cube
        self.shape, self.dtype, self.ndim = cube.shape, cube.dtype, cube.ndim

    def __getitem__(self, key):
        import time

        time.sleep(0.05)
        return self._cube[key]


def test_cancel_stops_the_worker(make_napari_viewer, qtbot, scan4d):
    viewer, data = _viewer_with(make_napari_viewer, scan4d)
    stem_meta(data)["cube"] = _SlowCube(scan4d.cube)
    w = SimilarityWidget(viewer)
    n_layers = len(viewer.layers)
    from napari_stemcluster.core import similarity as simmod

    calls = []
    original = simmod.block_rows
    simmod.block_rows = lambda *a, **k: 1  # one scan row per progress call
    try:
        w.run()
        assert w._cancel.enabled and not w._run.enabled
        qtbot.waitUntil(lambda: w.runner._pbar_n > 0, timeout=WAIT)
        calls.append(w.runner._pbar_n)
        w._cancel.changed.emit(True)  # the Cancel button
        _wait(qtbot, w)
    finally:
        simmod.block_rows = original
    assert w.runner.last_cancelled and w.runner.last_error is None
    assert len(viewer.layers) == n_layers and w.similarity_layer is None
    assert calls[0] < 1000  # stopped before the end
    assert w._run.enabled and not w._cancel.enabled


def test_errors_become_notifications(make_napari_viewer, qtbot, scan4d, monkeypatch):
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    viewer, data = _viewer_with(make_napari_viewer, scan4d)
    bad = scan4d.cube.astype(np.float32)
    bad[3, 4, 5, 6] = np.nan
    stem_meta(data)["cube"] = bad
    w = PrefilterWidget(viewer)
    w._radius.value = 1
    n_layers = len(viewer.layers)
    w.run()
    _wait(qtbot, w)
    assert isinstance(w.runner.last_error, ValueError)
    assert len(shown) == 1 and "Prefilter failed" in shown[0] and "NaN" in shown[0]
    assert len(viewer.layers) == n_layers
    w._corr_range.value = (0.9, 0.9)
    assert w.run() is None and "Rmin < Rmax" in shown[-1]


def test_parameters_are_remembered(make_napari_viewer, qtbot, scan4d):
    viewer, _ = _viewer_with(make_napari_viewer, scan4d)
    w = ClusteringWidget(viewer)
    w._threshold.value, w._min_size.value, w._average.value = 0.77, 11, "prefiltered"
    s = SimilarityWidget(viewer)
    s._inner.value, s._method.value = 4.0, "otsu"
    p = PrefilterWidget(viewer)
    p._corr_range.value = (0.7, 0.8)
    w2, s2, p2 = ClusteringWidget(viewer), SimilarityWidget(viewer), PrefilterWidget(viewer)
    assert w2._threshold.value == pytest.approx(0.77) and w2._min_size.value == 11
    assert w2._average.value == "prefiltered"
    assert s2._inner.value == 4.0 and s2._method.value == "otsu"
    assert p2._corr_range.value == pytest.approx((0.7, 0.8))


def test_sample_data_and_plugin_menu_widgets(make_napari_viewer, qtbot):
    """The bundled 5D sample through the widgets as docked from the Plugins menu."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-stemcluster", "growth_series")
    data = viewer.layers[0]
    assert stem_meta(data)["cube"].ndim == 5
    _, sim = viewer.window.add_plugin_dock_widget("napari-stemcluster", "2. Similarity & mask")
    _, clu = viewer.window.add_plugin_dock_widget("napari-stemcluster", "3. Clustering")
    _, dif = viewer.window.add_plugin_dock_widget("napari-stemcluster", "Diffraction viewer")
    assert isinstance(sim, SimilarityWidget) and isinstance(clu, ClusteringWidget)
    assert sim._layer_combo.value is data and dif.data_layer is data
    sim._inner.value, sim._outer.value = 3.0, 20.0
    sim.run()
    _wait(qtbot, sim)
    assert clu._sim_combo.value is sim.similarity_layer
    assert clu._mask_combo.value is sim.mask_layer
    clu._threshold.value = 0.85
    clu.run()
    _wait(qtbot, clu)
    layer = clu.labels_layer
    assert layer.data.shape == data.data.shape
    assert dif.cluster_layer is layer
    grains = viewer.layers["true grains"].data
    t = viewer.dims.current_step[0]
    inside = layer.data[t][(grains[t] > 0) & (layer.data[t] > 0)]
    label = int(np.bincount(inside).argmax())
    rx, ry = np.argwhere(layer.data[t] == label)[0]
    viewer.cursor.position = tuple(layer.data_to_world((t, rx, ry)))
    qtbot.waitUntil(lambda: dif.label == label, timeout=WAIT)
    cube = np.asarray(stem_meta(data)["cube"][t])
    np.testing.assert_allclose(dif.average, cube[layer.data[t] == label].mean(0), rtol=1e-5)
    qtbot.waitUntil(lambda: not dif.peaks_pending, timeout=WAIT)  # found in a worker
    assert len(dif.peaks) >= 3
