"""Synthetic Bragg-disk patterns with known disk positions, for tests and benchmarks.

A crystal's pattern is the direct beam at ``center`` plus disks at
``center + h g1 + k g2`` whose intensity falls with the scattering vector,
on an optional smooth background, drawn with Poisson noise at a given dose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_SUPER = 6


@dataclass
class DiskTruth:
    """Known disks of a synthetic pattern (direct beam excluded)."""

    positions: np.ndarray  # (N, 2) float64, (qx, qy)
    hk: np.ndarray  # (N, 2) int
    expected: np.ndarray  # (N,) expected counts in the disk
    center: np.ndarray  # (2,)
    g1: np.ndarray
    g2: np.ndarray


def rotation(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def lattice_vectors(length: float = 12.0, angle: float = 0.0, gamma: float = 90.0, ratio=1.0):
    """Reciprocal basis (g1, g2) with |g1| = length, |g2| = ratio * length, rotated by angle."""
    g1 = np.array([length, 0.0])
    g2 = ratio * length * np.array([math.cos(math.radians(gamma)), math.sin(math.radians(gamma))])
    r = rotation(angle)
    return r @ g1, r @ g2


def strained(g1, g2, strain) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal vectors of a lattice deformed by the real-space gradient ``I + strain``.

    ``strain`` is a 2x2 displacement gradient in (qx, qy) axes; reciprocal
    vectors transform with the inverse transpose.
    """
    f = np.eye(2) + np.asarray(strain, np.float64)
    m = np.linalg.inv(f).T
    return m @ np.asarray(g1, float), m @ np.asarray(g2, float)


def disk_pattern(
    shape=(64, 64),
    g1=None,
    g2=None,
    *,
    center=None,
    radius: float = 2.5,
    dose: float | None = 20000.0,
    beam_fraction: float = 0.15,
    decay: float = 1.4,
    background: float = 0.05,
    hk_max: int = 6,
    rng=None,
    drop: float = 0.0,
):
    """One pattern and its truth. ``dose`` None gives the noise-free expectation.

    ``decay`` is the 1/e fall-off of disk intensity in units of |g1|;
    ``background`` the fraction of counts in a broad halo; ``drop`` the
    fraction of disks removed at random (missing reflections).
    """
    rng = np.random.default_rng(rng)
    if g1 is None:
        g1, g2 = lattice_vectors()
    g1, g2 = np.asarray(g1, float), np.asarray(g2, float)
    qx, qy = shape
    c = np.array([(qx - 1) / 2, (qy - 1) / 2]) if center is None else np.asarray(center, float)
    n = np.arange(-hk_max, hk_max + 1)
    h, k = (a.ravel() for a in np.meshgrid(n, n, indexing="ij"))
    keep = (h != 0) | (k != 0)
    h, k = h[keep], k[keep]
    pos = c + h[:, None] * g1 + k[:, None] * g2
    inside = (
        (pos[:, 0] >= radius + 1)
        & (pos[:, 0] <= qx - 2 - radius)
        & (pos[:, 1] >= radius + 1)
        & (pos[:, 1] <= qy - 2 - radius)
    )
    h, k, pos = h[inside], k[inside], pos[inside]
    if drop > 0 and len(pos):
        kept = rng.random(len(pos)) >= drop
        h, k, pos = h[kept], k[kept], pos[kept]
    glen = np.hypot(*(pos - c).T) / np.linalg.norm(g1)
    weight = np.exp(-((glen / decay) ** 2))
    xx = np.arange(qx, dtype=np.float64)[:, None]
    yy = np.arange(qy, dtype=np.float64)[None, :]

    sub = (np.arange(_SUPER) + 0.5) / _SUPER - 0.5
    h_win = math.ceil(radius + 1) + 1

    def disk(p):
        # Soft edge (1 px linear ramp), area-sampled on a 6x6 sub-grid per pixel,
        # so that the rendered disk's centroid is the true position to 1e-3 px.
        out = np.zeros(shape)
        x0, y0 = round(p[0]), round(p[1])
        xs = np.arange(max(0, x0 - h_win), min(qx, x0 + h_win + 1))
        ys = np.arange(max(0, y0 - h_win), min(qy, y0 + h_win + 1))
        if len(xs) == 0 or len(ys) == 0:
            return out
        gx = xs[:, None, None, None] + sub[None, None, :, None] - p[0]
        gy = ys[None, :, None, None] + sub[None, None, None, :] - p[1]
        v = np.clip(radius + 0.5 - np.sqrt(gx**2 + gy**2), 0.0, 1.0).mean(axis=(2, 3))
        out[xs[0] : xs[-1] + 1, ys[0] : ys[-1] + 1] = v
        return out

    unit = disk(c)
    area = unit.sum()
    img = np.zeros(shape)
    bragg = np.zeros(shape)
    for w, p in zip(weight, pos, strict=True):
        bragg += w * disk(p)
    bsum = bragg.sum()
    halo = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * (0.35 * min(shape)) ** 2))
    parts = [
        (beam_fraction, unit / area),
        (1 - beam_fraction - background, bragg / bsum if bsum > 0 else bragg),
        (background, halo / halo.sum()),
    ]
    for frac, comp in parts:
        img += frac * comp
    expected_total = 1.0 if dose is None else float(dose)
    lam = img * expected_total
    expected = (1 - beam_fraction - background) * expected_total * weight * area / max(bsum, 1e-300)
    truth = DiskTruth(
        positions=pos, hk=np.stack([h, k], 1), expected=expected, center=c, g1=g1, g2=g2
    )
    if dose is None:
        return lam, truth
    return rng.poisson(lam).astype(np.float32), truth


def match(found: np.ndarray, truth: np.ndarray, tol: float = 1.5):
    """For each true position, the index of the nearest found position within tol (-1)."""
    if len(found) == 0 or len(truth) == 0:
        return np.full(len(truth), -1)
    d = np.hypot(*(truth[:, None, :] - found[None, :, :]).transpose(2, 0, 1))
    j = d.argmin(axis=1)
    return np.where(d[np.arange(len(truth)), j] <= tol, j, -1)
