"""The API's gunicorn worker: gunicorn's threaded worker, with connections that cost no thread until a request
arrives, and a deadline on every phase before the application runs.

gunicorn's ``gthread`` worker hands every new connection to a thread, which does the TLS handshake and then blocks
reading the request's headers, without a deadline: a handful of clients that connect and send nothing (or one byte
at a time) held every thread, and ``/health`` went unanswered for as long as they stayed. Here:

* a new connection goes back to the worker's poller (no thread) until its first bytes arrive; then the TLS
  handshake and the request's line and headers advance without blocking, a short turn in a thread each time the
  client's bytes arrive, and the request is parsed only once its head is all in: a client that stalls or sends a
  byte at a time holds no thread; a connection is closed after ``UPSCALER_IDLE_TIMEOUT`` seconds without a byte
  (kept-alive ones too);
* the handshake must end within ``UPSCALER_HANDSHAKE_TIMEOUT`` seconds and the request's head within
  ``UPSCALER_HEADER_TIMEOUT`` seconds of its first byte, in all (not per read); a handshake or head in progress
  waits in the poller under its own deadline, not the idle one (a client pausing inside its head was cut at the
  idle time; a stalled handshake was held for the idle time, 120 s when so configured);
* a request body that stalls for ``UPSCALER_BODY_TIMEOUT`` seconds between two reads ends the request (408); a body
  that keeps trickling holds its thread (bounded by ``UPSCALER_MAX_REQUEST_BYTES``, not by time);
* at ``GUNICORN_WORKER_CONNECTIONS`` open connections the oldest idle ones are closed to admit new clients, instead
  of leaving every new client in the listen backlog;
* gunicorn's own answers to malformed requests (bad framing, oversized headers) are JSON, like the API's, and its
  lingering close (up to 2 s reading what a client still sends) runs on threads of its own, not the main loop.

The heavy work is bounded separately (``upscaler.backpressure``): threads are many and cheap, work slots few.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import re
import socket
import ssl
import threading
import time
from typing import Any

from gunicorn import http, util
from gunicorn import sock as gsock
from gunicorn.workers import gthread

from upscaler.config import Settings

log = logging.getLogger("api.worker")

#: How long a thread waits for a new connection's first bytes before handing it back to the poller.
FIRST_BYTES_WAIT = 0.02
#: The end of a request's line and headers (a bare LF is left to the parser to judge).
_HEAD_END = re.compile(rb"\r?\n\r?\n")
#: Bytes of a request's head gathered in the poller's turns; a longer head is parsed as it comes (and refused).
HEAD_CAP = 64 * 1024


class Deadlines:
    """Connections whose current phase must end by a time; past it, the connection's socket is shut down, which
    wakes the thread blocked on it. One thread for the whole worker, checking four times a second."""

    def __init__(self, tick: float = 0.25) -> None:
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, Any, str]] = {}
        self.expired = 0
        self._tick = tick
        threading.Thread(target=self._run, name="deadlines", daemon=True).start()

    def arm(self, conn: Any, seconds: float, phase: str) -> None:
        with self._lock:
            self._due[id(conn)] = (time.monotonic() + seconds, conn, phase)

    def disarm(self, conn: Any) -> None:
        with self._lock:
            self._due.pop(id(conn), None)

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:  # held while shutting down: a disarmed (then closed) socket is never touched
                for key, (due, conn, phase) in self._due.items():
                    if due <= now:
                        self.expired += 1
                        if phase:  # logged once; the shutdown is repeated until the thread lets go
                            log.info("connection cut", extra={"phase": phase, "peer": str(conn.client)})
                            self._due[key] = (due, conn, "")
                        # the socket object of the moment (the TLS one once wrapped); a closed one is skipped
                        with contextlib.suppress(OSError):
                            socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)


def _cut(conn: Any) -> bool:
    """Shut the connection down both ways (so closing it does not linger on a client that keeps sending); False."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
    return False


