"""The plugin's gc.freeze policy: long-lived objects out of full collections, no leaks."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

from napari_stemcluster.widgets import _gcfreeze  # noqa: E402
from napari_stemcluster.widgets._gcfreeze import (  # noqa: E402
    freeze,
    is_frozen,
    thaw,
    watch,
)


class _Node:
    """A reference cycle: only the cyclic collector frees it."""

    def __init__(self):
        self.me = self


@pytest.fixture
def unfrozen():
    """Start with nothing frozen (the suite's fixture freezes earlier tests' survivors).

    The plugin never unfreezes what it did not freeze, so its policy is
    tested from an empty permanent generation.
    """
    gc.unfreeze()
    yield
    thaw()


def test_freeze_moves_objects_out_of_collections_and_a_removed_layer_is_collected(
    make_napari_viewer, qtbot, monkeypatch, unfrozen
):
    monkeypatch.setattr(_gcfreeze, "REFREEZE_MS", 50)
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((4, 5), np.float32), name="to remove")
    kept = viewer.add_image(np.ones((4, 5), np.float32), name="kept")
    node = _Node()
    node_ref, layer_ref = weakref.ref(node), weakref.ref(layer)
    assert freeze(viewer)
    assert is_frozen() and gc.get_freeze_count() > 0
    # the risk the policy is for: frozen cyclic garbage survives a full collection
    del node
    gc.collect()
    assert node_ref() is not None
    # a frozen layer is unfrozen before its removal, and napari's collection
    # after the removal reclaims it
    viewer.layers.remove(layer)
    del layer
    assert not is_frozen()
    gc.collect()  # what napari's canvas does after a removal (vispy may defer it)
    assert layer_ref() is None
    assert node_ref() is None  # the other frozen garbage went with it
    # frozen again a moment later, the layer that stays among the frozen
    qtbot.waitUntil(is_frozen, timeout=2000)
    assert kept in _gcfreeze._State.layers
    # a layer added after the freeze is not frozen: removed, it goes at once
    late = viewer.add_image(np.zeros((3, 3), np.float32), name="late")
    late_ref = weakref.ref(late)
    viewer.layers.remove(late)
    del late
    assert is_frozen()  # no unfreezing needed for it
    gc.collect()
    assert late_ref() is None
    # closing the viewer leaves nothing frozen
    viewer.close()
    assert not is_frozen()
    assert gc.get_freeze_count() == 0
    assert not freeze(viewer)  # a closed viewer does not freeze again


def test_removing_a_watched_dock_leaves_nothing_frozen(make_napari_viewer, qtbot, unfrozen):
    from qtpy.QtWidgets import QLabel

    viewer = make_napari_viewer()
    widget = QLabel("a plugin dock")
    viewer.window.add_dock_widget(widget, name="dock")
    watch(widget, viewer)
    assert freeze(viewer)
    viewer.window.remove_dock_widget(widget)
    assert not is_frozen()
    assert gc.get_freeze_count() == 0


def test_the_host_s_frozen_objects_are_left_alone(make_napari_viewer):
    viewer = make_napari_viewer()
    gc.freeze()  # as an application (or this suite's fixture) may do
    count = gc.get_freeze_count()
    assert count > 0
    assert not freeze(viewer)
    assert not thaw()
    viewer.add_image(np.zeros((2, 2)), name="x")
    viewer.layers.pop()
    assert gc.get_freeze_count() > count // 2  # never unfrozen by the plugin


def test_a_job_runs_with_the_objects_frozen_and_freezes_its_result(
    make_napari_viewer, qtbot, unfrozen
):
    from napari_stemcluster.widgets._common import JobRunner

    viewer = make_napari_viewer()
    seen = []
    runner = JobRunner(viewer=viewer)
    runner.start(
        lambda progress: seen.append(gc.get_freeze_count()),
        description="test job",
        on_returned=lambda value: thaw(),  # as a layer removal in the result would
    )
    qtbot.waitUntil(lambda: not runner.running, timeout=10000)
    assert seen and seen[0] > 0  # the worker saw the objects frozen
    qtbot.waitUntil(is_frozen, timeout=2000)  # frozen again after the result
    viewer.close()
    assert gc.get_freeze_count() == 0


def test_without_a_viewer_nothing_is_frozen(unfrozen):
    assert not freeze(None)
    assert gc.get_freeze_count() == 0


def test_the_complete_workflow_dock_freezes_and_its_removal_unfreezes(
    make_napari_viewer, qtbot, unfrozen
):
    from napari_stemcluster.widgets import WorkflowDock

    viewer = make_napari_viewer()
    before = _gcfreeze._State.freezes
    dock = WorkflowDock(viewer)
    viewer.window.add_dock_widget(dock, name="STEM cluster")
    assert not is_frozen()  # not while it is being made

    def complete():
        dif = dock._diffraction
        built = dif is not None and dif.built and len(dock.stages) == len(dock._specs)
        # frozen when its canvas was complete, and again after the last tab
        return built and _gcfreeze._State.freezes >= before + 2

    qtbot.waitUntil(complete, timeout=60_000)
    assert is_frozen()
    viewer.window.remove_dock_widget(dock)
    assert not is_frozen() and gc.get_freeze_count() == 0
