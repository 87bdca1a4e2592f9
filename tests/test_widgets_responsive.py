"""Results applied one new layer per event-loop turn, canvases made without long stretches."""

import string
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stemcluster._layers import sample_to_layers
from napari_stemcluster.widgets import ClusteringWidget, DiffractionViewer, SimilarityWidget
from napari_stemcluster.widgets._common import JobRunner
from napari_stemcluster.widgets._diffraction import _glyph_chunks

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("widget_settings")]

#: Milliseconds to wait for a background job.
WAIT = 30_000


class _Turns:
    """Counts turns of the event loop (ticks of a 1 ms QTimer)."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.n = 0
        self.timer = QTimer()
        self.timer.setInterval(1)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self):
        self.n += 1


def test_later_steps_run_in_order_in_later_turns_and_keep_the_job_running(qtbot):
    runner = JobRunner()
    turns = _Turns()
    seen = []

    def apply(value):
        seen.append(value)
        runner.later(lambda: seen.append(("a", turns.n, runner.running)))
        runner.later(lambda: seen.append(("b", turns.n, runner.running)))
        assert len(seen) == 1  # nothing runs at once

    runner.start(lambda progress: 7, description="test", on_returned=apply)
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT)
    assert [s[0] for s in seen[1:]] == ["a", "b"]
    assert seen[2][1] > seen[1][1]  # in two turns, with other events in between
    assert seen[1][2] and seen[2][2]  # the job runs until its steps are done
    assert runner.last_error is None
    turns.timer.stop()


def test_a_failing_later_step_drops_the_rest_and_ends_the_job(qtbot, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    runner = JobRunner()
    done = []

    def fail():
        raise ValueError("no layer")

    def apply(value):
        runner.later(fail, "Applying")
        runner.later(lambda: done.append("after"))

    runner.start(lambda progress: 1, description="test", on_returned=apply)
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT)
    assert done == [] and isinstance(runner.last_error, ValueError)
    assert shown == ["Applying failed: no layer"]
    # the runner takes a new job afterwards
    runner.start(lambda progress: 2, description="test", on_returned=done.append)
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT)
    assert done == [2]


def test_new_result_layers_arrive_in_separate_turns(make_napari_viewer, qtbot, scan4d):
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_to_layers(scan4d, "demo"):
        viewer._add_layer_from_data(data, kwargs, kind)
    turns = _Turns()
    inserted = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append((e.value.name, turns.n)))
    sim = SimilarityWidget(viewer)
    sim._inner.value, sim._outer.value = 2.0, 14.0
    sim.run()
    qtbot.waitUntil(lambda: not sim.runner.running, timeout=WAIT)
    assert [name for name, _ in inserted] == [sim.similarity_layer.name, sim.mask_layer.name]
    assert inserted[1][1] > inserted[0][1]
    assert sim._status.value.startswith("done:")
    inserted.clear()
    clu = ClusteringWidget(viewer)
    clu._mode.value, clu._linkage.value = "manual", "pair"
    clu._threshold.value, clu._min_size.value = 0.8, 3
    clu.run()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    # the seeds layer may be made while the job computes (before the clusters)
    assert sorted(name for name, _ in inserted) == ["clusters", "clusters seeds"]
    assert inserted[1][1] > inserted[0][1]
    names = [layer.name for layer in viewer.layers]
    assert names.index("clusters") + 1 == names.index("clusters seeds")
    # applied completely once the job ends
    assert clu.labels_layer is viewer.layers["clusters"]
    assert clu.seeds_layer is viewer.layers["clusters seeds"]
    assert viewer.layers.selection.active is clu.labels_layer
    assert clu._status.value.startswith(f"done: {int(clu.labels_layer.data.max())} clusters")
    # again into the same layers: applied at once, no new layer
    inserted.clear()
    clu._threshold.value = 0.82
    clu.run()
    qtbot.waitUntil(lambda: not clu.runner.running, timeout=WAIT)
    assert inserted == []
    turns.timer.stop()


def test_the_diffraction_canvas_never_makes_a_third_panel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    dif = DiffractionViewer(viewer)
    viewer.window.add_dock_widget(dif, name="Diffraction")
    model = dif._model
    panels = []
    while not dif.built:
        dif._run_step()
        stride = max(1, int(model.grid.stride))
        panels.append(-(-len(model.layers) // stride))
    assert max(panels) == 2
    names = [layer.name for layer in model.layers]
    stride = int(model.grid.stride)
    assert len(names) == 2 * stride  # both panels hold ``stride`` layers
    assert names[0] == "pattern" and names[stride - 1] == "Bragg disks (pattern)"
    assert names[stride] == "cluster average" and names[-1] == "(average panel spacer)"
    assert dif.text_overlay.text == "" and tuple(dif.text_overlay.color) == (1.0, 1.0, 1.0, 1.0)


def test_the_glyph_chunks_cover_every_printable_character():
    chunks = _glyph_chunks(5)
    assert chunks[-1] == "" and all(0 < len(c) <= 5 for c in chunks[:-1])
    chars = "".join(chunks)
    assert len(chars) == len(set(chars))
    assert set(string.printable) - set(string.whitespace) <= set(chars)
    assert "…" in chars and "–" in chars


def test_the_unit_registry_is_made_aside_and_installed_only_while_unused():
    code = """
