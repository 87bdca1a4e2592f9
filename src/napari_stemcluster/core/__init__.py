"""The clustering algorithm as pure functions on numpy, dask or h5py arrays.

Nothing in this subpackage imports napari, Qt or magicgui.
"""

from .averages import cluster_means, cluster_sums, cluster_table, means_from_sums
from .masking import annular_mask, real_space_mask
from .pipeline import segment
from .prefilter import correlative_prefilter, prefilter_footprint, prefilter_weight
from .regions import grow_regions
from .result import ClusterTable, SegmentationResult
from .similarity import NEIGHBOR_OFFSETS, mean_similarity, neighbor_similarity
from .tracking import (
    Kinetics,
    Tracking,
    grain_kinetics,
    link_clusters,
    link_result,
    track_series,
)

__all__ = [
    "NEIGHBOR_OFFSETS",
    "ClusterTable",
    "Kinetics",
    "SegmentationResult",
    "Tracking",
    "annular_mask",
    "cluster_means",
    "cluster_sums",
    "cluster_table",
    "correlative_prefilter",
    "grain_kinetics",
    "grow_regions",
    "link_clusters",
    "link_result",
    "mean_similarity",
    "means_from_sums",
    "neighbor_similarity",
    "prefilter_footprint",
    "prefilter_weight",
    "real_space_mask",
    "segment",
    "track_series",
]
