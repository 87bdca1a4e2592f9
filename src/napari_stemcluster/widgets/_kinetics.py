"""Dock widget: follow grains through time, plot their kinetics, list events.

*Link time steps* gives the clusters of a 5D segmentation persistent ids
(:func:`napari_stemcluster.core.tracking.link_clusters`) and shows them as a
"tracked" Labels layer, whose colours stay with the grains along the time
slider. A matplotlib canvas plots one measure of every grain against time;
clicking a grain in the viewer highlights its curve, clicking a curve (or a
row of the event table) selects the grain and moves the time slider to it.
Track corrections (merge, split in time, relabel) apply to all time steps at
once; *Undo* says which steps changed back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, create_widget

from ._common import (
    JobRunner,
    button,
    connect_while_alive,
    layer_choices,
    stem_meta,
    unwrap,
)
from ._correction import parse_labels

if TYPE_CHECKING:
    import napari

#: Measures that can be plotted, with their axis captions.
MEASURES = {
    "area": "area",
    "eq_radius": "equivalent radius",
    "mean_intensity": "mean intensity",
    "mean_similarity": "mean similarity",
    "orientation": "orientation",
}


def is_series_layer(layer) -> bool:
    """A (T, Rx, Ry) cluster or tracked-grain Labels layer."""
    from napari.layers import Labels

    meta = stem_meta(layer)
    return (
        isinstance(layer, Labels)
        and meta is not None
        and meta.get("kind") in ("segmentation", "tracks")
        and layer.ndim == 3
    )


def _kinetics_of(tracking, result, calibration, orientations=None):
    """Kinetics with the orientation results, else orientations measured from the averages."""
    from ..core.tracking import grain_kinetics

    how = orientations
    if how is None:
        how = "pattern" if result is not None else None
    return grain_kinetics(tracking, result, orientations=how, calibration=calibration)


def _orientation_source(meta):
    """The layer's orientation results, else its Bragg analysis, else None."""
    for key in ("orientation", "bragg"):
        value = meta.get(key)
        if value is not None:
            return value
    return None


_USED = {"rotations": "orientation results", "lattices": "Bragg lattices", "angles": "angles"}


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9 on)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _steps_text(steps) -> str:
    steps = list(steps)
    return ", ".join(map(str, steps)) if steps else "none"


