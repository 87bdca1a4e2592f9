"""The segmentation pipeline run block by block: :func:`segment_chunked`."""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..core.masking import IMAGE_METHODS, THRESHOLD_METHODS, real_space_mask, resolve_q_mask
from ..core.params import DEFAULTS
from ..core.passes import (
    add_sums,
    assemble,
    dark_field_beam,
    extended,
    finish_step,
    gather_extras,
    grow_step,
    make_spec,
    needs_raw_map,
)
from ..core.pipeline import _describe, _per_step_masks, grow_options, segment_params
from ..core.result import SegmentationResult
from ..core.similarity import neighbor_similarity
from ..io._chunks import release_buffers
from ._prefetch import Prefetcher
from ._tasks import BlockSource, KeptOnWorker, drop_kept, similarity_task, sums_task
from .executors import DistributedExecutor, Executor, ThreadExecutor
from .planning import ChunkPlan, default_memory_limit, parse_memory, plan_chunks

_D = DEFAULTS

#: Stage names passed to ``on_stage``.
STAGES = ("similarity", "regions", "averages")

#: Seconds between checks for finished tasks (keeps Ctrl-C responsive).
_POLL = 0.2


@dataclass
class RunStats:
    """What a chunked run did and how long it took (filled in by the engine).

    Attributes
    ----------
    plan : ChunkPlan
        Block shape, concurrency and memory estimate.
    executor : str
        Where the tasks ran.
    stage_seconds : dict
        Wall time from the first task of a stage to its last, per stage.
    task_seconds : dict
        ``{stage: [read, compute]}``: time summed over the tasks.
    bytes_read : int
        Bytes of patterns read (halos and second passes included).
    bytes_reused : int
        Bytes of patterns the sums pass took from the similarity pass's
        reads instead of reading them again.
    bytes_prefetched : int
        Bytes of the file the engine asked the disk for ahead of the tasks
        that read them (read-ahead of HDF5 files on this machine).
    bytes_read_ahead : int
        Bytes of blocks a task read into memory for the next task of its
        slot while it computed (HDF5 files).
    input_bytes : int
        Size of the part of the cube segmented.
    seconds : float
        Total wall time.
    """

    plan: ChunkPlan | None = None
    executor: str = ""
    stage_seconds: dict = field(default_factory=dict)
    task_seconds: dict = field(default_factory=dict)
    bytes_read: int = 0
    bytes_reused: int = 0
    bytes_prefetched: int = 0
    bytes_read_ahead: int = 0
    input_bytes: int = 0
    seconds: float = 0.0


