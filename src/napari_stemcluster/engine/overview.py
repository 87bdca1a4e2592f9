"""A PNG overview of a segmentation, drawn without a display.

One row per time step (at most :data:`MAX_ROWS`, evenly spaced): the
virtual annular dark-field image, the mean-similarity map, the cluster map,
and the averaged diffraction patterns of the largest clusters, each framed
in its cluster's colour. Pictures are composed as numpy RGB arrays; Pillow
(a dependency of scikit-image) adds the captions and writes the file. For a
tracked time series, colours follow the grains and a plot of their areas
(matplotlib's Agg canvas) is added below.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Time steps shown at most (evenly spaced over the series).
MAX_ROWS = 5
#: Cluster averages shown per time step (the largest clusters).
N_AVERAGES = 4
#: Height of one panel in pixels.
PANEL = 160
_GAP = 6
_HEADER = 22
_ROW_LABEL = 46
_BACKGROUND = (255, 255, 255)

# viridis at 0, 1/8, ..., 1
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 82, 139),
        (44, 114, 142),
        (33, 145, 140),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """uint8 RGB (viridis) of values in [0, 1]; NaN is drawn black.

    Examples
    --------
    >>> colormap(np.array([0.0, 1.0])).tolist()
    [[68, 1, 84], [253, 231, 37]]
    """
    v = np.asarray(values, np.float64)
    nan = ~np.isfinite(v)
    v = np.clip(np.nan_to_num(v), 0, 1) * (len(_VIRIDIS) - 1)
    i = np.minimum(v.astype(int), len(_VIRIDIS) - 2)
    f = (v - i)[..., None]
    rgb = _VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f
    rgb[nan] = 0
    return np.round(rgb).astype(np.uint8)


def label_colors(n: int) -> np.ndarray:
    """Distinct uint8 RGB colours for labels ``1..n`` (row 0 is black, label 0).

    Hues follow the golden ratio, so neighbouring label numbers differ.

    Examples
    --------
    >>> label_colors(2).shape
    (3, 3)
    """
    k = np.arange(n)
    h = (k * 0.618033988749895 + 0.1) % 1.0
    s = 0.55 + 0.35 * ((k * 7) % 3) / 2
    v = np.full(n, 0.95)
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.choose(i, [v, q, p, p, t, v]),
            np.choose(i, [t, v, v, q, p, p]),
            np.choose(i, [p, p, t, v, v, q]),
        ],
        axis=1,
    )
    return np.vstack([[0, 0, 0], np.round(255 * table)]).astype(np.uint8)


def _scaled(img: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W, 3) image to ``height`` rows."""
    h, w = img.shape[:2]
    width = max(1, round(w * height / h))
    rows = (np.arange(height) * h // height).clip(0, h - 1)
    cols = (np.arange(width) * w // width).clip(0, w - 1)
    return img[rows][:, cols]


def _normalised(a: np.ndarray, lo_pct=1.0, hi_pct=99.5) -> np.ndarray:
    a = np.asarray(a, np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros_like(a)
    lo, hi = np.percentile(finite, [lo_pct, hi_pct])
    if hi <= lo:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def _gray(a: np.ndarray) -> np.ndarray:
    g = np.round(255 * np.clip(np.nan_to_num(a), 0, 1)).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _framed(img: np.ndarray, color, width: int = 4) -> np.ndarray:
    out = img.copy()
    out[:width] = out[-width:] = color
    out[:, :width] = out[:, -width:] = color
    return out


def _row_panels(vimg, ms, labels, means, sizes, colors=None, ids=None, columns=None):
    """Panels of one row; ``ids`` maps cluster ``k`` to its display id (default ``k + 1``),
    ``columns`` lists the display ids whose averages to show (default: the largest)."""
    if colors is None:
        colors = label_colors(int(labels.max(initial=0)))
    panels = [
        _scaled(_gray(_normalised(vimg)), PANEL),
        _scaled(colormap(_normalised(ms, 2, 100)), PANEL),
        _scaled(colors[labels], PANEL),
    ]
    sizes = np.asarray(sizes)
    if columns is None:
        order = np.argsort(-sizes, kind="stable")[:N_AVERAGES]
        items = [(k, k + 1 if ids is None else ids[k]) for k in order]
    else:
        items = []
        for c in columns:
            mine = np.flatnonzero(np.asarray(ids) == c)
            items.append((mine[np.argmax(sizes[mine])] if mine.size else None, c))
    for k, c in items:
        if k is None:  # the grain is absent at this step
            blank = np.full((PANEL, PANEL, 3), _BACKGROUND, np.uint8)
            panels.append(_framed(blank, colors[c], width=1))
            continue
        pattern = np.log1p(np.clip(np.asarray(means[k], np.float64), 0, None))
        img = _scaled(_gray(_normalised(pattern, 0.0, 99.9)), PANEL)
        panels.append(_framed(img, colors[c]))
    return panels


def kinetics_plot(kinetics, colors: np.ndarray, size: tuple[int, int], highlight=()) -> np.ndarray:
    """uint8 RGB picture of every tracked grain's area against time.

    Each grain is drawn in its colour (``colors[track]``); the tracks in
    ``highlight`` are drawn thicker. Uses matplotlib's Agg canvas (no
    display).

    Examples
    --------
    >>> from napari_stemcluster.core.tracking import grain_kinetics, link_clusters
    >>> labels = np.zeros((3, 4, 4), np.int32); labels[:, :2, :2] = 1; labels[2, :3, :3] = 1
    >>> kinetics_plot(grain_kinetics(link_clusters(labels)), label_colors(1), (300, 120)).shape
    (120, 300, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    table, units = kinetics.table, kinetics.units
    for g in np.unique(table["track"]):
        rows = kinetics.rows(g)
        bold = int(g) in {int(h) for h in highlight}
        ax.plot(
            table["time"][rows],
            table["area"][rows],
            "-o",
            color=colors[int(g) % len(colors)] / 255.0,
            lw=2.5 if bold else 1.0,
            ms=3 if bold else 1.5,
            zorder=3 if bold else 2,
        )
    ax.set_xlabel(f"time ({units.get('time', '')})")
    ax.set_ylabel(f"area ({units.get('area', '')})")
    ax.set_title("grain areas (colours as in the cluster maps)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def render_overview(cube, result, path: str | os.PathLike, tracking=None, kinetics=None) -> Path:
    """Draw a PNG overview of ``result`` computed from ``cube``.

    With the ``tracking`` of a 5D result, clusters are coloured by their
    persistent track id (a grain keeps its colour in every row) and the
    average columns follow the largest grains through time; with its
    ``kinetics`` too, a plot of every grain's area against time is added.

    Parameters
    ----------
    cube : array_like
        The segmented cube (numpy or dask), ``(Rx, Ry, Qx, Qy)`` or
        ``(T, Rx, Ry, Qx, Qy)``; read once for the virtual image.
    result : SegmentationResult
        Its segmentation.
    path : str or Path
        PNG file to write.
    tracking : Tracking, optional
        From :func:`napari_stemcluster.core.tracking.link_result`.
    kinetics : Kinetics, optional
        From :func:`napari_stemcluster.core.tracking.grain_kinetics`.

    Returns
    -------
    Path

    Examples
    --------
    >>> from napari_stemcluster import segment
    >>> cube = np.random.default_rng(0).poisson(5, (8, 8, 16, 16))
    >>> render_overview(cube, segment(cube), "overview.png")  # doctest: +SKIP
    PosixPath('overview.png')
    """
    from PIL import Image, ImageDraw

    from ..core.virtual import virtual_adf

    vimg = virtual_adf(cube)
    if hasattr(vimg, "compute"):
        vimg = vimg.compute()
    vimg = np.asarray(vimg)
    per_step = result.steps()
    if vimg.ndim == 2:
        vimg = vimg[None]  # one time step: the passes' form
    n = len(per_step)
    picked = sorted(set(np.linspace(0, n - 1, min(n, MAX_ROWS)).round().astype(int)))
    t0 = result.params.get("time_range", [0])[0]
    colors = columns = tracks = None
    if tracking is not None:
        # Colours and average columns follow the tracked grains.
        colors = label_colors(tracking.n_tracks)
        tracks = tracking.tracks
        area = np.bincount(tracks.ravel(), minlength=tracking.n_tracks + 1)[1:]
        columns = list(np.argsort(-area, kind="stable")[:N_AVERAGES] + 1)
    rows = [
        (
            f"t={t0 + t}" if result.is_time_series else "",
            _row_panels(
                vimg[t],
                per_step[t].mean_similarity,
                per_step[t].labels if tracks is None else tracks[t],
                per_step[t].cluster_means,
                per_step[t].clusters.size,
                colors,
                None if tracking is None else tracking.track_of[t],
                columns,
            ),
        )
        for t in picked
    ]
    widths = [[p.shape[1] for p in panels] for _, panels in rows]
    map_w = widths[0][0]
    avg_w = max((w for ws in widths for w in ws[3:]), default=PANEL)
    left = _ROW_LABEL if result.is_time_series else _GAP
    width = left + 3 * (map_w + _GAP) + N_AVERAGES * (avg_w + _GAP) + _GAP
    height = _HEADER + len(rows) * (PANEL + _GAP) + _GAP
    plot = None
    if kinetics is not None and tracking is not None:
        plot = kinetics_plot(kinetics, colors, (width - 2 * _GAP, 2 * PANEL), columns)
        height += plot.shape[0] + _GAP
    canvas = np.full((height, width, 3), _BACKGROUND, np.uint8)
    if plot is not None:
        canvas[height - _GAP - plot.shape[0] : height - _GAP, _GAP : _GAP + plot.shape[1]] = plot
    for r, (_, panels) in enumerate(rows):
        y = _HEADER + r * (PANEL + _GAP)
        x = left
        for i, p in enumerate(panels):
            canvas[y : y + p.shape[0], x : x + p.shape[1]] = p
            x += (map_w if i < 3 else avg_w) + _GAP
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    titles = ["virtual ADF", "mean similarity", "clusters"]
    for i, title in enumerate(titles):
        draw.text((left + i * (map_w + _GAP) + 2, 5), title, fill=(0, 0, 0))
    draw.text(
        (left + 3 * (map_w + _GAP) + 2, 5),
        f"averages of the {N_AVERAGES} largest "
        + ("grains, followed through time" if tracking is not None else "clusters")
        + " (log scale)",
        fill=(0, 0, 0),
    )
    for r, (label, _) in enumerate(rows):
        draw.text((6, _HEADER + r * (PANEL + _GAP) + PANEL // 2 - 6), label, fill=(0, 0, 0))
    from ..io.output import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")
    return path
