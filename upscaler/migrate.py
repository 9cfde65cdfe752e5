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
  meanwhile (ETag, or mtime and size for a folder) is redone once, then reported.
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
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upscaler import media
from upscaler.config import Settings
from upscaler.errors import Conflict, InvalidInput, NotFound, UpscalerError
from upscaler.jobs import CANCELLED, FAILED, PROCESSING, SUBMITTED, Job, JobQueue, JobStore
from upscaler.jobs import submit as submit_job
from upscaler.jobs.model import FINAL
from upscaler.quality import Target
from upscaler.report_style import REPORT_STYLE
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
PRICES_FILE = Path(__file__).with_name("prices.json")


# ---- what a migration is --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """A migration: where the originals are, where the stored forms go, and the quality target."""

    #: ``file:///abs/folder``, ``s3://bucket/prefix`` (the service's object store) or ``manifest:<csv>``, the CSV
    #: a local file or ``s3://bucket/key`` (S3 Inventory CSV: bucket and URL-encoded key first on each row).
    source: str
    #: ``s3://bucket/prefix`` in the service's object store.
    dest: str
    target: str

    @property
    def id(self) -> str:
        """The same migration asked again has the same id: that is what makes a re-run resume it."""
        text = json.dumps([self.source, self.dest, str(Target.parse(self.target))])
        return "mig-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def parse(cls, source: str, dest: str, target: str, *, folders: bool = True) -> Spec:
        """Normalise SOURCE and DEST as typed (a folder path, ``s3://...``, a ``.csv`` manifest); ``folders=False``
        (the HTTP API) refuses sources on the server's own disk."""
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
        spec = cls(("manifest:" if manifest else "") + src, f"s3://{dest_bucket}/{dest_prefix}", target.strip())
        spec._check_overlap()
        return spec

    def _check_overlap(self) -> None:
        if not self.source.startswith("s3://"):
            return
        (sb, sp), (db, dp) = split_s3(self.source), split_s3(self.dest)
        if sb == db and (dp.startswith(sp) or sp.startswith(dp)):
            raise InvalidInput(
                "the destination must not overlap the source (in place would replace originals before they are "
                "verified, and a re-run would list the stored forms as originals): choose another prefix or bucket"
            )

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "dest": self.dest, "target": self.target}


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
        model0, t1 = ctx.timer.seconds, time.perf_counter()
        try:
            stored = service.store_image(data, bucket=bucket, key=dest_key, target=goal)
        except UpscalerError as exc:
            if exc.status >= 500:
                raise
            return {**result, "state": FAILED_OBJ, "reason": _reason(exc), "detail": exc.message[:300]}
        model1, t2 = ctx.timer.seconds, time.perf_counter()
        timings["model"] = model1 - model0
        timings["encode"] = (t2 - t1) - timings["model"]  # the search: encodes, decodes and measures
        rec = stored.record
        result.update(
            bytes_after=rec.stored_bytes,
            format=rec.format,
            megapixels=round(rec.width * rec.height / 1e6, 4),
            form="original" if rec.stored_codec == "original" else f"x{rec.scale:g} {rec.stored_codec}",
            quality=rec.stored_quality,
        )
        try:
            checked = verify(service, bucket, dest_key, data, goal)
        except (Verification, UpscalerError) as exc:
            if isinstance(exc, UpscalerError) and exc.status >= 500:
                raise
            service.store.delete(bucket, dest_key)  # no unverified stored form is left to be mistaken for one
            reason = exc.message if isinstance(exc, UpscalerError) else str(exc)
            return {**result, "state": FAILED_OBJ, "reason": "verification failed", "detail": reason[:300]}
        timings["model"] += ctx.timer.seconds - model1
        timings["verify"] = time.perf_counter() - t2 - (ctx.timer.seconds - model1)
        result.update(checked, timings={k: round(v, 4) for k, v in timings.items()})
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


def apply_action(originals: Originals, result: dict[str, Any], on_verified: str, migration: str) -> dict[str, Any]:
    """Tag, delete or keep a verified original; the result with its ``action`` (done once: a re-run with another
    ``on_verified`` applies the new one)."""
    action = result.get("action")
    if result.get("state") != VERIFIED or action == "deleted":
        return result
    if on_verified == "keep":
        return {**result, "action": action or "kept"}
    if action == {"tag": "tagged", "delete": "deleted"}[on_verified]:
        return result
    if on_verified == "tag":
        originals.mark(result["key"], migration)
        return {**result, "action": "tagged"}
    if on_verified == "delete":
        deleted = originals.delete(result["key"], result["version"])
        return {**result, "action": "deleted" if deleted else "kept (changed)"}
    return {**result, "action": "kept"}


class Stopped(Exception):
    """The worker was asked to stop (SIGTERM) between two objects; the chunk's results so far are saved."""

    def __init__(self, done: int) -> None:
        super().__init__(f"stopped after {done} objects")
        self.done = done


class ChunkCancelled(Exception):
    """The chunk was cancelled (a re-run of its migration superseded it)."""


