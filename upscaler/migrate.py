"""Migrate an existing archive: every object under a folder, an ``s3://bucket/prefix`` or an S3 Inventory / CSV
manifest stored in its quality-targeted form, read back and verified, resumably, never losing an original.

The parts, and where each runs:

* :func:`plan` (the default, a dry run): list the source, sum its bytes, decide the stored form of a sample of it
  (:meth:`upscaler.service.S3CommonUpscaler.decide`, nothing written) and estimate what the whole would save.
* :func:`submit` (``--apply``): cut the listing into chunks of ``UPSCALER_MIGRATE_CHUNK_KEYS`` keys; each chunk is
  a job of kind ``migrate`` on the job queue the video workers already serve (SQLite locally, SQS at scale), its
  row in the job store (SQLite or DynamoDB) holding the chunk's keys and the state of each object. The migration
  itself is a row of kind ``migration`` there too (never queued): its options and its rounds of chunks.
* :func:`run_chunk` (in a worker): for each object of the chunk, read the original, store it with the targeted
  search (:meth:`~upscaler.service.S3CommonUpscaler.store_image`), retrieve it as a user would and check it —
  target met on the retrieved file, size and format restored, the record's SHA-256 that of the original, and for
  ``exact`` the retrieved file's SHA-256 equal to the original's — then, only then, tag, delete or keep the
  original (``on_verified``). A failure keeps the original and records its reason; an original that changed
  meanwhile (ETag, or mtime and size for a folder) is redone once, then reported. Each object is claimed in the
  chunk's row by a conditional write first (:class:`Claims`), so two workers handed one chunk never both act on
  an object. In place (DEST is SOURCE, :func:`migrate_in_place`) the original is first copied to the originals
  location and checked, and ``on_verified`` applies to that copy.
* :func:`status` / :func:`report`: progress, then bytes before and after, fidelity, forms, failures by reason, time
  per megapixel and the monthly cost in each storage class (``UPSCALER_MIGRATE_PRICES``), as JSON, CSV and HTML.

Resumable and idempotent: running the same migration again (same source, destination and target: same id)
starts a new *round* whose chunks carry each object's last state; an object verified before whose original and
stored form are unchanged is not done again (its pending ``on_verified`` action is), anything else is redone.
Chunks of earlier rounds that never finished are cancelled, so a worker killed mid-chunk costs no wait for its
message's visibility timeout. A store writes an object and its record in one atomic step, so a crash anywhere
leaves either no stored form or a complete one, and an original is deleted only after its stored form was
verified and that was written to the job store.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import html
import io
import json
import logging
import math
import os
import statistics
import time
import urllib.parse
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upscaler import media
from upscaler.config import Settings
from upscaler.errors import Conflict, InvalidInput, NotFound, Unavailable, UpscalerError
from upscaler.jobs import CANCELLED, FAILED, PROCESSING, SUBMITTED, Job, JobQueue, JobStore
from upscaler.jobs import submit as submit_job
from upscaler.jobs.model import FINAL
from upscaler.quality import Target
from upscaler.report_style import REPORT_STYLE, bars_svg
from upscaler.service import S3CommonUpscaler
from upscaler.store import ObjectStore
from upscaler.store.keys import RESERVED, validate_bucket

log = logging.getLogger("upscaler.migrate")

#: Job kinds: a chunk of objects (queued, run by a worker) and the migration's own record (never queued).
MIGRATE, MIGRATION = "migrate", "migration"
ON_VERIFIED = ("tag", "delete", "keep")
#: The S3 object tag (or local marker) a verified original gets with ``on_verified=tag``: its value is the
#: migration id, so a lifecycle rule filtering on the tag expires or transitions exactly the migrated originals.
TAG = "upscaler-migrated"
MARKER = RESERVED + "migrated"
#: Object states in a chunk's results.
VERIFIED, FAILED_OBJ, CHANGED, GONE = "verified", "failed", "changed", "gone"
#: An object half-way (in place: its original kept, its key not yet verified); a re-run finishes it.
WORKING = "working"
PRICES_FILE = Path(__file__).with_name("prices.json")


# ---- what a migration is --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """A migration: where the originals are, where the stored forms go, and the quality target."""

    #: ``file:///abs/folder``, ``s3://bucket/prefix`` (the service's object store) or ``manifest:<csv>``, the CSV
    #: a local file or ``s3://bucket/key`` (S3 Inventory CSV: bucket and URL-encoded key first on each row).
    source: str
    #: ``s3://bucket/prefix`` in the service's object store; the source itself for a migration in place.
    dest: str
    target: str
    #: In place only: ``s3://bucket/prefix`` where each original is copied (byte for byte, SHA-256 checked) before
    #: its stored form takes its key; ``on_verified`` then applies to that copy.
    originals: str = ""

    @property
    def id(self) -> str:
        """The same migration asked again has the same id: that is what makes a re-run resume it."""
        parts = [self.source, self.dest, str(Target.parse(self.target))] + ([self.originals] if self.originals else [])
        return "mig-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    @property
    def in_place(self) -> bool:
        """DEST is SOURCE: each stored form takes its original's key."""
        return self.source.startswith("s3://") and split_s3(self.source) == split_s3(self.dest)

    @classmethod
    def parse(cls, source: str, dest: str, target: str, *, originals: str = "", folders: bool = True) -> Spec:
        """Normalise SOURCE and DEST as typed (a folder path, ``s3://...``, a ``.csv`` manifest); ``folders=False``
        (the HTTP API) refuses sources on the server's own disk. DEST equal to an ``s3://`` SOURCE is in place,
        and needs ``originals``."""
        Target.parse(target)  # a bad target is a 400 before anything is listed
        src = source.strip()
        if src.startswith("manifest:"):
            src = src.removeprefix("manifest:")
            manifest = True
        else:
            manifest = src.lower().endswith(".csv")
        if not src.startswith("s3://"):
            if not folders:
                raise InvalidInput("the source must be s3://bucket/prefix or an s3:// manifest (.csv)")
            path = Path(urllib.parse.unquote(src.removeprefix("file://"))).expanduser().resolve()
            if manifest and not path.is_file():
                raise InvalidInput(f"manifest {path} is not a file")
            if not manifest and not path.is_dir():
                raise InvalidInput(f"source folder {path} does not exist")
            src = path.as_uri()
        else:
            bucket, _ = split_s3(src, key_required=manifest)
            validate_bucket(bucket)
        if not dest.strip().startswith("s3://"):
            raise InvalidInput("the destination must be s3://bucket/prefix (in the service's object store)")
        dest_bucket, dest_prefix = split_s3(dest.strip())
        validate_bucket(dest_bucket)
        keep = ""
        if originals.strip():
            keep_bucket, keep_prefix = split_s3(originals.strip())
            validate_bucket(keep_bucket)
            keep = f"s3://{keep_bucket}/{keep_prefix}"
        spec = cls(("manifest:" if manifest else "") + src, f"s3://{dest_bucket}/{dest_prefix}", target.strip(), keep)
        spec._check_overlap()
        return spec

    def _check_overlap(self) -> None:
        def overlap(a: str, b: str) -> bool:
            (ab, ap), (bb, bp) = split_s3(a), split_s3(b)
            return ab == bb and (ap.startswith(bp) or bp.startswith(ap))

        if self.in_place:
            if not self.originals:
                raise InvalidInput(
                    "in place (DEST is SOURCE) needs an originals location (--originals s3://bucket/prefix): each "
                    "original is copied there and checked before its stored form takes its key"
                )
            if overlap(self.originals, self.source):
                raise InvalidInput("the originals location must not overlap the source (a re-run would list it)")
            return
        if self.originals:
            raise InvalidInput("an originals location is for a migration in place only (DEST the same as SOURCE)")
        if self.source.startswith("s3://") and overlap(self.source, self.dest):
            raise InvalidInput(
                "the destination must not overlap the source, except in place (DEST exactly SOURCE, with "
                "--originals): a re-run would list the stored forms as originals; choose another prefix or bucket"
            )

    def to_dict(self) -> dict[str, str]:
        out = {"source": self.source, "dest": self.dest, "target": self.target}
        return out | ({"originals": self.originals} if self.originals else {})


