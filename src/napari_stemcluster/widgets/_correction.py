"""Dock widget: merge and split clusters by hand (paint, erase and fill are napari's)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, create_widget

from ._common import (
    connect_while_alive,
    is_cluster_layer,
    layer_choices,
    layer_step,
    remember,
    unwrap,
)
from ._link import ensure_link

if TYPE_CHECKING:
    import napari

#: Fraction of a cluster moved to background above which a split asks first.
SPLIT_CONFIRM_FRACTION = 0.10

#: Key bindings added to every cluster layer chosen in the widget.
KEYS = {
    "Shift-A": "add the selected label to the merge list",
    "Shift-M": "merge the listed labels",
    "Shift-S": "split the selected label at the split threshold",
}

HELP = "\n".join(
    [
        "Paint (P), erase (E), fill (F) and pick (L) with napari's tools.",
        *(f"{key}: {what}" for key, what in KEYS.items()),
        "Ctrl-Z: undo any edit, merges and splits included.",
    ]
)


def parse_labels(text: str) -> list[int]:
    """Label numbers from text such as ``"3, 7 9"`` (duplicates removed, order kept).

    Examples
    --------
    >>> parse_labels("3, 7 9;3")
    [3, 7, 9]
    """
    out: list[int] = []
    for token in re.split(r"[\s,;]+", text.strip()):
        if not token:
            continue
        if not token.isdigit() or int(token) <= 0:
            raise ValueError(f"labels must be positive integers; got {token!r}")
        if int(token) not in out:
            out.append(int(token))
    return out


class CorrectionWidget(Container):
    """Merge selected labels, or split a label at a higher similarity threshold.

    Cluster averages and the layer's features follow every edit, including
    napari's own paint, erase and fill tools, within a fraction of a second:
    only the patterns of the positions whose label changed are read.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> widget = CorrectionWidget(viewer)  # doctest: +SKIP
    >>> widget._merge_list.value = "3, 7"  # doctest: +SKIP
    >>> widget.merge()  # labels 3 and 7 of the time step on screen become 3  # doctest: +SKIP
    3
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer = unwrap(viewer)
        self._layer_combo = create_widget(
            label="Clusters",
            annotation="napari.layers.Labels",
            options={"choices": layer_choices(viewer, is_cluster_layer)},
        )
        self._merge_list = create_widget(
            "", label="Labels to merge", annotation=str, widget_type="LineEdit"
        )
        self._merge_list.tooltip = "Comma-separated labels; Shift-A adds the selected label"
        self._add = create_widget(label="Add", annotation=None, widget_type="PushButton")
        self._add.text = "Add selected label"
        self._merge = create_widget(label="Merge", annotation=None, widget_type="PushButton")
        self._merge.text = "Merge labels"
        self._threshold = create_widget(
            0.95,
            label="Split threshold",
            annotation=float,
            widget_type="FloatSpinBox",
            options={"min": -1.0, "max": 1.0, "step": 0.005},
        )
        self._min_size = create_widget(
            1,
            label="Split min. size",
            annotation=int,
            widget_type="SpinBox",
            options={"min": 1, "max": 1_000_000},
        )
        self._split = create_widget(label="Split", annotation=None, widget_type="PushButton")
        self._split.text = "Split selected label"
        self._status = create_widget("", label="", annotation=str, widget_type="Label")
        self._help = create_widget(HELP, label="", annotation=str, widget_type="Label")
        from qtpy.QtCore import Qt

        self._help.native.setAlignment(Qt.AlignmentFlag.AlignLeft)
        help_box = Container(labels=False, widgets=[self._help])  # full width
        help_box.margins = (0, 0, 0, 0)
        self.extend(
            [
                self._layer_combo,
                self._merge_list,
                self._add,
                self._merge,
                self._threshold,
                self._min_size,
                self._split,
                self._status,
                help_box,
            ]
        )
        self._bound: set[int] = set()
        #: Called as ``confirm_split(parent, text)`` -> bool before a split that
        #: moves much of the cluster to background (replaceable in tests).
        self.confirm_split = _ask_split
        self._add.changed.connect(self.add_selected)
        self._merge.changed.connect(self.merge)
        self._split.changed.connect(self.split)
        self._layer_combo.changed.connect(self._on_layer)
        connect_while_alive(
            self.native,
            [
                (viewer.layers.events.inserted, self.reset_choices),
                (viewer.layers.events.removed, self.reset_choices),
            ],
        )
        remember("correction", {"threshold": self._threshold, "min_size": self._min_size})
        self._on_layer()

    def _on_layer(self, *_):
        layer = self._layer_combo.value
        for w in (self._add, self._merge, self._split):
            w.enabled = layer is not None
        if layer is None or id(layer) in self._bound:
            return
        self._bound.add(id(layer))
        actions = {"Shift-A": self.add_selected, "Shift-M": self.merge, "Shift-S": self.split}
        for key, action in actions.items():
            layer.bind_key(key, _key_action(action), overwrite=True)

    def _target(self):
        from napari.utils.notifications import show_error

        layer = self._layer_combo.value
        link = None if layer is None else ensure_link(self._viewer, layer)
        if link is None:
            show_error("Label correction: choose a cluster layer whose data cube is known")
            return None, None, 0
        link.flush()  # apply edits not yet seen, so sums match the labels
        return layer, link, layer_step(self._viewer, layer)

    def add_selected(self, *_):
        """Append the layer's selected label to the merge list."""
        layer = self._layer_combo.value
        if layer is None:
            return
        try:
            ids = parse_labels(self._merge_list.value)
        except ValueError:
            ids = []
        label = int(layer.selected_label)
        if label > 0 and label not in ids:
            ids.append(label)
        self._merge_list.value = ", ".join(str(i) for i in ids)

    def merge(self, *_) -> int | None:
        """Merge the listed labels (of the current time step) into the smallest."""
        from napari.utils.notifications import show_error

        layer, link, t = self._target()
        if link is None:
            return None
        try:
            ids = parse_labels(self._merge_list.value)
            indices, values, target = link.state.merge(t, ids)
        except ValueError as exc:
            show_error(f"Merge: {exc}")
            return None
        layer.data_setitem(indices, values)
        link.flush()
        layer.selected_label = target
        self._merge_list.value = ""
        self._status.value = f"merged {', '.join(map(str, ids))} into {target}"
        return target

    def split(self, *_) -> list[int] | None:
        """Split the layer's selected label by region growing at the split threshold."""
        from napari.utils.notifications import show_error, show_info

        layer, link, t = self._target()
        if link is None:
            return None
        label = int(layer.selected_label)
        thr = float(self._threshold.value)
        lost = self._split_loss(link.state, t, label, thr)
        if lost is not None:
            n_lost, size = lost
            if n_lost > SPLIT_CONFIRM_FRACTION * size and not self.confirm_split(
                self.native,
                f"Splitting cluster {label} ({size} positions) at {thr:g} would move "
                f"{n_lost} of them ({100 * n_lost / size:.0f} %) to background: they form "
                f"pieces smaller than the split min. size or are not similar enough to "
                f"any neighbour. Split anyway?",
            ):
                self._status.value = f"split of {label} cancelled"
                return None
        try:
            indices, values, new_ids = link.state.split(
                t, label, thr, min_size=int(self._min_size.value)
            )
        except ValueError as exc:
            show_error(f"Split: {exc}")
            return None
        if not new_ids and not len(values):
            show_info(f"Split: label {label} stays whole at threshold {thr:g}")
            self._status.value = f"label {label} does not split at {thr:g}"
            return []
        layer.data_setitem(indices, values)
        link.flush()
        pieces = ", ".join(map(str, [label, *new_ids]))
        moved = int(np.count_nonzero(np.asarray(values) == 0))
        where = f" at t = {t}" if layer.ndim == 3 else ""
        self._status.value = f"split {label}{where} into {pieces}; {moved} positions to background"
        return new_ids

    def _split_loss(self, state, t, label, thr):
        """``(positions sent to background, cluster size)`` of a split, or None."""
        from ..core.editing import split_label

        sim = state.step_similarity(t)
        if sim is None:
            return None
        cur = state.step_labels(t)
        size = int(np.count_nonzero(cur == label))
        if not size:
            return None
        try:
            out, _ = split_label(
                cur,
                label,
                sim,
                thr,
                mean_similarity=state.step_mean_similarity(t),
                min_size=int(self._min_size.value),
            )
        except ValueError:
            return None  # reported by the split itself
        return int(np.count_nonzero((cur == label) & (out == 0))), size


def _ask_split(parent, text: str) -> bool:
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(
        parent,
        "Split cluster?",
        text,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def _key_action(action):
    def run(layer):
        action()

    run.__doc__ = action.__doc__
    return run
