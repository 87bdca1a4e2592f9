"""The segmentation written once, as passes over blocks of scan positions.

Every front end runs these functions: :func:`~napari_stemcluster.core.segment`
in this process (:func:`run_in_process`), the chunked engine
(:func:`~napari_stemcluster.engine.segment_chunked`, the command line) on
threads or a dask.distributed cluster, and the napari widgets in thread
workers. They hold every rule of the pipeline; the front ends only decide
where blocks run and how results travel. The passes, per time step:

1. **similarity** (:func:`similarity_block`): each block of scan positions is
   read with a halo (1, plus the prefilter radius), prefiltered when asked,
   and compared with its 8 neighbours; the raw cube's mean similarity comes
   along only when the real-space mask thresholds it (:func:`needs_raw_map`).
2. **regions** (:func:`grow_step`): on the gathered similarity of the step,
   the real-space mask and the region growing.
3. **sums** (:func:`sums_block`, :func:`add_sums`, :func:`finish_step`): the
   patterns of each labelled block are added per cluster; the merged sums
   give the cluster averages.

Results are always a list of per-step
:class:`~napari_stemcluster.core.result.StepResult` (one for a 4D scan);
:func:`assemble` turns them into the public
:class:`~napari_stemcluster.core.result.SegmentationResult`, with a time axis
for a 5D cube and without for 4D: the only place the two differ.
"""

from __future__ import annotations

import numbers

import numpy as np

from .averages import cluster_sums, cluster_table, means_from_sums
from .clustering import cluster_scan
from .linkage import FEATURE_DIMS, feature_slots
from .masking import IMAGE_METHODS, _sample_mean, dark_field_image, direct_beam
from .regions import mean_similarity_map
from .result import SegmentationResult, StepResult
from .similarity import mean_similarity, neighbor_similarity

#: Largest float32 value: patterns whose squared norm exceeds it overflow.
_F32_MAX = float(np.finfo(np.float32).max)


def make_spec(prefilter, q_mask, sigma, average="raw", *, features=False, beam=None) -> dict:
    """The (picklable) options of the block functions.

    ``prefilter`` is None or the full options dict; ``q_mask`` is None or
    a resolved boolean detector mask. ``features``: the similarity pass also
    returns binned patterns (for ``linkage="mean"``); ``beam``: the direct
    beam ``(cx, cy, r)`` when the pass also returns the dark-field image
    (:func:`dark_field_beam`).

    Examples
    --------
    >>> make_spec(None, None, 0.0)["halo"]
    1
    """
    radius = int(prefilter["radius"]) if prefilter else 0
    return {
        "prefilter": prefilter,
        "q_mask": q_mask,
        "sigma": float(sigma),
        "average": average,
        "halo": 1 + radius,
        "sums_halo": radius if average == "prefiltered" else 0,
        "features": bool(features),
        "beam": None if beam is None else tuple(float(v) for v in beam),
    }


def uses_image(real_mask) -> bool:
    """True when ``real_mask`` thresholds a virtual image (the dark field).

    Examples
    --------
    >>> uses_image("dark_field"), uses_image("otsu")
    (True, False)
    """
    return isinstance(real_mask, str) and real_mask in IMAGE_METHODS


def dark_field_beam(cube, steps, masks):
    """The direct beam of the first step, when a mask needs the dark-field image.

    One beam position for the whole series, so every front end (and every
    block) computes the same image.

    Examples
    --------
    >>> dark_field_beam(np.ones((2, 2, 4, 4)), [None], ["otsu"]) is None
    True
    """
    if not any(uses_image(m) for m in masks):
        return None
    first = cube if steps[0] is None else _StepView(cube, steps[0])
    return direct_beam(_sample_mean(first))


class _StepView:
    """One time step of a 5D array-like, sliced lazily (slices only)."""

    def __init__(self, data, t):
        self.data, self.t = data, t
        self.shape = tuple(data.shape[1:])
        self.dtype = data.dtype

    def __getitem__(self, key):
        block = self.data[(self.t, *key)]
        return np.asarray(block.compute() if hasattr(block, "compute") else block)


