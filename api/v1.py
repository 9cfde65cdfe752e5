"""The /v1 API: raw bytes in and out, REST verbs, sources by URL or s3://, a direct /v1/upscale."""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from api import schemas
from api.auth import allowed
from api.params import operation
from api.responses import location
from upscaler import media, sources
from upscaler.engine import registry
from upscaler.errors import InvalidInput, NotFound, UnsupportedMedia
from upscaler.service import S3CommonUpscaler

bp = Blueprint("v1", __name__, url_prefix="/v1")

#: Content types a raw upload may declare (the bytes are sniffed anyway); others get 415.
UPLOAD_TYPES = ("image/", "application/octet-stream")


def service() -> S3CommonUpscaler:
    return current_app.extensions["upscaler.service"]


def _source_bytes(body: schemas.ImageSource) -> bytes:
    """The image of a JSON body: ``img``/``image`` (base64), or ``url`` (http/https/s3)."""
    svc = service()
    if body.img is not None:
        return body.img
    assert body.url is not None  # the schema asks for exactly one
    if body.url.startswith("s3://"):
        bucket, key = sources.parse_s3_url(body.url)
        return svc.source_image(allowed("read", bucket, key), key)  # one this service stored: its original
    return sources.fetch_url(body.url, svc.settings, svc.settings.max_image_bytes)


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
@operation(
    summary="Store an image given as the raw request body",
    query=schemas.PutImageQuery,
    raw=("image/*", "application/octet-stream"),
    status=201,
    answer="stored",
    returns=schemas.StoreResult,
)
def put_image(key: str, query: schemas.PutImageQuery) -> Response:
    _not_metadata(key)
    bucket = allowed("write", query.bucket, key)
    ctype = (request.mimetype or "").lower()
    if ctype and not ctype.startswith(UPLOAD_TYPES):
        raise UnsupportedMedia(f"upload the image bytes as the body (image/*), not {ctype}")
    data = request.get_data(cache=False)
    if not data:
        raise InvalidInput("the request body is empty: send the image bytes")
    result = service().store_image(data, bucket=bucket, key=key, **query.store_options())
    resp = jsonify(result.to_dict())
    resp.status_code = 201
    resp.headers["Location"] = location("/v1/images/", key, result.bucket if query.bucket else None)
    return resp


@bp.post("/images/<path:key>")
@operation(
    summary="Store an image from a URL, s3:// or base64 JSON body",
    body=schemas.PostImage,
    status=201,
    answer="stored",
    returns=schemas.StoreResult,
)
def post_image(key: str, body: schemas.PostImage) -> Response:
    """Store from a JSON body: ``{"url": "https://..." | "s3://b/k"}`` or ``{"img": base64}``, plus options."""
    _not_metadata(key)
    bucket = allowed("write", body.bucket, key)
    data = _source_bytes(body)
    result = service().store_image(data, bucket=bucket, key=key, **body.store_options())
    resp = jsonify(result.to_dict())
    resp.status_code = 201
    return resp


@bp.route("/images/<path:key>", methods=["GET", "HEAD"])
@operation(
    summary="The image upscaled to its original size and format (raw bytes)",
    query=schemas.GetImageQuery,
    answer="the image",
    returns="image/*",
    head="Headers describing the stored image and the answer GET would give; runs no model",
)
def get_image(key: str, query: schemas.GetImageQuery) -> Response:
    bucket = allowed("read", query.bucket, key)
    options = query.retrieve_options()
    if request.method == "HEAD":  # what GET would answer, from the record alone: never runs a model
        options.pop("model")
        record, (width, height), ctype, length = service().retrieval_head(bucket=bucket, key=key, **options)
        # A generator body: no Content-Length is made up (the restored size is only known once it is encoded)
        resp = Response(iter(()), status=200, content_type=ctype, headers=_image_headers(record))
        resp.headers["X-Output-Size"] = f"{width}x{height}"
        if length is not None:  # the stored original is given back byte for byte
            resp.headers["Content-Length"] = str(length)
        return resp
    result = service().retrieve_image(bucket=bucket, key=key, endpoint=query.endpoint, **options)
    resp = Response(result.data, status=200, content_type=result.content_type)
    resp.headers.update(_image_headers(result.record))
    resp.headers["X-Output-Size"] = f"{result.width}x{result.height}"
    return resp


@bp.get("/images/<path:key>/metadata")
@operation(
    summary="The stored record (original size, format, mode, stored form)",
    query=schemas.BucketQuery,
    answer="the record",
    returns=dict[str, Any],
)
def image_metadata(key: str, query: schemas.BucketQuery) -> Response:
    record = service().record(allowed("read", query.bucket, key), key)
    return jsonify(record.describe())


@bp.delete("/images/<path:key>")
@operation(summary="Delete the stored image", query=schemas.BucketQuery, status=204, answer="deleted")
def delete_image(key: str, query: schemas.BucketQuery) -> Response:
    _not_metadata(key)
    bucket = allowed("write", query.bucket, key)
    if not service().delete_image(bucket=bucket, key=key):
        raise NotFound(f"no image at {key!r}")
    return Response(status=204)


@bp.post("/upscale")
@operation(
    summary="Upscale an image without storing it (img or url in, base64 out)",
    body=schemas.Upscale,
    answer="upscaled",
    returns=schemas.Upscaled,
)
def upscale(body: schemas.Upscale) -> Response:
    """Direct super-resolution without storing, as the image super-resolution kit offers:
    ``{"img": base64 | "url": ..., "scale": 2 | 4, "model": ..., "format": ...}`` -> ``{"result": base64}``."""
    data = _source_bytes(body)
    out, ctype, (width, height) = service().upscale_bytes(
        data, scale=body.scale or 2, model=body.model, format=body.format
    )
    return jsonify(
        {"result": base64.b64encode(out).decode("ascii"), "content_type": ctype, "width": width, "height": height}
    )


@bp.get("/models")
@operation(summary="Models this service can run", answer="the models", returns=dict[str, Any])
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