def split_s3(url: str, *, key_required: bool = False) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise InvalidInput(f"expected s3://bucket/prefix, got {url!r}")
    prefix = urllib.parse.unquote(parts.path).lstrip("/")
    if key_required and not prefix:
        raise InvalidInput(f"expected s3://bucket/key, got {url!r}")
    return parts.netloc, prefix


# ---- the originals ------------------------------------------------------------------------------------------
class Originals(ABC):
    """Where the originals are: listed, read with their version, marked and deleted only if unchanged."""

    @abstractmethod
    def keys(self) -> Iterator[str]:
        """Every original's key (relative to the source), in order."""

    @abstractmethod
    def version(self, key: str) -> tuple[str, int]:
        """(version, size) of the original now: its ETag, or mtime and size for a file; :class:`NotFound`."""

    @abstractmethod
    def read(self, key: str) -> tuple[bytes, str]:
        """The original's bytes and the version they are."""

    @abstractmethod
    def mark(self, key: str, migration: str) -> None:
        """Tag the original as migrated (S3 object tag, or a hidden marker file beside it)."""

    @abstractmethod
    def marked(self, key: str) -> str | None:
        """The migration id the original is tagged with, if any."""

    @abstractmethod
    def delete(self, key: str, version: str) -> bool:
        """Delete the original if it is still ``version``; False (kept) when it changed or vanished."""

    def relative(self, key: str) -> str:
        """The key under the destination prefix."""
        return key


class FolderOriginals(Originals):
    """Files under a folder on this machine (every file is an object; hidden marker files are not)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def keys(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                if RESERVED not in name:
                    yield (Path(dirpath) / name).relative_to(self.root).as_posix()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise InvalidInput(f"key {key!r} leaves the source folder")
        return path

    @staticmethod
    def _stamp(st: os.stat_result) -> str:
        return f"{st.st_mtime_ns}-{st.st_size}"

    def version(self, key: str) -> tuple[str, int]:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            raise NotFound(f"original {key!r} is gone") from None
        return self._stamp(st), st.st_size

    def read(self, key: str) -> tuple[bytes, str]:
        try:
            with open(self._path(key), "rb") as fh:
                data = fh.read()
                return data, self._stamp(os.fstat(fh.fileno()))
        except FileNotFoundError:
            raise NotFound(f"original {key!r} is gone") from None

    def _marker(self, key: str) -> Path:
        path = self._path(key)
        return path.with_name(f".{path.name}{MARKER}")

    def mark(self, key: str, migration: str) -> None:
        marker = self._marker(key)
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(json.dumps({TAG: migration, "at": time.time()}))
        os.replace(tmp, marker)

    def marked(self, key: str) -> str | None:
        try:
            return json.loads(self._marker(key).read_text()).get(TAG)
        except (FileNotFoundError, ValueError):
            return None

    def delete(self, key: str, version: str) -> bool:
        try:
            if self.version(key)[0] != version:
                return False
            self._path(key).unlink()
        except (NotFound, FileNotFoundError):
            return False
        self._marker(key).unlink(missing_ok=True)
        return True


class StoreOriginals(Originals):
    """Objects under ``bucket``/``prefix`` of the service's object store (or the keys a manifest names there)."""

    def __init__(self, store: ObjectStore, bucket: str, prefix: str, listed: list[str] | None = None) -> None:
        self.store, self.bucket, self.prefix, self.listed = store, bucket, prefix, listed

    def keys(self) -> Iterator[str]:
        if self.listed is not None:
            yield from self.listed
        else:
            yield from self.store.list(self.bucket, self.prefix)

    def relative(self, key: str) -> str:
        return key[len(self.prefix) :].lstrip("/") if key.startswith(self.prefix) else key

    def version(self, key: str) -> tuple[str, int]:
        info = self.store.head(self.bucket, key)
        return info.etag, info.size

    def read(self, key: str) -> tuple[bytes, str]:
        obj = self.store.get(self.bucket, key)
        return obj.data, obj.etag

    def mark(self, key: str, migration: str) -> None:
        self.store.tag(self.bucket, key, {TAG: migration})

    def marked(self, key: str) -> str | None:
        return self.store.tags(self.bucket, key).get(TAG)

    def delete(self, key: str, version: str) -> bool:
        try:
            if self.store.head(self.bucket, key).etag != version:
                return False
        except NotFound:
            return False
        return self.store.delete(self.bucket, key)


def read_manifest(text: str) -> tuple[str, list[str]]:
    """(bucket, keys) of an S3 Inventory CSV (``"bucket","url-encoded key",...`` per row) or a CSV of the same
    first two columns with a header ``bucket,key``; one bucket per manifest."""
    buckets, keys = set(), []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 2 or (not keys and row[0].strip().lower() == "bucket"):
            continue
        buckets.add(row[0].strip())
        keys.append(urllib.parse.unquote_plus(row[1]))
    if len(buckets) > 1:
        raise InvalidInput(f"a manifest must name one bucket, this one names {len(buckets)}")
    if not keys:
        raise InvalidInput("the manifest lists no objects")
    return buckets.pop(), keys


def open_originals(spec: Spec, service: S3CommonUpscaler) -> Originals:
    """The originals of ``spec``; the bucket allow-list applies (through ``service.bucket``)."""
    source = spec.source
    if source.startswith("manifest:"):
        where = source.removeprefix("manifest:")
        if where.startswith("s3://"):
            bucket, key = split_s3(where, key_required=True)
            text = service.store.get(service.bucket(bucket), key).data.decode("utf-8-sig")
        else:
            text = Path(urllib.parse.unquote(urllib.parse.urlsplit(where).path)).read_text("utf-8-sig")
        bucket, keys = read_manifest(text)
        return StoreOriginals(service.store, service.bucket(bucket), "", keys)
    if source.startswith("s3://"):
        bucket, prefix = split_s3(source)
        return StoreOriginals(service.store, service.bucket(bucket), prefix)
    return FolderOriginals(Path(urllib.parse.unquote(urllib.parse.urlsplit(source).path)))


def source_bucket(spec: Spec) -> tuple[str, str] | None:
    """(bucket, prefix) a source reads in the object store (a manifest: the manifest object itself), None for a
    folder: what an API key must be allowed to read."""
    where = spec.source.removeprefix("manifest:")
    return split_s3(where) if where.startswith("s3://") else None


# ---- timing the model ------------------------------------------------------------------------------------------
class TimedProvider:
    """The provider, counting the seconds spent in its ``upscale`` (the model's share of a migration)."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self.seconds = 0.0

    def upscale(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._provider.upscale(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)


# ---- one object ----------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What a worker brings to a chunk: the service built over its store, provider and engine, and the jobs."""

    service: S3CommonUpscaler
    jobs: JobStore
    settings: Settings
    timer: TimedProvider

    @classmethod
    def build(cls, store: ObjectStore, provider: Any, engine: Any, jobs: JobStore, settings: Settings) -> Context:
        timer = TimedProvider(provider)
        return cls(S3CommonUpscaler(store, timer, engine, settings), jobs, settings, timer)  # type: ignore[arg-type]


