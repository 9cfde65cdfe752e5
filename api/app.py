"""Flask app factory: ``create_app()`` builds the service from the environment's settings.

gunicorn runs ``api.app:create_app()``; tests call ``create_app(settings)`` directly.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask, Response, g, jsonify, request

from api import auth, cancel, errors, legacy, metrics, migrations, v1, videos
from api.openapi import spec
from api.params import operation
from api.responses import install_redactor
from upscaler import logs
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.errors import InvalidInput, Unavailable, UpscalerError
from upscaler.jobs.factory import open_job_queue, open_job_store
from upscaler.providers import open_provider
from upscaler.service import S3CommonUpscaler
from upscaler.store.factory import open_store
from upscaler.videos import VideoJobs

log = logging.getLogger("api")


def build_service(settings: Settings) -> S3CommonUpscaler:
    engine = Engine(settings)
    store = open_store(
        settings.storage,
        endpoint_url=settings.s3_endpoint_url or None,
        timeout=settings.s3_timeout,
        max_attempts=settings.s3_max_attempts,
    )
    return S3CommonUpscaler(store, open_provider(settings, engine), engine, settings)


def build_videos(settings: Settings, service: S3CommonUpscaler) -> VideoJobs:
    return VideoJobs(
        store=service.store,
        jobs=open_job_store(settings),
        queue=open_job_queue(settings),
        provider=service.provider,
        settings=settings,
        bucket=service.bucket,
    )


def create_app(settings: Settings | None = None, *, service: S3CommonUpscaler | None = None) -> Flask:
    settings = settings or Settings.from_env()
    service = service or build_service(settings)
    video_jobs = build_videos(settings, service)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.url_map.merge_slashes = False  # '//' is not redirected to another key: the key is refused (400)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["upscaler.service"] = service
    app.extensions["upscaler.settings"] = settings
    app.extensions["upscaler.videos"] = video_jobs
    errors.register(app)
    install_redactor(app, settings)
    app.register_blueprint(legacy.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(videos.bp)
    app.register_blueprint(migrations.bp)
    _install_hooks(app)
    cancel.install(app)
    auth.install(app, settings)

    ready = threading.Event()
    failure: list[str] = []

    def warm() -> None:
        try:
            service.provider.check_ready()
            ready.set()
        except UpscalerError as exc:
            failure.append(exc.message)
            log.error("provider not ready", extra={"reason": exc.message})

    threading.Thread(target=warm, name="warmup", daemon=True).start()

    def check_dependencies() -> None:
        if not settings.storage.startswith("s3"):
            service.store.ping(settings.default_bucket)
        elif settings.allowed_buckets:  # HeadBucket on each: no account-wide s3:ListAllMyBuckets needed
            for bucket in settings.allowed_buckets:
                service.store.ping(bucket)
        else:
            service.store.ping(None)  # any bucket may be named: ListBuckets proves the credentials work
        video_jobs.jobs.ping()

    checks = _OneAtATime(check_dependencies)

    @app.get("/ready")
    @operation(
        summary="Readiness: model loaded, store and job table reachable", answer="ready", errors=(503,), public=True
    )
    def ready_route() -> Response:
        if not ready.is_set():
            raise Unavailable(failure[-1] if failure else "model still loading", retry_after=2)
        if not checks.wait(settings.ready_timeout):
            raise Unavailable(
                f"the store or the job table did not answer within {settings.ready_timeout:g} s "
                "(UPSCALER_READY_TIMEOUT)",
                retry_after=2,
            )
        return jsonify({"status": "ready", **service.provider.describe(), "storage": settings.storage})

    @app.get("/metrics")
    @operation(summary="Prometheus metrics", answer="text exposition", returns="text/plain")
    def metrics_route() -> Response:
        return metrics.exposition()  # any valid key: Prometheus sends one as a bearer token

    @app.get("/openapi.json")
    @operation(summary="This document", answer="OpenAPI 3.1", returns=dict[str, Any])
    def openapi_route() -> Response:
        if "upscaler.openapi" not in app.extensions:  # the routes are all registered by the first request
            app.extensions["upscaler.openapi"] = spec(app)
        return jsonify(app.extensions["upscaler.openapi"])

    return app


class _OneAtATime:
    """Runs ``check`` in its own thread, one run at a time: callers wait for the run in progress (or start one) up
    to their deadline, so a hung dependency costs one blocked thread, however often the probe asks."""

    def __init__(self, check: Callable[[], None]) -> None:
        self._check = check
        self._lock = threading.Lock()
        self._running: concurrent.futures.Future[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ready-check")

    def wait(self, seconds: float) -> bool:
        """True when a run ended in time (its exception, if any, is raised); False when it is still going."""
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._pool.submit(self._check)
            running = self._running
        try:
            running.result(timeout=seconds)
        except concurrent.futures.TimeoutError:
            return False
        return True


def _check_url(environ: dict[str, Any]) -> None:
    """The path and query, once percent-decoded, must be UTF-8: Werkzeug would turn invalid bytes into U+FFFD, so
    ``/v1/images/%ff`` and ``/v1/images/%fe`` would name the same key. No path has an empty segment (``//``):
    it is refused, not redirected to another key."""
    if "//" in environ.get("PATH_INFO", ""):
        raise InvalidInput("the path has an empty segment ('//'); object keys have none")
    path = environ.get("PATH_INFO", "").encode("latin-1", "replace")  # WSGI: the decoded bytes, one char each
    query = unquote_to_bytes(environ.get("QUERY_STRING", ""))
    try:
        path.decode("utf-8")
        query.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the URL's path or query is not valid UTF-8 once percent-decoded") from None


def _install_hooks(app: Flask) -> None:
    @app.before_request
    def start() -> None:
        _check_url(request.environ)
        rid = request.headers.get("X-Request-Id", "")
        if not (0 < len(rid) <= 128 and rid.isprintable()):
            rid = uuid.uuid4().hex
        g.request_id = rid
        g.started = time.perf_counter()
        g.token = logs.request_id.set(rid)
        metrics.IN_FLIGHT.inc()

    @app.after_request
    def finish(resp: Response) -> Response:
        rid = getattr(g, "request_id", "")
        if rid:
            resp.headers["X-Request-Id"] = rid
        return resp

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        started = getattr(g, "started", None)
        if started is None:
            return
        metrics.IN_FLIGHT.dec()
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - started
        status = getattr(g, "status", None)
        metrics.LATENCY.labels(request.method, route).observe(elapsed)
        log.info(
            "request",
            extra={
                "method": request.method,
                "route": route,
                "path": request.path,
                "status": status,
                "seconds": round(elapsed, 4),
                "bytes_in": request.content_length or 0,
            },
        )
        token = getattr(g, "token", None)
        if token is not None:
            logs.request_id.reset(token)

    @app.after_request
    def allow(resp: Response) -> Response:
        # {key} may hold slashes, so one path can match two routes; OPTIONS lists the methods of the route it
        # matched (the most specific), not the union of both that Werkzeug would give.
        if request.method == "OPTIONS" and request.url_rule is not None and resp.status_code < 300:
            same = [r for r in app.url_map.iter_rules() if r.rule == request.url_rule.rule]
            resp.headers["Allow"] = ", ".join(sorted(set().union(*(r.methods or () for r in same))))
        return resp

    @app.after_request
    def count(resp: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUESTS.labels(request.method, route, str(resp.status_code)).inc()
        g.status = resp.status_code
        return resp
