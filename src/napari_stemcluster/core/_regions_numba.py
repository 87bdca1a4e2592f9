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


@numba.njit(cache=True, nogil=True, inline="always")
def _norm2(feats, q):
    """Squared norm of row ``q`` of ``feats`` (float32), summed in float64 in
    column order: zero columns (bins outside the q-mask) change nothing."""
    t = 0.0
    for j in range(feats.shape[1]):
        f = np.float64(feats[q, j])
        t += f * f
    return t


@numba.njit(cache=True, nogil=True)
def _grow_linked(sim, order, allowed, threshold, link, feats, norms2, dx, dy, labels, seeds):
    """Region growing in which a joining position must also match the cluster.

    As :func:`_grow`, plus: a neighbour joins only if the squared cosine
    between its feature vector and the running sum of the cluster's feature
    vectors is at least ``link``. The sum is updated as positions join, so a
    test costs O(K) and the growth stays linear in the scan size.

    ``norms2`` holds the features' squared norms, NaN where not yet known;
    each is computed (as :func:`_norm2`) in the same sweep as a position's
    first test, so every seeded or joined position has its norm afterwards
    without a separate pass over the features.
    """
    rx, ry = allowed.shape
    queue = np.empty(rx * ry, np.int64)
    acc = np.empty(feats.shape[1], np.float64)
    n = 0
    for s in order:
        x0 = s // ry
        y0 = s - x0 * ry
        if labels[x0, y0] != 0 or not allowed[x0, y0]:
            continue
        n += 1
        seeds[n - 1] = s
        _grow_one(sim, allowed, threshold, link, feats, norms2, dx, dy, labels, s, n, queue, acc)
    return n


#: Unit roundoff of float64.
_U = 2.0**-53


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _fast_dot(feats, q, acc):
    """Dot product of row ``q`` with ``acc``, the sum of its absolute terms and
    the row's squared norm, in any order (vectorised): each within
    ``k * u`` relative to the sum of absolute terms of the column-order one."""
    d = 0.0
    a = 0.0
    t = 0.0
    for j in range(feats.shape[1]):
        f = np.float64(feats[q, j])
        x = f * acc[j]
        d += x
        a += abs(x)
        t += f * f
    return d, a, t


