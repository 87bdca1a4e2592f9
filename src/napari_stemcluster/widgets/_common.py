"""Helpers shared by the dock widgets: layer lookup, background jobs, settings.

Layers made by napari-stemcluster carry a dict under
``layer.metadata["stemcluster"]`` whose ``kind`` says what they are:

``virtual_image`` / ``prefiltered``
    A real-space image of a 4D/5D cube; ``cube`` is the (lazy) cube.
``mean_similarity``
    Mean neighbour similarity; made by the similarity widget it also holds
    ``similarity`` (``(T,) Rx, Ry, 8``), the compared ``cube``, the
    ``raw_cube`` and the parameters.
``real_mask``
    The real-space mask Labels layer (non-zero: allowed to join clusters).
``segmentation``
    Cluster labels; ``state`` is the :class:`~._state.ClusterState` that
    keeps the cluster averages in step with edits, ``result`` the
    :class:`~napari_stemcluster.core.result.SegmentationResult` it started as.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from ._gcfreeze import freeze, freeze_later

META = "stemcluster"
#: Environment variable naming the JSON file where widget parameters persist.
SETTINGS_ENV = "NAPARI_STEMCLUSTER_SETTINGS"

DATA_KINDS = ("virtual_image", "prefiltered")


# ---------------------------------------------------------------------------
# controls


def button(text: str, label: str = ""):
    """A push button showing ``text``."""
    from magicgui.widgets import create_widget

    widget = create_widget(label=label, annotation=None, widget_type="PushButton")
    widget.text = text
    return widget


def param_widget(name: str, label: str, **options):
    """The control of one segmentation parameter, as the parameter model declares it.

    Default, range or choices and tooltip come from
    :data:`napari_stemcluster.core.params.BY_NAME`, so a widget accepts
    exactly what :func:`~napari_stemcluster.core.segment` accepts;
    ``options`` adds or overrides magicgui options (``step``, a narrower
    ``max`` for a usable spin box, ...).
    """
    from magicgui.widgets import create_widget

    from ..core.params import BY_NAME, DEFAULTS

    p = BY_NAME[name]
    if p.kind == "int":
        kind, annotation, opts = "SpinBox", int, {"min": int(p.low), "max": int(p.high)}
    elif p.kind == "float":
        kind, annotation, opts = "FloatSpinBox", float, {"min": p.low, "max": p.high}
    elif p.kind == "choice":
        kind, annotation, opts = "ComboBox", str, {"choices": list(p.choices)}
    else:
        raise ValueError(f"{name} ({p.kind}) has no single control")
    widget = create_widget(
        DEFAULTS[name],
        label=label,
        annotation=annotation,
        widget_type=kind,
        options={**opts, **options},
    )
    widget.tooltip = p.help[:1].upper() + p.help[1:]
    return widget


# ---------------------------------------------------------------------------
# layers


def unwrap(viewer):
    """The viewer itself, not napari's public-only proxy of it.

    Plugin widgets receive a proxy that wraps every object it returns; the
    widgets compare layers by identity and keep weak references to them,
    which needs the real objects. Only public API is used on it.
    """
    return getattr(viewer, "__wrapped__", viewer)


def stem_meta(layer) -> dict | None:
    """The ``metadata["stemcluster"]`` dict of a layer, or None."""
    md = getattr(layer, "metadata", None)
    value = md.get(META) if isinstance(md, dict) else None
    return value if isinstance(value, dict) else None


def _kind(layer) -> str | None:
    meta = stem_meta(layer)
    return None if meta is None else meta.get("kind")


def is_data_layer(layer) -> bool:
    """An Image layer showing a 4D/5D cube (raw or prefiltered)."""
    from napari.layers import Image

    meta = stem_meta(layer)
    return (
        isinstance(layer, Image)
        and meta is not None
        and meta.get("cube") is not None
        and meta.get("kind", "virtual_image") in DATA_KINDS
    )


def is_similarity_layer(layer) -> bool:
    """A mean-similarity Image layer that carries the neighbour similarity."""
    from napari.layers import Image

    meta = stem_meta(layer)
    return (
        isinstance(layer, Image)
        and meta is not None
        and meta.get("kind") == "mean_similarity"
        and meta.get("similarity") is not None
    )


def is_mask_layer(layer) -> bool:
    """A real-space mask Labels layer."""
    from napari.layers import Labels

    return isinstance(layer, Labels) and _kind(layer) == "real_mask"


def is_cluster_layer(layer) -> bool:
    """A cluster Labels layer whose averages can be computed (it has a cube)."""
    from napari.layers import Labels

    meta = stem_meta(layer)
    if not isinstance(layer, Labels) or meta is None or meta.get("kind") != "segmentation":
        return False
    return meta.get("state") is not None or meta.get("cube") is not None


def layer_choices(viewer, predicate: Callable[[Any], bool], none: str | None = None):
    """A ``choices`` callable for a ComboBox listing the viewer's matching layers."""

    def choices(_widget=None):
        items = [(layer.name, layer) for layer in viewer.layers if predicate(layer)]
        return ([(none, None)] if none is not None else []) + items

    return choices


