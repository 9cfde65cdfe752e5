"""Job stores and queues on both backends: SQLite (the embedded default) and SQS + DynamoDB on moto's server."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import boto3
import pytest

from tests.servers import AWS_TEST_ENV, moto_server
from upscaler.errors import Conflict, InvalidInput, NotFound
from upscaler.jobs import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PROCESSING,
    SUBMITTED,
    DynamoJobStore,
    Job,
    SqliteJobStore,
    SqliteQueue,
    SqsQueue,
    submit,
)


@pytest.fixture(scope="module")
def moto_endpoint():
    old = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    with moto_server() as endpoint:
        yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(params=["sqlite", "aws"])
def backend(request, tmp_path: Path):
    """(job store, queue) pairs; the AWS queue has a DLQ with maxReceiveCount 2."""
    if request.param == "sqlite":
        yield (
            SqliteJobStore(tmp_path / "jobs.db"),
            SqliteQueue(tmp_path / "queue.db", max_receives=2, poll_interval=0.05),
        )
        return
    endpoint = request.getfixturevalue("moto_endpoint")
    name = f"t{time.monotonic_ns()}"
    ddb = boto3.client("dynamodb", endpoint_url=endpoint)
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})},
    )["QueueUrl"]
    yield DynamoJobStore(name, endpoint_url=endpoint), SqsQueue(url, endpoint_url=endpoint, dlq_url=dlq)


def test_submit_writes_row_then_message(backend) -> None:
    store, queue = backend
    job = submit(store, queue, Job(method="upscale", video="s3://b/v.mp4", endpoint="ep", max_workers=3))
    assert store.get(job.id).status == SUBMITTED
    msg = queue.receive(wait_seconds=2, visibility=30)
    assert msg is not None and msg.body["id"] == job.id and msg.body["method"] == "upscale"
    assert set(msg.body) >= {"id", "video", "endpoint", "min_size", "max_size", "max_workers", "method"}
    queue.delete(msg)
    assert queue.receive(wait_seconds=0.5, visibility=30) is None


def test_state_machine(backend) -> None:
    store, _ = backend
    job = store.create(Job(method="downscale", video="s3://b/v.mp4"))
    with pytest.raises(Conflict):
        store.create(job)
    store.transition(job.id, PROCESSING, started_at=time.time(), attempts=1)
    store.update(job.id, frames_done=10, frames_total=100)
    got = store.get(job.id)
    assert got.status == PROCESSING and got.progress == pytest.approx(0.1)
    done = store.transition(job.id, COMPLETED, output="s3://b/v-downscaled.mp4", finished_at=time.time())
    assert done.legacy_status()["output"] == "s3://b/v-downscaled.mp4"
    for status in (PROCESSING, FAILED, CANCELLED, SUBMITTED):
        with pytest.raises(Conflict):
            store.transition(job.id, status)
    store.update(job.id, frames_done=1)  # ignored once finished
    assert store.get(job.id).frames_done == 10
    with pytest.raises(NotFound):
        store.get("nope")


@pytest.mark.parametrize("backend", ["aws"], indirect=True)  # TTL is DynamoDB's: SQLite rows stay until deleted
def test_a_finished_dynamodb_row_expires_after_the_retention(backend) -> None:
    store, _ = backend
    job = store.create(Job(method="upscale", video="s3://b/v.mp4"))
    raw = store.client.get_item(TableName=store.table, Key={"id": {"S": job.id}})["Item"]
    assert "expires_at" not in raw  # a job in flight never expires
    store.transition(job.id, PROCESSING)
    done = store.transition(job.id, COMPLETED, output="s3://b/v-upscaled.mp4")
    raw = store.client.get_item(TableName=store.table, Key={"id": {"S": job.id}})["Item"]
    assert int(raw["expires_at"]["N"]) == int(done.updated_at + 30 * 86400)


def test_failed_job_reports_its_reason(backend) -> None:
    store, _ = backend
    job = store.create(Job(method="upscale", video="s3://b/v.mp4"))
    store.transition(job.id, PROCESSING)
    store.transition(job.id, FAILED, error="video has no frames")
    status = store.get(job.id).legacy_status()
    assert status["status"] == "Failed" and status["error"] == "video has no frames" and status["output"] is None


def test_only_one_of_two_racing_workers_finishes(backend) -> None:
    store, _ = backend
    job = store.create(Job(method="upscale", video="s3://b/v.mp4"))
    store.transition(job.id, PROCESSING)
    results = []

    def finish(tag: str, status: str) -> None:
        try:
            store.transition(job.id, status, error=tag if status == FAILED else None)
            results.append(tag)
        except Conflict:
            results.append("conflict")

    threads = [
        threading.Thread(target=finish, args=("a", COMPLETED)),
        threading.Thread(target=finish, args=("b", CANCELLED)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results)[0] in ("a", "b") and results.count("conflict") == 1
    assert store.get(job.id).status in (COMPLETED, CANCELLED)


def test_visibility_heartbeat_and_redelivery(backend) -> None:
    _, queue = backend
    queue.send({"id": "j1"})
    msg = queue.receive(wait_seconds=2, visibility=1)
    assert msg is not None and msg.receive_count == 1
    queue.extend(msg, 3)  # heartbeat: stays hidden past the first second
    time.sleep(1.3)
    assert queue.receive(wait_seconds=0, visibility=1) is None
    queue.release(msg)  # a stopping worker gives it back at once
    again = queue.receive(wait_seconds=2, visibility=30)
    assert again is not None and again.body == {"id": "j1"} and again.receive_count == 2
    queue.delete(again)


def test_poison_message_ends_in_the_dead_letter_queue(backend) -> None:
    _, queue = backend
    queue.send({"id": "poison"})
    for _ in range(2):  # maxReceiveCount = 2: two workers crash on it
        msg = queue.receive(wait_seconds=2, visibility=30)
        assert msg is not None
        queue.release(msg)
    assert queue.receive(wait_seconds=0.5, visibility=30) is None
    assert {"id": "poison"} in queue.dead_letters()


def test_sqlite_queue_survives_a_restart(tmp_path: Path) -> None:
    SqliteQueue(tmp_path / "q.db").send({"id": "durable"})
    msg = SqliteQueue(tmp_path / "q.db").receive(wait_seconds=1)
    assert msg is not None and msg.body == {"id": "durable"}


def test_job_validation() -> None:
    with pytest.raises(InvalidInput):
        Job(method="sideways", video="s3://b/v.mp4")
    assert Job.from_dict({**Job(method="upscale", video="x").to_dict(), "future": 1}).method == "upscale"


def test_bury_moves_a_message_to_the_dead_letters_now(backend) -> None:
    _, queue = backend
    queue.send({"id": "hopeless"})
    msg = queue.receive(wait_seconds=2, visibility=30)
    assert msg is not None
    queue.bury(msg)
    assert queue.receive(wait_seconds=0.5, visibility=30) is None
    assert {"id": "hopeless"} in queue.dead_letters()


def test_frames_done_never_goes_backwards(backend) -> None:
    """A run that died at frame 330 is resumed from its checkpoint at 250: its reports (from 0 while it decodes
    past the checkpoint, then 251, ...) and its give-back leave the mark at 330 until it passes it."""
    store, queue = backend
    job = submit(store, queue, Job(method="upscale", video="s3://b/v.mp4"))
    store.transition(job.id, PROCESSING, frames_total=500)
    store.update(job.id, frames_done=330)
    store.transition(job.id, PROCESSING, attempts=2)  # the second delivery takes over
    for done in (25, 250, 251):
        store.update(job.id, frames_done=done, resumed_frames=250)
        assert store.get(job.id).frames_done == 330
    store.transition(job.id, SUBMITTED, frames_done=300)  # given back (SIGTERM) before the mark
    assert store.get(job.id).frames_done == 330 and store.get(job.id).resumed_frames == 250
    store.transition(job.id, PROCESSING)
    store.update(job.id, frames_done=331)
    assert store.get(job.id).frames_done == 331


def test_concurrent_updates_of_one_job_lose_nothing(backend) -> None:
    """The heartbeat and the progress reports write one row from two threads: each field keeps its last value."""
    store, queue = backend
    job = submit(store, queue, Job(method="upscale", video="s3://b/v.mp4"))
    store.transition(job.id, PROCESSING)

    def beats() -> None:
        for i in range(15):
            store.update(job.id, heartbeat_at=1000.0 + i)

    thread = threading.Thread(target=beats)
    thread.start()
    for done in range(1, 16):
        store.update(job.id, frames_done=done)
    thread.join()
    final = store.get(job.id)
    assert final.frames_done == 15 and final.heartbeat_at == 1014.0


def test_a_processing_job_whose_worker_stopped_heartbeating_reads_submitted() -> None:
    job = Job(method="upscale", video="s3://b/v.mp4", status=PROCESSING, attempts=1, started_at=100.0)
    assert job.as_seen(120.0, 30.0).status == PROCESSING
    beating = Job.from_dict({**job.to_dict(), "heartbeat_at": 190.0})
    assert beating.as_seen(200.0, 30.0) is beating
    lost = beating.as_seen(260.0, 30.0)
    assert lost.status == SUBMITTED and "stopped 70 s ago (attempt 1)" in str(lost.error)
    assert Job(method="upscale", video="s3://b/v.mp4").as_seen(1e12, 30.0).status == SUBMITTED


def test_an_idempotency_key_is_claimed_once(backend) -> None:
    """Racing claims of one key: one wins, every claim returns the winner (job id and request fingerprint); the key's
    row is not readable as a job."""
    store, _ = backend
    results: list[tuple[str, str]] = []

    def claim(i: int) -> None:
        results.append(tuple(store.claim("k1", f"fp{i}", f"job{i}")))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and results[0][0] == "job" + results[0][1].removeprefix("fp")
    assert tuple(store.claim("k2", "fp", "other")) == ("other", "fp")
    with pytest.raises(NotFound):
        store.get("idempotency:k1")
