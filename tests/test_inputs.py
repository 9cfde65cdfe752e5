"""Careless and hostile inputs against the real `upscaler serve` (issue #15, defects 5, 6, 11, 12, 13, 14): each
gets a JSON 400 (never a 500, a redirect, or another key), and headers that name keys are percent-encoded."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from flask import Flask
from PIL import Image

from api.responses import install_redactor, job_answer, path_pattern
from tests.servers import UPSCALER, api_server, free_port
from upscaler.config import Settings
from upscaler.store.local import LocalFolderStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The real server's URL and its working folder (its local store is ``data/objects`` there)."""
    work = tmp_path_factory.mktemp("inputs")
    with api_server(work, {"UPSCALER_VIDEO_WORKERS": "0"}) as url:
        yield url, work


@pytest.fixture(scope="module")
def api(served: tuple[str, Path]) -> str:
    return served[0]


@pytest.fixture(scope="module")
def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def _is_json_400(resp: requests.Response) -> bool:
    body = resp.json()
    message = body[0]["error"] if isinstance(body, list) else body["error"]
    return resp.status_code == 400 and "application/json" in resp.headers["Content-Type"] and bool(message)


JSON_ROUTES = [("POST", "/store"), ("POST", "/v1/images/deep.png"), ("POST", "/v1/upscale"), ("POST", "/storeVideo")]
JSON_ROUTES += [("POST", "/v1/jobs")]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_deeply_nested_json_is_400(api: str, method: str, path: str) -> None:
    """Defect 5: ~1000 levels made a RecursionError (500); 40 levels is already far past any request's shape."""
    for depth in (40, 1000, 100_000):
        body = "[" * depth + "]" * depth
        resp = requests.request(
            method, api + path, data=body, headers={"Content-Type": "application/json"}, verify=False, timeout=30
        )
        assert _is_json_400(resp), (depth, resp.status_code, resp.text[:200])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/store", {"image": "aGk=", "s3_key_name": "n.png", "scale": 10**400}),
        ("/store", {"image": "aGk=", "s3_key_name": "n.png", "quality": -(10**309)}),
        ("/v1/upscale", {"img": "aGk=", "scale": 10**309}),
        ("/storeVideo", {"s3_key_name": "v.mp4", "min_size": 10**309}),
        ("/v1/jobs", {"method": "upscale", "key": "v.mp4", "max_workers": 10**309}),
    ],
)
def test_huge_integers_are_400(api: str, path: str, body: dict) -> None:
    """Defect 6: an integer past float's range made an OverflowError (500)."""
    resp = requests.post(api + path, json=body, verify=False, timeout=30)
    assert _is_json_400(resp), resp.text[:300]
    assert "between" in resp.text or "must be" in resp.text


def test_location_is_percent_encoded(api: str, png: bytes) -> None:
    """Defect 12: ``a%3Fb.png`` came back as ``Location: /v1/images/loc/a?b.png?bucket=media``."""
    put = requests.put(api + "/v1/images/loc/a%3Fb%20c.png?bucket=media", data=png, verify=False, timeout=60)
    assert put.status_code == 201, put.text
    assert put.headers["Location"] == "/v1/images/loc/a%3Fb%20c.png?bucket=media"
    back = requests.get(api + put.headers["Location"], params={"model": "bicubic"}, verify=False, timeout=60)
    assert back.status_code == 200 and Image.open(io.BytesIO(back.content)).size == (16, 12)
    assert put.json()["s3_key"] == "loc/a?b c.png"


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
def test_double_slashes_are_refused_not_redirected(api: str, png: bytes, method: str) -> None:
    """Defect 13: ``//`` got an HTML 308 to another key (``/v1/images//etc/passwd`` -> ``/v1/images/etc/passwd``)."""
    for path in ("/v1/images//etc/passwd", "/v1/images/a//b.png"):
        resp = requests.request(method, api + path, data=png, verify=False, timeout=30, allow_redirects=False)
        assert _is_json_400(resp), (path, resp.status_code, resp.text[:200])