def connect_while_alive(qwidget, pairs) -> None:
    """Connect ``(emitter, callback)`` pairs; disconnect them when ``qwidget`` is destroyed.

    Widgets listen to the viewer's events; once napari deletes a closed dock
    widget, its callbacks must not run any more. The clean-up holds the
    callbacks weakly, so it keeps nothing alive.
    """
    held = []
    for emitter, callback in pairs:
        emitter.connect(callback)
        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else None
        if ref is None:
            try:
                ref = weakref.ref(callback)
            except TypeError:  # not weak-referenceable: a plain function is harmless
                ref = lambda cb=callback: cb  # noqa: E731
        held.append((weakref.ref(emitter) if _weakable(emitter) else emitter, ref))

    def disconnect(*_):
        for emitter, ref in held:
            emitter = emitter() if isinstance(emitter, weakref.ref) else emitter
            callback = ref()
            if emitter is None or callback is None:
                continue
            with contextlib.suppress(Exception):  # already gone with its owner
                emitter.disconnect(callback)

    qwidget.destroyed.connect(disconnect)


def _weakable(obj) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


def spatial_kwargs(src, ndim: int) -> dict:
    """``scale``, ``translate``, ``units`` and ``axis_labels`` of the last ``ndim`` axes of ``src``.

    A source with fewer axes is padded in front with unit scale.
    """
    n = src.ndim
    pad = max(0, ndim - n)

    def take(values, fill):
        values = list(values)[-ndim:] if n >= ndim else list(values)
        return [fill] * pad + values

    out = {
        "scale": take(src.scale, 1.0),
        "translate": take(src.translate, 0.0),
    }
    units = getattr(src, "units", None)
    if units is not None:
        out["units"] = take([str(u) for u in units], "pixel")
    labels = getattr(src, "axis_labels", None)
    if labels is not None:
        out["axis_labels"] = take(labels, "t")
    return out


def layer_step(viewer, layer) -> int:
    """Index along the first axis of a 3-D (time, rx, ry) layer at the viewer's slice; 0 for 2-D."""
    if layer is None or layer.ndim < 3:
        return 0
    t = float(layer.world_to_data(viewer.dims.point)[0])
    return int(np.clip(np.round(t), 0, layer.data.shape[0] - 1))


def scan_position(layer, world_position) -> tuple[int, ...] | None:
    """Integer data index of a world position on a real-space layer, or None outside."""
    coords = np.round(np.asarray(layer.world_to_data(world_position), float))
    shape = layer.data.shape
    if coords.shape[0] != len(shape) or np.any(coords < 0) or np.any(coords >= shape):
        return None
    return tuple(int(c) for c in coords)


def cube_step(cube, t: int):
    """The 4D cube of time step ``t`` (the cube itself when it is 4D)."""
    return cube[int(t)] if cube.ndim == 5 else cube


# ---------------------------------------------------------------------------
# background jobs


def step_progress(progress: Callable[[int, int], None], i: int, n: int):
    """The progress callback of step ``i`` of ``n`` equal steps of one job."""

    def part(done, total):
        progress(i * max(total, 1) + done, n * max(total, 1))

    return part


class Cancelled(Exception):
    """Raised from a progress callback to stop a job."""


@dataclass
class _Outcome:
    value: Any = None
    error: BaseException | None = None
    cancelled: bool = False


_visuals_prepared = threading.Event()


def prepare_visuals() -> None:
    """Compute once, in the calling (worker) thread, what new result layers need.

    napari outlines every Labels layer with a vispy line visual whose first
    instance computes its dash patterns (a Python loop, about 0.1 s); vispy
    caches them, so a job pays that beside its computing instead of the GUI
    thread when the job's first Labels layer is added. Pure numpy, safe in
    any thread; never raises.

    Examples
    --------
    >>> prepare_visuals()
    """
    if _visuals_prepared.is_set():
        return
    _visuals_prepared.set()
    with contextlib.suppress(Exception):  # an optimisation only (vispy internals)
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()


