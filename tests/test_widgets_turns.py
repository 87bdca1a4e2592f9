"""What a job's new layers and plots cost the GUI thread: paid aside or in later turns."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stemcluster.widgets._common import JobRunner, prepare_visuals
from napari_stemcluster.widgets._threshold_plot import ThresholdPlot, threshold_stats

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

WAIT = 30_000


def _labels_of(axis):
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def _num(s):
    return float(s.replace("\N{MINUS SIGN}", "-"))


def test_log_axes_of_the_threshold_plot_have_plain_text_labels(qtbot):
    plot = ThresholdPlot()
    qtbot.addWidget(plot.canvas)
    rng = np.random.default_rng(0)
    plot.set_histogram(np.concatenate([rng.uniform(0.3, 1.0, 20_000), np.full(3, 0.31)]))
    lab = np.repeat(np.arange(1, 41), np.arange(1, 41) ** 2)[None, :]  # sizes 1 .. 1600
    stats = threshold_stats(lab, np.ones(lab.shape), None, 0.9, 1)
    plot.set_threshold(0.9, auto=0.85)
    plot.set_clusters(stats, np.ones((40, 4)))
    plot.figure.canvas.draw()
    ylabels = _labels_of(plot.hist_ax.yaxis)
    xlabels = _labels_of(plot.scatter_ax.xaxis)
    assert plot.hist_ax.get_yscale() == "log" and plot.scatter_ax.get_xscale() == "log"
    assert ylabels and xlabels
    # no mathtext: its parser is built at the first draw, in the GUI thread
    assert not any("$" in s for s in ylabels + xlabels)
    # the decades are still labelled, as numbers
    ticks = plot.scatter_ax.xaxis.get_majorticklocs()
    lo, hi = plot.scatter_ax.get_xlim()
    shown = [v for v in ticks if lo <= v <= hi]
    values = {_num(s) for s in xlabels}
    assert values >= {float(v) for v in shown if v in (1, 10, 100, 1000)}
    assert {10.0, 100.0} <= values
    assert all(_num(s) > 0 for s in ylabels)


def test_a_job_computes_the_label_outline_patterns_in_its_thread(qtbot, monkeypatch):
    import threading

    from vispy.visuals.line import dash_atlas

    from napari_stemcluster.widgets import _common

    threads = []
    real = dash_atlas.DashAtlas

    class Spy(real):
        def __init__(self, *a, **k):
            threads.append(threading.current_thread())
            super().__init__(*a, **k)

    monkeypatch.setattr(dash_atlas, "DashAtlas", Spy)
    monkeypatch.setattr(_common, "_visuals_prepared", threading.Event())
    runner = JobRunner()
    out = []
    runner.start(lambda progress: 7, description="test", on_returned=out.append)
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT)
    assert out == [7]
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    # once per process: the next job does not build it again
    runner.start(lambda progress: 8, description="test", on_returned=out.append)
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT)
    assert out == [7, 8] and len(threads) == 1
    prepare_visuals()
    assert len(threads) == 1


def test_the_bragg_widget_refreshes_the_viewers_for_new_clusters_in_a_later_turn(
    make_napari_viewer, qtbot, monkeypatch
):
    from napari_stemcluster.widgets import BraggWidget

    viewer = make_napari_viewer()
    w = BraggWidget(viewer)
    assert w.cluster_layer is None
    # a template from the clusters: the viewers' disks change with them
    w._w["template"].value = "central disk of the cluster average"
    previews = []
    monkeypatch.setattr(
        BraggWidget, "update_preview", lambda self, *_: previews.append(self.cluster_layer)
    )
    cube = np.ones((8, 9, 6, 5), np.float32)
    labels = np.zeros((8, 9), np.int32)
    labels[2:5, 3:6] = 1
    meta = {"stemcluster": {"kind": "segmentation", "cube": cube}}
    layer = viewer.add_labels(labels, name="clusters", metadata=meta)
    # chosen at once (no lattices of other clusters kept) ...
    assert w.cluster_layer is layer and w.lattices is None
    # ... but the diffraction viewers are refreshed after the new layer's turn
    assert previews == []
    qtbot.waitUntil(lambda: previews == [layer], timeout=WAIT)
    # a layer removed is dropped from the choices at once
    viewer.layers.remove(layer)
    assert w.cluster_layer is None
    assert layer not in w._w["clusters"].choices
    qtbot.waitUntil(lambda: previews == [layer, None], timeout=WAIT)
    # other layers leave the choice and the viewers alone
    viewer.add_image(np.zeros((8, 9)), name="other")
    qtbot.wait(100)
    assert previews == [layer, None] and w.cluster_layer is None


def test_the_bragg_widget_leaves_viewers_alone_when_nothing_they_take_changes(
    make_napari_viewer, qtbot, monkeypatch
):
    from napari_stemcluster.widgets import BraggWidget, DiffractionViewer

    viewer = make_napari_viewer()
    cube = np.ones((8, 9, 6, 5), np.float32)
    viewer.add_image(cube.sum(axis=(2, 3)), name="scan", metadata={"stemcluster": {"cube": cube}})
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    dif.finish_building()
    w = BraggWidget(viewer)  # the synthetic disk template: nothing from the clusters
    w.update_preview()
    assert dif.bragg_params == w.params() and dif.bragg_lattices is None
    previews = []
    monkeypatch.setattr(
        BraggWidget, "update_preview", lambda self, *_: previews.append(self.cluster_layer)
    )
    labels = np.zeros((8, 9), np.int32)
    labels[2:5, 3:6] = 1
    meta = {"stemcluster": {"kind": "segmentation", "cube": cube}}
    layer = viewer.add_labels(labels, name="clusters", metadata=meta)
    assert w.cluster_layer is layer
    qtbot.wait(150)
    assert previews == []  # the viewer shows the new clusters on its own
    # settings the viewer does not have yet are sent to it
    dif.bragg_params = None
    viewer.add_labels(labels.copy(), name="clusters 2", metadata=meta)
    qtbot.waitUntil(lambda: len(previews) == 1, timeout=WAIT)


def test_a_large_file_is_shown_a_turn_after_napari_adds_it(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    import h5py

    import napari_stemcluster.widgets._background as background
    from napari_stemcluster._reader import read_stem

    monkeypatch.setattr(background, "BACKGROUND_BYTES", 0)  # every file counts as large
    data = np.random.default_rng(0).integers(0, 100, (6, 5, 8, 7)).astype(np.uint16)
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("cube", data=data)
    # no viewer: nothing hidden (a script adding the layer itself sees it)
    ((img, kwargs, _),) = read_stem(str(path))
    assert isinstance(img, background.BackgroundImage) and kwargs.get("visible", True)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-stemcluster")
    # added hidden: its first paint (shaders compiled) is not in the opening's pause
    assert isinstance(layer.data, background.BackgroundImage) and not layer.visible
    qtbot.waitUntil(lambda: layer.visible, timeout=WAIT)
    assert layer.data.wait(0, timeout=30)
    np.testing.assert_array_equal(layer.data[:, :], np.asarray(layer.data))
    lo, hi = layer.contrast_limits
    assert layer.visible and hi > lo and (lo, hi) != (0.0, 1.0)  # from the computed image


def test_the_threshold_plot_draws_once_in_a_later_turn(qtbot):
    plot = ThresholdPlot()
    qtbot.addWidget(plot.canvas)
    draws = []
    plot.canvas.mpl_connect("draw_event", lambda event: draws.append(event))
    qtbot.wait(100)
    draws.clear()
    lab = np.array([[1, 1, 0, 2], [3, 3, 3, 0]])
    stats = threshold_stats(lab, np.full(lab.shape, 0.9), None, 0.8, 1)
    plot.set_histogram(np.linspace(0.2, 1.0, 50))
    plot.set_threshold(0.8)
    plot.set_clusters(stats, np.ones((3, 4)))
    plot.set_clusters(stats, np.ones((3, 4)))  # two updates in a turn: one drawing
    assert draws == []  # not in the turn that made the data
    assert plot._draw_pending  # one drawing asked for
    qtbot.waitUntil(lambda: len(draws) >= 1, timeout=WAIT)
    assert not plot._draw_pending
    assert plot._background is not None  # the ring blits onto the drawn figure
    n = len(draws)
    plot.highlight(2)
    qtbot.wait(100)
    assert len(draws) == n and plot.highlighted == 2


def test_the_diffraction_canvas_is_shown_a_turn_after_it_is_made(make_napari_viewer, qtbot):
    from napari_stemcluster.widgets import DiffractionViewer

    viewer = make_napari_viewer()
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    qtbot.wait(10)
    slot = dif._canvas_slot
    place = dif._layout.indexOf(slot)
    dif._run_step()  # the canvas: made, not shown
    assert not dif.qt_viewer.isVisibleTo(dif) and slot.isVisibleTo(dif)
    dif._run_step()  # shown in the place kept for it
    assert dif.qt_viewer.isVisibleTo(dif) and dif._layout.indexOf(slot) == -1
    assert dif._layout.indexOf(dif.qt_viewer) == place
    dif.finish_building()
    qtbot.wait(50)
    assert dif.qt_viewer.isVisibleTo(dif) and dif.qt_viewer.parent() is dif


def test_glyphs_are_rendered_in_the_main_canvas_font_without_a_paint(make_napari_viewer):
    from napari_stemcluster.widgets._diffraction import preload_glyphs

    viewer = make_napari_viewer()
    info = viewer.window._qt_viewer.canvas._font_info
    font = info.font_manager.get_font(info.face)
    new = "".join(c for c in "Åσ0µ" if c not in font._glyphs)
    preload_glyphs(viewer, new)
    assert set(new) <= set(font._glyphs)
    glyph = font._glyphs[new[0]]
    assert glyph["size"][0] > 0 and len(glyph["texcoords"]) == 4
    preload_glyphs(object(), "x")  # not a viewer: nothing, no error


def _overlay_visuals(qt_viewer, overlay):
    return qt_viewer.canvas._viewer_overlay_to_visual.get(overlay, [])


def _run_until(dif, name):
    """Run the diffraction viewer's steps up to and including the step ``name``."""
    while dif._pending:
        step = dif._pending[0]
        dif._run_step()
        if getattr(step, "__name__", "") == name:
            return
    raise AssertionError(f"no step {name}")


