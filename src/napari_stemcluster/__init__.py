"""Spatially contiguous clustering of 4D-STEM and in-situ 5D-STEM data."""

__all__ = ["SegmentationResult", "__version__", "segment"]


def __getattr__(name):
    # looked up on first use: the command line starts (and answers Ctrl-C)
    # before package metadata, numba and the kernels are loaded
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("napari-stemcluster")
        except PackageNotFoundError:  # running from a source tree without installing
            return "0+unknown"
    if name in ("SegmentationResult", "segment"):
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
