"""Object stores against the real thing: a local folder, and S3 through moto's server over HTTP on loopback.

Every behavioural test runs on both stores. The local store's atomicity is proven with concurrent writers and
readers (threads and another process), with writers SIGKILLed at random moments, and with a writer killed before
each of its system calls in turn.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from upscaler.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable
from upscaler.store import ObjectStore, open_store, validate_bucket, validate_key
from upscaler.store.base import version_etag
from upscaler.store.local import LocalFolderStore

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
#: An ICC profile's worth of binary as base64 (20 KB) and values no HTTP header could carry as they are.
BIG_META = {
    "icc": base64.b64encode(random.Random(7).randbytes(20_000)).decode(),
    "name": "café ☕ 東京",
    "multi\nline": 'tab\there, quote " and backslash \\',
    "empty": "",
}
SMALL_META = {"k": "v", "ü": "ß", "emoji": "🖼️"}


# ---- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's real S3 server in a thread on a free loopback port (port 0: the OS picks it)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and no shared AWS configuration from the machine running the tests."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


def _s3_store(endpoint: str, **kwargs: object):
    from upscaler.store.s3 import S3Store

    # Small parts so that a few MB exercise multipart uploads and ranged downloads (5 MiB is S3's minimum part).
    options = {"multipart_threshold": 5 * MIB, "multipart_chunksize": 5 * MIB, "max_attempts": 2, **kwargs}
    return S3Store(endpoint_url=endpoint, **options)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalFolderStore(tmp_path / "objects")
    request.getfixturevalue("aws_env")
    return _s3_store(request.getfixturevalue("moto_endpoint"))


@pytest.fixture
def bucket(store: ObjectStore) -> str:
    """A fresh bucket for each test (created in S3; a local bucket is a folder made by the first write)."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    if _is_s3(store):
        store.client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


def _is_s3(store: ObjectStore) -> bool:
    return type(store).__name__ == "S3Store"


def raw_names(store: ObjectStore, bucket: str) -> list[str]:
    """Everything the store keeps in ``bucket``, its own files included."""
    if _is_s3(store):
        resp = store.client.list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
        return sorted(o["Key"] for o in resp.get("Contents", []))
    base = store.root / bucket  # type: ignore[attr-defined]
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()) if base.exists() else []


def internal_names(store: ObjectStore, bucket: str) -> list[str]:
    return [n for n in raw_names(store, bucket) if ".upscaler-" in n]


def sidecars(store: ObjectStore, bucket: str) -> list[str]:
    return [n for n in internal_names(store, bucket) if n.startswith(".upscaler-meta/")]


# ---- behaviour, on both stores ----------------------------------------------------------------------------------


def test_roundtrip(store: ObjectStore, bucket: str) -> None:
    before = time.time()
    info = store.put(bucket, "a/b/c.png", b"pixels", metadata=SMALL_META, content_type="image/png")
    assert info.size == 6 and info.metadata == SMALL_META and info.content_type == "image/png"
    assert info.etag == version_etag(hashlib.sha256(b"pixels").hexdigest(), "image/png", SMALL_META)
    obj = store.get(bucket, "a/b/c.png")
    assert (obj.data, obj.metadata, obj.content_type, obj.etag) == (b"pixels", SMALL_META, "image/png", info.etag)
    head = store.head(bucket, "a/b/c.png")
    assert (head.size, head.metadata, head.content_type, head.etag) == (6, SMALL_META, "image/png", info.etag)
    assert before - 5 <= head.last_modified <= time.time() + 5
    assert abs(obj.last_modified - head.last_modified) < 1e-3
    assert store.exists(bucket, "a/b/c.png") and not store.exists(bucket, "a/b/d.png")
    url = store.url(bucket, "a/b/c.png")
    if _is_s3(store):
        assert url == f"s3://{bucket}/a/b/c.png"
    else:
        assert url == (store.root / bucket / "a/b/c.png").as_uri()  # type: ignore[attr-defined]
    assert list(store.list(bucket)) == ["a/b/c.png"]


def test_empty_object_and_empty_metadata(store: ObjectStore, bucket: str) -> None:
    store.put(bucket, "empty.bin", b"", metadata={}, content_type="application/octet-stream")
    obj = store.get(bucket, "empty.bin")
    assert obj.data == b"" and obj.metadata == {} and store.head(bucket, "empty.bin").size == 0


