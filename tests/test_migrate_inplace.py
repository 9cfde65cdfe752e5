"""Archive migration in place (issue 17: DEST the source itself) and per-object claims.

In place, each original is copied to the originals location and read back before its stored form takes its key.
Real worker processes are SIGKILLed (as in test_migrate.py) at chosen points between the steps: just before the
stored form is written (after the copy and its record), just after it is written (before it is verified), and
just after the copy is written (before the job store knows of it). After each kill every key holds its original,
or a stored form whose original is kept byte for byte and recorded in the job store; running the command again
finishes the migration. On a local folder store and on S3 (moto's server).

Per-object claims: two workers handed the same chunk at once (a message delivered twice), on DynamoDB (moto),
act on each object once; a worker whose claim ran out saves nothing over the worker that took the object over.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.servers import UPSCALER
from tests.test_migrate import BROKEN, ENV, NOT_IMAGE, TARGET, _service, _settings, archive, aws, check_html_report  # noqa: F401
from upscaler import media, migrate
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.jobs import Job, SqliteJobStore
from upscaler.jobs.factory import open_job_queue, open_job_store
from upscaler.providers import open_provider
from upscaler.store.factory import open_store

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("alpha/a0.png", "graphics/g0.png", BROKEN, NOT_IMAGE, "photos/p00.jpg", "photos/p01.jpg")
IMAGES = [k for k in KEYS if k not in (BROKEN, NOT_IMAGE)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _KillingStore:
    """The worker's object store, SIGKILLing its own process just ``before`` or just ``after`` one put: a crash
    between two steps of a migration in place."""

    def __init__(self, inner: Any, when: str, bucket: str, key: str) -> None:
        self.inner, self.when, self.target = inner, when, (bucket, key)

    def put(self, bucket: str, key: str, data: bytes, **kw: Any) -> Any:
        hit = (bucket, key) == self.target
        if hit and self.when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        info = self.inner.put(bucket, key, data, **kw)
        if hit and self.when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _crashing_worker(chunk: str, when: str, bucket: str, key: str) -> None:
    """A worker (in its own process) running ``chunk`` until it kills itself at that put."""
    settings = Settings.from_env()
    engine = Engine(settings)
    store = open_store(settings.storage, endpoint_url=settings.s3_endpoint_url or None)
    jobs = open_job_store(settings)
    ctx = migrate.Context.build(
        _KillingStore(store, when, bucket, key), open_provider(settings, engine), engine, jobs, settings
    )
    migrate.run_chunk(ctx, jobs.get(chunk))
    sys.exit(3)  # the put was never reached


def _crash(env: dict[str, str], chunk: str, when: str, bucket: str, key: str) -> None:
    argv = [sys.executable, "-m", "tests.test_migrate_inplace", chunk, when, bucket, key]
    done = subprocess.run(argv, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


def _state(jobs: Any, chunk: str, key: str) -> dict[str, Any]:
    return (jobs.get(chunk).migration or {}).get("results", {}).get(key) or {}


def _nothing_lost(store: Any, files: dict[str, bytes], src: tuple[str, str], keep: tuple[str, str],
                  jobs: Any, chunk: str) -> dict[str, str]:  # fmt: skip
    """Every key holds its original byte for byte, or a stored form of it (its record's SHA-256 the original's)
    whose original is kept byte for byte and recorded as kept in the job store (or, with ``--on-verified delete``,
    deleted once the stored form was verified). What each key holds."""
    held = {}
    for key, data in files.items():
        obj = store.get(src[0], src[1] + key)
        if _sha(obj.data) == _sha(data):
            held[key] = "original"
            continue
        assert media.RECORD_MARKER in obj.metadata, key
        assert media.ImageRecord.from_metadata(obj.metadata).sha256 == _sha(data), key
        state = _state(jobs, chunk, src[1] + key)
        assert state["kept"]["sha256"] == _sha(data), key
        if state["state"] == migrate.VERIFIED and state.get("action") == "deleted":
            assert not store.exists(keep[0], keep[1] + key), key
        else:
            assert _sha(store.get(keep[0], keep[1] + key).data) == _sha(data), key
        held[key] = "stored form"
    return held


def _check_done(service: Any, files: dict[str, bytes], src: tuple[str, str], keep: tuple[str, str]) -> None:
    """After the run: each image's key holds a stored form that verifies against the original (retrieved afresh
    from the key), the original kept byte for byte; a file that is no image keeps its original at its key."""
    goal = migrate.Target.parse(TARGET)
    for key, data in files.items():
        if key in (BROKEN, NOT_IMAGE):
            assert _sha(service.store.get(src[0], src[1] + key).data) == _sha(data), key
            assert not service.store.exists(keep[0], keep[1] + key), key  # no copy left of a failed object
            continue
        migrate.verify(service, src[0], src[1] + key, data, goal)
        assert _sha(service.store.get(keep[0], keep[1] + key).data) == _sha(data), key


def _cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run([str(UPSCALER), "migrate", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_in_place_on_a_folder_store_loses_no_original_when_killed_between_steps(tmp_path: Path) -> None:
    every = archive()
    files = {k: every[k] for k in KEYS}
    root = tmp_path / "objects"
    for key, data in files.items():  # put there by hand, as an existing archive is
        (root / "media" / "archive" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "media" / "archive" / key).write_bytes(data)
    env = {
        **os.environ,
        **ENV,
        "UPSCALER_MIGRATE_CHUNK_KEYS": "100",
        "UPSCALER_MIGRATE_CLAIM_SECONDS": "1",  # a killed worker's claim runs out at once
        "UPSCALER_STORAGE": str(root),
        "UPSCALER_JOB_STORE": str(tmp_path / "jobs.db"),
        "UPSCALER_JOB_QUEUE": str(tmp_path / "queue.db"),
    }
    settings = _settings(env)
    service = _service(settings)
    jobs = open_job_store(settings)
    src, keep = ("media", "archive/"), ("media", "originals/")
    with pytest.raises(migrate.InvalidInput, match="originals location"):
        migrate.Spec.parse("s3://media/archive/", "s3://media/archive/", TARGET)
    with pytest.raises(migrate.InvalidInput, match="must not overlap"):
        migrate.Spec.parse("s3://media/archive/", "s3://media/archive/", TARGET, originals="s3://media/archive/o/")
    spec = migrate.Spec.parse("s3://media/archive/", "s3://media/archive/", TARGET, originals="s3://media/originals/")
    assert spec.in_place
    migrate.submit(spec, service, jobs, open_job_queue(settings), settings)
    chunk = migrate.chunk_id(spec.id, 0, 0)

    # killed after the copy and its record, before the stored form is written: the original is at its key
    _crash(env, chunk, "before", "media", "archive/alpha/a0.png")
    held = _nothing_lost(service.store, files, src, keep, jobs, chunk)
    assert set(held.values()) == {"original"}
    assert _state(jobs, chunk, "archive/alpha/a0.png")["step"] == migrate.KEPT

    # the next worker takes a0 over once its claim ran out (waited for: on a quiet machine the next worker started
    # within the second and found a0 still claimed); killed after writing g0, before verifying it
    time.sleep(float(env["UPSCALER_MIGRATE_CLAIM_SECONDS"]) + 0.5)
    _crash(env, chunk, "after", "media", "archive/graphics/g0.png")
    held = _nothing_lost(service.store, files, src, keep, jobs, chunk)
    assert held["graphics/g0.png"] == "stored form" and held["photos/p00.jpg"] == "original"
    assert _state(jobs, chunk, "archive/alpha/a0.png")["state"] == migrate.VERIFIED

    # killed after the copy, before the job store knows of it: the original is still at its key
    _crash(env, chunk, "after", "media", "originals/photos/p00.jpg")
    held = _nothing_lost(service.store, files, src, keep, jobs, chunk)
    assert held["photos/p00.jpg"] == "original" and service.store.exists("media", "originals/photos/p00.jpg")

    # the same command again finishes it
    args = ["s3://media/archive/", "s3://media/archive/", "--originals", "s3://media/originals/", "--target", TARGET]
    out = _cli(env, tmp_path, *args, "--apply", "--workers", "1", "--report", str(tmp_path / "r"))
    assert f"migration {spec.id}: completed, round 2" in out, out
    rep = json.loads((tmp_path / "r" / "report.json").read_text())["report"]
    assert rep["objects"]["verified"] == len(IMAGES) and rep["objects"]["actions"] == {"tagged": len(IMAGES)}
    assert rep["failures"] == {"broken or not an image": 1, "unsupported format": 1}
    check_html_report(tmp_path / "r")
    _check_done(service, files, src, keep)
    for key in IMAGES:  # the default tags the kept original, never the stored form at the key
        assert service.store.tags("media", "originals/" + key) == {migrate.TAG: spec.id}, key
        assert migrate.TAG not in service.store.tags("media", "archive/" + key), key
    # a re-run lists the stored forms at the keys and does nothing again
    assert sorted(service.store.list("media", "archive/")) == sorted("archive/" + k for k in KEYS)
    _cli(env, tmp_path, *args, "--apply", "--workers", "1", "--report", str(tmp_path / "r2"))
    rep = json.loads((tmp_path / "r2" / "report.json").read_text())["report"]
    assert rep["objects"]["carried_over"] == len(IMAGES)


def test_in_place_on_s3_deletes_only_verified_kept_originals_after_kills(aws, tmp_path: Path) -> None:  # noqa: F811
    env, s3 = aws
    env = {**env, "UPSCALER_MIGRATE_CHUNK_KEYS": "100", "UPSCALER_MIGRATE_CLAIM_SECONDS": "1"}
    s3.create_bucket(Bucket="keep")
    every = archive()
    files = {k: every[k] for k in KEYS}
    for key, data in files.items():  # written by another tool: plain objects, S3's own ETags
        s3.put_object(Bucket="archive", Key="photos/" + key, Body=data)
    settings = _settings(env)
    service = _service(settings)
    jobs = open_job_store(settings)
    src, keep = ("archive", "photos/"), ("keep", "photos/")
    spec = migrate.Spec.parse("s3://archive/photos/", "s3://archive/photos/", TARGET, originals="s3://keep/photos/")
    migrate.submit(spec, service, jobs, open_job_queue(settings), settings, on_verified="delete")
    chunk = migrate.chunk_id(spec.id, 0, 0)

    _crash(env, chunk, "after", "archive", "photos/alpha/a0.png")  # written, not verified
    assert _nothing_lost(service.store, files, src, keep, jobs, chunk)["alpha/a0.png"] == "stored form"
    _crash(env, chunk, "before", "archive", "photos/graphics/g0.png")  # kept, not written
    held = _nothing_lost(service.store, files, src, keep, jobs, chunk)
    assert held["graphics/g0.png"] == "original"
    assert held["alpha/a0.png"] == "stored form"  # verified by the second worker, its kept copy deleted after
    assert _state(jobs, chunk, "photos/alpha/a0.png")["action"] == "deleted"

    args = ["s3://archive/photos/", "s3://archive/photos/", "--originals", "s3://keep/photos/", "--target", TARGET]
    out = _cli(env, tmp_path, *args, "--apply", "--workers", "2", "--on-verified", "delete", "--report",
               str(tmp_path / "r"))  # fmt: skip
    assert "completed, round 2" in out, out
    rep = json.loads((tmp_path / "r" / "report.json").read_text())["report"]
    assert rep["objects"]["verified"] == len(IMAGES) and rep["objects"]["actions"] == {"deleted": len(IMAGES)}
    assert s3.list_objects_v2(Bucket="keep").get("KeyCount", 0) == 0  # only verified copies deleted, none else
    goal = migrate.Target.parse(TARGET)
    for key, data in files.items():
        if key in (BROKEN, NOT_IMAGE):
            assert s3.get_object(Bucket="archive", Key="photos/" + key)["Body"].read() == data, key
        else:
            migrate.verify(service, "archive", "photos/" + key, data, goal)


def test_an_object_already_stored_is_never_taken_for_an_original(tmp_path: Path) -> None:
    settings = Settings.from_env({}, storage=str(tmp_path / "objects"), gpu="off", ncnn_threads=1)
    service = _service(settings)
    data = archive()["photos/p00.jpg"]
    service.store_image(data, bucket="media", key="a/p.jpg", target=TARGET)
    before = service.store.get("media", "a/p.jpg")
    ctx = migrate.Context(service, SqliteJobStore(tmp_path / "j.db"), settings, migrate.TimedProvider(service.provider))
    originals = migrate.StoreOriginals(service.store, "media", "a/")
    saved = []
    result = migrate.migrate_in_place(ctx, originals, "a/p.jpg", ("media", "keep/"), migrate.Target.parse(TARGET),
                                      None, saved.append)  # fmt: skip
    assert (result["state"], result["reason"]) == (migrate.FAILED_OBJ, "already a stored form")
    assert service.store.get("media", "a/p.jpg").etag == before.etag and not saved
    assert not service.store.exists("media", "keep/p.jpg")


def _chunk_row(jobs: Any) -> str:
    job = Job(method=migrate.MIGRATE, video="s3://b/", id="chunk", migration={"items": [], "results": {}})
    jobs.create(job)
    return job.id


def test_a_claim_that_ran_out_is_taken_over_and_the_late_worker_saves_nothing(tmp_path: Path) -> None:
    jobs = SqliteJobStore(tmp_path / "j.db")
    chunk = _chunk_row(jobs)
    slow, fast = migrate.Claims(jobs, chunk, 0.3), migrate.Claims(jobs, chunk, 0.3)
    assert slow.write(claim="k")[0]
    assert not fast.write(claim="k")[0]  # held: not acted on
    slow.save("k", {"state": "working", "by": "slow"})  # renewed
    assert not fast.write(claim="k")[0]
    time.sleep(0.35)
    got, current, _ = fast.write(claim="k")  # ran out: taken over, with the state the slow one saved
    assert got and current == {"state": "working", "by": "slow"}
    with pytest.raises(migrate.Lost):
        slow.save("k", {"state": "working", "by": "slow again"})
    assert slow.write({"k": {"state": "verified", "by": "slow"}})[2] == ["k"]  # not saved
    assert fast.write({"k": {"state": "verified", "by": "fast"}})[2] == []
    state = jobs.get(chunk).migration or {}
    assert state["results"]["k"] == {"state": "verified", "by": "fast"} and state["claims"] == {}


class _CountingStore:
    """A worker's object store, counting its puts and deletes per key."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.puts, self.deletes = inner, {}, {}

    def put(self, bucket: str, key: str, data: bytes, **kw: Any) -> Any:
        self.puts[key] = self.puts.get(key, 0) + 1
        return self.inner.put(bucket, key, data, **kw)

    def delete(self, bucket: str, key: str) -> bool:
        self.deletes[key] = self.deletes.get(key, 0) + 1
        return self.inner.delete(bucket, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_two_workers_handed_the_same_chunk_act_once_on_each_object(aws) -> None:  # noqa: F811
    env, s3 = aws
    every = archive()
    files = {k: every[k] for k in sorted(k for k in every if k.startswith("photos/p"))[:8]}
    for key in files:
        s3.put_object(Bucket="archive", Key="two/" + key, Body=every[key])
    settings = _settings({**env, "UPSCALER_MIGRATE_CHUNK_KEYS": "100"})
    service = _service(settings)
    jobs = open_job_store(settings)
    spec = migrate.Spec.parse("s3://archive/two/", "s3://small/two/", TARGET)
    migrate.submit(spec, service, jobs, open_job_queue(settings), settings, on_verified="delete")
    chunk = migrate.chunk_id(spec.id, 0, 0)

    stores, outcomes = [], []
    start = threading.Barrier(2)

    def worker() -> None:
        engine = Engine(settings)
        store = _CountingStore(open_store(settings.storage, endpoint_url=settings.s3_endpoint_url or None))
        stores.append(store)
        ctx = migrate.Context.build(store, open_provider(settings, engine), engine, open_job_store(settings), settings)
        job = ctx.jobs.get(chunk)  # both read the chunk before either starts: a message delivered twice
        start.wait()
        outcomes.append(migrate.run_chunk(ctx, job))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(outcomes) == 2
    written = [k for s in stores for k, n in s.puts.items() for _ in range(n) if k.startswith("two/")]
    assert sorted(written) == sorted("two/" + k for k in files)  # each stored form written once, by one worker
    assert all(any(k.startswith("two/") for k in s.puts) for s in stores)  # both worked
    deleted = [k for s in stores for k, n in s.deletes.items() for _ in range(n)]
    assert sorted(deleted) == sorted("two/" + k for k in files)  # each original deleted once, by one worker
    state = jobs.get(chunk).migration or {}
    assert state["claims"] == {}
    assert {r["action"] for r in state["results"].values()} == {"deleted"}
    assert s3.list_objects_v2(Bucket="archive", Prefix="two/").get("KeyCount", 0) == 0


if __name__ == "__main__":
    _crashing_worker(*sys.argv[1:5])
