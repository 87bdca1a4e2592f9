"""Quantum Detectors Merlin (Medipix3) ``.mib`` files, with their ``.hdr``.

A ``.mib`` file is a sequence of frames, each an ASCII header followed by
the pixel data. The comma-separated header starts ``MQ1, sequence number,
header size, number of chips, width, height, pixel type, chip layout, ...``
and, on current firmware, ends with the counter depth (1, 6, 12 or 24 bit).

Pixel types: ``U08``/``U16``/``U32``/``U64`` hold big-endian unsigned
integers, one per pixel. ``R64`` ("raw" mode) packs the counters of one chip
into 64-bit words: 1-bit counters are 64 pixels per word, 6-bit counters one
byte per pixel and 12-bit counters two bytes per pixel, in both cases with
the pixels of each 64-bit word in reverse order; 24-bit counters are two
12-bit frames, the first holding the 12 most significant bits. Raw frames
are decoded per block of frames on read.

The scan shape comes from the user or, when the acquisition was triggered
once per scan line, from the ``.hdr`` (``Frames per Trigger`` is the line
length); a square scan is assumed when the frame count is a perfect square.
Frames are returned as stored (row-major, first row first), without flips.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._guard import MAX_HEADER_BYTES, check_regular_file, read_head
from ._lazy import FrameCube, LazyArray, _file_key, _finish, normalize_key, open_memmap
from .dataset import Calibration, StemDataset, build_dataset, resolve_scan_shape
from .errors import StemFileError

_MAGIC = b"MQ1,"
_OUT_DTYPE = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}


def parse_hdr(path: Path) -> dict[str, str]:
    """Key/value pairs of a Merlin ``.hdr`` acquisition header.

    Examples
    --------
    >>> parse_hdr(Path("scan.hdr"))["Frames per Trigger (Number)"]  # doctest: +SKIP
    '1'
    """
    from ..config import read_small_file

    out = {}
    # a regular file of at most 1 MiB (a link to /dev/zero must not fill the memory)
    raw = read_small_file(path, "Merlin .hdr header", error=StemFileError)
    text = raw.replace(b"\x00", b"").decode("ascii", "replace")
    for line in text.splitlines():
        if line.startswith(("HDR", "End")) or "\t" not in line:
            continue
        key, value = line.split("\t", 1)
        out[key.strip().rstrip(":")] = value.strip()
    return out


def parse_frame_header(raw: bytes, where: str) -> dict:
    """Fields of one frame header (``raw`` holds at least the whole header).

    Examples
    --------
    >>> head = b"MQ1,000001,00384,01,0256,0128,U16,   1x1,01,2021-05-07,12,"
    >>> info = parse_frame_header(head.ljust(384, bytes(1)), "scan.mib")
    >>> info["width"], info["height"], info["pixel_type"], info["depth"]
    (256, 128, 'U16', 12)
    """
    if not raw.startswith(_MAGIC):
        raise StemFileError(
            f"{where}: not a Merlin .mib frame (expected the header to start "
            f"with 'MQ1,'; found {raw[:8]!r})"
        )
    try:
        parts = raw.split(b",")
        header_size = int(parts[2])
        head = raw[:header_size].split(b",")
        fields = [p.decode("ascii", "replace").strip() for p in head]
        fields = [p for p in fields if p and "\x00" not in p]
        info = {
            "sequence": int(fields[1]),
            "header_size": header_size,
            "n_chips": int(fields[3]),
            "width": int(fields[4]),
            "height": int(fields[5]),
            "pixel_type": fields[6].upper(),
            "layout": fields[7],
            "depth": None,
        }
        last = fields[-1]
        if last.isdigit() and int(last) in (1, 6, 12, 24):
            info["depth"] = int(last)
    except (IndexError, ValueError) as e:
        why = "too few fields" if isinstance(e, IndexError) else f"a number field is not one ({e})"
        raise StemFileError(
            f"{where}: unreadable Merlin frame header: {why}; expected 'MQ1,sequence,"
            "header size,chips,width,height,pixel type,...' (damaged header)"
        ) from None
    if not 0 < header_size <= MAX_HEADER_BYTES:
        raise StemFileError(
            f"{where}: Merlin frame header declares a header of {header_size} bytes; "
            f"expected 1 to {MAX_HEADER_BYTES} (damaged header)"
        )
    for key in ("width", "height"):
        if not 0 < info[key] <= 2**16:
            raise StemFileError(
                f"{where}: Merlin frame header declares a frame {key} of {info[key]} "
                "pixels; expected 1 to 65536 (damaged header)"
            )
    if info["pixel_type"] not in ("U08", "U16", "U32", "U64", "R64"):
        raise StemFileError(
            f"{where}: unknown Merlin pixel type {info['pixel_type']!r}; expected "
            "U08, U16, U32, U64 or R64"
        )
    return info


def _decode_raw12(raw: np.ndarray, npix: int) -> np.ndarray:
    vals = np.ascontiguousarray(raw).view(">u2").reshape(raw.shape[0], npix // 4, 4)
    return vals[:, :, ::-1].astype(np.uint16).reshape(raw.shape[0], npix)


def decode_frames(raw: np.ndarray, pixel_type: str, depth: int, npix: int) -> np.ndarray:
    """Decode ``raw`` (frames x payload bytes, uint8) to ``(frames, npix)``.

    Examples
    --------
    >>> raw = np.array([[0, 1, 0, 2]], np.uint8)
    >>> decode_frames(raw, "U16", 12, 2).tolist()
    [[1, 2]]
    """
    k = raw.shape[0]
    if pixel_type.startswith("U"):
        itemsize = int(pixel_type[1:]) // 8
        be = np.dtype(f">u{itemsize}")
        return np.ascontiguousarray(raw).view(be).reshape(k, npix).astype(be.newbyteorder("="))
    if depth == 1:
        # 64 pixels per 64-bit word, least significant bit first
        words = np.ascontiguousarray(raw).reshape(k, npix // 64, 8)[:, :, ::-1]
        return np.unpackbits(words, axis=-1, bitorder="little").reshape(k, npix)
    if depth == 6:
        return raw.reshape(k, npix // 8, 8)[:, :, ::-1].reshape(k, npix).copy()
    if depth == 12:
        return _decode_raw12(raw, npix)
    if depth == 24:
        half = raw.shape[1] // 2
        hi = _decode_raw12(raw[:, :half], npix).astype(np.uint32)
        lo = _decode_raw12(raw[:, half:], npix).astype(np.uint32)
        return (hi << 12) | lo
    raise StemFileError(f"unsupported Merlin counter depth {depth}")  # pragma: no cover


class MibArray(LazyArray):
    """Frames ``(N, height, width)`` of a ``.mib`` file, memory-mapped, picklable.

    Raw (R64) frames are decoded per block of frames on read.

    Examples
    --------
    >>> frames = MibArray("scan.mib", n_frames=8, frame_shape=(256, 256),
    ...                   header_size=384, stride=65920, pixel_type="U08",
    ...                   depth=6, dtype=np.uint8)  # doctest: +SKIP
    >>> frames[3].shape  # doctest: +SKIP
    (256, 256)
    """

    def __init__(
        self, path, *, n_frames, frame_shape, header_size, stride, pixel_type, depth, dtype
    ):
        super().__init__((n_frames, *frame_shape), dtype)
        self.path = str(path)
        self.header_size = int(header_size)
        self.stride = int(stride)
        self.pixel_type = pixel_type
        self.depth = int(depth)
        npix = frame_shape[0] * frame_shape[1]
        self.payload = _payload_bytes(pixel_type, depth, npix)

    def _token(self) -> tuple:
        return (self.path, *_file_key(self.path)[1:])

    def _get(self, key: tuple) -> np.ndarray:
        slices, int_axes = normalize_key(key, self.shape)
        fs = slices[0]
        idx = np.arange(fs.start, fs.stop, fs.step)
        h, w = self.shape[1:]
        if idx.size == 0:
            out = np.empty((0, h, w), self.dtype)
        else:
            lo, hi = int(idx.min()), int(idx.max()) + 1
            mm = open_memmap(self.path, "raw")
            block = np.asarray(mm[lo * self.stride : hi * self.stride])
            block = block.reshape(hi - lo, self.stride)
            block = block[idx - lo, self.header_size : self.header_size + self.payload]
            out = decode_frames(block, self.pixel_type, self.depth, h * w)
            out = out.reshape(-1, h, w)
        out = _finish(out[(slice(None), *slices[1:])], int_axes)
        return np.ascontiguousarray(out, dtype=self.dtype)


def _payload_bytes(pixel_type: str, depth: int, npix: int) -> int:
    if pixel_type.startswith("U"):
        return npix * int(pixel_type[1:]) // 8
    return {1: npix // 8, 6: npix, 12: 2 * npix, 24: 4 * npix}[depth]


def _out_dtype(pixel_type: str, depth: int):
    if pixel_type.startswith("U"):
        return np.dtype(f"u{int(pixel_type[1:]) // 8}")
    return np.dtype(_OUT_DTYPE[depth])


def _find_files(path: Path) -> tuple[Path, Path | None]:
    path = Path(os.path.abspath(path))
    if path.suffix.lower() == ".hdr":
        mib = path.with_suffix(".mib")
        if not mib.exists():
            mib = path.with_suffix(".MIB")
        if not mib.exists():
            raise StemFileError(
                f"{path}: Merlin header without its data file (expected {mib.name} beside it)"
            )
        return mib, path
    for suffix in (".hdr", ".HDR"):
        hdr = path.with_suffix(suffix)
        if hdr.exists():
            return path, hdr
    return path, None


def open_merlin(path: Path, scan_shape=None, *, dataset: str | None = None) -> StemDataset:
    """Open a Merlin ``.mib`` file (path of the ``.mib`` or its ``.hdr``) lazily.

    Parameters
    ----------
    path : Path
        The ``.mib`` file, or its ``.hdr`` acquisition header.
    scan_shape : tuple of int, optional
        ``(Rx, Ry)`` or ``(T, Rx, Ry)``; default: from the ``.hdr`` when the
        acquisition was line-triggered, else square if the frame count is a
        perfect square.
    dataset : str, optional
        Ignored.

    Returns
    -------
    StemDataset

    Examples
    --------
    >>> ds = open_merlin(Path("scan.mib"), scan_shape=(4, 2))  # doctest: +SKIP
    >>> ds.cube.shape  # doctest: +SKIP
    (4, 2, 256, 256)
    """
    mib, hdr_path = _find_files(Path(path))
    where = str(mib)
    size = check_regular_file(mib).st_size
    first = read_head(mib, MAX_HEADER_BYTES)
    info = parse_frame_header(first, where)
    # a .hdr that is not a small regular file is refused (parse_hdr says why)
    hdr = {} if hdr_path is None else parse_hdr(hdr_path)
    notes = []
    depth = info["depth"]
    if depth is None:
        try:
            depth = int(hdr.get("Counter Depth (number)", ""))
        except ValueError:
            depth = {"U08": 6, "U16": 12, "U32": 24, "U64": 24}.get(info["pixel_type"])
    ptype = info["pixel_type"]
    if ptype == "R64":
        if depth not in (1, 6, 12, 24):
            raise StemFileError(
                f"{where}: raw (R64) frames with unknown counter depth {depth}; "
                "expected 1, 6, 12 or 24 (from the frame header or the .hdr)"
            )
        if info["n_chips"] != 1:
            raise StemFileError(
                f"{where}: raw (R64) frames of a {info['n_chips']}-chip detector "
                f"({info['layout']}) need chip reassembly, which is not supported; "
                "expected single-chip raw data, or frames saved as U08/U16/U32"
            )
    header = info["header_size"]
    shapes = [(info["height"], info["width"])]
    if ptype == "R64" and depth == 24 and info["width"] % 2 == 0:
        # some firmware counts both 12-bit halves of a 24-bit frame in its width
        shapes.append((info["height"], info["width"] // 2))
    frame_shape = stride = None
    for shp in shapes:
        npix = shp[0] * shp[1]
        if ptype == "R64" and npix % 64:
            continue  # raw frames are whole 64-bit words
        s = header + _payload_bytes(ptype, depth, npix)
        if size < s:
            continue
        if size >= 2 * s:
            with open(mib, "rb") as fh:
                fh.seek(s)
                if fh.read(4) != _MAGIC:
                    continue
        frame_shape, stride = shp, s
        break
    if frame_shape is None:
        raise StemFileError(
            f"{where}: frame size does not match the header ({info['width']}x"
            f"{info['height']} {ptype}, {depth}-bit, {header}-byte header) or the "
            f"file ({size} bytes) is truncated before the first complete frame"
        )
    n = size // stride
    if size % stride:
        notes.append(f"the last {size % stride} bytes (an incomplete frame) are ignored")
    if n > 1:
        with open(mib, "rb") as fh:
            fh.seek((n - 1) * stride)
            if fh.read(4) != _MAGIC:
                raise StemFileError(
                    f"{where}: frame {n - 1} does not start with a Merlin header; "
                    "expected frames of equal size (file corrupt?)"
                )
    hint = None
    try:
        fpt = int(hdr.get("Frames per Trigger (Number)", "0")[:12])
    except ValueError:
        fpt = 0
    if fpt > 1 and n % fpt == 0:
        hint = (n // fpt, fpt)
    shape = resolve_scan_shape(n, scan_shape, where=f"{where} ({n} frames)", hint=hint, notes=notes)
    frames = MibArray(
        mib,
        n_frames=n,
        frame_shape=frame_shape,
        header_size=header,
        stride=stride,
        pixel_type=ptype,
        depth=depth,
        dtype=_out_dtype(ptype, depth),
    )
    meta = {
        "pixel_type": ptype,
        "counter_depth": depth,
        "header_size": header,
        "n_chips": info["n_chips"],
        "layout": info["layout"],
        "n_frames": n,
    }
    for key in (
        "Frames in Acquisition (Number)",
        "Frames per Trigger (Number)",
        "Counter Depth (number)",
        "Chip Mode  (SPM, CSM, CM, CSCM)",
        "Software Version",
        "Time and Date Stamp (day, mnth, yr, hr, min, s)",
    ):
        if key in hdr:
            meta[key] = hdr[key]
    return build_dataset(
        FrameCube(frames, shape),
        path=mib,
        dataset=None,
        format="merlin",
        calibration=Calibration(),
        notes=notes,
        metadata=meta,
    )