def test_large_metadata_roundtrips_through_a_hidden_sidecar(store: ObjectStore, bucket: str) -> None:
    info = store.put(bucket, "big.jpg", b"jpeg bytes", metadata=BIG_META, content_type="image/jpeg")
    assert store.get(bucket, "big.jpg").metadata == BIG_META
    assert store.head(bucket, "big.jpg").metadata == BIG_META
    assert store.head(bucket, "big.jpg").etag == info.etag
    assert list(store.list(bucket)) == ["big.jpg"]  # the store's own files are never listed
    if _is_s3(store):
        assert len(sidecars(store, bucket)) == 1  # the metadata did not fit S3's 2 KB: it went to a sidecar
        head = store.client.head_object(Bucket=bucket, Key="big.jpg")  # type: ignore[attr-defined]
        assert sum(len(k) + len(v) for k, v in head["Metadata"].items()) < 2048
    else:
        assert len(internal_names(store, bucket)) == 1  # the hidden record beside the file, nothing else


def test_overwrite_replaces_metadata_and_cleans_the_old_sidecar(store: ObjectStore, bucket: str) -> None:
    store.put(bucket, "k.png", b"one", metadata=BIG_META, content_type="image/png")
    first = internal_names(store, bucket)
    other = {**BIG_META, "name": "second"}
    store.put(bucket, "k.png", b"two", metadata=other, content_type="image/webp")
    obj = store.get(bucket, "k.png")
    assert (obj.data, obj.metadata, obj.content_type) == (b"two", other, "image/webp")
    second = internal_names(store, bucket)
    assert len(second) == 1 and second != first  # the new version's sidecar/record only
    store.put(bucket, "k.png", b"three", metadata={"small": "yes"}, content_type="image/png")
    assert store.get(bucket, "k.png").metadata == {"small": "yes"}
    if _is_s3(store):
        assert raw_names(store, bucket) == ["k.png"]  # inline metadata: no sidecar left at all
    else:
        assert len(internal_names(store, bucket)) == 1


def test_missing_key_and_missing_bucket(store: ObjectStore, bucket: str) -> None:
    store.put(bucket, "present.png", b"x", metadata={}, content_type="image/png")
    for call in (store.get, store.head):
        with pytest.raises(NotFound):
            call(bucket, "missing.png")
        with pytest.raises(NotFound):
            call(bucket, "present.png/below")
    assert store.exists(bucket, "missing.png") is False
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        store.get("no-such-bucket-here", "a.png")
    with pytest.raises(NotFound):
        store.head("no-such-bucket-here", "a.png")
    assert store.delete("no-such-bucket-here", "a.png") is False


def test_delete_is_idempotent_and_removes_the_sidecar(store: ObjectStore, bucket: str) -> None:
    store.put(bucket, "x/y.png", b"1", metadata=BIG_META, content_type="image/png")
    store.put(bucket, "x/keep.png", b"2", metadata={}, content_type="image/png")
    assert store.delete(bucket, "x/y.png") is True
    assert store.delete(bucket, "x/y.png") is False
    assert store.delete(bucket, "never/was.png") is False
    with pytest.raises(NotFound):
        store.get(bucket, "x/y.png")
    assert list(store.list(bucket)) == ["x/keep.png"]
    if _is_s3(store):
        assert raw_names(store, bucket) == ["x/keep.png"]  # the sidecar went with the object
    else:
        (record,) = internal_names(store, bucket)  # only the remaining object's record
        assert record.startswith("x/.keep.png.")


BAD_KEYS = [
    "",
    "/abs",
    "..",
    ".",
    "a/../b",
    "a/./b",
    "../escape",
    "a//b",
    "dir/",
    "tab\there",
    "nul\x00",
    "unit\x1fsep",
    "del\x7f",
    "new\nline",
    "back\\slash",
    "x" * 1025,
    "é" * 513,  # 1026 bytes of UTF-8
    "img.png.upscaler-meta",
    ".upscaler-meta/abc/x.json",
    "a/.upscaler-tmp",
    "lone\ud800surrogate",
    "cafe\u0301.png",  # NFD: the composed 'café.png' is the one name for it
    "\u212b.png",  # ANGSTROM SIGN, whose NFC is U+00C5
    None,
    b"bytes",
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=[repr(k)[:24] for k in BAD_KEYS])
def test_bad_keys_are_rejected(store: ObjectStore, bucket: str, key: object) -> None:
    with pytest.raises(InvalidInput):
        validate_key(key)
    calls = [
        lambda: store.put(bucket, key, b"x", metadata={}, content_type="image/png"),  # type: ignore[arg-type]
        lambda: store.get(bucket, key),  # type: ignore[arg-type]
        lambda: store.head(bucket, key),  # type: ignore[arg-type]
        lambda: store.delete(bucket, key),  # type: ignore[arg-type]
        lambda: store.exists(bucket, key),  # type: ignore[arg-type]
        lambda: store.url(bucket, key),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidInput):
            call()
    assert raw_names(store, bucket) == []


