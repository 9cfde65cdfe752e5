"""The worker loop over the embedded queue, job store and local folder: whole jobs, second deliveries, poison."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.test_video_pipeline import make_clip, packets, video_info
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.jobs import CANCELLED, COMPLETED, FAILED, Job, SqliteJobStore, SqliteQueue, submit
from upscaler.providers import LocalUpscaleProvider
from upscaler.store.local import LocalFolderStore
from video_upscaler.worker import VideoWorker


@pytest.fixture
def setup(tmp_path: Path):
    settings = Settings.from_env(
        {},
        ncnn_threads=2,
        video_max_receives=2,
        video_visibility=30,
        video_scratch=str(tmp_path),
        video_segment_frames=4,
    )
    engine = Engine(settings)
    store = LocalFolderStore(tmp_path / "objects")
    jobs = SqliteJobStore(tmp_path / "jobs.db")
    queue = SqliteQueue(tmp_path / "queue.db", max_receives=2, poll_interval=0.05)
    worker = VideoWorker(
        store=store,
        jobs=jobs,
        queue=queue,
        provider=LocalUpscaleProvider(engine, "bicubic"),
        engine=engine,
        settings=settings,
    )
    return store, jobs, queue, worker, tmp_path


def _run_one(queue: SqliteQueue, worker: VideoWorker) -> None:
    message = queue.receive(wait_seconds=2, visibility=30)
    assert message is not None
    worker.handle(message)


def test_downscale_then_upscale_round_trip(setup) -> None:
    store, jobs, queue, worker, tmp = setup
    clip = tmp / "clip.mp4"
    make_clip(clip, frames=12, size=(64, 48))
    store.put_file("media", "videos/clip.mp4", clip, metadata={}, content_type="video/mp4")

    down = submit(jobs, queue, Job(method="downscale", video="s3://media/videos/clip.mp4", min_size=10, max_size=32))
    _run_one(queue, worker)
    done = jobs.get(down.id)
    assert done.status == COMPLETED and done.output == "s3://media/videos/clip-downscaled.mp4"
    small = tmp / "small.mp4"
    store.get_file("media", "videos/clip-downscaled.mp4", small)
    n, _, size = video_info(small)
    assert n == 12 and size == (32, 24)
    assert packets(small, "audio") == packets(clip, "audio")

    up = submit(jobs, queue, Job(method="upscale", video="s3://media/videos/clip-downscaled.mp4", max_workers=2))
    _run_one(queue, worker)
    finished = jobs.get(up.id)
    assert finished.status == COMPLETED and finished.output == "s3://media/videos/clip-upscaled.mp4"
    big = tmp / "big.mp4"
    store.get_file("media", "videos/clip-upscaled.mp4", big)
    n, _, size = video_info(big)
    assert n == 12 and size == (64, 48)  # the original's exact resolution, from the downscaled object's metadata
    assert finished.legacy_status()["status"] == "Completed" and finished.frames_done == 12


def test_second_delivery_of_a_finished_job_does_nothing(setup) -> None:
    store, jobs, queue, worker, tmp = setup
    clip = tmp / "clip.mp4"
    make_clip(clip, frames=4)
    store.put_file("media", "v.mp4", clip, metadata={}, content_type="video/mp4")
    job = submit(jobs, queue, Job(method="downscale", video="s3://media/v.mp4"))
    _run_one(queue, worker)
    first = store.head("media", "v-downscaled.mp4")
    queue.send(job.message())  # at-least-once delivery: the same message again
    _run_one(queue, worker)
    assert store.head("media", "v-downscaled.mp4").etag == first.etag
    assert jobs.get(job.id).attempts == 1


def test_poison_job_ends_failed_and_in_the_dlq(setup) -> None:
    store, jobs, queue, worker, tmp = setup
    bad = tmp / "bad.mp4"
    bad.write_bytes(b"this is no video" * 100)
    store.put_file("media", "bad.mp4", bad, metadata={}, content_type="video/mp4")
    job = submit(jobs, queue, Job(method="downscale", video="s3://media/bad.mp4"))
    _run_one(queue, worker)
    failed = jobs.get(job.id)
    assert failed.status == FAILED and failed.error and failed.legacy_status()["error"]
    assert queue.receive(wait_seconds=0.3) is None
    assert queue.dead_letters() == [job.message()]


def test_missing_video_fails_with_a_reason(setup) -> None:
    _, jobs, queue, worker, _ = setup
    job = submit(jobs, queue, Job(method="upscale", video="s3://media/nowhere.mp4"))
    _run_one(queue, worker)
    failed = jobs.get(job.id)
    assert failed.status == FAILED and "media" in (failed.error or "")  # the bucket does not even exist


def _stored_clip(store: LocalFolderStore, tmp: Path, key: str, frames: int = 12) -> None:
    clip = tmp / "clip.mp4"
    make_clip(clip, frames=frames, size=(64, 48))
    store.put_file("media", key, clip, metadata={}, content_type="video/mp4")


def test_a_stop_request_checkpoints_and_the_next_delivery_resumes(setup) -> None:
    store, jobs, queue, worker, tmp = setup
    _stored_clip(store, tmp, "v.mp4", frames=12)
    job = submit(jobs, queue, Job(method="downscale", video="s3://media/v.mp4", max_workers=1))
    stop = threading.Event()
    calls = []
    downscale = worker.engine.downscale

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            stop.set()  # SIGTERM arrives mid-segment
        return downscale(*args, **kwargs)

    worker.engine.downscale = counting  # type: ignore[method-assign]
    message = queue.receive(wait_seconds=2, visibility=30)
    worker.handle(message, stop)
    given_back = jobs.get(job.id)
    assert given_back.status == "Submitted" and given_back.frames_done >= 6
    saved = [k for k in store.list("media", "_checkpoints/") if k.endswith(".mp4")]
    assert saved, "the cut segment is saved"
    first_run = len(calls)
    _run_one(queue, worker)  # released at once, not after the visibility timeout
    done = jobs.get(job.id)
    assert done.status == COMPLETED and done.frames_done == 12 and done.resumed_frames == given_back.frames_done
    assert len(calls) - first_run == 12 - done.resumed_frames  # nothing before the checkpoint was done again
    assert list(store.list("media", "_checkpoints/")) == []  # checkpoints removed with the job finished
    out = tmp / "out.mp4"
    store.get_file("media", "v-downscaled.mp4", out)
    assert video_info(out)[0] == 12


def test_a_failing_dependency_is_retried_then_failed_into_the_dlq(setup) -> None:
    store, jobs, queue, worker, tmp = setup
    _stored_clip(store, tmp, "v.mp4", frames=4)
    job = submit(jobs, queue, Job(method="downscale", video="s3://media/v.mp4"))

    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    worker.engine.downscale = broken  # type: ignore[method-assign]
    _run_one(queue, worker)
    assert jobs.get(job.id).status == "Submitted" and "disk on fire" in (jobs.get(job.id).error or "")
    _run_one(queue, worker)  # the last allowed receive
    failed = jobs.get(job.id)
    assert failed.status == FAILED and "gave up after 2 attempts" in (failed.error or "")
    assert queue.dead_letters() == [job.message()] and queue.receive(wait_seconds=0.2) is None


def test_a_cancelled_job_stops_and_leaves_nothing_behind(setup) -> None:
    store, jobs, queue, worker, tmp = setup
    _stored_clip(store, tmp, "v.mp4", frames=40)
    job = submit(jobs, queue, Job(method="downscale", video="s3://media/v.mp4", max_workers=1))
    downscale = worker.engine.downscale

    def slow(*args, **kwargs):
        time.sleep(0.1)
        calls.append(1)
        if len(calls) == 3:
            jobs.transition(job.id, CANCELLED)  # DELETE /v1/videos/jobs/<id> while it runs
        return downscale(*args, **kwargs)

    calls: list[int] = []
    worker.engine.downscale = slow  # type: ignore[method-assign]
    _run_one(queue, worker)
    assert jobs.get(job.id).status == CANCELLED
    assert not store.exists("media", "v-downscaled.mp4") and list(store.list("media", "_checkpoints/")) == []
    assert queue.receive(wait_seconds=0.2) is None and queue.dead_letters() == []
