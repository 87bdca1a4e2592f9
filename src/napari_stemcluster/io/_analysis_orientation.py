"""Orientation and phase of the clusters in the results file.

Layout (a group beside ``/clusters``; its rows follow ``/clusters``)::

    /orientation/                  attrs: stemcluster_group = "orientation",
                                   version, params (JSON)
        rotation         float64 (N, 3, 3)  crystal -> lab
        zone_axis        int32   (N, 3)
        inplane_deg      float64 (N,)
        score            float64 (N,)
        confidence       float64 (N,)
        phase            int32   (N,)       index into phases/, -1 not indexed
        phase_confidence float64 (N,)
        n_disks          int32   (N,)
        indexed          bool    (N,)
        center           float64 (N, 2)     direct beam (qx, qy) the templates were
                                            matched around; absent in files of older
                                            versions: read as the detector centre
        offsets          int64   (T + 1,)
        phases/<k>/                attrs: name, spacegroup, source; dataset cif (text)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..core.orientation import ORIENTATION_DTYPE, OrientationResult
from .errors import StemFileError

GROUP = "orientation"
VERSION = 1

__all__ = [
    "orientation_to_layers",
    "read_orientation",
    "save_orientation",
    "write_orientation",
]


def write_orientation(f, orientation: OrientationResult) -> None:
    """Write (or replace) the ``/orientation`` group of an open HDF5 file.

    Parameters
    ----------
    f : h5py.File
        Open for writing.
    orientation : OrientationResult

    Examples
    --------
    >>> write_orientation(h5file, result)  # doctest: +SKIP
    """
    import h5py

    if GROUP in f:
        del f[GROUP]
    g = f.create_group(GROUP)
    g.attrs["stemcluster_group"] = GROUP
    g.attrs["version"] = np.int64(VERSION)
    g.attrs["params"] = json.dumps(orientation.params, sort_keys=True, default=str)
    rec = np.asarray(orientation.records)
    if rec.dtype != ORIENTATION_DTYPE:
        raise TypeError("orientation.records must have ORIENTATION_DTYPE")
    for name in ORIENTATION_DTYPE.names:
        g.create_dataset(name, data=rec[name])
    g.create_dataset("offsets", data=np.asarray(orientation.offsets, np.int64))
    phases = g.create_group("phases")
    for k, st in enumerate(orientation.structures):
        p = phases.create_group(str(k))
        p.attrs["name"] = st.name
        p.attrs["spacegroup"] = st.spacegroup
        p.attrs["source"] = st.source
        p.create_dataset("cif", data=st.cif_text, dtype=h5py.string_dtype())


def read_orientation(f) -> OrientationResult | None:
    """The ``/orientation`` group of an open results file, or None if absent.

    Examples
    --------
    >>> read_orientation(h5file)  # doctest: +SKIP
    """
    from ..core.crystal import structure_from_cif_text

    if GROUP not in f:
        return None
    g = f[GROUP]
    where = f"{f.filename}: /{GROUP}"
    version = int(g.attrs.get("version", 0))
    if version > VERSION:
        raise StemFileError(
            f"{where}: version {version} is newer than this software reads ({VERSION})"
        )
    try:
        n = g["score"].shape[0]
        rec = np.zeros(n, ORIENTATION_DTYPE)
        for name in ORIENTATION_DTYPE.names:
            if name == "center" and name not in g:
                rec[name] = _detector_centre(f)  # written before the beam was found
                continue
            rec[name] = g[name][()]
        offsets = g["offsets"][()]
        structures = []
        for k in sorted(g["phases"], key=int):
            p = g["phases"][k]
            text = p["cif"][()]
            text = text.decode() if isinstance(text, bytes) else str(text)
            src = p.attrs.get("source", "")
            src = src.decode() if isinstance(src, bytes) else str(src)
            structures.append(structure_from_cif_text(text, source=src))
    except (KeyError, ValueError, OSError) as e:
        raise StemFileError(
            f"{where}: incomplete or unreadable orientation results ({e})"
        ) from None
    params = g.attrs.get("params", "{}")
    params = json.loads(params.decode() if isinstance(params, bytes) else params)
    return OrientationResult(records=rec, offsets=offsets, structures=structures, params=params)


def _detector_centre(f):
    """The detector centre of a results file's cluster averages (NaN if unknown)."""
    means = f.get("clusters/cluster_means")
    if means is None or means.ndim < 2:
        return np.nan
    qx, qy = means.shape[-2:]
    return ((qx - 1) / 2.0, (qy - 1) / 2.0)


