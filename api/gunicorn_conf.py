"""gunicorn settings for the API (``gunicorn -c python:api.gunicorn_conf 'api.app:create_app()'``).

One process holds one copy of each model, so the default is one worker with threads; each upscale already uses
every core through ncnn. The timeout covers the slowest model on a large image. Environment overrides:
``GUNICORN_WORKERS``, ``GUNICORN_THREADS``, ``GUNICORN_TIMEOUT``.
"""

from __future__ import annotations

import os

worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
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
