"""Interactive virtual detectors drawn on the diffraction viewer's pattern.

A point, circle, annulus or rectangle is drawn (and dragged) on the pattern
panel of the :class:`~._diffraction.DiffractionViewer`; the integrated
intensity or centre of mass of every pattern inside it is shown as a
"virtual detector" image in the main viewer. The image is computed in a
background thread. When the file was opened in the background, a binned copy
of the cube is in memory (:func:`._background.binned_cube`): every change of
the detector shows an image from it at once (tens of milliseconds), and once
the drag stops the exact image is read from the file, coarse rows first,
replacing the preview as it goes. Without that copy, a coarse image (every
n-th scan position) comes first, then the full image block by block.
"""

from __future__ import annotations

import math
import threading
import time
import weakref

import numpy as np
from magicgui.widgets import Container, create_widget

from ..core._validate import block_rows
from ..core.virtual import (
    ROI_SHAPES,
    coarse_first_rows,
    detector_center,
    roi_mask,
    virtual_detector,
)
from ._common import layer_step, spatial_kwargs, stem_meta

#: Name of the real-space image layer made by the virtual detector.
IMAGE_NAME = "virtual detector"
#: Patterns read for the coarse first image (and while dragging).
COARSE_PATTERNS = 64 * 64
#: The exact image replaces the preview at least this often (seconds).
EXACT_UPDATE_S = 0.25
#: :attr:`VirtualDetector.stride_done` of an image from the binned copy.
PREVIEW = 0
#: Contrast presets of the histogram: name -> percentiles (None: mean ± 3σ).
CONTRAST_PRESETS = {
    "min–max": (0.0, 100.0),
    "0.5–99.5 %": (0.5, 99.5),
    "2–98 %": (2.0, 98.0),
    "mean ± 3σ": None,
}
SIGNALS = {"intensity": 0, "CoM x": 1, "CoM y": 2}


def direct_source(meta: dict):
    """The array to read patterns from: the file itself when known, else the cube.

    Reading one pattern (or a strided block) straight from the file's
    array-like avoids building a dask graph per read (about 5× faster for a
    single pattern).

    Examples
    --------
    >>> import numpy as np
    >>> direct_source({"cube": np.zeros((1, 1, 2, 2))}).shape
    (1, 1, 2, 2)
    """
    cube = meta.get("cube")
    ds = meta.get("stem_dataset")
    src = getattr(ds, "source", None)
    if (
        src is not None
        and getattr(ds, "cube", None) is cube
        and tuple(src.shape) == tuple(cube.shape)
    ):
        return src
    return cube


class StepView:
    """Time step ``t`` of a 5D array-like, read only where indexed.

    ``source[t]`` of a file's array-like would read the whole time step.

    Examples
    --------
    >>> v = StepView(np.arange(32).reshape(2, 2, 2, 2, 2), 1)
    >>> v.shape, int(v[1, 0][0, 1])
    ((2, 2, 2, 2), 25)
    """

    def __init__(self, source, t: int):
        self.source, self.t = source, int(t)
        self.shape = tuple(source.shape[1:])
        self.dtype = source.dtype
        self.ndim = len(self.shape)
        self.chunks = getattr(source, "chunks", None)
        self.path = getattr(source, "path", None)
        self.dataset = getattr(source, "dataset", None)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return self.source[(self.t, *key)]


def step_of(source, t: int | None):
    """The 4D scan of time step ``t`` of ``source``, read lazily (``source`` when 4D)."""
    if t is None or source.ndim != 5:
        return source
    if isinstance(source, np.ndarray) or hasattr(source, "compute"):
        return source[int(t)]  # a view, or lazy
    return StepView(source, t)