class Verification(Exception):
    """The stored form did not give the original back as promised (the reason says how)."""


def _reason(exc: UpscalerError) -> str:
    """A failure's reason as the report groups it."""
    return {
        "undecodable": "broken or not an image",
        "unsupported_media": "unsupported format",
        "too_large": "over a size limit",
        "invalid_input": "refused",
        "forbidden": "forbidden",
        "not_found": "gone",
    }.get(exc.code, exc.code)


def verify(service: S3CommonUpscaler, bucket: str, key: str, data: bytes, goal: Target) -> dict[str, Any]:
    """Retrieve ``bucket``/``key`` as a user would and check it against the original ``data``; the fidelity
    measured. :class:`Verification` says what does not hold."""
    original = media.decode(data, service.limits)
    want = original.record
    back = service.retrieve_image(bucket=bucket, key=key)
    if back.record.sha256 != hashlib.sha256(data).hexdigest():
        raise Verification("the stored record's SHA-256 is not the original's")
    restored = media.decode(back.data, service.limits)
    got = restored.record
    if (got.width, got.height) != (want.width, want.height):
        raise Verification(f"size {got.width}x{got.height} restored, {want.width}x{want.height} expected")
    if got.format != want.format:
        raise Verification(f"format {got.format} restored, {want.format} expected")
    identical = back.data == data
    if goal.metric == "exact":
        if not identical:
            raise Verification("exact: the retrieved file's SHA-256 differs from the original's")
        return {"fidelity": None, "identical": True}
    if goal.budget:
        if back.record.stored_bytes > goal.max_bytes(want.width * want.height / 1e6):
            raise Verification("the stored form is over the byte budget")
        score = goal.score(original.pixels, restored.pixels) if not identical else math.inf
        return {"fidelity": None if math.isinf(score) else round(score, 4), "identical": identical}
    score = math.inf if identical else goal.score(original.pixels, restored.pixels)
    if not goal.met(score):
        raise Verification(f"{goal.metric} {score:.3f} on retrieval, the target is {goal}")
    return {"fidelity": None if math.isinf(score) else round(score, 4), "identical": identical}


def _store(ctx: Context, data: bytes, bucket: str, key: str, goal: Target, result: dict[str, Any],
           timings: dict[str, float]) -> None:  # fmt: skip
    """Store ``data`` at ``bucket``/``key`` with the targeted search; the form chosen into ``result``."""
    model0, t1 = ctx.timer.seconds, time.perf_counter()
    stored = ctx.service.store_image(data, bucket=bucket, key=key, target=goal)
    timings["model"] = ctx.timer.seconds - model0
    timings["encode"] = (time.perf_counter() - t1) - timings["model"]  # the search: encodes, decodes and measures
    _describe(result, stored.record)


def _describe(result: dict[str, Any], rec: media.ImageRecord) -> None:
    """What the stored form is, from its record, into ``result``."""
    result.update(
        bytes_after=rec.stored_bytes,
        format=rec.format,
        megapixels=round(rec.width * rec.height / 1e6, 4),
        form="original" if rec.stored_codec == "original" else f"x{rec.scale:g} {rec.stored_codec}",
        quality=rec.stored_quality,
    )


def _verify(ctx: Context, bucket: str, key: str, data: bytes, goal: Target, result: dict[str, Any],
            timings: dict[str, float]) -> str | None:  # fmt: skip
    """Verify the stored form at ``bucket``/``key`` (:func:`verify`); None when it holds (what was measured is in
    ``result``), else why not. A 5xx is raised: the chunk retries."""
    model1, t2 = ctx.timer.seconds, time.perf_counter()
    try:
        checked = verify(ctx.service, bucket, key, data, goal)
    except (Verification, UpscalerError) as exc:
        if isinstance(exc, UpscalerError) and exc.status >= 500:
            raise
        return (exc.message if isinstance(exc, UpscalerError) else str(exc))[:300]
    timings["model"] = timings.get("model", 0.0) + ctx.timer.seconds - model1
    timings["verify"] = time.perf_counter() - t2 - (ctx.timer.seconds - model1)
    result.update(checked, timings={k: round(v, 4) for k, v in timings.items()})
    return None


def migrate_one(
    ctx: Context,
    originals: Originals,
    key: str,
    dest: tuple[str, str],
    goal: Target,
    prev: dict[str, Any] | None,
) -> dict[str, Any]:
    """Store, retrieve and verify one original; its result (``state`` and what was measured). The ``on_verified``
    action is the caller's. An error the store or provider may recover from (5xx) is raised: the chunk retries."""
    service, bucket = ctx.service, dest[0]
    dest_key = dest[1] + originals.relative(key)
    result: dict[str, Any] = {"key": key, "dest": dest_key}
    try:
        version = originals.version(key)[0]
    except NotFound:
        if prev and prev.get("action") in ("deleting", "deleted"):  # deleted by us after it was verified
            return {**prev, "action": "deleted"}
        if prev and prev.get("state") == VERIFIED:  # verified, then removed (a lifecycle rule): still migrated
            return {**prev, "carried": True}
        return {**result, "state": GONE, "reason": "gone"}
    except UpscalerError as exc:  # a key this source refuses (a link out of the folder): this object fails alone
        if exc.status >= 500:
            raise
        return {**result, "state": FAILED_OBJ, "reason": _reason(exc), "detail": exc.message[:300]}
    if prev and prev.get("state") == VERIFIED and prev.get("version") == version:
        try:
            if service.store.head(bucket, dest_key).etag == prev.get("dest_etag"):
                return {**prev, "carried": True}  # verified before, nothing changed: nothing to redo
        except NotFound:
            pass
    for attempt in range(2):
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            data, version = originals.read(key)
        except NotFound:
            return {**result, "state": GONE, "reason": "gone"}
        timings["read"] = time.perf_counter() - t0
        result.update(version=version, bytes_before=len(data))
        try:
            _store(ctx, data, bucket, dest_key, goal, result, timings)
        except UpscalerError as exc:
            if exc.status >= 500:
                raise
            return {**result, "state": FAILED_OBJ, "reason": _reason(exc), "detail": exc.message[:300]}
        failed = _verify(ctx, bucket, dest_key, data, goal, result, timings)
        if failed is not None:
            service.store.delete(bucket, dest_key)  # no unverified stored form is left to be mistaken for one
            return {**result, "state": FAILED_OBJ, "reason": "verification failed", "detail": failed}
        try:
            now = originals.version(key)[0]
        except NotFound:
            now = ""
        if now == version:
            result.update(state=VERIFIED, dest_etag=service.store.head(bucket, dest_key).etag)
            return result
        log.info("original changed during its migration", extra={"key": key, "attempt": attempt + 1})
    service.store.delete(bucket, dest_key)
    return {**result, "state": CHANGED, "reason": "changed during migration"}


# ---- one object, in place --------------------------------------------------------------------------------------
#: An object's in-place step saved in the job store before its key changes: its original is kept (copied and
#: checked) at ``keep_key``, with the SHA-256 in ``kept``.
KEPT = "kept"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_stored_form(obj: Any) -> bool:
    return media.RECORD_MARKER in obj.metadata


def _get(store: ObjectStore, bucket: str, key: str) -> Any:
    try:
        return store.get(bucket, key)
    except NotFound:
        return None


def _drop_copy(store: ObjectStore, bucket: str, key: str, kept: dict[str, Any]) -> None:
    """Remove the kept copy of an original that is back at (or never left) its key, if it is still our copy."""
    with contextlib.suppress(NotFound):
        if store.head(bucket, key).etag == kept["keep_etag"]:
            store.delete(bucket, key)


