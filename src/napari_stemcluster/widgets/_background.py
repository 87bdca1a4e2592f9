"""A virtual image computed in the background when a large file is opened.

napari computes the slice on screen of a lazy (dask) image in its own
thread, which freezes the window for as long as the whole file takes to
read. :class:`BackgroundImage` is an array-like that napari can show at once
(zeros until ready): the time step napari asks for is computed first, in a
background thread, with a progress bar, and the layers showing it are
refreshed when it is done.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

#: Cubes larger than this open with their virtual image computed in the background.
BACKGROUND_BYTES = 256 * 2**20


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

    def __init__(self, lazy, description: str = "virtual image"):
        self.lazy = lazy
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
            image = self.lazy[t] if self.ndim == 3 else self.lazy
            chunks = image.chunks[0]
            out = np.empty(image.shape, self.dtype)
            r0 = 0
            try:
                for i, n in enumerate(chunks):
                    if self.cancelled.is_set():
                        return
                    out[r0 : r0 + n] = np.asarray(image[r0 : r0 + n].compute())
                    r0 += n
                    emitter.progress.emit(i + 1, len(chunks))
            except Exception as exc:  # shown to the user, the window keeps working
                self._error = exc
                emitter.ready.emit(-1)
                return
            self._steps[t] = out
            emitter.ready.emit(t)

    # -- GUI thread
    def _on_progress(self, done, total):
        from napari.utils import progress

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
        from napari import Viewer

        from ._common import layer_step

        for viewer in list(Viewer._instances):
            for layer in viewer.layers:
                if layer.data is not self:
                    continue
                layer.refresh()
                shown = layer_step(viewer, layer) if self.ndim == 3 else 0
                # contrast from the first real values on screen (zeros before)
                if shown == t and id(layer) not in self._contrast_done:
                    self._contrast_done.add(id(layer))
                    layer.reset_contrast_limits()


def wrap_if_large(lazy, cube_nbytes: int, description: str):
    """A :class:`BackgroundImage` when the cube is large and a Qt application runs.

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
    return BackgroundImage(lazy, description)