BAD_BUCKETS = [
    "",
    "ab",
    "x" * 64,
    "A-bucket",
    "bucket_x",
    "-bucket",
    "bucket-",
    ".bucket",
    "a..b",
    "a.-b",
    "a-.b",
    "192.168.1.1",
    "../etc",
    "bu/cket",
    "buck et",
    "xn--bucket",
    "bucket-s3alias",
    "bucket\n",
    None,
]


@pytest.mark.parametrize("bad", BAD_BUCKETS, ids=[repr(b)[:24] for b in BAD_BUCKETS])
def test_bad_buckets_are_rejected(store: ObjectStore, bad: object) -> None:
    with pytest.raises(InvalidInput):
        validate_bucket(bad)
    calls = [
        lambda: store.put(bad, "a.png", b"x", metadata={}, content_type="image/png"),  # type: ignore[arg-type]
        lambda: store.get(bad, "a.png"),  # type: ignore[arg-type]
        lambda: store.head(bad, "a.png"),  # type: ignore[arg-type]
        lambda: store.delete(bad, "a.png"),  # type: ignore[arg-type]
        lambda: list(store.list(bad)),  # type: ignore[arg-type]
    ]
    if bad is not None:  # ping(None) is the check without a bucket
        calls.append(lambda: store.ping(bad))  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(InvalidInput):
            call()


def test_good_names() -> None:
    for key in ["photos/2024/IMG 0001 (1).JPG", ".hidden.png", "é/ü.png", "a..b", "...", "x" * 1024, "-_~!$&'()"]:
        assert validate_key(key) == key
    for name in ["abc", "my.bucket-01", "a" * 63, "123", "b.c.d"]:
        assert validate_bucket(name) == name


def test_unusual_but_valid_keys_roundtrip(store: ObjectStore, bucket: str) -> None:
    longest = "/".join(["s" * 199] * 5) + "/" + "e" * 24  # 1024 bytes, no segment over the local limit
    assert len(longest.encode()) == 1024
    keys = [".hidden.png", "é/ü ☕.png", "a b/(1) [2] {3}.JPG", "a..b/...", "%20/+&=?#", longest]
    for i, key in enumerate(keys):
        metadata = BIG_META if key == longest else {"i": str(i)}
        store.put(bucket, key, key.encode(), metadata=metadata, content_type="image/png")
    for i, key in enumerate(keys):
        obj = store.get(bucket, key)
        assert obj.data == key.encode() and obj.metadata == (BIG_META if key == longest else {"i": str(i)})
    assert list(store.list(bucket)) == sorted(keys)


def test_invalid_metadata_and_content_type_are_rejected(store: ObjectStore, bucket: str) -> None:
    for metadata in [{"n": 1}, {1: "v"}, {"": "v"}, ["k", "v"], {"k": "\udcff"}]:
        with pytest.raises(InvalidInput):
            store.put(bucket, "m.png", b"x", metadata=metadata, content_type="image/png")  # type: ignore[arg-type]
    for content_type in ["", "image/png\r\nX-Evil: 1", "imäge/png", " image/png", "x" * 256, None]:
        with pytest.raises(InvalidInput):
            store.put(bucket, "m.png", b"x", metadata={}, content_type=content_type)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        store.put(bucket, "m.png", "text", metadata={}, content_type="image/png")  # type: ignore[arg-type]
    assert raw_names(store, bucket) == []


def test_list_with_prefix(store: ObjectStore, bucket: str) -> None:
    keys = ["p/1.png", "p/2.png", "p/sub/3.png", "p.png", "pq.png", "q/4.png", "p-x/5.png"]
    for key in keys:
        store.put(bucket, key, b"x", metadata=BIG_META if key == "p/2.png" else {}, content_type="image/png")
    assert list(store.list(bucket)) == sorted(keys)  # lexicographic, as S3 lists
    assert list(store.list(bucket, "p/")) == ["p/1.png", "p/2.png", "p/sub/3.png"]
    assert list(store.list(bucket, "p/s")) == ["p/sub/3.png"]
    assert list(store.list(bucket, "p")) == sorted(k for k in keys if k.startswith("p"))
    assert list(store.list(bucket, "q/4.png")) == ["q/4.png"]
    for nothing in ["zzz", "../", "p//", "/p", ".upscaler-meta/"]:
        assert list(store.list(bucket, nothing)) == []


