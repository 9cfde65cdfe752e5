"""S3 through boto3, as in production (and against moto, MinIO or LocalStack through ``endpoint_url``).

A single ``PutObject`` is atomic in S3. Metadata travels as one base64 JSON document in ``x-amz-meta-upscaler``;
when it would not fit S3's 2 KB user-metadata limit (a large ICC profile or EXIF block), it goes first into a
content-addressed sidecar object ``<key>.upscaler-meta.<sha>`` and the object's own metadata points at it with
the sidecar's SHA-256, which readers verify. Readers therefore never see an object without its metadata. The
sidecar of an overwritten or deleted object is removed after the object itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from upscaler.errors import Forbidden, NotFound, Unavailable, UpscalerError
from upscaler.store.base import ObjectInfo, ObjectStore, StoredObject
from upscaler.store.keys import RESERVED, validate_bucket, validate_key

META_HEADER = "upscaler"  # x-amz-meta-upscaler
SIDECAR_HEADER = "upscaler-sidecar"  # x-amz-meta-upscaler-sidecar: "<sidecar key> <sha256>"
INLINE_BUDGET = 1800  # bytes of encoded metadata kept inline (S3 allows 2048 for all user metadata)
SIDECAR = RESERVED + "meta."


class S3Store(ObjectStore):
    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        prefix: str = "",
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._config = {"max_attempts": max_attempts, "connect_timeout": connect_timeout, "read_timeout": read_timeout}
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    cfg = Config(
                        retries={"max_attempts": self._config["max_attempts"], "mode": "standard"},
                        connect_timeout=self._config["connect_timeout"],
                        read_timeout=self._config["read_timeout"],
                    )
                    self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=cfg)
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    # ---- errors ------------------------------------------------------------------------------------------
    def _call(self, what: str, bucket: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket":
                raise NotFound(f"bucket {bucket!r} does not exist") from None
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise NotFound(f"no object {key!r} in bucket {bucket!r}") from None
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                raise Forbidden(f"access to bucket {bucket!r} denied to this service") from None
            raise Unavailable(f"S3 {what} failed: {code or status}", retry_after=1) from None
        except BotoCoreError as exc:
            raise Unavailable(f"S3 {what} failed: {type(exc).__name__}", retry_after=1) from None

    # ---- metadata encoding -------------------------------------------------------------------------------
    @staticmethod
    def _encode(metadata: dict[str, str]) -> bytes:
        return json.dumps(metadata, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()

    def _decode(self, bucket: str, key: str, headers: dict[str, str]) -> dict[str, str]:
        if META_HEADER in headers:
            try:
                return json.loads(base64.b64decode(headers[META_HEADER]))
            except ValueError:
                raise UpscalerError(f"metadata of {key!r} is corrupt") from None
        if SIDECAR_HEADER in headers:
            sidecar, _, digest = headers[SIDECAR_HEADER].partition(" ")
            resp = self._call("get (metadata)", bucket, key, self.client.get_object, Bucket=bucket, Key=sidecar)
            body = resp["Body"].read()
            if hashlib.sha256(body).hexdigest() != digest:
                raise Unavailable(f"metadata sidecar of {key!r} does not match its checksum", retry_after=1)
            return json.loads(body)
        return {}  # an object written by someone else: no metadata of ours

    def _put_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> dict[str, str]:
        """S3 user metadata for ``metadata``: inline, or a pointer to a sidecar written now."""
        encoded = self._encode(metadata)
        inline = base64.b64encode(encoded).decode("ascii")
        if len(inline) <= INLINE_BUDGET:
            return {META_HEADER: inline}
        digest = hashlib.sha256(encoded).hexdigest()
        sidecar = f"{key}{SIDECAR}{digest[:16]}"
        self._call(
            "put (metadata)",
            bucket,
            key,
            self.client.put_object,
            Bucket=bucket,
            Key=sidecar,
            Body=encoded,
            ContentType="application/json",
        )
        return {SIDECAR_HEADER: f"{sidecar} {digest}"}

    def _drop_sidecar(self, bucket: str, headers: dict[str, str] | None, keep: str = "") -> None:
        if headers and SIDECAR_HEADER in headers:
            old = headers[SIDECAR_HEADER].partition(" ")[0]
            if old != keep:
                with contextlib.suppress(Exception):  # best effort: an orphan sidecar is harmless
                    self.client.delete_object(Bucket=bucket, Key=old)

    def _raw_head(self, bucket: str, key: str) -> dict[str, str] | None:
        try:
            return self._call("head", bucket, key, self.client.head_object, Bucket=bucket, Key=key)["Metadata"]
        except NotFound:
            return None

    # ---- interface ---------------------------------------------------------------------------------------
    def put(self, bucket: str, key: str, data: bytes, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        bucket, full = validate_bucket(bucket), self._key(key)
        previous = self._raw_head(bucket, full)
        headers = self._put_metadata(bucket, full, metadata)
        resp = self._call(
            "put",
            bucket,
            key,
            self.client.put_object,
            Bucket=bucket,
            Key=full,
            Body=data,
            ContentType=content_type,
            Metadata=headers,
        )
        self._drop_sidecar(bucket, previous, keep=headers.get(SIDECAR_HEADER, "").partition(" ")[0])
        return ObjectInfo(len(data), dict(metadata), content_type, resp.get("ETag", "").strip('"'), 0.0)

    def put_file(self, bucket: str, key: str, path: Path, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        from boto3.s3.transfer import TransferConfig

        bucket, full = validate_bucket(bucket), self._key(key)
        if not Path(path).is_file():
            raise NotFound(f"no file at {path}")
        previous = self._raw_head(bucket, full)
        headers = self._put_metadata(bucket, full, metadata)
        extra = {"ContentType": content_type, "Metadata": headers}
        self._call(
            "upload",
            bucket,
            key,
            self.client.upload_file,
            str(path),
            bucket,
            full,
            ExtraArgs=extra,
            Config=TransferConfig(multipart_threshold=64 * 1024 * 1024),
        )
        self._drop_sidecar(bucket, previous, keep=headers.get(SIDECAR_HEADER, "").partition(" ")[0])
        return self.head(bucket, key)

    def get(self, bucket: str, key: str) -> StoredObject:
        bucket, full = validate_bucket(bucket), self._key(key)
        for attempt in range(2):  # the sidecar may be swapped by a concurrent overwrite between our two reads
            resp = self._call("get", bucket, key, self.client.get_object, Bucket=bucket, Key=full)
            data = resp["Body"].read()
            try:
                metadata = self._decode(bucket, key, resp.get("Metadata", {}))
            except NotFound:
                if attempt:
                    raise Unavailable(f"metadata sidecar of {key!r} is missing", retry_after=1) from None
                continue
            return StoredObject(
                data,
                metadata,
                resp.get("ContentType", "application/octet-stream"),
                resp.get("ETag", "").strip('"'),
                resp["LastModified"].timestamp(),
            )
        raise AssertionError("unreachable")

    def head(self, bucket: str, key: str) -> ObjectInfo:
        bucket, full = validate_bucket(bucket), self._key(key)
        resp = self._call("head", bucket, key, self.client.head_object, Bucket=bucket, Key=full)
        try:
            metadata = self._decode(bucket, key, resp.get("Metadata", {}))
        except NotFound:
            raise Unavailable(f"metadata sidecar of {key!r} is missing", retry_after=1) from None
        return ObjectInfo(
            resp["ContentLength"],
            metadata,
            resp.get("ContentType", "application/octet-stream"),
            resp.get("ETag", "").strip('"'),
            resp["LastModified"].timestamp(),
        )

    def get_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        import os
        import uuid

        info = self.head(bucket, key)
        bucket, full = validate_bucket(bucket), self._key(key)
        tmp = Path(path).with_name(f".{Path(path).name}.{uuid.uuid4().hex}.part")
        try:
            self._call("download", bucket, key, self.client.download_file, bucket, full, str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return info

    def delete(self, bucket: str, key: str) -> bool:
        bucket, full = validate_bucket(bucket), self._key(key)
        previous = self._raw_head(bucket, full)
        if previous is None:
            return False
        self._call("delete", bucket, key, self.client.delete_object, Bucket=bucket, Key=full)
        self._drop_sidecar(bucket, previous)
        return True

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        bucket = validate_bucket(bucket)
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            "list", bucket, prefix, lambda: list(paginator.paginate(Bucket=bucket, Prefix=self.prefix + prefix))
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if RESERVED not in key:
                    yield key

    def ping(self, bucket: str | None = None) -> None:
        if bucket:
            self._call("head bucket", bucket, "", self.client.head_bucket, Bucket=validate_bucket(bucket))
        else:
            self._call("list buckets", "", "", self.client.list_buckets)

    def url(self, bucket: str, key: str) -> str:
        return f"s3://{validate_bucket(bucket)}/{self._key(key)}"
