"""The video worker loop: take a job message, run the pipeline, store the output, report; never lose a job.

* The job row moves Submitted -> Processing -> Completed | Failed; a message whose job is already finished is
  acknowledged without work (second delivery), one whose job does not exist is dropped with a log line.
* While a job runs, a heartbeat extends the message's visibility, so a long job is not handed to another worker.
* A job that can never succeed (bad input: undecodable video, missing object) is marked Failed with its reason and
  its message moved to the dead-letter queue at once. Any other failure gives the message back for a retry; on the
  last allowed receive the job is marked Failed and the message buried, so a poison job never loops.
* Outputs go where the original wrote them: ``<key-without-ext>-downscaled.mp4`` / ``-upscaled.mp4``; a
  downscaled video records its original size in the object metadata so the upscale restores it exactly.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

import numpy as np

from upscaler.engine import Engine, downscale_size
from upscaler.errors import NotFound, UpscalerError
from upscaler.jobs import COMPLETED, FAILED, PROCESSING, SUBMITTED, Job, JobQueue, JobStore, Message
from upscaler.jobs.model import FINAL
from upscaler.providers import UpscaleProvider
from upscaler.sources import parse_s3_url
from upscaler.store import ObjectStore
from video_upscaler.pipeline import probe, transcode

log = logging.getLogger("video_upscaler")

ORIGINAL_WIDTH, ORIGINAL_HEIGHT = "original-width", "original-height"


class VideoWorker:
    def __init__(
        self,
        *,
        store: ObjectStore,
        jobs: JobStore,
        queue: JobQueue,
        provider: UpscaleProvider,
        engine: Engine,
        scratch: Path | None = None,
        visibility: int = 300,
        max_receives: int = 3,
        default_factor: float = 4.0,
    ) -> None:
        self.store, self.jobs, self.queue = store, jobs, queue
        self.provider, self.engine = provider, engine
        self.scratch = scratch
        self.visibility = visibility
        self.max_receives = max_receives
        self.default_factor = default_factor

    def run(self, stop: threading.Event, wait_seconds: float = 20.0) -> None:
        """Handle messages until ``stop`` is set (the current job finishes first)."""
        while not stop.is_set():
            message = self.queue.receive(wait_seconds=wait_seconds, visibility=self.visibility)
            if message is not None:
                self.handle(message)

    def handle(self, message: Message) -> None:
        job_id = str(message.body.get("id", ""))
        try:
            job = self.jobs.get(job_id)
        except NotFound:
            log.warning("message for an unknown job dropped", extra={"job": job_id})
            self.queue.delete(message)
            return
        if job.status in FINAL:
            self.queue.delete(message)  # a second delivery of a finished job: nothing to redo
            return
        job = self.jobs.transition(job.id, PROCESSING, started_at=time.time(), attempts=job.attempts + 1)
        beat = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(message, beat), daemon=True)
        heartbeat.start()
        try:
            output, frames = self._process(job)
            self.jobs.transition(
                job.id,
                COMPLETED,
                output=output,
                finished_at=time.time(),
                frames_done=frames,
                frames_total=frames,
                error=None,
            )
            self.queue.delete(message)
            log.info("job completed", extra={"job": job.id, "frames": frames, "output": output})
        except UpscalerError as exc:
            if exc.status < 500:  # the input is wrong: retrying cannot help
                self._fail(job, message, exc.message)
            else:
                self._retry_or_fail(job, message, exc.message)
        except Exception as exc:  # a bug or a crash of a dependency: retry, then give up
            log.exception("job failed", extra={"job": job.id})
            self._retry_or_fail(job, message, f"{type(exc).__name__}: {exc}")
        finally:
            beat.set()
            heartbeat.join()

    def _fail(self, job: Job, message: Message, reason: str) -> None:
        self.jobs.transition(job.id, FAILED, error=reason, finished_at=time.time())
        self.queue.bury(message)
        log.warning("job failed", extra={"job": job.id, "reason": reason})

    def _retry_or_fail(self, job: Job, message: Message, reason: str) -> None:
        if message.receive_count >= self.max_receives:
            self._fail(job, message, f"gave up after {message.receive_count} attempts: {reason}")
            return
        self.jobs.transition(job.id, SUBMITTED, error=reason)
        self.queue.release(message)

    def _heartbeat(self, message: Message, stop: threading.Event) -> None:
        while not stop.wait(self.visibility / 3):
            try:
                self.queue.extend(message, self.visibility)
            except UpscalerError as exc:
                log.warning("heartbeat failed", extra={"reason": exc.message})

    def _process(self, job: Job) -> tuple[str, int]:
        bucket, key = parse_s3_url(job.video)
        stem = str(PurePosixPath(key).with_suffix(""))
        with tempfile.TemporaryDirectory(dir=self.scratch, prefix="video-") as tmp:
            src, dst = Path(tmp) / "source", Path(tmp) / "output.mp4"
            info = self.store.get_file(bucket, key, src)
            meta = probe(src)
            width, height = int(meta["width"]), int(meta["height"])  # type: ignore[arg-type]
            total = meta["frames"]
            last_report = [0.0]

            def progress(done: int, _total: int | None) -> None:
                now = time.monotonic()
                if now - last_report[0] >= 1.0:
                    last_report[0] = now
                    self.jobs.update(job.id, frames_done=done, frames_total=total)

            metadata: dict[str, str] = {"job": job.id}
            if job.method == "downscale":
                factor = None if (job.min_size or job.max_size) else self.default_factor
                size = downscale_size(width, height, factor, min_size=job.min_size, max_size=job.max_size)
                out_key = f"{stem}-downscaled.mp4"
                metadata.update({ORIGINAL_WIDTH: str(width), ORIGINAL_HEIGHT: str(height)})

                def fn(rgb: np.ndarray) -> np.ndarray:
                    return np.asarray(self.engine.downscale(rgb, size=size))
            else:
                size = (
                    int(info.metadata.get(ORIGINAL_WIDTH, width * 4)),
                    int(info.metadata.get(ORIGINAL_HEIGHT, height * 4)),
                )
                out_key = f"{stem.removesuffix('-downscaled')}-upscaled.mp4"

                def fn(rgb: np.ndarray) -> np.ndarray:
                    return np.asarray(self.provider.upscale(rgb, size=size, model=job.model, endpoint=job.endpoint))

            report = transcode(src, dst, fn, size=size, max_workers=max(1, job.max_workers), progress=progress)
            self.store.put_file(bucket, out_key, dst, metadata=metadata, content_type="video/mp4")
        return f"s3://{bucket}/{out_key}", report.frames
