"""Every outside call under a total deadline (issue #15, defects 7 and 8), against the real `upscaler serve`: an S3
endpoint that accepts connections and never answers gives 503 within the configured S3 deadline and ``/ready``
answers within its own; a URL source trickling a byte at a time is cut off at the total source deadline; hung
DynamoDB, SQS and SageMaker endpoints fail their calls within theirs."""

from __future__ import annotations

import http.server
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.servers import AWS_TEST_ENV, api_server, hung_endpoint, hung_s3_api, moto_server, ready_once_loaded
from upscaler.config import Settings
from upscaler.errors import Unavailable
from upscaler.jobs.factory import open_job_queue, open_job_store
from upscaler.providers.sagemaker import SagemakerRTUpscaleProvider

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


@pytest.fixture()
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)


def _took(call: Callable[[], object]) -> tuple[float, str]:
    start = time.monotonic()
    with pytest.raises(Unavailable) as err:
        call()
    return time.monotonic() - start, err.value.message


#: botocore's standard retries sleep up to 1 s (jittered) after a first failed attempt, up to 2 s after a second.
BACKOFF = 3.0


def test_a_hung_dynamodb_and_sqs_fail_within_their_deadline(aws_env: None) -> None:
    """The job table and queue clients of the settings: a hung endpoint is Unavailable (503) in about
    ``jobs_timeout``, not botocore's default 60 s per read times its retries."""
    settings = Settings.from_env({}, jobs_timeout=2.0, jobs_max_attempts=2)
    with hung_endpoint() as endpoint:
        jobs = open_job_store(settings.replace(job_store="dynamodb:jobs", dynamodb_endpoint_url=endpoint))
        queue = open_job_queue(settings.replace(job_queue=endpoint + "/123456789012/q", sqs_endpoint_url=endpoint))
        for name, call in (
            ("DynamoDB get", lambda: jobs.get("some-job")),
            ("DynamoDB ping", jobs.ping),
            ("SQS send", lambda: queue.send({"id": "some-job"})),
        ):
            took, message = _took(call)
            assert took < 2.0 + BACKOFF, f"{name}: {took:.1f} s"
            assert "failed" in message and "Timeout" in message, (name, message)


def test_a_hung_sagemaker_endpoint_fails_within_its_deadline(aws_env: None) -> None:
    """One invocation waits ``sagemaker_read_timeout`` at most, and no attempt starts after ``sagemaker_deadline``."""
    settings = Settings.from_env({}, sagemaker_read_timeout=1.0, sagemaker_deadline=2.5)
    with hung_endpoint() as endpoint:
        provider = SagemakerRTUpscaleProvider(settings.replace(sagemaker_endpoint_url=endpoint), "upscaler-span")
        took, message = _took(lambda: provider.upscale(Image.new("RGB", (16, 16)), size=(64, 64)))
    assert 1.0 <= took < 2.5 + 1.0 + 1.0, f"{took:.1f} s"  # the deadline, one read timeout, the last backoff
    assert "upscaler-span" in message and ("ReadTimeout" in message or "2.5 s" in message), message


def test_a_hung_sqs_gives_the_job_submission_503_within_the_deadline(tmp_path: Path, aws_env: None) -> None:
    """The real `upscaler serve`, its job table on moto's server and its queue hung: POST /v1/jobs answers a JSON 503
    within ``UPSCALER_JOBS_TIMEOUT`` (the row it wrote stays Submitted without a message: no job id was given)."""
    import boto3

    video = tmp_path / "objects" / "media" / "v.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"not decoded at submission")
    with moto_server() as moto, hung_endpoint() as hung:
        boto3.client("dynamodb", endpoint_url=moto).create_table(
            TableName="jobs",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        env = {
            "UPSCALER_STORAGE": str(tmp_path / "objects"),
            "UPSCALER_JOB_STORE": "dynamodb:jobs",
            "UPSCALER_DYNAMODB_ENDPOINT_URL": moto,
            "UPSCALER_JOB_QUEUE": hung + "/123456789012/jobs",
            "UPSCALER_SQS_ENDPOINT_URL": hung,
            "UPSCALER_JOBS_TIMEOUT": "2",
            "UPSCALER_JOBS_MAX_ATTEMPTS": "2",
            "UPSCALER_VIDEO_WORKERS": "0",
        }
        with api_server(tmp_path, env) as url:
            assert requests.get(url + "/v1/jobs/nothing-here", verify=False, timeout=30).status_code == 404
            start = time.monotonic()
            resp = requests.post(
                url + "/v1/jobs", json={"method": "downscale", "key": "v.mp4"}, verify=False, timeout=60
            )
            took = time.monotonic() - start
    assert resp.status_code == 503 and resp.json()["code"] == "unavailable", resp.text
    assert "SQS failed" in resp.json()["error"] and resp.headers.get("Retry-After"), resp.text
    assert took < 2.0 + BACKOFF + 1.0, f"503 after {took:.1f} s"
