"""End to end: `upscaler serve` (gunicorn, TLS) on loopback, driven with `requests` exactly as the original
clients do (legacy body shape, verify=False), plus the /v1 routes; the S3 path against moto's real server."""

from __future__ import annotations

import base64
import io

import boto3
import numpy as np
import pytest
import requests
from PIL import Image, ImageCms

from tests.servers import AWS_TEST_ENV, api_server, moto_server
from upscaler import metrics

pytestmark = pytest.mark.slow


def _photo(size: tuple[int, int] = (128, 96)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()[40 : 40 + size[1], 160 : 160 + size[0]])


def _jpeg_with_icc_and_exif() -> bytes:
    img = _photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    exif[0x010F] = "TestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, icc_profile=icc, exif=exif.tobytes())
    return buf.getvalue()


def _png_rgba() -> bytes:
    img = _photo().convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, img.width, dtype=np.uint8), (img.height, 1))
    img.putalpha(Image.fromarray(alpha))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def local_api(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("api")
    env = {"UPSCALER_MAX_REQUEST_BYTES": str(2 * 1024 * 1024), "UPSCALER_MAX_SOURCE_MEGAPIXELS": "4"}
    with api_server(work, env) as url:
        yield url


# ---- the original clients ---------------------------------------------------------------------------------------


def test_legacy_client_store_and_retrieve_jpeg(local_api: str) -> None:
    original = _jpeg_with_icc_and_exif()
    # as clientFlask.py / testBenchClient.py do it
    payload = {
        "image": b64(original),
        "s3_bucket": "media",
        "s3_key_name": "photos/a.jpg",
        "endpoint": "upscaleendpoint",
        "upscaleMethod": "sageMakerRT",
    }
    resp = requests.post(local_api + "/store", json=payload, verify=False)
    assert resp.status_code == 200 and resp.json()[1] == 200, resp.text
    stored = resp.json()[0]["data"]
    assert stored["stored"]["bytes"] < len(original)

    resp = requests.get(
        local_api + "/retrieve?s3_key=photos/a.jpg&s3_bucket=media&endpoint=upscaleendpoint", verify=False
    )
    assert resp.json()[1] == 200, resp.text
    restored_bytes = base64.b64decode(resp.json()[0]["data"])
    restored = Image.open(io.BytesIO(restored_bytes))
    src = Image.open(io.BytesIO(original))
    assert restored.format == "JPEG" and restored.size == src.size and restored.mode == src.mode
    assert restored.info.get("icc_profile") == src.info.get("icc_profile")
    assert restored.getexif()[0x0112] == 6 and restored.getexif()[0x010F] == "TestCam"
    assert metrics.psnr(src, restored, crop_border=4) > 24


def test_legacy_client_png_keeps_alpha(local_api: str) -> None:
    original = _png_rgba()
    resp = requests.post(
        local_api + "/store",
        json={"image": b64(original), "s3_bucket": "media", "s3_key_name": "logo.png"},
        verify=False,
    )
    assert resp.json()[1] == 200, resp.text
    resp = requests.get(local_api + "/retrieve", params={"s3_key": "logo.png", "s3_bucket": "media"}, verify=False)
    restored = Image.open(io.BytesIO(base64.b64decode(resp.json()[0]["data"])))
    assert restored.format == "PNG" and restored.mode == "RGBA" and restored.size == (128, 96)
    alpha = np.asarray(restored)[:, :, 3].astype(float)
    expected = np.tile(np.linspace(0, 255, 128), (96, 1))
    assert np.abs(alpha - expected).mean() < 6


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"image": "!!!not base64!!!", "s3_bucket": "media", "s3_key_name": "x.png"}, 400),
        ({"s3_bucket": "media", "s3_key_name": "x.png"}, 400),
        ({"image": b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "s3_bucket": "media", "s3_key_name": "x.png"}, 422),
        ({"image": b64(b"hello, this is text"), "s3_bucket": "media", "s3_key_name": "x.png"}, 415),
        ({"image": b64(b"GIF89a"), "s3_bucket": "media", "s3_key_name": "../../etc/passwd"}, 400),
        ({"image": b64(b"GIF89a"), "s3_bucket": "Not_A_Bucket", "s3_key_name": "x.png"}, 400),
        ({"image": b64(b"GIF89a"), "s3_bucket": "media", "s3_key_name": "x.png", "scale": "huge"}, 400),
        ([1, 2, 3], 400),
    ],
)
def test_legacy_store_bad_input(local_api: str, payload: object, status: int) -> None:
    resp = requests.post(local_api + "/store", json=payload, verify=False)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body[1] == status and isinstance(body[0]["error"], str) and "Traceback" not in resp.text


