"""The output policy shared by the API and the command line.

One rule decides whether a results file may be written at a path
(:func:`check_output`), and one helper writes any output through a uniquely
named temporary file in the target folder that is removed on every exit path
(:func:`atomic_output`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import StemFileError


def check_output(
    path: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
    option: str = "overwrite=True",
) -> Path:
    """Refuse a results path that must not be written; returns it absolute.

    The rule: never a directory, never the source data file, never an
    existing file that is not an earlier results file of napari-stemcluster
    (4D/5D data, text, other HDF5 files); an earlier results file only with
    ``overwrite`` (``--overwrite`` on the command line).

    Raises
    ------
    FileExistsError
        The file exists and ``overwrite`` is not set.
    StemFileError
        The path is a directory, the source, or a file that is not a
        results file; its folder cannot be written.
    FileNotFoundError
        The folder does not exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = p.write_text("my notes")
    >>> try:
    ...     check_output(p, overwrite=True)
    ... except StemFileError as e:
    ...     print(str(e).split(": ", 1)[1][:43])
    is not a results file of napari-stemcluster
    """
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise StemFileError(f"{path}: is a directory; give the results file name")
    if source is not None and _same(path, Path(source)):
        raise StemFileError(
            f"{path}: is the source data file of this result; refusing to overwrite "
            "it, choose another file name"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: directory does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StemFileError(f"{path.parent}: permission denied; cannot write {path.name} here")
    if not (path.exists() or path.is_symlink()):
        return path
    from . import detect_format

    try:
        kind = detect_format(path)
    except StemFileError:
        kind = None
    except PermissionError:
        raise StemFileError(f"{path}: permission denied") from None
    if kind not in (None, "results"):
        raise StemFileError(
            f"{path}: holds 4D/5D-STEM data ({kind}); refusing to overwrite it "
            "with results, choose another file name"
        )
    if kind is None:
        raise StemFileError(
            f"{path}: is not a results file of napari-stemcluster; refusing to replace "
            "it, choose another file name"
        )
    if not overwrite:
        raise FileExistsError(f"{path}: exists; pass {option} to replace it")
    return path


def _same(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return a == Path(os.path.abspath(b))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A unique temporary path beside ``path``, renamed over it on success.

    The temporary file is removed on every error and on ``KeyboardInterrupt``
    (``SystemExit`` included); the previous ``path`` stays as it was. A
    folder that cannot be written becomes a :class:`StemFileError` naming it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_output(p) as tmp:
    ...     _ = tmp.write_text("done")
    >>> p.read_text(), sorted(x.name for x in p.parent.iterdir())
    ('done', ['out.txt'])
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError:
        raise StemFileError(
            f"{path.parent}: permission denied; cannot write {path.name} here"
        ) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except PermissionError:
        raise StemFileError(f"{path}: permission denied") from None
    finally:
        tmp.unlink(missing_ok=True)
