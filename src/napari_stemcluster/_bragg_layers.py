"""napari glue for the Bragg analysis: the orientation colour wheel and strain colour bars.

Used by the *Bragg disks & strain* widget and by the reader, so that a
results file opened again shows the same legend and colour bars as the
widget made. napari is imported only inside the functions.
"""

from __future__ import annotations

import numpy as np

LEGEND = "orientation legend"


def colour_wheel(size: int = 64, period: float = 180.0) -> np.ndarray:
    """RGBA legend of the cyclic orientation colour map: direction -> colour.

    The direction from the centre, measured like the lattice rotation (from
    the first image axis towards the second), modulo ``period`` degrees.

    Examples
    --------
    >>> colour_wheel(33, 90.0).shape
    (33, 33, 4)
    """
    from napari.utils.colormaps import ensure_colormap

    cmap = ensure_colormap("twilight")
    c = (size - 1) / 2
    x, y = np.mgrid[:size, :size] - c
    ang = np.degrees(np.arctan2(y, x)) % period
    rgba = cmap.map((ang / period).ravel()).reshape(size, size, 4).astype(np.float32)
    r = np.hypot(x, y)
    rgba[..., 3] = np.clip(c + 0.5 - r, 0, 1) * (r >= 0.3 * c)
    return rgba


def legend_layer_data(period: float, scan_shape, scale=None, translate=None, units=None):
    """``(wheel, kwargs, "image")``: the colour wheel beside the scan, 0.3 of its size.

    Examples
    --------
    >>> data, kw, kind = legend_layer_data(90.0, (40, 60))
    >>> data.shape, kind, kw["rgb"], kw["translate"].tolist()
    ((64, 64, 4), 'image', True, [0.0, 62.0])
    """
    scan = tuple(int(s) for s in scan_shape[-2:])
    scale = np.ones(2) if scale is None else np.asarray(scale, float)[-2:]
    origin = np.zeros(2) if translate is None else np.asarray(translate, float)[-2:]
    size = 0.3 * min(scan)
    kw = {
        "name": LEGEND,
        "rgb": True,
        "scale": scale * size / 64,
        "translate": origin + [0.0, (scan[1] + 2) * scale[1]],
        "metadata": {"stemcluster": {"kind": "orientation_legend", "period": float(period)}},
    }
    if units is not None:
        kw["units"] = [str(u) for u in units][-2:]
    return colour_wheel(64, period), kw, "image"


def bragg_extra_layers(analysis: dict, labels_shape, scale=None, units=None) -> list:
    """The legend of a stored analysis's orientation map (empty without lattices).

    Also shows the colour bars of the strain layers once napari adds them.
    """
    from .io._analysis_bragg import orientation_period

    out = []
    if analysis.get("lattices"):
        period = orientation_period(analysis["lattices"])
        out.append(legend_layer_data(period, labels_shape, scale=scale, units=units))
    if analysis.get("strain") is not None:
        show_colorbars_when_added()
    return out


def show_colorbars_when_added(viewer=None) -> None:
    """Make the colour bars of strain layers visible as they are added to ``viewer``.

    napari's layer-data tuples cannot carry a colour bar, so the current
    viewer's next strain layers (``metadata["stemcluster"]["kind"]`` starting
    with ``strain_``) get theirs when inserted; the hook removes itself after
    the four maps.
    """
    if viewer is None:
        try:
            import napari

            viewer = napari.current_viewer()
        except Exception:  # no napari session: nothing to show
            return
    if viewer is None:
        return
    seen = []

    def on_inserted(event):
        layer = event.value
        kind = str(((getattr(layer, "metadata", None) or {}).get("stemcluster") or {}).get("kind"))
        if kind.startswith("strain_"):
            layer.colorbar.visible = True
            seen.append(kind)
            if len(seen) >= 4:
                viewer.layers.events.inserted.disconnect(on_inserted)

    viewer.layers.events.inserted.connect(on_inserted)