def test_invalid_utf8_in_a_key_is_refused(api: str, png: bytes) -> None:
    """Defect 14: ``%ff`` and ``%fe`` both became U+FFFD, so two different keys hit one object."""
    assert _is_json_400(requests.put(api + "/v1/images/%ff", data=png, verify=False, timeout=30))
    assert _is_json_400(requests.get(api + "/v1/images/%fe", verify=False, timeout=30))
    legacy = requests.get(api + "/retrieve?s3_key=%ff.png", verify=False, timeout=30)
    assert _is_json_400(legacy) and legacy.json()[1] == 400  # the legacy shape
    ok = requests.put(api + "/v1/images/caf%C3%A9.png", data=png, verify=False, timeout=60)
    assert ok.status_code == 201 and ok.json()["s3_key"] == "café.png"  # valid UTF-8 still works


def test_keys_that_need_normalising_are_refused(api: str, png: bytes) -> None:
    """'café.png' composed (NFC) and decomposed (NFD, 'e' + U+0301, as macOS names files) are one name to a person
    but two objects to S3 and one file on APFS: the decomposed form is refused (JSON 400 naming the NFC form) on
    every route that takes a key, so neither a second object nor a silent collision can happen."""
    nfd = "cafe\u0301.png"
    put = requests.put(api + "/v1/images/" + quote(nfd), data=png, verify=False, timeout=30)
    assert _is_json_400(put) and "NFC" in put.json()["error"] and "café.png" in put.json()["error"], put.text
    assert _is_json_400(requests.get(api + "/v1/images/" + quote(nfd), verify=False, timeout=30))
    legacy = requests.post(
        api + "/store", json={"image": base64.b64encode(png).decode(), "s3_key_name": nfd}, verify=False, timeout=30
    )
    assert _is_json_400(legacy) and legacy.json()[1] == 400 and "NFC" in legacy.json()[0]["error"]
    retrieve = requests.get(api + "/retrieve", params={"s3_key": nfd}, verify=False, timeout=30)
    assert _is_json_400(retrieve) and "NFC" in retrieve.json()[0]["error"]
    job = requests.post(api + "/v1/jobs", json={"method": "downscale", "key": nfd}, verify=False, timeout=30)
    assert _is_json_400(job) and "NFC" in job.json()["error"], job.text
    ok = requests.put(api + "/v1/images/" + quote("caf\u00e9.png"), data=png, verify=False, timeout=60)
    assert ok.status_code == 201 and ok.json()["s3_key"] == "café.png"  # the composed name is stored as given
    assert _is_json_400(requests.get(api + "/v1/images/" + quote(nfd) + "/metadata", verify=False, timeout=30))


def test_no_server_path_in_any_answer(api: str, tmp_path: Path) -> None:
    """Smaller defect: a video that cannot be read answered with FFmpeg's message, which quotes the upload's
    scratch file ('/tmp/upload-…/video'). Answers name what went wrong, never where the server keeps files."""
    junk = b"definitely not a video" * 50
    resp = requests.put(api + "/v1/videos/x/junk.mp4", data=junk, verify=False, timeout=30)
    assert resp.status_code == 422 and "video cannot be read" in resp.json()["error"], resp.text
    for place in ("/tmp", "upload-", tempfile.gettempdir(), os.getcwd(), str(tmp_path.parent)):
        assert place not in resp.text, (place, resp.text)
    legacy = requests.post(api + "/storeVideo", json={"s3_key_name": "x/missing.mp4"}, verify=False, timeout=30)
    assert legacy.status_code == 404 and "/tmp" not in legacy.text and str(tmp_path.parent) not in legacy.text


def test_server_paths_are_redacted_and_keys_are_not() -> None:
    """What the answers' redaction replaces: absolute paths under the server's folders and the system's, not keys
    or URL paths that a message quotes."""
    pattern = path_pattern(["/srv/app/data", "/work/x"])
    cases = {
        "video cannot be read: 'Invalid data' '/tmp/upload-1/video'": "video cannot be read: 'Invalid data' '<p>'",
        "job store /srv/app/data/jobs.db unusable": "job store <p> unusable",
        "local store at /work/x/objects is not writable": "local store at <p> is not writable",
        "no image at 'photos/tmp/a.png'": "no image at 'photos/tmp/a.png'",
        "…/metadata is read-only (GET)": "…/metadata is read-only (GET)",
        "source URL https://host/tmp/a.png answered 404": "source URL https://host/tmp/a.png answered 404",
        "the path has an empty segment ('//')": "the path has an empty segment ('//')",
        "/work/xy is fine, /work/x/y is not": "/work/xy is fine, <p> is not",
    }
    for message, expected in cases.items():
        assert pattern.sub("<p>", message) == expected, message
    app = Flask(__name__)
    install_redactor(app, Settings.from_env({}, storage="/srv/app/data/objects", video_scratch="/scratch/v"))
    with app.app_context():  # a worker's reason for a failed job is redacted where the API shows the job
        job = job_answer({"id": "j", "error": "cannot decode /scratch/v/job-1/in.mp4: EOF", "status": "Failed"})
        assert job == {"id": "j", "error": "cannot decode <server path>: EOF", "status": "Failed"}


