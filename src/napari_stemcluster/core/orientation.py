"""Crystal orientation and phase by kinematical template matching.

The approach follows the sparse-correlation orientation mapping of Ophus et
al. (2022, *Microsc. Microanal.* 28:390), written from the paper:

1. **Library.** Beam directions are sampled evenly (a Fibonacci sphere with
   the user's angular step) and kept when they lie in the fundamental zone of
   the rotations of the crystal's Laue group (their Dirichlet cell about a
   point inside the standard triangle), plus the low-index zone axes. For each direction the
   kinematical spots are computed: positions from the reciprocal lattice,
   intensities ``|F|²`` weighted by a Gaussian in the excitation error ``s``
   whose width combines the crystal's ``σ_s`` and the probe convergence
   ``α|g|``; only ``|g| <= g_max`` (the largest scattering angle).
2. **In-plane rotation by a polar transform.** The spots of all templates
   fall on a few radial shells (the distinct ``|g|`` of the crystal). Each
   template is stored as the angular Fourier series of its spots on each
   shell; the measured disks are projected on the same shells as Gaussians.
   The correlation of a template with the pattern *for every in-plane angle*
   is then one inverse FFT of ``Σ_shells T̂·Ê``: no loop over in-plane angles.
3. **Refinement.** The best few candidates are rescored with the exact
   two-dimensional overlap of Gaussian spots (a cosine similarity between the
   template and the measured disk pattern) and the best one is refined in all
   three rotation angles (Nelder-Mead) with spots recomputed from the full
   reciprocal lattice, which gives sub-degree precision.

Conventions
-----------
* Lab frame: ``x`` is the detector's first axis (``qx``, rows), ``y`` its
  second (``qy``, columns), ``z = x × y`` is the beam direction.
* ``rotation`` maps crystal Cartesian vectors (see
  :mod:`napari_stemcluster.core.crystal`) to the lab: a reflection ``g``
  appears on the detector at ``center + (R g)[:2] / q_pixel_size``.
* ``inplane_deg`` is the angle from lab ``x`` towards ``y`` of the crystal's
  ``a`` axis (``b`` when ``a`` is nearly along the beam) made perpendicular
  to the beam. ``zone_axis`` is the beam direction as integer direct-lattice
  indices ``[uvw]`` (largest index at most 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._orientation_numba import (
    SINC2_SIGMA,
    _angular_series,
    _aperture_disks,
    _nelder_mead,
    _overlap_score,
    _overlap_scores,
    _template_sums,
)
from .crystal import IPF_CORNERS, Structure, electron_wavelength, reciprocal_lattice

__all__ = [
    "ORIENTATION_DTYPE",
    "OrientationLibrary",
    "OrientationResult",
    "ipf_color_key",
    "ipf_colors",
    "kinematical_spots",
    "match_orientations",
    "misorientation_deg",
    "orient_clusters",
    "orientation_library",
    "orientation_maps",
    "reference_lattice",
    "simulate_pattern",
    "zone_axis_twin",
]

ORIENTATION_DTYPE = np.dtype(
    [
        ("rotation", np.float64, (3, 3)),
        ("zone_axis", np.int32, (3,)),
        ("inplane_deg", np.float64),
        ("score", np.float64),
        ("confidence", np.float64),
        ("phase", np.int32),
        ("phase_confidence", np.float64),
        ("n_disks", np.int32),
        ("indexed", np.bool_),
        ("center", np.float64, (2,)),
    ]
)


# ---------------------------------------------------------------- geometry
def _rot_z(phi: np.ndarray) -> np.ndarray:
    c, s = np.cos(phi), np.sin(phi)
    out = np.zeros(np.shape(phi) + (3, 3))
    out[..., 0, 0], out[..., 0, 1] = c, -s
    out[..., 1, 0], out[..., 1, 1] = s, c
    out[..., 2, 2] = 1.0
    return out


def _rotvec(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (radians), Rodrigues' formula."""
    w = np.asarray(w, np.float64)
    t = float(np.linalg.norm(w))
    if t < 1e-15:
        return np.eye(3)
    k = w / t
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(t) * kx + (1.0 - np.cos(t)) * (kx @ kx)


def _reference_axis(structure: Structure, v: np.ndarray) -> np.ndarray:
    """Crystal ``a`` (or ``b`` when ``a`` ~ ``v``) made perpendicular to ``v``."""
    a = structure.direct[:, 0] / np.linalg.norm(structure.direct[:, 0])
    b = structure.direct[:, 1] / np.linalg.norm(structure.direct[:, 1])
    ref = np.where(np.abs(v @ a)[..., None] > 0.99, b, a)
    ref = ref - np.sum(ref * v, axis=-1, keepdims=True) * v
    return ref / np.linalg.norm(ref, axis=-1, keepdims=True)


def _base_rotations(structure: Structure, v: np.ndarray) -> np.ndarray:
    """Rotations mapping beam directions ``v`` (crystal) to lab ``z``, in-plane 0."""
    x = _reference_axis(structure, v)
    y = np.cross(v, x)
    return np.stack([x, y, v], axis=-2)


def _inplane_deg(structure: Structure, rotation: np.ndarray) -> float:
    v = rotation[2]  # crystal vector along the beam
    ref = rotation @ _reference_axis(structure, v)
    return float(np.degrees(np.arctan2(ref[1], ref[0])) % 360.0)


def _fz_weight(structure: Structure) -> np.ndarray:
    """A point inside the standard triangle: its Dirichlet cell is the fundamental zone."""
    c = IPF_CORNERS[structure.ipf_system]
    w = c.sum(axis=0) + np.array([0.0123, 0.0071, 0.0037])
    return w / np.linalg.norm(w)


def _to_fundamental(structure: Structure, v: np.ndarray) -> np.ndarray:
    """Symmetry-equivalent beam directions inside the fundamental zone."""
    w = _fz_weight(structure)
    images = np.einsum("kij,...j->...ki", structure.proper_ops, v)
    best = np.argmax(images @ w, axis=-1)
    return np.take_along_axis(images, best[..., None, None], axis=-2)[..., 0, :]


