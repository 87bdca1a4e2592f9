"""Reciprocal lattice of a set of Bragg disks, per-cluster lattices and orientation maps.

:func:`fit_lattice` finds two basis vectors ``g1``, ``g2`` that index most
disks with integers ``(h, k)``, ``q = center + h g1 + k g2``, from the
difference vectors between disks (so it needs neither the direct beam nor
every reflection, and ignores disks off the lattice), then refines the basis
by least squares on the indexed disks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LatticeFit",
    "LatticeTable",
    "cluster_lattices",
    "fit_lattice",
    "index_disks",
    "orientation_map",
]


@dataclass
class LatticeFit:
    """A fitted 2D reciprocal lattice; unpacks as ``g1, g2, hk = fit``.

    Attributes
    ----------
    g1, g2 : ndarray of float64, shape (2,)
        Basis vectors in pixels, ``(qx, qy)`` components; NaN when no
        lattice was found. Reduced (shortest), right-handed (``g1 x g2 > 0``),
        with an angle between them of at most 90 degrees (to 2 degrees), and
        among the equivalent choices ``g1`` the one closest to the qx axis
        counter-clockwise, so that ``rotation`` is defined modulo the
        lattice's symmetry (90 degrees for a square lattice).
    hk : ndarray of int64, shape (N, 2)
        Index of every disk (nearest lattice point, also for disks that are
        not ``indexed``).
    indexed : ndarray of bool, shape (N,)
        Disks within ``tolerance`` of their lattice point.
    center : ndarray of float64, shape (2,)
        Lattice origin (the direct beam): given or fitted.
    residual : float
        RMS distance (pixels) of the indexed disks from their lattice points.
    message : str
        Why no lattice was found ("" on success).
    """

    g1: np.ndarray
    g2: np.ndarray
    hk: np.ndarray
    indexed: np.ndarray
    center: np.ndarray
    residual: float = math.nan
    message: str = ""

    def __iter__(self):
        return iter((self.g1, self.g2, self.hk))

    @property
    def ok(self) -> bool:
        """A lattice was found."""
        return bool(np.all(np.isfinite(self.g1)) and np.all(np.isfinite(self.g2)))

    @property
    def n_indexed(self) -> int:
        return int(np.count_nonzero(self.indexed))

    @property
    def lengths(self) -> tuple[float, float]:
        return float(np.hypot(*self.g1)), float(np.hypot(*self.g2))

    @property
    def angle(self) -> float:
        """Angle between g1 and g2, degrees."""
        return _angle_between(self.g1, self.g2)

    @property
    def rotation(self) -> float:
        """In-plane rotation: direction of g1 from the qx axis towards qy, degrees in [0, 180)."""
        return _rotation(self.g1)


def _angle_between(a, b) -> float:
    na, nb = np.hypot(*a), np.hypot(*b)
    if not (na > 0 and nb > 0):
        return math.nan
    return math.degrees(math.acos(float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))))


def _rotation(g) -> float:
    if not np.all(np.isfinite(g)):
        return math.nan
    return float(math.degrees(math.atan2(g[1], g[0])) % 180.0)


def _positions(disks) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) positions and (N,) weights from a disk array or an (N, 2) array."""
    a = np.asarray(disks)
    if a.dtype.names is not None:
        missing = {"qx", "qy"} - set(a.dtype.names)
        if missing:
            raise ValueError(f"disks lack the field(s) {sorted(missing)}")
        pos = np.stack([a["qx"], a["qy"]], axis=1).astype(np.float64).reshape(-1, 2)
        w = (
            np.asarray(a["intensity"], np.float64)
            if "intensity" in a.dtype.names
            else np.ones(len(pos))
        )
    else:
        if a.size == 0:
            return np.zeros((0, 2)), np.zeros(0)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"disks must be a disk array or (N, 2) positions; got shape {a.shape}")
        pos = a.astype(np.float64)
        w = np.ones(len(pos))
    ok = np.all(np.isfinite(pos), axis=1)
    if not ok.all():
        raise ValueError("disk positions contain NaN or inf")
    return pos, np.clip(np.nan_to_num(w), 0.0, None)


