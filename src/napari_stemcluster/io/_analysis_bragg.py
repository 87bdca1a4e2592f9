"""Bragg disks, lattices, orientation and strain in the results file.

An analysis is a dict::

    {"lattices": [LatticeTable, ...],   # one per time step (rows = labels 1..N)
     "strain": StrainResult or None,    # maps of labels' shape
     "params": {...}}                   # detection / strain parameters (JSON)

Layout under ``/bragg`` of a results file (``T`` = time steps, ``N`` =
clusters of all steps, rows in the order of ``/clusters``)::

    /bragg                      attrs: params (JSON), layout
        offsets     int64 (T + 1,)    rows offsets[t]:offsets[t+1] are step t
        g1, g2      float64 (N, 2)    basis vectors (pixels, (qx, qy)); NaN: no lattice
        center      float64 (N, 2)    direct beam / lattice origin
        n_disks     int64 (N,)        disks found in the cluster average
        n_indexed   int64 (N,)
        residual    float64 (N,)      RMS misfit of the indexed disks (pixels)
        rotation    float64 (N,)      in-plane rotation of g1, degrees [0, 180)
        orientation float32 labels' shape   rotation of each position's cluster
        disks/                        the disks of every cluster average
            offsets     int64 (N + 1,)    disks offsets[i]:offsets[i+1] are row i
            qx, qy, intensity, correlation  float64 (D,)
            h, k        int32 (D,)        index (meaningful where indexed)
            indexed     bool (D,)
        strain/                       only when computed (maps of labels' shape)
            exx, eyy, exy, rotation   float32   (rotation in degrees); NaN: not measured
            n_indexed                 int16
            g1, g2, g1_ref, g2_ref    float32 (..., 2)   local and reference bases
"""

from __future__ import annotations

import json

import numpy as np

from ..core.bragg import DISK_DTYPE
from ..core.lattice import LatticeTable, orientation_map
from ..core.strain import StrainResult

GROUP = "bragg"
_TABLE = ("g1", "g2", "center", "n_disks", "n_indexed", "residual")


def _steps(lattices) -> list[LatticeTable]:
    return [lattices] if isinstance(lattices, LatticeTable) else list(lattices)


def write_bragg(f, analysis: dict, labels: np.ndarray, dsopts: dict) -> None:
    """Write an analysis into the open results file ``f`` (see the module layout)."""
    from .results import _json_default

    steps = _steps(analysis.get("lattices") or [])
    labels = np.asarray(labels)
    n_t = labels.shape[0] if labels.ndim == 3 else 1
    if len(steps) != n_t:
        raise ValueError(f"the Bragg analysis has {len(steps)} time steps; labels have {n_t}")
    g = f.create_group(GROUP)
    g.attrs["params"] = json.dumps(analysis.get("params") or {}, default=_json_default)
    g.attrs["layout"] = "see napari_stemcluster.io._analysis_bragg"
    counts = [len(s) for s in steps]
    g.create_dataset("offsets", data=np.concatenate(([0], np.cumsum(counts))).astype(np.int64))
    for name in _TABLE:
        cols = [np.asarray(getattr(s, name)) for s in steps]
        g.create_dataset(name, data=np.concatenate(cols) if cols else np.zeros(0))
    g.create_dataset("rotation", data=np.concatenate([s.rotation for s in steps] or [[]]))
    rot = [s.rotation for s in steps]
    omap = orientation_map(labels, rot if labels.ndim == 3 else rot[0])
    opts = dsopts if labels.size else {}
    g.create_dataset("orientation", data=omap, **opts)
    disks = [d for s in steps for d in (s.disks or [np.zeros(0, DISK_DTYPE)] * len(s))]
    hks = [h for s in steps for h in (s.hk or [np.zeros((0, 2), np.int64)] * len(s))]
    idx = [x for s in steps for x in (s.indexed or [np.zeros(0, bool)] * len(s))]
    dg = g.create_group("disks")
    lens = [len(d) for d in disks]
    dg.create_dataset("offsets", data=np.concatenate(([0], np.cumsum(lens))).astype(np.int64))
    for field in DISK_DTYPE.names:
        dg.create_dataset(field, data=np.concatenate([d[field] for d in disks] or [np.zeros(0)]))
    hk = np.concatenate(hks) if hks else np.zeros((0, 2), np.int64)
    dg.create_dataset("h", data=hk[:, 0].astype(np.int32))
    dg.create_dataset("k", data=hk[:, 1].astype(np.int32))
    dg.create_dataset("indexed", data=np.concatenate(idx) if idx else np.zeros(0, bool))
    strain = analysis.get("strain")
    if strain is not None:
        sg = g.create_group("strain")
        for name in StrainResult.MAPS:
            a = np.asarray(getattr(strain, name))
            sg.create_dataset(name, data=a, **(dsopts if a.size else {}))