def thresholds_a_map(real_mask) -> bool:
    """True when ``real_mask`` is computed from a mean-similarity map.

    Examples
    --------
    >>> thresholds_a_map("otsu"), thresholds_a_map(0.5), thresholds_a_map(None)
    (True, True, False)
    """
    if isinstance(real_mask, str):
        return real_mask not in IMAGE_METHODS
    return isinstance(real_mask, numbers.Real) and not isinstance(real_mask, bool | np.bool_)


def needs_raw_map(prefilter, mask_source: str, real_mask) -> bool:
    """The rule: with the prefilter, the mask thresholds the raw cube's map.

    The raw cube's mean similarity is needed only when the prefilter runs,
    ``mask_source`` is ``"raw"`` and the mask is computed from a map (a
    method or a value; not a given array, not None).

    Examples
    --------
    >>> needs_raw_map({"radius": 1}, "raw", "triangle")
    True
    >>> needs_raw_map({"radius": 1}, "raw", None), needs_raw_map(None, "raw", "otsu")
    (False, False)
    """
    return bool(prefilter) and mask_source == "raw" and thresholds_a_map(real_mask)


def extended(box, halo: int, scan_shape) -> tuple[int, int, int, int]:
    """``box`` (r0, r1, c0, c1) grown by ``halo`` positions, clipped to the scan.

    Examples
    --------
    >>> extended((2, 4, 0, 3), 1, (5, 5))
    (1, 5, 0, 4)
    """
    r0, r1, c0, c1 = box
    rx, ry = scan_shape
    return max(0, r0 - halo), min(rx, r1 + halo), max(0, c0 - halo), min(ry, c1 + halo)


def _crop(data, outer, inner):
    """The part ``inner`` of ``data`` read over ``outer`` (both r0, r1, c0, c1)."""
    r0, r1, c0, c1 = inner
    return data[r0 - outer[0] : r1 - outer[0], c0 - outer[2] : c1 - outer[2]]


def similarity_block(
    raw,
    read_ext,
    box,
    spec,
    *,
    raw_map: bool = False,
    t: int | None = None,
    keep: bool = False,
    stage=None,
    extras: dict | None = None,
):
    """Similarity of the positions of ``box``, from patterns read over ``read_ext``.

    ``read_ext`` must be ``extended(box, spec["halo"], scan)``: every pair of
    neighbours is then computed from the same two (prefiltered) patterns as
    on the whole scan, so blocks give bit-identical values.

    Parameters
    ----------
    raw : ndarray, shape (h, w, Qx, Qy)
        The patterns of ``read_ext`` of one time step.
    read_ext, box : (r0, r1, c0, c1)
        Global scan positions read, and those to compute.
    spec : dict
        From :func:`make_spec`.
    raw_map : bool
        Also return the raw patterns' mean similarity (:func:`needs_raw_map`).
    t : int, optional
        Time step, for error messages.
    keep : bool
        Also return the prefiltered patterns of ``box`` (for the sums pass of
        the same block; only when it holds the whole block anyway).
    stage : callable, optional
        ``stage()`` returns the progress callback of the next kernel call.
    extras : dict, optional
        Filled with the per-position inputs of the regions pass that
        ``spec`` asks for: ``"signal"`` (dark-field image of the raw
        patterns of ``box``) and ``"features"`` (binned patterns, as
        compared; only the bins that meet the q-mask,
        :func:`~napari_stemcluster.core.linkage.feature_slots`).

    Returns
    -------
    sim : ndarray of float32, shape (h, w, 8)
    mask_map : ndarray of float32 (h, w), or None
    kept : ndarray or None
        With ``keep``: the prefiltered (or raw) patterns of ``box``.

    Examples
    --------
    >>> cube = np.ones((3, 3, 2, 2), np.float32)
    >>> sim, mm, _ = similarity_block(cube, (0, 3, 0, 3), (0, 2, 0, 3),
    ...                               make_spec(None, None, 0.0))
    >>> sim.shape, mm
    ((2, 3, 8), None)
    """
    scan_lo = (read_ext[0], read_ext[2])
    stage = stage or (lambda: None)
    pre = spec["prefilter"]
    near = _near(box, read_ext, spec)
    mask_map = None
    # The regions pass's per-position inputs come out of the similarity
    # kernel while each pattern is in cache: the binned patterns always, the
    # dark-field image when the patterns compared are the raw ones.
    beam = spec.get("beam") if extras is not None else None
    shape = (near[1] - near[0], near[3] - near[2])
    feats = None
    if extras is not None and spec.get("features"):
        # Only the bins that meet the q-mask: the others are 0 everywhere.
        k = len(feature_slots(raw.shape[-2:], spec["q_mask"], FEATURE_DIMS))
        feats = np.empty((*shape, k), np.float32)
    signal = np.empty(shape, np.float32) if beam is not None and not pre else None
    try:
        if pre:
            from .prefilter import correlative_prefilter

            if raw_map:
                raw_sim = neighbor_similarity(
                    _crop(raw, read_ext, near), spec["q_mask"], spec["sigma"], progress=stage()
                )
                mask_map = np.ascontiguousarray(_crop(mean_similarity(raw_sim), near, box))
                del raw_sim
            filtered = correlative_prefilter(raw, **pre, progress=stage())
            data = _crop(filtered, read_ext, near)
        else:
            data = _crop(raw, read_ext, near)
        sim = neighbor_similarity(
            data,
            spec["q_mask"],
            spec["sigma"],
            progress=stage(),
            features=feats,
            feature_dims=FEATURE_DIMS,
            dark_field=signal,
            beam=beam if signal is not None else None,
        )
    except ValueError as exc:
        _locate_bad_values(raw, scan_lo, t, exc)
        raise
    if extras is not None:
        if signal is not None:
            extras["signal"] = _crop(signal, near, box)
        elif beam is not None:
            # With the prefilter the kernel sees the filtered patterns; the
            # image is of the raw ones (a view of the block: no copy).
            extras["signal"] = dark_field_image(_crop(raw, read_ext, box), beam)
        if feats is not None:
            extras["features"] = _crop(feats, near, box)
    kept = np.ascontiguousarray(_crop(data, near, box)) if keep else None
    return np.ascontiguousarray(_crop(sim, near, box)), mask_map, kept


