"""A local folder as an object store: ``<root>/<bucket>/<key>`` holds the bytes, so a person can open the stored
images directly; the metadata lives in a hidden sidecar ``.<name>.upscaler-meta`` beside each object.

Atomicity without a database, for readers in any process and writers killed at any moment:

1. Writers of one key hold an ``flock`` on a hidden lock file (threads and processes alike).
2. ``put`` writes the data to a hidden temporary file and the metadata, with the data's SHA-256, to a hidden
   *pending* sidecar; both are fsynced.
3. The data is renamed over ``<key>``, then the pending sidecar over the sidecar; the directory is fsynced.

A reader takes the sidecar whose SHA-256 matches the data it read: the committed one, or the pending one when
a writer stopped (or is) between the two renames, which rolls that write forward. Anything else is a write in
progress before its data rename, and the reader retries. So every read returns one version's data with that
version's metadata. Temporary files of dead writers are removed by later writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from upscaler.errors import NotFound, Unavailable
from upscaler.store.base import ObjectInfo, ObjectStore, StoredObject
from upscaler.store.keys import RESERVED, validate_bucket, validate_key

META = RESERVED + "meta"
PENDING = RESERVED + "pending"
TMP = RESERVED + "tmp"
LOCK = RESERVED + "lock"
STALE_SECONDS = 3600


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class LocalFolderStore(ObjectStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    # ---- paths -------------------------------------------------------------------------------------------
    def _path(self, bucket: str, key: str) -> Path:
        path = self.root / validate_bucket(bucket) / validate_key(key)
        if not path.resolve().is_relative_to(self.root):  # symlinks inside the root cannot lead out
            raise NotFound(f"{key!r} not found")
        return path

    @staticmethod
    def _hidden(path: Path, suffix: str) -> Path:
        return path.with_name(f".{path.name}{suffix}")

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._hidden(path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # ---- writes ------------------------------------------------------------------------------------------
    def put(self, bucket: str, key: str, data: bytes, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        path = self._path(bucket, key)
        digest = hashlib.sha256(data).hexdigest()
        try:
            with self._locked(path):
                tmp = self._hidden(path, f".{uuid.uuid4().hex}{TMP}")
                _write(tmp, data)
                return self._commit(path, tmp, digest, len(data), metadata, content_type)
        except OSError as exc:
            raise Unavailable(f"local store cannot write {key!r}: {exc.strerror or exc}") from None

    def put_file(self, bucket: str, key: str, path: Path, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        target = self._path(bucket, key)
        try:
            with self._locked(target):
                tmp = self._hidden(target, f".{uuid.uuid4().hex}{TMP}")
                sha = hashlib.sha256()
                with open(path, "rb") as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        sha.update(chunk)
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                return self._commit(target, tmp, sha.hexdigest(), tmp.stat().st_size, metadata, content_type)
        except FileNotFoundError:
            raise NotFound(f"no file at {path}") from None
        except OSError as exc:
            raise Unavailable(f"local store cannot write {key!r}: {exc.strerror or exc}") from None

    def _commit(
        self, path: Path, tmp: Path, digest: str, size: int, metadata: dict[str, str], content_type: str
    ) -> ObjectInfo:
        now = time.time()
        record = {
            "sha256": digest,
            "size": size,
            "content_type": content_type,
            "metadata": dict(metadata),
            "last_modified": now,
        }
        pending = self._hidden(path, PENDING)
        _write(pending, json.dumps(record, ensure_ascii=False).encode())
        os.replace(tmp, path)
        os.replace(pending, self._hidden(path, META))
        _fsync_dir(path.parent)
        self._sweep(path.parent)
        return ObjectInfo(size, dict(metadata), content_type, digest, now)

    def _sweep(self, folder: Path) -> None:
        """Remove temporary files that dead writers left behind."""
        cutoff = time.time() - STALE_SECONDS
        for entry in folder.glob(f".*{TMP}"):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()

    def delete(self, bucket: str, key: str) -> bool:
        path = self._path(bucket, key)
        if not path.parent.is_dir():
            return False
        with self._locked(path):
            existed = path.is_file()
            for victim in (path, self._hidden(path, PENDING), self._hidden(path, META)):
                with contextlib.suppress(FileNotFoundError):
                    victim.unlink()
            with contextlib.suppress(FileNotFoundError):
                self._hidden(path, LOCK).unlink()
            _fsync_dir(path.parent)
        return existed

    # ---- reads -------------------------------------------------------------------------------------------
    def _read_meta(self, path: Path, digest: str) -> dict | None:
        for candidate in (self._hidden(path, META), self._hidden(path, PENDING)):
            try:
                record = json.loads(candidate.read_bytes())
            except (FileNotFoundError, ValueError):
                continue
            if record.get("sha256") == digest:
                return record
        return None

    def get(self, bucket: str, key: str) -> StoredObject:
        path = self._path(bucket, key)
        for attempt in range(50):
            try:
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise NotFound(f"no object {key!r} in bucket {bucket!r}") from None
            record = self._read_meta(path, hashlib.sha256(data).hexdigest())
            if record is not None:
                return StoredObject(
                    data, record["metadata"], record["content_type"], record["sha256"], record["last_modified"]
                )
            time.sleep(0.002 * (attempt + 1))  # a writer is between its renames
        raise Unavailable(f"object {key!r} has no matching metadata (a write keeps failing?)")

    def head(self, bucket: str, key: str) -> ObjectInfo:
        obj = self.get(bucket, key)
        return ObjectInfo(len(obj.data), obj.metadata, obj.content_type, obj.etag, obj.last_modified)

    def get_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        src = self._path(bucket, key)
        for attempt in range(50):
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
            try:
                shutil.copyfile(src, tmp)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise NotFound(f"no object {key!r} in bucket {bucket!r}") from None
            sha = hashlib.sha256()
            with open(tmp, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    sha.update(chunk)
            record = self._read_meta(src, sha.hexdigest())
            if record is not None:
                os.replace(tmp, path)
                return ObjectInfo(
                    record["size"],
                    record["metadata"],
                    record["content_type"],
                    record["sha256"],
                    record["last_modified"],
                )
            tmp.unlink()
            time.sleep(0.002 * (attempt + 1))
        raise Unavailable(f"object {key!r} has no matching metadata (a write keeps failing?)")

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        base = self.root / validate_bucket(bucket)
        if not base.is_dir():
            return iter(())
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and RESERVED not in path.name:
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def ping(self, bucket: str | None = None) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".ping{TMP}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise Unavailable(f"local store at {self.root} is not writable: {exc.strerror or exc}") from None

    def url(self, bucket: str, key: str) -> str:
        return self._path(bucket, key).as_uri()
