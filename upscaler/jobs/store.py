"""Job stores: SQLite for one machine (durable across restarts), DynamoDB at scale.

Every state change is a conditional write (the row changes only if it is still in a state the change is allowed
from), so two workers handling the same message cannot both finish a job, and a cancelled job stays cancelled.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from upscaler.aws import LazyClient, deadline_config
from upscaler.errors import Conflict, NotFound, Unavailable
from upscaler.jobs.model import FINAL, TRANSITIONS, Job
from upscaler.jobs.sqlite import SqliteFile

log = logging.getLogger(__name__)


class JobStore(ABC):
    @abstractmethod
    def create(self, job: Job) -> Job:
        """Insert a new job; :class:`Conflict` if its id exists."""

    @abstractmethod
    def get(self, job_id: str) -> Job:
        """The job; :class:`NotFound` if there is none."""

    @abstractmethod
    def transition(self, job_id: str, new_status: str, **fields: Any) -> Job:
        """Move the job to ``new_status`` (and set ``fields``) if the move is allowed from its current state,
        atomically; :class:`Conflict` otherwise."""

    @abstractmethod
    def update(self, job_id: str, **fields: Any) -> None:
        """Set progress fields of a job that is not finished (ignored once it is)."""

    @abstractmethod
    def modify(self, job_id: str, change: Callable[[Job], dict[str, Any] | None]) -> Job | None:
        """A conditional read-modify-write of progress fields: ``change`` sees the job as it is and returns the
        fields to set (None: nothing), which are written only if the row is still exactly what ``change`` saw
        (otherwise it is asked again, on the new row). The job as written, or None when nothing was. ``change`` may
        raise to abort; it may run more than once, so it must only compute. What two workers decide from the same
        row cannot both be written: per-object claims of a migration chunk rest on this."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`Unavailable` when the store cannot be used."""

    @abstractmethod
    def claim(self, key: str, fingerprint: str, job_id: str) -> tuple[str, str]:
        """Record that the idempotency ``key`` names ``job_id``, submitted by a request whose options hash to
        ``fingerprint``, unless the key is recorded already (atomically: one of two racing claims wins). Returns
        what the key names now: (job id, fingerprint)."""


