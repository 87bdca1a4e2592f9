"""Dock widget: orientation and phase of every cluster from CIF files.

The cluster averages of a segmentation layer are matched against kinematical
templates (:func:`napari_stemcluster.core.orient_clusters`) in a background
thread. The maps (IPF colours along z, x, y, phase, score) appear as layers;
the dock shows the selected cluster's average with its matched template, the
(hkl) of the spots, and the IPF colour key. In the diffraction viewer the
matched template, with the (hkl) of its strongest spots, is drawn over the
cluster average and over the pattern under the mouse (its cluster's match).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, create_widget

from ._common import (
    JobRunner,
    button,
    stem_meta,
    unwrap,
)

if TYPE_CHECKING:
    import napari


#: Names of the template layers added to a diffraction viewer's two panels.
TEMPLATE_LAYER = "orientation template"
PATTERN_TEMPLATE_LAYER = "orientation template (pattern)"
#: Spots labelled with their (hkl), strongest first.
N_LABELS = 16


def _hkl_text(h) -> str:
    return "".join(str(int(v)) if v >= 0 else f"-{-int(v)}" for v in h)


def _display_library(result, phase: int, cache: dict):
    """A library holding the crystal and geometry of a match, for drawing templates."""
    from ..core.orientation import orientation_library

    key = (id(result), phase)
    if key not in cache:
        p = result.params
        cache[key] = orientation_library(
            result.structures[phase],
            p["energy_kev"],
            p["q_pixel_size"],
            step_deg=30.0,  # no search: only the crystal, the geometry and the weights
            max_angle_mrad=p.get("max_angle_mrad"),
            g_max=p.get("g_max"),
            sigma_excitation=p["sigma_excitation"],
            convergence_mrad=p["convergence_mrad"],
            thickness_nm=p.get("thickness_nm", 0.0),  # absent in files of older versions
        )
    return cache[key]


def template_spots(result, t: int, label: int, shape, cache: dict):
    """Spots of a cluster's matched template on a detector of ``shape``.

    Returns ``(positions (N, 2) in pixels, relative intensities (N,), hkl
    labels)``, the ``N_LABELS`` strongest labelled and the others ``""``;
    empty when the cluster is not indexed. The spots are drawn around the
    direct beam the cluster was matched with (its record's ``center``; the
    detector centre for results of older versions).
    """

    empty = (np.empty((0, 2)), np.empty(0), [])
    if result is None or not label:
        return empty
    key = ("spots", id(result), int(t), int(label), tuple(shape))
    if key not in cache:  # the pattern panel asks again at every mouse move
        cache[key] = _template_spots(result, t, label, shape, cache)
    return cache[key]


def _template_spots(result, t, label, shape, cache):
    from ..core.orientation import kinematical_spots

    empty = (np.empty((0, 2)), np.empty(0), [])
    rows = result.step(t)
    if label > len(rows) or not rows[label - 1]["indexed"]:
        return empty
    rec = rows[label - 1]
    lib = _display_library(result, int(rec["phase"]), cache)
    sp = kinematical_spots(lib, rec["rotation"])
    center = result.centers(shape, t)[label - 1]
    pos = center + sp["q"]
    inside = np.all((pos >= -0.5) & (pos <= np.array(shape) - 0.5), axis=1)
    pos, inten, hkl = pos[inside], sp["intensity"][inside], sp["hkl"][inside]
    if not len(pos):
        return empty
    inten = inten / inten.max()
    labels = [""] * len(pos)
    for i in np.argsort(-inten)[:N_LABELS]:
        labels[i] = _hkl_text(hkl[i])
    return pos, inten, labels


class TemplateOverlay:
    """The matched template over a diffraction viewer's pattern and average.

    Adds one Points layer at the end of each of the viewer's two panels
    (the grid grows by one layer per panel) and redraws them whenever the
    shown pattern or average changes. The orientation comes from the
    clusters layer's metadata (``"orientation"``), so matches restored from
    a results file are drawn too.
    """

    def __init__(self, dif):
        from ._diffraction import _grid

        self._dif = weakref.ref(dif)
        self._cache: dict = {}
        self._result = None
        model = dif.model
        grid = _grid(model)
        stride = max(1, int(grid.stride))
        kw = {
            "face_color": "transparent",
            "border_color": "orange",
            "border_width": 0.12,
            "features": {"hkl": np.empty(0, dtype=object)},
            "text": {"string": "{hkl}", "color": "yellow", "size": 8, "anchor": "upper_left"},
        }
        ref = dif.average_layer
        kw["scale"], kw["units"] = tuple(ref.scale), tuple(ref.units)
        active = model.layers.selection.active  # adding a layer selects it
        self.pattern_layer = model.add_points(np.empty((0, 2)), name=PATTERN_TEMPLATE_LAYER, **kw)
        model.layers.move(model.layers.index(self.pattern_layer), stride)
        self.average_layer = model.add_points(np.empty((0, 2)), name=TEMPLATE_LAYER, **kw)
        grid.stride = stride + 1
        model.layers.selection.active = active
        dif.pattern_layer.events.data.connect(self.update)
        dif.average_layer.events.data.connect(self.update)

    def update(self, *_):
        """Redraw both templates for what the viewer shows now."""
        dif = self._dif()
        if dif is None:
            return
        layer = dif.cluster_layer
        meta = stem_meta(layer) if layer is not None else None
        res = None if meta is None else meta.get("orientation")
        if res is not self._result:  # the cache is keyed by id(result)
            self._cache.clear()
            self._result = res
        state = dif.state
        t = 0 if state is None else min(dif.t, state.n_steps - 1)
        under_mouse = None
        if state is not None and dif.position is not None and dif.pattern is not None:
            try:
                under_mouse = int(state.step_labels(t)[dif.position])
            except (IndexError, TypeError):
                under_mouse = None
        for points, label, image in (
            (self.average_layer, dif.label, dif.average),
            (self.pattern_layer, under_mouse, dif.pattern),
        ):
            shape = None if image is None else np.shape(image)[-2:]
            if shape is None:
                pos, inten, labels = np.empty((0, 2)), np.empty(0), []
            else:
                pos, inten, labels = template_spots(res, t, label, shape, self._cache)
            points.data = pos
            points.features = {"hkl": np.asarray(labels, dtype=object)}
            if len(pos):
                points.size = 2.0 + 6.0 * np.sqrt(inten)
            points.scale = dif.average_layer.scale


def _has_result(layer) -> bool:
    from napari.layers import Labels

    meta = stem_meta(layer)
    return (
        isinstance(layer, Labels)
        and meta is not None
        and meta.get("kind") == "segmentation"
        and meta.get("result") is not None
    )


class OrientationWidget(Container):
    """Match the cluster averages against crystal structures; show the maps.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> widget = OrientationWidget(viewer)  # doctest: +SKIP
    >>> widget.run(); widget.jobs.wait()  # doctest: +SKIP
    >>> widget.result.records["phase"]  # doctest: +SKIP
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        from ..data import builtin_cif

        self._viewer = viewer = unwrap(viewer)
        self.result = None
        self._libs: dict = {}
        self._layer_combo = create_widget(
            label="Clusters",
            annotation="napari.layers.Labels",
            options={"choices": self._layer_choices},
        )
        self._cif = create_widget(
            [builtin_cif("Au")],
            label="CIF files",
            annotation=list[Path],
            options={"mode": "rm", "filter": "*.cif"},
        )
        self._cif.tooltip = "One CIF per candidate phase"

        def num(value, label, lo, hi, step, tip):
            w = create_widget(
                value,
                label=label,
                annotation=float,
                widget_type="FloatSpinBox",
                options={"min": lo, "max": hi, "step": step},
            )
            w.tooltip = tip
            return w

        self._energy = num(300.0, "Energy (keV)", 1.0, 3000.0, 10.0, "Beam energy")
        self._qpix = num(0.02, "Q pixel (1/Å)", 1e-5, 1.0, 0.001, "Detector calibration")
        self._qpix.native.setDecimals(5)
        self._step = num(1.0, "Step (°)", 0.1, 10.0, 0.5, "Angular step of the library")
        self._max_angle = num(30.0, "Max. 2θ (mrad)", 1.0, 500.0, 5.0, "Largest scattering angle")
        self._sigma = num(0.02, "σ excitation (1/Å)", 0.001, 0.5, 0.005, "About 1/thickness")
        self._sigma.native.setDecimals(3)
        self._conv = num(0.0, "Convergence (mrad)", 0.0, 50.0, 0.1, "Probe semi-angle")
        self._thickness = num(
            0.0,
            "Thickness (nm)",
            0.0,
            1000.0,
            1.0,
            "0: Gaussian excitation weight of width σ; else the sinc² of a slab this thick",
        )
        self._disk = num(2.0, "Disk radius (px)", 0.5, 50.0, 0.5, "Bragg disk radius")
        self._min_disks = create_widget(
            4, label="Min. disks", annotation=int, options={"min": 1, "max": 100}
        )
        self._center_mode = create_widget(
            "auto",
            label="Beam centre",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": ["auto", "manual"]},
        )
        self._center_mode.tooltip = (
            "auto: the direct beam found in each cluster average; "
            "manual: the position below for all clusters"
        )
        self._center_qx = num(31.5, "Centre qx (px)", -1e4, 1e4, 0.5, "Direct beam, detector row")
        self._center_qy = num(31.5, "Centre qy (px)", -1e4, 1e4, 0.5, "Direct beam, column")
        self._center_mode.changed.connect(self._on_center_mode)
        self._run = button("Match cluster averages", "Run")
        self._cancel = create_widget(label="Cancel", annotation=None, widget_type="PushButton")
        self._cancel.enabled = False
        self._status = create_widget("", label="", annotation=str, widget_type="Label")
        self._cluster = create_widget(
            1, label="Show cluster", annotation=int, options={"min": 1, "max": 1}
        )
        self._time = create_widget(0, label="Time step", annotation=int, options={"max": 0})
        self.extend(
            [
                self._layer_combo,
                self._cif,
                self._energy,
                self._qpix,
                self._step,
                self._max_angle,
                self._sigma,
                self._conv,
                self._thickness,
                self._disk,
                self._min_disks,
                self._center_mode,
                self._center_qx,
                self._center_qy,
                self._run,
                self._cancel,
                self._status,
                self._time,
                self._cluster,
            ]
        )
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.0, 5.6), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(420)
        self.native.layout().addWidget(self.canvas)

        self.jobs = JobRunner(on_busy=self._on_busy)
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.jobs.cancel)
        self._cluster.changed.connect(self.draw)
        self._time.changed.connect(self.draw)
        self._layer_combo.changed.connect(self._on_layer)
        viewer.layers.events.inserted.connect(self._layer_combo.reset_choices)
        viewer.layers.events.removed.connect(self._layer_combo.reset_choices)
        self._on_center_mode()
        self._on_layer()

    # ------------------------------------------------------------ helpers
    def _layer_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self._viewer.layers if _has_result(layer)]

    def _on_busy(self, busy: bool) -> None:
        self._run.enabled = not busy
        self._cancel.enabled = busy

    def _on_center_mode(self, *_):
        manual = self._center_mode.value == "manual"
        self._center_qx.enabled = self._center_qy.enabled = manual

    def _on_layer(self, *_):
        from ..io import normalize_units

        layer = self._layer_combo.value
        meta = stem_meta(layer) if layer is not None else None
        if meta is None:
            return
        result = meta.get("result")
        means = getattr(result, "cluster_means", None)
        if means is not None and self._center_mode.value == "auto":
            # the manual centre starts at this detector's centre
            qshape = np.shape(means[0] if isinstance(means, list) else means)[-2:]
            if len(qshape) == 2:
                self._center_qx.value = (qshape[0] - 1) / 2
                self._center_qy.value = (qshape[1] - 1) / 2
        cal = meta.get("calibration") or {}
        scale = {"1/angstrom": 1.0, "1/nm": 0.1}.get(normalize_units(cal.get("q_units")))
        if scale is not None and cal.get("q_pixel_size"):
            self._qpix.value = float(cal["q_pixel_size"]) * scale
        labels = np.asarray(layer.data)
        self._time.max = labels.shape[0] - 1 if labels.ndim == 3 else 0
        if meta.get("orientation") is not self.result:
            self._libs.clear()  # keyed by id(result)
        self.result = meta.get("orientation")
        self._cluster.max = max(1, int(labels.max(initial=0)))
        self.draw()
        self.update_overlays()

    def _cluster_means(self, layer):
        from .._layers import layers_to_result

        result = layers_to_result(layer)
        return result.cluster_means, result

    # ------------------------------------------------------------ actions
    def run(self, *_):
        """Match every cluster average of the chosen layer (in a background thread)."""
        layer = self._layer_combo.value
        if layer is None:
            self._status.value = "No segmentation layer"
            return None
        cifs = [Path(p) for p in (self._cif.value or [])]
        if not cifs:
            self._status.value = "Choose at least one CIF file"
            return None
        params = {
            "energy_kev": self._energy.value,
            "q_pixel_size": self._qpix.value,
            "step_deg": self._step.value,
            "max_angle_mrad": self._max_angle.value,
            "sigma_excitation": self._sigma.value,
            "convergence_mrad": self._conv.value,
            "thickness_nm": self._thickness.value,
            "disk_radius": self._disk.value,
            "min_disks": self._min_disks.value,
            "center": (
                "auto"
                if self._center_mode.value == "auto"
                else (self._center_qx.value, self._center_qy.value)
            ),
        }

        def job(progress):
            from ..core.orientation import orient_clusters

            means, result = self._cluster_means(layer)
            kw = dict(params)
            energy, qp = kw.pop("energy_kev"), kw.pop("q_pixel_size")
            res = orient_clusters(means, cifs, energy, qp, progress=progress, **kw)
            return layer, result, res

        self._status.value = "Matching…"
        return self.jobs.start(job, description="Orientation mapping", on_returned=self._apply)

    def _apply(self, out):
        from ..io._analysis_orientation import orientation_to_layers

        layer, _, res = out
        self.result = res
        self._libs.clear()
        meta = stem_meta(layer)
        meta["orientation"] = res
        tuples = orientation_to_layers(
            np.asarray(layer.data), res, meta.get("calibration"), layer.name
        )
        for data, kwargs, kind in tuples:
            name = kwargs["name"]
            if name in self._viewer.layers:
                self._viewer.layers[name].data = data
            else:
                getattr(self._viewer, f"add_{kind}")(data, **kwargs)
        rec = res.records
        ok = rec["indexed"]
        median = float(np.median(rec["score"][ok])) if ok.any() else 0.0
        self._status.value = (
            f"{int(ok.sum())} of {len(rec)} clusters indexed; median score {median:.3f}"
        )
        self.draw()
        self.update_overlays()

    def _display_library(self, phase: int):
        """A library holding the crystal and geometry, for drawing templates."""
        return _display_library(self.result, phase, self._libs)

    def diffraction_viewers(self) -> list:
        from ._diffraction import DiffractionViewer

        window = getattr(self._viewer, "window", None)
        qt = getattr(window, "_qt_window", None)
        return [] if qt is None else list(qt.findChildren(DiffractionViewer))

    def update_overlays(self) -> None:
        """Draw the matched templates in every diffraction viewer (once there is a match)."""
        if self.result is None:
            return
        for dif in self.diffraction_viewers():
            overlay = getattr(dif, "orientation_overlay", None)
            if overlay is None:
                overlay = dif.orientation_overlay = TemplateOverlay(dif)
            overlay.update()

    def draw(self, *_):
        """Redraw the cluster average, its template with (hkl), and the IPF key."""
        from ..core.orientation import ipf_color_key, kinematical_spots

        fig = self.figure
        fig.clear()
        layer = self._layer_combo.value
        res = self.result
        ax = fig.add_subplot(4, 1, (1, 3))
        ax.set_axis_off()
        if layer is None or res is None:
            ax.text(0.5, 0.5, "no orientation results yet", ha="center", va="center")
            self.canvas.draw_idle()
            return
        t = int(self._time.value)
        label = int(self._cluster.value)
        rows = res.step(t)
        meta = stem_meta(layer)
        result = meta.get("result")
        means = result.cluster_means[t] if result.is_time_series else result.cluster_means
        if label > len(rows) or label > len(means):
            ax.text(0.5, 0.5, f"no cluster {label}", ha="center", va="center")
            self.canvas.draw_idle()
            return
        avg = np.asarray(means[label - 1], np.float64)
        ax.imshow(np.log1p(np.clip(avg, 0, None)), cmap="gray")
        rec = rows[label - 1]
        center = res.centers(avg.shape, t)[label - 1]
        ax.plot(center[1], center[0], "+", color="tab:cyan", markersize=9, mew=1.2)
        if rec["indexed"]:
            st = res.structures[int(rec["phase"])]
            lib = self._display_library(int(rec["phase"]))
            sp = kinematical_spots(lib, rec["rotation"])
            pos = center + sp["q"]
            inside = (
                (pos[:, 0] >= 0)
                & (pos[:, 0] < avg.shape[0])
                & (pos[:, 1] >= 0)
                & (pos[:, 1] < avg.shape[1])
            )
            inten = sp["intensity"] / sp["intensity"].max()
            ax.scatter(
                pos[inside, 1],
                pos[inside, 0],
                s=20 + 180 * np.sqrt(inten[inside]),
                facecolors="none",
                edgecolors="tab:orange",
                linewidths=1.0,
            )
            order = np.argsort(-inten[inside])[:16]
            for i in order:
                (qx, qy), h = pos[inside][i], sp["hkl"][inside][i]
                ax.annotate(
                    "".join(str(v) if v >= 0 else f"-{-v}" for v in h),
                    (qy, qx),
                    xytext=(4, 4),
                    textcoords="offset points",
                    color="yellow",
                    fontsize=7,
                )
            za = "".join(str(v) for v in rec["zone_axis"])
            ax.set_title(
                f"cluster {label}: {st.name} [{za}], in-plane {rec['inplane_deg']:.1f}°\n"
                f"score {rec['score']:.3f}, confidence {rec['confidence']:.2f}, "
                f"beam ({center[0]:.1f}, {center[1]:.1f})",
                fontsize=8,
            )
            key, names = ipf_color_key(st, 128)
            kax = fig.add_subplot(4, 1, 4)
            kax.imshow(key)
            for name, (r, c) in names:
                kax.annotate(name, (c, r), fontsize=7, ha="center", va="bottom")
            kax.set_title("IPF colour key", fontsize=8)
            kax.set_axis_off()
        else:
            ax.set_title(f"cluster {label}: not indexed ({rec['n_disks']} disks)", fontsize=8)
        self.canvas.draw_idle()
