"""The /v1 video API: upload and download videos, submit jobs, follow and cancel them.

PUT    /v1/videos/<key>?bucket=     the video file as the body -> 201 with what it holds
GET    /v1/videos/<key>?bucket=     the stored file (a job's output, for instance)
POST   /v1/jobs                     {"method": "downscale" | "upscale", "key", ...} -> 202, the job
GET    /v1/jobs/<id>                the job: status, progress, frames, output, error, timings
DELETE /v1/jobs/<id>                cancel a job that has not finished -> the job (409 if it had)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, send_file

from api import params
from api.auth import allowed, job_allowed, principal, video_job_allowed
from api.responses import job_answer, location
from upscaler.errors import InvalidInput, TooLarge, UnsupportedMedia
from upscaler.videos import VideoJobs, idempotency_scope

bp = Blueprint("v1_videos", __name__, url_prefix="/v1")

#: Content types a raw video upload may declare (the container is probed anyway); others get 415.
UPLOAD_TYPES = ("video/", "application/octet-stream", "application/mp4")


def videos() -> VideoJobs:
    return current_app.extensions["upscaler.videos"]


@bp.put("/videos/<path:key>")
def put_video(key: str) -> Response:
    svc = videos()
    bucket = allowed("write", params.text(request.args.to_dict(), "bucket", max_len=63), key)
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
def get_video(key: str) -> Response:
    svc = videos()
    bucket = allowed("read", params.text(request.args.to_dict(), "bucket", max_len=63), key)
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


def encoding_options(source: dict[str, Any]) -> dict[str, Any]:
    """A job's output encoding as asked (codec, crf or qp, preset, or a quality target that chooses them);
    VideoJobs.submit checks it."""
    crf = params.number(source, "crf", lo=0, hi=63, integer=True)
    qp = params.number(source, "qp", lo=0, hi=63, integer=True)
    return {
        "codec": params.text(source, "codec", max_len=16),
        "crf": None if crf is None else int(crf),
        "qp": None if qp is None else int(qp),
        "preset": params.text(source, "preset", max_len=16),
        "target": params.text(source, "target", max_len=32),
    }


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key``, scoped to the caller (the same key from two callers names two jobs)."""
    key = request.headers.get("Idempotency-Key")
    return None if key is None else idempotency_scope(principal().name, key)


@bp.post("/jobs")
def submit_job() -> Response:
    body = params.json_body()
    settings = videos().settings
    workers = params.number(body, "max_workers", lo=1, hi=settings.video_max_workers, integer=True)
    min_size = params.number(body, "min_size", lo=1, hi=16384, integer=True)
    max_size = params.number(body, "max_size", lo=1, hi=16384, integer=True)
    method = params.text(body, "method", required=True, max_len=16)
    key = params.text(body, "key", required=True)
    output = params.text(body, "output_key")
    job = videos().submit(
        method=method,  # type: ignore[arg-type]
        bucket=video_job_allowed(params.text(body, "bucket", max_len=63), key, output, method or ""),
        key=key,  # type: ignore[arg-type]
        min_size=None if min_size is None else int(min_size),
        max_size=None if max_size is None else int(max_size),
        scale=params.number(body, "scale", lo=1, hi=8),
        max_workers=None if workers is None else int(workers),
        model=params.text(body, "model", max_len=64),
        endpoint=params.text(body, "endpoint", max_len=63),
        output_key=output,
        sizing=params.text(body, "sizing", max_len=16) or "aspect",
        idempotency_key=idempotency_key(),
        **encoding_options(body),
    )
    resp = jsonify(job_answer(job.to_v1()))
    resp.status_code = 202
    resp.headers["Location"] = location("/v1/jobs/", job.id)
    return resp


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return jsonify(job_answer(job_allowed("read", videos().get(job_id)).to_v1()))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    job_allowed("write", videos().get(job_id))
    return jsonify(job_answer(videos().cancel(job_id).to_v1()))
