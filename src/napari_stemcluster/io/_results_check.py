"""Checks of a results file before and after its arrays are read.

A results file may come from elsewhere (shared, edited, damaged): its
attributes are parsed with their types checked, every dataset is checked
for kind, dtype and declared size before it is read, and the arrays read are
checked against each other (shapes, cluster tables, label range) so that a
wrong file is refused rather than shown wrongly.
"""

from __future__ import annotations

import json

import numpy as np

from ._guard import MAX_SIDECAR_BYTES, check_h5_dataset
from .errors import StemFileError

#: Datasets of a results file: (path, dtype kinds, ndim or None).
_MAPS = {
    "labels": ("iu", (2, 3)),
    "mean_similarity": ("iuf", (2, 3)),
    "real_mask": ("biu", (2, 3)),
    "similarity": ("iuf", (3, 4)),
}
_TABLE = {
    "offsets": ("iu", (1,)),
    "size": ("iu", (1,)),
    "seed": ("iu", (2,)),
    "mean_similarity": ("iuf", (1,)),
    "cluster_means": ("iuf", (4,)),
}


def _text_attr(f, name: str, default: str, path) -> str:
    v = f.attrs.get(name, default)
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.ravel()[0]
    if isinstance(v, (bytes, np.bytes_)):
        v = bytes(v).decode("utf-8", "replace")
    if not isinstance(v, str):
        raise StemFileError(f"{path}: attribute {name} holds {type(v).__name__}; expected text")
    if len(v) > MAX_SIDECAR_BYTES:
        raise StemFileError(f"{path}: attribute {name} of {len(v)} characters; too large")
    return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _json_attr(f, name: str, path) -> dict:
    text = _text_attr(f, name, "{}", path)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise StemFileError(f"{path}: attribute {name} is not valid JSON; damaged") from None
    if not isinstance(value, dict):
        raise StemFileError(f"{path}: attribute {name} is not a JSON object (a dict of values)")
    return value


def read_header(f, path) -> tuple[int, dict, dict, dict]:
    """``(version, params, calibration, text attributes)`` of an open results file."""
    v = f.attrs.get("stemcluster_file_version", 0)
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.ravel()[0]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, int):
        raise StemFileError(
            f"{path}: stemcluster_file_version is {v!r}; expected an integer (damaged file)"
        )
    params = _json_attr(f, "params", path)
    cal = _json_attr(f, "calibration", path)
    for key, value in cal.items():
        if key.endswith("pixel_size") or key == "t_step":
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        else:
            ok = value is None or isinstance(value, str)
        if not ok:
            raise StemFileError(
                f"{path}: calibration {key} is {value!r}; expected a number or units text"
            )
    texts = {k: _text_attr(f, k, "", path) for k in ("source", "software_version", "created")}
    return v, params, cal, texts


def check_datasets(f, path) -> None:
    """Kinds, dtypes, dimensions and declared sizes, before any array is read."""
    import h5py

    def check(obj_path, kinds, ndims):
        obj = f.get(obj_path, getlink=True)
        if obj is None:
            raise StemFileError(f"{path}: incomplete results file (no {obj_path})")
        if not isinstance(obj, h5py.HardLink):
            raise StemFileError(f"{path}: {obj_path} is a link; expected a dataset in the file")
        ds = f[obj_path]
        if not isinstance(ds, h5py.Dataset):
            raise StemFileError(f"{path}: {obj_path} is a group; expected a dataset")
        if ds.dtype.kind not in kinds or ds.ndim not in ndims:
            raise StemFileError(
                f"{path}: dataset {obj_path} has dtype {ds.dtype} and {ds.ndim} "
                f"dimensions; expected {' or '.join(map(str, ndims))}-D values of kind "
                f"{kinds!r} (u: unsigned, i: signed integers, f: floats, b: bool)"
            )
        check_h5_dataset(ds, str(path))  # declared size against stored bytes and memory
        return ds

    link = f.get("clusters", getlink=True)
    if not isinstance(link, h5py.HardLink) or not isinstance(f["clusters"], h5py.Group):
        raise StemFileError(f"{path}: /clusters is missing or not a group; expected the tables")
    for name, (kinds, ndims) in _MAPS.items():
        check(name, kinds, ndims)
    for name, (kinds, ndims) in _TABLE.items():
        check(f"clusters/{name}", kinds, ndims)


def check_arrays(path, labels, mean_similarity, real_mask, similarity, offsets, tables) -> None:
    """Shapes of the maps, cluster tables and label range agree with each other."""
    size, seed, msim, means = tables
    shape = labels.shape
    for name, a in (("mean_similarity", mean_similarity), ("real_mask", real_mask)):
        if a.shape != shape:
            raise StemFileError(f"{path}: /{name} has shape {a.shape}; expected {shape} (/labels)")
    if similarity.shape != (*shape, 8):
        raise StemFileError(
            f"{path}: /similarity has shape {similarity.shape}; expected {(*shape, 8)}"
        )
    n_t = shape[0] if labels.ndim == 3 else 1
    if offsets.shape != (n_t + 1,):
        raise StemFileError(
            f"{path}: /clusters/offsets has {offsets.size} values; expected {n_t + 1} "
            "(one more than the time steps)"
        )
    n = int(offsets[-1])
    if offsets[0] != 0 or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise StemFileError(f"{path}: /clusters/offsets must start at 0 and never decrease")
    for name, a, tail in (
        ("size", size, ()),
        ("seed", seed, (2,)),
        ("mean_similarity", msim, ()),
    ):
        if a.shape != (n, *tail):
            raise StemFileError(
                f"{path}: /clusters/{name} has shape {a.shape}; expected {(n, *tail)} "
                "(the cluster count from /clusters/offsets)"
            )
    if means.shape[:2] != (n, 1):
        raise StemFileError(
            f"{path}: /clusters/cluster_means has shape {means.shape}; expected ({n}, 1, Qx, Qy)"
        )
    steps = labels if labels.ndim == 3 else labels[None]
    for t in range(n_t):
        count = int(offsets[t + 1] - offsets[t])
        lab = steps[t]
        lo, hi = (int(lab.min()), int(lab.max())) if lab.size else (0, 0)
        if lo < 0 or hi > count:
            where = f" at time step {t}" if labels.ndim == 3 else ""
            raise StemFileError(
                f"{path}: /labels{where} holds values {lo}..{hi}; expected 0..{count} "
                "(0 and the labels of the cluster table)"
            )
    # (-1, -1) marks a cluster emptied by hand
    if n and (np.any(seed < -1) or np.any(seed >= np.array(shape[-2:]))):
        raise StemFileError(f"{path}: /clusters/seed holds positions outside the scan {shape[-2:]}")
