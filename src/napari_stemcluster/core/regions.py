"""Region growing on the neighbour-similarity graph."""

from __future__ import annotations

import numba
import numpy as np

from ._regions_numba import (
    _COLUMNS,
    _DX,
    _DY,
    _contested,
    _grow,
    _grow_linked_fast,
    _mean_sim,
    _refine_boundaries,
    _seed_keys,
    _slot_sums,
)

#: Largest number of passes of the boundary refinement of ``linkage="mean"``.
REFINE_PASSES = 8
#: Clusters smaller than this take no part in the refinement.
REFINE_MIN_SIZE = 10

#: Growth criteria of :func:`grow_regions`.
LINKAGES = ("pair", "mean")


def mean_similarity_map(similarity: np.ndarray) -> np.ndarray:
    """:func:`~napari_stemcluster.core.similarity.mean_similarity`, in one compiled pass.

    The same numbers (the same float64 sums in the same order) for a float32
    ``(Rx, Ry, 8)`` similarity without the temporaries; other inputs go to
    ``mean_similarity`` itself.

    Examples
    --------
    >>> s = np.full((1, 2, 8), np.nan, np.float32)
    >>> s[0, 0, 4] = s[0, 1, 3] = 0.5
    >>> mean_similarity_map(s)
    array([[0.5, 0.5]], dtype=float32)
    """
    sim = np.asarray(similarity)
    if sim.dtype != np.float32 or sim.ndim != 3 or sim.shape[-1] != 8:
        from .similarity import mean_similarity

        return mean_similarity(sim)
    out = np.empty(sim.shape[:2], np.float32)
    _mean_sim(np.ascontiguousarray(sim).reshape(-1, 8), out.reshape(-1))
    return out


