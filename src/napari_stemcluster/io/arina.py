"""Dectris Arina / EIGER NeXus master files (``*_master.h5``).

The master file holds the detector settings and, under ``/entry/data``,
links ``data_000001, data_000002, ...`` to datasets in separate data files
(``<name>_data_000001.h5``, ...). The frames form one flat stack (each data
file continues where the previous one stopped), compressed with
bitshuffle-LZ4 (``hdf5plugin`` provides the filter). The scan shape is not
stored: it comes from the user, or is taken as square when the frame count
is a perfect square.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ._guard import check_h5_dataset, check_linked_file, is_inside, safe_get
from ._h5util import as_str, check_filters, open_checked, scalar
from ._lazy import ConcatFrames, FrameCube, H5Array
from .dataset import Calibration, StemDataset, build_dataset, resolve_scan_shape
from .errors import StemFileError

_DATA_LINK = re.compile(r"^data_\d{6}$")
_SPECIFIC = "/entry/instrument/detector/detectorSpecific"
_DETECTOR = "/entry/instrument/detector"

#: Scalar settings copied into ``StemDataset.metadata``.
_SETTINGS = {
    f"{_DETECTOR}/description": "description",
    f"{_DETECTOR}/detector_number": "detector_number",
    f"{_DETECTOR}/count_time": "count_time",
    f"{_DETECTOR}/frame_time": "frame_time",
    f"{_DETECTOR}/x_pixel_size": "x_pixel_size",
    f"{_DETECTOR}/y_pixel_size": "y_pixel_size",
    f"{_DETECTOR}/saturation_value": "saturation_value",
    f"{_DETECTOR}/bit_depth_image": "bit_depth_image",
    f"{_DETECTOR}/flatfield_correction_applied": "flatfield_correction_applied",
    f"{_DETECTOR}/pixel_mask_applied": "pixel_mask_applied",
    f"{_DETECTOR}/countrate_correction_applied": "countrate_correction_applied",
    f"{_SPECIFIC}/nimages": "nimages",
    f"{_SPECIFIC}/ntrigger": "ntrigger",
    f"{_SPECIFIC}/photon_energy": "photon_energy",
    f"{_SPECIFIC}/data_collection_date": "data_collection_date",
    f"{_SPECIFIC}/software_version": "software_version",
    f"{_SPECIFIC}/compression": "compression",
}


def data_links(f) -> list[str]:
    """Names of the ``data_NNNNNN`` links under ``/entry/data``, in order.

    Examples
    --------
    >>> import h5py
    >>> f = h5py.File("mem.h5", "w", driver="core", backing_store=False)
    >>> f["entry/data/data_000002"] = h5py.ExternalLink("b.h5", "/entry/data/data")
    >>> f["entry/data/data_000001"] = h5py.ExternalLink("a.h5", "/entry/data/data")
    >>> data_links(f)
    ['data_000001', 'data_000002']
    """
    grp = safe_get(f, "/entry/data")
    if grp is None or not hasattr(grp, "keys"):
        return []
    return sorted(k for k in grp if _DATA_LINK.match(k))


def is_master(f) -> bool:
    """True if the open h5py file looks like an EIGER/Arina master file.

    Examples
    --------
    >>> import h5py
    >>> f = h5py.File("mem.h5", "w", driver="core", backing_store=False)
    >>> f["entry/data/data_000001"] = h5py.ExternalLink("a.h5", "/entry/data/data")
    >>> is_master(f)
    True
    """
    import h5py

    names = data_links(f)
    if not names:
        return False
    links = [f["/entry/data"].get(n, getlink=True) for n in names]
    return any(isinstance(lk, h5py.ExternalLink) for lk in links) or (
        safe_get(f, _SPECIFIC) is not None
    )


def _resolve_link_file(master: Path, filename: str) -> Path:
    p = Path(filename)
    if not p.is_absolute():
        return master.parent / p
    if is_inside(master.parent, p) and p.exists():
        return p
    if (master.parent / p.name).exists():
        return master.parent / p.name  # moved together with the master
    return p  # refused below: outside the master's folder


def _parts(f, master: Path) -> list[H5Array]:
    import h5py

    parts = []
    for name in data_links(f):
        link = f["/entry/data"].get(name, getlink=True)
        where = f"/entry/data/{name}"
        if isinstance(link, h5py.ExternalLink):
            target = _resolve_link_file(master, link.filename)
            if is_inside(master.parent, target) and not os.path.lexists(target):
                raise StemFileError(
                    f"{master}: {where} links to the data file {link.filename}, "
                    f"which was not found (looked for {target}); the data files "
                    "must stay beside the master file"
                )
            check_linked_file(master, target, where, "the data file")
            df = open_checked(str(target))
            ds = safe_get(df, link.path, str(target))
            if not hasattr(ds, "shape"):
                raise StemFileError(
                    f"{target}: no dataset {link.path} (linked from {master} {where})"
                )
            path, dname = str(target), ds.name
        else:
            ds = safe_get(f, where, str(master))
            if not hasattr(ds, "shape"):
                raise StemFileError(f"{master}: {where} is not a dataset of frames")
            path, dname = str(master), ds.name
        if ds.ndim != 3 or ds.dtype.kind not in "uif":
            raise StemFileError(
                f"{path}: dataset {dname} has shape {ds.shape} and dtype "
                f"{ds.dtype}; expected a 3D stack of frames (N, Qx, Qy)"
            )
        check_filters(ds, path)
        parts.append(H5Array(path, dname, ds.shape, ds.dtype))
    if not parts:
        raise StemFileError(f"{master}: no data_NNNNNN links under /entry/data")
    first = parts[0]
    for p in parts[1:]:
        if p.shape[1:] != first.shape[1:] or p.dtype != first.dtype:
            raise StemFileError(
                f"{p.path}: frames {p.shape[1:]} {p.dtype} differ from "
                f"{first.path}: {first.shape[1:]} {first.dtype}"
            )
    return parts


def _small_array(f, path: str, frame_shape, dtype) -> np.ndarray | None:
    obj = safe_get(f, path)
    if obj is None or not hasattr(obj, "shape") or tuple(obj.shape) != tuple(frame_shape):
        return None
    if obj.dtype.kind not in "uifb":
        return None
    check_h5_dataset(obj, f.file.filename)
    return np.asarray(obj[()], dtype=dtype)


def open_arina(path: Path, scan_shape=None, *, dataset: str | None = None) -> StemDataset:
    """Open an Arina/EIGER master file and its data files lazily.

    Parameters
    ----------
    path : Path
        The ``*_master.h5`` file (its data files must be beside it).
    scan_shape : tuple of int, optional
        ``(Rx, Ry)`` or ``(T, Rx, Ry)``; default: square, if the frame count
        is a perfect square.
    dataset : str, optional
        Ignored (the frames are always ``/entry/data/data_*``).

    Returns
    -------
    StemDataset
        With ``flatfield`` and ``pixel_mask`` from the master file (apply
        them lazily with :meth:`StemDataset.corrected_cube`).

    Examples
    --------
    >>> ds = open_arina(path, scan_shape=(4, 4))  # doctest: +SKIP
    >>> ds.cube.shape  # doctest: +SKIP
    (4, 4, 192, 192)
    """
    master = Path(os.path.abspath(path))
    f = open_checked(str(master))
    parts = _parts(f, master)
    frames = parts[0] if len(parts) == 1 else ConcatFrames(parts)
    n = frames.shape[0]
    notes: list[str] = []
    shape = resolve_scan_shape(
        n, scan_shape, where=f"{master} (/entry/data, {n} frames)", notes=notes
    )
    meta = {}
    for key, name in _SETTINGS.items():
        obj = safe_get(f, key)
        if obj is not None and hasattr(obj, "shape") and obj.shape == ():
            v = scalar(obj[()])
            meta[name] = v if isinstance(v, (int, float, str, bool)) else as_str(v)
    meta["data_files"] = sorted({p.path for p in parts})
    frame_shape = frames.shape[1:]
    flatfield = _small_array(f, f"{_SPECIFIC}/flatfield", frame_shape, np.float32)
    pixel_mask = _small_array(f, f"{_SPECIFIC}/pixel_mask", frame_shape, np.uint32)
    if pixel_mask is None:
        pixel_mask = _small_array(f, f"{_DETECTOR}/pixel_mask", frame_shape, np.uint32)
    links = data_links(f)
    return build_dataset(
        FrameCube(frames, shape),
        path=master,
        dataset="/entry/data/" + (links[0] if len(links) == 1 else "data_*"),
        format="arina",
        calibration=Calibration(),
        flatfield=flatfield,
        pixel_mask=pixel_mask,
        notes=notes,
        metadata=meta,
    )