def save_orientation(path: str | os.PathLike, orientation: OrientationResult) -> Path:
    """Add the orientation results to an existing results file, atomically.

    The file is copied to a temporary file in the same directory, the group
    written there, and the copy renamed over the original.

    Parameters
    ----------
    path : str or Path
        A results file written by :func:`napari_stemcluster.io.write_results`.
    orientation : OrientationResult
        Its rows must match the file's clusters.

    Returns
    -------
    Path

    Examples
    --------
    >>> save_orientation("segmentation.h5", result)  # doctest: +SKIP
    PosixPath('segmentation.h5')
    """
    import h5py

    from ._lazy import close_cached_handles
    from .output import atomic_output
    from .results import is_results_file

    path = Path(os.path.abspath(path))
    if not is_results_file(path):
        raise StemFileError(f"{path}: not a napari-stemcluster results file")
    with h5py.File(path, "r") as f:
        n_rows = int(f["clusters/offsets"][-1])
    if len(orientation.records) != n_rows:
        raise ValueError(
            f"{path}: has {n_rows} clusters but the orientation results have "
            f"{len(orientation.records)} rows"
        )
    with atomic_output(path) as tmp:  # a changed copy, renamed over the file
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            write_orientation(f, orientation)
        close_cached_handles(path)  # readers must reopen the new file
    return path


def orientation_to_layers(
    labels, orientation: OrientationResult, calibration=None, name="clusters"
):
    """napari layer tuples of the orientation maps (no napari import).

    IPF colours along ``z`` (beam: the out-of-plane orientation), ``x`` and
    ``y`` as RGB images, the phase as labels, the in-plane angle (degrees)
    and the match score; a leading time axis for 5D labels.

    Parameters
    ----------
    labels : ndarray of int, shape (Rx, Ry) or (T, Rx, Ry)
    orientation : OrientationResult
    calibration : Calibration or dict, optional
    name : str
        Prefix of the layer names.

    Returns
    -------
    list of (data, kwargs, layer_type)

    Examples
    --------
    >>> layers = orientation_to_layers(labels, result)  # doctest: +SKIP
    >>> [t[0].shape for t in layers][:1]  # doctest: +SKIP
    [(64, 64, 3)]
    """
    from .dataset import Calibration

    lab = np.asarray(labels)
    steps = [lab] if lab.ndim == 2 else list(lab)
    maps = [orientation.maps(s, t) for t, s in enumerate(steps)]

    def stack(key):
        arrs = [m[key] for m in maps]
        return arrs[0] if lab.ndim == 2 else np.stack(arrs)

    cal = Calibration.from_dict(calibration)
    scale, units = cal.real_space_scale(lab.ndim)
    meta = {"stemcluster": {"kind": "orientation_map"}}
    common = {"scale": scale, "units": units, "metadata": meta}
    out = []
    for axis, visible in (("z", True), ("x", False), ("y", False)):
        out.append(
            (
                stack(f"ipf_{axis}"),
                {"name": f"{name} IPF {axis}", "rgb": True, "visible": visible, **common},
                "image",
            )
        )
    phase = stack("phase").astype(np.int32) + 1  # 0: not indexed / background
    names = ["not indexed"] + [st.name for st in orientation.structures]
    features = {"phase": names}  # row k is phase label k (napari's "Index")
    out.append(
        (
            phase,
            {"name": f"{name} phase", "visible": False, "features": features, **common},
            "labels",
        )
    )
    out.append(
        (
            stack("inplane_deg"),
            {
                "name": f"{name} in-plane angle",
                "colormap": "twilight",  # cyclic, like the angle
                "contrast_limits": (0.0, 360.0),
                "visible": False,
                **common,
            },
            "image",
        )
    )
    score = stack("score")
    out.append(
        (
            score,
            {
                "name": f"{name} orientation score",
                "colormap": "magma",
                "contrast_limits": (0.0, 1.0),
                "visible": False,
                **common,
            },
            "image",
        )
    )
    return out
