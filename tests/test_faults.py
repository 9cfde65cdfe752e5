"""Faults: S3 and DynamoDB throttling and outages injected by a real proxy in front of moto's server, and the API
killed with SIGKILL in the middle of stores. What was acknowledged must be intact; what failed must not be visible;
every failure must be a clear JSON answer with the right status."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest
import requests
from PIL import Image

from tests.fault_proxy import DROP, DYNAMO_THROTTLED, S3_INTERNAL, S3_SLOWDOWN, fault_proxy
from tests.servers import AWS_TEST_ENV, UPSCALER, api_server, free_port, moto_server, wait_ready

pytestmark = pytest.mark.slow

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def _jpeg(seed: int, side: int = 64) -> bytes:
    from skimage import data

    pixels = data.astronaut()[seed % 300 : seed % 300 + side, seed % 200 : seed % 200 + side]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _store(url: str, key: str, data: bytes, bucket: str = "media") -> requests.Response:
    body = {"image": base64.b64encode(data).decode(), "s3_key_name": key, "s3_bucket": bucket}
    return requests.post(url + "/store", json=body, verify=False, timeout=60)


def _retrieve(url: str, key: str, bucket: str = "media") -> requests.Response:
    return requests.get(url + "/retrieve", params={"s3_key": key, "s3_bucket": bucket}, verify=False, timeout=60)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory):
    with moto_server() as moto, fault_proxy(moto) as (s3_url, s3_faults), fault_proxy(moto) as (ddb_url, ddb_faults):
        boto3.client("s3", endpoint_url=moto, **CREDS).create_bucket(Bucket="media")
        ddb = boto3.client("dynamodb", endpoint_url=moto, **CREDS)
        ddb.create_table(
            TableName="jobs",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        env = {
            **AWS_TEST_ENV,
            "UPSCALER_STORAGE": "s3://",
            "UPSCALER_S3_ENDPOINT_URL": s3_url,
            "UPSCALER_JOB_STORE": "dynamodb:jobs",
            "UPSCALER_DYNAMODB_ENDPOINT_URL": ddb_url,
            "UPSCALER_VIDEO_WORKERS": "0",
        }
        with api_server(tmp_path_factory.mktemp("faults"), env) as url:
            yield url, s3_faults, ddb_faults
            s3_faults.up()


def test_s3_throttling_is_retried_and_the_store_succeeds(faulty) -> None:
    url, s3, _ = faulty
    before = s3.injected
    s3.fail(2, S3_SLOWDOWN)
    resp = _store(url, "retried.jpg", _jpeg(1))
    assert resp.status_code == 200, resp.text
    assert s3.injected - before == 2
    assert Image.open(io.BytesIO(base64.b64decode(_retrieve(url, "retried.jpg").json()[0]["data"]))).size == (64, 64)


def test_s3_down_is_a_clear_503_and_leaves_nothing_visible(faulty) -> None:
    url, s3, _ = faulty
    s3.down(S3_INTERNAL)
    try:
        resp = _store(url, "never.jpg", _jpeg(2))
        assert resp.status_code == 503 and resp.json()[1] == 503 and "S3" in resp.json()[0]["error"]
        assert int(resp.headers["Retry-After"]) >= 1
        assert _retrieve(url, "never.jpg").status_code == 503
    finally:
        s3.up()
    assert _retrieve(url, "never.jpg").status_code == 404  # the failed store left no object behind


def test_s3_dying_mid_request_is_retried_then_a_clear_503(faulty) -> None:
    url, s3, _ = faulty
    s3.fail(1, DROP)  # one connection cut: retried, and the store goes through
    assert _store(url, "dropped-once.jpg", _jpeg(3)).status_code == 200
    s3.down(DROP)  # S3 gone for good
    try:
        started = time.monotonic()
        resp = _store(url, "dropped.jpg", _jpeg(4))
        assert resp.status_code == 503 and "S3" in resp.json()[0]["error"] and resp.headers["Retry-After"]
        assert time.monotonic() - started < 60  # retries are bounded
    finally:
        s3.up()
    assert _retrieve(url, "dropped.jpg").status_code == 404


@pytest.mark.parametrize("passes", [0, 1, 2])
def test_an_overwrite_cut_off_at_any_request_leaves_one_whole_version(faulty, passes: int) -> None:
    url, s3, _ = faulty
    first, second = _jpeg(10, 64), _jpeg(20, 96)
    assert _store(url, f"half-{passes}.jpg", first).status_code == 200
    s3.allow(passes)  # the first requests of the new store go through, then S3 fails for good
    s3.down(S3_INTERNAL)
    try:
        answer = _store(url, f"half-{passes}.jpg", second).status_code
    finally:
        s3.up()
    assert answer in (200, 503)
    resp = _retrieve(url, f"half-{passes}.jpg")
    assert resp.status_code == 200, resp.text
    size = Image.open(io.BytesIO(base64.b64decode(resp.json()[0]["data"]))).size
    assert size == ((96, 96) if answer == 200 else (64, 64))  # acknowledged: the new one; refused: the old one


def test_dynamodb_throttling_is_retried_when_a_job_is_submitted(faulty) -> None:
    url, _, ddb = faulty
    from tests.test_video_pipeline import make_clip

    clip = Path(os.environ.get("TMPDIR", "/tmp")) / f"fault-clip-{os.getpid()}.mp4"
    make_clip(clip, frames=4)
    try:
        resp = requests.put(
            url + "/v1/videos/v.mp4", params={"bucket": "media"}, data=clip.read_bytes(), verify=False, timeout=60
        )
        assert resp.status_code == 201, resp.text
    finally:
        clip.unlink(missing_ok=True)
    before = ddb.injected
    ddb.fail(2, DYNAMO_THROTTLED)
    job = requests.post(url + "/storeVideo", json={"s3_key_name": "v.mp4", "s3_bucket": "media"}, verify=False)
    assert job.status_code == 200, job.text
    assert ddb.injected - before == 2
    status = requests.get(url + "/getVideoStatus", params={"id": job.json()[0]["data"]}, verify=False)
    assert status.status_code == 200 and '"Submitted"' in status.json()[0]["data"]
    ddb.down(DYNAMO_THROTTLED)
    try:
        refused = requests.post(url + "/storeVideo", json={"s3_key_name": "v.mp4", "s3_bucket": "media"}, verify=False)
        assert refused.status_code == 503 and refused.json()[1] == 503  # throttled past the retries: say so
    finally:
        ddb.up()


def test_sigkill_of_the_api_mid_store_loses_no_acknowledged_object(tmp_path: Path) -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    env = {**os.environ, "UPSCALER_NCNN_THREADS": "2", "GUNICORN_THREADS": "8"}
    argv = [str(UPSCALER), "serve", "--port", str(port)]
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(url + "/ready", proc=proc)
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        n = 0
        while not stop.is_set():
            key, data = f"w{worker}/img{n}.jpg", _jpeg(worker * 37 + n, 48 + (n % 4) * 16)
            n += 1
            try:
                resp = _store(url, key, data)
            except requests.RequestException:
                continue  # the server died under this request: not acknowledged
            if resp.status_code == 200:
                with lock:
                    acknowledged[key] = data

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        for i in range(6):
            pool.submit(writer, i)
        while len(acknowledged) < 12:
            stop.wait(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # gunicorn, its workers, the video worker: all at once
        proc.wait()
        stop.set()
    log.close()
    assert len(acknowledged) >= 12

    with api_server(tmp_path) as url2:
        for key, data in acknowledged.items():
            resp = _retrieve(url2, key)
            assert resp.status_code == 200, (key, resp.text)
            size = Image.open(io.BytesIO(base64.b64decode(resp.json()[0]["data"]))).size
            assert size == Image.open(io.BytesIO(data)).size
        for worker in range(6):  # stores that were cut off: absent or whole, never corrupt
            for n in range(200):
                key = f"w{worker}/img{n}.jpg"
                if key in acknowledged:
                    continue
                status = _retrieve(url2, key).status_code
                assert status in (200, 404), (key, status)
                if status == 404:
                    break