def _failed(n: int, center, message: str) -> LatticeFit:
    c = np.full(2, np.nan) if center is None else np.asarray(center, np.float64)
    return LatticeFit(
        g1=np.full(2, np.nan),
        g2=np.full(2, np.nan),
        hk=np.zeros((n, 2), np.int64),
        indexed=np.zeros(n, bool),
        center=c,
        residual=math.nan,
        message=message,
    )


def _reduce(g1, g2):
    """Lagrange-Gauss reduction, then right-handed with an angle <= 90 degrees."""
    a, b = np.array(g1, float), np.array(g2, float)
    for _ in range(100):
        if a @ a > b @ b:
            a, b = b, a
        m = round(float(a @ b) / float(a @ a))
        if m == 0:
            break
        b = b - m * a
    # Among the equivalent shortest right-handed bases, prefer an acute cell,
    # then g1 pointing closest to the qx axis counter-clockwise (its angle is
    # then the rotation modulo the lattice's symmetry).
    vecs = [a, -a, b, -b, a + b, -a - b, a - b, b - a]
    la = float(np.hypot(*a))
    area = abs(float(a[0] * b[1] - a[1] * b[0]))
    short = [v for v in vecs if np.hypot(*v) <= 1.02 * la]
    pairs = []
    for u in short:
        for v in vecs:
            det = float(u[0] * v[1] - u[1] * v[0])
            if det > 0 and abs(det - area) <= 0.01 * area:
                pairs.append((float(np.hypot(*v)), u, v))
    shortest = min(p[0] for p in pairs)
    # g2 as short as possible (within 2 %), then an acute cell (to 2 degrees), then g1
    # nearest the qx axis.
    _, u, v = min(
        (p for p in pairs if p[0] <= 1.02 * shortest),
        key=lambda p: (
            bool(p[1] @ p[2] < -0.035 * la * p[0]),
            math.atan2(p[1][1], p[1][0]) % (2 * math.pi),
        ),
    )
    return u, v


def index_disks(pos, g1, g2, center, tolerance: float = 0.2):
    """Integer indices of positions against a lattice, and which are close enough.

    Parameters
    ----------
    pos : array_like, shape (N, 2)
        Disk positions.
    g1, g2 : array_like, shape (2,)
        Basis vectors.
    center : array_like, shape (2,)
        Lattice origin.
    tolerance : float
        A disk is indexed when within ``tolerance * min(|g1|, |g2|)`` of
        its lattice point.

    Returns
    -------
    hk : ndarray of int64, shape (N, 2)
    indexed : ndarray of bool, shape (N,)

    Examples
    --------
    >>> hk, ok = index_disks([[12.1, 0.0], [0.0, 24.0], [6.0, 6.0]], [12, 0], [0, 12], [0, 0])
    >>> hk.tolist(), ok.tolist()
    ([[1, 0], [0, 2], [0, 0]], [True, True, False])
    """
    pos = np.asarray(pos, np.float64).reshape(-1, 2)
    basis = np.array([g1, g2], np.float64)  # rows
    lim = tolerance * float(min(np.hypot(*basis[0]), np.hypot(*basis[1])))
    frac = np.linalg.solve(basis.T, (pos - np.asarray(center, float)).T).T
    hk = np.rint(frac).astype(np.int64)
    err = pos - np.asarray(center, float) - hk @ basis
    return hk, np.hypot(*err.T) <= lim if len(pos) else np.zeros(0, bool)