class _NoEvents:
    """Stands in for ``QApplication`` in napari's progress bar module: no nested event loop."""

    @staticmethod
    def processEvents(*args, **kwargs) -> None:
        return None


@contextlib.contextmanager
def progress_without_events():
    """Progress bar updates inside do not process events.

    napari's progress bar calls ``QApplication.processEvents()`` at every
    update and description: a nested pass of the event loop, in which
    whatever was waiting (a job's next layer, a canvas's build step, the
    paint after it) ran inside the update, and several of them made one
    long pause. The bar is repainted in the next turn anyway.

    Examples
    --------
    >>> with progress_without_events():  # doctest: +SKIP
    ...     bar.update(10)
    """
    try:
        from napari._qt.widgets import qt_progress_bar as module
    except Exception:  # another napari: its bar as it is
        yield
        return
    before = getattr(module, "QApplication", None)
    if before is None:
        yield
        return
    module.QApplication = _NoEvents
    try:
        yield
    finally:
        module.QApplication = before


#: Delay (ms) between the steps of :meth:`JobRunner.later`, long enough for a paint.
LATER_STEP_MS = 15


class PaintHold:
    """Keeps the main canvas from painting until a later event-loop turn.

    Adding a layer makes its visual, and Qt sends the paint that draws it
    (compiling its shaders, uploading its data) in the same pass of the
    event loop: the window waited for the sum of both. Made before a step
    of applying a result, :meth:`release_later` lets the canvas paint
    ``LATER_STEP_MS`` after the step, in a turn of its own.

    Examples
    --------
    >>> hold = PaintHold(None)  # no viewer: nothing held
    >>> hold.release_later()
    False
    """

    def __init__(self, viewer):
        self.native = None
        try:
            native = viewer.window._qt_viewer.canvas._scene_canvas.native
        except AttributeError:  # no viewer, no window, or another napari
            return
        try:
            if native.updatesEnabled():
                native.setUpdatesEnabled(False)
                self.native = native
        except RuntimeError:  # the canvas was deleted
            pass

    def release_later(self, then: Callable[[], None] | None = None) -> bool:
        """Let the canvas paint in a later turn, and call ``then()`` after it.

        Returns False (and calls nothing) when nothing was held. ``then``'s
        timer starts when the paint is asked for, so it fires after the
        paint, together with any other timer that came due meanwhile.
        """
        native, self.native = self.native, None
        if native is None:
            return False
        from qtpy.QtCore import QTimer

        def release():
            try:
                native.setUpdatesEnabled(True)
                native.update()
            except RuntimeError:  # the canvas was deleted meanwhile
                pass
            if then is not None:
                QTimer.singleShot(LATER_STEP_MS, then)

        QTimer.singleShot(LATER_STEP_MS, release)
        return True


