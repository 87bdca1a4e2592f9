"""Follow clusters through the time steps of a 5D segmentation.

Each time step of a 5D-STEM series is clustered on its own, so label 7 at
one step has nothing to do with label 7 at the next. :func:`link_clusters`
gives every cluster a persistent *track* id by matching the clusters of
consecutive steps, and records what happens to the grains (nucleation,
disappearance, merging, splitting). :func:`grain_kinetics` then measures every
tracked grain against time, and :func:`growth_rates` fits its growth.

Everything here is a post-processing step on the per-step labels and cluster
averages of a :class:`~napari_stemcluster.core.result.SegmentationResult`;
the per-step labels are never modified.

Matching
--------
Between the clusters ``j`` of step ``t`` and the candidate tracks ``i`` (the
tracks seen at step ``t - 1``, and those last seen up to ``max_gap`` steps
earlier), a score combines

* spatial overlap: the intersection over union of the track's last region
  and the cluster;
* pattern similarity: the cosine similarity of their cluster-averaged
  diffraction patterns (when given);
* lattice orientation (when orientations are given): ``1 - d / (period / 2)``
  for an in-plane angle difference ``d`` modulo ``period`` (angles, or the
  rotation of the Bragg lattices), or ``1 - min(m, 90) / 90`` for the
  misorientation ``m`` modulo the crystal symmetry of the orientation
  results of :func:`~napari_stemcluster.core.orientation.orient_clusters`
  (0 for clusters matched to different phases; 0.5 when unknown),

weighted by ``weights`` and lowered by ``gap_penalty`` per missed step. A
pair is admissible only when the overlap covers at least ``min_overlap`` of
the smaller of the two regions. The matching maximises the summed score of
one-to-one pairs over the whole step (the linear assignment problem, solved
exactly by :func:`scipy.optimize.linear_sum_assignment`), so one good match
never steals a grain from a better overall assignment as a greedy choice
would.

Events
------
A cluster left unmatched is a split-off piece when at least
``event_overlap`` of it lies in the last region of a track that matched
another cluster (event ``"split"``), otherwise a nucleus (``"appear"``). A
track left unmatched merged when at least ``event_overlap`` of its region
lies in a cluster matched to another track (``"merge"``; the track ends
there); otherwise it is missing and may be re-linked up to ``max_gap`` steps
later (``"reappear"``), or it has disappeared (``"disappear"``, at the step
after it was last seen).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EVENT_KINDS",
    "Kinetics",
    "Tracking",
    "grain_kinetics",
    "growth_rates",
    "link_clusters",
    "link_result",
    "merge_tracks",
    "pattern_orientation",
    "relabel_track",
    "same_grains",
    "split_track",
    "track_series",
]

#: Kinds of events, in the order they are reported within a step.
EVENT_KINDS = ("appear", "split", "merge", "reappear", "disappear")

#: Cost of a forbidden pair in the assignment (scores lie within [-1, 1]).
_FORBIDDEN = 1e6


def _empty_events() -> dict[str, np.ndarray]:
    return {
        "time": np.zeros(0, np.int32),
        "kind": np.zeros(0, "<U9"),
        "track": np.zeros(0, np.int32),
        "other": np.zeros(0, np.int32),
    }


@dataclass
class Tracking:
    """Persistent grain identities of a 5D segmentation.

    Attributes
    ----------
    track_of : list of ndarray of int32
        One array per time step: ``track_of[t][i]`` is the track id of label
        ``i + 1`` at step ``t`` (ids start at 1; 0 for an empty label).
    step_labels : ndarray of int32, shape (T, Rx, Ry)
        The per-step labels the tracks refer to (not modified).
    events : dict of ndarray
        One row per event, sorted by time: ``time`` (int32, the first step
        showing the change), ``kind`` (str, one of :data:`EVENT_KINDS`),
        ``track`` (int32) and ``other`` (int32). For ``"merge"``, ``other``
        merged into ``track``; for ``"split"``, ``other`` split off
        ``track``; for ``"reappear"``, ``other`` is the number of steps the
        track was missing; otherwise 0.
    params : dict
        The linking parameters.
    """

    track_of: list[np.ndarray]
    step_labels: np.ndarray
    events: dict[str, np.ndarray] = field(default_factory=_empty_events)
    params: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        """Number of time steps ``T``."""
        return len(self.track_of)

    @property
    def n_tracks(self) -> int:
        """Largest track id (ids are ``1..n_tracks``; a corrected tracking may skip some)."""
        return max((int(a.max()) for a in self.track_of if a.size), default=0)

    @property
    def tracks(self) -> np.ndarray:
        """Labels relabelled with track ids, int32 ``(T, Rx, Ry)``."""
        out = np.empty(self.step_labels.shape, np.int32)
        for t in range(self.n_steps):
            out[t] = self.lut(t)[self.step_labels[t]]
        return out

    def lut(self, t: int) -> np.ndarray:
        """Look-up table label -> track id of step ``t`` (entry 0 is 0)."""
        return np.concatenate(([0], self.track_of[t])).astype(np.int32)

    def steps_of(self, track: int) -> np.ndarray:
        """Time steps at which ``track`` is present."""
        return np.array([t for t in range(self.n_steps) if np.any(self.track_of[t] == track)], int)

    def labels_of(self, track: int, t: int) -> np.ndarray:
        """Per-step labels of ``track`` at step ``t`` (empty when absent)."""
        return (np.flatnonzero(self.track_of[t] == track) + 1).astype(np.int32)


def _as_orientations(orientations, counts):
    if orientations is None:
        return None
    out = []
    if len(orientations) != len(counts):
        raise ValueError(
            f"orientations must have one array per time step ({len(counts)}); "
            f"got {len(orientations)}"
        )
    for t, (o, n) in enumerate(zip(orientations, counts, strict=True)):
        o = np.asarray(o, np.float64).reshape(-1)
        if o.shape[0] != n:
            raise ValueError(
                f"orientations[{t}] must hold one angle per cluster ({n}); got {o.shape[0]}"
            )
        out.append(o)
    return out


#: Misorientation (degrees) at which two indexed orientations count as
#: entirely different in the linking score (cubic crystals never exceed 62.8).
_MAX_MISORIENTATION = 90.0


def _lattice_period(lattices) -> float:
    """Rotational symmetry of the 2D lattices (degrees): 60 hexagonal, 90 square, else 180.

    The reduced basis of a square (hexagonal) lattice may start from any of
    its 4 (6) equivalent shortest vectors, so its angle only means something
    modulo 90 (60) degrees. The majority of the measured lattices decides.
    """
    votes = {60.0: 0, 90.0: 0, 180.0: 0}
    for tab in lattices:
        lengths = np.asarray(tab.lengths, np.float64)
        angle = np.asarray(tab.angle, np.float64)
        ok = np.isfinite(lengths).all(axis=1) & np.isfinite(angle)
        ratio = lengths[ok, 0] / np.maximum(lengths[ok, 1], 1e-12)
        equal = np.abs(ratio - 1.0) < 0.05
        square = equal & (np.abs(angle[ok] - 90.0) < 3.0)
        hexagonal = equal & ((np.abs(angle[ok] - 60.0) < 3.0) | (np.abs(angle[ok] - 120.0) < 3.0))
        votes[90.0] += int(square.sum())
        votes[60.0] += int(hexagonal.sum())
        votes[180.0] += int((~square & ~hexagonal).sum())
    return max(votes, key=lambda k: (votes[k], k))


class _Orientations:
    """Per-cluster orientations of every step, as angles or crystal rotations.

    ``similarity`` scores pairs of clusters in [0, 1] (1: the same
    orientation, 0.5: unknown); ``angles`` gives each cluster's in-plane
    angle for the kinetics, modulo ``period`` degrees.
    """

    def __init__(self, orientations, counts, period):
        self.rotations = self.phases = self.structures = None
        if hasattr(orientations, "records") and hasattr(orientations, "offsets"):
            # An OrientationResult: full crystal orientations of every cluster.
            offsets = np.asarray(orientations.offsets, np.int64)
            sizes = np.diff(offsets).tolist()
            if sizes != list(counts):
                raise ValueError(
                    f"the orientation results hold {sizes} clusters per step; "
                    f"the labels have {list(counts)}"
                )
            rec = orientations.records
            steps = [slice(int(a), int(b)) for a, b in itertools.pairwise(offsets)]
            ok = np.asarray(rec["indexed"], bool) & (np.asarray(rec["phase"]) >= 0)
            inplane = np.where(ok, np.asarray(rec["inplane_deg"], np.float64), np.nan)
            self.kind = "rotations"
            self.rotations = [np.asarray(rec["rotation"][s], np.float64) for s in steps]
            self.phases = [
                np.where(ok[s], np.asarray(rec["phase"][s], np.int64), -1) for s in steps
            ]
            self.structures = list(orientations.structures)
            self._angles = [inplane[s] for s in steps]
            self.period = 360.0 if period is None else float(period)
            return
        if isinstance(orientations, dict) and "lattices" in orientations:
            orientations = orientations["lattices"]  # a Bragg analysis
        seq = list(orientations)
        if seq and all(hasattr(tab, "g1") and hasattr(tab, "rotation") for tab in seq):
            # Lattices of a Bragg analysis: the in-plane rotation of g1.
            self.kind = "lattices"
            self.period = _lattice_period(seq) if period is None else float(period)
            self._angles = _as_orientations([tab.rotation for tab in seq], counts)
            return
        self.kind = "angles"
        self.period = 360.0 if period is None else float(period)
        self._angles = _as_orientations(seq, counts)

    def angles(self, t: int) -> np.ndarray:
        return self._angles[t]

    def similarity(self, prev_t, prev_label, t, label) -> np.ndarray:
        """Scores of the pairs (``prev_label[k]`` at step ``prev_t[k]``, ``label[k]`` at ``t``)."""
        prev_t = np.asarray(prev_t, np.int64)
        prev_row = np.asarray(prev_label, np.int64) - 1
        row = np.asarray(label, np.int64) - 1
        n = len(row)
        if self.kind != "rotations":
            a = np.array([self._angles[s][i] for s, i in zip(prev_t, prev_row, strict=True)])
            d = np.abs(a.reshape(n) - self._angles[t][row]) % self.period
            d = np.minimum(d, self.period - d)
            sim = 1.0 - d / (self.period / 2.0)
            # Unknown orientations count as neutral (0.5), not as a mismatch.
            return np.where(np.isfinite(sim), sim, 0.5)
        from .orientation import misorientation_deg

        pa = np.array([self.phases[s][i] for s, i in zip(prev_t, prev_row, strict=True)], np.int64)
        pa = pa.reshape(n)
        pb = self.phases[t][row]
        sim = np.full(n, 0.5)
        known = (pa >= 0) & (pb >= 0)
        sim[known & (pa != pb)] = 0.0  # another phase: another grain
        same = known & (pa == pb)
        for k in np.unique(pb[same]):
            sel = np.flatnonzero(same & (pb == k))
            ra = np.stack([self.rotations[prev_t[i]][prev_row[i]] for i in sel])
            d = misorientation_deg(ra, self.rotations[t][row[sel]], self.structures[int(k)])
            sim[sel] = 1.0 - np.minimum(d, _MAX_MISORIENTATION) / _MAX_MISORIENTATION
        return sim


def _check_patterns(means, counts):
    if means is None:
        return None
    if len(means) != len(counts):
        raise ValueError(
            f"cluster_means must have one array per time step ({len(counts)}); got {len(means)}"
        )
    for t, (m, n) in enumerate(zip(means, counts, strict=True)):
        shape = np.shape(m)
        if len(shape) < 2 or shape[0] != n:
            raise ValueError(
                f"cluster_means[{t}] must be (N, Qx, Qy) with N = {n} clusters; got {shape}"
            )
    return means


def _unit(m) -> np.ndarray:
    """Rows of ``m`` (N, ...) as float32 unit vectors (zero rows stay zero)."""
    m = np.asarray(m, np.float32)
    m = m.reshape(m.shape[0], -1)
    norm = np.sqrt(np.einsum("ij,ij->i", m, m, dtype=np.float64)).astype(np.float32)
    return np.divide(m, norm[:, None], out=np.zeros_like(m), where=norm[:, None] > 0)


def link_clusters(
    labels,
    cluster_means: Sequence[np.ndarray] | None = None,
    *,
    orientations: Sequence[np.ndarray] | None = None,
    orientation_period: float | None = None,
    max_gap: int = 1,
    min_overlap: float = 0.2,
    event_overlap: float = 0.3,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    gap_penalty: float = 0.1,
) -> Tracking:
    """Give the clusters of every time step persistent track ids.

    Parameters
    ----------
    labels : array_like of int, shape (T, Rx, Ry)
        Per-step cluster labels ``1..N_t`` (0 = none), as in
        ``SegmentationResult.labels`` of a 5D result.
    cluster_means : sequence of ndarray (N_t, Qx, Qy), optional
        Cluster-averaged patterns per step; their cosine similarity joins
        the score.
    orientations : optional
        Lattice orientation of each cluster, one of

        * a sequence of ndarray (N_t,): in-plane angles in degrees (NaN when
          unknown), compared modulo ``orientation_period``;
        * an :class:`~napari_stemcluster.core.orientation.OrientationResult`
          (from :func:`~napari_stemcluster.core.orientation.orient_clusters`
          on the result's cluster averages): crystal orientations, compared
          by their misorientation modulo the crystal symmetry (score
          ``1 - min(angle, 90) / 90``; clusters matched to different phases
          score 0);
        * the Bragg analysis (a dict with ``"lattices"``) or a sequence of
          :class:`~napari_stemcluster.core.lattice.LatticeTable`, one per
          step: the in-plane rotation of each lattice, modulo its 2D
          symmetry (60, 90 or 180 degrees, from the majority of lattices,
          unless ``orientation_period`` is given).

        Clusters without an orientation (not indexed) score 0.5.
    orientation_period : float, optional
        Angles differing by this many degrees are the same orientation
        (default 360 for angles; 90 for a four-fold zone axis).
    max_gap : int
        Number of consecutive steps a grain may be missing and still be
        re-linked (0 disables gap closing).
    min_overlap : float
        A track and a cluster can be matched only when their overlap covers
        at least this fraction of the smaller of the two.
    event_overlap : float
        Fraction of an unmatched cluster (track) that must lie in a matched
        track (cluster) to call a split (merge).
    weights : (float, float, float)
        Weights of overlap, pattern similarity and orientation in the score.
    gap_penalty : float
        Score subtracted per missed step when re-linking across a gap.

    Returns
    -------
    Tracking
        Track ids per step, the events, and the parameters.

    Raises
    ------
    ValueError
        If the labels are not ``(T, Rx, Ry)`` integers, or the patterns or
        orientations do not match the labels.

    Examples
    --------
    >>> labels = np.zeros((3, 4, 6), np.int32)
    >>> labels[0, :, :2] = 1; labels[0, :, 4:] = 2      # two grains
    >>> labels[1, :, 4:] = 1; labels[1, :, :3] = 2      # ids swapped, one grew
    >>> labels[2, :, :] = 1                             # they merged
    >>> tr = link_clusters(labels)
    >>> [a.tolist() for a in tr.track_of]
    [[1, 2], [2, 1], [1]]
    >>> tr.tracks[1, 0].tolist()
    [1, 1, 1, 0, 2, 2]
    >>> [(int(t), str(k), int(a), int(b)) for t, k, a, b in zip(*tr.events.values())]
    [(2, 'merge', 1, 2)]
    """
    from scipy.optimize import linear_sum_assignment

    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (T, Rx, Ry); got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must hold integers; got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0; got {max_gap}")
    for name, v in (("min_overlap", min_overlap), ("event_overlap", event_overlap)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be within [0, 1]; got {v}")
    w = np.asarray(weights, np.float64)
    if w.shape != (3,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be three non-negative numbers; got {weights!r}")
    if orientation_period is not None and not orientation_period > 0:
        raise ValueError(f"orientation_period must be > 0; got {orientation_period}")

    n_t = labels.shape[0]
    sizes = [np.bincount(labels[t].ravel()).astype(np.int64) for t in range(n_t)]
    counts = [max(len(s) - 1, 0) for s in sizes]
    sizes = [np.pad(s, (0, counts[t] + 1 - len(s))) for t, s in enumerate(sizes)]
    means = _check_patterns(cluster_means, counts)
    units: dict[int, np.ndarray] = {}  # unit patterns of the steps still in use
    orient = (
        None if orientations is None else _Orientations(orientations, counts, orientation_period)
    )
    if means is None:
        w[1] = 0.0
    if orient is None:
        w[2] = 0.0
    w /= w.sum()

    track_of = [np.zeros(c, np.int32) for c in counts]
    events: list[tuple[int, int, int, int]] = []  # (time, kind index, track, other)
    kind = {k: i for i, k in enumerate(EVENT_KINDS)}
    # Tracks that may still be matched: id -> (last step, label there).
    alive: dict[int, tuple[int, int]] = {}
    next_id = 1
    # Empty labels (e.g. merged away by an edit) get no track (id 0).
    for j in np.flatnonzero(sizes[0][1:]):
        track_of[0][j] = next_id
        alive[next_id] = (0, int(j) + 1)
        next_id += 1

    for t in range(1, n_t):
        # Missing for too long: the track has disappeared.
        for tid, (s, _) in list(alive.items()):
            if t - s - 1 > max_gap:
                events.append((s + 1, kind["disappear"], tid, 0))
                del alive[tid]
        cand = sorted(alive)
        m = counts[t]
        if not cand or m == 0:
            for j in np.flatnonzero(sizes[t][1:]):
                track_of[t][j] = next_id
                alive[next_id] = (t, int(j) + 1)
                events.append((t, kind["appear"], next_id, 0))
                next_id += 1
            continue
        cur = labels[t].ravel()
        # Contingency tables with each earlier step the candidates come from.
        inter = np.zeros((len(cand), m), np.int64)
        prev_size = np.zeros(len(cand), np.int64)
        gaps = np.zeros(len(cand), np.int64)
        for s in sorted({alive[c][0] for c in cand}):
            ns = counts[s]
            table = np.bincount(
                labels[s].ravel().astype(np.int64) * (m + 1) + cur, minlength=(ns + 1) * (m + 1)
            ).reshape(ns + 1, m + 1)
            for r, c in enumerate(cand):
                if alive[c][0] == s:
                    lab = alive[c][1]
                    inter[r] = table[lab, 1:]
                    prev_size[r] = sizes[s][lab]
                    gaps[r] = t - s - 1
        cur_size = sizes[t][1:]
        union = prev_size[:, None] + cur_size[None, :] - inter
        iou = inter / np.maximum(union, 1)
        smaller = np.minimum(prev_size[:, None], cur_size[None, :])
        admissible = (inter > 0) & (inter >= min_overlap * smaller)
        score = w[0] * iou
        if means is not None:
            for s in {alive[c][0] for c in cand} | {t}:
                if s not in units:
                    units[s] = _unit(means[s])
            for s in [s for s in units if s < t - max_gap - 1]:
                del units[s]
            # Pattern similarity of the admissible pairs only: each track
            # overlaps a few clusters, so this is far less than a full product.
            ri, ci = np.nonzero(admissible)
            prev_u = np.stack([units[alive[cand[r]][0]][alive[cand[r]][1] - 1] for r in ri])
            cos = np.einsum("ij,ij->i", prev_u, units[t][ci]) if ri.size else np.zeros(0)
            pattern = np.zeros(score.shape)
            pattern[ri, ci] = np.clip(cos, -1.0, 1.0)
            score = score + w[1] * pattern
        if orient is not None:
            ri, ci = np.nonzero(admissible)
            osim = np.zeros(score.shape)
            osim[ri, ci] = orient.similarity(
                [alive[cand[r]][0] for r in ri], [alive[cand[r]][1] for r in ri], t, ci + 1
            )
            score = score + w[2] * osim
        score = score - gap_penalty * gaps[:, None]
        cost = np.where(admissible, -score, _FORBIDDEN)
        rows, cols = linear_sum_assignment(cost)
        ok = admissible[rows, cols]
        rows, cols = rows[ok], cols[ok]
        matched_row = np.full(len(cand), -1)
        matched_row[rows] = cols
        matched_col = np.full(m, -1)
        matched_col[cols] = rows
        for r, c in zip(rows, cols, strict=True):
            tid = cand[r]
            track_of[t][c] = tid
            if gaps[r] > 0:
                events.append((t, kind["reappear"], tid, int(gaps[r])))
        # Unmatched clusters: split-off pieces or nuclei.
        for c in np.flatnonzero((matched_col < 0) & (cur_size > 0)):
            share = inter[:, c] / max(cur_size[c], 1)
            share = np.where((matched_row >= 0) & (gaps == 0), share, 0.0)
            r = int(np.argmax(share))
            track_of[t][c] = next_id
            if share[r] >= event_overlap and share[r] > 0:
                events.append((t, kind["split"], cand[r], next_id))
            else:
                events.append((t, kind["appear"], next_id, 0))
            next_id += 1
        # Unmatched tracks: merged into a matched cluster, or missing.
        for r in np.flatnonzero(matched_row < 0):
            share = inter[r] / max(prev_size[r], 1)
            share = np.where(matched_col >= 0, share, 0.0)
            c = int(np.argmax(share)) if m else 0
            if gaps[r] == 0 and m and share[c] >= event_overlap and share[c] > 0:
                events.append((t, kind["merge"], int(track_of[t][c]), cand[r]))
                del alive[cand[r]]
        for c in np.flatnonzero(track_of[t]):
            alive[int(track_of[t][c])] = (t, int(c) + 1)
    for tid, (s, _) in alive.items():
        if s + 1 < n_t:
            events.append((s + 1, kind["disappear"], tid, 0))

    events.sort()
    ev = _empty_events()
    if events:
        arr = np.array(events, np.int64)
        ev = {
            "time": arr[:, 0].astype(np.int32),
            "kind": np.array([EVENT_KINDS[k] for k in arr[:, 1]], "<U9"),
            "track": arr[:, 2].astype(np.int32),
            "other": arr[:, 3].astype(np.int32),
        }
    params = {
        "max_gap": int(max_gap),
        "min_overlap": float(min_overlap),
        "event_overlap": float(event_overlap),
        "weights": [float(x) for x in weights],
        "gap_penalty": float(gap_penalty),
        "orientation_period": float(360.0 if orient is None else orient.period),
        "used_patterns": means is not None,
        "used_orientations": None if orient is None else orient.kind,
    }
    return Tracking(track_of=track_of, step_labels=labels, events=ev, params=params)


def link_result(result, *, orientations=None, **kwargs) -> Tracking:
    """:func:`link_clusters` on a 5D :class:`~napari_stemcluster.core.result.SegmentationResult`.

    Uses the result's labels and cluster averages; ``kwargs`` are passed on.

    Examples
    --------
    >>> from napari_stemcluster import segment
    >>> from napari_stemcluster.synthetic_series import make_growth_events
    >>> series = make_growth_events((48, 48), (16, 16))
    >>> res = segment(series.cube, threshold=0.9, real_mask=0.5)
    >>> tr = link_result(res)
    >>> tr.tracks.shape
    (8, 48, 48)
    """
    if not result.is_time_series:
        raise ValueError("linking needs a 5D (time series) result; this one is 4D")
    return link_clusters(result.labels, result.cluster_means, orientations=orientations, **kwargs)


# --------------------------------------------------------------------------
# kinetics


@dataclass
class Kinetics:
    """Per-grain measurements against time, and growth rates.

    Attributes
    ----------
    table : dict of ndarray
        One row per (track, step) where the track is present, sorted by
        track then step: ``track``, ``step``, ``time``, ``area_px``,
        ``area``, ``eq_radius``, ``mean_intensity``, ``mean_similarity``,
        ``orientation`` (NaN when unknown).
    rates : dict of ndarray
        One row per track (see :func:`growth_rates`).
    units : dict of str
        Unit of every column that has one.
    """

    table: dict[str, np.ndarray]
    rates: dict[str, np.ndarray]
    units: dict[str, str]

    def rows(self, track: int) -> np.ndarray:
        """Indices of the table rows of ``track``."""
        return np.flatnonzero(self.table["track"] == track)


def _circular_mean(angles, wts, period):
    """Weighted mean of angles modulo ``period`` (NaN when none is finite)."""
    ok = np.isfinite(angles) & (wts > 0)
    if not ok.any():
        return np.nan
    phase = 2 * np.pi * angles[ok] / period
    z = np.sum(wts[ok] * np.exp(1j * phase))
    return float(np.angle(z) / (2 * np.pi) * period % period)


def grain_kinetics(
    tracking: Tracking,
    result=None,
    *,
    intensity=None,
    orientations: Sequence[np.ndarray] | None = None,
    calibration: dict | None = None,
    orientation_period: float | None = None,
) -> Kinetics:
    """Area, radius, intensity, similarity and orientation of every tracked grain.

    Parameters
    ----------
    tracking : Tracking
        From :func:`link_clusters`.
    result : SegmentationResult, optional
        Its segmentation: gives the mean similarity map and, without
        ``intensity``, the mean intensity (counts per pattern, the sum of the
        cluster average).
    intensity : array_like (T, Rx, Ry), optional
        An intensity map (e.g. a virtual image) to average over each grain
        instead.
    orientations : sequence of ndarray (N_t,), OrientationResult, lattices, or "pattern", optional
        Lattice orientation (degrees) of each cluster per step, or the
        orientation or Bragg results accepted by :func:`link_clusters` (their
        in-plane angle: ``inplane_deg`` of the matched orientation, or the
        rotation of the lattice vector ``g1``); a grain's is the
        size-weighted circular mean of its clusters'. ``"pattern"``
        measures it from the result's cluster averages
        (:func:`pattern_orientation`, order 4, period 90 degrees).
    calibration : dict, optional
        ``r_pixel_size``, ``r_units``, ``t_step``, ``t_units`` (as
        :class:`~napari_stemcluster.io.Calibration`); without ``t_step``
        time is counted in steps.
    orientation_period : float, optional
        Period of the orientations in degrees (default: the linking's
        ``orientation_period``), for averaging and unwrapping them.

    Returns
    -------
    Kinetics

    Examples
    --------
    >>> labels = np.zeros((2, 4, 4), np.int32)
    >>> labels[0, :2, :2] = 1; labels[1, :3, :3] = 1
    >>> kin = grain_kinetics(link_clusters(labels), calibration={"r_pixel_size": 0.5,
    ...                      "r_units": "nm", "t_step": 2.0, "t_units": "s"})
    >>> kin.table["area"].tolist(), kin.units["area"]
    ([1.0, 2.25], 'nm^2')
    >>> float(kin.rates["growth_rate"][0]), kin.units["growth_rate"]
    (0.625, 'nm^2/s')
    """
    cal = dict(calibration or {})
    px = float(cal.get("r_pixel_size") or 1.0)
    r_units = str(cal.get("r_units") or "pixel")
    t_step = cal.get("t_step")
    t_step = float(t_step) if t_step else None
    t_units = str(cal.get("t_units") or "s") if t_step else "step"
    n_t = tracking.n_steps
    if isinstance(orientations, str):
        if orientations != "pattern":
            raise ValueError(f"orientations must be arrays or 'pattern'; got {orientations!r}")
        if result is None:
            raise ValueError("orientations='pattern' needs the result's cluster averages")
        orientations = [pattern_orientation(m)[0] for m in result.cluster_means]
        if orientation_period is None:
            orientation_period = 90.0
    orient = None
    period = orientation_period
    if orientations is not None:
        src = _Orientations(orientations, [len(a) for a in tracking.track_of], period)
        if period is None and src.kind == "angles":
            src.period = float(tracking.params.get("orientation_period", 360.0))
        orient = [src.angles(t) for t in range(n_t)]
        period = src.period
    period = float(tracking.params.get("orientation_period", 360.0) if period is None else period)
    labels = tracking.step_labels
    if intensity is not None:
        intensity = np.asarray(intensity)
        if intensity.shape != labels.shape:
            raise ValueError(f"intensity must have shape {labels.shape}; got {intensity.shape}")
    msim = None if result is None else np.asarray(result.mean_similarity)
    cols: dict[str, list] = {
        k: []
        for k in (
            "track",
            "step",
            "area_px",
            "mean_intensity",
            "mean_similarity",
            "orientation",
        )
    }
    for t in range(n_t):
        lut = tracking.lut(t)
        n_tr = int(lut.max(initial=0)) + 1
        lab = labels[t].ravel()
        trk = lut[lab]
        area = np.bincount(trk, minlength=n_tr)
        present = np.flatnonzero(area[1:]) + 1
        if present.size == 0:
            continue
        if intensity is not None:
            inten = np.bincount(trk, np.asarray(intensity[t], np.float64).ravel(), n_tr)
        elif result is not None:
            totals = np.asarray(result.cluster_means[t], np.float64)
            totals = totals.reshape(totals.shape[0], -1).sum(axis=1)
            per_label = np.bincount(lab, minlength=len(totals) + 1)[1:] * totals
            inten = np.bincount(tracking.track_of[t], per_label, n_tr)
        else:
            inten = np.full(n_tr, np.nan)
        if msim is not None:
            sim = np.bincount(trk, np.asarray(msim[t], np.float64).ravel(), n_tr)
        else:
            sim = np.full(n_tr, np.nan)
        sizes_t = np.bincount(lab, minlength=len(lut))[1:].astype(np.float64)
        for g in present:
            cols["track"].append(g)
            cols["step"].append(t)
            cols["area_px"].append(area[g])
            cols["mean_intensity"].append(inten[g] / area[g])
            cols["mean_similarity"].append(sim[g] / area[g])
            if orient is None:
                cols["orientation"].append(np.nan)
            else:
                mine = tracking.track_of[t] == g
                cols["orientation"].append(_circular_mean(orient[t][mine], sizes_t[mine], period))
    table = {
        "track": np.asarray(cols["track"], np.int32),
        "step": np.asarray(cols["step"], np.int32),
    }
    table["time"] = table["step"] * (t_step or 1.0)
    table["area_px"] = np.asarray(cols["area_px"], np.int64)
    table["area"] = table["area_px"] * px * px
    table["eq_radius"] = np.sqrt(table["area"] / np.pi)
    for k in ("mean_intensity", "mean_similarity", "orientation"):
        table[k] = np.asarray(cols[k], np.float64)
    order = np.lexsort((table["step"], table["track"]))
    table = {k: v[order] for k, v in table.items()}
    units = {
        "time": t_units,
        "area_px": "pixel",
        "area": f"{r_units}^2",
        "eq_radius": r_units,
        "mean_intensity": "counts/pattern" if intensity is None else "",
        "orientation": "deg",
    }
    rates = growth_rates(table, period)
    units.update(
        {
            "growth_rate": f"{units['area']}/{t_units}",
            "radial_rate": f"{r_units}/{t_units}",
            "rotation_rate": f"deg/{t_units}",
            "first_time": t_units,
            "last_time": t_units,
            "area_first": units["area"],
            "area_last": units["area"],
        }
    )
    return Kinetics(table=table, rates=rates, units=units)


def _slope(x, y):
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(x) == 0:
        return np.nan
    x0 = x - x.mean()
    return float(np.dot(x0, y - y.mean()) / np.dot(x0, x0))


def growth_rates(table: dict[str, np.ndarray], period: float = 360.0) -> dict[str, np.ndarray]:
    """Least-squares growth rates of every track in a kinetics table.

    Parameters
    ----------
    table : dict of ndarray
        :attr:`Kinetics.table` (columns ``track``, ``step``, ``time``,
        ``area``, ``eq_radius``, ``orientation``).
    period : float
        Orientation period in degrees (angles are unwrapped with it).

    Returns
    -------
    dict of ndarray
        One row per track: ``track``, ``first_step``, ``last_step``,
        ``n_steps``, ``first_time``, ``last_time``, ``area_first``,
        ``area_last``, ``growth_rate`` (slope of area against time),
        ``radial_rate`` (slope of the equivalent radius) and
        ``rotation_rate`` (slope of the unwrapped orientation); slopes are
        NaN for a grain seen once.

    Examples
    --------
    >>> table = {"track": np.array([1, 1, 1]), "step": np.array([0, 1, 2]),
    ...          "time": np.array([0.0, 1.0, 2.0]), "area": np.array([1.0, 3.0, 5.0]),
    ...          "eq_radius": np.ones(3), "orientation": np.array([350.0, 0.0, 10.0])}
    >>> r = growth_rates(table)
    >>> r["growth_rate"].tolist(), r["rotation_rate"].tolist()
    ([2.0], [10.0])
    """
    ids = np.unique(table["track"])
    out = {k: [] for k in ("track", "first_step", "last_step", "n_steps")}
    out.update({k: [] for k in ("first_time", "last_time", "area_first", "area_last")})
    out.update({k: [] for k in ("growth_rate", "radial_rate", "rotation_rate")})
    for g in ids:
        rows = np.flatnonzero(table["track"] == g)
        x = np.asarray(table["time"][rows], np.float64)
        o = np.asarray(table["orientation"][rows], np.float64)
        if np.isfinite(o).sum() >= 2:
            ok = np.isfinite(o)
            o = o.copy()
            o[ok] = np.unwrap(o[ok], period=period)
        out["track"].append(g)
        out["first_step"].append(table["step"][rows[0]])
        out["last_step"].append(table["step"][rows[-1]])
        out["n_steps"].append(len(rows))
        out["first_time"].append(x[0])
        out["last_time"].append(x[-1])
        out["area_first"].append(table["area"][rows[0]])
        out["area_last"].append(table["area"][rows[-1]])
        out["growth_rate"].append(_slope(x, np.asarray(table["area"][rows], np.float64)))
        out["radial_rate"].append(_slope(x, np.asarray(table["eq_radius"][rows], np.float64)))
        out["rotation_rate"].append(_slope(x, o))
    types = {"track": np.int32, "first_step": np.int32, "last_step": np.int32, "n_steps": np.int32}
    return {k: np.asarray(v, types.get(k, np.float64)) for k, v in out.items()}


# --------------------------------------------------------------------------
# corrections of identities, at every time step at once


def _changed(before: list[np.ndarray], after: list[np.ndarray]) -> list[int]:
    return [
        t for t, (a, b) in enumerate(zip(before, after, strict=True)) if not np.array_equal(a, b)
    ]


def _with(tracking: Tracking, track_of, events) -> Tracking:
    return Tracking(
        track_of=track_of,
        step_labels=tracking.step_labels,
        events=events,
        params=dict(tracking.params),
    )


def merge_tracks(
    tracking: Tracking, tracks: Sequence[int], target: int | None = None
) -> tuple[Tracking, list[int]]:
    """Make several tracks one grain, at every time step.

    Parameters
    ----------
    tracking : Tracking
    tracks : sequence of int
        Track ids to merge (at least two).
    target : int, optional
        The id they all get; default the smallest.

    Returns
    -------
    tracking : Tracking
        A new tracking (the input is unchanged). Events between the merged
        tracks are dropped; the others refer to ``target``.
    changed : list of int
        The time steps whose ids changed.

    Examples
    --------
    >>> labels = np.zeros((2, 2, 4), np.int32)
    >>> labels[0, :, :2] = 1; labels[1, :, 2:] = 1     # no overlap: two tracks
    >>> tr = link_clusters(labels)
    >>> [a.tolist() for a in tr.track_of]
    [[1], [2]]
    >>> fixed, changed = merge_tracks(tr, [1, 2])
    >>> [a.tolist() for a in fixed.track_of], changed
    ([[1], [1]], [1])
    """
    ids = sorted({int(i) for i in tracks})
    if len(ids) < 2:
        raise ValueError(f"merging needs at least two track ids; got {list(tracks)}")
    existing = set(
        np.concatenate([a for a in tracking.track_of] + [np.zeros(0, np.int32)]).tolist()
    )
    missing = [i for i in ids if i not in existing or i <= 0]
    if missing:
        raise ValueError(f"no such track: {', '.join(map(str, missing))}")
    target = ids[0] if target is None else int(target)
    if target not in ids:
        raise ValueError(f"target {target} is not one of the merged tracks {ids}")
    track_of = [np.where(np.isin(a, ids), target, a).astype(np.int32) for a in tracking.track_of]
    ev = {k: v.copy() for k, v in tracking.events.items()}
    for col in ("track", "other"):
        hit = np.isin(ev[col], ids) & (ev["kind"] != "reappear" if col == "other" else True)
        ev[col][hit] = target
    drop = (
        (ev["track"] == target) & (ev["other"] == target) & np.isin(ev["kind"], ["merge", "split"])
    )
    # A merged grain neither appears nor disappears in between.
    first = min((t for t in range(len(track_of)) if np.any(track_of[t] == target)), default=0)
    last = max((t for t in range(len(track_of)) if np.any(track_of[t] == target)), default=0)
    inner = (ev["track"] == target) & (
        ((ev["kind"] == "appear") & (ev["time"] > first))
        | ((ev["kind"] == "disappear") & (ev["time"] <= last))
    )
    keep = ~(drop | inner)
    ev = {k: v[keep] for k, v in ev.items()}
    return _with(tracking, track_of, ev), _changed(tracking.track_of, track_of)


def relabel_track(tracking: Tracking, track: int, new_id: int) -> tuple[Tracking, list[int]]:
    """Give ``track`` the id ``new_id`` at every step (merges if it exists).

    Examples
    --------
    >>> labels = np.ones((2, 2, 2), np.int32)
    >>> fixed, changed = relabel_track(link_clusters(labels), 1, 5)
    >>> [a.tolist() for a in fixed.track_of], changed
    ([[5], [5]], [0, 1])
    """
    track, new_id = int(track), int(new_id)
    if new_id <= 0:
        raise ValueError(f"track ids are positive; got {new_id}")
    if not any(np.any(a == track) for a in tracking.track_of):
        raise ValueError(f"no such track: {track}")
    if new_id == track:
        return tracking, []
    if any(np.any(a == new_id) for a in tracking.track_of):
        return merge_tracks(tracking, [track, new_id], target=new_id)
    track_of = [np.where(a == track, new_id, a).astype(np.int32) for a in tracking.track_of]
    ev = {k: v.copy() for k, v in tracking.events.items()}
    ev["track"][ev["track"] == track] = new_id
    ev["other"][(ev["other"] == track) & (ev["kind"] != "reappear")] = new_id
    return _with(tracking, track_of, ev), _changed(tracking.track_of, track_of)


def split_track(tracking: Tracking, track: int, step: int) -> tuple[Tracking, list[int]]:
    """Cut a track in two in time: from ``step`` on it is a new grain.

    Use it where two grains were linked by mistake. The new id is one more
    than the largest in use.

    Examples
    --------
    >>> labels = np.ones((3, 2, 2), np.int32)
    >>> fixed, changed = split_track(link_clusters(labels), 1, 2)
    >>> [a.tolist() for a in fixed.track_of], changed
    ([[1], [1], [2]], [2])
    """
    track, step = int(track), int(step)
    steps = tracking.steps_of(track)
    if steps.size == 0:
        raise ValueError(f"no such track: {track}")
    if not steps[0] < step <= steps[-1]:
        raise ValueError(
            f"track {track} spans steps {steps[0]}..{steps[-1]}; a split step must be "
            f"within {steps[0] + 1}..{steps[-1]}"
        )
    new_id = tracking.n_tracks + 1
    track_of = [
        np.where(a == track, new_id, a).astype(np.int32) if t >= step else a.copy()
        for t, a in enumerate(tracking.track_of)
    ]
    ev = {k: v.copy() for k, v in tracking.events.items()}
    late = ev["time"] >= step
    ev["track"][late & (ev["track"] == track)] = new_id
    ev["other"][late & (ev["other"] == track) & (ev["kind"] != "reappear")] = new_id
    extra = {
        "time": np.array([step, step], np.int32),
        "kind": np.array(["disappear", "appear"], "<U9"),
        "track": np.array([track, new_id], np.int32),
        "other": np.zeros(2, np.int32),
    }
    ev = {k: np.concatenate([ev[k], extra[k]]) for k in ev}
    order = np.argsort(ev["time"], kind="stable")
    ev = {k: v[order] for k, v in ev.items()}
    return _with(tracking, track_of, ev), _changed(tracking.track_of, track_of)


def pattern_orientation(
    means, order: int = 4, inner: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """In-plane orientation of diffraction patterns from their angular harmonic.

    The Bragg intensity above each pattern's median (beyond ``inner`` of the
    detector's half-width, so the direct beam does not count) is weighted by
    ``exp(i * order * theta)`` around the detector centre; the phase of the
    sum divided by ``order`` is the orientation, modulo ``360 / order``
    degrees. For a pattern with an ``order``-fold axis (e.g. ``order=4`` and
    an fcc [001] zone) it is the lattice rotation; for others it is a fixed
    offset from it, so its changes still follow a rotation. A single,
    centred zone axis is assumed.

    Parameters
    ----------
    means : array_like (N, Qx, Qy)
        Patterns, e.g. cluster averages of one time step.
    order : int
        Harmonic order (2, 4 or 6 for two-, four- and six-fold patterns).
    inner : float
        Inner radius of the ring used, as a fraction of half the smaller
        detector side.

    Returns
    -------
    angle : ndarray of float64 (N,)
        Degrees in ``[0, 360 / order)``; NaN for a pattern without Bragg
        intensity.
    strength : ndarray of float64 (N,)
        Magnitude of the normalised harmonic in [0, 1]: near 0 when the
        angle is meaningless.

    Examples
    --------
    >>> q = np.zeros((1, 21, 21)); q[0, 10, 10] = 50
    >>> for x, y in [(16, 13), (4, 7), (7, 16), (13, 4)]:  # four spots, 26.6 deg
    ...     q[0, x, y] = 10
    >>> angle, strength = pattern_orientation(q)
    >>> round(float(angle[0]), 1), round(float(strength[0]), 2)
    (26.6, 1.0)
    """
    m = np.asarray(means, np.float64)
    if m.ndim != 3:
        raise ValueError(f"means must be (N, Qx, Qy); got shape {m.shape}")
    if order < 1:
        raise ValueError(f"order must be >= 1; got {order}")
    n, qx, qy = m.shape
    x = np.arange(qx) - (qx - 1) / 2
    y = np.arange(qy) - (qy - 1) / 2
    gx, gy = np.meshgrid(x, y, indexing="ij")
    r = np.hypot(gx, gy)
    half = min(qx, qy) / 2
    ring = (r > inner * half) & (r < half)
    if n == 0 or not ring.any():
        return np.full(n, np.nan), np.zeros(n)
    vals = m.reshape(n, -1)[:, ring.ravel()]
    w = np.clip(vals - np.median(vals, axis=1, keepdims=True), 0.0, None)
    phase = np.exp(1j * order * np.arctan2(gy, gx)[ring])
    total = w.sum(axis=1)
    z = (w @ phase) / np.where(total > 0, total, 1.0)
    angle = np.degrees(np.angle(z)) / order % (360.0 / order)
    angle[total <= 0] = np.nan
    return angle, np.abs(z)


def track_series(
    result, calibration: dict | None = None, *, orientations=None, intensity=None, **kwargs
) -> tuple[Tracking, Kinetics]:
    """Link a 5D result and measure its grains: :func:`link_result` + :func:`grain_kinetics`.

    Parameters
    ----------
    result : SegmentationResult
        A 5D segmentation.
    calibration : dict, optional
        ``r_pixel_size``, ``r_units``, ``t_step``, ``t_units``.
    orientations, intensity
        As in :func:`link_clusters` and :func:`grain_kinetics`;
        ``orientations="pattern"`` measures them from the cluster averages
        (:func:`pattern_orientation`, order 4) for the kinetics only, with a
        period of 90 degrees.
    **kwargs
        Linking parameters of :func:`link_clusters`.

    Returns
    -------
    tracking : Tracking
    kinetics : Kinetics

    Examples
    --------
    >>> from napari_stemcluster import segment
    >>> from napari_stemcluster.synthetic_series import make_growth_events
    >>> series = make_growth_events((48, 48), (16, 16))
    >>> res = segment(series.cube, threshold=0.9, real_mask=0.5)
    >>> tracking, kinetics = track_series(res, series.calibration)
    >>> kinetics.units["area"], kinetics.units["growth_rate"]
    ('nm^2', 'nm^2/s')
    """
    # Measured orientations serve the kinetics only: linking by them would
    # need the same reference for every zone axis.
    measured = isinstance(orientations, str)
    tracking = link_result(result, orientations=None if measured else orientations, **kwargs)
    kinetics = grain_kinetics(
        tracking, result, intensity=intensity, orientations=orientations, calibration=calibration
    )
    return tracking, kinetics


def same_grains(tracking: Tracking, t: int, labels: Sequence[int]) -> dict[int, list[int]]:
    """The labels of every time step that belong to the grains of ``labels`` at step ``t``.

    Used to carry a correction made at one step (merging or splitting
    clusters) over to every step.

    Parameters
    ----------
    tracking : Tracking
    t : int
        The step the labels are given at.
    labels : sequence of int
        Per-step labels at step ``t``.

    Returns
    -------
    dict
        ``{step: [labels]}`` for every step where at least one of the grains
        is present (labels sorted).

    Examples
    --------
    >>> labels = np.zeros((2, 1, 4), np.int32)
    >>> labels[0, 0] = [1, 1, 2, 2]; labels[1, 0] = [2, 2, 1, 1]
    >>> same_grains(link_clusters(labels), 0, [1, 2])
    {0: [1, 2], 1: [1, 2]}
    >>> same_grains(link_clusters(labels), 1, [1])
    {0: [2], 1: [1]}
    """
    t = int(t)
    if not 0 <= t < tracking.n_steps:
        raise ValueError(f"time step {t} is outside 0..{tracking.n_steps - 1}")
    lut = tracking.track_of[t]
    bad = [int(v) for v in labels if not 1 <= int(v) <= len(lut)]
    if bad:
        raise ValueError(f"no label {', '.join(map(str, bad))} at time step {t}")
    tracks = {int(lut[int(v) - 1]) for v in labels} - {0}  # empty labels: no grain
    out = {}
    for s, ids in enumerate(tracking.track_of):
        mine = np.flatnonzero(np.isin(ids, list(tracks))) + 1
        if mine.size:
            out[s] = [int(v) for v in mine]
    return out
