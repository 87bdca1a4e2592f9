"""Crystal structures from CIF files, scattering factors and structure factors."""

import numpy as np
import pytest

from napari_stemcluster.core import load_structure, structure_factors
from napari_stemcluster.core._scattering_factors import (
    electron_scattering_coefficients,
    electron_scattering_factor,
)
from napari_stemcluster.core.crystal import electron_wavelength, reciprocal_lattice
from napari_stemcluster.data import builtin_cif

# Peng, Ren, Dudarev & Whelan (1996), Acta Cryst. A52, 257, Table 1 (0 <= s <= 2 1/Å),
# typed in from the paper: a1..a5 (Å), b1..b5 (Å²).
PENG_1996 = {
    "O": ([0.0974, 0.2921, 0.6910, 0.6990, 0.2039], [0.2067, 1.3815, 4.6943, 12.7105, 32.4726]),
    "Au": ([0.9674, 1.8916, 3.3993, 3.0524, 1.2607], [0.2358, 1.4712, 5.6758, 18.7119, 61.5286]),
}


A_AU = 4.07825  # COD 9008463


@pytest.fixture(scope="module")
def au():
    return load_structure(builtin_cif("Au"))


@pytest.fixture(scope="module")
def rutile():
    return load_structure(builtin_cif("TiO2"))


@pytest.mark.parametrize("element", sorted(PENG_1996))
def test_scattering_coefficients_are_peng_1996(element):
    a, b = electron_scattering_coefficients(element)
    np.testing.assert_allclose(a, PENG_1996[element][0], atol=5e-5)
    np.testing.assert_allclose(b, PENG_1996[element][1], atol=5e-5)


def test_scattering_factor_is_the_gaussian_sum():
    a, b = map(np.array, PENG_1996["Au"])
    s = np.array([0.0, 0.1, 0.5, 1.5])
    expected = [(a * np.exp(-b * x * x)).sum() for x in s]
    np.testing.assert_allclose(electron_scattering_factor("Au", s), expected, rtol=1e-5)
    assert np.all(np.diff(electron_scattering_factor("Au", s)) < 0)
    with pytest.raises(ValueError, match="not a chemical element"):
        electron_scattering_coefficients("Xx")


@pytest.mark.parametrize(("kev", "angstrom"), [(100, 0.03701), (200, 0.02508), (300, 0.01969)])
def test_electron_wavelength(kev, angstrom):
    assert electron_wavelength(kev) == pytest.approx(angstrom, abs=1e-5)


def test_electron_wavelength_rejects_nonpositive():
    with pytest.raises(ValueError, match="positive"):
        electron_wavelength(0)


def test_gold_cell_and_symmetry(au):
    assert au.crystal_system == "cubic" and au.laue == "m-3m"
    np.testing.assert_allclose(au.cell, (A_AU,) * 3 + (90.0,) * 3)
    expected = {(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)}
    assert {tuple(np.round(p, 6) + 0.0) for p in au.positions} == expected
    assert set(au.elements) == {"Au"}
    # COD 9008463 gives no displacement: the default B
    np.testing.assert_allclose(au.b_iso, 0.5)
    assert len(au.laue_ops) == 48 and len(au.proper_ops) == 24


