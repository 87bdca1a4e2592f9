"""Plain, obviously-right numpy/python versions of the core kernels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def similarity(cube, q_mask=None, sigma=0.0):
    rx, ry = cube.shape[:2]
    pats = cube.astype(np.float64)
    if sigma > 0:
        pats = np.stack(
            [
                [ndimage.gaussian_filter(pats[x, y], sigma, mode="reflect") for y in range(ry)]
                for x in range(rx)
            ]
        )
    if q_mask is not None:
        pats = pats * q_mask
    out = np.full((rx, ry, 8), np.nan)
    for x in range(rx):
        for y in range(ry):
            for n, (dx, dy) in enumerate(OFFSETS):
                u, v = x + dx, y + dy
                if 0 <= u < rx and 0 <= v < ry:
                    a, b = pats[x, y].ravel(), pats[u, v].ravel()
                    den = np.linalg.norm(a) * np.linalg.norm(b)
                    out[x, y, n] = 0.0 if den == 0 else a @ b / den
    return out


def mean_similarity(sim):
    rx, ry = sim.shape[:2]
    out = np.zeros((rx, ry))
    for x in range(rx):
        for y in range(ry):
            vals = [v for v in sim[x, y] if not np.isnan(v)]
            out[x, y] = np.mean(vals) if vals else 0.0
    return out


def grow(sim, ms, mask, threshold, min_size):
    """The published algorithm, one pixel at a time (argmax seed, list queue)."""
    rx, ry = ms.shape
    labels = np.zeros((rx, ry), int)
    remaining = np.where(mask, ms.astype(np.float64), -np.inf)
    n = 0
    while True:
        free = (labels == 0) & mask
        if not free.any():
            break
        cand = np.where(free, remaining, -np.inf)
        # argmax over the free positions (ties: first in raster order)
        flat = np.flatnonzero(free)
        s = flat[np.argmax(cand.ravel()[flat])]
        n += 1
        x0, y0 = divmod(int(s), ry)
        labels[x0, y0] = n
        todo = [(x0, y0)]
        while todo:
            x, y = todo.pop()
            for k, (dx, dy) in enumerate(OFFSETS):
                u, v = x + dx, y + dy
                inside = 0 <= u < rx and 0 <= v < ry
                if inside and mask[u, v] and labels[u, v] == 0 and sim[x, y, k] >= threshold:
                    labels[u, v] = n
                    todo.append((u, v))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    out = np.zeros_like(labels)
    k = 0
    for lab in range(1, n + 1):
        if sizes[lab] >= min_size:
            k += 1
            out[labels == lab] = k
    return out


def cluster_means(cube, labels):
    n = labels.max()
    return (
        np.stack([cube[labels == k].astype(np.float64).mean(axis=0) for k in range(1, n + 1)])
        if n
        else np.zeros((0, *cube.shape[2:]))
    )


DTYPES = [np.uint8, np.uint16, np.uint32, np.float32, np.float64]


def random_cube(rng, shape, dtype=np.uint16, high=200):
    """Random non-negative cube with some structure so similarities vary."""
    base = rng.random(shape[:2] + (1, 1)) * rng.random((1, 1) + shape[2:])
    cube = rng.poisson(high * (0.3 + base)).astype(np.float64)
    if np.issubdtype(dtype, np.integer):
        cube = np.clip(cube, 0, np.iinfo(dtype).max)
    return cube.astype(dtype)


def two_region_cube(rng, scan=(8, 10), det=(6, 7), split=4, dose=500.0, dtype=np.uint16):
    """Left and right halves with different mean patterns, Poisson noise."""
    a = np.zeros(det)
    b = np.zeros(det)
    a[1, 1] = a[2, 4] = 1.0
    b[4, 2] = b[3, 5] = 1.0
    a += 0.05
    b += 0.05
    mean = np.where((np.arange(scan[1]) < split)[None, :, None, None], a, b)
    mean = np.broadcast_to(mean, scan + det)
    return rng.poisson(dose * mean / mean.sum(axis=(-2, -1), keepdims=True)).astype(dtype)
