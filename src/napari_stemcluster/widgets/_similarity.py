"""Dock widget: neighbour similarity, mean-similarity map and real-space mask."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, create_widget

from ..core.params import BY_NAME, DEFAULTS
from ._common import (
    JobRunner,
    button,
    connect_while_alive,
    is_data_layer,
    layer_choices,
    param_widget,
    remember,
    session,
    spatial_kwargs,
    stem_meta,
    step_progress,
    unwrap,
)

if TYPE_CHECKING:
    import napari

#: The mask methods of the parameter model, plus a manual value set with the slider.
MASK_METHODS = (*BY_NAME["real_mask"].choices, "manual")


def _prefilter_options(recorded) -> dict | None:
    """``correlative_prefilter`` keywords recorded by the Prefilter widget (None if absent)."""
    if not isinstance(recorded, dict) or not {"sigma", "radius", "corr_range"} <= set(recorded):
        return None
    return {
        "sigma": float(recorded["sigma"]),
        "radius": int(recorded["radius"]),
        "corr_range": tuple(float(v) for v in recorded["corr_range"]),
        "edge": recorded.get("edge"),
    }


def _layer_shape(maps: np.ndarray, cube) -> np.ndarray:
    """Maps with a time axis (the passes' form) in the layer's form: squeezed for 4D."""
    return maps[0] if cube.ndim == 4 else maps


class SimilarityWidget(Container):
    """Cosine similarity of each pattern with its 8 neighbours, and the real-space mask.

    Outputs a "mean similarity" Image layer (which keeps the full neighbour
    similarity in its metadata for the clustering widget) and a "real-space
    mask" Labels layer (1 = may join a cluster) that can be painted. The
    mask follows the method controls (the dark-field image thresholded
    automatically, triangle or Otsu on the mean similarity, or a manual value
    set with the slider) until it is computed again. The same pass also keeps
    the dark-field image and the binned patterns the Clustering widget's
    ``linkage="mean"`` needs, as :func:`~napari_stemcluster.core.segment`
    computes them.

    The diffraction-space mask is an annulus given by its radii here, or
    drawn by editing the circles of the "q-mask" layer in the diffraction
    viewer; both stay in step.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> widget = SimilarityWidget(viewer)  # doctest: +SKIP
    >>> viewer.window.add_dock_widget(widget, name="Similarity & mask")  # doctest: +SKIP
    >>> widget.run()  # doctest: +SKIP
    >>> widget.similarity_layer, widget.mask_layer  # once the job has ended  # doctest: +SKIP
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer = unwrap(viewer)
        self._session = session(viewer)
        self._layer_combo = create_widget(
            label="Data",
            annotation="napari.layers.Image",
            options={"choices": layer_choices(viewer, is_data_layer)},
        )
        self._use_q_mask = create_widget(
            True, label="Annular q-mask", annotation=bool, widget_type="CheckBox"
        )
        self._inner = create_widget(
            0.0,
            label="Inner radius (px)",
            annotation=float,
            widget_type="FloatSpinBox",
            options={"min": 0.0, "max": 10000.0, "step": 1.0},
        )
        self._outer = create_widget(
            1000.0,
            label="Outer radius (px)",
            annotation=float,
            widget_type="FloatSpinBox",
            options={"min": 0.0, "max": 10000.0, "step": 1.0},
        )
        self._sigma = param_widget("sigma", "Blur σ (px)", step=0.5)
        self._run = button("Compute similarity", "Run")
        self._cancel = button("Cancel", "Cancel")
        self._cancel.enabled = False
        self._method = create_widget(
            DEFAULTS["real_mask"],
            label="Mask method",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": list(MASK_METHODS)},
        )
        self._value = create_widget(
            0.5,
            label="Manual value",
            annotation=float,
            widget_type="FloatSlider",
            options={"min": -1.0, "max": 1.0, "step": 0.005, "readout": True},
        )
        self._min_size = param_widget("mask_min_size", "Remove regions <")
        self._hole_size = param_widget("mask_hole_size", "Fill holes <")
        self._status = create_widget("", label="", annotation=str, widget_type="Label")
        self.extend(
            [
                self._layer_combo,
                self._use_q_mask,
                self._inner,
                self._outer,
                self._sigma,
                self._run,
                self._cancel,
                self._method,
                self._value,
                self._min_size,
                self._hole_size,
                self._status,
            ]
        )
        self.runner = JobRunner(on_busy=self._on_busy, viewer=self._viewer)
        self.similarity_layer = None
        self.mask_layer = None
        self._syncing = False
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.runner.cancel)
        self._layer_combo.changed.connect(self._on_layer)
        for w in (self._use_q_mask, self._inner, self._outer):
            w.changed.connect(self._push_q_mask)
        for w in (self._method, self._value, self._min_size, self._hole_size):
            w.changed.connect(self.update_mask)
        self._method.changed.connect(self._on_method)
        connect_while_alive(
            self.native,
            [
                (self._session.q_mask_changed, self._pull_q_mask),
                (viewer.layers.events.inserted, self._on_inserted),
                (viewer.layers.events.removed, self.reset_choices),
            ],
        )
        self._save = remember(
            "similarity",
            {
                "sigma": self._sigma,
                "method": self._method,
                "value": self._value,
                "min_size": self._min_size,
                "hole_size": self._hole_size,
            },
        )
        self._detector = None
        for w in (self._use_q_mask, self._inner, self._outer):
            w.changed.connect(self._save_q_mask)
        self._on_layer()
        self._on_method()
        self._push_q_mask()

    # ------------------------------------------------------------------ ui
    def _on_layer(self, *_):
        layer = self._layer_combo.value
        self._run.enabled = layer is not None and not self.runner.running
        if layer is not None:
            qx, qy = stem_meta(layer)["cube"].shape[-2:]
            r = float(np.hypot(qx, qy) / 2)
            if (int(qx), int(qy)) != self._detector:
                self._detector = None  # the new range clamps the old radii: not saved
            # nothing reaches the shared q-mask (and the other widgets) until loaded
            syncing, self._syncing = self._syncing, True
            try:
                self._outer.max = self._inner.max = max(r, 1.0)
                self._load_q_mask((int(qx), int(qy)))
            finally:
                self._syncing = syncing
            self._push_q_mask()

    # q-mask radii are remembered per detector shape: a radius chosen on a
    # 48x48 detector means nothing on a 128x128 one
    def _q_mask_key(self):
        return None if self._detector is None else "similarity q-mask {}x{}".format(*self._detector)

    def _load_q_mask(self, detector):
        from ._common import load_settings

        if detector == self._detector:
            return
        self._detector = None  # no saving while loading
        saved = load_settings("similarity q-mask {}x{}".format(*detector))
        self._use_q_mask.value = bool(saved.get("use_q_mask", True))
        self._outer.value = min(float(saved.get("outer", self._outer.max)), self._outer.max)
        self._inner.value = min(float(saved.get("inner", 0.0)), self._outer.value)
        self._detector = detector

    def _save_q_mask(self, *_):
        from ._common import save_settings

        key = self._q_mask_key()
        if key is not None:
            save_settings(
                key,
                {
                    "use_q_mask": bool(self._use_q_mask.value),
                    "inner": float(self._inner.value),
                    "outer": float(self._outer.value),
                },
            )

    def _on_inserted(self, event=None):
        """A prefiltered cube appeared: compare it next, not the raw data it came from."""
        self.reset_choices()
        layer = getattr(event, "value", None)
        meta = stem_meta(layer) if layer is not None else None
        if meta is not None and meta.get("kind") == "prefiltered" and is_data_layer(layer):
            self._layer_combo.value = layer

    def _on_method(self, *_):
        self._value.enabled = self._method.value == "manual"

    def _on_busy(self, busy: bool):
        self._run.enabled = not busy and self._layer_combo.value is not None
        self._cancel.enabled = busy
        if busy:
            self._status.value = "running…"

    def q_mask(self) -> tuple[float, float] | None:
        """The annulus radii ``(inner, outer)``, or None for the whole detector."""
        if not self._use_q_mask.value:
            return None
        return float(self._inner.value), float(self._outer.value)

    def _push_q_mask(self, *_):
        if self._syncing:
            return
        self._syncing = True
        try:
            radii = self.q_mask()
            if radii is None:
                self._session.clear_q_mask()
            else:
                inner, outer = radii
                if outer < inner:
                    inner, outer = outer, inner
                self._session.set_q_mask(inner, outer)
        finally:
            self._syncing = False

    def _pull_q_mask(self, q):
        """The q-mask was edited elsewhere (the diffraction viewer's circles)."""
        if self._syncing or q is None:
            return
        self._syncing = True
        try:
            self._use_q_mask.value = True
            self._outer.value = min(float(q["outer"]), self._outer.max)
            self._inner.value = min(float(q["inner"]), self._outer.value)
        finally:
            self._syncing = False

    # ----------------------------------------------------------------- run
    def run(self, *_):
        """Compute the neighbour similarity of every time step in the background."""
        from napari.utils.notifications import show_error

        layer = self._layer_combo.value
        if layer is None:
            show_error("Similarity: choose a layer of 4D-STEM data first")
            return None
        meta = stem_meta(layer)
        cube = meta["cube"]
        q_mask = self.q_mask()
        if q_mask is not None and q_mask[1] < q_mask[0]:
            show_error("Similarity: the outer radius must not be smaller than the inner one")
            return None
        sigma = float(self._sigma.value)
        self._save()
        # For a prefiltered layer the mask thresholds the raw cube's map (the
        # prefilter lifts particles and background alike; see segment's
        # mask_source), so that map is computed too.
        raw = meta.get("raw_cube")
        raw = raw if raw is not None and raw is not cube and raw.shape == cube.shape else None
        pre = _prefilter_options(meta.get("prefilter")) if raw is not None else None

        def work(progress):
            # The similarity pass of the pipeline, block by block with bounded
            # memory (threads here, or the scheduler of the widget settings).
            from ..core import similarity as _similarity
            from ..core.similarity import mean_similarity
            from ..engine import similarity_chunked
            from ._execution import widget_executor

            n = 1 if raw is None else 2
            # The dark-field image (of the raw patterns) and the binned patterns
            # (of the compared ones) come from the same pass, as in segment().
            extras, raw_extras = {"features": True}, {"signal": True}
            if raw is None or pre:
                extras["signal"] = True
            # Blocks of whole rows of about the kernels' block size: progress
            # (and Cancel) every few tens of MB.
            rows = _similarity.block_rows(cube.shape[-4:], max(cube.dtype.itemsize, 4))
            chunks = (rows, int(cube.shape[-3]))
            with widget_executor() as (ex, limit):
                if pre:
                    # One pass over the raw cube, as in segment(prefilter=...):
                    # each block is prefiltered with its halo (never stored),
                    # compared, and the raw map comes along.
                    sim, raw_ms = similarity_chunked(
                        raw,
                        q_mask,
                        sigma,
                        prefilter=pre,
                        raw_map=True,
                        extras=extras,
                        executor=ex,
                        memory_limit=limit,
                        chunks=chunks,
                        progress=progress,
                    )
                    return (
                        _layer_shape(sim, cube),
                        _layer_shape(mean_similarity(sim), cube),
                        _layer_shape(raw_ms, cube),
                        {k: _layer_shape(v, cube) for k, v in extras.items()},
                    )
                sim, _ = similarity_chunked(
                    cube,
                    q_mask,
                    sigma,
                    extras=extras,
                    executor=ex,
                    memory_limit=limit,
                    chunks=chunks,
                    progress=step_progress(progress, 0, n),
                )
                mask_map = None
                if raw is not None:  # the raw cube's maps only: its similarity is not kept
                    raw_sim, _ = similarity_chunked(
                        raw,
                        q_mask,
                        sigma,
                        extras=raw_extras,
                        executor=ex,
                        memory_limit=limit,
                        chunks=chunks,
                        progress=step_progress(progress, 1, n),
                    )
                    mask_map = _layer_shape(mean_similarity(raw_sim), cube)
                    extras["signal"] = raw_extras["signal"]
            extras = {k: _layer_shape(v, cube) for k, v in extras.items()}
            return (
                _layer_shape(sim, cube),
                _layer_shape(mean_similarity(sim), cube),
                mask_map,
                extras,
            )

        def done(value):
            self._add_layers(layer, meta, value, q_mask, sigma)

        return self.runner.start(work, description="Similarity", on_returned=done)

    def _add_layers(self, src, meta, value, q_mask, sigma):
        sim, ms, mask_map, extras = value
        params = {
            "q_mask": None if q_mask is None else [float(v) for v in q_mask],
            "sigma": sigma,
            "prefilter": meta.get("prefilter"),
        }
        new_meta = {
            "kind": "mean_similarity",
            "similarity": sim,
            "cube": meta["cube"],
            "raw_cube": meta.get("raw_cube", meta["cube"]),
            "calibration": meta.get("calibration"),
            "source": meta.get("source"),
            "params": params,
            "data_layer": src.name,
            # the raw cube's mean similarity, thresholded by the mask (prefiltered data)
            "mask_map": mask_map,
            # the dark-field image the "dark_field" mask thresholds (raw patterns)
            "signal": extras.get("signal"),
            # binned patterns for the clustering's linkage="mean"
            "features": extras.get("features"),
        }
        finite = ms[np.isfinite(ms)]
        limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if limits[0] >= limits[1]:
            limits = (limits[0] - 0.5, limits[0] + 0.5)
        sk = spatial_kwargs(src, ms.ndim)
        old = self.similarity_layer
        # Computing again for the same data updates its layers; other data gets new ones.
        same = (
            old is not None
            and old in self._viewer.layers
            and old.data.shape == ms.shape
            and (stem_meta(old) or {}).get("data_layer") == src.name
        )
        if not same:
            self.mask_layer = None
        if same:
            old.data = ms
            old.metadata = {**old.metadata, "stemcluster": new_meta}
            old.contrast_limits = limits
            layer = old
        else:
            # added hidden and shown a turn later: napari slices a visible
            # layer and makes its thumbnail in the call that adds it, which
            # then made one pause with its visual and controls
            layer = self._viewer.add_image(
                ms,
                name=f"{src.name} mean similarity",
                colormap="viridis",
                contrast_limits=limits,
                metadata={"stemcluster": new_meta},
                visible=False,
                **sk,
            )
        self.similarity_layer = layer
        # The manual slider's range follows the map.
        lo, hi = limits
        self._value.min, self._value.max = min(lo, -1.0), max(hi, 1.0)

        def mask_layer():
            self._make_mask_layer(src, ms if mask_map is None else mask_map, sk, new_meta["signal"])
            self._status.value = f"done: '{layer.name}' and '{self.mask_layer.name}'"

        if same:
            mask_layer()
        else:  # a new mask layer in a later turn: the map's visual is drawn first
            self.runner.later(lambda: setattr(layer, "visible", True), "Similarity")
            self.runner.later(mask_layer, "Similarity")

    def _make_mask_layer(self, src, ms, sk, signal=None):
        mask = self.compute_mask(ms, signal)
        old = self.mask_layer
        meta = {"stemcluster": {"kind": "real_mask", **self.mask_params()}}
        if old is not None and old in self._viewer.layers and old.data.shape == mask.shape:
            old.data = mask
            old.metadata = {**old.metadata, **meta}
        else:
            self.mask_layer = self._viewer.add_labels(
                mask,
                name=f"{src.name} real-space mask",
                opacity=0.35,
                metadata=meta,
                **sk,
            )

    def mask_params(self) -> dict:
        """The real-space mask settings in the parameter-file form."""
        method = self._method.value
        real_mask = float(self._value.value) if method == "manual" else method
        return {
            "real_mask": real_mask,
            "mask_min_size": int(self._min_size.value),
            "mask_hole_size": int(self._hole_size.value),
        }

    def compute_mask(self, ms: np.ndarray, signal: np.ndarray | None = None) -> np.ndarray:
        """Real-space mask (uint8, 1 = allowed) of a (T,) Rx, Ry mean-similarity map.

        ``signal`` is the dark-field image of the same shape, thresholded
        instead of the map for the ``"dark_field"`` method (core's rule).
        """
        from ..core.masking import real_space_mask

        p = self.mask_params()
        method = None if p["real_mask"] == "none" else p["real_mask"]
        kw = {"min_size": p["mask_min_size"], "hole_size": p["mask_hole_size"]}
        if ms.ndim == 2:
            return real_space_mask(ms, method, signal=signal, **kw).astype(np.uint8)
        sig = [None] * len(ms) if signal is None else signal
        return np.stack(
            [real_space_mask(m, method, signal=g, **kw) for m, g in zip(ms, sig, strict=True)]
        ).astype(np.uint8)

    def update_mask(self, *_):
        """Recompute the mask layer from the current method (replaces painted edits)."""
        layer, mask_layer = self.similarity_layer, self.mask_layer
        if layer is None or mask_layer is None or mask_layer not in self._viewer.layers:
            return
        meta = stem_meta(layer) or {}
        mask_map = meta.get("mask_map")
        mask = self.compute_mask(
            np.asarray(layer.data if mask_map is None else mask_map), meta.get("signal")
        )
        if mask.shape == mask_layer.data.shape:
            mask_layer.data = mask
            meta = {**(stem_meta(mask_layer) or {}), "kind": "real_mask", **self.mask_params()}
            mask_layer.metadata = {**mask_layer.metadata, "stemcluster": meta}
