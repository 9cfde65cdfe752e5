"""The model server SageMaker runs: ``GET /ping``, ``POST /invocations`` on port 8080, over the same engine.

Requests:
* raw image bytes (``image/png``, ``image/jpeg``, ``image/webp``, ``image/avif``, ``image/jxl``) -> raw image bytes;
  ``Accept`` picks the output format (PNG by default, lossless).
* ``application/json`` (``application/json;jpeg`` as JumpStart): ``{"image": base64, "prompt": ...}`` ->
  ``{"generated_images": [base64], "prompt": ...}``, the shape the original Real-ESRGAN container and JumpStart's
  upscaler answer, so one client can call either.
* Options in ``X-Amzn-SageMaker-Custom-Attributes`` (the only free-form header SageMaker passes, <= 1024 chars):
  ``model=span,scale=4,width=W,height=H,tile=256,format=png`` (comma or semicolon separated).

It also answers the runtime API's path ``POST /endpoints/<name>/invocations`` so boto3's ``sagemaker-runtime``
client, pointed at this server with ``endpoint_url``, exercises the real request path (signing, headers, body) in
development and tests; there errors come back as the runtime service words them (``ModelError`` with the
container's status, ``ValidationError``, ``ThrottlingException``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from typing import Any

from flask import Flask, Response, jsonify, request

from upscaler import media
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.errors import InvalidInput, UnsupportedMedia, UpscalerError

log = logging.getLogger("model_server")

MODEL_DIR = "/opt/ml/model"
MAX_ATTRIBUTES = 1024
RUNTIME_MAX_PAYLOAD = 6 * 1024 * 1024
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/avif": "AVIF", "image/jxl": "JXL"}


def parse_attributes(header: str) -> dict[str, str]:
    """``k=v`` pairs of the custom-attributes header."""
    if len(header) > MAX_ATTRIBUTES:
        raise InvalidInput(f"custom attributes are longer than {MAX_ATTRIBUTES} characters")
    out: dict[str, str] = {}
    for part in header.replace(";", ",").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise InvalidInput(f"custom attribute {part.strip()!r} is not key=value")
        out[key.strip().lower()] = value.strip()
    return out


def _int(attrs: dict[str, str], key: str, lo: int, hi: int) -> int | None:
    if key not in attrs:
        return None
    try:
        value = int(attrs[key])
    except ValueError:
        raise InvalidInput(f"custom attribute {key} must be an integer") from None
    if not lo <= value <= hi:
        raise InvalidInput(f"custom attribute {key} must be between {lo} and {hi}")
    return value


class Faults:
    """Fault injection for tests and drills: every ``throttle_every``-th invocation on the runtime path answers
    ``ThrottlingException`` (``UPSCALER_MODEL_SERVER_THROTTLE_EVERY``; 0 = never)."""

    def __init__(self, throttle_every: int) -> None:
        self.throttle_every = throttle_every
        self._count = 0
        self._lock = threading.Lock()

    def throttle_now(self) -> bool:
        if self.throttle_every <= 0:
            return False
        with self._lock:
            self._count += 1
            return self._count % self.throttle_every == 0


def create_app(settings: Settings | None = None, *, model_dir: str | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if model_dir is None and os.path.isdir(MODEL_DIR):
        model_dir = MODEL_DIR
    engine = Engine(settings, model_dir=model_dir)
    limits = media.DecodeLimits(settings.max_image_bytes, settings.max_source_megapixels)
    faults = Faults(int(os.environ.get("UPSCALER_MODEL_SERVER_THROTTLE_EVERY", "0")))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    ready = threading.Event()

    def warm() -> None:
        try:
            engine.warmup(settings.default_model)
            ready.set()
        except UpscalerError as exc:
            log.error("model not loaded", extra={"reason": exc.message})

    threading.Thread(target=warm, name="warmup", daemon=True).start()

    @app.get("/ping")
    def ping() -> Response:
        if not ready.is_set():
            return _error("model loading", 503, "unavailable")
        return jsonify({"status": "healthy"})

    def invoke() -> Response:
        attrs = parse_attributes(request.headers.get("X-Amzn-SageMaker-Custom-Attributes", ""))
        ctype = (request.mimetype or "").lower()
        body = request.get_data(cache=False)
        if not body:
            raise InvalidInput("empty request body")
        if ctype == "application/json":
            return _json_dialect(body, attrs)
        if ctype in IMAGE_TYPES or ctype in ("application/octet-stream", "application/x-image"):
            data, out_type = _upscale(body, attrs, request.accept_mimetypes.best_match(list(IMAGE_TYPES)) or "")
            return Response(data, content_type=out_type)
        raise UnsupportedMedia(f"Content-Type {ctype or 'none'} is not supported (image/* or application/json)")

    def _upscale(data: bytes, attrs: dict[str, str], accept: str) -> tuple[bytes, str]:
        decoded = media.decode(data, limits)
        width, height = decoded.record.width, decoded.record.height
        out_w, out_h = _int(attrs, "width", 1, 65535), _int(attrs, "height", 1, 65535)
        if (out_w is None) != (out_h is None):
            raise InvalidInput("custom attributes width and height go together")
        scale = float(attrs.get("scale", settings.default_scale))
        size = (out_w, out_h) if out_w and out_h else (round(width * scale), round(height * scale))
        tile = _int(attrs, "tile", 32, 4096)
        big = engine.upscale(decoded.pixels, model=attrs.get("model") or None, size=size, tile=tile)
        fmt = media.normalize_format(attrs.get("format") or IMAGE_TYPES.get(accept) or "PNG")
        # PNG level 1: the answer is consumed at once by a client, so encoding time matters more than bytes
        return media.encode_restored(
            big, decoded.record, format=fmt, quality=95 if fmt == "JPEG" else None, png_compress_level=1
        )

    def _json_dialect(body: bytes, attrs: dict[str, str]) -> Response:
        try:
            payload = json.loads(body)
        except ValueError:
            raise InvalidInput("body is not valid JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            raise InvalidInput("JSON body needs 'image' (base64)")
        try:
            image = base64.b64decode(payload["image"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("'image' is not valid base64") from None
        accept = request.headers.get("Accept", "application/json;jpeg")
        fmt = "PNG" if accept.endswith(";png") else "JPEG"
        data, _ = _upscale(image, {**attrs, "format": attrs.get("format", fmt)}, "")
        return jsonify(
            {"generated_images": [base64.b64encode(data).decode("ascii")], "prompt": payload.get("prompt", "")}
        )

    @app.post("/invocations")
    def invocations() -> Response:
        return invoke()

    @app.post("/endpoints/<name>/invocations")
    def runtime_invocations(name: str) -> Response:
        """The runtime API's path, with the runtime service's error words."""
        if faults.throttle_now():
            return _runtime_error("ThrottlingException", "Rate exceeded", 400)
        if (request.content_length or 0) > RUNTIME_MAX_PAYLOAD:
            return _runtime_error("ValidationException", "Request payload exceeds the 6 MB limit", 400)
        try:
            resp = invoke()
        except UpscalerError as exc:
            return _model_error(exc.status, exc.message)
        if resp.content_length and resp.content_length > RUNTIME_MAX_PAYLOAD:
            return _model_error(500, "response payload exceeds the 6 MB limit")
        resp.headers["x-Amzn-Invoked-Production-Variant"] = "AllTraffic"
        return resp

    @app.errorhandler(UpscalerError)
    def upscaler_error(exc: UpscalerError) -> Response:
        return _error(exc.message, exc.status, exc.code)

    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(413)
    def http_error(exc: Any) -> Response:
        return _error(str(exc.description), exc.code, "http_error")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("inference failed")
        return _error("internal error", 500, "internal")

    app.extensions["upscaler.engine"] = engine
    return app


def _error(message: str, status: int, code: str) -> Response:
    resp = jsonify({"error": message, "code": code})
    resp.status_code = status
    return resp


def _runtime_error(kind: str, message: str, status: int) -> Response:
    resp = jsonify({"__type": kind, "message": message})
    resp.status_code = status
    resp.headers["x-amzn-ErrorType"] = kind
    return resp


def _model_error(status: int, message: str) -> Response:
    body = {
        "__type": "ModelError",
        "message": f"Received client error ({status}) from model: {message}",
        "OriginalStatusCode": status,
        "OriginalMessage": json.dumps({"error": message}),
    }
    resp = jsonify(body)
    resp.status_code = 424
    resp.headers["x-amzn-ErrorType"] = "ModelError"
    return resp