def test_legacy_errors_not_json_too_large_unknown_key(local_api: str) -> None:
    resp = requests.post(
        local_api + "/store",
        data="image=abc",
        verify=False,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 415 and resp.json()[1] == 415
    resp = requests.post(
        local_api + "/store", json={"image": "A" * (3 * 1024 * 1024), "s3_key_name": "big"}, verify=False
    )
    assert resp.status_code == 413 and resp.json()[1] == 413
    resp = requests.get(local_api + "/retrieve", params={"s3_key": "nope.png", "s3_bucket": "media"}, verify=False)
    assert resp.status_code == 404 and resp.json() == [resp.json()[0], 404] and "error" in resp.json()[0]
    resp = requests.get(local_api + "/retrieve", verify=False)
    assert resp.status_code == 400


def test_decompression_bomb_refused(local_api: str) -> None:
    big = Image.new("L", (3000, 2000))  # 6 MP, over this server's 4 MP limit, tiny as PNG
    buf = io.BytesIO()
    big.save(buf, "PNG")
    resp = requests.post(
        local_api + "/store", json={"image": b64(buf.getvalue()), "s3_key_name": "bomb.png"}, verify=False
    )
    assert resp.status_code == 413, resp.text


def test_health_ready_metrics_openapi(local_api: str) -> None:
    assert requests.get(local_api + "/health", verify=False).json() == [{"status": "ok"}, 200]
    ready = requests.get(local_api + "/ready", verify=False)
    assert ready.status_code == 200 and ready.json()["provider"] == "local"
    text = requests.get(local_api + "/metrics", verify=False).text
    assert "upscaler_http_requests_total" in text
    spec = requests.get(local_api + "/openapi.json", verify=False).json()
    assert {"/store", "/retrieve", "/v1/images/{key}", "/v1/upscale"} <= set(spec["paths"])
    resp = requests.get(local_api + "/nope", verify=False)
    assert resp.status_code == 404 and resp.json()["status"] == 404
    assert resp.headers["X-Request-Id"]


# ---- /v1 --------------------------------------------------------------------------------------------------------


def test_v1_put_get_head_metadata_delete(local_api: str) -> None:
    original = _png_rgba()
    url = local_api + "/v1/images/sets/one/logo.png?bucket=media"
    resp = requests.put(url + "&scale=2", data=original, headers={"Content-Type": "image/png"}, verify=False)
    assert resp.status_code == 201, resp.text
    assert resp.json()["stored"]["scale"] == 2

    head = requests.head(url, verify=False)
    assert head.status_code == 200 and head.headers["X-Original-Size"] == "128x96"
    assert head.headers["Content-Type"] == "image/png"

    got = requests.get(url, verify=False)
    assert got.status_code == 200 and got.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(got.content)).size == (128, 96)

    webp = requests.get(url + "&format=webp", verify=False)
    assert webp.headers["Content-Type"] == "image/webp"

    meta = requests.get(local_api + "/v1/images/sets/one/logo.png/metadata?bucket=media", verify=False).json()
    assert meta["width"] == 128 and meta["format"] == "PNG"

    assert requests.delete(url, verify=False).status_code == 204
    assert requests.get(url, verify=False).status_code == 404
    assert requests.delete(url, verify=False).status_code == 404


def test_v1_bad_uploads(local_api: str) -> None:
    url = local_api + "/v1/images/x.png"
    assert requests.put(url, data=b"", headers={"Content-Type": "image/png"}, verify=False).status_code == 400
    assert requests.put(url, data=b"{}", headers={"Content-Type": "application/json"}, verify=False).status_code == 415
    assert (
        requests.put(
            url, data=b"\xff\xd8\xff" + b"\0" * 100, headers={"Content-Type": "image/jpeg"}, verify=False
        ).status_code
        == 422
    )
    assert requests.put(url + "?codec=bmp", data=_png_rgba(), verify=False).status_code == 400


