"""Response shapes. Legacy routes answer ``[{"data": ...}, code]`` / ``[{"error": ...}, code]`` (the original's
body) with the matching HTTP status; /v1 answers plain JSON objects."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from flask import Flask, Response, current_app, jsonify, request

from upscaler.config import Settings

LEGACY_BLUEPRINT = "legacy"


def legacy(data: Any, status: int = 200, **headers: str) -> Response:
    resp = jsonify([{"data": data}, status])
    resp.status_code = status
    resp.headers.update(headers)
    return resp


def location(prefix: str, key: str, bucket: str | None = None) -> str:
    """A ``Location`` for ``key`` (and ``bucket``), percent-encoded: ``a?b.png`` must not read as a query."""
    return prefix + quote(key, safe="/") + (f"?{urlencode({'bucket': bucket})}" if bucket else "")


#: Top-level folders of a Unix server: an absolute path under one of them in an answer tells a client how the server
#: is laid out (temporary files, the store's folder, the install), so it is replaced.
SYSTEM_FOLDERS = ("tmp", "var", "home", "root", "usr", "opt", "srv", "mnt", "proc", "etc", "run", "dev", "private")
SERVER_PATH = "<server path>"
_REDACTOR = "upscaler.redactor"


def path_pattern(roots: Iterable[str]) -> re.Pattern[str]:
    """What :func:`redact` replaces: the absolute ``roots`` (longest first) and any absolute path under a
    :data:`SYSTEM_FOLDERS` folder, each with what follows it up to a space, a quote or a colon. A key echoed in a
    message (``'photos/tmp/a.png'``) is relative: a ``/`` after a name character is not the start of a path."""
    names = sorted({r.rstrip("/") for r in roots if len(r.rstrip("/")) > 1}, key=len, reverse=True)
    heads = [re.escape(r) for r in names] + [rf"/(?:{'|'.join(SYSTEM_FOLDERS)})"]
    return re.compile(rf"(?<![\w.~/-])(?:{'|'.join(heads)})(?![\w.~-])[^\s'\"`,;:)\]]*")


def server_roots(settings: Settings) -> list[str]:
    """The folders this server reads and writes: temporary files, the local store and job files, video scratch,
    the working folder, the Python installation and the home folder (each as given and resolved)."""
    places = [tempfile.gettempdir(), os.getcwd(), sys.prefix, str(Path.home())]
    folders = [settings.storage, settings.video_scratch] + [
        str(Path(f).parent) for f in (settings.job_store, settings.job_queue)
    ]
    places += [f for f in folders if f and "://" not in f]
    roots: list[str] = []
    for place in places:
        roots += [os.path.abspath(place), str(Path(place).resolve())]
    return [r for r in roots if r not in ("/", "")]


def install_redactor(app: Flask, settings: Settings) -> None:
    app.extensions[_REDACTOR] = path_pattern(server_roots(settings))


def redact(text: str) -> str:
    """``text`` without the server's file system paths (each replaced by ``<server path>``): an answer names what
    went wrong, never where the server keeps its files."""
    pattern = current_app.extensions.get(_REDACTOR) or path_pattern(())
    return pattern.sub(SERVER_PATH, text)


def job_answer(job: dict[str, Any]) -> dict[str, Any]:
    """A job as a client sees it: its ``error`` (a worker's reason, which may quote a scratch file) redacted."""
    if isinstance(job.get("error"), str):
        job = {**job, "error": redact(job["error"])}
    return job


def error(message: str, status: int, code: str, headers: dict[str, str] | None = None) -> Response:
    """An error in the shape the current route speaks, without server paths."""
    message = redact(message)
    if request.blueprint == LEGACY_BLUEPRINT:
        resp = jsonify([{"error": message}, status])
    else:
        resp = jsonify({"error": message, "code": code, "status": status})
    resp.status_code = status
    if headers:
        resp.headers.update(headers)
    return resp
