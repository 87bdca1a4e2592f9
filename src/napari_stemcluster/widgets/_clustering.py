"""Dock widget: region growing into spatially contiguous clusters."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, create_widget

from ..core.params import DEFAULTS
from ._common import (
    JobRunner,
    ask_replace,
    button,
    connect_while_alive,
    is_mask_layer,
    is_similarity_layer,
    layer_choices,
    layer_step,
    not_activated,
    param_widget,
    remember,
    session,
    spatial_kwargs,
    stem_meta,
    step_progress,
    unwrap,
)
from ._link import attach, link_for, seed_points
from ._state import DEFAULT_SUMS_BUDGET, ClusterState
from ._threshold_plot import ThresholdPlot, masked_similarities, threshold_stats

if TYPE_CHECKING:
    import napari


def _steps(sim, ms, mask, cube, features=None) -> list[tuple]:
    """Per time step: similarity, mean similarity, mask, cube, step to read, features.

    The layers have a time axis only for 5D data; the passes always work on
    one step at a time.
    """
    if ms.ndim == 2:
        return [(sim, ms, mask, cube, None, features)]
    return [
        (
            sim[t],
            ms[t],
            None if mask is None else mask[t],
            cube,
            t,
            None if features is None else features[t],
        )
        for t in range(ms.shape[0])
    ]


#: Choices of the threshold mode: the automatic value or the slider's.
THRESHOLD_MODES = ("auto", "manual")


#: Delay (ms) after the last threshold change before the preview recounts.
PREVIEW_DELAY_MS = 120


#: Delay (ms) after a job starts before its new layers are made ahead.
PREPARE_AFTER_MS = 300


class ClusteringWidget(Container):
    """Grow clusters from the similarity map; preview the cluster count live.

    Outputs a Labels layer (``(Rx, Ry)``, or ``(T, Rx, Ry)`` for a time
    series) whose ``features`` table lists every cluster of the time step on
    screen (``index`` = label, ``size``, ``seed_rx``, ``seed_ry``,
    ``mean_similarity``), and a Points layer with the seed of every cluster.
    Cluster averages are computed in the same run and kept up to date while
    the labels are edited.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> widget = ClusteringWidget(viewer)  # doctest: +SKIP
    >>> viewer.window.add_dock_widget(widget, name="Clustering")  # doctest: +SKIP
    >>> widget.run()  # doctest: +SKIP
    >>> widget.labels_layer.features  # once the job has ended  # doctest: +SKIP
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        from qtpy.QtCore import QTimer

        super().__init__()
        self._viewer = viewer = unwrap(viewer)
        self._sim_combo = create_widget(
            label="Similarity",
            annotation="napari.layers.Image",
            options={"choices": layer_choices(viewer, is_similarity_layer)},
        )
        self._mask_combo = create_widget(
            label="Real-space mask",
            annotation="napari.layers.Labels",
            options={"choices": layer_choices(viewer, is_mask_layer, none="(none)")},
        )
        self._mode = create_widget(
            "auto" if DEFAULTS["threshold"] == "auto" else "manual",
            label="Threshold mode",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": list(THRESHOLD_MODES)},
        )
        self._mode.tooltip = (
            "auto: chosen from the data for every time step (core.auto_threshold); "
            "manual: the slider's value"
        )
        self._auto = create_widget("", label="Auto threshold", annotation=str, widget_type="Label")
        self._use_auto = button("Use as slider value")
        self._threshold = create_widget(
            # the slider needs a number: with an automatic default it starts
            # at the paper's value until "Use as slider value"
            _number_or(DEFAULTS["threshold"], PAPER_THRESHOLD),
            label="Threshold",
            annotation=float,
            widget_type="FloatSlider",
            options={"min": 0.0, "max": 1.0, "step": 0.001, "readout": True},
        )
        self._min_size = param_widget("min_cluster_size", "Min. cluster size")
        self._linkage = param_widget("linkage", "Linkage")
        self._average = param_widget("average", "Average from")
        self._average.tooltip = (
            "Cube of the cluster-averaged patterns: the raw data or the cube the "
            "similarity was computed from"
        )
        self._preview = create_widget("", label="Preview", annotation=str, widget_type="Label")
        self._run = button("Run clustering", "Run")
        self._cancel = button("Cancel", "Cancel")
        self._cancel.enabled = False
        self._export = button("Export parameters…", "Export")
        self._status = create_widget("", label="", annotation=str, widget_type="Label")
        self.extend(
            [
                self._sim_combo,
                self._mask_combo,
                self._mode,
                self._auto,
                self._use_auto,
                self._threshold,
                self._min_size,
                self._linkage,
                self._average,
                self._preview,
                self._run,
                self._cancel,
                self._export,
                self._status,
            ]
        )
        #: Threshold guidance: similarity histogram and per-cluster scatter.
        self.guidance = ThresholdPlot()
        self.guidance.on_pick = self.select_cluster
        self.native.layout().insertWidget(10, self.guidance.canvas)
        self.stats = None
        self._hist_key = None
        self.runner = JobRunner(on_busy=self._on_busy, viewer=self._viewer)
        #: Called as ``confirm(parent, text)`` before replacing an edited
        #: layer; returns "replace", "new" or "cancel" (replaceable in tests).
        self.confirm = ask_replace
        #: Called as ``ask_path(parent)`` for the parameter file; returns a path or "".
        self.ask_path = _ask_toml_path
        self.labels_layer = None
        self.seeds_layer = None
        self._hidden_seeds = None  # a seeds layer made hidden, shown a turn later
        self._prepared_seeds = None  # made hidden and empty while the job computes
        self.preview_count: int | None = None
        #: Automatic threshold of every time step of the similarity layer.
        self.auto_thresholds: list[float] = []
        self._auto_key = None
        #: Diagnostics of every time step of the last run.
        self.diagnostics: list = []
        self.sums_budget = DEFAULT_SUMS_BUDGET
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(PREVIEW_DELAY_MS)
        self._timer.timeout.connect(self.update_preview)
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.runner.cancel)
        self._export.changed.connect(self._on_export)
        for w in (
            self._threshold,
            self._min_size,
            self._sim_combo,
            self._mask_combo,
            self._mode,
            self._linkage,
        ):
            w.changed.connect(self._schedule_preview)
        self._mode.changed.connect(self._on_mode)
        self._use_auto.changed.connect(self.use_auto_threshold)
        self._sim_combo.changed.connect(self._on_layer)
        connect_while_alive(
            self.native,
            [
                (viewer.dims.events.current_step, self._schedule_preview),
                (viewer.layers.events.inserted, self._on_inserted),
                (viewer.layers.events.removed, self.reset_choices),
                (viewer.cursor.events.position, self._on_cursor),
            ],
        )
        self._save = remember(
            "clustering",
            {
                "threshold": self._threshold,
                "mode": self._mode,
                "linkage": self._linkage,
                "min_size": self._min_size,
                "average": self._average,
            },
        )
        self._on_layer()
        self._on_mode()

    # ------------------------------------------------------------------ ui
    def _on_mode(self, *_):
        self._threshold.enabled = self._mode.value == "manual"

    def _auto_for(self, sim, mask, t):
        """The automatic thresholds of every step (cached), and the one of step ``t``."""
        from ..core.threshold import auto_threshold

        layer = self._sim_combo.value
        full_sim, ms, full_mask = self._inputs()
        key = (id(layer), id(full_sim), _mask_key(full_mask))
        if key != self._auto_key:
            steps = _steps(full_sim, ms, full_mask, None)
            self.auto_thresholds = [auto_threshold(s[0], s[2]) for s in steps]
            self._auto_key = key
        values = self.auto_thresholds
        if len(values) == 1:
            self._auto.value = f"{values[0]:.2f}"
        else:
            shown = ", ".join(f"{v:.2f}" for v in values[:12])
            more = "…" if len(values) > 12 else ""
            self._auto.value = f"t={t}: {values[t or 0]:.2f} (per step: {shown}{more})"
        return values[t or 0]

    def use_auto_threshold(self, *_):
        """Take the automatic threshold of the step on screen as the manual value."""
        layer = self._sim_combo.value
        if layer is None:
            return
        t = layer_step(self._viewer, layer)
        sim, _, mask = self._inputs(t)
        value = self._auto_for(sim, mask, t)
        self._mode.value = "manual"
        self._threshold.value = value

    def _features(self, t=None):
        """Binned patterns of the similarity pass (None when not computed)."""
        layer = self._sim_combo.value
        feats = stem_meta(layer).get("features") if layer is not None else None
        if feats is None or t is None or np.ndim(layer.data) == 2:
            return feats
        return feats[t]

    def _on_layer(self, *_):
        layer = self._sim_combo.value
        self._run.enabled = layer is not None and not self.runner.running
        if layer is not None and self._mask_combo.value is None:
            # Default to the mask computed with this similarity map.
            for cand in self._viewer.layers:
                if is_mask_layer(cand) and cand.data.shape == layer.data.shape:
                    self._mask_combo.value = cand
                    break

    def _on_inserted(self, event=None):
        self.reset_choices()
        self._on_layer()

    def _on_busy(self, busy: bool):
        self._run.enabled = not busy and self._sim_combo.value is not None
        self._cancel.enabled = busy
        if busy:
            self._status.value = "running…"

    def _schedule_preview(self, *_):
        self._timer.start()

    def _inputs(self, t: int | None = None):
        """Similarity, mean similarity and mask of one time step (or all when t is None)."""
        layer = self._sim_combo.value
        meta = stem_meta(layer)
        sim = meta["similarity"]
        ms = np.asarray(layer.data)
        mask_layer = self._mask_combo.value
        mask = None
        if mask_layer is not None and mask_layer.data.shape == ms.shape:
            mask = np.asarray(mask_layer.data) > 0
        if t is None or ms.ndim == 2:
            return sim, ms, mask
        return sim[t], ms[t], None if mask is None else mask[t]

    def update_preview(self, *_):
        """Count the clusters of the current time step at the current threshold."""
        from ..core.regions import grow_regions

        layer = self._sim_combo.value
        if layer is None:
            self._preview.value = ""
            self.preview_count = None
            return
        from ..core.clustering import link_threshold

        t = layer_step(self._viewer, layer)
        sim, ms, mask = self._inputs(t)
        auto = self._auto_for(sim, mask, t)
        threshold = auto if self._mode.value == "auto" else float(self._threshold.value)
        min_size = int(self._min_size.value)
        linkage = self._linkage.value
        features = self._features(t)
        if linkage == "mean" and features is None:
            self._preview.value = "linkage 'mean': compute the similarity again"
            self.preview_count = None
            return
        t0 = time.perf_counter()
        # every cluster, so that the ones the size filter drops can be counted;
        # the kept ones are exactly those of a run with the size filter
        # (the growth rule of core.clustering.cluster_scan)
        labels, _ = grow_regions(
            sim,
            threshold,
            mean_similarity=ms,
            mask=np.ones(ms.shape, bool) if mask is None else mask,
            linkage=linkage,
            features=features,
            link_threshold=link_threshold(threshold),
        )
        ms_taken = 1000 * (time.perf_counter() - t0)
        self.stats = stats = threshold_stats(labels, ms, mask, threshold, min_size)
        self.preview_count = stats.n_kept
        where = f" at t={t}" if layer.ndim == 3 else ""
        self._preview.value = f"{self.preview_count} clusters{where} ({ms_taken:.0f} ms)"
        self._update_guidance(layer, t, sim, mask, stats)

    # ------------------------------------------------------------ guidance
    def _update_guidance(self, layer, t, sim, mask, stats):
        key = (id(layer), id(stem_meta(layer).get("similarity")), t, _mask_key(mask))
        if key != self._hist_key:
            self.guidance.set_histogram(masked_similarities(sim, mask))
            self._hist_key = key
        self.guidance.set_threshold(stats.threshold, self._auto_for(sim, mask, t))
        self.guidance.set_clusters(stats, self._label_colors(len(stats.sizes)))

    def _label_colors(self, n: int) -> np.ndarray:
        """RGBA of labels 1..n as the clusters layer shows them."""
        labels = np.arange(1, n + 1)
        layer = self.labels_layer
        if layer is not None and layer in self._viewer.layers:
            return np.asarray(layer.colormap.map(labels))
        from napari.utils.colormaps import label_colormap

        return np.asarray(label_colormap().map(labels))

    def select_cluster(self, label: int) -> None:
        """Select ``label`` in the clusters layer (a click on its point)."""
        layer = self.labels_layer
        self.guidance.highlight(label)
        if layer is not None and layer in self._viewer.layers:
            layer.selected_label = int(label)
            self._viewer.layers.selection.active = layer

    def _on_cursor(self, event=None):
        """Ring the point of the cluster under the mouse."""
        from ._common import scan_position

        layer = self.labels_layer
        if layer is None or layer not in self._viewer.layers or self.stats is None:
            return
        index = scan_position(layer, self._viewer.cursor.position)
        label = None if index is None else int(layer.data[index]) or None
        if label != self.guidance.highlighted:
            self.guidance.highlight(label)

    # ----------------------------------------------------------------- run
    def params(self) -> dict:
        """Every parameter of the segmentation, in the parameter-file form."""
        layer = self._sim_combo.value
        meta = stem_meta(layer) if layer is not None else {}
        sp = dict(meta.get("params") or {})
        p = {
            "threshold": "auto" if self._mode.value == "auto" else float(self._threshold.value),
            "min_cluster_size": int(self._min_size.value),
            "linkage": self._linkage.value,
            "q_mask": sp.get("q_mask"),
            "sigma": float(sp.get("sigma") or 0.0),
            "average": self._average.value,
        }
        pre = sp.get("prefilter")
        p["prefilter"] = bool(pre)
        if pre:
            p["prefilter_sigma"] = float(pre["sigma"])
            p["prefilter_radius"] = int(pre["radius"])
            p["corr_range"] = [float(v) for v in pre["corr_range"]]
            p["prefilter_edge"] = None if pre.get("edge") is None else int(pre["edge"])
            if pre.get("q_step") is not None:
                p["prefilter_q_step"] = int(pre["q_step"])
        # The Similarity widget thresholds the raw cube's map for prefiltered
        # data (the pipeline's rule), so the mask source is "raw" then too.
        raw_map = meta.get("mask_map") is not None
        p["mask_source"] = "raw" if raw_map or not pre else "prefiltered"
        mask_layer = self._mask_combo.value
        mmeta = stem_meta(mask_layer) if mask_layer is not None else None
        if mmeta is None:
            p["real_mask"] = "none"
        else:
            p["real_mask"] = mmeta.get("real_mask", "triangle")
            p["mask_min_size"] = int(mmeta.get("mask_min_size", 0))
            p["mask_hole_size"] = int(mmeta.get("mask_hole_size", 0))
        return p

    def run(self, *_):
        """Grow the clusters of every time step and their averages, in the background."""
        from napari.utils.notifications import show_error

        layer = self._sim_combo.value
        if layer is None:
            show_error("Clustering: compute the similarity first (Similarity & mask widget)")
            return None
        target = self.labels_layer
        if target is not None and target not in self._viewer.layers:
            target = None
        mode = "new" if target is None else "replace"
        if target is not None:
            link = link_for(target)
            if link is not None and link.state.edited:
                mode = self.confirm(
                    self.native,
                    f"'{target.name}' has hand edits. Replace it with the new clusters, "
                    "or keep it and add a new layer?",
                )
                if mode not in ("replace", "new"):
                    return None
        self._save()
        meta = stem_meta(layer)
        sim, ms, mask = self._inputs()
        features = self._features()
        linkage = self._linkage.value
        if linkage == "mean" and features is None:
            show_error(
                "Clustering: linkage 'mean' needs the binned patterns of the similarity "
                "pass; compute the similarity again (Similarity & mask widget)"
            )
            return None
        cube = meta["raw_cube"] if self._average.value == "raw" else meta["cube"]
        threshold = "auto" if self._mode.value == "auto" else float(self._threshold.value)
        min_size = int(self._min_size.value)
        params = self.params()
        t_now = layer_step(self._viewer, layer)
        budget = self.sums_budget

        def work(progress):
            # The regions and sums passes of the pipeline (core.passes), per
            # time step, the step on screen first; the sums read the cube in
            # blocks of rows.
            from ..core.passes import finish_step, grow_step, make_spec, step_sums

            spec = make_spec(None, None, 0.0)
            grow = {
                "threshold": threshold,
                "min_cluster_size": min_size,
                "mask_min_size": 0,
                "mask_hole_size": 0,
                "linkage": linkage,
            }
            steps = _steps(sim, ms, mask, cube, features if linkage == "mean" else None)
            n_steps = len(steps)
            results, cached = [None] * n_steps, {}
            order = [t_now] + [t for t in range(n_steps) if t != t_now]
            kept = 0
            for i, t in enumerate(order):
                s, m, k, c, t_read, f = steps[t]
                # no mask layer: every position (as real_mask="none")
                k = np.ones(m.shape, bool) if k is None else k
                extras = {} if f is None else {"features": f}
                lab, _, _, table = grow_step(s, None, k, grow, extras)
                n = len(table)
                sums = step_sums(
                    c, t_read, lab, n, spec, progress=step_progress(progress, i, n_steps)
                )
                results[t] = finish_step(lab, m, k, s, table, sums, extras["diagnostics"])
                counts = np.bincount(lab.ravel(), minlength=n + 1)[1 : n + 1].astype(np.int64)
                size = sums.nbytes + counts.nbytes + lab.nbytes
                if i == 0 or kept + size <= budget:
                    cached[t] = (sums, counts, lab.copy())
                    kept += size
            labels = np.stack([r.labels for r in results])
            if ms.ndim == 2:
                labels = labels[0]
            return labels, results, cached

        def done(value):
            self._apply(layer, meta, value, sim, ms, mask, cube, params, mode, target)

        self._status.value = ""
        worker = self.runner.start(work, description="Clustering", on_returned=done)
        seeds = self.seeds_layer
        if target is None and (seeds is None or seeds not in self._viewer.layers):
            self._prepare_layers(layer, ms.shape, worker)
        return worker

    def _prepare_layers(self, sim_layer, shape, worker) -> None:
        """Make the new clusters' seeds layer and marker while the job computes, hidden and empty.

        The event loop is idle while the job computes; made when it ends,
        each new layer (napari's layer controls and visuals, 0.1-0.2 s) was
        one of the job's longest pauses. The seeds layer, then the
        diffraction viewers' cluster marker (through the session), in turns
        of their own; both are removed again if the job fails or is
        cancelled.
        """
        ndim = len(shape)
        sk = spatial_kwargs(sim_layer, ndim)
        runner = self.runner

        def failed():
            return runner.worker is None and (
                runner.last_error is not None or runner.last_cancelled
            )

        def seeds():
            if runner.worker is None:
                return  # the job has ended meanwhile: its result makes the layers
            with not_activated(self._viewer):
                self._prepared_seeds = self._add_seeds(
                    np.empty((0, ndim)), "clusters seeds", shape, sk, visible=False
                )

        def marker():
            if runner.worker is not None:
                session(self._viewer).clusters_expected.emit(sim_layer, ndim)

        def begin():
            if runner.worker is worker:
                runner.later(seeds, "Clustering")
                runner.later(marker, "Clustering")

        def drop_if_failed():
            if not failed():
                return
            prepared, self._prepared_seeds = self._prepared_seeds, None
            if prepared is not None and prepared in self._viewer.layers:
                self._viewer.layers.remove(prepared)
            session(self._viewer).clusters_expected.emit(None, 0)

        worker.finished.connect(drop_if_failed)
        # not at once: the turns just after Run often redraw the threshold
        # plots (the preview of the threshold just set), and a layer made in
        # the same pass of the event loop added to that pause
        from qtpy.QtCore import QTimer

        QTimer.singleShot(PREPARE_AFTER_MS, begin)

    def _add_seeds(self, points, name, shape, sk, *, visible, features=None):
        """A Points layer of cluster seeds, drawn as white discs sized to the scan."""
        return self._viewer.add_points(
            points,
            name=name,
            size=max(1.0, 0.02 * max(shape[-2:])),
            face_color="white",
            border_color="black",
            border_width=0.15,
            symbol="disc",
            visible=visible,
            features=features,
            **{k: v for k, v in sk.items() if k != "axis_labels"},
        )

    def _show_seeds(self) -> None:
        """Show the seeds layer made hidden in the previous turn."""
        seeds, self._hidden_seeds = self._hidden_seeds, None
        if seeds is not None and seeds in self._viewer.layers:
            seeds.visible = True

    def _apply(self, sim_layer, meta, value, sim, ms, mask, cube, params, mode, target):
        from ..core.passes import assemble
        from ._state import _Sums

        labels, steps, cached = value
        result = assemble(steps, params, time_axis=labels.ndim == 3)
        tables = [step.clusters for step in steps]
        state = ClusterState(
            labels,
            cube,
            similarity=sim,
            mean_similarity=ms,
            params=params,
            sums_budget=self.sums_budget,
        )
        for t, (sums, counts, base) in cached.items():
            state._sums[t] = _Sums(sums, counts, base)
        new_meta = {
            "kind": "segmentation",
            "result": result,
            "state": state,
            "cube": cube,
            "calibration": meta.get("calibration"),
            "source": meta.get("source"),
            "similarity_layer": sim_layer.name,
        }
        sk = spatial_kwargs(sim_layer, labels.ndim)
        if mode == "replace" and target is not None:
            old = link_for(target)
            if old is not None:
                old.disconnect()
            target.data = labels
            target.metadata = {**target.metadata, "stemcluster": new_meta}
            layer = target
        else:
            from napari.layers import Labels

            # inserted hidden, shown a turn later: a visible layer is sliced
            # (and its thumbnail made) in the call that inserts it
            layer = Labels(
                labels, name="clusters", metadata={"stemcluster": new_meta}, visible=False, **sk
            )
            layers = self._viewer.layers
            prepared = self._prepared_seeds
            # below the seeds layer made ahead (and the marker above it)
            index = layers.index(prepared) if prepared in layers else len(layers)
            layers.insert(index, layer)
        new_layer = layer is not target

        def seeds_and_link():
            points, feats = seed_points(state)
            seeds = self.seeds_layer
            prepared, self._prepared_seeds = self._prepared_seeds, None
            if (
                prepared is not None
                and prepared in self._viewer.layers
                and prepared.ndim == points.shape[1]
            ):
                # made while the job computed: only its data now, shown a turn later
                seeds = prepared
                seeds.name = f"{layer.name} seeds"
                seeds.data, seeds.features = points, feats
                self._hidden_seeds = seeds
            elif seeds is None or seeds not in self._viewer.layers or seeds.ndim != points.shape[1]:
                # shown in a turn of its own: making the layer and the paint
                # that compiles its shaders together were too long a pause
                seeds = self._add_seeds(
                    points,
                    f"{layer.name} seeds",
                    labels.shape,
                    sk,
                    visible=not new_layer,
                    features=feats,
                )
                self._hidden_seeds = None if seeds.visible else seeds
            else:
                seeds.data, seeds.features = points, feats
            self.seeds_layer = seeds
            attach(self._viewer, layer, state, seeds_layer=seeds)
            self.labels_layer = layer
            self._viewer.layers.selection.active = layer

        def report():
            n = [len(tb) for tb in tables]
            counts = (
                f"{n[0]} clusters" if len(n) == 1 else f"{min(n)}–{max(n)} clusters per time step"
            )
            self.diagnostics = [step.diagnostics for step in steps]
            self._status.value = f"done: {counts} in '{layer.name}'\n" + self.diagnostics_text()
            self.update_preview()  # the scatter's colours follow the new layer

        if new_layer:
            # one new visual per event-loop turn (the canvas paints in between),
            # and the plots redrawn in a turn of their own
            self.runner.later(lambda: setattr(layer, "visible", True), "Clustering")
            self.runner.later(seeds_and_link, "Clustering")
            self.runner.later(self._show_seeds, "Clustering")
            self.runner.later(report, "Clustering")
        else:
            seeds_and_link()
            report()

    def diagnostics_text(self, t: int | None = None) -> str:
        """Core's diagnostics summary of the last run (of step ``t`` of a series)."""
        diags = self.diagnostics
        if not diags or diags[0] is None:
            return ""
        if len(diags) == 1:
            return _wrap(diags[0].summary())
        if t is None:
            layer = self._sim_combo.value
            t = layer_step(self._viewer, layer) if layer is not None else 0
        t = min(int(t or 0), len(diags) - 1)
        per_step = ", ".join(f"{d.threshold:.2f}" for d in diags[:12])
        more = "…" if len(diags) > 12 else ""
        return _wrap(f"t={t}: {diags[t].summary()}; thresholds per step: {per_step}{more}")

    # -------------------------------------------------------------- export
    def _on_export(self, *_):
        path = self.ask_path(self.native)
        if path:
            self.export_parameters(path)

    def export_parameters(self, path) -> dict:
        """Write the parameters as TOML, the format of ``stemcluster segment --config``."""
        from napari.utils.notifications import show_error, show_info

        from ..config import save_params

        params = self.params()
        try:
            save_params(path, params)
        except Exception as exc:
            show_error(f"Export parameters failed: {exc}")
            raise
        show_info(f"Parameters saved to {path}")
        return params


def _ask_toml_path(parent) -> str:
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(
        parent, "Export parameters", "stemcluster.toml", "TOML files (*.toml)"
    )
    return path


def _mask_key(mask):
    if mask is None:
        return None
    return (mask.shape, int(np.count_nonzero(mask)), hash(np.packbits(mask).tobytes()))


#: The paper's fixed threshold: where the slider starts when the default is "auto".
PAPER_THRESHOLD = 0.9


def _wrap(text: str) -> str:
    """One clause a line, so the dock stays narrow."""
    return text.replace("; ", "\n").replace(". ", ".\n")


def _number_or(value, fallback: float) -> float:
    """``value`` if it is a number (a default may be a word such as "auto")."""
    return float(value) if isinstance(value, int | float) else fallback
