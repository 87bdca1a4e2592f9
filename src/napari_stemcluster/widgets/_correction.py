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
        # Time series linked by the Grain kinetics widget: carry merges and
        # splits over to the same grains at every time step.
        self._all_steps = create_widget(
            False, label="All time steps", annotation=bool, widget_type="CheckBox"
        )
        self._all_steps.tooltip = (
            "Merge or split the same grains at every time step (after Grain kinetics > Link)"
        )
        self._undo = create_widget(label="Undo", annotation=None, widget_type="PushButton")
        self._undo.text = "Undo last edit"
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
                self._all_steps,
                self._undo,
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
        self._undo.changed.connect(self.undo)
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
        for w in (self._add, self._merge, self._split, self._undo):
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
            if self._all_steps.value:
                steps = _steps_of_grains(layer, t, ids)
                if len(steps.get(t, ())) < 2:
                    raise ValueError(f"labels {ids} are not two grains at this time step")
                done = {s: link.state.merge(s, labs) for s, labs in steps.items() if len(labs) > 1}
                edits, target = list(done.values()), done[t][2]
            else:
                edits = [link.state.merge(t, ids)]
                target = edits[0][2]
        except ValueError as exc:
            show_error(f"Merge: {exc}")
            return None
        changed = _write_edits(layer, link, edits)
        if self._all_steps.value:
            _merge_tracked(layer, t, ids)
        layer.selected_label = target
        self._merge_list.value = ""
        self._status.value = f"merged {', '.join(map(str, ids))} into {target}" + (
            f" at steps {', '.join(map(str, changed))}" if self._all_steps.value else ""
        )
        return target

    def split(self, *_) -> list[int] | None:
        """Split the layer's selected label by region growing at the split threshold."""
        from napari.utils.notifications import show_error, show_info

        layer, link, t = self._target()
        if link is None:
            return None
        label = int(layer.selected_label)
        thr = float(self._threshold.value)
        min_size = int(self._min_size.value)
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
            steps = _steps_of_grains(layer, t, [label]) if self._all_steps.value else {t: [label]}
            edits = {
                s: link.state.split(s, labs[0], thr, min_size=min_size) for s, labs in steps.items()
            }
        except ValueError as exc:
            show_error(f"Split: {exc}")
            return None
        new_ids = edits[t][2] if t in edits else []
        if not any(len(e[1]) for e in edits.values()):
            show_info(f"Split: label {label} stays whole at threshold {thr:g}")
            self._status.value = f"label {label} does not split at {thr:g}"
            return []
        changed = _write_edits(layer, link, list(edits.values()))
        pieces = ", ".join(map(str, [label, *new_ids]))
        moved = sum(int(np.count_nonzero(np.asarray(e[1]) == 0)) for e in edits.values())
        where = f" at t = {t}" if layer.ndim == 3 and not self._all_steps.value else ""
        self._status.value = (
            f"split {label}{where} into {pieces}; {moved} positions to background"
            + (f"; steps {', '.join(map(str, changed))} changed" if self._all_steps.value else "")
        )
        return new_ids

    def undo(self, *_) -> tuple[int, ...]:
        """Undo the last edit of the layer (one merge or split at all steps included).

        Returns the time steps it changed, which the status line names.
        """
        layer, link, _ = self._target()
        if link is None:
            return ()
        layer.undo()
        steps = link.flush()
        self._status.value = (
            f"undo changed time step(s) {', '.join(map(str, steps))}"
            if steps
            else "nothing to undo"
        )
        return steps

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


def _steps_of_grains(layer, t: int, labels) -> dict[int, list[int]]:
    """Labels of the same grains at every step, from the layer's tracking."""
    import numpy as np

    from ..core.tracking import same_grains
    from ._common import stem_meta

    tracking = (stem_meta(layer) or {}).get("tracking")
    if tracking is None or layer.ndim != 3:
        raise ValueError("link the time steps first (Grain kinetics > Link time steps)")
    steps = same_grains(tracking, t, labels)
    stale = [s for s in steps if not np.array_equal(layer.data[s], tracking.step_labels[s])]
    if stale:
        raise ValueError(
            f"the labels changed at step(s) {', '.join(map(str, stale))} since the time "
            "steps were linked; link them again (Grain kinetics > Link time steps)"
        )
    return steps


def _merge_tracked(layer, t: int, ids) -> None:
    """Keep the layer's tracking in step with a merge at all steps (one grain now)."""
    import dataclasses

    import numpy as np

    from ..core.tracking import merge_tracks
    from ._common import stem_meta

    meta = stem_meta(layer)
    tracking = meta["tracking"]
    tracks = {int(tracking.track_of[t][i - 1]) for i in ids}
    if len(tracks) > 1:
        tracking, _ = merge_tracks(tracking, sorted(tracks))
    meta["tracking"] = dataclasses.replace(tracking, step_labels=np.array(layer.data))


def _write_edits(layer, link, edits) -> tuple[int, ...]:
    """Write ``(indices, values, ...)`` edits as one undoable step; the steps changed."""
    import numpy as np

    edits = [e for e in edits if len(e[1])]
    if not edits:
        return ()
    indices = tuple(np.concatenate([e[0][i] for e in edits]) for i in range(len(edits[0][0])))
    values = np.concatenate([e[1] for e in edits])
    layer.data_setitem(indices, values)
    return link.flush()


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
