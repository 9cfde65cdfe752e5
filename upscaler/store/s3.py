"""S3 through boto3, as in production (and against moto, MinIO or LocalStack through ``endpoint_url``).

A single ``PutObject`` (or a completed multipart upload) is atomic in S3, so everything a reader needs travels in
the object's own headers: ``x-amz-meta-upscaler`` holds a base64 JSON record with the data's SHA-256, the etag and
either the user metadata itself or, when that would not fit S3's 2 KB user-metadata limit (a large ICC profile
or EXIF block), a pointer to a *sidecar* object with the sidecar's SHA-256.

Sidecars live at ``<prefix>.upscaler-meta/<sha256 of the object's key>/<random id>.json``: one per version, never
rewritten, written *before* the object that points at them, so no reader ever sees an object without its
metadata; a reader verifies the sidecar's checksum, and starts again when the sidecar vanished because the object
was overwritten meanwhile. After an overwrite or a delete the replaced version's sidecar is removed (best effort),
and sidecars of that key older than a day that nothing points at (left by a writer that died between its two
requests) are swept. Listings skip every key containing ``.upscaler-``, which no user key may contain.

Errors map to :mod:`upscaler.errors`: missing key or bucket -> :class:`NotFound`, access refused ->
:class:`Forbidden`, throttling, 5xx and connection failures after botocore's retries -> :class:`Unavailable`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import hashlib
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from upscaler.aws import LazyClient
from upscaler.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge, Unavailable, UpscalerError
from upscaler.store.base import ObjectInfo, ObjectStore, StoredObject, canonical_metadata, version_etag
from upscaler.store.keys import (
    MAX_KEY_BYTES,
    RESERVED,
    validate_bucket,
    validate_content_type,
    validate_key,
    validate_metadata,
)

#: User-metadata name of the record (sent as ``x-amz-meta-upscaler``).
META_HEADER = "upscaler"
#: Bytes of encoded record kept inline, name included; S3 allows 2048 for all user metadata together.
INLINE_BUDGET = 1800
#: Folder (under the store's prefix) holding the sidecars.
SIDECAR_DIR = RESERVED + "meta/"
#: Sidecars older than this that no object points at are swept by the next write or delete of their key.
ORPHAN_AGE_S = 24 * 3600
#: Reads start again this many times when an overwrite removes the sidecar under them.
READ_ATTEMPTS = 5
MAX_PREFIX_BYTES = 512
CHUNK = 1 << 20
_SIDECAR_NAME = re.compile(r"[0-9a-f]{32}\.json")
_FORBIDDEN_CODES = {
    "AccessDenied",
    "Forbidden",
    "403",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
}


class _SidecarMissing(Exception):
    """The sidecar an object points at is gone (usually: the object was overwritten while we read it)."""


class _PinVersion(BaseSubscriber):
    """Give s3transfer the size and ETag we already know, so each ranged GET it sends carries ``If-Match``."""

    def __init__(self, size: int, etag: str) -> None:
        self._size = size
        self._etag = etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
        future.meta.provide_object_etag(self._etag)


def _sha256_file(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


class S3Store(ObjectStore):
    """Objects in S3 buckets (named per call), under an optional key prefix shared by every bucket."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        prefix: str = "",
        max_attempts: int = 3,
        connect_timeout: float = 3.0,
        read_timeout: float = 7.0,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunksize: int = 16 * 1024 * 1024,
        max_concurrency: int = 8,
    ) -> None:
        """``endpoint_url``: an S3-compatible endpoint (None: AWS's). ``prefix``: prepended to every key.
        ``max_attempts``: botocore's ``retries["total_max_attempts"]`` in "standard" mode, i.e. attempts of each
        request, the first included (retried on throttling, 5xx, connection errors and timeouts). ``connect_timeout``,
        ``read_timeout``: socket timeouts in seconds, per attempt (so a hung endpoint fails a call in about
        ``max_attempts * (connect_timeout + read_timeout)`` seconds). ``multipart_*`` and ``max_concurrency``: how
        :meth:`put_file` and :meth:`get_file` split large objects into parts transferred in parallel."""
        #: The endpoint URL given (None: AWS's, from the standard configuration chain).
        self.endpoint_url = endpoint_url
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidInput as exc:
                raise InvalidInput(f"S3 key prefix {prefix!r}: {exc.message}") from None
            if len(prefix.encode("utf-8")) > MAX_PREFIX_BYTES:
                raise InvalidInput(f"the S3 key prefix must be at most {MAX_PREFIX_BYTES} bytes")
        #: Prepended to every key ("" or ending with "/").
        self.prefix = prefix + "/" if prefix else ""
        self._config = Config(
            retries={"total_max_attempts": max(1, max_attempts), "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_request_concurrency=max_concurrency,
        )
        self._clients = LazyClient("s3", endpoint_url=self.endpoint_url, config=self._config)

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use and shared by every thread."""
        return self._clients.get()

    # ---- names -------------------------------------------------------------------------------------------
    def _full(self, key: str) -> str:
        full = self.prefix + validate_key(key)
        if len(full.encode("utf-8")) > MAX_KEY_BYTES:
            raise InvalidInput(f"key is longer than {MAX_KEY_BYTES} bytes with the store's prefix {self.prefix!r}")
        return full

    def _sidecar_folder(self, full: str) -> str:
        return f"{self.prefix}{SIDECAR_DIR}{hashlib.sha256(full.encode('utf-8')).hexdigest()}/"

    # ---- errors ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str, bucket: str, key: str | None = None) -> Iterator[None]:
        """Turn botocore and s3transfer failures into the core's errors (``key`` None: a bucket-level call)."""
        try:
            yield
        except ClientError as exc:
            raise self._map(exc, what, bucket, key) from None
        except S3DownloadFailedError:  # s3transfer's word for a ranged GET whose If-Match failed
            raise Conflict(f"object {key!r} changed during {what}") from None
        except (NoCredentialsError, PartialCredentialsError):
            raise Unavailable("S3 credentials are not configured") from None
        except (EndpointConnectionError, ConnectTimeoutError):
            raise Unavailable(f"S3 {what} failed: cannot reach the S3 endpoint", retry_after=1) from None
        except ReadTimeoutError:
            raise Unavailable(f"S3 {what} failed: the S3 endpoint timed out", retry_after=1) from None
        except (BotoCoreError, RetriesExceededError) as exc:
            raise Unavailable(f"S3 {what} failed: {type(exc).__name__}", retry_after=1) from None

    @staticmethod
    def _map(exc: ClientError, what: str, bucket: str, key: str | None) -> UpscalerError:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchBucket" or (key is None and status == 404):
            return NotFound(f"bucket {bucket!r} does not exist")
        if code in ("NoSuchKey", "NotFound", "404") or status == 404:
            return NotFound(f"no object {key!r} in bucket {bucket!r}")
        if code in _FORBIDDEN_CODES or status == 403:
            return Forbidden(f"S3 refused {what} in bucket {bucket!r} ({code or status})")
        if code == "PreconditionFailed" or status == 412:
            return Conflict(f"object {key!r} changed during {what}")
        if code in ("InvalidBucketName", "KeyTooLongError", "InvalidArgument"):
            return InvalidInput(f"S3 rejected {what}: {code}")
        if code == "EntityTooLarge":
            return TooLarge(f"object {key!r} is too large for S3")
        return Unavailable(f"S3 {what} failed: {code or status}", retry_after=1)

    # ---- the metadata record -----------------------------------------------------------------------------
    def _write_metadata(
        self, bucket: str, key: str, full: str, digest: str, etag: str, metadata: dict[str, str]
    ) -> tuple[dict[str, str], str | None]:
        """The S3 user metadata for a new version, and the sidecar key written for it now (None: all inline)."""
        record: dict[str, Any] = {"v": 1, "sha256": digest, "etag": etag, "meta": metadata}
        inline = base64.b64encode(json.dumps(record, separators=(",", ":")).encode("ascii")).decode("ascii")
        if len(META_HEADER) + len(inline) <= INLINE_BUDGET:
            return {META_HEADER: inline}, None
        body = canonical_metadata(metadata)
        name = f"{uuid.uuid4().hex}.json"
        sidecar = self._sidecar_folder(full) + name
        with self._errors("put (metadata sidecar)", bucket, key):
            self.client.put_object(Bucket=bucket, Key=sidecar, Body=body, ContentType="application/json")
        record = {"v": 1, "sha256": digest, "etag": etag, "sidecar": name, "sidecar_sha256": _sha(body)}
        pointer = base64.b64encode(json.dumps(record, separators=(",", ":")).encode("ascii")).decode("ascii")
        return {META_HEADER: pointer}, sidecar

    @staticmethod
    def _record(key: str, headers: dict[str, str]) -> dict[str, Any] | None:
        """The decoded record of an object's headers; None for an object this store did not write."""
        raw = headers.get(META_HEADER)
        if raw is None:
            return None
        try:
            record = json.loads(base64.b64decode(raw, validate=True))
            if not isinstance(record, dict) or ("meta" not in record and "sidecar" not in record):
                raise ValueError("no metadata")
        except (ValueError, binascii.Error):
            raise Unavailable(f"the metadata record of {key!r} is corrupt") from None
        return record

    def _sidecar_key(self, full: str, record: dict[str, Any] | None) -> str | None:
        name = record.get("sidecar") if record else None
        if not isinstance(name, str) or not _SIDECAR_NAME.fullmatch(name):
            return None
        return self._sidecar_folder(full) + name

    def _metadata(self, bucket: str, key: str, full: str, record: dict[str, Any]) -> dict[str, str]:
        """The user metadata a record holds or points at, verified; :class:`_SidecarMissing` when it is gone."""
        if "meta" in record:
            return record["meta"]
        sidecar = self._sidecar_key(full, record)
        if sidecar is None:
            raise Unavailable(f"the metadata record of {key!r} is corrupt")
        try:
            with self._errors("get (metadata sidecar)", bucket, key):
                body = self.client.get_object(Bucket=bucket, Key=sidecar)["Body"].read()
        except NotFound:
            raise _SidecarMissing from None
        if _sha(body) != record.get("sidecar_sha256"):
            raise Unavailable(f"the metadata sidecar of {key!r} does not match its checksum")
        try:
            return json.loads(body)
        except ValueError:
            raise Unavailable(f"the metadata sidecar of {key!r} is corrupt") from None

    def _describe(self, bucket: str, key: str, full: str, resp: dict[str, Any]) -> tuple[ObjectInfo, str | None]:
        """Info from a GET or HEAD response, and the data SHA-256 it promises (None for a foreign object)."""
        headers = resp.get("Metadata", {})
        content_type = resp.get("ContentType", "application/octet-stream")
        last_modified = resp["LastModified"].timestamp()
        record = self._record(key, headers)
        if record is None:  # written by another tool: its own user metadata, S3's ETag
            etag = resp.get("ETag", "").strip('"')
            return ObjectInfo(resp["ContentLength"], dict(headers), content_type, etag, last_modified), None
        metadata = self._metadata(bucket, key, full, record)
        info = ObjectInfo(resp["ContentLength"], metadata, content_type, str(record.get("etag", "")), last_modified)
        return info, str(record.get("sha256", ""))

    @staticmethod
    def _verify(key: str, promised: str | None, digest: str) -> None:
        if promised is not None and promised != digest:
            raise Unavailable(f"stored bytes of {key!r} do not match their checksum")

    def _previous(self, bucket: str, key: str, full: str, *, forbidden_ok: bool) -> dict[str, Any] | None:
        """The current version's record before a write or delete: None when there is no object, ``{}`` for one
        without a readable record. A write may lack the permission to read (``forbidden_ok``): it then cleans
        nothing up."""
        try:
            with self._errors("head", bucket, key):
                headers = self.client.head_object(Bucket=bucket, Key=full).get("Metadata", {})
        except NotFound:
            return None
        except Forbidden:
            if forbidden_ok:
                return None
            raise
        try:
            return self._record(key, headers) or {}
        except Unavailable:
            return {}

    def _clean(self, bucket: str, full: str, previous: dict[str, Any] | None, keep: str | None) -> None:
        """After a write or delete: remove the replaced version's sidecar, and sweep old orphans (best effort)."""
        folder = self._sidecar_folder(full)
        old = self._sidecar_key(full, previous)
        try:
            if old is not None and old != keep:
                self.client.delete_object(Bucket=bucket, Key=old)
            cutoff = time.time() - ORPHAN_AGE_S
            listing = self.client.list_objects_v2(Bucket=bucket, Prefix=folder)
            for item in listing.get("Contents", []):
                if item["Key"] not in (keep, old) and item["LastModified"].timestamp() < cutoff:
                    self.client.delete_object(Bucket=bucket, Key=item["Key"])
        except (ClientError, BotoCoreError):
            pass  # an orphan sidecar costs a few bytes; the next write or delete of this key tries again

    def _drop(self, bucket: str, sidecar: str | None) -> None:
        if sidecar is not None:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.delete_object(Bucket=bucket, Key=sidecar)

    # ---- writes ------------------------------------------------------------------------------------------
    def put(self, bucket: str, key: str, data: bytes, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        """One ``PutObject`` (after the sidecar, when the metadata needs one)."""
        bucket, full = validate_bucket(bucket), self._full(key)
        metadata, content_type = validate_metadata(metadata), validate_content_type(content_type)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput("data must be bytes")
        data = bytes(data)
        digest = _sha(data)
        etag = version_etag(digest, content_type, metadata)
        previous = self._previous(bucket, key, full, forbidden_ok=True)
        headers, sidecar = self._write_metadata(bucket, key, full, digest, etag, metadata)
        try:
            with self._errors("put", bucket, key):
                resp = self.client.put_object(
                    Bucket=bucket, Key=full, Body=data, ContentType=content_type, Metadata=headers
                )
        except UpscalerError:
            self._drop(bucket, sidecar)
            raise
        self._clean(bucket, full, previous, keep=sidecar)
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            written = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        except (TypeError, ValueError):
            written = time.time()
        return ObjectInfo(len(data), metadata, content_type, etag, written)

    def put_file(self, bucket: str, key: str, path: Path, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        """Upload the file at ``path`` with s3transfer (multipart above the threshold, parts in parallel).

        The file is read twice (once for its SHA-256) and must not change meanwhile."""
        bucket, full = validate_bucket(bucket), self._full(key)
        metadata, content_type = validate_metadata(metadata), validate_content_type(content_type)
        try:
            digest, size = _sha256_file(Path(path))
        except OSError as exc:
            raise InvalidInput(f"cannot read the file to store at {path}: {exc.strerror or exc}") from None
        etag = version_etag(digest, content_type, metadata)
        previous = self._previous(bucket, key, full, forbidden_ok=True)
        headers, sidecar = self._write_metadata(bucket, key, full, digest, etag, metadata)
        try:
            with self._errors("upload", bucket, key), TransferManager(self.client, self._transfer) as manager:
                extra = {"ContentType": content_type, "Metadata": headers}
                manager.upload(str(path), bucket, full, extra_args=extra).result()
        except UpscalerError:
            self._drop(bucket, sidecar)
            raise
        except OSError as exc:
            self._drop(bucket, sidecar)
            raise InvalidInput(f"cannot read the file to store at {path}: {exc.strerror or exc}") from None
        self._clean(bucket, full, previous, keep=sidecar)
        return ObjectInfo(size, metadata, content_type, etag, time.time())

    def delete(self, bucket: str, key: str) -> bool:
        """Delete the object, then its sidecar; False when there was no object."""
        bucket, full = validate_bucket(bucket), self._full(key)
        previous = self._previous(bucket, key, full, forbidden_ok=False)
        if previous is None:
            return False
        with self._errors("delete", bucket, key):
            self.client.delete_object(Bucket=bucket, Key=full)
        self._clean(bucket, full, previous, keep=None)
        return True

    # ---- reads -------------------------------------------------------------------------------------------
    def get(self, bucket: str, key: str) -> StoredObject:
        """One ``GetObject`` (plus the sidecar): bytes and metadata of the same version, verified."""
        bucket, full = validate_bucket(bucket), self._full(key)
        for attempt in range(READ_ATTEMPTS):
            with self._errors("get", bucket, key):
                resp = self.client.get_object(Bucket=bucket, Key=full)
                data = resp["Body"].read()
            try:
                info, promised = self._describe(bucket, key, full, resp)
            except _SidecarMissing:
                time.sleep(0.02 * (attempt + 1))  # overwritten while we read: read the new version
                continue
            self._verify(key, promised, _sha(data))
            return StoredObject(data, info.metadata, info.content_type, info.etag, info.last_modified)
        raise Unavailable(f"the metadata sidecar of {key!r} is missing", retry_after=1)

    def _head(self, bucket: str, key: str, full: str) -> tuple[ObjectInfo, str | None, str]:
        """(info, promised SHA-256, S3's ETag) of the current version."""
        for attempt in range(READ_ATTEMPTS):
            with self._errors("head", bucket, key):
                resp = self.client.head_object(Bucket=bucket, Key=full)
            try:
                info, promised = self._describe(bucket, key, full, resp)
            except _SidecarMissing:
                time.sleep(0.02 * (attempt + 1))
                continue
            return info, promised, resp.get("ETag", "")
        raise Unavailable(f"the metadata sidecar of {key!r} is missing", retry_after=1)

    def head(self, bucket: str, key: str) -> ObjectInfo:
        """One ``HeadObject`` (plus the sidecar)."""
        bucket, full = validate_bucket(bucket), self._full(key)
        return self._head(bucket, key, full)[0]

    def exists(self, bucket: str, key: str) -> bool:
        """One ``HeadObject``; the sidecar is not read."""
        bucket, full = validate_bucket(bucket), self._full(key)
        try:
            with self._errors("head", bucket, key):
                self.client.head_object(Bucket=bucket, Key=full)
        except NotFound:
            return False
        return True

    def get_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        """Download into a temporary file beside ``path``, verify it, fsync it and rename it onto ``path``.

        Every GET carries ``If-Match`` with the ETag of the version whose metadata was read, so data and metadata
        belong to one version (an overwrite during the download starts it again). Objects over the multipart
        threshold are fetched by s3transfer in ranged parts, in parallel."""
        bucket, full = validate_bucket(bucket), self._full(key)
        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            for _ in range(READ_ATTEMPTS):
                info, promised, s3_etag = self._head(bucket, key, full)
                try:
                    fh = open(tmp, "wb")  # noqa: SIM115 - closed by the with below
                except FileNotFoundError:
                    raise InvalidInput(f"the folder of {dest} does not exist") from None
                try:
                    with fh, self._errors("download", bucket, key):
                        self._download(bucket, full, fh, info.size, s3_etag)
                        fh.flush()
                        os.fsync(fh.fileno())
                except Conflict:
                    continue  # overwritten during the download: fetch the new version
                self._verify(key, promised, _sha256_file(tmp)[0])
                os.replace(tmp, dest)
                return info
            raise Unavailable(f"object {key!r} kept changing during the download", retry_after=1)
        except OSError as exc:
            raise Unavailable(f"cannot write {dest}: {exc.strerror or exc}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _download(self, bucket: str, full: str, fh: BinaryIO, size: int, s3_etag: str) -> None:
        """Write version ``s3_etag`` of ``full`` into ``fh``: one streamed GET, or s3transfer's ranged GETs."""
        if size < self._transfer.multipart_threshold:
            body = self.client.get_object(Bucket=bucket, Key=full, IfMatch=s3_etag)["Body"]
            while chunk := body.read(CHUNK):
                fh.write(chunk)
            return
        with TransferManager(self.client, self._transfer) as manager:
            manager.download(bucket, full, fh, subscribers=[_PinVersion(size, s3_etag)]).result()

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` in S3's (lexicographic) order, page by page; sidecars and keys this store could
        not address are skipped. The first page is fetched now, so a missing bucket raises here."""
        bucket = validate_bucket(bucket)
        if not isinstance(prefix, str):
            raise InvalidInput("prefix must be a string")
        pages = self._pages(bucket, self.prefix + prefix)
        first = next(pages)
        return self._keys(first, pages)

    def _pages(self, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            with self._errors("list", bucket):
                page = self.client.list_objects_v2(**kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _keys(self, first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[str]:
        for page in itertools.chain([first], rest):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) :]
                if RESERVED in key:
                    continue
                try:
                    yield validate_key(key)
                except InvalidInput:
                    continue

    def ping(self, bucket: str | None = None) -> None:
        """``HeadBucket`` when a bucket is given, ``ListBuckets`` otherwise."""
        if bucket is not None:
            bucket = validate_bucket(bucket)
            with self._errors("head bucket", bucket):
                self.client.head_bucket(Bucket=bucket)
        else:
            with self._errors("list buckets", ""):
                self.client.list_buckets()

    def tag(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        """``GetObjectTagging`` then ``PutObjectTagging`` with ``tags`` merged in (S3 allows 10 tags per object)."""
        bucket, full = validate_bucket(bucket), self._full(key)
        with self._errors("tag", bucket, key):
            current = self.client.get_object_tagging(Bucket=bucket, Key=full).get("TagSet", [])
            merged = {t["Key"]: t["Value"] for t in current} | dict(tags)
            tagset = [{"Key": k, "Value": v} for k, v in merged.items()]
            self.client.put_object_tagging(Bucket=bucket, Key=full, Tagging={"TagSet": tagset})

    def tags(self, bucket: str, key: str) -> dict[str, str]:
        """``GetObjectTagging``."""
        bucket, full = validate_bucket(bucket), self._full(key)
        with self._errors("get tags", bucket, key):
            current = self.client.get_object_tagging(Bucket=bucket, Key=full).get("TagSet", [])
        return {t["Key"]: t["Value"] for t in current}

    def url(self, bucket: str, key: str) -> str:
        """``s3://bucket/<prefix><key>``."""
        return f"s3://{validate_bucket(bucket)}/{self._full(key)}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
