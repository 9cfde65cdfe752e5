"""Prometheus metrics of the video worker (served by ``upscaler worker --metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOBS = Counter("upscaler_video_jobs_total", "Video job attempts by outcome", ["method", "outcome"])
FRAMES = Counter("upscaler_video_frames_total", "Frames run through the model or downscaler", ["method"])
JOB_SECONDS = Histogram(
    "upscaler_video_job_seconds",
    "Time one video job attempt took",
    ["method"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400),
)
