"""A virtual image computed in the background when a large file is opened.

napari computes the slice on screen of a lazy (dask) image in its own
thread, which freezes the window for as long as the whole file takes to
read. :class:`BackgroundImage` is an array-like that napari can show at once
(zeros until ready): the time step napari asks for is computed first, in a
background thread, with a progress bar, and the layers showing it are
refreshed when it is done.

When the file can be read directly (not through dask), the pass reads whole
scan rows itself and, from the same read, fills a detector-binned copy of
the cube (:class:`~napari_stemcluster.core.virtual.BinnedCube`, within a
memory budget): the virtual detector of the diffraction viewer then shows an
image of any detector at once while it is dragged, before the exact image
is read from the file.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from ..core.virtual import BINNED_BUDGET, BinnedCube, binned_layout

#: Cubes larger than this open with their virtual image computed in the background.
BACKGROUND_BYTES = 256 * 2**20
#: Memory for the binned copies of all open cubes (float32).
BINNED_BYTES = BINNED_BUDGET
#: Scan rows read at once by the pass (about this many bytes).
READ_BYTES = 64 * 2**20

_IMAGES: weakref.WeakSet = weakref.WeakSet()


def binned_cube(cube, t: int | None = None) -> BinnedCube | None:
    """The complete binned copy of ``cube`` (time step ``t`` of a series), if one was made.

    Examples
    --------
    >>> binned_cube(np.zeros((2, 2, 4, 4))) is None
    True
    """
    for img in list(_IMAGES):
        if img.cube is cube:
            got = img.binned.get(0 if t is None else int(t))
            if got is not None and got.complete:
                return got
    return None


class _Notifier:
    """Carries "time step t is ready" from the worker thread to the GUI thread."""

    def __init__(self, owner):
        from qtpy.QtCore import QObject, Signal

        class Emitter(QObject):
            ready = Signal(int)
            progress = Signal(int, int)

        self.emitter = Emitter()
        ref = weakref.ref(owner)
        self.emitter.ready.connect(lambda t: (o := ref()) is not None and o._on_ready(t))
        self.emitter.progress.connect(
            lambda done, total: (o := ref()) is not None and o._on_progress(done, total)
        )


class BackgroundImage:
    """Array-like of a lazy ``(Rx, Ry)`` or ``(T, Rx, Ry)`` image, computed in the background.

    Indexing returns the computed values when the time step is ready and
    zeros (and a request to compute it) otherwise; ``np.asarray`` computes
    everything at once.

    Parameters
    ----------
    lazy : dask.array.Array
        The image (e.g. from :func:`napari_stemcluster.core.virtual.virtual_image`).
    description : str
        Shown on the progress bar.

    Examples
    --------
    >>> img = BackgroundImage(dask_image, "scan ADF")  # doctest: +SKIP
    >>> viewer.add_image(img)  # shown at once, filled in when computed  # doctest: +SKIP
    """

    def __init__(self, lazy, description: str = "virtual image", *, direct=None):
        self.lazy = lazy
        #: ``(cube, source, mask)`` to read rows from ``source`` (the file's
        #: array-like, same shape as the layer's ``cube``) and sum them over
        #: ``mask`` while filling :attr:`binned`; None: compute ``lazy``.
        self.direct = direct
        self.cube = None if direct is None else direct[0]
        #: Binned copies per time step (:func:`binned_cube` finds them).
        self.binned: dict[int, BinnedCube] = {}
        self.shape = tuple(int(s) for s in lazy.shape)
        self.dtype = np.dtype(lazy.dtype)
        self.ndim = len(self.shape)
        self.description = description
        self._steps: dict[int, np.ndarray] = {}
        self._wanted: list[int] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._notifier = _Notifier(self)
        self._pbar = None
        self.cancelled = threading.Event()
        self._contrast_done: set[int] = set()
        self._hidden = False  # added hidden by the reader, to be shown (reveal_later)
        _IMAGES.add(self)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def _n_steps(self) -> int:
        return self.shape[0] if self.ndim == 3 else 1

    def ready(self, t: int = 0) -> bool:
        """Whether time step ``t`` has been computed."""
        return int(t) in self._steps

    def __array__(self, dtype=None, copy=None):
        full = np.asarray(self.lazy.compute())
        return full if dtype is None else full.astype(dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if self.ndim == 3:
            first = key[0] if key else slice(None)
            if isinstance(first, (int, np.integer)):
                t = int(first) % self.shape[0]
                return self._step(t)[key[1:]]
            steps = range(*first.indices(self.shape[0])) if isinstance(first, slice) else first
            return np.stack([self._step(int(t)) for t in steps])[(slice(None), *key[1:])]
        return self._step(0)[key]

    def _step(self, t: int) -> np.ndarray:
        got = self._steps.get(t)
        if got is not None:
            return got
        self.request(t)
        return np.zeros(self.shape[-2:], self.dtype)

    def request(self, t: int) -> None:
        """Compute time step ``t`` next (in the background)."""
        with self._lock:
            if t in self._steps:
                return
            if t in self._wanted:
                self._wanted.remove(t)
            self._wanted.insert(0, t)  # the step on screen first
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()

    def reveal_later(self, turns: int = 400) -> None:
        """Make the layers showing this image visible in a later event-loop turn.

        For a reader that adds them hidden: napari paints a new layer within
        the call that adds it, and the first paint of an image layer compiles
        its shaders; shown a turn later, that paint is a pause of its own
        instead of adding to the opening's. Looked for every turn until napari
        has added the layer (for up to ``turns`` turns), then shown a turn
        later: napari's progress bar processes events while it opens files.
        """
        from qtpy.QtCore import QTimer

        from ._common import LATER_STEP_MS

        self._hidden = True

        def find(left: int) -> None:
            layers = self._layers()
            if layers:
                QTimer.singleShot(LATER_STEP_MS, lambda: self._reveal(layers))
            elif left > 0:
                QTimer.singleShot(LATER_STEP_MS, lambda: find(left - 1))

        QTimer.singleShot(LATER_STEP_MS, lambda: find(turns))

    def _shown_in(self) -> list[tuple]:
        """``(viewer, layer)`` of every layer showing this image."""
        from napari import Viewer

        return [(v, x) for v in list(Viewer._instances) for x in v.layers if x.data is self]

    def _layers(self) -> list:
        return [layer for _, layer in self._shown_in()]

    def _reveal(self, layers) -> None:
        if not self._hidden:
            return  # shown already (the image was ready first)
        self._hidden = False
        for layer in layers:
            layer.visible = True

    def wait(self, t: int = 0, timeout: float = 60.0) -> bool:
        """Block (processing Qt events) until step ``t`` is shown; for scripts and tests."""
        import time

        from qtpy.QtWidgets import QApplication

        self.request(t)
        end = time.monotonic() + timeout
        while not self.ready(t) and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)
        QApplication.processEvents()
        return self.ready(t)

    def _run(self):
        emitter = self._notifier.emitter
        while not self.cancelled.is_set():
            with self._lock:
                if not self._wanted:
                    return
                t = self._wanted.pop(0)
            try:
                if self.direct is not None:
                    out = self._read_direct(t, emitter)
                else:
                    out = self._compute_lazy(t, emitter)
            except Exception as exc:  # shown to the user, the window keeps working
                self._error = exc
                emitter.ready.emit(-1)
                return
            if out is None:  # cancelled
                return
            self._steps[t] = out
            emitter.ready.emit(t)

    def _compute_lazy(self, t, emitter):
        image = self.lazy[t] if self.ndim == 3 else self.lazy
        chunks = image.chunks[0]
        out = np.empty(image.shape, self.dtype)
        r0 = 0
        for i, n in enumerate(chunks):
            if self.cancelled.is_set():
                return None
            out[r0 : r0 + n] = np.asarray(image[r0 : r0 + n].compute())
            r0 += n
            emitter.progress.emit(i + 1, len(chunks))
        return out

    def _new_binned(self, t, scan, det) -> BinnedCube | None:
        factor, step = binned_layout(scan, det, BINNED_BYTES)
        binned = BinnedCube(scan, det, factor, step)
        others = sum(b.nbytes for img in list(_IMAGES) for b in img.binned.values())
        if others + binned.nbytes > BINNED_BYTES:
            # the oldest copies of this cube make room; other files keep theirs
            for old in list(self.binned):
                if others + binned.nbytes <= BINNED_BYTES:
                    break
                others -= self.binned.pop(old).nbytes
        if others + binned.nbytes > BINNED_BYTES:
            return None
        return binned

    def _read_direct(self, t, emitter):
        from ..core._validate import block_rows
        from ._virtual import step_of

        _cube, source, mask = self.direct
        src = step_of(source, t if self.ndim == 3 else None)
        scan, det = tuple(src.shape[:2]), tuple(src.shape[2:])
        binned = self.binned.get(t)
        if binned is None or binned.complete:
            binned = self._new_binned(t, scan, det)
        out = np.empty(scan, self.dtype)
        itemsize = np.dtype(src.dtype).itemsize
        step = block_rows((scan[0], scan[1], *det), itemsize, READ_BYTES)
        starts = list(range(0, scan[0], step))
        idx = np.flatnonzero(mask)
        for i, r0 in enumerate(starts):
            if self.cancelled.is_set():
                return None
            block = np.asarray(src[r0 : r0 + step])
            if binned is not None:
                sums = binned.add_rows(r0, block, mask)
            else:
                flat = block.reshape(block.shape[0], block.shape[1], -1)
                acc = np.float64 if block.dtype.kind == "f" else np.int64
                sums = flat[..., idx].sum(axis=-1, dtype=acc)
            out[r0 : r0 + len(block)] = sums
            emitter.progress.emit(i + 1, len(starts))
        if binned is not None:
            self.binned[t] = binned
        return out

    # -- GUI thread
    def _on_progress(self, done, total):
        from napari.utils import progress

        from ._common import progress_without_events

        with progress_without_events():  # no nested event loop inside the update
            if self._pbar is None:
                self._pbar = progress(total=total, desc=f"Computing {self.description}")
            self._pbar.n = done
            self._pbar.refresh()
            if done >= total:
                self._pbar.close()
                self._pbar = None

    def _on_ready(self, t):
        if t < 0:
            from napari.utils.notifications import show_error

            show_error(f"{self.description}: {getattr(self, '_error', 'failed')}")
            return
        from ._common import layer_step

        shown_in = self._shown_in()
        if self._hidden:  # napari slices (and finds contrast limits) only visible layers
            self._reveal([layer for _, layer in shown_in])
        for viewer, layer in shown_in:
            layer.refresh()
            shown = layer_step(viewer, layer) if self.ndim == 3 else 0
            # contrast from the first real values on screen (zeros before)
            if shown == t and id(layer) not in self._contrast_done:
                self._contrast_done.add(id(layer))
                layer.reset_contrast_limits()


def _direct_reads(metadata: dict | None, lazy):
    """``(cube, source, mask)`` of a virtual-image layer whose file can be read directly."""
    from ..core.virtual import detector_mask
    from ._virtual import direct_source

    meta = (metadata or {}).get("stemcluster") or {}
    cube, det = meta.get("cube"), meta.get("detector") or {}
    if cube is None or meta.get("kind") != "virtual_image":
        return None
    source = direct_source(meta)
    if source is cube or np.dtype(cube.dtype).kind not in "uifb":
        return None
    try:
        mask = detector_mask(
            tuple(cube.shape[-2:]), det["type"], det["inner"], det["outer"], det.get("center")
        )
    except (KeyError, ValueError, TypeError):
        return None
    if int(mask.sum()) != int(det.get("n_pixels", -1)):
        return None  # not the detector the lazy image sums: compute that one
    if np.dtype(lazy.dtype) != np.dtype(np.int64 if cube.dtype.kind in "iub" else np.float64):
        return None
    return cube, source, mask


def wrap_if_large(lazy, cube_nbytes: int, description: str, metadata: dict | None = None):
    """A :class:`BackgroundImage` when the cube is large and a Qt application runs.

    With the layer's ``metadata`` (of a virtual-image layer), the file is
    read directly and a binned copy made for the virtual detector.

    Examples
    --------
    >>> wrap_if_large(image, 10, "small") is image  # doctest: +SKIP
    True
    """
    if cube_nbytes < BACKGROUND_BYTES or not hasattr(lazy, "dask"):
        return lazy
    try:
        from qtpy.QtWidgets import QApplication
    except Exception:  # no Qt: napari is not running
        return lazy
    if QApplication.instance() is None:
        return lazy
    return BackgroundImage(lazy, description, direct=_direct_reads(metadata, lazy))
