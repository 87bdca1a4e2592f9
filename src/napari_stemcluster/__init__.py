"""Spatially contiguous clustering of 4D-STEM and in-situ 5D-STEM data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-stemcluster")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

from .core import SegmentationResult, segment

__all__ = ["SegmentationResult", "__version__", "segment"]
