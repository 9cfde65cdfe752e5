"""The worker loop over the embedded queue, job store and local folder: whole jobs, second deliveries, poison."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_video_pipeline import make_clip, packets, video_info
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.jobs import COMPLETED, FAILED, Job, SqliteJobStore, SqliteQueue, submit
from upscaler.providers import LocalUpscaleProvider
from upscaler.store.local import LocalFolderStore
from video_upscaler.worker import VideoWorker


@pytest.fixture
def setup(tmp_path: Path):
    engine = Engine(Settings.from_env({}, ncnn_threads=2))
    store = LocalFolderStore(tmp_path / "objects")
    jobs = SqliteJobStore(tmp_path / "jobs.db")
    queue = SqliteQueue(tmp_path / "queue.db", max_receives=2, poll_interval=0.05)
    worker = VideoWorker(
        store=store,
        jobs=jobs,
        queue=queue,
        provider=LocalUpscaleProvider(engine, "bicubic"),
        engine=engine,
        scratch=tmp_path,
        max_receives=2,
        visibility=30,
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
