"""Dock widget: a second canvas showing reciprocal space next to the real-space view."""

from __future__ import annotations

import contextlib
import string
import weakref
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, create_widget
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ._common import (
    connect_while_alive,
    is_cluster_layer,
    is_data_layer,
    layer_choices,
    layer_step,
    remember,
    scan_position,
    session,
    spatial_kwargs,
    stem_meta,
    unwrap,
)
from ._gcfreeze import follow_layers, freeze, watch
from ._link import ensure_link
from ._virtual import VirtualDetector, direct_source

if TYPE_CHECKING:
    import napari

#: Minimum interval (ms) between two pattern reads while the mouse moves.
MOUSE_THROTTLE_MS = 25
#: Pause (ms) between two steps of making the canvas, for it to paint meanwhile.
BUILD_STEP_MS = 15
#: Pause (ms) before the first step, for the window to show the new dock first.
FIRST_STEP_MS = 80
MARKER_NAME = "selected cluster"


def scale_pattern(pattern: np.ndarray, mode: str, gamma: float = 0.5) -> np.ndarray:
    """Display scaling of a diffraction pattern: ``linear``, ``log`` or ``power``.

    ``log`` shows ``log1p(max(I, 0))``; ``power`` shows ``max(I, 0) ** gamma``.
    Linear returns the pattern unchanged (same dtype), so the canvas holds
    exactly the data.

    Examples
    --------
    >>> scale_pattern(np.array([[0, 3], [8, -1]]), "log").round(3)
    array([[0.   , 1.386],
           [2.197, 0.   ]], dtype=float32)
    """
    if mode == "linear":
        return pattern
    p = np.clip(np.asarray(pattern, np.float32), 0, None)
    if mode == "log":
        return np.log1p(p)
    if mode == "power":
        return p ** np.float32(gamma)
    raise ValueError(f"scaling must be 'linear', 'log' or 'power'; got {mode!r}")


