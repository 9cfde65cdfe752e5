"""The original service's routes, wire-compatible with its clients (clientFlask.py, testBenchClient.py).

Bodies keep the original's ``[{"data": ...}, code]`` shape; the HTTP status now matches ``code``.
``endpoint`` and ``upscaleMethod`` are accepted and optional; an old client's ``upscaleMethod`` never fails a
request.
"""

from __future__ import annotations

import base64
import logging

from flask import Blueprint, Response, current_app, request

from api import params
from api.responses import LEGACY_BLUEPRINT, legacy
from upscaler.service import S3CommonUpscaler

log = logging.getLogger("api.legacy")
bp = Blueprint(LEGACY_BLUEPRINT, __name__)

#: upscaleMethod values of the original clients. Neither changes how an image is stored; at retrieval the
#: ``endpoint`` decides: endpoints listed in UPSCALER_SAGEMAKER_JUMPSTART_ENDPOINTS (stableDiffusionJT) are called
#: in JumpStart's dialect, others as our container (sageMakerRT).
UPSCALE_METHODS = {"sagemakerrt": None, "stablediffusionjt": None}


def service() -> S3CommonUpscaler:
    return current_app.extensions["upscaler.service"]


@bp.post("/store")
def store() -> Response:
    body = params.json_body()
    key = params.text(body, "s3_key_name", required=True)
    data = params.b64_image(body.get("image"), "image")
    method = params.text(body, "upscaleMethod", max_len=64)
    if method and method.lower() not in UPSCALE_METHODS:
        log.info("unknown upscaleMethod ignored", extra={"upscale_method": method})
    params.text(body, "endpoint", max_len=63)  # accepted for compatibility; the endpoint matters at retrieve
    result = service().store_image(
        data, bucket=params.text(body, "s3_bucket", max_len=63), key=key, **params.store_options(body)
    )
    return legacy(result.to_dict())


@bp.get("/retrieve")
def retrieve() -> Response:
    args = request.args.to_dict()
    result = service().retrieve_image(
        bucket=params.text(args, "s3_bucket", max_len=63),
        key=params.text(args, "s3_key", required=True),
        endpoint=params.text(args, "endpoint", max_len=63),
        **params.retrieve_options(args),
    )
    return legacy(
        base64.b64encode(result.data).decode("ascii"),
        **{"X-Content-Type": result.content_type, "X-Image-Size": f"{result.width}x{result.height}"},
    )


@bp.get("/health")
def health() -> Response:
    resp = legacy("ok")
    resp.set_data(b'[{"status":"ok"},200]\n')
    return resp