def test_the_overlay_visuals_are_made_hidden_and_shown_one_per_turn(make_napari_viewer, qtbot):
    from napari_stemcluster.widgets import DiffractionViewer
    from napari_stemcluster.widgets._diffraction import _axes, _scale_bar

    viewer = make_napari_viewer()
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    for make, which in (("_make_axes", _axes), ("_make_scale_bars", _scale_bar)):
        _run_until(dif, make)
        overlay = which(dif._model)
        visuals = _overlay_visuals(dif.qt_viewer, overlay)
        assert overlay.visible and len(visuals) == 2  # one per panel
        assert [v.node.visible for v in visuals] == [False, False]
        dif._run_step()
        assert [v.node.visible for v in visuals] == [True, False]
        dif._run_step()
        assert [v.node.visible for v in visuals] == [True, True]
    main = viewer.window._qt_viewer
    _run_until(dif, "_make_main_scale_bar")
    visuals = _overlay_visuals(main, _scale_bar(viewer))
    assert _scale_bar(viewer).visible and len(visuals) == 1 and not visuals[0].node.visible
    dif._run_step()
    assert visuals[0].node.visible
    dif.finish_building()
    for qt_viewer, model in ((dif.qt_viewer, dif._model), (main, viewer)):
        for overlay in (_axes(model), _scale_bar(model)):  # every visual as its overlay says
            for visual in _overlay_visuals(qt_viewer, overlay):
                assert visual.node.visible == overlay.visible


