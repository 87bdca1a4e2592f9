"""Readers on files made in tmp_path: generic HDF5, .npy, Merlin encodings."""

from __future__ import annotations

import logging
import pickle

import h5py
import numpy as np
import pytest

from napari_stemcluster.io import StemFileError, detect_format, open_dataset
from napari_stemcluster.io._lazy import choose_chunks

RNG = np.random.default_rng(7)


def _cube(shape, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, shape).astype(dtype)


# ------------------------------------------------------------------ generic HDF5


def test_hdf5_5d_non_square_values_and_chunks(tmp_path):
    data = _cube((3, 4, 5, 6, 10))
    path = tmp_path / "series.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("entry/cube", data=data, chunks=(1, 2, 3, 6, 10))
        d.attrs["r_pixel_size"] = 0.5
        d.attrs["r_units"] = "nm"
        d.attrs["t_step"] = 2.0
        d.attrs["t_units"] = "s"
    ds = open_dataset(path)
    assert ds.format == "hdf5" and ds.dataset == "/entry/cube"
    assert ds.is_time_series and ds.scan_shape == (3, 4, 5)
    assert ds.detector_shape == (6, 10)
    assert ds.source.n_reads == 0
    np.testing.assert_array_equal(ds.cube.compute(), data)
    # one time step per chunk, whole patterns, multiples of the file chunks
    chunks = ds.cube.chunks
    assert set(chunks[0]) == {1}
    assert chunks[3] == (6,) and chunks[4] == (10,)
    assert all(c % 2 == 0 for c in chunks[1][:-1]) and all(c % 3 == 0 for c in chunks[2][:-1])
    assert ds.calibration.r_pixel_size == 0.5 and ds.calibration.t_step == 2.0
    assert ds.calibration.real_space_scale(3) == ((2.0, 0.5, 0.5), ("s", "nm", "nm"))
    np.testing.assert_array_equal(ds.read_pattern((2, 3, 4)), data[2, 3, 4])
    # a single pattern through dask reads one pattern, not its whole chunk
    before = ds.source.n_reads
    np.testing.assert_array_equal(ds.cube[1, 2, 3].compute(), data[1, 2, 3])
    assert ds.source.n_reads == before + 1


def test_hdf5_several_cubes_take_largest_and_say_which(tmp_path, caplog):
    path = tmp_path / "two.h5"
    small, large = _cube((2, 2, 4, 4)), _cube((3, 3, 4, 4), seed=1)
    with h5py.File(path, "w") as f:
        f["a/small"] = small
        f["b/large"] = large
        f["image"] = np.zeros((8, 8))
    with caplog.at_level(logging.INFO, logger="napari_stemcluster"):
        ds = open_dataset(path)
    assert ds.dataset == "/b/large"
    assert any("/b/large" in n and "/a/small" in n for n in ds.notes)
    assert "/b/large" in caplog.text
    np.testing.assert_array_equal(ds.cube.compute(), large)
    np.testing.assert_array_equal(open_dataset(path, dataset="a/small").cube.compute(), small)
    with pytest.raises(StemFileError, match=r"two\.h5.*/image.*\(8, 8\).*expected"):
        open_dataset(path, dataset="/image")


def test_hdf5_3d_stack_needs_scan_shape(tmp_path):
    frames = _cube((12, 5, 7))
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = frames
    assert detect_format(path) == "hdf5-stack"
    with pytest.raises(StemFileError, match=r"stack\.h5.*/frames.*12 frames.*scan_shape"):
        open_dataset(path)
    ds = open_dataset(path, scan_shape=(3, 4))
    np.testing.assert_array_equal(ds.cube.compute(), frames.reshape(3, 4, 5, 7))
    ds = open_dataset(path, scan_shape=(2, 3))  # 12 frames = 2 scans of 2x3
    assert ds.shape == (2, 2, 3, 5, 7)
    assert any("time series" in n for n in ds.notes)
    np.testing.assert_array_equal(ds.cube.compute(), frames.reshape(2, 2, 3, 5, 7))
    with pytest.raises(StemFileError, match=r"stack\.h5 \(/frames\).*\(5, 5\).*12 frames"):
        open_dataset(path, scan_shape=(5, 5))
    with pytest.raises(StemFileError, match=r"\(2, 2, 2\).*does not match"):
        open_dataset(path, scan_shape=(2, 2, 2))
    with pytest.raises(StemFileError, match="positive integers"):
        open_dataset(path, scan_shape=(0, 12))


