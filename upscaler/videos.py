"""Video jobs as the API offers them: upload a source, submit a downscale or upscale job, read and cancel it.

The work itself happens in a worker (``video_upscaler``); this side validates a request completely before a job
exists (bucket, key, object present, sizes, limits, model and endpoint), so a job that is accepted can only fail
on its content. A job is written before its message (see :func:`upscaler.jobs.submit`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path, PurePosixPath
from typing import Any

from upscaler.config import Settings
from upscaler.errors import Conflict, InvalidInput, NotFound
from upscaler.jobs import CANCELLED, Job, JobQueue, JobStore, submit
from upscaler.jobs.model import FINAL
from upscaler.media.video import VideoEncoding, VideoLimits, probe
from upscaler.providers import UpscaleProvider
from upscaler.quality import Target
from upscaler.store import ObjectStore
from upscaler.store.keys import validate_key

#: Sides of a downscaled frame (the original's min_size/max_size) must lie in this range.
MAX_SIDE = 16384
CONTAINER_TYPES = {"mp4": "video/mp4", "mov": "video/quicktime", "matroska": "video/x-matroska", "webm": "video/webm"}


def original_size(width: int, height: int, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    """The original's ``getNewDim``, exactly: width / 4 (truncated), height from the aspect ratio (truncated), then
    only the first matching clamp: width over ``max_size``, else height over it, else width under ``min_size``, else
    height under it. A bound that is None is skipped; the result can distort the aspect ratio by a pixel, as the
    original's did, and is not yet what an encoder accepts (see :func:`encodable_size`)."""
    aspect = width / height
    new_w = int(width / 4)
    new_h = int(new_w / aspect)
    if max_size is not None and new_w > max_size:
        new_w, new_h = max_size, int(max_size / aspect)
    elif max_size is not None and new_h > max_size:
        new_w, new_h = int(max_size * aspect), max_size
    elif min_size is not None and new_w < min_size:
        new_w, new_h = min_size, int(min_size / aspect)
    elif min_size is not None and new_h < min_size:
        new_w, new_h = int(min_size * aspect), min_size
    return new_w, new_h