def test_making_the_diffraction_canvas_leaves_the_shortcuts_and_tooltips_as_they_were(
    make_napari_viewer, qtbot
):
    from napari.utils.action_manager import action_manager

    from napari_stemcluster.widgets import DiffractionViewer

    viewer = make_napari_viewer()
    before = {name: list(keys) for name, keys in action_manager._shortcuts.items()}
    seen = []

    def record(event):
        seen.append(event.name)

    action_manager.events.shortcut_changed.connect(record)
    try:
        dif = DiffractionViewer(viewer)
        viewer.window.add_dock_widget(dif, name="Diffraction")
        dif._run_step()  # the canvas (napari binds every shortcut again)
    finally:
        action_manager.events.shortcut_changed.disconnect(record)
    assert seen == []  # nothing told to refresh
    assert {name: list(keys) for name, keys in action_manager._shortcuts.items()} == before
    main, new = viewer.window._qt_viewer.viewerButtons, dif.qt_viewer.viewerButtons
    for button in ("resetViewButton", "gridViewButton", "ndisplayButton"):
        tip = getattr(new, button).toolTip()
        assert tip and tip == getattr(main, button).toolTip(), button
    assert any("(" in getattr(new, b).toolTip() for b in ("resetViewButton", "gridViewButton"))


def test_a_new_bragg_widget_refreshes_the_viewers_once_in_a_later_turn(
    make_napari_viewer, qtbot, monkeypatch
):
    from napari_stemcluster.widgets import BraggWidget, DiffractionViewer

    viewer = make_napari_viewer()
    cube = np.ones((8, 9, 6, 5), np.float32)
    viewer.add_image(cube.sum(axis=(2, 3)), name="scan", metadata={"stemcluster": {"cube": cube}})
    labels = np.zeros((8, 9), np.int32)
    labels[2:5, 3:6] = 1
    meta = {"stemcluster": {"kind": "segmentation", "cube": cube}}
    layer = viewer.add_labels(labels, name="clusters", metadata=meta)
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    dif.finish_building()
    first = BraggWidget(viewer)
    first._w["radius"].value = 2.5  # remembered: the next widget restores it
    first._w["max_count"].value = 3
    qtbot.wait(100)
    refreshes = []
    monkeypatch.setattr(
        DiffractionViewer, "_refresh_average", lambda self, *_: refreshes.append(id(self))
    )
    dif.bragg_params = None  # the viewer lacks the settings
    w = BraggWidget(viewer)
    assert w._w["radius"].value == 2.5 and w.cluster_layer is layer
    assert refreshes == []  # nothing in the turn that made the widget
    qtbot.waitUntil(lambda: refreshes == [id(dif)], timeout=WAIT)
    qtbot.wait(100)
    assert refreshes == [id(dif)]  # once
    assert dif.bragg_params == w.params() and dif.bragg_params["probe_radius"] == 2.5
    w._w["radius"].value = 3.0  # and the settings are followed at once afterwards
    assert dif.bragg_params["probe_radius"] == 3.0 and len(refreshes) == 2


