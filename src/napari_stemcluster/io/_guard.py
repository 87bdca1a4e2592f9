"""The validation boundary every reader goes through before trusting a file.

A data file is untrusted input: its headers may declare shapes that cannot
exist, its links may point anywhere, its bytes may be damaged. Everything a
reader learns from a file passes through the checks below *before* anything
is opened, allocated or followed:

- only regular files are opened (a FIFO or a device would block or never
  end), and a file the user may not read gives a clear error;
- small side files (``.hdr``, calibration) are read with a size limit;
- a declared shape is checked against the bytes the file really stores and
  against the memory of this machine before anything is allocated from it;
- links to other files (HDF5 external links, virtual datasets, external raw
  storage) must stay in the file's own folder and name existing regular
  files;
- errors of the HDF5 library are translated once, at the boundary, into
  :class:`StemFileError` ("this file is damaged ...");
- calibration values are parsed with their types checked.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from pathlib import Path

import numpy as np

from .errors import StemFileError

#: Largest side file (``.hdr``, JSON, ...) read into memory.
MAX_SIDECAR_BYTES = 1 * 2**20
#: Largest header of a ``.npy`` file or a Merlin frame.
MAX_HEADER_BYTES = 64 * 2**10
#: Bytes the engine keeps per scan position and time step (similarity,
#: labels, maps), to check a declared scan against the machine's memory.
BYTES_PER_POSITION = 64
#: Declared sizes below this may be unwritten (they read as the fill value).
SMALL_BYTES = 64 * 2**20

_KIND_NAMES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def physical_memory() -> int:
    """Bytes of RAM of this machine (a large number if unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2**40


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def check_regular_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` if it is a readable regular file, else StemFileError.

    Symbolic links are followed; a link to a FIFO or a device is refused
    before anything opens it, so a read can never block or be endless.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise StemFileError(f"{p}: {what} not found") from None
    except PermissionError:
        raise StemFileError(
            f"{p}: permission denied; the {what} (or a folder above it) cannot be read by this user"
        ) from None
    except OSError as e:
        raise StemFileError(f"{p}: cannot be accessed ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise StemFileError(f"{p}: is a directory; expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KIND_NAMES if test(st.st_mode)), "not a file")
        raise StemFileError(
            f"{p}: is {kind}, not a regular file; refused before opening (reading it "
            "could block or never end); expected a data file on disk"
        )
    if not os.access(p, os.R_OK):
        raise StemFileError(f"{p}: permission denied; the {what} cannot be read by this user")
    return st


def read_sidecar(path: str | os.PathLike, limit: int = MAX_SIDECAR_BYTES, what="file") -> bytes:
    """The bytes of a small side file, refused if not regular or above ``limit``."""
    st = check_regular_file(path, what)
    if st.st_size > limit:
        raise StemFileError(
            f"{os.fspath(path)}: {what} of {_human(st.st_size)}; expected at most "
            f"{_human(limit)} (refused without reading it)"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as e:
        raise StemFileError(f"{os.fspath(path)}: cannot be read ({e.strerror or e})") from None
    if len(data) > limit:  # grew since stat
        raise StemFileError(f"{os.fspath(path)}: {what} larger than {_human(limit)}; refused")
    return data


def read_head(path: str | os.PathLike, n: int) -> bytes:
    """The first ``n`` bytes of a regular file (checked first)."""
    check_regular_file(path)
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as e:
        raise StemFileError(f"{os.fspath(path)}: cannot be read ({e.strerror or e})") from None


def check_shape(shape, where: str) -> tuple[int, ...]:
    """Declared dimensions as non-negative Python ints, or StemFileError."""
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError, OverflowError):
        raise StemFileError(f"{where}: declares an unreadable shape {shape!r}") from None
    if any(d < 0 for d in dims):
        raise StemFileError(f"{where}: declares a negative dimension in shape {dims}; damaged")
    return dims


def check_declared_size(
    shape,
    itemsize: int,
    *,
    where: str,
    stored: int | None = None,
    exact: bool = False,
    compressed: bool = True,
) -> int:
    """Check a declared cube against the bytes stored and the machine's memory.

    Parameters
    ----------
    shape : tuple of int
        Declared shape; the last two axes are the detector.
    itemsize : int
        Bytes per value.
    where : str
        File (and dataset) for the message.
    stored : int, optional
        Bytes the file really holds for the data.
    exact : bool
        The data is stored uncompressed: ``stored`` must hold every byte.
    compressed : bool
        The data may be compressed or sparse (chunked HDF5): ``stored`` may be
        smaller, but not zero for a large dataset.

    Returns
    -------
    int
        Declared bytes.
    """
    dims = check_shape(shape, where)
    nbytes = math.prod(dims) * int(itemsize)
    if stored is not None:
        if exact and stored < nbytes:
            raise StemFileError(
                f"{where}: declares {_human(nbytes)} of data ({dims}) but the file "
                f"holds only {_human(stored)}; the file is truncated or its header damaged"
            )
        if not exact and nbytes > SMALL_BYTES and stored == 0:
            raise StemFileError(
                f"{where}: declares {_human(nbytes)} of data ({dims}) with nothing written; "
                "expected a dataset whose data was written (the file is damaged, "
                "incomplete or not a detector recording)"
            )
    if len(dims) >= 3:
        positions = math.prod(dims[:-2])
        need = positions * BYTES_PER_POSITION
        ram = physical_memory()
        if need > ram:
            raise StemFileError(
                f"{where}: declares {positions:,} scan positions ({dims}); their "
                f"results alone would need {_human(need)}, more than this machine's "
                f"memory ({_human(ram)}); the file is damaged or needs a larger machine"
            )
        pattern = dims[-1] * dims[-2] * int(itemsize)
        if pattern > ram // 8:
            raise StemFileError(
                f"{where}: declares diffraction patterns of {dims[-2]}x{dims[-1]} "
                f"({_human(pattern)} each), more than this machine can process"
            )
    return nbytes


# --------------------------------------------------------------------------
# HDF5


def is_inside(folder: Path, target: Path) -> bool:
    """True if ``target`` (resolved) lies in ``folder`` (resolved) or below."""
    try:
        Path(os.path.realpath(target)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def check_linked_file(owner: Path, target: Path, where: str, what: str) -> Path:
    """A file named by ``owner`` (link, virtual source): inside its folder, regular."""
    folder = Path(owner).parent
    if not is_inside(folder, target):
        raise StemFileError(
            f"{owner}: {where} points to {what} {target}, outside the file's own folder "
            f"{folder}; refused (a data file may only refer to files beside it); copy "
            "the linked files beside it"
        )
    if not os.path.lexists(target):
        raise StemFileError(
            f"{owner}: {where} points to {what} {target}, which does not exist; "
            "expected the linked file beside it"
        )
    try:
        check_regular_file(target, what)
    except StemFileError as e:
        raise StemFileError(f"{owner}: {where} points to {what}: {e}") from None
    return Path(target)


def check_h5_dataset(ds, path: str) -> None:
    """Check an h5py dataset's storage before reading it.

    External raw storage and virtual sources must be existing regular files
    in the file's folder; the declared size must be backed by stored bytes.
    """
    # the file holding the dataset (another one behind an external link)
    with contextlib.suppress(Exception):
        path = ds.file.filename
    owner = Path(path)
    name = ds.name
    where = f"{path}: dataset {name}"
    try:
        plist = ds.id.get_create_plist()
        n_ext = plist.get_external_count()
        ext = [plist.get_external(i)[0] for i in range(n_ext)]
        virtual = bool(ds.is_virtual)
        sources = ds.virtual_sources() if virtual else []
        chunked = ds.chunks is not None
        storage = int(ds.id.get_storage_size())
        shape, itemsize = tuple(ds.shape), int(ds.dtype.itemsize)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        raise damaged(path, name, e) from None
    for raw in ext:
        fname = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        target = Path(fname) if os.path.isabs(fname) else owner.parent / fname
        check_linked_file(owner, target, f"dataset {name} (external storage)", "the raw file")
    for src in sources:
        fname = src.file_name
        if fname == ".":
            continue
        target = Path(fname) if os.path.isabs(fname) else owner.parent / fname
        check_linked_file(owner, target, f"virtual dataset {name}", "the source file")
    if ext or virtual:
        check_declared_size(shape, itemsize, where=where)
    elif chunked:
        check_declared_size(shape, itemsize, where=where, stored=storage)
    else:
        # contiguous: every byte must be in the file (or nothing was written)
        nbytes = check_declared_size(shape, itemsize, where=where)
        if storage == 0 and nbytes > SMALL_BYTES:
            check_declared_size(shape, itemsize, where=where, stored=0)
        elif storage and storage < nbytes:
            check_declared_size(shape, itemsize, where=where, stored=storage, exact=True)
        else:
            _check_contiguous_in_file(ds, path, nbytes)


def _check_contiguous_in_file(ds, path: str, nbytes: int) -> None:
    """The bytes of a contiguous dataset must lie inside the file."""
    try:
        offset = ds.id.get_offset()
    except Exception:  # no offset (not allocated): reads give the fill value
        return
    if offset is None:
        return
    size = os.stat(path).st_size
    if offset + nbytes > size:
        raise StemFileError(
            f"{path}: dataset {ds.name} declares {_human(nbytes)} at byte {offset} "
            f"but the file ends at byte {size}; the file is truncated"
        )


def damaged(path, dataset, error) -> StemFileError:
    """The StemFileError of an HDF5 library error met while reading metadata."""
    inside = f" (at {dataset})" if dataset else ""
    detail = str(error).strip() or type(error).__name__
    return StemFileError(
        f"{path}: this file is damaged: the HDF5 library could not read its "
        f"structure{inside} ({detail}); expected an intact HDF5 file, try a fresh copy"
    )


@contextlib.contextmanager
def h5_boundary(path, dataset: str | None = None):
    """Translate errors of the HDF5 library into one StemFileError.

    Wraps the whole metadata walk of a reader: corrupt object headers,
    B-trees or attribute messages surface from h5py as ``OSError``,
    ``RuntimeError``, ``KeyError``, ``ValueError`` or ``TypeError`` anywhere
    in that walk.
    """
    try:
        yield
    except StemFileError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        raise damaged(path, dataset, e) from None


# --------------------------------------------------------------------------
# typed metadata


def real_value(value) -> float | None:
    """A finite real number from an attribute or scalar dataset, else None.

    Strings, booleans, complex numbers, arrays of more than one value and
    non-finite values give None (the calibration then stays in pixels).
    """
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(()).item() if value.dtype.kind != "O" else value.ravel()[0]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def text_value(value, limit: int = 200) -> str | None:
    """A short text from an attribute or scalar dataset, else None."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.ravel()[0]
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, np.str_):
        value = str(value)
    if not isinstance(value, str):
        return None
    return clean_text(value, limit)


def clean_text(value: str, limit: int = 200) -> str:
    """Printable text: undecodable bytes (surrogates) and control characters replaced."""
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    value = "".join(c if c.isprintable() else "\ufffd" for c in value.strip())
    return value[:limit]


def safe_get(f, name: str, path: str | None = None):
    """``f.get(name)``, checking every external link on the way first.

    Returns None when nothing is at ``name``. An external link must name an
    existing regular file in the folder of the file that holds it (so HDF5
    never opens a FIFO, a device or a file elsewhere); soft links are
    followed (at most 16 deep).
    """
    import h5py

    path = path or f.file.filename
    return _walk(f.file, name, path, h5py, depth=0)


def _walk(f, name: str, path: str, h5py, depth: int):
    if depth > 16:
        raise StemFileError(f"{path}: soft links around {name} form a loop; damaged")
    parts = [p for p in name.split("/") if p]
    obj = f["/"]
    here = ""
    for i, part in enumerate(parts):
        if not isinstance(obj, h5py.Group):
            return None
        link = obj.get(part, getlink=True)
        if link is None:
            return None
        here = f"{here}/{part}"
        if isinstance(link, h5py.SoftLink):
            rest = "/".join(parts[i + 1 :])
            target = link.path if link.path.startswith("/") else f"{obj.name}/{link.path}"
            return _walk(f, f"{target}/{rest}" if rest else target, path, h5py, depth + 1)
        if isinstance(link, h5py.ExternalLink):
            owner = Path(path)
            fname = link.filename
            target = Path(fname) if os.path.isabs(fname) else owner.parent / fname
            check_linked_file(owner, target, f"the link {here}", "the file")
        obj = obj.get(part)
        if obj is None:
            return None
    return obj