class KineticsWidget(Container):
    """Link the time steps of a 5D segmentation and plot every grain's kinetics.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> widget = KineticsWidget(viewer)  # doctest: +SKIP
    >>> widget.link()  # in the background; the tracked layer appears when done  # doctest: +SKIP
    >>> widget.select(3, step=5)  # grain 3 selected and centred, at step 5  # doctest: +SKIP
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer = unwrap(viewer)
        self._layer_combo = create_widget(
            label="Clusters",
            annotation="napari.layers.Labels",
            options={"choices": layer_choices(viewer, is_series_layer)},
        )
        self._max_gap = create_widget(
            1, label="Max. gap", annotation=int, widget_type="SpinBox", options={"max": 10}
        )
        self._max_gap.tooltip = "Steps a grain may be missing and still keep its id"
        self._link = button("Link time steps", "Link")
        self._measure = create_widget(
            "area",
            label="Plot",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": [(v, k) for k, v in MEASURES.items()]},
        )
        self._tracks_edit = create_widget(
            "", label="Grains", annotation=str, widget_type="LineEdit"
        )
        self._tracks_edit.tooltip = (
            "Track ids for Merge (comma-separated), or one for Split/Relabel"
        )
        self._new_id = create_widget(
            1, label="New id", annotation=int, widget_type="SpinBox", options={"min": 1}
        )
        self._merge = button("Merge grains (all steps)", "Merge")
        self._split = button("Split grain from this step on", "Split")
        self._relabel = button("Relabel grain (all steps)", "Relabel")
        self._undo = button("Undo grain correction", "Undo")
        self._export = button("Export kinetics CSV…", "Export")
        self._status = create_widget("", label="", annotation=str, widget_type="Label")
        self.extend(
            [
                self._layer_combo,
                self._max_gap,
                self._link,
                self._measure,
                self._tracks_edit,
                self._new_id,
                self._merge,
                self._split,
                self._relabel,
                self._undo,
                self._export,
                self._status,
            ]
        )
        self._build_plot()
        self._build_table()
        self.runner = JobRunner(on_busy=lambda busy: setattr(self._link, "enabled", not busy))
        self.tracks_layer = None
        self.tracking = None
        self.kinetics = None
        self.highlighted: int | None = None
        self._undo_stack: list[tuple] = []
        self._lines: dict[int, object] = {}
        self._pick_best = None
        self._link.changed.connect(self.link)
        self._measure.changed.connect(self.plot)
        self._merge.changed.connect(self.merge)
        self._split.changed.connect(self.split)
        self._relabel.changed.connect(self.relabel)
        self._undo.changed.connect(self.undo)
        self._export.changed.connect(self._export_dialog)
        connect_while_alive(
            self.native,
            [
                (viewer.layers.events.inserted, self.reset_choices),
                (viewer.layers.events.removed, self._on_removed),
                (viewer.dims.events.current_step, self._on_step),
            ],
        )
        self._layer_combo.changed.connect(self._on_layer)
        self._on_layer()
        self._update_buttons()

    # ------------------------------------------------------------------ UI
    def _build_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.2, 3.0), dpi=100)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.axes = self.figure.add_subplot()
        self._cursor = None
        self.canvas.mpl_connect("pick_event", self._on_pick)
        self.native.layout().addWidget(self.canvas)

    def _build_table(self):
        from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["step", "event", "grain", "other"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(140)
        self.table.cellClicked.connect(self._on_table_click)
        self.native.layout().addWidget(self.table)

    def _update_buttons(self):
        have = self.tracking is not None
        for w in (self._merge, self._split, self._relabel, self._export, self._measure):
            w.enabled = have
        self._undo.enabled = bool(self._undo_stack)
        self._link.enabled = self._layer_combo.value is not None and not self.runner.running

    def _on_layer(self, *_):
        layer = self._layer_combo.value
        meta = stem_meta(layer) if layer is not None else None
        if meta is not None and meta.get("kind") == "tracks" and meta.get("tracking") is not None:
            # A tracked layer (e.g. from a results file): show what it holds.
            self._adopt(layer)
        self._update_buttons()

    def _on_removed(self, event=None):
        if self.tracks_layer is not None and self.tracks_layer not in self._viewer.layers:
            self.tracks_layer = None
            self.tracking = self.kinetics = None
            self._undo_stack.clear()
            self.plot()
            self._fill_table()
        self.reset_choices()
        self._update_buttons()

    # ------------------------------------------------------------ linking
    def link(self, *_):
        """Link the chosen layer's time steps in the background; returns the worker."""
        from napari.utils.notifications import show_error

        from .._layers import layers_to_result

        layer = self._layer_combo.value
        if layer is None:
            show_error("Kinetics: choose a (T, Rx, Ry) cluster layer")
            return None
        meta = stem_meta(layer)
        if meta.get("kind") == "tracks":
            result = meta.get("result")
            if result is None:
                show_error("Kinetics: this tracked layer has no segmentation to link again")
                return None
            source = layer.name
            labels, md = None, None
        else:
            source = layer.name
            labels = np.array(layer.data, np.int32)  # the worker must not see edits
            md = layer.metadata
            result = None
        cal = meta.get("calibration")
        max_gap = int(self._max_gap.value)
        # Orientation or Bragg results of the clusters join the linking score.
        orient = _orientation_source(meta)

        def work(progress):
            from ..core.tracking import link_result

            res = result if result is not None else layers_to_result(labels, md)
            progress(1, 3)
            used = orient
            try:
                tracking = link_result(res, max_gap=max_gap, orientations=used)
            except ValueError:
                if used is None:
                    raise
                # Clusters edited since the orientations were found: they no
                # longer fit, so link by overlap and patterns alone.
                used = None
                tracking = link_result(res, max_gap=max_gap)
            progress(2, 3)
            kinetics = _kinetics_of(tracking, res, cal, used)
            return res, tracking, kinetics, used, orient is not None and used is None

        def done(value):
            res, tracking, kinetics, used, stale = value
            if meta.get("kind") == "segmentation":
                # The Label correction widget carries edits over the same grains.
                meta["tracking"] = tracking
            self._show(res, tracking, kinetics, cal, source, meta.get("source"), used)
            if stale:
                self._status.value += " (orientation results do not fit the clusters: not used)"

        self._status.value = "linking…"
        return self.runner.start(work, description="Linking time steps", on_returned=done)

    def _show(self, result, tracking, kinetics, calibration, name, source, orientations=None):
        from .._tracking_layers import tracking_layer

        data, kwargs, _ = tracking_layer(
            tracking,
            kinetics,
            result,
            calibration,
            f"{name} tracked",
            source=source,
            orientations=orientations,
        )
        target = self.tracks_layer
        if target is not None and target in self._viewer.layers:
            target.data = data
            target.metadata = kwargs["metadata"]
        else:
            kwargs.pop("axis_labels", None)
            target = self._viewer.add_labels(data, **kwargs)
        self._adopt(target)
        n_ev = len(tracking.events["time"])
        by = ["overlap"]
        if tracking.params.get("used_patterns"):
            by.append("patterns")
        if tracking.params.get("used_orientations"):
            by.append(_USED.get(tracking.params["used_orientations"], "orientations"))
        self._status.value = f"{tracking.n_tracks} grains, {n_ev} events (by {', '.join(by)})"

    def _adopt(self, layer):
        meta = stem_meta(layer)
        self.tracks_layer = layer
        self.tracking = meta["tracking"]
        self.kinetics = meta.get("kinetics")
        if self.kinetics is None:
            self.kinetics = _kinetics_of(
                self.tracking, meta.get("result"), meta.get("calibration"), meta.get("orientations")
            )
            meta["kinetics"] = self.kinetics
        if getattr(layer, "_stemcluster_kinetics_bound", None) is not self:
            layer.mouse_drag_callbacks.append(self._on_click)
            layer.events.selected_label.connect(self._on_selected)
            layer._stemcluster_kinetics_bound = self
        self._undo_stack.clear()
        self.plot()
        self._fill_table()
        self._update_buttons()

    # ------------------------------------------------------------ plotting
    def plot(self, *_):
        """Redraw the curves of the chosen measure."""
        ax = self.axes
        ax.clear()
        self._lines = {}
        self._cursor = None
        kin = self.kinetics
        if kin is None or not len(kin.table["track"]):
            ax.text(0.5, 0.5, "link a 5D segmentation", ha="center", va="center")
            ax.set_axis_off()
            self.canvas.draw_idle()
            return
        ax.set_axis_on()
        measure = self._measure.value
        layer = self.tracks_layer
        for g in np.unique(kin.table["track"]):
            rows = kin.rows(g)
            color = self._color(layer, int(g))
            (line,) = ax.plot(
                kin.table["time"][rows],
                kin.table[measure][rows],
                "-o",
                color=color,
                lw=1.0,
                ms=2.5,
                picker=True,
                pickradius=5,
            )
            line.track = int(g)
            self._lines[int(g)] = line
        unit = kin.units.get(measure, "")
        ax.set_ylabel(MEASURES[measure] + (f" ({unit})" if unit else ""))
        ax.set_xlabel(f"time ({kin.units.get('time', '')})")
        ax.grid(alpha=0.3)
        self.figure.tight_layout()
        self._draw_cursor()
        self.highlight(self.highlighted)

    @staticmethod
    def _color(layer, track: int):
        if layer is not None:
            try:
                rgba = np.asarray(layer.get_color(track), float).ravel()
                if rgba.size >= 3:
                    return tuple(rgba[:3])
            except Exception:  # colour lookup is cosmetic
                pass
        return None

    def highlight(self, track: int | None):
        """Draw ``track``'s curve thick and the others faint (None: all alike)."""
        self.highlighted = None if track is None or int(track) not in self._lines else int(track)
        for g, line in self._lines.items():
            if self.highlighted is None:
                line.set_linewidth(1.0)
                line.set_alpha(1.0)
            elif g == self.highlighted:
                line.set_linewidth(3.0)
                line.set_alpha(1.0)
                line.set_zorder(3)
            else:
                line.set_linewidth(0.8)
                line.set_alpha(0.25)
                line.set_zorder(2)
        self.canvas.draw_idle()

    def _draw_cursor(self):
        if self.kinetics is None or self.tracks_layer is None:
            return
        t = self._current_step()
        times, steps = self.kinetics.table["time"], self.kinetics.table["step"]
        later = np.flatnonzero(steps > 0)
        # Time per step from the table (t_step, or 1 when time counts steps).
        time = t * (times[later[0]] / steps[later[0]] if later.size else 1.0)
        if self._cursor is not None:
            self._cursor.remove()
        self._cursor = self.axes.axvline(time, color="0.5", lw=0.8, ls="--")
        self.canvas.draw_idle()

    def _current_step(self) -> int:
        from ._common import layer_step

        return layer_step(self._viewer, self.tracks_layer)

    def _on_step(self, event=None):
        if self.tracks_layer is not None and self.kinetics is not None:
            self._draw_cursor()

    # ------------------------------------------------------------ selection
    def select(self, track: int, step: int | None = None):
        """Select ``track`` on the tracked layer and move the time slider to ``step``."""
        layer = self.tracks_layer
        if layer is None:
            return
        layer.selected_label = int(track)
        if step is not None:
            world = layer.data_to_world([int(step), 0, 0])[0]
            self._viewer.dims.set_point(0, world)
            self._centre_on(track, int(step))
        self.highlight(int(track))

    def _centre_on(self, track: int, step: int):
        """Pan the 2D view to the grain's centre at ``step`` unless it is well in view.

        The zoom stays; a grain already in the middle 80 % of the canvas
        leaves the view alone, so a view of the whole scan does not jump.
        """
        layer = self.tracks_layer
        if self._viewer.dims.ndisplay != 2 or not 0 <= step < layer.data.shape[0]:
            return
        rows, cols = np.nonzero(np.asarray(layer.data[step]) == int(track))
        if rows.size == 0:
            return
        target = np.asarray(layer.data_to_world([step, rows.mean(), cols.mean()])[-2:], float)
        camera = _camera(self._viewer)
        size = getattr(getattr(self._viewer, "canvas", None), "size", None)
        if size is not None and camera.zoom > 0:
            half = 0.4 * np.asarray(size[-2:], float) / camera.zoom  # world units
            if np.all(np.abs(target - np.asarray(camera.center[-2:], float)) <= half):
                return
        camera.center = tuple(float(v) for v in target)

    def _on_click(self, layer, event):
        value = layer.get_value(event.position, world=True)
        if value is not None and int(value) > 0:
            self.highlight(int(value))

    def _on_selected(self, event=None):
        if self.tracks_layer is not None:
            self.highlight(int(self.tracks_layer.selected_label))

    def _on_pick(self, event):
        track = getattr(event.artist, "track", None)
        if track is None or self.kinetics is None:
            return
        rows = self.kinetics.rows(track)
        # Several curves may be in reach of one click (matplotlib reports each
        # one): the point nearest the mouse wins.
        mouse = event.mouseevent
        xy = event.artist.get_transform().transform(event.artist.get_xydata())
        dist = np.hypot(xy[:, 0] - mouse.x, xy[:, 1] - mouse.y)
        i = int(np.argmin(dist))
        best = self._pick_best
        if best is not None and best[0] is mouse and best[1] <= dist[i]:
            return
        self._pick_best = (mouse, float(dist[i]))
        self.select(track, int(self.kinetics.table["step"][rows[min(i, len(rows) - 1)]]))

    def _fill_table(self):
        from qtpy.QtWidgets import QTableWidgetItem

        ev = None if self.tracking is None else self.tracking.events
        n = 0 if ev is None else len(ev["time"])
        self.table.setRowCount(n)
        for i in range(n):
            for j, key in enumerate(("time", "kind", "track", "other")):
                self.table.setItem(i, j, QTableWidgetItem(str(ev[key][i])))

    def _on_table_click(self, row, column):
        ev = self.tracking.events
        track = (
            int(ev["other"][row]) if column == 3 and ev["kind"][row] in ("merge", "split") else 0
        )
        self.select(track or int(ev["track"][row]), int(ev["time"][row]))

    # ------------------------------------------------------------ corrections
    def _apply(self, what: str, fn):
        from napari.utils.notifications import show_error

        if self.tracking is None:
            return None
        before = self.tracking
        try:
            after, changed = fn(before)
        except ValueError as exc:
            show_error(f"{what}: {exc}")
            return None
        self._undo_stack.append((before, self.kinetics, what, changed))
        self._set_tracking(after)
        self._status.value = f"{what}: steps {_steps_text(changed)} changed"
        return changed

    def _set_tracking(self, tracking, kinetics=None):

        meta = stem_meta(self.tracks_layer)
        if kinetics is None:
            kinetics = _kinetics_of(
                tracking, meta.get("result"), meta.get("calibration"), meta.get("orientations")
            )
        self.tracking, self.kinetics = tracking, kinetics
        meta["tracking"], meta["kinetics"] = tracking, kinetics
        self.tracks_layer.data = tracking.tracks
        self.plot()
        self._fill_table()
        self._update_buttons()

    def _ids(self) -> list[int]:
        ids = parse_labels(self._tracks_edit.value)
        if not ids and self.tracks_layer is not None and self.tracks_layer.selected_label > 0:
            ids = [int(self.tracks_layer.selected_label)]
        return ids

    def merge(self, *_):
        """Merge the listed grains into the smallest id, at every time step."""
        from ..core.tracking import merge_tracks

        ids = self._ids()
        return self._apply(f"merge {', '.join(map(str, ids))}", lambda tr: merge_tracks(tr, ids))

    def split(self, *_):
        """Give the grain a new id from the time step on screen onward."""
        from ..core.tracking import split_track

        ids = self._ids()[:1]
        t = self._current_step()
        if not ids:
            return None
        return self._apply(f"split {ids[0]} at step {t}", lambda tr: split_track(tr, ids[0], t))

    def relabel(self, *_):
        """Give the grain the id in *New id*, at every time step."""
        from ..core.tracking import relabel_track

        ids = self._ids()[:1]
        new = int(self._new_id.value)
        if not ids:
            return None
        return self._apply(f"relabel {ids[0]} as {new}", lambda tr: relabel_track(tr, ids[0], new))

    def undo(self, *_) -> list[int] | None:
        """Undo the last grain correction; returns (and shows) the steps it changes back."""
        if not self._undo_stack:
            return None
        before, kinetics, what, changed = self._undo_stack.pop()
        self._set_tracking(before, kinetics)
        self._status.value = f"undid {what}: steps {_steps_text(changed)} changed back"
        return changed

    # ------------------------------------------------------------ export
    def export_csv(self, path):
        """Write the kinetics, rates and events as CSV files next to ``path``."""
        from ..io._analysis_tracking import write_kinetics_csv

        files = write_kinetics_csv(path, self.kinetics, self.tracking)
        self._status.value = f"wrote {', '.join(p.name for p in files)}"
        return files

    def _export_dialog(self, *_):
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native, "Export kinetics", "kinetics.csv", "CSV files (*.csv)"
        )
        if path:
            self.export_csv(path)
