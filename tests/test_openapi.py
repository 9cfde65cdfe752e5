"""The OpenAPI document is generated from the routes' declared schemas: it describes every route the app serves,
with the same methods; it is valid OpenAPI 3.1; the limits it publishes are the ones enforced; and the real server's
answers match the schemas it publishes."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import requests
from flask import Flask
from openapi_spec_validator import validate
from PIL import Image

from api.app import create_app
from api.openapi import spec
from api.params import Operation
from api.schemas import Fields, Published, parse
from tests.servers import api_server
from upscaler.config import Settings
from upscaler.errors import InvalidInput

ALIASES = {"job_id": "id", "migration_id": "id"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    tmp = tmp_path_factory.mktemp("openapi")
    settings = Settings.from_env(
        {}, storage=str(tmp / "objects"), job_store=str(tmp / "j.db"), job_queue=str(tmp / "q.db")
    )
    return create_app(settings)


def _operations(app: Flask) -> Iterator[tuple[str, Operation]]:
    for rule in app.url_map.iter_rules():
        op = getattr(app.view_functions[rule.endpoint], "operation", None)
        if op is not None:
            yield rule.rule, op


def test_every_route_and_method_is_documented(app: Flask) -> None:
    paths = spec(app)["paths"]
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        assert hasattr(view, "operation"), f"{rule.rule} declares no @operation"
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{" + ALIASES.get(m.group(1), m.group(1)) + "}", rule.rule)
        served.setdefault(path, set()).update(m.lower() for m in rule.methods - {"OPTIONS"})
    assert set(served) == set(paths)
    for path, methods in served.items():
        documented = {m for m in paths[path] if m != "parameters"}
        assert methods - {"head"} <= documented, path
    client = app.test_client()
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200 and time.monotonic() < deadline:  # let the warm-up thread finish
        time.sleep(0.1)


def test_the_document_is_valid_openapi_3_1(app: Flask) -> None:
    document = spec(app)
    validate(document)  # raises on any schema or reference error
    assert document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobSubmit"
    }
    assert document["components"]["schemas"]["LegacyStore"]["required"] == ["image", "s3_key_name"]


def _valid(prop: dict[str, Any]) -> Any:
    """A value the property's published schema accepts."""
    if prop.get("contentEncoding") == "base64":
        return "aGk="
    if "enum" in prop:
        return prop["enum"][0]
    if prop.get("type") in ("integer", "number"):
        return prop.get("minimum", 1)
    return "a.png"


def _models(app: Flask) -> set[type[Fields]]:
    return {m for _, op in _operations(app) for m in (op.query, op.body) if m is not None}


def test_published_limits_are_the_enforced_ones(app: Flask) -> None:
    """For every field of every declared request: the published bounds pass, one step past them is refused with
    a message naming the field, and a missing required field is named too."""
    checked = 0
    for model in _models(app):
        schema = model.model_json_schema(schema_generator=Published)
        props, required = schema["properties"], schema.get("required", [])
        base = {name: _valid(props[name]) for name in required}
        if "img" in props:  # one source of the image
            base["img"] = "aGk="
        context = {"max_workers": 8}
        parse(model, base, **context)
        for name, prop in props.items():
            beyond: list[Any] = []
            if "maximum" in prop:
                parse(model, {**base, name: prop["maximum"]}, **context)
                beyond += [prop["maximum"] + 1, 10**400]
            if "minimum" in prop:
                parse(model, {**base, name: prop["minimum"]}, **context)
                beyond += [prop["minimum"] - 1, -(10**400)]
            if "maxLength" in prop:
                beyond.append("x" * (prop["maxLength"] + 1))
            if prop.get("type") in ("integer", "number"):
                beyond += ["many", True, [1]]
            for value in beyond:
                with pytest.raises(InvalidInput, match=f"'{name}' "):
                    parse(model, {**base, name: value}, **context)
                checked += 1
        for name in required:
            with pytest.raises(InvalidInput, match=f"'{name}' is required"):
                parse(model, {k: v for k, v in base.items() if k != name}, **context)
    assert checked > 100


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_server(tmp_path_factory.mktemp("openapi-served"), {"UPSCALER_VIDEO_WORKERS": "0"}) as url:
        yield url


def _conforms(document: dict[str, Any], path: str, method: str, resp: requests.Response) -> None:
    """``resp`` is one of the answers the document gives for ``method path``, and its body fits that schema."""
    answers = document["paths"][path][method]["responses"]
    assert str(resp.status_code) in answers, (path, method, resp.status_code, resp.text[:300])
    schema = answers[str(resp.status_code)]["content"]["application/json"]["schema"]
    jsonschema.validate(resp.json(), {**schema, "components": document["components"]})


def test_the_real_servers_answers_fit_the_published_schemas(served: str) -> None:
    document = requests.get(served + "/openapi.json", verify=False, timeout=30).json()
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 90)).save(buf, "PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        ("post", "/store", "/store", {"json": {"image": png, "s3_key_name": "o/a.png"}}),
        ("post", "/store", "/store", {"json": {"image": png, "s3_key_name": "o/b.png", "quality": 0}}),
        ("get", "/retrieve", "/retrieve", {"params": {"s3_key": "o/a.png", "model": "bicubic"}}),
        ("get", "/retrieve", "/retrieve", {"params": {"s3_key": "o/a.png", "scale": "x"}}),
        ("put", "/v1/images/{key}", "/v1/images/o/c.png", {"data": buf.getvalue()}),
        ("put", "/v1/images/{key}", "/v1/images/o/c.png?quality=101", {"data": buf.getvalue()}),
        ("post", "/v1/upscale", "/v1/upscale", {"json": {"img": png, "model": "bicubic"}}),
        ("post", "/v1/upscale", "/v1/upscale", {"json": {"img": png, "url": "s3://media/o/a.png"}}),
        ("post", "/v1/jobs", "/v1/jobs", {"json": {"method": "upscale"}}),
        ("post", "/storeVideo", "/storeVideo", {"json": {"s3_key_name": "v.mp4", "crf": 64}}),
    ]
    answers = []
    for method, path, url, kwargs in calls:
        resp = requests.request(method, served + url, verify=False, timeout=60, **kwargs)
        _conforms(document, path, method, resp)
        answers.append(resp)
    messages = [resp.text for resp in answers if resp.status_code == 400]
    assert len(messages) == 6
    for field, text in zip(("quality", "scale", "quality", "img", "key", "crf"), messages, strict=True):
        assert f"'{field}'" in text or "exactly one of 'img'" in text, text
