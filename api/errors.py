"""Every failure becomes a JSON body with the right status: never a stack trace, never a 500 for bad input."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from api.responses import error
from upscaler.errors import Busy, Unauthorized, Unavailable, UpscalerError

log = logging.getLogger("api")


def _drain() -> None:
    """Read and discard a refused body, so the client can finish sending and read the answer (closing mid-upload
    makes clients report a broken connection instead); bounded in bytes and time by the settings
    ``refused_body_drain_bytes`` and ``refused_body_drain_seconds``, beyond which the connection is closed."""
    settings = current_app.extensions["upscaler.settings"]
    length = request.content_length
    if length is None or length > settings.refused_body_drain_bytes:
        return
    stream = request.environ.get("wsgi.input")
    deadline = time.monotonic() + settings.refused_body_drain_seconds
    remaining = length
    while stream is not None and remaining > 0 and time.monotonic() < deadline:
        try:
            chunk = stream.read(min(remaining, 1 << 20))
        except OSError:  # the client went away (or stalled past the socket's timeout)
            return
        if not chunk:
            break
        remaining -= len(chunk)


def register(app: Flask) -> None:
    @app.errorhandler(UpscalerError)
    def upscaler_error(exc: UpscalerError) -> Response:
        headers = {}
        retry = getattr(exc, "retry_after", None)
        if isinstance(exc, (Busy, Unavailable)) and retry:
            headers["Retry-After"] = str(max(1, round(retry)))
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="media-upscaler"'
        if exc.status == 413:  # refused before the body was read (declared size, video limits): let the client finish
            _drain()
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(level, "request refused", extra={"status": exc.status, "code": exc.code, "reason": exc.message})
        return error(exc.message, exc.status, exc.code, headers)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        limit = app.config.get("MAX_CONTENT_LENGTH") or 0
        _drain()
        return error(f"request body is over the limit of {limit} bytes", 413, "too_large")

    @app.errorhandler(ClientDisconnected)
    def body_stalled(exc: ClientDisconnected) -> Response:
        # the body ended early: the client went (nobody reads this) or stalled past UPSCALER_BODY_TIMEOUT
        seconds = current_app.extensions["upscaler.settings"].body_timeout
        log.info("request refused", extra={"status": 408, "code": "request_timeout", "reason": "body stalled"})
        return error(
            f"the request body stopped before its Content-Length (nothing for {seconds:g} s, or the client left)",
            408,
            "request_timeout",
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return error(exc.description or exc.name, status, exc.name.lower().replace(" ", "_"), headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return error("internal error; the request id in the logs tells what happened", 500, "internal")
