"""Benchmark input: a 5D-STEM HDF5 file of any size, written block by block.

A synthetic polycrystal scan (a tile of ``TILE`` scan positions) is made
once; every time step is a mosaic of mirrored copies of it with counting-like
noise added, written one row of tiles at a time, so files far larger than
memory are generated with about 1 GB of memory.
"""

from __future__ import annotations

import time

import h5py
import numpy as np

from napari_stemcluster.synthetic import make_polycrystal

TILE = 64


def write_cube(
    path, n_steps, scan=(256, 256), detector=(128, 128), seed=0, log=print, compression=None
):
    """Write ``(n_steps, *scan, *detector)`` uint16 data to ``path`` (``/data``).

    ``compression="bitshuffle-lz4"`` writes the chunks with hdf5plugin's
    Bitshuffle filter and LZ4, as many detectors do. Returns the number of
    bytes of the dataset.
    """
    filters = {}
    if compression == "bitshuffle-lz4":
        import hdf5plugin

        filters = dict(hdf5plugin.Bitshuffle(cname="lz4"))
    elif compression is not None:
        raise ValueError(f"unknown compression {compression!r}")
    rx, ry = scan
    if rx % TILE or ry % TILE:
        raise ValueError(f"scan sides must be multiples of {TILE}; got {scan}")
    t0 = time.perf_counter()
    # A dose at which neighbouring patterns of a grain stay above the default
    # similarity threshold on a large detector, so every stage has work to do.
    base = make_polycrystal((TILE, TILE), detector, n_particles=4, dose=5e4, seed=seed).cube
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 3, base.shape, dtype=np.uint16)
    row = np.empty((TILE, ry, *detector), np.uint16)
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "data",
            shape=(n_steps, rx, ry, *detector),
            dtype=np.uint16,
            chunks=(1, 4, TILE, *detector),
            **filters,
        )
        d.attrs["r_pixel_size"] = 1.0
        d.attrs["r_units"] = "nm"
        for t in range(n_steps):
            for i in range(rx // TILE):
                for j in range(ry // TILE):
                    flip = rng.integers(0, 4)
                    tile = base[:: 1 if flip & 1 else -1, :: 1 if flip & 2 else -1]
                    shift = int(rng.integers(0, TILE))
                    np.add(
                        tile,
                        np.roll(noise, shift, axis=0),
                        out=row[:, j * TILE : (j + 1) * TILE],
                    )
                d[t, i * TILE : (i + 1) * TILE] = row
            if log is not None:
                done = (t + 1) * rx * ry * np.prod(detector) * 2
                log(
                    f"  wrote time step {t + 1}/{n_steps} ({done / 2**30:.1f} GiB, "
                    f"{time.perf_counter() - t0:.0f} s)"
                )
    return n_steps * rx * ry * int(np.prod(detector)) * 2