def _fibonacci_sphere(step_deg: float) -> np.ndarray:
    n = max(8, int(np.ceil(4.0 * np.pi / np.radians(step_deg) ** 2)))
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _zone_axes(structure: Structure, max_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer ``[uvw]`` with coprime entries and their Cartesian unit vectors."""
    r = np.arange(-max_index, max_index + 1)
    uvw = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    uvw = uvw[np.any(uvw != 0, axis=1)]
    uvw = uvw[np.gcd.reduce(np.abs(uvw), axis=1) == 1]
    cart = uvw @ structure.direct.T
    return uvw, cart / np.linalg.norm(cart, axis=1, keepdims=True)


def _zone_axis(structure: Structure, v: np.ndarray, max_index: int = 7) -> np.ndarray:
    key = ("zone_axes", max_index)
    if key not in structure._cache:
        structure._cache[key] = _zone_axes(structure, max_index)
    uvw, cart = structure._cache[key]
    return uvw[int(np.argmax(cart @ v))].astype(np.int32)


def misorientation_deg(rot_a, rot_b, structure: Structure) -> np.ndarray:
    """Smallest rotation angle between orientations, modulo the crystal symmetry.

    Orientations ``R`` and ``R @ S`` are the same for every rotation ``S`` of
    the Laue group (they give the same kinematical pattern).

    Parameters
    ----------
    rot_a, rot_b : array_like, shape (..., 3, 3)
        Rotations crystal → lab (broadcast against each other).
    structure : Structure

    Returns
    -------
    ndarray of float64, shape (...)
        Angle in degrees, ``0 <= angle <= 180``.

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> au = load_structure(builtin_cif("Au"))
    >>> four_fold = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    >>> float(misorientation_deg(np.eye(3), four_fold, au).round(6))
    0.0
    """
    a = np.asarray(rot_a, np.float64)
    b = np.asarray(rot_b, np.float64)
    ops = structure.proper_ops
    # trace(A^T B S) for every symmetry rotation S, without forming the products
    d = np.einsum("...ji,...jk->...ik", a, b)
    tr = np.einsum("...ik,ski->...s", d, ops)
    c = np.clip((tr.max(axis=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(c))


def zone_axis_twin(rotation, structure: Structure) -> np.ndarray:
    """The orientation rotated 180° about its zone axis.

    Reflections of the zero-order Laue zone of ``[uvw]`` are perpendicular
    to it, so this rotation takes each of them to its Friedel mate ``-g``,
    which has the same kinematical intensity and excitation error: the two
    orientations give the same pattern whenever only that zone is excited.
    When ``[uvw]`` is an even-fold axis of the crystal they are the same
    orientation; otherwise (for example ``[111]`` of a cubic crystal) no
    kinematical template matching tells them apart, and
    :func:`match_orientations` reports a confidence near 0.

    Parameters
    ----------
    rotation : array_like, shape (3, 3)
        Crystal → lab.
    structure : Structure

    Returns
    -------
    ndarray, shape (3, 3)

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> au = load_structure(builtin_cif("Au"))
    >>> float(misorientation_deg(np.eye(3), zone_axis_twin(np.eye(3), au), au))  # [001]: 4-fold
    0.0
    """
    r = np.asarray(rotation, np.float64)
    u = structure.direct @ _zone_axis(structure, r[2]).astype(np.float64)
    u /= np.linalg.norm(u)
    return r @ (2.0 * np.outer(u, u) - np.eye(3))


# ---------------------------------------------------------------- spots
def _excitation_weight(
    g_lab: np.ndarray, wavelength: float, sigma_s, alpha: float, thickness: float = 0.0
):
    """Weight of each reflection from its excitation error ``s``.

    Without a thickness, a Gaussian of width ``sqrt(σ_s² + (α g⊥)²)``. With
    a slab of ``thickness`` t (Å), its shape function ``sinc²(t s)``
    (``np.sinc(x) = sin(πx)/(πx)``), whose central lobe a convergent probe
    widens: ``s`` is scaled by ``sqrt(1 + (α g⊥ / w₀)²)`` with
    ``w₀ = 0.376 / t`` the Gaussian width of that lobe.
    """
    gz = g_lab[..., 2]
    g2 = np.einsum("...i,...i->...", g_lab, g_lab)
    s = gz + 0.5 * wavelength * g2  # distance from the Ewald sphere
    if thickness > 0:
        w0 = SINC2_SIGMA / thickness
        return np.sinc(thickness * s / np.sqrt(1.0 + alpha**2 * (g2 - gz * gz) / w0**2)) ** 2
    sig2 = np.square(sigma_s) + alpha**2 * (g2 - gz * gz)
    return np.exp(-0.5 * s * s / sig2)


@dataclass
class OrientationLibrary:
    """Kinematical templates of one crystal over its fundamental zone.

    Build it with :func:`orientation_library`. Angular Fourier coefficients of
    each template are stored per radial shell in a sparse layout: rows
    ``offsets[t]:offsets[t + 1]`` of ``entry_shell``/``entry_fft`` belong to
    template ``t``.
    """

    structure: Structure
    energy_kev: float
    wavelength: float
    q_pixel_size: float
    g_max: float
    sigma_excitation: float
    convergence_mrad: float
    step_deg: float
    intensity_power: float
    n_angles: int
    directions: np.ndarray
    base: np.ndarray
    shells: np.ndarray
    offsets: np.ndarray
    entry_shell: np.ndarray
    entry_fft: np.ndarray
    entry_norm2: np.ndarray
    hkl: np.ndarray
    g: np.ndarray
    f2: np.ndarray
    thickness: float = 0.0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.directions.shape[0])

    @property
    def params(self) -> dict:
        """The parameters that rebuild this library (JSON-serialisable)."""
        return {
            "cif": self.structure.source,
            "energy_kev": self.energy_kev,
            "q_pixel_size": self.q_pixel_size,
            "g_max": self.g_max,
            "sigma_excitation": self.sigma_excitation,
            "convergence_mrad": self.convergence_mrad,
            "step_deg": self.step_deg,
            "intensity_power": self.intensity_power,
            "n_angles": self.n_angles,
            "thickness_nm": self.thickness / 10.0,
        }

    def spots(self, rotation, *, min_weight: float = 0.01):
        """Kinematical spots for one orientation; see :func:`kinematical_spots`."""
        return kinematical_spots(self, rotation, min_weight=min_weight)


def orientation_library(
    structure: Structure,
    energy_kev: float,
    q_pixel_size: float,
    *,
    step_deg: float = 2.0,
    max_angle_mrad: float | None = 30.0,
    g_max: float | None = None,
    sigma_excitation: float = 0.02,
    convergence_mrad: float = 0.0,
    intensity_power: float = 1.0,
    n_angles: int = 180,
    min_weight: float = 0.01,
    zone_axis_index: int = 3,
    thickness_nm: float = 0.0,
) -> OrientationLibrary:
    """Kinematical diffraction templates over the crystal's fundamental zone.

    Parameters
    ----------
    structure : Structure
        From :func:`napari_stemcluster.core.load_structure`.
    energy_kev : float
        Beam energy (keV).
    q_pixel_size : float
        Detector calibration, Å⁻¹ per pixel.
    step_deg : float
        Angular spacing of the sampled beam directions (degrees).
    max_angle_mrad : float, optional
        Largest scattering angle (full angle ``2θ``, mrad); sets
        ``g_max = angle / λ``. Ignored when ``g_max`` is given.
    g_max : float, optional
        Largest ``|g|`` in Å⁻¹.
    sigma_excitation : float
        Width ``σ_s`` (Å⁻¹) of the Gaussian weight on the excitation error;
        roughly the inverse of the crystal thickness.
    convergence_mrad : float
        Probe convergence semi-angle ``α``; it excites reflections up to
        ``α|g|`` off the Ewald sphere.
    intensity_power : float
        Templates (and measured disks) are compared as intensity to this
        power. 1 (intensities) locates the tilt best on kinematical data;
        0.5 (amplitudes) gives weak high-angle disks more say and tolerates
        dynamical intensities better.
    n_angles : int
        In-plane angles of the polar correlation (even, >= 36).
    min_weight : float
        Spots whose excitation weight is below this are left out.
    zone_axis_index : int
        Zone axes ``[uvw]`` with indices up to this are added to the sampled
        directions, so that exact zone axes are in the library.
    thickness_nm : float
        When > 0, the excitation weight is the shape function ``sinc²(t s)``
        of a slab this thick instead of the Gaussian, in the templates, the
        refinement and :func:`simulate_pattern`; ``sigma_excitation`` is then
        set to the Gaussian of the same central width, ``0.376 / t``, which
        the search over the library uses.

    Returns
    -------
    OrientationLibrary

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> au = load_structure(builtin_cif("Au"))
    >>> lib = orientation_library(au, 300.0, 0.02, step_deg=3.0, g_max=1.2)
    >>> 100 < len(lib) < 300, lib.shells.round(3)[:3]
    (True, array([0.425, 0.49 , 0.694]))
    """
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a Structure (see load_structure); got {structure!r}")
    lam = electron_wavelength(energy_kev)
    qp = float(q_pixel_size)
    if not np.isfinite(qp) or qp <= 0:
        raise ValueError(f"q_pixel_size must be a positive number of 1/Å; got {q_pixel_size!r}")
    step = float(step_deg)
    if not np.isfinite(step) or not 0.05 <= step <= 30:
        raise ValueError(f"step_deg must be within [0.05, 30] degrees; got {step_deg!r}")
    if g_max is None:
        if max_angle_mrad is None:
            raise ValueError("give max_angle_mrad or g_max")
        g_max = float(max_angle_mrad) * 1e-3 / lam
    g_max = float(g_max)
    n_angles = int(n_angles)
    if n_angles < 36 or n_angles % 2:
        raise ValueError(f"n_angles must be an even number >= 36; got {n_angles!r}")
    if sigma_excitation <= 0:
        raise ValueError(f"sigma_excitation must be > 0; got {sigma_excitation!r}")
    thickness = float(thickness_nm) * 10.0
    if not np.isfinite(thickness) or thickness < 0:
        raise ValueError(f"thickness_nm must be >= 0 (0: Gaussian weight); got {thickness_nm!r}")
    if thickness > 0:
        sigma_excitation = SINC2_SIGMA / thickness
    hkl, g, f2 = reciprocal_lattice(structure, g_max)
    if len(hkl) == 0:
        raise ValueError(
            f"no reflection of {structure.name} within g_max = {g_max:.3g} 1/Å; "
            "raise max_angle_mrad or g_max"
        )
    alpha = float(convergence_mrad) * 1e-3

    # directions in the fundamental zone
    w = _fz_weight(structure)
    v = _fibonacci_sphere(step)
    # Beam directions related by a rotation of the Laue group give the same
    # patterns; those related by a mirror give mirror-image patterns, which
    # no in-plane rotation reproduces: reduce by the rotations only.
    images = np.einsum("kij,nj->nki", structure.proper_ops, v) @ w
    v = v[images.max(axis=1) <= v @ w + 1e-12]
    _, za = _zone_axes(structure, int(zone_axis_index))
    za = _to_fundamental(structure, za)
    za = za[np.unique(np.round(za, 6), axis=0, return_index=True)[1]]
    dirs = np.concatenate([za, v])
    base = _base_rotations(structure, dirs)

    # shells: the distinct |g| (merged within half a pixel)
    gn = np.linalg.norm(g, axis=1)
    order = np.argsort(gn)
    edges = np.flatnonzero(np.diff(gn[order]) > 0.5 * qp)
    groups = np.split(order, edges + 1)
    shells = np.array([gn[grp].mean() for grp in groups])
    shell_of = np.empty(len(g), np.int64)
    for i, grp in enumerate(groups):
        shell_of[grp] = i

    m = np.arange(n_angles // 2)
    sig_search = np.sqrt(sigma_excitation**2 + (0.6 * np.radians(step) * gn) ** 2)
    n_shells = len(shells)
    counts, e_shell, e_fft, e_norm = [], [], [], []
    chunk = max(1, min(256, 2_000_000 // max(1, len(g))))
    for c0 in range(0, len(dirs), chunk):
        gl = np.einsum("tij,nj->tni", base[c0 : c0 + chunk], g)
        # Templates tolerate the sampling step: an orientation between two
        # sampled directions tilts the Ewald sphere by up to ~0.6 step, which
        # moves s by that angle times |g|. The refinement uses the true width.
        wt = _excitation_weight(gl, lam, sig_search, alpha)
        tt, jj = np.nonzero(wt >= min_weight)
        key = tt * n_shells + shell_of[jj]
        order = np.argsort(key, kind="stable")
        tt, jj, key = tt[order], jj[order], key[order]
        a = (f2[jj] * wt[tt, jj]) ** intensity_power
        theta = np.arctan2(gl[tt, jj, 1], gl[tt, jj, 0])
        new = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
        starts = np.flatnonzero(new)
        if len(key):
            entry = np.cumsum(new) - 1
            fft = _angular_series(theta, a, entry, len(starts), len(m))
            e_fft.append(fft.astype(np.complex64))
            e_norm.append(np.add.reduceat(a * a, starts))
            e_shell.append(key[starts] % n_shells)
        counts.append(np.bincount(key[starts] // n_shells, minlength=gl.shape[0]))
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
    if not e_fft:
        e_fft, e_norm, e_shell = [np.zeros((0, len(m)), np.complex64)], [np.zeros(0)], [[]]
    return OrientationLibrary(
        structure=structure,
        energy_kev=float(energy_kev),
        wavelength=lam,
        q_pixel_size=qp,
        g_max=g_max,
        sigma_excitation=float(sigma_excitation),
        convergence_mrad=float(convergence_mrad),
        step_deg=step,
        intensity_power=float(intensity_power),
        n_angles=n_angles,
        directions=dirs,
        base=base,
        shells=shells,
        offsets=np.asarray(offsets, np.int64),
        entry_shell=np.concatenate(e_shell).astype(np.int64),
        entry_fft=np.concatenate(e_fft),
        entry_norm2=np.concatenate(e_norm),
        hkl=hkl,
        g=g,
        f2=f2,
        thickness=thickness,
    )


def kinematical_spots(library: OrientationLibrary, rotation, *, min_weight: float = 0.01):
    """Spots of one orientation: detector offsets, intensities and indices.

    Parameters
    ----------
    library : OrientationLibrary
        Gives the crystal, wavelength, ``g_max``, excitation width and
        calibration.
    rotation : array_like, shape (3, 3)
        Crystal → lab.
    min_weight : float
        Leave out spots whose excitation weight is below this.

    Returns
    -------
    dict
        ``"q"`` (N, 2) offsets from the direct beam in pixels ``(qx, qy)``,
        ``"intensity"`` (N,) kinematical ``|F|² · weight``, ``"hkl"`` (N, 3).

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> lib = orientation_library(load_structure(builtin_cif("Au")), 300.0, 0.02,
    ...                           step_deg=5.0, g_max=0.8)
    >>> s = kinematical_spots(lib, np.eye(3))  # beam along [001]
    >>> sorted({tuple(abs(v) for v in h) for h in s["hkl"].tolist()})
    [(0, 2, 0), (2, 0, 0), (2, 2, 0)]
    """
    r = np.asarray(rotation, np.float64)
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be a 3x3 matrix; got shape {r.shape}")
    gl = library.g @ r.T
    wt = _excitation_weight(
        gl,
        library.wavelength,
        library.sigma_excitation,
        library.convergence_mrad * 1e-3,
        library.thickness,
    )
    sel = wt >= min_weight
    return {
        "q": gl[sel, :2] / library.q_pixel_size,
        "intensity": library.f2[sel] * wt[sel],
        "hkl": library.hkl[sel],
    }


# ---------------------------------------------------------------- disks
def _as_disks(item, index: int) -> np.ndarray:
    """``(N, 3)`` array of qx, qy, intensity from a structured or plain array."""
    a = np.asarray(item)
    if a.dtype.names is not None:
        missing = {"qx", "qy", "intensity"} - set(a.dtype.names)
        if missing:
            raise ValueError(
                f"disk array {index} lacks the fields {sorted(missing)}; expected qx, qy, "
                "intensity (as from find_bragg_disks)"
            )
        a = np.stack([a["qx"], a["qy"], a["intensity"]], axis=-1).astype(np.float64)
    elif a.ndim == 2 and a.shape[1] == 3:
        a = a.astype(np.float64)
    else:
        raise ValueError(
            f"disk array {index}: expected a structured array with fields qx, qy, intensity "
            f"or an (N, 3) array; got shape {a.shape}"
        )
    return a.reshape(-1, 3)


def _detect(pattern: np.ndarray, center, disk_radius: float, r_min_px: float, max_disks: int):
    """Disks by local contrast, then centroid and integrated intensity in an aperture."""
    from .peaks import find_peaks

    qx, qy = np.ogrid[: pattern.shape[0], : pattern.shape[1]]
    mask = np.hypot(qx - center[0], qy - center[1]) > r_min_px
    pos, _ = find_peaks(pattern, disk_radius, threshold_rel=0.01, mask=mask, max_peaks=max_disks)
    # The contrast filter's peak value depends on where the disk edge falls on
    # the pixel grid; the background-subtracted sum over an aperture does not.
    r_ap = float(disk_radius) + 1.0
    pos = np.ascontiguousarray(pos, np.float64).reshape(-1, 2)
    return _aperture_disks(np.ascontiguousarray(pattern, np.float64), pos, r_ap, r_ap + 3.0)


def _detect_numpy(pattern: np.ndarray, pos: np.ndarray, disk_radius: float) -> np.ndarray:
    """Plain-numpy reference of the aperture step of :func:`_detect` (for tests)."""
    qx, qy = np.ogrid[: pattern.shape[0], : pattern.shape[1]]
    r_ap = float(disk_radius) + 1.0
    r_out = r_ap + 3.0
    h = int(np.ceil(r_out))
    out = np.zeros((len(pos), 3))
    for i, (px, py) in enumerate(pos):
        x0, x1 = max(0, int(px) - h), min(pattern.shape[0], int(px) + h + 2)
        y0, y1 = max(0, int(py) - h), min(pattern.shape[1], int(py) + h + 2)
        win = pattern[x0:x1, y0:y1]
        dx = qx[x0:x1] - px
        dy = qy[:, y0:y1] - py
        d = np.hypot(dx, dy)
        ring = (d > r_ap + 1.0) & (d <= r_out)
        bg = float(np.median(win[ring])) if ring.any() else 0.0
        ap = d <= r_ap
        sig = np.clip(win - bg, 0.0, None) * ap
        tot = float(sig.sum())
        if tot > 0:
            out[i] = px + (sig * dx).sum() / tot, py + (sig * dy).sum() / tot, tot
        else:
            out[i] = px, py, 0.0
    return out


def _polar_fft(library: OrientationLibrary, q: np.ndarray, amp: np.ndarray, sigma: float):
    """Angular Fourier coefficients of the disks projected on the shells."""
    r = np.hypot(q[:, 0], q[:, 1])
    theta = np.arctan2(q[:, 1], q[:, 0])
    m = np.arange(library.n_angles // 2)
    rad = np.exp(-0.5 * ((r[None, :] - library.shells[:, None]) / sigma) ** 2)  # (S, K)
    # angular width of a disk (at least 1.5 in-plane steps, so that the
    # truncated series stays a Gaussian); coefficients of a peak-1 Gaussian
    sig_t = np.maximum(sigma / np.maximum(r, 1e-12), 3.0 * np.pi / library.n_angles)
    ang = np.exp(-1j * np.outer(theta, m) - 0.5 * np.outer(sig_t**2, m * m))  # (K, M)
    ang *= (sig_t / np.sqrt(2.0 * np.pi))[:, None]
    return (rad * amp[None, :]) @ ang  # (S, M)


def _exact_score_numpy(library, rotation, q, amp, sigma, q_limit, min_weight=0.01):
    """Cosine similarity of Gaussian-spot images of template and disks (reference)."""
    gl = library.g @ rotation.T
    wt = _excitation_weight(
        gl,
        library.wavelength,
        library.sigma_excitation,
        library.convergence_mrad * 1e-3,
        library.thickness,
    )
    sel = (wt >= min_weight) & (np.hypot(gl[:, 0], gl[:, 1]) <= q_limit)
    if not sel.any() or not len(q):
        return 0.0
    a = (library.f2[sel] * wt[sel]) ** library.intensity_power
    d2 = np.sum((gl[sel, None, :2] - q[None, :, :]) ** 2, axis=-1)
    num = a @ np.exp(-d2 / (4.0 * sigma * sigma)) @ amp
    return float(num / (np.sqrt(a @ a) * np.sqrt(amp @ amp)))


def _score_model(library, q, amp, sigma, q_limit, min_weight=0.01):
    """The arguments of the compiled overlap score, as one tuple."""
    return (
        library.g,
        library.f2,
        np.ascontiguousarray(q, np.float64).reshape(-1, 2),
        np.ascontiguousarray(amp, np.float64),
        float(library.wavelength),
        float(library.sigma_excitation),
        float(library.convergence_mrad * 1e-3),
        float(library.intensity_power),
        float(sigma),
        float(min(q_limit, 1e30)),
        float(min_weight),
        float(library.thickness),
    )


def _exact_score(library, rotation, q, amp, sigma, q_limit, min_weight=0.01):
    """Cosine similarity of Gaussian-spot images of template and disks (compiled)."""
    model = _score_model(library, q, amp, sigma, q_limit, min_weight)
    return _overlap_score(np.ascontiguousarray(rotation, np.float64), model)


def _exact_scores(library, rotations, q, amp, sigma, q_limit, min_weight=0.01):
    """:func:`_exact_score` of each of ``rotations`` (K, 3, 3), in one compiled call."""
    rots = np.ascontiguousarray(rotations, np.float64).reshape(-1, 3, 3)
    return _overlap_scores(rots, _score_model(library, q, amp, sigma, q_limit, min_weight))


def _peak_angles(rows: np.ndarray, p: np.ndarray) -> np.ndarray:
    """:func:`_peak_angle` of ``rows[i]`` at ``p[i]``, vectorised."""
    n = rows.shape[1]
    i = np.arange(len(p))
    y0, y1, y2 = rows[i, (p - 1) % n], rows[i, p], rows[i, (p + 1) % n]
    den = y0 - 2 * y1 + y2
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(den < 0, 0.5 * (y0 - y2) / np.where(den < 0, den, -1.0), 0.0)
    return 2.0 * np.pi * (p + np.clip(off, -0.5, 0.5)) / n


def _rot_z_many(phi: np.ndarray) -> np.ndarray:
    c, s = np.cos(phi), np.sin(phi)
    out = np.zeros((len(phi), 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, 2, 2] = 1.0
    return out


def _template_matrix(library: OrientationLibrary):
    """Sparse (templates x entries) sum matrix, cached on the library."""
    if "sum" not in library._cache:
        from scipy import sparse

        n_e = len(library.entry_shell)
        shape = (len(library), n_e)
        ones = np.ones(n_e, np.float32)
        library._cache["sum"] = sparse.csr_matrix(
            (ones.astype(np.complex64), np.arange(n_e), library.offsets), shape=shape
        )
        library._cache["sum_real"] = sparse.csr_matrix(
            (ones.astype(np.float64), np.arange(n_e), library.offsets), shape=shape
        )
    return library._cache["sum"], library._cache["sum_real"]


def _search(library, q, amp, sigma, q_limit):
    """Polar correlation of every template; best in-plane angle and score each."""
    from scipy import fft as sfft

    ehat = _polar_fft(library, q, amp, sigma).astype(np.complex64)
    ok_shell = library.shells <= q_limit
    x, norm2 = _template_sums(
        library.offsets,
        library.entry_shell,
        library.entry_fft,
        library.entry_norm2,
        ehat,
        ok_shell,
    )
    n = library.n_angles
    # single precision is plenty to rank the templates (the best are rescored
    # exactly) and halves the time of this transform
    corr = sfft.irfft(x.astype(np.complex64), n=n, axis=1)
    corr *= n  # (T, n): C(φ_p), φ_p = 2πp/n
    return corr, np.sqrt(norm2)


def _search_numpy(library, q, amp, sigma, q_limit):
    """Sparse-matrix reference of :func:`_search` (for tests)."""
    ehat = _polar_fft(library, q, amp, sigma).astype(np.complex64)
    ok_shell = library.shells <= q_limit
    ehat[~ok_shell] = 0
    sum_c, sum_r = _template_matrix(library)
    x = sum_c @ (library.entry_fft * ehat[library.entry_shell])
    norm2 = sum_r @ (library.entry_norm2 * ok_shell[library.entry_shell])
    n = library.n_angles
    corr = np.fft.irfft(x, n=n, axis=1) * n
    return corr, np.sqrt(norm2)


def _peak_angle(row: np.ndarray, p: int) -> float:
    """Sub-bin position of a circular peak by a parabola through 3 points."""
    n = len(row)
    y0, y1, y2 = row[(p - 1) % n], row[p], row[(p + 1) % n]
    den = y0 - 2 * y1 + y2
    off = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    return 2.0 * np.pi * (p + np.clip(off, -0.5, 0.5)) / n


def _refine(library, rot0, q, amp, sigma, q_limit, step_rad):
    """Nelder-Mead over the rotation vector around ``rot0``, compiled end to end."""
    w, score = _nelder_mead(
        np.ascontiguousarray(rot0, np.float64),
        0.5 * float(step_rad),
        _score_model(library, q, amp, sigma, q_limit),
        1e-4,
        1e-8,
        300,
    )
    rot = _rotvec(w) @ rot0
    u, _, vt = np.linalg.svd(rot)  # re-orthonormalise
    return u @ vt, float(score)


def _match_one(library, q, amp, sigma, q_limit, distinct_deg, n_candidates, refine, n_refine=3):
    corr, tnorm = _search(library, q, amp, sigma, q_limit)
    enorm = np.sqrt(amp @ amp)
    best_p = np.argmax(corr, axis=1)
    best_c = corr[np.arange(len(corr)), best_p]
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(tnorm > 0, best_c / (tnorm * enorm), 0.0)
    order = np.argsort(-score)
    top = order[:n_candidates]
    rots = _rot_z_many(_peak_angles(corr[top], best_p[top])) @ library.base[top]
    exact = _exact_scores(library, rots, q, amp, sigma, q_limit)
    cands = [(exact[k], int(top[k]), rots[k]) for k in np.argsort(-exact, kind="stable")]
    s1, t1, rot1 = cands[0]
    if refine:
        # refine the best few distinct candidates: with few disks the true
        # orientation's nearest template is not always the top-ranked one
        tried = []
        for s0, t0, r0 in cands:
            if len(tried) == n_refine:
                break
            if tried and np.min(misorientation_deg(np.array(tried), r0, library.structure)) < 1.0:
                continue
            tried.append(r0)
            rot_r, s_r = _refine(library, r0, q, amp, sigma, q_limit, np.radians(library.step_deg))
            if s_r < s0:
                rot_r, s_r = r0, s0
            if s_r >= s1:
                s1, t1, rot1 = s_r, t0, rot_r

    # second-best distinct: other directions, and other in-plane peaks of the best
    st = library.structure
    v_best = rot1[2]
    cos_dir = np.max(np.einsum("kij,j->ki", st.proper_ops, v_best) @ library.directions.T, axis=0)
    far = np.flatnonzero(cos_dir < np.cos(np.radians(distinct_deg)))
    others = far[np.argsort(-score[far])[:n_candidates]]
    alt = _rot_z_many(_peak_angles(corr[others], best_p[others])) @ library.base[others]
    row = corr[t1]
    peaks = np.flatnonzero((row >= np.roll(row, 1)) & (row > np.roll(row, -1)))
    peaks = peaks[np.argsort(-row[peaks])[: 2 * n_candidates]]
    alt_row = _rot_z_many(_peak_angles(np.broadcast_to(row, (len(peaks), len(row))), peaks))
    alt = np.concatenate([alt, alt_row @ library.base[t1]])
    s2 = 0.0
    if len(alt):
        far_alt = alt[misorientation_deg(alt, rot1, st) > distinct_deg]
        if len(far_alt):
            s2 = max(0.0, float(_exact_scores(library, far_alt, q, amp, sigma, q_limit).max()))
    # the reliability index of Rauch and Veron (ASTAR), as a fraction
    conf = 0.0 if s1 <= 0 else max(0.0, 1.0 - s2 / s1)
    return rot1, s1, conf


def match_orientations(
    patterns_or_disks,
    library_or_libraries,
    *,
    center="auto",
    detector_shape=None,
    disk_radius: float = 2.0,
    sigma_px: float = 1.5,
    min_disks: int = 4,
    max_disks: int = 100,
    refine: bool = True,
    distinct_deg: float | None = None,
    n_candidates: int = 24,
    workers: int = 1,
) -> np.ndarray:
    """Orientation and phase of each pattern by sparse template correlation.

    Parameters
    ----------
    patterns_or_disks : array_like or sequence
        Either diffraction patterns, shape ``(Qx, Qy)`` or ``(N, Qx, Qy)``
        (typically cluster averages), in which the Bragg disks are detected
        with :func:`napari_stemcluster.core.peaks.find_peaks`; or detected
        disks: one array, or a sequence of arrays (one per pattern), either
        structured with fields ``qx``, ``qy`` (pixels, the pattern's axis
        order) and ``intensity``, or plain ``(K, 3)`` arrays of the same.
    library_or_libraries : OrientationLibrary or sequence of them
        One library per candidate phase.
    center : "auto", (float, float), array_like (N, 2) or None
        Direct-beam position in pixels ``(qx, qy)``, the origin of the
        templates. ``"auto"`` (default): for patterns, the direct beam found
        in each pattern by :func:`napari_stemcluster.core.find_bragg_disks`
        (the detector centre where none is found); disk arrays carry no
        direct beam, so for them ``"auto"`` is the centre of
        ``detector_shape`` (pass the beams that ``find_bragg_disks(...,
        return_beam=True)`` returns instead). One position for all
        patterns, or one per pattern, overrides it; ``None`` is the
        detector centre ``((Qx - 1) / 2, (Qy - 1) / 2)``.
    detector_shape : (int, int), optional
        Detector shape, for disks (limits templates to the detector).
    disk_radius : float
        Bragg-disk radius in pixels, for the disk detector.
    sigma_px : float
        Position tolerance (pixels) of the disk-to-spot overlap.
    min_disks : int
        Patterns with fewer diffracted disks (direct beam excluded) are
        returned as not indexed.
    max_disks : int
        Use at most this many disks (strongest first).
    refine : bool
        Refine the best match in all three angles.
    distinct_deg : float, optional
        Two orientations closer than this (with symmetry) are the same match
        for the confidence (default ``max(3, 2.5 step)``).
    n_candidates : int
        Templates rescored exactly, and alternatives for the confidence.
    workers : int
        Threads matching patterns side by side (the compiled kernels and
        the FFTs release the GIL, the Python steps do not; on a machine
        whose cores are busy one thread is as fast). The answer does not
        depend on it.

    Returns
    -------
    ndarray of ORIENTATION_DTYPE, shape (N,)
        Per pattern: ``rotation`` (crystal → lab), ``zone_axis``,
        ``inplane_deg``, ``score`` (cosine similarity, 0 to 1),
        ``confidence`` (``1 - second / best`` with the best distinct
        alternative: the reliability index of Rauch and Veron), ``phase``
        (index into the libraries; -1 when not indexed),
        ``phase_confidence`` (``1 - best other phase / best``), ``n_disks``
        ``indexed`` and ``center`` (the direct beam used). Not-indexed rows
        have NaN rotation.

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> lib = orientation_library(load_structure(builtin_cif("Au")), 300.0, 0.02,
    ...                           step_deg=2.0, g_max=1.2)
    >>> truth = _rotvec(np.radians([1.0, 2.0, 30.0]))
    >>> p = simulate_pattern(lib, truth, (128, 128), disk_radius=2.0)
    >>> rec = match_orientations(p, lib)[0]
    >>> bool(rec["indexed"]), float(misorientation_deg(rec["rotation"], truth,
    ...                                                   lib.structure)) < 0.2
    (True, True)
    """
    libs = (
        [library_or_libraries]
        if isinstance(library_or_libraries, OrientationLibrary)
        else list(library_or_libraries)
    )
    if not libs or not all(isinstance(lib, OrientationLibrary) for lib in libs):
        raise TypeError("library_or_libraries must be an OrientationLibrary or a list of them")
    qp = libs[0].q_pixel_size
    if any(abs(lib.q_pixel_size - qp) > 1e-9 * qp for lib in libs):
        raise ValueError("all libraries must share one q_pixel_size (the detector calibration)")
    r_min = 0.5 * min(float(lib.shells[0]) for lib in libs) / qp  # pixels

    # normalise the input to a list of (K, 3) disk arrays in pixels
    items = patterns_or_disks
    is_pattern_stack = (
        isinstance(items, np.ndarray) and items.dtype.names is None and items.ndim in (2, 3)
    )
    if is_pattern_stack and items.ndim == 2 and items.shape[1] == 3 and items.shape[0] != 3:
        is_pattern_stack = False  # a plain (K, 3) disk array
    if hasattr(items, "shape") and hasattr(items, "dtype") and not isinstance(items, np.ndarray):
        items = np.asarray(items)
        is_pattern_stack = items.dtype.names is None and items.ndim in (2, 3)
    stack = disk_list = None
    if is_pattern_stack:
        stack = items[None] if items.ndim == 2 else items
        if stack.dtype.kind not in "uifb":
            raise TypeError(f"patterns must hold numbers; got dtype {stack.dtype}")
        detector_shape = stack.shape[1:]
        n_items = len(stack)
    else:
        if isinstance(items, np.ndarray) and (items.dtype.names is not None or items.ndim == 2):
            items = [items]
        disk_list = [_as_disks(d, i) for i, d in enumerate(items)]
        n_items = len(disk_list)
    n_threads = _thread_count(workers, n_items)
    centers = _beam_centers(center, stack, detector_shape, n_items, disk_radius, n_threads)
    if detector_shape is not None:
        shp = np.asarray(detector_shape, np.float64)
        edge = np.min(np.column_stack([centers, shp - 1 - centers]), axis=1)
        q_limits_px = np.maximum(edge - 0.5 * disk_radius, 0.0)
    else:
        q_limits_px = np.full(n_items, np.inf)

    out = np.zeros(n_items, ORIENTATION_DTYPE)
    out["rotation"] = np.nan
    out["phase"] = -1
    out["center"] = centers

    def match(i):
        center, q_limit_px = centers[i], q_limits_px[i]
        if is_pattern_stack:
            d = _detect(np.asarray(stack[i], np.float64), center, disk_radius, r_min, max_disks)
        else:
            d = disk_list[i]
        q = d[:, :2] - center
        r = np.hypot(q[:, 0], q[:, 1])
        keep = (r > r_min) & (r <= q_limit_px) & (d[:, 2] > 0) & np.isfinite(d).all(axis=1)
        q, inten = q[keep], d[keep, 2]
        strongest = np.argsort(-inten)[:max_disks]
        q, inten = q[strongest], inten[strongest]
        out["n_disks"][i] = len(q)
        if len(q) < int(min_disks):
            return
        best = []
        for lib in libs:
            dd = distinct_deg if distinct_deg is not None else max(3.0, 2.5 * lib.step_deg)
            amp = inten**lib.intensity_power
            rot, s, conf = _match_one(
                lib, q * qp, amp, sigma_px * qp, q_limit_px * qp, dd, n_candidates, refine
            )
            best.append((s, rot, conf))
        scores = np.array([b[0] for b in best])
        k = int(np.argmax(scores))
        s, rot, conf = best[k]
        st = libs[k].structure
        out["rotation"][i] = rot
        out["score"][i] = s
        out["confidence"][i] = conf
        out["phase"][i] = k
        other = np.delete(scores, k)
        out["phase_confidence"][i] = 1.0 - other.max() / s if other.size and s > 0 else 1.0
        out["zone_axis"][i] = _zone_axis(st, rot[2])
        out["inplane_deg"][i] = _inplane_deg(st, rot)
        out["indexed"][i] = True

    if n_threads <= 1:
        for i in range(n_items):
            match(i)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n_threads, thread_name_prefix="stem-orient") as pool:
            list(pool.map(match, range(n_items)))  # list(): raise a pattern's error here
    return out


def _beam_centers(center, stack, detector_shape, n_items: int, disk_radius, workers) -> np.ndarray:
    """The direct beam of each pattern, ``(n_items, 2)``, from the ``center`` argument."""
    det = None
    if detector_shape is not None:
        det = (np.asarray(detector_shape[:2], np.float64) - 1.0) / 2.0
    if isinstance(center, str):
        if center != "auto":
            raise ValueError(f'center must be "auto", (qx, qy) or None; got {center!r}')
        if stack is None:  # disk arrays: no pattern to find the beam in
            center = None
        else:
            import warnings

            from .bragg import BraggWarning, find_bragg_disks

            with warnings.catch_warnings():
                # a pattern without disks is reported as not indexed below
                warnings.simplefilter("ignore", BraggWarning)
                _, beams = find_bragg_disks(
                    stack, probe_radius=float(disk_radius), return_beam=True, workers=workers
                )
            beams = np.asarray(beams, np.float64).reshape(n_items, 2)
            lost = ~np.isfinite(beams).all(axis=1)
            beams[lost] = det
            return beams
    if center is None:
        if det is None:
            raise ValueError(
                "with disk arrays, give center= (the direct beam, as find_bragg_disks(..., "
                "return_beam=True) returns it) or detector_shape="
            )
        return np.tile(det, (n_items, 1))
    c = np.asarray(center, np.float64)
    if c.shape == (2,):
        c = np.tile(c, (n_items, 1))
    if c.shape != (n_items, 2) or not np.all(np.isfinite(c)):
        raise ValueError(
            f"center must be finite (qx, qy) pixels, or one (qx, qy) per pattern ({n_items}, 2); "
            f"got shape {np.shape(center)}"
        )
    return c


def _thread_count(workers, n_items: int) -> int:
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be a positive number of threads; got {workers}")
    return max(1, min(workers, n_items))


# ---------------------------------------------------------------- outputs
def reference_lattice(rotation, library: OrientationLibrary, *, min_rel: float = 0.05):
    """Two reciprocal-lattice vectors of a matched orientation, in detector pixels.

    The two shortest strong, non-collinear reflections of the zero-order
    Laue zone of the orientation's zone axis (for a high-index zone with
    too few of those, of the excited reflections), projected on the
    detector: a reference lattice for strain mapping. ``g2`` is
    counter-clockwise from ``g1`` (``g1 × g2 > 0`` in ``(qx, qy)``).

    Parameters
    ----------
    rotation : array_like, shape (3, 3)
        Crystal → lab (the ``rotation`` of a match).
    library : OrientationLibrary
        Crystal and calibration.
    min_rel : float
        Only reflections with ``|F|²`` above this fraction of the strongest.

    Returns
    -------
    g : ndarray of float64, shape (2, 2)
        Rows ``g1``, ``g2`` as ``(qx, qy)`` pixel offsets from the direct beam.
    hkl : ndarray of int32, shape (2, 3)

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> lib = orientation_library(load_structure(builtin_cif("Au")), 300.0, 0.02,
    ...                           step_deg=5.0, g_max=1.0)
    >>> g, hkl = reference_lattice(np.eye(3), lib)
    >>> np.abs(g).round(2)
    array([[24.52,  0.  ],
           [ 0.  , 24.52]])
    """
    r = np.asarray(rotation, np.float64)
    if r.shape != (3, 3) or not np.all(np.isfinite(r)):
        raise ValueError("rotation must be a finite 3x3 matrix (an indexed match)")
    st = library.structure
    uvw = _zone_axis(st, r[2])
    hkl, f2 = library.hkl, library.f2
    strong = f2 >= min_rel * f2.max()
    gl = library.g @ r.T
    wt = _excitation_weight(
        gl,
        library.wavelength,
        library.sigma_excitation,
        library.convergence_mrad * 1e-3,
        library.thickness,
    )
    # the lattice plane of the zone axis; else (a high-index zone) the excited spots
    for sel in ((hkl @ uvw == 0) & strong, strong & (wt >= 0.1)):
        g = gl[sel, :2] / library.q_pixel_size
        h = hkl[sel]
        order = np.lexsort((-f2[sel], np.round(np.hypot(g[:, 0], g[:, 1]), 6)))
        g, h = g[order], h[order]
        for j in range(1, len(g)):
            cross = g[0, 0] * g[j, 1] - g[0, 1] * g[j, 0]
            if abs(cross) > 0.3 * np.linalg.norm(g[0]) * np.linalg.norm(g[j]) and cross > 0:
                return np.array([g[0], g[j]]), np.array([h[0], h[j]], np.int32)
    raise ValueError(
        f"no two non-collinear strong reflections near zone {uvw.tolist()} within g_max"
    )


def simulate_pattern(
    library: OrientationLibrary,
    rotation,
    shape,
    *,
    center=None,
    disk_radius: float = 2.0,
    direct_beam: float = 1.0,
    counts: float | None = None,
    background: float = 0.0,
    rng=None,
) -> np.ndarray:
    """Kinematical diffraction pattern with flat disks, optionally with shot noise.

    Parameters
    ----------
    library : OrientationLibrary
        Crystal, wavelength, calibration and excitation width.
    rotation : array_like, shape (3, 3)
        Crystal → lab.
    shape : (int, int)
        Detector shape.
    center : (float, float), optional
        Direct beam (default: the detector centre).
    disk_radius : float
        Disk radius in pixels.
    direct_beam : float
        Direct-beam intensity as a fraction of the summed diffracted intensity.
    counts : float, optional
        Expected total electrons; with it the pattern is Poisson-sampled.
    background : float
        Flat background, as a fraction of the mean disk-pixel value.
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    ndarray of float32, shape ``shape``

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> lib = orientation_library(load_structure(builtin_cif("Au")), 300.0, 0.02,
    ...                           step_deg=5.0, g_max=1.0)
    >>> p = simulate_pattern(lib, np.eye(3), (64, 64))
    >>> p.shape, bool(p[32, 32] > p[0, 0])
    ((64, 64), True)
    """
    shape = tuple(int(s) for s in shape)
    c = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2] if center is None else center, float)
    sp = kinematical_spots(library, rotation)
    inten = sp["intensity"] / max(sp["intensity"].sum(), 1e-300)
    pos = np.vstack([c, c + sp["q"]])
    inten = np.concatenate([[direct_beam], inten])
    qx, qy = np.ogrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float64)
    r = float(disk_radius)
    for (px, py), a in zip(pos, inten, strict=True):
        x0, x1 = max(0, int(px - r - 2)), min(shape[0], int(px + r + 3))
        y0, y1 = max(0, int(py - r - 2)), min(shape[1], int(py + r + 3))
        if x0 >= x1 or y0 >= y1:
            continue
        d = np.hypot(qx[x0:x1] - px, qy[:, y0:y1] - py)
        disk = np.clip(r + 0.5 - d, 0.0, 1.0)  # antialiased edge
        img[x0:x1, y0:y1] += a * disk / max(disk.sum(), 1e-300)
    if background:
        img += background * img[img > 0].mean()
    if counts is not None:
        gen = np.random.default_rng(rng)
        img = gen.poisson(img / img.sum() * float(counts)).astype(np.float64)
    return img.astype(np.float32)


def ipf_colors(rotations, structure: Structure, direction=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Inverse-pole-figure colour of orientations along a lab direction.

    The lab direction is expressed in the crystal, brought into the standard
    triangle of the crystal system's holohedry (``[001]-[101]-[111]`` for
    cubic, ``[001]-[100]-[110]`` tetragonal, ``[0001]-[2-1-10]-[10-10]``
    hexagonal and trigonal, ``[001]-[100]-[010]`` otherwise) and coloured red,
    green, blue by its position between the three corners.

    Parameters
    ----------
    rotations : array_like, shape (..., 3, 3)
        Crystal → lab; NaN rows give black.
    structure : Structure
    direction : sequence of 3 floats
        Lab direction: ``(1, 0, 0)`` is ``x`` (``qx``), ``(0, 0, 1)`` the beam.

    Returns
    -------
    ndarray of uint8, shape (..., 3)

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> au = load_structure(builtin_cif("Au"))
    >>> ipf_colors(np.eye(3), au)  # [001] along the beam: red
    array([255,   0,   0], dtype=uint8)
    """
    r = np.asarray(rotations, np.float64)
    d = np.asarray(direction, np.float64)
    d = d / np.linalg.norm(d)
    c = np.einsum("...ji,j->...i", r, d)  # R^T d
    return _triangle_rgb(_reduce_ipf(c, structure.ipf_system), structure.ipf_system)