def _near(box, read_ext, spec):
    """``box`` grown by the similarity's halo of 1, within what was read."""
    r0, r1, c0, c1 = box
    e0, e1, f0, f1 = read_ext
    return max(e0, r0 - 1), min(e1, r1 + 1), max(f0, c0 - 1), min(f1, c1 + 1)


def _locate_bad_values(raw, origin, t, exc) -> None:
    """Raise a ValueError naming the global position of the first bad pattern.

    Non-finite values, and finite ones whose squares overflow the float32
    arithmetic of the kernels, are looked for in the block (only after a
    kernel has failed). Returns when the block holds neither.
    """
    where = "" if t is None else f"time step {t}, "
    rows = raw.shape[0]
    for i in range(rows):
        row = np.asarray(raw[i]).reshape(raw.shape[1], -1)
        if row.dtype.kind == "f":
            bad = ~np.isfinite(row).all(axis=1)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                pos = (origin[0] + i, origin[1] + j)
                raise ValueError(
                    f"the cube contains NaN or inf (first affected pattern at {where}"
                    f"scan index {pos}); replace or mask those values before clustering"
                ) from exc
    for i in range(rows):
        row = np.asarray(raw[i]).reshape(raw.shape[1], -1)
        norms = np.einsum("ij,ij->i", row, row, dtype=np.float64)
        big = norms > _F32_MAX
        if big.any():
            j = int(np.flatnonzero(big)[0])
            pos = (origin[0] + i, origin[1] + j)
            raise ValueError(
                f"the pattern at {where}scan index {pos} holds values too large for the "
                f"float32 arithmetic of the kernels (largest {float(np.abs(row[j]).max()):.3g}"
                "); scale the data down before clustering"
            ) from exc


