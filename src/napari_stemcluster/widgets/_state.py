"""Cluster sums and tables of one clusters layer, kept in step with hand edits.

The labels array (the Labels layer's data) is the single source of truth:
everything here is derived from it and can be rebuilt from it, so an edit is
never lost, whatever is cached. Nothing in this module touches Qt.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from psygnal import Signal

from ..core.averages import cluster_sums, cluster_table, means_from_sums
from ..core.editing import (
    changed_positions,
    merge_labels,
    merge_sums,
    read_patterns,
    split_label,
    update_sums,
)
from ..core.result import ClusterTable

#: Default memory budget for cached cluster sums (float64) of all time steps.
DEFAULT_SUMS_BUDGET = 1 << 30


@dataclass
class _Sums:
    sums: np.ndarray  # float64 (N, Qx, Qy)
    counts: np.ndarray  # int64 (N,)
    base: np.ndarray  # the labels these sums belong to

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes + self.counts.nbytes + self.base.nbytes


class ClusterState:
    """Labels of a 4D scan or 5D series with their cluster sums and tables.

    Parameters
    ----------
    labels : ndarray of int, shape (Rx, Ry) or (T, Rx, Ry)
        The label array, referenced (not copied): the Labels layer's data.
    cube : array_like, shape (Rx, Ry, Qx, Qy) or (T, Rx, Ry, Qx, Qy)
        The cube the cluster averages are taken from (any sliceable array).
    similarity : ndarray, shape labels.shape + (8,), optional
        Neighbour similarity, needed to split labels.
    mean_similarity : ndarray, shape labels.shape, optional
        For the cluster tables (seed and mean similarity) and split seeds.
    params : dict, optional
        Parameters that made the labels (kept for export).
    sums_budget : int
        Bytes of cluster sums kept for time steps other than the one in use;
        beyond it the least recently used are dropped and recomputed on demand.

    Notes
    -----
    :meth:`sync` compares the labels with a snapshot taken at the previous
    call, and moves the patterns of every changed position from its old to
    its new cluster sum, reading only those patterns.

    Examples
    --------
    >>> cube = np.arange(16.0).reshape(2, 2, 2, 2)
    >>> labels = np.array([[1, 1], [2, 2]])
    >>> state = ClusterState(labels, cube)
    >>> state.ensure_sums(0)
    >>> labels[0, 1] = 2  # an edit, e.g. by painting
    >>> state.sync()
    (0,)
    >>> state.mean(0, 2)  # positions (0, 1), (1, 0) and (1, 1)
    array([[ 8.,  9.],
           [10., 11.]], dtype=float32)
    """

    #: Emitted with the tuple of time steps whose labels or sums changed.
    changed = Signal(tuple)

    def __init__(
        self,
        labels,
        cube,
        *,
        similarity=None,
        mean_similarity=None,
        params: dict | None = None,
        sums_budget: int = DEFAULT_SUMS_BUDGET,
    ):
        labels = np.asarray(labels)
        if labels.ndim not in (2, 3) or labels.dtype.kind not in "iu":
            raise ValueError(
                f"labels must be an integer (Rx, Ry) or (T, Rx, Ry) array; got "
                f"{labels.dtype} of shape {labels.shape}"
            )
        if tuple(cube.shape[:-2]) != labels.shape:
            raise ValueError(
                f"the cube's scan shape {tuple(cube.shape[:-2])} does not match the "
                f"labels {labels.shape}"
            )
        for name, arr, extra in (
            ("similarity", similarity, (8,)),
            ("mean_similarity", mean_similarity, ()),
        ):
            if arr is not None and np.shape(arr) != labels.shape + extra:
                raise ValueError(
                    f"{name} must have shape {labels.shape + extra}; got {np.shape(arr)}"
                )
        self.labels = labels
        self.cube = cube
        self.similarity = similarity
        self.mean_similarity = mean_similarity
        self.params = dict(params or {})
        self.sums_budget = int(sums_budget)
        self.edited = False
        self._snap = labels.copy()
        self._sums: OrderedDict[int, _Sums] = OrderedDict()
        self._tables: dict[int, ClusterTable] = {}

    # ------------------------------------------------------------------ shape
    @property
    def time_series(self) -> bool:
        """True for (T, Rx, Ry) labels."""
        return self.labels.ndim == 3

    @property
    def n_steps(self) -> int:
        """Number of time steps (1 for a 4D scan)."""
        return self.labels.shape[0] if self.time_series else 1

    @property
    def detector_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.cube.shape[-2:])

    def _check_t(self, t: int) -> int:
        t = int(t)
        if not 0 <= t < self.n_steps:
            raise IndexError(f"time step {t} is outside 0..{self.n_steps - 1}")
        return t

    def step_labels(self, t: int = 0) -> np.ndarray:
        """The (Rx, Ry) labels of time step ``t`` (a view)."""
        t = self._check_t(t)
        return self.labels[t] if self.time_series else self.labels

    def step_cube(self, t: int = 0):
        """The (Rx, Ry, Qx, Qy) cube of time step ``t``."""
        t = self._check_t(t)
        return self.cube[t] if self.time_series else self.cube

    def _step(self, arr, t):
        if arr is None:
            return None
        return arr[t] if self.time_series else arr

    def step_similarity(self, t: int = 0):
        return self._step(self.similarity, self._check_t(t))

    def step_mean_similarity(self, t: int = 0):
        return self._step(self.mean_similarity, self._check_t(t))

    def _snap_step(self, t):
        return self._snap[t] if self.time_series else self._snap

    # ------------------------------------------------------------------- sums
    def has_sums(self, t: int = 0) -> bool:
        """Whether the cluster sums of time step ``t`` are cached."""
        return int(t) in self._sums

    def compute_sums(self, t: int = 0, progress=None) -> _Sums:
        """Cluster sums of one time step from scratch (safe in a worker thread).

        Returns an object for :meth:`install_sums`; edits made meanwhile are
        applied when it is installed.
        """
        base = np.array(self.step_labels(t), copy=True)
        n = int(base.max(initial=0))
        sums, counts = cluster_sums(self.step_cube(t), base, n, progress=progress)
        return _Sums(sums, counts, base)

    def install_sums(self, t: int, entry: _Sums) -> None:
        """Cache sums from :meth:`compute_sums`, catching up with later edits."""
        t = self._check_t(t)
        self._sums[t] = entry
        self._sums.move_to_end(t)
        self._catch_up(t)
        self._evict(keep=t)
        self.changed.emit((t,))

    def ensure_sums(self, t: int = 0, progress=None) -> None:
        """Compute and cache the sums of ``t`` now unless they are cached."""
        if not self.has_sums(t):
            self.install_sums(t, self.compute_sums(t, progress))

    def _evict(self, keep: int) -> None:
        total = sum(e.nbytes for e in self._sums.values())
        for t in list(self._sums):
            if total <= self.sums_budget:
                break
            if t != keep:
                total -= self._sums.pop(t).nbytes

    def _catch_up(self, t: int) -> bool:
        """Apply the difference between the sums' labels and the current ones."""
        entry = self._sums.get(t)
        if entry is None:
            return False
        cur = self.step_labels(t)
        pos, old, new = changed_positions(entry.base, cur)
        if not len(pos):
            return False
        patterns = read_patterns(self.step_cube(t), pos)
        entry.sums, entry.counts = update_sums(entry.sums, entry.counts, patterns, old, new)
        entry.base[...] = cur
        return True

    def sums(self, t: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        """Cached ``(sums, counts)`` of time step ``t``, or None."""
        entry = self._sums.get(int(t))
        if entry is None:
            return None
        self._sums.move_to_end(int(t))
        return entry.sums, entry.counts

    def mean(self, t: int, label: int) -> np.ndarray | None:
        """Average pattern (float32) of ``label`` at ``t``; None if not cached or empty."""
        got = self.sums(t)
        label = int(label)
        if got is None or label <= 0 or label > len(got[0]) or got[1][label - 1] == 0:
            return None
        return means_from_sums(got[0][label - 1 : label], got[1][label - 1 : label])[0]

    def means(self, t: int = 0) -> np.ndarray | None:
        """All cluster averages (N, Qx, Qy) of time step ``t``, or None if not cached."""
        got = self.sums(t)
        if got is None:
            return None
        n = int(self.step_labels(t).max(initial=0))
        sums, counts = got
        out = np.zeros((n,) + self.detector_shape, np.float32)
        k = min(n, len(sums))
        out[:k] = means_from_sums(sums[:k], counts[:k])
        return out

    # ----------------------------------------------------------------- tables
    def table(self, t: int = 0) -> ClusterTable:
        """Size, seed and mean similarity of the labels of time step ``t``."""
        t = self._check_t(t)
        if t not in self._tables:
            self._tables[t] = cluster_table(self.step_labels(t), self.step_mean_similarity(t))
        return self._tables[t]

    def features(self, t: int = 0) -> dict[str, np.ndarray]:
        """Columns for ``Labels.features``: row ``k`` is label ``k``, row 0 the background."""
        from .._layers import label_features

        return label_features(self.table(t), self.step_labels(t).size)

    # ------------------------------------------------------------------ edits
    def sync(self, steps=None) -> tuple[int, ...]:
        """Bring sums and tables up to date with the labels after any edit.

        Parameters
        ----------
        steps : iterable of int, optional
            Time steps to check (default: all).

        Returns
        -------
        tuple of int
            The steps whose labels changed (also emitted by :attr:`changed`).
        """
        changed = []
        for t in range(self.n_steps) if steps is None else steps:
            t = self._check_t(t)
            cur, snap = self.step_labels(t), self._snap_step(t)
            if np.array_equal(cur, snap):
                continue
            snap[...] = cur
            self._tables.pop(t, None)
            self._catch_up(t)
            changed.append(t)
        if changed:
            self.edited = True
            self.changed.emit(tuple(changed))
        return tuple(changed)

    def replace_labels(self, labels) -> None:
        """Follow a new labels array (the layer's data was replaced)."""
        labels = np.asarray(labels)
        if labels.shape != self.labels.shape:
            raise ValueError(f"new labels of shape {labels.shape} do not match {self.labels.shape}")
        self.labels = labels
        self.sync()

    def _full_index(self, t: int, positions: np.ndarray) -> tuple[np.ndarray, ...]:
        rows, cols = positions[:, 0], positions[:, 1]
        if self.time_series:
            return (np.full(len(rows), t, np.int64), rows, cols)
        return (rows, cols)

    def merge(self, t: int, labels, target: int | None = None):
        """Merge ``labels`` of time step ``t`` into one, updating sums without reading.

        The labels array is not modified: the returned ``(indices, values)``
        are to be written by the caller (e.g. ``Labels.data_setitem``, which
        records the edit for undo), followed by :meth:`sync`.

        Returns
        -------
        indices : tuple of ndarray
            Full (``(t, rx, ry)`` or ``(rx, ry)``) indices of changed positions.
        values : ndarray
            Their new label.
        target : int
        """
        t = self._check_t(t)
        ids = sorted({int(v) for v in labels})
        if len(ids) < 2:
            raise ValueError(f"select at least two labels to merge; got {ids}")
        cur = self.step_labels(t)
        present = [i for i in ids if (cur == i).any()]
        if len(present) < 2:
            raise ValueError(f"labels {ids} do not have two non-empty clusters at this time step")
        merged, target = merge_labels(cur, ids, target)
        self._commit(t, merged, sums_fn=lambda e: merge_sums(e.sums, e.counts, ids, target))
        pos, _, new = changed_positions(cur, merged)
        return self._full_index(t, pos), new.astype(cur.dtype), target

    def split(self, t: int, label: int, threshold: float, *, min_size: int = 1):
        """Split ``label`` of time step ``t`` by region growing at ``threshold``.

        Returns ``(indices, values, new_ids)`` as :meth:`merge` does; empty
        when the label does not split.
        """
        t = self._check_t(t)
        sim = self.step_similarity(t)
        if sim is None:
            raise ValueError("splitting needs the neighbour similarity, which is not available")
        cur = self.step_labels(t)
        out, new_ids = split_label(
            cur,
            label,
            sim,
            threshold,
            mean_similarity=self.step_mean_similarity(t),
            min_size=min_size,
        )
        pos, old, new = changed_positions(cur, out)

        def sums_fn(entry):
            patterns = read_patterns(self.step_cube(t), pos)
            return update_sums(entry.sums, entry.counts, patterns, old, new)

        if len(pos):
            self._commit(t, out, sums_fn)
        return self._full_index(t, pos), new.astype(cur.dtype), new_ids

    def _commit(self, t: int, new_labels: np.ndarray, sums_fn) -> None:
        """Update the cached sums for an edit the caller is about to write.

        The snapshot is left alone, so the :meth:`sync` that follows the write
        sees the change (tables, ``edited``, :attr:`changed`) but finds the
        sums already matching and reads nothing.
        """
        entry = self._sums.get(t)
        if entry is None:
            return
        self._catch_up(t)
        entry.sums, entry.counts = sums_fn(entry)
        entry.base[...] = new_labels
