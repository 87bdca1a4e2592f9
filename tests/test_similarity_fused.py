"""The similarity kernel's per-position outputs: binned patterns and dark field.

Compared with the reference functions
(:func:`~napari_stemcluster.core.linkage.pattern_features`,
:func:`~napari_stemcluster.core.masking.dark_field_image`) and with plain
numpy, on awkward shapes, every dtype and block splits.
"""

import numpy as np
import pytest

from napari_stemcluster.core import passes
from napari_stemcluster.core.linkage import feature_bins, feature_slots, pattern_features
from napari_stemcluster.core.masking import (
    dark_field_image,
    dark_field_keep,
    mask_runs,
    resolve_q_mask,
)
from napari_stemcluster.core.similarity import (
    block_similarity,
    neighbor_similarity,
    similarity_plan,
)

from _reference import random_cube

ALL_DTYPES = [
    np.uint8,
    np.uint16,
    ">u2",
    np.int16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    ">f8",
]


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def fused(cube, q_mask=None, sigma=0.0, beam=None, dims=1024, **kw):
    """Similarity, features and dark field from one call."""
    rx, ry, qx, qy = cube.shape
    _, bx, by = feature_bins((qx, qy), dims)
    feats = np.full((rx, ry, bx * by), np.nan, np.float32)
    dark = np.full((rx, ry), np.nan, np.float32)
    if beam is None:
        beam = (qx / 2 - 0.3, qy / 2 + 0.2, 1.0)
    sim = neighbor_similarity(cube, q_mask, sigma, features=feats, dark_field=dark, beam=beam, **kw)
    return sim, feats, dark, beam


#: Scans and detectors (odd, non-square, 1xN) with q-masks (none, annulus, custom).
SHAPES_AND_MASKS = [
    ((5, 6, 7, 9), None),
    ((1, 7, 12, 7), (1, 4)),
    ((7, 1, 40, 33), (3, 14)),
    ((3, 4, 64, 64), (4, 28.8)),
    ((2, 3, 33, 70), "custom"),
]


def cube_and_mask(rng, dtype, shape, q_mask):
    """A random cube of ``dtype`` and the q-mask (``"custom"``: an irregular boolean one)."""
    cube = random_cube(rng, shape, np.uint16, high=60).astype(dtype)
    if q_mask == "custom":
        q_mask = np.zeros(shape[2:], bool)
        q_mask[3:-5, 1::3] = True
        q_mask[10, :] = True
    return cube, q_mask


def numpy_features(cube, mask, dims=1024):
    """``pattern_features`` without blur, in plain numpy (float64)."""
    rx, ry, qx, qy = cube.shape
    b, bx, by = feature_bins((qx, qy), dims)
    padded = np.zeros((rx, ry, bx * b, by * b))
    keep = np.ones((qx, qy), bool) if mask is None else mask
    padded[..., :qx, :qy] = cube.astype(np.float64) * keep
    return padded.reshape(rx, ry, bx, b, by, b).sum((3, 5)).reshape(rx, ry, -1)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape, q_mask", SHAPES_AND_MASKS)
def test_features_without_blur_equal_the_reference(rng, dtype, shape, q_mask):
    cube, q_mask = cube_and_mask(rng, dtype, shape, q_mask)
    sim, feats, _, _ = fused(cube, q_mask)
    ref = pattern_features(cube, q_mask)
    # Same values added in the same order: bit for bit.
    np.testing.assert_array_equal(feats, ref)
    np.testing.assert_allclose(feats, numpy_features(cube, resolve_q_mask(q_mask, shape[2:])))
    # The extra outputs do not change the similarity.
    np.testing.assert_array_equal(sim, neighbor_similarity(cube, q_mask))


