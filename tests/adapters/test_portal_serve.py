"""The portal's JSON API on a real `berth serve --policy project` (two workers): what a registry client pushed is
what the API lists, and a sharing change made through the API holds at once for registry clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from registry_core.accounts import Accounts
from registry_core.projects import Projects
from registry_core.registry import Registry
from tests.serving import ROOT, Place, Server, sha, start_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Setup:
    server: Server
    secrets: dict[str, str]
    project: str

    def registry_client(self, who: str, scope: str) -> httpx.Client:
        r = httpx.get(f"{self.server.url}/token", params={"service": "berth", "scope": scope},
                      auth=("anything", self.secrets[who]))
        assert r.status_code == 200, r.text
        return httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {r.json()['token']}"},
                            timeout=30)

    def api(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.secrets[who]}"} if who else {}
        return httpx.Client(base_url=f"{self.server.url}/api/v1", headers=headers, timeout=30)


@pytest.fixture(scope="module")
def setup(place: Place) -> Iterator[Setup]:
    """On each store in turn (tests/conftest.py `place`): on the distributed one, the sharing change made through
    one worker holds at once on the other, through PostgreSQL."""
    server = start_server(place, policy="project")
    with place.open_registry() as registry:  # the CLI's way: the same store, while the server runs
        accounts = Accounts(registry.store)
        secrets = {}
        for name in ("owner", "friend"):
            accounts.add_user(name, certified=True)
            secrets[name] = accounts.create_token(name, ["view", "download", "modify"])[1]
        project = Projects(registry.store).create("main", "owner").id
    yield Setup(server, secrets, project)
    server.stop()


def push(client: httpx.Client, repo: str, tag: str) -> str:
    config = json.dumps({"os": "linux", "architecture": "arm64", "n": os.urandom(4).hex()}).encode()
    assert client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(config)}, content=config).status_code == 201
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": []}).encode()
    r = client.put(f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    return str(r.headers["Docker-Content-Digest"])


def test_the_api_lists_what_was_pushed(setup: Setup) -> None:
    repo = f"{setup.project}/app"
    with setup.registry_client("owner", f"repository:{repo}:pull,push") as client:
        first = push(client, repo, "latest")
        second = push(client, repo, "latest")
    with setup.api("owner") as api:
        tags = api.get(f"/repositories/{repo}/-/tags").json()["tags"]
        assert [(t["tag"], t["digest"], t["pushed_by"], t["platforms"]) for t in tags] == \
            [("latest", second, "owner", ["linux/arm64"])]
        history = api.get(f"/repositories/{repo}/-/tags/latest/history").json()["history"]
        assert [h["digest"] for h in history] == [second, first]
        assert api.get("/openapi.json").json()["paths"]
    with setup.api(None) as anonymous:
        assert anonymous.get(f"/repositories/{repo}").status_code == 404


def test_a_grant_changed_through_the_api_holds_at_once_for_pulls(setup: Setup) -> None:
    repo = f"{setup.project}/shared"
    with setup.registry_client("owner", f"repository:{repo}:pull,push") as client:
        push(client, repo, "v1")

    def pull() -> int:
        with setup.registry_client("friend", f"repository:{repo}:pull") as client:
            return client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}).status_code

    assert pull() in (401, 403)
    with setup.api("owner") as api:
        assert api.put(f"/repositories/{repo}/-/sharing/friend", json={"level": "download"}).status_code == 200
        assert pull() == 200
        assert api.delete(f"/repositories/{repo}/-/sharing/friend").status_code == 204
        assert pull() in (401, 403)


def test_cli_sets_a_password(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Registry.open(data) as registry:
        Accounts(registry.store).add_user("alice")

    def berth(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "adapters.cli", *args, "--data", str(data)], input=stdin,
                              capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))

    done = berth("user", "password", "alice", stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    assert "correct horse" not in done.stdout + done.stderr
    assert berth("user", "password", "alice", stdin="short\n").returncode == 1
    assert berth("user", "password", "nobody", stdin="long enough password\n").returncode == 1
    assert berth("user", "disable", "alice").returncode == 0
    with Registry.open(data) as registry:
        accounts = Accounts(registry.store)
        identity, why = accounts.check_password("alice", "correct horse battery")
        assert identity is None and "disabled" in why
        accounts.update_user("alice", disabled=False)
        assert accounts.check_password("alice", "correct horse battery")[0] is not None
        assert accounts.check_password("alice", "wrong password")[0] is None
