"""Electron scattering factors of neutral atoms.

The parametrisation is the five-Gaussian fit of Peng, Ren, Dudarev and Whelan
(1996), *Acta Cryst.* A52, 257-276, tabulated in International Tables for
Crystallography Vol. C, Table 4.3.2.2 (elastic scattering, ``0 <= s <= 2``
Å⁻¹ with ``s = sin(θ)/λ = g/2``)::

    f_e(s) = sum_i a_i exp(-b_i s²)      (Å)

The coefficients of every element are read from gemmi's copy of that table
(``gemmi.Element(symbol).c4322``); ``tests/test_crystal.py`` checks them
against values typed in from the paper.
"""

from __future__ import annotations

from functools import cache

import numpy as np

__all__ = ["electron_scattering_coefficients", "electron_scattering_factor"]


@cache
def electron_scattering_coefficients(element: str) -> tuple[np.ndarray, np.ndarray]:
    """The five ``a_i`` (Å) and ``b_i`` (Å²) of Peng et al. (1996) for an element.

    Parameters
    ----------
    element : str
        Element symbol, for example ``"Au"`` (case-insensitive).

    Returns
    -------
    a, b : ndarray of float64, shape (5,)

    Raises
    ------
    ValueError
        If the symbol is not a chemical element.

    Examples
    --------
    >>> a, b = electron_scattering_coefficients("O")
    >>> a.round(4)
    array([0.0974, 0.2921, 0.691 , 0.699 , 0.2039])
    """
    import gemmi

    el = gemmi.Element(str(element).strip())
    if el.atomic_number == 0:
        raise ValueError(f"{element!r} is not a chemical element symbol")
    coefs = np.asarray(el.c4322.get_coefs(), np.float64)
    return coefs[:5].copy(), coefs[5:].copy()


def electron_scattering_factor(element: str, s) -> np.ndarray:
    """Elastic electron scattering amplitude ``f_e(s)`` in Å.

    Parameters
    ----------
    element : str
        Element symbol.
    s : array_like
        ``sin(θ)/λ = |g| / 2`` in Å⁻¹.

    Returns
    -------
    ndarray of float64, the shape of ``s``

    Examples
    --------
    >>> float(electron_scattering_factor("Au", 0.0).round(3))
    10.571
    """
    a, b = electron_scattering_coefficients(element)
    s2 = np.square(np.asarray(s, np.float64))
    return np.sum(a * np.exp(-b * s2[..., None]), axis=-1)