@numba.njit(cache=True, nogil=True)
def _grow_one(sim, allowed, threshold, link, feats, norms2, dx, dy, labels, s, n, queue, acc):
    """One cluster of :func:`_grow_linked` from seed ``s`` (label ``n``), its joins tested
    in column order (``queue`` and ``acc`` are scratch). Returns the cluster's size."""
    rx, ry = allowed.shape
    k_dim = feats.shape[1]
    labels[s // ry, s % ry] = n
    for j in range(k_dim):
        acc[j] = feats[s, j]
    if np.isnan(norms2[s]):
        norms2[s] = _norm2(feats, s)
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
            if not sim[x, y, k] >= threshold:
                continue
            q = nx * ry + ny
            d = 0.0
            if np.isnan(norms2[q]):
                t = 0.0
                for j in range(k_dim):
                    f = np.float64(feats[q, j])
                    d += f * acc[j]
                    t += f * f
                norms2[q] = t
            else:
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
    return tail


@numba.njit(cache=True, nogil=True)
def _grow_linked_fast(sim, order, allowed, threshold, link, feats, norms2, dx, dy, labels, seeds):
    """:func:`_grow_linked`'s labels and seeds, with vectorised linkage tests.

    The exact growth adds each dot product in column order, one dependent
    float64 addition after the other. Here the dot products, norms and the
    running squared norm of the cluster are taken in any order, with a bound
    on how far each can be from the column-order value (``4 (K + 8) u`` times
    the sum of absolute terms, accumulated through the running norm). A test
    whose outcome the bounds decide is the exact test's outcome; when one is
    too close to call, the cluster is undone and grown again exactly
    (:func:`_grow_one`), so labels and seeds are always those of
    :func:`_grow_linked`. The running sum of the features is exact in both
    (each column adds the same values in the same order). ``norms2`` is only
    filled by exact regrowths (the refinement computes the others it needs).
    Returns ``(clusters, regrown)``.
    """
    rx, ry = allowed.shape
    k_dim = feats.shape[1]
    queue = np.empty(rx * ry, np.int64)
    acc = np.empty(k_dim, np.float64)
    g = 4.0 * (k_dim + 8) * _U
    n = 0
    regrown = 0
    for s in order:
        x0 = s // ry
        y0 = s - x0 * ry
        if labels[x0, y0] != 0 or not allowed[x0, y0]:
            continue
        n += 1
        seeds[n - 1] = s
        labels[x0, y0] = n
        t = 0.0
        for j in range(k_dim):
            f = np.float64(feats[s, j])
            acc[j] = f
            t += f * f
        acc2 = t
        e_acc2 = g * t
        queue[0] = s
        head = 0
        tail = 1
        close = False
        while head < tail and not close:
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
                if not sim[x, y, k] >= threshold:
                    continue
                q = nx * ry + ny
                d, a, n2 = _fast_dot(feats, q, acc)
                e_d = g * a
                e_n2 = g * n2
                lhs = d * d
                rhs = link * n2 * acc2
                mag = abs(d) + e_d
                e_l = e_d * (2.0 * abs(d) + e_d) + 4.0 * _U * mag * mag
                e_r = abs(link) * (e_n2 * abs(acc2) + (n2 + e_n2) * e_acc2)
                e_r += 6.0 * _U * abs(link) * (n2 + e_n2) * (abs(acc2) + e_acc2)
                margin = 2.0 * (e_l + e_r)
                if d < -e_d or rhs - lhs > margin:
                    continue  # fails the exact test too
                if not (d > e_d and lhs - rhs > margin):
                    close = True  # too close to call (or not finite)
                    break
                labels[nx, ny] = n
                queue[tail] = q
                tail += 1
                for j in range(k_dim):
                    acc[j] += feats[q, j]
                e_acc2 += 2.0 * e_d + e_n2 + 8.0 * _U * (abs(acc2) + 2.0 * abs(d) + n2)
                acc2 += 2.0 * d + n2
        if close:
            for i in range(tail):
                labels[queue[i] // ry, queue[i] % ry] = 0
            # fmt: off
            _grow_one(sim, allowed, threshold, link, feats, norms2, dx, dy, labels, s, n,
                      queue, acc)
            # fmt: on
            regrown += 1
    return n, regrown


@numba.njit(cache=True, nogil=True)
def _ring_connected(labels, x, y, a, dx, dy):
    """True when the 8-neighbours of ``(x, y)`` labelled ``a`` are 8-connected without it.

    Then ``(x, y)`` can leave cluster ``a`` without splitting it: any path
    through it can go round it.
    """
    rx, ry = labels.shape
    member = np.zeros(8, np.bool_)
    count = 0
    first = -1
    for k in range(8):
        nx = x + dx[k]
        ny = y + dy[k]
        if 0 <= nx < rx and 0 <= ny < ry and labels[nx, ny] == a:
            member[k] = True
            count += 1
            if first < 0:
                first = k
    if count == 0:
        return False  # the last member: leaving would delete the cluster
    seen = np.zeros(8, np.bool_)
    stack = np.empty(8, np.int64)
    seen[first] = True
    stack[0] = first
    top = 1
    reached = 1
    while top > 0:
        top -= 1
        i = stack[top]
        for j in range(8):
            if member[j] and not seen[j] and abs(dx[i] - dx[j]) <= 1 and abs(dy[i] - dy[j]) <= 1:
                seen[j] = True
                stack[top] = j
                top += 1
                reached += 1
    return reached == count


#: Fewest feature columns per parallel task of :func:`_slot_sums`.
_COLUMNS = 64


@numba.njit(cache=True, nogil=True, parallel=True)
def _slot_sums(labels, slot, feats, sums, width):
    """``sums[slot[a]] += feats[p]`` for every position ``p`` of a cluster ``a`` with a slot.

    Each task owns a run of ``width`` feature columns and adds the positions
    in raster order, so every sum is the same number as a raster loop's,
    whatever the number of threads.
    """
    n_pos, k_dim = feats.shape
    for c in numba.prange((k_dim + width - 1) // width):
        j0 = c * width
        j1 = min(k_dim, j0 + width)
        for p in range(n_pos):
            a = labels[p]
            if a > 0 and slot[a] >= 0:
                dst = sums[slot[a], j0:j1]
                src = feats[p, j0:j1]
                for j in range(src.shape[0]):
                    dst[j] += src[j]


@numba.njit(cache=True, nogil=True)
def _slot_norms(sums, i, sq, tot):
    """Squared norm and sum of row ``i`` of ``sums``, in column order."""
    t = 0.0
    u = 0.0
    for j in range(sums.shape[1]):
        t += sums[i, j] * sums[i, j]
        u += sums[i, j]
    sq[i] = t
    tot[i] = u


@numba.njit(cache=True, nogil=True)
def _fill_slot(labels, slot, feats, sums, s, sq, tot, ready):
    """Row ``s`` of ``sums`` from the members of its cluster, in raster order.

    The same numbers as :func:`_slot_sums` (each column adds its members in
    raster order from 0), and its norm and sum.
    """
    ry = labels.shape[1]
    for j in range(sums.shape[1]):
        sums[s, j] = 0.0
    for x in range(labels.shape[0]):
        for y in range(ry):
            a = labels[x, y]
            if a > 0 and slot[a] == s:
                p = x * ry + y
                for j in range(sums.shape[1]):
                    sums[s, j] += feats[p, j]
    _slot_norms(sums, s, sq, tot)
    ready[s] = True


@numba.njit(cache=True, nogil=True)
def _contested(labels, sim, threshold, fixed, slot, dx, dy, involved):
    """Mark the slots of the clusters on a border the refinement may move.

    A movable position (clustered, not ``fixed``, in a cluster with a slot)
    with an 8-neighbour in another cluster with a slot, their pair
    similarity at least ``threshold``: both clusters' slots are marked in
    ``involved``. Returns the number of such positions; with none, the
    refinement has nothing to move.
    """
    rx, ry = labels.shape
    count = 0
    for x in range(rx):
        for y in range(ry):
            a = labels[x, y]
            if a == 0 or fixed[x, y] or slot[a] < 0:
                continue
            hit = False
            for k in range(8):
                nx = x + dx[k]
                ny = y + dy[k]
                if nx < 0 or nx >= rx or ny < 0 or ny >= ry:
                    continue
                b = labels[nx, ny]
                if b == 0 or b == a or slot[b] < 0 or not sim[x, y, k] >= threshold:
                    continue
                involved[slot[b]] = True
                hit = True
            if hit:
                involved[slot[a]] = True
                count += 1
    return count


@numba.njit(cache=True, nogil=True)
def _refine_boundaries(
    labels, sim, threshold, link, feats, norms2, fixed, slot, sums, ready, dx, dy, max_passes
):
    """Move positions on the border of two clusters to the grain that dominates them.

    Breadth-first growth gives every position of a gradual boundary to the
    cluster that reaches it first, so at low dose (where the linkage test is
    loose) the first-grown grain overshoots the middle of the boundary. Here,
    in raster order, a clustered position ``p`` (cluster ``a``) with an
    8-neighbour in another cluster ``b`` (pair similarity between the two at
    least ``threshold``) is fitted, by least squares, as a mixture
    ``alpha * A + beta * B`` of the two clusters' mean patterns scaled to
    unit sum (``A`` without ``p``). It moves to the candidate with the
    largest ``beta - alpha > 0`` (the grain contributing more of its
    electrons) whose running-mean test it passes (squared cosine with the
    cluster's feature sum at least ``link``). Unit-sum means make the split
    fall where the mixture is even whatever the two patterns' norms (a plain
    cosine favours the sharper pattern). Only clusters of at least
    ``min_size`` positions take part (small ones, e.g. ribbons of mixed
    patterns along a boundary, would otherwise feed on both grains);
    ``fixed`` positions (the seeds) stay, and a position whose departure
    would split its cluster (:func:`_ring_connected`) stays. Sums are updated
    after every move; passes repeat until nothing moves or ``max_passes``
    passes. ``slot[a]`` is the row of ``sums`` of cluster ``a`` (-1 when it
    takes no part) and ``sums`` the float64 sums of their members' features
    in raster order (:func:`_slot_sums`); the sums are updated in place.
    Only the rows with ``ready[slot]`` need to be filled on entry: any other
    is summed here (in raster order, :func:`_fill_slot`) the first time a
    border position needs it; until then its cluster has not changed.
    ``norms2`` holds the features' squared norms in column order, NaN
    where not yet known (computed here for the positions weighed).
    Returns the number of moves. Cost: O(K) per border position and
    candidate per pass; sums are kept for the clusters of ``min_size`` or
    more only (at most ``Rx*Ry/min_size`` vectors of K).
    """
    rx, ry = labels.shape
    k_dim = feats.shape[1]
    m = sums.shape[0]
    if m < 2:
        return 0
    sq = np.zeros(m, np.float64)
    tot = np.zeros(m, np.float64)
    for i in range(m):
        if ready[i]:
            _slot_norms(sums, i, sq, tot)
    cand = np.empty(8, np.int64)
    total = 0
    for _ in range(max_passes):
        moved = 0
        for x in range(rx):
            for y in range(ry):
                a = labels[x, y]
                if a == 0 or fixed[x, y] or slot[a] < 0:
                    continue
                nc = 0
                for k in range(8):
                    nx = x + dx[k]
                    ny = y + dy[k]
                    if nx < 0 or nx >= rx or ny < 0 or ny >= ry:
                        continue
                    b = labels[nx, ny]
                    if b == 0 or b == a or slot[b] < 0 or not sim[x, y, k] >= threshold:
                        continue
                    dup = False
                    for i in range(nc):
                        if cand[i] == b:
                            dup = True
                    if not dup:
                        cand[nc] = b
                        nc += 1
                if nc == 0:
                    continue
                p = x * ry + y
                if np.isnan(norms2[p]):
                    norms2[p] = _norm2(feats, p)
                sa = slot[a]
                if not ready[sa]:
                    _fill_slot(labels, slot, feats, sums, sa, sq, tot, ready)
                for i in range(nc):
                    if not ready[slot[cand[i]]]:
                        _fill_slot(labels, slot, feats, sums, slot[cand[i]], sq, tot, ready)
                fsum = 0.0
                d = 0.0
                # One candidate (the usual case): its two dot products in the
                # same sweep as the position's own. Each sum still adds in
                # column order (the same numbers); four independent chains
                # instead of two, one sweep over the features instead of two.
                s0 = slot[cand[0]]
                fused = nc == 1 and sq[s0] > 0.0 and tot[s0] > 0.0
                e0 = 0.0
                rb0 = 0.0
                if fused:
                    for j in range(k_dim):
                        f = feats[p, j]
                        d += f * sums[sa, j]
                        fsum += f
                        e0 += f * sums[s0, j]
                        rb0 += sums[sa, j] * sums[s0, j]
                else:
                    for j in range(k_dim):
                        d += feats[p, j] * sums[sa, j]
                        fsum += feats[p, j]
                # the rest of its own cluster: R = S_a - f
                rr = sq[sa] - 2.0 * d + norms2[p]
                ta = tot[sa] - fsum
                ha = d - norms2[p]  # f . R
                if rr <= 0.0 or ta <= 0.0:
                    continue
                best = a
                best_gain = 0.0
                best_e = 0.0
                for i in range(nc):
                    b = cand[i]
                    sb = slot[b]
                    tb = tot[sb]
                    if sq[sb] <= 0.0 or tb <= 0.0:
                        continue
                    e = e0
                    rb = rb0
                    if not fused:
                        for j in range(k_dim):
                            e += feats[p, j] * sums[sb, j]
                            rb += sums[sa, j] * sums[sb, j]
                    if e <= 0.0 or e * e < link * norms2[p] * sq[sb]:
                        continue  # it could not join b under the linkage's test
                    rb -= e  # R . S_b
                    # normal equations of f ~ alpha R/ta + beta S_b/tb
                    gaa = rr / (ta * ta)
                    gbb = sq[sb] / (tb * tb)
                    gab = rb / (ta * tb)
                    det = gaa * gbb - gab * gab
                    if det <= 1e-9 * gaa * gbb:
                        continue  # the two means are (nearly) alike
                    fa = ha / ta
                    fb = e / tb
                    gain = ((gaa * fb - gab * fa) - (gbb * fa - gab * fb)) / det
                    if gain > best_gain:
                        best_gain = gain
                        best = b
                        best_e = e
                if best == a or not _ring_connected(labels, x, y, a, dx, dy):
                    continue
                labels[x, y] = best
                sb = slot[best]
                for j in range(k_dim):
                    sums[sa, j] -= feats[p, j]
                    sums[sb, j] += feats[p, j]
                sq[sa] = rr
                sq[sb] += 2.0 * best_e + norms2[p]
                tot[sa] = ta
                tot[sb] += fsum
                moved += 1
        total += moved
        if moved == 0:
            break
    return total


@numba.njit(cache=True, nogil=True)
def _best_neighbours(sim, mask, out):
    """Highest finite-or-not similarity of each position in ``mask`` (raster order).

    ``sim`` is ``(P, 8)`` float32, ``mask`` ``(P,)`` bool. Writes, in raster
    order, the largest non-NaN value of every masked position whose largest
    value is finite into ``out``; returns how many (as
    :func:`~napari_stemcluster.core.threshold.auto_threshold` selects them).
    """
    m = 0
    for p in range(sim.shape[0]):
        if not mask[p]:
            continue
        best = -np.inf
        for k in range(sim.shape[1]):
            v = sim[p, k]
            if v > best:  # False for NaN
                best = v
        if np.isfinite(best):
            out[m] = best
            m += 1
    return m


@numba.njit(cache=True, nogil=True)
def _mean_sim(sim, out):
    """:func:`~napari_stemcluster.core.similarity.mean_similarity` of ``sim`` (P, 8).

    The same numbers: NaN (out-of-scan) values count as 0 and are left out
    of the count, and the eight float64 values add in numpy's pairwise order
    for eight ``((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))``.
    """
    r = np.zeros(8, np.float64)
    for p in range(sim.shape[0]):
        c = 0
        for k in range(8):
            v = sim[p, k]
            if np.isnan(v):
                r[k] = 0.0
            else:
                r[k] = np.float64(v)
                c += 1
        t = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        out[p] = np.float32(t / c) if c > 0 else np.float32(0.0)


@numba.njit(cache=True, nogil=True)
def _seed_keys(ms, bits, mask, keys):
    """Sort keys of :func:`~napari_stemcluster.core.regions.seed_order` for float32 ``ms``.

    ``bits`` is ``ms`` viewed as uint32. ``keys[i]`` (uint64) of the
    ``i``-th allowed position ``p`` (raster order) is ``(rank << 32) | p``,
    ``rank`` falling as ``ms[p]`` rises: +inf first, then the finite values
    (-0 and +0 alike), -inf, NaN last; equal values keep raster order (the
    keys are distinct). Returns how many were written.
    """
    m = 0
    top = np.uint32(0x80000000)
    for p in range(ms.shape[0]):
        if not mask[p]:
            continue
        if np.isnan(ms[p]):
            u = np.uint32(0)  # below -inf (0x007FFFFF)
        else:
            b = bits[p]
            if b == top:
                b = np.uint32(0)  # -0 as +0
            u = ~b if b & top else b | top  # the float order as unsigned integers
        keys[m] = (np.uint64(np.uint32(0xFFFFFFFF) - u) << np.uint64(32)) | np.uint64(p)
        m += 1
    return m
