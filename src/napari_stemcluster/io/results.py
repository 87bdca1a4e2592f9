"""Save a segmentation to one HDF5 file, and read it back.

Layout (``T`` time steps for a 5D result; 4D results have no time axis)::

    /                               attrs: stemcluster_file = "segmentation",
                                    stemcluster_file_version, software_version,
                                    source, created, params (JSON),
                                    calibration (JSON), time_series,
                                    + EMD 1.0 file attrs (emd_group_type, ...)
    /labels             int32       (T, Rx, Ry) or (Rx, Ry); 0 = unassigned
    /mean_similarity    float32     same shape
    /real_mask          bool        same shape
    /similarity         float32     labels.shape + (8,)
    /clusters/                      one row per cluster, all time steps
        offsets         int64 (T + 1,)   rows offsets[t]:offsets[t+1] are step t
        time            int32 (N,)       time step of the row (0 for 4D)
        label           int32 (N,)       label value in /labels[t]
        size            int64 (N,)
        seed            int64 (N, 2)     (rx, ry)
        mean_similarity float32 (N,)
        cluster_means   float32 (N, 1, Qx, Qy)   hard link to the EMD data below
    /cluster_means_root/            EMD 1.0 root (py4DSTEM reads it)
        cluster_means/              DataCube (N, 1, Qx, Qy) + dim0..dim3
        metadatabundle/calibration  R/Q pixel sizes and units

The cluster-averaged patterns of every time step are concatenated along the
first axis (row ``offsets[t] + i`` is label ``i + 1`` of time step ``t``) and
stored once, as a py4DSTEM DataCube of ``N`` scan positions by 1, so that
``py4DSTEM.read(path)`` gives a DataCube of the cluster patterns ready for
orientation mapping. Maps are compressed (gzip by default).
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from pathlib import Path

import numpy as np

from ..core.result import ClusterTable, SegmentationResult
from .dataset import Calibration
from .errors import StemFileError

FILE_KIND = "segmentation"
FILE_VERSION = 1
EMD_ROOT = "cluster_means_root"
EMD_ARRAY = "cluster_means"


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"parameter value of type {type(o).__name__} is not JSON-serialisable")


def is_results_file(f) -> bool:
    """True for a napari-stemcluster results file (path or open h5py file).

    Examples
    --------
    >>> is_results_file("missing.h5")
    False
    """
    import h5py

    if isinstance(f, (str, os.PathLike)):
        try:
            with h5py.File(f, "r") as fh:
                return is_results_file(fh)
        except (OSError, ValueError):
            return False
    value = f.attrs.get("stemcluster_file", b"")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value) == FILE_KIND


def _per_step(result: SegmentationResult):
    labels = np.asarray(result.labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"result.labels must be (Rx, Ry) or (T, Rx, Ry); got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"result.labels must hold integers; got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise ValueError("result.labels must be within 0..2**31-1")
    ts = labels.ndim == 3
    means = list(result.cluster_means) if ts else [result.cluster_means]
    tables = list(result.clusters) if ts else [result.clusters]
    n_t = labels.shape[0] if ts else 1
    if len(means) != n_t or len(tables) != n_t:
        raise ValueError(
            f"a 5D result needs one cluster_means and one ClusterTable per time "
            f"step ({n_t}); got {len(means)} and {len(tables)}"
        )
    qshape = None
    for t, (m, tab) in enumerate(zip(means, tables, strict=True)):
        m = np.asarray(m)
        if m.ndim != 3 or m.shape[0] != len(tab):
            raise ValueError(
                f"time step {t}: cluster_means must be (N, Qx, Qy) with N = "
                f"{len(tab)} clusters; got shape {m.shape}"
            )
        if qshape is None:
            qshape = m.shape[1:]
        elif m.shape[1:] != qshape:
            raise ValueError(f"time step {t}: patterns {m.shape[1:]} differ from {qshape}")
    for name in ("mean_similarity", "real_mask"):
        a = np.asarray(getattr(result, name))
        if a.shape != labels.shape:
            raise ValueError(f"result.{name} has shape {a.shape}; expected {labels.shape}")
    sim = np.asarray(result.similarity)
    if sim.shape != (*labels.shape, 8):
        raise ValueError(f"result.similarity has shape {sim.shape}; expected {(*labels.shape, 8)}")
    return labels, means, tables, qshape


def _put_str(group, name: str, value: str):
    import h5py

    ds = group.create_dataset(name, data=value, dtype=h5py.string_dtype())
    ds.attrs["type"] = "string"
    return ds


def _write_emd(f, means: np.ndarray, cal: Calibration, dsopts: dict):
    """The cluster cube as an EMD 1.0 / py4DSTEM DataCube (N, 1, Qx, Qy)."""
    import h5py

    root = f.create_group(EMD_ROOT)
    root.attrs["emd_group_type"] = "root"
    root.attrs["python_class"] = "Root"
    arr = root.create_group(EMD_ARRAY)
    arr.attrs["emd_group_type"] = "array"
    arr.attrs["python_class"] = "DataCube"
    opts = dsopts if means.size else {}
    data = arr.create_dataset("data", data=means, **opts)
    data.attrs["units"] = "pixel intensity"
    for i, (name, step, units) in enumerate(
        (
            ("Rx", 1.0, "pixels"),
            ("Ry", 1.0, "pixels"),
            ("Qx", cal.q_pixel_size, cal.q_units),
            ("Qy", cal.q_pixel_size, cal.q_units),
        )
    ):
        d = arr.create_dataset(f"dim{i}", data=np.array([0.0, step]))
        d.attrs["name"] = name
        d.attrs["units"] = units
    bundle = root.create_group("metadatabundle")
    bundle.attrs["emd_group_type"] = "metadatabundle"
    calg = bundle.create_group("calibration")
    calg.attrs["emd_group_type"] = "metadata"
    calg.attrs["python_class"] = "Calibration"
    flip = calg.create_dataset("QR_flip", data=False)
    flip.attrs["type"] = "bool"
    for key, value in (("Q_pixel_size", cal.q_pixel_size), ("R_pixel_size", 1.0)):
        d = calg.create_dataset(key, data=float(value))
        d.attrs["type"] = "number"
    _put_str(calg, "Q_pixel_units", cal.q_units)
    _put_str(calg, "R_pixel_units", "pixels")
    _put_str(calg, "_root_treepath", "")
    tp = calg.create_group("_target_paths")
    tp.attrs["length"] = np.int64(1)
    tp.attrs["type"] = "list_of_strings"
    tp.create_dataset("0", data=f"/{EMD_ARRAY}", dtype=h5py.string_dtype())
    return data


def write_results(
    path: str | os.PathLike,
    result: SegmentationResult,
    *,
    source: str | os.PathLike | None = None,
    calibration: Calibration | dict | None = None,
    overwrite: bool = False,
    compression: str | None = "gzip",
    orientation=None,
    bragg: dict | None = None,
    tracking=None,
    kinetics=None,
    source_dtype=None,
) -> Path:
    """Save a segmentation to one HDF5 file, atomically.

    The file is written to a temporary file in the same directory and then
    renamed over ``path``, so a crash or a cancelled write never leaves a
    partial file.

    Parameters
    ----------
    path : str or Path
        Output file (``.h5``).
    result : SegmentationResult
        What to save.
    source : str or Path, optional
        The 4D/5D-STEM file the result was computed from (recorded; never
        overwritten).
    calibration : Calibration or dict, optional
        Pixel sizes and units (recorded; Q calibration goes into the EMD
        cluster cube).
    overwrite : bool
        Replace an existing results file. Files holding 4D/5D-STEM data and
        the source file are never replaced.
    compression : {"gzip", "lz4", None}
        Compression of the maps and cluster patterns.
    orientation : OrientationResult, optional
        Orientation and phase of the clusters (the ``/orientation`` group).
    bragg : dict, optional
        Bragg disks, lattices and strain (``{"lattices", "strain",
        "params"}``), stored under ``/bragg``; see
        :mod:`napari_stemcluster.io._analysis_bragg` for the layout.
    tracking, kinetics : Tracking, Kinetics, optional
        Persistent grain ids, events and kinetics of a 5D result (from
        :mod:`napari_stemcluster.core.tracking`), stored in ``/tracking``
        (layout in :mod:`napari_stemcluster.io._analysis_tracking`).

    source_dtype : numpy dtype, optional
        Data type of the source cube, stored so that a moved data file can
        be recognised when the results are opened again.

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> write_results("segmentation.h5", result, source="scan.h5")  # doctest: +SKIP
    PosixPath('segmentation.h5')
    """
    import h5py

    from .. import __version__

    path = Path(os.path.abspath(path))
    labels, means, tables, qshape = _per_step(result)
    cal = Calibration.from_dict(calibration)
    from .output import check_output

    check_output(path, source=source, overwrite=overwrite)

    if compression == "gzip":
        dsopts = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    elif compression == "lz4":
        import hdf5plugin

        dsopts = dict(hdf5plugin.LZ4())
    elif compression is None:
        dsopts = {}
    else:
        raise ValueError(f"compression must be 'gzip', 'lz4' or None; got {compression!r}")

    ts = labels.ndim == 3
    counts = [len(t) for t in tables]
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    all_means = (
        np.concatenate([np.asarray(m, np.float32) for m in means])
        if counts
        else np.zeros((0, *qshape), np.float32)
    )
    cube = all_means[:, None, :, :]
    params_json = json.dumps(result.params or {}, default=_json_default, sort_keys=True)

    from .output import atomic_output

    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["emd_group_type"] = "file"
            f.attrs["version_major"] = np.int64(1)
            f.attrs["version_minor"] = np.int64(0)
            f.attrs["UUID"] = str(uuid.uuid4())
            f.attrs["authoring_program"] = "napari-stemcluster"
            f.attrs["authoring_user"] = ""
            f.attrs["stemcluster_file"] = FILE_KIND
            f.attrs["stemcluster_file_version"] = np.int64(FILE_VERSION)
            f.attrs["software_version"] = __version__
            f.attrs["source"] = "" if source is None else os.fspath(source)
            if source_dtype is not None:
                f.attrs["source_dtype"] = np.dtype(source_dtype).str
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
            f.attrs["params"] = params_json
            f.attrs["calibration"] = json.dumps(cal.as_dict())
            f.attrs["time_series"] = bool(ts)
            map_chunks = (1, *labels.shape[1:]) if ts else labels.shape
            opts = {**dsopts, "chunks": map_chunks} if labels.size else {}
            f.create_dataset("labels", data=labels.astype(np.int32), **opts)
            f.create_dataset(
                "mean_similarity", data=np.asarray(result.mean_similarity, np.float32), **opts
            )
            f.create_dataset("real_mask", data=np.asarray(result.real_mask, bool), **opts)
            sim_opts = {**opts, "chunks": (*map_chunks, 8)} if labels.size else {}
            f.create_dataset(
                "similarity", data=np.asarray(result.similarity, np.float32), **sim_opts
            )
            g = f.create_group("clusters")
            g.attrs["layout"] = (
                "rows offsets[t]:offsets[t+1] are the clusters of time step t; "
                "row offsets[t] + i is label i + 1"
            )
            g.create_dataset("offsets", data=offsets)
            g.create_dataset("time", data=np.repeat(np.arange(len(counts), dtype=np.int32), counts))
            g.create_dataset(
                "label",
                data=np.concatenate(
                    [np.arange(1, c + 1, dtype=np.int32) for c in counts] or [np.zeros(0, np.int32)]
                ),
            )
            for name, dtype, tail in (
                ("size", np.int64, ()),
                ("seed", np.int64, (2,)),
                ("mean_similarity", np.float32, ()),
            ):
                cols = [np.asarray(getattr(t, name), dtype).reshape(-1, *tail) for t in tables]
                g.create_dataset(
                    name, data=np.concatenate(cols) if cols else np.zeros((0, *tail), dtype)
                )
            data = _write_emd(f, cube, cal, dsopts)
            g["cluster_means"] = data  # hard link: stored once
            if orientation is not None:
                from ._analysis_orientation import write_orientation

                write_orientation(f, orientation)
            if bragg is not None:
                from ._analysis_bragg import write_bragg

                write_bragg(f, bragg, labels, dsopts)
            if tracking is not None:
                from ._analysis_tracking import write_tracking

                write_tracking(f, tracking, kinetics)
        from ._lazy import close_cached_handles

        close_cached_handles(path)
    return path


def read_results(path: str | os.PathLike) -> tuple[SegmentationResult, dict]:
    """Read a file written by :func:`write_results`.

    Returns
    -------
    result : SegmentationResult
        Arrays identical to those written (params come back from JSON, so
        tuples become lists).
    info : dict
        ``path``, ``source``, ``software_version``, ``created``,
        ``format_version`` and ``calibration`` (a dict, see
        :class:`~napari_stemcluster.io.Calibration`); ``tracking`` and
        ``kinetics`` when the file holds grain tracks (else None);
        ``orientation`` (an :class:`~napari_stemcluster.core.OrientationResult`,
        or None); ``bragg`` (the Bragg analysis dict, or None).

    Examples
    --------
    >>> result, info = read_results("segmentation.h5")  # doctest: +SKIP
    >>> info["source"]  # doctest: +SKIP
    'scan.h5'
    """
    import h5py

    from . import _results_check as check
    from ._guard import check_regular_file, h5_boundary

    path = Path(os.path.abspath(path))
    check_regular_file(path)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise StemFileError(f"{path}: file not found") from None
    except (OSError, RuntimeError, ValueError) as e:
        raise StemFileError(f"{path}: cannot be read as HDF5 ({e})") from None
    with f, h5_boundary(path):
        if not is_results_file(f):
            raise StemFileError(
                f"{path}: not a napari-stemcluster results file (no "
                "stemcluster_file='segmentation' attribute)"
            )
        version, params, cal, texts = check.read_header(f, path)
        check.check_datasets(f, path)
        if version > FILE_VERSION:
            raise StemFileError(
                f"{path}: results file version {version} is newer than this "
                f"software reads ({FILE_VERSION}); update napari-stemcluster"
            )
        try:
            labels = f["labels"][()]
            mean_similarity = f["mean_similarity"][()]
            real_mask = f["real_mask"][()]
            similarity = f["similarity"][()]
            g = f["clusters"]
            offsets = g["offsets"][()]
            size = g["size"][()]
            seed = g["seed"][()]
            msim = g["mean_similarity"][()]
            means = np.asarray(g["cluster_means"][()])
        except (KeyError, OSError) as e:
            raise StemFileError(f"{path}: incomplete results file ({e})") from None
        from ._analysis_bragg import read_bragg

        try:
            bragg = read_bragg(f)
        except (KeyError, OSError, ValueError) as e:
            raise StemFileError(f"{path}: incomplete Bragg analysis in /bragg ({e})") from None
        from ._analysis_tracking import read_tracking

        try:
            tracking, kinetics = read_tracking(f, labels)
        except (KeyError, OSError, ValueError) as e:
            raise StemFileError(f"{path}: unreadable /tracking group ({e})") from None

        check.check_arrays(
            path, labels, mean_similarity, real_mask, similarity, offsets, (size, seed, msim, means)
        )
        info = {
            "path": str(path),
            "source": texts["source"] or None,
            "source_dtype": _text_attr(f, "source_dtype"),
            "software_version": texts["software_version"],
            "created": texts["created"],
            "format_version": version,
            "calibration": Calibration.from_dict(cal).as_dict(),
            "bragg": bragg,
            "tracking": tracking,
            "kinetics": kinetics,
        }
        from ._analysis_orientation import read_orientation

        info["orientation"] = read_orientation(f)
    ts = labels.ndim == 3
    means = np.ascontiguousarray(means[:, 0])

    def table(a, b):
        return ClusterTable(size=size[a:b], seed=seed[a:b], mean_similarity=msim[a:b])

    steps = [(int(offsets[t]), int(offsets[t + 1])) for t in range(len(offsets) - 1)]
    if ts:
        cluster_means = [means[a:b] for a, b in steps]
        clusters = [table(a, b) for a, b in steps]
    else:
        a, b = steps[0]
        cluster_means = means[a:b]
        clusters = table(a, b)
    result = SegmentationResult(
        labels=labels,
        mean_similarity=mean_similarity,
        real_mask=real_mask,
        similarity=similarity,
        cluster_means=cluster_means,
        clusters=clusters,
        params=params,
    )
    return result, info


def _text_attr(f, name: str) -> str | None:
    """A string attribute of the file, or None when absent (older files)."""
    value = f.attrs.get(name)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
