"""A local folder as an object store: ``<root>/<bucket>/<key>`` holds exactly the object's bytes, so a person can
browse the folder and open the stored images directly. Everything else the store keeps is a hidden file beside
the object whose name contains the reserved marker ``.upscaler-`` (which no key may contain):

* ``.<name>.<inode>.upscaler-meta``: the metadata record of the data file with that inode number (JSON: the
  user metadata, content type, etag, the data's SHA-256, size, inode and modification time);
* ``.<name>.<token>.data.upscaler-tmp`` / ``.<name>.<token>.meta.upscaler-tmp``: a write in progress;
* ``.<name>.upscaler-lock``: the writers' lock and journal, present only while a write runs (or after a crash).

Atomicity without a database, for readers in any process and writers killed at any moment:

1. Writers of one key take an exclusive ``flock`` on the lock file (plus an in-process lock, for filesystems whose
   locks are per process), so they run one at a time; readers take no lock.
2. ``put`` records in the lock file a journal (a token naming its temporary files and the inode it replaces),
   writes the data to a temporary file and fsyncs it, then writes the metadata record *named after that file's
   inode* (temporary file, fsync, rename, fsync of the folder), and only then renames the data over ``<key>`` and
   fsyncs the folder. The record of the replaced inode is removed last.
3. A reader opens ``<key>`` and keeps the descriptor: the inode cannot change or be reused while it is open, so
   the record named after it belongs to exactly these bytes (its size and modification time are checked too, and
   ``get`` verifies the SHA-256). A record that has vanished means a writer replaced the file after the reader
   opened it: the reader starts again.

A data file is therefore visible only once its record is durable, and the record of a visible file is removed
only after the file is replaced or deleted. A writer killed at any point leaves the old version or the new one
complete, plus orphans that readers ignore and that the next writer of that key removes, guided by the journal.
Keys with a segment longer than 200 bytes are refused (the hidden names must fit the filesystem's 255-byte
limit), and a key cannot be both an object and a folder (``a`` and ``a/b``): that write is a :class:`Conflict`.
Files put in the folder by hand are served with empty metadata and a content type guessed from the name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mimetypes
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from upscaler.errors import Conflict, InvalidInput, NotFound, Unavailable, UpscalerError
from upscaler.store.base import ObjectInfo, ObjectStore, StoredObject, version_etag
from upscaler.store.keys import (
    RESERVED,
    validate_bucket,
    validate_content_type,
    validate_key,
    validate_metadata,
)

META = RESERVED + "meta"
TMP = RESERVED + "tmp"
LOCK = RESERVED + "lock"
#: Longest key segment (file or folder name) in bytes, leaving room for the hidden names beside it.
MAX_SEGMENT_BYTES = 200
#: How long a reader keeps retrying while writers replace the object under it.
READ_DEADLINE_S = 5.0
CHUNK = 1 << 20
_TOKEN = re.compile(r"[0-9a-f]{32}")
#: In-process writer locks, striped by lock-file path (``flock`` alone does not exclude threads on every filesystem).
_STRIPES = [threading.Lock() for _ in range(64)]
_MISSING: Any = object()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a folder; the renames are still atomic there
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _copy(src: BinaryIO, dst: BinaryIO) -> str:
    """Copy ``src`` to ``dst`` in chunks; return the SHA-256 (hex) of what was copied."""
    sha = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := src.readinto(view):  # type: ignore[attr-defined]
        sha.update(view[:n])
        dst.write(view[:n])
    return sha.hexdigest()


class LocalFolderStore(ObjectStore):
    """Objects as plain files under ``root``/<bucket>/<key>, with hidden metadata records beside them."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        #: The folder holding one sub-folder per bucket (absolute).
        self.root = Path(root).expanduser().resolve()

    # ---- names -------------------------------------------------------------------------------------------
    def _path(self, bucket: str, key: str) -> Path:
        bucket, key = validate_bucket(bucket), validate_key(key)
        for part in key.split("/"):
            if len(part.encode("utf-8")) > MAX_SEGMENT_BYTES:
                raise InvalidInput(f"each '/'-separated part of a key must be at most {MAX_SEGMENT_BYTES} bytes here")
        return self.root / bucket / key

    @staticmethod
    def _meta(path: Path, ino: int) -> Path:
        return path.with_name(f".{path.name}.{ino}{META}")

    @staticmethod
    def _tmp(path: Path, token: str, kind: str) -> Path:
        return path.with_name(f".{path.name}.{token}.{kind}{TMP}")

    @staticmethod
    def _lock_path(path: Path) -> Path:
        return path.with_name(f".{path.name}{LOCK}")

    def _missing(self, bucket: str, key: str) -> NotFound:
        if not (self.root / bucket).is_dir():
            return NotFound(f"bucket {bucket!r} does not exist")
        return NotFound(f"no object {key!r} in bucket {bucket!r}")

    # ---- the writers' lock and journal -------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[int]:
        """Hold the key's writer lock; yield the lock file's descriptor (which holds the journal).

        The lock file is removed by the writer that finishes, so after ``flock`` returns we check that the file
        we locked is still the one at that name, and start again otherwise.
        """
        lock_path = self._lock_path(path)
        with _STRIPES[hash(str(lock_path)) % len(_STRIPES)]:
            while True:
                try:
                    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
                except FileNotFoundError:  # a delete pruned the empty folder just made: make it again
                    lock_path.parent.mkdir(parents=True, exist_ok=True)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    here = os.stat(lock_path)
                    mine = os.fstat(fd)
                    if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                        break
                except FileNotFoundError:
                    pass
                except BaseException:
                    os.close(fd)
                    raise
                os.close(fd)
            try:
                self._recover(path, fd)
                yield fd
            finally:
                os.close(fd)

    @staticmethod
    def _journal(lock_fd: int, token: str | None, replaced: int | None) -> None:
        """Record what the running write creates and replaces, for :meth:`_recover` if it dies."""
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, json.dumps({"token": token, "replaced": replaced}).encode(), 0)

    @staticmethod
    def _current_inode(path: Path) -> int | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_ino if stat.S_ISREG(st.st_mode) else None

    def _recover(self, path: Path, lock_fd: int) -> None:
        """Undo what a dead (or failed) writer of ``path`` left, as its journal says; idempotent."""
        raw = os.pread(lock_fd, 1 << 16, 0)
        if not raw:
            return
        try:
            journal = json.loads(raw)
        except ValueError:
            journal = {}
        current = self._current_inode(path)
        token = journal.get("token")
        if isinstance(token, str) and _TOKEN.fullmatch(token):
            tmp = self._tmp(path, token, "data")
            with contextlib.suppress(FileNotFoundError):
                orphan = os.stat(tmp).st_ino
                if orphan != current:
                    _unlink(self._meta(path, orphan))
            _unlink(tmp)
            _unlink(self._tmp(path, token, "meta"))
        replaced = journal.get("replaced")
        if isinstance(replaced, int) and replaced != current:
            _unlink(self._meta(path, replaced))
        os.ftruncate(lock_fd, 0)

    def _finish(self, path: Path, lock_fd: int, failed: bool) -> None:
        """End a write while still holding the lock: clean up after a failure, then remove the lock file."""
        if failed:
            try:
                self._recover(path, lock_fd)
            except OSError:
                return  # leave the journal for the next writer
        _unlink(self._lock_path(path))

    # ---- writes ------------------------------------------------------------------------------------------
    def _write(
        self,
        bucket: str,
        key: str,
        fill: Callable[[BinaryIO], str],
        metadata: dict[str, str],
        content_type: str,
    ) -> ObjectInfo:
        """Write a new version of ``bucket``/``key``: ``fill`` writes the data into a file and returns its SHA-256."""
        path = self._path(bucket, key)
        metadata = validate_metadata(metadata)
        content_type = validate_content_type(content_type)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Conflict(f"cannot store {key!r}: a folder above it is already an object") from None
        except OSError as exc:
            raise Unavailable(f"local store cannot write {key!r}: {exc.strerror or exc}") from None
        try:
            with self._locked(path) as lock:
                failed = True
                try:
                    info = self._commit(path, lock, fill, metadata, content_type)
                    failed = False
                    return info
                finally:
                    self._finish(path, lock, failed)
        except (IsADirectoryError, NotADirectoryError):
            raise Conflict(f"cannot store {key!r}: it is a folder of other objects") from None
        except UpscalerError:
            raise
        except OSError as exc:
            raise Unavailable(f"local store cannot write {key!r}: {exc.strerror or exc}") from None

    def _commit(
        self, path: Path, lock: int, fill: Callable[[BinaryIO], str], metadata: dict[str, str], content_type: str
    ) -> ObjectInfo:
        replaced = self._current_inode(path)
        if replaced is None and path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        token = uuid.uuid4().hex
        self._journal(lock, token, replaced)
        tmp = self._tmp(path, token, "data")
        with open(tmp, "xb") as fh:
            digest = fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        st = os.stat(tmp)
        now = time.time()
        etag = version_etag(digest, content_type, metadata)
        record = {
            "version": 1,
            "inode": st.st_ino,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": digest,
            "etag": etag,
            "content_type": content_type,
            "last_modified": now,
            "metadata": metadata,
        }
        meta_tmp = self._tmp(path, token, "meta")
        _write_synced(meta_tmp, json.dumps(record, ensure_ascii=False).encode("utf-8"))
        os.replace(meta_tmp, self._meta(path, st.st_ino))
        _fsync_dir(path.parent)  # the record is durable before the data it describes becomes visible
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if replaced is not None and replaced != st.st_ino:
            _unlink(self._meta(path, replaced))
        return ObjectInfo(st.st_size, dict(metadata), content_type, etag, now)

    def put(self, bucket: str, key: str, data: bytes, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        """Write ``data`` atomically (see the module's description)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput("data must be bytes")

        def fill(fh: BinaryIO) -> str:
            fh.write(data)
            return hashlib.sha256(data).hexdigest()

        return self._write(bucket, key, fill, metadata, content_type)

    def put_file(self, bucket: str, key: str, path: Path, *, metadata: dict[str, str], content_type: str) -> ObjectInfo:
        """Copy the file at ``path`` in 1 MiB chunks into the store, atomically."""
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below, after the write
        except OSError as exc:
            raise InvalidInput(f"cannot read the file to store at {path}: {exc.strerror or exc}") from None
        with src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise InvalidInput(f"{path} is not a regular file")
            return self._write(bucket, key, lambda dst: _copy(src, dst), metadata, content_type)

    def delete(self, bucket: str, key: str) -> bool:
        """Remove the object and its record; False when there was none."""
        path = self._path(bucket, key)
        if not path.parent.is_dir():
            return False
        try:
            with self._locked(path) as lock:
                failed = True
                try:
                    current = self._current_inode(path)
                    if current is not None:
                        self._journal(lock, None, current)
                        os.unlink(path)
                        _unlink(self._meta(path, current))
                        _unlink(self._tags_path(path, current))
                        _fsync_dir(path.parent)
                    failed = False
                    return current is not None
                finally:
                    self._finish(path, lock, failed)
        except OSError as exc:
            raise Unavailable(f"local store cannot delete {key!r}: {exc.strerror or exc}") from None
        finally:
            self._prune(path.parent, self.root / bucket)

    @staticmethod
    def _prune(folder: Path, bucket_dir: Path) -> None:
        """Remove the folders above a deleted key that are now empty (a finished job's checkpoint folder), up to the
        bucket's; a writer racing into one makes it again (see :meth:`_locked`)."""
        while folder != bucket_dir and bucket_dir in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): the folders above are not empty either
                return
            folder = folder.parent

    # ---- reads -------------------------------------------------------------------------------------------
    def _read_record(self, path: Path, st: os.stat_result) -> dict[str, Any] | None:
        """The record of the open data file ``st``; None for a file the store did not write; ``_MISSING`` when the
        record is gone (the file was replaced or deleted after it was opened)."""
        try:
            raw = self._meta(path, st.st_ino).read_bytes()
        except FileNotFoundError:
            return _MISSING
        try:
            record = json.loads(raw)
            matches = (record["inode"], record["size"], record["mtime_ns"]) == (st.st_ino, st.st_size, st.st_mtime_ns)
        except (ValueError, KeyError, TypeError):
            raise Unavailable(f"the metadata record of {path.name!r} is unreadable") from None
        return record if matches else None  # None: changed in place by something else than this store

    def _open(self, bucket: str, key: str) -> tuple[Path, int, os.stat_result, dict[str, Any] | None]:
        """Open the current version: (path, descriptor, its stat, its record or None for a foreign file)."""
        path = self._path(bucket, key)
        deadline = time.monotonic() + READ_DEADLINE_S
        while True:
            try:
                fd = os.open(path, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                raise self._missing(bucket, key) from None
            except OSError as exc:
                raise Unavailable(f"local store cannot read {key!r}: {exc.strerror or exc}") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise self._missing(bucket, key)
                record = self._read_record(path, st)
                if record is not _MISSING:
                    return path, fd, st, record
                if self._current_inode(path) == st.st_ino:
                    return path, fd, st, None  # no record and still in place: a file put there by hand
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # replaced while we opened it: read the new version
            if time.monotonic() > deadline:
                raise Unavailable(f"object {key!r} keeps changing; try again", retry_after=1)
            time.sleep(0.001)

    @staticmethod
    def _info(path: Path, st: os.stat_result, record: dict[str, Any] | None) -> ObjectInfo:
        if record is not None:
            return ObjectInfo(
                record["size"], record["metadata"], record["content_type"], record["etag"], record["last_modified"]
            )
        guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        etag = hashlib.sha256(f"file:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        return ObjectInfo(st.st_size, {}, guessed, etag, st.st_mtime)

    @staticmethod
    def _verify(key: str, record: dict[str, Any] | None, digest: str) -> None:
        if record is not None and record["sha256"] != digest:
            raise Unavailable(f"stored bytes of {key!r} do not match their checksum (changed outside the store?)")

    def get(self, bucket: str, key: str) -> StoredObject:
        """Read the current version: bytes and metadata of the same write."""
        path, fd, st, record = self._open(bucket, key)
        try:
            with open(fd, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise Unavailable(f"local store cannot read {key!r}: {exc.strerror or exc}") from None
        self._verify(key, record, hashlib.sha256(data).hexdigest())
        info = self._info(path, st, record)
        return StoredObject(data, info.metadata, info.content_type, info.etag, info.last_modified)

    def head(self, bucket: str, key: str) -> ObjectInfo:
        """The current version's info; reads the record only, not the data."""
        path, fd, st, record = self._open(bucket, key)
        os.close(fd)
        return self._info(path, st, record)

    @staticmethod
    def _tags_path(path: Path, ino: int) -> Path:
        return path.with_name(f".{path.name}.{ino}{RESERVED}tags")

    def tags(self, bucket: str, key: str) -> dict[str, str]:
        """The tags kept beside the current version (``.<name>.<inode>.upscaler-tags``, valid for its etag only)."""
        path, fd, st, record = self._open(bucket, key)
        os.close(fd)
        try:
            kept = json.loads(self._tags_path(path, st.st_ino).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return dict(kept["tags"]) if kept.get("etag") == self._info(path, st, record).etag else {}

    def tag(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        """Merge ``tags`` into the current version's, written atomically beside it."""
        tags = validate_metadata(tags)
        current = self.tags(bucket, key) | tags
        path, fd, st, record = self._open(bucket, key)
        os.close(fd)
        body = json.dumps({"etag": self._info(path, st, record).etag, "tags": current}).encode()
        tmp = self._tmp(path, uuid.uuid4().hex, "tags")
        try:
            _write_synced(tmp, body)
            os.replace(tmp, self._tags_path(path, st.st_ino))
        except OSError as exc:
            _unlink(tmp)
            raise Unavailable(f"local store cannot tag {key!r}: {exc.strerror or exc}") from None

    def get_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        """Copy the current version into ``path`` through a temporary file beside it, verified, fsynced, renamed."""
        src_path, fd, st, record = self._open(bucket, key)
        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            with open(fd, "rb") as src:
                try:
                    dst = open(tmp, "xb")  # noqa: SIM115 - closed by the with below
                except FileNotFoundError:
                    raise InvalidInput(f"the folder of {dest} does not exist") from None
                with dst:
                    digest = _copy(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
            self._verify(key, record, digest)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except OSError as exc:
            raise Unavailable(f"cannot copy {key!r} to {dest}: {exc.strerror or exc}") from None
        finally:
            _unlink(tmp)
        return self._info(src_path, st, record)

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` in lexicographic order; hidden store files and names that are not valid keys are
        skipped. A bucket never written to lists as empty."""
        base = self.root / validate_bucket(bucket)
        if not isinstance(prefix, str):
            raise InvalidInput("prefix must be a string")
        folder, _, _ = prefix.rpartition("/")
        if folder:
            try:
                validate_key(folder)
            except InvalidInput:
                return iter(())  # no valid key starts with it
        keys: list[str] = []
        stack = [(base / folder, folder)] if folder else [(base, "")]
        while stack:
            where, rel = stack.pop()
            try:
                entries = list(os.scandir(where))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise Unavailable(f"local store cannot list {bucket!r}: {exc.strerror or exc}") from None
            for entry in entries:
                if RESERVED in entry.name:
                    continue
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):  # never into a symlinked folder: no loops
                    if name.startswith(prefix) or prefix.startswith(name + "/"):
                        stack.append((Path(entry.path), name))
                elif entry.is_file() and name.startswith(prefix):
                    try:
                        keys.append(validate_key(name))
                    except InvalidInput:
                        continue
        return iter(sorted(keys))

    def ping(self, bucket: str | None = None) -> None:
        """Check that the root folder (and the bucket's folder, when it exists) can be written."""
        target = self.root
        if bucket is not None:
            bucket_dir = self.root / validate_bucket(bucket)
            target = bucket_dir if bucket_dir.is_dir() else self.root
        try:
            target.mkdir(parents=True, exist_ok=True)
            probe = target / f".ping.{uuid.uuid4().hex}{TMP}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise Unavailable(f"local store at {target} is not writable: {exc.strerror or exc}") from None

    def url(self, bucket: str, key: str) -> str:
        """``file:///...`` of the object's data file."""
        return self._path(bucket, key).as_uri()
