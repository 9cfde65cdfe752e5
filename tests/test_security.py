"""API keys and backpressure: no route without a key, keys scoped to buckets/prefixes and read/write, rotation
without a restart, and 429 with Retry-After instead of piling up work."""

from __future__ import annotations

import concurrent.futures
import io
import json
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from client import UpscalerClient, UpscalerError
from tests.servers import api_server
from upscaler.auth import ANONYMOUS, KeyRing, add_key, hash_token, parse_keys
from upscaler.errors import Forbidden, Unauthorized


def _grant(bucket: str, access: list[str], prefix: str = "") -> dict:
    return {"bucket": bucket, "prefix": prefix, "access": access}


def _jpeg(side: int = 96) -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()[:side, :side]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ---- the key ring --------------------------------------------------------------------------------------------------


def test_keys_are_stored_hashed_scoped_and_rotated_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    team = add_key(path, "team-a", [_grant("a", ["read", "write"], "team/")])
    assert team.startswith("upk_") and team not in path.read_text() and hash_token(team) in path.read_text()
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    ring = KeyRing(path, reload_seconds=0)
    who = ring.authenticate(team)
    assert who.name == "team-a" and who.allows("write", "a", "team/x.jpg")
    assert not who.allows("write", "a", "other/x.jpg") and not who.allows("read", "b", "team/x.jpg")
    assert not who.allows("read", "a")  # a bucket-wide operation needs a bucket-wide grant
    with pytest.raises(Forbidden):
        who.check("read", "b", "team/x.jpg")
    for bad in (None, "", "upk_wrong", team + "x"):
        with pytest.raises(Unauthorized):
            ring.authenticate(bad)

    reader = add_key(path, "reader", [_grant("*", ["read"])])  # rotation: a new key works at once
    assert ring.authenticate(reader).allows("read", "anything", "k") and not ring.authenticate(reader).allows(
        "write", "anything", "k"
    )
    doc = json.loads(path.read_text())
    doc["keys"] = [k for k in doc["keys"] if k["name"] != "team-a"]
    path.write_text(json.dumps(doc))
    with pytest.raises(Unauthorized):
        ring.authenticate(team)  # removed from the file: refused without a restart


def test_no_keys_means_anonymous_and_bad_documents_are_refused() -> None:
    assert KeyRing().authenticate(None) is ANONYMOUS
    for text in (
        '{"keys": [{"sha256": "xyz"}]}',
        '{"keys": [{"sha256": "' + "0" * 64 + '", "grants": [{"access": ["delete"]}]}]}',
        "[1]",
    ):
        with pytest.raises(ValueError):
            parse_keys(text, "test")


# ---- the service ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("keyed")
    path = work / "keys.json"
    keys = {
        "admin": add_key(path, "admin", [_grant("*", ["read", "write"])]),
        "a": add_key(path, "team-a", [_grant("bucket-a", ["read", "write"])]),
        "reader": add_key(path, "reader", [_grant("bucket-a", ["read"])]),
        "prefix": add_key(path, "prefix", [_grant("bucket-a", ["read", "write"], "p/")]),
    }
    env = {"UPSCALER_API_KEYS_FILE": str(path), "UPSCALER_DEFAULT_BUCKET": "bucket-a"}
    with api_server(work, env) as url:
        yield url, keys, path, work / "data" / "tls" / "cert.pem"


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_route_is_reachable_without_a_key(keyed) -> None:
    url, *_ = keyed
    spec = requests.get(url + "/openapi.json", verify=False, headers=_headers(keyed[1]["admin"])).json()
    assert requests.get(url + "/openapi.json", verify=False).status_code == 401
    checked = 0
    for path, item in spec["paths"].items():
        concrete = path.replace("{key}", "x/y.jpg").replace("{id}", "0" * 32)
        for method in (m for m in item if m in ("get", "post", "put", "delete", "head")):
            resp = requests.request(method, url + concrete, verify=False, json={}, timeout=10)
            if path in ("/health", "/ready"):
                assert resp.status_code == 200, path
                continue
            assert resp.status_code == 401, (method, path, resp.status_code)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            if method != "head":
                assert "key" in resp.text
            bad = requests.request(method, url + concrete, verify=False, json={}, headers=_headers("upk_nope"))
            assert bad.status_code == 401
            checked += 1
    assert checked >= 15


