"""Dock widget: Bragg disks, lattices and orientation per cluster, and hybrid strain maps."""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, create_widget

from .._bragg_layers import LEGEND, legend_layer_data
from ._common import (
    LATER_STEP_MS,
    JobRunner,
    button,
    connect_while_alive,
    is_cluster_layer,
    layer_choices,
    remember,
    spatial_kwargs,
    stem_meta,
    step_progress,
    unwrap,
)
from ._link import ensure_link

if TYPE_CHECKING:
    import napari

TEMPLATES = ("synthetic disk", "central disk of the cluster average", "vacuum region (Labels)")
ORIENTATION = "in-plane orientation"
STRAIN_NAMES = {
    "exx": "strain εxx (%)",
    "eyy": "strain εyy (%)",
    "exy": "strain εxy (%)",
    "rotation": "lattice rotation (°)",
}


# --------------------------------------------------------------------------
# display helpers (also used by the diffraction viewer)


def _detect(pattern, params: dict | None, radius: float | None):
    """``(disks, beam, positions, intensities)`` of one pattern, or None.

    The widget's settings, with the q-mask radius as the probe size when no
    template or size is set; quiet (a preview warns by showing nothing).
    """
    from ..core import find_bragg_disks
    from ..core.bragg import BraggWarning

    if pattern is None:
        return None
    kw = dict(params or {})
    if radius is not None and kw.get("template") is None and not kw.get("probe_radius"):
        kw["probe_radius"] = float(radius)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BraggWarning)
        try:
            disks, beam = find_bragg_disks(np.asarray(pattern), return_beam=True, **kw)
        except ValueError:
            return None  # e.g. a template larger than this pattern: nothing to draw
    pos = np.stack([disks["qx"], disks["qy"]], axis=1)
    return disks, beam, pos, np.asarray(disks["intensity"], np.float64)


def bragg_display(pattern, params: dict | None = None, radius: float | None = None):
    """Disks of one pattern with their lattice indices, for drawing.

    Returns ``(positions (N, 2), intensities (N,), labels)``: the direct
    beam first (label ``"0 0"``), then the disks, labelled ``"h k"`` when
    indexed by the fitted lattice and ``""`` otherwise.
    """
    from ..core import fit_lattice

    found = _detect(pattern, params, radius)
    if found is None:
        return np.empty((0, 2)), np.empty(0), []
    disks, beam, pos, inten = found
    labels = [""] * len(pos)
    if np.all(np.isfinite(beam)):
        fit = fit_lattice(disks, center=beam)
        if fit.ok:
            labels = [
                f"{h} {k}" if ok else "" for (h, k), ok in zip(fit.hk, fit.indexed, strict=False)
            ]
        pos = np.vstack([beam[None], pos])
        inten = np.concatenate([[np.nan], inten])
        labels = ["0 0", *labels]
    return pos, inten, labels


def pattern_disks_display(
    pattern, params: dict | None = None, radius: float | None = None, lattice=None
):
    """Disks of one scan position, indexed against its cluster's lattice.

    ``lattice`` is ``(g1, g2, center)`` of the cluster (None: no fitted
    lattice). Returns ``(positions (N, 2), intensities (N,), labels)`` like
    :func:`bragg_display`: the direct beam first, then the disks; the labels
    are ``"h k"`` of the disks indexed against the cluster's lattice (the
    beam ``"0 0"``), and all ``""`` without a lattice. As in the strain
    maps, the local lattice is refined from the cluster's basis, so a
    strained or slightly rotated position keeps its cluster's indices.

    Examples
    --------
    >>> from napari_stemcluster._bragg_synth import disk_pattern
    >>> p, truth = disk_pattern((64, 64), dose=None)
    >>> pos, _, labels = pattern_disks_display(p, {"probe_radius": 2.5},
    ...                                        lattice=(truth.g1, truth.g2, truth.center))
    >>> labels[0], pos[0].round(1).tolist()
    ('0 0', [31.5, 31.5])
    """
    from ..core import fit_lattice
    from ..core.lattice import index_disks

    found = _detect(pattern, params, radius)
    if found is None:
        return np.empty((0, 2)), np.empty(0), []
    disks, beam, pos, inten = found
    if lattice is not None and not all(np.all(np.isfinite(v)) for v in lattice[:2]):
        lattice = None  # no lattice was found for this cluster
    labels = [""] * len(pos)
    has_beam = bool(np.all(np.isfinite(beam)))
    if lattice is not None:
        g1, g2, center = (np.asarray(v, np.float64) for v in lattice)
        start = beam if has_beam else center
        if np.all(np.isfinite(start)) and len(pos):
            fit = fit_lattice(disks, center=start, reference=(g1, g2))
            if fit.ok:
                hk, ok = fit.hk, fit.indexed
            else:  # too few disks to refine: index against the cluster's basis
                hk, ok = index_disks(pos, g1, g2, start)
            labels = [f"{h} {k}" if good else "" for (h, k), good in zip(hk, ok, strict=True)]
    if has_beam:
        pos = np.vstack([beam[None], pos])
        inten = np.concatenate([[np.nan], inten])
        labels = ["0 0" if lattice is not None else "", *labels]
    return pos, inten, labels


