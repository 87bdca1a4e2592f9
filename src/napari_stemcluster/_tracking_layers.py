"""The Labels layer of tracked grains (persistent ids), as a napari layer-data tuple.

Its ``metadata["stemcluster"]`` has ``kind = "tracks"`` and holds the
``tracking`` (:class:`~napari_stemcluster.core.tracking.Tracking`), the
``kinetics`` (:class:`~napari_stemcluster.core.tracking.Kinetics`), the
``result`` it was linked from, the ``calibration``, the ``source`` and the
``orientations`` it was linked with. The
layer's label values are track ids, so napari gives a grain the same colour
at every time step. This module never imports napari.
"""

from __future__ import annotations

from .io.dataset import Calibration

METADATA_KEY = "stemcluster"


def linked_orientations(tracking, info: dict):
    """The orientation results of a results file that ``tracking`` was linked with, or None.

    ``info`` is the second value of :func:`~napari_stemcluster.io.read_results`.

    Examples
    --------
    >>> linked_orientations(info["tracking"], info)  # doctest: +SKIP
    OrientationResult(...)
    """
    used = (tracking.params or {}).get("used_orientations")
    key = {"rotations": "orientation", "lattices": "bragg"}.get(used)
    return None if key is None else info.get(key)


def tracking_layer(
    tracking,
    kinetics,
    result=None,
    calibration=None,
    name: str = "grains",
    *,
    source=None,
    orientations=None,
) -> tuple:
    """``(tracks, kwargs, "labels")`` for the tracked grains of a 5D result.

    ``orientations`` are the orientation (or Bragg) results the tracks were
    linked with, kept so that kinetics recomputed after a correction use them.

    Examples
    --------
    >>> data, kwargs, kind = tracking_layer(tracking, kinetics)  # doctest: +SKIP
    >>> kind, kwargs["name"]  # doctest: +SKIP
    ('labels', 'grains')
    """
    cal = Calibration.from_dict(calibration)
    tracks = tracking.tracks
    scale, units = cal.real_space_scale(tracks.ndim)
    meta = {
        "kind": "tracks",
        "tracking": tracking,
        "kinetics": kinetics,
        "result": result,
        "calibration": cal.as_dict(),
        "source": source,
        "cube": None,
        "orientations": orientations,
    }
    kwargs = {
        "name": name,
        "scale": scale,
        "units": units,
        "axis_labels": ("t", "rx", "ry"),
        "metadata": {METADATA_KEY: meta},
    }
    return tracks, kwargs, "labels"


def tracks_to_save(data, stem_meta: dict, result_of):
    """``(result, tracking, kinetics)`` to save for a Labels layer.

    A tracked-grain layer saves the segmentation it was linked from with its
    (possibly corrected) tracks; a clusters layer saves its tracks when they
    still describe its labels. ``result_of()`` gives a clusters layer's
    result.

    Examples
    --------
    >>> tracks_to_save(layer.data, meta, lambda: result)  # doctest: +SKIP
    (SegmentationResult(...), Tracking(...), Kinetics(...))
    """
    import numpy as np

    from .core.tracking import grain_kinetics

    if stem_meta.get("kind") == "tracks":
        result = stem_meta.get("result")
        if result is None:
            raise ValueError("this tracked-grain layer holds no segmentation to save")
        tracking = stem_meta["tracking"]
        kinetics = stem_meta.get("kinetics")
    else:
        result = result_of()
        tracking, kinetics = stem_meta.get("tracking"), None
        if tracking is not None and not np.array_equal(tracking.step_labels, result.labels):
            tracking = None  # edited since linking: the tracks no longer fit
    if tracking is not None and kinetics is None:
        # The orientation results the tracks were linked with, else measured ones.
        how = stem_meta.get("orientations")
        kinetics = grain_kinetics(
            tracking,
            result,
            orientations="pattern" if how is None else how,
            calibration=stem_meta.get("calibration"),
        )
    return result, tracking, kinetics