def _least_squares(pos, hk, center=None, w=None):
    """Basis (and origin when ``center`` is None) from indexed positions.

    Weighted by ``w`` (the disk intensities): the position error of a disk
    falls as one over the square root of its counts, so weighting by the
    counts is the minimum-variance fit, and weak disks on a sloping
    background bias it least.
    """
    sw = None
    if w is not None and np.all(np.isfinite(w)) and w.sum() > 0:
        sw = np.sqrt(np.clip(w, 0, None) / w.max())[:, None]
    if center is None:
        a = np.column_stack([hk, np.ones(len(hk))])
        y = pos
    else:
        a = hk.astype(float)
        y = pos - np.asarray(center, float)
    if sw is not None:
        a, y = a * sw, y * sw
    sol, *_ = np.linalg.lstsq(a, y, rcond=None)
    if center is None:
        return sol[0], sol[1], sol[2]
    return sol[0], sol[1], np.asarray(center, float)


def _rank_ok(hk, free_origin: bool) -> bool:
    """Whether the indices determine the basis (and origin): not all collinear.

    Exact on the integer indices (two cross products instead of an SVD: this
    runs for every probe position of a strain map).
    """
    hk = np.asarray(hk, np.int64).reshape(-1, 2)
    if len(hk) < (3 if free_origin else 2):
        return False
    d = hk - hk[0] if free_origin else hk  # with a free origin, differences span the plane
    nz = np.flatnonzero(d.any(axis=1))
    if nz.size == 0:
        return False
    v = d[nz[0]]
    return bool(np.any(v[0] * d[:, 1] - v[1] * d[:, 0]))