def test_hdf5_2d_images_are_not_ours(tmp_path):
    path = tmp_path / "image.h5"
    with h5py.File(path, "w") as f:
        f["img"] = np.zeros((64, 64), np.float32)
        f["labels"] = np.array(["a", "b"], dtype=h5py.string_dtype())
    assert detect_format(path) is None
    with pytest.raises(StemFileError, match=r"image\.h5.*no numeric 4D.*5D"):
        open_dataset(path)


def test_hdf5_scan_shape_override_of_4d(tmp_path):
    data = _cube((4, 6, 3, 5))
    path = tmp_path / "cube.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=data, chunks=(1, 6, 3, 5))
    ds = open_dataset(path, scan_shape=(8, 3))
    np.testing.assert_array_equal(ds.cube.compute(), data.reshape(8, 3, 3, 5))
    # a selection crossing rows of the file reads only the frames asked for
    np.testing.assert_array_equal(
        ds.cube[1:4, 1:3, 2].compute(), data.reshape(8, 3, 3, 5)[1:4, 1:3, 2]
    )


def test_hdf5_uint8_and_float_cubes_open(tmp_path):
    for dtype in (np.uint8, np.uint32, np.float32, np.float64, np.int16):
        data = _cube((2, 3, 4, 4), dtype=dtype)
        path = tmp_path / f"c_{np.dtype(dtype).name}.h5"
        with h5py.File(path, "w") as f:
            f["c"] = data
        ds = open_dataset(path)
        assert ds.dtype == dtype
        np.testing.assert_array_equal(ds.cube.compute(), data)


def test_large_file_opens_without_reading_and_reads_only_the_pattern_asked_for(tmp_path):
    # 32 GiB of logical data; only one pattern is ever written. What makes
    # opening and hovering fast is what is read, so that is what is checked
    # (speed itself is measured in benchmarks/interactive.py).
    path = tmp_path / "big.h5"
    pattern = _cube((256, 256))
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "data", shape=(512, 512, 256, 256), dtype=np.uint16, chunks=(1, 1, 256, 256)
        )
        d[100, 200] = pattern
    ds = open_dataset(path)
    assert ds.nbytes == 32 * 2**30
    assert ds.source.n_reads == 0  # opening reads no frame
    read_bytes = []
    get = ds.source._get

    def counting_get(key):
        out = get(key)
        read_bytes.append(out.nbytes)
        return out

    ds.source._get = counting_get
    np.testing.assert_array_equal(ds.read_pattern((100, 200)), pattern)
    assert read_bytes == [pattern.nbytes]
    # through dask too, only the one pattern is read (one task of the graph)
    np.testing.assert_array_equal(ds.cube[100, 200].compute(), pattern)
    assert read_bytes == [pattern.nbytes] * 2


# -------------------------------------------------------------------------- npy


def test_npy_4d_5d_and_fortran(tmp_path):
    data = _cube((3, 4, 5, 7))
    np.save(tmp_path / "c.npy", data)
    ds = open_dataset(tmp_path / "c.npy")
    assert ds.format == "npy" and ds.source.n_reads == 0
    np.testing.assert_array_equal(ds.cube.compute(), data)
    np.save(tmp_path / "f.npy", np.asfortranarray(data))
    np.testing.assert_array_equal(open_dataset(tmp_path / "f.npy").cube.compute(), data)
    data5 = _cube((2, 2, 3, 4, 4), dtype=np.float32)
    np.save(tmp_path / "t.npy", data5)
    ds = open_dataset(tmp_path / "t.npy")
    assert ds.is_time_series
    np.testing.assert_array_equal(ds.cube.compute(), data5)


def test_npy_stack_needs_scan_shape(tmp_path):
    frames = _cube((6, 4, 4))
    np.save(tmp_path / "s.npy", frames)
    assert detect_format(tmp_path / "s.npy") == "npy-stack"
    with pytest.raises(StemFileError, match=r"s\.npy.*6 frames.*scan_shape"):
        open_dataset(tmp_path / "s.npy")
    ds = open_dataset(tmp_path / "s.npy", scan_shape=(2, 3))
    np.testing.assert_array_equal(ds.cube.compute(), frames.reshape(2, 3, 4, 4))


