"""Job queues: SQS at scale, SQLite on one machine. Delivery is at least once; a message a worker holds is
invisible to others until its visibility times out, and the worker extends it (heartbeat) while a long job runs.
A message received more than ``max_receives`` times goes to the dead-letter queue instead of looping forever.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upscaler.aws import LazyClient, deadline_config
from upscaler.errors import Unavailable
from upscaler.jobs.sqlite import SqliteFile

#: SQS's longest receive wait (``WaitTimeSeconds``), in seconds.
MAX_LONG_POLL = 20


@dataclass
class Message:
    id: str
    body: dict[str, Any]
    receipt: str
    receive_count: int


class JobQueue(ABC):
    @abstractmethod
    def send(self, body: dict[str, Any]) -> str:
        """Enqueue ``body``; returns the message id."""

    @abstractmethod
    def receive(self, wait_seconds: float = 20.0, visibility: int = 300) -> Message | None:
        """One message (hidden from others for ``visibility`` s), or None after ``wait_seconds``."""

    @abstractmethod
    def delete(self, message: Message) -> None:
        """Acknowledge: the job is finished (or finally failed)."""

    @abstractmethod
    def extend(self, message: Message, visibility: int) -> None:
        """Keep the message hidden for ``visibility`` more seconds (heartbeat of a long job)."""

    @abstractmethod
    def release(self, message: Message) -> None:
        """Give the message back now (a worker stopping before it finished)."""

    @abstractmethod
    def bury(self, message: Message) -> None:
        """Move the message to the dead-letter queue now (a job that can never succeed)."""

    @abstractmethod
    def dead_letters(self) -> list[dict[str, Any]]:
        """Bodies in the dead-letter queue (for operators and tests)."""


class SqliteQueue(JobQueue):
    """A durable queue in one SQLite file, safe across threads and processes (the embedded default)."""

    def __init__(self, path: str | Path, *, max_receives: int = 3, poll_interval: float = 0.2) -> None:
        self.path = Path(path)
        self._db = SqliteFile(path)
        self.max_receives = max_receives
        self.poll_interval = poll_interval
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, body TEXT NOT NULL, visible_at REAL NOT NULL,"
            " receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, dead INTEGER NOT NULL DEFAULT 0,"
            " sent_at REAL NOT NULL)"
        )

    def _conn(self) -> sqlite3.Connection:
        return self._db.conn()

    def send(self, body: dict[str, Any]) -> str:
        mid = uuid.uuid4().hex
        now = time.time()
        self._conn().execute(
            "INSERT INTO messages (id, body, visible_at, sent_at) VALUES (?, ?, ?, ?)",
            (mid, json.dumps(body), now, now),
        )
        return mid

    def _take(self, visibility: int) -> Message | None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            while True:
                row = conn.execute(
                    "SELECT id, body, receive_count FROM messages WHERE dead = 0 AND visible_at <= ? "
                    "ORDER BY sent_at LIMIT 1",
                    (now,),
                ).fetchone()
                if row is None:
                    conn.execute("COMMIT")
                    return None
                mid, body, count = row
                if count >= self.max_receives:  # redrive: this message failed too often
                    conn.execute("UPDATE messages SET dead = 1 WHERE id = ?", (mid,))
                    continue
                receipt = uuid.uuid4().hex
                conn.execute(
                    "UPDATE messages SET receive_count = receive_count + 1, visible_at = ?, receipt = ? WHERE id = ?",
                    (now + visibility, receipt, mid),
                )
                conn.execute("COMMIT")
                return Message(mid, json.loads(body), receipt, count + 1)
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def receive(self, wait_seconds: float = 20.0, visibility: int = 300) -> Message | None:
        deadline = time.monotonic() + wait_seconds
        while True:
            message = self._take(visibility)
            if message is not None or time.monotonic() >= deadline:
                return message
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))

    def delete(self, message: Message) -> None:
        self._conn().execute("DELETE FROM messages WHERE id = ? AND receipt = ?", (message.id, message.receipt))

    def extend(self, message: Message, visibility: int) -> None:
        cur = self._conn().execute(
            "UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?",
            (time.time() + visibility, message.id, message.receipt),
        )
        if cur.rowcount == 0:
            raise Unavailable("message lease lost (it was redelivered to another worker)")

    def release(self, message: Message) -> None:
        self._conn().execute(
            "UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?",
            (time.time(), message.id, message.receipt),
        )

    def bury(self, message: Message) -> None:
        self._conn().execute("UPDATE messages SET dead = 1 WHERE id = ? AND receipt = ?", (message.id, message.receipt))

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT body FROM messages WHERE dead = 1 ORDER BY sent_at").fetchall()
        return [json.loads(r[0]) for r in rows]


class SqsQueue(JobQueue):
    """Amazon SQS: long polling, visibility heartbeats, and the queue's own RedrivePolicy for the DLQ."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        dlq_url: str | None = None,
        client: Any = None,
        timeout: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        """``timeout``: seconds one call may take in all, its ``max_attempts`` attempts included; a receive may
        also wait its long poll (:func:`upscaler.aws.deadline_config`)."""
        self.url = url
        self.dlq_url = dlq_url
        self.endpoint_url = endpoint_url
        self._clients = LazyClient(
            "sqs", endpoint_url=endpoint_url, client=client, config=deadline_config(timeout, max_attempts)
        )
        # long polls hold the answer up to 20 s on purpose: their client reads that much longer
        self._polling = LazyClient(
            "sqs",
            endpoint_url=endpoint_url,
            client=client,
            config=deadline_config(timeout, max_attempts, wait=MAX_LONG_POLL),
        )

    @property
    def client(self) -> Any:
        return self._clients.get()

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            # a timeout (a BotoCoreError) carries ``response = None``
            code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", type(exc).__name__)
            raise Unavailable(f"SQS failed: {code}", retry_after=1) from None

    def send(self, body: dict[str, Any]) -> str:
        return self._call(self.client.send_message, QueueUrl=self.url, MessageBody=json.dumps(body))["MessageId"]

    def receive(self, wait_seconds: float = 20.0, visibility: int = 300) -> Message | None:
        resp = self._call(
            self._polling.get().receive_message,
            QueueUrl=self.url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=int(min(MAX_LONG_POLL, max(0, wait_seconds))),
            VisibilityTimeout=visibility,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages = resp.get("Messages", [])
        if not messages:
            return None
        raw = messages[0]
        try:
            body = json.loads(raw["Body"])
        except ValueError:
            body = {"_unparseable": raw["Body"][:200]}
        count = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return Message(raw["MessageId"], body, raw["ReceiptHandle"], count)

    def delete(self, message: Message) -> None:
        self._call(self.client.delete_message, QueueUrl=self.url, ReceiptHandle=message.receipt)

    def extend(self, message: Message, visibility: int) -> None:
        self._call(
            self.client.change_message_visibility,
            QueueUrl=self.url,
            ReceiptHandle=message.receipt,
            VisibilityTimeout=min(visibility, 43_200),
        )

    def release(self, message: Message) -> None:
        self._call(
            self.client.change_message_visibility, QueueUrl=self.url, ReceiptHandle=message.receipt, VisibilityTimeout=0
        )

    def bury(self, message: Message) -> None:
        if self.dlq_url:
            self._call(self.client.send_message, QueueUrl=self.dlq_url, MessageBody=json.dumps(message.body))
        self.delete(message)

    def dead_letters(self) -> list[dict[str, Any]]:
        if not self.dlq_url:
            return []
        resp = self._call(
            self.client.receive_message,
            QueueUrl=self.dlq_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=0,
        )
        return [json.loads(m["Body"]) for m in resp.get("Messages", [])]
