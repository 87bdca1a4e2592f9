"""Dock widget: correlative prefilter of a 4D/5D cube."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, create_widget

from ..core.params import DEFAULTS
from ._common import (
    JobRunner,
    available_memory,
    button,
    connect_while_alive,
    is_data_layer,
    layer_choices,
    layer_step,
    param_widget,
    remember,
    spatial_kwargs,
    stem_meta,
    step_progress,
    unwrap,
)

if TYPE_CHECKING:
    import napari

#: Keep a prefiltered cube in memory when it needs less than this fraction of
#: the machine's RAM; otherwise it is written to a temporary ``.npy`` file and
#: attached as a lazy (memory-mapped) dask array.
IN_MEMORY_FRACTION = 0.25


class PrefilterWidget(Container):
    """Correlative prefilter: average each pattern with its correlated neighbours.

    Produces a new cube (float32) attached to a new real-space layer (its
    virtual dark-field image); the original layer and cube stay. The new
    cube is held in memory when it is small (below a quarter of the RAM);
    otherwise it is written to a temporary ``.npy`` file, deleted when the
    layer is garbage-collected or napari exits, and attached lazily.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> widget = PrefilterWidget(viewer)  # doctest: +SKIP
    >>> viewer.window.add_dock_widget(widget, name="Prefilter")  # doctest: +SKIP
    >>> widget.run()  # a background job; the new layer appears when it ends  # doctest: +SKIP
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer = unwrap(viewer)
        self._layer_combo = create_widget(
            label="Data",
            annotation="napari.layers.Image",
            options={"choices": layer_choices(viewer, is_data_layer)},
        )
        self._sigma = param_widget("prefilter_sigma", "Blur σ (px)", step=0.5)
        self._radius = param_widget("prefilter_radius", "Footprint radius")
        self._q_step = param_widget("prefilter_q_step", "Correlate every N-th q pixel")
        self._corr_range = create_widget(
            DEFAULTS["corr_range"],
            label="Correlation range",
            annotation=tuple[float, float],
            widget_type="FloatRangeSlider",
            options={"min": -1.0, "max": 1.0, "step": 0.01},
        )
        self._edge_auto = create_widget(
            True, label="Auto detector edge", annotation=bool, widget_type="CheckBox"
        )
        self._edge_auto.tooltip = "Ignore 1/16 of the detector size at its border"
        self._edge = create_widget(
            0,
            label="Detector edge (px)",
            annotation=int,
            widget_type="SpinBox",
            options={"min": 0, "max": 4096},
        )
        self._edge.tooltip = "Border of the detector ignored when correlating"
        self._scope = create_widget(
            "all time steps",
            label="Run on",
            annotation=str,
            widget_type="ComboBox",
            options={"choices": ["all time steps", "current time step"]},
        )
        self._run = button("Run prefilter", "Run")
        self._cancel = button("Cancel", "Cancel")
        self._cancel.enabled = False
        self._status = create_widget("", label="", annotation=str, widget_type="Label")
        self.extend(
            [
                self._layer_combo,
                self._sigma,
                self._radius,
                self._q_step,
                self._corr_range,
                self._edge_auto,
                self._edge,
                self._scope,
                self._run,
                self._cancel,
                self._status,
            ]
        )
        self.runner = JobRunner(on_busy=self._on_busy)
        #: Bytes above which the output goes to disk (None: a quarter of the RAM).
        self.memory_limit: int | None = None
        self.last_layer = None
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.runner.cancel)
        self._layer_combo.changed.connect(self._on_layer)
        self._edge_auto.changed.connect(self._on_edge_auto)
        connect_while_alive(
            self.native,
            [
                (viewer.layers.events.inserted, self.reset_choices),
                (viewer.layers.events.removed, self.reset_choices),
            ],
        )
        self._save = remember(
            "prefilter",
            {
                "sigma": self._sigma,
                "radius": self._radius,
                "q_step": self._q_step,
                "corr_range": self._corr_range,
                "edge_auto": self._edge_auto,
                "edge": self._edge,
                "scope": self._scope,
            },
        )
        self._on_layer()
        self._on_edge_auto()

    # ------------------------------------------------------------------ ui
    def _on_edge_auto(self, *_):
        self._edge.enabled = not self._edge_auto.value

    def _on_layer(self, *_):
        layer = self._layer_combo.value
        cube = None if layer is None else stem_meta(layer)["cube"]
        self._scope.enabled = cube is not None and cube.ndim == 5
        self._run.enabled = layer is not None and not self.runner.running

    def _on_busy(self, busy: bool):
        self._run.enabled = not busy and self._layer_combo.value is not None
        self._cancel.enabled = busy
        self._status.value = "running…" if busy else self._status.value

    def params(self) -> dict:
        """Keyword arguments of :func:`~napari_stemcluster.core.prefilter.correlative_prefilter`."""
        return {
            "sigma": float(self._sigma.value),
            "radius": int(self._radius.value),
            "q_step": int(self._q_step.value),
            "corr_range": tuple(float(v) for v in self._corr_range.value),
            "edge": None if self._edge_auto.value else int(self._edge.value),
        }

    # ----------------------------------------------------------------- run
    def run(self, *_):
        """Prefilter the selected layer's cube in the background."""
        from napari.utils.notifications import show_error

        layer = self._layer_combo.value
        if layer is None:
            show_error("Prefilter: choose a layer of 4D-STEM data first")
            return None
        meta = stem_meta(layer)
        cube = meta["cube"]
        params = self.params()
        lo, hi = params["corr_range"]
        if not lo < hi:
            show_error("Prefilter: the correlation range needs Rmin < Rmax")
            return None
        self._save()
        t = None
        if cube.ndim == 5 and self._scope.value == "current time step":
            t = layer_step(self._viewer, layer)
        steps = [None] if cube.ndim == 4 else ([t] if t is not None else range(cube.shape[0]))
        out_shape = cube.shape if t is None else cube.shape[1:]
        out, tmpdir = self._allocate(out_shape)
        detector = meta.get("detector")

        def work(progress):
            from ..core.prefilter import correlative_prefilter

            n = len(steps)
            for i, step in enumerate(steps):
                src = cube if step is None else cube[step]
                dst = out if (step is None or t is not None) else out[step]
                correlative_prefilter(
                    src, **params, out=dst, progress=step_progress(progress, i, n)
                )
            return out, _virtual(out, detector)

        def done(value):
            self._add_layer(layer, meta, value, params, t, tmpdir)

        self._status.value = ""
        worker = self.runner.start(work, description="Prefilter", on_returned=done)
        if tmpdir is not None:
            # Nothing refers to the file if the job failed or was cancelled.
            worker.finished.connect(lambda: _cleanup_if_unused(tmpdir, self))
        return worker

    def _allocate(self, shape):
        nbytes = int(np.prod(shape, dtype=np.int64)) * 4
        limit = self.memory_limit
        if limit is None:
            limit = int(IN_MEMORY_FRACTION * available_memory())
        if nbytes < limit:
            return np.empty(shape, np.float32), None
        tmpdir = tempfile.mkdtemp(prefix="stemcluster-prefilter-")
        path = Path(tmpdir) / "prefiltered.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=tuple(shape))
        return out, tmpdir

    def _add_layer(self, src, meta, value, params, t, tmpdir):
        out, image = value
        if tmpdir is not None:
            import dask.array as da

            out.flush()
            mm = np.load(Path(tmpdir) / "prefiltered.npy", mmap_mode="r")
            from ..core._validate import block_rows

            rows = block_rows(mm.shape[-4:], mm.dtype.itemsize)
            chunks = (1,) * (mm.ndim - 4) + (rows, -1, -1, -1)
            cube = da.from_array(mm, chunks=chunks, name=f"prefiltered-{Path(tmpdir).name}")
            # The file goes with the cube (when its layer is deleted) or at exit.
            weakref.finalize(cube, shutil.rmtree, tmpdir, True)
            self._tmp_in_use = tmpdir
        else:
            cube = out
        raw = meta.get("raw_cube", meta["cube"])
        if t is not None:
            raw = raw[t]
        new_meta = {
            "kind": "prefiltered",
            "cube": cube,
            "raw_cube": raw,
            "calibration": meta.get("calibration"),
            "source": meta.get("source"),
            "detector": meta.get("detector"),
            "prefilter": {**params, "corr_range": list(params["corr_range"])},
            "time_step": t,
            "on_disk": tmpdir is not None,
            # temporary .npy file behind a lazy cube (deleted with the cube)
            "store": None if tmpdir is None else str(Path(tmpdir) / "prefiltered.npy"),
        }
        name = f"{src.name} prefiltered" + ("" if t is None else f" t={t}")
        self.last_layer = self._viewer.add_image(
            image,
            name=name,
            colormap="gray",
            metadata={"stemcluster": new_meta},
            **spatial_kwargs(src, image.ndim),
        )
        where = "on disk (temporary file)" if tmpdir is not None else "in memory"
        self._status.value = f"done: '{name}' ({where})"


def _virtual(cube, detector) -> np.ndarray:
    """Virtual image of the prefiltered cube with the source layer's detector."""
    from ..core.virtual import annular_mask, virtual_adf, virtual_image

    if isinstance(detector, dict) and detector.get("outer") is not None:
        mask = annular_mask(
            tuple(cube.shape[-2:]),
            float(detector.get("inner") or 0.0),
            float(detector["outer"]),
            detector.get("center"),
        )
        if mask.any():
            return np.asarray(virtual_image(cube, mask), np.float32)
    return np.asarray(virtual_adf(cube), np.float32)


def _cleanup_if_unused(tmpdir: str, widget: PrefilterWidget) -> None:
    if getattr(widget, "_tmp_in_use", None) != tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)
