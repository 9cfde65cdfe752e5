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

from flask import Blueprint, Response, current_app, jsonify

from api import schemas
from api.auth import authorize
from api.params import operation
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
@operation(
    summary="Plan (the dry run, the default) or start the migration of an archive under an S3 prefix or manifest",
    body=schemas.MigrationSubmit,
    status=202,
    answer="started (or resumed): the migration, its chunks on the job queue",
    returns=schemas.MigrationState,
    also=((200, "the dry run's plan (apply false)", schemas.MigrationPlan),),
    errors=(409,),
)
def create_migration(body: schemas.MigrationSubmit) -> Response:
    settings = current_app.extensions["upscaler.settings"]
    spec = migrate.Spec.parse(body.source, body.dest, body.target, originals=body.originals or "", folders=False)
    service = _service()
    if not body.apply:
        _check(spec, "keep")
        return jsonify(migrate.plan(spec, service, sample=body.sample or 0).to_dict(settings))
    _check(spec, body.on_verified)
    keys = list(migrate.open_originals(spec, service).keys())
    _check(spec, body.on_verified, keys)
    videos = _jobs()
    migrate.submit(spec, service, videos.jobs, videos.queue, settings, on_verified=body.on_verified, keys=keys)
    resp = jsonify(migrate.status(videos.jobs, spec.id, settings))
    resp.status_code = 202
    resp.headers["Location"] = f"/v1/migrations/{spec.id}"
    return resp


@bp.get("/migrations/<migration_id>")
@operation(summary="A migration's progress and report", answer="the migration", returns=schemas.MigrationState)
def get_migration(migration_id: str) -> Response:
    settings = current_app.extensions["upscaler.settings"]
    if len(migration_id) > 40:
        raise InvalidInput(f"a migration id has at most 40 characters, got {len(migration_id)}")
    state = migrate.status(_jobs().jobs, migration_id, settings)
    spec = migrate.Spec(state["source"], state["dest"], state["target"])
    where = migrate.source_bucket(spec)
    if where is not None:  # whoever may read the originals (as creating it needed) may follow it
        authorize("read", where[0], where[1] or None)
    else:  # started from the command line over a folder: whoever may read the stored forms
        dest_bucket, dest_prefix = migrate.split_s3(spec.dest)
        authorize("read", dest_bucket, dest_prefix or None)
    return jsonify(state)