class JobRunner:
    """Runs one background job at a time for a widget.

    The work runs in a :func:`napari.qt.threading.thread_worker` generator
    that yields progress; a :class:`napari.utils.progress` bar follows it.
    The work function receives ``progress(done, total)``, which raises
    :class:`Cancelled` after :meth:`cancel`. Errors are caught in the worker
    and shown with :func:`napari.utils.notifications.show_error`; the result
    is passed to ``on_returned`` in the main thread (workers never touch
    layers). ``on_returned`` may hand further steps to :meth:`later` (a new
    layer each, so that no event-loop turn draws two); the job counts as
    running until they are done.
    """

    def __init__(self, on_busy: Callable[[bool], None] | None = None, viewer=None):
        self._cancel = threading.Event()
        self._on_busy = on_busy
        #: The viewer whose canvas paints each result step in a turn of its
        #: own (see :class:`PaintHold`); None: paints come as Qt sends them.
        self.viewer = viewer
        self.worker = None
        self.running = False
        self.last_error: BaseException | None = None
        self.last_cancelled = False
        self._pbar = None
        self._pbar_n = 0
        self._silent = False
        self._later: list[tuple[Callable[[], None], str]] = []
        self._applying = False

    def start(
        self,
        fn: Callable[[Callable[[int, int], None]], Any],
        *,
        description: str,
        on_returned: Callable[[Any], None],
    ):
        """Run ``fn(progress)`` in a thread; ``on_returned(value)`` when it succeeds."""
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError("a job is already running; cancel it first")
        self._cancel.clear()
        self._silent = False
        self.last_error = None
        self.last_cancelled = False
        cancel = self._cancel
        holder: dict[str, Any] = {}

        def report(done, total):
            if cancel.is_set():
                raise Cancelled
            worker = holder.get("worker")
            if worker is not None:
                worker.yielded.emit((int(done), int(total)))

        def generate():
            yield (0, 1)
            prepare_visuals()
            try:
                value = fn(report)
            except Cancelled:
                return _Outcome(cancelled=True)
            except Exception as exc:  # shown to the user, not raised in the thread
                return _Outcome(error=exc)
            return _Outcome(value=value)

        worker = create_worker(generate, _start_thread=False, _ignore_errors=True)
        holder["worker"] = worker
        self.worker = worker
        self._open_bar(description)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda out: self._on_outcome(out, description, on_returned))
        worker.finished.connect(self._on_finished)
        self._set_busy(True)
        # the worker's full garbage collections walk only what is made from now on
        freeze(self.viewer)
        worker.start()
        return worker

    def cancel(self, *_, silent: bool = False) -> None:
        """Make the job's next progress call raise :class:`Cancelled`.

        ``silent`` skips the "cancelled" notification (for clean-ups the user
        did not ask for).
        """
        self._silent = silent
        self._cancel.set()

    def wait(self, timeout: float = 30.0) -> None:
        """Block (processing Qt events) until the job ends; for scripts and tests."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.running:
            if time.monotonic() > end:
                raise TimeoutError("the background job did not finish in time")
            QApplication.processEvents()
            time.sleep(0.005)

    # -- main-thread slots
    def _open_bar(self, description):
        from napari.utils import progress

        with progress_without_events():
            self._pbar = progress(total=1000, desc=description)
        self._pbar_n = 0

    def _on_progress(self, value):
        done, total = value
        if self._pbar is None or total <= 0:
            return
        n = int(1000 * min(max(done / total, 0.0), 1.0))
        if n > self._pbar_n:
            with progress_without_events():
                self._pbar.update(n - self._pbar_n)
            self._pbar_n = n

    def _on_outcome(self, out, description, on_returned):
        from napari.utils.notifications import show_error, show_info

        if not isinstance(out, _Outcome):
            return
        if out.cancelled:
            self.last_cancelled = True
            if not self._silent:
                show_info(f"{description}: cancelled")
        elif out.error is not None:
            self.last_error = out.error
            show_error(f"{description} failed: {out.error}")
        else:
            hold = PaintHold(self.viewer)
            self._applying = True  # steps handed to later() wait for the paint
            try:
                on_returned(out.value)
            except Exception as exc:  # applying the result must not crash the GUI
                self.last_error = exc
                show_error(f"{description} failed: {exc}")
            finally:
                self._applying = False
                if not hold.release_later(then=self._after_paint):
                    self._after_paint()

    def later(self, step: Callable[[], None], description: str = "") -> None:
        """Run ``step()`` in a later event-loop turn, after the steps queued before it.

        For applying a result in pieces (one new layer per turn): the canvas
        paints in between and the window never waits for the sum of them.
        The job stays :attr:`running` until the last step has run; an error
        in a step is shown like a job's, and drops the steps after it.
        """
        self._later.append((step, description))
        if len(self._later) == 1 and not self._applying:
            self._next_later()

    def _next_later(self):
        from qtpy.QtCore import QTimer

        # a short delay rather than 0: the canvas paints what the last step added first
        QTimer.singleShot(LATER_STEP_MS, self._run_later)

    def _run_later(self):
        from napari.utils.notifications import show_error

        if not self._later:
            return
        step, description = self._later[0]
        hold = PaintHold(self.viewer)
        try:
            step()
        except Exception as exc:  # applying the result must not crash the GUI
            self.last_error = exc
            show_error(f"{description or 'applying the result'} failed: {exc}")
            self._later.clear()
        else:
            self._later.pop(0)
        # the next step after the paint of this one (a turn apart)
        if not hold.release_later(then=self._after_paint):
            self._after_paint()

    def _after_paint(self):
        # the next step, or the end of the job once its worker has finished
        if self._later:
            self._next_later()
        elif self.worker is None:
            self._set_busy(False)

    def _on_finished(self):
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        if not self._later:
            self._set_busy(False)

    def _set_busy(self, busy: bool):
        self.running = busy
        if not busy:  # the result's layers and caches, frozen in a turn of their own
            freeze_later(self.viewer, LATER_STEP_MS)
        if self._on_busy is not None:
            try:
                self._on_busy(busy)
            except RuntimeError as exc:
                # The widget closed while its job ran: its controls are gone, and
                # there is nothing left to enable or disable.
                if "has been deleted" not in str(exc):
                    raise


# ---------------------------------------------------------------------------
# persistent parameters


def settings_file() -> Path:
    """JSON file holding the widgets' last parameters."""
    env = os.environ.get(SETTINGS_ENV)
    if env:
        return Path(env)
    from platformdirs import user_config_path

    return user_config_path("napari-stemcluster") / "widgets.json"