def seed_order(mean_similarity: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Flat indices of allowed positions by decreasing mean similarity.

    Ties keep raster order, as ``argmax`` on the remaining positions would.

    Examples
    --------
    >>> seed_order(np.array([[0.2, 0.9], [0.9, 0.1]]))
    array([1, 2, 0, 3])
    """
    ms = np.asarray(mean_similarity)
    if ms.dtype == np.float32 and ms.size < 2**32 and (mask is None or np.size(mask) == ms.size):
        # One pass to integer keys and a sort of those (no float64 copy, no
        # stable argsort): the same order.
        flat = np.ascontiguousarray(ms).ravel()
        allowed = np.ones(flat.size, bool) if mask is None else np.asarray(mask, bool).ravel()
        keys = np.empty(flat.size, np.uint64)
        keys = np.sort(keys[: _seed_keys(flat, flat.view(np.uint32), allowed, keys)])
        return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    ms = np.asarray(mean_similarity, dtype=np.float64).ravel()
    idx = np.arange(ms.size) if mask is None else np.flatnonzero(np.asarray(mask).ravel())
    key = np.nan_to_num(ms[idx], nan=-np.inf)
    return idx[np.argsort(-key, kind="stable")]


def grow_regions(
    similarity: np.ndarray,
    threshold: float = 0.9,
    *,
    mean_similarity: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    min_cluster_size: int = 1,
    linkage: str = "pair",
    features: np.ndarray | None = None,
    link_threshold: float | None = None,
    seed_mask: np.ndarray | None = None,
    refine: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Grow spatially contiguous clusters of similar diffraction patterns.

    The unassigned allowed position with the highest mean similarity seeds a
    cluster; an 8-neighbour joins when its pair similarity is at least
    ``threshold`` and it is allowed and unassigned; growth repeats from every
    joined position until nothing joins, then the next seed is taken.

    Parameters
    ----------
    similarity : ndarray, shape (Rx, Ry, 8)
        Output of :func:`~napari_stemcluster.core.similarity.neighbor_similarity`.
    threshold : float
        Minimum pair similarity for a neighbour to join.
    mean_similarity : ndarray, shape (Rx, Ry), optional
        Seed priority; computed from ``similarity`` when omitted.
    mask : ndarray of bool, shape (Rx, Ry), optional
        Positions allowed to join clusters (the real-space mask).
    min_cluster_size : int
        Clusters with fewer positions are set to 0.
    linkage : {"pair", "mean"}
        ``"pair"`` (the paper's rule): the pair similarity decides alone.
        ``"mean"``: a neighbour must also match the cluster as grown so far:
        the squared cosine between its ``features`` and the sum of the
        members' features must be at least ``link_threshold``. This stops a
        cluster from creeping through a gradual transition in which every
        neighbouring pair is similar but the far end is not.
    features : ndarray, shape (Rx, Ry, K), optional
        Per-position feature vectors for ``linkage="mean"``, e.g. from
        :func:`~napari_stemcluster.core.linkage.pattern_features`.
    link_threshold : float, optional
        Default ``threshold``: the sum of many members is nearly free of
        noise, so the squared cosine of a same-grain neighbour with it is
        about the similarity of two neighbouring patterns.
    seed_mask : ndarray of bool, shape (Rx, Ry), optional
        Positions that may seed a cluster (default: ``mask``). Positions in
        ``mask`` but not here can only join a cluster grown from elsewhere
        (e.g. particle rims).
    refine : bool
        ``linkage="mean"`` only: after growth, move positions on the border
        of two clusters of at least :data:`REFINE_MIN_SIZE` positions to the
        cluster whose running-mean test they pass better (squared cosine with
        its feature sum; seeds stay, clusters stay connected; at most
        :data:`REFINE_PASSES` raster passes). Growth hands a gradual boundary
        to whichever grain reaches it first; at low dose, where the linkage
        test is loose, that grain overshoots the middle of the boundary by a
        position or so, and this puts the border back where the patterns
        change. Default True.

    Returns
    -------
    labels : ndarray of int32, shape (Rx, Ry)
        ``1..N`` in seed order; 0 for masked positions and dropped clusters.
    seeds : ndarray of int64, shape (N, 2)
        Seed position ``(rx, ry)`` of each label.

    Notes
    -----
    With ``linkage="pair"`` and no ``seed_mask``: because similarity is
    symmetric, the clusters are exactly the connected components of the
    graph whose edges are neighbour pairs with similarity at least
    ``threshold`` between allowed positions; the seed order only decides the
    label numbers. With ``linkage="mean"`` the result also depends on the
    order of growth (breadth first from the seed) and of the refinement
    (raster order). Each position is visited once in growth and once per
    refinement pass, so the cost is linear in the scan size (times K for
    ``"mean"``).

    Examples
    --------
    >>> from napari_stemcluster.core.similarity import neighbor_similarity
    >>> cube = np.zeros((1, 4, 2, 2), np.uint8)
    >>> cube[0, :2, 0, 0] = 1
    >>> cube[0, 2:, 1, 1] = 1
    >>> labels, seeds = grow_regions(neighbor_similarity(cube), 0.9)
    >>> labels
    array([[1, 1, 2, 2]], dtype=int32)
    """
    sim = np.asarray(similarity)
    if sim.ndim != 3 or sim.shape[-1] != 8:
        raise ValueError(f"similarity must have shape (Rx, Ry, 8); got {sim.shape}")
    shape = sim.shape[:2]
    if mean_similarity is None:
        mean_similarity = mean_similarity_map(sim)
    allowed = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    if allowed.shape != shape or np.shape(mean_similarity) != shape:
        raise ValueError(
            f"mask and mean_similarity must have the scan shape {shape}; got "
            f"{allowed.shape} and {np.shape(mean_similarity)}"
        )
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {LINKAGES}; got {linkage!r}")
    seedable = allowed
    if seed_mask is not None:
        seedable = np.asarray(seed_mask, bool)
        if seedable.shape != shape:
            raise ValueError(f"seed_mask must have the scan shape {shape}; got {seedable.shape}")
        seedable = seedable & allowed
    order = seed_order(mean_similarity, seedable)
    labels = np.zeros(shape, np.int32)
    seeds = np.empty(order.size, np.int64)
    # Compare in the similarity's own precision: a displayed 0.9 passes 0.9.
    t32 = np.float32(threshold)
    sim32 = np.ascontiguousarray(sim, np.float32)
    if linkage == "pair":
        n = _grow(sim32, order, np.ascontiguousarray(allowed), t32, _DX, _DY, labels, seeds)
    else:
        if features is None:
            raise ValueError('linkage="mean" needs features (Rx, Ry, K)')
        feats = np.asarray(features)
        if feats.ndim != 3 or feats.shape[:2] != shape:
            raise ValueError(f"features must have shape {shape} + (K,); got {feats.shape}")
        feats = np.ascontiguousarray(feats.reshape(shape[0] * shape[1], -1), np.float32)
        # Squared norms of the features in column order, NaN until needed
        # (the refinement computes those of the positions it weighs).
        norms2 = np.full(feats.shape[0], np.nan)
        link = float(threshold if link_threshold is None else link_threshold)
        # fmt: off
        n, _ = _grow_linked_fast(sim32, order, np.ascontiguousarray(allowed), t32, link, feats,
                                 norms2, _DX, _DY, labels, seeds)
        # fmt: on
        if refine and n > 1:
            _refine(labels, sim32, t32, link, feats, norms2, seeds[:n])
    seeds = seeds[:n]
    if min_cluster_size > 1 and n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes[1:] >= min_cluster_size
        relabel = np.zeros(n + 1, np.int32)
        relabel[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = relabel[labels]
        seeds = seeds[keep]
    return labels, np.stack(np.unravel_index(seeds, shape), axis=1).astype(np.int64)


def _refine(labels, sim32, t32, link, feats, norms2, seeds) -> None:
    """The boundary refinement of :func:`grow_regions` (``linkage="mean"``), in place.

    Only the clusters on a contested border (a movable position next to
    another cluster that takes part, their pair similarity at least the
    threshold) need their feature sums: those are made first, in parallel
    over feature columns (each in raster order: the same numbers for any
    thread count); with no contested border nothing can move, and no
    feature is read. Any other cluster a move brings to a border is summed
    when first needed, in the same order.
    """
    n = seeds.size
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    big = sizes >= REFINE_MIN_SIZE
    big[0] = False
    m = int(big.sum())
    if m < 2:
        return
    slot = np.full(n + 1, -1, np.int64)
    slot[big] = np.arange(m)
    fixed = np.zeros(labels.shape, bool)
    fixed.flat[seeds] = True
    ready = np.zeros(m, bool)
    if not _contested(labels, sim32, t32, fixed, slot, _DX, _DY, ready):
        return
    sums = np.zeros((m, feats.shape[1]), np.float64)
    wanted = np.where(slot >= 0, np.where(ready[slot], slot, -1), -1)
    # One run of columns per thread: each reads a contiguous part of every row.
    per = -(-feats.shape[1] // numba.get_num_threads())
    _slot_sums(labels.ravel(), wanted, feats, sums, max(_COLUMNS, -(-per // 16) * 16))
    # fmt: off
    _refine_boundaries(labels, sim32, t32, link, feats, norms2, fixed, slot, sums, ready,
                       _DX, _DY, REFINE_PASSES)
    # fmt: on
