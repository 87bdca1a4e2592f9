"""The clustering algorithm as pure functions on numpy, dask or h5py arrays.

Nothing in this subpackage imports napari, Qt or magicgui.
"""

from .averages import cluster_means, cluster_sums, cluster_table, means_from_sums
from .bragg import (
    DISK_DTYPE,
    find_bragg_disks,
    probe_from_pattern,
    probe_from_region,
    ring_kernel,
    synthetic_probe,
)
from .lattice import LatticeFit, LatticeTable, cluster_lattices, fit_lattice, orientation_map
from .masking import annular_mask, real_space_mask
from .pipeline import segment
from .prefilter import correlative_prefilter, prefilter_footprint, prefilter_weight
from .regions import grow_regions
from .result import ClusterTable, SegmentationResult
from .similarity import NEIGHBOR_OFFSETS, mean_similarity, neighbor_similarity
from .strain import StrainResult, rereference, strain_from_lattices, strain_map
from .tracking import (
    Kinetics,
    Tracking,
    grain_kinetics,
    link_clusters,
    link_result,
    track_series,
)

__all__ = [
    "DISK_DTYPE",
    "NEIGHBOR_OFFSETS",
    "ClusterTable",
    "Kinetics",
    "LatticeFit",
    "LatticeTable",
    "SegmentationResult",
    "StrainResult",
    "Tracking",
    "annular_mask",
    "cluster_lattices",
    "cluster_means",
    "cluster_sums",
    "cluster_table",
    "correlative_prefilter",
    "find_bragg_disks",
    "fit_lattice",
    "grain_kinetics",
    "grow_regions",
    "link_clusters",
    "link_result",
    "mean_similarity",
    "means_from_sums",
    "neighbor_similarity",
    "orientation_map",
    "prefilter_footprint",
    "prefilter_weight",
    "probe_from_pattern",
    "probe_from_region",
    "real_space_mask",
    "rereference",
    "ring_kernel",
    "segment",
    "strain_from_lattices",
    "strain_map",
    "synthetic_probe",
    "track_series",
]