@pytest.mark.parametrize("name", ["Au", "TiO2"])
def test_laue_group_is_an_orthogonal_group(name):
    st = load_structure(builtin_cif(name))
    ops = st.laue_ops
    for r in ops:
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
    # closed under products, contains the inversion
    for a in ops[:: max(1, len(ops) // 8)]:
        for b in ops:
            assert np.any(np.all(np.abs(ops - a @ b) < 1e-9, axis=(1, 2)))
    assert np.any(np.all(np.abs(ops + np.eye(3)) < 1e-9, axis=(1, 2)))


def test_rutile_expanded_from_asymmetric_unit(rutile):
    assert rutile.crystal_system == "tetragonal" and rutile.laue == "4/mmm"
    assert sorted(rutile.elements) == ["O"] * 4 + ["Ti"] * 2
    ti = rutile.positions[np.array(rutile.elements) == "Ti"]
    assert {tuple(np.round(p, 6) + 0.0) for p in ti} == {(0, 0, 0), (0.5, 0.5, 0.5)}
    o = rutile.positions[np.array(rutile.elements) == "O"]
    x = 0.30478
    expected = {(x, x, 0), (1 - x, 1 - x, 0), (0.5 + x, 0.5 - x, 0.5), (0.5 - x, 0.5 + x, 0.5)}
    assert {tuple(np.round(p, 6) + 0.0) for p in o} == {tuple(np.round(e, 6)) for e in expected}
    assert len(rutile.laue_ops) == 16 and len(rutile.proper_ops) == 8


def _plain_f(st, hkl):
    """Structure factor by an explicit loop over atoms."""
    h = np.asarray(hkl, float)
    g = st.reciprocal @ h
    s = np.linalg.norm(g) / 2
    total = 0j
    for x, el, occ, b in zip(st.positions, st.elements, st.occupancy, st.b_iso, strict=True):
        a, bb = electron_scattering_coefficients(el)
        f = sum(ai * np.exp(-bi * s * s) for ai, bi in zip(a, bb, strict=True))
        total += occ * f * np.exp(-b * s * s) * np.exp(2j * np.pi * np.dot(h, x))
    return total


def test_fcc_extinctions_and_values(au):
    hkl = np.array([[1, 0, 0], [1, 1, 0], [2, 1, 0], [1, 1, 1], [2, 0, 0], [2, 2, 0], [3, 1, 1]])
    f = structure_factors(au, hkl)
    mixed = np.array([len({v % 2 for v in h}) > 1 for h in hkl])
    assert np.all(np.abs(f[mixed]) < 1e-9)
    for h, v in zip(hkl[~mixed], f[~mixed], strict=True):
        s = np.linalg.norm(h) / A_AU / 2
        fe = electron_scattering_factor("Au", s) * np.exp(-au.b_iso[0] * s * s)
        assert v == pytest.approx(4 * fe, rel=1e-9)


def test_rutile_structure_factors_match_plain_sum_and_glides(rutile):
    hkl = np.array([[1, 1, 0], [1, 0, 1], [2, 1, 1], [0, 0, 2], [3, 1, 0], [2, 1, 0]])
    f = structure_factors(rutile, hkl)
    for h, v in zip(hkl, f, strict=True):
        assert v == pytest.approx(_plain_f(rutile, h), rel=1e-9, abs=1e-12)
    # 4_2 screw: 00l with l odd absent; n glide: 0kl with k + l odd absent
    absent = structure_factors(rutile, [[0, 0, 1], [0, 0, 3], [0, 1, 0], [0, 3, 0], [0, 1, 2]])
    assert np.all(np.abs(absent) < 1e-9)


def test_debye_waller_lowers_high_angle_reflections(au):
    cold = load_structure(builtin_cif("Au"))
    cold.b_iso = np.zeros_like(cold.b_iso)
    hkl = [[2, 2, 0], [6, 2, 0]]
    ratio = np.abs(structure_factors(au, hkl)) / np.abs(structure_factors(cold, hkl))
    assert 0 < ratio[1] < ratio[0] < 1


def test_reciprocal_lattice_matches_enumeration(au):
    g_max = 1.0
    hkl, g, f2 = reciprocal_lattice(au, g_max)
    rng = range(-5, 6)
    expected = {
        (h, k, l)
        for h in rng
        for k in rng
        for l in rng  # noqa: E741
        if (h, k, l) != (0, 0, 0)
        and len({h % 2, k % 2, l % 2}) == 1
        and np.sqrt(h * h + k * k + l * l) / A_AU <= g_max
    }
    assert {tuple(h) for h in hkl.tolist()} == expected
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), np.linalg.norm(hkl, axis=1) / A_AU)
    np.testing.assert_allclose(f2, np.abs(structure_factors(au, hkl)) ** 2)
    with pytest.raises(ValueError, match="g_max"):
        reciprocal_lattice(au, -1)


def test_load_structure_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.cif"):
        load_structure(tmp_path / "missing.cif")
    bad = tmp_path / "bad.cif"
    bad.write_text("this is not a CIF file\n")
    with pytest.raises(ValueError, match=r"bad\.cif"):
        load_structure(bad)
    no_atoms = tmp_path / "no_atoms.cif"
    no_atoms.write_text(
        "data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
        "_space_group_name_H-M_alt 'P 1'\n"
    )
    with pytest.raises(ValueError, match=r"no_atoms\.cif.*no atom sites"):
        load_structure(no_atoms)


def test_load_structure_leaves_the_file_alone(tmp_path):
    src = builtin_cif("TiO2").read_bytes()
    path = tmp_path / "r.cif"
    path.write_bytes(src)
    load_structure(path)
    assert path.read_bytes() == src