def test_npy_object_arrays_are_never_unpickled(tmp_path, monkeypatch):
    arr = np.empty((2, 2, 2, 2), dtype=object)
    np.save(tmp_path / "o.npy", arr, allow_pickle=True)
    import pickle as pickle_module

    def forbidden(*a, **k):
        raise AssertionError("pickle must not be used")

    monkeypatch.setattr(pickle_module, "load", forbidden)
    monkeypatch.setattr(pickle_module, "loads", forbidden)
    assert detect_format(tmp_path / "o.npy") is None
    with pytest.raises(StemFileError, match=r"o\.npy.*object.*pickle"):
        open_dataset(tmp_path / "o.npy")


def test_npy_wrong_dimensionality_and_truncated(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((5, 5)))
    with pytest.raises(StemFileError, match=r"img\.npy.*\(5, 5\).*expected 4D"):
        open_dataset(tmp_path / "img.npy")
    np.save(tmp_path / "c.npy", _cube((4, 4, 8, 8)))
    raw = (tmp_path / "c.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StemFileError, match=r"cut\.npy"):
        open_dataset(tmp_path / "cut.npy")


# ----------------------------------------------------------------------- Merlin


def _header(seq, hsize, w, h, ptype, depth, nchips=1):
    fields = (
        f"MQ1,{seq:06d},{hsize:05d},{nchips:02d},{w:04d},{h:04d},{ptype},   1x1,01,"
        "2021-05-07 18:51:10.905800,0.100000,0,0,0,4.000000E+1,5.110000E+2,"
        "0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,"
        f"3RX,068,511,000,MQ1A,2021-05-07T16:51:10.905800928Z,100000000ns,{depth},"
    ).encode()
    return fields + b"\x00" * (hsize - len(fields))


def _pack_words(pixels: np.ndarray, bits: int) -> bytes:
    """Raw Merlin packing: 64-bit big-endian words, pixel i at bits i*b.."""
    per = 64 // bits
    out = bytearray()
    flat = [int(v) for v in pixels.ravel()]
    for g in range(0, len(flat), per):
        word = 0
        for i, v in enumerate(flat[g : g + per]):
            word |= v << (bits * i)
        out += word.to_bytes(8, "big")
    return bytes(out)


def _encode(frame: np.ndarray, ptype: str, depth: int) -> bytes:
    if ptype.startswith("U"):
        return frame.astype(f">u{int(ptype[1:]) // 8}").tobytes()
    if depth == 24:
        return _pack_words(frame >> 12, 16) + _pack_words(frame & 0xFFF, 16)
    return _pack_words(frame, {1: 1, 6: 8, 12: 16}[depth])


def _write_mib(path, frames, ptype, depth, hsize=384, header_width=None, hdr=None):
    _, h, w = frames.shape
    with open(path, "wb") as fh:
        for i, fr in enumerate(frames):
            fh.write(_header(i + 1, hsize, header_width or w, h, ptype, depth))
            fh.write(_encode(fr, ptype, depth))
    if hdr is not None:
        lines = ["HDR,\t"] + [f"{k}:\t{v}" for k, v in hdr.items()] + ["End\t"]
        path.with_suffix(".hdr").write_text("\r\n".join(lines))


@pytest.mark.parametrize(
    ("ptype", "depth", "vmax", "dtype"),
    [
        ("U08", 6, 63, np.uint8),
        ("U16", 12, 4095, np.uint16),
        ("U32", 24, 2**24 - 1, np.uint32),
        ("R64", 1, 1, np.uint8),
        ("R64", 6, 63, np.uint8),
        ("R64", 12, 4095, np.uint16),
        ("R64", 24, 2**24 - 1, np.uint32),
    ],
)
def test_merlin_encodings_non_square(tmp_path, ptype, depth, vmax, dtype):
    frames = RNG.integers(0, vmax + 1, (6, 8, 16)).astype(np.uint32)  # 8 rows x 16 cols
    path = tmp_path / "scan.mib"
    _write_mib(path, frames, ptype, depth)
    ds = open_dataset(path, scan_shape=(3, 2))
    assert ds.shape == (3, 2, 8, 16)
    assert ds.dtype == dtype
    assert ds.source.n_reads == 0
    np.testing.assert_array_equal(ds.cube.compute(), frames.reshape(3, 2, 8, 16))
    np.testing.assert_array_equal(ds.read_pattern((2, 1)), frames[5])
    np.testing.assert_array_equal(ds.cube[1, :, 2:5, 3].compute(), frames[2:4, 2:5, 3])


def test_merlin_24bit_raw_with_double_width_header(tmp_path):
    frames = RNG.integers(0, 2**24, (4, 8, 8)).astype(np.uint32)
    path = tmp_path / "r24.mib"
    _write_mib(path, frames, "R64", 24, header_width=16)
    ds = open_dataset(path, scan_shape=(2, 2))
    assert ds.detector_shape == (8, 8)
    np.testing.assert_array_equal(ds.cube.compute(), frames.reshape(2, 2, 8, 8))


def test_merlin_scan_shape_from_hdr_and_quad_header(tmp_path):
    frames = RNG.integers(0, 4096, (12, 4, 6)).astype(np.uint32)
    path = tmp_path / "line.mib"
    hdr = {"Frames in Acquisition (Number)": 12, "Frames per Trigger (Number)": 4}
    _write_mib(path, frames, "U16", 12, hsize=768, hdr=hdr)
    ds = open_dataset(path)
    assert ds.scan_shape == (3, 4)
    assert ds.metadata["header_size"] == 768
    np.testing.assert_array_equal(ds.cube.compute(), frames.reshape(3, 4, 4, 6))
    np.testing.assert_array_equal(
        open_dataset(path.with_suffix(".hdr")).cube.compute(), frames.reshape(3, 4, 4, 6)
    )


def test_merlin_square_default_truncated_and_corrupt(tmp_path):
    frames = RNG.integers(0, 64, (9, 8, 8)).astype(np.uint32)
    path = tmp_path / "sq.mib"
    _write_mib(path, frames, "U08", 6)
    assert open_dataset(path).scan_shape == (3, 3)
    raw = path.read_bytes()
    stride = len(raw) // 9
    (tmp_path / "cut.mib").write_bytes(raw[: 8 * stride + 100])  # interrupted
    ds = open_dataset(tmp_path / "cut.mib", scan_shape=(2, 4))
    assert any("incomplete frame" in n for n in ds.notes)
    np.testing.assert_array_equal(ds.cube.compute(), frames[:8].reshape(2, 4, 8, 8))
    bad = bytearray(raw)
    bad[5 * stride : 5 * stride + 4] = b"XXXX"
    (tmp_path / "bad.mib").write_bytes(bytes(bad[: 6 * stride]))  # last frame corrupt
    with pytest.raises(StemFileError, match=r"bad\.mib.*frame 5.*header"):
        open_dataset(tmp_path / "bad.mib", scan_shape=(2, 3))
    (tmp_path / "short.mib").write_bytes(raw[:200])
    with pytest.raises(StemFileError, match=r"short\.mib.*truncated"):
        open_dataset(tmp_path / "short.mib")


def test_merlin_raw_multichip_is_refused(tmp_path):
    path = tmp_path / "quad.mib"
    with open(path, "wb") as fh:
        fh.write(_header(1, 768, 512, 512, "R64", 12, nchips=4))
        fh.write(b"\x00" * 512 * 512 * 2)
    with pytest.raises(StemFileError, match=r"quad\.mib.*4-chip.*not supported"):
        open_dataset(path, scan_shape=(1, 1))


def test_merlin_cube_is_picklable(tmp_path):
    frames = RNG.integers(0, 4096, (4, 8, 8)).astype(np.uint32)
    _write_mib(tmp_path / "p.mib", frames, "R64", 12)
    ds = open_dataset(tmp_path / "p.mib", scan_shape=(2, 2))
    again = pickle.loads(pickle.dumps(ds.cube))
    np.testing.assert_array_equal(again.compute(), frames.reshape(2, 2, 8, 8))


# ----------------------------------------------------------------------- chunks


def test_choose_chunks_rules():
    # whole patterns, time axis kept at 1, multiples of the file chunks
    assert choose_chunks((5, 10, 12, 64, 32), 2) == (1, 10, 12, 64, 32)
    c = choose_chunks((100, 100, 256, 256), 4, file_chunks=(3, 7, 256, 256))
    assert c[2:] == (256, 256)
    assert c[1] % 7 == 0 and c[0] % 3 == 0
    assert c[0] * c[1] * 256 * 256 * 4 <= 2 * 32 * 2**20
    # a file chunk bigger than the target is kept whole
    assert choose_chunks((64, 64, 512, 512), 4, file_chunks=(8, 8, 512, 512)) == (
        8,
        8,
        512,
        512,
    )
    assert choose_chunks((1, 7, 3, 3), 1) == (1, 7, 3, 3)


# ------------------------------------------------------------ Arina / EIGER


def _write_eiger(tmp_path, frames, per_file, absolute_links=False):
    import hdf5plugin

    names = []
    for i, start in enumerate(range(0, len(frames), per_file), start=1):
        name = f"run_data_{i:06d}.h5"
        with h5py.File(tmp_path / name, "w") as f:
            d = f.create_dataset(
                "entry/data/data",
                data=frames[start : start + per_file],
                chunks=(1, *frames.shape[1:]),
                **hdf5plugin.Bitshuffle(cname="lz4"),
            )
            d.attrs["image_nr_low"] = start + 1
        names.append(name)
    master = tmp_path / "run_master.h5"
    with h5py.File(master, "w") as f:
        for i, name in enumerate(names, start=1):
            target = str(tmp_path / name) if absolute_links else name
            f[f"entry/data/data_{i:06d}"] = h5py.ExternalLink(target, "/entry/data/data")
        spec = f.create_group("entry/instrument/detector/detectorSpecific")
        spec["nimages"] = np.uint64(len(frames))
        spec["flatfield"] = np.ones(frames.shape[1:], np.float32)
        spec["pixel_mask"] = np.zeros(frames.shape[1:], np.uint32)
        f["entry/instrument/detector/frame_time"] = 1e-4
    return master, names


def test_eiger_several_data_files_non_square(tmp_path):
    frames = RNG.integers(0, 2**20, (12, 6, 10)).astype(np.uint32)
    master, names = _write_eiger(tmp_path, frames, per_file=5)
    assert len(names) == 3 and detect_format(master) == "arina"
    with pytest.raises(StemFileError, match=r"run_master\.h5.*12 frames.*not a perfect square"):
        open_dataset(master)
    ds = open_dataset(master, scan_shape=(3, 4))
    assert ds.dataset == "/entry/data/data_*"
    assert ds.source.n_reads == 0
    np.testing.assert_array_equal(ds.cube.compute(), frames.reshape(3, 4, 6, 10))
    # selections crossing data files
    np.testing.assert_array_equal(ds.cube[1, 0:3].compute(), frames[4:7])
    np.testing.assert_array_equal(ds.read_pattern((2, 1)), frames[9])
    assert ds.metadata["frame_time"] == 1e-4 and ds.flatfield.shape == (6, 10)
    (tmp_path / names[1]).unlink()
    with pytest.raises(StemFileError, match=r"data_000002 links to the data file run_data_000002"):
        open_dataset(master, scan_shape=(3, 4))


def test_eiger_moved_with_absolute_links(tmp_path):
    frames = RNG.integers(0, 100, (4, 4, 4)).astype(np.uint32)
    src = tmp_path / "a"
    src.mkdir()
    master, _ = _write_eiger(src, frames, per_file=4, absolute_links=True)
    moved = tmp_path / "b"
    src.rename(moved)
    ds = open_dataset(moved / master.name)
    np.testing.assert_array_equal(ds.cube.compute(), frames.reshape(2, 2, 4, 4))


def test_lazy_arrays_support_what_dask_and_napari_pass(tmp_path):
    data = _cube((4, 5, 6, 7))
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f["c"] = data
    np.save(tmp_path / "c.npy", data)
    for ds in (
        open_dataset(path),
        open_dataset(tmp_path / "c.npy"),
        open_dataset(path, scan_shape=(5, 4)),
    ):
        ref = np.asarray(ds.cube.compute())
        src = ds.source
        for key in (
            (1, 2),
            (slice(None, None, -1), 0),
            (Ellipsis, 3),
            ([3, 0, 2], slice(1, 4)),
            (np.arange(ref.shape[0]) % 2 == 0, 1, slice(0, 6, 2)),
            (slice(0, 0),),
            (-1, -2, -3),
        ):
            np.testing.assert_array_equal(src[key], ref[key], err_msg=str(key))
        np.testing.assert_array_equal(ds.cube[::-1, [3, 0]].compute(), ref[::-1, [3, 0]])
        with pytest.raises(IndexError):
            src[9]
