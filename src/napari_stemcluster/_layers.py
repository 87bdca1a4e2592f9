"""Convert datasets and segmentation results to napari layer-data tuples and back.

Every real-space layer made here carries, under ``layer.metadata["stemcluster"]``,
a plain dict that lets any widget find the lazy cube behind it:

``kind``
    ``"virtual_image"``, ``"segmentation"``, ``"mean_similarity"`` or
    ``"true_grains"``.
``cube``
    The lazy dask cube ``(Rx, Ry, Qx, Qy)`` or ``(T, Rx, Ry, Qx, Qy)``
    (None when unknown, e.g. for a results file read on its own).
``calibration``
    ``{"r_pixel_size", "r_units", "q_pixel_size", "q_units", "t_step",
    "t_units"}`` (see :class:`napari_stemcluster.io.Calibration`).
``source``, ``dataset``, ``format``
    File path, internal dataset path and reader of the cube.
``detector``
    For virtual images: ``{"type": "adf" | "bf", "inner", "outer", "center"}``.
``flatfield``, ``pixel_mask``
    Detector corrections (small arrays) or None.
``result``
    For segmentations: the :class:`~napari_stemcluster.core.result.SegmentationResult`.

This module never imports napari: it builds ``(data, kwargs, layer_type)``
tuples that napari turns into layers.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .core.averages import cluster_means, cluster_table
from .core.result import ClusterTable, SegmentationResult
from .core.virtual import detector_center, detector_mask, detector_radii, virtual_image
from .io.dataset import Calibration, StemDataset

METADATA_KEY = "stemcluster"


def _axis_labels(ndim: int) -> tuple[str, ...]:
    return ("t", "rx", "ry")[-ndim:] if ndim <= 3 else tuple(f"a{i}" for i in range(ndim))


def get_stem_metadata(layer_or_metadata) -> dict | None:
    """The ``"stemcluster"`` metadata dict of a layer (or of a metadata dict).

    Examples
    --------
    >>> get_stem_metadata({"stemcluster": {"kind": "virtual_image"}})["kind"]
    'virtual_image'
    >>> get_stem_metadata({}) is None
    True
    """
    md = getattr(layer_or_metadata, "metadata", layer_or_metadata)
    if not isinstance(md, dict):
        return None
    value = md.get(METADATA_KEY)
    return value if isinstance(value, dict) else None


def dataset_to_layers(
    dataset: StemDataset,
    *,
    detector: str = "adf",
    name: str | None = None,
    inner: float | None = None,
    outer: float | None = None,
) -> list[tuple]:
    """A lazy virtual-image layer of a dataset, with the cube in its metadata.

    Parameters
    ----------
    dataset : StemDataset
        The opened file.
    detector : {"adf", "bf"}
        Annular dark field (default) or bright field.
    name : str, optional
        Layer name (default: file name and detector).
    inner, outer : float, optional
        Detector radii in pixels (bright field: ``outer`` is the disk
        radius). Default: from the detector size, see
        :func:`napari_stemcluster.core.virtual.default_radii`.

    Returns
    -------
    list of (data, kwargs, "image")
        ``data`` is a dask array ``(Rx, Ry)`` or ``(T, Rx, Ry)``: napari
        computes only the time step on screen.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_stemcluster.io import StemDataset
    >>> ds = StemDataset.from_array(np.ones((3, 4, 8, 8), np.uint16))
    >>> data, kwargs, kind = dataset_to_layers(ds)[0]
    >>> data.shape, kind, kwargs["metadata"]["stemcluster"]["kind"]
    ((3, 4), 'image', 'virtual_image')
    """
    det = dataset.detector_shape
    mask = detector_mask(det, detector, inner, outer)
    r_in, r_out = (float(r) for r in detector_radii(det, detector, inner, outer))
    image = virtual_image(dataset.cube, mask, check_finite=False)
    scale, units = dataset.calibration.real_space_scale(image.ndim)
    if name is None:
        stem = dataset.path.stem if dataset.path is not None else "4D-STEM"
        name = f"{stem} {detector.upper()}"
    meta = {
        "kind": "virtual_image",
        "cube": dataset.cube,
        "calibration": dataset.calibration.as_dict(),
        "source": None if dataset.path is None else str(dataset.path),
        "dataset": dataset.dataset,
        "format": dataset.format,
        "detector": {
            "type": detector,
            "inner": r_in,
            "outer": r_out,
            "center": detector_center(det),
            "n_pixels": int(mask.sum()),
        },
        "flatfield": dataset.flatfield,
        "pixel_mask": dataset.pixel_mask,
        "notes": list(dataset.notes),
        "stem_dataset": dataset,
    }
    kwargs = {
        "name": name,
        "scale": scale,
        "units": units,
        "axis_labels": _axis_labels(image.ndim),
        "colormap": "gray",
        "metadata": {METADATA_KEY: meta},
    }
    return [(image, kwargs, "image")]


def label_features(table: ClusterTable, n_positions: int) -> dict[str, np.ndarray]:
    """``Labels.features`` columns of a cluster table: row ``k`` is label ``k``.

    napari's features table shows the row number as its own "Index" column,
    and a Labels layer without an ``index`` column finds the features of
    label ``k`` in row ``k``; so row 0 is the background (its ``size`` is the
    number of unclustered positions, no seed, no mean similarity) and no
    ``index`` column repeats the row number.

    Parameters
    ----------
    table : ClusterTable
        The clusters of one scan (labels 1..N).
    n_positions : int
        Scan positions of that scan (for the background's size).

    Examples
    --------
    >>> from napari_stemcluster.core.averages import cluster_table
    >>> table = cluster_table(np.array([[1, 1, 0], [2, 0, 0]]))
    >>> f = label_features(table, 6)
    >>> f["size"].tolist(), f["seed_rx"].tolist()
    ([3, 2, 1], [-1, 0, 1])
    """
    d = table.as_dict()
    d.pop("label")
    background = {
        "size": int(n_positions) - int(np.sum(table.size)),
        "seed_rx": -1,
        "seed_ry": -1,
        "mean_similarity": np.nan,
    }
    return {
        key: np.concatenate([np.array([background[key]], dtype=np.asarray(col).dtype), col])
        for key, col in d.items()
    }


def result_to_layers(
    result: SegmentationResult,
    calibration: Calibration | dict | None = None,
    name: str = "clusters",
    *,
    source: str | None = None,
    cube=None,
) -> list[tuple]:
    """Labels and mean-similarity layers of a segmentation.

    The Labels layer carries the whole result under
    ``metadata["stemcluster"]["result"]`` (and the cube, when given), so
    :func:`layers_to_result` and the napari writer can save it again.

    Parameters
    ----------
    result : SegmentationResult
        The segmentation.
    calibration : Calibration or dict, optional
        For the layers' scale and units.
    name : str
        Name of the Labels layer; the similarity map is ``"<name> mean similarity"``.
    source : str, optional
        Path of the 4D/5D-STEM file the result came from.
    cube : array, optional
        The cube (lets edited labels be saved with recomputed cluster means).

    Returns
    -------
    list of (data, kwargs, layer_type)
        ``(labels, ..., "labels")`` and ``(mean_similarity, ..., "image")``.

    Examples
    --------
    >>> layers = result_to_layers(result, name="grains")  # doctest: +SKIP
    >>> [t[2] for t in layers]  # doctest: +SKIP
    ['labels', 'image']
    """
    cal = Calibration.from_dict(calibration)
    labels = np.array(result.labels, dtype=np.int32)  # a copy: painting edits it
    scale, units = cal.real_space_scale(labels.ndim)
    common = {
        "calibration": cal.as_dict(),
        "source": source,
        "cube": cube,
    }
    label_kwargs = {
        "name": name,
        "scale": scale,
        "units": units,
        "axis_labels": _axis_labels(labels.ndim),
        "metadata": {METADATA_KEY: {"kind": "segmentation", "result": result, **common}},
    }
    if not result.is_time_series:
        label_kwargs["features"] = label_features(result.clusters, labels.size)
    msim = np.asarray(result.mean_similarity, dtype=np.float32)
    finite = msim[np.isfinite(msim)]
    if finite.size and finite.min() < finite.max():
        limits = (float(finite.min()), float(finite.max()))
    else:
        limits = (0.0, 1.0)
    sim_kwargs = {
        "name": f"{name} mean similarity",
        "scale": scale,
        "units": units,
        "axis_labels": _axis_labels(msim.ndim),
        "colormap": "viridis",
        "contrast_limits": limits,
        "visible": False,
        "metadata": {METADATA_KEY: {"kind": "mean_similarity", **common}},
    }
    return [(labels, label_kwargs, "labels"), (msim, sim_kwargs, "image")]


def layers_to_result(labels, metadata: dict | None = None, *, cube=None) -> SegmentationResult:
    """The SegmentationResult behind a Labels layer made by :func:`result_to_layers`.

    Unedited labels give back the stored result. Edited labels (painted,
    erased, relabelled) get their cluster table recomputed from the labels
    and the mean-similarity map, and their cluster means recomputed from the
    cube (``cube`` argument, else the one in the metadata).

    Parameters
    ----------
    labels : napari Labels layer or ndarray
        The layer, or its data.
    metadata : dict, optional
        The layer's metadata (taken from the layer when one is passed).
    cube : array, optional
        The 4D/5D cube, needed only for edited labels.

    Returns
    -------
    SegmentationResult

    Examples
    --------
    >>> data, kwargs, _ = result_to_layers(result)[0]  # doctest: +SKIP
    >>> layers_to_result(data, kwargs["metadata"]) is not None  # doctest: +SKIP
    True
    """
    if metadata is None:
        metadata = getattr(labels, "metadata", None)
    data = np.asarray(getattr(labels, "data", labels))
    meta = get_stem_metadata(metadata or {})
    if meta is None or not isinstance(meta.get("result"), SegmentationResult):
        raise ValueError(
            "this Labels layer was not made by napari-stemcluster (no "
            "metadata['stemcluster']['result']); only segmentation layers can be "
            "saved as results"
        )
    stored: SegmentationResult = meta["result"]
    if data.shape != np.shape(stored.labels):
        raise ValueError(
            f"labels of shape {data.shape} do not match the stored result {np.shape(stored.labels)}"
        )
    data = data.astype(np.int32, copy=False)
    if np.array_equal(data, stored.labels):
        return replace(stored, labels=data.copy())
    if data.size and data.min() < 0:
        raise ValueError("labels must be >= 0")
    cube = meta.get("cube") if cube is None else cube
    if cube is None:
        raise ValueError(
            "the labels were edited, so the cluster means must be recomputed; "
            "pass cube= (the 4D/5D data) or keep the cube in the layer metadata"
        )
    if tuple(cube.shape[:-2]) != data.shape:
        raise ValueError(
            f"cube scan shape {tuple(cube.shape[:-2])} does not match labels {data.shape}"
        )
    msim = np.asarray(stored.mean_similarity)

    def one(lab, ms, sub):
        # seeds: highest mean similarity, or nearest the centroid without a map
        table = cluster_table(lab, ms if np.isfinite(ms).any() else None)
        return table, cluster_means(sub, lab, len(table))

    if data.ndim == 2:
        table, means = one(data, msim, cube)
        return replace(stored, labels=data.copy(), clusters=table, cluster_means=means)
    pairs = [one(data[t], msim[t], cube[t]) for t in range(data.shape[0])]
    return replace(
        stored,
        labels=data.copy(),
        clusters=[p[0] for p in pairs],
        cluster_means=[p[1] for p in pairs],
    )


def sample_to_layers(sample, name: str, calibration: Calibration | None = None) -> list[tuple]:
    """Layers of a synthetic sample: lazy virtual image and its true grain map.

    Examples
    --------
    >>> from napari_stemcluster.synthetic import make_polycrystal  # doctest: +SKIP
    >>> layers = sample_to_layers(make_polycrystal((32, 32), (32, 32)), "demo")  # doctest: +SKIP
    """
    cal = calibration or Calibration(
        r_pixel_size=getattr(sample, "r_pixel_size", 1.0),
        r_units=getattr(sample, "r_units", "pixel"),
        q_pixel_size=getattr(sample, "q_pixel_size", 1.0),
        q_units=getattr(sample, "q_units", "pixel"),
    )
    ds = StemDataset.from_array(sample.cube, cal, name=name)
    ds.metadata = {"synthetic": True, "params": dict(getattr(sample, "params", {}) or {})}
    layers = dataset_to_layers(ds, name=f"{name} ADF")
    grains = np.asarray(sample.grains, dtype=np.int32)
    scale, units = cal.real_space_scale(grains.ndim)
    layers.append(
        (
            grains,
            {
                "name": "true grains",
                "scale": scale,
                "units": units,
                "axis_labels": _axis_labels(grains.ndim),
                "opacity": 0.5,
                "visible": False,
                "metadata": {
                    METADATA_KEY: {
                        "kind": "true_grains",
                        "cube": ds.cube,
                        "calibration": cal.as_dict(),
                        "source": None,
                    }
                },
            },
            "labels",
        )
    )
    return layers