def strided_reads_fast(source) -> bool:
    """Whether reading every n-th pattern of ``source`` is cheap (numpy, contiguous HDF5).

    Chunked HDF5 datasets read strided selections chunk by chunk, many times
    slower than whole rows.

    Examples
    --------
    >>> strided_reads_fast(np.zeros((2, 2, 3, 3)))
    True
    """
    if isinstance(source, np.ndarray):
        return True
    path, dataset = getattr(source, "path", None), getattr(source, "dataset", None)
    if path is None or dataset is None:
        return False
    try:
        from ..io._lazy import open_h5

        return open_h5(path)[dataset].chunks is None
    except Exception:  # not an HDF5 dataset: read whole rows
        return False


def coarse_stride(scan_shape, target: int = COARSE_PATTERNS) -> int:
    """Scan stride whose image reads about ``target`` patterns (1 for small scans).

    Examples
    --------
    >>> coarse_stride((256, 256)), coarse_stride((32, 32))
    (4, 1)
    """
    n = int(np.prod(scan_shape[-2:]))
    return max(1, math.ceil(math.sqrt(n / target)))


def default_roi(kind: str, detector_shape) -> dict:
    """A visible detector of the given kind, in detector pixels.

    Examples
    --------
    >>> default_roi("circle", (64, 64))
    {'shape': 'circle', 'center': (31.5, 31.5), 'radius': 4.0}
    """
    cx, cy = detector_center(detector_shape)
    r = min(int(s) for s in detector_shape) / 2.0
    if kind == "point":
        return {"shape": "point", "center": (cx, cy)}
    if kind == "circle":
        return {"shape": "circle", "center": (cx, cy), "radius": r / 8}
    if kind == "annulus":
        return {"shape": "annulus", "center": (cx, cy), "inner": r / 4, "outer": r * 0.9}
    if kind == "rectangle":
        return {"shape": "rectangle", "start": (cx - r / 4, cy - r / 4), "stop": (cx, cy)}
    raise ValueError(f"detector shape must be one of {ROI_SHAPES}; got {kind!r}")


def roi_to_shapes(roi: dict) -> list[tuple[np.ndarray, str]]:
    """napari Shapes ``(corners, shape_type)`` drawing a detector region (pixels).

    Examples
    --------
    >>> roi = {"shape": "annulus", "center": (5, 5), "inner": 1, "outer": 3}
    >>> [shape_type for _, shape_type in roi_to_shapes(roi)]
    ['ellipse', 'ellipse']
    """
    kind = roi["shape"]
    if kind == "rectangle":
        (x0, y0), (x1, y1) = roi["start"], roi["stop"]
        return [(np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], float), "rectangle")]
    cx, cy = roi["center"]
    radii = {"point": [0.5], "circle": [roi.get("radius", 1.0)]}.get(
        kind, [roi.get("inner", 0.0), roi.get("outer", 1.0)]
    )
    out = []
    for r in radii:
        r = max(float(r), 0.5)
        box = np.array([[cx - r, cy - r], [cx - r, cy + r], [cx + r, cy + r], [cx + r, cy - r]])
        out.append((box, "ellipse"))
    return out


def shapes_to_roi(kind: str, shapes: list[np.ndarray]) -> dict | None:
    """The detector region of the drawn shapes (inverse of :func:`roi_to_shapes`).

    Examples
    --------
    >>> box = np.array([[1.0, 2.0], [1.0, 6.0], [5.0, 6.0], [5.0, 2.0]])
    >>> shapes_to_roi("circle", [box])
    {'shape': 'circle', 'center': (3.0, 4.0), 'radius': 2.0}
    """
    if not shapes:
        return None
    first = np.asarray(shapes[0], float)
    lo, hi = first.min(0), first.max(0)
    center = (float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2))
    if kind == "rectangle":
        return {
            "shape": "rectangle",
            "start": (float(lo[0]), float(lo[1])),
            "stop": (float(hi[0]), float(hi[1])),
        }
    if kind == "point":
        return {"shape": "point", "center": center}
    radii = [float(np.mean(np.ptp(np.asarray(s, float), axis=0)) / 2) for s in shapes]
    if kind == "circle":
        return {"shape": "circle", "center": center, "radius": radii[0]}
    inner, outer = (0.0, radii[0]) if len(radii) == 1 else (min(radii), max(radii))
    return {"shape": "annulus", "center": center, "inner": inner, "outer": outer}


