"""Open 4D/5D-STEM files lazily and save segmentation results.

:func:`open_dataset` recognises the format from the file's content:

=========  ===================================================================
format     files
=========  ===================================================================
emd        py4DSTEM / emdfile EMD 1.0 (``.h5``, ``.hdf5``, ``.emd``)
arina      Dectris Arina / EIGER NeXus master (``*_master.h5`` + data files)
hdf5       any HDF5 file with a 4D/5D dataset (3D stacks with a scan shape)
merlin     Quantum Detectors Merlin ``.mib`` (+ ``.hdr``)
npy        NumPy ``.npy`` (memory-mapped, never unpickled)
=========  ===================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

from ._analysis_orientation import save_orientation
from ._analysis_tracking import read_kinetics_csv, save_tracking, write_kinetics_csv
from ._lazy import close_cached_handles
from .dataset import Calibration, StemDataset, normalize_units
from .errors import StemFileError
from .results import is_results_file, read_results, write_results

__all__ = [
    "Calibration",
    "StemDataset",
    "StemFileError",
    "close_cached_handles",
    "detect_format",
    "is_results_file",
    "normalize_units",
    "open_dataset",
    "read_kinetics_csv",
    "read_results",
    "save_orientation",
    "save_tracking",
    "write_kinetics_csv",
    "write_results",
]

#: Formats other software writes that are not read here, with a hint.
_OTHER_FORMATS = {
    ".dm3": "Gatan Digital Micrograph",
    ".dm4": "Gatan Digital Micrograph",
    ".raw": "EMPAD / raw binary",
    ".blo": "NanoMegas blockfile",
    ".mrc": "MRC",
    ".ser": "FEI/TIA series",
    ".prz": "Gatan/EMPAD compressed",
    ".zspy": "HyperSpy zarr",
    ".hspy": "HyperSpy",
    ".npz": "NumPy archive",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def detect_format(path: str | os.PathLike) -> str | None:
    """Which reader a file needs, from its content; None if not 4D/5D-STEM.

    Returns one of ``"emd"``, ``"arina"``, ``"hdf5"``, ``"hdf5-stack"``
    (3D stack: needs a scan shape), ``"merlin"``, ``"npy"``, ``"npy-stack"``,
    ``"results"`` (a napari-stemcluster results file) or None. Only headers
    and HDF5 metadata are read. Raises :class:`StemFileError` for files
    that look like HDF5 but cannot be opened (truncated, corrupt).

    Examples
    --------
    >>> detect_format("missing.txt") is None
    True
    """
    from ._guard import check_regular_file, h5_boundary, read_head
    from ._h5util import has_hdf5_signature, open_checked
    from .numpy_file import NPY_MAGIC, read_npy_header

    p = Path(path)
    if not os.path.lexists(p) or p.is_dir():
        return None
    check_regular_file(p)  # FIFOs, devices, unreadable files: a reason, not a hang
    head = read_head(p, 8)
    if head.startswith(b"MQ1,"):
        return "merlin"
    if head.startswith(b"HDR,") and p.suffix.lower() == ".hdr":
        return "merlin" if p.with_suffix(".mib").exists() else None
    if head.startswith(NPY_MAGIC):
        shape, dtype, _ = read_npy_header(p)
        if dtype.kind not in "uif" or dtype.hasobject:
            return None
        return {3: "npy-stack", 4: "npy", 5: "npy"}.get(len(shape))
    if not has_hdf5_signature(str(p)):
        return None
    import hdf5plugin  # noqa: F401  (filters: lets h5py open compressed datasets)

    from . import arina, emd, hdf5

    # a fresh handle, closed again: files that are not ours are not kept open
    with open_checked(str(p.resolve()), cached=False) as f, h5_boundary(p):
        if is_results_file(f):
            return "results"
        if emd.is_emd(f) and emd.find_datacubes(f):
            return "emd"
        if arina.is_master(f):
            return "arina"
        cubes, stacks = hdf5.candidates(f)
        if cubes:
            return "hdf5"
        if stacks:
            return "hdf5-stack"
    return None


def open_dataset(
    path: str | os.PathLike,
    scan_shape: tuple[int, ...] | None = None,
    *,
    dataset: str | None = None,
    format: str | None = None,
) -> StemDataset:
    """Open a 4D/5D-STEM file lazily: nothing but metadata is read.

    Parameters
    ----------
    path : str or Path
        The file (for Merlin, the ``.mib`` or its ``.hdr``; for Arina, the
        ``*_master.h5``).
    scan_shape : tuple of int, optional
        ``(Rx, Ry)``, or ``(T, Rx, Ry)`` for a time series. Needed when the
        file stores a flat stack of frames whose scan shape it does not
        record; reinterprets the scan axes of 4D/5D data otherwise. A
        2-value shape dividing the frame count opens a time series.
    dataset : str, optional
        Internal path of the dataset to open in an HDF5 file holding several.
    format : str, optional
        Force a reader: "emd", "arina", "hdf5", "merlin" or "npy".

    Returns
    -------
    StemDataset
        ``cube`` is a dask array ``(Rx, Ry, Qx, Qy)`` or
        ``(T, Rx, Ry, Qx, Qy)`` reading the file on demand (picklable: no
        open file in its graph).

    Raises
    ------
    StemFileError
        For unreadable files or data that is not 4D/5D-STEM; the message
        names the file, the dataset and what was expected.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "cube.npy")
    >>> np.save(p, np.zeros((4, 4, 8, 6), np.uint16))
    >>> ds = open_dataset(p)
    >>> ds.format, ds.cube.shape
    ('npy', (4, 4, 8, 6))
    """
    from . import arina, emd, hdf5, merlin, numpy_file
    from ._guard import check_regular_file, h5_boundary, read_head

    p = Path(os.path.abspath(path))
    if p.is_dir():
        raise StemFileError(f"{p}: is a directory; expected a 4D-STEM file")
    check_regular_file(p)  # before anything opens it
    kind = format or detect_format(p)
    if kind == "results":
        raise StemFileError(
            f"{p}: is a napari-stemcluster results file, not a 4D-STEM cube; read "
            "it with napari_stemcluster.io.read_results"
        )
    openers = {
        "emd": emd.open_emd,
        "arina": arina.open_arina,
        "hdf5": hdf5.open_hdf5,
        "hdf5-stack": hdf5.open_hdf5,
        "merlin": merlin.open_merlin,
        "npy": numpy_file.open_npy,
        "npy-stack": numpy_file.open_npy,
    }
    if kind is None:
        # not 4D/5D-STEM: let the reader of the file's format say why
        from ._h5util import has_hdf5_signature

        head = read_head(p, 8)
        if head.startswith(numpy_file.NPY_MAGIC):
            return numpy_file.open_npy(p, scan_shape, dataset=dataset)
        if has_hdf5_signature(str(p)):
            with h5_boundary(p, dataset):
                return hdf5.open_hdf5(p, scan_shape, dataset=dataset)
        hint = _OTHER_FORMATS.get(p.suffix.lower())
        if hint:
            raise StemFileError(
                f"{p}: {hint} files are not read by napari-stemcluster; convert "
                "the cube to HDF5 or .npy (for instance with RosettaSciIO or "
                "HyperSpy) and open that"
            )
        raise StemFileError(
            f"{p}: not a recognised 4D-STEM file; expected EMD 1.0 / HDF5 "
            "(.h5, .hdf5, .emd), an Arina/EIGER master file, a Merlin .mib or a "
            ".npy file"
        )
    if kind not in openers:
        raise StemFileError(f"{p}: unknown format {kind!r}; expected one of {sorted(openers)}")
    if kind in ("merlin", "npy", "npy-stack"):
        return openers[kind](p, scan_shape, dataset=dataset)
    # the one place where errors of the HDF5 library become StemFileError
    with h5_boundary(p, dataset):
        return openers[kind](p, scan_shape, dataset=dataset)