def read_bragg(f) -> dict | None:
    """The analysis stored in the open results file ``f``, or None."""
    if GROUP not in f:
        return None
    g = f[GROUP]
    params = g.attrs.get("params", "{}")
    params = json.loads(params.decode() if isinstance(params, bytes) else params)
    off = g["offsets"][()]
    table = {name: g[name][()] for name in _TABLE}
    dg = g["disks"]
    doff = dg["offsets"][()]
    fields = {name: dg[name][()] for name in DISK_DTYPE.names}
    h, k, indexed = dg["h"][()], dg["k"][()], dg["indexed"][()]
    steps = []
    for t in range(len(off) - 1):
        a, b = int(off[t]), int(off[t + 1])
        lt = LatticeTable(**{name: table[name][a:b] for name in _TABLE})
        for row in range(a, b):
            s, e = int(doff[row]), int(doff[row + 1])
            d = np.zeros(e - s, DISK_DTYPE)
            for name in DISK_DTYPE.names:
                d[name] = fields[name][s:e]
            lt.disks.append(d)
            lt.hk.append(np.stack([h[s:e], k[s:e]], axis=1).astype(np.int64))
            lt.indexed.append(indexed[s:e].astype(bool))
        steps.append(lt)
    strain = None
    if "strain" in g:
        sg = g["strain"]
        strain = StrainResult(**{name: sg[name][()] for name in StrainResult.MAPS})
    return {"lattices": steps, "strain": strain, "params": params}


def bragg_layer_data(analysis: dict, labels, *, scale=None, translate=None, units=None) -> list:
    """napari layer-data tuples: orientation and strain maps (no napari import).

    Orientation uses the cyclic ``twilight`` colour map over [0, 180) or
    [0, 90) degrees; strain components a diverging map symmetric about 0.
    """
    labels = np.asarray(labels)
    steps = _steps(analysis.get("lattices") or [])
    rot = [s.rotation for s in steps]
    spatial = {}
    if scale is not None:
        spatial["scale"] = scale
    if translate is not None:
        spatial["translate"] = translate
    if units is not None:
        spatial["units"] = units
    out = []
    if steps:
        omap = orientation_map(labels, rot if labels.ndim == 3 else rot[0])
        period = orientation_period(steps)
        out.append(
            (
                np.where(np.isfinite(omap), omap % period, np.nan).astype(np.float32),
                {
                    "name": "in-plane orientation",
                    "colormap": "twilight",
                    "contrast_limits": (0.0, period),
                    "metadata": {"stemcluster": {"kind": "orientation", "period": period}},
                    **spatial,
                },
                "image",
            )
        )
    strain = analysis.get("strain")
    if strain is not None:
        for name, label in (
            ("exx", "strain εxx (%)"),
            ("eyy", "strain εyy (%)"),
            ("exy", "strain εxy (%)"),
            ("rotation", "lattice rotation (°)"),
        ):
            a = np.asarray(getattr(strain, name), np.float32)
            a = a * 100 if name != "rotation" else a
            lim = symmetric_limit(a)
            out.append(
                (
                    a,
                    {
                        "name": label,
                        "colormap": "bwr",
                        "contrast_limits": (-lim, lim),
                        "visible": name == "exx",
                        "metadata": {"stemcluster": {"kind": f"strain_{name}"}},
                        **spatial,
                    },
                    "image",
                )
            )
    return out


def orientation_period(steps) -> float:
    """90 when every lattice found is square (within 2 %), else 180 (degrees)."""
    square = []
    for s in _steps(steps):
        ok = np.isfinite(s.g1).all(1)
        if ok.any():
            lengths = s.lengths[ok]
            square.append(
                np.all(np.abs(lengths[:, 0] / lengths[:, 1] - 1) < 0.02)
                and np.all(np.abs(s.angle[ok] - 90) < 2)
            )
    return 90.0 if square and all(square) else 180.0


def symmetric_limit(a) -> float:
    """Contrast limit centred on zero: the 99th percentile of |a| (finite values)."""
    v = np.abs(np.asarray(a, np.float64))
    v = v[np.isfinite(v)]
    lim = float(np.percentile(v, 99)) if v.size else 1.0
    return lim if lim > 0 else 1.0
