"""napari reader of 4D/5D-STEM files and results files, and the open widget."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton

from .io.errors import StemFileError

logger = logging.getLogger(__name__)

#: Extensions whose files get a reader even when they cannot be opened, so
#: that napari shows the reason (truncated file, missing data file, ...).
_OUR_SUFFIXES = {".h5", ".hdf5", ".hdf", ".emd", ".nxs", ".mib", ".hdr", ".npy"}
_FILE_FILTER = "4D-STEM files (*.h5 *.hdf5 *.hdf *.emd *.nxs *.mib *.hdr *.npy)"


def _kind(path: str) -> str | None:
    """detect_format, but "broken" for unreadable files with our extensions."""
    from .io import detect_format

    try:
        kind = detect_format(path)
    except Exception:
        return "broken" if Path(path).suffix.lower() in _OUR_SUFFIXES else None
    if kind in ("hdf5-stack", "npy-stack"):
        return None  # 3D stacks need a scan shape: the open widget handles them
    return kind


def get_reader(path):
    """npe2 reader hook: a reader for 4D/5D-STEM and results files, else None.

    Only file headers and HDF5 metadata are read, and this never raises.

    Examples
    --------
    >>> get_reader("image.png") is None
    True
    """
    try:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths:
            return None
        kinds = [_kind(os.fspath(p)) for p in paths]
        if any(k is None for k in kinds):
            return None
        return read_stem
    except Exception:  # never let a probe crash napari
        logger.debug("get_reader(%r) failed", path, exc_info=True)
        return None


def read_stem(path) -> list[tuple]:
    """Read files into layer-data tuples (virtual images or saved results).

    Raises
    ------
    StemFileError
        With a message naming the file and what was expected.

    Examples
    --------
    >>> layers = read_stem("scan.h5")  # doctest: +SKIP
    >>> layers[0][2]  # doctest: +SKIP
    'image'
    """
    from ._layers import dataset_to_layers, result_to_layers
    from .io import detect_format, open_dataset, read_results

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[tuple] = []
    for p in paths:
        p = os.fspath(p)
        kind = detect_format(p)
        if kind == "results":
            result, info = read_results(p)
            ds = open_source(info["source"], np.shape(result.labels))
            if ds is not None:  # the data too: patterns, averages and edits work again
                layers += dataset_to_layers(ds)
            layers += result_to_layers(
                result,
                info["calibration"],
                name=Path(p).stem,
                source=info["source"],
                cube=None if ds is None else ds.cube,
            )
        else:  # the format just detected: open_dataset need not detect it again
            layers += dataset_to_layers(open_dataset(p, format=kind))
    return layers


def open_source(source: str | None, scan_shape: tuple[int, ...]):
    """The data file a results file was made from, or None when it cannot be opened.

    The stored path is tried as it is; when the file's own scan shape
    differs from the labels' (a flat frame stack opened with a scan shape),
    the labels' shape is applied.

    Examples
    --------
    >>> open_source(None, (4, 4)) is None
    True
    """
    from .io import open_dataset

    if not source or not Path(source).is_file():
        return None
    scan_shape = tuple(int(s) for s in scan_shape)
    for shape in (None, scan_shape):
        try:
            ds = open_dataset(source, scan_shape=shape)
        except (StemFileError, ValueError, OSError):
            continue
        if tuple(ds.scan_shape) == scan_shape:
            return ds
    return None


def parse_scan_shape(text: str) -> tuple[int, ...] | None:
    """Parse "64, 64" or "10 x 64 x 64" to a tuple; empty gives None.

    Examples
    --------
    >>> parse_scan_shape("10 x 64, 64")
    (10, 64, 64)
    >>> parse_scan_shape("  ") is None
    True
    """
    cleaned = text.replace("x", " ").replace("X", " ").replace(",", " ").replace("(", " ")
    cleaned = cleaned.replace(")", " ").replace("×", " ")
    parts = cleaned.split()
    if not parts:
        return None
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"scan shape must be 2 or 3 integers like '64, 64' or '10, 64, 64'; got {text!r}"
        ) from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(
            f"scan shape must be 2 or 3 positive integers (Rx, Ry) or (T, Rx, Ry); got {text!r}"
        )
    return shape


class OpenStemWidget(Container):
    """Dock widget "Open 4D-STEM file": file, scan shape, format info.

    Choosing a file shows what it holds (reading only metadata); the scan
    shape overrides what the file says (needed for flat frame stacks);
    "Open" adds the lazy virtual image to the viewer.

    Examples
    --------
    >>> widget = OpenStemWidget(viewer)  # doctest: +SKIP
    >>> viewer.window.add_dock_widget(widget)  # doctest: +SKIP
    """

    def __init__(self, napari_viewer=None):
        self._path = FileEdit(label="File", mode="r", filter=_FILE_FILTER)
        self._scan = LineEdit(label="Scan shape", value="")
        self._scan.tooltip = (
            "Rx, Ry (or T, Rx, Ry for a time series); leave empty to take it from the file"
        )
        self._detector = ComboBox(
            label="Virtual image",
            choices=[("annular dark field", "adf"), ("bright field", "bf")],
            value="adf",
        )
        self._info = Label(label="Format", value="choose a file")
        self._open = PushButton(text="Open")
        super().__init__(
            widgets=[self._path, self._scan, self._detector, self._info, self._open],
            labels=True,
        )
        self.viewer = napari_viewer
        self._dataset = None
        self._path.changed.connect(self._update)
        self._scan.changed.connect(self._update)
        self._open.changed.connect(self.open_file)
        self._open.enabled = False

    # -- state -----------------------------------------------------------
    def _inputs(self):
        path = Path(self._path.value)
        if not str(self._path.value) or not path.is_file():
            return None, None
        return path, parse_scan_shape(self._scan.value)

    def _update(self, *_):
        from .io import open_dataset

        self._dataset = None
        self._open.enabled = False
        try:
            path, scan = self._inputs()
            if path is None:
                self._info.value = "choose a file"
                return
            ds = open_dataset(path, scan_shape=scan)
        except (StemFileError, ValueError, OSError) as e:
            self._info.value = _wrap(str(e))
            return
        self._dataset = ds
        self._info.value = ds.summary()
        self._open.enabled = True

    def open_file(self, *_):
        """Add the dataset's virtual image to the viewer (returns the layers).

        Examples
        --------
        >>> layers = widget.open_file()  # doctest: +SKIP
        """
        from napari.layers import Layer

        from ._layers import dataset_to_layers

        if self._dataset is None:
            self._update()
        if self._dataset is None:
            return []
        added = []
        for data, kwargs, kind in dataset_to_layers(self._dataset, detector=self._detector.value):
            layer = Layer.create(data, kwargs, kind)
            if self.viewer is not None:
                self.viewer.add_layer(layer)
            added.append(layer)
        return added


def _wrap(text: str, width: int = 60) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())
