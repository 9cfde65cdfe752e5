"""Prometheus metrics of the HTTP layer (``GET /metrics``).

With several gunicorn worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` (``upscaler serve`` does) so every
worker's samples are aggregated.
"""

from __future__ import annotations

import os

from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REQUESTS = Counter("upscaler_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "upscaler_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IN_FLIGHT = Gauge("upscaler_http_in_flight", "HTTP requests being served", multiprocess_mode="livesum")
STORED_BYTES = Counter("upscaler_stored_bytes_total", "Bytes written to the object store", ["kind"])
UPSCALE_SECONDS = Histogram(
    "upscaler_upscale_seconds",
    "Time spent in the upscale provider",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def exposition() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        payload = generate_latest(registry)
    else:
        payload = generate_latest()
    return Response(payload, mimetype=CONTENT_TYPE_LATEST)
