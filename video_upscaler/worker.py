"""The video worker loop: take a job message, run the pipeline, store the output, report; never lose a job.

* The job row moves Submitted -> Processing -> Completed | Failed; a message whose job is already finished (or
  cancelled) is acknowledged without work (second delivery), one whose job does not exist is dropped with a log line.
* While a job runs, a heartbeat extends the message's visibility, so a long job is not handed to another worker.
* Finished segments are checkpointed to the object store (``<video_checkpoint_prefix><job id>/``), so a worker
  killed at any moment is resumed by the next delivery from its last segment; the checkpoints are removed once the
  job is finished. A stop request (SIGTERM) cuts the current segment short, saves it, gives the message back and
  returns the job to Submitted.
* A job that can never succeed (bad input: undecodable video, missing object, over a limit) is marked Failed with
  its reason and its message moved to the dead-letter queue at once. Any other failure gives the message back for
  a retry; on the last allowed receive the job is marked Failed and the message buried, so a poison job never loops.
* A job cancelled through the API stops at the next tile of the frame in progress (the heartbeat reads its state).
* Outputs go where the original wrote them (``<key-without-ext>-downscaled.mp4`` / ``-upscaled.mp4``) unless the job
  names another key; a downscaled video records its original size in the object metadata so the upscale restores
  it exactly.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from upscaler.backpressure import give_back_memory
from upscaler.config import Settings
from upscaler.engine import Engine, downscale_size
from upscaler.engine.tiling import cancel_when
from upscaler.errors import Cancelled, Conflict, NotFound, UpscalerError
from upscaler.jobs import CANCELLED, COMPLETED, FAILED, PROCESSING, SUBMITTED, Job, JobQueue, JobStore, Message
from upscaler.jobs.model import FINAL
from upscaler.media.video import VideoEncoding, VideoInfo, probe
from upscaler.providers import UpscaleProvider
from upscaler.quality import Target
from upscaler.sources import parse_s3_url
from upscaler.store import ObjectStore
from upscaler.videos import default_output_key, encodable_size, job_encoding, original_size, video_limits
from video_upscaler import metrics, targeting
from video_upscaler.pipeline import Interrupted, TranscodeReport, transcode
from video_upscaler.targeting import parse_target

log = logging.getLogger("video_upscaler")

ORIGINAL_WIDTH, ORIGINAL_HEIGHT = "original-width", "original-height"
#: A targeted job whose whole clip misses the target on its sample frames is encoded again this many times at
#: most, the CRF lowered by CRF_STEP, then twice that, four times that... (every encode is checked, the last too).
VERIFY_TRIES, CRF_STEP = 4, 2


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


class StoreCheckpoints:
    """A job's finished segments in the object store, valid only for the same source version and settings."""

    def __init__(self, store: ObjectStore, bucket: str, prefix: str, fingerprint: str) -> None:
        self.store, self.bucket, self.prefix, self.fingerprint = store, bucket, prefix, fingerprint
        #: Frames the valid checkpoints held when the run looked (:meth:`saved`): what it resumes from.
        self.resumed = 0

    def _key(self, index: int) -> str:
        return f"{self.prefix}seg-{index:06d}.mp4"

    def saved(self) -> list[int]:
        counts: list[int] = []
        while True:
            try:
                info = self.store.head(self.bucket, self._key(len(counts)))
            except NotFound:
                return counts
            if info.metadata.get("fingerprint") != self.fingerprint:
                log.warning("stale checkpoints ignored", extra={"prefix": self.prefix})
                return counts
            counts.append(int(info.metadata["frames"]))
            self.resumed = sum(counts)

    def save(self, index: int, path: Path, frames: int) -> None:
        metadata = {"frames": str(frames), "fingerprint": self.fingerprint}
        self.store.put_file(self.bucket, self._key(index), path, metadata=metadata, content_type="video/mp4")
        log.info("segment checkpointed", extra={"segment": index, "frames": frames, "prefix": self.prefix})

    def load(self, index: int, path: Path) -> None:
        self.store.get_file(self.bucket, self._key(index), path)

    def clear(self) -> None:
        for key in list(self.store.list(self.bucket, self.prefix)):
            self.store.delete(self.bucket, key)


