"""Every outside call under a total deadline (issue #15, defects 7 and 8), against the real `upscaler serve`: an S3
endpoint that accepts connections and never answers gives 503 within the configured S3 deadline and ``/ready``
answers within its own; a URL source trickling a byte at a time is cut off at the total source deadline."""

from __future__ import annotations

import http.server
import io
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.servers import api_server, hung_s3_api, ready_once_loaded

pytestmark = pytest.mark.slow


def test_a_hung_s3_gives_503_within_the_deadline_and_ready_within_its_own(tmp_path: Path) -> None:
    env = {"UPSCALER_S3_TIMEOUT": "4", "UPSCALER_S3_MAX_ATTEMPTS": "2", "UPSCALER_READY_TIMEOUT": "1"}
    with hung_s3_api(tmp_path, env) as url:
        ready = ready_once_loaded(url, timeout=15)
        for _ in range(2):  # the second probe finds the first check still hung: it waits on it, no new thread
            assert ready.status_code == 503 and "did not answer within 1 s" in ready.json()["error"], ready.text
            ready = requests.get(url + "/ready", verify=False, timeout=15)
        start = time.monotonic()
        got = requests.get(url + "/v1/images/a.png", params={"bucket": "media"}, verify=False, timeout=60)
        took = time.monotonic() - start
        assert got.status_code == 503 and got.json()["code"], got.text
        assert took < 4 + 6, f"503 after {took:.1f} s"  # the deadline plus botocore's backoff between attempts


class TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Sends a small PNG one byte every 0.2 s (each read well inside any per-read timeout)."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        for i in range(len(self.body)):
            try:
                self.wfile.write(self.body[i : i + 1])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)

    def log_message(self, *args: object) -> None:
        pass


def test_a_trickling_source_url_is_cut_off_at_the_total_deadline(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, "PNG")
    TrickleHandler.body = buf.getvalue()  # ~70 bytes: ~14 s to send
    source = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TrickleHandler)
    threading.Thread(target=source.serve_forever, daemon=True).start()
    env = {
        "UPSCALER_ALLOWED_SOURCE_HOSTS": "127.0.0.1",
        "UPSCALER_ALLOW_PRIVATE_SOURCES": "1",
        "UPSCALER_SOURCE_TIMEOUT": "2",
        "UPSCALER_VIDEO_WORKERS": "0",
    }
    try:
        with api_server(tmp_path, env) as url:
            src = f"http://127.0.0.1:{source.server_address[1]}/slow.png"
            resp = requests.post(url + "/v1/upscale", json={"url": src, "scale": 2}, verify=False, timeout=60)
            assert resp.status_code == 503, resp.text
            assert "more than 2 s" in resp.json()["error"] and "UPSCALER_SOURCE_TIMEOUT" in resp.json()["error"]
    finally:
        source.shutdown()
        source.server_close()
