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


#: glibc's mallopt parameters, and the size up to which freed blocks stay in the heap for the next tile.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _HEAP_KEEP = -1, -3, 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Serve large blocks from glibc's heap and keep freed ones there (up to 1 GiB), instead of a fresh ``mmap`` per
    block that the kernel zeroes page by page on first touch; whether it took (False: not glibc).

    A network's activations are tens of MB a tile (48 channels of fp32), above glibc's largest automatic mmap
    threshold (32 MiB), so by default every layer's output of every tile was a new mapping: on the torch runtime at
    1224x1224 x4 the kernel spent 24-37 s of system time in 45 s, and the engine ran 1.7-2.3 output MP/s instead of
    3.2-4.3 with the heap kept (measured with ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` and this
    call). The memory still comes back: :func:`give_back_memory` trims the heap when the last operation of the API
    ends (:meth:`WorkSlots.take`) and after each job of a worker."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _HEAP_KEEP)) and bool(mallopt(_M_TRIM_THRESHOLD, _HEAP_KEEP))


def give_back_memory() -> None:
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
                give_back_memory()
