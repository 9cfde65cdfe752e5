"""The client SDK and CLI against the real service on loopback (TLS verified with its certificate), and against a
small HTTP server that throttles, for the retry rules."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from client import JobFailed, UpscalerClient, UpscalerError
from client.cli import main as cli
from tests.test_video_pipeline import make_clip, packets, video_info

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.coffee()[100:196, 200:328]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_images_round_trip_with_tls_verified(tls_service: tuple[str, Path], jpeg: bytes, api: str) -> None:
    url, cert = tls_service
    client = UpscalerClient(url, ca_bundle=cert, api=api)
    stored = client.store(jpeg, f"{api}/coffee.jpg", "media", scale=2)
    assert stored["original"]["width"] == 128 and stored["saved_percent"] > 0
    back = Image.open(io.BytesIO(client.retrieve(f"{api}/coffee.jpg", "media")))
    assert back.size == (128, 96) and back.format == "JPEG"
    bicubic = Image.open(io.BytesIO(client.retrieve(f"{api}/coffee.jpg", "media", model="bicubic", format="png")))
    assert bicubic.size == (128, 96) and bicubic.format == "PNG"
    assert client.metadata(f"{api}/coffee.jpg", "media")["width"] == 128
    client.delete(f"{api}/coffee.jpg", "media")
    with pytest.raises(UpscalerError) as missing:
        client.retrieve(f"{api}/coffee.jpg", "media")
    assert missing.value.status == 404 and missing.value.message


def test_tls_is_verified_by_default(tls_service: tuple[str, Path]) -> None:
    url, _ = tls_service
    with pytest.raises(UpscalerError) as failed:
        UpscalerClient(url).request("GET", "/health")
    assert failed.value.status == 0 and "ca_bundle" in str(failed.value)
    with pytest.warns(UserWarning, match="verification is off"):
        insecure = UpscalerClient(url, insecure=True)
    assert insecure.health()


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_video_jobs_with_progress(tls_service: tuple[str, Path], tmp_path: Path, api: str) -> None:
    url, cert = tls_service
    client = UpscalerClient(url, ca_bundle=cert, api=api)
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=16, size=(64, 48))
    assert client.upload_video(clip, f"{api}/clip.mp4", "media")["frames"] == 16
    seen: list[dict] = []
    down = client.wait(client.store_video(f"{api}/clip.mp4", "media", max_size=32), progress=seen.append, poll=0.2)
    assert down["status"] == "Completed" and seen and seen[-1]["status"] == "Completed"
    up = client.wait(client.retrieve_video(f"{api}/clip-downscaled.mp4", "media", max_workers=2), poll=0.2)
    assert up["output"] == f"s3://media/{api}/clip-upscaled.mp4"
    out = client.download_video(f"{api}/clip-upscaled.mp4", tmp_path / "out.mp4", "media")
    assert video_info(out)[0] == 16 and video_info(out)[2] == (64, 48)
    assert packets(out, "audio") == packets(clip, "audio")
    client.request("PUT", "/v1/videos/bad.mp4", data=clip.read_bytes(), params={"bucket": "media"})
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(UpscalerError) as refused:
        client.upload_video(tmp_path / "bad.mp4", "bad2.mp4", "media")
    assert refused.value.status == 422


def test_cli_store_retrieve_and_video(tls_service: tuple[str, Path], tmp_path: Path, jpeg: bytes, capsys) -> None:
    url, cert = tls_service
    common = ["--url", url, "--ca-bundle", str(cert)]
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg)
    assert cli([*common, "store", str(photo), "--key", "cli/photo.jpg", "--bucket", "media"]) == 0
    assert json.loads(capsys.readouterr().out)["s3_key"] == "cli/photo.jpg"
    out = tmp_path / "back.jpg"
    assert cli([*common, "retrieve", "cli/photo.jpg", "--bucket", "media", "-o", str(out)]) == 0
    assert Image.open(out).size == (128, 96)
    assert cli([*common, "retrieve", "cli/none.jpg", "--bucket", "media", "-o", str(out)]) == 2
    assert "404" in capsys.readouterr().err

    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=8, size=(64, 48))
    assert cli([*common, "video", "upload", str(clip), "--key", "cli/clip.mp4", "--bucket", "media"]) == 0
    capsys.readouterr()
    assert cli([*common, "video", "submit", "downscale", "cli/clip.mp4", "--bucket", "media", "--wait"]) == 0
    captured = capsys.readouterr()
    assert "Completed" in captured.out and "frame" in captured.err  # the progress bar went to stderr
    assert cli([*common, "video", "wait", "0" * 32]) == 2


# ---- retries, against a server that throttles --------------------------------------------------------------------


class _Throttling(http.server.BaseHTTPRequestHandler):
    """503 with Retry-After for the first ``refusals`` requests, then 200; records what it saw."""

    refusals: ClassVar[int] = 2
    seen: ClassVar[list[tuple[float, str | None]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((time.monotonic(), self.headers.get("Authorization")))
        if len(self.seen) <= self.refusals:
            body, status, extra = b'{"error": "busy", "code": "unavailable", "status": 503}', 503, {"Retry-After": "1"}
        elif self.path.startswith("/v1/jobs/"):
            body, status, extra = json.dumps({"id": "j", "status": "Failed", "error": "poison"}).encode(), 200, {}
        else:
            body, status, extra = b'[{"status": "ok"}, 200]', 200, {}
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def throttling() -> Iterator[str]:
    _Throttling.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_503_is_retried_after_retry_after_with_the_token(throttling: str) -> None:
    client = UpscalerClient(throttling, token="s3cret", retries=3)
    assert client.health()
    times = [t for t, _ in _Throttling.seen]
    assert len(times) == 3 and times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95  # Retry-After: 1
    assert {auth for _, auth in _Throttling.seen} == {"Bearer s3cret"}


def test_retries_run_out_into_a_clear_error_and_failed_jobs_raise(throttling: str) -> None:
    with pytest.raises(UpscalerError) as busy:
        UpscalerClient(throttling, retries=1).request("GET", "/health")
    assert busy.value.status == 503 and busy.value.message == "busy" and busy.value.code == "unavailable"
    with pytest.raises(JobFailed) as failed:
        UpscalerClient(throttling, retries=0).wait("j", poll=0.01)
    assert failed.value.job["error"] == "poison"
