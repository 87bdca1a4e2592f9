"""Crystal structures shipped with the package (CIF files used by the tests and examples).

Both are entries of the Crystallography Open Database, unchanged:
``Au_fcc.cif`` is COD 9008463 (gold; Wyckoff, *Crystal Structures* 1, 1963)
and ``TiO2_rutile.cif`` is COD 9015662 (rutile; Howard, Sabine & Dickson,
*Acta Cryst.* B47, 462, 1991).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["builtin_cif"]

_FILES = {"Au": "Au_fcc.cif", "TiO2": "TiO2_rutile.cif"}


def builtin_cif(name: str) -> Path:
    """Path of a CIF file shipped with napari-stemcluster.

    Parameters
    ----------
    name : str
        ``"Au"`` (gold, fcc) or ``"TiO2"`` (rutile).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> builtin_cif("Au").name
    'Au_fcc.cif'
    """
    try:
        return Path(__file__).with_name(_FILES[name])
    except KeyError:
        raise ValueError(f"no built-in CIF named {name!r}; choose from {sorted(_FILES)}") from None
