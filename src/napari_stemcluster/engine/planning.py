"""Memory budget and the choice of scan blocks (chunks) for the chunked engine.

A task of the engine reads one block of scan positions plus a halo of
neighbouring positions (whole diffraction patterns), computes, and returns a
small result. The planner picks the block shape from the memory budget: the
budget, minus what the gathered results need, is shared by the tasks that run
at once, and each task's working set (the raw block and its float32 working
copies) must fit its share.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

#: Default memory budget as a fraction of the machine's physical memory.
DEFAULT_MEMORY_FRACTION = 0.25

#: Upper bound on the raw bytes of one block: larger blocks do not read or
#: compute faster, but make progress coarser and load balancing worse.
MAX_BLOCK_BYTES = 256 * 2**20

#: Blocks per task slot at least (when the cube is large enough): with one
#: block per slot, every slot reads before it computes and the machine idles.
BLOCKS_PER_SLOT = 4

#: Blocks are not made smaller than this to have several per slot.
MIN_BLOCK_BYTES = 16 * 2**20

#: Bytes kept per scan position (and time step) for the gathered results:
#: similarity (8 x float32), mean similarity, labels, mask, and slack.
RESULT_BYTES_PER_POSITION = 64

#: Fixed cost of one task expressed as bytes read: scheduling, opening the
#: file, starting the kernels. Favours fewer, larger blocks.
TASK_OVERHEAD_BYTES = 2 * 2**20


def total_memory() -> int:
    """Physical memory of this machine in bytes.

    Examples
    --------
    >>> total_memory() > 0
    True
    """
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_memory_limit() -> int:
    """The default memory budget: a fraction of physical memory.

    Examples
    --------
    >>> default_memory_limit() == int(DEFAULT_MEMORY_FRACTION * total_memory())
    True
    """
    return int(DEFAULT_MEMORY_FRACTION * total_memory())


def parse_memory(value) -> int:
    """Bytes from an int or a string such as ``"4GB"``, ``"512 MiB"``, ``"2e9"``.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary units (KiB,
    MiB, GiB, TiB) powers of 1024.

    Raises
    ------
    ValueError
        For anything that is not a positive size.

    Examples
    --------
    >>> parse_memory("4GB"), parse_memory("1 GiB"), parse_memory(1000)
    (4000000000, 1073741824, 1000)
    """
    if isinstance(value, bool):
        raise ValueError(f"memory limit must be a size such as '4GB'; got {value!r}")
    if isinstance(value, numbers.Real):
        n = float(value)
    elif isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            n = float(parse_bytes(value.strip()))
        except (ValueError, TypeError, KeyError, OverflowError):
            raise ValueError(
                f"memory limit must be a size such as '4GB' or '512MiB'; got {value!r}"
            ) from None
    else:
        raise ValueError(
            f"memory limit must be a size such as '4GB' or a number of bytes; got "
            f"{type(value).__name__}"
        )
    if not (math.isfinite(n) and n >= 1):
        raise ValueError(f"memory limit must be a positive size; got {value!r}")
    return int(n)


def format_bytes(n: float) -> str:
    """Human-readable size with binary units.

    Examples
    --------
    >>> format_bytes(3 * 2**30)
    '3.00 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def bytes_per_pattern(detector_shape: tuple[int, int], itemsize: int, prefilter: bool) -> int:
    """Peak working-set bytes of one diffraction pattern inside a task.

    The raw pattern is counted twice (reading through dask may concatenate
    pieces of several file chunks; a task reading an HDF5 file holds the
    next block of its slot, read ahead while it computes) and float32 twice (the blurred and the
    masked copy the similarity works on); the prefilter adds its float32
    vectors, its output and the float32 copy of the similarity input.
    """
    q = int(detector_shape[0]) * int(detector_shape[1])
    n = q * (2 * int(itemsize) + 2 * 4)
    if prefilter:
        n += q * 3 * 4
    return n


