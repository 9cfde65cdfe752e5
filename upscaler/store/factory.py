"""Choose the store from the ``UPSCALER_STORAGE`` setting."""

from __future__ import annotations

from urllib.parse import urlsplit

from upscaler.store.base import ObjectStore


def open_store(spec: str, *, endpoint_url: str | None = None) -> ObjectStore:
    """``s3://`` or ``s3://anything/prefix`` -> S3 (bucket per call, optional key prefix); ``file:///path`` or a
    plain path -> a local folder."""
    if spec == "s3" or spec.startswith("s3://"):
        from upscaler.store.s3 import S3Store

        return S3Store(endpoint_url=endpoint_url, prefix=urlsplit(spec).path if spec.startswith("s3://") else "")
    from upscaler.store.local import LocalFolderStore

    path = urlsplit(spec).path if spec.startswith("file://") else spec
    if not path:
        raise ValueError("UPSCALER_STORAGE must be a folder or s3://")
    return LocalFolderStore(path)
