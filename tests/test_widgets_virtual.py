"""The virtual detector on a file opened in the background: binned preview, then exact."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stemcluster.core.virtual import roi_mask, virtual_detector

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

WAIT = 60_000


def _cube(shape):
    rng = np.random.default_rng(7)
    q = shape[-1]
    yy, xx = np.mgrid[:q, :q] - (q - 1) / 2
    disk = 400 * np.exp(-(xx**2 + yy**2) / 8.0)
    return rng.poisson(disk + 3, shape).astype(np.uint16)


@pytest.mark.parametrize(("five_d", "chunked"), [(False, False), (False, True), (True, False)])
def test_binned_preview_then_exact_image(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, five_d, chunked
):
    import napari_stemcluster.widgets._background as background
    import napari_stemcluster.widgets._virtual as virtual
    from napari_stemcluster.widgets import DiffractionViewer

    monkeypatch.setattr(background, "BACKGROUND_BYTES", 0)  # every file counts as large
    monkeypatch.setattr(virtual, "EXACT_UPDATE_S", 0.0)  # every batch shown
    shape = (2, 12, 10, 32, 32) if five_d else (12, 10, 32, 32)
    data = _cube(shape)
    path = tmp_path / "cube.h5"
    with h5py.File(path, "w") as f:
        chunks = (*(1,) * (len(shape) - 3), 10, 32, 32) if chunked else None
        f.create_dataset("data", data=data, chunks=chunks)
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(path), plugin="napari-stemcluster")
    img = layer.data
    assert isinstance(img, background.BackgroundImage) and img.direct is not None
    t = 1 if five_d else 0
    if five_d:
        viewer.dims.set_current_step(0, t)
    assert img.wait(t, timeout=60)
    step_data = data[t] if five_d else data
    # the background image is still the layer's ADF
    meta = layer.metadata["stemcluster"]
    from napari_stemcluster.core.virtual import detector_mask

    adf = detector_mask((32, 32), "adf")
    np.testing.assert_array_equal(
        img[t] if five_d else img[:, :], step_data[..., adf].sum(-1).astype(np.int64)
    )
    binned = background.binned_cube(meta["cube"], t)
    assert binned is not None and binned.complete and binned.factor == 2

    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction viewer")
    vd = dif.virtual
    vd.controls.kind.value = "annulus"
    vd.controls.enabled_box.value = True
    qtbot.waitUntil(lambda: vd.stride_done == 1 and vd._job is None, timeout=WAIT)
    assert vd.stride_done == 1
    roi = vd.roi
    mask = roi_mask((32, 32), roi)
    exact = virtual_detector(step_data, mask, center=roi["center"])
    np.testing.assert_allclose(vd.images[0], exact.intensity)
    np.testing.assert_allclose(vd.images[1], exact.com_x, atol=1e-9)
    np.testing.assert_allclose(vd.images[2], exact.com_y, atol=1e-9)
    assert vd.timing["requested"] <= vd.timing["first"] <= vd.timing["exact"]

    # a drag: the preview only, from the binned copy, close to the exact image
    moved = {**roi, "center": (roi["center"][0] + 1.3, roi["center"][1] - 0.6)}
    vd.roi = moved
    vd.compute(coarse_only=True)
    qtbot.waitUntil(lambda: vd._job is None and vd.stride_done == virtual.PREVIEW, timeout=WAIT)
    mask = roi_mask((32, 32), moved)
    exact = virtual_detector(step_data, mask, center=moved["center"])
    preview = binned.images(mask, moved["center"])
    np.testing.assert_allclose(vd.images[0], preview.intensity)
    # Poisson noise on 2x2 bins: close, not equal, at the detector's edges
    err = np.abs(vd.images[0] - exact.intensity) / exact.intensity.mean()
    assert np.median(err) < 0.05 and err.max() < 0.25
    assert not np.allclose(vd.images[0], exact.intensity)
    # the drag stops: the exact image replaces the preview
    vd.compute()
    qtbot.waitUntil(lambda: vd.stride_done == 1 and vd._job is None, timeout=WAIT)
    np.testing.assert_allclose(vd.images[0], exact.intensity)
    np.testing.assert_allclose(np.asarray(viewer.layers[virtual.IMAGE_NAME].data), exact.intensity)


def test_a_moved_detector_cancels_the_exact_pass(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import napari_stemcluster.widgets._background as background
    import napari_stemcluster.widgets._virtual as virtual
    from napari_stemcluster.widgets import DiffractionViewer

    monkeypatch.setattr(background, "BACKGROUND_BYTES", 0)
    data = _cube((40, 8, 16, 16))
    path = tmp_path / "cube.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(path), plugin="napari-stemcluster")
    assert layer.data.wait(0, timeout=60)
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction viewer")
    vd = dif.virtual
    vd.controls.kind.value = "circle"
    vd.controls.enabled_box.value = True
    qtbot.waitUntil(lambda: vd.stride_done == 1 and vd._job is None, timeout=WAIT)
    # slow reads: the exact pass is still running when the detector moves again
    import time

    real = virtual.virtual_detector

    def slow(*a, **k):
        time.sleep(0.02)
        return real(*a, **k)

    monkeypatch.setattr(virtual, "virtual_detector", slow)
    first = {**vd.roi, "radius": 3.0}
    vd.set_roi(first, draw=False)
    qtbot.waitUntil(lambda: vd.stride_done == virtual.PREVIEW, timeout=WAIT)
    second = {**vd.roi, "radius": 5.0}
    vd.set_roi(second, draw=False)
    qtbot.waitUntil(lambda: vd.stride_done == 1 and vd._job is None, timeout=WAIT)
    want = virtual_detector(data, roi_mask((16, 16), second), center=second["center"])
    np.testing.assert_allclose(vd.images[0], want.intensity)
