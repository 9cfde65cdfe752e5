"""What a new user meets in the first hour (issue #20), against the real `upscaler serve` on loopback with TLS: one
default bucket for both route families, the CLI's TLS advice and the local certificate found by itself, no
BrokenPipeError on `| head`, nothing written under $HOME, HEAD without a made-up length, the model named in the
store answer, a readable 413 for a body far over the limit, and no empty folders left by deleted keys."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from client import UpscalerClient, UpscalerError
from client.cli import main as client_cli
from tests.servers import api_server
from upscaler.console import BROKEN_PIPE_EXIT
from upscaler.store.local import LocalFolderStore

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@dataclass
class Served:
    url: str  # https://localhost:<port>: the certificate names it, so TLS verifies
    loopback: str  # https://127.0.0.1:<port>
    work: Path  # the folder `upscaler serve` runs in
    home: Path  # its $HOME
    cert: Path

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, verify=str(self.cert), timeout=60, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work, home = tmp_path_factory.mktemp("first-hour"), tmp_path_factory.mktemp("home")
    env = {"HOME": str(home), "UPSCALER_VIDEO_WORKERS": "0", "UPSCALER_MAX_REQUEST_BYTES": str(8 * 1024 * 1024)}
    with api_server(work, env) as url:
        yield Served(url.replace("127.0.0.1", "localhost"), url, work, home, work / "data" / "tls" / "cert.pem")


@pytest.fixture(scope="module")
def png() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()[40:104, 160:224]).save(buf, "PNG")
    return buf.getvalue()


def test_one_default_bucket_for_both_route_families(served: Served, png: bytes) -> None:
    """Item 1: /v1 without ?bucket= and the legacy routes without s3_bucket use the same bucket, the README's."""
    put = requests.put(served.url + "/v1/images/photos/one.png", data=png, verify=str(served.cert), timeout=60)
    assert put.status_code == 201 and put.json()["s3_bucket"] == "media", put.text
    legacy = served.get("/retrieve", params={"s3_key": "photos/one.png", "s3_bucket": "media"})
    assert legacy.status_code == 200 and legacy.json()[1] == 200
    assert served.get("/retrieve", params={"s3_key": "photos/one.png"}).status_code == 200
    gone = requests.delete(served.url + "/v1/images/photos/one.png", verify=str(served.cert), timeout=60)
    assert gone.status_code == 204
    assert served.get("/retrieve", params={"s3_key": "photos/one.png", "s3_bucket": "media"}).status_code == 404
    assert "default bucket: media" in (served.work / "server.log").read_text()


def test_store_answer_names_the_model_a_retrieval_uses(served: Served, png: bytes) -> None:
    """Item 8: not ``"model": ""``."""
    body = {"image": base64.b64encode(png).decode(), "s3_key_name": "photos/model.png"}
    stored = requests.post(served.url + "/store", json=body, verify=str(served.cert), timeout=60)
    assert stored.json()[0]["data"]["model"] == "span", stored.text
    put = requests.put(
        served.url + "/v1/images/photos/model.png", params={"model": "bicubic"}, data=png, verify=str(served.cert)
    )
    assert put.json()["model"] == "bicubic"


def test_head_sends_what_get_would_without_a_made_up_length(served: Served, png: bytes) -> None:
    """Item 5: type, sizes and the output size from the record; no ``Content-Length: 0``."""
    key = "/v1/images/photos/head.png"
    assert requests.put(served.url + key, params={"scale": 2}, data=png, verify=str(served.cert)).status_code == 201
    head = requests.head(served.url + key, verify=str(served.cert), timeout=60)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Type"] == "image/png"
    assert "Content-Length" not in head.headers  # only known once the restored image is encoded
    assert head.headers["X-Original-Size"] == head.headers["X-Output-Size"] == "64x64"
    assert head.headers["X-Stored-Size"] == "32x32"
    webp = requests.head(served.url + key, params={"format": "webp", "scale": 3}, verify=str(served.cert))
    assert webp.headers["Content-Type"] == "image/webp" and webp.headers["X-Output-Size"] == "96x96"
    get = requests.get(served.url + key, params={"format": "webp", "scale": 3}, verify=str(served.cert))
    assert get.headers["Content-Type"] == "image/webp" and Image.open(io.BytesIO(get.content)).size == (96, 96)
    bad = requests.head(served.url + key, params={"format": "bmpx"}, verify=str(served.cert))
    assert bad.status_code == 400