class DiffractionViewer(QWidget):
    """Linked diffraction viewer: the pattern under the mouse and cluster averages.

    Left: the raw pattern at the scan position under the mouse in the main
    viewer (only that pattern is read), with the diffraction-space mask
    (q-mask) drawn as two circles. Right: the average pattern of the cluster
    under the mouse (or of the Labels layer's selected label) with its Bragg
    disks as points; the cluster's seed and size are marked in the main view.
    For a time series it follows the time slider.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> widget = DiffractionViewer(viewer)  # doctest: +SKIP
    >>> viewer.window.add_dock_widget(widget, name="Diffraction viewer")  # doctest: +SKIP
    >>> widget.pattern, widget.average  # what is shown, unscaled  # doctest: +SKIP
    """

    #: Attributes made by the staged construction (see :meth:`_build_steps`).
    _LAZY = frozenset(
        {
            "qt_viewer",
            "pattern_layer",
            "q_mask_layer",
            "average_layer",
            "peaks_layer",
            "text_overlay",
            "virtual",
            "average_q_mask_layer",
            "pattern_peaks_layer",
        }
    )

    def __init__(self, viewer: napari.viewer.Viewer):
        from napari.components.viewer_model import ViewerModel
        from superqt.utils import qthrottled

        from ._warmup import GcHold

        super().__init__()
        # no full garbage collection inside a step (see GcHold)
        self._gc_hold = GcHold()
        self._viewer = viewer = unwrap(viewer)
        self._session = session(viewer)
        self._model = ViewerModel(title="diffraction")
        follow_layers(self._model.layers)  # a frozen layer removed is collected
        watch(self, viewer)  # closing it unfreezes what was frozen
        self.controls = _Controls(viewer)
        self._layout = layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.controls.native)
        titles = QHBoxLayout()
        titles.setContentsMargins(6, 2, 6, 0)
        self.pattern_title = QLabel("pattern under the mouse")
        self.average_title = QLabel("cluster average")
        for label in (self.pattern_title, self.average_title):
            label.setStyleSheet("font-weight: bold")
            titles.addWidget(label, stretch=1)
        layout.addLayout(titles)
        # the canvas (napari's QtViewer) is made in the first step
        self._canvas_slot = QWidget()
        layout.addWidget(self._canvas_slot, stretch=1)
        self.setMinimumSize(360, 480)

        #: Patterns read ahead around the last hovered position.
        self._prefetched: dict = {}
        self._prefetch_pool = None

        #: Raw (unscaled) pattern under the mouse, its scan index and time step.
        self.pattern: np.ndarray | None = None
        self.position: tuple[int, int] | None = None
        self.t = 0
        #: Label, time step and raw average pattern shown on the right.
        self.label: int | None = None
        self.average: np.ndarray | None = None
        self.peaks = np.empty((0, 2))
        self.peak_intensities = np.empty(0)
        #: Detection settings of the Bragg widget's live preview (None: defaults).
        self.bragg_params: dict | None = None
        #: True while the disks of the shown average are being searched for.
        self.peaks_pending = False
        self._peaks_request = 0
        self._peaks_future = None
        self._bragg_pool = None
        self._peaks_bridge = _PeaksBridge(self)
        self._peaks_bridge.found.connect(self._on_peaks_found)
        #: Per time step lattice table of the Bragg widget (indexes the pattern's disks).
        self.bragg_lattices: list | None = None
        #: Disks of the pattern under the mouse (shown while the Bragg preview is on).
        self.pattern_peaks = np.empty((0, 2))
        self.pattern_peaks_pending = False
        self._pattern_peaks_request = 0
        self._pattern_peaks_future = None
        self._peaks_bridge.pattern_found.connect(self._on_pattern_peaks_found)
        self._avg_key = None
        self._detector = None
        self._linked_state = None
        self._watched = _none
        self._marker = None
        self._marker_next = None  # (point, label, size) for a marker made this turn
        self._marker_prepared = False  # made ahead (hidden, empty), not shown yet
        self._pick_layers()
        # A control used before the canvas is complete completes it (its
        # handlers use the layers).
        c, built = self.controls, self._built_first
        c.data.changed.connect(built("_on_data_layer"))
        c.clusters.changed.connect(built("_on_cluster_layer"))
        c.source.changed.connect(built("_refresh_average"))
        for w in (c.scaling, c.gamma, c.contrast):
            w.changed.connect(built("_redraw"))
        c.show_q_mask.changed.connect(built("_on_show_q_mask"))
        c.edit_q_mask.changed.connect(built("_on_edit_q_mask"))
        c.show_peaks.changed.connect(built("_refresh_average"))
        c.disk_radius.changed.connect(built("_refresh_average"))
        #: The layers and overlays still to be made, one per event-loop turn.
        self._pending = list(self._build_steps())
        self._in_step = False
        self._missed_mouse = False
        self._on_mouse_throttled = qthrottled(self.on_mouse_move, timeout=MOUSE_THROTTLE_MS)
        connect_while_alive(
            self,
            [
                (viewer.cursor.events.position, self._when_built("_on_mouse_throttled")),
                (viewer.dims.events.current_step, self._when_built("_on_step")),
                # the layer choices follow at once (a clusters layer chosen
                # meanwhile completes the canvas, through its control)
                (viewer.layers.events.inserted, self._on_layers_changed),
                (viewer.layers.events.removed, self._on_layers_changed),
                (self._session.q_mask_changed, self._when_built("_draw_q_mask")),
                (self._session.clusters_expected, self._weak("_prepare_marker")),
            ],
        )
        # the first step (the canvas) after the window has laid out and
        # painted the new dock: the two together made one pause
        self._next_step_soon(FIRST_STEP_MS)

    # -------------------------------------------------------- construction
    def _build_steps(self):
        """The canvas's layers and overlays, in the order they are made.

        Each is a separate turn of the event loop, and the canvas paints
        (compiling the new visual's shaders) between two of them: making
        them all at once held the window for seconds, mostly napari and
        vispy building visuals and OpenGL compiling their shaders at the
        first paint, all of which Qt allows only in the GUI thread.
        """
        reveal = partial(partial, self._reveal)
        return [
            self._make_canvas,
            # the canvas shown (its first paint) in a turn after it is made
            self._show_canvas,
            # a layer's visual is made hidden and shown in the next turn: the
            # layer and its visual made in one turn, its shaders compiled by
            # the paint after the other (the two together were the longest
            # pauses of docking)
            self._make_pattern,
            reveal("pattern_layer"),
            self._make_q_mask,
            reveal("q_mask_layer"),
            self._make_average,
            reveal("average_layer"),
            self._make_peaks,
            reveal("peaks_layer"),
            self._make_text,
            # before the axes and scale bars: their labels find their glyphs made
            *[partial(self._load_glyphs, chars) for chars in _glyph_chunks()],
            # an overlay's visuals (one per panel) are made hidden, and shown
            # one per turn: each first paint compiles a line's, a box's and a
            # text's shaders
            self._make_axes,
            partial(self._reveal_overlay, _axes, 0),
            partial(self._reveal_overlay, _axes, 1),
            self._make_scale_bars,
            partial(self._reveal_overlay, _scale_bar, 0),
            partial(self._reveal_overlay, _scale_bar, 1),
            # the main canvas has glyphs of its own (its scale bar, the
            # cluster marker's caption)
            *[partial(self._load_main_glyphs, chars) for chars in _glyph_chunks() if chars],
            self._make_main_scale_bar,
            self._reveal_main_scale_bar,
            self._make_virtual_detector,
            self._make_average_q_mask,
            reveal("average_q_mask_layer"),
            self._make_panels,
            self._make_pattern_peaks,
            reveal("pattern_peaks_layer"),
            self._make_average_spacer,
            self._connect,
            self._connect_clusters,
            self._connect_q_mask,
            self._collect_garbage,
        ]

    def _collect_garbage(self) -> None:
        """Garbage collection back on, the steps' short-lived garbage collected in a turn."""
        self._gc_hold.release(collect=True)
        # the canvas is complete: kept out of full collections at once (what
        # the build made brings the next full collection near)
        freeze(self._viewer)

    def _hide_visual(self, layer) -> None:
        """Hide a new layer's vispy visual (not the layer) until :meth:`_reveal`.

        The layer is made and sliced as usual; only its first drawing, which
        compiles its shaders, waits for the next turn.
        """
        visual = self.qt_viewer.canvas.layer_to_visual.get(layer)
        if visual is not None:
            visual.node.visible = False

    def _reveal(self, name: str) -> None:
        """Show the visual hidden in the previous turn: the next paint compiles it."""
        layer = getattr(self, name)
        visual = self.qt_viewer.canvas.layer_to_visual.get(layer)
        if visual is not None:
            visual.node.visible = layer.visible

    def _next_step_soon(self, delay: int = BUILD_STEP_MS) -> None:
        from qtpy.QtCore import QTimer

        me = weakref.ref(self)

        def run():
            dif = me()
            if dif is None or not dif._pending or not _canvas_alive(dif):
                if dif is not None:
                    dif._gc_hold.release(collect=False)
                return  # closed meanwhile: nothing more to make
            dif._run_step()
            if dif._pending:
                dif._next_step_soon()

        # a short delay rather than 0: the canvas paints the new visual first
        QTimer.singleShot(delay, run)

    def _run_step(self) -> None:
        step = self._pending.pop(0)
        self._in_step = True
        try:
            step()
        finally:
            self._in_step = False

    def finish_building(self) -> None:
        """Make the layers and overlays still missing now (normally one per turn).

        Any use of a layer of the canvas does this first, so that callers
        never see a half-made viewer.

        Examples
        --------
        >>> dif.finish_building()  # doctest: +SKIP
        >>> dif.built  # doctest: +SKIP
        True
        """
        while self._pending and not self._in_step:
            self._run_step()

    @property
    def model(self):
        """The canvas's ``ViewerModel``, complete: using it from outside makes what is missing."""
        self.finish_building()
        return self._model

    @property
    def built(self) -> bool:
        """True once every layer and overlay has been made and events are followed."""
        return not self._pending

    def __getattr__(self, name):
        # A layer asked for before its turn: make the rest now.
        if name in DiffractionViewer._LAZY and self.__dict__.get("_pending"):
            self.finish_building()
            if name in self.__dict__:
                return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _make_canvas(self):
        """napari's QtViewer (the vispy canvas), in the place kept for it."""
        from napari.qt import QtViewer

        with _shortcut_events_blocked():
            qt_viewer = QtViewer(self._model, show_welcome_screen=False)
        # hidden until the next turn: making it and its first paint (the
        # OpenGL context and the canvas's first shaders) were one pause
        qt_viewer.hide()
        self._layout.insertWidget(self._layout.indexOf(self._canvas_slot), qt_viewer, stretch=1)
        self.qt_viewer = qt_viewer

    def _show_canvas(self):
        """The canvas in the place kept for it, shown: its first paint follows."""
        self._layout.removeWidget(self._canvas_slot)
        self._canvas_slot.deleteLater()
        self.qt_viewer.show()

    def _make_pattern(self):
        # The grid first: enabled over existing layers, it rebuilds a view per
        # layer at once (seconds); enabled on none, each layer joins it cheaply.
        grid = _grid(self._model)
        grid.enabled = True
        grid.stride = 3
        empty = np.zeros((2, 2), np.float32)
        self.pattern_layer = self._model.add_image(empty, name="pattern", colormap="gray")
        self._hide_visual(self.pattern_layer)

    def _make_q_mask(self):
        self.q_mask_layer = self._model.add_shapes(
            name="q-mask",
            edge_color="yellow",
            face_color="transparent",
            edge_width=0.6,
            opacity=0.8,
        )
        self._hide_visual(self.q_mask_layer)

    def _make_average(self):
        empty = np.zeros((2, 2), np.float32)
        self.average_layer = self._model.add_image(empty, name="cluster average", colormap="magma")
        self._hide_visual(self.average_layer)

    def _add_disk_points(self, name, index: int | None = None):
        """An empty Points layer in the style of Bragg disks (cyan rings), at ``index``.

        Its visual is hidden until :meth:`_reveal`.
        """
        from napari.layers import Points

        layer = Points(
            np.empty((0, 2)),
            name=name,
            face_color="transparent",
            border_color="cyan",
            border_width=0.15,
            size=4,
        )
        layers = self._model.layers
        layers.insert(len(layers) if index is None else index, layer)
        self._hide_visual(layer)
        return layer

    def _make_peaks(self):
        self.peaks_layer = self._add_disk_points("Bragg peaks")

    def _make_text(self):
        self.text_overlay = _text_overlay(self._model)
        self.text_overlay.visible = True
        self.text_overlay.font_size = 9
        self.text_overlay.color = "white"
        self.text_overlay.position = "bottom_left"
        self._model.layers.selection.active = self.pattern_layer

    def _load_glyphs(self, chars: str):
        """Render the glyphs of ``chars`` in the canvas's font now, without drawing.

        vispy renders each character's glyph the first time a text of the
        canvas shows it (a few milliseconds each); the axes' and scale bars'
        labels, and the first cluster's caption, would otherwise render
        dozens in one paint. A few characters per turn while the canvas is
        made instead, outside any paint (drawn invisibly, as before, they
        were rendered by the paint after the step, in the same pause).
        """
        preload_glyphs(self.qt_viewer, chars)

    def _load_main_glyphs(self, chars: str):
        """Render ``chars``' glyphs in the main canvas's font, without drawing.

        Each canvas has its own font atlas: the main view's scale bar and
        the cluster marker's caption would render theirs in the paint that
        first shows them. A few characters per turn here instead.
        """
        preload_glyphs(self._viewer, chars)

    def _make_axes(self):
        axes = _axes(self._model)
        axes.labels = True
        axes.visible = True
        _show_overlay_visuals(self.qt_viewer, axes, False)

    def _make_scale_bars(self):
        scale_bar = _scale_bar(self._model)
        # placed first: made visible last, its visuals are made once, where they stay
        if hasattr(scale_bar, "gridded"):
            scale_bar.gridded = True  # one per panel
        scale_bar.position = "top_right"  # the text overlay is at the bottom
        scale_bar.visible = True
        _show_overlay_visuals(self.qt_viewer, scale_bar, False)

    def _reveal_overlay(self, which, index: int):
        """Show the ``index``-th visual of an overlay made hidden: the next paint compiles it."""
        overlay = which(self._model)
        _show_overlay_visuals(self.qt_viewer, overlay, overlay.visible, index)

    def _make_main_scale_bar(self):
        # turns of its own: the main canvas makes it, then paints (and compiles) it
        main = getattr(self._viewer, "window", None)
        scale_bar = _scale_bar(self._viewer)
        scale_bar.visible = True
        _show_overlay_visuals(getattr(main, "_qt_viewer", None), scale_bar, False)

    def _reveal_main_scale_bar(self):
        main = getattr(self._viewer, "window", None)
        scale_bar = _scale_bar(self._viewer)
        _show_overlay_visuals(getattr(main, "_qt_viewer", None), scale_bar, scale_bar.visible)

    def _make_virtual_detector(self):
        self.virtual = VirtualDetector(self)  # its ROI layer joins the pattern panel
        self._layout.insertWidget(1, self.virtual.controls.native)
        self._layout.insertWidget(2, self.virtual.histogram.canvas)

    def _make_average_q_mask(self):
        # the q-mask drawn on the average too (and the third layer of its panel)
        self.average_q_mask_layer = self._model.add_shapes(
            name="q-mask (average)",
            edge_color="yellow",
            face_color="transparent",
            opacity=0.5,
        )
        self._hide_visual(self.average_q_mask_layer)

    def _make_panels(self):
        """One more layer per panel (see :meth:`_make_pattern_peaks`), first.

        Each of this and the next two steps updates the grid's views, one per
        turn; raising the stride before the two layers arrive means that no
        third panel (a view with its own overlays) is ever made meanwhile.
        """
        grid = _grid(self._model)
        self._panel_stride = max(1, int(grid.stride))
        grid.stride = self._panel_stride + 1

    def _make_pattern_peaks(self):
        """The Bragg preview's disks on the pattern panel, at the end of it.

        The average panel gets an empty layer too: overlays that add one
        layer per panel (the orientation templates) count on both panels
        holding ``grid.stride`` layers.
        """
        active = self._model.layers.selection.active  # adding a layer selects it
        self.pattern_peaks_layer = self._add_disk_points(
            "Bragg disks (pattern)", index=self._panel_stride
        )
        self._model.layers.selection.active = active

    def _make_average_spacer(self):
        active = self._model.layers.selection.active
        self._model.add_points(np.empty((0, 2)), name="(average panel spacer)", visible=False)
        self._model.layers.selection.active = active

    def _connect(self):
        """Follow the controls, and show what the main viewer has now.

        In three turns (the data layer, the clusters layer, the q-mask and
        the pattern under the mouse), each redrawing part of the canvas.
        """
        self.q_mask_layer.events.data.connect(self._on_q_mask_edited)
        self.controls.reset_choices()  # layers added while the canvas was being made
        self._pick_layers()
        self._on_data_layer()

    def _connect_clusters(self):
        self._on_cluster_layer()

    def _connect_q_mask(self):
        self._draw_q_mask(self._session.q_mask)
        if self._missed_mouse:  # the cursor moved while the canvas was being made
            self.on_mouse_move()

    def _pick_layers(self):
        c = self.controls
        if c.data.value is None:
            data = [x for x in self._viewer.layers if is_data_layer(x)]
            if data:
                c.data.value = data[-1]
        clusters = [x for x in self._viewer.layers if is_cluster_layer(x)]
        if clusters and c.clusters.value is None:
            c.clusters.value = clusters[-1]  # the most recent segmentation

    def _built_first(self, name: str):
        """The handler ``name`` for a control: the canvas is completed first.

        The widget is held weakly, so that the connection keeps nothing alive.
        """
        me = weakref.ref(self)

        def handle(*args):
            dif = me()
            if dif is None:
                return None
            dif.finish_building()
            return getattr(dif, name)(*args)

        return handle

    def _weak(self, name: str):
        """The handler ``name``, holding the widget weakly."""
        me = weakref.ref(self)

        def handle(*args):
            dif = me()
            return None if dif is None else getattr(dif, name)(*args)

        return handle

    def _when_built(self, name: str):
        """The handler ``name`` for the main viewer's events, once the canvas is made.

        Until then the events only count: :meth:`_connect` shows the state
        they lead to. Connected at once, so that none is lost meanwhile; the
        widget is held weakly, so that the connection keeps nothing alive.
        """
        me = weakref.ref(self)

        def follow(*args):
            dif = me()
            if dif is None:
                return None
            if dif._pending:
                if name == "_on_mouse_throttled":
                    dif._missed_mouse = True
                return None
            return getattr(dif, name)(*args)

        return follow

    def resizeEvent(self, event):
        super().resizeEvent(event)
        self._model.reset_view()  # keep both patterns whole in the panels

    def showEvent(self, event):
        super().showEvent(event)
        self._forbid_floating()

    def _forbid_floating(self):
        """Keep the dock from floating unless OpenGL contexts are shared.

        A canvas moved to a floating window needs a context shared with the
        main window's (``Qt.AA_ShareOpenGLContexts`` set before the
        application starts); without it the canvas stops drawing.
        """
        from qtpy.QtCore import QCoreApplication, Qt
        from qtpy.QtWidgets import QDockWidget

        if QCoreApplication.testAttribute(Qt.ApplicationAttribute.AA_ShareOpenGLContexts):
            return
        dock = self.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        if dock is not None:
            floatable = QDockWidget.DockWidgetFeature.DockWidgetFloatable
            dock.setFeatures(dock.features() & ~floatable)

    # -------------------------------------------------------------- layers
    @property
    def data_layer(self):
        return self.controls.data.value

    @property
    def cluster_layer(self):
        return self.controls.clusters.value

    @property
    def state(self):
        layer = self.cluster_layer
        if layer is None:
            return None
        link = ensure_link(self._viewer, layer)
        state = None if link is None else link.state
        if state is not self._linked_state:
            # A new layer, or clustering was run again into the same layer.
            if self._linked_state is not None:
                self._linked_state.changed.disconnect(self._on_state_changed)
            if state is not None:
                state.changed.connect(self._on_state_changed)
            self._linked_state = state
            self._avg_key = None
        return state

    def _on_layers_changed(self, event=None):
        self.controls.reset_choices()
        if event is not None and event.type == "inserted":
            # Pick up a data or cluster layer as soon as one appears.
            layer = event.value
            if self.controls.data.value is None and is_data_layer(layer):
                self.controls.data.value = layer
            if is_cluster_layer(layer) and layer is not self.controls.clusters.value:
                self.controls.clusters.value = layer

    def _on_data_layer(self, *_):
        layer = self.data_layer
        meta = None if layer is None else stem_meta(layer)
        cube = None if meta is None else meta["cube"]
        det = None if cube is None else tuple(int(s) for s in cube.shape[-2:])
        self._prefetched = {}
        self._calibrate(meta)
        if det != self._detector:
            self._detector = det
            self.pattern = None
            self._set_image(self.pattern_layer, None)
            self.refresh_pattern_disks()  # removes the previous detector's disks
            self._draw_q_mask(self._session.q_mask)
            self._model.reset_view()
        self.virtual.detector_changed()

    def _calibrate(self, meta):
        """Show reciprocal space in calibrated q (scale bar and axes in q units)."""
        cal = (meta or {}).get("calibration") or {}
        size = float(cal.get("q_pixel_size") or 1.0)
        units = str(cal.get("q_units") or "pixel")
        for lay in self._model.layers:
            lay.scale = (size, size)
            try:
                lay.units = (units, units)
            except Exception:  # a unit pint does not know: plain pixels
                lay.units = ("pixel", "pixel")
        self._model.dims.axis_labels = ("qx", "qy")

    def _on_cluster_layer(self, *_):
        layer = self.cluster_layer
        old = self._watched()
        if old is not layer:
            if old is not None:
                old.events.selected_label.disconnect(self._on_selected_label)
                old.events.metadata.disconnect(self._on_cluster_metadata)
            if layer is not None:
                layer.events.selected_label.connect(self._on_selected_label)
                layer.events.metadata.connect(self._on_cluster_metadata)
            self._watched = weakref.ref(layer) if layer is not None else _none
        self._avg_key = None
        self._refresh_soon()

    def _on_cluster_metadata(self, event=None):
        self._avg_key = None
        self._refresh_soon()

    def _refresh_soon(self) -> None:
        """Show the new clusters' average in the next event-loop turn.

        A new or re-run clusters layer is drawn by the main viewer first;
        the average, its Bragg disks and the seed marker follow in a turn of
        their own, so that neither holds the window for the sum of both.
        """
        from qtpy.QtCore import QTimer

        if getattr(self, "_refresh_pending", False):
            return
        self._refresh_pending = True
        me = weakref.ref(self)

        def run():
            dif = me()
            if dif is None:
                return
            dif._refresh_pending = False
            with contextlib.suppress(RuntimeError):  # the widget was deleted meanwhile
                dif._refresh_average()

        QTimer.singleShot(0, run)

    # --------------------------------------------------------------- mouse
    def on_mouse_move(self, event=None):
        """Show the pattern (and cluster) under the main viewer's cursor."""
        layer = self.data_layer
        if layer is None:
            return
        index = scan_position(layer, self._viewer.cursor.position)
        if index is None:
            return
        cube = stem_meta(layer)["cube"]
        if cube.ndim == 5 and len(index) == 3:
            t, rx, ry = index
        else:
            rx, ry = index[-2:]
            t = self._time_step()
        if (rx, ry) == self.position and t == self.t and self.pattern is not None:
            return
        if t != self.t:
            self._prefetched = {}
        self.position, self.t = (rx, ry), t
        self._show_pattern()
        if self.controls.source.value == "label under mouse":
            self._refresh_average()

    def _time_step(self) -> int:
        for layer in (self.cluster_layer, self.data_layer):
            if layer is not None and layer.ndim == 3:
                return layer_step(self._viewer, layer)
        return 0

    def _on_step(self, event=None):
        t = self._time_step()
        if t == self.t:
            return
        self.t = t
        self._prefetched = {}
        self.virtual.time_changed()
        self._avg_key = None
        self._refresh_average()
        if self.position is not None:
            self._show_pattern()

    def _show_pattern(self):
        layer = self.data_layer
        if layer is None or self.position is None:
            return
        source = direct_source(stem_meta(layer))
        rx, ry = self.position
        t = min(self.t, source.shape[0] - 1) if source.ndim == 5 else 0
        pattern = self._prefetched.pop((t, rx, ry), None)
        if pattern is None:
            pattern = _read(source, t, rx, ry)
        self.pattern = np.asarray(pattern)
        self._set_image(self.pattern_layer, self.pattern)
        self.pattern_title.setText(f"pattern at scan ({rx}, {ry})")
        self._update_text()
        self.refresh_pattern_disks()
        self._prefetch(source, t, rx, ry)

    def _prefetch(self, source, t, rx, ry):
        """Read the 8 neighbours of the hovered position in a background thread.

        A mouse sweep moves to a neighbour next; its pattern is then already
        in memory. The cache holds at most one neighbourhood.
        """
        from concurrent.futures import ThreadPoolExecutor

        if self._prefetch_pool is None:
            self._prefetch_pool = ThreadPoolExecutor(1, thread_name_prefix="stem-prefetch")
        scan = source.shape[-4:-2]
        wanted = [
            (t, rx + dx, ry + dy)
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            if (dx or dy) and 0 <= rx + dx < scan[0] and 0 <= ry + dy < scan[1]
        ]
        keep = {k: v for k, v in self._prefetched.items() if k in wanted}
        cache = self._prefetched = keep

        def fill():
            for key in wanted:
                if self._prefetched is not cache:
                    return  # the mouse moved on
                if key not in cache:
                    try:
                        cache[key] = _read(source, *key)
                    except Exception:  # a read error shows when the pattern is hovered
                        return

        self._prefetch_pool.submit(fill)

    # ------------------------------------------------------------- average
    def _on_selected_label(self, event=None):
        if self.controls.source.value == "selected label":
            self._refresh_average()

    def _on_state_changed(self, steps):
        if self.t in steps or not steps:
            self._avg_key = None
            self._refresh_average()

    def current_label(self) -> int | None:
        """The label whose average is shown (None when there is none)."""
        layer, state = self.cluster_layer, self.state
        if layer is None or state is None:
            return None
        t = min(self.t, state.n_steps - 1)
        if self.controls.source.value == "selected label":
            return int(layer.selected_label)
        if self.position is None:
            return None
        return int(state.step_labels(t)[self.position])

    def _refresh_average(self, *_):
        if self._pending and not self._in_step:
            # Asked for by another widget (the Bragg widget's settings, say)
            # while the canvas is being made: its last step shows the average.
            self._avg_key = None
            return
        state = self.state
        label = self.current_label()
        t = 0 if state is None else min(self.t, state.n_steps - 1)
        key = (id(state), t, label, self.controls.show_peaks.value, self.controls.disk_radius.value)
        if key == self._avg_key:
            return
        mean = None if state is None or not label else state.mean(t, label)
        if state is not None and label and mean is None and not state.has_sums(t):
            self._avg_key = None  # averages of this time step are being computed
        else:
            self._avg_key = key
        self.label = label if mean is not None else None
        self.average = mean
        self._set_image(self.average_layer, mean)
        self.average_title.setText(
            "cluster average" if self.label is None else f"average of cluster {self.label}"
        )
        self._update_marker(state, t, self.label)
        self._find_peaks(mean if self.controls.show_peaks.value else None)
        self._update_text()

    # --------------------------------------------------------- Bragg disks
    def _find_peaks(self, pattern) -> None:
        """Find the average's Bragg disks in a worker thread (the newest request wins).

        The search takes 0.2-0.4 s per average (seconds the first time, while
        its kernels load), too long for the GUI thread while the mouse moves
        from cluster to cluster. The disks of the previous average are
        removed at once; a request still waiting is cancelled by the next
        one, and a result that arrives after a newer request is dropped.
        """

        self._peaks_request += 1
        request = self._peaks_request
        if self._peaks_future is not None:
            self._peaks_future.cancel()
            self._peaks_future = None
        radius = float(self.controls.disk_radius.value)
        if pattern is None:
            self._show_peaks(request, (np.empty((0, 2)), np.empty(0), []), radius)
            return
        self._show_peaks(None, (np.empty((0, 2)), np.empty(0), []), radius)
        self.peaks_pending = True
        params = None if self.bragg_params is None else dict(self.bragg_params)

        def work():
            from ._bragg import bragg_display

            return bragg_display(pattern, params, radius)

        self._peaks_future = self._submit_bragg(work, self._peaks_bridge.found, request, radius)

    def _submit_bragg(self, work, signal, request, radius):
        """Run ``work`` in the one Bragg thread; its future reaches ``signal`` in the GUI thread."""
        from concurrent.futures import ThreadPoolExecutor

        if self._bragg_pool is None:
            self._bragg_pool = ThreadPoolExecutor(1, thread_name_prefix="stem-bragg")

        def done(future):
            if future.cancelled():
                return
            with contextlib.suppress(RuntimeError):  # the viewer was closed meanwhile
                signal.emit(request, future, radius)

        future = self._bragg_pool.submit(work)
        future.add_done_callback(done)
        return future

    def _on_peaks_found(self, request, future, radius):
        if request != self._peaks_request:
            return  # a newer average was asked for meanwhile
        self._peaks_future = None
        try:
            found = future.result()
        except Exception as e:  # shown in the panel, not raised into Qt
            found = (np.empty((0, 2)), np.empty(0), [])
            self.text_overlay.text = f"Bragg disks not found: {e}"
            self._show_peaks(request, found, radius)
            return
        self._show_peaks(request, found, radius)
        self._update_text()

    def _show_peaks(self, request, found, radius):
        from ._bragg import set_disk_points

        self.peaks, self.peak_intensities, hk = found
        set_disk_points(self.peaks_layer, self.peaks, hk)
        self.peaks_layer.size = max(3.0, 2.4 * radius)
        if request is not None:
            self.peaks_pending = False

    def refresh_pattern_disks(self) -> None:
        """Search the disks of the pattern under the mouse (while the Bragg preview is on).

        Like the average's, the search runs in the worker thread and the
        newest request wins: the pattern is shown at once, the previous
        disks are removed, and its own disks follow when found unless the
        mouse moved on meanwhile. They are labelled with their indices
        against the lattice of the position's cluster, when the Bragg
        widget has one (:attr:`bragg_lattices`).

        Examples
        --------
        >>> dif.bragg_params = {"probe_radius": 2.5}  # doctest: +SKIP
        >>> dif.refresh_pattern_disks()  # doctest: +SKIP
        """
        self._pattern_peaks_request += 1
        request = self._pattern_peaks_request
        if self._pattern_peaks_future is not None:
            self._pattern_peaks_future.cancel()
            self._pattern_peaks_future = None
        radius = float(self.controls.disk_radius.value)
        self._show_pattern_peaks(None, (np.empty((0, 2)), np.empty(0), []), radius)
        pattern = self.pattern
        if self.bragg_params is None or pattern is None:
            self.pattern_peaks_pending = False
            return
        self.pattern_peaks_pending = True
        params, lattice = dict(self.bragg_params), self._pattern_lattice()

        def work():
            from ._bragg import pattern_disks_display

            return pattern_disks_display(pattern, params, radius, lattice)

        self._pattern_peaks_future = self._submit_bragg(
            work, self._peaks_bridge.pattern_found, request, radius
        )

    def _pattern_lattice(self):
        """``(g1, g2, center)`` of the hovered position's cluster, or None."""
        state, lattices = self.state, self.bragg_lattices
        if state is None or not lattices or self.position is None:
            return None
        t = min(self.t, state.n_steps - 1, len(lattices) - 1)
        try:
            label = int(state.step_labels(t)[self.position])
        except (IndexError, TypeError):
            return None
        table = lattices[t]
        if not 0 < label <= len(table):
            return None
        return table.g1[label - 1], table.g2[label - 1], table.center[label - 1]

    def _on_pattern_peaks_found(self, request, future, radius):
        if request != self._pattern_peaks_request:
            return  # the mouse moved on (or the preview changed) meanwhile
        self._pattern_peaks_future = None
        try:
            found = future.result()
        except Exception as e:  # shown in the panel, not raised into Qt
            found = (np.empty((0, 2)), np.empty(0), [])
            self.text_overlay.text = f"Bragg disks of the pattern not found: {e}"
        self._show_pattern_peaks(request, found, radius)

    def _show_pattern_peaks(self, request, found, radius):
        from ._bragg import set_disk_points

        layer = self.pattern_peaks_layer
        had = len(self.pattern_peaks)
        self.pattern_peaks, _, hk = found
        if had or len(self.pattern_peaks):  # clearing an empty layer costs a hover time
            set_disk_points(layer, self.pattern_peaks, hk)
            layer.size = max(3.0, 2.4 * radius)
        if request is not None:
            self.pattern_peaks_pending = False

    def _update_marker(self, state, t, label):
        """Mark the cluster's seed in the main view, with its label and size."""
        layer = self.cluster_layer
        if state is None or layer is None or not label:
            self._marker_next = None
            if self._marker is not None and self._marker in self._viewer.layers:
                self._marker.data = np.empty((0, self._marker.ndim))
            return
        table = state.table(t)
        seed = table.seed[label - 1]
        size = int(table.size[label - 1])
        point = [float(seed[0]), float(seed[1])]
        if state.time_series:
            point = [float(t)] + point
        marker = self._marker
        usable = marker is not None and marker in self._viewer.layers
        if not usable or marker.ndim != len(point) or self._marker_prepared:
            if not usable or marker.ndim != len(point):
                self._marker = self._new_marker(layer, len(point))
            # made ahead (while the clustering job computed) or just now:
            # shown a turn later, and its first point and caption a turn
            # after that: making the layer, the paint that compiles its
            # shaders and the one that renders the caption's glyphs were one
            # of the longest pauses of a clustering job.
            self._marker_prepared = False
            self._marker_next = (point, int(label), size)
            self._show_marker_soon(reveal=True)
            return
        if self._marker_next is not None:
            self._marker_next = (point, int(label), size)  # the newest wins
            return
        marker.data = np.array([point])
        marker.features = {"label": [int(label)], "size": [size]}

    def _new_marker(self, like, ndim: int):
        """The cluster marker, hidden and empty, with ``like``'s scale and translation.

        Added without taking the selection (the user's layer stays active).
        """
        from ._common import not_activated

        sk = spatial_kwargs(like, ndim)
        sk.pop("axis_labels", None)
        with not_activated(self._viewer):
            return self._viewer.add_points(
                np.empty((0, ndim)),
                name=MARKER_NAME,
                symbol="square",
                face_color="transparent",
                border_color="yellow",
                border_width=0.2,
                size=max(2.0, 0.04 * max(like.data.shape[-2:])),
                text={
                    "string": "cluster {label}: {size} positions",
                    "color": "yellow",
                    "size": 10,
                    "anchor": "upper_left",
                    "translation": [0.0] * (ndim - 2) + [-1.5, 1.5],
                },
                features={"label": np.empty(0, int), "size": np.empty(0, int)},
                visible=False,
                **sk,
            )

    def _prepare_marker(self, like, ndim: int) -> None:
        """Make the marker ahead for a clustering job (``like`` None: the job failed).

        A marker made ahead and never shown is removed again when the job
        fails or is cancelled.
        """
        marker = self._marker
        usable = marker is not None and marker in self._viewer.layers
        if like is None:
            if usable and self._marker_prepared:
                self._viewer.layers.remove(marker)
                self._marker = None
            self._marker_prepared = False
            return
        if usable and marker.ndim == ndim:
            return  # the one there serves
        self._marker = self._new_marker(like, ndim)
        self._marker_prepared = True

    def _show_marker_soon(self, reveal: bool = False) -> None:
        """Show the new marker layer (``reveal``), then give it its point, a turn each."""
        from qtpy.QtCore import QTimer

        from ._common import LATER_STEP_MS

        me = weakref.ref(self)

        def run():
            dif = me()
            if dif is None:
                return
            marker = dif._marker
            if marker is None or marker not in dif._viewer.layers:
                dif._marker_next = None
                return
            if reveal:
                marker.visible = True
                dif._show_marker_soon()
                return
            nxt, dif._marker_next = dif._marker_next, None
            if nxt is None:
                return
            point, label, size = nxt
            if len(point) == marker.ndim:
                marker.data = np.array([point])
                marker.features = {"label": [label], "size": [size]}

        QTimer.singleShot(LATER_STEP_MS, run)

    # ---------------------------------------------------------- display
    def _redraw(self, *_):
        self._set_image(self.pattern_layer, self.pattern)
        self._set_image(self.average_layer, self.average)

    def _set_image(self, layer, raw):
        c = self.controls
        if raw is None:
            shape = self._detector or (2, 2)
            layer.data = np.zeros(shape, np.float32)
            layer.contrast_limits = (0.0, 1.0)
            return
        shown = scale_pattern(raw, c.scaling.value, float(c.gamma.value))
        reset = layer.data.shape != shown.shape
        layer.data = shown
        lo, hi = c.contrast.value
        vals = np.asarray(shown, np.float64)
        a, b = (float(v) for v in np.percentile(vals, [lo, hi]))
        if not b > a:
            a, b = float(vals.min()), float(vals.max())
            if not b > a:
                a, b = a - 0.5, a + 0.5
        layer.contrast_limits = (a, b)
        if reset:
            self._model.reset_view()

    def _update_text(self):
        parts = []  # the scan position is in the pattern panel's title
        if self._time_step_count() > 1:
            parts.append(f"t = {self.t}")
        state = self.state
        table = None if state is None else state.table(min(self.t, state.n_steps - 1))
        if self.label is not None and table is not None and self.label <= len(table):
            seed = table.seed[self.label - 1]
            parts.append(
                f"cluster {self.label}: {int(table.size[self.label - 1])} positions, "
                f"seed ({int(seed[0])}, {int(seed[1])}), "
                + ("finding disks…" if self.peaks_pending else f"{len(self.peaks)} disks")
            )
        elif state is not None and not state.has_sums(min(self.t, state.n_steps - 1)):
            parts.append("computing cluster averages…")
        self.text_overlay.text = "   ".join(parts)

    def _time_step_count(self) -> int:
        layer = self.data_layer
        if layer is None:
            return 1
        cube = stem_meta(layer)["cube"]
        return cube.shape[0] if cube.ndim == 5 else 1

    # -------------------------------------------------------------- q-mask
    def _draw_q_mask(self, q):
        layer = self.q_mask_layer
        layer.events.data.disconnect(self._on_q_mask_edited)
        try:
            if q is None or self._detector is None or not self.controls.show_q_mask.value:
                layer.data = []
                return
            qx, qy = self._detector
            cx, cy = q.get("center") or ((qx - 1) / 2, (qy - 1) / 2)
            shapes = []
            # beyond the farthest detector corner the circle means "everything"
            corner = float(np.hypot(max(cx, qx - 1 - cx), max(cy, qy - 1 - cy)))
            # an outer radius past the corners limits nothing: not drawn
            for r in (q["inner"], q["outer"] if q["outer"] < corner else 0.0):
                if r > 0:
                    shapes.append(
                        np.array(
                            [[cx - r, cy - r], [cx - r, cy + r], [cx + r, cy + r], [cx + r, cy - r]]
                        )
                    )
            layer.data = []
            if shapes:
                layer.add_ellipses(shapes, edge_color="yellow", face_color="transparent")
        finally:
            layer.events.data.connect(self._on_q_mask_edited)
            self._mirror_q_mask()

    def _mirror_q_mask(self):
        mirror = getattr(self, "average_q_mask_layer", None)
        if mirror is not None:
            mirror.data = []
            if len(self.q_mask_layer.data):
                mirror.add_ellipses(
                    list(self.q_mask_layer.data), edge_color="yellow", face_color="transparent"
                )

    def _on_q_mask_edited(self, event=None):
        """The user moved the circles: new radii about the detector centre."""
        if self._detector is None or getattr(event, "action", "changed") not in (
            "changed",
            "added",
            "removed",
        ):
            return
        radii = []
        qx, qy = self._detector
        centre = np.array([(qx - 1) / 2, (qy - 1) / 2])
        for data in self.q_mask_layer.data:
            half = (data.max(0) - data.min(0)) / 2
            offset = np.linalg.norm(data.mean(0) - centre)
            radii.append(float(half.mean() + offset))
        if not radii:
            return
        inner = min(radii) if len(radii) > 1 else 0.0
        self._session.set_q_mask(inner, max(radii))
        self._mirror_q_mask()

    def _on_show_q_mask(self, *_):
        self._draw_q_mask(self._session.q_mask)

    def _on_edit_q_mask(self, value=None):
        if self.controls.edit_q_mask.value:
            self._model.layers.selection.active = self.q_mask_layer
            self.q_mask_layer.mode = "direct"
        else:
            self.q_mask_layer.mode = "pan_zoom"
            self._model.layers.selection.active = self.pattern_layer


