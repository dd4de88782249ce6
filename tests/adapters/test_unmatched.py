"""A path no route matches (Starlette's `{path:path}` stops at a line break) is answered in the shape of the API it
was meant for: the JSON API's error object, the registry protocol's error list, never Starlette's plain "Not Found"
for an API."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from adapters.http.app import create_app
from registry_core.registry import Registry


@pytest.mark.parametrize("path, shape", [
    ("/api/v1/repositories/%0A0", "api"), ("/api/v1/%0A", "api"), ("/api/v1/projects/a%0D%0Ab", "api"),
    ("/v2/a%0Ab/tags/list", "registry"), ("/v2/%0A", "registry"), ("/v2/syn1/app/manifests/v1%0A", "registry"),
    ("/projects%0Ax", "page")])
def test_paths_with_line_breaks_get_their_api_shape(tmp_path: Path, path: str, shape: str) -> None:
    with Registry.open(tmp_path / "data") as registry:
        r = TestClient(create_app(registry, policy="project")).get(path)
    assert r.status_code in (400, 401, 404), r.text
    if shape == "api":
        assert set(r.json()["error"]) == {"code", "message"}
    elif shape == "registry":
        assert {"code", "message"} <= set(r.json()["errors"][0])
    else:
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/")
