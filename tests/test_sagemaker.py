"""The SageMaker path against a real server: our model server on loopback, called through boto3's
sagemaker-runtime client (signing, headers, body) by SagemakerRTUpscaleProvider."""

from __future__ import annotations

import base64
import io
import json
import os

import boto3
import numpy as np
import pytest
import requests
from PIL import Image

from tests.servers import AWS_TEST_ENV, api_server, model_server, moto_server
from upscaler import metrics
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.errors import Forbidden, Unavailable, UpscalerError
from upscaler.providers import open_provider
from upscaler.providers.sagemaker import SagemakerRTUpscaleProvider

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def aws_env():
    old = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def endpoint_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    with model_server(tmp_path_factory.mktemp("model")) as url:
        yield url


@pytest.fixture(scope="module")
def throttling_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    with model_server(tmp_path_factory.mktemp("model-throttle"), {"UPSCALER_MODEL_SERVER_THROTTLE_EVERY": "2"}) as url:
        yield url


def _provider(url: str, **settings) -> SagemakerRTUpscaleProvider:
    cfg = Settings.from_env({}, sagemaker_endpoint_url=url, ncnn_threads=2, **settings)
    return SagemakerRTUpscaleProvider(cfg, "upscaler-span")


def _photo(size=(96, 64)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()[100 : 100 + size[1], 150 : 150 + size[0]])


def test_raw_dialect_matches_the_local_engine(endpoint_url: str) -> None:
    img = _photo()
    remote = _provider(endpoint_url).upscale(img, size=(384, 256), model="span")
    local = Engine(Settings.from_env({}, ncnn_threads=2)).upscale(img, model="span", size=(384, 256))
    assert remote.size == (384, 256)
    assert metrics.psnr(local, remote, y_channel=False) >= 50


def test_alpha_is_kept(endpoint_url: str) -> None:
    img = _photo().convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1))
    img.putalpha(Image.fromarray(alpha))
    out = _provider(endpoint_url).upscale(img, size=(192, 128))
    assert out.mode == "RGBA"
    assert np.abs(np.asarray(out)[:, :, 3].astype(float) - np.tile(np.linspace(0, 255, 192), (128, 1))).mean() < 4


def test_over_six_mib_goes_through_tiles_to_the_exact_size(endpoint_url: str) -> None:
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (1300, 1300, 4), dtype=np.uint8))  # PNG > 6 MiB
    buf = io.BytesIO()
    noise.save(buf, "PNG", compress_level=1)
    assert len(buf.getvalue()) > 6 * 1024 * 1024
    provider = _provider(endpoint_url)
    out = provider.upscale(noise, size=(2601, 2599), model="bicubic")
    assert out.size == (2601, 2599) and out.mode == "RGBA"
    assert provider.calls >= 4  # several tiles
    reference = noise.resize((2601, 2599), Image.Resampling.BICUBIC)
    assert metrics.psnr(reference, out, crop_border=8, y_channel=False) > 25


def test_throttling_is_retried(throttling_url: str) -> None:
    provider = _provider(throttling_url)
    out = provider.upscale(_photo(), size=(192, 128), model="bicubic")
    out2 = provider.upscale(_photo(), size=(192, 128), model="bicubic")
    assert out.size == out2.size == (192, 128)
    assert provider.calls >= 3  # every second call was throttled and retried


def test_deadline_turns_persistent_failure_into_503() -> None:
    provider = _provider("http://127.0.0.1:9", sagemaker_deadline=1.0)
    with pytest.raises(Unavailable):
        provider.upscale(_photo(), size=(192, 128))


def test_endpoint_allow_list(endpoint_url: str) -> None:
    with pytest.raises(Forbidden):
        _provider(endpoint_url).upscale(_photo(), size=(192, 128), endpoint="someone-elses-endpoint")
    allowed = _provider(endpoint_url, allowed_endpoints=("second",))
    assert allowed.upscale(_photo(), size=(192, 128), endpoint="second", model="bicubic").size == (192, 128)


