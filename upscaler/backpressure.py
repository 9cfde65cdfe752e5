"""A bounded number of heavy operations (decode + model + encode) at once in one process.

Beyond ``limit`` running, at most ``queue`` requests wait, each up to ``wait`` seconds, for a slot; a request beyond
those, or one whose wait runs out, is refused with :class:`Busy` (HTTP 429 and ``Retry-After``) instead of piling
decoded images up in memory until the process is killed, or holding every HTTP thread so that even ``/health``
waits. Once no operation has run for ``release_after`` seconds, the models' cached buffers and the freed heap are
handed back to the operating system (not at every idle moment under steady load, where they would be made again).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
import time
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
    def __init__(
        self, limit: int, wait: float, retry_after: float = 2.0, queue: int | None = None, release_after: float = 1.0
    ) -> None:
        if limit < 1:
            raise ValueError("the number of work slots must be at least 1")
        self.limit, self.wait, self.retry_after = limit, wait, retry_after
        self.release_after = release_after
        self._idle_since: float | None = None
        self._release_pending = False
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
            self._idle_since = None
        try:
            yield
        finally:
            with self._lock:
                self.in_use -= 1
                idle = self.in_use == 0
                if idle:
                    self._idle_since = time.monotonic()
                schedule = idle and not self._release_pending
                self._release_pending = self._release_pending or schedule
            self._sem.release()
            if schedule:
                self._release_later(self.release_after)

    def _release_later(self, delay: float) -> None:
        timer = threading.Timer(max(0.0, delay), self._release_if_still_idle)
        timer.daemon = True
        timer.start()

    def _release_if_still_idle(self) -> None:
        """One timer at a time: memory goes back once the slots have been idle ``release_after`` seconds in a row."""
        with self._lock:
            since = self._idle_since
            if self.in_use or since is None:
                self._release_pending = False  # work is running: the next idle moment schedules again
                return
            left = since + self.release_after - time.monotonic()
            if left <= 0:
                self._release_pending = False
        if left > 0:
            self._release_later(left)
        else:
            _malloc_trim()
