"""Hybrid strain maps: the cluster's lattice as reference, each position's own disks.

For every scan position inside a cluster the Bragg disks of its own
(single, noisy) pattern are found, indexed against the lattice of the
cluster average (high signal, so the indexing is reliable), and the local
lattice is fitted by least squares. The local and reference reciprocal
bases give the deformation gradient, hence the in-plane strain tensor and
rotation. Positions with too few indexed disks get NaN, never 0.

Strain is expressed in the detector's ``(qx, qy)`` axes; real and reciprocal
space share these axes up to the scan rotation, which is not applied here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .lattice import LatticeTable, fit_lattice

__all__ = [
    "StrainResult",
    "orientation_reference",
    "rereference",
    "strain_from_lattices",
    "strain_map",
]


@dataclass
class StrainResult:
    """Per-position strain, rotation and local lattice; NaN where not measured.

    Attributes
    ----------
    exx, eyy, exy : ndarray of float32, shape (Rx, Ry) or (T, Rx, Ry)
        Infinitesimal strain tensor (fractions, 0.01 = 1 %) in detector axes.
    rotation : ndarray of float32
        Lattice rotation relative to the reference, degrees
        (counter-clockwise from qx towards qy).
    n_indexed : ndarray of int16
        Disks indexed at each position (0 outside clusters).
    g1, g2 : ndarray of float32, shape labels.shape + (2,)
        Local basis vectors (pixels).
    g1_ref, g2_ref : ndarray of float32, shape labels.shape + (2,)
        Reference basis used at each position.
    """

    exx: np.ndarray
    eyy: np.ndarray
    exy: np.ndarray
    rotation: np.ndarray
    n_indexed: np.ndarray
    g1: np.ndarray
    g2: np.ndarray
    g1_ref: np.ndarray
    g2_ref: np.ndarray

    MAPS = ("exx", "eyy", "exy", "rotation", "n_indexed", "g1", "g2", "g1_ref", "g2_ref")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.exx.shape


def strain_from_lattices(g1_ref, g2_ref, g1, g2):
    """Strain tensor and rotation taking a reference reciprocal basis to a local one.

    With the bases as matrix columns, ``B = F^{-T} B_ref`` for the
    real-space deformation gradient ``F``. Its polar decomposition
    ``F = R U`` gives the rotation ``R`` and the strain ``U - I``
    (``U`` symmetric): exact for rotations of any size, and equal to the
    infinitesimal strain for small ones.

    Parameters
    ----------
    g1_ref, g2_ref, g1, g2 : array_like, shape (..., 2)
        Reference and local basis vectors (broadcast together).

    Returns
    -------
    exx, eyy, exy, rotation : ndarray of float64, shape (...)
        ``rotation`` in degrees.

    Examples
    --------
    >>> exx, eyy, exy, rot = strain_from_lattices([10, 0], [0, 10], [10 / 1.01, 0], [0, 10])
    >>> round(float(exx), 6), round(float(eyy), 6), round(float(exy), 6), round(float(rot), 6)
    (0.01, 0.0, 0.0, 0.0)
    """
    g1_ref, g2_ref, g1, g2 = (np.asarray(a, np.float64) for a in (g1_ref, g2_ref, g1, g2))
    b_ref = np.stack([g1_ref, g2_ref], axis=-1)  # (..., 2, 2), columns
    b = np.stack([g1, g2], axis=-1)
    b_ref, b = np.broadcast_arrays(b_ref, b)
    out_shape = b.shape[:-2]
    bad = ~(np.isfinite(b).all(axis=(-2, -1)) & np.isfinite(b_ref).all(axis=(-2, -1)))
    det = b[..., 0, 0] * b[..., 1, 1] - b[..., 0, 1] * b[..., 1, 0]
    bad |= np.abs(det) < 1e-12
    safe = np.where(bad[..., None, None], np.eye(2), b)
    safe_ref = np.where(bad[..., None, None], np.eye(2), b_ref)
    # F^T = B_ref B^{-1}
    ft = safe_ref @ np.linalg.inv(safe)
    f = np.swapaxes(ft, -1, -2)
    # Polar decomposition F = R U: the rotation R, and the strain U - I
    # (symmetric), so that a rotation of a few degrees gives no strain.
    theta = np.arctan2(f[..., 1, 0] - f[..., 0, 1], f[..., 0, 0] + f[..., 1, 1])
    c, s = np.cos(theta), np.sin(theta)
    u00 = c * f[..., 0, 0] + s * f[..., 1, 0]
    u11 = -s * f[..., 0, 1] + c * f[..., 1, 1]
    u01 = c * f[..., 0, 1] + s * f[..., 1, 1]
    u10 = -s * f[..., 0, 0] + c * f[..., 1, 0]
    exx = u00 - 1.0
    eyy = u11 - 1.0
    exy = 0.5 * (u01 + u10)
    rot = np.degrees(theta)
    res = []
    for a in (exx, eyy, exy, rot):
        a = np.where(bad, np.nan, a).reshape(out_shape)
        res.append(a)
    return tuple(res)


def _references(reference, n_steps: int):
    """Per time step: (g1 (N, 2), g2 (N, 2), center (N, 2) or None)."""
    if isinstance(reference, LatticeTable):
        reference = [reference]
    refs = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    if refs and not isinstance(refs[0], LatticeTable):
        if len(refs) == n_steps and all(np.ndim(r) == 3 for r in refs):
            # one (N_t, 2, 2) array per time step
            return [(np.asarray(r, float)[:, 0], np.asarray(r, float)[:, 1], None) for r in refs]
        arr = np.asarray(reference, np.float64)
        if arr.shape == (2, 2):
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != (2, 2):
            raise ValueError(
                "reference must be a LatticeTable (one per time step), or an (N, 2, 2) array of "
                f"(g1, g2) per cluster, or one (2, 2) basis; got shape {arr.shape}"
            )
        return [(arr[:, 0], arr[:, 1], None)] * n_steps
    if len(refs) != n_steps:
        raise ValueError(f"need one LatticeTable per time step ({n_steps}); got {len(refs)}")
    return [(r.g1, r.g2, r.center) for r in refs]


def strain_map(
    cube,
    labels,
    reference,
    *,
    min_indexed: int = 5,
    tolerance: float = 0.2,
    block_rows: int = 8,
    progress: Callable[[int, int], None] | None = None,
    **detect,
) -> StrainResult:
    """Hybrid strain: index every position's disks against its cluster's lattice.

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy) or (T, Rx, Ry, Qx, Qy)
        numpy, h5py or dask cube; read in blocks of ``block_rows`` scan rows.
    labels : array_like of int, shape (Rx, Ry) or (T, Rx, Ry)
        Clusters (0 = background: NaN).
    reference : LatticeTable, list of LatticeTable, or array_like (N, 2, 2) / (2, 2)
        Reference lattice of label ``i + 1``: the output of
        :func:`~napari_stemcluster.core.cluster_lattices` or of
        :func:`orientation_reference` (one per time step), or explicit
        ``(g1, g2)`` per cluster (one ``(N, 2, 2)`` array, or a list of one
        per time step), or one basis for all.
        NaN vectors give NaN strain for that cluster.
    min_indexed : int
        Fewest indexed disks for a strain value (default 5); fewer give NaN.
    tolerance : float
        Indexing tolerance (fraction of the shorter basis vector).
    block_rows : int
        Scan rows per block.
    progress : callable, optional
        ``progress(done, total)`` after each block; raise from it to cancel.
    **detect
        Passed to :func:`~napari_stemcluster.core.find_bragg_disks`
        (``template``, ``probe_radius``, thresholds, ``subpixel`` ...).

    Returns
    -------
    StrainResult

    Notes
    -----
    The local lattice origin is fitted together with the basis (so an
    error in the direct-beam position does not bias the strain); indexing
    starts from the detected direct beam, or the cluster's centre when the
    beam is not found.

    Examples
    --------
    >>> from napari_stemcluster._bragg_synth import disk_pattern, strained
    >>> g1, g2 = np.array([11.0, 0.0]), np.array([0.0, 11.0])
    >>> cube = np.stack([disk_pattern((64, 64), *strained(g1, g2, np.diag([e, 0])),
    ...                               dose=None)[0] for e in (0.0, 0.01)])[None]
    >>> res = strain_map(cube, np.ones((1, 2), int), [[g1, g2]], probe_radius=2.5)
    >>> np.round(res.exx * 100, 1)
    array([[0., 1.]], dtype=float32)
    """
    labels = np.asarray(labels)
    ts = labels.ndim == 3
    if labels.ndim not in (2, 3) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be integer (Rx, Ry) or (T, Rx, Ry); got {labels.dtype} {labels.shape}"
        )
    want = labels.ndim + 2
    if getattr(cube, "ndim", None) != want or tuple(cube.shape[:-2]) != labels.shape:
        raise ValueError(
            f"cube of shape {tuple(getattr(cube, 'shape', ()))} does not match labels "
            f"{labels.shape} (expected labels.shape + (Qx, Qy))"
        )
    n_steps = labels.shape[0] if ts else 1
    refs = _references(reference, n_steps)
    shape = labels.shape
    nan = np.full(shape, np.nan, np.float32)
    out = StrainResult(
        exx=nan.copy(),
        eyy=nan.copy(),
        exy=nan.copy(),
        rotation=nan.copy(),
        n_indexed=np.zeros(shape, np.int16),
        g1=np.full((*shape, 2), np.nan, np.float32),
        g2=np.full((*shape, 2), np.nan, np.float32),
        g1_ref=np.full((*shape, 2), np.nan, np.float32),
        g2_ref=np.full((*shape, 2), np.nan, np.float32),
    )
    total = int(np.count_nonzero(labels))
    done = 0
    from .bragg import BraggWarning, find_bragg_disks

    for t in range(n_steps):
        lab = labels[t] if ts else labels
        step = cube[t] if ts else cube
        rg1, rg2, rc = refs[t]
        if lab.size and lab.max() > len(rg1):
            raise ValueError(
                f"labels go up to {int(lab.max())} but the reference has {len(rg1)} clusters"
            )
        idx = (t,) if ts else ()
        for r0 in range(0, lab.shape[0], max(1, int(block_rows))):
            r1 = min(lab.shape[0], r0 + max(1, int(block_rows)))
            sel = lab[r0:r1] > 0
            if not sel.any():
                continue
            block = np.asarray(step[r0:r1])
            pats = block[sel]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BraggWarning)
                disks, beams = find_bragg_disks(pats, return_beam=True, **detect)
            rows, cols = np.nonzero(sel)
            for d, b, rr, cc in zip(disks, beams, rows, cols, strict=True):
                label = int(lab[r0 + rr, cc])
                g1r, g2r = rg1[label - 1], rg2[label - 1]
                pos = (*idx, r0 + rr, cc)
                out.g1_ref[pos], out.g2_ref[pos] = g1r, g2r
                start = b if np.all(np.isfinite(b)) else (None if rc is None else rc[label - 1])
                if start is None or not np.all(np.isfinite(start)):
                    continue
                fit = fit_lattice(d, center=start, reference=(g1r, g2r), tolerance=tolerance)
                if not fit.ok:
                    continue
                out.n_indexed[pos] = fit.n_indexed
                if fit.n_indexed < min_indexed:
                    continue
                out.g1[pos], out.g2[pos] = fit.g1, fit.g2
            done += int(sel.sum())
            if progress is not None:
                progress(done, total)
    _fill_strain(out)
    return out


def _fill_strain(out: StrainResult) -> None:
    exx, eyy, exy, rot = strain_from_lattices(out.g1_ref, out.g2_ref, out.g1, out.g2)
    out.exx[...] = exx
    out.eyy[...] = eyy
    out.exy[...] = exy
    out.rotation[...] = rot


def rereference(result: StrainResult, labels, region) -> StrainResult:
    """Strain relative to the median local lattice of each cluster within a region.

    Clusters with no measured position in ``region`` keep their previous
    reference.

    Parameters
    ----------
    result : StrainResult
        From :func:`strain_map`.
    labels : array_like of int, shape result.shape
    region : array_like of bool, shape result.shape
        The reference region (for instance an unstrained part of a grain).

    Returns
    -------
    StrainResult
        A new result (local lattices shared, references and strain recomputed).

    Examples
    --------
    >>> import dataclasses
    >>> g = np.zeros((1, 3, 2), np.float32)
    >>> r = StrainResult(*[np.zeros((1, 3), np.float32) for _ in range(4)],
    ...                  np.full((1, 3), 9, np.int16),
    ...                  g + [10, 0], g + [0, 10], g + [10, 0], g + [0, 10])
    >>> r.g1[0, 2] = [10 / 1.02, 0]
    >>> new = rereference(r, np.ones((1, 3), int), np.array([[False, False, True]]))
    >>> (new.exx * 100).round(3)
    array([[-1.961, -1.961,  0.   ]], dtype=float32)
    """
    labels = np.asarray(labels)
    region = np.asarray(region, bool)
    if labels.shape != result.shape or region.shape != result.shape:
        raise ValueError(
            f"labels {labels.shape} and region {region.shape} must have the strain maps' "
            f"shape {result.shape}"
        )
    if not region.any():
        raise ValueError("the reference region is empty")
    import copy

    new = copy.deepcopy(result)
    measured = np.isfinite(result.g1).all(-1) & np.isfinite(result.g2).all(-1)
    lead = labels.shape[:-2]
    for t in np.ndindex(*lead) if lead else [()]:
        lab = labels[t]
        for label in np.unique(lab[region[t] & measured[t] & (lab > 0)]):
            inside = (lab == label) & region[t] & measured[t]
            g1 = np.median(result.g1[t][inside], axis=0)
            g2 = np.median(result.g2[t][inside], axis=0)
            members = lab == label
            new.g1_ref[t][members] = g1
            new.g2_ref[t][members] = g2
    _fill_strain(new)
    return new


def orientation_reference(orientation, lattices=None, *, min_rel: float = 0.05) -> list:
    """Strain reference lattices from the orientations matched to a crystal structure.

    Each indexed cluster gets the two shortest strong reflections of its
    matched orientation (:func:`~napari_stemcluster.core.orientation.reference_lattice`)
    projected on the detector: the strain is then relative to the
    crystal's unstrained lattice in that orientation (as given by the CIF
    and the q calibration), not to the cluster's own average lattice.
    Clusters that were not indexed get NaN vectors (NaN strain).

    Parameters
    ----------
    orientation : OrientationResult
        From :func:`~napari_stemcluster.core.orientation.orient_clusters`
        (or the ``orientation`` entry of :func:`~napari_stemcluster.io.read_results`).
    lattices : LatticeTable or list of LatticeTable, optional
        Fitted cluster lattices (one per time step); their direct-beam
        centres are kept as the indexing start where a position's own
        direct beam is not found.
    min_rel : float
        Reflections weaker than this fraction of the strongest ``|F|²``
        are not used as basis vectors.

    Returns
    -------
    list of LatticeTable
        One per time step, row ``i`` for label ``i + 1``; pass it as the
        ``reference`` of :func:`strain_map`.

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.core.orientation import ORIENTATION_DTYPE, OrientationResult
    >>> from napari_stemcluster.data import builtin_cif
    >>> rec = np.zeros(2, ORIENTATION_DTYPE)
    >>> rec["rotation"][0], rec["indexed"][0] = np.eye(3), True
    >>> params = {"energy_kev": 300.0, "q_pixel_size": 0.02, "g_max": 1.0}
    >>> res = OrientationResult(rec, np.array([0, 2]), [load_structure(builtin_cif("Au"))], params)
    >>> ref = orientation_reference(res)[0]
    >>> np.abs(ref.g1).round(2)
    array([[24.52,  0.  ],
           [  nan,   nan]])
    """
    from .orientation import orientation_library, reference_lattice

    p = dict(orientation.params)
    lib_kw = {
        k: p[k]
        for k in ("max_angle_mrad", "g_max", "sigma_excitation", "convergence_mrad")
        if p.get(k) is not None
    }
    if "g_max" not in lib_kw and "max_angle_mrad" not in lib_kw:
        lib_kw["max_angle_mrad"] = 30.0
    try:
        energy, qp = float(p["energy_kev"]), float(p["q_pixel_size"])
    except KeyError as e:
        raise ValueError(
            f"orientation params lack {e.args[0]!r}: cannot build the lattice"
        ) from None
    # only the reflection list is used: a coarse direction step keeps this cheap
    libs = [
        orientation_library(st, energy, qp, step_deg=30.0, **lib_kw)
        for st in orientation.structures
    ]
    n_steps = len(orientation.offsets) - 1
    if lattices is not None:
        lattices = [lattices] if isinstance(lattices, LatticeTable) else list(lattices)
        if len(lattices) != n_steps:
            raise ValueError(
                f"need one LatticeTable per time step ({n_steps}); got {len(lattices)}"
            )
    out = []
    for t in range(n_steps):
        rec = orientation.step(t)
        n = len(rec)
        g = np.full((n, 2, 2), np.nan)
        for i, r in enumerate(rec):
            if not r["indexed"]:
                continue
            try:
                g[i] = reference_lattice(r["rotation"], libs[int(r["phase"])], min_rel=min_rel)[0]
            except ValueError:
                continue  # no two strong reflections: no reference for this cluster
        if lattices is not None:
            lat = lattices[t]
            if len(lat) != n:
                raise ValueError(f"time step {t}: {n} orientations but {len(lat)} fitted lattices")
            center = np.asarray(lat.center, float)
        else:
            center = np.full((n, 2), np.nan)
        zeros = np.zeros(n, np.int64)
        out.append(
            LatticeTable(
                g1=g[:, 0],
                g2=g[:, 1],
                center=center,
                n_disks=zeros,
                n_indexed=zeros.copy(),
                residual=np.full(n, np.nan),
            )
        )
    return out