def fit_lattice(
    disks,
    center=None,
    *,
    reference=None,
    tolerance: float = 0.2,
    min_length: float = 2.0,
    min_indexed: int = 3,
) -> LatticeFit:
    """Two basis vectors and the integer index of every disk.

    Parameters
    ----------
    disks : structured array or array_like, shape (N, 2)
        Output of :func:`~napari_stemcluster.core.find_bragg_disks` (fields
        ``qx``, ``qy``, optionally ``intensity``), or plain ``(qx, qy)``
        positions. May or may not include the direct beam.
    center : (float, float), optional
        Lattice origin (the direct beam). Default: fitted; the indices are
        then counted from the lattice point nearest to the intensity-weighted
        centroid of the disks (the centre of a centrosymmetric pattern).
    reference : (g1, g2), optional
        Index against this basis instead of searching for one (the local
        lattice is still refined by least squares); used for strain.
    tolerance : float
        A disk is indexed when within ``tolerance * min(|g1|, |g2|)`` of its
        lattice point.
    min_length : float
        Shortest basis vector considered, in pixels (difference vectors of
        double detections are shorter).
    min_indexed : int
        Fewest indexed disks for a lattice (at least 3).

    Returns
    -------
    LatticeFit
        ``g1``, ``g2``, ``hk``, ``indexed``, ``center``, ``residual`` and
        the derived ``lengths``, ``angle``, ``rotation``, ``n_indexed``.
        With too few or collinear disks, ``ok`` is False, the vectors are
        NaN and ``message`` says why (nothing is raised).

    Notes
    -----
    Candidate basis vectors are the difference vectors between disks
    (and between disks and ``center``), grouped within 1 px and ranked by how
    often they occur. Every non-collinear pair of the most frequent ones is
    scored by the number of disks it indexes; ties go to the larger cell
    (a cell too small indexes the same disks plus empty sites). The best
    pair is reduced to the shortest right-handed basis and refined by least
    squares, re-indexing twice.

    Examples
    --------
    >>> g1, g2 = np.array([10.0, 2.0]), np.array([-2.0, 10.0])
    >>> hk = np.array([(h, k) for h in range(-2, 3) for k in range(-2, 3) if (h, k) != (0, 0)])
    >>> pos = 32 + hk @ np.array([g1, g2])
    >>> fit = fit_lattice(pos, center=(32, 32))
    >>> fit.g1.round(6), fit.g2.round(6), fit.n_indexed
    (array([10.,  2.]), array([-2., 10.]), 24)
    >>> round(fit.rotation, 3), round(fit.angle, 3)
    (11.31, 90.0)
    """
    pos, w = _positions(disks)
    n = len(pos)
    tol = float(tolerance)
    if not 0 < tol < 0.5:
        raise ValueError(f"tolerance must be within (0, 0.5); got {tolerance!r}")
    min_indexed = max(3, int(min_indexed))
    if center is not None:
        center = np.asarray(center, np.float64).reshape(2)
        if not np.all(np.isfinite(center)):
            center = None
    if reference is not None:
        g1, g2 = (np.asarray(g, np.float64).reshape(2) for g in reference)
        if not (np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))):
            return _failed(n, center, "the reference lattice is undefined (NaN)")
        if abs(g1[0] * g2[1] - g1[1] * g2[0]) < 1e-12:
            return _failed(n, center, "the reference vectors are collinear")
        if center is None:
            return _failed(n, center, "indexing against a reference needs the lattice centre")
        return _refine(
            pos,
            g1,
            g2,
            center,
            center_fixed=False,
            tol=tol,
            min_indexed=min_indexed,
            w=w,
            shift=False,
        )
    if n < min_indexed:
        return _failed(n, center, f"{n} disk(s): at least {min_indexed} are needed for a lattice")

    pts = pos if center is None else np.vstack([pos, center])
    diff = (pts[:, None, :] - pts[None, :, :]).reshape(-1, 2)
    # One of each +-pair: the half plane qx > 0 (or qx == 0, qy > 0).
    half = (diff[:, 0] > 1e-9) | ((np.abs(diff[:, 0]) <= 1e-9) & (diff[:, 1] > 0))
    diff = diff[half]
    diff = diff[np.hypot(*diff.T) >= float(min_length)]
    if len(diff) < 2:
        return _failed(n, center, "the disks are too close together for a lattice")
    cands, support = _group(diff, 1.0)
    order = np.lexsort((np.hypot(*cands.T), -support))[:16]
    cands = cands[order]
    origin = center if center is not None else pos[int(np.argmax(w))] if w.any() else pos[0]
    best = None
    for i in range(len(cands)):
        for j in range(i + 1, len(cands)):
            a, b = cands[i], cands[j]
            det = a[0] * b[1] - a[1] * b[0]
            area = abs(det)
            if area < 0.05 * (a @ a + b @ b) / 2:  # nearly collinear
                continue
            _, ok = index_disks(pos, a, b, origin, tol)
            score = (int(ok.sum()), area)
            if best is None or score > best[0]:
                best = (score, a, b)
    if best is None:
        return _failed(n, center, "the disks lie on a line: no 2D lattice")
    if best[0][0] < min_indexed:
        return _failed(
            n, center, f"only {best[0][0]} disks fit a lattice; at least {min_indexed} are needed"
        )
    g1, g2 = _reduce(best[1], best[2])
    return _refine(
        pos, g1, g2, origin, center_fixed=center is not None, tol=tol, min_indexed=min_indexed, w=w
    )


def _group(vecs: np.ndarray, radius: float):
    """Greedy clustering of vectors: representatives (means) and member counts."""
    from scipy.spatial import cKDTree

    tree = cKDTree(vecs)
    counts = np.array([len(x) for x in tree.query_ball_point(vecs, radius)])
    order = np.argsort(-counts, kind="stable")
    taken = np.zeros(len(vecs), bool)
    reps, sup = [], []
    for i in order:
        if taken[i]:
            continue
        members = [m for m in tree.query_ball_point(vecs[i], radius) if not taken[m]]
        taken[members] = True
        reps.append(vecs[members].mean(axis=0))
        sup.append(len(members))
    return np.array(reps), np.array(sup)


