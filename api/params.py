"""Reading and checking request fields: one place, so every route validates the same way."""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

from flask import request

from upscaler.errors import InvalidInput, UnsupportedMedia

_DATA_URL = re.compile(r"^data:[\w.+/-]+;base64,", re.IGNORECASE)


#: Deepest nesting of a JSON body (objects and arrays); no request of this API needs more than three.
MAX_JSON_DEPTH = 32


def json_body() -> dict[str, Any]:
    if not request.is_json:
        ctype = request.content_type or "none"
        raise UnsupportedMedia(f"expected Content-Type application/json, got {ctype}")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = _depth(body)
    if depth > MAX_JSON_DEPTH:
        raise InvalidInput(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def _depth(value: Any) -> int:
    """How deeply ``value`` nests objects and arrays (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def b64_image(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"'{field}' must be a non-empty base64 string")
    text = _DATA_URL.sub("", value.strip())
    text = "".join(text.split())  # tolerate line breaks (MIME base64)
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"'{field}' is not valid base64") from None
    if not data:
        raise InvalidInput(f"'{field}' decodes to no bytes")
    return data


def text(source: dict[str, Any], field: str, *, required: bool = False, max_len: int = 1024) -> str | None:
    value = source.get(field)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"'{field}' is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{field}' must be a string")
    if len(value) > max_len:
        raise InvalidInput(f"'{field}' is longer than {max_len} characters")
    return value


def number(source: dict[str, Any], field: str, *, lo: float, hi: float, integer: bool = False) -> float | None:
    value = source.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"'{field}' must be a number")
    try:
        num = float(value)
    except OverflowError:  # an integer past float's range (1e309): out of range, not malformed
        num = math.inf
    except (TypeError, ValueError):
        raise InvalidInput(f"'{field}' must be a number") from None
    if not math.isfinite(num) or not lo <= num <= hi:
        raise InvalidInput(f"'{field}' must be between {lo:g} and {hi:g}")
    if integer:
        if num != int(num):
            raise InvalidInput(f"'{field}' must be a whole number")
        return int(num)
    return num


def target(source: dict[str, Any]) -> str | None:
    """A quality target: ``"psnr:35"``, ``"ssim:0.95"``, or a bare number (PSNR-Y in dB)."""
    value = source.get("target")
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"psnr:{value}"
    if not isinstance(value, str) or len(value) > 32:
        raise InvalidInput("'target' must be like 'psnr:35', 'ssim:0.95' or a number of dB")
    return value


def store_options(source: dict[str, Any]) -> dict[str, Any]:
    """Optional store settings shared by the legacy and /v1 routes."""
    return {
        "scale": number(source, "scale", lo=1, hi=4),
        "codec": text(source, "codec", max_len=32),
        "quality": number(source, "quality", lo=1, hi=100, integer=True),
        "model": text(source, "model", max_len=64),
        "target": target(source),
    }


def retrieve_options(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": text(source, "format", max_len=16),
        "quality": number(source, "quality", lo=1, hi=100, integer=True),
        "scale": number(source, "scale", lo=1, hi=16),
        "model": text(source, "model", max_len=64),
    }
