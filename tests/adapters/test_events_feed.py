"""The event feed, GET /v2/_events, against `berth serve --policy project`: paging across page boundaries, bad
parameters, what each caller may see, and the events real pushes (skopeo --all of an OCI index) produce."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry_core.accounts import Accounts
from registry_core.projects import Projects
from registry_core.registry import Registry
from tests.interop.images import write_layout
from tests.serving import Place, Server, sha, start_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"



@dataclass
class Setup:
    server: Server
    registry: Registry
    secrets: dict[str, str]
    shared: str  # alice may view it
    private: str  # only its owner

    def client(self, who: str | None) -> httpx.Client:
        auth = ("x", self.secrets[who]) if who else None
        r = httpx.get(f"{self.server.url}/token", auth=auth, params={
            "service": "berth", "scope": ["registry:events:*", f"repository:{self.shared}/app:pull,push"]})
        assert r.status_code == 200, r.text
        return httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {r.json()['token']}"},
                            timeout=30)


@pytest.fixture(scope="module")
def setup(place: Place) -> Iterator[Setup]:
    """On each store in turn (tests/conftest.py `place`)."""
    server = start_server(place, policy="project", workers=1)
    registry = place.open_registry()  # the CLI's way: the same store, while the server runs
    accounts, projects = Accounts(registry.store), Projects(registry.store)
    secrets = {}
    for name in ("owner", "alice", "bob"):
        accounts.add_user(name, certified=True)
        secrets[name] = accounts.create_token(name, ["view", "download", "modify"])[1]
    shared, private = projects.create("shared", "owner").id, projects.create("private", "owner").id
    projects.grant(shared, "alice", "view", actor="owner")
    projects.grant(private, "bob", "view", actor="owner")
    projects.revoke(private, "bob", actor="owner")
    yield Setup(server, registry, secrets, shared, private)
    server.stop()
    registry.close()


def push(client: httpx.Client, repo: str, tag: str, n: int = 0) -> str:
    config = json.dumps({"n": n, "r": os.urandom(4).hex()}).encode()
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(config)}, content=config)
    assert r.status_code == 201, r.text
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": []}).encode()
    r = client.put(f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    return sha(body)


def owner_client(setup: Setup, *repos: str) -> httpx.Client:
    scopes = ["registry:events:*"] + [f"repository:{repo}:pull,push,delete" for repo in repos]
    r = httpx.get(f"{setup.server.url}/token", auth=("x", setup.secrets["owner"]),
                  params={"service": "berth", "scope": scopes})
    return httpx.Client(base_url=setup.server.url, headers={"Authorization": f"Bearer {r.json()['token']}"},
                        timeout=30)


def feed(client: httpx.Client, url: str = "/v2/_events?n=4") -> tuple[list[dict[str, Any]], int, int]:
    """Every event the caller sees, following Link headers; and the last `last` and how many pages."""
    found: list[dict[str, Any]] = []
    pages = 0
    while True:
        r = client.get(url)
        assert r.status_code == 200, r.text
        pages += 1
        page = r.json()
        assert page.keys() == {"events", "last"} and len(page["events"]) <= 4
        found += page["events"]
        link = r.headers.get("link")
        if link is None:
            return found, page["last"], pages
        assert link.endswith('>; rel="next"') and f"after={page['last']}" in link
        url = link[1:link.index(">")]


def test_the_feed_pages_through_every_event_in_order(setup: Setup) -> None:
    repos = [f"{setup.shared}/app", f"{setup.private}/secret"]
    with owner_client(setup, *repos) as owner:
        for i in range(5):
            push(owner, repos[i % 2], f"v{i}", i)
        found, last, pages = feed(owner)
    seqs = [e["berthseq"] for e in found]
    assert seqs == sorted(set(seqs)) and last == seqs[-1]
    stored = setup.registry.outbox.after(0, 10_000)
    assert seqs == [e.seq for e in stored]  # the owner sees everything: both projects' events, project-level too
    assert pages == -(-len(found) // 4)  # a Link only when more follow
    assert {e["type"] for e in found} >= {"org.berth.grant.changed", "org.berth.repository.created",
                                         "org.berth.manifest.pushed", "org.berth.tag.created"}
    first = found[0]
    assert first["specversion"] == "1.0" and first["source"].startswith(setup.server.url)
    with owner_client(setup) as owner:
        r = owner.get("/v2/_events", params={"after": last})
        assert r.json() == {"events": [], "last": last} and "link" not in r.headers
        r = owner.get("/v2/_events", params={"after": 0, "n": 5000})
        assert len(r.json()["events"]) == len(stored)  # n is cut to 1000, as the catalog cuts its n


@pytest.mark.parametrize("query", ["n=0", "n=-1", "n=abc", "after=-1", "after=x", "after=" + "9" * 30, "n=1e3"])
def test_bad_parameters_are_a_400_with_an_oci_error(setup: Setup, query: str) -> None:
    with owner_client(setup) as owner:
        r = owner.get(f"/v2/_events?{query}")
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


def test_a_caller_sees_only_what_they_may_view(setup: Setup) -> None:
    with owner_client(setup, f"{setup.shared}/seen", f"{setup.private}/hidden") as owner:
        push(owner, f"{setup.shared}/seen", "v1")
        push(owner, f"{setup.private}/hidden", "v1")
    with setup.client("alice") as alice:
        seen, _, _ = feed(alice)
    repos = {e["data"]["repository"] for e in seen}
    assert f"{setup.shared}/seen" in repos and not any(r and r.startswith(setup.private) for r in repos)
    projects = {e["data"]["project"] for e in seen}
    assert projects == {setup.shared}  # the private project's grant changes are hidden from her too
    with setup.client("bob") as bob:  # his grant on the private project was revoked: nothing
        assert feed(bob)[0] == []
    with setup.client(None) as anonymous:  # nothing is public here
        assert feed(anonymous)[0] == []
    r = httpx.get(f"{setup.server.url}/v2/_events")
    assert r.status_code == 401 and 'scope="registry:events:*"' in r.headers["WWW-Authenticate"]


def test_a_tag_moved_gives_the_previous_digest(setup: Setup) -> None:
    repo = f"{setup.shared}/moving"
    with owner_client(setup, repo) as owner:
        first = push(owner, repo, "latest", 1)
        start = setup.registry.outbox.last_seq()
        second = push(owner, repo, "latest", 2)
        assert owner.delete(f"/v2/{repo}/manifests/{second}").status_code == 202
        found = owner.get("/v2/_events", params={"after": start}).json()["events"]
    assert [e["type"].removeprefix("org.berth.") for e in found] == [
        "manifest.pushed", "tag.moved", "tag.deleted", "manifest.deleted"]
    moved = found[1]
    assert moved["subject"] == f"{repo}:latest" and moved["data"]["previousDigest"] == first
    assert moved["data"]["digest"] == second


def test_skopeo_all_pushes_an_index_with_its_platforms(setup: Setup, tmp_path: Path) -> None:
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is not installed: run the suite through scripts/test, which installs it from Debian"
    descriptors = write_layout(tmp_path / "img")
    repo = f"{setup.shared}/multi"
    start = setup.registry.outbox.last_seq()
    (tmp_path / "xdg").mkdir()
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    env = dict(os.environ, _CONTAINERS_ROOTLESS_UID="1000", XDG_DATA_HOME=str(tmp_path / "xdg"))
    result = subprocess.run(
        [skopeo, "--policy", str(policy), "copy", "--all", "--dest-tls-verify=false",
         f"--dest-creds=x:{setup.secrets['owner']}", f"oci:{tmp_path / 'img'}:multi",
         f"docker://{setup.server.host}/{repo}:latest"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with owner_client(setup) as owner:
        found = owner.get("/v2/_events", params={"after": start}).json()["events"]
    pushed = [e for e in found if e["type"] == "org.berth.manifest.pushed"]
    # the two platform manifests by digest, then the index by tag
    assert pushed[-1]["data"]["digest"] == descriptors["multi"]["digest"]
    assert {p["data"]["digest"] for p in pushed[:-1]} == {descriptors["amd64"]["digest"],
                                                          descriptors["arm64"]["digest"]}
    assert all("tag" not in p["data"] for p in pushed[:-1])
    index = pushed[-1]["data"]
    assert index["mediaType"] == OCI_INDEX and index["tag"] == "latest" and index["repository"] == repo
    assert index["size"] == descriptors["multi"]["size"] and index["project"] == setup.shared
    assert sorted((p["architecture"], p["os"], p["digest"]) for p in index["platforms"]) == [
        ("amd64", "linux", descriptors["amd64"]["digest"]), ("arm64", "linux", descriptors["arm64"]["digest"])]
    assert [e["type"] for e in found][0] == "org.berth.repository.created"
    assert all(e["subject"].startswith(repo) for e in found)


def test_pull_events_are_written_only_when_enabled(tmp_path: Path) -> None:
    """`berth serve --pull-events`: a manifest GET (also one the fast path would answer) writes a pull event; a HEAD
    does not. Without the flag (every other test here) a pull writes nothing."""
    server = start_server(tmp_path / "data", "--pull-events", workers=1)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            digest = push(client, "library/app", "v1")
            last = client.get("/v2/_events").json()["last"]
            assert client.head("/v2/library/app/manifests/v1").status_code == 200
            assert client.get("/v2/library/app/manifests/v1").status_code == 200
            assert client.get(f"/v2/library/app/manifests/{digest}").status_code == 200
            found = client.get("/v2/_events", params={"after": last}).json()["events"]
    finally:
        server.stop()
    assert [(e["type"], e["data"]["digest"], e["data"].get("tag")) for e in found] == [
        ("org.berth.manifest.pulled", digest, "v1"), ("org.berth.manifest.pulled", digest, None)]
    assert found[0]["source"] == server.url  # outside a project: the registry itself