def _reduce_ipf(c: np.ndarray, system: str) -> np.ndarray:
    c = np.abs(c)
    if system == "cubic":
        return np.sort(c, axis=-1)[..., [1, 0, 2]]
    if system == "tetragonal":
        xy = np.sort(c[..., :2], axis=-1)[..., ::-1]
        return np.concatenate([xy, c[..., 2:]], axis=-1)
    if system == "hexagonal":
        psi = np.arctan2(c[..., 1], c[..., 0]) % (np.pi / 3)
        psi = np.where(psi > np.pi / 6, np.pi / 3 - psi, psi)
        rho = np.hypot(c[..., 0], c[..., 1])
        return np.stack([rho * np.cos(psi), rho * np.sin(psi), c[..., 2]], axis=-1)
    return c


def _triangle_rgb(c: np.ndarray, system: str) -> np.ndarray:
    corners = IPF_CORNERS[system]
    lam = c @ np.linalg.inv(corners)  # c = lam @ corners
    lam = np.clip(np.nan_to_num(lam, nan=0.0), 0.0, None)
    mx = lam.max(axis=-1, keepdims=True)
    rgb = np.where(mx > 0, lam / np.where(mx > 0, mx, 1.0), 0.0)
    return np.round(255 * rgb).astype(np.uint8)