def test_cli_tls_error_names_its_flags_and_finds_the_local_certificate(
    served: Served, png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 2: the advice names --ca-bundle and --insecure (not the SDK's arguments); run in the service's folder
    against a loopback URL, the CLI trusts data/tls/cert.pem by itself."""
    monkeypatch.delenv("UPSCALER_CA_BUNDLE", raising=False)
    (tmp_path / "photo.png").write_bytes(png)
    monkeypatch.chdir(tmp_path)  # no data/tls here
    assert client_cli(["--url", served.loopback, "store", "photo.png", "--key", "cli/tls.png"]) == 2
    err = capsys.readouterr().err
    assert "--ca-bundle" in err and "--insecure" in err and "data/tls/cert.pem" in err
    assert "insecure=True" not in err and "Traceback" not in err
    monkeypatch.chdir(served.work)
    assert client_cli(["--url", served.loopback, "store", str(tmp_path / "photo.png"), "--key", "cli/tls.png"]) == 0
    assert '"s3_key": "cli/tls.png"' in capsys.readouterr().out


def _closed_pipe_run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with its stdout a pipe whose reader has already gone (what `| head` does once it has its lines)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, cwd=cwd, timeout=120, check=False)
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "argv",
    [
        ["upscaler-client", "--url", "{loopback}", "metadata", "pipe.png"],
        ["upscaler", "models"],
        ["upscaler-client", "video", "status", "--url"],  # argparse's own error message
    ],
    ids=["client-metadata", "upscaler-models", "client-usage-error"],
)
def test_no_broken_pipe_traceback(served: Served, png: bytes, argv: list[str]) -> None:
    """Item 3: `... | head` ends the command quietly, with the status a Unix tool killed by SIGPIPE gives."""
    assert requests.put(served.url + "/v1/images/pipe.png", data=png, verify=str(served.cert)).status_code == 201
    argv = [str(BIN / argv[0]), *(a.format(loopback=served.loopback) for a in argv[1:])]
    done = _closed_pipe_run(argv, served.work)
    assert done.returncode == (2 if argv[-1] == "--url" else BROKEN_PIPE_EXIT), done.stderr.decode()
    assert b"Traceback" not in done.stderr and b"BrokenPipeError" not in done.stderr, done.stderr.decode()


def test_nothing_written_under_home(served: Served) -> None:
    """Item 4: no gunicorn control socket (or anything else) in $HOME for a plain `upscaler serve`."""
    assert served.get("/health").status_code == 200
    assert sorted(p.name for p in served.home.rglob("*")) == []
    assert "Control socket" not in (served.work / "server.log").read_text()


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


BIG = 300 * 1024 * 1024


def test_a_300_mb_body_gets_a_readable_413(served: Served, tmp_path: Path) -> None:
    """Item 7: Python `requests`, curl and the SDK all send the whole body before reading; each reads the 413."""
    body = _sparse(tmp_path / "big.bin", BIG)
    with body.open("rb") as fh:  # streamed from the file, with its Content-Length
        resp = requests.put(served.url + "/v1/images/big.png", data=fh, verify=str(served.cert), timeout=120)
    assert resp.status_code == 413 and resp.json()["code"] == "too_large", resp.text
    curl = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(served.cert),
            "-T",
            str(body),
            "-w",
            "\n%{http_code}",
            served.url + "/v1/images/big.png",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    text = curl.stdout.decode()
    assert curl.returncode == 0 and text.endswith("\n413") and '"too_large"' in text, curl.stderr.decode()
    with pytest.raises(UpscalerError) as refused:
        UpscalerClient(served.url, ca_bundle=served.cert, retries=0).store(body.read_bytes(), "big.png")
    assert refused.value.status == 413 and refused.value.code == "too_large"


def test_deleting_a_key_removes_the_folders_it_leaves_empty(tmp_path: Path) -> None:
    """Item 6: a finished job's `_checkpoints/<job>/` folder goes with its last segment; the bucket stays."""
    store = LocalFolderStore(tmp_path)
    for key in ("_checkpoints/job-1/000000.mp4", "_checkpoints/job-1/000001.mp4", "_checkpoints/job-2/000000.mp4"):
        store.put("media", key, b"segment", metadata={}, content_type="video/mp4")
    store.delete("media", "_checkpoints/job-1/000000.mp4")
    assert (tmp_path / "media" / "_checkpoints" / "job-1").is_dir()  # one segment left in it
    store.delete("media", "_checkpoints/job-1/000001.mp4")
    assert not (tmp_path / "media" / "_checkpoints" / "job-1").exists()
    store.delete("media", "_checkpoints/job-2/000000.mp4")
    assert not (tmp_path / "media" / "_checkpoints").exists() and (tmp_path / "media").is_dir()
    assert list(store.list("media")) == []
    store.put("media", "_checkpoints/job-3/000000.mp4", b"again", metadata={}, content_type="video/mp4")
    assert store.get("media", "_checkpoints/job-3/000000.mp4").data == b"again"
