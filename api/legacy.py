"""The original service's routes, wire-compatible with its clients (clientFlask.py, testBenchClient.py).

Bodies keep the original's ``[{"data": ...}, code]`` shape; the HTTP status now matches ``code``.
``endpoint`` and ``upscaleMethod`` are accepted and optional; an old client's ``upscaleMethod`` never fails a
request.
"""

from __future__ import annotations

import base64
import json
import logging

from flask import Blueprint, Response, current_app

from api import schemas
from api.auth import allowed, job_allowed, video_job_allowed
from api.params import operation
from api.responses import LEGACY_BLUEPRINT, job_answer, legacy
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
@operation(
    summary="Downscale and store a base64 image (legacy)",
    body=schemas.LegacyStore,
    answer="stored",
    returns=schemas.legacy(schemas.StoreResult),
)
def store(body: schemas.LegacyStore) -> Response:
    if body.upscaleMethod and body.upscaleMethod.lower() not in UPSCALE_METHODS:
        log.info("unknown upscaleMethod ignored", extra={"upscale_method": body.upscaleMethod})
    bucket = allowed("write", body.s3_bucket, body.s3_key_name)  # endpoint: accepted; it matters at retrieve
    result = service().store_image(body.image, bucket=bucket, key=body.s3_key_name, **body.store_options())
    return legacy(result.to_dict())


@bp.get("/retrieve")
@operation(
    summary="Upscale a stored image back to its original size and format (legacy, base64)",
    query=schemas.LegacyRetrieve,
    answer="the image file, base64",
    returns=schemas.legacy(str),
)
def retrieve(query: schemas.LegacyRetrieve) -> Response:
    result = service().retrieve_image(
        bucket=allowed("read", query.s3_bucket, query.s3_key),
        key=query.s3_key,
        endpoint=query.endpoint,
        **query.retrieve_options(),
    )
    return legacy(
        base64.b64encode(result.data).decode("ascii"),
        **{"X-Content-Type": result.content_type, "X-Image-Size": f"{result.width}x{result.height}"},
    )


def videos() -> VideoJobs:
    return current_app.extensions["upscaler.videos"]


@bp.post("/storeVideo")
@operation(
    summary="Downscale a video already in the bucket (legacy); data is the job id",
    description="Sized exactly as the original's getNewDim (see sizing on /v1/jobs), then rounded down to even sides.",
    body=schemas.StoreVideo,
    answer="accepted",
    returns=schemas.legacy(str),
)
def store_video(body: schemas.StoreVideo) -> Response:
    """Downscale a video already in the bucket, sized as the original's getNewDim did; ``data`` is the job id."""
    job = videos().submit(
        method="downscale",
        bucket=video_job_allowed(body.s3_bucket, body.s3_key_name, body.output_key, "downscale"),
        key=body.s3_key_name,
        min_size=body.min_size,
        max_size=body.max_size,
        output_key=body.output_key,
        sizing="original",
        **body.encoding_options(),
    )
    return legacy(job.id)


@bp.get("/retrieveVideo")
@operation(
    summary="Upscale a downscaled video back to its original size (legacy); data is the job id",
    query=schemas.RetrieveVideo,
    answer="accepted",
    returns=schemas.legacy(str),
)
def retrieve_video(query: schemas.RetrieveVideo) -> Response:
    """Upscale a (downscaled) video in the bucket back to its original size; ``data`` is the job id."""
    job = videos().submit(
        method="upscale",
        bucket=video_job_allowed(query.s3_bucket, query.s3_key, query.output_key, "upscale"),
        key=query.s3_key,
        endpoint=query.endpoint,
        max_workers=query.max_workers,
        model=query.model,
        output_key=query.output_key,
        **query.encoding_options(),
    )
    return legacy(job.id)


@bp.get("/getVideoStatus")
@operation(
    summary="A video job's status (legacy); data is a JSON string {output, status, error, progress}",
    query=schemas.VideoStatus,
    answer="status",
    returns=schemas.legacy(str),
)
def video_status(query: schemas.VideoStatus) -> Response:
    """``data`` is a JSON *string*, as the original sent it: {"output", "status"} plus error and progress."""
    job = job_allowed("read", videos().get(query.id))
    return legacy(json.dumps(job_answer(job.legacy_status())))


@bp.get("/health")
@operation(summary="Liveness", answer="alive", public=True)
def health() -> Response:
    resp = legacy("ok")
    resp.set_data(b'[{"status":"ok"},200]\n')
    return resp
