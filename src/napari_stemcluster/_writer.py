"""napari writer: save a segmentation Labels layer as a results file."""

from __future__ import annotations

from ._layers import get_stem_metadata, layers_to_result
from ._tracking_layers import tracks_to_save
from .io.results import write_results


def write_segmentation(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers made by napari-stemcluster.

    The layer's ``metadata["stemcluster"]`` holds the SegmentationResult
    (see :func:`napari_stemcluster._layers.result_to_layers`); edited labels
    are saved with their cluster table and means taken from the cluster sums
    the viewer keeps up to date while editing (so saving does not read the
    cube again), or recomputed from the cube without them. napari's save
    dialog has already confirmed replacing an existing results file; data
    files and the source file are never replaced.

    Returns
    -------
    list of str
        The file written.

    Examples
    --------
    >>> write_segmentation("seg.h5", layer.data, {"metadata": layer.metadata})  # doctest: +SKIP
    ['/.../seg.h5']
    """
    metadata = meta.get("metadata") or {}
    st = get_stem_metadata(metadata) or {}
    # Tracked grains (5D) go into the file's /tracking group.
    result, tracking, kinetics = tracks_to_save(
        data, st, lambda: _result_from_state(st, data) or layers_to_result(data, metadata)
    )
    orientation = st.get("orientation")
    n_clusters = sum(
        len(c) for c in (result.clusters if result.is_time_series else [result.clusters])
    )
    if orientation is not None and len(orientation.records) != n_clusters:
        orientation = None  # the labels were edited after matching: stale
    out = write_results(
        path,
        result,
        source=st.get("source"),
        calibration=st.get("calibration"),
        overwrite=True,
        bragg=_bragg_if_unedited(st, result),
        tracking=tracking,
        kinetics=kinetics,
        orientation=orientation,
        source_dtype=_cube_dtype(st),
    )
    return [str(out)]


def write_layers(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 multi-layer writer: "Save All Layers" or several selected layers.

    The results file holds one segmentation: the clusters Labels layer
    among the layers (the last one when there are several) is written with
    everything it carries (mean similarity, mask, averages, calibration);
    the other layers (virtual images, seeds, the similarity map of that
    segmentation) are already part of it or derived from the data file.

    Returns
    -------
    list of str
        The file written.

    Raises
    ------
    ValueError
        When no layer is a napari-stemcluster segmentation.

    Examples
    --------
    >>> layers = [(labels, {"metadata": md, "name": "clusters"}, "labels")]  # doctest: +SKIP
    >>> write_layers("all.h5", layers)  # doctest: +SKIP
    ['/.../all.h5']
    """
    segs = [
        (data, meta)
        for data, meta, kind in layer_data
        if kind == "labels"
        and (get_stem_metadata(meta.get("metadata") or {}) or {}).get("kind") == "segmentation"
    ]
    if not segs:
        names = ", ".join(repr(m.get("name", "?")) for _, m, _ in layer_data) or "none"
        raise ValueError(
            f"none of the layers to save ({names}) is a clusters layer made by "
            "napari-stemcluster; select the clusters Labels layer (made by the "
            "Clustering stage or read from a results file) and save again"
        )
    data, meta = segs[-1]
    return write_segmentation(path, data, meta)


def _bragg_if_unedited(st: dict, result) -> dict | None:
    """The layer's Bragg analysis, unless the labels were edited since (then it is stale)."""
    bragg = st.get("bragg")
    stored = st.get("result")
    if bragg is None or stored is None:
        return None
    import numpy as np

    same = np.array_equal(np.asarray(stored.labels), np.asarray(result.labels))
    return bragg if same else None


def _cube_dtype(st: dict):
    """The data type of the layer's cube (stored to recognise a moved data file)."""
    cube = st.get("cube")
    return None if cube is None else cube.dtype


def _result_from_state(st: dict, data):
    """The result of edited labels from the layer's live cluster sums, or None.

    napari calls writers in its GUI thread: reading the whole cube again to
    recompute the cluster means of edited labels would freeze the window for
    seconds on a large file. The :class:`~.widgets._state.ClusterState` of
    the layer already holds the sums of the current labels (kept up to date
    by every edit); only the edits not yet applied are read.
    """
    from dataclasses import replace

    import numpy as np

    state, stored = st.get("state"), st.get("result")
    if state is None or stored is None or getattr(state, "labels", None) is not data:
        return None
    state.sync()  # edits made since the last event-loop turn
    if np.array_equal(data, stored.labels):
        return None  # unedited: the stored result as it is
    steps = range(state.n_steps)
    if not all(state.has_sums(t) for t in steps):
        return None  # evicted sums: recompute from the cube
    tables = [state.table(t) for t in steps]
    means = [state.means(t) for t in steps]
    labels = np.array(data, dtype=np.int32, copy=True)
    if not state.time_series:
        return replace(stored, labels=labels, clusters=tables[0], cluster_means=means[0])
    return replace(stored, labels=labels, clusters=tables, cluster_means=means)
