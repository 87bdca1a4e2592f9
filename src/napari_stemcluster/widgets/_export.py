"""The "Results" stage: save, export figures, re-attach a moved data file.

Figures are drawn with matplotlib's Agg canvas (no window), so they can be
made in a background thread: a map with a scale bar and a colour bar, and
the strip of cluster-averaged patterns with a reciprocal-space scale bar.
PNG and TIFF are chosen by the file name's extension.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, create_widget

from ._common import (
    JobRunner,
    connect_while_alive,
    layer_step,
    stem_meta,
    unwrap,
)

if TYPE_CHECKING:
    import napari

FIGURE_SUFFIXES = (".png", ".tif", ".tiff")


def nice_length(extent: float) -> float:
    """A round scale-bar length (1, 2 or 5 × 10^k) near a fifth of ``extent``.

    Examples
    --------
    >>> nice_length(64.0), nice_length(0.37)
    (10.0, 0.05)
    """
    target = max(extent / 5.0, 1e-12)
    power = 10 ** np.floor(np.log10(target))
    for m in (5, 2, 1):
        if m * power <= target:
            return float(np.round(m * power, 12))
    return float(power)


def _add_scale_bar(ax, shape, pixel_size, units, color="white", left=False):
    from matplotlib.patches import Rectangle

    rows, cols = shape
    length = nice_length(cols * pixel_size)
    px = length / pixel_size
    x0, y0 = (cols * 0.05 if left else cols * 0.95 - px), rows * 0.93
    ax.add_patch(Rectangle((x0, y0), px, rows * 0.015 + 0.5, color=color))
    unit = "px" if units in (None, "", "pixel") else units
    ax.text(x0 + px / 2, y0 - rows * 0.02, f"{length:g} {unit}", color=color,
            ha="center", va="bottom", fontsize=9)  # fmt: skip


def _save_figure(fig, path) -> Path:
    """Save atomically (a temporary file renamed over ``path``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"{path.name}: figures are saved as PNG or TIFF (.png, .tif, .tiff)")
    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=fig.dpi, facecolor=fig.get_facecolor())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def export_map(
    path,
    image: np.ndarray,
    *,
    pixel_size: float = 1.0,
    units: str = "pixel",
    cmap="viridis",
    limits=None,
    title: str = "",
    colorbar_label: str = "",
    rgba: np.ndarray | None = None,
) -> Path:
    """Save a 2D map as PNG/TIFF with a scale bar and a colour bar.

    Parameters
    ----------
    path : str or Path
        ``.png``, ``.tif`` or ``.tiff``.
    image : ndarray, shape (Rx, Ry)
    pixel_size, units
        Real-space calibration of the scale bar.
    cmap : str or matplotlib colormap
    limits : (float, float), optional
        Colour limits (default: the image's range).
    title, colorbar_label : str
    rgba : ndarray, shape (Rx, Ry, 4), optional
        Colours to show instead of ``image`` (labels); no colour bar then.

    Returns
    -------
    Path

    Examples
    --------
    >>> export_map("map.png", np.random.rand(32, 32), pixel_size=0.5, units="nm")  # doctest: +SKIP
    PosixPath('map.png')
    """
    from matplotlib.figure import Figure

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"a map must be 2D; got shape {image.shape}")
    fig = Figure(figsize=(6, 5), dpi=150, facecolor="white")
    ax = fig.add_axes((0.05, 0.05, 0.75, 0.85))
    if rgba is not None:
        ax.imshow(rgba, interpolation="nearest")
    else:
        lo, hi = limits if limits is not None else (np.nanmin(image), np.nanmax(image))
        shown = ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        cax = fig.add_axes((0.83, 0.1, 0.035, 0.75))
        bar = fig.colorbar(shown, cax=cax)
        bar.set_label(colorbar_label)
    ax.set_axis_off()
    ax.set_title(title)
    _add_scale_bar(ax, image.shape, pixel_size, units)
    return _save_figure(fig, path)


