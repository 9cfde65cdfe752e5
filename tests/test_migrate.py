"""Archive migration end to end (issue 17): a folder and an S3 prefix (moto's server, with SQS and DynamoDB as the
queue and job store) of mixed small images migrated by two real worker processes; a worker SIGKILLed mid-run and
the run finished by re-running; every original intact, every migrated object verified on a fresh retrieval; the
default never deletes; ``--on-verified delete`` deletes only verified originals. Plus the HTTP layer's checks."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from tests.servers import AWS_TEST_ENV, UPSCALER, moto_server
from upscaler import migrate
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.jobs.factory import open_job_store
from upscaler.metrics import psnr
from upscaler.providers import open_provider
from upscaler.service import S3CommonUpscaler
from upscaler.store.factory import open_store

TARGET = "psnr:30"
#: Small chunks (each object's state is saved as it is settled): a kill lands mid-chunk with states already saved.
ENV = {
    "UPSCALER_NCNN_THREADS": "1",
    "UPSCALER_GPU": "off",
    "UPSCALER_MIGRATE_CHUNK_KEYS": "4",
    "UPSCALER_LOG_LEVEL": "WARNING",
}
BROKEN, NOT_IMAGE = "misc/broken.jpg", "misc/readme.txt"


def archive() -> dict[str, bytes]:
    """24 small files: photos (JPEG, WebP), graphics (PNG, GIF), PNG with alpha, 16-bit PNG, a broken JPEG and a
    text file."""
    from skimage import data

    files: dict[str, bytes] = {}

    def save(name: str, img: Image.Image, fmt: str, **kw: object) -> None:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        files[name] = buf.getvalue()

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    for i in range(12):
        src = photos[i % 3]
        y, x = 20 + 17 * i, 30 + 11 * i
        save(f"photos/p{i:02d}.jpg", Image.fromarray(src[y : y + 40, x : x + 48]), "JPEG", quality=90)
    save("photos/w.webp", Image.fromarray(photos[0][100:140, 100:148]), "WEBP", quality=90)
    yy, xx = np.mgrid[0:40, 0:48]
    for i in range(3):
        flat = np.zeros((40, 48, 3), np.uint8)
        flat[:, :] = (30 * i, 200, 120)
        flat[(xx // (6 + i) + yy // 8) % 2 == 0] = (250, 250, 250)
        save(f"graphics/g{i}.png", Image.fromarray(flat), "PNG")
    save("graphics/logo.gif", Image.fromarray(flat).convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "GIF")
    for i in range(3):
        rgba = np.dstack([photos[i][:40, :48], np.clip((xx - 10 * i) * 9, 0, 255).astype(np.uint8)])
        save(f"alpha/a{i}.png", Image.fromarray(rgba, "RGBA"), "PNG")
    for i in range(2):
        deep = ((yy * 1200 + xx * 700 + 9000 * i) % 65535).astype(np.uint16)
        save(f"deep/d{i}.png", Image.fromarray(deep), "PNG")
    files[BROKEN] = files["photos/p00.jpg"][:300]
    files[NOT_IMAGE] = b"not an image, just text\n"
    return files


IMAGES = len(archive()) - 2


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _service(settings: Settings) -> S3CommonUpscaler:
    engine = Engine(settings)
    store = open_store(settings.storage, endpoint_url=settings.s3_endpoint_url or None)
    return S3CommonUpscaler(store, open_provider(settings, engine), engine, settings)


def _settings(env: dict[str, str]) -> Settings:
    return Settings.from_env({k: v for k, v in env.items() if k.startswith("UPSCALER_")})


def _workers(env: dict[str, str], n: int, cwd: Path) -> list[subprocess.Popen]:
    argv = [sys.executable, "-m", "video_upscaler", "--wait-seconds", "1"]
    return [subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True) for _ in range(n)]


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(UPSCALER), "migrate", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _check_stored(service: S3CommonUpscaler, bucket: str, prefix: str, files: dict[str, bytes], keys: set[str]):
    """Each migrated object, retrieved afresh: the original's size, format and, for photos, PSNR-Y >= 30 computed
    here (the others through the same checks the worker ran)."""
    goal = migrate.Target.parse(TARGET)
    for key in keys:
        original = files[key]
        back = service.retrieve_image(bucket=bucket, key=prefix + key).data
        a, b = Image.open(io.BytesIO(original)), Image.open(io.BytesIO(back))
        assert (b.size, b.format) == (a.size, a.format), key
        if key.startswith("photos/") and key.endswith(".jpg"):
            assert psnr(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))) >= goal.value - 1e-6, key
        migrate.verify(service, bucket, prefix + key, original, goal)


class _Tables(HTMLParser):
    """The tables of a report page: ``data-table`` name -> rows of cell texts (header row included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._name: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self._name = dict(attrs).get("data-table")
            self.tables[self._name or ""] = []
        elif tag == "tr" and self._name is not None:
            self.tables[self._name].append([])
        elif tag in ("td", "th") and self._name is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._name is not None:
            self.tables[self._name][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._name = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _figure(text: str) -> float | str | None:
    if text == "-":
        return None
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return text


def check_html_report(folder: Path) -> None:
    """report.html shows report.json's figures: the summary, fidelity, forms, failures by reason, the cost of
    each storage class with the prices' date, the time, and a row per object; with the test bench's plots."""
    state = json.loads((folder / "report.json").read_text())
    rep, page = state["report"], (folder / "report.html").read_text()
    parser = _Tables()
    parser.feed(page)
    tables = parser.tables
    o, b, t = rep["objects"], rep["bytes"], rep["time"]
    expected = [o["listed"], o["verified"], o["carried_over"], o["failed"], o["changed"], o["gone"], b["before"],
                b["after"], b["saved"], b["saved_percent"], t["megapixels"], t["seconds_per_megapixel"]]  # fmt: skip
    assert [_figure(row[1]) for row in tables["summary"][1:]] == pytest.approx(expected)
    fid = rep["fidelity"]
    row = tables["fidelity"][1]
    assert row[0] == fid["target"] and _figure(row[1]) == fid["identical"]
    assert [_figure(c) for c in row[2:]] == pytest.approx(list((fid["measured"] or {}).values()))
    assert {r[0]: _figure(r[1]) for r in tables["forms"][1:]} == rep["forms"]
    if rep["failures"]:
        assert {r[0]: _figure(r[1]) for r in tables["failures"][1:]} == rep["failures"]
    cost = rep["cost"]
    shown = {r[0]: [_figure(c) for c in r[1:]] for r in tables["cost"][1:]}
    assert set(shown) == set(cost["usd_per_month_before"]) == {"STANDARD", "STANDARD_IA", "GLACIER_IR"}
    for name, cells in shown.items():
        per_tib = cost["usd_per_month_per_tib_of_originals"][name]
        assert cells == pytest.approx([cost["usd_per_gb_month"][name], cost["usd_per_month_before"][name],
                                       cost["usd_per_month_after"][name], cost["usd_per_month_saved"][name],
                                       per_tib["before"], per_tib["after"]])  # fmt: skip
    assert f"as of <b>{cost['prices']['as_of']}</b>" in page
    assert {r[0]: _figure(r[1]) for r in tables["time"][1:]} == pytest.approx(t["seconds"])
    assert len(tables["objects"]) - 1 == len(state["objects_detail"])
    failed = [k for k, r in state["objects_detail"].items() if r["state"] != migrate.VERIFIED]
    assert page.count('<tr class="failed">') == len(failed)
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg"') >= 3 and 'class="plot"' in page


def test_a_folder_migrates_with_two_workers_survives_a_sigkill_and_keeps_every_original(tmp_path: Path) -> None:
    files = archive()
    src = tmp_path / "archive"
    for key, data in files.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    env = {
        **os.environ,
        **ENV,
        "UPSCALER_STORAGE": str(tmp_path / "objects"),
        "UPSCALER_JOB_STORE": str(tmp_path / "jobs.db"),
        "UPSCALER_JOB_QUEUE": str(tmp_path / "queue.db"),
    }
    settings = _settings(env)
    service = _service(settings)
    jobs = open_job_store(settings)

    # the dry run (the default) writes nothing
    plan = _cli(env, tmp_path, str(src), "s3://media/migrated/", "--target", TARGET, "--sample", "2")
    assert "nothing written" in plan.stdout
    assert not (tmp_path / "objects").exists() or not list((tmp_path / "objects").rglob("*.jpg"))

    spec = migrate.Spec.parse(str(src), "s3://media/migrated/", TARGET)
    from upscaler.jobs.factory import open_job_queue

    migrate.submit(spec, service, jobs, open_job_queue(settings), settings)
    first, second = _workers(env, 2, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while migrate.status(jobs, spec.id, settings)["objects_done"] < 6:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)  # mid-chunk: its chunk stays Processing, its message leased
        first.wait()
        os.killpg(second.pid, signal.SIGTERM)  # the other stops cleanly and gives its chunk back
        assert second.wait(timeout=60) == 0
    finally:
        for p in (first, second):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    before = migrate.status(jobs, spec.id, settings)
    assert before["status"] == "running" and 0 < before["objects_done"] < len(files)

    # finished by running the same command again, with its own two workers
    report = tmp_path / "report"
    done = _cli(env, tmp_path, str(src), "s3://media/migrated/", "--target", TARGET, "--apply", "--workers", "2",
                "--report", str(report))  # fmt: skip
    assert f"migration {spec.id}: completed, round 2" in done.stdout
    state = json.loads((report / "report.json").read_text())
    rep = state["report"]
    assert rep["objects"]["verified"] == IMAGES
    assert rep["objects"]["carried_over"] >= 6  # what round 1 verified was not done again
    assert rep["failures"] == {"broken or not an image": 1, "unsupported format": 1}
    assert rep["objects"]["actions"] == {"tagged": IMAGES}
    assert rep["bytes"]["after"] < rep["bytes"]["before"]
    assert rep["fidelity"]["measured"]["min"] >= 30
    assert set(rep["cost"]["usd_per_month_before"]) == {"STANDARD", "STANDARD_IA", "GLACIER_IR"}
    rows = list(csv.DictReader((report / "objects.csv").open()))
    assert len(rows) == len(files)
    check_html_report(report)

    # every original intact, tagged only when verified; every migrated object verified afresh
    for key, data in files.items():
        assert _sha((src / key).read_bytes()) == _sha(data), key
        marker = src / key
        marker = marker.with_name(f".{marker.name}{migrate.MARKER}")
        assert marker.exists() == (key not in (BROKEN, NOT_IMAGE)), key
    _check_stored(service, "media", "migrated/", files, set(files) - {BROKEN, NOT_IMAGE})
    assert not service.store.exists("media", "migrated/" + BROKEN)


@pytest.fixture()
def aws(tmp_path: Path):
    """moto's server on loopback: the archive's bucket, and the job table and queue the workers use at scale."""
    old = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    try:
        with moto_server() as endpoint:
            ddb = boto3.client("dynamodb", endpoint_url=endpoint)
            ddb.create_table(
                TableName="jobs",
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            queue = boto3.client("sqs", endpoint_url=endpoint).create_queue(QueueName="jobs")["QueueUrl"]
            s3 = boto3.client("s3", endpoint_url=endpoint)
            for bucket in ("archive", "small"):
                s3.create_bucket(Bucket=bucket)
            env = {
                **os.environ,
                **ENV,
                "UPSCALER_STORAGE": "s3://",
                "UPSCALER_S3_ENDPOINT_URL": endpoint,
                "UPSCALER_JOB_STORE": "dynamodb:jobs",
                "UPSCALER_DYNAMODB_ENDPOINT_URL": endpoint,
                "UPSCALER_JOB_QUEUE": queue,
                "UPSCALER_SQS_ENDPOINT_URL": endpoint,
            }
            yield env, s3
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_an_s3_prefix_is_tagged_by_default_and_delete_removes_only_verified_originals(aws, tmp_path: Path) -> None:
    env, s3 = aws
    every = archive()  # a third of the photos, and one of each other kind, keeps it quick
    files = {k: v for k, v in every.items() if not k.startswith(("photos/p", "alpha/", "deep/", "graphics/g"))}
    files |= {k: every[k] for k in ("photos/p00.jpg", "photos/p01.jpg", "photos/p02.jpg", "photos/p05.jpg")}
    files |= {k: every[k] for k in ("alpha/a0.png", "deep/d0.png", "graphics/g0.png")}
    for key, data in files.items():  # written by another tool: plain objects, S3's own ETags
        s3.put_object(Bucket="archive", Key="photos-2019/" + key, Body=data)
    args = ["s3://archive/photos-2019/", "s3://small/2019/", "--target", TARGET]
    _cli(env, tmp_path, *args, "--sample", "0")
    assert s3.list_objects_v2(Bucket="small").get("KeyCount", 0) == 0  # the dry run wrote nothing

    done = _cli(env, tmp_path, *args, "--apply", "--workers", "2", "--report", str(tmp_path / "r1"))
    assert "completed, round 1" in done.stdout, done.stdout
    originals = {o["Key"] for o in s3.list_objects_v2(Bucket="archive")["Contents"]}
    assert len(originals) == len(files)  # the default never deletes
    spec_id = migrate.Spec.parse(*args[:2], TARGET).id
    for key in files:
        tags = s3.get_object_tagging(Bucket="archive", Key="photos-2019/" + key)["TagSet"]
        expected = [] if key in (BROKEN, NOT_IMAGE) else [{"Key": migrate.TAG, "Value": spec_id}]
        assert tags == expected, key

    done = _cli(env, tmp_path, *args, "--apply", "--workers", "1", "--on-verified", "delete", "--report",
                str(tmp_path / "r2"))  # fmt: skip
    rep = json.loads((tmp_path / "r2" / "report.json").read_text())["report"]
    assert rep["objects"]["carried_over"] == len(files) - 2  # verified before and unchanged: only the action is new
    assert rep["objects"]["actions"] == {"deleted": len(files) - 2}
    left = {o["Key"] for o in s3.list_objects_v2(Bucket="archive")["Contents"]}
    assert left == {"photos-2019/" + BROKEN, "photos-2019/" + NOT_IMAGE}
    settings = _settings(env)
    _check_stored(_service(settings), "small", "2019/", files, set(files) - {BROKEN, NOT_IMAGE})


def test_the_http_api_checks_sources_scopes_and_answers_json(tmp_path: Path) -> None:
    from api.app import create_app

    grants = [
        {"bucket": "media", "prefix": "in/", "access": ["read", "write"]},
        {"bucket": "media", "prefix": "out/", "access": ["write"]},
    ]
    keys = {"keys": [{"name": "narrow", "sha256": hashlib.sha256(b"narrow-key").hexdigest(), "grants": grants}]}
    settings = Settings.from_env(
        {},
        storage=str(tmp_path / "objects"),
        job_store=str(tmp_path / "j.db"),
        job_queue=str(tmp_path / "q.db"),
        api_keys=json.dumps(keys),
        allowed_buckets=("media",),
        gpu="off",
        ncnn_threads=1,
    )
    folder = tmp_path / "objects" / "media" / "in"
    folder.mkdir(parents=True)
    files = archive()
    for name in ("photos/p00.jpg", "alpha/a0.png", NOT_IMAGE):
        (folder / name.replace("/", "_")).write_bytes(files[name])
    client = create_app(settings).test_client()
    auth = {"Authorization": "Bearer narrow-key"}

    def post(body: dict, headers: dict = auth):
        resp = client.post("/v1/migrations", json=body, headers=headers)
        assert resp.is_json, resp.data
        return resp

    ok = {"source": "s3://media/in/", "dest": "s3://media/out/", "target": TARGET}
    assert post({**ok, "dest": "s3://media/in/small/"}).status_code == 400  # overlapping the source
    in_place = {**ok, "dest": ok["source"]}
    refused = post(in_place)  # in place needs where the originals are kept
    assert refused.status_code == 400 and "originals" in json.dumps(refused.json)
    assert post({**in_place, "originals": "s3://media/in/kept/"}).status_code == 400  # listed as the source
    assert post({**in_place, "originals": "s3://media/out/kept/"}).status_code == 403  # the key may not read there
    assert post({**ok, "source": str(tmp_path)}).status_code == 400  # a folder on the server: refused
    assert post({**ok, "target": "psnr:nope"}).status_code == 400
    assert post({**ok, "apply": "yes"}).status_code == 400
    assert post({**ok, "on_verified": "burn"}).status_code == 400
    too_many = post({**ok, "sample": 10**6})  # the request's declared schema bounds it by the setting
    assert too_many.status_code == 400 and "UPSCALER_MIGRATE_PLAN_SAMPLE" in too_many.json["error"], too_many.json
    assert post({k: v for k, v in ok.items() if k != "target"}).status_code == 400
    assert post({**ok, "dest": "s3://other/x/"}).status_code == 403  # not in the allow-list
    assert post({**ok, "dest": "s3://media/elsewhere/"}).status_code == 403  # the key may not write there
    assert post({**ok, "source": "s3://media/i"}).status_code == 403  # nor read outside in/
    assert post(ok, headers={}).status_code == 401

    plan = post({**ok, "sample": 1})
    assert plan.status_code == 200
    assert plan.json["dry_run"] is True and plan.json["objects"] == 3 and plan.json["sample"]["objects"] == 1
    assert not (tmp_path / "objects" / "media" / "out").exists()

    started = post({**ok, "apply": True, "on_verified": "keep"})
    assert started.status_code == 202 and started.headers["Location"] == f"/v1/migrations/{started.json['id']}"
    assert started.json["objects"] == 3 and started.json["status"] == "running"
    got = client.get(started.headers["Location"], headers=auth)
    assert got.status_code == 200 and got.json["id"] == started.json["id"]
    assert client.get("/v1/migrations/mig-0000000000000000", headers=auth).status_code == 404
    assert client.get("/v1/migrations/" + "m" * 41, headers=auth).status_code == 400


def test_an_s3_inventory_manifest_is_read_with_its_url_encoded_keys() -> None:
    inventory = '"archive","photos/a%20b.jpg","1234"\n"archive","photos/%C3%A9t%C3%A9.png","99"\n'
    assert migrate.read_manifest(inventory) == ("archive", ["photos/a b.jpg", "photos/été.png"])
    assert migrate.read_manifest("bucket,key\narchive,x.jpg\n") == ("archive", ["x.jpg"])
    with pytest.raises(migrate.InvalidInput, match="one bucket"):
        migrate.read_manifest('"a","x"\n"b","y"\n')
    with pytest.raises(migrate.InvalidInput, match="no objects"):
        migrate.read_manifest("bucket,key\n")


class _Changing(migrate.FolderOriginals):
    """A folder whose original is rewritten right after each of its first ``times`` reads (someone else writing)."""

    def __init__(self, root: Path, times: int) -> None:
        super().__init__(root)
        self.times = times

    def read(self, key: str) -> tuple[bytes, str]:
        data, version = super().read(key)
        if self.times > 0:
            self.times -= 1
            path = self.root / key
            path.write_bytes(path.read_bytes())  # same bytes, new mtime: a new version
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9 * (self.times + 1)))
        return data, version


def test_an_original_that_changes_during_its_migration_is_redone_then_reported(tmp_path: Path) -> None:
    files = archive()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "p.jpg").write_bytes(files["photos/p00.jpg"])
    settings = Settings.from_env({}, storage=str(tmp_path / "objects"), gpu="off", ncnn_threads=1)
    service = _service(settings)
    ctx = migrate.Context(service, open_job_store(settings.replace(job_store=str(tmp_path / "j.db"))), settings,
                          migrate.TimedProvider(service.provider))  # fmt: skip
    goal = migrate.Target.parse(TARGET)
    once = migrate.migrate_one(ctx, _Changing(tmp_path / "src", 1), "p.jpg", ("media", "m/"), goal, None)
    assert once["state"] == migrate.VERIFIED  # changed after the first read: redone, and verified the second time
    always = migrate.migrate_one(ctx, _Changing(tmp_path / "src", 5), "p.jpg", ("media", "n/"), goal, None)
    assert always["state"] == migrate.CHANGED and always["reason"] == "changed during migration"
    assert not service.store.exists("media", "n/p.jpg")  # no stored form of a version that is not the original's
    assert (tmp_path / "src" / "p.jpg").read_bytes() == files["photos/p00.jpg"]


def test_a_link_out_of_the_source_folder_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "secret.jpg").write_bytes(archive()["photos/p00.jpg"])
    (tmp_path / "src" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    settings = Settings.from_env({}, storage=str(tmp_path / "objects"), gpu="off", ncnn_threads=1)
    service = _service(settings)
    ctx = migrate.Context(service, open_job_store(settings.replace(job_store=str(tmp_path / "j.db"))), settings,
                          migrate.TimedProvider(service.provider))  # fmt: skip
    originals = migrate.FolderOriginals(tmp_path / "src")
    assert list(originals.keys()) == ["link.jpg"]
    result = migrate.migrate_one(ctx, originals, "link.jpg", ("media", "m/"), migrate.Target.parse(TARGET), None)
    assert (result["state"], result["reason"]) == (migrate.FAILED_OBJ, "refused")
    assert not service.store.exists("media", "m/link.jpg")
