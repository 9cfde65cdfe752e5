"""The /v1 video API: upload and download videos, submit jobs, follow and cancel them.

PUT    /v1/videos/<key>?bucket=     the video file as the body -> 201 with what it holds
GET    /v1/videos/<key>?bucket=     the stored file (a job's output, for instance)
POST   /v1/jobs                     {"method": "downscale" | "upscale", "key", ...} -> 202, the job (an
                                    Idempotency-Key header sent again with the same job: that job, not a new
                                    one; with another job: 409)
GET    /v1/jobs/<id>                the job: status, progress, frames, output, error, timings
DELETE /v1/jobs/<id>                cancel a job that has not finished -> the job (409 if it had)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, send_file

from api import schemas
from api.auth import allowed, job_allowed, principal, video_job_allowed
from api.params import operation
from api.responses import job_answer, location
from upscaler.errors import InvalidInput, TooLarge, UnsupportedMedia
from upscaler.videos import VideoJobs, idempotency_scope

bp = Blueprint("v1_videos", __name__, url_prefix="/v1")

#: Content types a raw video upload may declare (the container is probed anyway); others get 415.
UPLOAD_TYPES = ("video/", "application/octet-stream", "application/mp4")


def videos() -> VideoJobs:
    return current_app.extensions["upscaler.videos"]


@bp.put("/videos/<path:key>")
@operation(
    summary="Upload a video (the raw file as the body); it is probed and checked against the limits",
    query=schemas.BucketQuery,
    raw=("video/*", "application/octet-stream"),
    status=201,
    answer="stored: size, frames, streams",
    returns=schemas.VideoStored,
)
def put_video(key: str, query: schemas.BucketQuery) -> Response:
    svc = videos()
    bucket = allowed("write", query.bucket, key)
    limit = svc.settings.video_max_bytes
    ctype = (request.mimetype or "").lower()
    if ctype and not ctype.startswith(UPLOAD_TYPES):
        raise UnsupportedMedia(f"upload the video bytes as the body (video/*), not {ctype}")
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"video of {request.content_length} bytes is over the limit of {limit} bytes")
    request.max_content_length = limit  # this route takes videos, larger than the API's general body limit
    with tempfile.TemporaryDirectory(dir=svc.settings.video_scratch or None, prefix="upload-") as tmp:
        path = Path(tmp) / "video"
        received = 0
        with path.open("wb") as out:
            while chunk := request.stream.read(1 << 20):
                received += len(chunk)
                if received > limit:
                    raise TooLarge(f"video is over the limit of {limit} bytes")
                out.write(chunk)
        if received == 0:
            raise InvalidInput("the request body is empty: send the video bytes")
        stored = svc.upload(bucket, key, path)
    resp = jsonify(stored)
    resp.status_code = 201
    resp.headers["Location"] = location("/v1/videos/", stored["key"], stored["bucket"])
    return resp


@bp.get("/videos/<path:key>")
@operation(
    summary="Download a stored video (a job's output, for instance)",
    query=schemas.BucketQuery,
    answer="the file",
    returns="*/*",
)
def get_video(key: str, query: schemas.BucketQuery) -> Response:
    svc = videos()
    bucket = allowed("read", query.bucket, key)
    tmp = tempfile.mkdtemp(dir=svc.settings.video_scratch or None, prefix="download-")
    try:
        path = Path(tmp) / "video"
        info = svc.store.get_file(bucket, key, path)
        handle = path.open("rb")  # open, then remove: the file lives until the response is sent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    resp = send_file(
        handle, mimetype=info.content_type or "application/octet-stream", download_name=os.path.basename(key)
    )
    resp.headers["Content-Length"] = str(info.size)
    resp.headers["ETag"] = f'"{info.etag}"'
    return resp


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key``, scoped to the caller (the same key from two callers names two jobs)."""
    key = request.headers.get("Idempotency-Key")
    return None if key is None else idempotency_scope(principal().name, key)


@bp.post("/jobs")
@operation(
    summary="Submit a video job (downscale, or upscale back to the original size)",
    body=schemas.JobSubmit,
    headers=(
        (
            "Idempotency-Key",
            "the same key again with the same job answers that job instead of running it twice; with another "
            "job, 409 (scoped to the caller)",
        ),
    ),
    status=202,
    answer="accepted",
    returns=schemas.Job,
    errors=(409,),
)
def submit_job(body: schemas.JobSubmit) -> Response:
    job = videos().submit(
        method=body.method,
        bucket=video_job_allowed(body.bucket, body.key, body.output_key, body.method),
        key=body.key,
        min_size=body.min_size,
        max_size=body.max_size,
        scale=body.scale,
        max_workers=body.max_workers,
        model=body.model,
        endpoint=body.endpoint,
        output_key=body.output_key,
        sizing=body.sizing,
        idempotency_key=idempotency_key(),
        **body.encoding_options(),
    )
    resp = jsonify(job_answer(job.to_v1()))
    resp.status_code = 202
    resp.headers["Location"] = location("/v1/jobs/", job.id)
    return resp


@bp.get("/jobs/<job_id>")
@operation(summary="A job: status, progress, frames, output, error, timings", answer="the job", returns=schemas.Job)
def get_job(job_id: str) -> Response:
    return jsonify(job_answer(job_allowed("read", videos().get(job_id)).to_v1()))


@bp.delete("/jobs/<job_id>")
@operation(summary="Cancel a job that has not finished", answer="cancelled", returns=schemas.Job, errors=(409,))
def cancel_job(job_id: str) -> Response:
    job_allowed("write", videos().get(job_id))
    return jsonify(job_answer(videos().cancel(job_id).to_v1()))