def set_disk_points(layer, positions, labels) -> None:
    """Points of a disk list, with their index labels as text."""
    layer.data = np.asarray(positions, np.float64).reshape(-1, 2)
    layer.features = {"hk": np.asarray(list(labels), dtype=object)}
    layer.text = {"string": "{hk}", "color": "cyan", "size": 8, "anchor": "upper_left"}


# --------------------------------------------------------------------------
# widget


class BraggWidget(Container):
    """Bragg disks, lattice and orientation per cluster; strain at every position.

    *Detect on cluster averages* finds the disks of every cluster average,
    fits each cluster's lattice (table in the clusters layer's features:
    ``g1_length``, ``g2_length``, ``angle``, ``rotation``, ``n_indexed``,
    ``residual``) and adds the *in-plane orientation* map (cyclic colour map)
    with a colour-wheel legend. *Strain maps* runs the hybrid strain at every
    position in the background (progress, Cancel) and adds εxx, εyy, εxy and
    rotation maps with diverging colour maps centred on zero and colour bars.
    While *Live preview* is on, the diffraction viewer shows the disks found
    with these settings on both of its panels: on the cluster average,
    labelled with the indices of its own lattice, and on the pattern under
    the mouse, labelled with their indices against its cluster's lattice
    once *Detect on cluster averages* has found one (unlabelled before).

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> widget = BraggWidget(viewer)  # doctest: +SKIP
    >>> viewer.window.add_dock_widget(widget, name="Bragg disks & strain")  # doctest: +SKIP
    >>> widget.run_lattices(); widget.run_strain()  # doctest: +SKIP
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer = unwrap(viewer)
        w = {}
        w["clusters"] = create_widget(
            label="Clusters",
            annotation="napari.layers.Labels",
            options={"choices": layer_choices(viewer, is_cluster_layer)},
        )
        w["template"] = create_widget(
            TEMPLATES[0],
            label="Probe template",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": list(TEMPLATES)},
        )
        w["region"] = create_widget(
            label="Vacuum region",
            annotation="napari.layers.Labels",
            options={"choices": layer_choices(viewer, lambda x: True, none="(none)")},
        )
        w["region"].tooltip = "Labels layer whose non-zero positions are vacuum (direct beam only)"
        w["radius"] = _spin(0.0, "Disk radius (px)", 0.0, 100.0, 0.25, float)
        w["radius"].tooltip = "0: estimated from the patterns"
        w["ring"] = create_widget(False, label="Ring (background-subtracted)", annotation=bool)
        w["corr_power"] = _spin(1.0, "Correlation power", 0.0, 1.0, 0.05, float)
        w["corr_power"].tooltip = "1: cross-correlation, 0: phase correlation"
        w["sigma"] = _spin(1.5, "Smoothing σ (px)", 0.0, 10.0, 0.25, float)
        w["min_spacing"] = _spin(0.0, "Min. spacing (px)", 0.0, 200.0, 0.5, float)
        w["min_spacing"].tooltip = "0: the disk radius (at least 2 px)"
        w["min_relative"] = _spin(0.005, "Min. relative", 0.0, 1.0, 0.001, float)
        w["min_absolute"] = _spin(0.0, "Min. absolute", 0.0, 1e9, 0.1, float)
        w[
            "min_absolute"
        ].tooltip = "Least correlation peak (about the mean counts per pixel of the disk); 0: off"
        w["min_snr"] = _spin(5.0, "Min. signal/noise", 0.0, 100.0, 0.5, float)
        w["edge"] = _spin(-1, "Edge margin (px)", -1, 1000, 1, int)
        w["edge"].tooltip = "-1: the disk radius"
        w["max_count"] = _spin(200, "Max. disks", 1, 10000, 1, int)
        w["subpixel"] = create_widget(
            "dft",
            label="Sub-pixel",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": ["dft", "parabolic", "none"]},
        )
        w["min_indexed"] = _spin(5, "Min. indexed (strain)", 3, 1000, 1, int)
        w["reference"] = create_widget(
            label="Strain reference",
            annotation="napari.layers.Labels",
            options={"choices": layer_choices(viewer, lambda x: True, none="(cluster average)")},
        )
        w["reference"].tooltip = (
            "Strain relative to each cluster's average lattice, or to the median local "
            "lattice of each cluster within the non-zero positions of a Labels layer"
        )
        w["preview"] = create_widget(True, label="Live preview", annotation=bool)
        self._w = w
        self._run = button("Detect on cluster averages", "Run")
        self._strain = button("Strain maps (all positions)", "Strain")
        self._cancel = button("Cancel", "Cancel")
        self._cancel.enabled = False
        self._status = create_widget("", label="", annotation=str, widget_type="Label")
        self.extend([*w.values(), self._run, self._strain, self._cancel, self._status])
        self.runner = JobRunner(on_busy=self._on_busy)
        #: Per time step LatticeTable of the last run, and its strain result.
        self.lattices: list | None = None
        self.strain = None
        self.orientation_layer = None
        self.strain_layers: dict = {}
        #: (key, template) of the last template taken from the data.
        self._template_cache: tuple = (None, None)
        self._preview_scheduled = False  # a refresh of the viewers waits for a turn
        self._run.changed.connect(self.run_lattices)
        self._strain.changed.connect(self.run_strain)
        self._cancel.changed.connect(self.runner.cancel)
        w["template"].changed.connect(self._on_template)
        connect_while_alive(
            self.native,
            [
                (viewer.layers.events.inserted, self._on_layers_changed),
                (viewer.layers.events.removed, self._on_layers_changed),
            ],
        )
        remember(
            "bragg",
            {k: v for k, v in w.items() if k not in ("clusters", "region", "reference")},
        )
        clusters = [x for x in viewer.layers if is_cluster_layer(x)]
        if clusters and w["clusters"].value is None:
            w["clusters"].value = clusters[-1]
        # The preview follows the settings and the clusters from here on:
        # connected before, each setting restored and the clusters chosen
        # refreshed every diffraction viewer (their averages and disks) once
        # more, all in the turn that made the widget (docking's longest).
        for key, widget in w.items():
            if key not in ("clusters", "min_indexed", "reference"):
                widget.changed.connect(self.update_preview)
        w["clusters"].changed.connect(self._on_clusters)
        self._on_template()
        self._take_up_stored()
        # the viewers take these settings in a turn of their own
        self._schedule_preview()

    # ---------------------------------------------------------------- inputs
    def _on_layers_changed(self, event=None):
        clusters = self._w["clusters"]
        before = clusters.value
        with clusters.changed.blocked():
            self.reset_choices()
            if event is not None and event.type == "inserted" and is_cluster_layer(event.value):
                clusters.value = event.value
        if clusters.value is not before:
            self._take_up_stored()
            # The viewers' average and disks in a later event-loop turn: they
            # add a layer there, which must not add to the turn (and paint)
            # that draws the new clusters layer.
            self._schedule_preview()

    def _schedule_preview(self):
        """Refresh the viewers in a later turn (once, however often asked meanwhile)."""
        from qtpy.QtCore import QTimer

        if not self._preview_scheduled:
            self._preview_scheduled = True
            QTimer.singleShot(LATER_STEP_MS, self._preview_later)

    def _preview_later(self):
        self._preview_scheduled = False
        try:
            self.native.objectName()
        except RuntimeError:  # the widget was closed and deleted meanwhile
            return
        if not self._viewers_current():
            self.update_preview()

    def _viewers_current(self) -> bool:
        """Whether every diffraction viewer already has these settings and lattices.

        Then the new clusters change nothing the viewers take from this
        widget: they show the new clusters' average on their own, and
        refreshing them here would search its disks a second time.
        """
        if self._w["template"].value != TEMPLATES[0]:
            return False  # a template taken from the clusters changes with them
        try:
            params = self.params() if self._w["preview"].value else None
        except ValueError:
            return False
        return all(
            dif.bragg_params == params and dif.bragg_lattices is self.lattices
            for dif in self.diffraction_viewers()
        )

    def _on_clusters(self, *_):
        """Take up the analysis stored with the clusters (a results file opened again).

        Lattices of other clusters are dropped, so that strain is never
        measured against them.
        """
        self._take_up_stored()
        self.update_preview()  # the viewers index against these clusters' lattices

    def _take_up_stored(self):
        self.lattices, self.strain = None, None
        layer = self.cluster_layer
        stored = (stem_meta(layer) or {}).get("bragg") if layer is not None else None
        if not stored or not stored.get("lattices"):
            return
        lattices = list(stored["lattices"])
        labels = np.asarray(layer.data)
        steps = labels if labels.ndim == 3 else labels[None]
        if len(lattices) == len(steps) and all(
            len(t) == int(s.max(initial=0)) for t, s in zip(lattices, steps, strict=True)
        ):
            self.lattices, self.strain = lattices, stored.get("strain")
            what = "lattices" if self.strain is None else "lattices and strain"
            self._status.value = f"{what} of {layer.name!r} taken up (stored with the clusters)"

    def _on_template(self, *_):
        self._w["region"].visible = self._w["template"].value == TEMPLATES[2]

    def _on_busy(self, busy: bool):
        self._run.enabled = self._strain.enabled = not busy
        self._cancel.enabled = busy

    @property
    def cluster_layer(self):
        return self._w["clusters"].value

    def _state(self):
        layer = self.cluster_layer
        if layer is None:
            raise ValueError("choose a clusters layer (run the clustering first)")
        link = ensure_link(self._viewer, layer)
        if link is None or link.state.cube is None:
            raise ValueError(
                f"layer {layer.name!r} has no data cube attached: open the data file with it"
            )
        return link.state

    def params(self, t: int = 0, template: bool = True) -> dict:
        """Keyword arguments for :func:`~napari_stemcluster.core.find_bragg_disks`.

        With ``template=False`` the template taken from the data is left out
        (the runs compute it in their background job).
        """
        w = self._w
        p = {
            "ring": bool(w["ring"].value),
            "corr_power": float(w["corr_power"].value),
            "sigma": float(w["sigma"].value),
            "min_relative": float(w["min_relative"].value),
            "min_absolute": float(w["min_absolute"].value),
            "min_snr": float(w["min_snr"].value),
            "max_count": int(w["max_count"].value),
            "subpixel": w["subpixel"].value,
        }
        if w["radius"].value > 0:
            p["probe_radius"] = float(w["radius"].value)
        if w["min_spacing"].value > 0:
            p["min_spacing"] = float(w["min_spacing"].value)
        if w["edge"].value >= 0:
            p["edge"] = int(w["edge"].value)
        source = self._template_source(t) if template else None
        if source is not None:
            p["template"] = source()
        return p

    def _template_source(self, t: int):
        """A function giving the chosen template (None: synthetic disk).

        Checks the inputs now (on the GUI thread) and reads the data only when
        called, once per input: averaging a vacuum region reads its patterns.
        """
        from ..core import probe_from_pattern, probe_from_region

        choice = self._w["template"].value
        radius = float(self._w["radius"].value) or None
        if choice == TEMPLATES[0]:
            return None
        state = self._state()
        step = min(t, state.n_steps - 1)
        if choice == TEMPLATES[1]:
            means = state.means(step)
            if means is None or not len(means):
                raise ValueError("no cluster averages yet: wait for them, or run the clustering")
            sizes = state.table(step).size
            pattern = means[int(np.argmax(sizes))]
            key = (choice, radius, id(state), step, means.shape, sizes.tobytes())
            return self._cached(key, lambda: probe_from_pattern(pattern, radius=radius))
        layer = self._w["region"].value
        if layer is None:
            raise ValueError("choose a Labels layer marking the vacuum region")
        region = np.asarray(layer.data) > 0
        lab = state.step_labels(step)
        if region.ndim == 3:
            region = region[min(t, region.shape[0] - 1)]
        if region.shape != lab.shape:
            raise ValueError(
                f"the vacuum region {region.shape} must have the scan shape {lab.shape}"
            )
        if not region.any():
            raise ValueError("the vacuum region is empty: paint at least one scan position")
        cube = state.step_cube(step)
        key = (choice, radius, id(state), step, region.shape, np.packbits(region).tobytes())
        return self._cached(key, lambda: probe_from_region(cube, region, radius=radius))

    def _cached(self, key, make):
        def get():
            if self._template_cache[0] != key:
                self._template_cache = (key, make())
            return self._template_cache[1]

        return get

    # --------------------------------------------------------------- preview
    def diffraction_viewers(self) -> list:
        from ._diffraction import DiffractionViewer

        window = getattr(self._viewer, "window", None)
        qt = getattr(window, "_qt_window", None)
        return [] if qt is None else list(qt.findChildren(DiffractionViewer))

    def update_preview(self, *_):
        """Show disks found with these settings in every diffraction viewer."""
        try:
            params = self.params() if self._w["preview"].value else None
        except ValueError as e:
            self._status.value = str(e)
            params = None
        for dif in self.diffraction_viewers():
            dif.bragg_params = params
            dif.bragg_lattices = self.lattices
            dif._avg_key = None
            dif._refresh_average()
            if dif.built:  # else its last step shows the pattern and its disks
                dif.refresh_pattern_disks()

    # ----------------------------------------------------------------- runs
    def run_lattices(self, *_):
        """Disks and lattice of every cluster average (background job)."""
        return self._reported(self._run_lattices)

    def run_strain(self, *_):
        """Hybrid strain at every position of every cluster (background job)."""
        return self._reported(self._run_strain)

    def _reported(self, fn):
        from napari.utils.notifications import show_error

        try:
            return fn()
        except ValueError as e:
            self._status.value = str(e)
            show_error(f"Bragg disks & strain: {e}")
            return None

    def _run_lattices(self):
        from ..core import cluster_lattices

        state = self._state()
        steps = list(range(state.n_steps))
        params = [self.params(t, template=False) for t in steps]
        sources = [self._template_source(t) for t in steps]
        means = [state.means(t) for t in steps]
        if any(m is None for m in means):
            raise ValueError("the cluster averages are still being computed; try again shortly")
        layer = self.cluster_layer

        def work(progress):
            out = []
            for i, t in enumerate(steps):
                kw = dict(params[t])
                if sources[t] is not None:
                    kw["template"] = sources[t]()
                out.append(
                    cluster_lattices(
                        np.asarray(means[t]),
                        progress=step_progress(progress, i, len(steps)),
                        **kw,
                    )
                )
            return out

        return self.runner.start(
            work,
            description="Bragg disks and lattices",
            on_returned=lambda value: self._apply_lattices(layer, state, value, params[0]),
        )

    def _run_strain(self):
        from ..core import rereference, strain_map

        if self.lattices is None:
            raise ValueError("detect the cluster lattices first")
        state = self._state()
        params = self.params(template=False)
        source = self._template_source(0)
        labels = np.asarray(state.labels).copy()
        cube = state.cube
        lattices = self.lattices
        min_indexed = int(self._w["min_indexed"].value)
        layer = self.cluster_layer

        ref = self._w["reference"].value
        region = None
        if ref is not None:
            region = np.asarray(ref.data) > 0
            if region.shape != labels.shape:
                raise ValueError(
                    f"the strain reference {region.shape} must have the labels' shape "
                    f"{labels.shape}"
                )

        def work(progress):
            kw = dict(params)
            if source is not None:
                kw["template"] = source()
            strain = strain_map(
                cube, labels, lattices, min_indexed=min_indexed, progress=progress, **kw
            )
            if region is not None and (region & np.isfinite(strain.exx)).any():
                strain = rereference(strain, labels, region)
            return strain

        return self.runner.start(
            work,
            description="Strain maps",
            on_returned=lambda value: self._apply_strain(layer, value, params, min_indexed),
        )

    # --------------------------------------------------------------- results
    def _analysis(self, params):
        safe = {k: v for k, v in params.items() if k != "template"}
        safe["template"] = self._w["template"].value
        return {"lattices": self.lattices, "strain": self.strain, "params": safe}

    def _store(self, layer, params):
        meta = stem_meta(layer)
        if meta is not None:
            meta["bragg"] = self._analysis(params)

    def _apply_lattices(self, layer, state, lattices, params):
        from ..io._analysis_bragg import bragg_layer_data

        self.lattices = lattices
        self.strain = None
        self._store(layer, params)
        tuples = bragg_layer_data({"lattices": lattices}, np.asarray(state.labels))
        data, kwargs, _ = tuples[0]
        sk = spatial_kwargs(layer, data.ndim)
        self.orientation_layer = self._replace(ORIENTATION, data, {**kwargs, **sk})
        period = kwargs["metadata"]["stemcluster"]["period"]
        self._legend(layer, period)
        if not state.time_series:
            cols = lattices[0].as_dict()
            feats = dict(layer.features) if len(layer.features) == len(cols["label"]) else {}
            feats.update({k: v for k, v in cols.items() if k != "label"})
            with contextlib.suppress(ValueError, TypeError):
                layer.features = feats
        n = sum(len(t) for t in lattices)
        found = sum(int(np.isfinite(t.g1).all(axis=1).sum()) for t in lattices)
        self._status.value = f"lattice found for {found} of {n} clusters"
        self.update_preview()  # the pattern's disks indexed against the new lattices

    def _apply_strain(self, layer, strain, params, min_indexed):
        from ..io._analysis_bragg import bragg_layer_data

        self.strain = strain
        self._store(layer, {**params, "min_indexed": min_indexed})
        tuples = bragg_layer_data({"strain": strain}, strain.exx)
        self.strain_layers = {}
        for (data, kwargs, _), key in zip(tuples, STRAIN_NAMES, strict=True):
            sk = spatial_kwargs(layer, data.ndim)
            new = self._replace(kwargs["name"], data, {**kwargs, **sk})
            new.colorbar.visible = True
            self.strain_layers[key] = new
        ok = np.isfinite(strain.exx)
        inside = np.isfinite(strain.g1_ref).all(axis=-1)  # positions in a cluster
        self._status.value = (
            f"strain at {int(ok.sum())} of {int(inside.sum())} clustered positions "
            f"(NaN: fewer than {min_indexed} indexed disks)"
        )

    def _replace(self, name, data, kwargs):
        viewer = self._viewer
        active = viewer.layers.selection.active
        if name in viewer.layers:
            viewer.layers.remove(name)
        kwargs = {k: v for k, v in kwargs.items() if k != "axis_labels"}
        layer = viewer.add_image(data, **kwargs)
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active
        return layer

    def _legend(self, layer, period):
        data, kw, _ = legend_layer_data(
            period, np.asarray(layer.data).shape, layer.scale, layer.translate, layer.units
        )
        first = LEGEND not in self._viewer.layers
        self._replace(LEGEND, data, kw)
        if first:  # the legend sits beside the scan: bring it into view once
            self._viewer.reset_view()


def _spin(value, label, lo, hi, step, kind):
    return create_widget(
        value,
        label=label,
        annotation=kind,
        widget_type="FloatSpinBox" if kind is float else "SpinBox",
        options={"min": lo, "max": hi, "step": step},
    )
