"""gunicorn settings for the API (``gunicorn -c python:api.gunicorn_conf 'api.app:create_app()'``).

One process holds one copy of each model, so the default is one worker; each upscale already uses every core
through ncnn. Its threads are many and cheap (an idle connection holds none, see :mod:`api.worker`); the heavy work
is bounded apart, by ``UPSCALER_MAX_INFLIGHT`` slots and ``UPSCALER_MAX_QUEUED`` waiters (429 beyond). The timeout
covers the slowest model on a large image. Environment overrides: ``GUNICORN_WORKERS``, ``GUNICORN_THREADS``,
``GUNICORN_TIMEOUT``, ``GUNICORN_WORKER_CONNECTIONS``; the connection timeouts are ``UPSCALER_*`` settings.
"""

from __future__ import annotations

import os

from upscaler.config import Settings

_settings = Settings.from_env()
worker_class = "api.worker.ApiWorker"
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = _settings.idle_timeout
accesslog = None  # the app logs each request as JSON
errorlog = "-"
limit_request_line = 8190
control_socket_disable = True  # gunicorn's admin socket would be written under $HOME; nothing here uses it
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(server: object) -> None:
    from upscaler import logs

    logs.configure(os.environ.get("UPSCALER_LOG_LEVEL", "INFO"))


def child_exit(server: object, worker: object) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