def test_json_dialect_like_jumpstart(endpoint_url: str) -> None:
    runtime = boto3.client("sagemaker-runtime", endpoint_url=endpoint_url)
    buf = io.BytesIO()
    _photo().save(buf, "JPEG")
    resp = runtime.invoke_endpoint(
        EndpointName="upscaler-span",
        ContentType="application/json;jpeg",
        Accept="application/json;jpeg",
        Body=json.dumps({"prompt": "", "image": base64.b64encode(buf.getvalue()).decode()}),
        CustomAttributes="scale=2",
    )
    body = json.loads(resp["Body"].read())
    out = Image.open(io.BytesIO(base64.b64decode(body["generated_images"][0])))
    assert out.format == "JPEG" and out.size == (192, 128)
    # the provider's JumpStart dialect talks to the same shape (x4, tiles of the configured size)
    sd = SagemakerRTUpscaleProvider(
        Settings.from_env({}, sagemaker_endpoint_url=endpoint_url, sagemaker_sd_tile=48),
        "upscaler-span",
        dialect="jumpstart-sd-x4",
    )
    assert sd.upscale(_photo(), size=(384, 256)).size == (384, 256)
    # per endpoint: a JumpStart endpoint in the list is spoken to in its dialect, others as our container
    mixed = SagemakerRTUpscaleProvider(
        Settings.from_env(
            {},
            sagemaker_endpoint_url=endpoint_url,
            sagemaker_jumpstart_endpoints=("sd-x4",),
            allowed_endpoints=("sd-x4",),
            sagemaker_sd_tile=48,
        ),
        "upscaler-span",
    )
    assert mixed.dialect_for("sd-x4") == "jumpstart-sd-x4" and mixed.dialect_for("upscaler-span") == "byoc"
    calls = mixed.calls
    assert mixed.upscale(_photo(), size=(384, 256), endpoint="sd-x4").size == (384, 256)
    assert mixed.calls - calls > 1  # tiled at 48 px, as the JumpStart dialect does