def _linger_elsewhere(close_graceful: Any, pool: concurrent.futures.ThreadPoolExecutor) -> Any:
    """gunicorn's graceful close (half-close, then read what the client still sends for up to 2 s so the last
    answer is not cut by a reset) runs on the worker's main loop; one client that keeps sending would stall every
    connection for that long. Here it runs on a few threads of its own."""

    def close(sock: Any, *args: Any, **kwargs: Any) -> None:
        pool.submit(close_graceful, sock, *args, **kwargs)

    return close


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
        closer = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="linger")
        util.close_graceful = _linger_elsewhere(util.close_graceful, closer)
        super().init_process()

    def handle(self, conn: Any) -> Any:
        try:
            if not conn.initialized:
                if not (conn.data_ready or conn.wait_for_data(FIRST_BYTES_WAIT)):
                    return gthread._DEFER  # nothing sent yet: wait in the poller, not in a thread
                if self.cfg.is_ssl and not self.cfg.do_handshake_on_connect:
                    done = self._handshake(conn)
                    if done is None:
                        return gthread._DEFER  # the client owes the next handshake message: wait in the poller
                    if not done:
                        return False
                else:
                    self.deadlines.arm(conn, self.handshake_timeout, "TLS handshake")
                    try:
                        conn.sock.setblocking(True)
                        conn.init()
                    except (OSError, ValueError):
                        return False  # cut off, reset or not TLS: closed by finish_request
                if conn.is_http2:
                    return super().handle(conn)
            if not conn.is_http2:
                head = self._gather_head(conn)
                if head is None:
                    return gthread._DEFER  # the request's head is not all here: wait in the poller, not a thread
                if not head:
                    return False
            self.deadlines.arm(conn, self.header_timeout, "request headers")
            return super().handle(conn)
        finally:
            self.deadlines.disarm(conn)

    def _handshake(self, conn: Any) -> bool | None:
        """The TLS handshake without blocking, a step each time the client's bytes arrive: True once done (the
        connection then reads requests as gunicorn's would), None while the client owes a message, False when it
        failed or ran past ``UPSCALER_HANDSHAKE_TIMEOUT`` (a stalled one is closed at that deadline, in the poller)."""
        if not isinstance(conn.sock, ssl.SSLSocket):
            conn.sock = gsock.ssl_wrap_socket(conn.sock, self.cfg)
            conn.handshake_since = time.monotonic()
        conn.sock.setblocking(False)
        try:
            conn.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if time.monotonic() - conn.handshake_since > self.handshake_timeout:
                log.info("connection cut", extra={"phase": "TLS handshake", "peer": str(conn.client)})
                return _cut(conn)
            return None
        except (OSError, ValueError):
            return _cut(conn)  # not TLS, or reset
        finally:
            conn.sock.setblocking(True)
        conn.initialized = True
        if gsock.is_http2_negotiated(conn.sock):
            conn.is_http2 = True
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client, http2_connection=True)
            conn.parser.initiate_connection()
        else:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        return True

    def _gather_head(self, conn: Any) -> bool | None:
        """Read what has arrived of the request line and headers, without blocking, into the parser's buffer.
        True once they are all in (the parse will not block), None when more must come, False when the client
        closed or ran past ``UPSCALER_HEADER_TIMEOUT`` (counted from the request's first byte, in all)."""
        buf = conn.parser.unreader.buf
        data = buf.getvalue()
        conn.sock.setblocking(False)
        try:
            while not _HEAD_END.search(data) and len(data) < HEAD_CAP:
                try:
                    chunk = conn.sock.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                except OSError:
                    return _cut(conn)
                if not chunk:
                    return _cut(conn)  # the client closed
                buf.seek(0, 2)
                buf.write(chunk)
                data += chunk
        finally:
            conn.sock.setblocking(True)
        if not data:
            conn.head_since = None
            return None  # idle: kept at most UPSCALER_IDLE_TIMEOUT
        since = getattr(conn, "head_since", None) or time.monotonic()
        conn.head_since = since
        if _HEAD_END.search(data) or len(data) >= HEAD_CAP:
            return True
        if time.monotonic() - since > self.header_timeout:
            log.info("connection cut", extra={"phase": "request headers", "peer": str(conn.client)})
            return _cut(conn)
        return None

    def finish_request(self, conn: Any, fs: Any) -> None:
        super().finish_request(conn, fs)
        if not self.pending_conns or self.pending_conns[-1] is not conn:  # not deferred (gunicorn appends it)
            return
        # deferred in the middle of a phase: it waits under that phase's deadline, not the idle time (which may be
        # shorter or, when configured so, much longer)
        handshake = getattr(conn, "handshake_since", None)
        since = getattr(conn, "head_since", None)
        if not conn.initialized and handshake is not None:  # the client owes the next handshake message
            conn.timeout = handshake + self.handshake_timeout
        elif since is not None:  # part of a request's head is in
            conn.timeout = since + self.header_timeout

    def set_accept_enabled(self, enabled: bool) -> None:
        """At ``GUNICORN_WORKER_CONNECTIONS`` open connections gunicorn stops accepting, so a crowd of idle ones (or
        a client opening them on purpose) kept every new client in the listen backlog: ``/health`` timed out with
        1,000 idle connections held. Here the oldest idle ones (kept-alive, or waiting for a request: none with a
        request running) are closed first, a twentieth of the limit at a time, and new clients are still accepted."""
        if not enabled and self._close_oldest_idle(max(1, self.worker_connections // 20)):
            return
        super().set_accept_enabled(enabled)

    def _close_oldest_idle(self, count: int) -> int:
        closed = 0
        for waiting in (self.keepalived_conns, self.pending_conns):
            while waiting and closed < count:
                conn = waiting.popleft()
                with contextlib.suppress(OSError, KeyError, ValueError):
                    self.poller.unregister(conn.sock)
                self.nr_conns -= 1
                conn.close()
                closed += 1
        if closed:
            log.info(
                "idle connections closed to admit new ones", extra={"closed": closed, "limit": self.worker_connections}
            )
        return closed

    def murder_pending(self) -> None:
        """Close the deferred connections past their deadline. gunicorn's looks only at the oldest, since all get
        the idle time; here a request's head in progress has the longer header deadline, so every one is looked at."""
        now = time.monotonic()
        for conn in [c for c in self.pending_conns if c.timeout <= now]:
            self.pending_conns.remove(conn)
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()

    def handle_request(self, req: Any, conn: Any) -> bool:
        self.deadlines.disarm(conn)  # the headers are in: from here a stalled body read times out on its own
        conn.head_since = None
        conn.sock.settimeout(self.body_timeout)
        return bool(super().handle_request(req, conn))