def ipf_color_key(structure: Structure, size: int = 256):
    """Image of the inverse-pole-figure colour key (stereographic triangle).

    Parameters
    ----------
    structure : Structure
    size : int
        Width and height of the image in pixels.

    Returns
    -------
    image : ndarray of uint8, shape (size, size, 4)
        RGBA, transparent outside the triangle; row 0 is the top.
    labels : list of (str, (row, col))
        Corner labels (``"[001]"``…) and their pixel positions.

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> img, labels = ipf_color_key(load_structure(builtin_cif("Au")), 64)
    >>> img.shape, [name for name, _ in labels]
    ((64, 64, 4), ['[001]', '[101]', '[111]'])
    """
    system = structure.ipf_system
    corners = IPF_CORNERS[system]
    proj = corners[:, :2] / (1.0 + corners[:, 2:3])  # stereographic
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    span = float(max(hi - lo)) * 1.15
    mid = 0.5 * (lo + hi)
    u = mid[0] + (np.arange(size) / (size - 1) - 0.5) * span
    v = mid[1] + (0.5 - np.arange(size) / (size - 1)) * span
    uu, vv = np.meshgrid(u, v)
    rho2 = uu**2 + vv**2
    dirs = np.stack([2 * uu, 2 * vv, 1 - rho2], -1) / (1 + rho2)[..., None]
    lam = dirs @ np.linalg.inv(corners)
    inside = np.all(lam >= -1e-9, axis=-1)
    img = np.zeros((size, size, 4), np.uint8)
    img[..., :3] = _triangle_rgb(dirs, system)
    img[..., 3] = np.where(inside, 255, 0)
    names = {
        "cubic": ["[001]", "[101]", "[111]"],
        "tetragonal": ["[001]", "[100]", "[110]"],
        "hexagonal": ["[0001]", "[2-1-10]", "[10-10]"],
        "orthorhombic": ["[001]", "[100]", "[010]"],
    }[system]
    labels = []
    for name, p in zip(names, proj, strict=True):
        col = (p[0] - mid[0]) / span + 0.5
        row = 0.5 - (p[1] - mid[1]) / span
        labels.append((name, (float(row * (size - 1)), float(col * (size - 1)))))
    return img, labels


