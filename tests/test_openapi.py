"""The OpenAPI document describes every route the app serves, with the same methods."""

from __future__ import annotations

import re
import time
from pathlib import Path

from api.app import create_app
from api.openapi import spec
from upscaler.config import Settings

ALIASES = {"job_id": "id"}


def test_every_route_and_method_is_documented(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {}, storage=str(tmp_path / "objects"), job_store=str(tmp_path / "j.db"), job_queue=str(tmp_path / "q.db")
    )
    app = create_app(settings)
    paths = spec()["paths"]
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
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
