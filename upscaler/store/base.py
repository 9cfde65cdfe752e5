"""The object store interface: S3 in production, a local folder by default.

Every method takes the bucket per call, because legacy requests name ``s3_bucket`` each time. Writes are atomic:
a reader sees the old object with its metadata or the new one with its metadata, never a mix, never half, and a
writer killed at any moment leaves one of the two complete.

Errors are those of :mod:`upscaler.errors`: :class:`InvalidInput` for a bad key, bucket, metadata or content type,
:class:`NotFound` for a missing object or bucket, :class:`Forbidden` when the store refuses this service, and
:class:`Unavailable` when the store cannot serve now (unreachable, throttled, failing, or an object whose metadata
cannot be verified).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from upscaler.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one version of an object, without its bytes."""

    #: Length of the object's data in bytes.
    size: int
    #: The user metadata given when the object was written, exactly (string to string, any size).
    metadata: dict[str, str]
    #: The MIME type given when the object was written.
    content_type: str
    #: Stable identifier of this version: a SHA-256 over the data's hash, the content type and the metadata
    #: (see :func:`version_etag`), the same in every store; objects written by other tools get a store-specific id.
    etag: str
    #: When this version was written, in Unix seconds.
    last_modified: float


@dataclass(frozen=True)
class StoredObject:
    """One version of an object: its bytes and everything :class:`ObjectInfo` holds except the size."""

    #: The object's bytes.
    data: bytes
    #: The user metadata given when the object was written, exactly.
    metadata: dict[str, str]
    #: The MIME type given when the object was written.
    content_type: str
    #: Stable identifier of this version (see :attr:`ObjectInfo.etag`).
    etag: str
    #: When this version was written, in Unix seconds.
    last_modified: float


def canonical_metadata(metadata: dict[str, str]) -> bytes:
    """One canonical UTF-8 JSON encoding of ``metadata`` (sorted keys, no spaces)."""
    return json.dumps(metadata, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def version_etag(data_sha256: str, content_type: str, metadata: dict[str, str]) -> str:
    """The etag of a version: SHA-256 (hex) of the data's SHA-256, the content type and the canonical metadata.

    Identical writes give identical etags in every store; a change of data, type or metadata changes it.
    """
    h = hashlib.sha256(b"upscaler-etag-v1\0")
    h.update(data_sha256.encode("ascii") + b"\0" + content_type.encode("ascii") + b"\0")
    h.update(canonical_metadata(metadata))
    return h.hexdigest()


class ObjectStore(ABC):
    """Objects (bytes + user metadata + content type) under ``bucket``/``key``, written atomically."""

    @abstractmethod
    def put(self, bucket: str, key: str, data: bytes, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        """Write ``data`` with its ``metadata`` (any size) and ``content_type`` atomically, replacing any previous
        version; return the new version's info."""

    @abstractmethod
    def get(self, bucket: str, key: str) -> StoredObject:
        """The current version's bytes and metadata; :class:`NotFound` when the object or bucket is missing."""

    @abstractmethod
    def head(self, bucket: str, key: str) -> ObjectInfo:
        """The current version's info without its bytes; :class:`NotFound` when missing."""

    @abstractmethod
    def delete(self, bucket: str, key: str) -> bool:
        """Remove the object and its metadata; True when something was removed, False when there was nothing
        (deleting twice is fine)."""

    @abstractmethod
    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, in lexicographic order; the store's own files are never listed."""

    @abstractmethod
    def put_file(self, bucket: str, key: str, path: Path, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        """Like :meth:`put`, streaming the data from the file at ``path`` (for video) instead of memory."""

    @abstractmethod
    def get_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        """Stream the current version into ``path`` (replaced atomically, never left half written); return the
        info of the version written there."""

    @abstractmethod
    def ping(self, bucket: str | None = None) -> None:
        """Readiness check: return when the store (and ``bucket``, when given) can be used now, raise
        :class:`Unavailable` (or :class:`NotFound` / :class:`Forbidden` for the bucket) otherwise."""

    @abstractmethod
    def url(self, bucket: str, key: str) -> str:
        """Where the object lives, for people and job records (``s3://b/k`` or ``file:///...``)."""

    def tag(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        """Add ``tags`` to the current version's tags (S3 object tags: what lifecycle rules filter on), keeping
        the others; a new version of the object starts untagged. :class:`NotFound` when missing."""
        raise InvalidInput(f"{type(self).__name__} cannot tag objects")

    def tags(self, bucket: str, key: str) -> dict[str, str]:
        """The current version's tags; :class:`NotFound` when missing."""
        self.head(bucket, key)
        return {}

    def exists(self, bucket: str, key: str) -> bool:
        """True when ``bucket``/``key`` holds an object."""
        try:
            self.head(bucket, key)
        except NotFound:
            return False
        return True