def _glyph_chunks(size: int = 12) -> list[str]:
    """The characters of the captions in chunks (then "" to end), see ``_load_glyphs``."""
    chars = "".join(ch for ch in string.printable if not ch.isspace()) + "…–×·°Åσ"
    return [chars[i : i + size] for i in range(0, len(chars), size)] + [""]


def preload_glyphs(viewer, chars: str) -> None:
    """Render the glyphs of ``chars`` in the font of a canvas (napari viewer or ``QtViewer``).

    vispy renders a character's glyph (a signed-distance texture, a few
    milliseconds each) the first time a text of the canvas draws it, inside
    the paint. Rendered here, the paint finds them; napari's private font
    objects are used, so any failure only leaves the glyphs to the paint.

    Examples
    --------
    >>> preload_glyphs(viewer, "0123456789 nm")  # doctest: +SKIP
    """
    with contextlib.suppress(Exception):
        canvas = getattr(viewer, "canvas", None)
        if not hasattr(canvas, "_font_info"):  # a napari viewer, not its QtViewer
            canvas = viewer.window._qt_viewer.canvas
        info = canvas._font_info
        font = info.font_manager.get_font(info.face)
        for ch in chars:
            font[ch]  # renders the glyph once


def _none():
    return None


def _canvas_alive(dif) -> bool:
    """False once Qt has deleted the widget or its canvas (the viewer was closed)."""
    try:
        dif.objectName()
        # not the lazy attribute: asking for it would make the canvas
        canvas = getattr(dif.__dict__.get("qt_viewer"), "canvas", None)
        native = getattr(canvas, "native", None)
        if native is not None:
            native.objectName()
    except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
        return False
    return True


