"""The /v1 API: raw bytes in and out, REST verbs, sources by URL or s3://, a direct /v1/upscale."""

from __future__ import annotations

import base64

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from api import params
from api.auth import allowed
from api.responses import location
from upscaler import media, sources
from upscaler.engine import registry
from upscaler.errors import InvalidInput, UnsupportedMedia
from upscaler.service import S3CommonUpscaler

bp = Blueprint("v1", __name__, url_prefix="/v1")

#: Content types a raw upload may declare (the bytes are sniffed anyway); others get 415.
UPLOAD_TYPES = ("image/", "application/octet-stream")


def service() -> S3CommonUpscaler:
    return current_app.extensions["upscaler.service"]


def _source_bytes(body: dict) -> bytes:
    """The image of a JSON body: ``img``/``image`` (base64), ``url`` (http/https/s3)."""
    svc = service()
    img = body.get("img", body.get("image"))
    url = params.text(body, "url", max_len=4096)
    if (img is None) == (url is None):
        raise InvalidInput("give exactly one of 'img' (base64) or 'url'")
    if img is not None:
        return params.b64_image(img, "img")
    assert url is not None
    if url.startswith("s3://"):
        bucket, key = sources.parse_s3_url(url)
        return svc.source_image(allowed("read", bucket, key), key)  # one this service stored: its original
    return sources.fetch_url(url, svc.settings, svc.settings.max_image_bytes)


def _image_headers(record: media.ImageRecord) -> dict[str, str]:
    return {
        "X-Original-Size": f"{record.width}x{record.height}",
        "X-Original-Format": record.format,
        "X-Original-Bytes": str(record.original_bytes),
        "X-Stored-Size": f"{record.stored_width}x{record.stored_height}",
        "X-Stored-Bytes": str(record.stored_bytes),
        "X-Stored-Codec": record.stored_codec,
        "X-Scale": f"{record.scale:g}",
    }


def _not_metadata(key: str) -> None:
    """``<key>/metadata`` is the metadata route (GET only): no image may be written or deleted under that name."""
    if key == "metadata" or key.endswith("/metadata"):
        raise MethodNotAllowed(valid_methods=["GET"], description="…/metadata is read-only (GET)")


@bp.put("/images/<path:key>")
def put_image(key: str) -> Response:
    _not_metadata(key)
    args = request.args.to_dict()
    bucket = allowed("write", params.text(args, "bucket", max_len=63), key)
    ctype = (request.mimetype or "").lower()
    if ctype and not ctype.startswith(UPLOAD_TYPES):
        raise UnsupportedMedia(f"upload the image bytes as the body (image/*), not {ctype}")
    data = request.get_data(cache=False)
    if not data:
        raise InvalidInput("the request body is empty: send the image bytes")
    result = service().store_image(data, bucket=bucket, key=key, **params.store_options(args))
    resp = jsonify(result.to_dict())
    resp.status_code = 201
    resp.headers["Location"] = location("/v1/images/", key, result.bucket if "bucket" in args else None)
    return resp


@bp.post("/images/<path:key>")
def post_image(key: str) -> Response:
    """Store from a JSON body: ``{"url": "https://..." | "s3://b/k"}`` or ``{"img": base64}``, plus options."""
    _not_metadata(key)
    body = params.json_body()
    bucket = allowed("write", params.text(body, "bucket", max_len=63), key)
    data = _source_bytes(body)
    result = service().store_image(data, bucket=bucket, key=key, **params.store_options(body))
    resp = jsonify(result.to_dict())
    resp.status_code = 201
    return resp


@bp.route("/images/<path:key>", methods=["GET", "HEAD"])
def get_image(key: str) -> Response:
    args = request.args.to_dict()
    bucket = allowed("read", params.text(args, "bucket", max_len=63), key)
    options = params.retrieve_options(args)
    if request.method == "HEAD":  # what GET would answer, from the record alone: never runs a model
        options.pop("model")
        record, (width, height), ctype, length = service().retrieval_head(bucket=bucket, key=key, **options)
        # A generator body: no Content-Length is made up (the restored size is only known once it is encoded)
        resp = Response(iter(()), status=200, content_type=ctype, headers=_image_headers(record))
        resp.headers["X-Output-Size"] = f"{width}x{height}"
        if length is not None:  # the stored original is given back byte for byte
            resp.headers["Content-Length"] = str(length)
        return resp
    result = service().retrieve_image(
        bucket=bucket, key=key, endpoint=params.text(args, "endpoint", max_len=63), **options
    )
    resp = Response(result.data, status=200, content_type=result.content_type)
    resp.headers.update(_image_headers(result.record))
    resp.headers["X-Output-Size"] = f"{result.width}x{result.height}"
    return resp


@bp.get("/images/<path:key>/metadata")
def image_metadata(key: str) -> Response:
    record = service().record(allowed("read", params.text(request.args.to_dict(), "bucket", max_len=63), key), key)
    return jsonify(record.describe())


@bp.delete("/images/<path:key>")
def delete_image(key: str) -> Response:
    _not_metadata(key)
    bucket = allowed("write", params.text(request.args.to_dict(), "bucket", max_len=63), key)
    deleted = service().delete_image(bucket=bucket, key=key)
    if not deleted:
        from upscaler.errors import NotFound

        raise NotFound(f"no image at {key!r}")
    return Response(status=204)


@bp.post("/upscale")
def upscale() -> Response:
    """Direct super-resolution without storing, as the image super-resolution kit offers:
    ``{"img": base64 | "url": ..., "scale": 2 | 4, "model": ..., "format": ...}`` -> ``{"result": base64}``."""
    body = params.json_body()
    data = _source_bytes(body)
    scale = params.number(body, "scale", lo=1, hi=4) or 2
    out, ctype, (width, height) = service().upscale_bytes(
        data, scale=scale, model=params.text(body, "model", max_len=64), format=params.text(body, "format", max_len=16)
    )
    return jsonify(
        {"result": base64.b64encode(out).decode("ascii"), "content_type": ctype, "width": width, "height": height}
    )


@bp.get("/models")
def models() -> Response:
    return jsonify(
        {
            "default": service().settings.default_model,
            "models": [
                {
                    "name": s.name,
                    "family": s.family,
                    "scale": s.scale or None,
                    "kind": s.kind,
                    "package": s.package or None,
                    "license": s.license or None,
                    "description": s.description,
                }
                for s in registry.MODELS.values()
            ],
        }
    )
