"""Work nobody wants any more stops at the next tile boundary (issue #15, defect 4): the tiler asks a cancel check
before every tile; the API's check is "the client closed its connection", the video worker's "the job was
cancelled". Against the real model, the real `upscaler serve` (TLS) and the real worker loop."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import ssl
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.servers import api_server, ready_once_loaded
from tests.test_video_pipeline import make_clip
from upscaler.config import Settings
from upscaler.engine import Engine, tiling
from upscaler.errors import Cancelled
from upscaler.jobs import CANCELLED, Job, SqliteJobStore, SqliteQueue, submit
from upscaler.providers import LocalUpscaleProvider
from upscaler.store.local import LocalFolderStore
from video_upscaler.worker import VideoWorker


@pytest.mark.parametrize("workers", [1, 3])
def test_the_tiler_starts_no_tile_once_cancelled(workers: int) -> None:
    image = np.zeros((100, 100, 3), np.float32)
    started: list[int] = []
    lock = threading.Lock()

    def fn(tile: np.ndarray) -> np.ndarray:
        with lock:
            started.append(1)
        return np.zeros((tile.shape[0] * 2, tile.shape[1] * 2, 3), np.float32)

    assert tiling.tile_count(100, 100, 24, 4) > 20
    with tiling.cancel_when(lambda: len(started) >= 5), pytest.raises(Cancelled):
        tiling.apply(image, 2, fn, tile=24, overlap=4, max_workers=workers)
    assert 5 <= len(started) <= 5 + workers  # tiles already running when the check turned true may finish
    started.clear()
    out = tiling.apply(image, 2, fn, tile=24, overlap=4, max_workers=workers)  # outside the block: no check
    assert out.shape == (200, 200, 3) and len(started) == tiling.tile_count(100, 100, 24, 4)


def test_a_real_model_run_stops_at_a_tile_boundary(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(Settings.from_env({}, ncnn_threads=2))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 128, 3), np.uint8))
    asked: list[int] = []

    def check() -> bool:
        asked.append(1)
        return len(asked) > 2

    with caplog.at_level(logging.INFO), tiling.cancel_when(check), pytest.raises(Cancelled) as err:
        engine.upscale(image, 2, model="span", tile=32)
    assert "after 2 tiles" in err.value.message and err.value.status == 499
    assert any(r.getMessage() == "upscale cancelled at a tile boundary" for r in caplog.records)
    assert engine.upscale(image, 2, model="span", tile=32).size == (256, 192)  # the engine is not left broken


@pytest.mark.slow
def test_a_request_whose_client_left_stops_at_the_next_tile(tmp_path: Path) -> None:
    """An 800x600 x4 upscale in 64 px tiles (221 tiles: seconds on two idle cores, minutes on shared ones); its
    client sends it over TLS and closes the connection 1.5 s later. The run stops at the next tile (logged with the
    tiles it started, answered 499) and the one work slot is free for the next request."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (600, 800, 3), np.uint8)).save(buf, "PNG")
    body = json.dumps({"img": base64.b64encode(buf.getvalue()).decode(), "scale": 4}).encode()
    env = {"UPSCALER_TILE_SIZE": "64", "UPSCALER_MAX_INFLIGHT": "1", "UPSCALER_VIDEO_WORKERS": "0"}
    with api_server(tmp_path, env) as url:
        ready_once_loaded(url)
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(
                b"POST /v1/upscale HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(1.5)
        small = io.BytesIO()
        Image.new("RGB", (16, 16), (10, 200, 30)).save(small, "PNG")
        resp = requests.post(
            url + "/v1/upscale",
            json={"img": base64.b64encode(small.getvalue()).decode(), "scale": 2},
            verify=False,
            timeout=120,
        )
    assert resp.status_code == 200, resp.text
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]
    cancelled = [r for r in lines if r["msg"] == "upscale cancelled at a tile boundary"]
    total = tiling.tile_count(600, 800, 64, 16)
    assert len(cancelled) == 1 and cancelled[0]["tiles_started"] < total / 2, (cancelled, total)
    request = [r for r in lines if r["msg"] == "request" and r["route"] == "/v1/upscale"]
    assert [r["status"] for r in request] == [499, 200], request


def test_a_cancelled_video_job_stops_inside_the_frame_it_is_on(tmp_path: Path) -> None:
    """An upscale job whose frames take many tiles is cancelled while a frame runs: the heartbeat sees it and the
    frame stops at its next tile; the job ends Cancelled, its message acknowledged (not dead-lettered)."""
    settings = Settings.from_env(
        {}, ncnn_threads=2, tile_size=32, video_heartbeat=0.2, video_scratch=str(tmp_path), video_segment_frames=4
    )
    engine = Engine(settings)
    store = LocalFolderStore(tmp_path / "objects")
    jobs = SqliteJobStore(tmp_path / "jobs.db")
    queue = SqliteQueue(tmp_path / "queue.db", poll_interval=0.05)
    provider = LocalUpscaleProvider(engine, "span")
    worker = VideoWorker(store=store, jobs=jobs, queue=queue, provider=provider, engine=engine, settings=settings)
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=4, size=(192, 128))
    store.put_file("media", "v.mp4", clip, metadata={}, content_type="video/mp4")
    frame = np.random.default_rng(3).integers(0, 255, (128, 192, 3), np.uint8)
    start = time.monotonic()
    engine.upscale(frame, 4, model="span")  # one whole frame, for reference: 24 tiles of 32 px
    whole_frame = time.monotonic() - start
    job = submit(jobs, queue, Job(method="upscale", video="s3://media/v.mp4", model="span", max_workers=1))
    cancelled_at: list[float] = []

    def cancel() -> None:
        jobs.transition(job.id, CANCELLED)  # as DELETE /v1/jobs/<id> does
        cancelled_at.append(time.monotonic())

    frames: list[int] = []
    run = engine.upscale

    def counting(*args: object, **kwargs: object) -> object:
        if not frames:  # the first frame starts: cancel a third of a frame's time later
            threading.Timer(whole_frame / 3, cancel).start()
        frames.append(1)
        return run(*args, **kwargs)

    engine.upscale = counting  # type: ignore[method-assign]
    message = queue.receive(wait_seconds=2, visibility=30)
    assert message is not None
    worker.handle(message)
    stopped = time.monotonic() - cancelled_at[0]
    assert jobs.get(job.id).status == CANCELLED
    # the heartbeat notices within 0.2 s; the frame stops at its next tile instead of running 2/3 of a frame on
    assert stopped < 0.2 + whole_frame / 3, f"stopped {stopped:.2f} s after the cancel (a frame: {whole_frame:.2f} s)"
    assert queue.receive(wait_seconds=0.2) is None and queue.dead_letters() == []
    assert not store.exists("media", "v-upscaled.mp4")
