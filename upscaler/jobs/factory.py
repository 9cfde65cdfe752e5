"""The job store and queue the settings name: SQLite files on one machine, DynamoDB and SQS at scale."""

from __future__ import annotations

from upscaler.config import Settings
from upscaler.jobs.queue import JobQueue, SqliteQueue, SqsQueue
from upscaler.jobs.store import DynamoJobStore, JobStore, SqliteJobStore


def open_job_store(settings: Settings) -> JobStore:
    """``dynamodb:<table>`` -> DynamoDB; anything else is the path of a SQLite file."""
    spec = settings.job_store
    if spec.startswith("dynamodb:"):
        table = spec.removeprefix("dynamodb:")
        if not table:
            raise ValueError("UPSCALER_JOB_STORE=dynamodb:<table-name>")
        return DynamoJobStore(
            table,
            endpoint_url=settings.dynamodb_endpoint_url or None,
            retention_seconds=settings.job_retention_days * 86400,
            timeout=settings.jobs_timeout,
            max_attempts=settings.jobs_max_attempts,
        )
    return SqliteJobStore(spec.removeprefix("sqlite:"))


def open_job_queue(settings: Settings) -> JobQueue:
    """An ``https://`` (or ``http://``, for moto and LocalStack) SQS queue URL -> SQS; anything else is the path of
    a SQLite file."""
    spec = settings.job_queue
    if spec.startswith(("https://", "http://")):
        return SqsQueue(
            spec,
            endpoint_url=settings.sqs_endpoint_url or None,
            dlq_url=settings.job_dead_letter_queue or None,
            timeout=settings.jobs_timeout,
            max_attempts=settings.jobs_max_attempts,
        )
    return SqliteQueue(spec.removeprefix("sqlite:"), max_receives=settings.video_max_receives)