class VirtualDetectorControls(Container):
    """Controls of the virtual detector: shape, signal, q-mask exchange, histogram."""

    def __init__(self):
        super().__init__(labels=False)
        self.enabled_box = create_widget(False, label="Virtual detector", annotation=bool)
        self.enabled_box.tooltip = (
            "Draw a detector on the pattern; its image appears in the main viewer"
        )
        self.kind = create_widget(
            "annulus",
            label="shape",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": list(ROI_SHAPES)},
        )
        self.signal = create_widget(
            "intensity",
            label="signal",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": list(SIGNALS)},
        )
        self.to_q_mask = create_widget(label="to q-mask", annotation=None, widget_type="PushButton")
        self.to_q_mask.text = "→ q-mask"
        self.to_q_mask.tooltip = "Use this circle or annulus as the Similarity stage's q-mask"
        self.from_q_mask = create_widget(
            label="from q-mask", annotation=None, widget_type="PushButton"
        )
        self.from_q_mask.text = "← q-mask"
        self.from_q_mask.tooltip = "Make the detector the Similarity stage's q-mask annulus"
        self.preset = create_widget(
            "0.5–99.5 %",
            label="contrast",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": list(CONTRAST_PRESETS)},
        )
        self.status = create_widget("", label="", annotation=str, widget_type="Label")
        rows = [
            [self.enabled_box, self.kind, self.signal],
            [self.to_q_mask, self.from_q_mask, self.preset],
        ]
        boxes = []
        for row in rows:
            box = Container(layout="horizontal", labels=True, widgets=row)
            box.margins = (0, 0, 0, 0)
            self.append(box)
            boxes.append(box)
        self.extra = boxes[1]
        self.append(self.status)
        self.margins = (4, 0, 4, 0)


class HistogramCanvas:
    """A small matplotlib histogram of an image with its contrast limits drawn."""

    def __init__(self, height_px: int = 64):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 1), dpi=100, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setFixedHeight(height_px)
        self.ax = self.figure.add_axes((0.02, 0.3, 0.96, 0.68))
        self.counts = np.zeros(0)
        self.edges = np.zeros(0)

    def show(self, image: np.ndarray | None, limits=None) -> None:
        ax = self.ax
        ax.clear()
        ax.set_facecolor("#262930")
        ax.tick_params(colors="white", labelsize=6, length=2, pad=1)
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#888888")
        if image is not None:
            vals = np.asarray(image, float).ravel()
            vals = vals[np.isfinite(vals)]
            if vals.size:
                self.counts, self.edges = np.histogram(vals, bins=64)
                ax.stairs(self.counts, self.edges, fill=True, color="#8fb3ff")
                if limits is not None:
                    for v in limits:
                        ax.axvline(v, color="yellow", lw=1)
        self.canvas.draw_idle()


def contrast_limits(image: np.ndarray, preset: str) -> tuple[float, float]:
    """Contrast limits of an image for a preset of :data:`CONTRAST_PRESETS`.

    Examples
    --------
    >>> contrast_limits(np.arange(101.0), "2–98 %")
    (2.0, 98.0)
    """
    vals = np.asarray(image, float)
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return 0.0, 1.0
    pct = CONTRAST_PRESETS[preset]
    if pct is None:
        m, s = float(vals.mean()), float(vals.std())
        lo, hi = m - 3 * s, m + 3 * s
    else:
        lo, hi = (float(v) for v in np.percentile(vals, pct))
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5
    return lo, hi


