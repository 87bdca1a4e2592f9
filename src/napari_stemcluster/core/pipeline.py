"""The whole segmentation of a 4D or 5D cube: :func:`segment`."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np

from . import params as _params
from ._validate import check_cube
from .masking import resolve_q_mask
from .passes import (
    assemble,
    dark_field_beam,
    make_spec,
    needs_raw_map,
    run_in_process,
    thresholds_a_map,  # noqa: F401 - re-exported for older imports
)
from .result import SegmentationResult

#: Prefilter settings used when ``prefilter=True`` (from the parameter model).
PREFILTER_DEFAULTS = _params.PREFILTER_DEFAULTS

_D = _params.DEFAULTS


def segment(
    cube,
    threshold: float = _D["threshold"],
    min_cluster_size: int = _D["min_cluster_size"],
    q_mask=_D["q_mask"],
    sigma: float = _D["sigma"],
    prefilter: bool | dict = _D["prefilter"],
    real_mask=_D["real_mask"],
    *,
    mask_min_size: int = _D["mask_min_size"],
    mask_hole_size: int = _D["mask_hole_size"],
    average: str = _D["average"],
    mask_source: str = _D["mask_source"],
    linkage: str = _D["linkage"],
    progress: Callable[[int, int], None] | None = None,
) -> SegmentationResult:
    """Segment a 4D-STEM scan (or every time step of a 5D one) into clusters.

    Stages: optional correlative prefilter, cosine similarity of each pattern
    with its 8 neighbours, a real-space mask from the mean-similarity map,
    region growing, and cluster-averaged diffraction patterns.
    They run as the passes of :mod:`napari_stemcluster.core.passes`, in this
    process: the same functions the chunked engine, the command line and the
    napari widgets run, so every front end gives the same labels and
    similarity bit for bit.

    Parameters
    ----------
    cube : array_like, shape (Rx, Ry, Qx, Qy) or (T, Rx, Ry, Qx, Qy)
        Any integer or float dtype; numpy, memory map, h5py or dask.
    threshold : float or "auto"
        Minimum neighbour similarity for joining a cluster; ``"auto"``
        (default) chooses it for each time step from the data
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
        ``"dark_field"`` (default) thresholds the raw cube's counts outside
        the direct beam (:func:`~napari_stemcluster.core.masking.dark_field_image`).
        A boolean array may be (Rx, Ry), or (T, Rx, Ry) for 5D.
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
    linkage : {"mean", "pair"}
        Growth criterion (:func:`~napari_stemcluster.core.regions.grow_regions`):
        ``"mean"`` (default) also compares each candidate with its cluster's
        running mean pattern; ``"pair"`` is the paper's rule.
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
    # One orchestration: the passes of core.passes, here block after block.
    steps = [None] if ndim == 4 else list(range(cube.shape[0]))
    masks = _per_step_masks(real_mask, len(steps), cube.shape[-4:-2], ndim)
    qmask = resolve_q_mask(q_mask, tuple(cube.shape[-2:]))
    if qmask is not None and not qmask.any():
        raise ValueError("q_mask selects no detector pixel; nothing to compare")
    parts = run_in_process(
        cube,
        steps,
        masks,
        make_spec(
            pre,
            qmask,
            params["sigma"],
            average,
            features=params["linkage"] == "mean",
            beam=dark_field_beam(cube, steps, masks),
        ),
        grow_options(params),
        [needs_raw_map(pre, mask_source, m) for m in masks],
        progress,
    )
    return assemble(parts, params, time_axis=ndim == 5)


def grow_options(params: dict) -> dict:
    """The options of :func:`~napari_stemcluster.core.passes.grow_step` from ``params``.

    Examples
    --------
    >>> grow_options({"threshold": 0.9, "min_cluster_size": 5, "mask_min_size": 0,
    ...               "mask_hole_size": 0})["threshold"]
    0.9
    """
    keys = ("threshold", "min_cluster_size", "mask_min_size", "mask_hole_size")
    return {**{k: params[k] for k in keys}, "linkage": params.get("linkage", "pair")}


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
    linkage=_D["linkage"],
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
    check = _params.check
    threshold = check("threshold", threshold)
    min_cluster_size = check("min_cluster_size", min_cluster_size)
    sigma = check("sigma", sigma)
    mask_min_size = check("mask_min_size", mask_min_size)
    mask_hole_size = check("mask_hole_size", mask_hole_size)
    check("average", average)
    check("mask_source", mask_source)
    check("linkage", linkage)
    if _is_radii(q_mask):
        check("q_mask", q_mask)
    if isinstance(real_mask, numbers.Real) and not isinstance(real_mask, bool | np.bool_):
        check("real_mask", real_mask)
    pre = _params.prefilter_options(prefilter)
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


def _is_radii(q_mask) -> bool:
    return isinstance(q_mask, tuple | list) and all(isinstance(v, numbers.Real) for v in q_mask)


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
