"""Choose the store from the ``UPSCALER_STORAGE`` setting."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from upscaler.errors import InvalidInput
from upscaler.store.base import ObjectStore

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def open_store(
    spec: str, *, endpoint_url: str | None = None, timeout: float = 30.0, max_attempts: int = 3
) -> ObjectStore:
    """The store ``spec`` names.

    * ``s3`` or ``s3://`` -> :class:`~upscaler.store.s3.S3Store` (the bucket comes from each call);
      ``s3://<anything>/<prefix>`` also prepends ``<prefix>/`` to every key. ``endpoint_url`` points it at an
      S3-compatible endpoint (moto, MinIO, LocalStack); None uses AWS's. Each call takes ``timeout`` seconds at
      most, its ``max_attempts`` attempts included (a hung endpoint answers 503 in that time, not in minutes).
    * ``file:///abs/path`` or a plain folder path -> :class:`~upscaler.store.local.LocalFolderStore`.

    Anything else (an empty string, another URL scheme, a ``file://`` URL naming a remote host) is
    :class:`InvalidInput`, as is ``s3://`` when boto3 is not installed.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInput("UPSCALER_STORAGE must name a folder, file:///folder or s3://")
    spec = spec.strip()
    if spec == "s3" or spec.startswith("s3://"):
        try:
            from upscaler.store.s3 import S3Store
        except ImportError:
            raise InvalidInput("UPSCALER_STORAGE=s3:// needs boto3 (pip install 'media-upscaler[aws]')") from None
        from upscaler.aws import deadline_config

        prefix = unquote(urlsplit(spec).path) if spec.startswith("s3://") else ""
        config = deadline_config(timeout, max_attempts)
        return S3Store(
            endpoint_url=endpoint_url,
            prefix=prefix,
            max_attempts=max_attempts,
            connect_timeout=config["connect_timeout"],
            read_timeout=config["read_timeout"],
        )

    from upscaler.store.local import LocalFolderStore

    if spec.startswith("file:"):
        parts = urlsplit(spec)
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"UPSCALER_STORAGE: a file URL must name a local folder, not host {parts.netloc!r}")
        path = unquote(parts.path)
    elif _SCHEME.match(spec):
        raise InvalidInput(f"UPSCALER_STORAGE: unsupported scheme in {spec!r} (use a folder, file:// or s3://)")
    else:
        path = spec
    if not path:
        raise InvalidInput("UPSCALER_STORAGE must name a folder, file:///folder or s3://")
    return LocalFolderStore(path)
