"""Keeps a cluster Labels layer, its :class:`~._state.ClusterState` and the viewer in step.

After any edit of the labels (painting, erasing, filling, undo, assigning
data) the cluster sums are updated incrementally and the layer's features
refreshed; when the time slider moves, the features show the new time step
and its cluster sums are computed in the background if they are not cached.
"""

from __future__ import annotations

import weakref

import numpy as np

from ._common import META, JobRunner, layer_step, stem_meta
from ._state import ClusterState

_LINKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ClusterLink:
    """Event wiring between one cluster Labels layer, its state and a viewer."""

    def __init__(self, viewer, layer, state: ClusterState, seeds_layer=None):
        self._viewer = weakref.ref(viewer)
        self._layer = weakref.ref(layer)
        self._seeds = None if seeds_layer is None else weakref.ref(seeds_layer)
        self.state = state
        self.runner = JobRunner()
        self._pending = False
        self._pending_t: int | None = None
        layer.events.paint.connect(self._on_edit)
        layer.events.set_data.connect(self._on_edit)
        layer.events.data.connect(self._on_data)
        viewer.dims.events.current_step.connect(self._on_step)
        viewer.layers.events.removed.connect(self._on_removed)
        state.changed.connect(self._on_changed)
        self.t = layer_step(viewer, layer)
        self._refresh_features()
        self.ensure_sums(self.t)

    # -- accessors
    @property
    def layer(self):
        return self._layer()

    @property
    def viewer(self):
        return self._viewer()

    @property
    def seeds_layer(self):
        return None if self._seeds is None else self._seeds()

    def set_seeds_layer(self, layer) -> None:
        self._seeds = None if layer is None else weakref.ref(layer)

    # -- edits
    def _on_edit(self, event=None):
        # The paint event of a single click fires before the data is
        # written: sync once control returns to the event loop.
        if not self._pending:
            self._pending = True
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self.flush)

    def flush(self) -> tuple[int, ...]:
        """Apply pending edits now; returns the time steps that changed."""
        self._pending = False
        layer = self.layer
        if layer is None:
            return ()
        if layer.data is not self.state.labels:
            return self._on_data()
        return self.state.sync()

    def _on_data(self, event=None):
        layer = self.layer
        if layer is None:
            return ()
        data = np.asarray(layer.data)
        if data.shape != self.state.labels.shape:
            return ()
        self.state.labels = data
        return self.state.sync()

    def _on_changed(self, steps):
        self._show_changed_step(steps)
        self._refresh_features(steps)
        self._refresh_seeds(steps)

    def _show_changed_step(self, steps):
        """An edit (an undo) changed another time step: go there and say so.

        Without this, Ctrl-Z at t = 6 silently undoes a merge made at t = 3.
        """
        viewer, layer = self.viewer, self.layer
        if viewer is None or layer is None or layer.ndim != 3 or not steps or self.t in steps:
            return
        from napari.utils.notifications import show_info

        t = int(steps[0])
        world = layer.data_to_world([t, 0, 0])[0]
        viewer.dims.set_point(0, world)
        show_info(f"'{layer.name}': the edit changed time step {t}; showing it")

    # -- time
    def _on_step(self, event=None):
        viewer, layer = self.viewer, self.layer
        if viewer is None or layer is None:
            return
        t = layer_step(viewer, layer)
        if t != self.t:
            self.t = t
            self._refresh_features()
            self.ensure_sums(t)

    def ensure_sums(self, t: int) -> None:
        """Compute the cluster sums of ``t`` in the background unless cached."""
        if self.state.has_sums(t) or self.runner.running:
            if not self.state.has_sums(t):
                self._pending_t = t  # computed once the running job ends
            return
        state = self.state

        def work(progress):
            return t, state.compute_sums(t, progress)

        def done(value):
            step, entry = value
            state.install_sums(step, entry)

        self.runner.start(work, description="Cluster averages", on_returned=done)
        self.runner.worker.finished.connect(self._after_job)

    def _after_job(self):
        t, self._pending_t = self._pending_t, None
        if t is not None and self.layer is not None:
            self.ensure_sums(t)

    # -- outputs
    def _refresh_features(self, steps=None):
        layer = self.layer
        if layer is None or (steps is not None and self.t not in steps):
            return
        layer.features = self.state.features(self.t)

    def _refresh_seeds(self, steps=None):
        seeds = self.seeds_layer
        if seeds is None:
            return
        seeds.data, seeds.features = seed_points(self.state)

    def _on_removed(self, event):
        if event.value is self.layer:
            self.disconnect()

    def disconnect(self) -> None:
        """Stop following the layer (it was removed from the viewer)."""
        self.runner.cancel(silent=True)
        viewer, layer = self.viewer, self.layer
        if layer is not None:
            layer.events.paint.disconnect(self._on_edit)
            layer.events.set_data.disconnect(self._on_edit)
            layer.events.data.disconnect(self._on_data)
        if viewer is not None:
            viewer.dims.events.current_step.disconnect(self._on_step)
            viewer.layers.events.removed.disconnect(self._on_removed)
        self.state.changed.disconnect(self._on_changed)


