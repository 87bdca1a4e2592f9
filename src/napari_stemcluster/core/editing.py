"""Hand edits of cluster labels: incremental averages, merging and splitting.

Cluster sums (see :func:`~napari_stemcluster.core.averages.cluster_sums`) are
additive, so after an edit only the patterns of the positions whose label
changed are read: each is subtracted from its old label's sum and added to
its new label's. Merging needs no pattern at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._validate import check_finite_values, kernel_dtype
from .averages import cluster_table
from .regions import grow_regions
from .result import ClusterTable

__all__ = [
    "changed_positions",
    "merge_labels",
    "merge_sums",
    "read_patterns",
    "split_label",
    "update_sums",
    "update_table",
]


def changed_positions(before, after) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions whose label differs between two label maps.

    Parameters
    ----------
    before, after : ndarray of int, shape (Rx, Ry)

    Returns
    -------
    positions : ndarray of int64, shape (K, 2)
        ``(rx, ry)`` of every changed position, in raster order.
    old, new : ndarray of int64, shape (K,)
        Label before and after.

    Examples
    --------
    >>> pos, old, new = changed_positions(np.array([[1, 1, 2]]), np.array([[1, 2, 2]]))
    >>> pos.tolist(), old.tolist(), new.tolist()
    ([[0, 1]], [1], [2])
    """
    before = np.asarray(before)
    after = np.asarray(after)
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(
            f"label maps must be 2-D and of equal shape; got {before.shape} and {after.shape}"
        )
    flat = np.flatnonzero(before.ravel() != after.ravel())
    positions = np.stack(np.unravel_index(flat, before.shape), axis=1).astype(np.int64)
    return (
        positions.reshape(-1, 2),
        before.ravel()[flat].astype(np.int64),
        after.ravel()[flat].astype(np.int64),
    )


#: A read may cover up to this many unrequested patterns per requested one.
_READ_WASTE = 1.0
#: Largest block of patterns read at once (bytes).
_READ_BYTES = 64 * 2**20


def _read_boxes(pos: np.ndarray, max_patterns: int) -> list[tuple[int, int, int, int]]:
    """Boxes ``(r0, r1, c0, c1)`` of scan rows and columns covering ``pos``.

    Consecutive requested rows share one box while it stays mostly requested
    patterns: each read has a fixed cost (tens of microseconds to a
    millisecond for an HDF5 dataset), so a brush stroke of 300 positions over
    20 rows is one read instead of 20.
    """
    rows = np.unique(pos[:, 0])
    boxes = []
    box = None
    for row in rows:
        cols = pos[pos[:, 0] == row, 1]
        lo, hi, n = int(cols.min()), int(cols.max()) + 1, len(np.unique(cols))
        if box is not None and row == box[1]:
            r0, _r1, c0, c1, wanted = box
            nc0, nc1 = min(c0, lo), max(c1, hi)
            area = (row + 1 - r0) * (nc1 - nc0)
            if area <= max_patterns and area <= (1 + _READ_WASTE) * (wanted + n):
                box = (r0, row + 1, nc0, nc1, wanted + n)
                continue
        if box is not None:
            boxes.append(box[:4])
        box = (int(row), int(row) + 1, lo, hi, n)
    if box is not None:
        boxes.append(box[:4])
    return boxes


