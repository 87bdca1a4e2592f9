"""The Labels layer of tracked grains (persistent ids), as a napari layer-data tuple.

Its ``metadata["stemcluster"]`` has ``kind = "tracks"`` and holds the
``tracking`` (:class:`~napari_stemcluster.core.tracking.Tracking`), the
``kinetics`` (:class:`~napari_stemcluster.core.tracking.Kinetics`), the
``result`` it was linked from, the ``calibration`` and the ``source``. The
layer's label values are track ids, so napari gives a grain the same colour
at every time step. This module never imports napari.
"""

from __future__ import annotations

from .io.dataset import Calibration

METADATA_KEY = "stemcluster"


def tracking_layer(
    tracking, kinetics, result=None, calibration=None, name: str = "grains", *, source=None
) -> tuple:
    """``(tracks, kwargs, "labels")`` for the tracked grains of a 5D result.

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
    }
    kwargs = {
        "name": name,
        "scale": scale,
        "units": units,
        "axis_labels": ("t", "rx", "ry"),
        "metadata": {METADATA_KEY: meta},
    }
    return tracks, kwargs, "labels"
