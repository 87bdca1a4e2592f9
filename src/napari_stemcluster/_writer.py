"""napari writer: save a segmentation Labels layer as a results file."""

from __future__ import annotations

from ._layers import get_stem_metadata, layers_to_result
from ._tracking_layers import tracks_to_save
from .io.results import write_results


def write_segmentation(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers made by napari-stemcluster.

    The layer's ``metadata["stemcluster"]`` holds the SegmentationResult
    (see :func:`napari_stemcluster._layers.result_to_layers`); edited labels
    are saved with their cluster table and means recomputed. napari's save
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
    result, tracking, kinetics = tracks_to_save(data, st, lambda: layers_to_result(data, metadata))
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
    )
    return [str(out)]


def _bragg_if_unedited(st: dict, result) -> dict | None:
    """The layer's Bragg analysis, unless the labels were edited since (then it is stale)."""
    bragg = st.get("bragg")
    stored = st.get("result")
    if bragg is None or stored is None:
        return None
    import numpy as np

    same = np.array_equal(np.asarray(stored.labels), np.asarray(result.labels))
    return bragg if same else None