@dataclass(frozen=True)
class ChunkPlan:
    """How a cube is cut into blocks and how many blocks are worked on at once.

    Attributes
    ----------
    scan_shape : (int, int)
        ``(Rx, Ry)`` of one time step.
    n_steps : int
        Number of time steps (1 for a 4D cube).
    block_shape : (int, int)
        Scan positions per block (the last block along an axis may be
        smaller).
    halo : int
        Extra scan rows/columns read on each side of a block for the
        similarity stage (1, plus the prefilter radius).
    concurrency : int
        Blocks processed at the same time.
    task_bytes : int
        Estimated peak memory of one task.
    reserved_bytes : int
        Memory set aside for the gathered results.
    memory_limit : int
        The budget the plan was made for.
    """

    scan_shape: tuple[int, int]
    n_steps: int
    block_shape: tuple[int, int]
    halo: int
    concurrency: int
    task_bytes: int
    reserved_bytes: int
    memory_limit: int

    @property
    def grid(self) -> tuple[int, int]:
        """Number of blocks along the two scan axes."""
        (rx, ry), (h, w) = self.scan_shape, self.block_shape
        return -(-rx // h), -(-ry // w)

    @property
    def n_blocks(self) -> int:
        """Blocks per time step."""
        nr, nc = self.grid
        return nr * nc

    @property
    def peak_bytes(self) -> int:
        """Estimated peak memory of the data: tasks in flight plus results."""
        return self.concurrency * self.task_bytes + self.reserved_bytes

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """``(r0, r1, c0, c1)`` of every block of one time step, in raster order.

        Examples
        --------
        >>> plan = plan_chunks((5, 4, 8, 8), np.uint16, block_shape=(2, 4))
        >>> plan.boxes()
        [(0, 2, 0, 4), (2, 4, 0, 4), (4, 5, 0, 4)]
        """
        (rx, ry), (h, w) = self.scan_shape, self.block_shape
        return [
            (r0, min(r0 + h, rx), c0, min(c0 + w, ry))
            for r0 in range(0, rx, h)
            for c0 in range(0, ry, w)
        ]

    def describe(self) -> str:
        """One line for logs and the command line."""
        nr, nc = self.grid
        return (
            f"blocks of {self.block_shape[0]}x{self.block_shape[1]} scan positions "
            f"({nr}x{nc} per time step, halo {self.halo}), {self.concurrency} at "
            f"once, ~{format_bytes(self.task_bytes)} per task, memory limit "
            f"{format_bytes(self.memory_limit)}"
        )


def _extent(n: int, size: int, halo: int) -> int:
    """Positions read along one axis for a block of ``n`` (halo clipped)."""
    return min(size, n + 2 * halo)


def plan_chunks(
    shape,
    dtype,
    *,
    memory_limit=None,
    concurrency: int = 1,
    prefilter_radius: int | None = None,
    block_shape: tuple[int, int] | None = None,
    source_chunks: tuple[int, int] | None = None,
    max_block_bytes: int = MAX_BLOCK_BYTES,
) -> ChunkPlan:
    """Choose the scan block shape and the number of blocks in flight.

    The budget minus the gathered results (about
    :data:`RESULT_BYTES_PER_POSITION` per scan position and time step) is
    shared by the tasks running at once. The block shape minimises the
    patterns read (blocks plus their halos) plus a fixed cost per task, under
    the per-task memory share; when even a small block does not fit, fewer
    tasks run at once.

    Parameters
    ----------
    shape : tuple of int
        Cube shape ``(Rx, Ry, Qx, Qy)`` or ``(T, Rx, Ry, Qx, Qy)``.
    dtype : dtype
        Cube dtype.
    memory_limit : int or str, optional
        Budget in bytes (or ``"4GB"``); default :func:`default_memory_limit`.
    concurrency : int
        Tasks that may run at once (worker threads or processes).
    prefilter_radius : int, optional
        Radius of the correlative prefilter when it runs; widens the halo.
    block_shape : (int, int), optional
        Force the block shape (scan positions); it must fit the budget.
    source_chunks : (int, int), optional
        Chunk shape of the file along the scan axes; blocks are aligned to it
        when they are at least one chunk large.
    max_block_bytes : int
        Upper bound on the raw bytes of one block.

    Returns
    -------
    ChunkPlan

    Raises
    ------
    ValueError
        If the budget cannot hold the results plus one block of a single
        scan position with its halo, or a forced block shape does not fit.

    Examples
    --------
    >>> plan = plan_chunks((256, 256, 128, 128), np.uint16,
    ...                    memory_limit="1GiB", concurrency=2)
    >>> plan.concurrency, plan.task_bytes * plan.concurrency <= 2**30
    (2, True)
    >>> plan_chunks((10, 13, 8, 8), np.float32, block_shape=(3, 5)).n_blocks
    12
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (4, 5) or any(s < 1 for s in shape):
        raise ValueError(
            f"shape must be (Rx, Ry, Qx, Qy) or (T, Rx, Ry, Qx, Qy) with positive "
            f"sizes; got {shape}"
        )
    n_steps = shape[0] if len(shape) == 5 else 1
    rx, ry, qx, qy = shape[-4:]
    itemsize = np.dtype(dtype).itemsize
    limit = default_memory_limit() if memory_limit is None else parse_memory(memory_limit)
    concurrency = int(concurrency)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1; got {concurrency}")
    prefilter = prefilter_radius is not None
    halo = 1 + (int(prefilter_radius) if prefilter else 0)
    per_pattern = bytes_per_pattern((qx, qy), itemsize, prefilter)
    pattern_bytes = qx * qy * itemsize
    reserved = n_steps * rx * ry * RESULT_BYTES_PER_POSITION
    avail = limit - reserved

    def task_bytes(h: int, w: int) -> int:
        return _extent(h, rx, halo) * _extent(w, ry, halo) * per_pattern

    smallest = task_bytes(1, 1)
    if avail < smallest:
        raise ValueError(
            f"memory limit {format_bytes(limit)} is too small: the results need "
            f"{format_bytes(reserved)} and one block of a single scan position "
            f"with its halo {format_bytes(smallest)}; raise the memory limit"
        )

    if block_shape is not None:
        h, w = _check_block_shape(block_shape, rx, ry)
        need = task_bytes(h, w)
        if need > avail:
            raise ValueError(
                f"blocks of {h}x{w} scan positions need {format_bytes(need)} per "
                f"task, more than the memory limit {format_bytes(limit)} leaves "
                f"after the results ({format_bytes(avail)}); use smaller blocks "
                "or raise the memory limit"
            )
        conc = max(1, min(concurrency, avail // need))
        return ChunkPlan((rx, ry), n_steps, (h, w), halo, conc, need, reserved, limit)

    # Fewer tasks at once when the share of each would not hold a block of a
    # few halos across (smaller blocks spend most of their reads on halos).
    good = task_bytes(min(rx, 4 * halo), min(ry, 4 * halo))
    conc = max(1, min(concurrency, avail // good))
    share = avail // conc
    max_ext = share // per_pattern  # positions a task may read, halo included
    max_int = max(1, max_block_bytes // max(pattern_bytes, 1))
    # Enough blocks to keep every task slot busy; and for cubes of more than
    # a few small blocks, several per slot, so that reading overlaps
    # computing and the last blocks do not leave slots idle for long.
    total_positions = n_steps * rx * ry
    max_int = min(max_int, max(1, -(-total_positions // conc)))
    several = -(-total_positions // (BLOCKS_PER_SLOT * conc))
    max_int = min(max_int, max(several, MIN_BLOCK_BYTES // max(pattern_bytes, 1)))
    overhead = TASK_OVERHEAD_BYTES / max(pattern_bytes, 1)

    def search(chunks):
        """The cheapest (cost, h, w); with ``chunks``, of whole source chunks."""
        best = None
        for h in range(1, rx + 1):
            ext_r = _extent(h, rx, halo)
            if ext_r * _extent(1, ry, halo) > max_ext:
                break
            # whole rows when they fit, else the widest block within the share
            w = ry if ext_r * ry <= max_ext else max_ext // ext_r - 2 * halo
            w = min(w, ry, max_int // h)
            if chunks is not None:
                cr, cc = chunks
                if h % cr and h < rx:
                    continue
                if w < ry:
                    w = w // cc * cc
            if w < 1:
                continue
            nr, nc = -(-rx // h), -(-ry // w)
            if chunks is None:
                reads = (rx + 2 * halo * (nr - 1)) * (ry + 2 * halo * (nc - 1))
            else:
                # A compressed chunk is decoded whole for any part of it:
                # count the chunks the blocks' reads touch (a halo reaching
                # into the next chunk column costs that whole column).
                reads = _touched(rx, h, halo, cr) * _touched(ry, w, halo, cc)
            cost = reads + overhead * nr * nc
            if best is None or cost < best[0]:
                best = (cost, h, w)
        return best

    chunks = None if source_chunks is None else tuple(max(1, int(c)) for c in source_chunks)
    best = None if chunks is None else search(chunks)
    if best is not None:
        _, h, w = best  # whole source chunks
    else:
        # No block of whole chunks fits (or the source is not chunked).
        best = search(None)
        if best is None:
            # Only a 1x1 block fits within the interior cap; it fits the budget.
            h, w = 1, 1
        else:
            _, h, w = best
            # Even out the blocks (same count, smaller last-block waste).
            nr, nc = -(-rx // h), -(-ry // w)
            h, w = -(-rx // nr), -(-ry // nc)
        if chunks is not None:
            cr, cc = chunks
            # A block spanning a whole axis is aligned already.
            if cr <= h < rx:
                h = h // cr * cr
            if cc <= w < ry:
                w = w // cc * cc
    return ChunkPlan((rx, ry), n_steps, (h, w), halo, conc, task_bytes(h, w), reserved, limit)


def _touched(n: int, size: int, halo: int, chunk: int) -> int:
    """Positions of the chunks read along an axis of ``n`` by blocks of ``size``.

    Examples
    --------
    >>> _touched(128, 64, 1, 64), _touched(128, 128, 1, 64)
    (256, 128)
    """
    total = 0
    for a in range(0, n, size):
        lo, hi = max(0, a - halo), min(n, a + size + halo)
        total += min(n, -(-hi // chunk) * chunk) - lo // chunk * chunk
    return total


def _check_block_shape(block_shape, rx: int, ry: int) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in block_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"chunks must be two positive integers (rows, cols); got {block_shape!r}"
        ) from None
    if h < 1 or w < 1:
        raise ValueError(f"chunks must be two positive integers (rows, cols); got {block_shape!r}")
    return min(h, rx), min(w, ry)
