"""Input checks and block iteration shared by every core stage."""

from __future__ import annotations

import numpy as np

#: Target size of one block of patterns read or converted at a time. Large
#: enough to amortise per-block overhead, small enough to stay well below the
#: size of the cube and to keep the working set near the CPU caches.
BLOCK_BYTES = 64 * 2**20


def check_cube(cube, ndim: int = 4, name: str = "cube") -> None:
    """Raise a clear error unless ``cube`` is a real-valued ``ndim``-D array."""
    shape = getattr(cube, "shape", None)
    dtype = getattr(cube, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"{name} must be an array with .shape and .dtype (numpy, dask, h5py); "
            f"got {type(cube).__name__}"
        )
    if len(shape) != ndim:
        want = "(Rx, Ry, Qx, Qy)" if ndim == 4 else "(T, Rx, Ry, Qx, Qy)"
        raise ValueError(
            f"{name} must be {ndim}-D {want}; got shape {tuple(shape)} ({len(shape)}-D)"
        )
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        raise TypeError(f"{name} must hold integers or floats; got dtype {dtype}")
    if any(s == 0 for s in shape):
        raise ValueError(f"{name} has an empty axis: shape {tuple(shape)}")


def check_finite_values(values: np.ndarray, what: str, offset=None) -> None:
    """Raise if per-pattern reductions reveal NaN or inf in the input.

    Non-finite input propagates into every sum over a pattern, so checking
    the (small) per-pattern sums finds it without another pass over the cube.
    ``offset`` is added to the reported index when ``values`` covers a block
    of the array passed in.
    """
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        if offset is not None:
            bad = bad + np.asarray(offset, np.int64)
        raise ValueError(
            f"{what}: the cube contains NaN or inf (first affected pattern at "
            f"scan index {tuple(int(i) for i in bad)}); replace or mask those "
            "values before clustering"
        )


def block_rows(cube_shape, itemsize: int, target_bytes: int = BLOCK_BYTES) -> int:
    """Number of scan rows per block so that one block is about ``target_bytes``."""
    row_bytes = int(np.prod(cube_shape[1:], dtype=np.int64)) * itemsize
    return int(max(1, min(cube_shape[0], target_bytes // max(row_bytes, 1))))


def read_rows(cube, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of any sliceable cube (numpy, memmap, h5py, dask) as numpy."""
    block = cube[r0:r1]
    if hasattr(block, "compute"):
        block = block.compute()
    return np.ascontiguousarray(block)


def native_dtype(dtype) -> np.dtype:
    """The dtype the kernels read: native byte order, float16 as float32.

    Examples
    --------
    >>> native_dtype(">u2"), native_dtype(np.float16)
    (dtype('uint16'), dtype('float32'))
    """
    dtype = np.dtype(dtype)
    if dtype == np.float16:  # no float16 arithmetic in the kernels
        return np.dtype(np.float32)
    return dtype.newbyteorder("=")


def kernel_dtype(dtype) -> np.dtype:
    """The dtype the similarity and dark-field kernels read a cube of ``dtype`` as.

    The kernels are compiled for uint8, uint16, float32 and float64 only
    (each dtype is a separate compilation, and the similarity kernel is a
    large one). The other dtypes are converted block by block to one whose
    values give the same arithmetic: 8- and 16-bit signed integers to
    float32 (every value exact), 32- and 64-bit integers to float64 (32-bit
    ones exact; the kernels round 64-bit ones through float64 anyway). With
    the flags of the cube's own dtype (the similarity's power-of-two scaling,
    the dark field's exact integer sums) the results are bit-identical to
    kernels compiled for the cube's dtype.

    Examples
    --------
    >>> [str(kernel_dtype(d)) for d in (">u2", np.int16, np.int32, np.uint64, np.float16)]
    ['uint16', 'float32', 'float64', 'float64', 'float32']
    """
    kind = native_dtype(dtype)
    if kind in (np.uint8, np.uint16, np.float32, np.float64):
        return kind
    if kind.kind in "ui" and kind.itemsize <= 2:
        return np.dtype(np.float32)
    return np.dtype(np.float64)
