"""Crystal structures from CIF files and their kinematical structure factors.

Conventions
-----------
* Cartesian crystal frame: gemmi's orthogonalisation (``a`` along ``x``,
  ``b`` in the ``xy`` plane). ``Structure.direct`` holds the direct basis
  vectors as columns (Å), ``Structure.reciprocal`` the reciprocal ones (Å⁻¹,
  without 2π), so ``g = reciprocal @ (h, k, l)``.
* Electron scattering factors: Peng et al. (1996), see
  :mod:`napari_stemcluster.core._scattering_factors`.
* Debye-Waller factor ``exp(-B s²)`` with ``s = |g|/2`` and
  ``B = 8π² U`` with ``U`` the CIF's ``U_iso`` (or ``B_iso``), else the
  equivalent isotropic ``U_eq`` of its anisotropic ``U``, else a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._scattering_factors import electron_scattering_coefficients

__all__ = [
    "Structure",
    "electron_wavelength",
    "load_structure",
    "reciprocal_lattice",
    "structure_factors",
    "structure_from_cif_text",
]

# Holohedral Laue group of each crystal system, for the colour key of
# inverse pole figures (the corners of its standard triangle, Cartesian).
_SQ2 = np.sqrt(0.5)
_SQ3 = np.sqrt(1.0 / 3.0)
IPF_CORNERS = {
    "cubic": np.array([[0.0, 0.0, 1.0], [_SQ2, 0.0, _SQ2], [_SQ3, _SQ3, _SQ3]]),
    "hexagonal": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [np.sqrt(0.75), 0.5, 0.0]]),
    "tetragonal": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [_SQ2, _SQ2, 0.0]]),
    "orthorhombic": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
}


def electron_wavelength(energy_kev: float) -> float:
    """Relativistic electron wavelength in Å.

    Parameters
    ----------
    energy_kev : float
        Beam energy in keV (``> 0``).

    Returns
    -------
    float

    Examples
    --------
    >>> round(electron_wavelength(300.0), 5)
    0.01969
    """
    e = float(energy_kev)
    if not np.isfinite(e) or e <= 0:
        raise ValueError(f"energy_kev must be a positive number; got {energy_kev!r}")
    h, m0, qe, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    v = e * 1e3
    p = np.sqrt(2.0 * m0 * qe * v * (1.0 + qe * v / (2.0 * m0 * c * c)))
    return float(h / p * 1e10)


@dataclass
class Structure:
    """A crystal: unit cell, every atom of the cell, and its Laue symmetry.

    Attributes
    ----------
    name : str
        Mineral or common name from the CIF, else its data-block name (or
        the file stem).
    cell : tuple of float
        ``(a, b, c, alpha, beta, gamma)`` in Å and degrees.
    spacegroup : str
        Hermann-Mauguin symbol.
    crystal_system : str
        ``"cubic"``, ``"hexagonal"``, ``"trigonal"``, ``"tetragonal"``,
        ``"orthorhombic"``, ``"monoclinic"`` or ``"triclinic"``.
    laue : str
        Laue class, for example ``"m-3m"``.
    direct : ndarray, shape (3, 3)
        Direct basis vectors ``a, b, c`` as columns, Cartesian, Å.
    reciprocal : ndarray, shape (3, 3)
        Reciprocal basis vectors as columns, Å⁻¹ (no 2π).
    positions : ndarray, shape (N, 3)
        Fractional coordinates of every atom in the unit cell.
    elements : tuple of str
        Element symbol of each atom.
    occupancy : ndarray, shape (N,)
    b_iso : ndarray, shape (N,)
        Isotropic Debye-Waller ``B`` in Å².
    laue_ops : ndarray, shape (K, 3, 3)
        The Laue group (point group plus inversion) as Cartesian matrices.
    source : str
        Path of the CIF it was read from.
    """

    name: str
    cell: tuple
    spacegroup: str
    crystal_system: str
    laue: str
    direct: np.ndarray
    reciprocal: np.ndarray
    positions: np.ndarray
    elements: tuple
    occupancy: np.ndarray
    b_iso: np.ndarray
    laue_ops: np.ndarray
    source: str = ""
    cif_text: str = field(default="", repr=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def proper_ops(self) -> np.ndarray:
        """Rotations (determinant +1) of the Laue group: orientation symmetry."""
        return self.laue_ops[np.linalg.det(self.laue_ops) > 0]

    @property
    def ipf_system(self) -> str:
        """Crystal system whose standard triangle colours inverse pole figures."""
        if self.crystal_system == "trigonal":
            return "hexagonal"
        return self.crystal_system if self.crystal_system in IPF_CORNERS else "orthorhombic"


def _laue_ops(sg, direct: np.ndarray) -> np.ndarray:
    """Cartesian matrices of the point group of ``sg`` plus inversion."""
    den = 24.0
    rots = {tuple(np.asarray(op.rot, int).ravel()) for op in sg.operations().sym_ops}
    mats = [np.asarray(r, np.float64).reshape(3, 3) / den for r in rots]
    mats = mats + [-m for m in mats]
    inv = np.linalg.inv(direct)
    out = []
    for w in mats:
        r = direct @ w @ inv
        if not any(np.allclose(r, o, atol=1e-6) for o in out):
            out.append(r)
    return np.array(out)


def _display_name(block, block_name: str, path: Path) -> str:
    """A readable name: the mineral or common name, else the block's name.

    Database entries name their block by a number (``data_9008463``), so
    the chemical name says more.
    """
    for tag in ("_chemical_name_mineral", "_chemical_name_common"):
        value = block.find_value(tag)
        if value and value not in ("?", "."):
            return _cif_string(value)
    return str(block_name or path.stem)


def _cif_string(value: str) -> str:
    """A CIF value without its quotes or text-field markers."""
    import gemmi

    return gemmi.cif.as_string(value).strip()


def _u_equivalent(site, direct: np.ndarray) -> float:
    """``U_iso`` of a site, else ``U_eq`` of its anisotropic ``U``, else 0.

    ``U_eq`` is a third of the trace of the Cartesian tensor
    ``M diag(a*) U diag(a*) Mᵀ`` (Fischer & Tillmanns 1988, *Acta Cryst.*
    C44:775). A tensor that is not positive definite (a misread or
    mis-ordered CIF loop) is not used.
    """
    if site.u_iso > 0:
        return float(site.u_iso)
    a = site.aniso
    if not a.nonzero():
        return 0.0
    u = np.array([[a.u11, a.u12, a.u13], [a.u12, a.u22, a.u23], [a.u13, a.u23, a.u33]])
    astar = np.linalg.norm(np.linalg.inv(direct), axis=1)  # |a*|, |b*|, |c*|
    cart = direct @ (astar[:, None] * u * astar[None, :]) @ direct.T
    if np.any(np.linalg.eigvalsh(cart) <= 0):
        return 0.0
    return float(np.trace(cart) / 3.0)


def load_structure(cif_path, *, b_iso_default: float = 0.5, block: str | None = None) -> Structure:
    """Read a crystal structure from a CIF file and expand it to the full cell.

    Parameters
    ----------
    cif_path : str or path-like
        CIF file with cell, space group and atom sites.
    b_iso_default : float
        Debye-Waller ``B`` (Å²) for atoms whose CIF entry has no displacement.
    block : str, optional
        Name of the CIF data block (default: the first).

    Returns
    -------
    Structure

    Raises
    ------
    FileNotFoundError, ValueError
        If the file is missing or is not a readable crystal structure; the
        message names the file.

    Examples
    --------
    >>> from napari_stemcluster.data import builtin_cif
    >>> au = load_structure(builtin_cif("Au"))
    >>> au.spacegroup, au.laue, len(au.positions), len(au.proper_ops)
    ('F m -3 m', 'm-3m', 4, 24)
    """

    path = Path(os.fspath(cif_path))
    if not path.is_file():
        raise FileNotFoundError(f"CIF file {path} does not exist")
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from exc
    return structure_from_cif_text(text, source=str(path), b_iso_default=b_iso_default, block=block)


def structure_from_cif_text(
    text: str, *, source: str = "", b_iso_default: float = 0.5, block: str | None = None
) -> Structure:
    """Like :func:`load_structure`, from the text of a CIF file.

    Parameters
    ----------
    text : str
        The CIF file's content.
    source : str
        Where it came from (used in messages and kept in the structure).
    b_iso_default : float
        Debye-Waller ``B`` (Å²) for atoms without a displacement parameter.
    block : str, optional
        Name of the data block (default: the first).

    Returns
    -------
    Structure

    Examples
    --------
    >>> from napari_stemcluster.data import builtin_cif
    >>> st = structure_from_cif_text(builtin_cif("TiO2").read_text())
    >>> st.spacegroup, len(st.positions)
    ('P 42/m n m', 6)
    """
    import gemmi

    path = Path(source or "<CIF text>")
    try:
        doc = gemmi.cif.read_string(text)
        blk = doc.sole_block() if block is None and len(doc) == 1 else None
        if blk is None:
            blk = doc[0] if block is None else doc.find_block(block)
        if blk is None:
            raise ValueError(f"no data block named {block!r}")
        st = gemmi.make_small_structure_from_block(blk)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ValueError(f"{path}: not a readable CIF crystal structure ({exc})") from exc
    sg = st.spacegroup
    if sg is None:
        name = st.spacegroup_hm or st.spacegroup_hall
        sg = gemmi.find_spacegroup_by_name(name) if name else None
    if sg is None:
        raise ValueError(
            f"{path}: no space group found (expected _space_group_name_H-M_alt, "
            "_symmetry_space_group_name_H-M or symmetry operations)"
        )
    if st.cell.volume <= 0 or not np.isfinite(st.cell.volume):
        raise ValueError(f"{path}: the unit cell is missing or degenerate ({st.cell})")
    sites = st.get_all_unit_cell_sites()
    if not sites:
        raise ValueError(f"{path}: no atom sites (_atom_site_fract_x/y/z) found")
    direct = np.array(st.cell.orth.mat.tolist(), np.float64)
    pos = np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites]) % 1.0
    elements = tuple(s.element.name for s in sites)
    for s, el in zip(sites, elements, strict=True):
        if s.element.atomic_number == 0:
            raise ValueError(f"{path}: atom site {s.label!r} has no known element ({el!r})")
    u = np.array([_u_equivalent(s, direct) for s in sites], np.float64)
    b = np.where(u > 0, 8.0 * np.pi**2 * u, float(b_iso_default))
    occ = np.array([s.occ for s in sites], np.float64)
    c = st.cell
    return Structure(
        name=_display_name(blk, st.name, path),
        cif_text=text,
        cell=(c.a, c.b, c.c, c.alpha, c.beta, c.gamma),
        spacegroup=sg.hm,
        crystal_system=sg.crystal_system_str(),
        laue=sg.laue_str(),
        direct=direct,
        reciprocal=np.linalg.inv(direct).T,
        positions=pos,
        elements=elements,
        occupancy=occ,
        b_iso=b,
        laue_ops=_laue_ops(sg, direct),
        source=str(source),
    )


def structure_factors(structure: Structure, hkl) -> np.ndarray:
    """Kinematical electron structure factors ``F(hkl)`` in Å.

    ``F = Σ_j occ_j f_j(s) exp(-B_j s²) exp(2πi h·x_j)`` with ``s = |g|/2``.

    Parameters
    ----------
    structure : Structure
    hkl : array_like of int, shape (..., 3)

    Returns
    -------
    ndarray of complex128, shape (...)

    Examples
    --------
    >>> from napari_stemcluster.data import builtin_cif
    >>> au = load_structure(builtin_cif("Au"))
    >>> np.abs(structure_factors(au, [[1, 0, 0], [2, 0, 0]])).round(2)
    array([ 0.  , 23.77])
    """
    h = np.asarray(hkl, np.float64)
    if h.shape[-1:] != (3,):
        raise ValueError(f"hkl must have shape (..., 3); got {h.shape}")
    g = h @ structure.reciprocal.T
    s2 = 0.25 * np.einsum("...i,...i->...", g, g)
    out = np.zeros(h.shape[:-1], np.complex128)
    for el in sorted(set(structure.elements)):
        a, b = electron_scattering_coefficients(el)
        f = np.sum(a * np.exp(-b * s2[..., None]), axis=-1)
        sel = np.array([e == el for e in structure.elements])
        phase = np.exp(2j * np.pi * (h @ structure.positions[sel].T))
        dw = np.exp(-structure.b_iso[sel] * s2[..., None]) * structure.occupancy[sel]
        out += f * np.sum(phase * dw, axis=-1)
    return out


def reciprocal_lattice(structure: Structure, g_max: float, *, min_rel: float = 1e-6):
    """Every allowed reflection with ``0 < |g| <= g_max``.

    Parameters
    ----------
    structure : Structure
    g_max : float
        Largest ``|g|`` in Å⁻¹.
    min_rel : float
        Drop reflections with ``|F|²`` below this fraction of the strongest
        (systematic absences).

    Returns
    -------
    hkl : ndarray of int32, shape (N, 3)
    g : ndarray of float64, shape (N, 3)
        Cartesian reciprocal vectors, Å⁻¹.
    intensity : ndarray of float64, shape (N,)
        ``|F|²`` in Å².

    Examples
    --------
    >>> from napari_stemcluster.data import builtin_cif
    >>> au = load_structure(builtin_cif("Au"))
    >>> hkl, g, i = reciprocal_lattice(au, 0.45)
    >>> len(hkl), sorted({int(abs(x).sum()) for x in hkl})
    (8, [3])
    """
    g_max = float(g_max)
    if not np.isfinite(g_max) or g_max <= 0:
        raise ValueError(f"g_max must be a positive number of 1/Å; got {g_max!r}")
    key = ("lattice", round(g_max, 9), float(min_rel))
    if key in structure._cache:
        return structure._cache[key]
    lengths = np.linalg.norm(structure.direct, axis=0)
    n = np.floor(g_max * lengths).astype(int)
    axes = [np.arange(-k, k + 1) for k in n]
    hkl = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    g = hkl @ structure.reciprocal.T
    gn = np.linalg.norm(g, axis=1)
    keep = (gn > 0) & (gn <= g_max)
    hkl, g = hkl[keep], g[keep]
    inten = np.abs(structure_factors(structure, hkl)) ** 2
    if inten.size:
        keep = inten > float(min_rel) * inten.max()
        hkl, g, inten = hkl[keep], g[keep], inten[keep]
    out = (hkl.astype(np.int32), g, inten)
    structure._cache[key] = out
    return out
