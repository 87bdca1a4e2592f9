"""The one exception every reader raises for unreadable or unexpected files."""

from __future__ import annotations


class StemFileError(ValueError):
    """A file that cannot be read as 4D/5D-STEM data.

    The message names the file, the dataset inside it when there is one, and
    what was expected.

    Examples
    --------
    >>> from napari_stemcluster.io import StemFileError
    >>> issubclass(StemFileError, ValueError)
    True
    """
