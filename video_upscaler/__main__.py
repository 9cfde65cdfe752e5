"""``upscaler worker`` (also ``python -m video_upscaler``): run video jobs from the queue until stopped.

The queue, job store, object store and provider come from the same UPSCALER_* settings as the API, so a worker
beside ``upscaler serve`` (the embedded default: SQLite files under ./data) or on its own node (SQS, DynamoDB, S3,
SageMaker) needs no other configuration. SIGTERM or SIGINT stops it cleanly: the job in progress saves the
segment it is on, goes back to the queue as Submitted, and the process exits 0; another worker (or this one,
restarted) continues from that checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from upscaler import logs
from upscaler.config import Settings

log = logging.getLogger("video_upscaler")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="upscaler worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--once", action="store_true", help="handle one job, then exit (for tests and cron)")
    parser.add_argument(
        "--wait-seconds", type=float, default=20.0, help="long-poll wait per receive (default 20, SQS's maximum)"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (default: off)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    logs.configure(os.environ.get("UPSCALER_LOG_LEVEL", "INFO"))
    settings = Settings.from_env()
    from video_upscaler.worker import VideoWorker

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    worker = VideoWorker.from_settings(settings)
    log.info(
        "video worker started", extra={"queue": settings.job_queue, "jobs": settings.job_store, "pid": os.getpid()}
    )
    worker.run(stop, wait_seconds=args.wait_seconds, once=args.once)
    log.info("video worker stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
