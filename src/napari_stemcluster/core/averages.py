"""Cluster-averaged diffraction patterns and per-cluster properties."""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

from ._averages_numba import _accumulate, _accumulate_exact, _accumulate_narrow, _table_sums
from ._validate import (
    block_rows,
    check_cube,
    check_finite_values,
    kernel_dtype,
    native_dtype,
    read_rows,
)
from .result import ClusterTable


def _check_labels(labels, scan_shape) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != tuple(scan_shape):
        raise ValueError(f"labels must have the scan shape {tuple(scan_shape)}; got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers; got dtype {labels.dtype}")
    return labels


def cluster_sums(
    cube,
    labels,
    n_clusters: int | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    _block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the patterns and number of positions of every label.

    Sums of separate parts of a scan simply add, so partial results from
    chunks or workers merge by addition.

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy)
        Any integer or float dtype; read in blocks of scan rows (blocks
        without a labelled position are not read).
    labels : ndarray of int, shape (Rx, Ry)
        0 (or negative) is ignored.
    n_clusters : int, optional
        Number of labels ``1..n_clusters`` to accumulate (default
        ``labels.max()``).
    progress : callable, optional
        ``progress(done, total)`` after each block; raise from it to cancel.

    Returns
    -------
    sums : ndarray of float64, shape (N, Qx, Qy)
    counts : ndarray of int64, shape (N,)

    Examples
    --------
    >>> cube = np.arange(8, dtype=np.uint8).reshape(1, 2, 2, 2)
    >>> sums, counts = cluster_sums(cube, np.array([[1, 1]]))
    >>> sums[0], counts
    (array([[ 4.,  6.],
           [ 8., 10.]]), array([2]))
    """
    check_cube(cube, 4)
    rx, ry, qx, qy = cube.shape
    labels = _check_labels(labels, (rx, ry))
    n = int(labels.max(initial=0)) if n_clusters is None else int(n_clusters)
    sums = np.zeros((n, qx * qy), np.float64)
    counts = np.bincount(np.clip(labels, 0, None).ravel(), minlength=n + 1)[1 : n + 1]
    own, kind = native_dtype(cube.dtype), sum_dtype(cube.dtype)
    step = _block_rows or _sum_rows(cube, kind)
    starts = range(0, rx, step)
    for i, r0 in enumerate(starts):
        r1 = min(r0 + step, rx)
        lab = np.ascontiguousarray(labels[r0:r1], dtype=np.int64).ravel()
        if n and np.any((lab > 0) & (lab <= n)):
            block = read_rows(cube, r0, r1).reshape(-1, qx * qy)
            if block.dtype != kind:
                block = block.astype(kind)  # the same values, in a dtype the kernels know
            narrow = _narrow_parts(own, lab.size, n, qx * qy, total=rx * ry)
            if narrow is not None:
                acc, count = narrow
                _accumulate_narrow(block, lab, sums, np.zeros((count, n, qx * qy), acc))
            elif (tasks := _exact_tasks(own, rx * ry, n, qx * qy)) > 1:
                _accumulate_exact(block, lab, sums, tasks)
            else:
                _accumulate(block, lab, sums)
        if progress is not None:
            progress(i + 1, len(starts))
    if np.dtype(cube.dtype).kind == "f":  # integer sums are always finite
        check_finite_values(sums.sum(axis=1), "cluster_sums")
    return sums.reshape(n, qx, qy), counts.astype(np.int64)


def sum_dtype(dtype) -> np.dtype:
    """The dtype :func:`cluster_sums`' kernels read a cube of ``dtype`` as.

    That of the similarity kernels (see
    :func:`~napari_stemcluster.core._validate.kernel_dtype`: each dtype is a
    separate compilation), except that 8- and 16-bit signed integers are read
    as int16, which the 32-bit exact partial sums take. The sums are those of
    the cube's own values: the kernels add each value as float64 anyway.

    Examples
    --------
    >>> [str(sum_dtype(d)) for d in (">u2", np.int8, np.uint32, np.int64, np.float16)]
    ['uint16', 'int16', 'float64', 'float64', 'float32']
    """
    kind = native_dtype(dtype)
    if kind in (np.int8, np.int16):
        return np.dtype(np.int16)
    return kernel_dtype(kind)


def _sum_rows(cube, kind: np.dtype) -> int:
    """Scan rows per kernel call: all of a C-contiguous numpy cube that the kernels
    read as it is (summed where it lies: one call, so the per-call partial sums are
    made and merged once), blocks of about
    :data:`~napari_stemcluster.core._validate.BLOCK_BYTES` of anything else (read,
    made contiguous or converted to ``kind`` one block at a time)."""
    if isinstance(cube, np.ndarray) and cube.flags.c_contiguous and cube.dtype == kind:
        return int(cube.shape[0])
    return block_rows(cube.shape, max(np.dtype(cube.dtype).itemsize, kind.itemsize))


def _narrow_parts(dtype, n_positions: int, n_labels: int, q: int, total: int | None = None):
    """32-bit integer partial sums for :func:`_accumulate_narrow`, or None.

    Integers of at most 16 bits are summed per task in ``uint32`` (signed:
    ``int32``) over runs of positions short enough that no partial sum can
    overflow, then added in float64: exact (while ``total``, the positions
    of the whole scan, times the largest value stays below 2**53), so the
    same numbers as the raster-order kernel. Returns ``(dtype, tasks)``; None for other dtypes,
    or when the per-task copies would exceed the copy budget.

    Examples
    --------
    >>> _narrow_parts(np.float32, 100, 2, 16) is None
    True
    >>> acc, tasks = _narrow_parts(np.uint16, 200_000, 2, 16)
    >>> acc, tasks >= 4  # at most 65,537 uint16 values per uint32 sum
    (dtype('uint32'), True)
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        return None
    acc = np.dtype(np.uint32 if dtype.kind == "u" else np.int32)
    info = np.iinfo(dtype)
    largest = max(abs(int(info.min)), int(info.max))
    if float(largest) * max(n_positions, total or 0) >= 2.0**53:
        return None
    cap = int(np.iinfo(acc).max) // largest  # positions per task without overflow
    tasks = max(numba.get_num_threads(), -(-int(n_positions) // cap))
    if tasks * n_labels * q * acc.itemsize > _EXACT_COPY_BYTES:
        return None
    return acc, tasks


#: Largest per-thread copy of the sums (bytes) for :func:`_accumulate_exact`.
_EXACT_COPY_BYTES = 2**26


def _exact_tasks(dtype, n_positions: int, n_labels: int, q: int) -> int:
    """Tasks for the position-parallel sums, or 1 for the raster-order kernel.

    Integer sums in float64 are exact, hence independent of the order of
    additions, while every partial sum stays below 2**53: true when the
    largest magnitude of the dtype times the number of positions is below
    it. Then each thread adds whole patterns (sequential reads) into its own
    copy of the sums, when the copies are small.

    Examples
    --------
    >>> _exact_tasks(np.float32, 100, 2, 16)
    1
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return 1
    info = np.iinfo(dtype)
    if float(max(abs(int(info.min)), int(info.max))) * n_positions >= 2.0**53:
        return 1
    tasks = numba.get_num_threads()
    if tasks < 2 or tasks * n_labels * q * 8 > _EXACT_COPY_BYTES:
        return 1
    return tasks


def means_from_sums(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float32 averages from :func:`cluster_sums` output; empty labels give 0.

    Examples
    --------
    >>> means_from_sums(np.array([[[4.0]], [[0.0]]]), np.array([2, 0]))
    array([[[2.]],
    <BLANKLINE>
           [[0.]]], dtype=float32)
    """
    shape = (-1,) + (1,) * (sums.ndim - 1)
    denom = np.maximum(counts, 1).reshape(shape)
    return (sums / denom).astype(np.float32)


def cluster_means(
    cube,
    labels,
    n_clusters: int | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Mean diffraction pattern of every cluster.

    Only the cube and the labels are needed, so averages of hand-edited
    labels are recomputed without the similarity.

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy)
        The cube to average: raw, prefiltered, or any other of the same scan.
    labels : ndarray of int, shape (Rx, Ry)
        Cluster labels; row ``i`` of the result is label ``i + 1``.
    n_clusters : int, optional
        Number of rows (default ``labels.max()``); labels without members
        give an all-zero row.
    progress : callable, optional
        ``progress(done, total)`` after each block; raise from it to cancel.

    Returns
    -------
    ndarray of float32, shape (N, Qx, Qy)

    Examples
    --------
    >>> cube = np.arange(8, dtype=np.uint8).reshape(1, 2, 2, 2)
    >>> cluster_means(cube, np.array([[1, 1]]))
    array([[[2., 3.],
            [4., 5.]]], dtype=float32)
    """
    sums, counts = cluster_sums(cube, labels, n_clusters, progress=progress)
    return means_from_sums(sums, counts)


def cluster_table(
    labels,
    mean_similarity: np.ndarray | None = None,
    n_clusters: int | None = None,
) -> ClusterTable:
    """Size, seed and mean similarity of every label.

    The seed is the member of highest mean similarity (first in raster order
    on ties), which is the position region growing started from; without a
    mean-similarity map it is the member nearest the cluster centroid.

    Parameters
    ----------
    labels : ndarray of int, shape (Rx, Ry)
    mean_similarity : ndarray, shape (Rx, Ry), optional
    n_clusters : int, optional
        Number of labels (default ``labels.max()``); empty labels get size 0,
        seed (-1, -1) and NaN similarity.

    Returns
    -------
    ClusterTable

    Examples
    --------
    >>> t = cluster_table(np.array([[1, 1, 2]]), np.array([[0.5, 0.9, 0.7]]))
    >>> t.size, t.seed.tolist(), t.mean_similarity
    (array([2, 1]), [[0, 1], [0, 2]], array([0.7, 0.7], dtype=float32))
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0)) if n_clusters is None else int(n_clusters)
    flat = labels.ravel()
    seed = np.full((n, 2), -1, np.int64)
    if mean_similarity is not None:
        ms = np.asarray(mean_similarity, np.float64).ravel()
        if ms.size != flat.size:
            raise ValueError("mean_similarity must have the shape of labels")
        # One raster pass (no sort): sizes, sums and the first member of
        # highest similarity, the seed region growing started from.
        size = np.zeros(n, np.int64)
        tot = np.zeros(n, np.float64)
        first = np.full(n, -1, np.int64)
        _table_sums(np.ascontiguousarray(flat), ms, size, tot, first)
        with np.errstate(invalid="ignore", divide="ignore"):
            msim = (tot / size).astype(np.float32)
        has = first >= 0
        seed[has] = np.stack(np.unravel_index(first[has], labels.shape), 1)
        return ClusterTable(size=size, seed=seed, mean_similarity=msim)
    valid = np.flatnonzero((flat > 0) & (flat <= n))
    lab = flat[valid].astype(np.int64)
    size = np.bincount(lab, minlength=n + 1)[1 : n + 1].astype(np.int64)
    msim = np.full(n, np.nan, np.float32)
    if valid.size:
        rows, cols = np.unravel_index(valid, labels.shape)
        cx = np.bincount(lab, weights=rows, minlength=n + 1) / np.maximum(
            np.bincount(lab, minlength=n + 1), 1
        )
        cy = np.bincount(lab, weights=cols, minlength=n + 1) / np.maximum(
            np.bincount(lab, minlength=n + 1), 1
        )
        dist = (rows - cx[lab]) ** 2 + (cols - cy[lab]) ** 2
        key = np.lexsort((valid, dist, lab))
        first = np.ones(key.size, bool)
        first[1:] = lab[key][1:] != lab[key][:-1]
        winners = valid[key[first]]
        seed[lab[key[first]] - 1] = np.stack(np.unravel_index(winners, labels.shape), 1)
    return ClusterTable(size=size, seed=seed, mean_similarity=msim)