def segment_chunked(
    cube,
    threshold: float = _D["threshold"],
    min_cluster_size: int = _D["min_cluster_size"],
    q_mask=_D["q_mask"],
    sigma: float = _D["sigma"],
    prefilter: bool | dict = _D["prefilter"],
    real_mask=_D["real_mask"],
    *,
    mask_min_size: int = _D["mask_min_size"],
    mask_hole_size: int = _D["mask_hole_size"],
    average: str = _D["average"],
    mask_source: str = _D["mask_source"],
    linkage: str = _D["linkage"],
    times=None,
    executor: Executor | None = None,
    memory_limit=None,
    chunks: tuple[int, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_stage: Callable[[str, int, int], None] | None = None,
    stats: RunStats | None = None,
) -> SegmentationResult:
    """Segment a cube block by block with bounded memory, on threads or a cluster.

    Runs the same pipeline as :func:`napari_stemcluster.core.segment` and
    gives the same result (labels and similarity bit for bit, averages to
    float32 rounding), but never holds the cube: blocks of whole patterns
    are read with a halo of neighbouring scan positions (1 for the
    similarity, plus the prefilter radius), and only the similarity and the
    per-cluster sums come back. Region growing runs on the gathered
    similarity of each time step; the cluster averages are a second pass
    that adds up per-block sums. Blocks of different time steps run at the
    same time. The prefiltered cube is never stored: each pass recomputes it
    for its block.

    Parameters
    ----------
    cube : array_like, StemDataset
        ``(Rx, Ry, Qx, Qy)`` or ``(T, Rx, Ry, Qx, Qy)``: a dask array (e.g.
        ``open_dataset(path).cube``), a
        :class:`~napari_stemcluster.io.StemDataset`, an h5py dataset or a
        numpy array.
    threshold, min_cluster_size, q_mask, sigma, prefilter, real_mask
        As for :func:`napari_stemcluster.core.segment`.
    mask_min_size, mask_hole_size, average
        As for :func:`napari_stemcluster.core.segment`.
    times : slice or (int, int), optional
        Time steps ``A:B`` of a 5D cube to segment (default: all).
    executor : Executor or distributed.Client, optional
        Where blocks run (default: a :class:`ThreadExecutor` for this call).
    memory_limit : int or str, optional
        Memory budget for the data, e.g. ``"4GB"``; default a fraction of
        RAM (:func:`~napari_stemcluster.engine.planning.default_memory_limit`).
        It sets the block size and how many blocks run at once.
    chunks : (int, int), optional
        Force the block shape in scan positions (rows, columns).
    progress : callable, optional
        ``progress(done, total)`` as blocks finish; raise from it to cancel
        (running blocks finish, queued ones are dropped).
    on_stage : callable, optional
        ``on_stage(stage, done, total)`` per stage (:data:`STAGES`).
    stats : RunStats, optional
        Filled in with the plan and timings.

    Returns
    -------
    SegmentationResult

    Examples
    --------
    >>> cube = np.zeros((6, 6, 4, 4), np.uint16)
    >>> cube[:, :3, 0, 0] = 100
    >>> cube[:, 3:, 3, 3] = 100
    >>> res = segment_chunked(cube, real_mask=None, chunks=(2, 4))
    >>> res.labels[0], res.cluster_means.shape
    (array([1, 1, 1, 2, 2, 2], dtype=int32), (2, 4, 4))
    """
    started = time.perf_counter()
    data, source_chunks = _unwrap(cube)
    ndim, pre, params = segment_params(
        data,
        threshold=threshold,
        min_cluster_size=min_cluster_size,
        q_mask=q_mask,
        sigma=sigma,
        prefilter=prefilter,
        real_mask=real_mask,
        mask_min_size=mask_min_size,
        mask_hole_size=mask_hole_size,
        average=average,
        mask_source=mask_source,
        linkage=linkage,
    )
    steps = _time_steps(times, data.shape, ndim)
    real_mask = _selected_mask(real_mask, steps, data.shape, ndim)
    scan = tuple(int(s) for s in data.shape[-4:-2])
    det = tuple(int(s) for s in data.shape[-2:])
    qmask = _check_stage_options(pre, q_mask, sigma, det)
    masks = _per_step_masks(real_mask, len(steps), scan, ndim)
    for m in masks:
        real_space_mask(
            np.zeros(scan, np.float32),
            m,
            min_size=mask_min_size,
            hole_size=mask_hole_size,
            signal=np.zeros(scan, np.float32),
        )
    params["real_mask"] = _describe(real_mask)  # the masks of the selected steps
    if times is not None:
        params["time_range"] = [steps[0], steps[-1] + 1]

    parts = _execute(
        data,
        source_chunks,
        steps if ndim == 5 else [None],
        spec=make_spec(
            pre,
            qmask,
            params["sigma"],
            average,
            features=params["linkage"] == "mean",
        ),
        grow=grow_options(params),
        masks=masks,
        raw_maps=[needs_raw_map(pre, mask_source, m) for m in masks],
        executor=executor,
        memory_limit=memory_limit,
        chunks=chunks,
        progress=progress,
        on_stage=on_stage,
        stats=stats,
    )
    if stats is not None:
        stats.seconds = time.perf_counter() - started
    return assemble(parts, params, time_axis=ndim == 5)


def similarity_chunked(
    cube,
    q_mask=_D["q_mask"],
    sigma: float = _D["sigma"],
    prefilter: bool | dict = _D["prefilter"],
    *,
    raw_map: bool = False,
    extras: dict | None = None,
    executor: Executor | None = None,
    memory_limit=None,
    chunks: tuple[int, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The similarity pass alone, block by block: what the Similarity widget runs.

    Parameters
    ----------
    cube : array_like, StemDataset
        As for :func:`segment_chunked`.
    q_mask, sigma, prefilter
        As for :func:`napari_stemcluster.core.segment`.
    raw_map : bool
        With the prefilter: also the raw cube's mean similarity (what the
        real-space mask thresholds, see ``mask_source``).
    executor, memory_limit, chunks, progress
        As for :func:`segment_chunked`.

    Returns
    -------
    similarity : ndarray of float32, shape (T, Rx, Ry, 8)
        Always with a time axis (T = 1 for a 4D cube); bit-identical to
        :func:`~napari_stemcluster.core.similarity.neighbor_similarity` of the
        (prefiltered) cube.
    raw_mean_similarity : ndarray of float32 (T, Rx, Ry), or None

    Examples
    --------
    >>> sim, raw = similarity_chunked(np.ones((4, 5, 3, 3), np.uint8), chunks=(2, 2))
    >>> sim.shape, raw
    ((1, 4, 5, 8), None)
    """
    data, source_chunks = _unwrap(cube)
    ndim, pre, params = segment_params(
        data,
        **{**_SEGMENT_DEFAULTS, "q_mask": q_mask, "sigma": sigma, "prefilter": prefilter},
    )
    det = tuple(int(s) for s in data.shape[-2:])
    qmask = _check_stage_options(pre, q_mask, params["sigma"], det)
    steps = list(range(data.shape[0])) if ndim == 5 else [None]
    want = dict(extras or {})
    beam = dark_field_beam(data, steps, [IMAGE_METHODS[0]]) if want.get("signal") else None
    parts = _execute(
        data,
        source_chunks,
        steps,
        spec=make_spec(pre, qmask, params["sigma"], features=bool(want.get("features")), beam=beam),
        grow=None,
        masks=[None] * len(steps),
        raw_maps=[bool(pre) and raw_map] * len(steps),
        executor=executor,
        memory_limit=memory_limit,
        chunks=chunks,
        progress=progress,
        on_stage=None,
        stats=None,
    )
    sim = np.stack([p[0] for p in parts])
    raw = None if parts[0][1] is None else np.stack([p[1] for p in parts])
    if extras is not None:
        for key in [k for k in ("signal", "features") if want.get(k)]:
            extras[key] = np.stack([p[2][key] for p in parts])
    return sim, raw


#: segment()'s keywords at their defaults (the parameter model's).
_SEGMENT_DEFAULTS = {
    k: _D[k]
    for k in (
        "threshold",
        "min_cluster_size",
        "q_mask",
        "sigma",
        "prefilter",
        "real_mask",
        "mask_min_size",
        "mask_hole_size",
        "average",
        "mask_source",
    )
}


def _execute(
    data,
    source_chunks,
    steps,
    *,
    spec,
    grow,
    masks,
    raw_maps,
    executor,
    memory_limit,
    chunks,
    progress,
    on_stage,
    stats,
):
    """Plan the blocks and run the passes of ``steps`` on ``executor``."""
    scan = tuple(int(s) for s in data.shape[-4:-2])
    det = tuple(int(s) for s in data.shape[-2:])
    own = executor is None
    if own:
        executor = ThreadExecutor()
    elif not isinstance(executor, Executor):
        executor = DistributedExecutor(client=executor)
    try:
        limit = default_memory_limit() if memory_limit is None else parse_memory(memory_limit)
        shape = (len(steps), *scan, *det) if steps[0] is not None else data.shape
        pre = spec["prefilter"]
        budget = limit * executor.memory_scale
        # Room to keep one time step's blocks (with their halos) for the sums
        # pass, so that a series larger than the budget is still read once:
        # taken from the blocks in flight when a step needs at most half the
        # budget (smaller blocks cost a little more halo; a second read of the
        # whole file costs far more). Not when the block shape is forced.
        step_bytes = int(np.prod(scan)) * int(np.prod(det)) * data.dtype.itemsize
        keeps = grow is not None and not spec["sums_halo"] and chunks is None
        keeps = keeps and (executor.in_process or executor.keeps_on_workers)
        reserve = 5 * step_bytes // 4 if keeps and 5 * step_bytes // 4 <= budget // 2 else 0

        def plan(limit):
            return plan_chunks(
                shape,
                data.dtype,
                memory_limit=limit,
                concurrency=executor.slots,
                prefilter_radius=pre["radius"] if pre else None,
                block_shape=chunks,
                source_chunks=source_chunks,
            )

        try:
            plan = dataclasses.replace(plan(budget - reserve), memory_limit=budget)
        except ValueError:  # no room for blocks beside the reserve: none
            plan = plan(budget)
        run = _Run(
            executor,
            BlockSource(data),
            steps,
            plan,
            spec={
                **spec,
                "numba_threads": _numba_threads(executor, plan),
                # read only once the arguments and the plan are known good
                "beam": dark_field_beam(data, steps, masks) if grow is not None else spec["beam"],
            },
            grow=grow,
            masks=masks,
            raw_maps=raw_maps,
            progress=progress,
            on_stage=on_stage,
            stats=stats if stats is not None else RunStats(),
        )
        parts = run.execute()
    finally:
        if own:
            executor.close()
        elif isinstance(executor, DistributedExecutor):
            executor.release()
    if stats is not None:
        stats.input_bytes = (
            len(steps) * int(np.prod(scan)) * int(np.prod(det)) * data.dtype.itemsize
        )
    return parts


def _numba_threads(executor, plan) -> int | None:
    """Threads per task: the executor's share, more when fewer tasks run at once."""
    n = executor.numba_threads
    if not n:
        return None
    return max(1, n * executor.slots // plan.concurrency)


def _unwrap(cube):
    """The array to read from and its chunk shape along the scan axes."""
    data = cube
    if hasattr(cube, "cube") and hasattr(cube, "calibration"):  # a StemDataset
        data = cube.source if getattr(cube, "source", None) is not None else cube.cube
        cube = cube.cube
    chunks = getattr(cube, "chunks", None)
    stored = _stored_chunks(data)
    if stored is not None:  # the file's own chunks, not a dask array's over them
        chunks = stored
    if chunks is None or not hasattr(cube, "shape"):
        return data, None
    # dask gives the sizes of every chunk per axis, h5py one chunk shape
    dask_like = isinstance(chunks[0], tuple)
    first = [c[0] if dask_like else c for c in chunks[-4:-2]]
    return data, tuple(int(c) for c in first)


def _stored_chunks(data):
    """Chunk shape of the HDF5 dataset behind a file reader, or None."""
    path, name = getattr(data, "path", None), getattr(data, "dataset", None)
    if not (isinstance(path, str) and isinstance(name, str)):
        return None
    try:
        from ..io._lazy import open_h5

        chunks = open_h5(path)[name].chunks
    except Exception:  # not HDF5, or unreadable: the dask chunks will do
        return None
    if chunks is None or len(chunks) != len(data.shape):
        return None
    return tuple(int(c) for c in chunks)


def _time_steps(times, shape, ndim) -> list[int]:
    if ndim == 4:
        if times is not None:
            raise ValueError("times selects time steps of a 5D cube; this cube is 4D")
        return [0]
    n = int(shape[0])
    if times is None:
        return list(range(n))
    if isinstance(times, slice):
        sel = range(n)[times]
    else:
        try:
            a, b = (int(v) for v in times)
        except (TypeError, ValueError):
            raise ValueError(f"times must be a slice or (start, stop); got {times!r}") from None
        if not 0 <= a < b <= n:
            raise ValueError(
                f"times {a}:{b} is outside the {n} time steps of the cube "
                f"(need 0 <= start < stop <= {n})"
            )
        sel = range(a, b)
    if len(sel) == 0:
        raise ValueError(f"times {times!r} selects no time step of {n}")
    if sel.step != 1:
        raise ValueError("times must select consecutive time steps (step 1)")
    return list(sel)


def _check_stage_options(pre, q_mask, sigma, det):
    """Validate prefilter, q_mask and sigma now, before any block is read."""
    tiny = np.zeros((1, 1, *det), np.float32)
    if pre:
        from ..core.prefilter import correlative_prefilter

        correlative_prefilter(tiny, **pre)
    sigma = float(sigma)
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0; got {sigma}")
    mask = resolve_q_mask(q_mask, det)
    neighbor_similarity(tiny, mask, sigma)
    return mask


def _selected_mask(real_mask, steps, shape, ndim):
    """Validate a mask method; per-step masks of all steps follow ``times``."""
    if isinstance(real_mask, str) and real_mask not in THRESHOLD_METHODS + IMAGE_METHODS:
        raise ValueError(
            f"unknown real-space mask method {real_mask!r}; expected one of "
            f"{THRESHOLD_METHODS + IMAGE_METHODS}, a float, a boolean array or None"
        )
    per_step = ndim == 5 and isinstance(real_mask, np.ndarray) and real_mask.ndim == 3
    if per_step and real_mask.shape[0] == shape[0] and len(steps) != shape[0]:
        real_mask = real_mask[steps[0] : steps[-1] + 1]
    return real_mask


class _Step:
    """State of one time step while its blocks are in flight."""

    def __init__(self, scan):
        self.sim = np.empty((*scan, 8), np.float32)
        self.mask_map = None  # raw mean similarity, when the mask thresholds it
        self.extras = {}  # dark-field image and binned patterns, when asked for
        self.sim_left = 0
        self.labels = None
        self.sums = None
        self.next_sum = 0  # index of the next partial sum to merge
        self.pending = {}  # partial sums that finished ahead of their turn
        self.sums_left = 0
        self.kept = {}  # block index -> patterns read by the similarity pass
        self.result = None


class _Run:
    """Schedules the block tasks of all time steps and assembles the results.

    Similarity blocks are queued for every time step; when the last block of
    a step is back, its regions grow here and its averaging blocks are put
    ahead of the remaining similarity blocks, so steps finish in order and
    few accumulators are open at once. At most ``2 * slots`` tasks are
    submitted at a time (queued tasks hold no data), so memory stays within
    ``concurrency`` blocks whatever the size of the cube (exactly
    ``concurrency`` when the budget allows fewer tasks than the executor's
    slots).
    """

    def __init__(
        self,
        executor,
        source,
        steps,
        plan,
        spec,
        grow,
        masks,
        raw_maps,
        progress,
        on_stage,
        stats,
    ):
        self.ex = executor
        self.source = source
        self.steps = steps
        self.plan = plan
        self.spec = spec
        self.grow = grow
        self.masks = masks
        self.raw_maps = raw_maps
        self.progress = progress
        self.on_stage = on_stage
        self.stats = stats
        self.boxes = plan.boxes()
        nb = len(self.boxes)
        grows = grow is not None  # None: the similarity pass alone
        self.total = {"similarity": nb * len(steps), "regions": len(steps) * grows}
        self.total["averages"] = nb * len(steps) * grows
        self.done = dict.fromkeys(STAGES, 0)
        self.span = {}
        self.pattern_bytes = int(np.prod(source.shape[-2:])) * source.dtype.itemsize
        # Read once where memory allows: blocks read by the similarity pass
        # are kept (within what the budget leaves beside the tasks) until the
        # sums pass of their step has added them up. The sums then need no
        # halo (raw averages, or no prefilter). On threads the task returns
        # the block; on a cluster it stays in the worker process that read
        # it and the sums task is sent there (blocks never travel).
        where = executor.in_process or executor.keeps_on_workers
        keeps = grows and where and not spec["sums_halo"]
        self.keep_budget = max(0, plan.memory_limit - plan.peak_bytes) if keeps else 0
        self.kept_bytes = 0  # kept or promised to running tasks
        self.run_id = None
        if keeps and not executor.in_process:
            self.run_id = uuid.uuid4().hex
        self.prefetch = None  # a Prefetcher while blocks are read ahead
        # Reading overlaps computing: each similarity task reads the block of
        # the next task of its slot (``lanes`` places later in the queue)
        # into memory before it computes. That block is the second raw copy
        # the planner counts per task. On a cluster the tasks of a slot go to
        # one worker, which holds the block read ahead.
        self.lanes = []
        self.ahead_run = None
        if source.reads_ahead() and executor.read_ahead:
            self.lanes = executor.lanes()[: min(plan.concurrency, executor.slots)]
            self.ahead_run = self.run_id or uuid.uuid4().hex
        stats.plan = plan
        stats.executor = executor.describe()
        stats.task_seconds = {s: [0.0, 0.0] for s in ("similarity", "averages")}

    # ------------------------------------------------------------------
    def execute(self):
        ex = self.ex
        scan = self.plan.scan_shape
        states = self.states = [_Step(scan) for _ in self.steps]
        order = itertools.count()
        low = deque()
        for i in range(len(self.steps)):
            states[i].sim_left = len(self.boxes)
            for b in range(len(self.boxes)):
                low.append(("similarity", i, b, None))
        high = deque()
        # Queued tasks hold no data, so keep more in flight than can run
        # (no idle worker between tasks) -- unless the budget allows fewer
        # tasks at once than the executor would run: then exactly that many.
        conc, slots = self.plan.concurrency, self.ex.slots
        window = conc if conc < slots else 2 * slots
        in_flight = {}
        src = ex.share(self.source)
        # Read-ahead: each block's bytes are requested from the disk when its
        # task is submitted (and the next queued one's), so reading overlaps
        # the computing of the tasks still running.
        if ex.same_machine and self.source.can_prefetch():
            self.prefetch = Prefetcher(self.source)
        self._report()
        try:
            while low or high or in_flight:
                while len(in_flight) < window and (high or low):
                    kind, i, b, extra = high.popleft() if high else low.popleft()
                    fut = self._submit(src, kind, i, b, extra)
                    in_flight[fut] = (next(order), kind, i, b)
                    self.span.setdefault(kind, [time.perf_counter(), None])
                    if high or low:
                        self._hint(*(high[0] if high else low[0])[:3])
                done = ex.wait(list(in_flight), _POLL)
                for fut in sorted(done, key=lambda f: in_flight[f][0]):
                    _, kind, i, b = in_flight.pop(fut)
                    out = fut.result()
                    if kind == "similarity":
                        self._similarity_done(states, i, b, out, high)
                    else:
                        self._sums_done(states, i, b, out)
                    self._report()
        except BaseException:
            ex.cancel(list(in_flight))
            raise
        finally:
            if self.prefetch is not None:
                self.prefetch.close()
                self.stats.bytes_prefetched += self.prefetch.hinted_bytes
            # blocks never summed (no label in them, or a run cut short), and
            # blocks read ahead and not taken
            for run in dict.fromkeys(r for r in (self.run_id, self.ahead_run) if r):
                if ex.in_process:
                    drop_kept(run)
                else:
                    ex.run_everywhere(drop_kept, run)
            release_buffers()  # the blocks' memory kept for reuse
        for kind in ("similarity", "averages"):
            if kind in self.span and self.span[kind][1] is not None:
                start, end = self.span[kind]
                self.stats.stage_seconds[kind] = end - start
        self.stats.stage_seconds.setdefault("regions", 0.0)
        return [s.result for s in states]

    def _hint(self, kind, i, b):
        """Ask the disk for the bytes the task of ``(kind, i, b)`` will read."""
        if self.prefetch is None:
            return
        if kind == "similarity":
            halo = self.plan.halo
        elif b in self.states[i].kept:  # summed from the kept block: no read
            return
        else:
            halo = self.spec["sums_halo"]
        self.prefetch.hint(self.steps[i], extended(self.boxes[b], halo, self.plan.scan_shape))

    def _submit(self, src, kind, i, b, extra):
        box = self.boxes[b]
        t = self.steps[i]
        self._hint(kind, i, b)
        if kind == "similarity":
            need = self._read_bytes(box, self.plan.halo)
            keep = self.kept_bytes + need <= self.keep_budget
            if keep:
                self.kept_bytes += need
                keep = self.run_id or True  # a run id: kept by the worker
            args = (similarity_task, src, t, box, self.spec, self.raw_maps[i], keep)
            if not self.lanes:
                return self.ex.submit(*args)
            k = i * len(self.boxes) + b  # place in the similarity queue
            nk = k + len(self.lanes)
            nxt = None
            if nk < len(self.steps) * len(self.boxes):
                ni, nb = divmod(nk, len(self.boxes))
                scan = self.plan.scan_shape
                nxt = (self.steps[ni], extended(self.boxes[nb], self.plan.halo, scan))
            where = self.lanes[k % len(self.lanes)]
            return self.ex.submit_to(where, *args, (self.ahead_run, nxt))
        kept = self.states[i].kept.pop(b, None)
        if isinstance(kept, KeptOnWorker):
            return self.ex.submit_to(
                kept.where, sums_task, src, t, box, extra, self.spec, self.run_id
            )
        return self.ex.submit(sums_task, src, t, box, extra, self.spec, kept)

    def _read_bytes(self, box, halo):
        r0, r1, c0, c1 = extended(box, halo, self.plan.scan_shape)
        return (r1 - r0) * (c1 - c0) * self.pattern_bytes

    # ------------------------------------------------------------------
    def _similarity_done(self, states, i, b, out, high):
        sim, mask_map, (t_read, t_comp, *ahead), extras, kept = out
        if ahead and ahead[0]:  # its block was read ahead by the task before it
            self.stats.bytes_read_ahead += self._read_bytes(self.boxes[b], self.plan.halo)
        r0, r1, c0, c1 = self.boxes[b]
        st = states[i]
        if kept is not None:
            st.kept[b] = kept
        st.sim[r0:r1, c0:c1] = sim
        gather_extras(st.extras, extras, self.boxes[b], st.sim.shape[:2])
        if mask_map is not None:
            if st.mask_map is None:
                st.mask_map = np.zeros(st.sim.shape[:2], np.float32)
            st.mask_map[r0:r1, c0:c1] = mask_map
        st.sim_left -= 1
        self._count("similarity", 1, t_read, t_comp)
        self.stats.bytes_read += self._read_bytes(self.boxes[b], self.plan.halo)
        if st.sim_left:
            return
        if self.grow is None:  # the similarity pass alone
            st.result = (st.sim, st.mask_map, st.extras)
            return
        # All blocks of the step are back: grow its regions here (small).
        t0 = time.perf_counter()
        labels, ms, rmask, table = grow_step(
            st.sim, st.mask_map, self.masks[i], self.grow, st.extras
        )
        n = len(table)
        st.labels, st.ms, st.rmask, st.n, st.table = labels, ms, rmask, n, table
        st.sums = np.zeros((n, *self.source.shape[-2:]), np.float64)
        self.stats.stage_seconds["regions"] = self.stats.stage_seconds.get("regions", 0.0) + (
            time.perf_counter() - t0
        )
        self.done["regions"] += 1
        # Averaging blocks of this step, ahead of other steps' similarity;
        # blocks without a labelled position are not read.
        todo = []
        for bb, (a0, a1, d0, d1) in enumerate(self.boxes):
            lab = labels[a0:a1, d0:d1]
            if n and np.any(lab > 0):
                todo.append(("averages", i, bb, np.ascontiguousarray(lab)))
        st.sums_left = len(todo)
        st.order = [bb for _, _, bb, _ in todo]
        for bb in set(st.kept) - set(st.order):  # nothing to add up there
            block = st.kept.pop(bb)
            if not isinstance(block, KeptOnWorker):  # on a worker: until the end
                self._release(block.nbytes)
        self.done["averages"] += len(self.boxes) - len(todo)
        high.extend(todo)
        if not todo:
            self._finish(st)

    def _release(self, nbytes: int):
        self.kept_bytes -= nbytes

    def _sums_done(self, states, i, b, out):
        ids, sums, (t_read, t_comp), reused = out
        st = states[i]
        self._count("averages", 1, t_read, t_comp)
        if reused:
            self._release(reused)
            self.stats.bytes_reused += reused
        else:
            # (a block kept by a worker that did not run its sums task stays
            # there, still counted in kept_bytes, until the run ends)
            # the prefilter's halo when the averages are of the prefiltered cube
            self.stats.bytes_read += self._read_bytes(self.boxes[b], self.spec["sums_halo"])
        # Merge in block order, whatever order blocks finish in, so that the
        # float64 sums (and so the averages) do not depend on timing.
        st.pending[b] = (ids, sums)
        while st.next_sum < len(st.order) and st.order[st.next_sum] in st.pending:
            pid, psum = st.pending.pop(st.order[st.next_sum])
            add_sums(st.sums, pid, psum)
            st.next_sum += 1
        st.sums_left -= 1
        if not st.sums_left:
            self._finish(st)

    def _finish(self, st):
        st.result = finish_step(
            st.labels, st.ms, st.rmask, st.sim, st.table, st.sums, st.extras.get("diagnostics")
        )
        st.extras = {}
        st.sums = None

    # ------------------------------------------------------------------
    def _count(self, stage, n, t_read, t_comp):
        self.done[stage] += n
        acc = self.stats.task_seconds[stage]
        acc[0] += t_read
        acc[1] += t_comp
        self.span[stage][1] = time.perf_counter()

    def _report(self):
        if self.on_stage is not None:
            for s in STAGES:
                self.on_stage(s, self.done[s], self.total[s])
        if self.progress is not None:
            self.progress(sum(self.done.values()), sum(self.total.values()))
