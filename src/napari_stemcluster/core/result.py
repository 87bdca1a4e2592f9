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
    def n_clusters(self) -> int | list[int]:
        """Number of clusters (a list with one count per time step for 5D)."""
        if self.is_time_series:
            return [len(c) for c in self.clusters]
        return len(self.clusters)
