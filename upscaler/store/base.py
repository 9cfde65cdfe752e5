"""The object store interface: S3 in production, a local folder by default.

Every method takes the bucket per call, because legacy requests name ``s3_bucket`` each time. Writes are atomic:
a reader sees the old object with its metadata or the new one with its metadata, never a mix, never half.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    metadata: dict[str, str]
    content_type: str
    etag: str
    last_modified: float


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    metadata: dict[str, str]
    content_type: str
    etag: str
    last_modified: float


class ObjectStore(ABC):
    @abstractmethod
    def put(self, bucket: str, key: str, data: bytes, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        """Write ``data`` with its ``metadata`` (any size) atomically."""

    @abstractmethod
    def get(self, bucket: str, key: str) -> StoredObject:
        """The object and its metadata; :class:`NotFound` when missing."""

    @abstractmethod
    def head(self, bucket: str, key: str) -> ObjectInfo:
        """Metadata without the data; :class:`NotFound` when missing."""

    @abstractmethod
    def delete(self, bucket: str, key: str) -> bool:
        """Remove the object and its metadata; False when there was nothing to remove."""

    @abstractmethod
    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (the store's own files are never listed)."""

    @abstractmethod
    def put_file(self, bucket: str, key: str, path: Path, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        """Like :meth:`put`, streaming from a file (for video)."""

    @abstractmethod
    def get_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        """Stream the object into ``path`` (written atomically); returns its info."""

    @abstractmethod
    def ping(self, bucket: str | None = None) -> None:
        """Raise :class:`Unavailable` when the store cannot be used now."""

    @abstractmethod
    def url(self, bucket: str, key: str) -> str:
        """Where the object lives, for people and job records (``s3://b/k`` or ``file:///...``)."""

    def exists(self, bucket: str, key: str) -> bool:
        from upscaler.errors import NotFound

        try:
            self.head(bucket, key)
        except NotFound:
            return False
        return True