def orientation_maps(labels, records, structures) -> dict[str, np.ndarray]:
    """Per-position maps from per-cluster orientations.

    Parameters
    ----------
    labels : array_like of int, shape (Rx, Ry)
        Cluster labels ``1..N`` (0: unassigned).
    records : ndarray of ORIENTATION_DTYPE, shape (N,)
        Row ``i`` is label ``i + 1`` (as from :func:`match_orientations` on
        the cluster averages).
    structures : Structure or sequence of Structure
        The phases, in the order of the libraries used for matching.

    Returns
    -------
    dict
        ``"phase"`` int16 (-1: unassigned or not indexed), ``"score"``,
        ``"confidence"``, ``"inplane_deg"`` float32 (NaN where -1), and
        ``"ipf_x"``, ``"ipf_y"``, ``"ipf_z"`` uint8 RGB ``(Rx, Ry, 3)``.

    Examples
    --------
    >>> from napari_stemcluster.core import load_structure
    >>> from napari_stemcluster.data import builtin_cif
    >>> au = load_structure(builtin_cif("Au"))
    >>> rec = np.zeros(1, ORIENTATION_DTYPE)
    >>> rec["rotation"], rec["indexed"], rec["score"] = np.eye(3), True, 0.9
    >>> maps = orientation_maps(np.array([[0, 1]]), rec, au)
    >>> maps["phase"].tolist(), maps["ipf_z"][0, 1].tolist()
    ([[-1, 0]], [255, 0, 0])
    """
    lab = np.asarray(labels)
    rec = np.asarray(records)
    if rec.dtype != ORIENTATION_DTYPE:
        raise TypeError("records must be an array of ORIENTATION_DTYPE (from match_orientations)")
    sts = [structures] if isinstance(structures, Structure) else list(structures)
    if lab.size and lab.max() > len(rec):
        raise ValueError(f"labels go up to {lab.max()} but there are {len(rec)} records")
    ok = rec["indexed"] & (rec["phase"] >= 0)
    phase = np.concatenate([[-1], np.where(ok, rec["phase"], -1)]).astype(np.int16)
    out = {"phase": phase[lab]}
    for name in ("score", "confidence", "inplane_deg"):
        col = np.concatenate([[np.nan], np.where(ok, rec[name], np.nan)]).astype(np.float32)
        out[name] = col[lab]
    for axis, d in zip("xyz", np.eye(3), strict=True):
        rgb = np.zeros((len(rec) + 1, 3), np.uint8)
        for k, st in enumerate(sts):
            sel = np.flatnonzero(ok & (rec["phase"] == k))
            if sel.size:
                rgb[sel + 1] = ipf_colors(rec["rotation"][sel], st, d)
        out[f"ipf_{axis}"] = rgb[lab]
    return out