def test_put_file_and_get_file_stream_multi_megabyte_objects(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "video.mp4"
    src.write_bytes(random.Random(1).randbytes(12 * MIB + 123))  # three parts for S3 at 5 MiB
    info = store.put_file(bucket, "v/video.mp4", src, metadata=BIG_META, content_type="video/mp4")
    assert info.size == src.stat().st_size
    assert info.etag == version_etag(hashlib.sha256(src.read_bytes()).hexdigest(), "video/mp4", BIG_META)
    dst = tmp_path / "out" / "video.mp4"
    dst.parent.mkdir()
    dst.write_bytes(b"old content, replaced atomically")
    got = store.get_file(bucket, "v/video.mp4", dst)
    assert dst.read_bytes() == src.read_bytes()
    assert (got.size, got.metadata, got.content_type, got.etag) == (info.size, BIG_META, "video/mp4", info.etag)
    assert store.head(bucket, "v/video.mp4").etag == info.etag
    assert sorted(p.name for p in dst.parent.iterdir()) == ["video.mp4"]  # no temporary file left
    with pytest.raises(NotFound):
        store.get_file(bucket, "v/missing.mp4", dst)
    assert dst.read_bytes() == src.read_bytes()  # untouched by the failed download
    with pytest.raises(InvalidInput):
        store.put_file(bucket, "v/other.mp4", tmp_path / "no-such-file", metadata={}, content_type="video/mp4")
    with pytest.raises(InvalidInput):
        store.get_file(bucket, "v/video.mp4", tmp_path / "no-such-folder" / "x.mp4")
    assert list(store.list(bucket)) == ["v/video.mp4"]


def test_ping(store: ObjectStore, bucket: str) -> None:
    store.ping()
    store.ping(bucket)
    if _is_s3(store):
        with pytest.raises(NotFound, match="no-such-bucket-here"):
            store.ping("no-such-bucket-here")


def test_an_object_and_a_folder_of_the_same_name(store: ObjectStore, bucket: str) -> None:
    """S3 holds both ``a`` and ``a/b``; a folder cannot, so the local store refuses the second with Conflict."""
    store.put(bucket, "a", b"file", metadata={}, content_type="image/png")
    store.put(bucket, "x/y", b"file", metadata={}, content_type="image/png")
    for key in ("a/b", "x"):
        if _is_s3(store):
            store.put(bucket, key, b"both", metadata={}, content_type="image/png")
        else:
            with pytest.raises(Conflict):
                store.put(bucket, key, b"both", metadata={}, content_type="image/png")
    assert store.get(bucket, "a").data == b"file" and store.get(bucket, "x/y").data == b"file"
    if not _is_s3(store):
        assert store.delete(bucket, "x") is False  # a folder is not an object
        assert [n.endswith(".upscaler-meta") for n in internal_names(store, bucket)] == [True, True]


# ---- S3 only ----------------------------------------------------------------------------------------------------


@pytest.fixture
def s3(aws_env: None, moto_endpoint: str):
    return _s3_store(moto_endpoint)


@pytest.fixture
def s3_bucket(s3) -> str:
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3.client.create_bucket(Bucket=name)
    return name


def test_s3_sidecar_with_a_wrong_hash_is_detected(s3, s3_bucket: str) -> None:
    s3.put(s3_bucket, "k.png", b"x", metadata=BIG_META, content_type="image/png")
    (sidecar,) = sidecars(s3, s3_bucket)
    forged = json.dumps({**BIG_META, "name": "forged"}).encode()
    s3.client.put_object(Bucket=s3_bucket, Key=sidecar, Body=forged)
    with pytest.raises(Unavailable, match="does not match its checksum"):
        s3.get(s3_bucket, "k.png")
    with pytest.raises(Unavailable, match="does not match its checksum"):
        s3.head(s3_bucket, "k.png")


def test_s3_missing_sidecar_is_unavailable_not_empty_metadata(s3, s3_bucket: str) -> None:
    s3.put(s3_bucket, "k.png", b"x", metadata=BIG_META, content_type="image/png")
    (sidecar,) = sidecars(s3, s3_bucket)
    s3.client.delete_object(Bucket=s3_bucket, Key=sidecar)
    with pytest.raises(Unavailable, match="missing"):
        s3.get(s3_bucket, "k.png")


def test_s3_data_that_does_not_match_its_record_is_detected(s3, s3_bucket: str) -> None:
    s3.put(s3_bucket, "k.png", b"original", metadata=SMALL_META, content_type="image/png")
    headers = s3.client.head_object(Bucket=s3_bucket, Key="k.png")["Metadata"]
    s3.client.put_object(Bucket=s3_bucket, Key="k.png", Body=b"swapped", Metadata=headers)
    with pytest.raises(Unavailable, match="checksum"):
        s3.get(s3_bucket, "k.png")


def test_s3_objects_written_by_other_tools(s3, s3_bucket: str) -> None:
    s3.client.put_object(Bucket=s3_bucket, Key="foreign.png", Body=b"x", Metadata={"a": "b"}, ContentType="image/png")
    obj = s3.get(s3_bucket, "foreign.png")
    assert (obj.data, obj.metadata, obj.content_type) == (b"x", {"a": "b"}, "image/png")
    assert obj.etag == s3.head(s3_bucket, "foreign.png").etag != ""
    s3.client.put_object(Bucket=s3_bucket, Key="back\\slash.png", Body=b"x")
    assert list(s3.list(s3_bucket)) == ["foreign.png"]  # keys this store cannot address are not listed


def test_s3_orphan_sidecars_are_swept(s3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that died between its sidecar and its object leaves an orphan; the next write of the key removes
    it once it is old enough not to belong to a write still in progress."""
    import upscaler.store.s3 as s3_module

    s3.put(s3_bucket, "k.png", b"x", metadata=BIG_META, content_type="image/png")
    folder = sidecars(s3, s3_bucket)[0].rsplit("/", 1)[0]
    s3.client.put_object(Bucket=s3_bucket, Key=f"{folder}/{uuid.uuid4().hex}.json", Body=b"{}")
    s3.put(s3_bucket, "k.png", b"y", metadata=BIG_META, content_type="image/png")
    assert len(sidecars(s3, s3_bucket)) == 2  # the orphan is too young to be swept
    monkeypatch.setattr(s3_module, "ORPHAN_AGE_S", -60)
    s3.put(s3_bucket, "k.png", b"z", metadata=BIG_META, content_type="image/png")
    assert len(sidecars(s3, s3_bucket)) == 1 and s3.get(s3_bucket, "k.png").metadata == BIG_META


def test_s3_prefix_from_the_storage_setting(aws_env: None, moto_endpoint: str) -> None:
    store = open_store("s3://anything/pre/fix/", endpoint_url=moto_endpoint)
    store.client.create_bucket(Bucket="prefixed")  # type: ignore[attr-defined]
    store.put("prefixed", "k.png", b"x", metadata=BIG_META, content_type="image/png")
    names = raw_names(store, "prefixed")
    assert "pre/fix/k.png" in names and all(n.startswith("pre/fix/") for n in names)
    assert list(store.list("prefixed")) == ["k.png"]
    assert store.url("prefixed", "k.png") == "s3://prefixed/pre/fix/k.png"
    assert store.get("prefixed", "k.png").metadata == BIG_META
    assert store.delete("prefixed", "k.png") and raw_names(store, "prefixed") == []


def test_s3_concurrent_overwrites_never_mix_versions(s3, s3_bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    """Readers never get one version's bytes with another's metadata, even when sidecars come and go; get_file's
    ranged parts (8 KiB here) are pinned to one version with If-Match."""
    ranged = _s3_store(moto_endpoint, multipart_threshold=8192, multipart_chunksize=8192)
    errors = _hammer(s3, s3_bucket, tmp_path, seconds=1.5, writers=1, readers=3, reader=ranged, unlabelled_ok=True)
    assert errors == []


def test_s3_unreachable_endpoint_is_unavailable_quickly(aws_env: None) -> None:
    from upscaler.store.s3 import S3Store

    with __import__("socket").socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s3 = S3Store(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout=0.5, read_timeout=0.5)
    start = time.monotonic()
    calls = [
        lambda: s3.get("bucket-a", "a.png"),
        lambda: s3.head("bucket-a", "a.png"),
        lambda: s3.put("bucket-a", "a.png", b"x", metadata={}, content_type="image/png"),
        lambda: s3.delete("bucket-a", "a.png"),
        lambda: list(s3.list("bucket-a")),
        lambda: s3.ping(),
        lambda: s3.ping("bucket-a"),
    ]
    for call in calls:
        with pytest.raises(Unavailable, match="cannot reach"):
            call()
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("code", "status", "expected", "message"),
    [
        ("AccessDenied", 403, Forbidden, "refused"),
        ("NoSuchKey", 404, NotFound, "no object"),
        ("NoSuchBucket", 404, NotFound, "bucket 'bucket-a' does not exist"),
        ("404", 404, NotFound, "no object"),
        ("SlowDown", 503, Unavailable, "SlowDown"),
        ("InternalError", 500, Unavailable, "InternalError"),
        ("PreconditionFailed", 412, Conflict, "changed"),
    ],
)
def test_s3_error_mapping(aws_env: None, code: str, status: int, expected: type, message: str) -> None:
    """Error codes moto cannot produce on demand (it enforces no bucket policies, never throttles)."""
    from botocore.exceptions import ClientError

    from upscaler.store.s3 import S3Store

    with pytest.raises(expected, match=message) as caught, S3Store()._errors("get", "bucket-a", "k"):
        raise ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    assert "Traceback" not in caught.value.message


# ---- local only -------------------------------------------------------------------------------------------------


def test_local_layout_is_browsable(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    store.put("bucket-a", "photos/cat.png", b"\x89PNG...", metadata=BIG_META, content_type="image/png")
    data_file = tmp_path / "bucket-a" / "photos" / "cat.png"
    assert data_file.read_bytes() == b"\x89PNG..."  # the object is the file, byte for byte
    assert store.url("bucket-a", "photos/cat.png") == data_file.as_uri()
    hidden = [p.name for p in data_file.parent.iterdir() if p != data_file]
    assert len(hidden) == 1 and hidden[0].startswith(".cat.png.") and hidden[0].endswith(".upscaler-meta")


def test_local_files_put_there_by_hand(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    (tmp_path / "bucket-a").mkdir()
    (tmp_path / "bucket-a" / "dropped.jpg").write_bytes(b"by hand")
    obj = store.get("bucket-a", "dropped.jpg")
    assert (obj.data, obj.metadata, obj.content_type) == (b"by hand", {}, "image/jpeg")
    assert store.head("bucket-a", "dropped.jpg").etag == obj.etag
    assert list(store.list("bucket-a")) == ["dropped.jpg"]
    # a stored object edited in place is no longer described by its record: served without it, never with it
    store.put("bucket-a", "edited.png", b"stored", metadata={"v": "1"}, content_type="image/png")
    with open(tmp_path / "bucket-a" / "edited.png", "r+b") as fh:
        fh.write(b"changed in place")
    assert store.get("bucket-a", "edited.png").metadata == {}
    assert store.head("bucket-a", "edited.png").metadata == {}
    assert store.delete("bucket-a", "dropped.jpg") is True


def test_local_rejects_segments_longer_than_the_filesystem_allows(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    with pytest.raises(InvalidInput, match="200 bytes"):
        store.put("bucket-a", "d/" + "x" * 201, b"x", metadata={}, content_type="image/png")
    store.put("bucket-a", "d/" + "x" * 200, b"x", metadata={}, content_type="image/png")


def test_local_ping_reports_an_unwritable_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(Unavailable, match="not writable"):
        LocalFolderStore(tmp_path / "file" / "root").ping()


def _expected(tag: str) -> bytes:
    """The bytes written with metadata ``{"v": tag}``: their length depends on the tag, so sizes differ too."""
    return (tag.encode() * 4000)[: 1000 + (sum(tag.encode()) * 37) % 60_000]


def _hammer(
    store: ObjectStore,
    bucket: str,
    scratch: Path,
    *,
    seconds: float,
    writers: int,
    readers: int,
    reader: ObjectStore | None = None,
    unlabelled_ok: bool = False,
) -> list[str]:
    """Overwrite one key from ``writers`` threads while ``readers`` threads check that every get, head and
    get_file returns one version's bytes with that version's metadata (through ``reader`` when given). Returns
    what went wrong.

    ``unlabelled_ok``: skip reads that come back with no metadata at all. moto's PutObject is not atomic (it
    stores the new key, then sets its metadata: moto/s3/responses.py ``put_object``), so on moto a reader can
    catch a version before its metadata exists, which the store can only take for an object written by another
    tool. S3 itself writes an object and its metadata in one step. Such reads must stay rare."""
    reading = reader or store
    key = "hot.png"
    store.put(bucket, key, _expected("start"), metadata={"v": "start"}, content_type="image/png")
    stop = threading.Event()
    errors: list[str] = []
    counts = {"checked": 0, "unlabelled": 0}

    def check(what: str, metadata: dict[str, str], data: bytes | None, size: int) -> None:
        if not metadata and unlabelled_ok:
            counts["unlabelled"] += 1
            return
        expected = _expected(metadata["v"])
        if size != len(expected) or (data is not None and data != expected):
            errors.append(f"{what}: bytes of another version than {metadata['v']}")
        counts["checked"] += 1

    def writer(n: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                tag = f"w{n}-{i}"
                metadata = {"v": tag, **(BIG_META if i % 2 else {})}  # alternate inline metadata and sidecars
                store.put(bucket, key, _expected(tag), metadata=metadata, content_type="image/png")
                i += 1
        except Exception as exc:
            errors.append(f"writer: {type(exc).__name__}: {exc}")

    def reader(n: int) -> None:
        out = scratch / f"hammer-{n}.bin"
        try:
            while not stop.is_set():
                obj = reading.get(bucket, key)
                check("get", obj.metadata, obj.data, len(obj.data))
                info = reading.head(bucket, key)
                check("head", info.metadata, None, info.size)
                if n == 0:
                    info = reading.get_file(bucket, key, out)
                    check("get_file", info.metadata, out.read_bytes(), info.size)
        except Exception as exc:
            errors.append(f"reader: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    threads += [threading.Thread(target=reader, args=(n,)) for n in range(readers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert counts["checked"] > 20, f"the readers barely ran: {counts}"
    assert counts["unlabelled"] <= counts["checked"] // 10, counts
    return errors


#: Defines what the writer subprocesses write, without importing this module (and pytest) there.
_SUBPROCESS_PRELUDE = """
import base64, os, random, signal, sys
sys.path.insert(0, sys.argv[2])
from upscaler.store.local import LocalFolderStore
BIG_META = {"icc": base64.b64encode(random.Random(7).randbytes(20_000)).decode(), "name": "café ☕"}
def _expected(tag):
    return (tag.encode() * 4000)[: 1000 + (sum(tag.encode()) * 37) % 60_000]
"""

_WRITER = (
    _SUBPROCESS_PRELUDE
    + """
store = LocalFolderStore(sys.argv[1])
name = sys.argv[3]
print("ready", flush=True)
i = 0
while True:
    tag = f"{name}-{i}"
    metadata = {"v": tag, **(BIG_META if i % 3 == 0 else {})}
    store.put("bucket-a", "hot.png", _expected(tag), metadata=metadata, content_type="image/png")
    i += 1
"""
)


def _spawn_writer(root: Path, name: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), str(ROOT), name], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def _assert_consistent(store: LocalFolderStore, key: str = "hot.png") -> None:
    obj = store.get("bucket-a", key)
    assert obj.data == _expected(obj.metadata["v"])
    info = store.head("bucket-a", key)
    assert info.size == len(_expected(info.metadata["v"])) and info.etag == obj.etag
    assert list(store.list("bucket-a")) == [key]


def test_local_concurrent_overwrites_never_mix_versions(tmp_path: Path) -> None:
    """Threads of this process and a writer in another process overwrite one key while readers check it."""
    store = LocalFolderStore(tmp_path / "objects")
    (tmp_path / "scratch").mkdir()
    other = _spawn_writer(store.root, "proc")
    try:
        errors = _hammer(store, "bucket-a", tmp_path / "scratch", seconds=1.5, writers=2, readers=3)
    finally:
        other.kill()
        other.wait()
    assert errors == []
    store.put("bucket-a", "hot.png", _expected("end"), metadata={"v": "end"}, content_type="image/png")
    _assert_consistent(store)
    assert len(internal_names(store, "bucket-a")) == 1  # the record of the last version: no orphans


def test_local_sigkill_mid_put_leaves_a_complete_version(tmp_path: Path) -> None:
    """Writers killed at random moments: the store always holds one complete version with its own metadata, and
    the next writer cleans up what the dead one left. Loops until several kills landed mid-put (bounded)."""
    store = LocalFolderStore(tmp_path)
    store.put("bucket-a", "hot.png", _expected("start"), metadata={"v": "start"}, content_type="image/png")
    rng = random.Random(3)
    caught = kills = 0
    deadline = time.monotonic() + 8
    while (caught < 5 or kills < 10) and time.monotonic() < deadline:
        proc = _spawn_writer(tmp_path, f"k{kills}")
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        leftovers = internal_names(store, "bucket-a")
        caught += any(".upscaler-lock" in n or ".upscaler-tmp" in n for n in leftovers)  # died mid-put
        _assert_consistent(store)
    assert caught >= 1, f"no kill out of {kills} landed mid-put"
    store.put("bucket-a", "hot.png", _expected("final"), metadata={"v": "final"}, content_type="image/png")
    _assert_consistent(store)
    assert len(internal_names(store, "bucket-a")) == 1  # the next writer removed every orphan


_STEP_KILLER = (
    _SUBPROCESS_PRELUDE
    + """
store = LocalFolderStore(sys.argv[1])
op, step = sys.argv[3], int(sys.argv[4])
calls = [0]
def killing(fn):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapper
for name in ("open", "stat", "fsync", "replace", "unlink", "pwrite", "ftruncate"):
    setattr(os, name, killing(getattr(os, name)))
if op == "put":
    store.put("bucket-a", "hot.png", _expected("new"), metadata={"v": "new", **BIG_META}, content_type="image/png")
else:
    store.delete("bucket-a", "hot.png")
print("survived", flush=True)
"""
)


@pytest.mark.parametrize("op", ["put", "delete"])
def test_local_kill_before_every_system_call(tmp_path: Path, op: str) -> None:
    """Kill a writer before each of its file-system calls in turn: every state it can die in reads as the old
    version or the new one (or no object, for delete), and the next write leaves no orphan behind."""
    outcomes: set[str] = set()
    for step in range(1, 100):
        root = tmp_path / f"step{step}"
        store = LocalFolderStore(root)
        store.put("bucket-a", "hot.png", _expected("old"), metadata={"v": "old"}, content_type="image/png")
        result = subprocess.run(
            [sys.executable, "-c", _STEP_KILLER, str(root), str(ROOT), op, str(step)],
            capture_output=True,
            cwd=ROOT,
            timeout=30,
        )
        if op == "put" or store.exists("bucket-a", "hot.png"):
            _assert_consistent(store)
            outcomes.add(store.head("bucket-a", "hot.png").metadata["v"])
        else:
            assert list(store.list("bucket-a")) == []
            outcomes.add("deleted")
        store.put("bucket-a", "hot.png", _expected("next"), metadata={"v": "next"}, content_type="image/png")
        _assert_consistent(store)
        assert len(internal_names(store, "bucket-a")) == 1, internal_names(store, "bucket-a")
        if result.returncode == 0:
            assert b"survived" in result.stdout
            assert step > 5, "the write made suspiciously few system calls"
            assert outcomes == {"old", "new" if op == "put" else "deleted"}  # died before, and after, the switch
            return
        assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    pytest.fail("the write never completed")


# ---- the factory and the import boundary ------------------------------------------------------------------------


def test_open_store(tmp_path: Path, aws_env: None) -> None:
    from upscaler.store.s3 import S3Store

    for spec in [str(tmp_path), tmp_path.as_uri(), f"file://localhost{tmp_path}"]:
        store = open_store(spec)
        assert isinstance(store, LocalFolderStore) and store.root == tmp_path.resolve()
    assert open_store("data/objects").root == Path("data/objects").resolve()  # type: ignore[attr-defined]
    for spec, prefix in [("s3", ""), ("s3://", ""), ("s3://any", ""), ("s3://any/pre/fix", "pre/fix/")]:
        s3 = open_store(spec, endpoint_url="http://127.0.0.1:1")
        assert isinstance(s3, S3Store) and s3.prefix == prefix and s3.endpoint_url == "http://127.0.0.1:1"
    for bad in ["", "   ", "gs://bucket", "http://example.com/x", "file://otherhost/x", "s3://any/../up"]:
        with pytest.raises(InvalidInput):
            open_store(bad)


def test_core_imports_without_boto3(tmp_path: Path) -> None:
    script = f"""
import sys
for name in ("boto3", "botocore", "s3transfer"):
    sys.modules[name] = None  # any import of them fails
from upscaler.errors import InvalidInput
from upscaler.store import open_store
store = open_store({str(tmp_path)!r})
store.put("bucket-a", "k.png", b"x", metadata={{"a": "b"}}, content_type="image/png")
assert store.get("bucket-a", "k.png").metadata == {{"a": "b"}}
try:
    open_store("s3://")
except InvalidInput as exc:
    assert "boto3" in exc.message
else:
    raise AssertionError("s3:// opened without boto3")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
