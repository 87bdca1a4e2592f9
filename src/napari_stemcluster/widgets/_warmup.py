"""Load (or compile, the first time on a machine) the numba kernels before they are needed.

The kernels are compiled once and cached on disk, but even loading them from
the cache takes a moment per kernel, and compiling takes seconds. The
workflow dock does it in a background thread as soon as it opens, with a
"preparing (one time)" note, so that the first drag of the threshold slider
or the first job does not stall.
"""

from __future__ import annotations

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
    from ..core.virtual import BinnedCube, virtual_detector

    for dtype in (np.uint16, np.float32):
        cube = np.ones((3, 4, 6, 6), dtype)
        sim = neighbor_similarity(cube)
        ms = mean_similarity(sim)
        labels, _ = grow_regions(sim, 0.5, mean_similarity=ms)
        cluster_sums(cube, labels, int(labels.max()))
        virtual_detector(cube, np.ones((6, 6), bool))
        update_sums(np.zeros((2, 6, 6)), np.zeros(2, np.int64), cube[0, :2], [1, 1], [2, 2])
        binned = BinnedCube(cube.shape[:2], cube.shape[2:], factor=2)
        binned.add_rows(0, cube, np.ones((6, 6), bool))
        binned.images(np.ones((6, 6), bool))
    correlative_prefilter(np.ones((3, 4, 6, 6), np.uint16), sigma=1.0, radius=1)


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
                    warm_up_kernels()
                finally:
                    _done.set()

            _thread = threading.Thread(target=run, name="stemcluster-warm-up", daemon=True)
            _thread.start()
    return _done


def is_warm() -> bool:
    """True once :func:`start_warm_up` has finished."""
    return _done.is_set()