def export_average_strip(
    path,
    means: np.ndarray,
    labels,
    *,
    sizes=None,
    q_pixel_size: float = 1.0,
    q_units: str = "pixel",
    scaling: str = "log",
    columns: int = 8,
    title: str = "",
) -> Path:
    """Save cluster-averaged patterns side by side, with a q scale bar and a colour bar.

    Parameters
    ----------
    path : str or Path
        ``.png``, ``.tif`` or ``.tiff``.
    means : ndarray, shape (N, Qx, Qy)
        Average pattern of each cluster (label ``i`` at ``means[i - 1]``).
    labels : sequence of int
        The clusters to show, in order.
    sizes : sequence of int, optional
        Cluster sizes for the panel titles (indexed like ``means``).
    q_pixel_size, q_units
        Reciprocal-space calibration of the scale bar.
    scaling : {"log", "linear"}
        ``log`` shows ``log1p`` of the intensities; one colour scale for all.
    columns : int
        Panels per row.

    Returns
    -------
    Path

    Examples
    --------
    >>> export_average_strip("avg.png", np.random.rand(3, 16, 16), [1, 2, 3])  # doctest: +SKIP
    PosixPath('avg.png')
    """
    from matplotlib.figure import Figure

    from ._diffraction import scale_pattern

    labels = [int(v) for v in labels]
    means = np.asarray(means)
    if not labels:
        raise ValueError("no clusters to export")
    bad = [v for v in labels if not 1 <= v <= len(means)]
    if bad:
        raise ValueError(f"labels {bad} have no average (1..{len(means)} exist)")
    shown = [scale_pattern(means[v - 1], "log" if scaling == "log" else "linear") for v in labels]
    lo = float(min(np.min(s) for s in shown))
    hi = float(max(np.percentile(s, 99.8) for s in shown))
    hi = hi if hi > lo else lo + 1.0
    cols = min(columns, len(labels))
    rows = -(-len(labels) // cols)
    fig = Figure(figsize=(1.6 * cols + 0.8, 1.75 * rows + 0.4), dpi=150, facecolor="white")
    w = 1.6 / (1.6 * cols + 0.8)
    h = 1.5 / (1.75 * rows + 0.4)
    image = None
    for i, (label, pattern) in enumerate(zip(labels, shown, strict=True)):
        r, c = divmod(i, cols)
        ax = fig.add_axes((0.01 + c * w, 1 - (r + 1) * (1.75 / (1.75 * rows + 0.4)), w * 0.95, h))
        image = ax.imshow(pattern, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_axis_off()
        size = "" if sizes is None else f" ({int(sizes[label - 1])})"
        ax.set_title(f"{label}{size}", fontsize=7, pad=2)
        if i == 0:
            _add_scale_bar(ax, pattern.shape, q_pixel_size, q_units, left=True)
    cax = fig.add_axes((1 - 0.6 / (1.6 * cols + 0.8), 0.15, 0.12 / (1.6 * cols + 0.8), 0.7))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("log(1 + I)" if scaling == "log" else "I", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8, y=0.995)
    return _save_figure(fig, path)


def _layer_choices(viewer, kinds):
    def choices(_=None):
        from napari.layers import Image, Labels

        return [
            (layer.name, layer)
            for layer in viewer.layers
            if isinstance(layer, (Image, Labels))
            and layer.ndim in (2, 3)
            and (kinds is None or (stem_meta(layer) or {}).get("kind") in kinds)
        ]

    return choices


class ResultsWidget(Container):
    """Save the clusters, export a map or the cluster averages, find a moved data file.

    Saving and the figures run in the background; the figures are PNG or
    TIFF with a scale bar and a colour bar.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> widget = ResultsWidget(viewer)  # doctest: +SKIP
    >>> widget.export_map_to("similarity.png")  # doctest: +SKIP
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer = unwrap(viewer)
        self._map = create_widget(
            label="Map",
            annotation="napari.layers.Layer",
            options={"choices": _layer_choices(viewer, None)},
        )
        self._export_map = create_widget(label="", annotation=None, widget_type="PushButton")
        self._export_map.text = "Export map (PNG/TIFF)…"
        self._clusters = create_widget(
            label="Clusters",
            annotation="napari.layers.Labels",
            options={"choices": _layer_choices(viewer, ("segmentation",))},
        )
        self._save = create_widget(label="", annotation=None, widget_type="PushButton")
        self._save.text = "Save results (.h5)…"
        self._export_avg = create_widget(label="", annotation=None, widget_type="PushButton")
        self._export_avg.text = "Export cluster averages (PNG/TIFF)…"
        self._locate = create_widget(label="", annotation=None, widget_type="PushButton")
        self._locate.text = "Locate data file…"
        self._locate.tooltip = (
            "The data file of these results moved: choose it to see patterns and "
            "averages and to correct the labels"
        )
        self._status = create_widget("", label="", annotation=str, widget_type="Label")
        self.extend(
            [
                self._map,
                self._export_map,
                self._clusters,
                self._save,
                self._export_avg,
                self._locate,
                self._status,
            ]
        )
        self.runner = JobRunner(on_busy=self._on_busy)
        #: ``ask_path(parent, title, default, filter) -> str`` (replaceable in tests).
        self.ask_path = _ask_save_path
        #: ``ask_open(parent, title) -> str`` for the data file.
        self.ask_open = _ask_open_path
        self._export_map.changed.connect(lambda *_: self.export_map_to())
        self._export_avg.changed.connect(lambda *_: self.export_averages_to())
        self._save.changed.connect(lambda *_: self.save_to())
        self._locate.changed.connect(lambda *_: self.locate_source())
        self._clusters.changed.connect(self._on_clusters)
        connect_while_alive(
            self.native,
            [
                (viewer.layers.events.inserted, self._refresh),
                (viewer.layers.events.removed, self._refresh),
            ],
        )
        self._on_clusters()

    def _refresh(self, *_):
        self.reset_choices()
        self._on_clusters()

    def _on_busy(self, busy):
        for w in (self._export_map, self._export_avg, self._save, self._locate):
            w.enabled = not busy
        if not busy:
            self._on_clusters()

    def _on_clusters(self, *_):
        layer = self._clusters.value
        meta = stem_meta(layer) if layer is not None else None
        has_cube = meta is not None and meta.get("cube") is not None
        self._locate.visible = meta is not None and not has_cube
        self._export_avg.enabled = meta is not None and not self.runner.running
        self._save.enabled = meta is not None and not self.runner.running

    def _t(self, layer) -> int:
        return layer_step(self._viewer, layer)

    # ------------------------------------------------------------- figures
    def export_map_to(self, path=None):
        """Export the chosen map (time step on screen) as PNG/TIFF, in the background."""
        from napari.layers import Labels

        layer = self._map.value
        if layer is None:
            return None
        path = path or self.ask_path(self.native, "Export map", f"{layer.name}.png", _FIG_FILTER)
        if not path:
            return None
        t = self._t(layer)
        image = np.asarray(layer.data[t] if layer.ndim == 3 else layer.data)
        cal = (stem_meta(layer) or {}).get("calibration") or {}
        size = float(layer.scale[-1])
        units = str(layer.units[-1]) if getattr(layer, "units", None) else cal.get("r_units")
        kw = {"pixel_size": size, "units": units, "title": layer.name}
        if isinstance(layer, Labels):
            kw["rgba"] = np.asarray(layer.colormap.map(image.ravel())).reshape(*image.shape, 4)
            kw["rgba"][image == 0] = (0, 0, 0, 1)
        else:
            kw["cmap"] = _mpl_cmap(layer)
            kw["limits"] = tuple(layer.contrast_limits)
        if layer.ndim == 3:
            kw["title"] += f" (t = {t})"

        def work(progress):
            return export_map(path, image, **kw)

        return self.runner.start(work, description="Export map", on_returned=self._done)

    def export_averages_to(self, path=None):
        """Export the cluster averages of the time step on screen as PNG/TIFF."""
        from napari.utils.notifications import show_error

        from ._link import ensure_link

        layer = self._clusters.value
        if layer is None:
            return None
        t = self._t(layer)
        meta = stem_meta(layer) or {}
        link = ensure_link(self._viewer, layer)
        means = sizes = None
        if link is not None and link.state.has_sums(t):
            means = link.state.means(t)
            sizes = link.state.table(t).size
        elif meta.get("result") is not None and not getattr(link, "state", None):
            res = meta["result"]
            means = res.cluster_means[t] if res.is_time_series else res.cluster_means
            table = res.clusters[t] if res.is_time_series else res.clusters
            sizes = table.size
        if means is None:
            show_error("Export: the cluster averages are still being computed; try again")
            return None
        path = path or self.ask_path(
            self.native, "Export cluster averages", f"{layer.name} averages.png", _FIG_FILTER
        )
        if not path:
            return None
        present = [i + 1 for i in range(len(means)) if sizes is None or sizes[i] > 0]
        cal = meta.get("calibration") or {}
        title = f"{layer.name}: cluster averages" + (f" at t = {t}" if layer.ndim == 3 else "")

        def work(progress):
            return export_average_strip(
                path,
                means,
                present,
                sizes=sizes,
                q_pixel_size=float(cal.get("q_pixel_size") or 1.0),
                q_units=str(cal.get("q_units") or "pixel"),
                title=title,
            )

        return self.runner.start(work, description="Export averages", on_returned=self._done)

    def _done(self, path):
        self._status.value = f"saved {Path(path).name}"

    # ---------------------------------------------------------------- save
    def save_to(self, path=None):
        """Save the clusters layer as a results file, in the background."""
        from .._layers import layers_to_result
        from ..io.results import write_results
        from ._link import link_for

        layer = self._clusters.value
        if layer is None:
            return None
        path = path or self.ask_path(
            self.native, "Save results", f"{layer.name}.h5", "Results (*.h5 *.hdf5)"
        )
        if not path:
            return None
        link = link_for(layer)
        if link is not None:
            link.flush()
        meta = dict(stem_meta(layer) or {})
        labels = np.array(layer.data, copy=True)  # edits after this point are not saved
        metadata = {"stemcluster": meta}

        def work(progress):
            result = layers_to_result(labels, metadata)
            return write_results(
                path,
                result,
                source=meta.get("source"),
                calibration=meta.get("calibration"),
                overwrite=True,
                source_dtype=None if meta.get("cube") is None else meta["cube"].dtype,
            )

        return self.runner.start(work, description="Save results", on_returned=self._done)

    # -------------------------------------------------------------- source
    def locate_source(self, path=None):
        """Attach the data file of a results file that moved (asks for it)."""
        layer = self._clusters.value
        if layer is None:
            return None
        path = path or self.ask_open(self.native, "Locate the data file of these results")
        if not path:
            return None
        ds = attach_source(self._viewer, layer, path)
        if ds is not None:
            self._refresh()
            self._status.value = f"attached {Path(path).name}"
        return ds


def attach_source(viewer, layer, path, dataset=None):
    """Give a clusters layer read from a results file its data file again.

    The layers of the same results (similarity map) get the cube too, and the
    data file's virtual image is added (computed in the background for large
    files). Returns the opened dataset, or None (with an error shown) when
    the file is not data of the labels' scan shape.

    Examples
    --------
    >>> attach_source(viewer, viewer.layers["res"], "moved/scan.h5")  # doctest: +SKIP
    """
    from napari.layers import Layer
    from napari.utils.notifications import show_error

    from .._layers import dataset_to_layers
    from .._reader import _in_background, open_source

    ds = dataset if dataset is not None else open_source(str(path), tuple(layer.data.shape))
    if ds is None:
        show_error(
            f"{Path(path).name} does not open as data of scan shape {tuple(layer.data.shape)}; "
            "choose the data file these results were made from"
        )
        return None
    old = stem_meta(layer) or {}
    meta = {**old, "cube": ds.cube, "source": str(ds.path)}
    layer.metadata = {**layer.metadata, "stemcluster": meta}
    for other in viewer.layers:  # the similarity map of the same results
        om = stem_meta(other)
        if other is not layer and om is not None and om.get("source") == old.get("source"):
            other.metadata = {
                **other.metadata,
                "stemcluster": {**om, "cube": ds.cube, "source": str(ds.path)},
            }
    for data, kwargs, kind in _in_background(dataset_to_layers(ds), ds.nbytes):
        viewer.add_layer(Layer.create(data, kwargs, kind))
    return ds


_FIG_FILTER = "PNG or TIFF (*.png *.tif *.tiff)"


def _mpl_cmap(layer):
    """A matplotlib colormap of a napari Image layer's colormap."""
    from matplotlib.colors import ListedColormap

    cmap = layer.colormap
    return ListedColormap(np.asarray(cmap.map(np.linspace(0, 1, 256))))


def _ask_save_path(parent, title, default, filters) -> str:
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, title, default, filters)
    return path


def _ask_open_path(parent, title) -> str:
    from qtpy.QtWidgets import QFileDialog

    from .._reader import _FILE_FILTER

    path, _ = QFileDialog.getOpenFileName(parent, title, "", _FILE_FILTER)
    return path
