"""One pipeline behind every front end: core.segment, segment_chunked, the CLI and
the widgets give bit-identical labels and similarity, and errors name global
positions."""

import h5py
import numpy as np
import pytest

from napari_stemcluster import cli, segment
from napari_stemcluster.config import segment_kwargs
from napari_stemcluster.core import passes
from napari_stemcluster.engine import segment_chunked, similarity_chunked
from napari_stemcluster.io import read_results
from napari_stemcluster.synthetic import make_polycrystal

KW = {
    "threshold": 0.85,
    "min_cluster_size": 3,
    "q_mask": (2.0, 12.0),
    "sigma": 1.0,
    "real_mask": "triangle",  # several clusters on this small scan (one with the dark field)
}


@pytest.fixture(scope="module")
def cube5():
    return make_polycrystal((17, 19), (16, 16), n_particles=3, n_times=2, seed=4).cube


def _same(a, b):
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.similarity, b.similarity)
    np.testing.assert_array_equal(a.mean_similarity, b.mean_similarity)
    np.testing.assert_array_equal(a.real_mask, b.real_mask)
    means_a = a.cluster_means if isinstance(a.cluster_means, list) else [a.cluster_means]
    means_b = b.cluster_means if isinstance(b.cluster_means, list) else [b.cluster_means]
    for x, y in zip(means_a, means_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ndim", [4, 5])
@pytest.mark.parametrize(
    "prefilter,average", [(False, "raw"), ({"radius": 2, "sigma": 1.0}, "prefiltered")]
)
@pytest.mark.parametrize("chunks", [(1, 19), (3, 5), (8, 8), (17, 2)])
def test_core_and_engine_are_bit_identical(cube5, ndim, prefilter, average, chunks):
    cube = cube5 if ndim == 5 else cube5[1]
    kw = {**KW, "prefilter": prefilter, "average": average}
    ref = segment(cube, **kw)
    assert ref.labels.ndim == ndim - 2 and ref.labels.max() > 1
    _same(ref, segment_chunked(cube, chunks=chunks, **kw))


@pytest.mark.parametrize("ndim", [4, 5])
def test_core_reads_bands_of_non_numpy_cubes_identically(cube5, tmp_path, ndim, monkeypatch):
    cube = cube5 if ndim == 5 else cube5[1]
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f["data"] = cube
    kw = {**KW, "prefilter": {"radius": 1}}
    ref = segment(cube, **kw)
    # bands of 4 rows: every pass reads blocks with their halo
    monkeypatch.setattr(passes, "_band_rows", lambda c: 4)
    with h5py.File(path) as f:
        _same(ref, segment(f["data"], **kw))


def test_raw_map_is_computed_only_when_the_mask_needs_it(cube5, monkeypatch):
    calls = []
    original = passes.neighbor_similarity

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(passes, "neighbor_similarity", counting)
    cube = cube5[0]
    for real_mask, want in ((None, 1), (np.ones(cube.shape[:2], bool), 1), ("otsu", 2)):
        calls.clear()
        segment(cube, prefilter={"radius": 1}, real_mask=real_mask)
        assert len(calls) == want, real_mask
        calls.clear()
        segment_chunked(cube, prefilter={"radius": 1}, real_mask=real_mask, chunks=(17, 19))
        assert len(calls) == want, real_mask


def test_cli_gives_the_same_as_core(cube5, tmp_path):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube5, chunks=(1, 5, 7, 16, 16))
    out = tmp_path / "r.h5"
    args = ["segment", str(path), "-o", str(out), "-q", "--prefilter", "--prefilter-radius", "2"]
    args += ["--threshold", "0.85", "--min-cluster-size", "3", "--q-mask", "2,12", "--sigma", "1"]
    args += ["--real-mask", "triangle"]
    assert cli.main(args) == 0
    ref = segment(cube5, **KW, prefilter={"radius": 2})
    _same(ref, read_results(out)[0])


def test_similarity_pass_alone_matches(cube5):
    sim, raw = similarity_chunked(cube5, (2.0, 12.0), 1.0, {"radius": 1}, raw_map=True)
    ref = segment(cube5, **KW, prefilter={"radius": 1})
    np.testing.assert_array_equal(sim, ref.similarity)
    assert raw.shape == ref.mean_similarity.shape
    sim4, none = similarity_chunked(cube5[0], chunks=(4, 4))
    assert sim4.shape == (1, 17, 19, 8) and none is None  # always a time axis


