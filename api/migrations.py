"""The /v1 migration API, a thin layer over :mod:`upscaler.migrate` (the same as ``upscaler migrate``).

POST /v1/migrations        {"source", "dest", "target", "apply", "on_verified", "sample"} -> 200 the dry run's plan,
                           or with "apply": true 202 and the migration (its chunks on the job queue)
GET  /v1/migrations/<id>   progress and the report so far

The source is ``s3://bucket/prefix`` or an ``s3://`` manifest (.csv); a folder on the server's disk is refused.
The caller's API key must read the source (and write it, when ``on_verified`` tags or deletes originals) and
write the destination; the service's bucket allow-list applies to both. In place (``dest`` the source, with
``originals``: where each original is kept before its stored form takes its key), the key must read and write
the source and the originals location.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from api import params
from api.auth import authorize
from upscaler import migrate
from upscaler.errors import InvalidInput
from upscaler.service import S3CommonUpscaler
from upscaler.videos import VideoJobs

bp = Blueprint("v1_migrations", __name__, url_prefix="/v1")


def _service() -> S3CommonUpscaler:
    return current_app.extensions["upscaler.service"]


def _jobs() -> VideoJobs:
    """The video API's job store and queue: migrations run on the same ones."""
    return current_app.extensions["upscaler.videos"]


def _check(spec: migrate.Spec, on_verified: str, keys: list[str] | None = None) -> None:
    """Allow-lists and the caller's scopes: read the source (and write it, when originals are tagged or deleted),
    each key a manifest names, and write the destination."""
    service = _service()
    where = migrate.source_bucket(spec)
    if where is not None:
        authorize("read", service.bucket(where[0]), where[1] or None)
    originals = migrate.open_originals(spec, service) if keys is not None else None
    if isinstance(originals, migrate.StoreOriginals):
        for key in keys or []:
            authorize("read", originals.bucket, key)
            if on_verified != "keep" or spec.in_place:
                authorize("write", originals.bucket, key)
    dest_bucket, dest_prefix = migrate.split_s3(spec.dest)
    authorize("write", service.bucket(dest_bucket), dest_prefix or None)
    if spec.originals:
        keep_bucket, keep_prefix = migrate.split_s3(spec.originals)
        for access in ("read", "write"):
            authorize(access, service.bucket(keep_bucket), keep_prefix or None)


@bp.post("/migrations")
def create_migration() -> Response:
    body = params.json_body()
    settings = current_app.extensions["upscaler.settings"]
    spec = migrate.Spec.parse(
        params.text(body, "source", required=True) or "",
        params.text(body, "dest", required=True) or "",
        params.text(body, "target", required=True, max_len=32) or "",
        originals=params.text(body, "originals") or "",
        folders=False,
    )
    on_verified = params.text(body, "on_verified", max_len=8) or "tag"
    if on_verified not in migrate.ON_VERIFIED:
        raise InvalidInput(f"on_verified must be one of {', '.join(migrate.ON_VERIFIED)}, got {on_verified!r}")
    apply = body.get("apply", False)
    if not isinstance(apply, bool):
        raise InvalidInput("'apply' must be true or false")
    service = _service()
    if not apply:
        _check(spec, "keep")
        sample = params.number(body, "sample", lo=0, hi=settings.migrate_plan_sample, integer=True)
        return jsonify(migrate.plan(spec, service, sample=int(sample or 0)).to_dict(settings))
    _check(spec, on_verified)
    keys = list(migrate.open_originals(spec, service).keys())
    _check(spec, on_verified, keys)
    videos = _jobs()
    migrate.submit(spec, service, videos.jobs, videos.queue, settings, on_verified=on_verified, keys=keys)
    resp = jsonify(migrate.status(videos.jobs, spec.id, settings))
    resp.status_code = 202
    resp.headers["Location"] = f"/v1/migrations/{spec.id}"
    return resp


@bp.get("/migrations/<migration_id>")
def get_migration(migration_id: str) -> Response:
    settings = current_app.extensions["upscaler.settings"]
    state = migrate.status(_jobs().jobs, params.text({"id": migration_id}, "id", max_len=40) or "", settings)
    spec = migrate.Spec(state["source"], state["dest"], state["target"])
    where = migrate.source_bucket(spec)
    if where is not None:  # whoever may read the originals (as creating it needed) may follow it
        authorize("read", where[0], where[1] or None)
    else:  # started from the command line over a folder: whoever may read the stored forms
        dest_bucket, dest_prefix = migrate.split_s3(spec.dest)
        authorize("read", dest_bucket, dest_prefix or None)
    return jsonify(state)


_MIGRATION_ID = {"name": "migration_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 40}}
_SUBMIT = {
    "type": "object",
    "required": ["source", "dest", "target"],
    "properties": {
        "source": {"type": "string", "description": "s3://bucket/prefix, or an s3:// S3 Inventory / CSV manifest"},
        "dest": {
            "type": "string",
            "description": "s3://bucket/prefix for the stored forms (not overlapping), or the source itself (in place)",
        },
        "originals": {
            "type": "string",
            "description": "in place: s3://bucket/prefix where each original is kept (copied, checked) first",
        },
        "target": {"type": "string", "description": "psnr:<dB>, ssim:<0..1> (:fast), exact, bpp:<n>, bytes:<n>"},
        "apply": {"type": "boolean", "default": False, "description": "false: the dry run; true: convert"},
        "on_verified": {"type": "string", "enum": list(migrate.ON_VERIFIED), "default": "tag"},
        "sample": {"type": "integer", "minimum": 0, "description": "dry run: objects decided (nothing stored)"},
    },
}
_STATUS = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["running", "completed", "failed"]},
        "progress": {"type": ["number", "null"]},
        "objects": {"type": "integer"},
        "objects_done": {"type": "integer"},
        "report": {"type": "object", "description": "bytes, fidelity, forms, failures, time, monthly cost"},
    },
    "required": ["id", "status", "report"],
}


def openapi_paths(errors: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI description of these routes (``api/openapi.py`` merges it)."""
    json_of = lambda schema: {"application/json": {"schema": schema}}  # noqa: E731
    return {
        "/v1/migrations": {
            "post": {
                "summary": "Plan (dry run) or start the migration of an archive under an S3 prefix or manifest",
                "requestBody": {"required": True, "content": json_of(_SUBMIT)},
                "responses": {
                    "200": {"description": "the dry run's plan", "content": json_of({"type": "object"})},
                    "202": {"description": "started (or resumed)", "content": json_of(_STATUS)},
                    **errors,
                },
            }
        },
        "/v1/migrations/{migration_id}": {
            "parameters": [_MIGRATION_ID],
            "get": {
                "summary": "A migration's progress and report",
                "responses": {"200": {"description": "the migration", "content": json_of(_STATUS)}, **errors},
            },
        },
    }