import pint
from pint.registry import LazyRegistry
from napari_stemcluster.widgets._warmup import warm_up_units
app = pint.get_application_registry()
assert type(app.get()) is LazyRegistry
warm_up_units()
made = app.get()
assert type(made) is pint.UnitRegistry and str(made.Quantity(2, "nm").units) == "nanometer"
warm_up_units()  # in use now: kept
assert app.get() is made
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_later_steps_wait_for_a_paint(qtbot):
    """Two steps are at least the step delay apart, so the canvas can paint between them."""
    from napari_stemcluster.widgets._common import LATER_STEP_MS

    runner = JobRunner()
    times = []

    def apply(value):
        for _ in range(2):
            runner.later(lambda: times.append(time.perf_counter()))

    runner.start(lambda progress: None, description="test", on_returned=apply)
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT)
    assert len(times) == 2
    assert np.diff(times)[0] >= 0.9 * LATER_STEP_MS / 1000


def _node_visible(dif, layer):
    return dif.qt_viewer.canvas.layer_to_visual[layer].node.visible


def test_the_diffraction_canvas_compiles_a_new_layer_in_a_turn_of_its_own(
    make_napari_viewer, qtbot
):
    """A layer's visual is made hidden and shown one step later; none stays hidden."""
    viewer = make_napari_viewer()
    dif = DiffractionViewer(viewer)
    assert "qt_viewer" not in dif.__dict__  # the canvas is made in the first step
    viewer.window.add_dock_widget(dif, name="Diffraction")
    model = dif._model
    hidden_after_step = []
    while not dif.built:
        before = set(model.layers)
        dif._run_step()
        for layer in set(model.layers) - before:
            if layer.visible:  # the layers meant to show (not the spacer, the detector)
                hidden_after_step.append(layer.name)
                assert not _node_visible(dif, layer), layer.name
                dif._run_step()  # the next step shows it
                assert _node_visible(dif, layer), layer.name
    assert {"pattern", "q-mask", "cluster average", "Bragg peaks"} <= set(hidden_after_step)
    for layer in model.layers:  # every visual shows as its layer says
        assert _node_visible(dif, layer) == layer.visible, layer.name
    qtbot.wait(100)
    from napari_stemcluster.widgets._diffraction import _grid

    assert dif.qt_viewer.parent() is dif and _grid(model).enabled  # in the kept place


