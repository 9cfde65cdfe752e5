"""Object stores against the real thing: a local folder, and S3 through moto's server on loopback."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.servers import AWS_TEST_ENV, free_port, moto_server
from upscaler.errors import Forbidden, InvalidInput, NotFound, Unavailable
from upscaler.store import open_store, validate_bucket, validate_key
from upscaler.store.local import LocalFolderStore
from upscaler.store.s3 import S3Store


@pytest.fixture(scope="module")
def moto_endpoint():
    old = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    with moto_server() as endpoint:
        yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        yield LocalFolderStore(tmp_path / "objects")
        return
    endpoint = request.getfixturevalue("moto_endpoint")
    s3 = S3Store(endpoint_url=endpoint)
    s3.client.create_bucket(Bucket="bucket-a")
    yield s3
    for key in list(s3.client.list_objects_v2(Bucket="bucket-a").get("Contents", [])):
        s3.client.delete_object(Bucket="bucket-a", Key=key["Key"])
    s3.client.delete_bucket(Bucket="bucket-a")


BIG_META = {"icc": base64.b64encode(os.urandom(20_000)).decode(), "name": "café ☕ 東京", "n": "1"}


def test_roundtrip(store) -> None:
    info = store.put("bucket-a", "a/b/c.png", b"pixels", metadata={"k": "v", "ü": "ß"}, content_type="image/png")
    assert info.size == 6
    obj = store.get("bucket-a", "a/b/c.png")
    assert obj.data == b"pixels" and obj.metadata == {"k": "v", "ü": "ß"} and obj.content_type == "image/png"
    head = store.head("bucket-a", "a/b/c.png")
    assert head.size == 6 and head.metadata == obj.metadata
    assert store.exists("bucket-a", "a/b/c.png") and not store.exists("bucket-a", "a/b/d.png")
    assert store.url("bucket-a", "a/b/c.png").endswith("a/b/c.png")


def test_large_metadata_and_overwrite(store) -> None:
    store.put("bucket-a", "big.jpg", b"one", metadata=BIG_META, content_type="image/jpeg")
    assert store.get("bucket-a", "big.jpg").metadata == BIG_META
    assert list(store.list("bucket-a")) == ["big.jpg"]  # sidecars are never listed
    if isinstance(store, S3Store):
        keys = [o["Key"] for o in store.client.list_objects_v2(Bucket="bucket-a")["Contents"]]
        assert len(keys) == 2  # the object and its sidecar
    store.put("bucket-a", "big.jpg", b"two", metadata={"small": "yes"}, content_type="image/jpeg")
    obj = store.get("bucket-a", "big.jpg")
    assert obj.data == b"two" and obj.metadata == {"small": "yes"}
    if isinstance(store, S3Store):
        keys = [o["Key"] for o in store.client.list_objects_v2(Bucket="bucket-a")["Contents"]]
        assert keys == ["big.jpg"]  # the old sidecar is gone


def test_not_found_and_delete(store) -> None:
    with pytest.raises(NotFound):
        store.get("bucket-a", "missing.png")
    with pytest.raises(NotFound):
        store.head("bucket-a", "missing.png")
    store.put("bucket-a", "x/y.png", b"1", metadata=BIG_META, content_type="image/png")
    assert store.delete("bucket-a", "x/y.png") is True
    assert store.delete("bucket-a", "x/y.png") is False
    with pytest.raises(NotFound):
        store.get("bucket-a", "x/y.png")
    assert list(store.list("bucket-a")) == []


def test_missing_bucket(store) -> None:
    with pytest.raises(NotFound):
        store.get("no-such-bucket", "a.png")


def test_list_with_prefix(store) -> None:
    for key in ["p/1.png", "p/2.png", "q/3.png"]:
        store.put("bucket-a", key, b"x", metadata={}, content_type="image/png")
    assert sorted(store.list("bucket-a", "p/")) == ["p/1.png", "p/2.png"]


def test_files(store, tmp_path: Path) -> None:
    src = tmp_path / "video.mp4"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    store.put_file("bucket-a", "v/video.mp4", src, metadata={"job": "1"}, content_type="video/mp4")
    dst = tmp_path / "out.mp4"
    info = store.get_file("bucket-a", "v/video.mp4", dst)
    assert dst.read_bytes() == src.read_bytes() and info.metadata == {"job": "1"}
    assert not list(tmp_path.glob(".*part"))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "a/../b",
        "..",
        "a//b",
        "a/./b",
        "dir/",
        "tab\there",
        "nul\x00",
        "del\x7f",
        "back\\slash",
        "x" * 1025,
        "img.png.upscaler-meta",
        "é" * 600,
    ],
)
def test_bad_keys(store, key: str) -> None:
    with pytest.raises(InvalidInput):
        store.put("bucket-a", key, b"x", metadata={}, content_type="image/png")
    with pytest.raises(InvalidInput):
        validate_key(key)


@pytest.mark.parametrize(
    "bucket", ["", "ab", "A-bucket", "bucket_", "-bucket", "bucket-", "a..b", "192.168.1.1", "x" * 64, "../etc"]
)
def test_bad_buckets(store, bucket: str) -> None:
    with pytest.raises(InvalidInput):
        store.get(bucket, "a.png")
    with pytest.raises(InvalidInput):
        validate_bucket(bucket)


def test_good_keys_and_buckets() -> None:
    assert validate_key("photos/2024/IMG 0001 (1).JPG") and validate_key(".hidden.png") and validate_key("é/ü.png")
    assert validate_bucket("my.bucket-01") == "my.bucket-01"


def test_factory(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalFolderStore)
    assert isinstance(open_store(tmp_path.as_uri()), LocalFolderStore)
    s3 = open_store("s3://any/prefix", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Store) and s3.prefix == "prefix/"


# ---- S3-specific failures ----------------------------------------------------------------------------------------


def test_s3_tampered_sidecar_is_detected(moto_endpoint) -> None:
    s3 = S3Store(endpoint_url=moto_endpoint)
    s3.client.create_bucket(Bucket="bucket-t")
    s3.put("bucket-t", "k.png", b"x", metadata=BIG_META, content_type="image/png")
    sidecar = next(o["Key"] for o in s3.client.list_objects_v2(Bucket="bucket-t")["Contents"] if o["Key"] != "k.png")
    s3.client.put_object(Bucket="bucket-t", Key=sidecar, Body=b'{"forged": "yes"}')
    with pytest.raises(Unavailable, match="checksum"):
        s3.get("bucket-t", "k.png")


def test_s3_unreachable_is_unavailable(monkeypatch) -> None:
    for k, v in AWS_TEST_ENV.items():
        monkeypatch.setenv(k, v)
    s3 = S3Store(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1, connect_timeout=1, read_timeout=1)
    start = time.monotonic()
    with pytest.raises(Unavailable):
        s3.get("bucket-a", "a.png")
    with pytest.raises(Unavailable):
        s3.ping()
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("AccessDenied", 403, Forbidden),
        ("NoSuchKey", 404, NotFound),
        ("NoSuchBucket", 404, NotFound),
        ("SlowDown", 503, Unavailable),
        ("InternalError", 500, Unavailable),
    ],
)
def test_s3_error_mapping(code: str, status: int, expected: type) -> None:
    from botocore.exceptions import ClientError

    def fail() -> None:
        raise ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    with pytest.raises(expected):
        S3Store()._call("get", "bucket-a", "k", fail)


# ---- local atomicity -----------------------------------------------------------------------------------------------


def test_local_concurrent_overwrites_never_mix_versions(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    store.put("bucket-a", "k.png", b"v0" * 1000, metadata={"v": "v0"}, content_type="image/png")
    stop = threading.Event()
    errors: list[str] = []

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            tag = f"w{n}-{i}"
            store.put("bucket-a", "k.png", tag.encode() * 1000, metadata={"v": tag}, content_type="image/png")
            i += 1

    def reader() -> None:
        while not stop.is_set():
            obj = store.get("bucket-a", "k.png")
            if obj.data != obj.metadata["v"].encode() * 1000:
                errors.append(obj.metadata["v"])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
    assert not errors


_KILLED_WRITER = """
import sys
from upscaler.store.local import LocalFolderStore
store = LocalFolderStore(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    tag = f"v{i}"
    store.put("bucket-a", "k.png", tag.encode() * 20000, metadata={"v": tag}, content_type="image/png")
    i += 1
"""


def test_local_sigkill_mid_put_leaves_a_complete_version(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    store.put("bucket-a", "k.png", b"v-start" * 20000, metadata={"v": "v-start"}, content_type="image/png")
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        obj = store.get("bucket-a", "k.png")
        assert obj.data == obj.metadata["v"].encode() * 20000
    # a later write still works and leaves nothing pending behind
    store.put("bucket-a", "k.png", b"final", metadata={"v": "final"}, content_type="image/png")
    assert store.get("bucket-a", "k.png").data == b"final"
    assert list(store.list("bucket-a")) == ["k.png"]
    assert not list((tmp_path / "bucket-a").glob(".*pending"))
