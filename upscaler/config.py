"""The one place configuration is read.

:class:`Settings` is built once from the environment (``UPSCALER_*`` variables) and passed down; nothing else in the
core reads ``os.environ``. Every limit of the product is a field here, so it is explicit and configurable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

PREFIX = "UPSCALER_"


def _parse(value: str, kind: Any) -> Any:
    if kind is bool:
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if kind is int:
        return int(value)
    if kind is float:
        return float(value)
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


@dataclass(frozen=True)
class Settings:
    """All settings, with their defaults. ``UPSCALER_<FIELD>`` in the environment overrides a field."""

    # --- engine -------------------------------------------------------------------------------------------
    #: ncnn CPU threads per inference (0 = one per core).
    ncnn_threads: int = 0
    #: "auto": use a GPU when one is found (CUDA through PyTorch, else Vulkan through ncnn); "off": CPU only.
    gpu: str = "auto"
    #: Which runtime runs the models: "auto" (PyTorch when torch is installed and there is a CUDA GPU or a CPU with
    #: AMX, else ncnn), "ncnn", "torch" (the ``gpu`` extra) or "onnx" (ONNX Runtime). All load the same weights.
    runtime: str = "auto"
    #: Arithmetic of the torch runtime: "auto" (fp16 on CUDA; bf16-mixed on a CPU with AMX, else fp32), "fp32",
    #: "fp16", "bf16" or "bf16-mixed" (bf16 convolutions inside, fp32 at both ends and between layers).
    precision: str = "auto"
    #: Equal-size tiles (or video frames) run together in one batch on a GPU.
    gpu_batch: int = 4
    #: Input tile side in pixels for tiled inference (0 = automatic, from the model's memory per pixel).
    tile_size: int = 0
    #: Memory the automatic tile size aims at for one inference, in MiB.
    tile_memory_mb: int = 768
    #: Overlap between neighbouring tiles, in input pixels.
    tile_overlap: int = 16
    #: Largest output an upscale may produce, in megapixels (checked before anything is allocated).
    max_output_megapixels: float = 50.0
    #: Largest input the engine accepts, in megapixels.
    max_input_megapixels: float = 50.0
    #: Model used when a request names none.
    default_model: str = "span"
    #: Models a quality-targeted store also tries on each lossy form of their own scale (span-x2-stored and
    #: span-x4-stored, fine-tuned on stored downscaled forms; span-x1-restorer restores full-size forms at their size):
    #: the smallest form meeting the target wins, and its record names the model that restores it. Each adds model
    #: runs.
    target_models: tuple[str, ...] = ()
    #: Default factor for downscaling on store.
    default_scale: int = 4

    # --- storage ------------------------------------------------------------------------------------------
    #: Where objects live: a folder path (the embedded default) or ``s3://`` (bucket from each request).
    storage: str = "./data/objects"
    #: S3-compatible endpoint (moto, MinIO, LocalStack); empty = AWS's, from the standard config chain.
    s3_endpoint_url: str = ""
    #: Bucket used when a request names none (the same for the legacy and /v1 routes).
    default_bucket: str = "media"
    #: Seconds one S3 call may take in all, retries included: each of ``s3_max_attempts`` attempts gets an equal
    #: share, as a connect timeout (at most 3 s) and a read timeout (per read, the rest of the share).
    s3_timeout: float = 30.0
    s3_max_attempts: int = 3
    #: Seconds ``/ready`` waits for its checks (store, job table) before answering 503.
    ready_timeout: float = 3.0
    #: Buckets requests may name; empty = any valid bucket name.
    allowed_buckets: tuple[str, ...] = ()
    #: Codec and quality the downscaled image is stored with (chosen by benchmarks/bench_codecs.py).
    stored_codec: str = "avif"
    stored_quality: int = 80
    #: Quality target applied to stores that give none and no scale/codec/quality either (psnr:35, ssim:0.95,
    #: exact, bpp:0.1, bytes:50000; see upscaler/quality.py); empty = the fixed form above.
    default_target: str = ""
    #: Encoder effort of the stored forms: AVIF speed (0 slowest/smallest .. 10) and JPEG XL effort (1 fastest ..
    #: 9), chosen by benchmarks/bench_codecs.py --efforts at the smallest quality meeting 35 / 40 dB PSNR-Y: AVIF
    #: speed 4 stores 6 / 5 % less than 6 for 5-6x the time, 8 stores 15 / 8 % more; JPEG XL effort 3 stores 2 % less
    #: / 5 % more than 7 and is 8x faster (libjxl's higher efforts aim at its own visual metric, not PSNR).
    avif_speed: int = 6
    jxl_effort: int = 3

    # --- upscaling -----------------------------------------------------------------------------------------
    #: ``local`` (or ``local:<model>``) runs the engine in process; ``sagemaker:<endpoint>`` calls SageMaker.
    upscaler: str = "local"
    #: SageMaker endpoints a request may name in ``endpoint``; empty = only the configured one.
    allowed_endpoints: tuple[str, ...] = ()
    #: ``byoc`` (our model server: raw image bytes) or ``jumpstart-sd-x4`` (JumpStart Stable Diffusion x4, JSON).
    sagemaker_dialect: str = "byoc"
    #: Endpoints that are JumpStart Stable Diffusion x4 upscalers (spoken to in that dialect whatever the default).
    sagemaker_jumpstart_endpoints: tuple[str, ...] = ()
    #: SageMaker runtime endpoint URL override (a local model server in development and tests).
    sagemaker_endpoint_url: str = ""
    #: Largest InvokeEndpoint body, request or response (SageMaker real-time: 6 MiB); larger images go in tiles.
    sagemaker_max_payload: int = 6 * 1024 * 1024
    #: Tiles in flight per image against an endpoint.
    sagemaker_concurrency: int = 4
    #: Seconds one upscale may take through SageMaker, retries included: no attempt starts after it, and one attempt
    #: waits ``sagemaker_read_timeout`` at most (so a hung endpoint fails by the deadline plus one read timeout).
    sagemaker_deadline: float = 120.0
    #: Seconds to connect to the SageMaker runtime, and to wait for one invocation's answer (SageMaker ends a
    #: real-time invocation at 60 s itself; a hung connection or proxy is cut here).
    sagemaker_connect_timeout: float = 5.0
    sagemaker_read_timeout: float = 65.0
    #: Input tile side for the JumpStart SD x4 dialect (the diffusion model runs out of GPU memory on large inputs).
    sagemaker_sd_tile: int = 128

    # --- HTTP limits ----------------------------------------------------------------------------------------
    #: Largest request body, in bytes (a base64 image is 4/3 of its file size).
    max_request_bytes: int = 64 * 1024 * 1024
    #: A body refused as too large (413) is read and thrown away up to this many bytes and seconds before the answer,
    #: so clients that send the whole body before reading (Python ``requests``, curl) read the 413 instead of a
    #: broken connection; a larger or slower one gets the connection closed.
    refused_body_drain_bytes: int = 1024 * 1024 * 1024
    refused_body_drain_seconds: float = 30.0
    #: Largest image file accepted, in bytes.
    max_image_bytes: int = 40 * 1024 * 1024
    #: Largest source image, in megapixels (decompression bombs are refused from the header).
    max_source_megapixels: float = 50.0
    #: Hosts a /v1 request may fetch a source image from by URL (exact names or ``*.suffix``); empty = none.
    allowed_source_hosts: tuple[str, ...] = ()
    #: Let URL sources resolve to loopback/private/link-local addresses (never for the cloud metadata address).
    allow_private_sources: bool = False
    #: Seconds allowed for fetching a URL source.
    source_timeout: float = 10.0

    # --- access and backpressure -------------------------------------------------------------------------------
    #: JSON file of API keys (hashed) and their grants; re-read when it changes (see upscaler/auth.py).
    api_keys_file: str = ""
    #: The same JSON document inline (for a secret in the environment).
    api_keys: str = ""
    #: Serve without API keys beyond loopback (behind a proxy that authenticates). Off: no keys = loopback only.
    allow_anonymous: bool = False
    #: Image operations (decode + model) running at once in one API process; more wait, then get 429.
    max_inflight: int = 4
    #: Seconds a request waits for a free slot before it is answered 429 with Retry-After.
    inflight_wait: float = 10.0

    # --- HTTP front (gunicorn with api.worker.ApiWorker) --------------------------------------------------------
    #: Seconds a new connection has to finish its TLS handshake.
    handshake_timeout: float = 10.0
    #: Seconds a request's line and headers have to arrive, in all (not per read: a client sending a byte at a
    #: time is cut off too).
    header_timeout: float = 10.0
    #: Seconds a request body may stall between two reads before the request ends (408).
    body_timeout: float = 30.0
    #: Seconds an idle connection is kept: kept alive after an answer, or open with no request yet.
    idle_timeout: int = 5
    #: Requests that may wait for a work slot at once (beyond ``max_inflight`` running); more get 429 at once.
    max_queued: int = 8

    # --- video jobs -----------------------------------------------------------------------------------------
    #: Job store: a SQLite file (the embedded default) or ``dynamodb:<table>``.
    job_store: str = "./data/jobs.db"
    #: Job queue: a SQLite file (the embedded default) or an SQS queue URL (``https://sqs...``).
    job_queue: str = "./data/queue.db"
    #: SQS dead-letter queue URL, where a job that can never succeed is moved at once (the queue's RedrivePolicy
    #: moves the ones that fail ``video_max_receives`` times).
    job_dead_letter_queue: str = ""
    #: SQS and DynamoDB endpoint overrides (moto, LocalStack); empty = AWS's.
    sqs_endpoint_url: str = ""
    dynamodb_endpoint_url: str = ""
    #: Seconds one DynamoDB or SQS call may take in all, ``jobs_max_attempts`` attempts included (split as for S3:
    #: see ``s3_timeout``); an SQS receive may also wait its long poll (at most 20 s) on top.
    jobs_timeout: float = 10.0
    jobs_max_attempts: int = 3
    #: Days a finished job's row is kept in DynamoDB (its ``expires_at`` TTL attribute); 0 = kept for ever.
    job_retention_days: int = 30
    #: Video workers ``upscaler serve`` starts beside the API (0 = none: run ``upscaler worker`` yourself).
    video_workers: int = 1
    #: Seconds a received job stays hidden from other workers; a running job's heartbeat renews it every third.
    video_visibility: int = 120
    #: Seconds between a running job's heartbeats on its row; a job whose last one is older than three of them lost
    #: its worker and reads Submitted (its message comes back to the queue when the visibility above runs out).
    video_heartbeat: float = 10.0
    #: Deliveries of one job before it is marked Failed and dead-lettered.
    video_max_receives: int = 3
    #: Frames per checkpointed segment (a killed worker redoes at most this many).
    video_segment_frames: int = 250
    #: Object key prefix of the segment checkpoints (``<prefix><job id>/``, same bucket as the video).
    video_checkpoint_prefix: str = "_checkpoints/"
    #: Folder for a job's temporary files (empty = the system's temporary folder).
    video_scratch: str = ""
    #: Model for video upscaling when a job names none (chosen by benchmarks/bench_video.py).
    video_default_model: str = "span"
    #: Codec of a stored (downscaled) video: av1 (libsvtav1), hevc (libx265) or h264 (libx264); a job may choose
    #: another. CRF (-1 = the codec's default, upscaler.media.video.CODECS), or a constant QP instead (-1 = off),
    #: and the encoder's preset ("" = the codec's default: "medium" for x264/x265, "8" for SVT-AV1). AV1 by
    #: measurement (benchmarks/bench_video.py --storage): at x4 its crf 30 took 0.24-0.79 (median 0.29) of H.264
    #: crf 18's bytes for -0.5..+0.6 dB restored PSNR-Y, and encoded fastest.
    video_stored_codec: str = "av1"
    video_stored_crf: int = -1
    video_stored_qp: int = -1
    video_stored_preset: str = ""
    #: A quality-targeted downscale measures this many sample segments of this many frames each.
    video_target_segments: int = 3
    video_target_segment_frames: int = 12
    #: ... then encodes this many candidates over the whole clip (the best, then the best of each other codec) and
    #: keeps the smallest that meets the target: short segments are mostly key frames, and they can rank the codecs
    #: otherwise than the whole clip does (benchmarks/bench_video.py --targeted). 1 = the best only.
    video_target_finalists: int = 3
    #: Codec of an upscaled output video (any of the stored codecs), its CRF and preset.
    video_output_codec: str = "h264"
    video_crf: int = 18
    video_preset: str = ""
    #: Limits of a source video: bytes, seconds, frames, and megapixels of one frame, before and after upscaling.
    video_max_bytes: int = 4 * 1024**3
    video_max_seconds: float = 3 * 3600.0
    video_max_frames: int = 3 * 3600 * 60
    video_max_megapixels: float = 8.3
    #: Largest ``max_workers`` a job may ask for (frames in flight to the provider).
    video_max_workers: int = 16

    # --- archive migrations (upscaler/migrate.py) ---------------------------------------------------------------
    #: Keys per chunk: one job on the queue, its objects' states in its job-store row (DynamoDB items hold 400 KB:
    #: about 1 KB per object, so keep it under 300 there).
    migrate_chunk_keys: int = 100
    #: Most objects one migration run may list (a larger archive: one migration per prefix, or a manifest each).
    migrate_max_objects: int = 1_000_000
    #: Seconds a worker's claim on one object of a chunk lasts (renewed at each of its steps): while it holds,
    #: no other worker acts on that object (a chunk delivered twice); a worker killed mid-object leaves its claim
    #: to run out, then another takes the object over. Keep it above one object's longest step.
    migrate_claim_seconds: float = 300.0
    #: Objects the dry run decides (without storing) to estimate the savings.
    migrate_plan_sample: int = 20
    #: Storage-class prices for the cost estimate (JSON; empty = upscaler/prices.json, with its date).
    migrate_prices: str = ""

    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``UPSCALER_*`` variables; keyword arguments win over the environment."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(PREFIX + f.name.upper())
            if raw is not None:
                try:
                    values[f.name] = _parse(raw, hints[f.name])
                except ValueError as exc:
                    raise ValueError(f"{PREFIX}{f.name.upper()}: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)