# ---------------------------------------------------------------------------
# errors name global positions


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("prefilter", [False, {"radius": 1}])
def test_non_finite_values_are_reported_at_their_global_position(bad, prefilter):
    cube = np.ones((2, 32, 40, 6, 6), np.float32)
    cube[1, 20, 30, 2, 3] = bad
    want = r"NaN or inf.*time step 1, scan index \(20, 30\)"
    with pytest.raises(ValueError, match=want):
        segment_chunked(cube, chunks=(8, 8), prefilter=prefilter)
    with pytest.raises(ValueError, match=want):
        segment(cube, prefilter=prefilter)
    four = np.ones((10, 10, 6, 6), np.float32)
    four[5, 5, 0, 0] = bad
    with pytest.raises(ValueError, match=r"NaN or inf.*scan index \(5, 5\)") as err:
        segment_chunked(four, chunks=(3, 4), prefilter=prefilter)
    assert "time step" not in str(err.value)


def test_cli_reports_global_positions(tmp_path, capsys):
    cube = np.ones((32, 40, 6, 6), np.float32)
    cube[20, 30, 1, 1] = np.nan
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube, chunks=(8, 8, 6, 6))
    assert cli.main(["segment", str(path), "-o", str(tmp_path / "r.h5"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "scan index (20, 30)" in err and "Traceback" not in err


def test_values_too_large_for_float32_are_reported_as_such():
    cube = np.ones((12, 12, 4, 4), np.float64)
    cube[7, 9] = 1e19
    try:
        segment_chunked(cube, chunks=(4, 4), real_mask=None)
    except ValueError as e:
        # either the kernels avoid the overflow, or it is reported as what it is
        assert "too large" in str(e) and "scan index (7, 9)" in str(e)


# ---------------------------------------------------------------------------
# the widgets run the same passes


@pytest.mark.gui
@pytest.mark.usefixtures("widget_settings")
@pytest.mark.parametrize("n_times", [None, 2])
@pytest.mark.parametrize("prefilter", [False, True])
def test_widgets_give_the_same_labels_and_similarity(make_napari_viewer, qtbot, n_times, prefilter):
    from napari_stemcluster._sample_data import sample_to_layers
    from napari_stemcluster.widgets import ClusteringWidget, PrefilterWidget, SimilarityWidget
    from napari_stemcluster.widgets._common import stem_meta

    def wait(w):
        qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
        assert w.runner.last_error is None

    sample = make_polycrystal((20, 23), (16, 16), n_particles=3, n_times=n_times, seed=2)
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_to_layers(sample, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    data_layer = viewer.layers["demo ADF"]
    kw = {**KW, "q_mask": (2.0, 10.0)}
    if prefilter:
        p = PrefilterWidget(viewer)
        p._layer_combo.value = data_layer
        p._sigma.value, p._radius.value = 1.0, 2
        p.run()
        wait(p)
        data_layer = p.last_layer
        kw["prefilter"] = {"sigma": 1.0, "radius": 2}
    s = SimilarityWidget(viewer)
    s._layer_combo.value = data_layer
    s._inner.value, s._outer.value, s._sigma.value = 2.0, 10.0, 1.0
    s.run()
    wait(s)
    s._method.value = kw["real_mask"]
    c = ClusteringWidget(viewer)
    c._sim_combo.value, c._mask_combo.value = s.similarity_layer, s.mask_layer
    c._mode.value, c._linkage.value = "manual", "pair"
    c._threshold.value, c._min_size.value = 0.85, 3
    c.run()
    wait(c)
    ref = segment(sample.cube, **kw, linkage="pair")
    np.testing.assert_array_equal(stem_meta(s.similarity_layer)["similarity"], ref.similarity)
    np.testing.assert_array_equal(s.mask_layer.data > 0, ref.real_mask)
    np.testing.assert_array_equal(c.labels_layer.data, ref.labels)
    assert c.params()["mask_source"] == "raw"
    # the exported parameters reproduce the widgets' result from the command line's path
    again = segment_chunked(sample.cube, chunks=(7, 6), **segment_kwargs(c.params()))
    np.testing.assert_array_equal(again.labels, ref.labels)


@pytest.mark.gui
@pytest.mark.usefixtures("widget_settings")
@pytest.mark.parametrize("n_times", [None, 2])
def test_widget_defaults_give_core_defaults(make_napari_viewer, qtbot, n_times):
    """auto threshold, mean linkage, dark-field mask: widgets == segment, bit for bit."""
    from napari_stemcluster._sample_data import sample_to_layers
    from napari_stemcluster.core.threshold import auto_threshold
    from napari_stemcluster.widgets import ClusteringWidget, SimilarityWidget

    def wait(w):
        qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
        assert w.runner.last_error is None

    sample = make_polycrystal((20, 23), (16, 16), n_particles=3, n_times=n_times, seed=2)
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_to_layers(sample, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    s = SimilarityWidget(viewer)
    s._layer_combo.value = viewer.layers["demo ADF"]
    s._inner.value, s._outer.value, s._sigma.value = 2.0, 10.0, 1.0
    s.run()
    wait(s)
    c = ClusteringWidget(viewer)
    c._sim_combo.value, c._mask_combo.value = s.similarity_layer, s.mask_layer
    assert (c._mode.value, c._linkage.value) == ("auto", "mean")
    c._min_size.value = 3
    c.update_preview()
    c.run()
    wait(c)
    ref = segment(sample.cube, q_mask=(2.0, 10.0), sigma=1.0, min_cluster_size=3)
    assert ref.params["threshold"] == "auto" and ref.params["linkage"] == "mean"
    np.testing.assert_array_equal(s.mask_layer.data > 0, ref.real_mask)
    np.testing.assert_array_equal(c.labels_layer.data, ref.labels)
    assert int(ref.labels.max()) >= 1
    # the automatic thresholds shown are core's, per time step
    sim = ref.similarity if n_times else ref.similarity[None]
    masks = ref.real_mask if n_times else ref.real_mask[None]
    want = [auto_threshold(sm, m) for sm, m in zip(sim, masks, strict=True)]
    assert c.auto_thresholds == want
    diags = ref.diagnostics if n_times else [ref.diagnostics]
    assert [d.threshold for d in c.diagnostics] == want == [d.threshold for d in diags]
    assert f"{want[0]:.2f}" in c._auto.value
    assert c.guidance.auto == want[0]
    assert "threshold" in c._status.value and "(auto)" in c._status.value
    assert "clustered" in c._status.value
    params = c.params()
    assert params["threshold"] == "auto" and params["linkage"] == "mean"
    assert params["real_mask"] == "dark_field"
    again = segment_chunked(sample.cube, chunks=(7, 6), **segment_kwargs(params))
    np.testing.assert_array_equal(again.labels, ref.labels)
    # the button takes the automatic value of the step on screen as the slider's
    c._use_auto.changed.emit(True)
    assert c._mode.value == "manual" and c._threshold.value == pytest.approx(want[0])
    assert c._threshold.enabled
    assert c.params()["threshold"] == pytest.approx(want[0])


@pytest.mark.gui
@pytest.mark.usefixtures("widget_settings")
def test_widget_explains_zero_clusters(make_napari_viewer, qtbot):
    from napari_stemcluster._sample_data import sample_to_layers
    from napari_stemcluster.widgets import ClusteringWidget, SimilarityWidget

    def wait(w):
        qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
        assert w.runner.last_error is None

    sample = make_polycrystal((16, 16), (16, 16), n_particles=2, seed=3)
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_to_layers(sample, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    s = SimilarityWidget(viewer)
    s._layer_combo.value = viewer.layers["demo ADF"]
    s.run()
    wait(s)
    c = ClusteringWidget(viewer)
    c._sim_combo.value, c._mask_combo.value = s.similarity_layer, s.mask_layer
    c._mode.value = "manual"
    c._threshold.value = 1.0
    c._min_size.value = 10_000
    c.run()
    wait(c)
    assert int(c.labels_layer.data.max()) == 0
    text = c._status.value
    assert "0 clusters" in text and "No clusters:" in text
    assert c.diagnostics[0].reason and c.diagnostics[0].suggestion in text


# ---------------------------------------------------------------------------
# one data model: steps inside, squeezed only at the public API


@pytest.mark.parametrize("ndim", [4, 5])
def test_results_are_steps_inside(cube5, ndim):
    from napari_stemcluster import SegmentationResult

    cube = cube5 if ndim == 5 else cube5[0]
    res = segment(cube, **KW)
    steps = res.steps()
    assert len(steps) == res.n_steps == (2 if ndim == 5 else 1)
    for s in steps:
        assert s.labels.shape == (17, 19) and s.similarity.shape == (17, 19, 8)
        assert s.cluster_means.shape == (len(s.clusters), 16, 16)
    again = SegmentationResult.from_steps(steps, res.params, time_axis=ndim == 5)
    _same(res, again)
    assert again.n_clusters == res.n_clusters
