"""Readers against the real detector files in ../shared/data."""

from __future__ import annotations

import pickle
import shutil

import h5py
import hdf5plugin  # noqa: F401  (bitshuffle-LZ4 for the direct reads)
import numpy as np
import pytest

from napari_stemcluster.io import StemFileError, detect_format, open_dataset

pytestmark = pytest.mark.realdata

EMD = "emd/py4DSTEM_size2x3x4x5.h5"
ARINA = "arina/test_00_master.h5"
ARINA_DATA = "arina/test_00_data_000001.h5"
MIB = "merlin/001_4x2_6bit.mib"
HDR = "merlin/001_4x2_6bit.hdr"


def _merlin_direct(path, n=8, header=384, shape=(256, 256)):
    raw = np.fromfile(path, dtype=np.uint8).reshape(n, header + shape[0] * shape[1])
    return raw[:, header:].reshape(n, *shape)


# --------------------------------------------------------------------------- EMD


def test_emd_values_shape_and_calibration(shared_data):
    path = shared_data / EMD
    ds = open_dataset(path)
    with h5py.File(path, "r") as f:
        direct = f["datacube_root/datacube/data"][()]
        cal = f["datacube_root/metadatabundle/calibration"]
        r_size = float(cal["R_pixel_size"][()])
        q_size = float(cal["Q_pixel_size"][()])
    assert ds.format == "emd"
    assert ds.dataset == "/datacube_root/datacube/data"
    assert ds.shape == direct.shape == (2, 3, 4, 5)
    assert ds.dtype == direct.dtype == np.float32
    np.testing.assert_array_equal(ds.cube.compute(), direct)
    np.testing.assert_array_equal(ds.read_pattern((1, 2)), direct[1, 2])
    assert ds.calibration.r_pixel_size == pytest.approx(r_size)
    assert ds.calibration.r_units == "nm"
    assert ds.calibration.q_pixel_size == pytest.approx(q_size)
    assert ds.calibration.q_units == "A^-1"
    assert ds.metadata["QR_flip"] is False
    # the napari units of the real-space axes
    scale, units = ds.calibration.real_space_scale(2)
    assert scale == (pytest.approx(r_size),) * 2 and units == ("nm", "nm")


def test_emd_opening_reads_no_data(shared_data):
    ds = open_dataset(shared_data / EMD)
    assert ds.source.n_reads == 0
    from napari_stemcluster._layers import dataset_to_layers

    image = dataset_to_layers(ds)[0][0]  # building the lazy virtual image reads nothing
    assert ds.source.n_reads == 0
    image.compute()
    assert ds.source.n_reads > 0


def test_emd_scan_shape_override(shared_data):
    path = shared_data / EMD
    with h5py.File(path, "r") as f:
        direct = f["datacube_root/datacube/data"][()]
    ds = open_dataset(path, scan_shape=(3, 2))
    np.testing.assert_array_equal(ds.cube.compute(), direct.reshape(3, 2, 4, 5))
    ds = open_dataset(path, scan_shape=(1, 3, 2))  # a time series of one scan
    assert ds.is_time_series
    np.testing.assert_array_equal(ds.cube.compute(), direct.reshape(1, 3, 2, 4, 5))
    with pytest.raises(StemFileError, match=r"scan shape \(4, 4\).*16 frames.*6 frames"):
        open_dataset(path, scan_shape=(4, 4))


# ------------------------------------------------------------------------- Arina


def test_arina_values_shape_and_extras(shared_data):
    ds = open_dataset(shared_data / ARINA)
    with h5py.File(shared_data / ARINA_DATA, "r") as f:
        direct = f["entry/data/data"][()]
    with h5py.File(shared_data / ARINA, "r") as f:
        spec = f["entry/instrument/detector/detectorSpecific"]
        flatfield = spec["flatfield"][()]
        pixel_mask = spec["pixel_mask"][()]
    assert ds.format == "arina"
    assert ds.shape == (4, 4, 192, 192)
    assert ds.dtype == np.uint32
    np.testing.assert_array_equal(ds.cube.compute(), direct.reshape(4, 4, 192, 192))
    np.testing.assert_array_equal(ds.flatfield, flatfield)
    np.testing.assert_array_equal(ds.pixel_mask, pixel_mask)
    assert ds.metadata["ntrigger"] == 16
    assert ds.metadata["compression"] == "bslz4"
    assert any("4x4 assumed" in n for n in ds.notes)
    # chunks hold whole patterns
    assert ds.cube.chunksize[-2:] == (192, 192)