@pytest.mark.parametrize("dtype", [np.uint16, ">u2", np.int32, np.uint64, np.float32, ">f8"])
@pytest.mark.parametrize("shape", [(4, 5, 16, 16), (1, 9, 13, 10), (6, 1, 9, 20), (2, 2, 64, 48)])
@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_blurred_features_match_the_reference_to_float32_rounding(rng, dtype, shape, sigma):
    cube = random_cube(rng, shape, np.uint16, high=60).astype(dtype)
    q_mask = (1.5, 0.45 * min(shape[2:]))
    sim, feats, _, _ = fused(cube, q_mask, sigma)
    ref = pattern_features(cube, q_mask, sigma)
    scale = np.abs(ref).max(axis=-1, keepdims=True)
    # The two blurs sum the same taps in another order: float32 rounding.
    np.testing.assert_allclose(feats, ref, rtol=2e-6, atol=float(scale.max()) * 2e-6)
    assert (feats[ref == 0] == 0).all()  # bins outside the mask are exactly 0
    np.testing.assert_array_equal(sim, neighbor_similarity(cube, q_mask, sigma))


@pytest.mark.parametrize("dtype", [np.int64, np.float64])
def test_scaled_input_features_are_scaled_back(rng, dtype):
    # The kernel scales 64-bit and float patterns by a power of two; the
    # features come out in the data's own units, pattern by pattern.
    cube = random_cube(rng, (3, 4, 10, 10), np.uint16, high=60).astype(dtype)
    cube[0, 0] *= 2**40
    cube[1, 2] = cube[1, 2] // 3 if dtype == np.int64 else cube[1, 2] * 1e-12
    _, feats, _, _ = fused(cube)
    np.testing.assert_array_equal(feats, pattern_features(cube))
    _, blurred, _, _ = fused(cube, None, 1.0)
    ref = pattern_features(cube, None, 1.0)
    np.testing.assert_allclose(blurred, ref, rtol=1e-5)


@pytest.mark.parametrize("value", [0, 7])
def test_zero_and_constant_patterns(value):
    cube = np.full((3, 4, 9, 11), value, np.uint16)
    _, feats, dark, beam = fused(cube, (1, 4), 1.0)
    ref = pattern_features(cube, (1, 4), 1.0)
    np.testing.assert_allclose(feats, ref, rtol=1e-6)
    if value == 0:
        assert not feats.any() and not dark.any()
    np.testing.assert_array_equal(dark, dark_field_image(cube, beam))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("prefilter_like", [False, True])
def test_dark_field_is_bit_identical_to_dark_field_image(rng, dtype, prefilter_like):
    cube = random_cube(rng, (5, 7, 12, 10), np.uint16, high=60).astype(dtype)
    beam = (6.2, 4.1, 2.0)
    _, _, dark, _ = fused(cube, (1, 5), 1.0 if prefilter_like else 0.0, beam=beam)
    want = dark_field_image(cube, beam)
    np.testing.assert_array_equal(dark, want)
    xs, ys = np.indices((12, 10))
    outside = np.hypot(xs - 6.2, ys - 4.1) > 1.5 * 2 + 1
    np.testing.assert_allclose(dark, (cube.astype(np.float64) * outside).sum((-2, -1)), rtol=1e-6)


def test_dark_field_image_sums_views_without_copies(rng):
    cube = random_cube(rng, (6, 9, 11, 13), np.float32)
    beam = (5.0, 6.5, 1.5)
    view = cube[1:5, 2:7]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(
        dark_field_image(view, beam), dark_field_image(np.ascontiguousarray(view), beam)
    )
    np.testing.assert_array_equal(
        dark_field_image(view, beam), dark_field_image(cube, beam)[1:5, 2:7]
    )


def test_default_beam_is_dark_field_images(rng):
    cube = random_cube(rng, (4, 4, 16, 16))
    cube[..., 7:9, 7:9] += 500
    rx, ry = cube.shape[:2]
    dark = np.empty((rx, ry), np.float32)
    neighbor_similarity(cube, dark_field=dark)
    np.testing.assert_array_equal(dark, dark_field_image(cube))


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_block_and_strip_splits_do_not_change_the_outputs(rng, monkeypatch, rows):
    from napari_stemcluster.core import similarity

    cube = random_cube(rng, (7, 11, 12, 9))
    sim, feats, dark, beam = fused(cube, (1, 4), 1.0)
    for width in (1, 3, 100):
        monkeypatch.setattr(similarity, "_strip", lambda ry, plan, w=width: w)
        s2, f2, d2, _ = fused(cube, (1, 4), 1.0, beam=beam, _block_rows=rows)
        np.testing.assert_array_equal(s2, sim)
        np.testing.assert_array_equal(f2, feats)
        np.testing.assert_array_equal(d2, dark)


