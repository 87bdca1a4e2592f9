"""The whole segmentation of a 4D or 5D cube: :func:`segment`."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np

from ._validate import check_cube
from .averages import cluster_means, cluster_table
from .clustering import cluster_scan
from .masking import IMAGE_METHODS, _sample_mean, dark_field_image, direct_beam
from .result import SegmentationResult
from .similarity import mean_similarity, neighbor_similarity

#: Prefilter settings used when ``prefilter=True``.
PREFILTER_DEFAULTS = {
    "sigma": 3.0,
    "radius": 4,
    "corr_range": (0.85, 0.95),
    "edge": None,
}


def segment(
    cube,
    threshold: float | str = "auto",
    min_cluster_size: int = 5,
    q_mask=None,
    sigma: float = 0.0,
    prefilter: bool | dict = False,
    real_mask="dark_field",
    *,
    linkage: str = "mean",
    mask_min_size: int = 0,
    mask_hole_size: int = 0,
    average: str = "raw",
    mask_source: str = "raw",
    progress: Callable[[int, int], None] | None = None,
) -> SegmentationResult:
    """Segment a 4D-STEM scan (or every time step of a 5D one) into clusters.

    Stages: optional correlative prefilter, cosine similarity of each pattern
    with its 8 neighbours, a real-space mask from the mean-similarity map,
    region growing, and cluster-averaged diffraction patterns.

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy) or (T, Rx, Ry, Qx, Qy)
        Any integer or float dtype; numpy, memory map, h5py or dask.
    threshold : float or "auto"
        Minimum neighbour similarity for joining a cluster; ``"auto"``
        chooses it for each time step from the data
        (:func:`~napari_stemcluster.core.threshold.auto_threshold`); the
        value used is in ``result.diagnostics`` and ``params["threshold_used"]``.
    min_cluster_size : int
        Smaller clusters are set to 0.
    q_mask : ndarray of bool (Qx, Qy) or (inner, outer), optional
        Diffraction-space mask for the similarity; radii select an annulus
        about the pattern centre in detector pixels.
    sigma : float
        Gaussian blur (detector pixels) of the patterns before comparing.
    prefilter : bool or dict
        Run :func:`~napari_stemcluster.core.prefilter.correlative_prefilter`
        first; a dict gives its keyword arguments.
    real_mask : {"dark_field", "triangle", "otsu"}, float, ndarray of bool, or None
        See :func:`~napari_stemcluster.core.masking.real_space_mask`.
        ``"dark_field"`` thresholds the raw cube's counts outside the direct
        beam (:func:`~napari_stemcluster.core.masking.dark_field_image`). A
        boolean array may be (Rx, Ry), or (T, Rx, Ry) for 5D.
    linkage : {"pair", "mean"}
        Growth criterion (:func:`~napari_stemcluster.core.regions.grow_regions`);
        ``"mean"`` also compares each candidate with its cluster's running
        mean pattern (features from
        :func:`~napari_stemcluster.core.linkage.pattern_features`).
    mask_min_size, mask_hole_size : int
        Remove mask regions / fill mask holes smaller than this.
    average : {"raw", "prefiltered"}
        Which cube the cluster averages are taken from.
    mask_source : {"raw", "prefiltered"}
        With the prefilter, whose mean-similarity map ``real_mask``'s
        automatic or value threshold is applied to. The raw cube's map
        (default) separates particles from background much better: after
        prefiltering, particles and background both pile up near 1 (see the
        README's quality table). Region growing and seeding always use the
        prefiltered similarity. Without the prefilter both are the same.
    progress : callable, optional
        ``progress(done, total)`` as work advances; raise from it to cancel.

    Returns
    -------
    SegmentationResult

    Examples
    --------
    >>> cube = np.zeros((6, 6, 4, 4), np.uint16)
    >>> cube[:, :3, 0, 0] = 100
    >>> cube[:, 3:, 3, 3] = 100
    >>> res = segment(cube, real_mask=None)
    >>> res.labels
    array([[1, 1, 1, 2, 2, 2],
           [1, 1, 1, 2, 2, 2],
           [1, 1, 1, 2, 2, 2],
           [1, 1, 1, 2, 2, 2],
           [1, 1, 1, 2, 2, 2],
           [1, 1, 1, 2, 2, 2]], dtype=int32)
    >>> res.cluster_means.shape
    (2, 4, 4)
    """
    ndim, pre, params = segment_params(
        cube,
        threshold=threshold,
        min_cluster_size=min_cluster_size,
        q_mask=q_mask,
        sigma=sigma,
        prefilter=prefilter,
        real_mask=real_mask,
        mask_min_size=mask_min_size,
        mask_hole_size=mask_hole_size,
        average=average,
        mask_source=mask_source,
        linkage=linkage,
    )
    steps = [cube] if ndim == 4 else [cube[t] for t in range(cube.shape[0])]
    masks = _per_step_masks(real_mask, len(steps), cube.shape[-4:-2], ndim)
    raw_maps = [bool(pre) and mask_source == "raw" and thresholds_a_map(m) for m in masks]
    track = _Progress(progress, len(steps) * (2 + bool(pre)) + sum(raw_maps))
    # One direct-beam position for the whole series, as the engine does.
    beam = direct_beam(_sample_mean(steps[0])) if any(_uses_image(m) for m in masks) else None
    parts = [
        _segment_one(
            step,
            threshold,
            min_cluster_size,
            q_mask,
            sigma,
            pre,
            mask,
            mask_min_size,
            mask_hole_size,
            average,
            raw_map,
            track,
            linkage,
            beam,
        )
        for step, mask, raw_map in zip(steps, masks, raw_maps, strict=True)
    ]
    return assemble_result(parts, params, ndim)


def assemble_result(parts, params: dict, ndim: int) -> SegmentationResult:
    """One result from per-step ``(labels, ms, mask, sim, means, table, diagnostics)``.

    Records the thresholds used and the diagnostics in ``params`` too (so
    the results file keeps them).
    """
    diags = [p[6] for p in parts]
    used = [d.threshold for d in diags]
    params["threshold_used"] = used[0] if ndim == 4 else used
    params["diagnostics"] = diags[0].as_dict() if ndim == 4 else [d.as_dict() for d in diags]
    if ndim == 4:
        labels, ms, rmask, sim, means, table, diag = parts[0]
        return SegmentationResult(labels, ms, rmask, sim, means, table, params, diag)
    stack = [np.stack([p[i] for p in parts]) for i in range(4)]
    return SegmentationResult(*stack, [p[4] for p in parts], [p[5] for p in parts], params, diags)


def segment_params(
    cube,
    *,
    threshold,
    min_cluster_size,
    q_mask,
    sigma,
    prefilter,
    real_mask,
    mask_min_size,
    mask_hole_size,
    average,
    mask_source,
    linkage="mean",
) -> tuple[int, dict | None, dict]:
    """Validate :func:`segment`'s arguments and record them.

    Shared by every path that runs the pipeline (in memory or chunked), so
    they accept the same arguments and write the same ``params``.

    Returns
    -------
    ndim : int
        4 or 5.
    prefilter : dict or None
        Full prefilter options, or None without the prefilter.
    params : dict
        Every parameter, JSON-serialisable, for ``SegmentationResult.params``.

    Examples
    --------
    >>> ndim, pre, params = segment_params(
    ...     np.zeros((2, 2, 3, 3)), threshold=0.9, min_cluster_size=5, q_mask=(1, 2),
    ...     sigma=0.0, prefilter=False, real_mask="triangle", mask_min_size=0,
    ...     mask_hole_size=0, average="raw", mask_source="raw")
    >>> ndim, pre, params["q_mask"]
    (4, None, [1.0, 2.0])
    """
    ndim = getattr(cube, "ndim", None)
    if ndim not in (4, 5):
        check_cube(cube, 4)  # raises with a clear message
    check_cube(cube, ndim)
    for name, value in (("average", average), ("mask_source", mask_source)):
        if value not in ("raw", "prefiltered"):
            raise ValueError(f"{name} must be 'raw' or 'prefiltered'; got {value!r}")
    if not int(min_cluster_size) >= 0:
        raise ValueError("min_cluster_size must be >= 0")
    _check_growth(threshold, linkage)
    pre = _prefilter_options(prefilter)
    params = {
        "threshold": threshold if isinstance(threshold, str) else float(threshold),
        "linkage": linkage,
        "min_cluster_size": int(min_cluster_size),
        "q_mask": _describe(q_mask),
        "sigma": float(sigma),
        "prefilter": pre,
        "real_mask": _describe(real_mask),
        "mask_min_size": int(mask_min_size),
        "mask_hole_size": int(mask_hole_size),
        "average": average,
        "mask_source": mask_source,
    }
    return ndim, pre, params


def _segment_one(
    cube,
    threshold,
    min_size,
    q_mask,
    sigma,
    pre,
    real_mask,
    mask_min_size,
    mask_hole_size,
    average,
    raw_map,
    track,
    linkage="mean",
    beam=None,
):
    source = cube
    if pre:
        from .prefilter import correlative_prefilter

        source = correlative_prefilter(cube, **pre, progress=track.stage())
    sim = neighbor_similarity(source, q_mask, sigma, progress=track.stage())
    ms = mean_similarity(sim)
    mask_map = ms
    if raw_map:
        mask_map = mean_similarity(neighbor_similarity(cube, q_mask, sigma, progress=track.stage()))
    labels, rmask, diag = cluster_scan(
        sim,
        ms,
        threshold=threshold,
        min_cluster_size=min_size,
        real_mask=real_mask,
        mask_map=mask_map,
        signal=dark_field_image(cube, beam) if _uses_image(real_mask) else None,
        mask_min_size=mask_min_size,
        mask_hole_size=mask_hole_size,
        linkage=linkage,
        features=_features(source, q_mask, sigma) if linkage == "mean" else None,
    )
    n = int(labels.max(initial=0))
    avg_cube = source if average == "prefiltered" else cube
    means = cluster_means(avg_cube, labels, n, progress=track.stage())
    return labels, ms, rmask, sim, means, cluster_table(labels, ms, n), diag


def _uses_image(real_mask) -> bool:
    """True when the real-space mask thresholds a virtual image of the cube."""
    return isinstance(real_mask, str) and real_mask in IMAGE_METHODS


def _features(cube, q_mask, sigma):
    from .linkage import pattern_features

    return pattern_features(cube, q_mask, sigma)


def _check_growth(threshold, linkage) -> None:
    from .regions import LINKAGES

    if isinstance(threshold, str):
        if threshold != "auto":
            raise ValueError(f"threshold must be a number or 'auto'; got {threshold!r}")
    elif not (isinstance(threshold, numbers.Real) and np.isfinite(threshold)):
        raise ValueError(f"threshold must be a number or 'auto'; got {threshold!r}")
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {LINKAGES}; got {linkage!r}")


def _prefilter_options(prefilter) -> dict | None:
    if prefilter is False or prefilter is None:
        return None
    if prefilter is True:
        return dict(PREFILTER_DEFAULTS)
    if isinstance(prefilter, dict):
        unknown = set(prefilter) - set(PREFILTER_DEFAULTS)
        if unknown:
            raise ValueError(
                f"unknown prefilter option(s) {sorted(unknown)}; expected "
                f"{sorted(PREFILTER_DEFAULTS)}"
            )
        return {**PREFILTER_DEFAULTS, **prefilter}
    raise TypeError(f"prefilter must be a bool or a dict; got {type(prefilter).__name__}")


def thresholds_a_map(real_mask) -> bool:
    """True when ``real_mask`` is computed from a mean-similarity map."""
    if isinstance(real_mask, str):
        return real_mask not in IMAGE_METHODS
    return isinstance(real_mask, numbers.Real) and not isinstance(real_mask, bool)


def _per_step_masks(real_mask, n_steps, scan_shape, ndim):
    if isinstance(real_mask, np.ndarray) and ndim == 5 and real_mask.ndim == 3:
        if real_mask.shape[0] != n_steps:
            raise ValueError(
                f"a 3-D real_mask needs one (Rx, Ry) mask per time step "
                f"({n_steps}); got shape {real_mask.shape}"
            )
        return list(real_mask)
    return [real_mask] * n_steps


def _describe(value):
    """JSON-friendly description of a parameter that may be an array."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, tuple | list) and all(isinstance(v, numbers.Real) for v in value):
        return [float(v) for v in value]
    return f"array{tuple(np.shape(value))}"


class _Progress:
    """Maps each stage's ``(done, total)`` onto one overall bar of ``units``."""

    SCALE = 1000

    def __init__(self, callback, n_stages: int):
        self.callback = callback
        self.total = n_stages * self.SCALE
        self.base = -self.SCALE

    def stage(self):
        self.base += self.SCALE
        if self.callback is None:
            return None
        base = self.base

        def report(done, total):
            self.callback(base + (self.SCALE * done) // max(total, 1), self.total)

        return report