def test_docking_holds_full_garbage_collection_until_the_canvas_is_made(
    make_napari_viewer, qtbot, monkeypatch
):
    """No step of the dock or its canvas can run into a full collection; it is back on after."""
    import gc

    from napari_stemcluster.widgets import WorkflowDock, _workflow
    from napari_stemcluster.widgets._warmup import GcHold

    assert gc.isenabled()
    viewer = make_napari_viewer()
    during = []
    run_step = DiffractionViewer._run_step
    build_stage = _workflow.WorkflowDock._build_stage

    def step(self):
        during.append(gc.isenabled())
        return run_step(self)

    def stage(self, title):
        during.append(gc.isenabled())
        return build_stage(self, title)

    monkeypatch.setattr(DiffractionViewer, "_run_step", step)
    monkeypatch.setattr(_workflow.WorkflowDock, "_build_stage", stage)
    # on a busy machine the steps can take longer than the hold's limit
    monkeypatch.setattr(GcHold, "default_limit", 600.0)
    dock = WorkflowDock(viewer)
    viewer.window.add_dock_widget(dock, name="STEM cluster")
    assert not gc.isenabled()  # held while the dock builds
    qtbot.waitUntil(
        lambda: (
            dock._diffraction is not None
            and dock._diffraction.built
            and len(dock.stages) == len(dock._specs)
        ),
        timeout=WAIT,
    )
    qtbot.waitUntil(gc.isenabled, timeout=WAIT)  # released with the last step
    assert len(during) > 20 and not any(during)


def test_gc_hold_nests_respects_a_disabled_collector_and_expires(qtbot):
    import gc

    from napari_stemcluster.widgets._warmup import GcHold

    assert gc.isenabled()
    a, b = GcHold(), GcHold()
    assert not gc.isenabled()
    a.release(collect=False)
    a.release(collect=False)  # once only: b still holds
    assert not gc.isenabled()
    b.release(collect=False)
    assert gc.isenabled()

    gc.disable()  # a host that turned the collector off keeps it off
    try:
        GcHold(limit=None).release()
        assert not gc.isenabled()
    finally:
        gc.enable()

    expiring = GcHold(limit=0.05)  # a hold never released is released anyway
    assert not gc.isenabled()
    qtbot.waitUntil(gc.isenabled, timeout=2000)
    assert not expiring.held

    dropped = GcHold()  # a hold dropped unreleased releases its count
    del dropped
    assert gc.isenabled()


def test_a_job_may_end_after_its_widget_is_gone(qtbot):
    """A dock closed while its job runs: the job's end touches no deleted control."""
    from qtpy.QtWidgets import QComboBox

    box = QComboBox()
    runner = JobRunner(on_busy=lambda busy: box.setEnabled(not busy))
    release = __import__("threading").Event()
    runner.start(lambda progress: release.wait(10), description="test", on_returned=print)
    box.deleteLater()
    qtbot.waitUntil(lambda: not _alive(box), timeout=WAIT)
    release.set()
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT)
    assert runner.last_error is None


def _alive(widget) -> bool:
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


def test_progress_updates_run_no_nested_event_loop(make_napari_viewer, qtbot):
    import contextlib

    from napari.utils import progress
    from qtpy.QtCore import QTimer

    from napari_stemcluster.widgets._common import progress_without_events

    make_napari_viewer()  # napari's progress bars live in a viewer's window

    def waiting_work_runs_inside_an_update(quiet: bool) -> bool:
        ran = []
        bar = progress(total=10, desc="test")
        qtbot.wait(50)
        QTimer.singleShot(0, lambda: ran.append(1))
        with progress_without_events() if quiet else contextlib.nullcontext():
            bar.update(1)
        inside = bool(ran)
        bar.close()
        qtbot.wait(50)
        assert ran  # it runs in a turn of its own in any case
        return inside

    assert waiting_work_runs_inside_an_update(quiet=False)  # napari's bar nests a pass
    assert not waiting_work_runs_inside_an_update(quiet=True)
    from napari._qt.widgets import qt_progress_bar

    assert qt_progress_bar.QApplication.__name__ == "QApplication"  # put back