def grow_step(sim, mask_map, real_mask, grow: dict, extras: dict | None = None) -> tuple:
    """Real-space mask and regions of one time step (the regions pass).

    Parameters
    ----------
    sim : ndarray of float32, shape (Rx, Ry, 8)
        The gathered similarity of the step.
    mask_map : ndarray of float32, shape (Rx, Ry), or None
        The raw cube's mean similarity (:func:`needs_raw_map`); the mask
        thresholds it instead of the similarity's own map.
    real_mask
        As for :func:`~napari_stemcluster.core.segment`, one step's.
    grow : dict
        ``threshold`` (a number or ``"auto"``), ``min_cluster_size``,
        ``mask_min_size``, ``mask_hole_size`` and optionally ``linkage``
        (default ``"pair"``).
    extras : dict, optional
        The step's gathered ``"signal"`` and ``"features"`` (see
        :func:`similarity_block`); receives ``"diagnostics"``
        (:class:`~napari_stemcluster.core.clustering.Diagnostics`).

    Returns
    -------
    labels, mean_similarity, real_mask, table

    Examples
    --------
    >>> sim = np.ones((2, 3, 8), np.float32)
    >>> grow = {"threshold": 0.5, "min_cluster_size": 1, "mask_min_size": 0,
    ...         "mask_hole_size": 0}
    >>> grow_step(sim, None, None, grow)[0]
    array([[1, 1, 1],
           [1, 1, 1]], dtype=int32)
    """
    ms = mean_similarity_map(sim)
    use_raw = mask_map is not None and thresholds_a_map(real_mask)
    extras = {} if extras is None else extras
    labels, rmask, diag = cluster_scan(
        sim,
        ms,
        threshold=grow["threshold"],
        min_cluster_size=grow["min_cluster_size"],
        real_mask=real_mask,
        mask_map=mask_map if use_raw else None,
        signal=extras.get("signal"),
        mask_min_size=grow["mask_min_size"],
        mask_hole_size=grow["mask_hole_size"],
        linkage=grow.get("linkage", "pair"),
        features=extras.pop("features", None),
    )
    extras["diagnostics"] = diag
    n = int(labels.max(initial=0))
    return labels, ms, rmask, cluster_table(labels, ms, n)


def sums_block(raw, read_ext, box, labels, spec, *, data=None, progress=None):
    """Per-cluster sums of the patterns of ``box`` (the sums pass).

    ``raw`` is read over ``extended(box, spec["sums_halo"], scan)`` (the
    prefilter's halo when the averages are of the prefiltered cube);
    ``data`` may give the patterns to add directly (already prefiltered).

    Returns
    -------
    ids : ndarray of int64
        The labels present in the block (sorted).
    sums : ndarray of float64, shape (len(ids), Qx, Qy)

    Examples
    --------
    >>> cube = np.ones((1, 3, 2, 2), np.uint8)
    >>> ids, sums = sums_block(cube, (0, 1, 0, 3), (0, 1, 0, 3), np.array([[0, 2, 2]]),
    ...                        make_spec(None, None, 0.0))
    >>> ids, float(sums[0, 0, 0])
    (array([2]), 2.0)
    """
    labels = np.asarray(labels)
    # Labels renumbered 1..k within the block: partial sums hold only the
    # clusters present, not every cluster of the scan (a lookup table: no
    # sort of the labels).
    flat = np.clip(labels, 0, None).ravel()
    present = np.bincount(flat) > 0
    present[0] = False
    ids = np.flatnonzero(present).astype(np.int64)
    lut = np.zeros(present.size, np.int64)
    lut[ids] = np.arange(1, ids.size + 1)
    compact = lut[flat].reshape(labels.shape)
    if data is None:
        pre = spec["prefilter"] if spec["average"] == "prefiltered" else None
        if pre:
            from .prefilter import correlative_prefilter

            data = _crop(correlative_prefilter(raw, **pre), read_ext, box)
        else:
            data = _crop(raw, read_ext, box)
    sums, _ = cluster_sums(data, compact, len(ids), progress=progress)
    return ids, sums


def add_sums(total: np.ndarray, ids: np.ndarray, part: np.ndarray) -> None:
    """Merge a block's partial sums into the step's (in block order, for
    results that do not depend on timing).

    Examples
    --------
    >>> total = np.zeros((3, 1, 1))
    >>> add_sums(total, np.array([1, 3]), np.ones((2, 1, 1)))
    >>> total.ravel()
    array([1., 0., 1.])
    """
    total[ids - 1] += part


