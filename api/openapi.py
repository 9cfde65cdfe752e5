"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``, generated from the routes themselves:
each view's ``@operation`` (api/params.py) names the pydantic models of api/schemas.py that validate its query and
body and type its answer, so what is published is what is checked."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel, TypeAdapter

from api.params import Operation
from api.responses import LEGACY_BLUEPRINT
from api.schemas import KEY_DOC, LEGACY_ERROR, ApiError, Fields, Published
from upscaler import __version__

REASONS = {
    400: "invalid input",
    401: "missing or invalid credentials",
    403: "not allowed (bucket, source host, key scope)",
    404: "no such object",
    405: "method not allowed",
    409: "a conflict: the job has already finished, or the object cannot serve as asked",
    413: "over a configured limit (bytes, megapixels, seconds, frames)",
    415: "unsupported media type",
    422: "the image or video cannot be decoded",
    429: "too many requests in flight; retry after Retry-After",
    503: "a dependency (model, store, endpoint) is unavailable",
}
#: Every operation may answer these (input, auth, limits, overload, dependencies); listed once here.
COMMON_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 503)
#: Path parameters, by the name the rule gives them: (published name, schema).
PATH_PARAMETERS = {
    "key": ("key", {"type": "string", "maxLength": 1024, **KEY_DOC}),
    "job_id": ("id", {"type": "string", "minLength": 1, "maxLength": 128}),
    "migration_id": ("id", {"type": "string", "minLength": 1, "maxLength": 40}),
}
_RULE_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")
_REF = "#/components/schemas/{model}"
_BINARY = {"type": "string", "format": "binary"}


class _Document:
    """The document being built; every model it names lands once in ``components.schemas``."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        self.paths: dict[str, dict[str, Any]] = {}

    def schema(self, kind: Any) -> dict[str, Any]:
        """A reference to ``kind``'s schema (a model), or its schema inline (a tuple, a dict type, ...)."""
        schema = TypeAdapter(kind).json_schema(ref_template=_REF, schema_generator=Published)
        self.schemas.update(schema.pop("$defs", {}))
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            self.schemas[kind.__name__] = schema
            return {"$ref": _REF.format(model=kind.__name__)}
        return schema

    def errors(self, legacy: bool, codes: tuple[int, ...]) -> dict[str, Any]:
        schema = self.schema(LEGACY_ERROR if legacy else ApiError)
        return {str(c): {"description": REASONS[c], "content": {"application/json": {"schema": schema}}} for c in codes}

    def operation(self, op: Operation, legacy: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"summary": op.summary}
        if op.description:
            out["description"] = op.description
        parameters = [
            {"name": n, "in": "header", "description": d, "schema": {"type": "string"}} for n, d in op.headers
        ]
        if op.query is not None:
            parameters += _query_parameters(op.query)
        if parameters:
            out["parameters"] = parameters
        if op.body is not None:
            content = {"application/json": {"schema": self.schema(op.body)}}
            out["requestBody"] = {"required": True, "content": content}
        elif op.raw:
            out["requestBody"] = {"required": True, "content": {ctype: {"schema": _BINARY} for ctype in op.raw}}
        answer: dict[str, Any] = {"description": op.answer}
        if isinstance(op.returns, str):  # a file of this content type
            answer["content"] = {op.returns: {"schema": _BINARY}}
        elif op.returns is not None:
            answer["content"] = {"application/json": {"schema": self.schema(op.returns)}}
        out["responses"] = {str(op.status): answer}
        for status, description, returns in op.also:
            content = {"application/json": {"schema": self.schema(returns)}}
            out["responses"][str(status)] = {"description": description, "content": content}
        if op.public:  # no credentials asked, so only its own refusals
            out["security"] = []
            out["responses"].update(self.errors(legacy, op.errors))
            return out
        out["responses"].update(self.errors(legacy, tuple(sorted({*op.errors, *COMMON_ERRORS}))))
        out["responses"]["414"] = {"description": "request line over 8190 bytes (refused by gunicorn)"}
        return out


def _query_parameters(model: type[Fields]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(schema_generator=Published)
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop.pop("description")
        out.append(param)
    return out


def spec(app: Flask) -> dict[str, Any]:
    """The document for every route ``app`` serves."""
    doc = _Document()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        op: Operation | None = getattr(view, "operation", None)
        if op is None:
            continue  # Flask's static route; the test of this document finds any other undeclared view
        names = _RULE_PARAMETER.findall(rule.rule)
        path = _RULE_PARAMETER.sub(lambda m: "{" + PATH_PARAMETERS[m.group(1)][0] + "}", rule.rule)
        item = doc.paths.setdefault(path, {})
        if names:
            item["parameters"] = [
                {"name": PATH_PARAMETERS[n][0], "in": "path", "required": True, "schema": PATH_PARAMETERS[n][1]}
                for n in names
            ]
        legacy = rule.endpoint.startswith(LEGACY_BLUEPRINT + ".")
        for method in sorted((rule.methods or set()) - {"OPTIONS", "HEAD"}):
            item[method.lower()] = doc.operation(op, legacy)
        if op.head and "HEAD" in (rule.methods or ()):
            item["head"] = {"summary": op.head, "responses": {"200": {"description": "exists"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "media-upscaler",
            "version": __version__,
            "description": "Store images downscaled; get them back at full size with super-resolution. "
            "Legacy routes keep the original service's [{data}, code] bodies.",
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
            "schemas": dict(sorted(doc.schemas.items())),
        },
        "paths": dict(sorted(doc.paths.items())),
    }