def test_keys_are_held_to_their_buckets_prefixes_and_access(keyed) -> None:
    url, keys, _, cert = keyed
    img = _jpeg()
    admin = UpscalerClient(url, token=keys["admin"], ca_bundle=cert)
    admin.store(img, "b/x.jpg", "bucket-b")
    team = UpscalerClient(url, token=keys["a"], ca_bundle=cert)
    team.store(img, "a/x.jpg", "bucket-a")
    assert Image.open(io.BytesIO(team.retrieve("a/x.jpg"))).size == (96, 96)  # default bucket: bucket-a
    for call in (
        lambda: team.retrieve("b/x.jpg", "bucket-b"),
        lambda: team.store(img, "b/y.jpg", "bucket-b"),
        lambda: team.delete("b/x.jpg", "bucket-b"),
        lambda: team.metadata("b/x.jpg", "bucket-b"),
        lambda: team.request("POST", "/v1/images/a/z.jpg", json={"url": "s3://bucket-b/b/x.jpg"}),  # read via s3://
    ):
        with pytest.raises(UpscalerError) as refused:
            call()
        assert refused.value.status == 403 and "team-a" in refused.value.message

    reader = UpscalerClient(url, token=keys["reader"], ca_bundle=cert)
    assert reader.metadata("a/x.jpg")["width"] == 96
    with pytest.raises(UpscalerError) as refused:
        reader.store(img, "a/new.jpg")
    assert refused.value.status == 403
    legacy = requests.post(
        url + "/store",
        json={"image": "AAAA", "s3_key_name": "a/new.jpg"},
        headers={"X-Api-Key": keys["reader"]},
        verify=False,
    )
    assert legacy.status_code == 403 and legacy.json()[1] == 403  # the legacy body shape too

    prefixed = UpscalerClient(url, token=keys["prefix"], ca_bundle=cert)
    prefixed.store(img, "p/ok.jpg")
    with pytest.raises(UpscalerError) as refused:
        prefixed.store(img, "q/no.jpg")
    assert refused.value.status == 403
    traversal = requests.post(  # in a JSON body, where no URL normalisation removes the dots first
        url + "/store",
        json={"image": "AAAA", "s3_key_name": "p/../q/no.jpg"},
        headers=_headers(keys["prefix"]),
        verify=False,
    )
    assert traversal.status_code == 400 and "'..'" in traversal.json()[0]["error"]


def test_video_jobs_belong_to_whoever_may_use_their_video(keyed, tmp_path: Path) -> None:
    from tests.test_video_pipeline import make_clip

    url, keys, _, cert = keyed
    clip = tmp_path / "c.mp4"
    make_clip(clip, frames=4)
    admin = UpscalerClient(url, token=keys["admin"], ca_bundle=cert)
    admin.upload_video(clip, "v/c.mp4", "bucket-b")
    job = admin.store_video("v/c.mp4", "bucket-b")
    team = UpscalerClient(url, token=keys["a"], ca_bundle=cert)
    for call in (
        lambda: team.video_status(job),
        lambda: team.cancel_video(job),
        lambda: team.store_video("v/c.mp4", "bucket-b"),
    ):
        with pytest.raises(UpscalerError) as refused:
            call()
        assert refused.value.status == 403
    prefixed = UpscalerClient(url, token=keys["prefix"], ca_bundle=cert)
    prefixed.upload_video(clip, "p/c.mp4")
    with pytest.raises(UpscalerError) as refused:  # may read p/, but the output would go to q/
        prefixed.submit_job("downscale", "p/c.mp4", output_key="q/out.mp4")
    assert refused.value.status == 403
    assert admin.wait(job, poll=0.2)["status"] == "Completed"


def test_a_key_added_to_the_file_works_without_a_restart(keyed) -> None:
    url, _, path, _ = keyed
    fresh = add_key(path, "fresh", [_grant("bucket-a", ["read"])])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        resp = requests.get(url + "/v1/models", headers=_headers(fresh), verify=False)
        if resp.status_code == 200:
            break
        time.sleep(0.3)
    assert resp.status_code == 200


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    import subprocess

    from tests.servers import UPSCALER

    proc = subprocess.run(
        [str(UPSCALER), "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in __import__("os").environ.items() if not k.startswith("UPSCALER_")},
    )
    assert proc.returncode == 2 and "without API keys" in proc.stderr


# ---- backpressure --------------------------------------------------------------------------------------------------


def test_over_the_work_slots_requests_get_429_with_retry_after(tmp_path: Path) -> None:
    env = {"UPSCALER_MAX_INFLIGHT": "1", "UPSCALER_INFLIGHT_WAIT": "0.05"}
    with api_server(tmp_path, env) as url:
        cert = tmp_path / "data" / "tls" / "cert.pem"
        client = UpscalerClient(url, ca_bundle=cert, retries=0)
        client.store(_jpeg(512), "big.jpg", scale=4)  # each retrieval runs SPAN x4 for a few tenths of a second
        start = threading.Barrier(4)

        def fetch(_: int) -> requests.Response:
            with requests.Session() as session:
                session.get(url + "/health", verify=False, timeout=30)  # TLS handshake done before the race
                start.wait(timeout=30)  # then all four ask at once, as many as the server has threads
                return session.get(url + "/v1/images/big.jpg", verify=False, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(fetch, range(4)))
        codes = sorted(r.status_code for r in answers)
        assert set(codes) == {200, 429} and codes.count(200) >= 1, codes
        refused = next(r for r in answers if r.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1 and refused.json()["code"] == "busy"
        patient = UpscalerClient(url, ca_bundle=cert, retries=8)  # the SDK waits and gets through
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            assert all(len(b) > 0 for b in pool.map(lambda _: patient.retrieve("big.jpg"), range(3)))
