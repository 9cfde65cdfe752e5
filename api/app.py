"""Flask app factory: ``create_app()`` builds the service from the environment's settings.

gunicorn runs ``api.app:create_app()``; tests call ``create_app(settings)`` directly.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from flask import Flask, Response, g, jsonify, request

from api import auth, errors, legacy, metrics, v1, videos
from api.openapi import spec
from upscaler import logs
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.errors import Unavailable, UpscalerError
from upscaler.jobs.factory import open_job_queue, open_job_store
from upscaler.providers import open_provider
from upscaler.service import S3CommonUpscaler
from upscaler.store.factory import open_store
from upscaler.videos import VideoJobs

log = logging.getLogger("api")


def build_service(settings: Settings) -> S3CommonUpscaler:
    engine = Engine(settings)
    store = open_store(settings.storage, endpoint_url=settings.s3_endpoint_url or None)
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
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["upscaler.service"] = service
    app.extensions["upscaler.settings"] = settings
    app.extensions["upscaler.videos"] = video_jobs
    errors.register(app)
    app.register_blueprint(legacy.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(videos.bp)
    _install_hooks(app)
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

    @app.get("/ready")
    def ready_route() -> Response:
        if not ready.is_set():
            raise Unavailable(failure[-1] if failure else "model still loading", retry_after=2)
        if not settings.storage.startswith("s3"):
            service.store.ping(settings.default_bucket)
        elif settings.allowed_buckets:  # HeadBucket on each: no account-wide s3:ListAllMyBuckets needed
            for bucket in settings.allowed_buckets:
                service.store.ping(bucket)
        else:
            service.store.ping(None)  # any bucket may be named: ListBuckets proves the credentials work
        video_jobs.jobs.ping()
        return jsonify({"status": "ready", **service.provider.describe(), "storage": settings.storage})

    @app.get("/metrics")
    def metrics_route() -> Response:
        return metrics.exposition()  # any valid key: Prometheus sends one as a bearer token

    @app.get("/openapi.json")
    def openapi_route() -> Response:
        return jsonify(spec())

    return app


def _install_hooks(app: Flask) -> None:
    @app.before_request
    def start() -> None:
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
