"""Containers for the outputs of a segmentation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClusterTable:
    """Per-cluster properties of one scan (one time step).

    Row ``i`` describes label ``i + 1``.

    Attributes
    ----------
    size : ndarray of int64, shape (N,)
        Number of scan positions in the cluster.
    seed : ndarray of int64, shape (N, 2)
        Scan position ``(rx, ry)`` the cluster grew from (its position of
        highest mean similarity; for edited labels, the member of highest
        mean similarity, or the member nearest the centroid without a map).
    mean_similarity : ndarray of float32, shape (N,)
        Mean over the members of the mean-similarity map (NaN when no map was
        given).
    """

    size: np.ndarray
    seed: np.ndarray
    mean_similarity: np.ndarray

    def __len__(self) -> int:
        return int(self.size.shape[0])

    def as_dict(self) -> dict[str, np.ndarray]:
        """Columns for ``napari.layers.Labels.features`` or a table."""
        return {
            "label": np.arange(1, len(self) + 1, dtype=np.int32),
            "size": self.size,
            "seed_rx": self.seed[:, 0],
            "seed_ry": self.seed[:, 1],
            "mean_similarity": self.mean_similarity,
        }


@dataclass
class StepResult:
    """The result of one time step (one scan, no time axis).

    Internally every result is a list of steps (one for a 4D scan); the
    public :class:`SegmentationResult` is built from them by
    :meth:`SegmentationResult.from_steps` and viewed as them by
    :meth:`SegmentationResult.steps`.
    """

    labels: np.ndarray
    mean_similarity: np.ndarray
    real_mask: np.ndarray
    similarity: np.ndarray
    cluster_means: np.ndarray
    clusters: ClusterTable
    diagnostics: object = None  # core.clustering.Diagnostics of the step


@dataclass
class SegmentationResult:
    """Everything :func:`napari_stemcluster.segment` computes.

    For a 4D cube the maps have shape ``(Rx, Ry)``; for a 5D cube they have a
    leading time axis and ``cluster_means``/``clusters`` are lists with one
    entry per time step.

    Attributes
    ----------
    labels : ndarray of int32
        Cluster labels ``1..N`` in seed order; 0 is unassigned or background.
    mean_similarity : ndarray of float32
        Mean cosine similarity of each pattern with its in-scan neighbours.
    real_mask : ndarray of bool
        Positions allowed to join clusters.
    similarity : ndarray of float32, shape ``labels.shape + (8,)``
        Similarity with each of the 8 neighbours (order of
        :data:`napari_stemcluster.core.similarity.NEIGHBOR_OFFSETS`); NaN
        where the neighbour lies outside the scan.
    cluster_means : ndarray of float32 (N, Qx, Qy), or a list of them
        Cluster-averaged diffraction patterns; row ``i`` is label ``i + 1``.
    clusters : ClusterTable, or a list of them
        Size, seed and mean similarity of each cluster.
    params : dict
        Every parameter used, JSON-serialisable.
    diagnostics : Diagnostics, or a list of them, or None
        What each scan's segmentation did (positions in the mask, fraction
        clustered, clusters kept and dropped, threshold used) and, when no
        cluster was found, the likely reason
        (:class:`~napari_stemcluster.core.clustering.Diagnostics`).
    """

    labels: np.ndarray
    mean_similarity: np.ndarray
    real_mask: np.ndarray
    similarity: np.ndarray
    cluster_means: np.ndarray | list[np.ndarray]
    clusters: ClusterTable | list[ClusterTable]
    params: dict = field(default_factory=dict)
    diagnostics: object = None

    @property
    def is_time_series(self) -> bool:
        """True for a 5D (time-resolved) result."""
        return self.labels.ndim == 3

    @property
    def n_steps(self) -> int:
        """Number of time steps (1 for a 4D scan)."""
        return int(self.labels.shape[0]) if self.is_time_series else 1

    def steps(self) -> list[StepResult]:
        """The result as one :class:`StepResult` per time step (one for 4D).

        The only place that tells 4D and 5D results apart: code that works
        per time step uses this and needs no branch.

        Examples
        --------
        >>> from napari_stemcluster import segment
        >>> res = segment(np.ones((3, 4, 2, 2)), real_mask=None, min_cluster_size=1)
        >>> [s.labels.shape for s in res.steps()], res.n_steps
        ([(3, 4)], 1)
        """
        if not self.is_time_series:
            return [
                StepResult(
                    self.labels,
                    self.mean_similarity,
                    self.real_mask,
                    self.similarity,
                    self.cluster_means,
                    self.clusters,
                    self.diagnostics,
                )
            ]
        diags = self.diagnostics if isinstance(self.diagnostics, list) else None
        return [
            StepResult(
                self.labels[t],
                self.mean_similarity[t],
                self.real_mask[t],
                self.similarity[t],
                self.cluster_means[t],
                self.clusters[t],
                None if diags is None else diags[t],
            )
            for t in range(self.n_steps)
        ]

    @classmethod
    def from_steps(
        cls, steps: list[StepResult], params: dict, time_axis: bool
    ) -> SegmentationResult:
        """The public result of ``steps``: with a time axis for a 5D cube, without for 4D.

        Examples
        --------
        >>> from napari_stemcluster import segment
        >>> res = segment(np.ones((2, 3, 3, 2, 2)), real_mask=None, min_cluster_size=1)
        >>> again = SegmentationResult.from_steps(res.steps(), res.params, time_axis=True)
        >>> again.labels.shape, again.n_clusters
        ((2, 3, 3), [1, 1])
        """
        diags = [s.diagnostics for s in steps]
        if all(d is not None for d in diags):
            # The thresholds used and the diagnostics also go into params,
            # and so into the results file.
            used = [d.threshold for d in diags]
            params["threshold_used"] = used if time_axis else used[0]
            as_dicts = [d.as_dict() for d in diags]
            params["diagnostics"] = as_dicts if time_axis else as_dicts[0]
        if not time_axis:
            (s,) = steps
            return cls(
                s.labels,
                s.mean_similarity,
                s.real_mask,
                s.similarity,
                s.cluster_means,
                s.clusters,
                params,
                s.diagnostics,
            )
        maps = [
            np.stack([getattr(s, name) for s in steps])
            for name in ("labels", "mean_similarity", "real_mask", "similarity")
        ]
        return cls(
            *maps, [s.cluster_means for s in steps], [s.clusters for s in steps], params, diags
        )

    @property
    def n_clusters(self) -> int | list[int]:
        """Number of clusters (a list with one count per time step for 5D)."""
        counts = [len(s.clusters) for s in self.steps()]
        return counts if self.is_time_series else counts[0]
