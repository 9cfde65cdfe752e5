"""A bounded number of heavy operations (decode + model + encode) at once in one process.

Beyond ``limit``, a request waits up to ``wait`` seconds for a slot, then is refused with :class:`Busy` (HTTP 429
and ``Retry-After``) instead of piling decoded images up in memory until the process is killed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from upscaler.errors import Busy


class WorkSlots:
    def __init__(self, limit: int, wait: float, retry_after: float = 2.0) -> None:
        if limit < 1:
            raise ValueError("the number of work slots must be at least 1")
        self.limit, self.wait, self.retry_after = limit, wait, retry_after
        self._sem = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.in_use = 0
        self.refused = 0

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        if not self._sem.acquire(timeout=self.wait):
            with self._lock:
                self.refused += 1
            raise Busy(
                f"all {self.limit} work slots are busy for more than {self.wait:g} s; retry later",
                retry_after=self.retry_after,
            )
        with self._lock:
            self.in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_use -= 1
            self._sem.release()
