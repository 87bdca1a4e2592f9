"""Bad input: each gets a clear StemFileError naming the file and what was expected."""

from __future__ import annotations

import h5py
import hdf5plugin
import numpy as np
import pytest

from napari_stemcluster._reader import get_reader, read_stem
from napari_stemcluster.io import StemFileError, open_dataset


def _write_cube(path, shape=(4, 4, 16, 16), **kwargs):
    data = np.random.default_rng(0).integers(0, 100, shape).astype(np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data", data=data, **kwargs)
    return data


def test_truncated_hdf5(tmp_path):
    path = tmp_path / "scan.h5"
    _write_cube(path, chunks=(1, 1, 16, 16))
    raw = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(StemFileError, match=r"cut\.h5.*truncated.*expected a complete HDF5"):
        open_dataset(cut)
    # napari: a reader is offered, and it reports the reason instead of crashing
    reader = get_reader(str(cut))
    assert reader is not None
    with pytest.raises(StemFileError, match="truncated"):
        reader(str(cut))


def test_corrupt_hdf5_signature(tmp_path):
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(StemFileError, match=r"noise\.h5: not a recognised 4D-STEM file"):
        open_dataset(path)
    assert get_reader(str(path)) is None  # nothing in it looks like ours


def test_corrupt_chunk_data_fails_clearly_on_read(tmp_path):
    path = tmp_path / "scan.h5"
    _write_cube(path, chunks=(1, 1, 16, 16), compression="gzip")
    with h5py.File(path, "r") as f:
        offset = f["entry/data"].id.get_chunk_info(5).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 64] = b"\xff" * 64  # destroy one compressed chunk
    path.write_bytes(bytes(raw))
    ds = open_dataset(path)  # metadata is intact: opens fine, lazily
    with pytest.raises(StemFileError, match=r"scan\.h5: reading dataset /entry/data failed"):
        ds.cube.compute()


def test_unknown_compression_filter(tmp_path):
    ok = tmp_path / "zstd.h5"
    _write_cube(ok, chunks=(1, 1, 16, 16), **hdf5plugin.Zstd())
    assert open_dataset(ok).cube[0, 0].compute().shape == (16, 16)
    # the same file, but compressed with a filter id no library provides
    raw = ok.read_bytes()
    zstd = hdf5plugin.ZSTD_ID.to_bytes(2, "little")
    assert raw.count(zstd) == 1  # the id in the dataset's filter pipeline
    path = tmp_path / "unknown.h5"
    path.write_bytes(raw.replace(zstd, (32099).to_bytes(2, "little")))
    with h5py.File(path, "r") as f:
        assert f["entry/data"].id.get_create_plist().get_filter(0)[0] == 32099
    with pytest.raises(
        StemFileError, match=r"unknown\.h5: dataset /entry/data.*filter 32099.*not available"
    ):
        open_dataset(path)


@pytest.mark.parametrize(
    ("shape", "match"),
    [((3, 4, 5, 6, 7, 8), r"no numeric 4D"), ((5,), r"no numeric 4D"), ((4, 4), "no numeric 4D")],
)
def test_wrong_dimensionality(tmp_path, shape, match):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(shape, np.uint8)
    with pytest.raises(StemFileError, match=rf"bad\.h5.*{match}"):
        open_dataset(path)
    assert get_reader(str(path)) is None


def test_wrong_dimensionality_of_a_chosen_dataset(tmp_path):
    path = tmp_path / "six.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((2, 2, 2, 2, 2, 2), np.uint8)
    with pytest.raises(StemFileError, match=r"six\.h5: dataset /x has shape \(2, 2, 2, 2, 2, 2\)"):
        open_dataset(path, dataset="x")


def test_non_numeric_and_empty_cubes(tmp_path):
    path = tmp_path / "str.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("c", shape=(2, 2, 2, 2), dtype="c16")
        f.create_dataset("e", shape=(0, 2, 2, 2), dtype="u2")
    with pytest.raises(StemFileError, match=r"str\.h5: dataset /c.*complex128.*expected"):
        open_dataset(path, dataset="c")
    with pytest.raises(StemFileError, match=r"str\.h5.*/e.*empty"):
        open_dataset(path, dataset="e")


