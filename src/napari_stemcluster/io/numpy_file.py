"""NumPy ``.npy`` files, memory-mapped and never unpickled."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np

from ._guard import MAX_HEADER_BYTES, check_declared_size, check_shape, read_head
from ._lazy import NpyArray, open_memmap
from .dataset import StemDataset, apply_scan_shape, build_dataset
from .errors import StemFileError

NPY_MAGIC = b"\x93NUMPY"


def read_npy_header(
    path: Path, *, with_offset: bool = False
) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and Fortran order of a ``.npy`` file, from its header only.

    Format versions 1.0, 2.0 and 3.0 are read by a small parser of our own
    (the header is a Python literal, read with :func:`ast.literal_eval`,
    never executed or unpickled); ``with_offset=True`` adds the byte offset
    of the data.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.npy")
    >>> np.save(p, np.zeros((2, 3), np.uint16))
    >>> read_npy_header(p)[:2]
    ((2, 3), dtype('uint16'))
    """
    where = str(path)
    head = read_head(path, 12)
    if len(head) < 10 or not head.startswith(NPY_MAGIC):
        raise StemFileError(f"{where}: not a .npy file (no NumPy magic string)")
    major, minor = head[6], head[7]
    if (major, minor) == (1, 0):
        hlen, start, encoding = int.from_bytes(head[8:10], "little"), 10, "latin1"
    elif (major, minor) in ((2, 0), (3, 0)) and len(head) >= 12:
        hlen, start = int.from_bytes(head[8:12], "little"), 12
        encoding = "latin1" if major == 2 else "utf8"
    else:
        raise StemFileError(
            f"{where}: .npy format version {major}.{minor}; expected 1.0, 2.0 or 3.0"
        )
    if hlen > MAX_HEADER_BYTES:
        raise StemFileError(f"{where}: .npy header of {hlen} bytes; damaged")
    raw = read_head(path, start + hlen)[start:]
    if len(raw) < hlen:
        raise StemFileError(f"{where}: truncated inside its .npy header")
    try:
        header = ast.literal_eval(raw.decode(encoding))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise StemFileError(f"{where}: unreadable .npy header; damaged") from None
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header):
        raise StemFileError(f"{where}: .npy header without descr, fortran_order and shape; damaged")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise StemFileError(f"{where}: .npy header shape {shape!r} is not a tuple of integers")
    shape = check_shape(shape, where)
    fortran = header["fortran_order"]
    if not isinstance(fortran, bool):
        raise StemFileError(f"{where}: .npy header fortran_order {fortran!r} is not a bool")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError, KeyError, IndexError):
        raise StemFileError(f"{where}: .npy header dtype {header['descr']!r} unknown") from None
    if with_offset:
        return shape, dtype, fortran, start + hlen
    return shape, dtype, fortran


def open_npy(path: Path, scan_shape=None, *, dataset: str | None = None) -> StemDataset:
    """Open a ``.npy`` file as a 4D/5D cube, memory-mapped.

    ``np.load(mmap_mode="r", allow_pickle=False)``: object arrays are
    refused. A 3D stack ``(N, Qx, Qy)`` needs ``scan_shape``.

    Parameters
    ----------
    path : Path
        The ``.npy`` file.
    scan_shape : tuple of int, optional
        ``(Rx, Ry)`` or ``(T, Rx, Ry)``.
    dataset : str, optional
        Ignored.

    Returns
    -------
    StemDataset

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "cube.npy")
    >>> np.save(p, np.zeros((2, 3, 4, 5), np.uint16))
    >>> open_npy(p).cube.shape
    (2, 3, 4, 5)
    """
    path = Path(os.path.abspath(path))
    shape, dtype, _fortran, offset = read_npy_header(path, with_offset=True)
    if dtype.hasobject or dtype.kind not in "uif" or dtype.shape or dtype.names:
        raise StemFileError(
            f"{path}: holds {dtype} values; expected a numeric array (object "
            "arrays are never loaded: that would need pickle)"
        )
    if len(shape) not in (3, 4, 5):
        raise StemFileError(
            f"{path}: array of shape {shape}; expected 4D (Rx, Ry, Qx, Qy), 5D "
            "(T, Rx, Ry, Qx, Qy) or, with a scan shape, 3D (N, Qx, Qy)"
        )
    if 0 in shape:
        raise StemFileError(f"{path}: array of shape {shape} is empty")
    size = os.stat(path).st_size
    check_declared_size(shape, dtype.itemsize, where=str(path), stored=size - offset, exact=True)
    # map it now (kept in the cache for the first read)
    try:
        open_memmap(str(path), "npy")
    except (ValueError, OSError) as e:
        raise StemFileError(f"{path}: cannot be memory-mapped ({e})") from None
    notes: list[str] = []
    source = apply_scan_shape(
        NpyArray(str(path), shape, dtype), scan_shape, where=str(path), notes=notes
    )
    return build_dataset(source, path=path, dataset=None, format="npy", notes=notes)
