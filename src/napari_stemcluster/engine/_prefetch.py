"""Read-ahead of the blocks the engine will read next.

On a file larger than the page cache, a task that reads its block waits on
the disk while its core idles, and the disk idles while the task computes.
The scheduling process therefore asks the kernel to start reading each
block's stored bytes as soon as its task is submitted, while earlier tasks
still run (a ``POSIX_FADV_WILLNEED`` hint per block, given from a
background thread so that the scheduler never waits on the disk). The hints
fill the page cache, which every process of the machine shares, so they
serve threads and local worker processes alike; the memory they take is the
kernel's cache, which it reclaims under pressure, not the engine's budget.
"""

from __future__ import annotations

import queue
import threading


class Prefetcher:
    """Hints block reads to the kernel from one background thread.

    Parameters
    ----------
    source : BlockSource
        The blocks' source; :meth:`BlockSource.prefetch` gives the hints.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_stemcluster.engine._tasks import BlockSource
    >>> p = Prefetcher(BlockSource(np.zeros((4, 4, 2, 2))))
    >>> p.hint(None, (0, 2, 0, 4)); p.close()
    >>> p.hinted_bytes
    0
    """

    def __init__(self, source):
        self.source = source
        self.hinted_bytes = 0
        self._seen = set()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="stemcluster-prefetch", daemon=True)
        self._thread.start()

    def hint(self, t, ext) -> None:
        """Start reading the block ``ext`` ``(r0, r1, c0, c1)`` of step ``t``
        (once per block)."""
        key = (t, tuple(ext))
        if key in self._seen:
            return
        self._seen.add(key)
        self._queue.put(key)

    def close(self) -> None:
        """Stop after the hints given so far (they are quick to give)."""
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            t, ext = item
            self.hinted_bytes += self.source.prefetch(t, *ext)