def _refine(
    pos, g1, g2, origin, *, center_fixed, tol, min_indexed, w=None, shift=True
) -> LatticeFit:
    n = len(pos)
    c = np.asarray(origin, float)
    hk, ok = index_disks(pos, g1, g2, c, tol)
    for _ in range(3):
        if ok.sum() < min_indexed or not _rank_ok(hk[ok], not center_fixed):
            return _failed(
                n,
                c if center_fixed else None,
                f"only {int(ok.sum())} disks fit a lattice; at least {min_indexed} are needed",
            )
        g1, g2, c = _least_squares(
            pos[ok], hk[ok], c if center_fixed else None, None if w is None else w[ok]
        )
        hk, ok = index_disks(pos, g1, g2, c, tol)
    if not center_fixed and shift and w is not None:
        # Count indices from the lattice point nearest the weighted centroid.
        ww = w[ok] if w[ok].sum() > 0 else np.ones(int(ok.sum()))
        centroid = (pos[ok] * ww[:, None]).sum(0) / ww.sum()
        steps, _ = index_disks(centroid[None], g1, g2, c, 0.49)
        c = c + steps[0] @ np.array([g1, g2])
        hk, ok = index_disks(pos, g1, g2, c, tol)
    if shift:
        # The least-squares basis, reduced again to the canonical choice.
        g1, g2 = _reduce(g1, g2)
        hk, ok = index_disks(pos, g1, g2, c, tol)
    err = pos[ok] - c - hk[ok] @ np.array([g1, g2])
    residual = float(np.sqrt(np.mean(np.sum(err**2, axis=1)))) if ok.any() else math.nan
    return LatticeFit(
        g1=np.asarray(g1, float),
        g2=np.asarray(g2, float),
        hk=hk,
        indexed=ok,
        center=np.asarray(c, float),
        residual=residual,
    )


@dataclass
class LatticeTable:
    """Lattice of every cluster (one row per cluster average).

    Attributes
    ----------
    g1, g2 : ndarray of float64, shape (N, 2)
        Basis vectors in pixels (NaN where no lattice was found).
    center : ndarray of float64, shape (N, 2)
        Direct-beam position / lattice origin.
    n_disks, n_indexed : ndarray of int64, shape (N,)
        Disks found, and indexed by the lattice.
    residual : ndarray of float64, shape (N,)
        RMS misfit of the indexed disks (pixels).
    disks : list of structured arrays
        The disks of each cluster average (:data:`~napari_stemcluster.core.bragg.DISK_DTYPE`).
    hk : list of ndarray (n_i, 2)
        Index of each disk (meaningful where ``indexed``).
    indexed : list of ndarray of bool
    """

    g1: np.ndarray
    g2: np.ndarray
    center: np.ndarray
    n_disks: np.ndarray
    n_indexed: np.ndarray
    residual: np.ndarray
    disks: list = field(default_factory=list)
    hk: list = field(default_factory=list)
    indexed: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.g1)

    @property
    def lengths(self) -> np.ndarray:
        """(N, 2) lengths of g1 and g2."""
        return np.stack([np.hypot(*self.g1.T), np.hypot(*self.g2.T)], axis=1)

    @property
    def angle(self) -> np.ndarray:
        """(N,) angle between g1 and g2, degrees."""
        return np.array([_angle_between(a, b) for a, b in zip(self.g1, self.g2, strict=True)])

    @property
    def rotation(self) -> np.ndarray:
        """(N,) in-plane rotation of g1 in degrees, [0, 180)."""
        return np.array([_rotation(a) for a in self.g1])

    def as_dict(self) -> dict:
        """Columns for a table (``layer.features``, CSV)."""
        lengths = self.lengths
        return {
            "label": np.arange(1, len(self) + 1),
            "g1_qx": self.g1[:, 0],
            "g1_qy": self.g1[:, 1],
            "g2_qx": self.g2[:, 0],
            "g2_qy": self.g2[:, 1],
            "g1_length": lengths[:, 0],
            "g2_length": lengths[:, 1],
            "angle": self.angle,
            "rotation": self.rotation,
            "n_disks": self.n_disks,
            "n_indexed": self.n_indexed,
            "residual": self.residual,
        }