def test_the_diffraction_canvas_renders_its_glyphs_in_steps_outside_any_paint(
    make_napari_viewer, qtbot
):
    from napari_stemcluster.widgets import DiffractionViewer
    from napari_stemcluster.widgets._diffraction import _glyph_chunks

    viewer = make_napari_viewer()
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    _run_until(dif, "_make_text")
    info = dif.qt_viewer.canvas._font_info
    font = info.font_manager.get_font(info.face)
    first = _glyph_chunks()[0]
    assert not set(first) <= set(font._glyphs)
    dif._run_step()  # the first chunk, rendered by the step itself
    assert set(first) <= set(font._glyphs)
    assert dif.text_overlay.text == ""  # nothing drawn for it
    dif.finish_building()
    assert set("".join(_glyph_chunks())) <= set(font._glyphs)


def test_the_threshold_plot_updates_its_artists_in_place(qtbot):
    plot = ThresholdPlot()
    qtbot.addWidget(plot.canvas)
    rng = np.random.default_rng(2)
    first = rng.uniform(0.5, 1.0, 5000)
    plot.set_histogram(first)
    lab = np.array([[1, 1, 2, 2, 2, 0], [3, 0, 0, 0, 0, 0]])
    ms = np.linspace(0.8, 0.95, lab.size).reshape(lab.shape)
    plot.set_clusters(threshold_stats(lab, ms, None, 0.9, 1), np.eye(4)[:3])
    plot.canvas.draw()
    stairs, points = plot._stairs, plot._points
    ticks = list(plot.scatter_ax.xaxis.get_major_ticks())
    # new data: the same artists (and tick objects), showing the new values
    second = np.concatenate([rng.uniform(-0.2, 1.0, 300), np.full(50, 0.99)])
    plot.set_histogram(second)
    stats = threshold_stats(lab[:, :3], ms[:, :3], None, 0.9, 1)  # sizes 2, 1, 1
    plot.set_clusters(stats, np.ones((3, 4)))
    plot.canvas.draw()
    assert plot._stairs is stairs and plot._points is points
    assert plot.scatter_ax.xaxis.get_major_ticks()[: len(ticks)] == ticks
    counts, edges = np.histogram(second, bins=100, range=(second.min(), 1.0))
    got = stairs.get_data()
    np.testing.assert_array_equal(got.values, counts)
    np.testing.assert_allclose(got.edges, edges)
    lo, hi = plot.hist_ax.get_xlim()
    assert lo < second.min() and hi > 1.0
    blo, bhi = plot.hist_ax.get_ylim()
    assert 0 < blo < counts[counts > 0].min() and bhi > counts.max()
    np.testing.assert_allclose(
        points.get_offsets(), np.column_stack([[2, 1, 1], stats.mean_similarity])
    )
    xlo, xhi = plot.scatter_ax.get_xlim()
    assert 0 < xlo < 1 and xhi > 2
    assert plot.scatter_ax.get_title(loc="right") == stats.summary()
    # nothing to show: hidden, the axes stay usable
    plot.set_histogram(np.empty(0))
    plot.set_clusters(
        threshold_stats(np.zeros((2, 2), int), np.ones((2, 2)), None, 0.9, 1), np.empty((0, 4))
    )
    plot.canvas.draw()
    assert not stairs.get_visible() and plot._hist is None
    assert len(points.get_offsets()) == 0
