"""One "STEM cluster" dock: the diffraction viewer above, the stages as tabs below.

The tabs come from a registry, so a new stage widget adds itself with one
call to :func:`register_tab` (before the dock is created)::

    from napari_stemcluster.widgets import register_tab
    register_tab("Bragg disks", BraggWidget, after="3. Clustering")
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QScrollArea, QSplitter, QTabWidget, QVBoxLayout, QWidget

from ._common import unwrap
from ._gcfreeze import freeze, watch

#: Pause (ms) between two pieces of the dock built in later turns.
BUILD_STEP_MS = 15
#: Turns the stage widgets wait for the diffraction canvas at most.
MAX_WAIT_TURNS = 400

if TYPE_CHECKING:
    import napari


@dataclass
class TabSpec:
    """A tab of the workflow dock: its title and ``factory(viewer) -> widget``."""

    title: str
    factory: Callable[[Any], Any]
    tooltip: str = ""


def _open_widget(viewer):
    from .._reader import OpenStemWidget

    return OpenStemWidget(viewer)


def _lazy(name: str):
    def make(viewer):
        from . import (
            _bragg,
            _clustering,
            _correction,
            _export,
            _kinetics,
            _orientation,
            _prefilter,
            _similarity,
        )

        modules = {
            "PrefilterWidget": _prefilter,
            "SimilarityWidget": _similarity,
            "ClusteringWidget": _clustering,
            "CorrectionWidget": _correction,
            "ResultsWidget": _export,
            "KineticsWidget": _kinetics,
            "BraggWidget": _bragg,
            "OrientationWidget": _orientation,
        }
        return getattr(modules[name], name)(viewer)

    make.__name__ = f"make_{name}"
    return make


#: The stages shown as tabs, in order. Extend with :func:`register_tab`.
WORKFLOW_TABS: list[TabSpec] = [
    TabSpec("Open", _open_widget, "Open a 4D/5D-STEM file (scan shape, virtual image)"),
    TabSpec("1. Prefilter", _lazy("PrefilterWidget"), "Optional correlative prefilter"),
    TabSpec("2. Similarity", _lazy("SimilarityWidget"), "Similarity and real-space mask"),
    TabSpec("3. Clustering", _lazy("ClusteringWidget"), "Region growing, threshold guidance"),
    TabSpec("Correct", _lazy("CorrectionWidget"), "Merge and split clusters by hand"),
    TabSpec("Bragg disks", _lazy("BraggWidget"), "Bragg disks, lattices and strain"),
    TabSpec("Orientation", _lazy("OrientationWidget"), "Crystal orientation of the clusters"),
    TabSpec("Kinetics", _lazy("KineticsWidget"), "Time series: grains followed in time"),
    TabSpec("Results", _lazy("ResultsWidget"), "Save, export figures, find a moved data file"),
]


def register_tab(
    title: str, factory: Callable[[Any], Any], *, after: str | None = None, tooltip: str = ""
) -> None:
    """Add a stage tab to the workflow dock (replacing one of the same title).

    Parameters
    ----------
    title : str
        Tab title.
    factory : callable(viewer) -> QWidget or magicgui widget
        Builds the stage widget for a viewer.
    after : str, optional
        Title of the tab to insert after (default: at the end).
    tooltip : str
        Shown over the tab.

    Examples
    --------
    >>> register_tab("Notes", lambda viewer: None, after="Open")
    >>> [t.title for t in WORKFLOW_TABS][:2]
    ['Open', 'Notes']
    >>> unregister_tab("Notes")
    """
    unregister_tab(title)
    spec = TabSpec(title, factory, tooltip)
    titles = [t.title for t in WORKFLOW_TABS]
    index = titles.index(after) + 1 if after in titles else len(WORKFLOW_TABS)
    WORKFLOW_TABS.insert(index, spec)


def unregister_tab(title: str) -> None:
    """Remove a tab from the registry (no error when it is absent).

    Examples
    --------
    >>> unregister_tab("no such tab")
    """
    WORKFLOW_TABS[:] = [t for t in WORKFLOW_TABS if t.title != title]


class WorkflowDock(QWidget):
    """The whole workflow in one dock that fits a 1600×1000 screen.

    Top: the :class:`~._diffraction.DiffractionViewer`; bottom: one tab per
    entry of :data:`WORKFLOW_TABS`, each in a scroll area, so the dock never
    grows taller than the window. The splitter between them can be dragged.
    The dock shows at once; the diffraction viewer, then the stage widgets,
    are built one per turn of the event loop afterwards (or when first
    used), so that docking does not hold the window for the sum of them.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Examples
    --------
    >>> dock = WorkflowDock(viewer)  # doctest: +SKIP
    >>> viewer.window.add_dock_widget(dock, name="STEM cluster")  # doctest: +SKIP
    >>> dock.stage("3. Clustering").run()  # doctest: +SKIP
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        from ._warmup import GcHold

        super().__init__()
        # no full garbage collection inside a build step (see GcHold)
        self._gc_hold = GcHold()
        self._viewer = viewer = unwrap(viewer)
        self._specs = list(WORKFLOW_TABS)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.setUsesScrollButtons(True)
        self.stages: dict[str, Any] = {}
        self._scrolls: dict[str, QScrollArea] = {}
        # Each tab gets an empty page now; its stage widget is built in a
        # later turn of the event loop (or when it is first asked for), so
        # docking never builds every widget and the canvas in one go.
        for spec in self._specs:
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QScrollArea.Shape.NoFrame)
            index = self.tabs.addTab(scroll, spec.title)
            if spec.tooltip:
                self.tabs.setTabToolTip(index, spec.tooltip)
            self._scrolls[spec.title] = scroll
        self.tabs.currentChanged.connect(self._on_tab)
        self._diffraction = None
        self._waited = 0
        self._placeholder = QLabel("Preparing the diffraction viewer…")
        self._placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self._placeholder)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)
        self.tabs.setMinimumHeight(220)
        self._placeholder.setMinimumSize(360, 360)
        self.splitter.setSizes([600, 340])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.note = QLabel("")
        self.note.setStyleSheet("color: #ffd866; padding: 2px 6px")
        layout.addWidget(self.note)
        layout.addWidget(self.splitter)
        self.setMinimumWidth(420)
        self._build_stage(self._specs[0].title)  # the tab on show
        watch(self, viewer)  # its removal unfreezes what was frozen (see _gcfreeze)
        self._warm_up()
        self._build_later()

    # ------------------------------------------------------------- building
    def _build_later(self) -> None:
        """Build the next missing piece in a later event-loop turn, one per turn."""
        from qtpy.QtCore import QTimer

        me = weakref.ref(self)

        def step():
            dock = me()
            if dock is None:
                return
            try:
                if dock._diffraction is None:
                    dock.diffraction  # noqa: B018 (builds it)
                elif not dock._diffraction.built and dock._waited < MAX_WAIT_TURNS:
                    # the stages after the canvas: a stage built in the turn
                    # of a canvas step's paint made one pause of the two
                    dock._waited += 1
                else:
                    missing = [t.title for t in dock._specs if t.title not in dock.stages]
                    if not missing:
                        dock._gc_hold.release(collect=True)  # young garbage (also when not frozen)
                        # napari, the dock and the file are up: kept out of full
                        # collections at once (what the build made brings the next
                        # full collection near, and it would walk everything)
                        freeze(dock._viewer)
                        return
                    dock._build_stage(missing[0])
            except RuntimeError:  # the dock was closed meanwhile
                dock._gc_hold.release(collect=False)
                return
            dock._build_later()

        # not 0: the canvas paints (and other timers run) before the next piece
        QTimer.singleShot(BUILD_STEP_MS, step)

    @property
    def diffraction(self):
        """The :class:`~._diffraction.DiffractionViewer` (built on first use)."""
        if self._diffraction is None:
            from ._diffraction import DiffractionViewer

            dif = DiffractionViewer(self._viewer)
            dif.setMinimumSize(360, 360)
            self.splitter.replaceWidget(0, dif)
            self._placeholder.deleteLater()
            self.splitter.setSizes([600, 340])  # the canvas gets most of the height
            self._diffraction = dif
        return self._diffraction

    def _build_stage(self, title: str):
        spec = next(t for t in self._specs if t.title == title)
        widget = spec.factory(self._viewer)
        self.stages[title] = widget
        scroll = self._scrolls[title]
        if widget is None:  # the factory declined: no tab
            self.tabs.removeTab(self.tabs.indexOf(scroll))
        else:
            scroll.setWidget(getattr(widget, "native", widget))
        return widget

    def _on_tab(self, index: int) -> None:
        title = self.tabs.tabText(index)
        if title and title not in self.stages:
            self._build_stage(title)

    def _warm_up(self):
        """Prepare the compute kernels in the background, saying so meanwhile."""
        from qtpy.QtCore import QTimer

        from ._warmup import is_warm, start_warm_up

        start_warm_up()
        if is_warm():
            self.note.hide()
            return
        self.note.setText("Preparing the compute kernels (one time)…")
        timer = QTimer(self.note)
        timer.setInterval(200)
        note = weakref.ref(self.note)  # the running timer must not keep the dock alive

        def check():
            label = note()
            if label is not None and is_warm():
                label.hide()
                timer.stop()

        timer.timeout.connect(check)
        timer.start()

    def stage(self, title: str):
        """The stage widget of a tab (e.g. ``"3. Clustering"``), built if needed."""
        if title not in self.stages:
            if title not in self._scrolls:
                raise KeyError(f"no tab {title!r}; tabs: {list(self._scrolls)}")
            self._build_stage(title)
        return self.stages[title]

    def show_stage(self, title: str) -> None:
        """Bring a tab to the front."""
        self.tabs.setCurrentIndex(list(self._scrolls).index(title))