def load_settings(key: str) -> dict:
    """The saved parameters of one widget (empty when none or unreadable)."""
    try:
        data = json.loads(settings_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def save_settings(key: str, values: dict) -> None:
    """Save one widget's parameters (other widgets' entries are kept)."""
    path = settings_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = values
    try:
        from ..config import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
    except OSError:
        pass  # a read-only configuration directory must not break the widget


def remember(key: str, widgets: dict) -> Callable[[], None]:
    """Restore saved values into ``widgets`` (name -> value widget) and save on change.

    Returns the save function.
    """
    saved = load_settings(key)
    for name, w in widgets.items():
        if name in saved:
            value = saved[name]
            if isinstance(value, list):
                value = tuple(value)
            with contextlib.suppress(Exception):  # a stale entry: keep the default
                w.value = value

    def save(*_):
        values = {}
        for name, w in widgets.items():
            v = w.value
            if isinstance(v, tuple):
                v = list(v)
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, str | int | float | bool | list) or v is None:
                values[name] = v
        save_settings(key, values)

    for w in widgets.values():
        w.changed.connect(save)
    return save


# ---------------------------------------------------------------------------
# shared per-viewer state


class Session:
    """State shared by the widgets docked in one viewer (the diffraction-space mask)."""

    #: Emitted with the q-mask dict (``inner``, ``outer``, ``center``) or None.
    q_mask_changed = Signal(object)
    #: Emitted when a job starts that will add a clusters layer: ``(layer, ndim)``,
    #: a layer whose scale and translation it will have and its number of
    #: dimensions; ``(None, 0)`` when that job failed or was cancelled.
    clusters_expected = Signal(object, int)

    def __init__(self):
        self.q_mask: dict | None = None

    def set_q_mask(self, inner: float, outer: float, center=None) -> None:
        new = {
            "inner": float(inner),
            "outer": float(outer),
            "center": None if center is None else (float(center[0]), float(center[1])),
        }
        if new != self.q_mask:
            self.q_mask = new
            self.q_mask_changed.emit(new)

    def clear_q_mask(self) -> None:
        if self.q_mask is not None:
            self.q_mask = None
            self.q_mask_changed.emit(None)


_SESSIONS: dict[int, Session] = {}


@contextlib.contextmanager
def not_activated(viewer):
    """Layers added inside leave the active layer as it is (napari activates a new one).

    Each change of the active layer rebuilds the layer controls shown; a layer
    made ahead, hidden, has no reason to take the selection.

    Examples
    --------
    >>> with not_activated(viewer):  # doctest: +SKIP
    ...     viewer.add_points(visible=False)
    """
    layers = viewer.layers
    before = getattr(layers, "_activate_on_insert", None)
    if before is not None:
        layers._activate_on_insert = False
    try:
        yield
    finally:
        if before is not None:
            layers._activate_on_insert = before


def session(viewer) -> Session:
    """The :class:`Session` of a viewer (created on first use)."""
    key = id(viewer)
    if key not in _SESSIONS:
        _SESSIONS[key] = Session()
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return _SESSIONS[key]


# ---------------------------------------------------------------------------
# dialogs


def ask_replace(parent, text: str) -> str:
    """Ask whether to replace an edited layer: ``"replace"``, ``"new"`` or ``"cancel"``."""
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Replace edited clusters?")
    box.setText(text)
    replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
    new = box.addButton("Keep and add new layer", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    clicked = box.clickedButton()
    if clicked is replace:
        return "replace"
    if clicked is new:
        return "new"
    return "cancel"


def available_memory() -> int:
    """Physical memory of the machine in bytes."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or unsupported platform
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return 8 << 30
