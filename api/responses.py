"""Response shapes. Legacy routes answer ``[{"data": ...}, code]`` / ``[{"error": ...}, code]`` (the original's
body) with the matching HTTP status; /v1 answers plain JSON objects."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from flask import Response, jsonify, request

LEGACY_BLUEPRINT = "legacy"


def legacy(data: Any, status: int = 200, **headers: str) -> Response:
    resp = jsonify([{"data": data}, status])
    resp.status_code = status
    resp.headers.update(headers)
    return resp


def location(prefix: str, key: str, bucket: str | None = None) -> str:
    """A ``Location`` for ``key`` (and ``bucket``), percent-encoded: ``a?b.png`` must not read as a query."""
    return prefix + quote(key, safe="/") + (f"?{urlencode({'bucket': bucket})}" if bucket else "")


def error(message: str, status: int, code: str, headers: dict[str, str] | None = None) -> Response:
    """An error in the shape the current route speaks."""
    if request.blueprint == LEGACY_BLUEPRINT:
        resp = jsonify([{"error": message}, status])
    else:
        resp = jsonify({"error": message, "code": code, "status": status})
    resp.status_code = status
    if headers:
        resp.headers.update(headers)
    return resp