@pytest.mark.parametrize(
    ("name", "cod_id", "formula", "spacegroup", "mineral"),
    [
        ("Au", "9008463", "Au", "F m -3 m", "Gold"),
        ("TiO2", "9015662", "'O2 Ti'", "P 42/m n m", "Rutile"),
    ],
)
def test_shipped_cifs_are_cod_entries(name, cod_id, formula, spacegroup, mineral):
    import gemmi

    block = gemmi.cif.read(str(builtin_cif(name))).sole_block()
    assert block.find_value("_cod_database_code") == cod_id
    assert block.name == cod_id
    assert block.find_value("_chemical_formula_sum") == formula
    st = load_structure(builtin_cif(name))
    assert st.spacegroup == spacegroup
    assert st.name == mineral  # not the block's number


def _cif(tmp_path, cell, site_loops):
    a, b, c, al, be, ga = cell
    text = (
        f"data_t\n_cell_length_a {a}\n_cell_length_b {b}\n_cell_length_c {c}\n"
        f"_cell_angle_alpha {al}\n_cell_angle_beta {be}\n_cell_angle_gamma {ga}\n"
        "_space_group_name_H-M_alt 'P 1'\n" + site_loops
    )
    path = tmp_path / "t.cif"
    path.write_text(text)
    return path


def test_debye_waller_from_b_iso_and_anisotropic_u(tmp_path):
    cell = (5.1, 6.3, 7.2, 80.0, 95.0, 105.0)
    sites = (
        "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n"
        "_atom_site_fract_y\n_atom_site_fract_z\n"
        "Fe1 Fe 0.1 0.2 0.3\nO1 O 0.6 0.7 0.8\nO2 O 0.3 0.1 0.5\nC1 C 0.9 0.4 0.2\n"
    )
    st = load_structure(_cif(tmp_path, cell, sites))
    # an isotropic U of 0.01 Å² written as CIF U^ij: U (a*_i . a*_j) / (|a*_i| |a*_j|)
    rec = st.reciprocal
    gstar = rec.T @ rec
    n = np.sqrt(np.diag(gstar))
    uij = 0.01 * gstar / np.outer(n, n)
    # an elongated, still positive-definite tensor: U_eq is a third of its trace
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    cart = rot @ np.diag([0.004, 0.01, 0.022]) @ rot.T
    direct_inv = np.linalg.inv(st.direct)
    u_ell = (direct_inv @ cart @ direct_inv.T) / np.outer(n, n)
    rows = []
    for label, u in (("Fe1", uij), ("O1", u_ell)):
        rows.append(f"{label} {u[0, 0]} {u[1, 1]} {u[2, 2]} {u[0, 1]} {u[0, 2]} {u[1, 2]}")
    rows.append("O2 0.01 -0.002 0.0 0.01 0.0 0.004")  # not positive definite: ignored
    aniso = (
        "loop_\n_atom_site_aniso_label\n_atom_site_aniso_U_11\n_atom_site_aniso_U_22\n"
        "_atom_site_aniso_U_33\n_atom_site_aniso_U_12\n_atom_site_aniso_U_13\n"
        "_atom_site_aniso_U_23\n" + "\n".join(rows) + "\n"
    )
    sites_b = sites.replace(
        "_atom_site_fract_z\n", "_atom_site_fract_z\n_atom_site_B_iso_or_equiv\n"
    )
    sites_b = sites_b.replace("0.9 0.4 0.2", "0.9 0.4 0.2 1.5").replace(
        "0.3 0.1 0.5", "0.3 0.1 0.5 ?"
    )
    for line in ("0.1 0.2 0.3", "0.6 0.7 0.8"):
        sites_b = sites_b.replace(line, line + " ?")
    st = load_structure(_cif(tmp_path, cell, sites_b + aniso), b_iso_default=0.7)
    b = dict(zip([f"{e}{i}" for i, e in enumerate(st.elements)], st.b_iso, strict=True))
    assert b["Fe0"] == pytest.approx(8 * np.pi**2 * 0.01, rel=1e-6)
    assert b["O1"] == pytest.approx(8 * np.pi**2 * (0.004 + 0.01 + 0.022) / 3, rel=1e-6)
    assert b["O2"] == pytest.approx(0.7)  # mis-ordered U^ij: the default
    assert b["C3"] == pytest.approx(1.5)  # B_iso_or_equiv
    # the shipped rutile entry's U^ij loop is mis-ordered (U_22 < 0): the default
    np.testing.assert_allclose(load_structure(builtin_cif("TiO2")).b_iso, 0.5)
