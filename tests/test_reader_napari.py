"""napari integration: reader, sample data, writer round trip, open widget."""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

from conftest import blocks_labels, make_result
from napari_stemcluster._layers import dataset_to_layers, get_stem_metadata, result_to_layers
from napari_stemcluster._sample_data import (
    GROWTH_5D,
    POLYCRYSTAL_4D,
    make_growth_sample,
    make_polycrystal_sample,
)
from napari_stemcluster.core.virtual import virtual_adf, virtual_bf
from napari_stemcluster.io import Calibration, StemFileError, open_dataset, read_results
from napari_stemcluster.io._lazy import H5Array

PLUGIN = "napari-stemcluster"
EMD = "emd/py4DSTEM_size2x3x4x5.h5"


# ------------------------------------------------------------- without a viewer


def test_dataset_layer_tuple_and_metadata(shared_data):
    ds = open_dataset(shared_data / EMD)
    ((data, kwargs, kind),) = dataset_to_layers(ds)
    assert kind == "image" and kwargs["name"] == "py4DSTEM_size2x3x4x5 ADF"
    assert data.shape == (2, 3) and hasattr(data, "dask")
    assert kwargs["scale"] == (pytest.approx(0.126796875),) * 2
    assert kwargs["units"] == ("nm", "nm")
    meta = kwargs["metadata"]["stemcluster"]
    assert meta["kind"] == "virtual_image" and meta["cube"] is ds.cube
    assert meta["format"] == "emd" and meta["source"] == str(shared_data / EMD)
    assert meta["calibration"]["q_units"] == "A^-1"
    np.testing.assert_allclose(data.compute(), virtual_adf(ds.cube.compute()))
    bf, bkw, _ = dataset_to_layers(ds, detector="bf")[0]
    np.testing.assert_allclose(bf.compute(), virtual_bf(ds.cube.compute()))
    assert bkw["metadata"]["stemcluster"]["detector"]["type"] == "bf"
    with pytest.raises(ValueError, match="selects no pixel"):
        dataset_to_layers(ds, inner=10, outer=11)


def test_sample_data_is_fast_and_carries_truth():
    for make, params in (
        (make_polycrystal_sample, POLYCRYSTAL_4D),
        (make_growth_sample, GROWTH_5D),
    ):
        t0 = time.perf_counter()
        layers = make()
        elapsed = time.perf_counter() - t0
        assert elapsed < 5.0, f"{make.__name__} took {elapsed:.1f} s"
        (image, ikw, ikind), (grains, gkw, gkind) = layers
        assert (ikind, gkind) == ("image", "labels") and gkw["name"] == "true grains"
        scan = ((params["n_times"],) if "n_times" in params else ()) + params["scan_shape"]
        assert image.shape == grains.shape == scan
        cube = ikw["metadata"]["stemcluster"]["cube"]
        assert cube.shape == (*scan, *params["detector_shape"]) and cube.dtype == np.uint16
        assert grains.dtype == np.int32 and grains.max() > 1
        assert ikw["scale"][-2:] == (1.0, 1.0) and ikw["units"][-1] == "nm"
        # the true grains sit on the particles: brighter in dark field than the liquid
        adf = image.compute()
        assert adf[grains > 0].mean() > adf[grains == 0].mean()


# ------------------------------------------------------------------ with napari


