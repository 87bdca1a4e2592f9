"""napari reader of 4D/5D-STEM files and results files, and the open widget."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton

from .io.errors import StemFileError

logger = logging.getLogger(__name__)

#: Extensions whose files get a reader even when they cannot be opened, so
#: that napari shows the reason (truncated file, missing data file, ...).
_OUR_SUFFIXES = {".h5", ".hdf5", ".hdf", ".emd", ".nxs", ".mib", ".hdr", ".npy"}
_FILE_FILTER = "4D-STEM files (*.h5 *.hdf5 *.hdf *.emd *.nxs *.mib *.hdr *.npy)"


_ARINA_DATA = re.compile(r"^(?P<prefix>.+)_data_\d{6}\.h5$")
#: Phrases of reader messages that speak the Python API, and their GUI form.
_SCAN_SHAPE_HINT = (
    "enter the scan shape as 'rows, columns' (or 'time steps, rows, columns') in the "
    "Scan shape field of the Open 4D-STEM file widget (Plugins > STEM cluster)"
)


def arina_master(path) -> Path | None:
    """The master file of an Arina/EIGER data file (``X_data_000001.h5`` -> ``X_master.h5``).

    Examples
    --------
    >>> arina_master("/scans/test_00_data_000001.h5").name
    'test_00_master.h5'
    >>> arina_master("scan.h5") is None
    True
    """
    m = _ARINA_DATA.match(Path(path).name)
    return None if m is None else Path(path).with_name(f"{m['prefix']}_master.h5")


def gui_message(message: str) -> str:
    """A reader message in the terms of the napari interface rather than the API.

    Examples
    --------
    >>> gui_message("f.mib: 8 frames; pass scan_shape=(Rx, Ry), e.g. open_dataset(path)")
    "f.mib: 8 frames; enter the scan shape as 'rows, columns' (or 'time steps, rows, columns') in the Scan shape field of the Open 4D-STEM file widget (Plugins > STEM cluster)"
    """  # noqa: E501
    m = re.search(r"[;,]?\s*(pass scan_shape=|give the scan shape:)", message)
    if m is None:
        return message
    return message[: m.start()] + "; " + _SCAN_SHAPE_HINT


def _kind(path: str) -> str | None:
    """detect_format, but "broken" for unreadable files with our extensions."""
    from .io import detect_format

    if arina_master(path) is not None:
        return "arina-data"
    try:
        kind = detect_format(path)
    except Exception:
        return "broken" if Path(path).suffix.lower() in _OUR_SUFFIXES else None
    if kind == "npy-stack":
        return None  # any 3D .npy volume: not claimed (the open widget takes a scan shape)
    return kind  # an HDF5 frame stack asks for its scan shape when read


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
    from .io import detect_format, read_results
    from .widgets._warmup import start_warm_up

    start_warm_up()  # kernels and modules ready before the user docks the widgets

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[tuple] = []
    for p in paths:
        p = os.fspath(p)
        master = arina_master(p)
        if master is not None:
            _refuse(
                f"{p} is a data file of an Arina/EIGER acquisition: it holds frames "
                f"but not the scan and detector settings. Open its master file "
                f"{master.name} instead (File > Open)"
                + ("" if master.is_file() else f"; {master.name} is not in the same folder")
            )
        kind = detect_format(p)
        if kind == "results":
            result, info = read_results(p)
            ds = open_source(info["source"], np.shape(result.labels))
            if ds is None and info["source"]:
                ds = _source_beside(p, info, result)
            if ds is not None:  # the data too: patterns, averages and edits work again
                layers += _in_background(dataset_to_layers(ds), ds.nbytes)
            new = result_to_layers(
                result,
                info["calibration"],
                name=Path(p).stem,
                source=info["source"] if ds is None else str(ds.path),
                cube=None if ds is None else ds.cube,
            )
            kw = new[0][1]
            kw["metadata"]["stemcluster"]["results_path"] = str(Path(p).resolve())
            if ds is None and info["source"]:
                _offer_locate(p, info["source"])
            if info.get("orientation") is not None:
                from .io._analysis_orientation import orientation_to_layers

                kw["metadata"]["stemcluster"]["orientation"] = info["orientation"]
                new += orientation_to_layers(
                    result.labels, info["orientation"], info["calibration"], Path(p).stem
                )
            if info.get("bragg") is not None:  # Bragg disks, orientation and strain
                from .io._analysis_bragg import bragg_layer_data

                kw["metadata"]["stemcluster"]["bragg"] = info["bragg"]
                new += bragg_layer_data(
                    info["bragg"], result.labels, scale=kw["scale"], units=kw["units"]
                )
                from ._bragg_layers import bragg_extra_layers  # legend, colour bars

                new += bragg_extra_layers(
                    info["bragg"], result.labels.shape, scale=kw["scale"], units=kw["units"]
                )
            layers += new
            if info.get("tracking") is not None:
                from ._tracking_layers import linked_orientations, tracking_layer

                layers.append(
                    tracking_layer(
                        info["tracking"],
                        info["kinetics"],
                        result,
                        info["calibration"],
                        f"{Path(p).stem} tracked",
                        source=info["source"],
                        orientations=linked_orientations(info["tracking"], info),
                    )
                )
        else:  # the format just detected: open_dataset need not detect it again
            ds = _open_asking_scan_shape(p, kind)
            layers += _in_background(dataset_to_layers(ds), ds.nbytes)
    return layers


def _source_beside(results_path: str, info: dict, result):
    """The data file, moved beside its results file under the same name, or None.

    Taken only when it opens with the results' scan shape, detector shape
    and (when stored) data type.
    """
    candidate = Path(results_path).resolve().parent / Path(info["source"]).name
    if not candidate.is_file() or candidate == Path(info["source"]):
        return None
    ds = open_source(str(candidate), np.shape(result.labels))
    if ds is None:
        return None
    means = result.cluster_means[0] if result.is_time_series else result.cluster_means
    if np.ndim(means) == 3 and len(means) and tuple(np.shape(means)[1:]) != ds.detector_shape:
        return None
    dtype = info.get("source_dtype")
    if dtype is not None and np.dtype(dtype) != np.dtype(ds.cube.dtype):
        return None
    return ds


def ask_data_file(parent, results_name: str, source: str) -> str:
    """File dialog for the moved data file of a results file ("" when cancelled)."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(
        parent, f"Locate {Path(source).name}, the data file of {results_name}", "", _FILE_FILTER
    )
    return path


