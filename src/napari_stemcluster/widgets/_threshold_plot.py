"""Threshold guidance for the Clustering widget (matplotlib in Qt).

Left: histogram of the neighbour similarities inside the real-space mask,
with the threshold drawn on it. Right: one point per cluster of the
preview, size against mean similarity, coloured like the labels. A click on
a point selects its cluster in the clusters layer; the cluster under the
mouse in the main viewer is ringed in the plot.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np


@dataclass
class ThresholdStats:
    """What a threshold does to the masked positions of one time step."""

    threshold: float
    min_size: int
    n_masked: int
    n_clustered: int  # in clusters that are kept
    n_kept: int
    n_dropped: int  # clusters smaller than min_size
    sizes: np.ndarray  # sizes of the kept clusters, label order
    mean_similarity: np.ndarray  # mean of the mean-similarity map over each kept cluster

    @property
    def fraction(self) -> float:
        return self.n_clustered / self.n_masked if self.n_masked else 0.0

    def summary(self) -> str:
        return (
            f"{self.n_kept} clusters cover {100 * self.fraction:.0f} % of the masked "
            f"positions; {self.n_dropped} smaller than {self.min_size} dropped"
        )


def threshold_stats(labels_all: np.ndarray, mean_similarity, mask, threshold, min_size):
    """Statistics of a region growing run without size filter.

    Parameters
    ----------
    labels_all : ndarray of int, shape (Rx, Ry)
        Labels grown with ``min_cluster_size=0`` (every cluster kept).
    mean_similarity : ndarray, shape (Rx, Ry)
    mask : ndarray of bool or None
        The real-space mask (None: everything).
    threshold : float
    min_size : int
        Clusters with fewer positions are the ones dropped.

    Returns
    -------
    ThresholdStats
        Kept clusters keep the order of ``labels_all`` (their seed order), as
        the relabelled result of the size filter does.

    Examples
    --------
    >>> lab = np.array([[1, 1, 0], [2, 0, 3]])
    >>> st = threshold_stats(lab, np.ones((2, 3)), None, 0.9, 2)
    >>> st.n_kept, st.n_dropped, st.n_clustered, st.n_masked
    (1, 2, 2, 6)
    """
    labels_all = np.asarray(labels_all)
    n = int(labels_all.max(initial=0))
    sizes = np.bincount(labels_all.ravel(), minlength=n + 1)[1:]
    ms = np.nan_to_num(np.asarray(mean_similarity, np.float64))
    sums = np.bincount(labels_all.ravel(), weights=ms.ravel(), minlength=n + 1)[1:]
    keep = sizes >= max(int(min_size), 1)
    n_masked = int(labels_all.size if mask is None else np.count_nonzero(mask))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(sizes > 0, sums / np.maximum(sizes, 1), 0.0)
    return ThresholdStats(
        threshold=float(threshold),
        min_size=int(min_size),
        n_masked=n_masked,
        n_clustered=int(sizes[keep].sum()),
        n_kept=int(keep.sum()),
        n_dropped=int((~keep & (sizes > 0)).sum()),
        sizes=sizes[keep],
        mean_similarity=means[keep],
    )


def masked_similarities(similarity, mask) -> np.ndarray:
    """Finite neighbour similarities of the positions inside the mask (flattened).

    Examples
    --------
    >>> sim = np.full((2, 2, 8), 0.5); sim[0, 0, 0] = np.nan
    >>> masked_similarities(sim, np.array([[True, False], [False, False]])).size
    7
    """
    sim = np.asarray(similarity)
    vals = sim.reshape(-1, sim.shape[-1]) if mask is None else sim[np.asarray(mask, bool)]
    vals = vals.ravel()
    return vals[np.isfinite(vals)]


def _plain_log_labels(axis) -> None:
    """Plain-text labels ("100", "1e+05") on a log axis instead of mathtext.

    matplotlib's default log labels are mathtext ("$10^{2}$"): the first one
    drawn builds its parser (about 0.1 s in the GUI thread) and every draw
    lays them out again (a quarter of the figure's drawing time).
    """
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter())
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


class ThresholdPlot:
    """The matplotlib canvas of the guidance (histogram and cluster scatter)."""

    def __init__(self, height_px: int = 170):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(5, 2), dpi=100, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(height_px)
        self.hist_ax = self.figure.add_axes((0.1, 0.22, 0.37, 0.66))
        self.scatter_ax = self.figure.add_axes((0.61, 0.22, 0.37, 0.66))
        self._hist = None  # (counts, edges) of the last histogram drawn
        self.stats: ThresholdStats | None = None
        self.colors = np.zeros((0, 4))
        self.highlighted: int | None = None
        self._points = None
        self._stairs = None
        self._ring = None
        self._line = None
        self._auto_line = self._auto_text = None
        #: The automatic threshold drawn on the histogram (None: not shown).
        self.auto: float | None = None
        #: Called with a label when a point of the scatter is clicked.
        self.on_pick = None
        self.canvas.mpl_connect("pick_event", self._on_pick)
        # the ring moves with the mouse: it is blitted onto a saved background
        # instead of redrawing the figure (a full draw takes 50-200 ms)
        self._background = None
        self._draw_pending = False
        self.canvas.mpl_connect("draw_event", self._on_draw)
        for ax in (self.hist_ax, self.scatter_ax):
            self._style(ax)

    @staticmethod
    def _style(ax):
        ax.set_facecolor("#262930")
        ax.tick_params(colors="white", labelsize=7, length=2, pad=1)
        for spine in ax.spines.values():
            spine.set_color("#888888")

    def set_histogram(self, values: np.ndarray) -> None:
        """Histogram of the similarities (redrawn only when the data change).

        The axes and their artists are made once and updated in place:
        clearing the axes threw their tick objects away, and making them
        again (a few dozen on log axes) was most of a redraw's time.
        """
        ax = self.hist_ax
        if self._stairs is None:
            self._stairs = ax.stairs([1.0], [0.0, 1.0], fill=True, color="#8fb3ff")
            ax.set_ylim(0.5, 2.0)  # limits of our own (set with each histogram)
            ax.set_yscale("log")
            _plain_log_labels(ax.yaxis)
            ax.set_xlabel("neighbour similarity (in mask)", color="white", fontsize=7, labelpad=1)
            ax.set_ylabel("pairs", color="white", fontsize=7, labelpad=1)
        if values.size:
            lo = float(min(values.min(), 0.0)) if values.min() < 0 else float(values.min())
            counts, edges = np.histogram(values, bins=100, range=(lo, 1.0))
            # the counts' own range, as autoscaling showed it (filled down to its bottom)
            filled = counts[counts > 0]
            bottom = float(filled.min()) / 1.6 if filled.size else 0.5
            self._stairs.set_data(counts, edges, baseline=bottom)
            self._stairs.set_visible(True)
            pad = 0.02 * max(1.0 - lo, 1e-6)
            ax.set_xlim(lo - pad, 1.0 + pad)
            ax.set_ylim(bottom, max(float(counts.max()), 1.0) * 1.6)
            self._hist = (counts, edges)
        else:
            self._stairs.set_visible(False)
            self._hist = None
        self.redraw()

    def set_threshold(self, threshold: float, auto: float | None = None) -> None:
        """Draw the threshold used (yellow) and the automatic one (dashed, labelled)."""
        for artist in (self._line, self._auto_line, self._auto_text):
            if artist is not None:
                artist.remove()
        self._line = self.hist_ax.axvline(threshold, color="yellow", lw=1.2)
        self._auto_line = self._auto_text = None
        self.auto = auto
        if auto is not None:
            ax = self.hist_ax
            self._auto_line = ax.axvline(auto, color="#ff9f40", lw=1.0, ls="--")
            self._auto_text = ax.text(
                auto,
                1.02,
                f"auto {auto:.2f}",
                color="#ff9f40",
                fontsize=7,
                ha="center",
                va="bottom",
                transform=ax.get_xaxis_transform(),
            )

    def set_clusters(self, stats: ThresholdStats, colors: np.ndarray) -> None:
        """Scatter of the kept clusters; ``colors`` are RGBA rows, one per label."""
        self.stats = stats
        self.colors = np.asarray(colors, float).reshape(-1, 4)
        ax = self.scatter_ax
        if self._points is None:  # made once, updated in place (see set_histogram)
            from matplotlib.ticker import NullFormatter

            self._points = ax.scatter(np.empty(0), np.empty(0), s=14, picker=4, edgecolors="none")
            ax.set_xlim(0.7, 10.0)  # limits of our own (set with each scatter)
            ax.set_xscale("log")
            _plain_log_labels(ax.xaxis)
            ax.xaxis.set_minor_formatter(NullFormatter())  # they overlap on a short axis
            ax.set_xlabel("cluster size (positions)", color="white", fontsize=7, labelpad=1)
            ax.set_ylabel("mean similarity", color="white", fontsize=7, labelpad=1)
        sizes = np.asarray(stats.sizes, float)
        means = np.asarray(stats.mean_similarity, float)
        self._points.set_offsets(np.column_stack([sizes, means]).reshape(-1, 2))
        self._points.set_facecolor(self.colors if len(self.colors) == len(sizes) else "#8fb3ff")
        if len(sizes):
            lo, hi = max(float(sizes.min()), 1.0), max(float(sizes.max()), 1.0)
            ax.set_xlim(lo / 1.6, hi * 1.6)
            finite = means[np.isfinite(means)]
            mlo, mhi = (float(finite.min()), float(finite.max())) if finite.size else (0, 1)
            pad = max(0.05 * (mhi - mlo), 0.01)
            ax.set_ylim(mlo - pad, mhi + pad)
        else:
            ax.set_xlim(0.7, 10.0)
            ax.set_ylim(0.0, 1.0)
        ax.set_title(stats.summary(), color="white", fontsize=7, loc="right", x=1.0, pad=3)
        self.highlight(self.highlighted)
        self.redraw()

    def redraw(self) -> None:
        """Draw the whole figure (after new data), the ring included, in a later turn.

        Not ``draw_idle``: its zero-delay timer runs before the event loop's
        other work, so the drawing (50-200 ms) added to the turn that made
        the new data (a preview's region growing, a job's new layer).
        """
        from qtpy.QtCore import QTimer

        from ._common import LATER_STEP_MS

        self._background = None
        if not self._draw_pending:
            self._draw_pending = True
            QTimer.singleShot(LATER_STEP_MS, self._draw_later)

    def _draw_later(self) -> None:
        self._draw_pending = False
        with contextlib.suppress(RuntimeError):  # the widget was closed and deleted meanwhile
            self.canvas.draw()

    def _on_draw(self, event=None):
        self._background = self.canvas.copy_from_bbox(self.scatter_ax.bbox)
        self._draw_ring()

    def highlight(self, label: int | None) -> None:
        """Ring the point of a cluster (None: no ring)."""
        self.highlighted = label
        st = self.stats
        if self._ring is None:
            # placed on a point of the plot so that it does not widen the axes
            at = ([st.sizes[0]], [st.mean_similarity[0]]) if st and len(st.sizes) else ([1], [0])
            self._ring = self.scatter_ax.scatter(
                *at, s=90, facecolors="none", edgecolors="yellow", linewidths=1.5
            )
            self._ring.set_animated(True)  # drawn only by _draw_ring
        st = self.stats
        if st is not None and label is not None and 1 <= label <= len(st.sizes):
            self._ring.set_offsets([[st.sizes[label - 1], st.mean_similarity[label - 1]]])
            self._ring.set_visible(True)
        else:
            self._ring.set_visible(False)
        if self._background is None:
            self.redraw()  # the whole figure, in a later turn (not draw_idle's next one)
        else:
            self.canvas.restore_region(self._background)
            self._draw_ring()

    def _draw_ring(self):
        if self._ring is None or self._background is None:
            return
        self.scatter_ax.draw_artist(self._ring)
        self.canvas.blit(self.scatter_ax.bbox)

    def _on_pick(self, event):
        if event.artist is not self._points or not len(event.ind):
            return
        label = int(event.ind[0]) + 1
        if self.on_pick is not None:
            self.on_pick(label)
