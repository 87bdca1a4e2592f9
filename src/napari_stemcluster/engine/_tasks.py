"""The work of one block: read it with its halo, compute, return small results.

These functions run wherever the executor puts them: a thread of this
process or a dask.distributed worker process on another machine. They take
everything they need as (picklable) arguments and return only small arrays.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

from ..core.averages import cluster_sums
from ..core.similarity import mean_similarity, neighbor_similarity


class BlockSource:
    """Picklable reader of scan blocks of a 4D or 5D cube.

    Wraps a numpy array, an h5py dataset, a dask array, or any array-like
    that supports basic slicing (such as the lazy file readers of
    :mod:`napari_stemcluster.io`). Pickling an h5py dataset sends only the
    file name and the dataset path; each process opens the file itself.

    Examples
    --------
    >>> src = BlockSource(np.arange(2 * 3 * 1 * 1).reshape(2, 3, 1, 1))
    >>> src.read(None, 1, 2, 0, 2)[..., 0, 0]
    array([[3, 4]])
    """

    def __init__(self, data):
        self.data = data
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = np.dtype(data.dtype)
        self._kind = _kind(data)

    def read(self, t: int | None, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Patterns of scan rows ``r0:r1`` and columns ``c0:c1`` (of step ``t``)."""
        key = (slice(r0, r1), slice(c0, c1))
        if t is not None:
            key = (int(t), *key)
        block = self.data[key]
        if self._kind == "dask":
            block = block.compute(scheduler="synchronous")
        return np.ascontiguousarray(block)

    def __getstate__(self):
        state = self.__dict__.copy()
        if self._kind == "h5py":
            from ..io._lazy import H5Array

            # Sent as file name and dataset path; workers open the file through
            # the readers' per-process handle cache.
            state["data"] = H5Array(self.data.file.filename, self.data.name, self.shape, self.dtype)
            state["_kind"] = "array"
        return state


def _kind(data) -> str:
    module = type(data).__module__.split(".")[0]
    if module == "dask":
        return "dask"
    if module == "h5py":
        return "h5py"
    return "array"


@contextmanager
def _numba_threads(n: int | None):
    """Run numba kernels with ``n`` threads in this thread (None: unchanged)."""
    if not n:
        yield
        return
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(old)


def _extended(box, halo, scan_shape):
    r0, r1, c0, c1 = box
    rx, ry = scan_shape
    return max(0, r0 - halo), min(rx, r1 + halo), max(0, c0 - halo), min(ry, c1 + halo)


def _prefiltered(raw, pre, keep_ext, read_ext):
    """Prefilter a block read with ``pre['radius']`` more than ``keep_ext``."""
    from ..core.prefilter import correlative_prefilter

    out = correlative_prefilter(raw, **pre)
    a0, a1, b0, b1 = keep_ext
    r0, _, c0, _ = read_ext
    return out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]


def similarity_task(source, t, box, spec):
    """Neighbour similarity of the positions of ``box`` (rows, cols of step t).

    The block is read with a halo of 1 (plus the prefilter radius) so every
    pair of neighbours is computed from the same two patterns as on the
    whole scan: the values are bit-identical to the unchunked computation.

    Returns
    -------
    sim : ndarray of float32, shape (h, w, 8)
    mask_map : ndarray of float32, shape (h, w), or None
        With ``spec["raw_mask_map"]``: the mean similarity of the raw
        (unprefiltered) patterns, which the real-space mask thresholds.
    seconds : (float, float)
        Time spent reading and computing.
    """
    scan = source.shape[-4:-2]
    pre = spec["prefilter"]
    near = _extended(box, 1, scan)  # similarity needs direct neighbours
    read_ext = _extended(box, 1 + (pre["radius"] if pre else 0), scan)
    t0 = time.perf_counter()
    raw = source.read(t, *read_ext)
    t1 = time.perf_counter()
    r0, r1, c0, c1 = box
    mask_map = None
    extras = _extras_raw(raw, box, read_ext, spec)
    with _numba_threads(spec["numba_threads"]):
        if pre and spec.get("raw_mask_map"):
            a0, a1, b0, b1 = near
            x0, _, y0, _ = read_ext
            near_raw = raw[a0 - x0 : a1 - x0, b0 - y0 : b1 - y0]
            raw_sim = neighbor_similarity(near_raw, spec["q_mask"], spec["sigma"])
            mask_map = np.ascontiguousarray(
                mean_similarity(raw_sim)[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
            )
        data = _prefiltered(raw, pre, near, read_ext) if pre else raw
        del raw
        sim = neighbor_similarity(data, spec["q_mask"], spec["sigma"])
        if spec.get("features"):
            from ..core.linkage import pattern_features

            core = data[r0 - near[0] : r1 - near[0], c0 - near[2] : c1 - near[2]]
            extras["features"] = pattern_features(core, spec["q_mask"], spec["sigma"])
    sim = np.ascontiguousarray(sim[r0 - near[0] : r1 - near[0], c0 - near[2] : c1 - near[2]])
    return sim, mask_map, (t1 - t0, time.perf_counter() - t1), extras


def _extras_raw(raw, box, read_ext, spec) -> dict:
    """Per-position inputs of the clustering step taken from the raw block."""
    extras = {}
    if spec.get("dark_field_beam") is not None:
        from ..core.masking import dark_field_image

        r0, r1, c0, c1 = box
        x0, _, y0, _ = read_ext
        core = raw[r0 - x0 : r1 - x0, c0 - y0 : c1 - y0]
        extras["signal"] = dark_field_image(core, spec["dark_field_beam"])
    return extras


def sums_task(source, t, box, labels, spec):
    """Sum of the patterns of every label present in ``box``.

    Returns
    -------
    ids : ndarray of int64, shape (k,)
        The labels present (sorted).
    sums : ndarray of float64, shape (k, Qx, Qy)
    seconds : (float, float)
        Time spent reading and computing.
    """
    scan = source.shape[-4:-2]
    pre = spec["prefilter"] if spec["average"] == "prefiltered" else None
    read_ext = _extended(box, pre["radius"] if pre else 0, scan)
    t0 = time.perf_counter()
    raw = source.read(t, *read_ext)
    t1 = time.perf_counter()
    ids = np.unique(labels)
    ids = ids[ids > 0].astype(np.int64)
    # Labels renumbered 1..k within the block: partial sums hold only the
    # clusters present, not every cluster of the scan.
    compact = np.searchsorted(ids, labels).astype(np.int64) + 1
    compact[labels <= 0] = 0
    with _numba_threads(spec["numba_threads"]):
        data = _prefiltered(raw, pre, box, read_ext) if pre else raw
        del raw
        sums, _ = cluster_sums(data, compact, len(ids))
    return ids, sums, (t1 - t0, time.perf_counter() - t1)
