"""Video end to end: `upscaler serve` (gunicorn, TLS) with its embedded worker, driven as the original clients do
(/storeVideo, /retrieveVideo, /getVideoStatus) and through /v1; then SQS + DynamoDB + S3 on moto's server with a
separate `upscaler worker`; then a worker killed with SIGKILL mid-job and restarted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from PIL import Image

from client.cli import main as cli
from tests.servers import AWS_TEST_ENV, UPSCALER, api_server, moto_server
from tests.test_video_pipeline import cues, make_clip, packets, truncated_copy, video_info
from upscaler.media.video import probe
from upscaler.store.local import LocalFolderStore

pytestmark = pytest.mark.slow

FAST = {"UPSCALER_VIDEO_SEGMENT_FRAMES": "8", "UPSCALER_VIDEO_VISIBILITY": "6", "UPSCALER_VIDEO_PRESET": "veryfast"}


def legacy_status(url: str, job_id: str) -> dict:
    resp = requests.get(url + "/getVideoStatus", params={"id": job_id}, verify=False, timeout=10)
    body = resp.json()
    assert resp.status_code == 200 and body[1] == 200, resp.text
    assert isinstance(body[0]["data"], str)  # a JSON string, as the original sent it
    return json.loads(body[0]["data"])


def wait_legacy(url: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = legacy_status(url, job_id)
        if status["status"] in ("Completed", "Failed", "Cancelled"):
            return status
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} not finished: {status}")


def wait_v1(url: str, job_id: str, timeout: float = 120, until: tuple[str, ...] = ("Completed", "Failed")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/v1/jobs/{job_id}", verify=False, timeout=10).json()
        if job["status"] in until:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id}: {job}")


def download(url: str, key: str, dest: Path, bucket: str | None = None) -> Path:
    params = {"bucket": bucket} if bucket else {}
    resp = requests.get(f"{url}/v1/videos/{key}", params=params, verify=False, timeout=30)
    assert resp.status_code == 200, resp.text
    dest.write_bytes(resp.content)
    return dest


def upload(url: str, key: str, path: Path, bucket: str | None = None) -> requests.Response:
    params = {"bucket": bucket} if bucket else {}
    return requests.put(
        f"{url}/v1/videos/{key}",
        params=params,
        data=path.read_bytes(),
        headers={"Content-Type": "video/mp4"},
        verify=False,
        timeout=30,
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "talk.mp4"
    make_clip(path, frames=30, size=(96, 64), vfr=True, subtitles=("hello", "world"))
    return path


@pytest.fixture(scope="module")
def local_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {**FAST, "UPSCALER_VIDEO_MAX_BYTES": str(2 * 1024 * 1024), "UPSCALER_VIDEO_MAX_SECONDS": "60"}
    with api_server(tmp_path_factory.mktemp("video-api"), env) as url:
        yield url


def test_original_clients_store_and_retrieve_a_video(local_api: str, clip: Path, tmp_path: Path) -> None:
    resp = upload(local_api, "clips/talk.mp4", clip)
    assert resp.status_code == 201, resp.text
    assert resp.json()["width"] == 96 and "audio" in resp.json()["streams"]
    assert resp.json()["content_type"] == "video/mp4" and resp.json()["frames"] == 30

    resp = requests.post(
        local_api + "/storeVideo",
        json={"s3_key_name": "clips/talk.mp4", "s3_bucket": "media", "min_size": 24, "max_size": 48},
        verify=False,
    )
    assert resp.status_code == 200 and resp.json()[1] == 200, resp.text
    done = wait_legacy(local_api, resp.json()[0]["data"])
    assert done["status"] == "Completed" and done["output"] == "s3://media/clips/talk-downscaled.mp4"
    small = download(local_api, "clips/talk-downscaled.mp4", tmp_path / "small.mp4", "media")
    assert video_info(small)[2] == (36, 24)  # the original's getNewDim: 24x16, the height raised to 24

    resp = requests.get(
        local_api + "/retrieveVideo",
        params={"s3_key": "clips/talk-downscaled.mp4", "s3_bucket": "media", "endpoint": "ep", "max_workers": 2},
        verify=False,
    )
    assert resp.json()[1] == 200, resp.text
    done = wait_legacy(local_api, resp.json()[0]["data"])
    assert done["status"] == "Completed" and done["output"] == "s3://media/clips/talk-upscaled.mp4"
    assert done["frames_done"] == done["frames_total"] == 30 and done["progress"] == 1.0
    big = download(local_api, "clips/talk-upscaled.mp4", tmp_path / "big.mp4")
    n, pts, size = video_info(big)
    _n_in, pts_in, _ = video_info(clip)
    assert (n, size) == (30, (96, 64)) and pts == pts_in  # every frame, at its time, at the original's size
    assert probe(big).duration == pytest.approx(probe(clip).duration, abs=0.05)
    assert packets(big, "audio") == packets(clip, "audio")  # byte-identical audio
    assert cues(big) == cues(clip) and len(cues(clip)) == 2  # subtitles copied too


def test_v1_jobs_progress_and_cancel(local_api: str, clip: Path) -> None:
    assert upload(local_api, "v1/clip.mp4", clip).status_code == 201
    resp = requests.post(
        local_api + "/v1/jobs", json={"method": "downscale", "key": "v1/clip.mp4", "scale": 2}, verify=False
    )
    assert resp.status_code == 202 and resp.headers["Location"] == f"/v1/jobs/{resp.json()['id']}"
    job = wait_v1(local_api, resp.json()["id"])
    assert job["status"] == "Completed" and job["output"] == "s3://media/v1/clip-downscaled.mp4"
    assert job["frames_done"] == 30 and job["timings"]["run_seconds"] > 0 and job["error"] is None
    again = requests.delete(f"{local_api}/v1/jobs/{job['id']}", verify=False)
    assert again.status_code == 409 and again.json()["code"]

    resp = requests.post(
        local_api + "/v1/jobs",
        json={"method": "upscale", "key": "v1/clip.mp4", "output_key": "v1/cancelled.mp4", "max_workers": 1},
        verify=False,
    )
    cancelled = requests.delete(f"{local_api}/v1/jobs/{resp.json()['id']}", verify=False)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "Cancelled"
    time.sleep(1.0)
    assert wait_v1(local_api, resp.json()["id"], until=("Cancelled",))["output"] is None


def test_client_max_size_and_v1_sizing_and_codec_choice(local_api: str, clip: Path, capsys) -> None:
    """96x64 with max_size 20: the original's getNewDim gives 20x13 (written 20x12), the aspect sizing 20x13 ->
    20x12 too but from 20x13.3; (30, 40) tells them apart: original 30x20, aspect 45x30 written 44x30."""
    assert upload(local_api, "cli/talk.mp4", clip).status_code == 201
    command = ["video", "submit", "downscale", "cli/talk.mp4", "--max-size", "20"]
    with pytest.warns(UserWarning, match="verification is off"):
        assert cli(["--url", local_api, "--insecure", *command]) == 0
    job = wait_v1(local_api, capsys.readouterr().out.strip())
    assert (job["sizing"], job["size_requested"], job["size"]) == ("original", "20x13", "20x12")
    assert job["source_bytes"] == clip.stat().st_size and job["saved_percent"] > 0
    for sizing, size in (("original", "30x20"), ("aspect", "44x30")):
        body = {"method": "downscale", "key": "cli/talk.mp4", "min_size": 30, "max_size": 40, "sizing": sizing}
        body["codec"] = "av1"
        job = wait_v1(local_api, requests.post(local_api + "/v1/jobs", json=body, verify=False).json()["id"])
        assert job["status"] == "Completed" and job["size"] == size and job["encoding"]["codec"] == "av1"
    for body, words in (
        ({"codec": "vp8"}, "codec must be one of h264, hevc, av1"),
        ({"codec": "av1", "crf": 20, "qp": 20}, "pass crf or qp, not both"),
        ({"codec": "hevc", "preset": "8"}, "preset for hevc must be one of"),
        ({"sizing": "square"}, "sizing must be one of original, aspect"),
        ({"target": "psnr:38", "codec": "av1"}, "target is for downscale jobs and chooses the size, codec and CRF"),
        ({"target": "bpp:0.1"}, "target for a video must be psnr:<dB> or ssim:<0..1>"),
    ):
        resp = requests.post(
            local_api + "/v1/jobs", json={"method": "downscale", "key": "cli/talk.mp4", **body}, verify=False
        )
        assert resp.status_code == 400 and words in resp.json()["error"], resp.text
    body = {"method": "downscale", "key": "cli/talk.mp4", "target": "psnr:30", "output_key": "cli/targeted.mp4"}
    job = wait_v1(local_api, requests.post(local_api + "/v1/jobs", json=body, verify=False).json()["id"])
    assert job["status"] == "Completed" and job["fidelity"]["met"] and job["fidelity"]["psnr"] >= 30, job
    assert job["decision"]["target"] == "psnr>=30" and job["encoding"]["codec"] == job["decision"]["codec"]


@pytest.mark.parametrize(
    ("route", "kwargs", "status"),
    [
        ("/storeVideo", {"json": {"s3_bucket": "media"}}, 400),  # no key
        ("/storeVideo", {"json": {"s3_key_name": "nowhere.mp4"}}, 404),
        ("/storeVideo", {"json": {"s3_key_name": "clips/talk.mp4", "min_size": 50, "max_size": 10}}, 400),
        ("/storeVideo", {"json": {"s3_key_name": "clips/talk.mp4", "min_size": "big"}}, 400),
        ("/storeVideo", {"json": {"s3_key_name": "../etc/passwd"}}, 400),
        ("/storeVideo", {"data": "not json"}, 415),
        ("/retrieveVideo", {"params": {"s3_key": "clips/talk.mp4", "max_workers": 1000}}, 400),
        ("/retrieveVideo", {"params": {"s3_key": "clips/talk.mp4", "model": "no-such-model"}}, 400),
        ("/getVideoStatus", {"params": {"id": "0" * 32}}, 404),
        ("/getVideoStatus", {"params": {}}, 400),
    ],
)
def test_legacy_video_bad_input(local_api: str, clip: Path, route: str, kwargs: dict, status: int) -> None:
    upload(local_api, "clips/talk.mp4", clip)
    method = requests.post if route == "/storeVideo" else requests.get
    resp = method(local_api + route, verify=False, **kwargs)
    assert resp.status_code == status and resp.json()[1] == status and resp.json()[0]["error"], resp.text


def test_v1_video_bad_uploads(local_api: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video" * 50)
    assert upload(local_api, "x/junk.mp4", junk).status_code == 422
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    assert upload(local_api, "x/big.mp4", big).status_code == 413
    resp = requests.put(
        f"{local_api}/v1/videos/x/a.mp4", data=b"x", headers={"Content-Type": "text/plain"}, verify=False
    )
    assert resp.status_code == 415 and resp.json()["code"]
    long_clip = tmp_path / "long.mp4"
    make_clip(long_clip, frames=80, rate=1)  # 80 s, over the 60 s limit of this server
    assert upload(local_api, "x/long.mp4", long_clip).status_code == 413
    assert requests.get(f"{local_api}/v1/videos/x/none.mp4", verify=False).status_code == 404
    still = tmp_path / "still.png"
    Image.new("RGB", (64, 48)).save(still, "PNG")
    resp = upload(local_api, "x/still.mp4", still)  # a still image declared as video/mp4
    assert resp.status_code == 415 and "still image (png), not a video" in resp.json()["error"], resp.text
    clip, cut = tmp_path / "clip.mp4", tmp_path / "cut.mp4"
    make_clip(clip, frames=40)
    truncated_copy(clip, cut)  # its index is intact, so the upload's probe passes; the job finds out
    assert upload(local_api, "x/cut.mp4", cut).status_code == 201
    body = {"method": "downscale", "key": "x/cut.mp4"}
    job = wait_v1(local_api, requests.post(f"{local_api}/v1/jobs", json=body, verify=False).json()["id"])
    assert job["status"] == "Failed" and "of the 40 frames its container lists" in job["error"], job
    assert (
        requests.post(
            f"{local_api}/v1/jobs", json={"method": "sideways", "key": "clips/talk.mp4"}, verify=False
        ).status_code
        == 400
    )


# ---- SQS + DynamoDB + S3 on moto, with a separate worker ----------------------------------------------------------


@contextlib.contextmanager
def worker_process(workdir: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    log = open(workdir / "worker.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(UPSCALER), "worker", "--wait-seconds", "1"],
        cwd=workdir,
        env={**os.environ, "UPSCALER_NCNN_THREADS": "2", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_sqs_dynamodb_s3_whole_jobs_and_a_poison_job(tmp_path: Path, clip: Path) -> None:
    with moto_server() as endpoint:
        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, **creds)
        sqs = boto3.client("sqs", endpoint_url=endpoint, **creds)
        ddb = boto3.client("dynamodb", endpoint_url=endpoint, **creds)
        s3.create_bucket(Bucket="media")
        dlq = sqs.create_queue(QueueName="video-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue = sqs.create_queue(
            QueueName="video-jobs",
            Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})},
        )["QueueUrl"]
        ddb.create_table(
            TableName="video-jobs",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        env = {
            **AWS_TEST_ENV,
            **FAST,
            "UPSCALER_STORAGE": "s3://",
            "UPSCALER_S3_ENDPOINT_URL": endpoint,
            "UPSCALER_DEFAULT_BUCKET": "media",
            "UPSCALER_JOB_STORE": "dynamodb:video-jobs",
            "UPSCALER_DYNAMODB_ENDPOINT_URL": endpoint,
            "UPSCALER_JOB_QUEUE": queue,
            "UPSCALER_JOB_DEAD_LETTER_QUEUE": dlq,
            "UPSCALER_SQS_ENDPOINT_URL": endpoint,
            "UPSCALER_VIDEO_WORKERS": "0",  # the API alone; the worker below is its own process, as on EKS
        }
        with api_server(tmp_path, env) as url, worker_process(tmp_path, env):
            s3.upload_file(str(clip), "media", "in/talk.mp4")
            resp = requests.post(
                url + "/storeVideo", json={"s3_key_name": "in/talk.mp4", "s3_bucket": "media"}, verify=False
            )
            down = wait_legacy(url, resp.json()[0]["data"])
            assert down["status"] == "Completed" and down["output"] == "s3://media/in/talk-downscaled.mp4"
            resp = requests.get(
                url + "/retrieveVideo", params={"s3_key": "in/talk-downscaled.mp4", "s3_bucket": "media"}, verify=False
            )
            job_id = resp.json()[0]["data"]
            up = wait_legacy(url, job_id)
            assert up["status"] == "Completed", up
            row = ddb.get_item(TableName="video-jobs", Key={"id": {"S": job_id}})["Item"]
            assert row["status"]["S"] == "Completed"
            s3.download_file("media", "in/talk-upscaled.mp4", str(tmp_path / "big.mp4"))
            n, pts, size = video_info(tmp_path / "big.mp4")
            assert (n, size, pts) == (30, (96, 64), video_info(clip)[1])
            assert packets(tmp_path / "big.mp4", "audio") == packets(clip, "audio")
            assert cues(tmp_path / "big.mp4") == cues(clip)
            assert not s3.list_objects_v2(Bucket="media", Prefix="_checkpoints/").get("Contents")

            s3.put_object(Bucket="media", Key="in/poison.mp4", Body=b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
            resp = requests.post(url + "/storeVideo", json={"s3_key_name": "in/poison.mp4"}, verify=False)
            poison = wait_legacy(url, resp.json()[0]["data"])
            assert poison["status"] == "Failed" and poison["error"]
            dead = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1)["Messages"]
            assert json.loads(dead[0]["Body"])["id"] == resp.json()[0]["data"]
            attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
            assert attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"


# ---- SIGKILL mid-job ------------------------------------------------------------------------------------------------


def test_worker_killed_mid_job_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """SIGKILL a worker mid-job: the job reads Submitted once its heartbeats stop (not Processing for the whole
    lease), another worker takes it when the lease ends and resumes it from its checkpoint, its progress never goes
    backwards, and the same submission sent again with its Idempotency-Key names the same job (issue #15)."""
    source = tmp_path / "long.mp4"
    make_clip(source, frames=64, size=(96, 64))
    env = {
        **FAST,
        "UPSCALER_VIDEO_SEGMENT_FRAMES": "4",
        "UPSCALER_VIDEO_VISIBILITY": "3",
        "UPSCALER_VIDEO_HEARTBEAT": "0.5",
        "UPSCALER_VIDEO_WORKERS": "0",
    }
    with api_server(tmp_path, env) as url:
        assert upload(url, "in/long.mp4", source).status_code == 201
        store = LocalFolderStore(tmp_path / "data" / "objects")

        def checkpoints(job_id: str) -> list[int]:
            keys = [k for k in store.list("media", f"_checkpoints/{job_id}/")]
            return [int(store.head("media", k).metadata["frames"]) for k in keys]

        def post(output: str, key: str | None = None) -> requests.Response:
            body = {"method": "upscale", "key": "in/long.mp4", "output_key": output, "max_workers": 2}
            headers = {"Idempotency-Key": key} if key else {}
            return requests.post(url + "/v1/jobs", json=body, headers=headers, verify=False, timeout=30)

        def submit(output: str) -> str:
            return post(output).json()["id"]

        def status() -> dict:
            return requests.get(f"{url}/v1/jobs/{job_id}", verify=False, timeout=10).json()

        job_id = post("out/killed.mp4", "killed-1").json()["id"]
        again = post("out/killed.mp4", "killed-1")
        assert again.status_code == 202 and again.json()["id"] == job_id  # the same job, not a second run
        clash = post("out/other.mp4", "killed-1")
        assert clash.status_code == 409 and "Idempotency-Key" in clash.json()["error"], clash.text
        seen: list[int] = []
        with worker_process(tmp_path, env) as worker:
            deadline = time.monotonic() + 60
            while len(checkpoints(job_id)) < 2 and time.monotonic() < deadline:
                seen.append(status()["frames_done"])
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
        killed_at = time.monotonic()
        saved = sum(checkpoints(job_id))
        assert 8 <= saved < 64, "killed mid-job, after two checkpoints"
        lost = status()
        while lost["status"] == "Processing" and time.monotonic() - killed_at < 10:
            seen.append(lost["frames_done"])
            lost = status()
        assert lost["status"] == "Submitted" and "its worker stopped" in lost["error"], lost
        assert time.monotonic() - killed_at < 3 * 0.5 + 2, "seen as lost within three missed heartbeats"

        with worker_process(tmp_path, env):
            job = status()
            while job["status"] not in ("Completed", "Failed") and time.monotonic() - killed_at < 120:
                seen.append(job["frames_done"])
                job = status()
            reference = wait_v1(url, submit("out/uninterrupted.mp4"))
        assert job["status"] == "Completed" and job["frames_done"] == 64 and job["attempts"] == 2
        assert seen == sorted(seen) and max(seen) > saved, seen  # progress never went backwards
        assert job["resumed_frames"] == saved  # no frame before the last checkpoint was done again
        assert reference["resumed_frames"] == 0
        killed = download(url, "out/killed.mp4", tmp_path / "killed.mp4")
        whole = download(url, "out/uninterrupted.mp4", tmp_path / "whole.mp4")
        assert killed.read_bytes() == whole.read_bytes()  # the same output as a run that was never killed
        assert checkpoints(job_id) == []
