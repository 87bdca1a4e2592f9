"""numba kernel for :mod:`napari_stemcluster.core.regions`."""

from __future__ import annotations

import numba
import numpy as np

from .similarity import NEIGHBOR_OFFSETS

_DX = NEIGHBOR_OFFSETS[:, 0].copy()
_DY = NEIGHBOR_OFFSETS[:, 1].copy()


@numba.njit(cache=True, nogil=True)
def _grow(sim, order, allowed, threshold, dx, dy, labels, seeds):
    """Breadth-first region growing from seeds in ``order``.

    Every position enters the queue at most once, so the cost is O(Rx*Ry*8)
    whatever the cluster sizes. Returns the number of clusters; ``seeds[k]``
    receives the flat index that seeded label ``k + 1``.
    """
    rx, ry = allowed.shape
    queue = np.empty(rx * ry, np.int64)
    n = 0
    for s in order:
        x0 = s // ry
        y0 = s - x0 * ry
        if labels[x0, y0] != 0 or not allowed[x0, y0]:
            continue
        n += 1
        seeds[n - 1] = s
        labels[x0, y0] = n
        queue[0] = s
        head = 0
        tail = 1
        while head < tail:
            p = queue[head]
            head += 1
            x = p // ry
            y = p - x * ry
            for k in range(8):
                nx = x + dx[k]
                ny = y + dy[k]
                if nx < 0 or nx >= rx or ny < 0 or ny >= ry:
                    continue
                if labels[nx, ny] != 0 or not allowed[nx, ny]:
                    continue
                if sim[x, y, k] >= threshold:  # False for NaN
                    labels[nx, ny] = n
                    queue[tail] = nx * ry + ny
                    tail += 1
    return n


@numba.njit(cache=True, nogil=True)
def _grow_linked(sim, order, allowed, threshold, link, feats, norms2, dx, dy, labels, seeds):
    """Region growing in which a joining position must also match the cluster.

    As :func:`_grow`, plus: a neighbour joins only if the squared cosine
    between its feature vector and the running sum of the cluster's feature
    vectors is at least ``link``. The sum is updated as positions join, so a
    test costs O(K) and the growth stays linear in the scan size.
    """
    rx, ry = allowed.shape
    k_dim = feats.shape[1]
    queue = np.empty(rx * ry, np.int64)
    acc = np.empty(k_dim, np.float64)
    n = 0
    for s in order:
        x0 = s // ry
        y0 = s - x0 * ry
        if labels[x0, y0] != 0 or not allowed[x0, y0]:
            continue
        n += 1
        seeds[n - 1] = s
        labels[x0, y0] = n
        for j in range(k_dim):
            acc[j] = feats[s, j]
        acc2 = norms2[s]
        queue[0] = s
        head = 0
        tail = 1
        while head < tail:
            p = queue[head]
            head += 1
            x = p // ry
            y = p - x * ry
            for k in range(8):
                nx = x + dx[k]
                ny = y + dy[k]
                if nx < 0 or nx >= rx or ny < 0 or ny >= ry:
                    continue
                if labels[nx, ny] != 0 or not allowed[nx, ny]:
                    continue
                if not sim[x, y, k] >= threshold:  # also rejects NaN
                    continue
                q = nx * ry + ny
                d = 0.0
                for j in range(k_dim):
                    d += feats[q, j] * acc[j]
                if d <= 0.0 or d * d < link * norms2[q] * acc2:
                    continue
                labels[nx, ny] = n
                queue[tail] = q
                tail += 1
                for j in range(k_dim):
                    acc[j] += feats[q, j]
                acc2 += 2.0 * d + norms2[q]
    return n
