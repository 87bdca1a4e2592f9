"""Load (or compile, the first time on a machine) the numba kernels before they are needed.

The modules the dock widgets need (pandas, matplotlib, napari's layer
visuals) are imported in the same background thread first: their first
import takes seconds, which would otherwise freeze the window when docking.

The kernels are compiled once and cached on disk, but even loading them from
the cache takes a moment per kernel, and compiling takes seconds. The
reader (when a file is opened) and the workflow dock start it in a background
thread, the dock with a "preparing (one time)" note, so that the first drag
of the threshold slider or the first job does not stall.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

_lock = threading.Lock()
_done = threading.Event()
_thread: threading.Thread | None = None


def warm_up_kernels() -> None:
    """Run every numba kernel once on tiny inputs (uint16 and float32 cubes).

    Examples
    --------
    >>> warm_up_kernels()  # doctest: +SKIP
    """
    from ..core.averages import cluster_sums
    from ..core.editing import update_sums
    from ..core.prefilter import correlative_prefilter
    from ..core.regions import grow_regions
    from ..core.similarity import mean_similarity, neighbor_similarity
    from ..core.threshold import auto_threshold
    from ..core.virtual import BinnedCube, virtual_detector

    for dtype in (np.uint16, np.float32):
        cube = np.ones((3, 4, 6, 6), dtype)
        sim = neighbor_similarity(cube)
        ms = mean_similarity(sim)
        labels, _ = grow_regions(sim, 0.5, mean_similarity=ms)
        # the Clustering widget's automatic threshold, computed on the GUI
        # thread when a new similarity map arrives
        auto_threshold(sim)
        cluster_sums(cube, labels, int(labels.max()))
        virtual_detector(cube, np.ones((6, 6), bool))
        update_sums(np.zeros((2, 6, 6)), np.zeros(2, np.int64), cube[0, :2], [1, 1], [2, 2])
        binned = BinnedCube(cube.shape[:2], cube.shape[2:], factor=2)
        binned.add_rows(0, cube, np.ones((6, 6), bool))
        binned.images(np.ones((6, 6), bool))
    correlative_prefilter(np.ones((3, 4, 6, 6), np.uint16), sigma=1.0, radius=1)
    warm_up_bragg()


def warm_up_bragg() -> None:
    """Run the diffraction viewer's Bragg-disk search once on a small square lattice.

    Its kernels are compiled (the first time on a machine: many seconds)
    or loaded from the cache; the first cluster average shown then gets
    its disks at once.

    Examples
    --------
    >>> warm_up_bragg()  # doctest: +SKIP
    """
    from ._bragg import bragg_display

    q = np.arange(48, dtype=np.float32) - 23.5
    pattern = np.zeros((48, 48), np.float32)
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            r2 = (q[:, None] - 12 * i) ** 2 + (q[None, :] - 12 * j) ** 2
            pattern += (1000 if i == j == 0 else 200) * (r2 < 4)
    bragg_display(pattern + 1, None, 2.0)


def warm_up_napari() -> None:
    """Load napari's own numba kernels (shape triangulation, label colours).

    A first Shapes layer (the q-mask circles, the virtual detector) and the
    first texture of a Labels layer each load them on the GUI thread
    otherwise, about a second each on a busy machine. Pure functions: no
    Qt or layer object is made.

    Examples
    --------
    >>> warm_up_napari()  # doctest: +SKIP
    """
    from napari.layers.shapes import _accelerated_triangulate_dispatch as tri
    from napari.utils.colormaps import label_colormap

    tri.warmup_numba_cache()
    cmap = label_colormap(49)
    for dtype in (np.int32, np.int64, np.uint16, np.uint8):
        cmap._data_to_texture(np.arange(12, dtype=dtype).reshape(3, 4))


#: Modules the dock widgets need, imported ahead (pure Python, no Qt objects made).
_MODULES = (
    "pandas",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "matplotlib.backends.backend_qtagg",
    "napari.layers",
    "napari._vispy.layers.shapes",
    "napari._vispy.layers.points",
    "napari._vispy.layers.labels",
    "dask.array",  # the reader wraps the file in a dask array
    "hdf5plugin",  # the reader's format check of an HDF5 file
    "scipy.ndimage",  # napari's layer thumbnails
)


def warm_up_imports() -> None:
    """Import the modules that docking and drawing results need.

    Their first import takes seconds (pandas for the features table,
    matplotlib for the plots, napari's layer visuals); done in the warm-up
    thread it does not happen while the window waits.

    Examples
    --------
    >>> warm_up_imports()  # doctest: +SKIP
    """
    import importlib

    for name in _MODULES:
        # an optional module missing: imported (and reported) when used
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        warm_up_units()


def warm_up_units() -> None:
    """Give pint's application registry (napari's units) its parsed definitions.

    The registry parses its definition files on first use, when the first
    layer is made: about a second in the reader, on the GUI thread. Here a
    complete registry is built aside and installed only if the lazy one is
    still unused, so that the GUI thread never sees one half made.

    Examples
    --------
    >>> warm_up_units()  # doctest: +SKIP
    """
    import pint
    from pint.registry import LazyRegistry

    app = pint.get_application_registry()
    if type(app.get()) is not LazyRegistry:
        return  # already in use
    registry = pint.UnitRegistry(on_redefinition="raise")  # the lazy one's settings
    registry.Quantity(1.0, "pixel")
    if type(app.get()) is LazyRegistry:
        app.set(registry)


def start_warm_up() -> threading.Event:
    """Warm the kernels up in a background thread (once per process).

    Returns the event set when it has finished.

    Examples
    --------
    >>> start_warm_up().wait(60)  # doctest: +SKIP
    True
    """
    global _thread
    with _lock:
        if _thread is None:

            def run():
                try:
                    warm_up_imports()
                    with contextlib.suppress(Exception):  # napari's own: optional
                        warm_up_napari()
                    warm_up_kernels()
                finally:
                    _done.set()

            _thread = threading.Thread(target=run, name="stemcluster-warm-up", daemon=True)
            _thread.start()
    return _done


def is_warm() -> bool:
    """True once :func:`start_warm_up` has finished."""
    return _done.is_set()


# ------------------------------------------------------------------ garbage collector
class GcHold:
    """A hold on Python's cyclic garbage collector while a canvas is made in steps.

    A full collection scans every object of the process: with napari loaded,
    0.1-0.3 s on the GUI thread, landing at random in whichever step
    allocated last (it doubled the longest pauses of docking). While any hold
    is on, automatic collection is off (if it was on); the last :meth:`release`
    turns it back on and, with ``collect``, collects the young generations
    (the short-lived garbage of the steps, a few milliseconds), so that the
    caller can give it an event-loop turn of its own; the full collection
    comes when Python's own thresholds call for it. A hold is released after
    ``limit`` seconds in any case, so a widget closed while being made never
    leaves the collector off.

    Examples
    --------
    >>> import gc
    >>> hold = GcHold(limit=None)
    >>> gc.isenabled()
    False
    >>> hold.release(collect=False)
    >>> gc.isenabled()
    True
    """

    _count = 0
    _was_enabled = True
    #: Seconds after which a hold made without ``limit`` is released anyway.
    default_limit = 10.0

    def __init__(self, limit=...):
        import gc

        if limit is ...:
            limit = type(self).default_limit

        cls = GcHold
        if cls._count == 0:
            cls._was_enabled = gc.isenabled()
            gc.disable()
        cls._count += 1
        self.held = True
        if limit is not None:
            import weakref

            from qtpy.QtCore import QTimer

            me = weakref.ref(self)
            # the timer keeps no reference to the hold: a hold dropped
            # unreleased is released by the timer
            self._timer = QTimer()
            self._timer.setSingleShot(True)
            self._timer.timeout.connect(lambda: (h := me()) is not None and h.release(False))
            self._timer.start(int(limit * 1000))
            self._release_later = weakref.finalize(self, GcHold._drop, self._timer)

    @staticmethod
    def _drop(timer) -> None:
        # the hold was garbage: its timer would never find it, release its count
        timer.stop()
        GcHold._decrement(collect=False)

    @staticmethod
    def _decrement(collect: bool) -> None:
        import gc

        cls = GcHold
        if cls._count == 0:
            return
        cls._count -= 1
        if cls._count == 0 and cls._was_enabled:
            gc.enable()
            if collect:
                gc.collect(1)

    def release(self, collect: bool = True) -> None:
        """Release the hold (once); the last re-enables collection, and collects the young."""
        if not self.held:
            return
        self.held = False
        finalizer = getattr(self, "_release_later", None)
        if finalizer is not None:
            finalizer.detach()
            self._timer.stop()
        GcHold._decrement(collect)