def finish_step(labels, ms, rmask, sim, table, sums, diagnostics=None) -> StepResult:
    """The step's result from its labels and merged sums.

    Examples
    --------
    >>> lab = np.array([[1, 1]], np.int32)
    >>> ms = np.ones((1, 2), np.float32)
    >>> r = finish_step(lab, ms, ms > 0, None, cluster_table(lab, ms), np.full((1, 1, 1), 4.0))
    >>> r.cluster_means
    array([[[2.]]], dtype=float32)
    """
    n = len(table)
    counts = np.bincount(np.clip(labels, 0, None).ravel(), minlength=n + 1)[1 : n + 1]
    means = means_from_sums(sums, counts.astype(np.int64))
    return StepResult(labels, ms, rmask, sim, means, table, diagnostics)


def assemble(steps: list[StepResult], params: dict, time_axis: bool) -> SegmentationResult:
    """The public result of the steps (:meth:`SegmentationResult.from_steps`).

    Examples
    --------
    >>> lab = np.array([[1, 1]], np.int32)
    >>> ms = np.ones((1, 2), np.float32)
    >>> step = finish_step(lab, ms, ms > 0, np.ones((1, 2, 8), np.float32),
    ...                    cluster_table(lab, ms), np.ones((1, 1, 1)))
    >>> assemble([step], {}, time_axis=True).labels.shape
    (1, 1, 2)
    """
    return SegmentationResult.from_steps(steps, params, time_axis)


def row_boxes(scan_shape, rows: int) -> list[tuple[int, int, int, int]]:
    """Blocks of whole scan rows, ``rows`` at a time.

    Examples
    --------
    >>> row_boxes((5, 3), 2)
    [(0, 2, 0, 3), (2, 4, 0, 3), (4, 5, 0, 3)]
    """
    rx, ry = scan_shape
    return [(r, min(r + rows, rx), 0, ry) for r in range(0, rx, max(1, rows))]


def run_in_process(cube, steps, masks, spec, grow, raw_maps, progress=None) -> list[StepResult]:
    """Run the passes of every step here, block after block (no scheduler).

    A numpy cube is one block per step (no copies: the kernels see the whole
    scan and read it in their own row blocks); other array-likes (h5py,
    dask) are read in bands of rows with their halo, so at most one band is
    in memory.

    Parameters
    ----------
    cube : array_like
        ``(Rx, Ry, Qx, Qy)`` with ``steps == [None]``, or
        ``(T, Rx, Ry, Qx, Qy)``.
    steps : list of int or [None]
        Time steps to segment.
    masks : list
        The real-space mask argument of each step.
    spec, grow : dict
        :func:`make_spec` and :func:`grow_step`'s options.
    raw_maps : list of bool
        :func:`needs_raw_map` per step.
    progress : callable, optional
        ``progress(done, total)``; raise from it to cancel.

    Returns
    -------
    list of StepResult

    Examples
    --------
    >>> cube = np.ones((3, 3, 2, 2), np.float32)
    >>> grow = {"threshold": 0.5, "min_cluster_size": 1, "mask_min_size": 0,
    ...         "mask_hole_size": 0}
    >>> out = run_in_process(cube, [None], [None], make_spec(None, None, 0.0), grow, [False])
    >>> int(out[0].labels.max())
    1
    """
    scan = tuple(int(s) for s in cube.shape[-4:-2])
    boxes = row_boxes(scan, _band_rows(cube))
    single = len(boxes) == 1
    pre = spec["prefilter"]
    keep = single and bool(pre) and spec["average"] == "prefiltered"
    per_box = 1 + bool(pre)
    track = _Progress(progress, sum(len(boxes) * (per_box + bool(m)) + 1 for m in raw_maps))
    results = []
    for t, mask, raw_map in zip(steps, masks, raw_maps, strict=True):
        sim = np.empty((*scan, 8), np.float32)
        mask_map = np.empty(scan, np.float32) if raw_map else None
        kept = None
        extras = {}
        for box in boxes:
            ext = extended(box, spec["halo"], scan)
            raw = _read(cube, t, ext)
            part = {}
            s, m, kept = similarity_block(
                raw,
                ext,
                box,
                spec,
                raw_map=raw_map,
                t=t,
                keep=keep,
                stage=track.stage,
                extras=part,
            )
            sim[box[0] : box[1], box[2] : box[3]] = s
            if raw_map:
                mask_map[box[0] : box[1], box[2] : box[3]] = m
            gather_extras(extras, part, box, scan)
            del raw, part  # the step's arrays hold what is kept
        labels, ms, rmask, table = grow_step(sim, mask_map, mask, grow, extras)
        data = None if kept is None else {boxes[0]: kept}
        sums = step_sums(cube, t, labels, len(table), spec, boxes, data, track.stage())
        kept = None
        results.append(finish_step(labels, ms, rmask, sim, table, sums, extras.get("diagnostics")))
    return results