def cluster_lattices(
    cluster_means, *, tolerance: float = 0.2, progress=None, **detect
) -> LatticeTable:
    """Bragg disks and lattice of every cluster-averaged pattern.

    Parameters
    ----------
    cluster_means : array_like, shape (N, Qx, Qy)
        Cluster averages (row ``i`` is label ``i + 1``).
    tolerance : float
        Passed to :func:`fit_lattice`.
    progress : callable, optional
        ``progress(done, total)``.
    **detect
        Passed to :func:`~napari_stemcluster.core.find_bragg_disks`
        (``template``, ``probe_radius``, thresholds, ...).

    Returns
    -------
    LatticeTable

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :64]
    >>> p = sum(100.0 * (np.hypot(yy - 31.5 - 10 * h, xx - 31.5 - 10 * k) <= 2.5)
    ...         for h in (-2, -1, 0, 1, 2) for k in (-2, -1, 0, 1, 2))
    >>> table = cluster_lattices(p[None], probe_radius=2.5)
    >>> table.lengths.round(3), table.n_indexed
    (array([[10., 10.]]), array([24]))
    """
    import warnings

    from .bragg import BraggWarning, find_bragg_disks

    means = np.asarray(cluster_means)
    if means.ndim != 3:
        raise ValueError(f"cluster_means must be (N, Qx, Qy); got shape {means.shape}")
    n = means.shape[0]
    table = LatticeTable(
        g1=np.full((n, 2), np.nan),
        g2=np.full((n, 2), np.nan),
        center=np.full((n, 2), np.nan),
        n_disks=np.zeros(n, np.int64),
        n_indexed=np.zeros(n, np.int64),
        residual=np.full(n, np.nan),
    )
    if n == 0:
        return table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BraggWarning)
        disks, beams = find_bragg_disks(means, return_beam=True, progress=progress, **detect)
    for i, (d, b) in enumerate(zip(disks, beams, strict=True)):
        fit = fit_lattice(d, center=b if np.all(np.isfinite(b)) else None, tolerance=tolerance)
        table.disks.append(d)
        table.hk.append(fit.hk)
        table.indexed.append(fit.indexed)
        table.n_disks[i] = len(d)
        table.center[i] = b if not fit.ok else fit.center
        if fit.ok:
            table.g1[i], table.g2[i] = fit.g1, fit.g2
            table.n_indexed[i] = fit.n_indexed
            table.residual[i] = fit.residual
    return table


def orientation_map(labels, rotation) -> np.ndarray:
    """Every position takes its cluster's in-plane rotation; NaN for background or no lattice.

    Parameters
    ----------
    labels : array_like of int, shape (Rx, Ry) or (T, Rx, Ry)
        Cluster labels, 0 = background.
    rotation : array_like of float, shape (N,), or a list of them (one per time step)
        Rotation of label ``i + 1`` (NaN where no lattice).

    Returns
    -------
    ndarray of float32, labels' shape

    Examples
    --------
    >>> orientation_map(np.array([[0, 1], [2, 2]]), [30.0, np.nan])
    array([[nan, 30.],
           [nan, nan]], dtype=float32)
    """
    labels = np.asarray(labels)
    if labels.ndim == 3:
        rots = list(rotation)
        if len(rots) != labels.shape[0]:
            raise ValueError(
                f"a time series needs one rotation array per time step ({labels.shape[0]}); "
                f"got {len(rots)}"
            )
        return np.stack([orientation_map(lab, r) for lab, r in zip(labels, rots, strict=True)])
    rot = np.asarray(rotation, np.float32).reshape(-1)
    lut = np.concatenate([[np.nan], rot]).astype(np.float32)
    if labels.size and labels.max() > len(rot):
        raise ValueError(f"labels go up to {labels.max()} but only {len(rot)} rotations are given")
    return lut[labels]
