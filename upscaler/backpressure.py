"""A bounded number of heavy operations (decode + model + encode) at once in one process.

Beyond ``limit`` running, at most ``queue`` requests wait, each up to ``wait`` seconds, for a slot; a request beyond
those, or one whose wait runs out, is refused with :class:`Busy` (HTTP 429 and ``Retry-After``) instead of piling
decoded images up in memory until the process is killed, or holding every HTTP thread so that even ``/health``
waits. When the last running operation ends, the freed heap is handed back to the operating system.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Iterator

from upscaler.errors import Busy


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    """The models' cached buffers are freed, then glibc hands free memory back (it keeps it in its arenas): after a
    burst of large images the process would stay at its peak otherwise."""
    from upscaler.engine import runtime

    runtime.release_pools()
    with contextlib.suppress(AttributeError):  # not glibc
        _libc().malloc_trim(0)  # type: ignore[union-attr]


class WorkSlots:
    def __init__(self, limit: int, wait: float, retry_after: float = 2.0, queue: int | None = None) -> None:
        if limit < 1:
            raise ValueError("the number of work slots must be at least 1")
        self.limit, self.wait, self.retry_after = limit, wait, retry_after
        self.queue = 2 * limit if queue is None else max(0, queue)
        self._sem = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.in_use = 0
        self.waiting = 0
        self.refused = 0

    def _refuse(self, why: str) -> Busy:
        with self._lock:
            self.refused += 1
        return Busy(f"all {self.limit} work slots are busy {why}; retry later", retry_after=self.retry_after)

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        with self._lock:
            full = self.waiting >= self.queue and self.in_use >= self.limit
            if not full:
                self.waiting += 1
        if full:
            raise self._refuse(f"and {self.queue} requests already wait for one")
        try:
            got = self._sem.acquire(timeout=self.wait)
        finally:
            with self._lock:
                self.waiting -= 1
        if not got:
            raise self._refuse(f"for more than {self.wait:g} s")
        with self._lock:
            self.in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_use -= 1
                idle = self.in_use == 0
            self._sem.release()
            if idle:
                _malloc_trim()
