"""The harder synthetic scans: structure, backgrounds and the hard cases."""

import numpy as np
import pytest

from napari_stemcluster.core import mean_similarity, neighbor_similarity
from napari_stemcluster.synthetic_hard import make_hard_scan


@pytest.fixture(scope="module")
def liquid():
    return make_hard_scan((32, 32), (48, 48), n_particles=3, seed=3)


def test_shapes_truth_and_params(liquid):
    assert liquid.cube.shape == (32, 32, 48, 48) and liquid.cube.dtype == np.uint16
    assert liquid.grains.shape == (32, 32) and liquid.grains.dtype == np.int32
    assert int(liquid.grains.max()) == liquid.n_grains
    np.testing.assert_array_equal(liquid.particles, liquid.grains > 0)
    assert liquid.params["background"] == "liquid" and liquid.params["seed"] == 3
    again = make_hard_scan(**{k: v for k, v in liquid.params.items() if k != "generator"})
    np.testing.assert_array_equal(again.cube, liquid.cube)


def test_vacuum_background_is_the_direct_beam_alone(liquid):
    vac = make_hard_scan((32, 32), (48, 48), n_particles=3, seed=3, background="vacuum")
    np.testing.assert_array_equal(vac.grains, liquid.grains)  # same geometry
    bg = ~vac.particles
    far = np.zeros((48, 48), bool)
    far[:8] = True  # detector rows far from the direct beam
    assert vac.cube[bg][:, far].sum() == 0  # nothing scatters outside the particles
    assert liquid.cube[bg][:, far].sum() > 0
    # vacuum patterns are all alike: mean similarity near 1 (what fools a
    # similarity-based mask)
    ms = mean_similarity(neighbor_similarity(vac.cube))
    assert np.median(ms[bg]) > 0.95


def test_bend_turns_the_lattice_inside_a_grain():
    flat = make_hard_scan((32, 32), (64, 64), n_particles=2, grains_per_particle=1, seed=4)
    bent = make_hard_scan(
        (32, 32), (64, 64), n_particles=2, grains_per_particle=1, seed=4, bend=3.0, dose=1e6
    )
    g = flat.grains == 1
    xs = np.argwhere(g)
    a, b = xs[0], xs[-1]  # two far-apart positions of one grain
    cos = lambda p, q: float(p.ravel() @ q.ravel() / np.linalg.norm(p) / np.linalg.norm(q))  # noqa: E731
    c_bent = cos(bent.cube[tuple(a)].astype(float), bent.cube[tuple(b)].astype(float))
    flat_hi = make_hard_scan(
        (32, 32), (64, 64), n_particles=2, grains_per_particle=1, seed=4, dose=1e6
    )
    c_flat = cos(flat_hi.cube[tuple(a)].astype(float), flat_hi.cube[tuple(b)].astype(float))
    assert c_flat > 0.95 > c_bent


def test_overlap_gets_its_own_label_and_both_lattices():
    scan = make_hard_scan((40, 40), (48, 48), n_particles=2, overlap=1, seed=5)
    assert scan.zone_axes[-1] == "overlap" and np.isnan(scan.orientations[-1])
    both = scan.grains == scan.n_grains
    assert both.any()


def test_thickness_variation_and_mistilt_change_counts():
    a = make_hard_scan((24, 24), (32, 32), n_particles=2, seed=6)
    b = make_hard_scan((24, 24), (32, 32), n_particles=2, seed=6, thickness_variation=0.8)
    c = make_hard_scan((24, 24), (32, 32), n_particles=2, seed=6, mistilt=0.5)
    inside = a.particles
    ta = a.cube[inside].sum(axis=(-2, -1)).astype(float)
    tb = b.cube[inside].sum(axis=(-2, -1)).astype(float)
    assert np.std(tb / ta) > 0.04  # Poisson noise alone: about 0.02
    assert not np.array_equal(a.cube, c.cube)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"background": "gas"}, "background"),
        ({"thickness_variation": 0.95}, "thickness_variation"),
        ({"bend": -1}, "bend"),
        ({"detector_shape": (8, 8)}, "detector_shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_hard_scan((24, 24), **kwargs)
