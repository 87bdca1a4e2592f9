"""Quantitative agreement between a segmentation and a reference labelling.

All functions take two integer label maps of the same shape, for example the
true grain map of :func:`napari_stemcluster.synthetic.make_polycrystal` and a
cluster map. Label values are arbitrary identifiers: only which pixels share a
label matters, so relabelling either map leaves every score unchanged. Label
0 (background, unassigned) is treated like any other label; to score only the
particles, pass ``mask=labels_true > 0``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "adjusted_rand_index",
    "boundary_f1",
    "contingency",
    "grain_scores",
    "over_under_segmentation",
    "similarity_contrast",
]


def contingency(labels_true, labels_pred, mask=None):
    """Contingency table of two labellings.

    Parameters
    ----------
    labels_true, labels_pred : array_like of int
        Label maps of the same shape (any number of dimensions).
    mask : array_like of bool, optional
        Pixels to count (same shape as the labels). Default: all pixels.

    Returns
    -------
    table : ndarray of int64, shape (n_true, n_pred)
        ``table[i, j]`` is the number of counted pixels with true label
        ``true_ids[i]`` and predicted label ``pred_ids[j]``.
    true_ids, pred_ids : ndarray
        The sorted distinct labels present among the counted pixels.

    Raises
    ------
    ValueError
        If the shapes differ or the mask selects no pixel.
    TypeError
        If the labels are not integer (or boolean) arrays or the mask is not
        boolean.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_stemcluster.core.metrics import contingency
    >>> table, t, p = contingency([[1, 1, 2], [2, 2, 0]], [[5, 5, 5], [7, 7, 7]])
    >>> table
    array([[0, 1],
           [2, 0],
           [1, 2]])
    >>> t, p
    (array([0, 1, 2]), array([5, 7]))
    """
    true, pred = _selected(labels_true, labels_pred, mask)
    return _table(true, pred)


def adjusted_rand_index(labels_true, labels_pred, mask=None) -> float:
    """Adjusted Rand index of two labellings (Hubert and Arabie, 1985).

    The Rand index is the fraction of pixel pairs on which the labellings
    agree (both put the two pixels together, or both apart); the adjusted
    index subtracts its expectation for random labellings with the same
    cluster sizes and rescales, so that identical labellings score 1 and
    unrelated ones score about 0 (it can be negative).

    Parameters
    ----------
    labels_true, labels_pred : array_like of int
        Label maps of the same shape.
    mask : array_like of bool, optional
        Pixels to score. Default: all pixels.

    Returns
    -------
    float
        The adjusted Rand index, in [-0.5, 1]. When neither labelling
        splits any pair differently from the other (for example both put
        every pixel in one cluster, or both in a cluster of its own), the
        labellings are identical up to relabelling and the index is 1.

    Raises
    ------
    ValueError
        If the shapes differ or the mask selects no pixel.
    TypeError
        If the labels are not integer arrays or the mask is not boolean.

    Examples
    --------
    >>> from napari_stemcluster.core.metrics import adjusted_rand_index
    >>> adjusted_rand_index([0, 0, 1, 1], [5, 5, 3, 3])
    1.0
    >>> round(adjusted_rand_index([0, 0, 1, 1], [0, 0, 0, 1]), 3)
    0.0
    >>> adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1])
    -0.5
    """
    table, _, _ = contingency(labels_true, labels_pred, mask)
    # Ordered pair counts (each unordered pair twice), exact in Python ints.
    n = int(table.sum())
    same_both = _pairs(table)
    same_true = _pairs(table.sum(axis=1))
    same_pred = _pairs(table.sum(axis=0))
    tp = same_both
    fn = same_true - same_both
    fp = same_pred - same_both
    tn = n * (n - 1) - tp - fn - fp
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def boundary_f1(labels_true, labels_pred, tolerance=1) -> float:
    """F1 score of label boundaries matched within a distance tolerance.

    A pixel is a boundary pixel when one of its 4-neighbours carries a
    different label. Precision is the fraction of predicted boundary pixels
    that lie within ``tolerance`` pixels (Euclidean) of a true boundary pixel,
    recall the fraction of true boundary pixels within ``tolerance`` of a
    predicted one; the score is their harmonic mean.

    Parameters
    ----------
    labels_true, labels_pred : array_like of int
        Label maps of the same shape, 2-D ``(Rx, Ry)`` or a 3-D stack
        ``(T, Rx, Ry)`` of frames; boundaries are found and matched within
        each frame and the counts are pooled over frames.
    tolerance : float
        Largest distance, in pixels, at which a boundary pixel counts as
        matched (>= 0; 0 asks for the same pixel).

    Returns
    -------
    float
        Boundary F1 in [0, 1]. 1 when neither map has any boundary (nothing
        to find, nothing wrongly found); 0 when only one of them has.

    Raises
    ------
    ValueError
        If the shapes differ, the maps are not 2-D or 3-D, or ``tolerance``
        is negative or not finite.
    TypeError
        If the labels are not integer arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_stemcluster.core.metrics import boundary_f1
    >>> true = np.zeros((6, 6), int)
    >>> true[:, 3:] = 1
    >>> pred = np.zeros((6, 6), int)
    >>> pred[:, 4:] = 1  # boundary one pixel off
    >>> boundary_f1(true, pred, tolerance=1)
    1.0
    >>> round(boundary_f1(true, pred, tolerance=0), 3)
    0.5
    """
    true = _labels(labels_true, "labels_true")
    pred = _labels(labels_pred, "labels_pred")
    _same_shape(true, pred)
    if true.ndim not in (2, 3):
        raise ValueError(
            "boundary_f1 needs 2-D label maps (Rx, Ry) or 3-D stacks (T, Rx, Ry); "
            f"got {true.ndim}-D"
        )
    try:
        tolerance = float(tolerance)
    except (TypeError, ValueError):
        raise ValueError(f"tolerance must be a number; got {tolerance!r}") from None
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be finite and >= 0; got {tolerance}")
    if true.ndim == 2:
        true, pred = true[None], pred[None]
    b_true = _boundaries(true)
    b_pred = _boundaries(pred)
    n_true = int(b_true.sum())
    n_pred = int(b_pred.sum())
    if n_true == 0 and n_pred == 0:
        return 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0
    precision = np.count_nonzero(b_pred & _dilate(b_true, tolerance)) / n_pred
    recall = np.count_nonzero(b_true & _dilate(b_pred, tolerance)) / n_true
    if precision + recall == 0:
        return 0.0
    return float(2.0 * precision * recall / (precision + recall))


def over_under_segmentation(labels_true, labels_pred, mask=None) -> dict:
    """How much a segmentation splits true regions and merges them.

    Parameters
    ----------
    labels_true, labels_pred : array_like of int
        Label maps of the same shape.
    mask : array_like of bool, optional
        Pixels to score. Default: all pixels.

    Returns
    -------
    dict
        ``clusters_per_grain``
            Mean, over true regions weighted by their size, of the number of
            predicted labels found in the region (1 = no region is split;
            larger = over-segmentation).
        ``grains_per_cluster``
            Mean, over predicted clusters weighted by their size, of the
            number of true labels found in the cluster (1 = no cluster
            merges regions; larger = under-segmentation).
        ``effective_clusters_per_grain``, ``effective_grains_per_cluster``
            As above, but counting labels by their perplexity ``exp(H)``
            (``H`` the entropy of the label fractions), so a few stray pixels
            add little while an even split in two adds 1.
        ``grain_coverage``
            Fraction of pixels that lie in the largest predicted cluster of
            their true region (1 = no over-segmentation).
        ``cluster_purity``
            Fraction of pixels whose true region is the majority region of
            their predicted cluster (1 = no under-segmentation).
        ``n_true``, ``n_pred``
            Number of distinct true and predicted labels.

    Raises
    ------
    ValueError
        If the shapes differ or the mask selects no pixel.
    TypeError
        If the labels are not integer arrays or the mask is not boolean.

    Examples
    --------
    >>> from napari_stemcluster.core.metrics import over_under_segmentation
    >>> s = over_under_segmentation([1, 1, 1, 1, 2, 2], [1, 1, 3, 3, 2, 2])
    >>> round(s["clusters_per_grain"], 3), s["grains_per_cluster"]
    (1.667, 1.0)
    >>> round(s["grain_coverage"], 3), s["cluster_purity"]
    (0.667, 1.0)
    """
    table, true_ids, pred_ids = contingency(labels_true, labels_pred, mask)
    n = table.sum()
    size_true = table.sum(axis=1)
    size_pred = table.sum(axis=0)
    present = table > 0
    return {
        "clusters_per_grain": float((present.sum(axis=1) * size_true).sum() / n),
        "grains_per_cluster": float((present.sum(axis=0) * size_pred).sum() / n),
        "effective_clusters_per_grain": float((_perplexity(table, axis=1) * size_true).sum() / n),
        "effective_grains_per_cluster": float((_perplexity(table, axis=0) * size_pred).sum() / n),
        "grain_coverage": float(table.max(axis=1).sum() / n),
        "cluster_purity": float(table.max(axis=0).sum() / n),
        "n_true": int(true_ids.size),
        "n_pred": int(pred_ids.size),
    }


def grain_scores(labels_true, labels_pred) -> dict:
    """Scores of a segmentation against true grains, background included.

    Every position counts: label 0 of ``labels_true`` is the background (a
    class of its own) and label 0 of ``labels_pred`` means "not clustered".
    Nothing here can be raised by clustering less or by leaving out the
    background: clustered background lowers ``ari``, ``purity`` and raises
    ``background_share``; unclustered grain positions lower ``ari``,
    ``recall`` and ``coverage``.

    Parameters
    ----------
    labels_true : array_like of int
        True grains ``1..G``, 0 for background (any shape, e.g. (T, Rx, Ry)).
    labels_pred : array_like of int
        Clusters ``1..N``, 0 for unclustered; same shape.

    Returns
    -------
    dict
        ``ari``
            Adjusted Rand index over all positions (background a class).
        ``recall``
            Mean over true grains of the largest fraction of the grain held
            by one cluster (0 for a grain no cluster touches).
        ``grain_recall``
            That fraction per grain, ndarray in the order of the grain ids.
        ``purity``
            Fraction of clustered positions whose true label (background
            included) is the majority label of their cluster.
        ``background_share``
            Fraction of clustered positions that are background.
        ``coverage``
            Fraction of grain positions that are clustered.
        ``grains_per_cluster``
            Mean over clusters, weighted by their grain positions, of the
            effective number of grains in the cluster (``exp`` of the entropy
            of its grain fractions: 1 for a cluster within one grain, 2 for
            one split evenly over two; a few stray positions add little).
        ``clusters_per_grain``
            The same over grains and the clusters in them (clustered
            positions only).
        ``n_grains``, ``n_clusters``
            Number of true grains and of clusters.

    Raises
    ------
    ValueError, TypeError
        As :func:`contingency`.

    Examples
    --------
    >>> from napari_stemcluster.core.metrics import grain_scores
    >>> true = [0, 0, 1, 1, 1, 2, 2, 2]
    >>> pred = [0, 3, 3, 3, 3, 4, 4, 0]
    >>> s = grain_scores(true, pred)
    >>> round(s["recall"], 3), round(s["background_share"], 3), s["grains_per_cluster"]
    (0.833, 0.167, 1.0)
    """
    true, pred = _selected(labels_true, labels_pred, None)
    table, true_ids, pred_ids = _table(true, pred)
    ari = adjusted_rand_index(true, pred)
    tg = true_ids > 0
    pc = pred_ids > 0
    grains = table[tg][:, pc]  # grain positions by cluster
    n_grain_pos = table[tg].sum(axis=1)
    grain_recall = grains.max(axis=1) / n_grain_pos if grains.size else np.zeros(int(tg.sum()))
    clustered = table[:, pc]
    n_clustered = int(clustered.sum())
    bg_clustered = int(table[~tg][:, pc].sum())
    out = {
        "ari": float(ari),
        "recall": float(grain_recall.mean()) if grain_recall.size else float("nan"),
        "grain_recall": grain_recall.astype(np.float64),
        "purity": float(clustered.max(axis=0).sum() / n_clustered) if n_clustered else float("nan"),
        "background_share": bg_clustered / n_clustered if n_clustered else float("nan"),
        "coverage": float(grains.sum() / n_grain_pos.sum()) if n_grain_pos.sum() else float("nan"),
        "grains_per_cluster": float("nan"),
        "clusters_per_grain": float("nan"),
        "n_grains": int(tg.sum()),
        "n_clusters": int(pc.sum()),
    }
    if grains.sum():
        cols = grains.sum(axis=0) > 0
        g = grains[:, cols]
        w = g.sum(axis=0)
        out["grains_per_cluster"] = float((_perplexity(g, axis=0) * w).sum() / w.sum())
        rows = grains.sum(axis=1) > 0
        g = grains[rows]
        w = g.sum(axis=1)
        out["clusters_per_grain"] = float((_perplexity(g, axis=1) * w).sum() / w.sum())
    return out


def similarity_contrast(similarity, labels_true) -> float:
    """Median neighbour similarity inside regions minus that across them.

    What a similarity threshold has to separate: pairs of neighbouring
    positions in the same true region against pairs in two different ones.
    Pairs touching label 0 (background) are left out.

    Parameters
    ----------
    similarity : ndarray, shape (Rx, Ry, 8)
        Output of :func:`~napari_stemcluster.core.similarity.neighbor_similarity`.
    labels_true : array_like of int, shape (Rx, Ry)

    Returns
    -------
    float
        NaN when there are no pairs of one kind.

    Examples
    --------
    >>> from napari_stemcluster.core.similarity import neighbor_similarity
    >>> cube = np.zeros((1, 4, 2, 2))
    >>> cube[0, :2, 0, 0] = cube[0, 2:, 1, 1] = 1
    >>> cube[0, :, 0, 1] = 1
    >>> sim = neighbor_similarity(cube)
    >>> round(similarity_contrast(sim, [[1, 1, 2, 2]]), 3)
    0.5
    """
    from .similarity import NEIGHBOR_OFFSETS

    grains = _labels(labels_true, "labels_true")
    rx, ry = grains.shape
    inside, across = [], []
    for n in (4, 5, 6, 7):  # each unordered pair once
        dx, dy = NEIGHBOR_OFFSETS[n]
        xs = slice(max(0, -dx), rx - max(0, dx))
        ys = slice(max(0, -dy), ry - max(0, dy))
        xd = slice(max(0, dx), rx - max(0, -dx))
        yd = slice(max(0, dy), ry - max(0, -dy))
        a, b, s = grains[xs, ys], grains[xd, yd], similarity[xs, ys, n]
        both = (a > 0) & (b > 0)
        inside.append(s[both & (a == b)])
        across.append(s[both & (a != b)])
    inside, across = np.concatenate(inside), np.concatenate(across)
    if not inside.size or not across.size:
        return float("nan")
    return float(np.median(inside) - np.median(across))


# --------------------------------------------------------------------------


def _labels(labels, name):
    arr = np.asarray(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.int8)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer label array; got dtype {arr.dtype}")
    return arr


def _same_shape(true, pred):
    if true.shape != pred.shape:
        raise ValueError(
            "labels_true and labels_pred must have the same shape; got "
            f"{true.shape} and {pred.shape}"
        )


def _selected(labels_true, labels_pred, mask):
    """The labels of the scored pixels, as two 1-D arrays."""
    true = _labels(labels_true, "labels_true")
    pred = _labels(labels_pred, "labels_pred")
    _same_shape(true, pred)
    if mask is None:
        true, pred = true.ravel(), pred.ravel()
    else:
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise TypeError(f"mask must be a boolean array; got dtype {mask.dtype}")
        if mask.shape != true.shape:
            raise ValueError(f"mask must have the labels' shape {true.shape}; got {mask.shape}")
        true, pred = true[mask], pred[mask]
    if true.size == 0:
        raise ValueError("no pixels to score: the labels are empty or the mask selects no pixel")
    return true, pred


def _table(true, pred):
    true_ids, ti = np.unique(true, return_inverse=True)
    pred_ids, pi = np.unique(pred, return_inverse=True)
    flat = ti.ravel().astype(np.int64) * pred_ids.size + pi.ravel()
    counts = np.bincount(flat, minlength=true_ids.size * pred_ids.size)
    return counts.reshape(true_ids.size, pred_ids.size).astype(np.int64), true_ids, pred_ids


def _pairs(counts) -> int:
    """Ordered pairs of distinct pixels within each group: sum n (n - 1)."""
    # Exact in int64 for up to 3e9 pixels.
    c = np.asarray(counts, dtype=np.int64).ravel()
    return int((c * (c - 1)).sum())


def _perplexity(table, axis):
    """exp(entropy) of the label fractions along ``axis`` for each row/column."""
    totals = table.sum(axis=axis, keepdims=True)
    frac = table / totals
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(table > 0, frac * np.log(frac), 0.0)
    return np.exp(-terms.sum(axis=axis))


def _boundaries(stack):
    """Pixels with a 4-neighbour of a different label, frame by frame."""
    out = np.zeros(stack.shape, bool)
    diff_x = stack[:, 1:, :] != stack[:, :-1, :]
    out[:, 1:, :] |= diff_x
    out[:, :-1, :] |= diff_x
    diff_y = stack[:, :, 1:] != stack[:, :, :-1]
    out[:, :, 1:] |= diff_y
    out[:, :, :-1] |= diff_y
    return out


def _dilate(stack, radius):
    """Dilate each frame of a boolean stack by a Euclidean disk of ``radius``."""
    r = math.floor(radius)
    out = stack.copy()
    _, nx, ny = stack.shape
    for dx in range(-r, r + 1):
        for dy in range(-r, r + 1):
            if (dx == 0 and dy == 0) or dx * dx + dy * dy > radius * radius:
                continue
            # out[x + dx, y + dy] |= stack[x, y] where both are in bounds
            xs = slice(max(0, -dx), nx - max(0, dx))
            ys = slice(max(0, -dy), ny - max(0, dy))
            xd = slice(max(0, dx), nx - max(0, -dx))
            yd = slice(max(0, dy), ny - max(0, -dy))
            out[:, xd, yd] |= stack[:, xs, ys]
    return out
