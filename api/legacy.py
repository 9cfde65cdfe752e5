"""The original service's routes, wire-compatible with its clients (clientFlask.py, testBenchClient.py).

Bodies keep the original's ``[{"data": ...}, code]`` shape; the HTTP status now matches ``code``.
``endpoint`` and ``upscaleMethod`` are accepted and optional; an old client's ``upscaleMethod`` never fails a
request.
"""

from __future__ import annotations

import base64
import json
import logging

from flask import Blueprint, Response, current_app, request

from api import params
from api.auth import allowed, job_allowed, video_job_allowed
from api.responses import LEGACY_BLUEPRINT, job_answer, legacy
from api.videos import encoding_options
from upscaler.service import S3CommonUpscaler
from upscaler.videos import VideoJobs

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
    bucket = allowed("write", params.text(body, "s3_bucket", max_len=63), key)
    result = service().store_image(data, bucket=bucket, key=key, **params.store_options(body))
    return legacy(result.to_dict())


@bp.get("/retrieve")
def retrieve() -> Response:
    args = request.args.to_dict()
    key = params.text(args, "s3_key", required=True)
    result = service().retrieve_image(
        bucket=allowed("read", params.text(args, "s3_bucket", max_len=63), key),
        key=key,  # type: ignore[arg-type]
        endpoint=params.text(args, "endpoint", max_len=63),
        **params.retrieve_options(args),
    )
    return legacy(
        base64.b64encode(result.data).decode("ascii"),
        **{"X-Content-Type": result.content_type, "X-Image-Size": f"{result.width}x{result.height}"},
    )


def videos() -> VideoJobs:
    return current_app.extensions["upscaler.videos"]


def _size(source: dict, field: str) -> int | None:
    value = params.number(source, field, lo=1, hi=16384, integer=True)
    return None if value is None else int(value)


@bp.post("/storeVideo")
def store_video() -> Response:
    """Downscale a video already in the bucket, sized as the original's getNewDim did; ``data`` is the job id."""
    body = params.json_body()
    key = params.text(body, "s3_key_name", required=True)
    output = params.text(body, "output_key")
    bucket = video_job_allowed(params.text(body, "s3_bucket", max_len=63), key, output, "downscale")
    job = videos().submit(
        method="downscale",
        bucket=bucket,
        key=key,  # type: ignore[arg-type]
        min_size=_size(body, "min_size"),
        max_size=_size(body, "max_size"),
        output_key=output,
        sizing="original",
        **encoding_options(body),
    )
    return legacy(job.id)


@bp.get("/retrieveVideo")
def retrieve_video() -> Response:
    """Upscale a (downscaled) video in the bucket back to its original size; ``data`` is the job id."""
    args = request.args.to_dict()
    workers = params.number(args, "max_workers", lo=1, hi=videos().settings.video_max_workers, integer=True)
    key = params.text(args, "s3_key", required=True)
    output = params.text(args, "output_key")
    job = videos().submit(
        method="upscale",
        bucket=video_job_allowed(params.text(args, "s3_bucket", max_len=63), key, output, "upscale"),
        key=key,  # type: ignore[arg-type]
        endpoint=params.text(args, "endpoint", max_len=63),
        max_workers=None if workers is None else int(workers),
        model=params.text(args, "model", max_len=64),
        output_key=output,
        **encoding_options(args),
    )
    return legacy(job.id)


@bp.get("/getVideoStatus")
def video_status() -> Response:
    """``data`` is a JSON *string*, as the original sent it: {"output", "status"} plus error and progress."""
    job = job_allowed("read", videos().get(params.text(request.args.to_dict(), "id", required=True, max_len=128)))  # type: ignore[arg-type]
    return legacy(json.dumps(job_answer(job.legacy_status())))


@bp.get("/health")
def health() -> Response:
    resp = legacy("ok")
    resp.set_data(b'[{"status":"ok"},200]\n')
    return resp