def test_arina_scan_shape_and_laziness(shared_data):
    ds = open_dataset(shared_data / ARINA, scan_shape=(2, 8))
    assert ds.shape == (2, 8, 192, 192)
    assert ds.source.n_reads == 0
    ds = open_dataset(shared_data / ARINA, scan_shape=(2, 2))  # 16 = 4 scans of 2x2
    assert ds.shape == (4, 2, 2, 192, 192)
    with pytest.raises(StemFileError, match=r"test_00_master.h5.*\(3, 3\).*16 frames"):
        open_dataset(shared_data / ARINA, scan_shape=(3, 3))


def test_arina_corrections_applied_lazily(shared_data):
    ds = open_dataset(shared_data / ARINA)
    ds.pixel_mask = ds.pixel_mask.copy()
    ds.pixel_mask[0, 0] = 1
    ds.flatfield = np.full((192, 192), 2.0, np.float32)
    corrected = ds.corrected_cube()
    assert ds.source.n_reads == 0
    out = corrected.compute()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, 2.0 * ds.cube.compute() * (ds.pixel_mask == 0))


def test_arina_missing_data_file(shared_data, tmp_path):
    shutil.copy(shared_data / ARINA, tmp_path / "test_00_master.h5")
    with pytest.raises(StemFileError, match=r"data_000001.*test_00_data_000001\.h5.*not found"):
        open_dataset(tmp_path / "test_00_master.h5")


def test_arina_copied_with_its_data_file(shared_data, tmp_path):
    for name in (ARINA, ARINA_DATA):
        shutil.copy(shared_data / name, tmp_path)
    ds = open_dataset(tmp_path / "test_00_master.h5", scan_shape=(4, 4))
    assert ds.cube.compute().shape == (4, 4, 192, 192)
    assert str(tmp_path) in ds.metadata["data_files"][0]


# ------------------------------------------------------------------------ Merlin


def test_merlin_values_shape_and_header(shared_data):
    path = shared_data / MIB
    ds = open_dataset(path, scan_shape=(4, 2))
    assert ds.source.n_reads == 0
    direct = _merlin_direct(path)
    assert ds.format == "merlin"
    assert ds.shape == (4, 2, 256, 256)
    assert ds.dtype == np.uint8
    np.testing.assert_array_equal(ds.cube.compute(), direct.reshape(4, 2, 256, 256))
    np.testing.assert_array_equal(ds.read_pattern((3, 1)), direct[7])
    assert ds.metadata["counter_depth"] == 6
    assert ds.metadata["pixel_type"] == "U08"
    assert ds.metadata["Frames in Acquisition (Number)"] == "8"


def test_merlin_open_through_hdr(shared_data):
    ds = open_dataset(shared_data / HDR, scan_shape=(2, 4))
    assert ds.path.name == "001_4x2_6bit.mib"
    np.testing.assert_array_equal(
        ds.cube.compute(), _merlin_direct(shared_data / MIB).reshape(2, 4, 256, 256)
    )


def test_merlin_needs_scan_shape(shared_data):
    # one frame per trigger and 8 frames: the file does not tell the scan shape
    with pytest.raises(StemFileError, match=r"001_4x2_6bit\.mib.*8 frames.*scan_shape"):
        open_dataset(shared_data / MIB)


# ---------------------------------------------------------------------- all formats


@pytest.mark.parametrize(
    ("name", "kind", "scan"), [(EMD, "emd", None), (ARINA, "arina", None), (MIB, "merlin", (4, 2))]
)
def test_real_cubes_are_picklable_and_hold_no_open_file(shared_data, name, kind, scan):
    assert detect_format(shared_data / name) == kind
    ds = open_dataset(shared_data / name, scan_shape=scan)
    blob = pickle.dumps(ds.cube)  # would fail if an h5py object were in the graph
    assert len(blob) < 100_000
    from napari_stemcluster.io import close_cached_handles

    close_cached_handles()  # a fresh process would have no open handle either
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.compute(), ds.cube.compute())


def test_a_fresh_process_reads_the_pickled_cubes(shared_data, tmp_path):
    # what a dask.distributed worker does: unpickle the graph, open the files itself
    import subprocess
    import sys

    arina = open_dataset(shared_data / ARINA, scan_shape=(2, 8)).cube[:, 3:6]
    merlin = open_dataset(shared_data / MIB, scan_shape=(4, 2)).cube[1:3]
    (tmp_path / "cubes.pkl").write_bytes(pickle.dumps((arina, merlin)))
    code = (
        "import pickle, dask, numpy as np;"
        f"cubes = pickle.loads(open({str(tmp_path / 'cubes.pkl')!r}, 'rb').read());"
        "a, m = dask.compute(*cubes, scheduler='threads');"
        f"np.savez({str(tmp_path / 'out.npz')!r}, a=a, m=m)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(out["a"], arina.compute())
    np.testing.assert_array_equal(out["m"], merlin.compute())
    assert out["m"].sum() > 0