def test_block_similarity_outputs_and_errors(rng):
    cube = random_cube(rng, (5, 4, 8, 8), np.float32)
    beam = (3.5, 3.5, 1.0)
    plan = similarity_plan((8, 8), (1, 3), 1.0, cube.dtype, feature_dims=16, beam=beam)
    assert plan.bins == (2, 4, 4)
    feats = np.empty((2, 4, 16), np.float32)
    dark = np.empty((2, 4), np.float32)
    block_similarity(cube[1:4], 2, plan, features=feats, dark_field=dark)
    np.testing.assert_array_equal(feats, fused(cube, (1, 3), 1.0, beam=beam, dims=16)[1][1:3])
    np.testing.assert_array_equal(dark, dark_field_image(cube[1:3], beam))
    bare = similarity_plan((8, 8), (1, 3), 1.0, cube.dtype)
    with pytest.raises(ValueError, match="feature_dims"):
        block_similarity(cube[1:4], 2, bare, features=feats)
    with pytest.raises(ValueError, match="beam"):
        block_similarity(cube[1:4], 2, bare, dark_field=dark)
    with pytest.raises(ValueError, match="features must be a writeable float32"):
        block_similarity(cube[1:4], 2, plan, features=np.empty((2, 4, 15), np.float32))
    with pytest.raises(ValueError, match="dark_field must be a writeable float32"):
        block_similarity(cube[1:4], 2, plan, dark_field=np.empty((2, 4), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        block_similarity(cube[1:4], 2, plan, features=np.empty((2, 4, 32), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="features must be"):
        neighbor_similarity(cube, features=np.empty((5, 4), np.float32))


def test_mask_runs_cover_the_mask_in_raster_order(rng):
    for mask in (rng.random((7, 9)) > 0.5, np.ones((3, 4), bool), np.zeros((2, 5), bool)):
        runs = mask_runs(mask)
        rebuilt = np.zeros(mask.shape, bool)
        for r, a, b in runs:
            assert not rebuilt[r, a:b].any()
            rebuilt[r, a:b] = True
        np.testing.assert_array_equal(rebuilt, mask)
        assert [tuple(x) for x in runs] == sorted(tuple(x) for x in runs)
    keep = dark_field_keep((9, 9), (4.0, 4.0, 1.0))
    assert not keep[4, 4] and keep[0, 0]


@pytest.mark.parametrize("prefilter", [None, {"radius": 1, "sigma": 1.0}])
def test_similarity_block_extras_equal_the_references(rng, prefilter):
    # An interior block read with its halo, as the engine reads it.
    cube = random_cube(rng, (9, 10, 12, 12))
    scan = cube.shape[:2]
    qmask = resolve_q_mask((1, 5), (12, 12))
    beam = (5.5, 5.5, 1.0)
    if prefilter:
        from napari_stemcluster.core.params import prefilter_options

        prefilter = prefilter_options(prefilter)
    spec = passes.make_spec(prefilter, qmask, 1.0, features=True, beam=beam)
    box = (3, 6, 2, 8)
    ext = passes.extended(box, spec["halo"], scan)
    raw = cube[ext[0] : ext[1], ext[2] : ext[3]]
    extras = {}
    passes.similarity_block(raw, ext, box, spec, extras=extras)
    inner = cube[box[0] : box[1], box[2] : box[3]]
    np.testing.assert_array_equal(extras["signal"], dark_field_image(inner, beam))
    if prefilter:
        from napari_stemcluster.core.prefilter import correlative_prefilter

        compared = correlative_prefilter(raw, **prefilter)
        compared = compared[box[0] - ext[0] : box[1] - ext[0], box[2] - ext[2] : box[3] - ext[2]]
    else:
        compared = inner
    ref = pattern_features(compared, qmask, 1.0)
    # Only the bins that meet the q-mask are kept; the others are 0 in the reference.
    slots = feature_slots((12, 12), qmask)
    np.testing.assert_array_equal(np.delete(ref, slots, axis=-1), 0)
    ref = ref[..., slots]
    np.testing.assert_allclose(extras["features"], ref, rtol=2e-6, atol=float(ref.max()) * 2e-6)


@pytest.mark.parametrize("dtype", [np.uint16, ">u2", np.int64, np.float32])
@pytest.mark.parametrize("shape, q_mask", SHAPES_AND_MASKS)
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_compact_features_are_the_full_ones_at_the_kept_bins(rng, dtype, shape, q_mask, sigma):
    cube, q_mask = cube_and_mask(rng, dtype, shape, q_mask)
    _, full, _, _ = fused(cube, q_mask, sigma)
    slots = feature_slots(shape[2:], q_mask)
    # the bins left out are those the q-mask does not reach: 0 for every pattern
    mask = resolve_q_mask(q_mask, shape[2:])
    b, bx, by = feature_bins(shape[2:])
    reached = np.zeros((bx * b, by * b), bool)
    reached[: shape[2], : shape[3]] = True if mask is None else mask
    reached = reached.reshape(bx, b, by, b).any(axis=(1, 3)).ravel()
    np.testing.assert_array_equal(slots, np.flatnonzero(reached))
    np.testing.assert_array_equal(full[..., ~reached], 0)
    compact = np.full(shape[:2] + (len(slots),), np.nan, np.float32)
    sim = neighbor_similarity(cube, q_mask, sigma, features=compact, feature_dims=1024)
    np.testing.assert_array_equal(compact, full[..., slots])
    np.testing.assert_array_equal(sim, neighbor_similarity(cube, q_mask, sigma))


def test_growth_with_compact_features_is_bit_identical(rng):
    from napari_stemcluster.core.regions import grow_regions
    from napari_stemcluster.core.similarity import mean_similarity
    from napari_stemcluster.synthetic import make_polycrystal

    cube = make_polycrystal(scan_shape=(30, 28), detector_shape=(32, 32), seed=2).cube
    full = pattern_features(cube, (3, 14), 1.0)
    slots = feature_slots((32, 32), (3, 14))
    assert len(slots) < full.shape[-1]
    sim = neighbor_similarity(cube, (3, 14), 1.0)
    ms = mean_similarity(sim)
    for t in (0.5, 0.8):
        kw = dict(mean_similarity=ms, linkage="mean", link_threshold=0.9 * t)
        want, seeds = grow_regions(sim, t, features=full, **kw)
        got, got_seeds = grow_regions(sim, t, features=np.ascontiguousarray(full[..., slots]), **kw)
        assert want.max() > 1
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_seeds, seeds)


def test_segment_labels_with_fused_features_equal_the_reference_path():
    from napari_stemcluster.core import segment
    from napari_stemcluster.core.clustering import cluster_scan
    from napari_stemcluster.core.similarity import mean_similarity
    from napari_stemcluster.synthetic import make_polycrystal

    cube = make_polycrystal(scan_shape=(30, 28), detector_shape=(32, 32), seed=2).cube
    res = segment(cube, q_mask=(2, 14), sigma=1.0, min_cluster_size=3)
    sim = neighbor_similarity(cube, (2, 14), 1.0)
    np.testing.assert_array_equal(res.similarity, sim)
    labels, _, _ = cluster_scan(
        sim,
        mean_similarity(sim),
        min_cluster_size=3,
        signal=dark_field_image(cube, passes.dark_field_beam(cube, [None], ["dark_field"])),
        linkage="mean",
        features=pattern_features(cube, (2, 14), 1.0),
    )
    assert labels.max() > 1
    np.testing.assert_array_equal(res.labels, labels)
