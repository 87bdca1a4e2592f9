"""Mask, threshold and region growing of one scan, with diagnostics.

:func:`cluster_scan` is the part of the pipeline that runs on the gathered
similarity of one scan (one time step): it is shared by
:func:`napari_stemcluster.core.segment` and the out-of-core engine, so both
choose the same automatic threshold and report the same diagnostics.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field

import numpy as np

from .masking import real_space_mask
from .regions import grow_regions
from .threshold import auto_threshold

#: ``linkage="mean"``: the squared cosine of a candidate with its cluster's
#: running mean must reach ``1 - (1 - LINK_MARGIN) * (1 - threshold)``: its
#: distance from the mean must be a little smaller than a pair may be apart.
#: 0 and -0.5 were measured too (benchmarks/quality.py, two seeds, with and
#: without annulus and blur): both let more grains chain.
LINK_MARGIN = 0.1


@dataclass
class Diagnostics:
    """What one segmentation (one scan or time step) did, and why.

    Attributes
    ----------
    positions : int
        Scan positions.
    in_mask : int
        Positions the real-space mask kept.
    clustered : int
        Positions in the clusters kept.
    clustered_fraction : float
        ``clustered / in_mask`` (0 when the mask is empty).
    clusters : int
        Clusters kept.
    dropped_small : int
        Clusters dropped as smaller than ``min_cluster_size``.
    dropped_positions : int
        Positions in those clusters.
    threshold : float
        The similarity threshold used.
    threshold_source : str
        ``"auto"`` or ``"fixed"``.
    warnings : list of str
        Problems with the input (all-zero or identical patterns).
    reason, suggestion : str
        Empty unless no cluster was found: the likely reason and what to try.
    """

    positions: int = 0
    in_mask: int = 0
    clustered: int = 0
    clustered_fraction: float = 0.0
    clusters: int = 0
    dropped_small: int = 0
    dropped_positions: int = 0
    threshold: float = 0.0
    threshold_source: str = "fixed"
    warnings: list = field(default_factory=list)
    reason: str = ""
    suggestion: str = ""

    def as_dict(self) -> dict:
        """JSON-serialisable copy."""
        return asdict(self)

    def summary(self) -> str:
        """One line for a status bar or the command line.

        Examples
        --------
        >>> d = Diagnostics(100, 40, 30, 0.75, 2, 1, 3, 0.8, "auto")
        >>> for part in d.summary().split("; "):
        ...     print(part)
        threshold 0.80 (auto)
        mask 40/100 positions, 75% clustered
        2 clusters (1 dropped < min size)
        """
        text = (
            f"threshold {self.threshold:.2f} ({self.threshold_source}); mask "
            f"{self.in_mask}/{self.positions} positions, {100 * self.clustered_fraction:.0f}% "
            f"clustered; {self.clusters} clusters ({self.dropped_small} dropped < min size)"
        )
        if self.reason:
            text += f". No clusters: {self.reason}; {self.suggestion}"
        for w in self.warnings:
            text += f". Warning: {w}"
        return text


def link_threshold(threshold: float) -> float:
    """Squared-cosine bound of the ``"mean"`` linkage for a pair threshold.

    Examples
    --------
    >>> round(link_threshold(0.8), 3)
    0.82
    """
    return 1.0 - (1.0 - LINK_MARGIN) * (1.0 - float(threshold))


def cluster_scan(
    similarity: np.ndarray,
    mean_similarity: np.ndarray,
    *,
    threshold="auto",
    min_cluster_size: int = 5,
    real_mask="dark_field",
    mask_map: np.ndarray | None = None,
    signal: np.ndarray | None = None,
    mask_min_size: int = 0,
    mask_hole_size: int = 0,
    linkage: str = "pair",
    features: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, Diagnostics]:
    """Real-space mask, threshold and clusters of one scan.

    Parameters
    ----------
    similarity : ndarray, shape (Rx, Ry, 8)
    mean_similarity : ndarray, shape (Rx, Ry)
        Seed priority (and the map the mask thresholds unless ``mask_map``).
    threshold : float or "auto"
        Pair-similarity threshold; ``"auto"`` uses :func:`auto_threshold` on
        the positions of the real-space mask.
    min_cluster_size : int
        Smaller clusters are dropped (and counted in the diagnostics).
    real_mask
        As :func:`~napari_stemcluster.core.masking.real_space_mask`.
    mask_map : ndarray, optional
        Map the mask thresholds instead of ``mean_similarity``.
    signal : ndarray, optional
        Dark-field image for ``real_mask="dark_field"``.
    mask_min_size, mask_hole_size : int
        Mask clean-up.
    linkage : {"pair", "mean"}
        Growth criterion, see :func:`~napari_stemcluster.core.regions.grow_regions`.
    features : ndarray, optional
        Pattern features for ``linkage="mean"``.

    Returns
    -------
    labels : ndarray of int32, shape (Rx, Ry)
    real_mask : ndarray of bool, shape (Rx, Ry)
    diagnostics : Diagnostics

    Examples
    --------
    >>> from napari_stemcluster.core.similarity import neighbor_similarity, mean_similarity
    >>> cube = np.zeros((6, 6, 4, 4), np.uint16)
    >>> cube[:, :3, 0, 0] = 100
    >>> cube[:, 3:, 3, 3] = 100
    >>> sim = neighbor_similarity(cube)
    >>> labels, mask, diag = cluster_scan(sim, mean_similarity(sim), real_mask=None)
    >>> int(labels.max()), diag.threshold, diag.clusters
    (2, 0.88, 2)
    """
    ms = np.asarray(mean_similarity)
    rmask = real_space_mask(
        ms if mask_map is None else mask_map,
        real_mask,
        min_size=mask_min_size,
        hole_size=mask_hole_size,
        signal=signal,
    )
    diag = Diagnostics(positions=int(ms.size), in_mask=int(rmask.sum()))
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ValueError(f"threshold must be a number or 'auto'; got {threshold!r}")
        t = auto_threshold(similarity, rmask)
        diag.threshold_source = "auto"
    elif isinstance(threshold, numbers.Real) and not isinstance(threshold, bool):
        t = float(threshold)
    else:
        raise ValueError(f"threshold must be a number or 'auto'; got {threshold!r}")
    diag.threshold = t
    labels, _ = grow_regions(
        similarity,
        t,
        mean_similarity=ms,
        mask=rmask,
        min_cluster_size=1,
        linkage=linkage,
        features=features,
        link_threshold=link_threshold(t),
    )
    n = int(labels.max(initial=0))
    if min_cluster_size > 1 and n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        keep = sizes >= min_cluster_size
        relabel = np.zeros(n + 1, np.int32)
        relabel[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = relabel[labels]
        diag.dropped_small = int((~keep).sum())
        diag.dropped_positions = int(sizes[~keep].sum())
    diag.clusters = int(labels.max(initial=0))
    diag.clustered = int((labels > 0).sum())
    diag.clustered_fraction = diag.clustered / diag.in_mask if diag.in_mask else 0.0
    _explain(diag, similarity, rmask, min_cluster_size)
    return labels, rmask, diag


def _explain(diag: Diagnostics, similarity, rmask, min_cluster_size) -> None:
    """Input warnings, and the likely reason when nothing was clustered."""
    sim = np.asarray(similarity)
    finite = sim[np.isfinite(sim)]
    if finite.size and not finite.any():
        diag.warnings.append(
            "every pattern is zero (within the q-mask): the data hold no signal to compare"
        )
    elif finite.size and finite.min() >= 1 - 1e-6:
        diag.warnings.append("every pattern is identical (constant input): nothing to segment")
    if diag.clusters:
        return
    if diag.in_mask == 0:
        diag.reason = "the real-space mask kept no position"
        diag.suggestion = "try real_mask='triangle', 'otsu' or None"
        return
    pair = np.where(rmask[..., None], sim, np.nan)
    best = float(np.nanmax(pair)) if np.isfinite(pair).any() else float("nan")
    if not best >= diag.threshold:
        diag.reason = (
            f"no neighbour pair in the mask reaches the threshold {diag.threshold:.2f} "
            f"(highest {best:.2f}: noisy or very dissimilar patterns)"
        )
        diag.suggestion = "use threshold='auto' or a lower value, or prefilter=True for noisy data"
    else:
        diag.reason = (
            f"all {diag.dropped_small} clusters were smaller than min_cluster_size "
            f"({min_cluster_size})"
        )
        diag.suggestion = (
            "lower min_cluster_size or the threshold, or use prefilter=True for noisy data"
        )