class VideoWorker:
    def __init__(
        self,
        *,
        store: ObjectStore,
        jobs: JobStore,
        queue: JobQueue,
        provider: UpscaleProvider,
        engine: Engine,
        settings: Settings | None = None,
    ) -> None:
        self.store, self.jobs, self.queue = store, jobs, queue
        self.provider, self.engine = provider, engine
        self.settings = settings or Settings.from_env()
        self.visibility = self.settings.video_visibility
        self.max_receives = self.settings.video_max_receives
        self.limits = video_limits(self.settings)
        self.cancelled = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> VideoWorker:
        from upscaler.jobs.factory import open_job_queue, open_job_store
        from upscaler.providers import open_provider
        from upscaler.store.factory import open_store

        engine = Engine(settings)
        return cls(
            store=open_store(
                settings.storage,
                endpoint_url=settings.s3_endpoint_url or None,
                timeout=settings.s3_timeout,
                max_attempts=settings.s3_max_attempts,
            ),
            jobs=open_job_store(settings),
            queue=open_job_queue(settings),
            provider=open_provider(settings, engine),
            engine=engine,
            settings=settings,
        )

    def run(self, stop: threading.Event, wait_seconds: float = 20.0, once: bool = False) -> None:
        """Handle messages until ``stop`` is set (the current job is checkpointed and given back first)."""
        while not stop.is_set():
            try:
                message = self.queue.receive(wait_seconds=wait_seconds, visibility=self.visibility)
            except UpscalerError as exc:  # the queue is unreachable: wait, do not spin
                log.warning("queue receive failed", extra={"reason": exc.message})
                stop.wait(min(wait_seconds, 5.0))
                continue
            if message is not None:
                self.handle(message, stop)
                if once:
                    return

    def handle(self, message: Message, stop: threading.Event | None = None) -> None:
        job_id = str(message.body.get("id", ""))
        try:
            job = self.jobs.get(job_id)
        except NotFound:
            log.warning("message for an unknown job dropped", extra={"job": job_id})
            self.queue.delete(message)
            return
        if job.status in FINAL:
            self.queue.delete(message)  # a second delivery of a finished or cancelled job: nothing to redo
            return
        try:
            now = time.time()
            job = self.jobs.transition(job.id, PROCESSING, started_at=now, heartbeat_at=now, attempts=job.attempts + 1)
        except Conflict:  # cancelled (or finished by another worker) between the read and the write
            self.queue.delete(message)
            return
        log.info("job started", extra={"job": job.id, "method": job.method, "video": job.video})
        beat = threading.Event()
        self.cancelled = threading.Event()  # set by the heartbeat or a progress report: the job was cancelled
        heartbeat = threading.Thread(target=self._heartbeat, args=(job, message, beat), daemon=True)
        heartbeat.start()
        started = time.perf_counter()
        outcome = "failed"
        try:
            output, frames, resumed, written = self._process(job, stop)
            try:
                self.jobs.transition(
                    job.id,
                    COMPLETED,
                    output=output,
                    finished_at=time.time(),
                    frames_done=frames,
                    frames_total=frames,
                    resumed_frames=resumed,
                    error=None,
                    **written,
                )
            except Conflict:  # another delivery of the message finished it first, or it was cancelled meanwhile
                self.queue.delete(message)  # the job is settled: nothing to retry, nothing for the dead letters
                outcome = "superseded"
                log.info("job already settled by another delivery", extra={"job": job.id})
            else:
                self.queue.delete(message)
                outcome = "completed"
                log.info(
                    "job completed",
                    extra={"job": job.id, "frames": frames, "resumed": resumed, "output": output, **written},
                )
        except Interrupted as exc:
            self._give_back(job, message, exc.frames_done)
            outcome = "interrupted"
        except (JobCancelled, Cancelled):
            self.queue.delete(message)
            self._checkpoints(job).clear()
            outcome = "cancelled"
            log.info("job cancelled", extra={"job": job.id})
        except UpscalerError as exc:
            if exc.status < 500:  # the input is wrong: retrying cannot help
                self._fail(job, message, exc.message)
            else:
                outcome = self._retry_or_fail(job, message, exc.message)
        except Exception as exc:  # a bug or a crash of a dependency: retry, then give up
            log.exception("job attempt failed", extra={"job": job.id})
            outcome = self._retry_or_fail(job, message, f"{type(exc).__name__}: {exc}")
        finally:
            beat.set()
            heartbeat.join()
            give_back_memory()  # the job's frames and the models' buffers, to the system until the next job
            metrics.JOBS.labels(job.method, outcome).inc()
            metrics.JOB_SECONDS.labels(job.method).observe(time.perf_counter() - started)

    def _move(self, job: Job, status: str, **fields: object) -> None:
        with contextlib.suppress(Conflict):  # cancelled meanwhile: the next delivery acknowledges it
            self.jobs.transition(job.id, status, **fields)

    def _give_back(self, job: Job, message: Message, frames_done: int) -> None:
        self._move(job, SUBMITTED, frames_done=frames_done)
        self.queue.release(message)
        log.info("job interrupted and given back", extra={"job": job.id, "frames_done": frames_done})

    def _fail(self, job: Job, message: Message, reason: str) -> None:
        self._move(job, FAILED, error=reason, finished_at=time.time())
        self.queue.bury(message)
        self._checkpoints(job).clear()
        log.warning("job failed", extra={"job": job.id, "reason": reason})

    def _retry_or_fail(self, job: Job, message: Message, reason: str) -> str:
        if message.receive_count >= self.max_receives:
            self._fail(job, message, f"gave up after {message.receive_count} attempts: {reason}")
            return "failed"
        self._move(job, SUBMITTED, error=reason)
        self.queue.release(message)
        return "retried"

    def _heartbeat(self, job: Job, message: Message, stop: threading.Event) -> None:
        """Every ``video_heartbeat`` seconds the job's row says its worker is alive; every third of the visibility
        the message's lease is renewed. A worker that dies stops both: readers see the job waiting again, and the
        queue hands it to another worker when the lease runs out."""
        interval = min(self.settings.video_heartbeat, self.visibility / 3)
        renewed = time.monotonic()
        while not stop.wait(interval):
            try:
                if time.monotonic() - renewed >= self.visibility / 3 - interval / 2:
                    self.queue.extend(message, self.visibility)
                    renewed = time.monotonic()
                self.jobs.update(job.id, heartbeat_at=time.time())
                if self.jobs.get(job.id).status == CANCELLED:
                    self.cancelled.set()  # the frame in progress stops at its next tile
            except UpscalerError as exc:
                log.warning("heartbeat failed", extra={"job": job.id, "reason": exc.message})

    def _cancellable(self, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """``fn`` stopping at its next tile (:class:`Cancelled`) once the job is cancelled, on whichever thread of
        the pipeline it runs."""
        cancelled = self.cancelled

        def guarded(rgb: np.ndarray) -> np.ndarray:
            with cancel_when(cancelled.is_set):
                return fn(rgb)

        return guarded

    def _checkpoints(self, job: Job, fingerprint: str = "") -> StoreCheckpoints:
        if job.method == "migrate":  # a migration chunk has no segments; its destination bucket stands in
            bucket = str(job.output).removeprefix("s3://").partition("/")[0]
        else:
            bucket, _ = parse_s3_url(job.video)
        return StoreCheckpoints(self.store, bucket, f"{self.settings.video_checkpoint_prefix}{job.id}/", fingerprint)

    def _restorer(self, job: Job) -> targeting.Restore:
        """How an upscale job would bring a stored frame back: the provider with the video model."""
        model = self.settings.video_default_model

        def restore(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
            return np.asarray(self.provider.upscale(rgb, size=size, model=model, endpoint=job.endpoint))

        return restore

    def _decide(self, job: Job, src: Path, info: VideoInfo) -> tuple[targeting.Decision, tuple[list[int], list]]:
        """Choose the stored form for ``job.target`` on sample segments of ``src``; the decision and the samples
        (frame numbers and source frames)."""
        target = parse_target(str(job.target))
        frames, settings = info.frames or targeting.count_frames(src), self.settings
        indices = targeting.sample_indices(frames, settings.video_target_segments, settings.video_target_segment_frames)
        reference = targeting.read_frames(src, indices)
        indices = indices[: len(reference)]  # a container that counts more frames than it has
        runs = targeting.runs_of(indices)
        rate = _rate(info)

        def downscale(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
            return np.asarray(self.engine.downscale(rgb, size=size))

        deliver = job_encoding(self.settings, "upscale")  # what an upscale writes the restored frames in
        decision = targeting.choose(reference, runs, target, self._restorer(job), downscale, rate=rate, deliver=deliver)
        log.info("target decided", extra={"job": job.id, **decision.to_dict()})
        return decision, (indices, reference)

    def _verify(
        self, job: Job, target: Target, samples: tuple[list[int], list], stored: Path, info: VideoInfo
    ) -> float:
        """The target's metric on the sample frames of the whole stored clip as an upscale delivers them: as stored
        when it is at the original's size, else restored and encoded in the output codec."""
        indices, reference = samples
        frames = targeting.read_frames(stored, indices)
        if frames[0].shape[:2] == (info.height, info.width):
            return targeting.score(target, reference, frames)
        restore = self._restorer(job)
        restored = [restore(f, (info.width, info.height)) for f in frames]
        deliver = job_encoding(self.settings, "upscale")
        delivered = targeting.delivered(restored, targeting.runs_of(indices), deliver, _rate(info))
        return targeting.score(target, reference, delivered)

    def _migrate(self, job: Job, stop: threading.Event | None) -> tuple[str, int, int, dict[str, object]]:
        """A chunk of an archive migration (upscaler.migrate), on the same queue and workers as video."""
        from upscaler import migrate

        ctx = migrate.Context.build(self.store, self.provider, self.engine, self.jobs, self.settings)
        try:
            return migrate.run_chunk(ctx, job, stop.is_set if stop is not None else None)
        except migrate.Stopped as exc:
            raise Interrupted(exc.done) from None
        except migrate.ChunkCancelled:
            raise JobCancelled(job.id) from None

    def _process(self, job: Job, stop: threading.Event | None) -> tuple[str, int, int, dict[str, object]]:
        if job.method == "migrate":
            return self._migrate(job, stop)
        bucket, key = parse_s3_url(job.video)
        out_key = job.output_key or default_output_key(job.method, key)
        settings = self.settings
        scratch = settings.video_scratch or None
        with tempfile.TemporaryDirectory(dir=scratch, prefix="video-") as tmp:
            src, dst = Path(tmp) / "source", Path(tmp) / "output.mp4"
            source = self.store.head(bucket, key)
            self.limits.check_bytes(source.size)
            self.store.get_file(bucket, key, src)
            info = probe(src)
            width, height = info.width, info.height
            metadata: dict[str, str] = {"job": job.id}
            encoding = (
                VideoEncoding.choose(job.codec, crf=job.crf, qp=job.qp, preset=job.preset)
                if job.codec
                else job_encoding(settings, job.method)  # a job submitted before codecs were a choice
            )
            written: dict[str, object] = {}
            if job.method == "downscale" and job.target:  # the target chooses scale, codec and CRF
                decision, samples = self._decide(job, src, info)
                finalists = decision.finalists(settings.video_target_finalists)
                encoding = VideoEncoding.choose(decision.chosen.codec, crf=decision.chosen.crf)
                requested = size = decision.chosen.size
                written["decision"] = decision.to_dict()
                metadata.update({ORIGINAL_WIDTH: str(width), ORIGINAL_HEIGHT: str(height)})

                def fn(rgb: np.ndarray) -> np.ndarray:
                    return rgb if size == (width, height) else np.asarray(self.engine.downscale(rgb, size=size))
            elif job.method == "downscale":
                if job.sizing == "original":
                    requested = original_size(width, height, job.min_size, job.max_size)
                else:
                    factor = None if (job.min_size or job.max_size) else (job.scale or float(settings.default_scale))
                    requested = downscale_size(width, height, factor, min_size=job.min_size, max_size=job.max_size)
                size = encodable_size(requested)
                metadata.update({ORIGINAL_WIDTH: str(width), ORIGINAL_HEIGHT: str(height)})

                def fn(rgb: np.ndarray) -> np.ndarray:
                    return np.asarray(self.engine.downscale(rgb, size=size))
            else:
                scale = settings.default_scale
                size = requested = (
                    int(source.metadata.get(ORIGINAL_WIDTH, width * scale)),
                    int(source.metadata.get(ORIGINAL_HEIGHT, height * scale)),
                )

                def fn(rgb: np.ndarray) -> np.ndarray:
                    if rgb.shape[:2] == (size[1], size[0]):  # a video at the size asked for: as it is
                        return rgb
                    return np.asarray(self.provider.upscale(rgb, size=size, model=job.model, endpoint=job.endpoint))

            # Stored by a downscale at the original's own size (a target chose full size): nothing to restore, and a
            # second lossy encode would cost the fidelity the target was measured on; the stored video is delivered.
            as_stored = job.method == "upscale" and ORIGINAL_WIDTH in source.metadata and size == (width, height)

            self.limits.check(info, size)
            last = [time.monotonic()]
            active: list[StoreCheckpoints] = []

            def progress(done: int, total: int | None) -> None:
                now = time.monotonic()
                if now - last[0] < 1.0:
                    return
                last[0] = now
                if self.jobs.get(job.id).status == CANCELLED:
                    self.cancelled.set()
                    raise JobCancelled(job.id)
                resumed = active[-1].resumed if active else 0  # frames_done itself never goes back (Job.merged)
                self.jobs.update(job.id, frames_done=done, frames_total=total or info.frames, resumed_frames=resumed)

            def run(encoding: VideoEncoding) -> tuple[TranscodeReport, StoreCheckpoints]:
                fingerprint = f"{source.etag}:{size[0]}x{size[1]}:{job.model}:{encoding.label()}"
                checkpoints = self._checkpoints(job, fingerprint)
                active.append(checkpoints)
                report = transcode(
                    src,
                    dst,
                    self._cancellable(fn),
                    size=size,
                    max_workers=max(1, job.max_workers),
                    encoding=encoding,
                    progress=progress,
                    segment_frames=settings.video_segment_frames,
                    checkpoints=checkpoints,
                    stop=stop.is_set if stop is not None else None,
                )
                return report, checkpoints

            if as_stored:
                report, checkpoints = _as_stored(src, dst, info), self._checkpoints(job)
            elif "decision" not in written:
                report, checkpoints = run(encoding)
            else:  # each finalist over the whole clip, checked on the sample frames; the smallest that meets is kept
                target = parse_target(str(job.target))
                kept, whole = Path(tmp) / "kept.mp4", []
                best: tuple[bool, int] | None = None  # (misses the target, bytes) of the clip in ``kept``
                kept_checkpoints: StoreCheckpoints | None = None
                for candidate in finalists:
                    size = candidate.size  # fn and run read it
                    encoding = VideoEncoding.choose(candidate.codec, crf=candidate.crf)
                    report, checkpoints = run(encoding)
                    fidelity = self._verify(job, target, samples, dst, info)
                    for attempt in range(VERIFY_TRIES):  # a lower CRF while it misses; the last encode is checked too
                        if target.met(fidelity) or encoding.crf is None or encoding.crf == 0:
                            break
                        log.info("target missed on the whole clip", extra={"job": job.id, "fidelity": fidelity})
                        checkpoints.clear()
                        crf = max(0, encoding.crf - (CRF_STEP << attempt))
                        encoding = VideoEncoding.choose(encoding.codec, crf=crf)
                        report, checkpoints = run(encoding)
                        fidelity = self._verify(job, target, samples, dst, info)
                    rank = (not target.met(fidelity), dst.stat().st_size)
                    whole.append(
                        {
                            "scale": candidate.scale,
                            "codec": encoding.codec,
                            "crf": encoding.crf,
                            "bytes": rank[1],
                            target.metric: round(fidelity, 4),
                            "met": not rank[0],
                        }
                    )
                    if best is not None and rank >= best:
                        checkpoints.clear()  # not kept: nothing to resume
                        continue
                    if kept_checkpoints is not None:
                        kept_checkpoints.clear()
                    dst.replace(kept)
                    best, kept_checkpoints = rank, checkpoints
                    held = (size, encoding, report, fidelity, candidate)
                size, encoding, report, fidelity, kept_candidate = held
                checkpoints = kept_checkpoints
                kept.replace(dst)
                requested = size
                written["decision"] = {  # the candidate kept (its sample CRF; ``encoding`` says what was stored)
                    **decision.to_dict(),
                    "scale": kept_candidate.scale,
                    "codec": kept_candidate.codec,
                    "crf": kept_candidate.crf,
                    "size": f"{size[0]}x{size[1]}",
                    "sample_fidelity": round(kept_candidate.fidelity, 4),
                    "whole_clip": whole,
                }
                written["fidelity"] = {
                    target.metric: round(fidelity, 4),
                    "frames": len(samples[1]),
                    "met": target.met(fidelity),
                }
            metrics.FRAMES.labels(job.method).inc(report.processed_frames)
            if report.dropped_streams:
                log.warning(
                    "streams MP4 cannot carry were left out", extra={"job": job.id, "streams": report.dropped_streams}
                )
                metadata["dropped-streams"] = ",".join(report.dropped_streams)
            self.store.put_file(bucket, out_key, dst, metadata=metadata, content_type="video/mp4")
            written |= {
                "size_requested": f"{requested[0]}x{requested[1]}",
                "size": f"{size[0]}x{size[1]}",
                "source_bytes": source.size,
                "output_bytes": dst.stat().st_size,
                **({"codec": info.codec, "crf": None, "qp": None, "preset": None} if as_stored else encoding.to_dict()),
            }
        checkpoints.clear()
        return f"s3://{bucket}/{out_key}", report.frames, report.resumed_frames, written


def _rate(info: VideoInfo) -> Fraction:
    """The source's frame rate as the encoders take it."""
    return Fraction(info.rate).limit_denominator(1001) if info.rate else Fraction(25)


def _as_stored(src: Path, dst: Path, info: VideoInfo) -> TranscodeReport:
    """The output of an upscale whose source is already at the original's size: the stored file, byte for byte
    (its video, audio and subtitle streams as the downscale wrote them)."""
    shutil.copyfile(src, dst)
    frames = info.frames or targeting.count_frames(src)
    return TranscodeReport(
        frames=frames,
        processed_frames=0,
        resumed_frames=0,
        repeated_frames=0,
        copied_packets=0,
        dropped_streams=[],
        segments=0,
        seconds=0.0,
        width=info.width,
        height=info.height,
    )