def encodable_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` rounded down to even sides (at least 2): the stored video is 4:2:0, whose chroma planes are half
    the size, which H.264 and HEVC encoders need whole."""
    return tuple(max(2, side - side % 2) for side in size)  # type: ignore[return-value]


def parse_target(text: str) -> Target:
    """A video job's quality target: ``psnr:38`` / ``38`` (dB, Y) or ``ssim:0.97`` of the restored video against
    its source; :class:`InvalidInput` naming ``target`` otherwise."""
    target = Target.parse(text)
    if target.metric not in ("psnr", "ssim"):
        raise InvalidInput(f"target for a video must be psnr:<dB> or ssim:<0..1>, got {text!r}")
    return target


def job_encoding(
    settings: Settings,
    method: str,
    *,
    codec: str | None = None,
    crf: int | None = None,
    qp: int | None = None,
    preset: str | None = None,
) -> VideoEncoding:
    """How a job writes its output: the request's choices, the rest from the settings (the stored codec's for a
    downscale, the output codec's for an upscale). A job that picks another codec than the settings' gets that
    codec's own defaults. :class:`InvalidInput` names the option (or setting) to change."""
    if method == "downscale":
        setting, default = "UPSCALER_VIDEO_STORED_CODEC", settings.video_stored_codec
        default_crf, default_qp = settings.video_stored_crf, settings.video_stored_qp
        default_preset = settings.video_stored_preset
    else:
        setting, default = "UPSCALER_VIDEO_OUTPUT_CODEC", settings.video_output_codec
        default_crf, default_qp, default_preset = settings.video_crf, -1, settings.video_preset
    own = codec is None or codec == default
    if own and crf is None and qp is None and default_qp >= 0:
        qp = default_qp
    return VideoEncoding.choose(
        default if codec is None else codec,
        crf=crf,
        qp=qp,
        preset=preset if preset or not own else default_preset,
        default_crf=default_crf if own else None,
        option="codec" if codec is not None else setting,
    )


def default_output_key(method: str, key: str) -> str:
    """Where the original wrote a job's output: ``<key-without-ext>-downscaled.mp4`` for a downscale, and
    ``<stem>-upscaled.mp4`` for an upscale (with a ``-downscaled`` stem suffix removed first)."""
    stem = str(PurePosixPath(key).with_suffix(""))
    if method == "downscale":
        return f"{stem}-downscaled.mp4"
    return f"{stem.removesuffix('-downscaled')}-upscaled.mp4"


def video_limits(settings: Settings) -> VideoLimits:
    return VideoLimits(
        max_bytes=settings.video_max_bytes,
        max_seconds=settings.video_max_seconds,
        max_frames=settings.video_max_frames,
        max_megapixels=settings.video_max_megapixels,
    )


class VideoJobs:
    def __init__(
        self,
        *,
        store: ObjectStore,
        jobs: JobStore,
        queue: JobQueue,
        provider: UpscaleProvider,
        settings: Settings,
        bucket: Any,
    ) -> None:
        """``bucket`` is the image service's bucket check (default and allow-list): one rule for both."""
        self.store, self.jobs, self.queue, self.provider = store, jobs, queue, provider
        self.settings = settings
        self.bucket = bucket
        self.limits = video_limits(settings)

    def upload(self, bucket: str | None, key: str, path: Path) -> dict[str, Any]:
        """Store the video file at ``path`` as ``bucket/key`` once it is known to be a video within the limits."""
        name, key = self.bucket(bucket), validate_key(key)
        size = path.stat().st_size
        self.limits.check_bytes(size)
        info = probe(path)
        self.limits.check(info)
        import av

        with av.open(str(path)) as container:
            fmt = container.format.name.split(",")
        # One demuxer reads MOV and MP4 alike: the key's extension decides between them, MP4 otherwise.
        ext = PurePosixPath(key).suffix.lower().lstrip(".")
        kinds = [ext] if ext in fmt and ext in CONTAINER_TYPES else [k for k in CONTAINER_TYPES if k in fmt]
        ctype = CONTAINER_TYPES[kinds[0]] if kinds else "application/octet-stream"
        stored = self.store.put_file(name, key, path, metadata={}, content_type=ctype)
        return {"bucket": name, "key": key, "bytes": size, "etag": stored.etag, "content_type": ctype, **info.to_dict()}

    def submit(
        self,
        *,
        method: str,
        bucket: str | None,
        key: str,
        min_size: int | None = None,
        max_size: int | None = None,
        scale: float | None = None,
        max_workers: int | None = None,
        model: str | None = None,
        endpoint: str | None = None,
        output_key: str | None = None,
        sizing: str = "aspect",
        codec: str | None = None,
        crf: int | None = None,
        qp: int | None = None,
        preset: str | None = None,
        target: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Check a job completely and submit it. With an ``idempotency_key`` (the caller's ``Idempotency-Key``,
        scoped by the caller: see :func:`idempotency_scope`), a second submission with the same key and the same
        job returns the first one's job instead of running it again, and one with another job is a
        :class:`Conflict`. ``sizing`` says how min_size/max_size size a downscale (see
        :func:`original_size` and :func:`upscaler.engine.downscale_size`); ``codec``/``crf``/``qp``/``preset``
        choose the output's encoding (see :func:`job_encoding`); a ``target`` (downscale only) chooses scale, codec
        and CRF by measuring the clip instead (``video_upscaler.targeting``), so it takes none of those."""
        name, key = self.bucket(bucket), validate_key(key)
        if method not in ("downscale", "upscale"):
            raise InvalidInput(f"method must be 'downscale' or 'upscale', got {method!r}")
        encoding = job_encoding(self.settings, method, codec=codec, crf=crf, qp=qp, preset=preset)
        if target is not None:
            wanted = parse_target(target)
            target = f"{wanted.metric}:{wanted.value:g}"
            given = {"min_size": min_size, "max_size": max_size, "scale": scale, "codec": codec, "crf": crf, "qp": qp}
            clash = [name for name, value in given.items() if value is not None]
            if method != "downscale" or clash:
                raise InvalidInput(
                    "target is for downscale jobs and chooses the size, codec and CRF itself: "
                    f"do not pass {', '.join(clash) or 'it with method=upscale'}"
                )
        for label, value in (("min_size", min_size), ("max_size", max_size)):
            if value is not None and not 1 <= value <= MAX_SIDE:
                raise InvalidInput(f"{label} must be between 1 and {MAX_SIDE}, got {value}")
        if min_size is not None and max_size is not None and min_size > max_size:
            raise InvalidInput(f"min_size ({min_size}) must not be larger than max_size ({max_size})")
        if scale is not None and not 1.0 <= scale <= 8.0:
            raise InvalidInput(f"scale must be between 1 and 8, got {scale:g}")
        workers = self.settings.video_max_workers if max_workers is None else max_workers
        if not 1 <= workers <= self.settings.video_max_workers:
            raise InvalidInput(f"max_workers must be between 1 and {self.settings.video_max_workers}, got {workers}")
        if method == "upscale":
            self.provider.check_request(model=model, endpoint=endpoint)
        out = validate_key(output_key) if output_key else default_output_key(method, key)
        if out == key:
            raise InvalidInput("the output key must differ from the source key")
        info = self.store.head(name, key)  # NotFound (404) when the video is not there
        self.limits.check_bytes(info.size)
        job = Job(
            method=method,
            video=f"s3://{name}/{key}",
            endpoint=endpoint,
            model=model or (self.settings.video_default_model if method == "upscale" else None),
            min_size=min_size,
            max_size=max_size,
            scale=scale,
            max_workers=workers,
            output_key=out,
            sizing=sizing,
            target=target,
            **({} if target else encoding.to_dict()),
        )
        if idempotency_key is None:
            return submit(self.jobs, self.queue, job)
        asked = {k: v for k, v in job.to_dict().items() if k not in ("id", "created_at", "updated_at")}
        fingerprint = hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()
        job.id, claimed = self.jobs.claim(idempotency_key, fingerprint, job.id)
        if claimed != fingerprint:
            raise Conflict("this Idempotency-Key was used for another job request: use a new key for a new job")
        try:
            return self.jobs.get(job.id)  # submitted before under this key
        except NotFound:  # the first (or a racing) submission claimed the key and has not written its job yet
            pass
        try:
            return submit(self.jobs, self.queue, job)
        except Conflict:  # the racing submission wrote it meanwhile
            return self.jobs.get(job.id)

    def get(self, job_id: str) -> Job:
        """The job as its readers see it: a ``Processing`` job whose worker stopped heartbeating reads
        ``Submitted`` (see :meth:`Job.as_seen`)."""
        job = self.jobs.get(_job_id(job_id))
        return job.as_seen(time.time(), 3 * self.settings.video_heartbeat)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job that has not finished; the worker running it stops at its next progress report."""
        job = self.jobs.get(_job_id(job_id))
        if job.status in FINAL:
            raise Conflict(f"job {job.id} is already {job.status}")
        return self.jobs.transition(job.id, CANCELLED, error="cancelled by request")


def idempotency_scope(caller: str, key: str) -> str:
    """The stored form of a caller's ``Idempotency-Key``: one caller's keys never meet another's, and the stored key
    is a fixed-size hash (any printable ASCII key up to 255 characters is accepted)."""
    if not (0 < len(key) <= 255) or not key.isascii() or not key.isprintable():
        raise InvalidInput("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return hashlib.sha256(f"{caller}\n{key}".encode()).hexdigest()


def _job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not (0 < len(job_id) <= 128) or not job_id.isascii() or not job_id.isprintable():
        raise InvalidInput("id must be a job id (up to 128 printable ASCII characters)")
    return job_id