def test_bad_payloads_are_4xx(endpoint_url: str) -> None:
    url = endpoint_url + "/invocations"
    truncated = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    assert requests.post(url, data=truncated, headers={"Content-Type": "image/png"}).status_code == 422
    assert requests.post(url, data=b"garbage", headers={"Content-Type": "image/png"}).status_code == 415
    assert requests.post(url, data=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert requests.post(url, data=b"", headers={"Content-Type": "image/png"}).status_code == 400
    assert requests.post(url, data=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    png = io.BytesIO()
    _photo().save(png, "PNG")
    bad_attrs = {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "tile=1"}
    assert requests.post(url, data=png.getvalue(), headers=bad_attrs).status_code == 400
    unknown = {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "model=nope"}
    resp = requests.post(url, data=png.getvalue(), headers=unknown)
    assert resp.status_code == 400 and "unknown model" in resp.json()["error"]
    assert requests.get(endpoint_url + "/ping").status_code == 200
    # through boto3 the runtime path answers ModelError, which the provider reports as the model's refusal
    provider = _provider(endpoint_url)
    with pytest.raises(UpscalerError) as info:
        provider._invoke("upscaler-span", b"garbage", "image/png", "image/png", "", deadline=1e12)
    assert info.value.status < 500


def test_image_service_through_sagemaker_gives_the_local_pixels(endpoint_url: str, tmp_path) -> None:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.coffee()[:160, :200]).save(buf, "PNG")
    payload = {"image": base64.b64encode(buf.getvalue()).decode(), "s3_bucket": "media", "s3_key_name": "c.png"}
    results = []
    for name, env in (
        ("local", {}),
        (
            "sagemaker",
            {"UPSCALER_UPSCALER": "sagemaker:upscaler-span", "UPSCALER_SAGEMAKER_ENDPOINT_URL": endpoint_url},
        ),
    ):
        work = tmp_path / name
        work.mkdir()
        with api_server(work, {**AWS_TEST_ENV, **env}) as url:
            assert requests.post(url + "/store", json=payload, verify=False).json()[1] == 200
            resp = requests.get(
                url + "/retrieve",
                params={"s3_key": "c.png", "s3_bucket": "media", "endpoint": "upscaler-span"},
                verify=False,
            )
            assert resp.json()[1] == 200, resp.text
            results.append(Image.open(io.BytesIO(base64.b64decode(resp.json()[0]["data"]))))
    assert results[0].size == results[1].size == (200, 160)
    assert metrics.psnr(results[0], results[1], y_channel=False) >= 50


def test_open_provider() -> None:
    provider = open_provider(Settings.from_env({}, upscaler="sagemaker:my-endpoint"))
    assert isinstance(provider, SagemakerRTUpscaleProvider) and provider.endpoint == "my-endpoint"
    with pytest.raises(ValueError):
        open_provider(Settings.from_env({}, upscaler="sagemaker:"))
    with pytest.raises(ValueError):
        open_provider(Settings.from_env({}, upscaler="gpu-farm"))


def test_deploy_against_moto_control_plane() -> None:
    from plugins.esrgan_sagemaker.deploy import deploy

    with moto_server() as url:
        client = boto3.client("sagemaker", endpoint_url=url)
        kwargs = {
            "name": "upscaler-span",
            "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/m:1",
            "role_arn": "arn:aws:iam::123456789012:role/sm",
            "instance_type": "ml.g4dn.xlarge",
        }
        first = deploy(client, **kwargs)
        assert first["action"] == "created"
        endpoint = client.describe_endpoint(EndpointName="upscaler-span")
        config = client.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        assert config["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"
        model = client.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
        assert model["PrimaryContainer"]["Image"].endswith("/m:1")
        second = deploy(client, **{**kwargs, "name": "upscaler-async"}, async_output="s3://b/async/")
        cfg2 = client.describe_endpoint_config(EndpointConfigName=second["endpoint_config"])
        assert cfg2["AsyncInferenceConfig"]["OutputConfig"]["S3OutputPath"] == "s3://b/async/"


def test_model_server_stops_cleanly_on_sigterm(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.servers import free_port, wait_ready

    port = free_port()
    exe = Path(sys.executable).with_name("upscaler-model-server")
    proc = subprocess.Popen(
        [str(exe), "serve", "--bind", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", proc=proc)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=25) == 0  # SageMaker sends SIGKILL 30 s after SIGTERM
        assert time.monotonic() - start < 25
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_video_upscale_job_fans_frames_out_to_the_endpoint(endpoint_url: str, tmp_path) -> None:
    """The video worker with the SageMaker provider: frames go to the endpoint max_workers at a time."""
    from tests.test_video_pipeline import make_clip, packets, video_info
    from upscaler.jobs import COMPLETED, Job, SqliteJobStore, SqliteQueue, submit
    from upscaler.store.local import LocalFolderStore
    from video_upscaler.worker import VideoWorker

    provider = _provider(endpoint_url)
    settings = provider.settings.replace(video_segment_frames=4)
    store = LocalFolderStore(tmp_path / "objects")
    jobs, queue = SqliteJobStore(tmp_path / "jobs.db"), SqliteQueue(tmp_path / "queue.db")
    worker = VideoWorker(
        store=store, jobs=jobs, queue=queue, provider=provider, engine=Engine(settings), settings=settings
    )
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=10, size=(48, 32))
    store.put_file(
        "media",
        "small.mp4",
        clip,
        metadata={"original-width": "190", "original-height": "126"},
        content_type="video/mp4",
    )
    job = submit(
        jobs, queue, Job(method="upscale", video="s3://media/small.mp4", endpoint="upscaler-span", max_workers=3)
    )
    worker.handle(queue.receive(wait_seconds=1))
    assert jobs.get(job.id).status == COMPLETED
    out = tmp_path / "out.mp4"
    store.get_file("media", "small-upscaled.mp4", out)
    assert video_info(out)[0] == 10 and video_info(out)[2] == (190, 126)
    assert packets(out, "audio") == packets(clip, "audio")
