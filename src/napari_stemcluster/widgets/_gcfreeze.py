"""Keep napari's long-lived objects out of Python's full garbage collections.

A napari process with the plugin's widgets holds millions of Python objects
(Qt wrappers, vispy visuals, napari's models and events, pint's units), and a
full (generation 2) collection walks every one of them: 0.2-0.35 s holding
Python's global lock. Started in a job's worker thread (where most objects
are allocated during a job), it stops the GUI thread as surely as one
started there. ``gc.freeze()`` moves every object alive into the permanent
generation, which collections skip; reference counting still frees frozen
objects as usual, but a frozen object that becomes *cyclic* garbage is only
collected once the permanent generation is unfrozen again.

The policy, so that nothing the plugin froze outlives its use:

- :func:`freeze` is called at idle points of the plugin's widgets in a
  viewer: a dock complete, a job about to start (its worker's collections
  then walk only what the job makes) and a job's result applied. It first
  collects the young generations (their garbage is not frozen).
- A layer that was frozen is unfrozen *before* it is removed
  (``layers.events.removing``): napari collects garbage right after a layer
  goes, which then reclaims it (its cycles: the layer, its vispy visual, its
  controls). The objects are frozen again a second later, after a full
  collection if none has happened meanwhile.
- Closing the viewer, or removing or closing a plugin widget that asked for
  freezing, unfreezes everything; only a later idle point of a live widget
  freezes again.
- When something else froze objects first (the host application, a test
  fixture), the plugin leaves the collector to it: it never unfreezes what it
  did not freeze.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from typing import ClassVar

#: Delay (ms) before refreezing after a frozen layer was unfrozen for removal.
REFREEZE_MS = 1000


class _State:
    #: The permanent generation holds what this module froze.
    ours = False
    #: Layers alive when the objects were last frozen (they are frozen too).
    layers: ClassVar[weakref.WeakSet] = weakref.WeakSet()
    #: Viewers whose removals and closing are followed.
    viewers: ClassVar[weakref.WeakSet] = weakref.WeakSet()
    #: Layer lists whose removals are followed (the viewers' and the
    #: diffraction viewers' own).
    lists: ClassVar[weakref.WeakSet] = weakref.WeakSet()
    #: Full collections counted when the objects were last unfrozen.
    full_at_thaw = 0
    #: Number of freezes, for tests and diagnostics.
    freezes = 0


def _full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


def is_frozen() -> bool:
    """True while objects frozen by the plugin are in the permanent generation.

    Examples
    --------
    >>> is_frozen()
    False
    """
    return _State.ours


def _qt_viewer(viewer):
    # None once the viewer is closed (napari deletes its window's _qt_window)
    try:
        window = viewer.window
        return window._qt_viewer if hasattr(window, "_qt_window") else None
    except (AttributeError, RuntimeError):
        return None


def freeze(viewer) -> bool:
    """Freeze every object alive now (after collecting the young generations).

    ``viewer`` is the napari viewer whose plugin widgets asked for it: its
    layer removals and its closing unfreeze them again. Returns False (and
    freezes nothing) without a viewer window, or when objects are frozen that
    the plugin did not freeze.

    Examples
    --------
    >>> freeze(None)
    False
    """
    qt_viewer = _qt_viewer(viewer) if viewer is not None else None
    if qt_viewer is None:
        return False
    if not _State.ours and gc.get_freeze_count() > 0:
        return False  # frozen by the host: its policy, not ours
    _follow(viewer, qt_viewer)
    from ._warmup import GcHold

    if GcHold._count == 0 and gc.isenabled():
        gc.collect(1)  # the young garbage is not frozen (a few milliseconds)
    gc.freeze()
    _State.ours = True
    _State.freezes += 1
    for layers in list(_State.lists):
        _State.layers.update(layers)
    return True


def thaw() -> bool:
    """Unfreeze what the plugin froze (a no-op otherwise); True if it did.

    Examples
    --------
    >>> thaw()
    False
    """
    if not _State.ours:
        return False
    gc.unfreeze()
    _State.ours = False
    _State.layers = weakref.WeakSet()
    _State.full_at_thaw = _full_collections()
    return True


def freeze_later(viewer, ms: int = 0) -> None:
    """:func:`freeze` in a later event-loop turn, if the viewer is still open.

    Examples
    --------
    >>> freeze_later(None)
    """
    if viewer is None:
        return
    from qtpy.QtCore import QTimer

    ref = weakref.ref(viewer)

    def run():
        v = ref()
        if v is not None:
            freeze(v)

    QTimer.singleShot(ms, run)


def watch(widget, viewer) -> None:
    """Unfreeze everything when ``widget`` (a plugin dock) is closed or removed.

    Examples
    --------
    >>> watch(None, None)
    """
    if widget is None:
        return
    native = getattr(widget, "native", widget)
    with contextlib.suppress(AttributeError, RuntimeError, TypeError):
        native.installEventFilter(_filter())
        native.destroyed.connect(_on_gone)


def _on_gone(*_):
    thaw()


def _refreeze(viewer_ref):
    viewer = viewer_ref()
    if viewer is None or _State.ours or _qt_viewer(viewer) is None:
        return
    if _full_collections() == _State.full_at_thaw:
        # nothing collected the removed layer yet (napari's canvas does after
        # a removal): collect before it is frozen again
        gc.collect()
    freeze(viewer)


def _on_removing(event) -> None:
    try:
        layer = event.source[event.index]
    except (AttributeError, IndexError, TypeError):
        return
    if layer in _State.layers and thaw():
        from qtpy.QtCore import QTimer

        viewers = [v for v in _State.viewers if _qt_viewer(v) is not None]
        if viewers:
            ref = weakref.ref(viewers[0])
            QTimer.singleShot(REFREEZE_MS, lambda: _refreeze(ref))


def follow_layers(layers) -> None:
    """Unfreeze before a frozen layer of ``layers`` (a napari LayerList) is removed.

    The main viewers' lists are followed by :func:`freeze`; a widget's own
    viewer model (the diffraction viewer's) adds its list here.

    Examples
    --------
    >>> from napari.components import LayerList
    >>> follow_layers(LayerList())
    """
    if layers in _State.lists:
        return
    _State.lists.add(layers)
    layers.events.removing.connect(_on_removing)


_FILTER = None


def _filter():
    """The event filter that unfreezes when a watched widget closes or loses its parent."""
    global _FILTER
    if _FILTER is None:
        from qtpy.QtCore import QEvent, QObject

        class _CloseFilter(QObject):
            def eventFilter(self, obj, event):
                kind = event.type()
                if kind == QEvent.Type.Close or (
                    kind == QEvent.Type.ParentChange and obj.parent() is None
                ):
                    thaw()
                return False

        _FILTER = _CloseFilter()
    return _FILTER


def _follow(viewer, qt_viewer) -> None:
    if viewer in _State.viewers:
        return
    _State.viewers.add(viewer)
    follow_layers(viewer.layers)
    # napari closes the QtViewer first, then the window
    qt_viewer.installEventFilter(_filter())
    with contextlib.suppress(AttributeError, RuntimeError):
        viewer.window._qt_window.installEventFilter(_filter())