def _offer_locate(results_path: str, source: str) -> None:
    """Once the layers are shown: a notification offering to locate the moved data file.

    Non-blocking (napari's notification with a *Locate data file…* button);
    only in an interactive napari session.
    """
    if _no_viewer():
        return
    from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

    key = str(Path(results_path).resolve())
    name = Path(results_path).name

    def locate(*_):
        import napari

        from .widgets._export import attach_source

        viewer = napari.current_viewer()
        layer = _results_layer(viewer, key)
        if layer is None:
            return
        window = getattr(getattr(viewer, "window", None), "_qt_window", None)
        path = ask_data_file(window, name, source)
        if path:
            attach_source(viewer, layer, path)

    notification_manager.dispatch(
        Notification(
            f"{name}: data file {Path(source).name} not found. Locate it to see patterns "
            f"and cluster averages and to correct labels (saved at {source}; also later: "
            "Results tab, Locate data file…).",
            NotificationSeverity.WARNING,
            actions=[("Locate data file…", locate)],
        )
    )


def _results_layer(viewer, results_path: str):
    """The clusters layer read from ``results_path`` that still has no data file."""
    if viewer is None:
        return None
    for layer in viewer.layers:
        meta = (getattr(layer, "metadata", None) or {}).get("stemcluster")
        if (
            isinstance(meta, dict)
            and meta.get("kind") == "segmentation"
            and meta.get("results_path") == results_path
            and meta.get("cube") is None
        ):
            return layer
    return None


