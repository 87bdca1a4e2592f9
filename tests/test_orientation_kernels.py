"""Compiled orientation kernels against plain numpy / scipy versions."""

import numpy as np
import pytest
from scipy.optimize import minimize

from napari_stemcluster.core import load_structure, orientation_library
from napari_stemcluster.core._orientation_numba import _nelder_mead, _rotated_score
from napari_stemcluster.core.orientation import _rotvec, simulate_pattern
from napari_stemcluster.data import builtin_cif


@pytest.fixture(scope="module")
def au_lib():
    return orientation_library(
        load_structure(builtin_cif("Au")), 300.0, 0.02, step_deg=2.0, g_max=1.2
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nelder_mead_follows_scipy(au_lib, seed):
    rng = np.random.default_rng(seed)
    truth = _rotvec(np.radians(rng.uniform(-3, 3, 3) + [0, 0, rng.uniform(0, 90)]))
    start = _rotvec(np.radians(rng.uniform(-1.0, 1.0, 3))) @ truth
    p = simulate_pattern(au_lib, truth, (96, 96), counts=1e5, rng=seed)
    from napari_stemcluster.core.orientation import _detect

    d = _detect(p.astype(np.float64), (47.5, 47.5), 2.0, 5.0, 100)
    assert len(d) >= 6
    q = (d[:, :2] - 47.5) * au_lib.q_pixel_size
    amp = d[:, 2]
    model = (
        au_lib.g,
        au_lib.f2,
        np.ascontiguousarray(q),
        amp,
        au_lib.wavelength,
        au_lib.sigma_excitation,
        0.0,
        au_lib.intensity_power,
        1.5 * au_lib.q_pixel_size,
        47.0 * au_lib.q_pixel_size,
        0.01,
        0.0,
    )
    args = (start, model)
    step = 0.5 * np.radians(au_lib.step_deg)
    ref = minimize(
        lambda w: -_rotated_score(np.asarray(w, np.float64), *args),
        np.zeros(3),
        method="Nelder-Mead",
        options={
            "initial_simplex": np.vstack([np.zeros(3), step * np.eye(3)]),
            "xatol": 1e-4,
            "fatol": 1e-8,
            "maxiter": 300,
        },
    )
    w, s = _nelder_mead(start, step, model, 1e-4, 1e-8, 300)
    np.testing.assert_allclose(w, ref.x, atol=1e-9)
    assert s == pytest.approx(-ref.fun, abs=1e-12)
    # and it does improve on the start
    assert s >= _rotated_score(np.zeros(3), *args)


@pytest.mark.parametrize("shape", [(32, 32), (20, 45), (1, 9)])
def test_aperture_disks_match_numpy(shape):
    from napari_stemcluster.core._orientation_numba import _aperture_disks
    from napari_stemcluster.core.orientation import _detect_numpy

    rng = np.random.default_rng(sum(shape))
    pos = np.array([[0.0, 0.0], [shape[0] - 1.0, shape[1] - 1.0], [0.3, 4.7]])
    pos = np.vstack([pos, rng.uniform(0, 1, (5, 2)) * (np.array(shape) - 1)])
    for pattern in (
        rng.poisson(5.0, shape).astype(np.float64),  # noise, disks cut by the borders
        np.zeros(shape),  # all zero: no signal, positions kept
        np.full(shape, 3.0),  # constant: the background takes it all
        rng.random(shape).astype(np.float32).astype(np.float64),
    ):
        got = _aperture_disks(pattern, pos, 3.0, 6.0)
        want = _detect_numpy(pattern, pos, 2.0)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_search_matches_the_sparse_reference(au_lib):
    from napari_stemcluster.core.orientation import _search, _search_numpy

    rng = np.random.default_rng(3)
    q = rng.uniform(-0.9, 0.9, (25, 2))
    amp = rng.uniform(0.1, 1.0, 25)
    for q_limit in (np.inf, 0.6):  # all shells, and the outer ones cut off
        corr, norm = _search(au_lib, q, amp, 0.03, q_limit)
        c0, n0 = _search_numpy(au_lib, q, amp, 0.03, q_limit)
        np.testing.assert_allclose(norm, n0, rtol=1e-9)
        np.testing.assert_allclose(corr, c0, atol=1e-4 * np.abs(c0).max())
        # the best in-plane angle: the same peak, up to exactly symmetric ties
        rows = np.arange(len(corr))
        np.testing.assert_allclose(
            c0[rows, corr.argmax(1)], c0.max(1), atol=1e-4 * np.abs(c0).max()
        )
