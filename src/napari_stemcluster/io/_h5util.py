"""Small HDF5 helpers shared by the EMD, Arina and generic HDF5 readers."""

from __future__ import annotations

import numpy as np

from ._lazy import open_h5
from .errors import StemFileError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def has_hdf5_signature(path: str) -> bool:
    """True if the file starts with the HDF5 signature (at 0 or a user block)."""
    try:
        with open(path, "rb") as f:
            offset = 0
            while True:
                f.seek(offset)
                head = f.read(8)
                if len(head) < 8:
                    return False
                if head == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
                if offset > 2**20:
                    return False
    except OSError:
        return False


def open_checked(path: str, cached: bool = True):
    """A read-only handle of ``path``, or a clear StemFileError.

    ``cached=False`` gives a fresh handle for the caller to close (used to
    probe files that may not be ours, so that they are not kept open).
    """
    import h5py

    from ._guard import check_regular_file

    check_regular_file(path)
    try:
        if not cached:
            return h5py.File(path, "r")
        return open_h5(path)
    except FileNotFoundError:
        raise StemFileError(f"{path}: file not found") from None
    except (OSError, RuntimeError, ValueError) as e:
        msg = str(e)
        if "truncated" in msg:
            why = "the file is truncated (incomplete copy or interrupted write)"
        elif "signature" in msg:
            why = "this is not an HDF5 file (no HDF5 signature found)"
        else:
            why = f"HDF5 could not open it ({msg})"
        raise StemFileError(
            f"{path}: cannot be read as HDF5: {why}; expected a complete HDF5 file"
        ) from None


def check_filters(ds, path: str) -> None:
    """Raise if ``ds`` needs a compression filter that is not available."""
    import h5py

    from ._guard import check_h5_dataset

    check_h5_dataset(ds, path)  # links, external storage, declared vs stored size
    try:
        plist = ds.id.get_create_plist()
        n = plist.get_nfilters()
    except Exception:  # pragma: no cover - datasets without a creation plist
        return
    for i in range(n):
        fid, flags, _vals, fname = plist.get_filter(i)
        if not h5py.h5z.filter_avail(fid):
            name = fname.decode("utf-8", "replace") if fname else ""
            if flags & h5py.h5z.FLAG_OPTIONAL and not _filter_applied(ds, i):
                continue  # an optional filter that failed at write: chunks are raw
            raise StemFileError(
                f"{path}: dataset {ds.name} is compressed with HDF5 filter "
                f"{fid}{f' ({name})' if name else ''}, which is not available; "
                "expected a filter known to HDF5 or hdf5plugin (gzip, lzf, "
                "bitshuffle, LZ4, Zstd, Blosc, ...): install or update hdf5plugin"
            )


def _filter_applied(ds, index: int) -> bool:
    """Whether filter ``index`` was applied to the first stored chunk."""
    try:
        if ds.id.get_num_chunks() == 0:
            return False
        return not (ds.id.get_chunk_info(0).filter_mask >> index) & 1
    except Exception:  # no chunk index (contiguous) or an old HDF5
        return True


def as_str(value) -> str:
    """Decode HDF5 strings (bytes, numpy bytes, 0-d arrays) to ``str``."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.shape == () else value.ravel()[0]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    # h5py hands undecodable bytes of text attributes over as surrogates
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def scalar(value):
    """A Python scalar from an HDF5 scalar dataset value."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_, str)):
        return as_str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def numeric_datasets(group) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """``(path, shape, dtype)`` of every numeric dataset below ``group``.

    Only metadata is touched; external links are not followed.
    """
    import h5py

    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            try:
                dtype = obj.dtype
                shape = obj.shape
            except Exception:
                return
            if shape is not None and dtype.kind in "uif":
                found.append(("/" + name.lstrip("/"), tuple(shape), dtype))

    group.visititems(visit)
    # datasets behind external links: followed only after checking the target
    from ._guard import safe_get

    links = []
    if hasattr(group, "visititems_links"):
        group.visititems_links(
            lambda name, link: links.append(name) if isinstance(link, h5py.ExternalLink) else None
        )
    for name in links[:64]:
        obj = safe_get(group.file, f"{group.name.rstrip('/')}/{name}")
        if obj is not None:
            visit(obj.name if obj.file == group.file else name, obj)
    return found
