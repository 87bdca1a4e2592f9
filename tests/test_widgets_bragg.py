"""The Bragg disks & strain widget, driven programmatically."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stemcluster._bragg_layers import colour_wheel
from napari_stemcluster._layers import sample_to_layers
from napari_stemcluster.widgets import (
    BraggWidget,
    ClusteringWidget,
    DiffractionViewer,
    SimilarityWidget,
)
from napari_stemcluster.widgets._bragg import LEGEND, ORIENTATION, STRAIN_NAMES
from napari_stemcluster.widgets._link import link_for

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

WAIT = 180_000  # the first run compiles the numba kernels; slow on a loaded machine


@pytest.fixture(scope="module")
def scan64():
    from napari_stemcluster.synthetic import make_polycrystal

    return make_polycrystal((24, 24), (64, 64), n_particles=2, seed=3)


def _clustered(make_napari_viewer, qtbot, scan, show=False):
    viewer = make_napari_viewer(show=show)
    for data, kwargs, kind in sample_to_layers(scan, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    sim = SimilarityWidget(viewer)
    sim.run()
    qtbot.waitUntil(lambda: not sim.runner.running, timeout=WAIT)
    clu = ClusteringWidget(viewer)
    clu._mode.value, clu._linkage.value = "manual", "pair"  # the paper's rules
    clu._threshold.value, clu._min_size.value = 0.9, 5
    clu.run()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    link = link_for(clu.labels_layer)
    qtbot.waitUntil(lambda: not link.runner.running, timeout=WAIT)
    return viewer, clu.labels_layer


def test_lattices_orientation_strain_and_save(make_napari_viewer, qtbot, scan64, tmp_path):
    from napari_stemcluster._writer import write_segmentation
    from napari_stemcluster.io import read_results

    viewer, layer = _clustered(make_napari_viewer, qtbot, scan64)
    w = BraggWidget(viewer)
    assert w.cluster_layer is layer
    w.run_lattices()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_error is None
    table = w.lattices[0]
    assert len(table) == int(layer.data.max())
    assert np.isfinite(table.g1).all(axis=1).sum() >= 1
    omap = viewer.layers[ORIENTATION]
    assert omap.colormap.name == "twilight" and omap.data.shape == layer.data.shape
    assert np.isnan(omap.data[layer.data == 0]).all()
    assert LEGEND in viewer.layers and viewer.layers[LEGEND].rgb
    assert "rotation" in layer.features and "n_indexed" in layer.features
    # Strain in the background, with progress; NaN outside clusters.
    steps = []
    w.run_strain().yielded.connect(steps.append)
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_error is None
    n_in = int((layer.data > 0).sum())
    assert steps[-1] == (n_in, n_in) and len(steps) >= 2  # progress per block of rows
    exx = viewer.layers[STRAIN_NAMES["exx"]]
    assert np.isnan(exx.data[layer.data == 0]).all()
    assert np.isfinite(exx.data).sum() > 0
    lo, hi = exx.contrast_limits
    assert lo == -hi and exx.colorbar.visible
    # Relative to a reference region: zero median strain inside it.
    region = np.zeros(layer.data.shape, np.int32)
    region[np.isfinite(w.strain.exx)] = 1
    ref = viewer.add_labels(region, name="reference")
    w._w["reference"].value = ref
    w.run_strain()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    for lab in np.unique(layer.data[region > 0]):
        inside = (layer.data == lab) & (region > 0) & np.isfinite(w.strain.exx)
        if inside.sum() >= 3:
            assert abs(np.median(w.strain.exx[inside])) < 2e-3
    # Saved with the segmentation and restored on open.
    out = write_segmentation(str(tmp_path / "seg.h5"), layer.data, {"metadata": layer.metadata})
    bragg = read_results(out[0])[1]["bragg"]
    np.testing.assert_array_equal(bragg["lattices"][0].g1, table.g1)
    np.testing.assert_array_equal(bragg["strain"].exx, w.strain.exx)
    from napari_stemcluster._reader import read_stem

    names = [kw["name"] for _, kw, _ in read_stem(out[0])]
    assert ORIENTATION in names and STRAIN_NAMES["exx"] in names and LEGEND in names
    # Opened in napari: the legend beside the scan and the strain colour bars, as made.
    before = set(viewer.layers)
    viewer.open(out[0], plugin="napari-stemcluster")
    added = {x.metadata.get("stemcluster", {}).get("kind"): x for x in viewer.layers}
    added = {k: v for k, v in added.items() if v not in before}
    assert added["orientation_legend"].rgb
    assert added["orientation"].colormap.name == "twilight"
    # Given its data file, the widget takes up the reopened clusters' analysis
    # (strain can run on without detecting again).
    from napari_stemcluster.widgets._export import attach_source

    np.save(tmp_path / "scan.npy", scan64.cube)
    assert attach_source(viewer, added["segmentation"], tmp_path / "scan.npy") is not None
    w.reset_choices()
    w._w["clusters"].value = added["segmentation"]
    np.testing.assert_array_equal(w.lattices[0].g1, table.g1)
    np.testing.assert_array_equal(w.strain.exx, bragg["strain"].exx)
    assert "taken up" in w._status.value
    for name in ("exx", "eyy", "exy", "rotation"):
        assert added[f"strain_{name}"].colorbar.visible
        lo, hi = added[f"strain_{name}"].contrast_limits
        assert lo == -hi


def test_cancel_strain_and_errors(make_napari_viewer, qtbot, scan64):
    viewer, _layer = _clustered(make_napari_viewer, qtbot, scan64)
    w = BraggWidget(viewer)
    assert w.run_strain() is None  # no lattices yet: a message, not an exception
    assert "lattices first" in w._status.value
    w.run_lattices()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    w.run_strain()
    w.runner.cancel()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_cancelled and w.strain is None
    w._w["template"].value = "vacuum region (Labels)"
    assert w.run_lattices() is None and "vacuum region" in w._status.value
    # The central disk of the largest cluster's average as the template.
    w._w["template"].value = "central disk of the cluster average"
    t = w.params()["template"]
    assert t.ndim == 2 and t.shape[0] % 2 == 1 and abs(float(t.sum()) - 1) < 1e-5
    # A vacuum region: the liquid around the particles.
    w._w["template"].value = "vacuum region (Labels)"
    region = viewer.add_labels((np.asarray(_layer.data) == 0).astype(np.int32), name="vacuum")
    w._w["region"].value = region
    t = w.params()["template"]
    assert t.ndim == 2 and abs(float(t.sum()) - 1) < 1e-5
    assert w.params()["template"] is t  # the region is read once, not at every preview
    painted = np.asarray(region.data).copy()
    painted[0, 0] = 1 - painted[0, 0]
    region.data = painted
    assert w.params()["template"] is not t
    # The runs take the template in their background job.
    w.run_lattices()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_error is None and w.lattices is not None
    assert layer_meta_template(_layer) == "vacuum region (Labels)"


def layer_meta_template(layer):
    return layer.metadata["stemcluster"]["bragg"]["params"]["template"]


def test_live_preview_labels_disks_in_the_diffraction_viewer(make_napari_viewer, qtbot, scan64):
    viewer, layer = _clustered(make_napari_viewer, qtbot, scan64)
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    w = BraggWidget(viewer)
    viewer.window.add_dock_widget(w, name="Bragg")
    assert w.diffraction_viewers() == [dif]
    dif.controls.source.value = "selected label"
    sizes = np.bincount(layer.data.ravel())[1:]
    layer.selected_label = int(np.argmax(sizes)) + 1
    qtbot.waitUntil(lambda: dif.average is not None, timeout=WAIT)
    w._w["radius"].value = 2.5
    assert dif.bragg_params["probe_radius"] == 2.5
    qtbot.waitUntil(lambda: not dif.peaks_pending, timeout=WAIT)  # found in a worker
    hk = list(dif.peaks_layer.features["hk"])
    assert hk[0] == "0 0" and sum(1 for s in hk if s) >= 4
    w._w["max_count"].value = 2
    qtbot.waitUntil(lambda: not dif.peaks_pending, timeout=WAIT)
    assert len(dif.peaks_layer.data) == 3  # the beam and two disks
    w._w["preview"].value = False
    assert dif.bragg_params is None


def test_time_series_gives_t_rx_ry_maps(make_napari_viewer, qtbot):
    from napari_stemcluster.synthetic import make_polycrystal

    scan = make_polycrystal((16, 16), (48, 48), n_times=3, n_particles=2, seed=2)
    viewer, layer = _clustered(make_napari_viewer, qtbot, scan)
    assert layer.data.ndim == 3
    w = BraggWidget(viewer)
    w.run_lattices()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_error is None and len(w.lattices) == 3
    omap = viewer.layers[ORIENTATION].data
    assert omap.shape == layer.data.shape and np.isnan(omap[layer.data == 0]).all()
    assert np.isfinite(omap).any()
    w.run_strain()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_error is None
    for name in STRAIN_NAMES.values():
        data = viewer.layers[name].data
        assert data.shape == layer.data.shape and np.isnan(data[layer.data == 0]).all()
    assert np.isfinite(viewer.layers[STRAIN_NAMES["exx"]].data).any()


def test_colour_wheel_legend():
    wheel = colour_wheel(33, 90.0)
    assert wheel.shape == (33, 33, 4)
    # Opposite directions have the same colour modulo 90 degrees (and 180).
    np.testing.assert_allclose(wheel[16, 30, :3], wheel[16, 2, :3], atol=1e-6)
    np.testing.assert_allclose(wheel[30, 16, :3], wheel[16, 30, :3], atol=1e-6)
    assert wheel[0, 0, 3] == 0 and wheel[16, 16, 3] == 0  # round, with a hole


# --------------------------------------------------------------------------
# live preview on the pattern under the mouse

#: Two grains of known lattices: scan columns < 4 and >= 4.
GRAIN_LATTICES = ((12.0, 0.0), (11.0, 25.0))


@pytest.fixture(scope="module")
def two_grains():
    """(cube, labels, truths): noise-free disk patterns of two known lattices."""
    from napari_stemcluster._bragg_synth import disk_pattern, lattice_vectors

    patterns, truths = [], []
    for length, angle in GRAIN_LATTICES:
        p, truth = disk_pattern((64, 64), *lattice_vectors(length, angle), dose=None)
        patterns.append((p * 1e4).astype(np.float32))
        truths.append(truth)
    labels = np.ones((6, 8), np.int32)
    labels[:, 4:] = 2
    cube = np.stack([patterns[lab - 1] for lab in labels.ravel()]).reshape(6, 8, 64, 64)
    return cube, labels, truths


def _grains_viewer(make_napari_viewer, qtbot, two_grains):
    from napari_stemcluster._layers import dataset_to_layers
    from napari_stemcluster.io.dataset import StemDataset

    cube, labels, _ = two_grains
    viewer = make_napari_viewer()
    for data, kwargs, kind in dataset_to_layers(StemDataset.from_array(cube, name="grains")):
        viewer._add_layer_from_data(data, kwargs, kind)
    layer = viewer.add_labels(
        labels.copy(),
        name="clusters",
        metadata={"stemcluster": {"kind": "segmentation", "cube": cube}},
    )
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    dif.finish_building()
    w = BraggWidget(viewer)
    viewer.window.add_dock_widget(w, name="Bragg")
    w._w["template"].value = "synthetic disk"
    w._w["radius"].value = 2.5
    assert dif.cluster_layer is layer and w.cluster_layer is layer
    return viewer, layer, dif, w


def _hover_and_wait(qtbot, viewer, dif, index):
    data = dif.data_layer
    viewer.cursor.position = tuple(data.data_to_world(index))
    qtbot.waitUntil(lambda: dif.position == tuple(index), timeout=5000)
    qtbot.waitUntil(lambda: not dif.pattern_peaks_pending, timeout=WAIT)


def _disks(dif):
    """Positions and index labels drawn on the pattern panel (direct beam first)."""
    layer = dif.pattern_peaks_layer
    return np.asarray(layer.data), list(layer.features["hk"])


def _assert_true_disks(pos, truth):
    from napari_stemcluster._bragg_synth import match

    np.testing.assert_allclose(pos[0], truth.center, atol=0.1)  # the direct beam
    # Every disk of the strong inner orders is drawn at its true position.
    inner = np.hypot(*truth.hk.T) <= 2
    found = match(pos[1:], truth.positions[inner], tol=0.2)
    assert (found >= 0).all()
    assert len(pos) - 1 <= len(truth.positions)  # nothing drawn where no disk is


def test_preview_draws_the_hovered_patterns_disks(make_napari_viewer, qtbot, two_grains):
    import threading

    import napari_stemcluster.core as core
    from napari_stemcluster._bragg_synth import match
    from napari_stemcluster.core.lattice import index_disks

    _, _, truths = two_grains
    threads = []
    original = core.find_bragg_disks

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    viewer, layer, dif, w = _grains_viewer(make_napari_viewer, qtbot, two_grains)
    assert dif.bragg_params is not None  # the preview is on from the start
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "find_bragg_disks", recording)
        _hover_and_wait(qtbot, viewer, dif, (2, 1))
    assert threads and threading.main_thread() not in threads  # found off the GUI thread
    assert all(t.name.startswith("stem-bragg") for t in threads)
    pos, hk = _disks(dif)
    _assert_true_disks(pos, truths[0])
    assert not any(hk)  # no lattice fitted yet: unlabelled

    # With the clusters' lattices, the disks carry their indices against them.
    layer_state = link_for(layer).state
    layer_state.ensure_sums(0)
    w.run_lattices()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    assert w.runner.last_error is None and dif.bragg_lattices is w.lattices
    qtbot.waitUntil(lambda: not dif.pattern_peaks_pending, timeout=WAIT)
    table = w.lattices[0]

    def check_indices(pos, hk, label, truth):
        assert hk[0] == "0 0"
        expected, ok = index_disks(
            truth.positions, table.g1[label - 1], table.g2[label - 1], truth.center
        )
        assert ok.all()
        j = match(pos[1:], truth.positions, tol=0.2)
        labelled = 0
        for i, drawn in enumerate(j):
            if drawn >= 0:
                h, k = expected[i]
                assert hk[1 + drawn] == f"{h} {k}"
                labelled += 1
        assert labelled >= 8

    pos, hk = _disks(dif)
    check_indices(pos, hk, 1, truths[0])
    # Another grain: its own disks and indices replace the first ones.
    _hover_and_wait(qtbot, viewer, dif, (3, 6))
    pos2, hk2 = _disks(dif)
    _assert_true_disks(pos2, truths[1])
    check_indices(pos2, hk2, 2, truths[1])
    assert (match(pos2[1:], truths[0].positions, tol=0.5) >= 0).sum() <= 1
    # Preview off: the disks go; on again: they come back for the same position.
    w._w["preview"].value = False
    assert len(dif.pattern_peaks_layer.data) == 0 and not dif.pattern_peaks_pending
    _hover_and_wait(qtbot, viewer, dif, (1, 2))
    assert len(dif.pattern_peaks_layer.data) == 0
    w._w["preview"].value = True
    qtbot.waitUntil(lambda: not dif.pattern_peaks_pending, timeout=WAIT)
    _assert_true_disks(_disks(dif)[0], truths[0])


def test_stale_pattern_disks_are_dropped(make_napari_viewer, qtbot, two_grains):
    """A search still running when the mouse moves on never draws its disks."""
    import threading

    import napari_stemcluster.core as core

    _, _, truths = two_grains
    viewer, _layer, dif, _w = _grains_viewer(make_napari_viewer, qtbot, two_grains)
    _hover_and_wait(qtbot, viewer, dif, (0, 0))
    gate, started = threading.Event(), threading.Event()
    original = core.find_bragg_disks

    def slow(*args, **kwargs):
        started.set()
        gate.wait(10)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "find_bragg_disks", slow)
        data = dif.data_layer
        viewer.cursor.position = tuple(data.data_to_world((0, 7)))
        qtbot.waitUntil(lambda: dif.position == (0, 7), timeout=5000)
        # The pattern is shown at once; its disks are still being searched for.
        assert dif.pattern is not None and dif.pattern_peaks_pending
        assert len(dif.pattern_peaks_layer.data) == 0
        assert started.wait(10)
        viewer.cursor.position = tuple(data.data_to_world((1, 1)))
        qtbot.waitUntil(lambda: dif.position == (1, 1), timeout=5000)
        gate.set()
    qtbot.waitUntil(lambda: not dif.pattern_peaks_pending, timeout=WAIT)
    qtbot.wait(200)  # the stale result has arrived by now, and was dropped
    _assert_true_disks(_disks(dif)[0], truths[0])