def test_v1_upscale_direct_and_ssrf(local_api: str) -> None:
    buf = io.BytesIO()
    _photo((40, 30)).save(buf, "PNG")
    resp = requests.post(local_api + "/v1/upscale", json={"img": b64(buf.getvalue()), "scale": 2}, verify=False)
    assert resp.status_code == 200, resp.text
    out = Image.open(io.BytesIO(base64.b64decode(resp.json()["result"])))
    assert out.size == (80, 60) and out.format == "PNG"
    for target in [
        "http://127.0.0.1:1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/x",
        "file:///etc/passwd",
    ]:
        resp = requests.post(local_api + "/v1/upscale", json={"url": target}, verify=False)
        assert resp.status_code in (400, 403), (target, resp.text)


# ---- S3 through moto's server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_api(tmp_path_factory: pytest.TempPathFactory):
    with moto_server() as endpoint:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            **{"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"},
        )
        s3.create_bucket(Bucket="allowed-bucket")
        s3.create_bucket(Bucket="other-bucket")
        env = {
            **AWS_TEST_ENV,
            "UPSCALER_STORAGE": "s3://",
            "UPSCALER_S3_ENDPOINT_URL": endpoint,
            "UPSCALER_ALLOWED_BUCKETS": "allowed-bucket",
            "UPSCALER_DEFAULT_BUCKET": "allowed-bucket",
        }
        with api_server(tmp_path_factory.mktemp("s3api"), env) as url:
            yield url, s3


def test_s3_store_and_retrieve(s3_api) -> None:
    url, s3 = s3_api
    original = _jpeg_with_icc_and_exif()
    resp = requests.post(
        url + "/store",
        json={"image": b64(original), "s3_bucket": "allowed-bucket", "s3_key_name": "in/a.jpg"},
        verify=False,
    )
    assert resp.json()[1] == 200, resp.text
    head = s3.head_object(Bucket="allowed-bucket", Key="in/a.jpg")
    assert head["ContentLength"] < len(original)
    resp = requests.get(url + "/retrieve", params={"s3_key": "in/a.jpg", "s3_bucket": "allowed-bucket"}, verify=False)
    restored = Image.open(io.BytesIO(base64.b64decode(resp.json()[0]["data"])))
    assert restored.size == (128, 96) and restored.format == "JPEG"


def test_s3_bucket_allow_list(s3_api) -> None:
    url, s3 = s3_api
    assert requests.get(url + "/ready", verify=False).status_code == 200  # HeadBucket on the allowed bucket
    resp = requests.post(
        url + "/store",
        json={"image": b64(_png_rgba()), "s3_bucket": "other-bucket", "s3_key_name": "x.png"},
        verify=False,
    )
    assert resp.status_code == 403 and resp.json()[1] == 403
    assert "Contents" not in s3.list_objects_v2(Bucket="other-bucket")


def test_store_with_a_quality_target_over_http(local_api: str) -> None:
    original = _jpeg_with_icc_and_exif()
    resp = requests.post(
        local_api + "/store",
        json={"image": b64(original), "s3_key_name": "target/a.jpg", "target": 34},
        verify=False,
    )
    assert resp.status_code == 200, resp.text
    decision = resp.json()[0]["data"]["decision"]
    assert decision["target"] == "psnr>=34" and decision["bytes"] <= len(original)
    back = requests.get(local_api + "/retrieve", params={"s3_key": "target/a.jpg"}, verify=False).json()[0]["data"]
    restored = Image.open(io.BytesIO(base64.b64decode(back)))
    assert metrics.psnr(Image.open(io.BytesIO(original)), restored) >= 34
    put = requests.put(
        local_api + "/v1/images/target/b.jpg",
        params={"target": "ssim:0.9"},
        data=original,
        headers={"Content-Type": "image/jpeg"},
        verify=False,
    )
    assert put.status_code == 201 and put.json()["decision"]["target"] == "ssim>=0.9"
    bad = requests.put(local_api + "/v1/images/target/c.jpg", params={"target": "loud"}, data=original, verify=False)
    assert bad.status_code == 400
