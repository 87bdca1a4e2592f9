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
from .clustering import Diagnostics, cluster_scan
from .crystal import Structure, load_structure, structure_factors
from .lattice import LatticeFit, LatticeTable, cluster_lattices, fit_lattice, orientation_map
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
from .strain import (
    StrainResult,
    orientation_reference,
    rereference,
    strain_from_lattices,
    strain_map,
)
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
    "DISK_DTYPE",
    "NEIGHBOR_OFFSETS",
    "ORIENTATION_DTYPE",
    "ClusterTable",
    "Diagnostics",
    "Kinetics",
    "LatticeFit",
    "LatticeTable",
    "OrientationLibrary",
    "OrientationResult",
    "SegmentationResult",
    "StrainResult",
    "Structure",
    "Tracking",
    "annular_mask",
    "auto_threshold",
    "cluster_lattices",
    "cluster_means",
    "cluster_scan",
    "cluster_sums",
    "cluster_table",
    "correlative_prefilter",
    "find_bragg_disks",
    "fit_lattice",
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
    "orientation_map",
    "orientation_maps",
    "orientation_reference",
    "prefilter_footprint",
    "prefilter_weight",
    "probe_from_pattern",
    "probe_from_region",
    "real_space_mask",
    "reference_lattice",
    "rereference",
    "ring_kernel",
    "segment",
    "strain_from_lattices",
    "strain_map",
    "structure_factors",
    "synthetic_probe",
    "track_series",
]