class _PeaksBridge(QObject):
    """Carries a Bragg search's result from its worker thread to the GUI thread."""

    found = Signal(int, object, float)
    #: The same for the disks of the pattern under the mouse.
    pattern_found = Signal(int, object, float)


def _read(source, t, rx, ry) -> np.ndarray:
    """One pattern of a 4D or 5D source (a file's array-like, numpy or dask)."""
    pattern = source[(t, rx, ry) if source.ndim == 5 else (rx, ry)]
    if hasattr(pattern, "compute"):
        pattern = pattern.compute()
    return np.asarray(pattern)


@contextlib.contextmanager
def _shortcut_events_blocked():
    """napari's "shortcut changed" events held back while a ``QtViewer`` is made.

    A new ``QtViewer`` unbinds and binds again every keyboard shortcut of
    the settings (the same ones, so nothing changes in the end), and each of
    the 170-odd steps told every welcome screen and button of the
    application to refresh: 60 % of making the canvas, and more with each
    viewer open. The buttons of the new canvas take their tooltips when they
    are bound, so nothing misses the final state.
    """
    try:
        from napari.utils.action_manager import action_manager

        blocker = action_manager.events.shortcut_changed.blocker()
    except Exception:  # napari without them: the events go through
        blocker = contextlib.nullcontext()
    with blocker:
        yield


