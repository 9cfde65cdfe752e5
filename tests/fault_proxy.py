"""A real HTTP proxy on loopback in front of moto's server that injects faults the way AWS shows them.

Point the service's S3/SQS/DynamoDB endpoint URL at the proxy; then ``proxy.fail(n, answer)`` makes the next ``n``
requests fail with that answer (S3's ``SlowDown`` 503, DynamoDB's throttling 400, a 500), ``proxy.allow(n)`` lets
the next ``n`` through first (to fail an operation half-way), ``proxy.down()`` makes every request fail until
``proxy.up()``, and ``proxy.stall(seconds)`` holds answers back.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

S3_SLOWDOWN = (503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>", "xml")
S3_INTERNAL = (
    500,
    b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>",
    "xml",
)
#: Not an answer: the connection is closed with nothing sent, as when the server process dies mid-request.
DROP = (0, b"", "none")
DYNAMO_THROTTLED = (
    400,
    b'{"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException", "message": "slow down"}',
    "json",
)
TYPES = {"xml": "application/xml", "json": "application/x-amz-json-1.0", "none": ""}


class FaultProxy:
    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target_host, self.target_port = parts.hostname or "127.0.0.1", parts.port or 80
        self._lock = threading.Lock()
        self._script: list[tuple[int, bytes, str] | None] = []  # per coming request: an answer, or None = pass
        self._down: tuple[int, bytes, str] | None = None
        self._stall = 0.0
        self.requests = 0
        self.injected = 0

    def fail(self, count: int, answer: tuple[int, bytes, str] = S3_SLOWDOWN) -> None:
        with self._lock:
            self._script.extend([answer] * count)

    def allow(self, count: int) -> None:
        with self._lock:
            self._script.extend([None] * count)

    def down(self, answer: tuple[int, bytes, str] = S3_INTERNAL) -> None:
        with self._lock:
            self._down = answer

    def up(self) -> None:
        with self._lock:
            self._down, self._script, self._stall = None, [], 0.0

    def stall(self, seconds: float) -> None:
        with self._lock:
            self._stall = seconds

    def _fault(self) -> tuple[tuple[int, bytes, str] | None, float]:
        with self._lock:
            self.requests += 1
            answer = self._script.pop(0) if self._script else self._down
            if answer:
                self.injected += 1
            return answer, self._stall

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer, stall = proxy._fault()
                if stall:
                    time.sleep(stall)
                if answer == DROP:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if answer:
                    status, payload, kind = answer
                    self.send_response(status)
                    self.send_header("Content-Type", TYPES[kind])
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":  # as S3 does: a HEAD's error has no body (one here corrupts the
                        self.wfile.write(payload)  # next answer on the kept-alive connection)
                    return
                conn = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@contextlib.contextmanager
def fault_proxy(target: str) -> Iterator[tuple[str, FaultProxy]]:
    proxy = FaultProxy(target)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), proxy.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", proxy
    finally:
        server.shutdown()