@pytest.mark.gui
def test_open_emd_in_viewer(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    layers = viewer.open(str(shared_data / EMD), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.__class__.__name__ == "Image"
    np.testing.assert_allclose(layer.scale, [0.126796875] * 2)
    assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
    meta = get_stem_metadata(layer)
    assert meta["kind"] == "virtual_image" and meta["cube"].shape == (2, 3, 4, 5)
    with h5py.File(shared_data / EMD, "r") as f:
        direct = f["datacube_root/datacube/data"][()]
    np.testing.assert_allclose(np.asarray(layer.data), virtual_adf(direct))


@pytest.mark.gui
def test_5d_file_gets_a_time_slider_and_reads_only_the_step_on_screen(
    make_napari_viewer, tmp_path, monkeypatch
):
    data = np.random.default_rng(0).integers(0, 100, (4, 6, 5, 8, 8)).astype(np.uint16)
    path = tmp_path / "series.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("cube", data=data, chunks=(1, 6, 5, 8, 8))
    read_steps = []
    original = H5Array._get

    def spy(self, key):
        read_steps.append(key[0])
        return original(self, key)

    monkeypatch.setattr(H5Array, "_get", spy)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.ndim == 3 and viewer.dims.nsteps[0] == 4
    assert layer.axis_labels == ("t", "rx", "ry")

    def steps_read():
        steps = {k.start if isinstance(k, slice) else k for k in read_steps}
        read_steps.clear()
        return steps

    shown = steps_read()
    assert 0 < len(shown) < 4  # the step(s) displayed so far, not the whole series
    new = next(t for t in range(4) if t not in shown)
    viewer.dims.set_current_step(0, new)
    assert steps_read() == {new}  # moving the slider reads that time step only
    np.testing.assert_array_equal(
        np.asarray(layer.data[new]), virtual_adf(data[new]).astype(np.int64)
    )


@pytest.mark.gui
def test_sample_data_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "polycrystal")
    assert [layer.name for layer in viewer.layers] == ["polycrystal ADF", "true grains"]
    assert viewer.layers["true grains"].__class__.__name__ == "Labels"


@pytest.mark.gui
@pytest.mark.parametrize("five_d", [False, True])
def test_results_round_trip_in_napari(make_napari_viewer, tmp_path, five_d):
    labels = blocks_labels((6, 7))
    if five_d:
        labels = np.stack([labels, np.roll(labels, 1, axis=0)])
    result = make_result(labels)
    cal = Calibration(r_pixel_size=0.5, r_units="nm", q_pixel_size=0.01, q_units="A^-1")
    viewer = make_napari_viewer()
    from napari.layers import Layer

    for data, kwargs, kind in result_to_layers(result, cal, name="grains", source="scan.h5"):
        viewer.add_layer(Layer.create(data, kwargs, kind))
    path = tmp_path / "grains.h5"
    viewer.layers.selection = {viewer.layers["grains"]}
    written = viewer.layers.save(str(path), selected=True, plugin=PLUGIN)
    assert written == [str(path)]
    saved, info = read_results(path)
    np.testing.assert_array_equal(saved.labels, labels)
    assert info["source"] == "scan.h5"

    viewer2 = make_napari_viewer()
    reopened = viewer2.open(str(path), plugin=PLUGIN)
    assert [layer.name for layer in reopened] == ["grains", "grains mean similarity"]
    for old_layer, new_layer in zip(viewer.layers, reopened, strict=True):
        assert type(old_layer) is type(new_layer)
        np.testing.assert_array_equal(np.asarray(old_layer.data), np.asarray(new_layer.data))
        np.testing.assert_allclose(old_layer.scale, new_layer.scale)
        assert old_layer.units == new_layer.units
    back = get_stem_metadata(reopened[0])["result"]
    means = back.cluster_means if five_d else [back.cluster_means]
    orig = result.cluster_means if five_d else [result.cluster_means]
    for a, b in zip(orig, means, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.similarity, result.similarity)


@pytest.mark.gui
def test_reader_error_does_not_crash_napari(make_napari_viewer, tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match=r"broken\.h5") as err:
        viewer.open(str(path), plugin=PLUGIN)
    chain, e = [], err.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(x, StemFileError) for x in chain)
    assert len(viewer.layers) == 0
    viewer.add_image(np.zeros((4, 4)))  # napari still works
    assert len(viewer.layers) == 1


