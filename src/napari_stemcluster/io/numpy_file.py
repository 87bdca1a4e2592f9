"""NumPy ``.npy`` files, memory-mapped and never unpickled."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._lazy import NpyArray, open_memmap
from .dataset import StemDataset, apply_scan_shape, build_dataset
from .errors import StemFileError

NPY_MAGIC = b"\x93NUMPY"


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and Fortran order of a ``.npy`` file, from its header only.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.npy")
    >>> np.save(p, np.zeros((2, 3), np.uint16))
    >>> read_npy_header(p)[:2]
    ((2, 3), dtype('uint16'))
    """
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(fh)
            else:
                shape, fortran, dtype = fmt._read_array_header(fh, version)
    except FileNotFoundError:
        raise StemFileError(f"{path}: file not found") from None
    except (ValueError, OSError) as e:
        raise StemFileError(f"{path}: not a readable .npy file ({e})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran)


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
    shape, dtype, _fortran = read_npy_header(path)
    if dtype.hasobject or dtype.kind not in "uif":
        raise StemFileError(
            f"{path}: holds {dtype} values; expected a numeric array (object "
            "arrays are never loaded: that would need pickle)"
        )
    # map it now (kept in the cache for the first read), so a truncated file
    # fails here rather than on first read
    try:
        open_memmap(str(path), "npy")
    except ValueError as e:
        raise StemFileError(f"{path}: cannot be memory-mapped ({e})") from None
    if len(shape) not in (3, 4, 5):
        raise StemFileError(
            f"{path}: array of shape {shape}; expected 4D (Rx, Ry, Qx, Qy), 5D "
            "(T, Rx, Ry, Qx, Qy) or, with a scan shape, 3D (N, Qx, Qy)"
        )
    notes: list[str] = []
    source = apply_scan_shape(
        NpyArray(str(path), shape, dtype), scan_shape, where=str(path), notes=notes
    )
    return build_dataset(source, path=path, dataset=None, format="npy", notes=notes)