class VirtualDetector:
    """The virtual detector of one diffraction viewer (controls, ROI layer, job).

    Parameters
    ----------
    dif : DiffractionViewer
        Owner: its pattern panel gets the ROI layer, its data layer gives
        the cube and the real-space calibration.
    """

    def __init__(self, dif):
        self._dif = weakref.ref(dif)
        self.controls = VirtualDetectorControls()
        self.histogram = HistogramCanvas()
        self.roi: dict | None = None
        #: Full-size result of the last completed (or running) job, per signal.
        self.images: np.ndarray | None = None  # (3, Rx, Ry) float64
        #: What `images` holds: 1 the exact image, n > 1 every n-th position,
        #: PREVIEW (0) the binned copy's image (maybe partly exact already).
        self.stride_done: int | None = None
        #: perf_counter times of the last request: "requested", "first" (an
        #: image shown), "exact" (the exact image shown).
        self.timing: dict[str, float] = {}
        self.layer = None
        self.jobs_started = 0
        self._job = None  # (worker, cancel event)
        self._queued = None
        self._generation = 0
        self._drawing = False
        from napari.layers import Shapes

        self.shapes_layer = Shapes(
            name="virtual detector",
            edge_color="#ff8c00",
            face_color="transparent",
            edge_width=0.8,
            visible=False,
        )
        # third layer of the pattern panel (the viewer's grid groups 3 layers)
        dif.model.layers.insert(2, self.shapes_layer)
        self.shapes_layer.events.data.connect(self._on_shapes)
        c = self.controls
        c.enabled_box.changed.connect(self._on_enabled)
        c.kind.changed.connect(self._on_kind)
        c.signal.changed.connect(self._show_signal)
        c.preset.changed.connect(self._apply_preset)
        c.to_q_mask.changed.connect(self.send_to_q_mask)
        c.from_q_mask.changed.connect(self.take_from_q_mask)
        self._sync_buttons()
        self._on_enabled()

    # ------------------------------------------------------------ helpers
    @property
    def dif(self):
        return self._dif()

    @property
    def enabled(self) -> bool:
        return bool(self.controls.enabled_box.value)

    def _meta(self):
        dif = self.dif
        layer = None if dif is None else dif.data_layer
        return layer, (None if layer is None else stem_meta(layer))

    def _sync_buttons(self):
        kind = self.controls.kind.value
        self.controls.to_q_mask.enabled = self.enabled and kind in ("circle", "annulus")
        self.controls.from_q_mask.enabled = self.enabled

    # -------------------------------------------------------------- events
    def _on_enabled(self, *_):
        on = self.enabled
        self.shapes_layer.visible = on
        # the detector's controls take room only while it is in use
        self.controls.extra.visible = on
        self.controls.status.visible = on
        self.histogram.canvas.setVisible(on)
        dif = self.dif
        if dif is not None:  # the canvas changed height: fit the patterns again
            from qtpy.QtCore import QTimer

            QTimer.singleShot(50, dif.model.reset_view)
        self._sync_buttons()
        dif = self.dif
        if on:
            if self.roi is None or self.roi["shape"] != self.controls.kind.value:
                self.reset_roi()
            else:
                self.set_roi(self.roi)
            if dif is not None:
                dif.model.layers.selection.active = self.shapes_layer
                self.shapes_layer.mode = "select"
        else:
            self.cancel()
            if dif is not None:
                self.shapes_layer.mode = "pan_zoom"
                dif.model.layers.selection.active = dif.pattern_layer

    def _on_kind(self, *_):
        self._sync_buttons()
        if self.enabled:
            self.reset_roi()

    def detector_changed(self):
        """The data layer (and maybe the detector shape) changed."""
        self.images = None
        self.stride_done = None
        if self.enabled:
            det = self._detector()
            if det is not None and (self.roi is None or not roi_mask(det, self.roi).any()):
                self.reset_roi()
            elif self.roi is not None:
                self.set_roi(self.roi)

    def time_changed(self):
        if self.enabled and self.roi is not None:
            self.images = None
            self.compute()

    def _detector(self):
        dif = self.dif
        return None if dif is None else dif._detector

    def reset_roi(self):
        det = self._detector()
        if det is not None:
            self.set_roi(default_roi(self.controls.kind.value, det))

    def set_roi(self, roi: dict, *, draw: bool = True, compute: bool = True) -> None:
        """Set the detector region (pixels), redraw it and recompute the image."""
        if roi["shape"] != self.controls.kind.value:
            self.controls.kind.changed.disconnect(self._on_kind)
            try:
                self.controls.kind.value = roi["shape"]
            finally:
                self.controls.kind.changed.connect(self._on_kind)
            self._sync_buttons()
        self.roi = roi
        if draw:
            self._draw(roi)
        if compute:
            self.compute()

    def _draw(self, roi):
        layer = self.shapes_layer
        self._drawing = True
        try:
            layer.data = []
            for corners, shape_type in roi_to_shapes(roi):
                layer.add(
                    corners,
                    shape_type=shape_type,
                    edge_color="#ff8c00",
                    face_color="transparent",
                    edge_width=0.8,
                )
        finally:
            self._drawing = False

    def _on_shapes(self, event=None):
        if self._drawing or not self.enabled:
            return
        action = str(getattr(event, "action", "changed"))
        if action.endswith(("adding", "removing")):
            return
        roi = shapes_to_roi(self.controls.kind.value, list(self.shapes_layer.data))
        if roi is None:
            return
        final = not action.endswith("changing")
        # While dragging: coarse images only, and the drawn shapes are left as
        # they are (redrawing would end the drag); at the end, tidy them up.
        self.roi = roi
        self.compute(coarse_only=not final)
        if final and self.controls.kind.value == "annulus":
            self._draw(roi)

    # ----------------------------------------------------------- q-mask
    def send_to_q_mask(self, *_):
        """Make the circle or annulus the q-mask of the Similarity stage."""
        from ._common import session

        dif, roi = self.dif, self.roi
        if dif is None or roi is None or roi["shape"] not in ("circle", "annulus"):
            return
        inner = 0.0 if roi["shape"] == "circle" else float(roi["inner"])
        outer = float(roi["radius"] if roi["shape"] == "circle" else roi["outer"])
        session(dif._viewer).set_q_mask(inner, outer, roi["center"])

    def take_from_q_mask(self, *_):
        """Make the detector the q-mask's annulus (or circle when its inner radius is 0)."""
        from ._common import session

        dif = self.dif
        det = self._detector()
        q = None if dif is None else session(dif._viewer).q_mask
        if q is None or det is None:
            self.controls.status.value = "no q-mask set (Similarity stage)"
            return
        center = q.get("center") or detector_center(det)
        outer = min(float(q["outer"]), float(np.hypot(*det)))
        if q["inner"] > 0:
            roi = {"shape": "annulus", "center": center, "inner": q["inner"], "outer": outer}
        else:
            roi = {"shape": "circle", "center": center, "radius": outer}
        self.set_roi(roi)

    # ------------------------------------------------------------- compute
    def cancel(self):
        if self._job is not None:
            self._job[1].set()
        self._queued = None

    def compute(self, *, coarse_only: bool = False) -> None:
        """(Re)start the background job for the current region."""
        _layer, meta = self._meta()
        det = self._detector()
        if not self.enabled or self.roi is None or meta is None or det is None:
            return
        request = (dict(self.roi), coarse_only)
        self.timing = {"requested": time.perf_counter()}
        if coarse_only and self._preview_now(meta, det):
            # dragging over a binned copy: shown at once (tens of ms), no job
            if self._job is not None:
                self._job[1].set()
            self._queued = None
            return
        if self._job is not None:  # one job at a time: restart when it stops
            self._job[1].set()
            self._queued = request
            return
        self._start(*request)

    def _preview_now(self, meta, det) -> bool:
        """The image of the binned copy, computed and shown in the GUI thread."""
        from ._background import binned_cube

        dif = self.dif
        source = direct_source(meta)
        t = dif._time_step() if source.ndim == 5 else None
        binned = binned_cube(meta.get("cube"), t)
        if binned is None or binned.detector_shape != tuple(det):
            return False
        mask = roi_mask(det, self.roi)
        if not mask.any():
            self.controls.status.value = "the detector lies outside the pattern"
            return True
        self._generation += 1  # results of a running job are stale from now on
        center = self.roi.get("center") or detector_center(det)
        out = binned.images(mask, center)
        scan = tuple(source.shape[-4:-2])
        self._on_image(("preview", binned.step, out), scan, t, int(mask.sum()))
        return True

    def _start(self, roi, coarse_only):
        from napari.qt.threading import create_worker

        dif = self.dif
        _layer, meta = self._meta()
        if dif is None or meta is None:
            return
        det = self._detector()
        mask = roi_mask(det, roi)
        source = direct_source(meta)
        t = dif._time_step() if source.ndim == 5 else None
        cube = step_of(source, None if t is None else min(t, source.shape[0] - 1))
        scan = tuple(cube.shape[:2])
        stride = coarse_stride(scan)
        strides = [stride] if coarse_only or stride == 1 else [stride, 1]
        if coarse_only and stride == 1:
            strides = [1]
        center = roi.get("center") or detector_center(det)
        strided = strided_reads_fast(source)
        cancel = threading.Event()

        class _Stop(Exception):
            pass

        def work():
            for s in strides:
                parts = []

                def on_block(where, part, parts=parts):
                    if cancel.is_set():
                        raise _Stop
                    parts.append((where, part))

                try:
                    out = virtual_detector(
                        cube,
                        mask,
                        center=center,
                        stride=s,
                        strided_reads=strided,
                        on_block=on_block,
                    )
                except _Stop:
                    return
                yield s, out
                if cancel.is_set():
                    return

        from ._background import binned_cube

        binned = binned_cube(meta.get("cube"), t)
        if binned is not None and binned.detector_shape == tuple(det):
            work = self._binned_work(binned, cube, mask, center, coarse_only, strided, cancel)
        if not mask.any():
            self.controls.status.value = "the detector lies outside the pattern"
            return
        self.jobs_started += 1
        worker = create_worker(work, _start_thread=False)
        self._job = (worker, cancel)
        self._generation += 1
        gen = self._generation

        def on_yield(value):
            if gen == self._generation:  # not a job overtaken by a preview
                self._on_image(value, scan, t, int(mask.sum()))

        worker.yielded.connect(on_yield)
        worker.finished.connect(self._on_finished)
        worker.errored.connect(self._on_error)
        self.controls.status.value = "computing…"
        worker.start()

    @staticmethod
    def _binned_work(binned, cube, mask, center, coarse_only, coarse_rows, cancel):
        """Job: the image from the binned copy, then (unless dragging) the exact one.

        Yields ``("preview", step, VirtualImages)`` and then ``("exact", rows,
        (3, len(rows), Ry) array, done, total)`` batches, rows coarse first
        when single rows read cheaply (``coarse_rows``), else in file order.
        """

        def work():
            yield "preview", binned.step, binned.images(mask, center)
            if coarse_only or cancel.is_set():
                return
            rows = cube.shape[0]
            order = coarse_first_rows(rows) if coarse_rows else np.arange(rows)
            # chunked files: blocks of consecutive rows of about 32 MiB
            per_read = block_rows(cube.shape, np.dtype(cube.dtype).itemsize, 32 * 2**20)
            done, batch, vals = 0, [], []
            last = time.perf_counter()
            i = 0
            while i < rows:
                if cancel.is_set():
                    return
                picked = order[i : i + (1 if coarse_rows else per_read)]
                block = cube[int(picked[0]) : int(picked[-1]) + 1]
                block = np.asarray(block.compute() if hasattr(block, "compute") else block)
                out = virtual_detector(block, mask, center=center, threads=False)
                batch.extend(int(r) for r in picked)
                vals.append(np.stack(out))
                i += len(picked)
                done += len(picked)
                now = time.perf_counter()
                if now - last >= EXACT_UPDATE_S or done == rows:
                    yield "exact", np.asarray(batch), np.concatenate(vals, axis=1), done, rows
                    batch, vals, last = [], [], now

        return work

    def _on_error(self, exc):
        self.controls.status.value = f"virtual detector failed: {exc}"

    def _on_finished(self):
        self._job = None
        queued, self._queued = self._queued, None
        if queued is not None and self.enabled:
            self._start(*queued)

    def _on_image(self, value, scan, t, n_pixels):
        self.timing.setdefault("first", time.perf_counter())
        where = "" if t is None else f" at t = {t}"
        if value[0] == "preview":
            _, step, out = value
            stack = np.stack(out)
            if step > 1:
                stack = np.repeat(np.repeat(stack, step, axis=1), step, axis=2)
            self.images = np.ascontiguousarray(stack[:, : scan[0], : scan[1]])
            self.stride_done = PREVIEW
            self.controls.status.value = f"{n_pixels} detector pixels{where}: preview (binned)"
            self._show_signal()
            return
        if value[0] == "exact":
            _, rows, vals, done, total = value
            if self.images is None or self.images.shape[1:] != tuple(scan):
                return
            self.images[:, rows] = vals
            if done >= total:
                self.stride_done = 1
                self.timing["exact"] = time.perf_counter()
                self.controls.status.value = f"{n_pixels} detector pixels{where}: done"
            else:
                pct = 100 * done // max(total, 1)
                self.controls.status.value = f"{n_pixels} detector pixels{where}: exact {pct} %"
            self._show_signal()
            return
        stride, out = value
        stack = np.stack(out)  # (3, rx', ry')
        if stride > 1:
            stack = np.repeat(np.repeat(stack, stride, axis=1), stride, axis=2)
            stack = stack[:, : scan[0], : scan[1]]
        self.images = stack
        self.stride_done = stride
        if stride == 1:
            self.timing["exact"] = time.perf_counter()
        what = "coarse preview" if stride > 1 else "done"
        self.controls.status.value = f"{n_pixels} detector pixels{where}: {what}"
        self._show_signal()

    def _show_signal(self, *_):
        dif = self.dif
        if dif is None or self.images is None:
            return
        image = self.images[SIGNALS[self.controls.signal.value]]
        viewer = dif._viewer
        layer = self.layer
        data_layer, _meta = self._meta()
        if layer is None or layer not in viewer.layers or layer.data.shape != image.shape:
            sk = {} if data_layer is None else spatial_kwargs(data_layer, 2)
            active = viewer.layers.selection.active
            layer = viewer.add_image(
                image,
                name=IMAGE_NAME,
                colormap="gray",
                metadata={"stemcluster": {"kind": "virtual_detector", "roi": dict(self.roi)}},
                **sk,
            )
            self.layer = layer
            if active is not None:
                viewer.layers.selection.active = active
        else:
            layer.data = image
            layer.metadata = {
                **layer.metadata,
                "stemcluster": {"kind": "virtual_detector", "roi": dict(self.roi or {})},
            }
        self._apply_preset()

    def _apply_preset(self, *_):
        layer = self.layer
        if self.images is None or layer is None:
            return
        image = np.asarray(layer.data)
        lo, hi = contrast_limits(image, self.controls.preset.value)
        layer.contrast_limits_range = (min(lo, float(image.min())), max(hi, float(image.max())))
        layer.contrast_limits = (lo, hi)
        if self.stride_done == 1:  # drawing a histogram of every coarse image stalls a drag
            self.histogram.show(image, (lo, hi))

    def current_t(self) -> int:
        dif = self.dif
        if dif is None or dif.data_layer is None:
            return 0
        return layer_step(dif._viewer, dif.data_layer)
