"""Generic HDF5 files holding a 4D, 5D (or, with a scan shape, 3D) dataset."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from ._guard import real_value, safe_get, text_value
from ._h5util import check_filters, numeric_datasets, open_checked
from ._lazy import H5Array
from .dataset import (
    SCAN_SHAPE_HINT,
    Calibration,
    StemDataset,
    apply_scan_shape,
    build_dataset,
)
from .errors import StemFileError

logger = logging.getLogger(__name__)

#: Attribute names (case-insensitive) read as calibration from the dataset
#: or its parent group.
_CAL_ATTRS = {
    "r_pixel_size": "r_pixel_size",
    "r_units": "r_units",
    "r_pixel_units": "r_units",
    "q_pixel_size": "q_pixel_size",
    "q_units": "q_units",
    "q_pixel_units": "q_units",
    "t_step": "t_step",
    "t_units": "t_units",
}


def _nbytes(c) -> int:
    return math.prod(c[1]) * c[2].itemsize


def candidates(f) -> tuple[list, list]:
    """4D/5D datasets and 3D frame stacks in an open file, largest first.

    Examples
    --------
    >>> import h5py, numpy as np
    >>> f = h5py.File("mem.h5", "w", driver="core", backing_store=False)
    >>> f["a"] = np.zeros((2, 2, 4, 4)); f["b"] = np.zeros((3, 3, 4, 4))
    >>> f["stack"] = np.zeros((9, 4, 4))
    >>> cubes, stacks = candidates(f)
    >>> [c[0] for c in cubes], [s[0] for s in stacks]
    (['/b', '/a'], ['/stack'])
    """
    found = [c for c in numeric_datasets(f) if 0 not in c[1]]
    cubes = sorted((c for c in found if len(c[1]) in (4, 5)), key=lambda c: -_nbytes(c))
    stacks = sorted((c for c in found if len(c[1]) == 3), key=lambda c: -_nbytes(c))
    return cubes, stacks


def _calibration(ds) -> Calibration:
    cal = {}
    for obj in (ds.parent, ds):
        for key in list(obj.attrs)[:256]:
            field = _CAL_ATTRS.get(key.lower())
            if field is None:
                continue
            value = obj.attrs[key]
            numeric = field in ("r_pixel_size", "q_pixel_size", "t_step")
            v = real_value(value) if numeric else text_value(value)
            if v is not None:
                cal[field] = v
    return Calibration(**cal)


def open_hdf5(path: Path, scan_shape=None, *, dataset: str | None = None) -> StemDataset:
    """Open the 4D/5D cube of any HDF5 file lazily.

    With several 4D/5D datasets the largest is taken (a note in the returned
    dataset says which). A 3D stack of frames ``(N, Qx, Qy)`` is opened only
    with a ``scan_shape``; 2D images are not 4D-STEM data.

    Parameters
    ----------
    path : Path
        The file.
    scan_shape : tuple of int, optional
        ``(Rx, Ry)`` or ``(T, Rx, Ry)``; required for 3D stacks, optional
        (reinterpreting the scan axes) otherwise.
    dataset : str, optional
        Internal path of the dataset to open.

    Returns
    -------
    StemDataset

    Examples
    --------
    >>> ds = open_hdf5(path, dataset="/entry/cube")  # doctest: +SKIP
    """
    spath = str(path)
    f = open_checked(spath)
    notes: list[str] = []
    if dataset is not None:
        name = "/" + dataset.strip("/")
        obj = safe_get(f, name, spath)
        if obj is None:
            raise StemFileError(
                f"{path}: no dataset {dataset}; expected the internal path of a "
                "4D/5D dataset (`stemcluster info FILE` lists what the file holds)"
            )
        if not hasattr(obj, "shape"):
            raise StemFileError(f"{path}: {dataset} is a group, expected a dataset")
        chosen = (name, tuple(obj.shape), obj.dtype)
        if len(chosen[1]) not in (3, 4, 5) or chosen[2].kind not in "uif":
            raise StemFileError(
                f"{path}: dataset {name} has shape {chosen[1]} and dtype "
                f"{chosen[2]}; expected a numeric 4D (Rx, Ry, Qx, Qy), 5D "
                "(T, Rx, Ry, Qx, Qy) or, with a scan shape, 3D (N, Qx, Qy) dataset"
            )
    else:
        cubes, stacks = candidates(f)
        if cubes:
            chosen = cubes[0]
            if len(cubes) > 1:
                note = (
                    f"{len(cubes)} 4D/5D datasets in the file; using the largest, "
                    f"{chosen[0]} {chosen[1]} (others: "
                    f"{', '.join(c[0] for c in cubes[1:])}); pass dataset= to choose"
                )
                notes.append(note)
                logger.info("%s: %s", path, note)
        elif stacks:
            chosen = stacks[0]
            if scan_shape is None:
                raise StemFileError(
                    f"{path}: dataset {chosen[0]} is a 3D stack of {chosen[1][0]} "
                    f"frames of {chosen[1][1]}x{chosen[1][2]} without a scan shape"
                    + SCAN_SHAPE_HINT
                )
            if len(stacks) > 1:
                notes.append(
                    f"{len(stacks)} 3D stacks in the file; using the largest, "
                    f"{chosen[0]}; pass dataset= to choose"
                )
        else:
            raise StemFileError(
                f"{path}: no numeric 4D (Rx, Ry, Qx, Qy) or 5D (T, Rx, Ry, Qx, Qy) "
                "dataset in this HDF5 file (nor a 3D frame stack)"
            )
    ds = safe_get(f, chosen[0], spath)
    check_filters(ds, spath)
    where = f"{path} ({chosen[0]})"
    raw = H5Array(spath, chosen[0], ds.shape, ds.dtype)
    source = apply_scan_shape(raw, scan_shape, where=where, notes=notes)
    return build_dataset(
        source,
        path=Path(spath),
        dataset=chosen[0],
        format="hdf5",
        file_chunks=ds.chunks if source is raw else None,
        calibration=_calibration(ds),
        notes=notes,
    )
