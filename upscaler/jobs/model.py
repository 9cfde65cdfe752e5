"""Video jobs: the record a job store keeps, its states and the transitions allowed between them.

Submitted -> Processing -> Completed | Failed (with a reason) | Cancelled. Processing may go back to Submitted when
a worker gives a job up (SIGTERM, lost lease) so another picks it up; a finished job never changes again. A worker
that dies cannot say so: its job reads Submitted once its heartbeats stop (:meth:`Job.as_seen`), and its message
comes back to the queue when the lease runs out.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from upscaler.errors import InvalidInput

SUBMITTED, PROCESSING, COMPLETED, FAILED, CANCELLED = "Submitted", "Processing", "Completed", "Failed", "Cancelled"
STATES = (SUBMITTED, PROCESSING, COMPLETED, FAILED, CANCELLED)
FINAL = frozenset({COMPLETED, FAILED, CANCELLED})
TRANSITIONS: dict[str, frozenset[str]] = {
    SUBMITTED: frozenset({PROCESSING, CANCELLED, FAILED}),
    PROCESSING: frozenset({PROCESSING, SUBMITTED, COMPLETED, FAILED, CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}
#: Video jobs, and the two kinds of upscaler.migrate: a chunk of objects ("migrate", queued) and a migration's
#: own record ("migration", never queued).
METHODS = ("downscale", "upscale", "migrate", "migration")
SIZINGS = ("original", "aspect")


@dataclass
class Job:
    """One video job. ``video`` and ``output`` are ``s3://bucket/key`` URLs, as in the original's messages."""

    method: str
    video: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = SUBMITTED
    output: str | None = None
    endpoint: str | None = None
    model: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    #: Downscale factor when neither min_size nor max_size is given (None = the service's default).
    scale: float | None = None
    max_workers: int = 4
    #: Where the output goes (key in the video's bucket); None = next to the source, named as the original did.
    output_key: str | None = None
    #: How a downscale sizes the stored video from min_size/max_size: "original" (the original's getNewDim, legacy
    #: /storeVideo) or "aspect" (aspect kept, /v1/jobs); see upscaler.videos.
    sizing: str = "aspect"
    #: How the job's output is encoded (chosen at submit, from the request or the settings): codec (h264, hevc,
    #: av1), CRF or constant QP, preset.
    codec: str | None = None
    crf: int | None = None
    qp: int | None = None
    preset: str | None = None
    #: Frame sizes "WxH": what the sizing rule asked for, and what was written (rounded to even sides for 4:2:0).
    size_requested: str | None = None
    size: str | None = None
    #: Bytes of the source and of the output, once Completed.
    source_bytes: int | None = None
    output_bytes: int | None = None
    #: Quality target of a downscale ("psnr:38", "ssim:0.97": the restored video against its source), what the
    #: worker chose for it (scale, codec, CRF, the candidates measured on sample frames) and the fidelity of the
    #: whole stored clip, restored, on those frames.
    target: str | None = None
    decision: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None
    #: A migration's record or chunk (upscaler.migrate): its options, keys and each object's state.
    migration: dict[str, Any] | None = None
    #: The most frames any run of the job reached: it never goes backwards, even when a run that died is resumed
    #: from an earlier checkpoint (the frames it redoes are counted again only past this mark).
    frames_done: int = 0
    #: Frames the current (or last) run took from checkpoints of an earlier, interrupted run (not done again).
    resumed_frames: int = 0
    frames_total: int | None = None
    error: str | None = None
    attempts: int = 0
    #: When the worker running the job last said it was alive (epoch seconds; None before it started).
    heartbeat_at: float | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInput(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.status not in STATES:
            raise InvalidInput(f"unknown job status {self.status!r}")
        if self.sizing not in SIZINGS:
            raise InvalidInput(f"sizing must be one of {', '.join(SIZINGS)}, got {self.sizing!r}")

    @property
    def saved_percent(self) -> float | None:
        """How much smaller the stored (downscaled) video is than its source, in percent (negative: larger)."""
        if self.method != "downscale" or not self.source_bytes or self.output_bytes is None:
            return None
        return round(100.0 * (1 - self.output_bytes / self.source_bytes), 2)

    def outcome(self) -> dict[str, Any]:
        """Sizes, encoding and bytes: what the job wrote, for both status objects."""
        return {
            "sizing": self.sizing,
            "size_requested": self.size_requested,
            "size": self.size,
            "encoding": {"codec": self.codec, "crf": self.crf, "qp": self.qp, "preset": self.preset},
            "source_bytes": self.source_bytes,
            "output_bytes": self.output_bytes,
            "saved_percent": self.saved_percent,
            "target": self.target,
            "decision": self.decision,
            "fidelity": self.fidelity,
        }

    @property
    def progress(self) -> float | None:
        if not self.frames_total:
            return None
        return min(1.0, self.frames_done / self.frames_total)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, fields: dict[str, Any]) -> dict[str, Any]:
        """This job's fields with ``fields`` applied, as a store writes them: ``frames_done`` only ever grows."""
        data = {**self.to_dict(), **fields}
        data["frames_done"] = max(self.frames_done, int(data.get("frames_done") or 0))
        return data

    def as_seen(self, now: float, stale_after: float) -> Job:
        """The job as its readers should see it: ``Processing`` only while its worker heartbeats. A job whose last
        heartbeat is more than ``stale_after`` seconds old lost its worker; it reads ``Submitted`` (waiting for a
        worker: its message comes back to the queue when the worker's lease ends) with the reason in ``error``."""
        beat = self.heartbeat_at or self.started_at
        if self.status != PROCESSING or beat is None or now - beat <= stale_after:
            return self
        return dataclasses.replace(
            self,
            status=SUBMITTED,
            error=f"its worker stopped {now - beat:.0f} s ago (attempt {self.attempts}); queued for another attempt",
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def message(self) -> dict[str, Any]:
        """The queue message, in the original's shape (``id, video, endpoint, min_size, max_size, max_workers,
        method``) plus ``model``."""
        return {
            "id": self.id,
            "video": self.video,
            "endpoint": self.endpoint,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "scale": self.scale,
            "max_workers": self.max_workers,
            "method": self.method,
            "model": self.model,
            "output_key": self.output_key,
        }

    def legacy_status(self) -> dict[str, Any]:
        """``/getVideoStatus``'s object (the route sends it as a JSON string, like the original)."""
        out: dict[str, Any] = {"output": self.output if self.status == COMPLETED else None, "status": self.status}
        if self.status == FAILED:
            out["error"] = self.error
        out["frames_done"], out["frames_total"] = self.frames_done, self.frames_total
        out["progress"] = self.progress
        out.update(self.outcome())
        return out

    def to_v1(self) -> dict[str, Any]:
        """The /v1 status object."""
        now = time.time()
        started, finished = self.started_at, self.finished_at
        return {
            "id": self.id,
            "status": self.status,
            "method": self.method,
            "video": self.video,
            "output": self.output if self.status == COMPLETED else None,
            "model": self.model,
            "endpoint": self.endpoint,
            "progress": self.progress,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "resumed_frames": self.resumed_frames,
            "error": self.error,
            "attempts": self.attempts,
            "heartbeat_at": self.heartbeat_at,
            **self.outcome(),
            "timings": {
                "created_at": self.created_at,
                "started_at": started,
                "finished_at": finished,
                "queued_seconds": round((started or now) - self.created_at, 3),
                "run_seconds": round((finished or now) - started, 3) if started else None,
            },
        }
