"""The grain-kinetics dock widget: linking, plots, clicks, events, corrections."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stemcluster import segment
from napari_stemcluster._layers import result_to_layers
from napari_stemcluster.synthetic_series import make_growth_events
from napari_stemcluster.widgets import KineticsWidget
from napari_stemcluster.widgets._common import stem_meta
from napari_stemcluster.widgets._kinetics import _camera

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

WAIT = 30_000


@pytest.fixture(scope="module")
def series():
    return make_growth_events()


@pytest.fixture(scope="module")
def segmented(series):
    return segment(series.cube, threshold=0.9, min_cluster_size=5, real_mask=0.5)


def _linked(make_napari_viewer, qtbot, series, segmented):
    viewer = make_napari_viewer()
    for data, kwargs, kind in result_to_layers(segmented, series.calibration, "series"):
        viewer._add_layer_from_data(data, kwargs, kind)
    w = KineticsWidget(viewer)
    assert w._layer_combo.value is viewer.layers["series"]
    assert not w._merge.enabled  # nothing to correct before linking
    w.link()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_error is None
    return viewer, w


def _grain_track(w, series, role, t=0):
    g = series.roles[role]
    return int(np.bincount(w.tracks_layer.data[t][series.grains[t] == g]).argmax())


def test_link_adds_a_tracked_layer_with_persistent_ids(
    make_napari_viewer, qtbot, series, segmented
):
    viewer, w = _linked(make_napari_viewer, qtbot, series, segmented)
    layer = viewer.layers["series tracked"]
    assert w.tracks_layer is layer and stem_meta(layer)["kind"] == "tracks"
    assert layer.data.shape == segmented.labels.shape
    assert layer.scale[0] == pytest.approx(series.t_step)
    # The steady grain keeps one id, hence one colour, at every step.
    g = series.roles["steady"]
    ids = {int(np.bincount(layer.data[t][series.grains[t] == g]).argmax()) for t in range(8)}
    assert len(ids) == 1
    colour = layer.get_color(ids.pop())
    assert colour is not None
    # One curve per grain, one table row per event.
    assert len(w._lines) == w.tracking.n_tracks
    assert w.table.rowCount() == len(w.tracking.events["time"])
    kinds = {w.table.item(i, 1).text() for i in range(w.table.rowCount())}
    assert {"appear", "merge", "split", "disappear", "reappear"} <= kinds
    # Other measures plot too.
    w._measure.value = "mean_similarity"
    assert "similarity" in w.axes.get_ylabel()
    # Orientations are measured from the cluster averages (modulo 90 degrees).
    w._measure.value = "orientation"
    assert "deg" in w.axes.get_ylabel()
    y = np.concatenate([line.get_ydata() for line in w._lines.values()])
    assert np.isfinite(y).all() and np.all((y >= 0) & (y < 90))


def test_clicks_link_viewer_and_plot(make_napari_viewer, qtbot, series, segmented):
    from matplotlib.backend_bases import MouseEvent

    viewer, w = _linked(make_napari_viewer, qtbot, series, segmented)
    layer = w.tracks_layer
    k = _grain_track(w, series, "rotating")
    # Selecting a grain in the viewer highlights its curve.
    layer.selected_label = k
    assert w.highlighted == k
    assert w._lines[k].get_linewidth() > max(
        line.get_linewidth() for g, line in w._lines.items() if g != k
    )
    # A click on the grain in the canvas does the same.
    other = _grain_track(w, series, "steady")
    ys, xs = np.nonzero(layer.data[0] == other)

    class Click:
        position = layer.data_to_world([0, ys[0], xs[0]])

    w._on_click(layer, Click())
    assert w.highlighted == other
    # Clicking a point of a curve selects the grain and moves the time slider
    # (zoomed in, so the view must pan to the grain too).
    viewer.reset_view()
    _camera(viewer).zoom *= 8
    rows = w.kinetics.rows(k)
    i = 5
    x, y = w.kinetics.table["time"][rows[i]], w.kinetics.table["area"][rows[i]]
    w.canvas.draw()
    px, py = w.axes.transData.transform((x, y))
    MouseEvent("button_press_event", w.canvas, px, py, button=1)._process()
    assert layer.selected_label == k
    assert w.highlighted == k
    assert viewer.dims.current_step[0] == int(w.kinetics.table["step"][rows[i]])
    # ... and pans the view to the grain's centre at that step.
    step = int(w.kinetics.table["step"][rows[i]])
    ys, xs = np.nonzero(layer.data[step] == k)
    centre = layer.data_to_world([step, ys.mean(), xs.mean()])[-2:]
    np.testing.assert_allclose(_camera(viewer).center[-2:], centre, atol=1e-6)
    # The dashed line marks the time step on screen, in seconds.
    step = int(w.kinetics.table["step"][rows[i]])
    assert w._cursor.get_xdata()[0] == pytest.approx(step * series.t_step)
    # A row of the event table does the same for the grain of the event.
    ev = w.tracking.events
    row = int(np.flatnonzero(ev["kind"] == "appear")[0])
    w._on_table_click(row, 0)
    assert layer.selected_label == int(ev["track"][row])
    assert viewer.dims.current_step[0] == int(ev["time"][row])
    # With the whole scan in view, the view stays where it is.
    viewer.reset_view()
    before = tuple(_camera(viewer).center)
    w.select(other, step=2)
    assert tuple(_camera(viewer).center) == before


def test_corrections_apply_to_all_steps_and_undo_reports_steps(
    make_napari_viewer, qtbot, series, segmented
):
    viewer, w = _linked(make_napari_viewer, qtbot, series, segmented)
    layer = w.tracks_layer
    before = layer.data.copy()
    a, b = _grain_track(w, series, "steady"), _grain_track(w, series, "rotating")
    w._tracks_edit.value = f"{a}, {b}"
    changed = w.merge()
    keep, gone = min(a, b), max(a, b)
    assert changed == list(range(8))  # both grains exist at every step
    assert not np.any(layer.data == gone)
    assert np.array_equal(layer.data == keep, (before == a) | (before == b))
    assert "steps 0, 1, 2, 3, 4, 5, 6, 7 changed" in w._status.value
    rows = w.kinetics.rows(keep)
    assert w.kinetics.table["area_px"][rows].tolist() == [
        int(((before[t] == a) | (before[t] == b)).sum()) for t in range(8)
    ]
    # Split in time at the step on screen, then relabel.
    viewer.dims.set_point(0, layer.data_to_world([5, 0, 0])[0])
    w._tracks_edit.value = str(keep)
    assert w.split() == [5, 6, 7]
    new = w.tracking.n_tracks
    assert np.all(layer.data[5:][(before[5:] == a) | (before[5:] == b)] == new)
    w._tracks_edit.value = str(new)
    w._new_id.value = 99
    assert w.relabel() == [5, 6, 7]
    assert np.any(layer.data == 99)
    # Undo walks back and says which steps each undo changed.
    assert w.undo() == [5, 6, 7]
    assert "undid relabel" in w._status.value and "steps 5, 6, 7" in w._status.value
    assert w.undo() == [5, 6, 7]
    assert w.undo() == list(range(8))
    assert np.array_equal(layer.data, before)
    assert not w._undo.enabled
    # Bad input is reported, not raised.
    w._tracks_edit.value = "12345"
    w._new_id.value = 3
    assert w.relabel() is None


def test_export_csv_and_reopen(make_napari_viewer, qtbot, series, segmented, tmp_path):
    from napari_stemcluster._reader import read_stem
    from napari_stemcluster.io import write_results
    from napari_stemcluster.io._analysis_tracking import read_kinetics_csv

    viewer, w = _linked(make_napari_viewer, qtbot, series, segmented)
    files = w.export_csv(tmp_path / "grains.csv")
    table, units = read_kinetics_csv(files[0])
    assert units["area"] == w.kinetics.units["area"]
    np.testing.assert_allclose(table["area"], w.kinetics.table["area"])
    path = write_results(
        tmp_path / "r.h5",
        segmented,
        calibration=series.calibration,
        tracking=w.tracking,
        kinetics=w.kinetics,
    )
    for data, kwargs, kind in read_stem(str(path)):
        viewer._add_layer_from_data(data, kwargs, kind)
    reopened = viewer.layers["r tracked"]
    assert np.array_equal(reopened.data, w.tracks_layer.data)
    w2 = KineticsWidget(viewer)
    w2._layer_combo.value = reopened
    assert w2.tracking is not None and len(w2._lines) == len(w._lines)
    assert w2.table.rowCount() == w.table.rowCount()


def test_label_correction_carries_merges_and_splits_over_all_steps(
    make_napari_viewer, qtbot, series, segmented
):
    from napari_stemcluster.widgets import CorrectionWidget
    from napari_stemcluster.widgets._state import ClusterState

    viewer = make_napari_viewer()
    for data, kwargs, kind in result_to_layers(segmented, series.calibration, "series"):
        viewer._add_layer_from_data(data, kwargs, kind)
    clusters = viewer.layers["series"]
    meta = stem_meta(clusters)
    meta["cube"] = series.cube
    meta["state"] = ClusterState(
        clusters.data,
        series.cube,
        similarity=segmented.similarity,
        mean_similarity=segmented.mean_similarity,
    )
    cor = CorrectionWidget(viewer)
    cor._layer_combo.value = clusters
    cor._all_steps.value = True
    # Before linking, the widget says what to do.
    cor._merge_list.value = "1, 2"
    assert cor.merge() is None
    kin = KineticsWidget(viewer)
    kin._layer_combo.value = clusters
    kin.link()
    qtbot.waitUntil(lambda: not kin.runner.running, timeout=WAIT)
    tracking = meta["tracking"]
    before = np.array(clusters.data)
    # Merge the steady and the rotating grain (labels at step 2) at every step.
    steady, rotating = series.roles["steady"], series.roles["rotating"]
    lab = [int(np.bincount(before[2][series.grains[2] == g]).argmax()) for g in (steady, rotating)]
    viewer.dims.set_point(0, clusters.data_to_world([2, 0, 0])[0])
    cor._merge_list.value = ", ".join(map(str, lab))
    target = cor.merge()
    assert target == min(lab)
    assert "at steps 0, 1, 2, 3, 4, 5, 6, 7" in cor._status.value
    for t in range(8):
        both = (series.grains[t] == steady) | (series.grains[t] == rotating)
        assert len(np.unique(clusters.data[t][both])) == 1  # one cluster at every step
    # The tracking follows: the two grains are one track now.
    assert meta["tracking"].n_tracks == tracking.n_tracks
    assert (
        len(
            {
                int(v)
                for v in np.unique(
                    meta["tracking"].tracks[0][
                        (series.grains[0] == steady) | (series.grains[0] == rotating)
                    ]
                )
            }
        )
        == 1
    )
    # One undo reverts every step and names them.
    assert cor.undo() == tuple(range(8))
    assert "0, 1, 2, 3, 4, 5, 6, 7" in cor._status.value
    assert np.array_equal(clusters.data, before)
    # Splitting after the labels changed asks to link again.
    kin.link()
    qtbot.waitUntil(lambda: not kin.runner.running, timeout=WAIT)
    g = series.roles["splitting"]
    label = int(np.bincount(before[2][series.grains[2] == g]).argmax())
    clusters.selected_label = label
    cor._threshold.value = 0.999
    cor._min_size.value = 3
    cor.confirm_split = lambda parent, text: True  # at 0.999 much goes to background: go on
    new_ids = cor.split()
    assert new_ids is not None
    assert "steps" in cor._status.value
    changed = [t for t in range(8) if not np.array_equal(clusters.data[t], before[t])]
    assert len(changed) > 1  # the same grain split at several steps
    assert cor.undo() == tuple(changed)
    assert np.array_equal(clusters.data, before)


def test_link_uses_the_orientation_results_of_the_layer(
    make_napari_viewer, qtbot, series, segmented
):
    from napari_stemcluster.core import load_structure
    from napari_stemcluster.data import builtin_cif
    from test_tracking import _truth_orientations

    viewer = make_napari_viewer()
    for data, kwargs, kind in result_to_layers(segmented, series.calibration, "series"):
        viewer._add_layer_from_data(data, kwargs, kind)
    clusters = viewer.layers["series"]
    orient = _truth_orientations(series, segmented.labels, [load_structure(builtin_cif("Au"))])
    stem_meta(clusters)["orientation"] = orient  # as the Orientation & phase widget stores it
    w = KineticsWidget(viewer)
    w.link()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_error is None
    assert w.tracking.params["used_orientations"] == "rotations"
    assert "orientation results" in w._status.value
    # The orientation curve is the matched in-plane angle: the rotating grain
    # turns by 4 degrees per step, and corrections keep using it.
    k = _grain_track(w, series, "rotating")
    rows = w.kinetics.rows(k)
    np.testing.assert_allclose(np.diff(w.kinetics.table["orientation"][rows]), 4.0, atol=1e-6)
    w._tracks_edit.value = str(k)
    w._new_id.value = 77
    assert w.relabel() == list(range(8))
    np.testing.assert_allclose(np.diff(w.kinetics.table["orientation"][w.kinetics.rows(77)]), 4.0)
    # Clusters edited since the orientations were found: linked without them.
    stem_meta(clusters)["cube"] = series.cube  # for the new cluster averages
    clusters.data = np.where(clusters.data == clusters.data.max(), 0, clusters.data)
    w._layer_combo.value = clusters
    w.link()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_error is None
    assert w.tracking.params["used_orientations"] is None
    assert "do not fit" in w._status.value