def test_an_s3_source_naming_a_stored_object_is_restored_first(served: tuple[str, Path]) -> None:
    """Smaller defect: ``{"url": "s3://media/<key this service stored>"}`` read the stored (downscaled AVIF) bytes
    as if they were an original, so the copy was a quarter of the size. It is restored first, as GET gives it."""
    api, work = served
    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((64, 48)).save(buf, "PNG")
    assert (
        requests.put(api + "/v1/images/src/orig.png", data=buf.getvalue(), verify=False, timeout=60).status_code == 201
    )
    body = {"url": "s3://media/src/orig.png", "model": "bicubic"}
    copy = requests.post(api + "/v1/images/src/copy.png", json=body, verify=False, timeout=60)
    assert copy.status_code == 201, copy.text
    assert (copy.json()["original"]["width"], copy.json()["original"]["height"]) == (64, 48), copy.json()
    assert copy.json()["original"]["format"] == "PNG"
    up = requests.post(api + "/v1/upscale", json={**body, "scale": 2}, verify=False, timeout=60)
    assert up.status_code == 200 and (up.json()["width"], up.json()["height"]) == (128, 96), up.text
    # an object of the service whose record cannot be read: a clear 409, never its stored bytes as a source
    store = LocalFolderStore(work / "data" / "objects")
    store.put("media", "src/broken.png", buf.getvalue(), metadata={"record_version": "2"}, content_type="image/png")
    broken = requests.post(
        api + "/v1/images/src/copy2.png", json={"url": "s3://media/src/broken.png"}, verify=False, timeout=60
    )
    assert broken.status_code == 409 and "record cannot be read" in broken.json()["error"], broken.text
    store.put("media", "src/plain.png", buf.getvalue(), metadata={}, content_type="image/png")
    plain = {"url": "s3://media/src/plain.png", "model": "bicubic", "scale": 2}
    foreign = requests.post(api + "/v1/upscale", json=plain, verify=False, timeout=60)
    assert foreign.status_code == 200 and foreign.json()["width"] == 128, foreign.text  # no record: an original


def _serve_public(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str] | None:
    """`upscaler serve --host 0.0.0.0`; None when it started serving (stopped after a few seconds)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_")}
    argv = [str(UPSCALER), "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env={**clean, "UPSCALER_VIDEO_WORKERS": "0", **env},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    return subprocess.CompletedProcess(argv, proc.returncode, "", err)


def test_a_multi_page_tiff_is_refused_not_cut_to_its_first_page(api: str) -> None:
    """Defect 15: a two-page TIFF was stored as its first page (201), while an animated GIF got 415."""
    pages = [Image.new("RGB", (16, 12), colour) for colour in ((200, 0, 0), (0, 0, 200))]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    resp = requests.put(api + "/v1/images/pages.tiff", data=buf.getvalue(), verify=False, timeout=60)
    assert resp.status_code == 415 and "2 pages" in resp.json()["error"], resp.text
    one = io.BytesIO()
    pages[0].save(one, "TIFF")
    assert requests.put(api + "/v1/images/page.tiff", data=one.getvalue(), verify=False, timeout=60).status_code == 201


@pytest.mark.parametrize("document", ['{"keys": []}', " ", "[]"])
def test_an_empty_key_document_counts_as_no_keys(document: str, tmp_path: Path) -> None:
    """Defect 11: with any of these, `--host 0.0.0.0` served everyone while the log said "loopback only"."""
    inline = _serve_public(tmp_path, {"UPSCALER_API_KEYS": document})
    assert inline is not None, "it served on 0.0.0.0"
    assert inline.returncode == 2 and "refusing to serve on 0.0.0.0 without API keys" in inline.stderr
    keys = tmp_path / "keys.json"
    keys.write_text(document)
    in_file = _serve_public(tmp_path, {"UPSCALER_API_KEYS_FILE": str(keys)})
    assert in_file is not None and in_file.returncode == 2, "it served on 0.0.0.0"