def _show_overlay_visuals(qt_viewer, overlay, visible: bool, index: int | None = None) -> None:
    """Show or hide the vispy visuals of an overlay (all, or the ``index``-th).

    napari makes one visual per grid panel when the overlay becomes visible;
    hiding them (not the overlay) until a later turn keeps their first paint,
    which compiles their shaders, out of the turn that made them. napari's
    private canvas mapping is used: if it is missing, the visuals show at once.
    """
    canvas = getattr(qt_viewer, "canvas", None)
    visuals = getattr(canvas, "_viewer_overlay_to_visual", {}).get(overlay, [])
    chosen = visuals if index is None else visuals[index : index + 1]
    for visual in chosen:
        with contextlib.suppress(Exception):
            visual.node.visible = visible


def _axes(model):
    """The axes overlay (napari >= 0.9 moved it to the scene)."""
    scene = getattr(model, "scene", None)
    overlays = getattr(scene, "overlays", None)
    axes = getattr(overlays, "axes", None)
    return axes if axes is not None else model.axes


def _scale_bar(model):
    canvas = getattr(model, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays.scale_bar if overlays is not None else model.scale_bar


def _grid(model):
    """The grid settings of a viewer model (napari >= 0.9 moved them to the canvas)."""
    canvas = getattr(model, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else model.grid


def _text_overlay(model):
    canvas = getattr(model, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays.text if overlays is not None else model.text_overlay


class _Controls(Container):
    """Layer choice and display controls of the diffraction viewer."""

    def __init__(self, viewer):
        super().__init__(labels=False)
        self.data = create_widget(
            label="Data",
            annotation="napari.layers.Image",
            options={"choices": layer_choices(viewer, is_data_layer)},
        )
        self.clusters = create_widget(
            label="Clusters",
            annotation="napari.layers.Labels",
            options={"choices": layer_choices(viewer, is_cluster_layer, none="(none)")},
        )
        self.source = create_widget(
            "label under mouse",
            label="Average",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": ["label under mouse", "selected label"]},
        )
        self.scaling = create_widget(
            "log",
            label="Scaling",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": ["linear", "log", "power"]},
        )
        self.gamma = create_widget(
            0.5,
            label="γ",
            annotation=float,
            widget_type="FloatSpinBox",
            options={"min": 0.05, "max": 2.0, "step": 0.05},
        )
        self.contrast = create_widget(
            (0.5, 99.8),
            label="Contrast (%)",
            annotation=tuple[float, float],
            widget_type="FloatRangeSlider",
            options={"min": 0.0, "max": 100.0, "step": 0.1},
        )
        self.contrast.tooltip = "Contrast limits as percentiles of the displayed pattern"
        self.show_q_mask = create_widget(True, label="q-mask", annotation=bool)
        self.edit_q_mask = create_widget(False, label="edit", annotation=bool)
        self.edit_q_mask.tooltip = "Drag the circles' handles to set the annulus radii"
        self.show_peaks = create_widget(True, label="Bragg disks", annotation=bool)
        self.show_peaks.tooltip = "Mark the Bragg disks found in the cluster average"
        self.disk_radius = create_widget(
            1.5,
            label="radius (px)",
            annotation=float,
            widget_type="FloatSpinBox",
            options={"min": 0.5, "max": 50.0, "step": 0.5},
        )
        # Compact rows, so that the canvas below gets the height.
        rows = [
            [self.data, self.clusters],
            [self.source, self.scaling, self.gamma],
            [self.contrast],
            [self.show_q_mask, self.edit_q_mask, self.show_peaks, self.disk_radius],
        ]
        for row in rows:
            box = Container(layout="horizontal", labels=True, widgets=row)
            box.margins = (0, 0, 0, 0)
            self.append(box)
        self.margins = (4, 2, 4, 2)
        self.scaling.changed.connect(self._on_scaling)
        self._on_scaling()
        remember(
            "diffraction",
            {
                "source": self.source,
                "scaling": self.scaling,
                "gamma": self.gamma,
                "contrast": self.contrast,
                "show_q_mask": self.show_q_mask,
                "show_peaks": self.show_peaks,
                "disk_radius": self.disk_radius,
            },
        )

    def _on_scaling(self, *_):
        self.gamma.enabled = self.scaling.value == "power"