def migrate_in_place(
    ctx: Context,
    originals: StoreOriginals,
    key: str,
    keep: tuple[str, str],
    goal: Target,
    prev: dict[str, Any] | None,
    save: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Migrate one original in place, never losing it: (1) copy it to the originals location ``keep`` and read
    the copy back (SHA-256 equal), (2) ``save`` that in the job store, (3) store the stored form and its record at
    the original's key, (4) retrieve it from there and verify it. Killed anywhere, the key holds the original or
    a stored form whose kept original is byte-exact and recorded; a re-run (``prev`` the saved step) finishes
    it. A stored form that fails verification is replaced by the original again. ``on_verified`` then applies
    to the kept copy (the caller's)."""
    store, bucket = ctx.service.store, originals.bucket
    keep_bucket, keep_key = keep[0], keep[1] + originals.relative(key)
    result: dict[str, Any] = {"key": key, "dest": key, "inplace": True, "keep_key": keep_key}
    prev = prev or {}
    ours = (prev.get(KEPT) or {}).get("keep_etag")  # a copy this migration wrote there before
    if prev.get("state") == VERIFIED and prev.get("inplace"):
        try:
            now = store.head(bucket, key).etag
        except NotFound:  # the stored form was removed since: still migrated, the kept original stays
            return {**prev, "carried": True}
        if now == prev.get("dest_etag"):
            return {**prev, "carried": True}  # verified before, nothing changed: nothing to redo
        return {**prev, "state": CHANGED, "reason": "replaced after its migration", "carried": False,
                "detail": f"its original is kept at {keep_key}"}  # fmt: skip
    kept = prev.get(KEPT) if prev.get("step") == KEPT else None
    for attempt in range(2):
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        copy = _get(store, keep_bucket, keep_key) if kept else None
        if kept and copy is not None and _sha(copy.data) != kept["sha256"]:
            return {**result, "state": FAILED_OBJ, "reason": "kept original changed", KEPT: kept,
                    "detail": f"{keep_key} is no longer the copy made"}  # fmt: skip
        current = _get(store, bucket, key)
        if kept and copy is None:  # gone from the originals location (removed by hand): start again from the key
            if current is not None and _is_stored_form(current):
                return {**result, "state": FAILED_OBJ, "reason": "kept original gone", KEPT: kept,
                        "detail": f"{key} holds a stored form and {keep_key} is gone"}  # fmt: skip
            kept = None
        if kept is None:
            if current is None:
                return {**result, "state": GONE, "reason": "gone"}
            if _is_stored_form(current):  # never take a stored form for an original
                return {**result, "state": FAILED_OBJ, "reason": "already a stored form"}
            copy = _get(store, keep_bucket, keep_key)
            if copy is not None and _sha(copy.data) != _sha(current.data) and copy.etag != ours:
                return {**result, "state": FAILED_OBJ, "reason": "originals location occupied",
                        "detail": f"{keep_key} holds another object"}  # fmt: skip
            if copy is None or _sha(copy.data) != _sha(current.data):
                store.put(keep_bucket, keep_key, current.data, metadata=current.metadata,
                          content_type=current.content_type)  # fmt: skip
                copy = _get(store, keep_bucket, keep_key)
                if copy is None or _sha(copy.data) != _sha(current.data):
                    raise Unavailable(f"the copy of {key} at {keep_key} does not read back byte for byte")
            kept = {"sha256": _sha(copy.data), "version": current.etag, "keep_etag": copy.etag}
            ours = copy.etag
            result.update({"step": KEPT, KEPT: kept, "state": WORKING})
            save(result)  # the job store knows the original is kept before its key changes
        assert copy is not None
        data = copy.data
        timings["read"] = time.perf_counter() - t0
        result.update({KEPT: kept, "version": kept["version"], "bytes_before": len(data), "sha256": kept["sha256"]})
        if current is not None and _sha(current.data) == kept["sha256"]:  # the original is still at its key
            if store.head(bucket, key).etag != current.etag:
                current = None  # rewritten just now: see below
            else:
                try:
                    _store(ctx, data, bucket, key, goal, result, timings)
                except UpscalerError as exc:
                    if exc.status >= 500:
                        raise
                    _drop_copy(store, keep_bucket, keep_key, kept)  # nothing was written: the original is at its key
                    return {**result, "state": FAILED_OBJ, "reason": _reason(exc), "detail": exc.message[:300],
                            "step": None, KEPT: None}  # fmt: skip
        elif current is not None and _is_stored_form(current):
            try:  # written before a crash: whose original is it?
                record = media.ImageRecord.from_metadata(current.metadata)
            except media.InvalidRecord:
                record = None
            if record is not None and record.sha256 == kept["sha256"]:
                _describe(result, record)
            else:
                current = None
        else:
            current = None
        if current is None:  # the key was rewritten by someone else: theirs now; our copy is of what they replaced
            log.info("original changed during its migration", extra={"key": key, "attempt": attempt + 1})
            result["state"] = CHANGED
            kept = None
            continue
        failed = _verify(ctx, bucket, key, data, goal, result, timings)
        if failed is not None:  # the original takes its key back, read back byte for byte
            store.put(bucket, key, data, metadata=copy.metadata, content_type=copy.content_type)
            back = _get(store, bucket, key)
            if back is None or _sha(back.data) != kept["sha256"]:
                raise Unavailable(f"the original put back at {key} does not read back byte for byte")
            _drop_copy(store, keep_bucket, keep_key, kept)
            return {**result, "state": FAILED_OBJ, "reason": "verification failed", "detail": failed, "step": None,
                    KEPT: None}  # fmt: skip
        result.update(state=VERIFIED, step=None, dest_etag=store.head(bucket, key).etag, keep_etag=kept["keep_etag"])
        return result
    return {**result, "state": CHANGED, "reason": "changed during migration", "step": None}


def apply_action(originals: Originals, result: dict[str, Any], on_verified: str, migration: str) -> dict[str, Any]:
    """Tag, delete or keep a verified original (in place: its kept copy, ``originals`` being the originals
    location); the result with its ``action`` (done once: a re-run with another ``on_verified`` applies it)."""
    action = result.get("action")
    if result.get("state") != VERIFIED or action == "deleted":
        return result
    if on_verified == "keep":
        return {**result, "action": action or "kept"}
    if action == {"tag": "tagged", "delete": "deleted"}[on_verified]:
        return result
    if result.get("inplace"):
        key, version = result["keep_key"], result["keep_etag"]
    else:
        key, version = result["key"], result["version"]
    if on_verified == "tag":
        originals.mark(key, migration)
        return {**result, "action": "tagged"}
    if originals.delete(key, version):
        return {**result, "action": "deleted"}
    try:
        originals.version(key)
    except NotFound:
        if action == "deleting":  # deleted before a crash, after "deleting" was saved
            return {**result, "action": "deleted"}
    return {**result, "action": "kept (changed)"}


class Stopped(Exception):
    """The worker was asked to stop (SIGTERM) between two objects; the chunk's results so far are saved."""

    def __init__(self, done: int) -> None:
        super().__init__(f"stopped after {done} objects")
        self.done = done


class ChunkCancelled(Exception):
    """The chunk was cancelled (a re-run of its migration superseded it), or finished by another worker."""


class Lost(Exception):
    """This worker's claim on an object ran out and another worker took the object over: this one leaves it."""


class Claims:
    """One worker's claims on the objects of one chunk. Every change of an object's state in the chunk's row is a
    conditional write (:meth:`JobStore.modify`): an object is claimed only if no other worker holds a live claim
    on it, and a result is saved only while this worker's claim holds. Two workers handed the same chunk (a
    message delivered twice) therefore never both act on one object: the second finds it claimed, goes on with
    the others and comes back to it once it is settled (then there is nothing left to do) or its claim ran out
    (its worker died). Claims last ``migrate_claim_seconds``, renewed at each step."""

    def __init__(self, jobs: JobStore, job_id: str, lease: float) -> None:
        self.jobs, self.job_id, self.lease = jobs, job_id, lease
        self.token = uuid.uuid4().hex

    def write(
        self,
        settle: dict[str, dict[str, Any]] | None = None,
        *,
        hold: dict[str, dict[str, Any]] | None = None,
        claim: str | None = None,
        drop: str | None = None,
    ) -> tuple[bool, dict[str, Any] | None, list[str]]:
        """In one conditional write: save the results of ``settle`` and release their claims, save ``hold``'s
        keeping them, ``claim`` a key, ``drop`` a claim. (claimed?, the claimed key's result in the row, the keys
        of ``settle`` and ``hold`` not saved because this worker no longer holds them)."""
        settle, hold = settle or {}, hold or {}
        out: dict[str, Any] = {}

        def change(job: Job) -> dict[str, Any] | None:
            if job.status in FINAL:
                raise ChunkCancelled(job.id)
            meta = dict(job.migration or {})
            claims, results = dict(meta.get("claims") or {}), dict(meta.get("results") or {})
            now = time.time()
            mine = {k for k, c in claims.items() if c.get("by") == self.token}
            lost = [k for k in (*settle, *hold) if k not in mine]
            for k, r in settle.items():
                if k in mine:
                    results[k] = r
                    claims.pop(k)
            for k, r in hold.items():
                if k in mine:
                    results[k] = r
                    claims[k] = {"by": self.token, "until": now + self.lease}
            if drop in mine:
                claims.pop(drop)
            got = False
            if claim is not None:
                other = claims.get(claim)
                got = other is None or other.get("by") == self.token or other.get("until", 0) <= now
                if got:
                    claims[claim] = {"by": self.token, "until": now + self.lease}
            out.update(got=got, current=results.get(claim) if claim else None, lost=lost)
            if len(lost) == len(settle) + len(hold) and not got and drop not in mine:
                return None
            return {"migration": {**meta, "claims": claims, "results": results}, "frames_done": len(results)}

        self.jobs.modify(self.job_id, change)
        if out["lost"]:
            log.warning("objects taken over by another worker", extra={"job": self.job_id, "keys": out["lost"]})
        return out["got"], out["current"], out["lost"]

    def save(self, key: str, result: dict[str, Any]) -> None:
        """Save an intermediate state of ``key`` (still held); :class:`Lost` if another worker took it over."""
        if self.write(hold={key: result})[2]:
            raise Lost(key)


def _in_progress(result: dict[str, Any] | None) -> bool:
    """A state saved half-way (before an original is deleted, or kept before its key changes): to be finished."""
    return result is not None and (result.get("action") == "deleting" or result.get("step") == KEPT)


def run_chunk(ctx: Context, job: Job, stop: Callable[[], bool] | None = None) -> tuple[str, int, int, dict[str, Any]]:
    """Migrate the objects of chunk ``job``; (output URL, objects done, objects carried over, fields of the
    Completed row). Each object is claimed in the job row before it is worked on and its result saved when it
    is released (:class:`Claims`), and saved before any original is deleted or any key changes in place, so a
    killed worker redoes at most the object it was on (idempotently). Raises :class:`Stopped` or
    :class:`ChunkCancelled`."""
    state = dict(job.migration or {})
    spec = Spec(**state["spec"])
    goal, on_verified = Target.parse(spec.target), state.get("on_verified", "tag")
    originals = open_originals(spec, ctx.service)
    dest = split_s3(spec.dest)
    dest = (ctx.service.bucket(dest[0]), dest[1])
    acted_on = originals
    keep: tuple[str, str] | None = None
    if spec.in_place:
        kb, kp = split_s3(spec.originals)
        keep = (ctx.service.bucket(kb), kp)
        acted_on = StoreOriginals(ctx.service.store, keep[0], keep[1])
    claims = Claims(ctx.jobs, job.id, ctx.settings.migrate_claim_seconds)
    settled: dict[str, dict[str, Any]] = {}  # released with the next write

    def work(key: str, item: dict[str, Any], done: dict[str, Any] | None) -> dict[str, Any]:
        if done is not None and not _in_progress(done):
            return apply_action(acted_on, done, on_verified, state["id"])  # settled by another worker: its result
        prev = done or item.get("prev")
        if keep is not None:
            assert isinstance(originals, StoreOriginals)
            result = migrate_in_place(ctx, originals, key, keep, goal, prev, lambda r: claims.save(key, r))
        else:
            result = migrate_one(ctx, originals, key, dest, goal, prev)
        if result.get("state") == VERIFIED and on_verified == "delete" and result.get("action") != "deleted":
            result = {**result, "action": "deleting"}
            claims.save(key, result)  # the job store knows it was verified before the original goes
        return apply_action(acted_on, result, on_verified, state["id"])

    def attempt(item: dict[str, Any]) -> bool:
        """Claim and migrate one object; False when another worker holds it."""
        nonlocal settled
        key = item["key"]
        got, done, _ = claims.write(settled, claim=key)
        settled = {}
        if not got:
            return False
        try:
            settled[key] = work(key, item, done)
        except Lost:
            pass
        except BaseException:
            with contextlib.suppress(UpscalerError, ChunkCancelled):
                claims.write(drop=key)  # no wait for another attempt at it
            raise
        return True

    waiting = []
    count = 0
    for item in state["items"]:
        if stop is not None and stop():
            claims.write(settled)
            raise Stopped(count)
        if attempt(item):
            count += 1
        else:
            waiting.append(item)
    while waiting:  # held by another worker: settled by it, or taken over once its claim runs out
        claims.write(settled)
        settled = {}
        time.sleep(min(1.0, ctx.settings.migrate_claim_seconds))
        if stop is not None and stop():
            raise Stopped(count)
        waiting = [item for item in waiting if not attempt(item)]
    claims.write(settled)
    results = (ctx.jobs.get(job.id).migration or {}).get("results") or {}
    carried = sum(1 for r in results.values() if r.get("carried"))
    verified = [r for r in results.values() if r.get("state") == VERIFIED]
    totals = {
        "source_bytes": sum(r.get("bytes_before", 0) for r in verified),
        "output_bytes": sum(r.get("bytes_after", 0) for r in verified),
    }
    log.info("migration chunk done", extra={"job": job.id, "objects": len(results), "carried": carried, **totals})
    return spec.dest, len(results), carried, totals


# ---- submitting and following a migration ----------------------------------------------------------------------
def chunk_id(migration: str, round_: int, index: int) -> str:
    return f"{migration}-r{round_}-{index:05d}"


def chunks_of(jobs: JobStore, record: Job) -> list[Job]:
    """Every chunk of every round, oldest round first."""
    out = []
    for round_, count in enumerate((record.migration or {}).get("rounds", [])):
        for i in range(count):
            try:
                out.append(jobs.get(chunk_id(record.id, round_, i)))
            except NotFound:
                continue  # a submitter died while writing its chunks: the next run writes them again
    return out


def latest_results(chunks: list[Job]) -> dict[str, dict[str, Any]]:
    """Each key's latest known state: later rounds win, and a key not yet reached keeps what its item carried."""
    latest: dict[str, dict[str, Any]] = {}
    for chunk in chunks:
        state = chunk.migration or {}
        results = state.get("results") or {}
        for item in state.get("items", []):
            key = item["key"]
            if key in results:
                latest[key] = results[key]
            elif item.get("prev"):
                latest[key] = item["prev"]
            elif chunk.status == FAILED:
                latest[key] = {"key": key, "state": FAILED_OBJ, "reason": "chunk failed", "detail": chunk.error}
            else:
                latest.pop(key, None)
    return latest


def submit(
    spec: Spec,
    service: S3CommonUpscaler,
    jobs: JobStore,
    queue: JobQueue,
    settings: Settings,
    *,
    on_verified: str = "tag",
    keys: list[str] | None = None,
) -> Job:
    """Start (or resume) the migration: a new round of chunks on the queue. ``keys`` is the listing when the caller
    has already made it (and checked it against an API key's scope)."""
    if on_verified not in ON_VERIFIED:
        raise InvalidInput(f"on_verified must be one of {', '.join(ON_VERIFIED)}, got {on_verified!r}")
    t0 = time.perf_counter()
    if keys is None:
        keys = list(open_originals(spec, service).keys())
    list_seconds = time.perf_counter() - t0
    if len(keys) > settings.migrate_max_objects:
        raise InvalidInput(f"{len(keys)} objects: over UPSCALER_MIGRATE_MAX_OBJECTS ({settings.migrate_max_objects})")
    mid = spec.id
    try:
        record = jobs.get(mid)
    except NotFound:
        record = Job(method=MIGRATION, video=spec.source, output=spec.dest, id=mid, target=spec.target)
        record.migration = {"spec": spec.to_dict(), "rounds": [], "list_seconds": 0.0}
        jobs.create(record)
    chunks = chunks_of(jobs, record)
    prev = latest_results(chunks)
    for chunk in chunks:  # superseded: a worker still on one stops at its next save
        if chunk.status not in FINAL:
            with contextlib.suppress(Conflict):
                jobs.transition(chunk.id, CANCELLED, finished_at=time.time(), error="superseded by a re-run")
    size = max(1, settings.migrate_chunk_keys)
    round_ = len(record.migration["rounds"])  # type: ignore[index]
    parts = [keys[i : i + size] for i in range(0, len(keys), size)]
    meta = {**record.migration, "on_verified": on_verified}  # type: ignore[dict-item]
    meta["rounds"] = [*meta["rounds"], len(parts)]
    meta["list_seconds"] = round(meta.get("list_seconds", 0.0) + list_seconds, 4)
    meta["objects"] = len(keys)
    meta["submitted_at"] = time.time()
    if record.status == SUBMITTED:
        record = jobs.transition(mid, PROCESSING, started_at=time.time(), migration=meta, frames_total=len(keys))
    else:
        jobs.update(mid, migration=meta, frames_total=len(keys))
    for i, part in enumerate(parts):
        items = [{"key": k, "prev": prev.get(k)} for k in part]
        state = {"id": mid, "spec": spec.to_dict(), "on_verified": on_verified, "round": round_, "items": items}
        chunk = Job(
            method=MIGRATE,
            video=spec.source,
            output=spec.dest,
            id=chunk_id(mid, round_, i),
            target=spec.target,
            migration=state,
            frames_total=len(part),
        )
        submit_job(jobs, queue, chunk)
    log.info("migration submitted", extra={"migration": mid, "objects": len(keys), "chunks": len(parts)})
    return jobs.get(mid)


def status(jobs: JobStore, migration: str, settings: Settings) -> dict[str, Any]:
    """The migration's progress and its report so far (the body of ``GET /v1/migrations/<id>``)."""
    record = jobs.get(migration)
    if record.method != MIGRATION:
        raise NotFound(f"no migration {migration!r}")
    meta = record.migration or {}
    chunks = chunks_of(jobs, record)
    rounds = meta.get("rounds", [])
    current = [c for c in chunks if (c.migration or {}).get("round") == len(rounds) - 1]
    done = sum(c.frames_done for c in current)
    finished = bool(current) and all(c.status in FINAL for c in current)
    failed = any(c.status == FAILED for c in current)
    state = "completed" if finished and not failed else "failed" if finished else "running"
    out = {
        "id": record.id,
        **meta.get("spec", {}),
        "on_verified": meta.get("on_verified"),
        "status": state,
        "round": len(rounds),
        "objects": meta.get("objects", 0),
        "objects_done": done,
        "progress": round(done / meta["objects"], 4) if meta.get("objects") else None,
        "chunks": {"total": len(current), **_count(c.status for c in current)},
    }
    out["report"] = report(latest_results(chunks), meta, settings)
    return out


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


# ---- the report ------------------------------------------------------------------------------------------------
def load_prices(settings: Settings) -> dict[str, Any]:
    """The storage-class prices file (``UPSCALER_MIGRATE_PRICES``, default the shipped ``prices.json``)."""
    path = Path(settings.migrate_prices) if settings.migrate_prices else PRICES_FILE
    try:
        prices = json.loads(path.read_text())
        prices["classes"] = {k: dict(v) for k, v in prices["classes"].items()}
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidInput(f"prices file {path}: {exc}") from None
    return prices


def monthly_cost(sizes: list[int], prices: dict[str, Any]) -> dict[str, float]:
    """USD per month to keep objects of ``sizes`` bytes in each class (its minimum billable size applied)."""
    out = {}
    for name, c in prices["classes"].items():
        floor = int(c.get("min_object_bytes", 0))
        billed = sum(max(s, floor) for s in sizes)
        out[name] = billed / 2**30 * float(c["usd_per_gb_month"])  # rounded where shown, not here
    return out


def _cents(costs: dict[str, float]) -> dict[str, float]:
    """Costs as shown: to a millionth of a dollar."""
    return {k: round(v, 6) for k, v in costs.items()}


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {
        "min": round(min(values), 3),
        "p10": round(q[0], 3),
        "median": round(statistics.median(values), 3),
        "p90": round(q[8], 3),
        "max": round(max(values), 3),
    }


def report(results: dict[str, dict[str, Any]], meta: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Totals over the objects' latest results (see the module notes)."""
    rows = list(results.values())
    verified = [r for r in rows if r.get("state") == VERIFIED]
    before = sum(r.get("bytes_before", 0) for r in verified)
    after = sum(r.get("bytes_after", 0) for r in verified)
    failures = _count(r.get("reason", "?") for r in rows if r.get("state") not in (VERIFIED, WORKING))
    seconds: dict[str, float] = {"list": meta.get("list_seconds", 0.0)}
    for r in rows:
        for k, v in (r.get("timings") or {}).items():
            if not r.get("carried"):
                seconds[k] = seconds.get(k, 0.0) + v
    worked = [r for r in verified if not r.get("carried")]
    mp = sum(r.get("megapixels", 0.0) for r in worked)
    total = sum(seconds.values())
    prices = load_prices(settings)
    cost_before = monthly_cost([r["bytes_before"] for r in verified], prices)
    cost_after = monthly_cost([r["bytes_after"] for r in verified], prices)
    tib = 2**40 / before if before else 0.0
    spec = meta.get("spec", {})
    return {
        "objects": {
            "listed": meta.get("objects", len(rows)),
            "verified": len(verified),
            "carried_over": sum(1 for r in verified if r.get("carried")),
            "failed": sum(1 for r in rows if r.get("state") == FAILED_OBJ),
            "changed": sum(1 for r in rows if r.get("state") == CHANGED),
            "gone": sum(1 for r in rows if r.get("state") == GONE),
            "actions": _count(r.get("action", "none") for r in verified),
        },
        "bytes": {
            "before": before,
            "after": after,
            "saved": before - after,
            "saved_percent": round(100 * (1 - after / before), 2) if before else None,
        },
        "fidelity": {
            "target": str(Target.parse(spec["target"])) if spec.get("target") else None,
            "identical": sum(1 for r in verified if r.get("identical")),
            "measured": _quantiles([r["fidelity"] for r in verified if r.get("fidelity") is not None]),
        },
        "forms": _count(r.get("form", "?") for r in verified),
        "failures": failures,
        "time": {
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "share": {k: round(v / total, 4) for k, v in seconds.items()} if total else {},
            "megapixels": round(mp, 3),
            "seconds_per_megapixel": round((total - seconds["list"]) / mp, 3) if mp else None,
        },
        "cost": {
            "prices": {k: v for k, v in prices.items() if k != "classes"},
            "usd_per_gb_month": {k: float(c["usd_per_gb_month"]) for k, c in prices["classes"].items()},
            "usd_per_month_before": _cents(cost_before),
            "usd_per_month_after": _cents(cost_after),
            "usd_per_month_saved": {k: round(cost_before[k] - cost_after[k], 6) for k in cost_before},
            "usd_per_month_per_tib_of_originals": {  # the same objects, scaled to 1 TiB of originals
                k: {"before": round(v * tib, 2), "after": round(cost_after[k] * tib, 2)} for k, v in cost_before.items()
            },
        },
    }


CSV_COLUMNS = (
    "key", "dest", "state", "reason", "detail", "bytes_before", "bytes_after", "saved_percent", "form", "quality",
    "fidelity", "identical", "megapixels", "seconds", "action", "carried",
)  # fmt: skip


def write_csv(path: Path, results: dict[str, dict[str, Any]]) -> Path:
    """One row per object."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(CSV_COLUMNS)
        for key in sorted(results):
            r = results[key]
            b0, b1 = r.get("bytes_before"), r.get("bytes_after")
            row = {
                **r,
                "saved_percent": round(100 * (1 - b1 / b0), 2) if b0 and b1 is not None else "",
                "seconds": round(sum((r.get("timings") or {}).values()), 3) if r.get("timings") else "",
            }
            out.writerow(["" if row.get(c) is None else row.get(c, "") for c in CSV_COLUMNS])
    return path


#: The colours of the migration report's plots (the test bench's palette).
PLOT_COLORS = {"objects": "#0072B2", "share": "#E69F00", "fidelity": "#009E73"}


def _cell(value: Any) -> str:
    """A figure as the report shows it: whole numbers with thousands separators, the rest as the JSON has it."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:,.1f}"
    return str(value)


def _table(name: str, headers: list[str], rows: list[list[Any]], *, failed: frozenset[int] = frozenset()) -> str:
    """A table of the report (``data-table`` names it for readers and tests); row ``i`` in ``failed`` is marked."""
    esc = html.escape
    head = "".join(f"<th>{h}</th>" for h in headers)  # headers are ours, with their unit spans
    body = []
    for i, row in enumerate(rows):
        cls = ' class="failed"' if i in failed else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(_cell(v))}</td>" for v in row) + "</tr>")
    return f'<table data-table="{name}"><tr>{head}</tr>{"".join(body)}</table>'


def _unit(label: str, unit: str) -> str:
    return f"{html.escape(label)} <span class=unit>({html.escape(unit)})</span>"


def _histogram(values: list[float], goal: str | None) -> str:
    """The fidelity of the verified objects, binned: one bar per bin (objects), worst bin first."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return "<p>No fidelity measured (every object came back identical, or none was verified).</p>"
    lo, hi = finite[0], finite[-1]
    bins = max(1, min(12, len(finite)))
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in finite:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    digits = 3 if hi < 2 else 1
    groups = [
        (
            f"{lo + i * width:.{digits}f} – {lo + (i + 1) * width:.{digits}f}",
            [("objects", PLOT_COLORS["fidelity"], float(n))],
            f"{n} object(s)",
        )
        for i, n in enumerate(counts)
    ]
    title = "Fidelity on retrieval" + (f" (target {goal})" if goal else "")
    return f'<div class="plots">{bars_svg(groups, x_label="objects", title=title, width=860)}</div>'


def _count_bars(counts: dict[str, int], title: str, x_label: str, color: str) -> str:
    total = sum(counts.values()) or 1
    groups = [
        (k, [(x_label, color, float(v))], f"{v} ({100 * v / total:.1f} %)")
        for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
    ]
    return f'<div class="plots">{bars_svg(groups, x_label=x_label, title=title, width=860)}</div>' if groups else ""


def write_html(path: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> Path:
    """The report as a page in the test bench's style (``testing/report.py``: the same stylesheet and plots, a
    summary with its verdict, failures listed, a table per section and every object in a scrolling table). Each
    table names itself (``data-table``) and shows the figures of ``report.json``."""
    rep = summary["report"]
    esc = html.escape
    o, b, t, cost, fid = rep["objects"], rep["bytes"], rep["time"], rep["cost"], rep["fidelity"]
    prices = cost["prices"]
    summary_rows = [
        [_unit("objects listed", "objects"), o["listed"]],
        [_unit("verified", "objects"), o["verified"]],
        [_unit("carried over from earlier rounds", "objects"), o["carried_over"]],
        [_unit("failed", "objects"), o["failed"]],
        [_unit("changed during the run", "objects"), o["changed"]],
        [_unit("gone", "objects"), o["gone"]],
        [_unit("bytes before", "B, verified objects"), b["before"]],
        [_unit("bytes after", "B, their stored forms"), b["after"]],
        [_unit("saved", "B"), b["saved"]],
        [_unit("saved", "%"), b["saved_percent"]],
        [_unit("migrated", "MP"), t["megapixels"]],
        [_unit("time per megapixel", "s/MP"), t["seconds_per_megapixel"]],
    ]
    head = "".join(f"<th>{h}</th>" for h in ("measure", "value"))
    body = "".join(f"<tr><td>{label}</td><td>{esc(_cell(v))}</td></tr>" for label, v in summary_rows)
    summary_table = f'<table data-table="summary"><tr>{head}</tr>{body}</table>'
    saved = b["saved_percent"]
    cls = "win" if saved is not None and saved > 0 else "lose"
    verdict = (
        f"<p><b>{o['verified']} of {o['listed']}</b> object(s) verified; their stored forms take "
        f'<span class="{cls}">{esc(_cell(saved))} %</span> fewer bytes than the originals. Originals: '
        + (", ".join(f"{esc(k)} {v}" for k, v in o["actions"].items()) or "none acted on")
        + ".</p>"
    )
    failed = {k: r for k, r in results.items() if r.get("state") not in (VERIFIED, WORKING)}
    failures = ""
    if failed:
        items = "".join(
            f"<li>{esc(k)}: <code>{esc(r.get('reason', '?'))}{': ' + esc(r['detail']) if r.get('detail') else ''}"
            "</code></li>"
            for k, r in sorted(failed.items())
        )
        failures = (
            f"<h2>Failures ({len(failed)})</h2><p>Each keeps its original. By reason:</p>"
            + _table("failures", ["reason", "objects"], sorted(rep["failures"].items(), key=lambda kv: -kv[1]))
            + f'<ul class="failures">{items}</ul>'
        )
    measured = fid["measured"] or {}
    fidelity_table = _table(
        "fidelity",
        ["target", "identical files", *measured],
        [[fid["target"], fid["identical"], *measured.values()]],
    )
    values = [r["fidelity"] for r in results.values() if r.get("state") == VERIFIED and r.get("fidelity") is not None]
    forms_table = _table("forms", ["form", "objects"], sorted(rep["forms"].items(), key=lambda kv: -kv[1]))
    per_gb = cost.get("usd_per_gb_month", {})
    per_tib = cost["usd_per_month_per_tib_of_originals"]
    cost_rows = [
        [k, per_gb.get(k), cost["usd_per_month_before"][k], cost["usd_per_month_after"][k],
         cost["usd_per_month_saved"][k], per_tib[k]["before"], per_tib[k]["after"]]
        for k in cost["usd_per_month_before"]
    ]  # fmt: skip
    cost_table = _table(
        "cost",
        ["storage class", _unit("price", "USD/GB-month"), _unit("before", "USD/month"), _unit("after", "USD/month"),
         _unit("saved", "USD/month"), _unit("per TiB of originals, before", "USD/month"),
         _unit("per TiB of originals, after", "USD/month")],
        cost_rows,
    )  # fmt: skip
    time_table = _table(
        "time",
        ["part", _unit("seconds", "s"), _unit("share", "of the total")],
        [[k, v, t["share"].get(k)] for k, v in t["seconds"].items()],
    )
    shares = {k: round(100 * v, 1) for k, v in t["share"].items()}
    keys = sorted(results)
    every = _table(
        "objects",
        ["key", "state", "reason", _unit("before", "B"), _unit("after", "B"), "form", "fidelity", "action"],
        [[k, results[k].get("state"), results[k].get("reason"), results[k].get("bytes_before"),
          results[k].get("bytes_after"), results[k].get("form"), results[k].get("fidelity"), results[k].get("action")]
         for k in keys],
        failed=frozenset(i for i, k in enumerate(keys) if k in failed),
    )  # fmt: skip
    keep = f" · originals kept at {esc(summary['originals'])}" if summary.get("originals") else ""
    meta = (
        f"{esc(summary.get('source', ''))} → {esc(summary.get('dest', ''))}{keep} · target "
        f"{esc(summary.get('target', ''))} · on verified: {esc(str(summary.get('on_verified')))} · status "
        f"{esc(summary['status'])} · round {summary['round']} · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Migration {esc(summary["id"])}</title>
<style>{REPORT_STYLE}</style></head>
<body>
<h1>Migration {esc(summary["id"])}</h1>
<p class="meta">{meta}</p>
<div class="note"><p><b>How to read it.</b> Every object counted as verified was stored, then retrieved as a user
would get it and checked: the target met on the retrieved file, its size and format those of the original, the
SHA-256 in its record the original's (and for <code>exact</code> the retrieved file's too). Any other object keeps
its original, and is listed under Failures with its reason. Bytes and costs count the verified objects only;
"carried over" objects were verified by an earlier round and not done again. Monthly costs apply each storage
class's price (and minimum billable object size) to the originals and to their stored forms.</p></div>
<h2>Summary</h2>
{summary_table}
{verdict}
{failures}
<h2>Fidelity on retrieval</h2>
{fidelity_table}
{_histogram(values, fid["target"])}
<h2>Forms chosen</h2>
{forms_table}
{_count_bars(rep["forms"], "Stored forms chosen", "objects", PLOT_COLORS["objects"])}
<h2>Monthly cost by storage class</h2>
{cost_table}
<p class="meta">Prices: {esc(str(prices.get("region", "")))}, as of <b>{esc(str(prices.get("as_of", "")))}</b>
({esc(str(prices.get("source", "")))}).</p>
<h2>Where the time goes</h2>
{time_table}
{_count_bars(shares, "Share of the time (%)", "% of the time", PLOT_COLORS["share"])}
<h2>Every object ({len(results)})</h2>
<div class="scroll">{every}</div>
<p class="meta">Files: <code>report.json</code> (these figures, and every object's state),
<code>objects.csv</code> (a row per object), beside this page.</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_reports(folder: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[Path]:
    """``report.json`` (the status, report included), ``objects.csv`` and ``report.html`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "report.json"
    out.write_text(json.dumps({**summary, "objects_detail": results}, indent=2, default=str))
    return [out, write_csv(folder / "objects.csv", results), write_html(folder / "report.html", summary, results)]


def results_of(jobs: JobStore, migration: str) -> dict[str, dict[str, Any]]:
    """Each object's latest result (for the CSV and HTML reports)."""
    return latest_results(chunks_of(jobs, jobs.get(migration)))


# ---- the dry run -----------------------------------------------------------------------------------------------
@dataclass
class Plan:
    spec: Spec
    objects: int
    bytes: int
    sampled: list[dict[str, Any]] = field(default_factory=list)
    list_seconds: float = 0.0
    sizes: list[int] = field(default_factory=list, repr=False)

    def to_dict(self, settings: Settings) -> dict[str, Any]:
        ok = [s for s in self.sampled if "stored_bytes" in s]
        ratio = sum(s["stored_bytes"] for s in ok) / max(1, sum(s["bytes"] for s in ok)) if ok else None
        prices = load_prices(settings)
        sizes = self.sizes
        before = monthly_cost(sizes, prices)
        after = None if ratio is None else monthly_cost([int(s * ratio) for s in sizes], prices)
        tib = 2**40 / self.bytes if self.bytes else 0.0
        estimate = None if ratio is None else round(self.bytes * ratio)
        return {
            "id": self.spec.id,
            **self.spec.to_dict(),
            "dry_run": True,
            "objects": self.objects,
            "bytes": self.bytes,
            "list_seconds": round(self.list_seconds, 3),
            "sample": {
                "objects": len(self.sampled),
                "failed": len(self.sampled) - len(ok),
                "stored_ratio": None if ratio is None else round(ratio, 4),
                "seconds_per_megapixel": round(
                    sum(s["seconds"] for s in ok) / max(1e-9, sum(s["megapixels"] for s in ok)), 3
                )
                if ok
                else None,
                "forms": _count(s["form"] for s in ok),
                "failures": _count(s["reason"] for s in self.sampled if "reason" in s),
            },
            "estimate": {
                "bytes_after": estimate,
                "saved_percent": None if ratio is None else round(100 * (1 - ratio), 2),
                "usd_per_month_before": _cents(before),
                "usd_per_month_after": None if after is None else _cents(after),
                "usd_per_month_per_tib_of_originals": {
                    k: {"before": round(v * tib, 2), "after": None if after is None else round(after[k] * tib, 2)}
                    for k, v in before.items()
                },
                "prices_as_of": prices.get("as_of"),
            },
        }


def plan(spec: Spec, service: S3CommonUpscaler, *, sample: int, progress: Callable[[int], None] | None = None) -> Plan:
    """List the source with each object's size, and decide (without storing) the form of ``sample`` objects
    spread evenly over the listing."""
    originals = open_originals(spec, service)
    t0 = time.perf_counter()
    keys = list(originals.keys())
    sizes = []
    for key in keys:
        try:
            sizes.append(originals.version(key)[1])
        except NotFound:
            sizes.append(0)
    result = Plan(spec, len(keys), sum(sizes), list_seconds=time.perf_counter() - t0, sizes=sizes)
    step = max(1, len(keys) // max(1, sample)) if sample else 0
    picks = keys[::step][:sample] if step else []
    goal = Target.parse(spec.target)
    for i, key in enumerate(picks):
        try:
            data, _ = originals.read(key)
            decision = service.decide(data, goal)
            form = decision.form
            label = "original" if form.codec == "original" else f"x{form.scale:g} {form.codec}"
            result.sampled.append(
                {
                    "key": key,
                    "bytes": len(data),
                    "stored_bytes": form.bytes,
                    "form": label,
                    "seconds": decision.seconds,
                    "megapixels": decision.megapixels,
                }
            )
        except UpscalerError as exc:
            if exc.status >= 500:
                raise
            result.sampled.append({"key": key, "reason": _reason(exc)})
        if progress is not None:
            progress(i + 1)
    return result
