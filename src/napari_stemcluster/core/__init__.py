"""The clustering algorithm as pure functions on numpy, dask or h5py arrays.

Nothing in this subpackage imports napari, Qt or magicgui.
"""

from .averages import cluster_means, cluster_sums, cluster_table, means_from_sums
from .clustering import Diagnostics, cluster_scan
from .crystal import Structure, load_structure, structure_factors
from .masking import annular_mask, real_space_mask
from .orientation import (
    ORIENTATION_DTYPE,
    OrientationLibrary,
    OrientationResult,
    ipf_color_key,
    ipf_colors,
    match_orientations,
    misorientation_deg,
    orient_clusters,
    orientation_library,
    orientation_maps,
    reference_lattice,
)
from .pipeline import segment
from .prefilter import correlative_prefilter, prefilter_footprint, prefilter_weight
from .regions import grow_regions
from .result import ClusterTable, SegmentationResult
from .similarity import NEIGHBOR_OFFSETS, mean_similarity, neighbor_similarity
from .threshold import auto_threshold
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
    "ORIENTATION_DTYPE",
    "ClusterTable",
    "Diagnostics",
    "Kinetics",
    "OrientationLibrary",
    "OrientationResult",
    "SegmentationResult",
    "Structure",
    "Tracking",
    "annular_mask",
    "auto_threshold",
    "cluster_means",
    "cluster_scan",
    "cluster_sums",
    "cluster_table",
    "correlative_prefilter",
    "grain_kinetics",
    "grow_regions",
    "ipf_color_key",
    "ipf_colors",
    "link_clusters",
    "link_result",
    "load_structure",
    "match_orientations",
    "mean_similarity",
    "means_from_sums",
    "misorientation_deg",
    "neighbor_similarity",
    "orient_clusters",
    "orientation_library",
    "orientation_maps",
    "prefilter_footprint",
    "prefilter_weight",
    "real_space_mask",
    "reference_lattice",
    "segment",
    "structure_factors",
    "track_series",
]