# ---------------------------------------------------------------- per cluster
@dataclass
class OrientationResult:
    """Orientation and phase of every cluster of a segmentation.

    Attributes
    ----------
    records : ndarray of ORIENTATION_DTYPE, shape (N,)
        One row per cluster, in the order of the results file: the clusters
        of time step ``t`` are rows ``offsets[t]:offsets[t + 1]`` and row
        ``offsets[t] + i`` is label ``i + 1``.
    offsets : ndarray of int64, shape (T + 1,)
        Row ranges of the time steps (``[0, N]`` for a 4D result).
    structures : list of Structure
        The candidate phases; ``records["phase"]`` indexes this list.
    params : dict
        Library and matching parameters (JSON-serialisable).
    """

    records: np.ndarray
    offsets: np.ndarray
    structures: list
    params: dict = field(default_factory=dict)

    def step(self, t: int = 0) -> np.ndarray:
        """The records of time step ``t`` (row ``i`` is label ``i + 1``)."""
        return self.records[int(self.offsets[t]) : int(self.offsets[t + 1])]

    def maps(self, labels, t: int = 0) -> dict[str, np.ndarray]:
        """Per-position maps of one time step; see :func:`orientation_maps`."""
        return orientation_maps(labels, self.step(t), self.structures)

    def centers(self, detector_shape, t: int = 0) -> np.ndarray:
        """Direct beam ``(qx, qy)`` of each cluster of time step ``t``, ``(N, 2)``.

        The position the templates were matched around; the detector centre
        where none was recorded (NaN, as in files of older versions).
        """
        c = np.array(self.step(t)["center"], np.float64).reshape(-1, 2)
        det = (np.asarray(detector_shape[-2:], np.float64) - 1.0) / 2.0
        lost = ~np.isfinite(c).all(axis=1)
        c[lost] = det
        return c