def gather_extras(extras: dict, part: dict, box, scan_shape) -> None:
    """Put a block's extras (:func:`similarity_block`) into the step's arrays.

    Examples
    --------
    >>> ex = {}
    >>> gather_extras(ex, {"signal": np.ones((1, 2))}, (1, 2, 0, 2), (2, 2))
    >>> ex["signal"]
    array([[0., 0.],
           [1., 1.]], dtype=float32)
    """
    r0, r1, c0, c1 = box
    whole = (r0, r1, c0, c1) == (0, scan_shape[0], 0, scan_shape[1])
    for key, value in part.items():
        if key not in extras and whole and value.dtype == np.float32:
            extras[key] = value  # one block is the whole step: no copy
            continue
        if key not in extras:
            extras[key] = np.zeros((*scan_shape, *value.shape[2:]), np.float32)
        extras[key][r0:r1, c0:c1] = value


def step_sums(cube, t, labels, n, spec, boxes=None, data=None, progress=None) -> np.ndarray:
    """The sums pass of one step, block after block: per-cluster sums (float64).

    Blocks without a labelled position are not read. ``data`` may map a box
    to patterns already at hand (the prefiltered block of the similarity
    pass).

    Examples
    --------
    >>> cube = np.ones((2, 2, 1, 1), np.uint8)
    >>> step_sums(cube, None, np.array([[1, 0], [1, 2]]), 2, make_spec(None, None, 0.0)).ravel()
    array([2., 1.])
    """
    scan = tuple(int(s) for s in cube.shape[-4:-2])
    if boxes is None:
        boxes = row_boxes(scan, _band_rows(cube))
    sums = np.zeros((n, *cube.shape[-2:]), np.float64)
    for i, box in enumerate(boxes):
        lab = labels[box[0] : box[1], box[2] : box[3]]
        if n and np.any(lab > 0):
            if data is not None and box in data:
                ids, part = sums_block(None, box, box, lab, spec, data=data[box])
            else:
                ext = extended(box, spec["sums_halo"], scan)
                ids, part = sums_block(_read(cube, t, ext), ext, box, lab, spec)
            add_sums(sums, ids, part)
        if progress is not None:
            progress(i + 1, len(boxes))
    return sums


def _band_rows(cube) -> int:
    """Rows per block read in this process: all of a numpy cube, bands otherwise."""
    from ._validate import block_rows

    if isinstance(cube, np.ndarray):
        return int(cube.shape[-4])
    itemsize = max(np.dtype(cube.dtype).itemsize, 4)
    return block_rows(cube.shape[-4:], itemsize, 4 * 2**26)


def _read(cube, t, ext):
    r0, r1, c0, c1 = ext
    key = (slice(r0, r1), slice(c0, c1))
    block = cube[key if t is None else (t, *key)]
    if hasattr(block, "compute"):
        block = block.compute()
    return np.asarray(block)


class _Progress:
    """Maps each kernel call's ``(done, total)`` onto one overall bar."""

    SCALE = 1000

    def __init__(self, callback, n_stages: int):
        self.callback = callback
        self.total = n_stages * self.SCALE
        self.base = -self.SCALE

    def stage(self):
        self.base += self.SCALE
        if self.callback is None:
            return None
        base = self.base

        def report(done, total):
            self.callback(base + (self.SCALE * done) // max(total, 1), self.total)

        return report
