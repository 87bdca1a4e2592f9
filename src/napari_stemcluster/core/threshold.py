"""Automatic similarity threshold from the data: :func:`auto_threshold`."""

from __future__ import annotations

import numpy as np

from ._regions_numba import _best_neighbours

#: Quantile of the best-neighbour similarity that stands for "a typical
#: within-grain pair at this noise level".
AUTO_QUANTILE = 0.10
#: Fraction of that similarity used as the threshold.
AUTO_FACTOR = 0.88


def auto_threshold(similarity: np.ndarray, mask: np.ndarray | None = None) -> float:
    """A similarity threshold suited to the noise level of one scan.

    For every position in ``mask`` take its highest similarity with any
    neighbour: inside a grain that is a within-grain pair, so these values
    show how similar two patterns of one grain are at the noise level of
    the data (about 0.96 at high dose, 0.5 or less at a few hundred
    electrons per pattern). Their lower decile times
    :data:`AUTO_FACTOR` (0.88) is the threshold: low enough that nearly all
    within-grain pairs pass (grains are recovered whole), as high as that
    allows (pairs across boundaries, which are much less similar, fail).

    Parameters
    ----------
    similarity : ndarray, shape (Rx, Ry, 8)
    mask : ndarray of bool, shape (Rx, Ry), optional
        Positions to learn from, normally the real-space mask (particles).

    Returns
    -------
    float
        The threshold, rounded to 0.01 and clipped to [0.05, 0.99]; 0.9
        (the paper's value) when the mask holds fewer than 4 positions.

    Notes
    -----
    The factor and quantile were chosen on synthetic scans (doses 300-6000
    electrons per pattern, detectors 48-128 pixels, liquid and vacuum
    backgrounds; see the README's quality table), where the threshold lands
    within the plateau of the best fixed thresholds. Failure modes: a mask
    that is mostly background teaches the noise level of the background
    (threshold too low, so background positions chain into clusters); grains
    only one or two positions wide have no within-grain pairs; and where
    neighbouring grains are nearly alike (similarity across the boundary
    close to that within grains) no threshold separates them.

    Examples
    --------
    >>> sim = np.full((4, 4, 8), 0.95, np.float32)
    >>> auto_threshold(sim)
    0.84
    """
    sim = np.asarray(similarity, np.float32)
    if sim.ndim != 3 or sim.shape[-1] != 8:
        raise ValueError(f"similarity must have shape (Rx, Ry, 8); got {sim.shape}")
    flat = np.ascontiguousarray(sim).reshape(-1, 8)
    keep = np.ones(flat.shape[0], bool) if mask is None else np.asarray(mask, bool).ravel()
    if keep.size != flat.shape[0]:
        raise ValueError(f"mask must have the scan shape {sim.shape[:2]}; got {np.shape(mask)}")
    # Each position's best neighbour in one pass (no NaN-replaced copy).
    best = np.empty(flat.shape[0], np.float32)
    best = best[: _best_neighbours(flat, keep, best)]
    if best.size < 4:
        return 0.9
    t = AUTO_FACTOR * float(np.quantile(best, AUTO_QUANTILE))
    return float(np.clip(round(t, 2), 0.05, 0.99))
