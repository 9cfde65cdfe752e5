"""Video jobs: records and states, job stores (SQLite, DynamoDB) and queues (SQLite, SQS)."""

from __future__ import annotations

from upscaler.jobs.model import CANCELLED, COMPLETED, FAILED, PROCESSING, SUBMITTED, Job
from upscaler.jobs.queue import JobQueue, Message, SqliteQueue, SqsQueue
from upscaler.jobs.store import DynamoJobStore, JobStore, SqliteJobStore

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "PROCESSING",
    "SUBMITTED",
    "DynamoJobStore",
    "Job",
    "JobQueue",
    "JobStore",
    "Message",
    "SqliteJobStore",
    "SqliteQueue",
    "SqsQueue",
    "submit",
]


def submit(store: JobStore, queue: JobQueue, job: Job) -> Job:
    """Write the job row, then the message, so a message never names a job that does not exist. A crash between
    the two leaves a Submitted row without a message; the caller got no job id, so nothing acknowledged is lost."""
    store.create(job)
    queue.send(job.message())
    return job
