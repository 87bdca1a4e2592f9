"""napari sample data: synthetic polycrystalline nanoparticles, 4D and 5D."""

from __future__ import annotations

from ._layers import sample_to_layers

#: Sizes chosen so that each sample is generated in well under 5 seconds.
POLYCRYSTAL_4D = {"scan_shape": (64, 64), "detector_shape": (64, 64), "seed": 0}
GROWTH_5D = {"scan_shape": (48, 48), "detector_shape": (48, 48), "n_times": 8, "seed": 1}


def make_polycrystal_sample() -> list[tuple]:
    """4D-STEM scan of polycrystalline nanoparticles, with its true grain map.

    Returns
    -------
    list of (data, kwargs, layer_type)
        A lazy annular-dark-field image (the cube in its metadata) and the
        "true grains" Labels layer.

    Examples
    --------
    >>> layers = make_polycrystal_sample()  # doctest: +SKIP
    >>> [kwargs["name"] for _, kwargs, _ in layers]  # doctest: +SKIP
    ['polycrystal ADF', 'true grains']
    """
    from .synthetic import make_polycrystal

    sample = make_polycrystal(**POLYCRYSTAL_4D)
    return sample_to_layers(sample, "polycrystal")


def make_growth_sample() -> list[tuple]:
    """5D in-situ growth series (time first), with its true grain maps.

    Examples
    --------
    >>> layers = make_growth_sample()  # doctest: +SKIP
    >>> layers[0][0].ndim  # doctest: +SKIP
    3
    """
    from .synthetic import make_polycrystal

    sample = make_polycrystal(**GROWTH_5D)
    return sample_to_layers(sample, "growth series")
