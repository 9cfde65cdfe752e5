"""Reading a request through its route's declared schema: ``@operation(...)`` names the models of
:mod:`api.schemas` a view takes (query, JSON body) and what it answers; the fields are validated before the view
runs and given to it as ``query=`` / ``body=``, and :mod:`api.openapi` publishes the same declaration."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, request

from api.schemas import Fields, parse
from upscaler.errors import InvalidInput, UnsupportedMedia

#: Deepest nesting of a JSON body (objects and arrays); no request of this API needs more than three.
MAX_JSON_DEPTH = 32

View = TypeVar("View", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operation:
    """One route and method as declared: what it reads and what it answers (the OpenAPI operation)."""

    summary: str
    #: The models the request's query string and JSON body are validated with.
    query: type[Fields] | None = None
    body: type[Fields] | None = None
    #: Content types of a raw request body (an image or video file), when the body is not JSON.
    raw: tuple[str, ...] = ()
    #: Request headers it reads: (name, description).
    headers: tuple[tuple[str, str], ...] = ()
    #: The success answer: status, description, and its JSON type (a model or a type) or a binary content type.
    status: int = 200
    answer: str = "done"
    returns: Any = None
    #: Other success answers: (status, description, JSON type).
    also: tuple[tuple[int, str, Any], ...] = ()
    #: Error statuses particular to this operation (the common ones are added to every operation).
    errors: tuple[int, ...] = ()
    description: str = ""
    #: The summary of HEAD when the view answers it on purpose (GET's automatic HEAD is not documented).
    head: str = ""
    #: Answers without credentials (/health, /ready).
    public: bool = False


def operation(**declared: Any) -> Callable[[View], View]:
    """Declare a view's operation; its ``query`` and ``body`` models are parsed before it runs."""
    op = Operation(**declared)

    def wrap(view: View) -> View:
        @functools.wraps(view)
        def run(*args: Any, **kwargs: Any) -> Any:
            settings = current_app.extensions["upscaler.settings"]
            context = {"max_workers": settings.video_max_workers, "sample": settings.migrate_plan_sample}
            if op.body is not None:
                kwargs["body"] = parse(op.body, json_body(), **context)
            if op.query is not None:
                kwargs["query"] = parse(op.query, request.args.to_dict(), **context)
            return view(*args, **kwargs)

        run.operation = op  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return wrap


def json_body() -> dict[str, Any]:
    """The request's JSON object: 415 when it is not JSON, 400 when it is not an object or nests too deeply."""
    if not request.is_json:
        ctype = request.content_type or "none"
        raise UnsupportedMedia(f"expected Content-Type application/json, got {ctype}")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = _depth(body)
    if depth > MAX_JSON_DEPTH:
        raise InvalidInput(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def _depth(value: Any) -> int:
    """How deeply ``value`` nests objects and arrays (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
