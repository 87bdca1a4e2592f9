"""Out-of-core segmentation: the pipeline block by block, on threads or a cluster.

:func:`segment_chunked` runs the pipeline of
:func:`napari_stemcluster.core.segment` on a cube read from disk in blocks of
whole diffraction patterns, with memory bounded by a budget, on the threads
of this process or on a dask.distributed cluster (:mod:`.executors`). The
block shape comes from :func:`~.planning.plan_chunks`.
"""

from .executors import DistributedExecutor, Executor, ThreadExecutor, get_executor
from .pipeline import STAGES, RunStats, segment_chunked, similarity_chunked
from .planning import (
    ChunkPlan,
    default_memory_limit,
    format_bytes,
    parse_memory,
    plan_chunks,
)

__all__ = [
    "STAGES",
    "ChunkPlan",
    "DistributedExecutor",
    "Executor",
    "RunStats",
    "ThreadExecutor",
    "default_memory_limit",
    "format_bytes",
    "get_executor",
    "parse_memory",
    "plan_chunks",
    "segment_chunked",
    "similarity_chunked",
]
