"""A seeded corpus of malformed, truncated, bit-flipped, mistyped and extreme files.

``build_corpus(folder, seed)`` writes small files of every format the readers
know (EMD 1.0, generic HDF5, Arina master + data files, Merlin ``.mib`` +
``.hdr``, ``.npy``) and results files, each valid one followed by broken
variants of it, and returns one :class:`Case` per file to open. A case says
what is expected: ``"ok"`` (valid data: it must open and read the values of
``expect_data``), ``"error"`` (it must be refused with a StemFileError) or
``"any"`` (bit flips: either, but never anything else).

The same seed gives the same files.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from conftest import make_result

SHAPE = (4, 4, 8, 6)


@dataclass
class Case:
    name: str
    path: Path
    kind: str  # emd, hdf5, arina, merlin, npy, results
    expect: str  # ok, error, any
    expect_data: np.ndarray | None = None
    scan_shape: tuple | None = None
    files: list[Path] = field(default_factory=list)


def cube(rng, shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    return rng.integers(1, 200, shape).astype(dtype)


# ---------------------------------------------------------------- writers


def write_emd(path, data, cal=None, dims=True, data_kwargs=None):
    with h5py.File(path, "w") as f:
        f.attrs["emd_group_type"] = "file"
        f.attrs["version_major"] = 1
        root = f.create_group("root")
        root.attrs["emd_group_type"] = "root"
        arr = root.create_group("datacube")
        arr.attrs["emd_group_type"] = "array"
        arr.attrs["python_class"] = "DataCube"
        arr.create_dataset("data", data=data, **(data_kwargs or {}))
        if dims:
            for i in range(data.ndim):
                d = arr.create_dataset(f"dim{i}", data=np.array([0.0, 0.5]))
                d.attrs["units"] = "nm" if i < data.ndim - 2 else "A^-1"
        calg = root.create_group("metadatabundle/calibration")
        for k, v in (cal or {"R_pixel_size": 0.5, "R_pixel_units": "nm"}).items():
            calg[k] = v


def write_hdf5(path, data, attrs=None, name="entry/data", **kwargs):
    with h5py.File(path, "w") as f:
        d = f.create_dataset(name, data=data, **kwargs)
        for k, v in (attrs or {}).items():
            d.attrs[k] = v


def write_arina(folder, stem, frames, link_target=None, n_files=2):
    master = folder / f"{stem}_master.h5"
    parts = np.array_split(frames, n_files)
    with h5py.File(master, "w") as f:
        spec = f.create_group("entry/instrument/detector/detectorSpecific")
        spec["nimages"] = len(frames)
        spec["flatfield"] = np.ones(frames.shape[1:], np.float32)
        for i, part in enumerate(parts, 1):
            name = f"{stem}_data_{i:06d}.h5"
            with h5py.File(folder / name, "w") as df:
                df.create_dataset("entry/data/data", data=part, chunks=(1, *frames.shape[1:]))
            target = link_target if (link_target is not None and i == 1) else name
            f[f"entry/data/data_{i:06d}"] = h5py.ExternalLink(str(target), "/entry/data/data")
    return master


def mib_header(seq, hsize, w, h, ptype="U16", depth=12, nchips=1) -> bytes:
    fields = (
        f"MQ1,{seq:06d},{hsize:05d},{nchips:02d},{w:04d},{h:04d},{ptype},   1x1,01,"
        f"2021-05-07 18:51:10.905800,0.100000,0,0,0,3RX,068,511,000,MQ1A,{depth},"
    ).encode()
    return fields + b"\x00" * (hsize - len(fields))


def write_mib(path, frames, ptype="U16", depth=12, hsize=384, hdr=None, header=None):
    _, h, w = frames.shape
    with open(path, "wb") as fh:
        for i, fr in enumerate(frames):
            fh.write(header or mib_header(i + 1, hsize, w, h, ptype, depth))
            fh.write(fr.astype(f">u{int(ptype[1:]) // 8}").tobytes())
    if hdr is not None:
        lines = ["HDR,\t"] + [f"{k}:\t{v}" for k, v in hdr.items()] + ["End\t"]
        Path(path).with_suffix(".hdr").write_text("\r\n".join(lines))


def npy_bytes(shape, descr, fortran=False, version=(1, 0), extra="") -> bytes:
    header = (
        f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, {extra}}}"
    )
    header = header.encode("latin1" if version != (3, 0) else "utf8")
    lenfmt, pre = ("<H", 10) if version == (1, 0) else ("<I", 12)
    pad = (-(pre + len(header) + 1)) % 64
    header = header + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(lenfmt, len(header)) + header


def write_results(path, shape=(4, 4), seed=0, ts=False):
    from napari_stemcluster.io import write_results as wr

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (2, *shape) if ts else shape)
    wr(path, make_result(labels, seed=seed), source="scan.h5", calibration={"r_pixel_size": 2})


def truncations(raw: bytes, rng, n: int) -> list[bytes]:
    cuts = sorted({int(x) for x in rng.integers(1, len(raw), n)} | {0, len(raw) // 2})
    return [raw[:c] for c in cuts][:n]


def bit_flips(raw: bytes, rng, n: int, region: int = 4096, flips: int = 4) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(raw)
        for pos in rng.integers(0, min(region, len(raw)), flips):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        out.append(bytes(b))
    return out


# ---------------------------------------------------------------- corpus


def build_corpus(folder: Path, seed: int = 2026) -> list[Case]:
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    cases: list[Case] = []

    def case(name, kind, expect, path=None, data=None, scan_shape=None):
        c = Case(name, path or folder / name, kind, expect, data, scan_shape)
        cases.append(c)
        return c

    def variants(base: Path, kind: str, raws: list[bytes], tag: str, expect="any"):
        for i, raw in enumerate(raws):
            p = folder / f"{base.stem}-{tag}{i}{base.suffix}"
            p.write_bytes(raw)
            case(p.name, kind, expect, p)

    # ------------------------------------------------------------ EMD
    data = cube(rng)
    write_emd(folder / "emd-ok.h5", data)
    case("emd-ok.h5", "emd", "ok", data=data)
    raw = (folder / "emd-ok.h5").read_bytes()
    variants(folder / "emd-ok.h5", "emd", truncations(raw, rng, 5), "cut", "error")
    variants(folder / "emd-ok.h5", "emd", bit_flips(raw, rng, 12), "flip")
    for tag, value in [
        ("strsize", {"R_pixel_size": "half a nm", "R_pixel_units": "nm"}),
        ("complexsize", {"R_pixel_size": 1 + 2j, "Q_pixel_size": np.complex64(1)}),
        ("unitsnum", {"R_pixel_size": 0.5, "R_pixel_units": 7}),
        ("nansize", {"R_pixel_size": np.nan, "Q_pixel_size": -3.0}),
        ("vecsize", {"R_pixel_size": np.arange(3.0)}),
        ("boolsize", {"R_pixel_size": True}),
    ]:
        write_emd(folder / f"emd-cal-{tag}.h5", data, cal=value)
        case(f"emd-cal-{tag}.h5", "emd", "ok", data=data)
    # dim vectors of the wrong type or shape
    for tag in ("strdim", "2ddim", "shortdim", "scalardim", "groupdim"):
        p = folder / f"emd-{tag}.h5"
        write_emd(p, data, dims=False)
        with h5py.File(p, "a") as f:
            g = f["root/datacube"]
            for i in range(4):
                if tag == "strdim":
                    g[f"dim{i}"] = np.array([b"a", b"b"])
                elif tag == "2ddim":
                    g[f"dim{i}"] = np.zeros((2, 2))
                elif tag == "shortdim":
                    g[f"dim{i}"] = np.zeros(1)
                elif tag == "scalardim":
                    g[f"dim{i}"] = 3.0
                else:
                    g.create_group(f"dim{i}")
        case(p.name, "emd", "ok", data=data)
    # calibration stored as a dataset instead of a group
    p = folder / "emd-caldataset.h5"
    write_emd(p, data)
    with h5py.File(p, "a") as f:
        del f["root/metadatabundle/calibration"]
        f["root/metadatabundle/calibration"] = np.arange(4.0)
    case(p.name, "emd", "ok", data=data)
    # a data "dataset" that is a group, string data, 2D data
    for tag, payload in (("strdata", np.array([b"x"] * 4)), ("2d", np.zeros((4, 4)))):
        p = folder / f"emd-{tag}.h5"
        write_emd(p, np.zeros((1, 1, 1, 1)))
        with h5py.File(p, "a") as f:
            del f["root/datacube/data"]
            f["root/datacube/data"] = payload
        case(p.name, "emd", "error", p)

    # ------------------------------------------------------------ generic HDF5
    write_hdf5(folder / "h5-ok.h5", data, chunks=(1, 2, 8, 6), compression="gzip")
    case("h5-ok.h5", "hdf5", "ok", data=data)
    raw = (folder / "h5-ok.h5").read_bytes()
    variants(folder / "h5-ok.h5", "hdf5", truncations(raw, rng, 5), "cut", "error")
    variants(folder / "h5-ok.h5", "hdf5", bit_flips(raw, rng, 12, region=2048), "flip")
    for dt in (">u2", ">f8", "<f2", ">i4", "<i8", "<u8", ">f4", "u1"):
        d = (data % 100).astype(dt)
        tag = dt.replace(">", "be").replace("<", "le")
        write_hdf5(folder / f"h5-dtype-{tag}.h5", d)
        case(f"h5-dtype-{tag}.h5", "hdf5", "ok", data=d)
    extreme = {
        "u8big": (np.full(SHAPE, 2**63 + 5, np.uint64), "<u8"),
        "i8ext": (np.where(data % 2, np.iinfo(np.int64).max, np.iinfo(np.int64).min), "<i8"),
        "f8big": (data.astype(np.float64) * 1e30, ">f8"),
    }
    for tag, (d, dt) in extreme.items():
        d = np.asarray(d).astype(dt)
        write_hdf5(folder / f"h5-extreme-{tag}.h5", d)
        case(f"h5-extreme-{tag}.h5", "hdf5", "ok", data=d)
    for tag, attrs in (
        ("strcal", {"r_pixel_size": "abc", "q_units": 5}),
        ("arrcal", {"r_pixel_size": np.arange(4.0), "t_step": 1j}),
        ("bytescal", {"r_units": b"\xff\xfe", "q_pixel_size": np.float16(0.1)}),
    ):
        write_hdf5(folder / f"h5-{tag}.h5", data, attrs=attrs)
        case(f"h5-{tag}.h5", "hdf5", "ok", data=data)
    # declared shapes that cannot exist
    with h5py.File(folder / "h5-huge-unwritten.h5", "w") as f:
        f.create_dataset(
            "data", shape=(2**20, 2**20, 16, 16), dtype=np.uint16, chunks=(1, 1, 16, 16)
        )
    case("h5-huge-unwritten.h5", "hdf5", "error")
    with h5py.File(folder / "h5-2e40.h5", "w") as f:
        f.create_dataset("data", shape=(2**20, 2**20, 1, 1), dtype=np.uint8, chunks=(1, 1024, 1, 1))
        f["data"][0, :1024] = 1
    case("h5-2e40.h5", "hdf5", "error")
    with h5py.File(folder / "h5-contig-unwritten.h5", "w") as f:
        f.create_dataset("data", shape=(256, 256, 256, 256), dtype=np.uint16)
    case("h5-contig-unwritten.h5", "hdf5", "error")
    # 3D stack with a scan shape; an empty dataset; only 2D images
    write_hdf5(folder / "h5-stack.h5", data.reshape(16, 8, 6), name="frames")
    case("h5-stack.h5", "hdf5", "ok", data=data, scan_shape=(4, 4))
    write_hdf5(folder / "h5-stack-noshape.h5", data.reshape(16, 8, 6), name="frames")
    case("h5-stack-noshape.h5", "hdf5", "error")
    write_hdf5(folder / "h5-empty.h5", np.zeros((0, 4, 8, 6), np.uint16))
    case("h5-empty.h5", "hdf5", "error")
    write_hdf5(folder / "h5-2d.h5", np.zeros((8, 8)))
    case("h5-2d.h5", "hdf5", "error")
    write_hdf5(folder / "h5-strings.h5", np.array([[[[b"ab"]]]]))
    case("h5-strings.h5", "hdf5", "error")
    write_hdf5(folder / "h5-compound.h5", np.zeros((2, 2, 2, 2), [("a", "<u2"), ("b", "<f4")]))
    case("h5-compound.h5", "hdf5", "error")
    # links and virtual datasets
    outside = folder / "outside"
    outside.mkdir()
    inner = folder / "inner"
    inner.mkdir()
    write_hdf5(outside / "cube.h5", data)
    with h5py.File(inner / "h5-extlink-out.h5", "w") as f:
        f["data"] = h5py.ExternalLink("../outside/cube.h5", "/entry/data")
    case("h5-extlink-out", "hdf5", "error", inner / "h5-extlink-out.h5")
    with h5py.File(inner / "h5-extlink-abs.h5", "w") as f:
        f["data"] = h5py.ExternalLink(str(outside / "cube.h5"), "/entry/data")
    case("h5-extlink-abs", "hdf5", "error", inner / "h5-extlink-abs.h5")
    write_hdf5(inner / "beside.h5", data)
    with h5py.File(inner / "h5-extlink-ok.h5", "w") as f:
        f["data"] = h5py.ExternalLink("beside.h5", "/entry/data")
    case("h5-extlink-ok", "hdf5", "ok", inner / "h5-extlink-ok.h5", data=data)
    os.mkfifo(inner / "fifo.h5")
    with h5py.File(inner / "h5-extlink-fifo.h5", "w") as f:
        f["data"] = h5py.ExternalLink("fifo.h5", "/entry/data")
    case("h5-extlink-fifo", "hdf5", "error", inner / "h5-extlink-fifo.h5")
    for tag, src in (("missing", "nothere.h5"), ("outside", "../outside/cube.h5")):
        p = inner / f"h5-vds-{tag}.h5"
        layout = h5py.VirtualLayout(shape=SHAPE, dtype=np.uint16)
        layout[:] = h5py.VirtualSource(src, "entry/data", shape=SHAPE)
        with h5py.File(p, "w") as f:
            f.create_virtual_dataset("data", layout, fillvalue=0)
        case(p.name, "hdf5", "error", p)
    p = inner / "h5-vds-ok.h5"
    layout = h5py.VirtualLayout(shape=SHAPE, dtype=np.uint16)
    layout[:] = h5py.VirtualSource("beside.h5", "entry/data", shape=SHAPE)
    with h5py.File(p, "w") as f:
        f.create_virtual_dataset("data", layout, fillvalue=0)
    case(p.name, "hdf5", "ok", p, data=data)
    with h5py.File(inner / "h5-external-raw.h5", "w") as f:
        f.create_dataset("data", shape=SHAPE, dtype=np.uint16, external=[("/dev/zero", 0, 2**20)])
    case("h5-external-raw", "hdf5", "error", inner / "h5-external-raw.h5")
    os.mkfifo(folder / "fifo-scan.h5")
    case("fifo-scan.h5", "hdf5", "error")
    os.symlink("/dev/zero", folder / "zero.h5")
    case("zero.h5", "hdf5", "error")
    (folder / "empty.h5").write_bytes(b"")
    case("empty.h5", "hdf5", "error")
    (folder / "text.h5").write_text("not hdf5 at all\n" * 10)
    case("text.h5", "hdf5", "error")

    # ------------------------------------------------------------ Arina
    ar = folder / "arina"
    ar.mkdir()
    frames = cube(rng, (16, 8, 6))
    master = write_arina(ar, "ok", frames)
    case("arina-ok", "arina", "ok", master, data=frames.reshape(4, 4, 8, 6))
    raw = master.read_bytes()
    # (the damaged masters still link to the data files of "ok")
    for i, r in enumerate(truncations(raw, rng, 4)):
        (ar / f"cut{i}_master.h5").write_bytes(r)
        case(f"arina-cut{i}", "arina", "error", ar / f"cut{i}_master.h5")
    for i, r in enumerate(bit_flips(raw, rng, 10, region=len(raw))):
        (ar / f"flip{i}_master.h5").write_bytes(r)
        case(f"arina-flip{i}", "arina", "any", ar / f"flip{i}_master.h5")
    # data files damaged
    m = write_arina(ar, "datacut", frames)
    d1 = ar / "datacut_data_000001.h5"
    d1.write_bytes(d1.read_bytes()[:700])
    case("arina-datacut", "arina", "error", m)
    m = write_arina(ar, "datamissing", frames)
    (ar / "datamissing_data_000002.h5").unlink()
    case("arina-datamissing", "arina", "error", m)
    # links leaving the folder, or to a FIFO
    write_hdf5(outside / "far_data.h5", frames, name="entry/data/data")
    m = write_arina(ar, "abslink", frames, link_target=outside / "far_data.h5")
    case("arina-abslink", "arina", "error", m)
    m = write_arina(ar, "uplink", frames, link_target="../outside/far_data.h5")
    case("arina-uplink", "arina", "error", m)
    os.mkfifo(ar / "fifo_data.h5")
    m = write_arina(ar, "fifolink", frames, link_target="fifo_data.h5")
    case("arina-fifolink", "arina", "error", m)
    # frames of different shapes in the two data files
    m = write_arina(ar, "mixed", frames)
    with h5py.File(ar / "mixed_data_000002.h5", "w") as df:
        df.create_dataset("entry/data/data", data=frames[:8, :4])
    case("arina-mixed", "arina", "error", m)
    m = write_arina(ar, "bigendian", frames.astype(">u2"))
    case("arina-bigendian", "arina", "ok", m, data=frames.reshape(4, 4, 8, 6))

    # ------------------------------------------------------------ Merlin
    mb = folder / "merlin"
    mb.mkdir()
    mframes = cube(rng, (16, 8, 8))
    write_mib(mb / "ok.mib", mframes, hdr={"Frames per Trigger (Number)": 4})
    case("merlin-ok", "merlin", "ok", mb / "ok.mib", data=mframes.reshape(4, 4, 8, 8))
    raw = (mb / "ok.mib").read_bytes()
    for i, r in enumerate(truncations(raw, rng, 4)):
        (mb / f"cut{i}.mib").write_bytes(r)
        case(f"merlin-cut{i}", "merlin", "any", mb / f"cut{i}.mib")
    for i, r in enumerate(bit_flips(raw, rng, 10, region=384)):
        (mb / f"flip{i}.mib").write_bytes(r)
        case(f"merlin-flip{i}", "merlin", "any", mb / f"flip{i}.mib")
    for tag, (hs, w, h) in {
        "negw": (384, -8, 8),
        "zeroh": (384, 8, 0),
        "zerohs": (0, 8, 8),
        "hugew": (384, 99999999, 8),
        "neghs": (-5, 8, 8),
    }.items():
        head = f"MQ1,000001,{hs:05d},01,{w:04d},{h:04d},U16,   1x1,01,12,".encode()
        head = head + b"\x00" * (384 - len(head))
        write_mib(mb / f"{tag}.mib", mframes, header=head)
        case(f"merlin-{tag}", "merlin", "error", mb / f"{tag}.mib")
    # flat stacks: a perfect square, and one that needs a scan shape
    write_mib(mb / "flat.mib", mframes[:9])
    case("merlin-flat", "merlin", "ok", mb / "flat.mib", data=mframes[:9].reshape(3, 3, 8, 8))
    write_mib(mb / "flat6.mib", mframes[:6])
    case(
        "merlin-flat6",
        "merlin",
        "ok",
        mb / "flat6.mib",
        data=mframes[:6].reshape(2, 3, 8, 8),
        scan_shape=(2, 3),
    )
    write_mib(mb / "flat6noshape.mib", mframes[:6])
    case("merlin-flat6noshape", "merlin", "error", mb / "flat6noshape.mib")
    # the .hdr: a link to /dev/zero, huge, binary garbage, nonsense values
    write_mib(mb / "hdrzero.mib", mframes)
    os.symlink("/dev/zero", mb / "hdrzero.hdr")
    case("merlin-hdrzero", "merlin", "error", mb / "hdrzero.mib")
    write_mib(mb / "hdrbig.mib", mframes)
    with open(mb / "hdrbig.hdr", "wb") as fh:
        fh.truncate(3 * 2**20)
    case("merlin-hdrbig", "merlin", "error", mb / "hdrbig.mib")
    write_mib(mb / "hdrjunk.mib", mframes)
    (mb / "hdrjunk.hdr").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    case("merlin-hdrjunk", "merlin", "ok", mb / "hdrjunk.mib", data=mframes.reshape(4, 4, 8, 8))
    write_mib(
        mb / "hdrvals.mib",
        mframes,
        hdr={"Frames per Trigger (Number)": "-3", "Counter Depth (number)": "9" * 5000},
    )
    case("merlin-hdrvals", "merlin", "ok", mb / "hdrvals.mib", data=mframes.reshape(4, 4, 8, 8))
    write_mib(mb / "hdronly.mib", mframes)
    (mb / "hdronly.mib").unlink()
    (mb / "hdronly.hdr").write_text("HDR,\t\r\nEnd\t")
    case("merlin-hdronly", "merlin", "error", mb / "hdronly.hdr")
    (mb / "magic.mib").write_bytes(b"MQ1,")
    case("merlin-magic", "merlin", "error", mb / "magic.mib")

    # ------------------------------------------------------------ npy
    nb = folder / "npy"
    nb.mkdir()
    np.save(nb / "ok.npy", data)
    case("npy-ok", "npy", "ok", nb / "ok.npy", data=data)
    raw = (nb / "ok.npy").read_bytes()
    for i, r in enumerate(truncations(raw, rng, 4)):
        (nb / f"cut{i}.npy").write_bytes(r)
        case(f"npy-cut{i}", "npy", "error", nb / f"cut{i}.npy")
    for i, r in enumerate(bit_flips(raw, rng, 10, region=128, flips=2)):
        (nb / f"flip{i}.npy").write_bytes(r)
        case(f"npy-flip{i}", "npy", "any", nb / f"flip{i}.npy")
    payload = data.tobytes()
    for tag, head, body, expect, ref in [
        ("v2", npy_bytes(SHAPE, "<u2", version=(2, 0)), payload, "ok", data),
        ("v3", npy_bytes(SHAPE, "<u2", version=(3, 0)), payload, "ok", data),
        ("be", npy_bytes(SHAPE, ">u2"), data.astype(">u2").tobytes(), "ok", data),
        (
            "f16",
            npy_bytes(SHAPE, "<f2"),
            data.astype("<f2").tobytes(),
            "ok",
            data.astype(np.float16),
        ),
        (
            "u64",
            npy_bytes(SHAPE, "<u8"),
            (data.astype(np.uint64) + 2**63).tobytes(),
            "ok",
            data.astype(np.uint64) + 2**63,
        ),
        (
            "fortran",
            npy_bytes(SHAPE, "<u2", fortran=True),
            np.asfortranarray(data).tobytes(order="F"),
            "ok",
            data,
        ),
        ("negdim", npy_bytes((4, -4, 8, 6), "<u2"), payload, "error", None),
        ("hugedim", npy_bytes((2**40, 1, 1, 1), "<u1"), payload, "error", None),
        ("overflow", npy_bytes((2**62, 2**62, 8, 6), "<u2"), payload, "error", None),
        ("object", npy_bytes(SHAPE, "|O"), payload, "error", None),
        ("floatdim", npy_bytes((4.0, 4, 8, 6), "<u2"), payload, "error", None),
        ("strdescr", npy_bytes(SHAPE, "<U3"), payload, "error", None),
        ("baddescr", npy_bytes(SHAPE, "nonsense"), payload, "error", None),
        ("v9", npy_bytes(SHAPE, "<u2", version=(9, 0)), payload, "error", None),
        (
            "code",
            b"\x93NUMPY\x01\x00\x40\x00" + b"__import__('os').system('false')".ljust(63) + b"\n",
            payload,
            "error",
            None,
        ),
        ("hugehdr", b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31), b"", "error", None),
        ("short", npy_bytes(SHAPE, "<u2"), payload[:100], "error", None),
        ("stack", npy_bytes((16, 8, 6), "<u2"), payload, "ok", data),
        ("empty", npy_bytes((0, 4, 8, 6), "<u2"), b"", "error", None),
        ("1d", npy_bytes((5,), "<u2"), payload[:10], "error", None),
    ]:
        p = nb / f"{tag}.npy"
        p.write_bytes(head + body)
        case(
            f"npy-{tag}", "npy", expect, p, data=ref, scan_shape=(4, 4) if tag == "stack" else None
        )

    # ------------------------------------------------------------ results
    rb = folder / "results"
    rb.mkdir()
    write_results(rb / "ok.h5")
    case("results-ok", "results", "ok", rb / "ok.h5")
    write_results(rb / "ok5d.h5", ts=True)
    case("results-ok5d", "results", "ok", rb / "ok5d.h5")
    raw = (rb / "ok.h5").read_bytes()
    for i, r in enumerate(truncations(raw, rng, 3)):
        (rb / f"cut{i}.h5").write_bytes(r)
        case(f"results-cut{i}", "results", "error", rb / f"cut{i}.h5")
    for i, r in enumerate(bit_flips(raw, rng, 8, region=len(raw) // 2)):
        (rb / f"flip{i}.h5").write_bytes(r)
        case(f"results-flip{i}", "results", "any", rb / f"flip{i}.h5")

    def edited(tag, edit, expect="error"):
        p = rb / f"{tag}.h5"
        write_results(p)
        with h5py.File(p, "a") as f:
            edit(f)
        case(f"results-{tag}", "results", expect, p)

    def replace(name, value):
        def edit(f):
            del f[name]
            f[name] = value

        return edit

    edited("badparams", lambda f: f.attrs.__setitem__("params", "{not json"))
    edited("listparams", lambda f: f.attrs.__setitem__("params", json.dumps([1, 2])))
    edited("badcal", lambda f: f.attrs.__setitem__("calibration", "[[["))
    edited(
        "calstr", lambda f: f.attrs.__setitem__("calibration", json.dumps({"r_pixel_size": "big"}))
    )
    edited("strversion", lambda f: f.attrs.__setitem__("stemcluster_file_version", "one"))
    edited("newversion", lambda f: f.attrs.__setitem__("stemcluster_file_version", 99))
    edited("intparams", lambda f: f.attrs.__setitem__("params", 5))
    edited("emptyoffsets", replace("clusters/offsets", np.zeros(0, np.int64)))
    edited("badoffsets", replace("clusters/offsets", np.array([0, 99], np.int64)))
    edited("decoffsets", replace("clusters/offsets", np.array([2, 1], np.int64)))

    def clusters_dataset(f):
        del f["clusters"]
        f["clusters"] = np.zeros(3)

    edited("clustersds", clusters_dataset)
    edited("strlabels", replace("labels", np.full((4, 4), b"a")))
    edited("floatlabels", replace("labels", np.zeros((4, 4), np.float32)))
    edited("outrange", replace("labels", np.full((4, 4), 1000, np.int32)))
    edited("negative", replace("labels", np.full((4, 4), -2, np.int32)))
    edited("shapemismatch", replace("mean_similarity", np.zeros((3, 3), np.float32)))
    edited("simshape", replace("similarity", np.zeros((4, 4, 7), np.float32)))
    edited("sizeshort", replace("clusters/size", np.zeros(1, np.int64)))
    edited("seedout", replace("clusters/seed", np.full((3, 2), 50, np.int64)))
    edited("meansshape", replace("clusters/cluster_means", np.zeros((1, 2, 6, 5), np.float32)))
    edited("nolabels", lambda f: f.__delitem__("labels"))

    def huge_labels(f):
        del f["labels"]
        f.create_dataset("labels", shape=(30000, 30000), dtype=np.int32, chunks=(100, 100))

    edited("hugelabels", huge_labels)

    def ext_labels(f):
        del f["labels"]
        f["labels"] = h5py.ExternalLink(str(outside / "cube.h5"), "/entry/data")

    edited("extlabels", ext_labels)
    return cases