def run_chunk(ctx: Context, job: Job, stop: Callable[[], bool] | None = None) -> tuple[str, int, int, dict[str, Any]]:
    """Migrate the objects of chunk ``job``; (output URL, objects done, objects carried over, fields of the
    Completed row). Results are saved to the job row every ``migrate_flush_seconds`` and before any delete, so a
    killed worker redoes at most those few objects (idempotently). Raises :class:`Stopped` or
    :class:`ChunkCancelled`."""
    state = dict(job.migration or {})
    spec = Spec(**state["spec"])
    goal, on_verified = Target.parse(spec.target), state.get("on_verified", "tag")
    originals = open_originals(spec, ctx.service)
    dest = split_s3(spec.dest)
    dest = (ctx.service.bucket(dest[0]), dest[1])
    results: dict[str, dict[str, Any]] = dict(state.get("results") or {})
    items = state["items"]
    last = time.monotonic()

    def save(force: bool = False) -> None:
        nonlocal last
        if force or time.monotonic() - last >= ctx.settings.migrate_flush_seconds:
            last = time.monotonic()
            ctx.jobs.update(job.id, migration={**state, "results": results}, frames_done=len(results))
            if ctx.jobs.get(job.id).status == CANCELLED:
                raise ChunkCancelled(job.id)

    for item in items:
        key = item["key"]
        if stop is not None and stop():
            save(force=True)
            raise Stopped(len(results))
        done = results.get(key)
        if done is None or done.get("action") == "deleting":
            prev = done or item.get("prev")
            result = migrate_one(ctx, originals, key, dest, goal, prev)
        else:
            result = done
        if result.get("state") == VERIFIED and on_verified == "delete" and result.get("action") != "deleted":
            results[key] = {**result, "action": "deleting"}
            save(force=True)  # the job store knows it was verified before the original goes
        results[key] = apply_action(originals, result, on_verified, state["id"])
        save()
    save(force=True)  # the Completed row keeps these results (a transition writes over the stored row)
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
    failures = _count(r.get("reason", "?") for r in rows if r.get("state") != VERIFIED)
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


def write_html(path: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> Path:
    """The report as a page in the test bench's style (``testing/report.py``)."""
    rep = summary["report"]
    esc = html.escape

    def table(headers: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    b, o, cost = rep["bytes"], rep["objects"], rep["cost"]
    totals = table(
        ["objects listed", "verified", "carried over", "failed", "changed", "bytes before", "bytes after", "saved %"],
        [[o["listed"], o["verified"], o["carried_over"], o["failed"], o["changed"], f"{b['before']:,}",
          f"{b['after']:,}", b["saved_percent"]]],
    )  # fmt: skip
    costs = table(
        ["storage class", "USD/month before", "USD/month after", "saved"],
        [[k, cost["usd_per_month_before"][k], cost["usd_per_month_after"][k], cost["usd_per_month_saved"][k]]
         for k in cost["usd_per_month_before"]],
    )  # fmt: skip
    forms = table(["form", "objects"], sorted(rep["forms"].items(), key=lambda kv: -kv[1]))
    fails = table(["reason", "objects"], sorted(rep["failures"].items(), key=lambda kv: -kv[1]))
    fid = rep["fidelity"]["measured"] or {}
    fidelity = table(["target", "identical files", *fid], [[rep["fidelity"]["target"], rep["fidelity"]["identical"],
                                                            *fid.values()]])  # fmt: skip
    times = table(["part", "seconds", "share"], [[k, v, rep["time"]["share"].get(k, "")]
                                                 for k, v in rep["time"]["seconds"].items()])  # fmt: skip
    every = table(
        ["key", "state", "reason", "bytes before", "bytes after", "form", "fidelity", "action"],
        [[k, r.get("state"), r.get("reason", ""), r.get("bytes_before", ""), r.get("bytes_after", ""),
          r.get("form", ""), r.get("fidelity", ""), r.get("action", "")] for k, r in sorted(results.items())],
    )  # fmt: skip
    prices = cost["prices"]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Migration {esc(summary["id"])}</title>
<style>{REPORT_STYLE}</style></head>
<body>
<h1>Migration {esc(summary["id"])}</h1>
<p class="meta">{esc(summary.get("source", ""))} → {esc(summary.get("dest", ""))}
· target {esc(summary.get("target", ""))} · on verified: {esc(str(summary.get("on_verified")))}
· status {esc(summary["status"])} · round {summary["round"]}</p>
<div class="note"><p>Every object counted as verified was stored, then retrieved as a user would get it and checked:
the target met on the retrieved file, its size and format those of the original, the SHA-256 in its record the
original's (and for <code>exact</code> the retrieved file's too). Any other object keeps its original.</p></div>
<h2>Totals</h2>{totals}
<h2>Monthly cost</h2>{costs}
<p class="meta">Prices: {esc(str(prices.get("region", "")))}, as of {esc(str(prices.get("as_of", "")))}
({esc(str(prices.get("source", "")))}).</p>
<h2>Fidelity on retrieval</h2>{fidelity}
<h2>Forms chosen</h2>{forms}
<h2>Failures by reason</h2>{fails}
<h2>Time</h2>{times}
<p class="meta">{rep["time"]["megapixels"]} MP migrated, {rep["time"]["seconds_per_megapixel"]} s per megapixel.</p>
<h2>Every object</h2><div class="scroll">{every}</div>
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
