"""The API's gunicorn worker: gunicorn's threaded worker, with connections that cost no thread until a request
arrives, and a deadline on every phase before the application runs.

gunicorn's ``gthread`` worker hands every new connection to a thread, which does the TLS handshake and then blocks
reading the request's headers, without a deadline: a handful of clients that connect and send nothing (or one byte
at a time) held every thread, and ``/health`` went unanswered for as long as they stayed. Here:

* a new connection goes back to the worker's poller (no thread) until its first bytes arrive, and again after the
  TLS handshake until the request's first bytes arrive; it is closed after ``UPSCALER_IDLE_TIMEOUT`` idle seconds
  (kept-alive connections too);
* the handshake must end within ``UPSCALER_HANDSHAKE_TIMEOUT`` and the request's headers within
  ``UPSCALER_HEADER_TIMEOUT`` seconds in all (not per read): past it, the connection is shut down under the thread;
* a request body that stalls for ``UPSCALER_BODY_TIMEOUT`` seconds between two reads ends the request (408);
* gunicorn's own answers to malformed requests (bad framing, oversized headers) are JSON, like the API's.

The heavy work is bounded separately (``upscaler.backpressure``): threads are many and cheap, work slots few.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

from gunicorn import util
from gunicorn.workers import gthread

from upscaler.config import Settings

#: How long a thread waits for a new connection's first bytes before handing it back to the poller.
FIRST_BYTES_WAIT = 0.02


class Deadlines:
    """Connections whose current phase must end by a time; past it, the connection's socket is shut down, which
    wakes the thread blocked on it. One thread for the whole worker, checking four times a second."""

    def __init__(self, tick: float = 0.25) -> None:
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, Any]] = {}
        self.expired = 0
        self._tick = tick
        threading.Thread(target=self._run, name="deadlines", daemon=True).start()

    def arm(self, conn: Any, seconds: float) -> None:
        with self._lock:
            self._due[id(conn)] = (time.monotonic() + seconds, conn)

    def disarm(self, conn: Any) -> None:
        with self._lock:
            self._due.pop(id(conn), None)

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:  # held while shutting down: a disarmed (then closed) socket is never touched
                for due, conn in self._due.values():
                    if due <= now:
                        self.expired += 1
                        # the socket object of the moment (the TLS one once wrapped); a closed one is skipped
                        with contextlib.suppress(OSError):
                            socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it could not parse, as the API's JSON error instead of an HTML page."""
    body = json.dumps({"error": mesg or reason, "code": reason.lower().replace(" ", "_"), "status": status_int})
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body.encode())}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body.encode())


class ApiWorker(gthread.ThreadWorker):
    def init_process(self) -> None:
        settings = Settings.from_env()
        self.handshake_timeout = settings.handshake_timeout
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.deadlines = Deadlines()
        util.write_error = write_json_error  # what gunicorn's handle_error writes with
        super().init_process()

    def handle(self, conn: Any) -> Any:
        try:
            if not conn.initialized:
                if not (conn.data_ready or conn.wait_for_data(FIRST_BYTES_WAIT)):
                    return gthread._DEFER  # nothing sent yet: wait in the poller, not in a thread
                self.deadlines.arm(conn, self.handshake_timeout)
                try:
                    conn.sock.setblocking(True)
                    conn.init()  # the TLS handshake
                except (OSError, ValueError):
                    return False  # cut off, reset or not TLS: closed by finish_request
                if conn.is_http2:
                    return super().handle(conn)
                conn.data_ready = False
                pending = getattr(conn.sock, "pending", lambda: 0)()
                if not (pending or conn.wait_for_data(FIRST_BYTES_WAIT)):
                    return gthread._DEFER  # handshake done, no request yet: back to the poller
            self.deadlines.arm(conn, self.header_timeout)
            return super().handle(conn)
        finally:
            self.deadlines.disarm(conn)

    def handle_request(self, req: Any, conn: Any) -> bool:
        self.deadlines.disarm(conn)  # the headers are in: from here a stalled body read times out on its own
        conn.sock.settimeout(self.body_timeout)
        return bool(super().handle_request(req, conn))
