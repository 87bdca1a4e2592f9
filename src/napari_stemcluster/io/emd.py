"""py4DSTEM / emdfile EMD 1.0 files (``.h5``, ``.hdf5``, ``.emd``).

An EMD 1.0 file carries ``emd_group_type = "file"`` on its root; each root
group (``emd_group_type = "root"``) holds array groups
(``emd_group_type = "array"``) with a ``data`` dataset and dim vectors
``dim0, dim1, ...``. py4DSTEM writes a 4D-STEM cube as an array group of
``python_class = "DataCube"`` and its calibration under the root's
``metadatabundle/calibration`` (``R_pixel_size``, ``R_pixel_units``,
``Q_pixel_size``, ``Q_pixel_units``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._guard import real_value, safe_get, text_value
from ._h5util import as_str, check_filters, open_checked, scalar
from ._lazy import H5Array
from .dataset import Calibration, StemDataset, apply_scan_shape, build_dataset
from .errors import StemFileError


def is_emd(f) -> bool:
    """True if the open h5py file is an EMD 1.0 file.

    Examples
    --------
    >>> import h5py
    >>> f = h5py.File("mem.h5", "w", driver="core", backing_store=False)
    >>> f.attrs["emd_group_type"] = "file"
    >>> is_emd(f)
    True
    """
    return as_str(f.attrs.get("emd_group_type", b"")) == "file"


def find_datacubes(f) -> list[dict]:
    """Every 4D/5D numeric EMD array in an open file, DataCubes first.

    Each entry: ``{"group", "data", "shape", "dtype", "root", "datacube"}``.

    Examples
    --------
    >>> import h5py, numpy as np
    >>> f = h5py.File("mem.h5", "w", driver="core", backing_store=False)
    >>> f.create_group("root").attrs["emd_group_type"] = "root"
    >>> g = f.create_group("root/cube")
    >>> g.attrs["emd_group_type"] = "array"
    >>> g["data"] = np.zeros((2, 2, 3, 3), np.uint16)
    >>> [c["data"] for c in find_datacubes(f)]
    ['/root/cube/data']
    """
    import h5py

    found = []
    for root_name in f:
        root = safe_get(f, root_name)
        if not isinstance(root, h5py.Group):
            continue
        if as_str(root.attrs.get("emd_group_type", b"")) != "root":
            continue

        def visit(name, obj, root_name=root_name):
            if not isinstance(obj, h5py.Group):
                return
            if as_str(obj.attrs.get("emd_group_type", b"")) != "array":
                return
            data = safe_get(f, f"{obj.name}/data")
            if not isinstance(data, h5py.Dataset):
                return
            if data.ndim in (4, 5) and data.dtype.kind in "uif":
                found.append(
                    {
                        "group": obj.name,
                        "data": data.name,
                        "shape": tuple(data.shape),
                        "dtype": data.dtype,
                        "root": "/" + root_name,
                        "datacube": as_str(obj.attrs.get("python_class", b"")) == "DataCube",
                    }
                )

        root.visititems(visit)
    found.sort(key=lambda c: (not c["datacube"], -math.prod(c["shape"])))
    return found


def _calibration_group(f, cand):
    import h5py

    for base in (cand["root"], cand["group"]):
        g = safe_get(f, f"{base}/metadatabundle/calibration")
        if isinstance(g, h5py.Group):
            return g
    return None


def read_calibration(f, cand) -> tuple[Calibration, dict]:
    """Calibration of an EMD array: the root's calibration, else its dim vectors.

    Returns the :class:`Calibration` and the calibration group's values.

    Examples
    --------
    >>> import h5py, numpy as np
    >>> f = h5py.File("mem.h5", "w", driver="core", backing_store=False)
    >>> f.create_group("root").attrs["emd_group_type"] = "root"
    >>> g = f.create_group("root/cube")
    >>> g.attrs["emd_group_type"] = "array"
    >>> g["data"] = np.zeros((2, 2, 3, 3), np.uint16)
    >>> g["dim0"] = np.array([0.0, 0.5]); g["dim0"].attrs["units"] = "nm"
    >>> g["dim1"] = np.array([0.0, 0.5]); g["dim1"].attrs["units"] = "nm"
    >>> cal, _ = read_calibration(f, find_datacubes(f)[0])
    >>> cal.r_pixel_size, cal.r_units
    (0.5, 'nm')
    """
    import h5py

    meta = {}
    g = _calibration_group(f, cand)
    values = {}
    if g is not None:
        for key in list(g)[:256]:
            obj = g.get(key, getlink=True)
            if not isinstance(obj, h5py.HardLink):
                continue  # calibration values are small local scalars
            obj = g[key]
            if isinstance(obj, h5py.Dataset) and obj.shape == () and obj.dtype.kind in "iufbSUO":
                v = scalar(obj[()])
                if isinstance(v, (int, float, str, bool)):
                    values[key] = v
        meta = {k: v for k, v in values.items() if not k.startswith("_")}
    cal = {}
    for axis, key in (("r", "R"), ("q", "Q")):
        size = real_value(values.get(f"{key}_pixel_size"))
        if size is not None:
            cal[f"{axis}_pixel_size"] = size
            cal[f"{axis}_units"] = text_value(values.get(f"{key}_pixel_units")) or "pixel"
    # fall back to the dim vectors of the array (first two values: origin, step)
    ndim = len(cand["shape"])
    dims = {}
    for i in range(ndim):
        d = safe_get(f, f"{cand['group']}/dim{i}")
        if (
            isinstance(d, h5py.Dataset)
            and d.ndim == 1
            and d.shape[0] >= 2
            and d.dtype.kind in "iuf"
        ):
            v = np.asarray(d[:2], np.float64)
            step = real_value(v[1] - v[0])
            if step is not None:
                dims[i] = (step, text_value(d.attrs.get("units", b"pixel")) or "pixel")
    nscan = ndim - 2
    if "r_pixel_size" not in cal and nscan - 1 in dims:
        cal["r_pixel_size"], cal["r_units"] = dims[nscan - 1]
    if "q_pixel_size" not in cal and ndim - 1 in dims:
        cal["q_pixel_size"], cal["q_units"] = dims[ndim - 1]
    if ndim == 5 and 0 in dims:
        cal["t_step"], cal["t_units"] = dims[0]
    return Calibration(**cal), meta


def open_emd(path: Path, scan_shape=None, *, dataset: str | None = None) -> StemDataset:
    """Open the 4D/5D cube of an EMD 1.0 file lazily.

    Parameters
    ----------
    path : Path
        The file.
    scan_shape : tuple of int, optional
        Reinterpret the scan axes (same number of patterns; or a 2-value
        shape dividing it, for a time series).
    dataset : str, optional
        Internal path of the array group or its ``data`` dataset, when the
        file holds several cubes (default: the largest DataCube).

    Returns
    -------
    StemDataset

    Examples
    --------
    >>> ds = open_emd(path)  # doctest: +SKIP
    >>> ds.cube.shape  # doctest: +SKIP
    (2, 3, 4, 5)
    """
    spath = str(path)
    f = open_checked(spath)
    cands = find_datacubes(f)
    notes: list[str] = []
    if dataset is not None:
        want = "/" + dataset.strip("/")
        match = [c for c in cands if want in (c["group"], c["data"])]
        if not match:
            raise StemFileError(
                f"{path}: no 4D/5D EMD array at {dataset}; found "
                f"{[c['data'] for c in cands] or 'none'}"
            )
        cand = match[0]
    elif not cands:
        raise StemFileError(
            f"{path}: EMD 1.0 file without a 4D (Rx, Ry, Qx, Qy) or 5D (T, Rx, Ry, Qx, Qy) array"
        )
    else:
        cand = cands[0]
        if len(cands) > 1:
            notes.append(
                f"{len(cands)} cubes in the file; using {cand['data']} "
                f"{cand['shape']} (others: {', '.join(c['data'] for c in cands[1:])}); "
                "pass dataset= to choose"
            )
    ds = safe_get(f, cand["data"])
    check_filters(ds, spath)
    cal, meta = read_calibration(f, cand)
    raw = H5Array(spath, cand["data"], ds.shape, ds.dtype)
    source = apply_scan_shape(raw, scan_shape, where=f"{path} ({cand['data']})", notes=notes)
    meta["emd_group"] = cand["group"]
    return build_dataset(
        source,
        path=Path(spath),
        dataset=cand["data"],
        format="emd",
        file_chunks=ds.chunks if source is raw else None,
        calibration=cal,
        notes=notes,
        metadata=meta,
    )