def seed_points(state: ClusterState) -> tuple[np.ndarray, dict]:
    """Seed positions of every cluster (``(t, rx, ry)`` rows for 5D) and their features."""
    rows, labels, sizes = [], [], []
    for t in range(state.n_steps):
        table = state.table(t)
        ok = table.size > 0
        seed = table.seed[ok].astype(float)
        if state.time_series:
            seed = np.column_stack([np.full(len(seed), t, float), seed])
        rows.append(seed)
        labels.append(np.flatnonzero(ok) + 1)
        sizes.append(table.size[ok])
    ndim = 3 if state.time_series else 2
    data = np.concatenate(rows) if rows else np.empty((0, ndim))
    feats = {
        "label": np.concatenate(labels).astype(np.int64) if labels else np.empty(0, np.int64),
        "size": np.concatenate(sizes).astype(np.int64) if sizes else np.empty(0, np.int64),
    }
    return data.reshape(-1, ndim), feats


def link_for(layer) -> ClusterLink | None:
    """The link of a cluster layer, if one was made."""
    return _LINKS.get(layer)


def attach(viewer, layer, state: ClusterState, seeds_layer=None) -> ClusterLink:
    """Store ``state`` in the layer's metadata and keep it in step with edits."""
    old = _LINKS.get(layer)
    if old is not None and old.state is state and old.viewer is viewer:
        if seeds_layer is not None:
            old.set_seeds_layer(seeds_layer)
        return old
    _LINKS.pop(layer, None)
    if old is not None:
        old.disconnect()
    link = ClusterLink(viewer, layer, state, seeds_layer)
    # Registered before the metadata changes: listeners of the metadata event
    # look the link up.
    _LINKS[layer] = link
    meta = stem_meta(layer)
    if meta is None or meta.get("state") is not state:
        meta = dict(meta or {})
        meta["state"] = state
        meta.setdefault("kind", "segmentation")
        # A new dict: a duplicated layer shares its original's inner dict.
        layer.metadata = {**layer.metadata, META: meta}
    return link


def ensure_link(viewer, layer) -> ClusterLink | None:
    """The link of a cluster layer, building its state from the metadata if needed.

    Works for layers made by the clustering widget and for segmentation
    layers read from a results file (when their cube is known).
    """
    link = _LINKS.get(layer)
    if link is not None and link.state.labels is np.asarray(layer.data):
        return link
    meta = stem_meta(layer)
    if meta is None:
        return None
    state = meta.get("state")
    if not isinstance(state, ClusterState) or state.labels.shape != layer.data.shape:
        state = None
    if state is not None and state.labels is not layer.data:
        state = None  # a copy of another layer: build its own
    if state is None:
        cube = meta.get("cube")
        if cube is None or tuple(cube.shape[:-2]) != tuple(layer.data.shape):
            return None
        result = meta.get("result")
        sim = getattr(result, "similarity", None)
        ms = getattr(result, "mean_similarity", None)
        if sim is not None and np.shape(sim) != layer.data.shape + (8,):
            sim = None
        if ms is not None and np.shape(ms) != layer.data.shape:
            ms = None
        state = ClusterState(
            np.asarray(layer.data),
            cube,
            similarity=sim,
            mean_similarity=ms,
            params=dict(getattr(result, "params", {}) or {}),
        )
        _seed_stored_sums(state, result)
    return attach(viewer, layer, state)


def _seed_stored_sums(state: ClusterState, result) -> None:
    """Use a read result's stored cluster averages instead of reading the cube.

    Only for time steps whose labels are still those of the result; sums
    are mean × size (the stored float32 means).
    """
    from ._state import _Sums

    if result is None:
        return
    stored = np.asarray(result.labels)
    if stored.shape != state.labels.shape:
        return
    five_d = state.time_series
    for t in range(state.n_steps):
        labels = state.step_labels(t)
        if not np.array_equal(labels, stored[t] if five_d else stored):
            continue
        means = result.cluster_means[t] if five_d else result.cluster_means
        table = result.clusters[t] if five_d else result.clusters
        means = np.asarray(means)
        counts = np.asarray(table.size, np.int64)
        if means.shape[1:] != state.detector_shape or len(means) != len(counts):
            continue
        sums = means.astype(np.float64) * counts[:, None, None]
        state._sums[t] = _Sums(sums, counts, np.array(labels, copy=True))