def test_scan_shape_not_dividing_frame_count(tmp_path):
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = np.zeros((10, 4, 6), np.uint16)
    with pytest.raises(
        StemFileError, match=r"stack\.h5 \(/frames\): scan shape \(3, 3\) needs 9 frames.*10 frames"
    ):
        open_dataset(path, scan_shape=(3, 3))
    with pytest.raises(StemFileError, match=r"scan_shape must be 2 .*got 'ab'"):
        open_dataset(path, scan_shape="ab")


def test_missing_external_link_target(tmp_path):
    data = tmp_path / "data.h5"
    _write_cube(data)
    master = tmp_path / "master.h5"
    with h5py.File(master, "w") as f:
        f["cube"] = h5py.ExternalLink("data.h5", "/entry/data")
    assert open_dataset(master, dataset="cube").shape == (4, 4, 16, 16)
    data.unlink()
    with pytest.raises(
        StemFileError, match=r"master\.h5: the link /cube .*data\.h5.*does not exist"
    ):
        open_dataset(master, dataset="cube")


def test_missing_file_directory_and_other_formats(tmp_path):
    with pytest.raises(StemFileError, match=r"nothing\.h5: file not found"):
        open_dataset(tmp_path / "nothing.h5")
    with pytest.raises(StemFileError, match="is a directory"):
        open_dataset(tmp_path)
    (tmp_path / "scan.dm4").write_bytes(b"\x00\x00\x00\x04" + b"\x00" * 100)
    with pytest.raises(StemFileError, match=r"scan\.dm4: Gatan.*convert"):
        open_dataset(tmp_path / "scan.dm4")
    assert get_reader(str(tmp_path / "scan.dm4")) is None


def test_get_reader_never_raises(tmp_path):
    assert get_reader(str(tmp_path / "missing.h5")) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader([]) is None
    assert get_reader(12345) is None  # not even a path
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert get_reader(str(tmp_path / "x.png")) is None
    np.save(tmp_path / "stack.npy", np.zeros((4, 3, 3)))
    assert get_reader(str(tmp_path / "stack.npy")) is None  # needs a scan shape


def test_reader_returns_layers_for_list_of_paths(tmp_path):
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, np.ones((2, 3, 8, 8), np.uint16))
    paths = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    reader = get_reader(paths)
    assert reader is read_stem
    layers = reader(paths)
    assert [kw["name"] for _, kw, _ in layers] == ["a ADF", "b ADF"]


def test_probing_does_not_keep_files_open(tmp_path):
    path = tmp_path / "image.h5"
    with h5py.File(path, "w") as f:
        f["img"] = np.zeros((8, 8))
    assert get_reader(str(path)) is None
    with h5py.File(path, "a") as f:  # fails if the probe had left the file open
        f["more"] = 1


def test_unreadable_file_is_a_clear_error_everywhere(tmp_path, monkeypatch):
    import os

    path = tmp_path / "scan.h5"
    _write_cube(path)
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(path) else real(p, mode)
    )
    with pytest.raises(StemFileError, match=r"scan\.h5: permission denied"):
        open_dataset(path)
    reader = get_reader(str(path))  # napari: a reader that says why, not "no reader"
    assert reader is not None
    with pytest.raises(StemFileError, match="permission denied"):
        reader(str(path))


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"MQ1,000001,00000,01,0008,0008,U16,   1x1,01,12,", "too few fields"),
        (b"MQ1,0!0001,00384,01,0008,0008,U16,   1x1,01,12,", "a number field is not one"),
    ],
)
def test_damaged_merlin_frame_header(tmp_path, head, why):
    path = tmp_path / "bad.mib"
    frame = np.zeros((8, 8), ">u2").tobytes()
    path.write_bytes((head.ljust(384, b"\x00") + frame) * 4)
    match = rf"bad\.mib.*unreadable Merlin frame header: {why}"
    with pytest.raises(StemFileError, match=match) as e:
        open_dataset(path, scan_shape=(2, 2))
    assert "expected 'MQ1,sequence,header size" in str(e.value)
    assert "list index" not in str(e.value)