class SqliteJobStore(JobStore):
    """One SQLite file (WAL mode), shared by the API and local workers, even across processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = SqliteFile(path)
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
                "body TEXT NOT NULL, updated_at REAL NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, job_id TEXT NOT NULL, "
                "fingerprint TEXT NOT NULL, created_at REAL NOT NULL)"
            )

    def _conn(self) -> sqlite3.Connection:
        return self._db.conn()

    def create(self, job: Job) -> Job:
        try:
            self._conn().execute(
                "INSERT INTO jobs (id, status, body, updated_at) VALUES (?, ?, ?, ?)",
                (job.id, job.status, json.dumps(job.to_dict()), time.time()),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"job {job.id} exists") from None
        return job

    def get(self, job_id: str) -> Job:
        row = self._conn().execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return Job.from_dict(json.loads(row[0]))

    def transition(self, job_id: str, new_status: str, **fields: Any) -> Job:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            job = self.get(job_id)
            if new_status not in TRANSITIONS[job.status]:
                raise Conflict(f"job {job_id} is {job.status}; it cannot become {new_status}")
            job = Job.from_dict({**job.merged(fields), "status": new_status, "updated_at": time.time()})
            conn.execute(
                "UPDATE jobs SET status = ?, body = ?, updated_at = ? WHERE id = ?",
                (job.status, json.dumps(job.to_dict()), job.updated_at, job_id),
            )
            conn.execute("COMMIT")
            return job
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def update(self, job_id: str, **fields: Any) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            job = self.get(job_id)
            if job.status not in FINAL:
                data = {**job.merged(fields), "updated_at": time.time()}
                conn.execute(
                    "UPDATE jobs SET body = ?, updated_at = ? WHERE id = ?",
                    (json.dumps(data), data["updated_at"], job_id),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def modify(self, job_id: str, change: Callable[[Job], dict[str, Any] | None]) -> Job | None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # the row cannot change between the read and the write
        try:
            job = self.get(job_id)
            fields = change(job)
            new = None
            if fields is not None:
                new = Job.from_dict({**job.merged(fields), "status": job.status, "updated_at": time.time()})
                conn.execute(
                    "UPDATE jobs SET body = ?, updated_at = ? WHERE id = ?",
                    (json.dumps(new.to_dict()), new.updated_at, job_id),
                )
            conn.execute("COMMIT")
            return new
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def claim(self, key: str, fingerprint: str, job_id: str) -> tuple[str, str]:
        conn = self._conn()
        conn.execute(
            "INSERT OR IGNORE INTO idempotency (key, job_id, fingerprint, created_at) VALUES (?, ?, ?, ?)",
            (key, job_id, fingerprint, time.time()),
        )
        return conn.execute("SELECT job_id, fingerprint FROM idempotency WHERE key = ?", (key,)).fetchone()

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise Unavailable(f"job store {self.path} unusable: {exc}") from None


class DynamoJobStore(JobStore):
    """A DynamoDB table keyed by ``id`` (string). Attributes mirror :class:`Job`; transitions use
    ``ConditionExpression`` on ``status``. A finished job's row carries ``expires_at`` (epoch seconds,
    ``retention_seconds`` after it finished; the table's TTL attribute) so DynamoDB deletes it in time."""

    #: The table's TTL attribute (cdk_infra enables TTL on it).
    TTL_ATTRIBUTE = "expires_at"

    def __init__(
        self,
        table: str,
        *,
        endpoint_url: str | None = None,
        client: Any = None,
        retention_seconds: int = 30 * 86400,
        timeout: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        """``timeout``: seconds one call may take in all, its ``max_attempts`` attempts included (a hung endpoint
        gives :class:`Unavailable` in about that time, see :func:`upscaler.aws.deadline_config`)."""
        self.table = table
        self.endpoint_url = endpoint_url
        self.retention_seconds = retention_seconds
        self._clients = LazyClient(
            "dynamodb", endpoint_url=endpoint_url, client=client, config=deadline_config(timeout, max_attempts)
        )

    @property
    def client(self) -> Any:
        return self._clients.get()

    def _item(self, job: Job) -> dict[str, Any]:
        item = {"id": {"S": job.id}, "status": {"S": job.status}, "body": {"S": json.dumps(job.to_dict())}}
        if job.status in FINAL and self.retention_seconds > 0:
            item[self.TTL_ATTRIBUTE] = {"N": str(int(job.updated_at + self.retention_seconds))}
        return item

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ConditionalCheckFailedException":
                raise Conflict("job changed state meanwhile") from None
            if code == "ResourceNotFoundException":
                raise Unavailable(f"DynamoDB table {self.table!r} not found") from None
            raise Unavailable(f"DynamoDB failed: {code}", retry_after=1) from None
        except BotoCoreError as exc:
            raise Unavailable(f"DynamoDB failed: {type(exc).__name__}", retry_after=1) from None

    def create(self, job: Job) -> Job:
        try:
            self._call(
                self.client.put_item,
                TableName=self.table,
                Item=self._item(job),
                ConditionExpression="attribute_not_exists(id)",
            )
        except Conflict:
            raise Conflict(f"job {job.id} exists") from None
        return job

    def get(self, job_id: str) -> Job:
        resp = self._call(self.client.get_item, TableName=self.table, Key={"id": {"S": job_id}}, ConsistentRead=True)
        if "body" not in resp.get("Item", {}):  # none, or an idempotency key's row (see claim)
            raise NotFound(f"no job {job_id!r}")
        return Job.from_dict(json.loads(resp["Item"]["body"]["S"]))

    def transition(self, job_id: str, new_status: str, **fields: Any) -> Job:
        for _ in range(8):  # optimistic concurrency: retry when only progress fields changed under us
            job = self.get(job_id)
            if new_status not in TRANSITIONS[job.status]:
                raise Conflict(f"job {job_id} is {job.status}; it cannot become {new_status}")
            new = Job.from_dict({**job.merged(fields), "status": new_status, "updated_at": time.time()})
            if self._replace(job, new):
                return new
        raise Unavailable(f"job {job_id} keeps changing; transition to {new_status} not applied", retry_after=1)

    def update(self, job_id: str, **fields: Any) -> None:
        for attempt in range(32):  # the heartbeat and the progress reports of one job write concurrently: none is lost
            job = self.get(job_id)
            if job.status in FINAL:
                return  # finished or cancelled: progress no longer matters
            if self._replace(job, Job.from_dict({**job.merged(fields), "updated_at": time.time()})):
                return
            # the other writer won this round; a short random pause keeps two writers from colliding in lockstep
            # (8 bare retries lost one of 15 heartbeats against 15 progress reports on a loaded CI machine)
            time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        log.warning("job progress not recorded: the row kept changing", extra={"job": job_id})

    def modify(self, job_id: str, change: Callable[[Job], dict[str, Any] | None]) -> Job | None:
        for _ in range(16):  # the heartbeat writes the same row every few seconds: try again on the new row
            job = self.get(job_id)
            fields = change(job)
            if fields is None:
                return None
            new = Job.from_dict({**job.merged(fields), "status": job.status, "updated_at": time.time()})
            if self._replace(job, new):  # put_item conditioned on the exact body change() saw
                return new
        raise Unavailable(f"job {job_id} keeps changing; its update was not applied", retry_after=1)

    def _replace(self, old: Job, new: Job) -> bool:
        """Write ``new`` if the row is still ``old`` exactly (optimistic concurrency); False if it changed."""
        try:
            self._call(
                self.client.put_item,
                TableName=self.table,
                Item=self._item(new),
                ConditionExpression="#s = :s AND #b = :b",
                ExpressionAttributeNames={"#s": "status", "#b": "body"},
                ExpressionAttributeValues={":s": {"S": old.status}, ":b": {"S": json.dumps(old.to_dict())}},
            )
        except Conflict:
            return False
        return True

    def claim(self, key: str, fingerprint: str, job_id: str) -> tuple[str, str]:
        """The key is a row of the jobs table (``id`` = ``idempotency:<key>``, no ``body``), kept as long as a
        finished job (its ``expires_at``)."""
        row = {"id": {"S": f"idempotency:{key}"}}
        item = {**row, "job_id": {"S": job_id}, "fingerprint": {"S": fingerprint}}
        if self.retention_seconds > 0:
            item[self.TTL_ATTRIBUTE] = {"N": str(int(time.time() + self.retention_seconds))}
        try:
            self._call(
                self.client.put_item, TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(id)"
            )
            return job_id, fingerprint
        except Conflict:
            got = self._call(self.client.get_item, TableName=self.table, Key=row, ConsistentRead=True)["Item"]
            return got["job_id"]["S"], got["fingerprint"]["S"]

    def ping(self) -> None:
        self._call(self.client.describe_table, TableName=self.table)