def read_patterns(cube, positions) -> np.ndarray:
    """The diffraction patterns at some scan positions, reading little.

    Positions are read in file (raster) order, in a few rectangular blocks
    of scan positions: consecutive requested rows are read together while
    the block is mostly requested patterns (at most as many unrequested as
    requested), which suits cubes chunked or stored by scan rows (HDF5,
    dask, memory maps) and keeps the number of reads, each with a fixed
    cost, small.

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy)
        numpy, dask, h5py or any sliceable array.
    positions : array_like of int, shape (K, 2)

    Returns
    -------
    ndarray, shape (K, Qx, Qy)
        In the cube's dtype, in the order of ``positions``.

    Examples
    --------
    >>> cube = np.arange(16).reshape(2, 2, 2, 2)
    >>> read_patterns(cube, [(1, 0), (0, 1)])[:, 0, 0]
    array([8, 4])
    """
    shape = tuple(getattr(cube, "shape", ()))
    if len(shape) != 4:
        raise ValueError(f"cube must be 4-D (Rx, Ry, Qx, Qy); got shape {shape}")
    pos = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    rx, ry = shape[:2]
    if pos.size and ((pos < 0).any() or (pos[:, 0] >= rx).any() or (pos[:, 1] >= ry).any()):
        raise IndexError(f"positions must lie inside the {rx}x{ry} scan")
    dtype = np.dtype(cube.dtype)
    out = np.empty((len(pos),) + shape[2:], dtype)
    if not len(pos):
        return out
    pattern_bytes = max(1, int(np.prod(shape[2:])) * dtype.itemsize)
    for r0, r1, c0, c1 in _read_boxes(pos, max(1, _READ_BYTES // pattern_bytes)):
        idx = np.flatnonzero((pos[:, 0] >= r0) & (pos[:, 0] < r1))
        block = cube[r0:r1, c0:c1]
        if hasattr(block, "compute"):
            block = block.compute()
        block = np.asarray(block)
        out[idx] = block[pos[idx, 0] - r0, pos[idx, 1] - c0]
    return out


def update_sums(
    sums: np.ndarray,
    counts: np.ndarray,
    patterns,
    old,
    new,
) -> tuple[np.ndarray, np.ndarray]:
    """Move the patterns of relabelled positions from their old to their new sums.

    Parameters
    ----------
    sums : ndarray of float64, shape (N, Qx, Qy)
        Row ``i`` is the sum of label ``i + 1`` (updated in place when no
        new label exceeds ``N``).
    counts : ndarray of int64, shape (N,)
    patterns : array_like, shape (K, Qx, Qy)
        The patterns of the changed positions.
    old, new : array_like of int, shape (K,)
        Labels before and after; 0 (or negative) is unlabelled.

    Returns
    -------
    sums, counts
        Grown to ``max(new)`` rows when a new label appears.

    Examples
    --------
    >>> sums, counts = np.array([[[4.0]], [[1.0]]]), np.array([2, 1])
    >>> sums, counts = update_sums(sums, counts, np.array([[[3.0]]]), [1], [3])
    >>> sums.ravel(), counts
    (array([1., 1., 3.]), array([1, 1, 1]))
    """
    patterns = np.asarray(patterns)
    old = np.asarray(old, np.int64).ravel()
    new = np.asarray(new, np.int64).ravel()
    if not (len(patterns) == len(old) == len(new)):
        raise ValueError(
            f"patterns, old and new must have the same length; got {len(patterns)}, "
            f"{len(old)} and {len(new)}"
        )
    if patterns.shape[1:] != sums.shape[1:]:
        raise ValueError(
            f"patterns of shape {patterns.shape[1:]} do not match the sums' {sums.shape[1:]}"
        )
    if patterns.size and patterns.dtype.kind == "f":  # integers are always finite
        check_finite_values(patterns.reshape(len(patterns), -1).sum(axis=1), "update_sums")
    n_needed = int(max(new.max(initial=0), old.max(initial=0)))
    if n_needed > len(sums):
        grow = n_needed - len(sums)
        sums = np.concatenate([sums, np.zeros((grow,) + sums.shape[1:], sums.dtype)])
        counts = np.concatenate([counts, np.zeros(grow, counts.dtype)])
    if sums.dtype != np.float64 or not sums.flags.c_contiguous:
        sums = np.ascontiguousarray(sums, np.float64)
    if len(patterns):
        from ._editing_numba import _move_patterns

        flat = np.ascontiguousarray(patterns).reshape(len(patterns), -1)
        if flat.dtype == bool:
            flat = flat.view(np.uint8)
        else:
            # The kernel adds float64(value): the kernels' few dtypes give the same
            # sums and keep it to four compiled versions.
            flat = flat.astype(kernel_dtype(flat.dtype), copy=False)
        _move_patterns(sums.reshape(len(sums), -1), flat, old, new)
    moved = old != new
    np.subtract.at(counts, old[moved & (old > 0)] - 1, 1)
    np.add.at(counts, new[moved & (new > 0)] - 1, 1)
    return sums, counts


def update_table(
    table: ClusterTable,
    labels,
    changed_labels,
    mean_similarity: np.ndarray | None = None,
) -> ClusterTable:
    """The cluster table after an edit, recomputing only the labels it touched.

    Equal to ``cluster_table(labels, mean_similarity)``, at the cost of the
    touched clusters' members rather than of the whole scan (a brush stroke
    changes two or three clusters out of hundreds).

    Parameters
    ----------
    table : ClusterTable
        The table of the labels before the edit.
    labels : ndarray of int, shape (Rx, Ry)
        The labels after the edit.
    changed_labels : array_like of int
        Every label that gained or lost a position (old and new labels of
        the changed positions; 0 is ignored).
    mean_similarity : ndarray, shape (Rx, Ry), optional
        As for :func:`~napari_stemcluster.core.averages.cluster_table`.

    Returns
    -------
    ClusterTable
        A new table with ``labels.max()`` rows.

    Examples
    --------
    >>> before = np.array([[1, 1, 2, 2]])
    >>> after = np.array([[1, 2, 2, 2]])
    >>> t = update_table(cluster_table(before), after, [1, 2])
    >>> t.size.tolist(), t.seed.tolist()
    ([1, 3], [[0, 0], [0, 2]])
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    touched = np.unique(np.asarray(changed_labels, np.int64).ravel())
    touched = touched[(touched > 0) & (touched <= n)]
    keep = min(n, len(table))
    size = np.zeros(n, np.int64)
    seed = np.full((n, 2), -1, np.int64)
    msim = np.full(n, np.nan, np.float32)
    size[:keep] = table.size[:keep]
    seed[:keep] = table.seed[:keep]
    msim[:keep] = table.mean_similarity[:keep]
    # rows the old table did not have are new labels: they were touched too
    touched = np.union1d(touched, np.arange(keep + 1, n + 1))
    if touched.size:
        # lookup instead of np.isin: one pass over the scan
        lut = np.zeros(n + 1, bool)
        lut[touched] = True
        flat = labels.ravel()
        inside = lut[np.clip(flat, 0, n)] & (flat > 0)
        sub = np.where(inside.reshape(labels.shape), labels, 0)
        part = cluster_table(sub, mean_similarity, n)
        rows = touched - 1
        size[rows] = part.size[rows]
        seed[rows] = part.seed[rows]
        msim[rows] = part.mean_similarity[rows]
    return ClusterTable(size=size, seed=seed, mean_similarity=msim)


def _merge_target(merge: Sequence[int], target: int | None) -> tuple[np.ndarray, int]:
    ids = np.unique(np.asarray(list(merge), np.int64))
    if ids.size == 0 or (ids <= 0).any():
        raise ValueError(f"labels to merge must be positive integers; got {list(merge)}")
    target = int(ids.min()) if target is None else int(target)
    if target <= 0:
        raise ValueError(f"the merge target must be a positive label; got {target}")
    return ids, target


def merge_labels(labels, merge: Sequence[int], target: int | None = None) -> tuple[np.ndarray, int]:
    """Give every position of several labels one label.

    Parameters
    ----------
    labels : ndarray of int
        Label map of any shape.
    merge : sequence of int
        Labels to merge (positive).
    target : int, optional
        The resulting label (default: the smallest of ``merge``). Other label
        numbers are kept, so the merged-away labels become empty.

    Returns
    -------
    labels : ndarray
        A new label map.
    target : int

    Examples
    --------
    >>> merge_labels(np.array([[1, 2, 3, 2]]), [3, 2])
    (array([[1, 2, 2, 2]]), 2)
    """
    labels = np.asarray(labels)
    ids, target = _merge_target(merge, target)
    out = labels.copy()
    out[np.isin(labels, ids)] = target
    return out, target


def merge_sums(
    sums: np.ndarray, counts: np.ndarray, merge: Sequence[int], target: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster sums and counts after :func:`merge_labels`, without any pattern.

    Returns new arrays (grown when ``target`` exceeds ``N``); labels beyond
    ``N`` count as empty.

    Examples
    --------
    >>> s, c = merge_sums(np.array([[[1.0]], [[2.0]], [[4.0]]]), np.array([1, 1, 2]), [3, 2])
    >>> s.ravel(), c
    (array([1., 6., 0.]), array([1, 3, 0]))
    """
    ids, target = _merge_target(merge, target)
    n = max(len(sums), target)
    s = np.zeros((n,) + sums.shape[1:], np.float64)
    c = np.zeros(n, np.int64)
    s[: len(sums)] = sums
    c[: len(counts)] = counts
    total = np.zeros(sums.shape[1:], np.float64)
    count = 0
    for lab in ids:
        if lab <= len(sums):
            total += s[lab - 1]
            count += int(c[lab - 1])
            s[lab - 1] = 0.0
            c[lab - 1] = 0
    s[target - 1] = total
    c[target - 1] = count
    return s, c


def split_label(
    labels,
    label: int,
    similarity: np.ndarray,
    threshold: float,
    *,
    mean_similarity: np.ndarray | None = None,
    min_size: int = 1,
    next_label: int | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Split one cluster by growing regions inside it at a higher threshold.

    Region growing (:func:`~napari_stemcluster.core.regions.grow_regions`) is
    rerun on the stored neighbour similarity, restricted to the members of
    ``label``. The piece grown from the member of highest mean similarity
    keeps ``label``; the other pieces get new labels.

    Parameters
    ----------
    labels : ndarray of int, shape (Rx, Ry)
    label : int
        The cluster to split.
    similarity : ndarray, shape (Rx, Ry, 8)
        Neighbour similarity of the scan.
    threshold : float
        Joining threshold for the split (higher than the one that grew the
        cluster, or nothing changes).
    mean_similarity : ndarray, shape (Rx, Ry), optional
        Seed priority (computed from ``similarity`` when omitted).
    min_size : int
        Pieces smaller than this are unassigned (0); if every piece is
        smaller, the largest one is kept.
    next_label : int, optional
        First new label number (default ``labels.max() + 1``).

    Returns
    -------
    labels : ndarray
        A new label map (same dtype).
    new_ids : list of int
        Labels given to the split-off pieces (empty when nothing split).

    Examples
    --------
    >>> from napari_stemcluster.core.similarity import neighbor_similarity
    >>> cube = np.ones((1, 4, 2, 2))
    >>> cube[0, 2:, 0, 0] = 3.0  # the right half differs a little
    >>> sim = neighbor_similarity(cube)
    >>> split_label(np.array([[1, 1, 1, 1]]), 1, sim, 0.99)
    (array([[1, 1, 2, 2]]), [2])
    """
    labels = np.asarray(labels)
    sim = np.asarray(similarity)
    if labels.ndim != 2 or sim.shape != labels.shape + (8,):
        raise ValueError(
            f"labels must be (Rx, Ry) and similarity (Rx, Ry, 8); got {labels.shape} "
            f"and {sim.shape}"
        )
    label = int(label)
    region = labels == label
    if label <= 0 or not region.any():
        raise ValueError(f"label {label} has no member to split")
    pieces, _ = grow_regions(sim, threshold, mean_similarity=mean_similarity, mask=region)
    n = int(pieces.max(initial=0))
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
    keep = sizes >= max(int(min_size), 1)
    if not keep.any():
        keep[np.argmax(sizes)] = True
    first = int(labels.max(initial=0)) + 1 if next_label is None else int(next_label)
    kept = np.flatnonzero(keep) + 1  # piece numbers, in seed order
    mapping = np.zeros(n + 1, np.int64)
    mapping[kept[0]] = label
    new_ids = list(range(first, first + len(kept) - 1))
    mapping[kept[1:]] = new_ids
    out = labels.copy()
    out[region] = mapping[pieces[region]].astype(labels.dtype)
    return out, new_ids
