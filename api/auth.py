"""Authentication and authorization for every route but ``/health`` and ``/ready``.

The key comes as ``Authorization: Bearer <key>`` or ``X-Api-Key: <key>``; a missing or unknown key is 401, a key
whose grants do not cover the bucket/prefix (read or write) is 403. Routes call :func:`authorize` with the bucket
and key they are about to touch, after the bucket name is resolved (default bucket, allow-list).
"""

from __future__ import annotations

import ipaddress
import logging

from flask import Flask, current_app, g, request

from upscaler.auth import KeyRing, Principal
from upscaler.config import Settings
from upscaler.errors import Unauthorized
from upscaler.jobs import Job
from upscaler.sources import parse_s3_url
from upscaler.store.keys import validate_key
from upscaler.videos import default_output_key

log = logging.getLogger("api.auth")
OPEN_ENDPOINTS = frozenset({"legacy.health", "ready_route", "static"})


def _token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("X-Api-Key") or None


def _loopback(addr: str | None) -> bool:
    try:
        return addr is not None and ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def install(app: Flask, settings: Settings) -> KeyRing:
    keyring = KeyRing(settings.api_keys_file or None, settings.api_keys)
    app.extensions["upscaler.keyring"] = keyring
    if not keyring.enabled:
        scope = "from anywhere (UPSCALER_ALLOW_ANONYMOUS)" if settings.allow_anonymous else "from loopback only"
        log.warning(f"no API keys configured: requests are served without authentication, {scope}")

    @app.before_request
    def authenticate() -> None:
        if request.endpoint in OPEN_ENDPOINTS:
            return
        if not keyring.enabled and not settings.allow_anonymous and not _loopback(request.remote_addr):
            raise Unauthorized("this service has no API keys configured and answers on loopback only")
        g.principal = keyring.authenticate(_token())

    return keyring


def principal() -> Principal:
    return g.principal


def authorize(access: str, bucket: str, key: str | None = None) -> None:
    """Raise :class:`~upscaler.errors.Forbidden` unless the caller may ``access`` ``bucket``/``key``."""
    g.principal.check(access, bucket, key)


def allowed(access: str, bucket: str | None, key: str | None) -> str:
    """Resolve ``bucket`` (default, allow-list), check ``key``, authorize; the bucket's name."""
    name = current_app.extensions["upscaler.service"].bucket(bucket)
    authorize(access, name, validate_key(key) if key is not None else None)
    return name


def job_allowed(access: str, job: Job) -> Job:
    """A job is read (status) or written (cancel) by whoever may read or write its source video."""
    bucket, key = parse_s3_url(job.video)
    authorize(access, bucket, key)
    return job


def video_job_allowed(bucket: str | None, key: str | None, output: str | None, method: str) -> str:
    """A video job reads its source and writes its output: the caller needs both. The bucket's name."""
    name = allowed("read", bucket, key)
    if key is not None:
        allowed("write", name, output or default_output_key(method, key))
    return name
