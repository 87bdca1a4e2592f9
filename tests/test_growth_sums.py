"""The sums pass made while the regions grow (``core.passes.GrowthSums``)."""

import time

import numpy as np
import pytest

from napari_stemcluster import segment
from napari_stemcluster.core import grow_regions, mean_similarity
from napari_stemcluster.core import passes as passes_mod
from napari_stemcluster.core.averages import cluster_sums
from napari_stemcluster.core.passes import GrowthSums, make_spec
from test_regions import random_similarity


def plain_sums(cube, labels, n):
    """Per-label float64 sums, one pattern after the other."""
    out = np.zeros((n, *cube.shape[2:]))
    for (x, y), a in np.ndenumerate(labels):
        if a > 0:
            out[a - 1] += cube[x, y].astype(np.float64)
    return out


class _NoWorker(GrowthSums):
    """Every part left for the end (added on every core)."""

    def add(self, members, labs, n0, n1):
        self.todo.put((members, np.asarray(labs, np.int64), n0, n1))


class _AllWorker(GrowthSums):
    """Every part added by the thread before the growth ends."""

    def grown(self, labels):
        while not self.todo.empty():
            time.sleep(0.001)
        time.sleep(0.01)
        super().grown(labels)


@pytest.mark.parametrize("kind", [GrowthSums, _NoWorker, _AllWorker])
@pytest.mark.parametrize("shape", [(16, 16), (24, 19), (1, 40)])
def test_sums_made_during_growth_equal_the_plain_sums(kind, shape, monkeypatch):
    rng = np.random.default_rng(7)
    sim = random_similarity(rng, shape, levels=10)
    mask = rng.random(shape) > 0.05
    base = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1.0]])
    side = (np.arange(shape[1])[None, :] + rng.integers(-2, 3, shape)) > shape[1] // 2
    feats = (base[side.astype(int)] + rng.random(shape + (6,))).astype(np.float32)
    cube = rng.integers(0, 65536, (*shape, 3, 5)).astype(np.uint16)
    monkeypatch.setattr(kind, "PART_POSITIONS", 7)  # many parts
    acc = kind.of(cube, None, make_spec(None, None, 0.0), {"linkage": "mean"})
    kw = dict(mean_similarity=mean_similarity(sim), mask=mask, linkage="mean", features=feats)
    labels, _ = grow_regions(sim, 0.15, link_threshold=0.5, _sums=acc, **kw)
    assert acc.ready
    if min(shape) > 1:  # the refinement moved positions after their sums were made
        grown, _ = grow_regions(sim, 0.15, link_threshold=0.5, refine=False, **kw)
        assert (grown != labels).any()
    n = int(labels.max())
    np.testing.assert_array_equal(acc.finish(labels, n), plain_sums(cube, labels, n))
    # clusters dropped and renumbered after the growth (min_cluster_size)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= 3
    keep[0] = False
    relabel = np.zeros(n + 1, np.int32)
    relabel[keep] = np.arange(1, keep.sum() + 1)
    final = relabel[labels]
    np.testing.assert_array_equal(
        acc.finish(final, int(keep.sum())), plain_sums(cube, final, int(keep.sum()))
    )


def test_applies_to_in_memory_8_and_16_bit_cubes_only():
    spec, mean = make_spec(None, None, 0.0), {"linkage": "mean"}
    cube = np.zeros((3, 4, 2, 2), np.uint16)
    assert GrowthSums.of(cube, None, spec, mean) is not None
    assert GrowthSums.of(cube.astype(np.uint8), None, spec, mean) is not None
    assert GrowthSums.of(cube[None], 0, spec, mean) is not None  # a time step
    for other in (cube.astype(">u2"), cube.astype(np.float32), cube.astype(np.int32)):
        assert GrowthSums.of(other, None, spec, mean) is None
    assert GrowthSums.of(cube[:, ::2], None, spec, mean) is None  # not contiguous
    assert GrowthSums.of(cube, None, spec, {"linkage": "pair"}) is None
    pre = make_spec({"radius": 1}, None, 0.0, "prefiltered")
    assert GrowthSums.of(cube, None, pre, mean) is None


def grains(rng, shape, det=(9, 7), dtype=np.uint16):
    """Poisson patterns of a few grains (contested borders at low dose)."""
    n = 5
    templates = rng.random((n, *det)) ** 4 * 60 + 1
    cx, cy = rng.random((2, n)) * np.array(shape[-2:])[:, None]
    xs, ys = np.mgrid[0 : shape[-2], 0 : shape[-1]]
    g = np.argmin((xs[..., None] - cx) ** 2 + (ys[..., None] - cy) ** 2, axis=-1)
    return rng.poisson(templates[g], (*shape, *det)).astype(dtype)


@pytest.mark.parametrize(
    "shape, dtype", [((20, 23), np.uint16), ((1, 60), np.uint16), ((2, 15, 12), np.uint8)]
)
def test_segment_gives_the_same_result_with_and_without(shape, dtype, monkeypatch):
    cube = grains(np.random.default_rng(3), shape, dtype=dtype)
    kw = dict(real_mask=None, min_cluster_size=3, sigma=0.5)
    monkeypatch.setattr(GrowthSums, "PART_POSITIONS", 16)
    made = []
    real_of = GrowthSums.of.__func__

    def spy(cls, *a):
        acc = real_of(cls, *a)
        made.append(acc)
        return acc

    monkeypatch.setattr(GrowthSums, "of", classmethod(spy))
    got = segment(cube, **kw)
    assert made and all(a is not None and a.ready for a in made)
    monkeypatch.setattr(passes_mod.GrowthSums, "of", classmethod(lambda cls, *a: None))
    want = segment(cube, **kw)
    np.testing.assert_array_equal(got.labels, want.labels)
    for a, b in zip(got.steps(), want.steps(), strict=True):
        np.testing.assert_array_equal(a.cluster_means, b.cluster_means)
    steps = [cube] if cube.ndim == 4 else list(cube)
    for step, res in zip(steps, got.steps(), strict=True):
        n = len(res.clusters)
        sums, counts = cluster_sums(step, res.labels, n)
        np.testing.assert_array_equal(
            res.cluster_means, (sums / np.maximum(counts, 1)[:, None, None]).astype(np.float32)
        )


def test_a_part_too_long_for_32_bit_sums_is_added_in_float64():
    """One cluster of 70,000 positions at the largest uint16 value: the thread's
    32-bit sums would overflow, so that part is added in float64."""
    shape = (280, 250)
    cube = np.full((*shape, 1, 2), 65535, np.uint16)
    cube[::3, :, 0, 1] = 65534
    sim = np.full((*shape, 8), 0.99, np.float32)
    feats = np.ones((*shape, 2), np.float32)
    acc = _AllWorker.of(cube, None, make_spec(None, None, 0.0), {"linkage": "mean"})
    labels, _ = grow_regions(sim, 0.5, linkage="mean", features=feats, _sums=acc)
    assert labels.max() == 1 and labels.size > 65537
    assert acc.finish(labels, 1)[0].tolist() == [[65535.0 * labels.size, plain_last(cube)]]


def plain_last(cube):
    return float(cube[..., 0, 1].astype(np.float64).sum())