def _in_background(layers: list[tuple], nbytes: int) -> list[tuple]:
    """Large cubes: the virtual image is computed in the background, the window stays live."""
    from .widgets._background import wrap_if_large

    out = []
    for data, kwargs, kind in layers:
        wrapped = wrap_if_large(
            data, nbytes, kwargs.get("name", "virtual image"), kwargs.get("metadata")
        )
        if wrapped is not data:
            # napari would compute the whole image to find them
            kwargs = {**kwargs, "contrast_limits": (0.0, 1.0)}
            if kwargs.get("visible", True) and _in_a_viewer():
                # shown a turn after napari adds it: its first paint (shader
                # compilation) is then not part of the opening's pause
                kwargs["visible"] = False
                wrapped.reveal_later()
        out.append((wrapped, kwargs, kind))
    return out


def _in_a_viewer() -> bool:
    """Whether this runs in the GUI thread of a napari session (a viewer exists)."""
    import threading

    try:
        from napari import Viewer
        from qtpy.QtWidgets import QApplication
    except Exception:  # no napari or no Qt binding
        return False
    return (
        QApplication.instance() is not None
        and threading.current_thread() is threading.main_thread()
        and bool(Viewer._instances)
    )


def _refuse(message: str):
    """Show a reader's reason in napari (not only in a traceback) and raise."""
    try:
        from napari.utils.notifications import show_error

        show_error(message)
    except Exception:  # no napari: the exception says it
        pass
    raise StemFileError(message)


def _open_asking_scan_shape(path: str, kind: str):
    """Open a data file; a flat frame stack asks for its scan shape in a dialog."""
    from .io import open_dataset

    try:
        return open_dataset(path, format=kind)
    except StemFileError as exc:
        if "scan_shape" not in str(exc):
            raise
        first = exc
    shape = ask_scan_shape(path, gui_message(str(first)))
    if shape is None:
        _refuse(gui_message(str(first)))
    try:
        return open_dataset(path, format=kind, scan_shape=shape)
    except StemFileError as exc:
        _refuse(gui_message(str(exc)))


def _ask_scan_shape_dialog(path: str, message: str) -> tuple[int, ...] | None:
    """Ask for the scan shape of a flat frame stack (None when cancelled)."""
    from qtpy.QtWidgets import QApplication, QInputDialog

    # Only in an interactive napari session: a script or test that calls the
    # reader with a Qt application but no viewer must not block on a dialog.
    if QApplication.instance() is None or _no_viewer():
        return None
    frames = re.search(r"(\d+) frames", message)
    n = int(frames.group(1)) if frames else 0
    guess = _square_guess(n)
    while True:
        text, ok = QInputDialog.getText(
            None,
            "Scan shape",
            f"{Path(path).name} holds {n or 'its'} frames without a scan shape.\n"
            "Scan shape (rows, columns) or (time steps, rows, columns):",
            text=guess,
        )
        if not ok:
            return None
        try:
            shape = parse_scan_shape(text)
        except ValueError as e:
            message = str(e)
            continue
        if shape is not None and (not n or np.prod(shape) == n or n % np.prod(shape) == 0):
            return shape


def _no_viewer() -> bool:
    try:
        import napari

        return napari.current_viewer() is None
    except Exception:  # napari missing or broken: nobody to ask
        return True


def _square_guess(n: int) -> str:
    """The most square ``rows, columns`` factorisation of ``n`` frames ("" for none).

    Examples
    --------
    >>> _square_guess(8), _square_guess(16), _square_guess(0)
    ('2, 4', '4, 4', '')
    """
    if n <= 0:
        return ""
    rows = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return f"{rows}, {n // rows}"


#: Called as ``ask_scan_shape(path, message)`` for a flat frame stack; returns
#: the scan shape or None. A dialog in napari; replaceable (scripts, tests).
ask_scan_shape = _ask_scan_shape_dialog


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
            self._info.value = _wrap(
                gui_message(str(e)).replace(
                    " of the Open 4D-STEM file widget (Plugins > STEM cluster)", " above"
                )
            )
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