def orient_clusters(
    cluster_means,
    cif_paths_or_structures,
    energy_kev: float,
    q_pixel_size: float,
    *,
    step_deg: float = 1.0,
    max_angle_mrad: float | None = 30.0,
    g_max: float | None = None,
    sigma_excitation: float = 0.02,
    convergence_mrad: float = 0.0,
    thickness_nm: float = 0.0,
    center="auto",
    progress=None,
    **match_kw,
) -> OrientationResult:
    """Match the cluster-averaged patterns of a segmentation against crystal structures.

    Parameters
    ----------
    cluster_means : ndarray (N, Qx, Qy) or list of them
        ``SegmentationResult.cluster_means`` (a list for a time series).
    cif_paths_or_structures : path, Structure or a sequence of them
        Candidate phases.
    energy_kev, q_pixel_size : float
        Beam energy and detector calibration (Å⁻¹ per pixel).
    step_deg, max_angle_mrad, g_max, sigma_excitation, convergence_mrad, thickness_nm
        Library parameters, see :func:`orientation_library`.
    center : "auto", (float, float), array_like (N, 2) or None
        Direct beam: ``"auto"`` finds it in every cluster average (the
        default), one ``(qx, qy)`` for all, one per cluster (rows in the
        order of the records), or ``None`` for the detector centre; see
        :func:`match_orientations`. The position used is stored in each
        record's ``center``.
    progress : callable, optional
        Called as ``progress(done, total)`` after each chunk of patterns.
    **match_kw
        Passed to :func:`match_orientations`.

    Returns
    -------
    OrientationResult

    Examples
    --------
    >>> from napari_stemcluster.data import builtin_cif
    >>> means = np.zeros((2, 64, 64), np.float32)
    >>> res = orient_clusters(means, builtin_cif("Au"), 300.0, 0.02, step_deg=5.0)
    >>> res.records["indexed"].tolist(), res.offsets.tolist()
    ([False, False], [0, 2])
    >>> res.records["center"][0].tolist()  # no beam in an empty pattern: the detector centre
    [31.5, 31.5]
    """
    from .crystal import load_structure

    items = (
        [cif_paths_or_structures]
        if isinstance(cif_paths_or_structures, (str, Structure))
        or hasattr(cif_paths_or_structures, "__fspath__")
        else list(cif_paths_or_structures)
    )
    structures = [it if isinstance(it, Structure) else load_structure(it) for it in items]
    lib_kw = {
        "step_deg": step_deg,
        "max_angle_mrad": max_angle_mrad,
        "g_max": g_max,
        "sigma_excitation": sigma_excitation,
        "convergence_mrad": convergence_mrad,
        "thickness_nm": thickness_nm,
    }
    libs = [orientation_library(st, energy_kev, q_pixel_size, **lib_kw) for st in structures]
    steps = list(cluster_means) if isinstance(cluster_means, list) else [cluster_means]
    counts = [len(m) for m in steps]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    per_cluster = None
    if center is not None and not isinstance(center, str):
        per_cluster = np.asarray(center, np.float64)
        if per_cluster.shape == (2,):
            per_cluster = np.tile(per_cluster, (total, 1))
        if per_cluster.shape != (total, 2):
            raise ValueError(
                f'center must be "auto", None, (qx, qy) or one per cluster ({total}, 2); '
                f"got shape {np.shape(center)}"
            )
    out = np.zeros(total, ORIENTATION_DTYPE)
    done = 0
    chunk = 16
    for t, means in enumerate(steps):
        for c0 in range(0, len(means), chunk):
            block = np.asarray(means[c0 : c0 + chunk])
            r0 = offsets[t] + c0
            cen = center if per_cluster is None else per_cluster[r0 : r0 + len(block)]
            rows = match_orientations(block, libs, center=cen, **match_kw)
            out[offsets[t] + c0 : offsets[t] + c0 + len(block)] = rows
            done += len(block)
            if progress is not None:
                progress(done, total)
    params = {
        "energy_kev": float(energy_kev),
        "q_pixel_size": float(q_pixel_size),
        **lib_kw,
        # "auto", null (the detector centre) or "explicit"; the positions are in the records
        "center": center if center is None or isinstance(center, str) else "explicit",
        "match": {k: v for k, v in match_kw.items() if np.isscalar(v) or v is None},
    }
    return OrientationResult(records=out, offsets=offsets, structures=structures, params=params)