@pytest.mark.gui
def test_open_widget_sets_scan_shape(make_napari_viewer, shared_data):
    from napari_stemcluster._reader import OpenStemWidget

    viewer = make_napari_viewer()
    widget = OpenStemWidget(viewer)
    widget._path.value = shared_data / "merlin" / "001_4x2_6bit.mib"
    info = widget._info.value.replace("\n", " ")
    assert "Scan shape field above" in info and "scan_shape=" not in info
    assert not widget._open.enabled
    widget._scan.value = "4, 2"
    assert "merlin" in widget._info.value and "(4, 2)" in widget._info.value
    assert widget._open.enabled
    widget._detector.value = "bf"
    (layer,) = widget.open_file()
    assert layer in viewer.layers and layer.data.shape == (4, 2)
    assert get_stem_metadata(layer)["detector"]["type"] == "bf"
    widget._scan.value = "3, 3"
    assert "9 frames" in widget._info.value and not widget._open.enabled
    widget._scan.value = "a, b"
    assert "2 or 3 integers" in widget._info.value


def test_flat_stack_asks_for_the_scan_shape(shared_data, tmp_path, monkeypatch):
    import napari_stemcluster._reader as reader

    mib = str(shared_data / "merlin" / "001_4x2_6bit.mib")
    asked = []
    monkeypatch.setattr(reader, "ask_scan_shape", lambda p, msg: asked.append(msg) or (4, 2))
    ((data, _, kind),) = reader.read_stem(mib)
    assert data.shape == (4, 2) and kind == "image"
    assert "Scan shape field" in asked[0] and "scan_shape=" not in asked[0]
    # cancelled: the reason in GUI terms
    monkeypatch.setattr(reader, "ask_scan_shape", lambda p, msg: None)
    with pytest.raises(StemFileError, match="Scan shape field") as err:
        reader.read_stem(mib)
    assert "open_dataset" not in str(err.value)
    # an HDF5 frame stack is claimed too (and asks)
    stack = tmp_path / "frames.h5"
    with h5py.File(stack, "w") as f:
        f["frames"] = np.ones((6, 8, 8), np.uint16)
    assert reader.get_reader(str(stack)) is reader.read_stem
    monkeypatch.setattr(reader, "ask_scan_shape", lambda p, msg: (2, 3))
    ((data, _, _),) = reader.read_stem(str(stack))
    assert data.shape == (2, 3)
    assert reader._square_guess(12) == "3, 4"


def test_arina_data_file_points_to_its_master(shared_data):
    from napari_stemcluster._reader import get_reader, gui_message, read_stem

    data_file = str(shared_data / "arina" / "test_00_data_000001.h5")
    reader = get_reader(data_file)
    assert reader is read_stem
    with pytest.raises(StemFileError, match=r"Open its master file test_00_master\.h5"):
        reader(data_file)
    assert gui_message("no scan shape here") == "no scan shape here"


@pytest.mark.gui
@pytest.mark.parametrize("five_d", [False, True])
def test_large_files_open_at_once_and_compute_in_the_background(
    make_napari_viewer, tmp_path, monkeypatch, five_d
):
    import napari_stemcluster.widgets._background as background

    monkeypatch.setattr(background, "BACKGROUND_BYTES", 0)  # every file counts as large
    shape = (3, 6, 5, 8, 8) if five_d else (6, 5, 8, 8)
    data = np.random.default_rng(0).integers(0, 100, shape).astype(np.uint16)
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("cube", data=data, chunks=(1,) * (len(shape) - 3) + shape[-3:])
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    img = layer.data
    assert isinstance(img, background.BackgroundImage)
    t = 1 if five_d else 0
    if five_d:
        viewer.dims.set_current_step(0, t)
    assert img.wait(t, timeout=30)
    want = virtual_adf(data[t] if five_d else data).astype(np.int64)
    np.testing.assert_array_equal(img[t] if five_d else img[:, :], want)
    lo, hi = layer.contrast_limits
    assert (lo, hi) != (0.0, 1.0) and hi > lo  # set from the computed image
    np.testing.assert_array_equal(np.asarray(img), virtual_adf(data).astype(np.int64))


@pytest.mark.gui
def test_scan_shape_dialog_needs_a_viewer(qapp, monkeypatch):
    # A Qt application without a napari viewer (a script, a test) must not
    # block on a modal dialog: the reader then refuses with its reason.
    import napari

    import napari_stemcluster._reader as reader

    monkeypatch.setattr(napari, "current_viewer", lambda: None)
    assert reader._ask_scan_shape_dialog("frames.h5", "8 frames, no scan shape") is None
