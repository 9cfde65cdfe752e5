"""Heavy work stops when its client has gone (issue #15, defect 4).

While a request runs, the engine's tiler asks before every tile whether the request's connection was closed by the
client (``poll`` with ``POLLRDHUP``: the client's FIN or RST, with no byte read, TLS or not); once it was, the work
stops at that tile boundary with :class:`upscaler.errors.Cancelled` (499, logged) and frees its work slot, instead of
running the whole image for nobody. A client that half-closes its side after sending the request counts as gone
(HTTP clients do not do that).
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable

from flask import Flask, g, request

from upscaler.engine.tiling import cancel_when

#: Poll events that mean the peer closed (or reset) the connection; POLLRDHUP is Linux's, elsewhere HUP/ERR only.
GONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


def client_gone(sock: socket.socket) -> Callable[[], bool]:
    """A check, cheap enough to ask per tile, that is true once the peer of ``sock`` has closed or reset it."""
    fd = sock.fileno()

    def gone() -> bool:
        poller = select.poll()
        poller.register(fd, GONE)
        return any(events & GONE for _, events in poller.poll(0))

    return gone


def install(app: Flask) -> None:
    @app.before_request
    def watch_the_client() -> None:
        sock = request.environ.get("gunicorn.socket")
        if sock is not None:
            g.cancel_scope = cancel_when(client_gone(sock))
            g.cancel_scope.__enter__()

    @app.teardown_request
    def stop_watching(exc: BaseException | None) -> None:
        scope = g.pop("cancel_scope", None)
        if scope is not None:
            scope.__exit__(None, None, None)
