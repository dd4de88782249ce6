"""The portal's JSON API (adapters/portal/api.py, PORTAL-API.md) over the whole ASGI app (create_app, the project
policy), through Starlette's TestClient: every endpoint, who may do what, paging, trash, tokens, errors."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route
from starlette.testclient import TestClient

from adapters.http.app import create_app
from registry_core.accounts import Accounts
from registry_core.projects import Projects
from registry_core.registry import Registry
from tests.serving import sha

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
API = "/api/v1"


def image(registry: Registry, repo: str, seed: str, arch: str = "amd64") -> bytes:
    config = json.dumps({"os": "linux", "architecture": arch, "created": "2026-01-01T00:00:00Z",
                         "config": {"Entrypoint": ["/app"], "Labels": {"seed": seed}},
                         "history": [{"created_by": "COPY app /app"}, {"created_by": "CMD x", "empty_layer": True}]
                         }).encode()
    layer = os.urandom(500)
    for blob in (config, layer):
        registry.ingest_blob(repo, blob, sha(blob))
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                                  "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer),
                                   "size": len(layer)}]}).encode()


@dataclass
class World:
    registry: Registry
    client: TestClient
    secrets: dict[str, str]
    project: str
    private: str
    repo: str

    def as_(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[who]}"} if who else {}

    def get(self, path: str, who: str | None = None, **params: Any) -> httpx.Response:
        return self.client.get(API + path, headers=self.as_(who), params=params)

    def send(self, method: str, path: str, who: str | None = None, body: Any = None) -> httpx.Response:
        return self.client.request(method, API + path, headers=self.as_(who),
                                   content=json.dumps(body).encode() if body is not None else None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    registry = Registry.open(tmp_path_factory.mktemp("portal") / "data")
    accounts, projects = Accounts(registry.store), Projects(registry.store)
    secrets = {}
    for name, certified, admin in (("owner", True, False), ("editor", True, False), ("deleter", True, False),
                                   ("reader", True, False), ("outsider", True, False), ("root", True, True)):
        accounts.add_user(name, certified=certified, admin=admin)
        secrets[name] = accounts.create_token(name, ["view", "download", "modify"])[1]
    secrets["viewonly"] = accounts.create_token("owner", ["view"])[1]
    project = projects.create("main", "owner").id
    private = projects.create("private", "owner").id
    projects.grant(project, "editor", "edit")
    projects.grant(project, "deleter", "edit-delete")
    projects.grant(project, "reader", "download")
    projects.grant(project, "public", "view")
    repo = f"{project}/tools"
    for tag in ("v1", "v2", "latest"):
        registry.put_manifest(repo, tag, image(registry, repo, tag), None, actor="owner")
    registry.put_manifest(f"{private}/secret", "v1", image(registry, f"{private}/secret", "s"), None, actor="owner")
    client = TestClient(create_app(registry, policy="project"), base_url="http://registry.test")
    yield World(registry, client, secrets, project, private, repo)
    registry.close()


def code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def test_openapi_lists_exactly_the_routes(world: World) -> None:
    doc = world.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    app = world.client.app
    while not hasattr(app, "routes"):  # through the middleware wrappers to the Starlette app
        app = getattr(app, "app", None) or app.inner
    served = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith(API) and "{rest:path}" not in route.path:
            path = route.path.replace(":path}", "}")
            served |= {(path, m.lower()) for m in route.methods or () if m != "HEAD"}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    for ops in doc["paths"].values():
        for op in ops.values():
            for answer in op["responses"].values():
                ref = answer.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                if ref:
                    assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]


def test_me_and_authentication(world: World) -> None:
    assert world.get("/me").json() == {"user": None, "admin": False, "certified": False, "scopes": []}
    assert world.get("/me", "root").json()["admin"] is True
    basic = base64.b64encode(f"anything:{world.secrets['reader']}".encode()).decode()
    r = world.client.get(API + "/me", headers={"Authorization": f"Basic {basic}"})
    assert r.json()["user"] == "reader"
    r = world.client.get(API + "/me", headers={"Authorization": "Bearer berth_0000000000000000_" + "A" * 43})
    assert r.status_code == 401 and code(r) == "UNAUTHORIZED"
    r = world.client.get(API + "/me", headers={"Authorization": "Digest x"})
    assert r.status_code == 401


def test_projects_visible_to_whom(world: World) -> None:
    def ids(who: str | None) -> set[str]:
        r = world.get("/projects", who)
        assert r.status_code == 200
        return {p["id"] for p in r.json()["projects"]}
    assert ids(None) == ids("outsider") == {world.project}  # public may view main only
    assert ids("owner") == ids("root") == {world.project, world.private}
    main = world.get(f"/projects/{world.project}", "reader").json()
    assert main["name"] == "main" and main["owner"] == "owner" and main["repositories"] == 1
    assert main["permission"] == "download" and main["trashed"] is False
    assert world.get(f"/projects/{world.project}", "owner").json()["permission"] == "admin"
    for who in (None, "outsider", "reader"):
        r = world.get(f"/projects/{world.private}", who)
        assert r.status_code == 404 and code(r) == "NOT_FOUND"
        assert world.get(f"/projects/{world.private}", who).json() == world.get("/projects/syn99999", who).json() \
            | {"error": {"code": "NOT_FOUND", "message": f"no project {world.private}"}}
    assert world.get("/projects/nonsense").status_code == 404
    r = world.get("/projects", None, n="1")
    assert len(r.json()["projects"]) == 1


def test_create_project(world: World) -> None:
    r = world.send("POST", "/projects", None, {"name": "x"})
    assert r.status_code == 401
    r = world.send("POST", "/projects", "viewonly", {"name": "x"})
    assert r.status_code == 403
    r = world.send("POST", "/projects", "outsider", {"name": "mine"})
    assert r.status_code == 201 and r.json()["owner"] == "outsider" and r.json()["permission"] == "admin"
    assert world.send("POST", "/projects", "outsider", {"name": "mine"}).status_code == 400  # same name again
    assert world.send("POST", "/projects", "outsider", {"nome": "x"}).status_code == 400
    r = world.client.post(API + "/projects", headers=world.as_("outsider"), content=b"{not json")
    assert r.status_code == 400 and code(r) == "INVALID"


def test_repository_tags_and_details(world: World) -> None:
    repo = world.get(f"/repositories/{world.repo}", "reader").json()
    assert repo["tags"] == 3 and repo["project"] == world.project and repo["permission"] == "download"
    assert repo["last_push"]["actor"] == "owner" and repo["last_push"]["tag"] == "latest"
    assert repo["size"] > 3 * 500
    listed = world.get(f"/projects/{world.project}/repositories", "reader").json()
    assert [r["name"] for r in listed["repositories"]] == [world.repo] and listed["next"] is None
    assert world.get(f"/projects/{world.project}/repositories", "reader", filter="nothing").json()["repositories"] \
        == []
    tags = world.get(f"/repositories/{world.repo}/-/tags", None).json()
    assert [t["tag"] for t in tags["tags"]] == ["latest", "v1", "v2"] and tags["next"] is None
    first = tags["tags"][1]
    got = world.registry.get_manifest(world.repo, "v1")
    assert first["digest"] == str(got.digest) and first["kind"] == "image" and first["platforms"] == ["linux/amd64"]
    assert first["pushed_by"] == "owner" and first["pushed_at"].endswith("Z")
    by_time = world.get(f"/repositories/{world.repo}/-/tags", None, sort="time").json()
    assert [t["tag"] for t in by_time["tags"]] == ["latest", "v2", "v1"]
    r = world.get(f"/repositories/{world.repo}/-/tags", None, n="2")
    assert r.json()["next"] == "v1" and 'rel="next"' in r.headers["link"] and "last=v1" in r.headers["link"]
    detail = world.get(f"/repositories/{world.repo}/-/tags/v1").json()
    assert detail["tag"] == "v1" and detail["config"]["entrypoint"] == ["/app"]
    assert detail["config"]["labels"] == {"seed": "v1"} and detail["layers"][0]["created_by"] == "COPY app /app"
    assert detail["manifest_size"] == len(got.body) and detail["children"] == [] and detail["referrers"] == []
    by_digest = world.get(f"/repositories/{world.repo}/-/manifests/{got.digest}").json()
    assert "tag" not in by_digest and "pushed_at" not in by_digest
    assert by_digest["layers"] == detail["layers"]
    history = world.get(f"/repositories/{world.repo}/-/tags/v1/history").json()["history"]
    assert [h["digest"] for h in history] == [str(got.digest)]
    assert world.get(f"/repositories/{world.repo}/-/tags/nope").status_code == 404
    assert world.get(f"/repositories/{world.repo}/-/tags/nope/history").status_code == 404
    assert world.get(f"/repositories/{world.repo}/-/manifests/sha256:{'0' * 64}").status_code == 404


def test_referrers_and_artifacts(world: World) -> None:
    repo = f"{world.project}/signed"
    subject = world.registry.put_manifest(repo, "v1", image(world.registry, repo, "s"), None, actor="owner")
    empty = b"{}"
    world.registry.ingest_blob(repo, empty, sha(empty))
    sbom = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/spdx+json",
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(empty), "size": 2},
                       "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(empty), "size": 2}],
                       "subject": {"mediaType": OCI_MANIFEST, "digest": str(subject.digest),
                                   "size": len(world.registry.get_manifest(repo, "v1").body)}}).encode()
    world.registry.put_manifest(repo, "sbom", sbom, None, actor="owner")
    detail = world.get(f"/repositories/{repo}/-/tags/v1", "reader").json()
    assert detail["referrers"] == [{"digest": sha(sbom), "media_type": OCI_MANIFEST,
                                    "artifact_type": "application/spdx+json", "size": len(sbom)}]
    artifact = world.get(f"/repositories/{repo}/-/tags/sbom", "reader").json()
    assert artifact["kind"] == "artifact" and artifact["platforms"] == [] and artifact["config"] is None
    assert artifact["artifact_type"] == "application/spdx+json"


def test_synapse_shaped_tag_listing(world: World) -> None:
    path = f"/repositories/{world.repo}/-/synapse/tags"
    found = world.get(path, None, sort="TAG", ascending="true", limit="2", offset="1").json()
    assert found["totalNumberOfResults"] == 3
    assert [r["tag"] for r in found["results"]] == ["v1", "v2"]
    assert found["results"][0]["digest"] == str(world.registry.get_manifest(world.repo, "v1").digest)
    newest = world.get(path).json()["results"]  # default: CREATED_ON, newest first
    assert [r["tag"] for r in newest] == ["latest", "v2", "v1"] and newest[0]["createdOn"].endswith("Z")
    for bad in ({"sort": "NAME"}, {"ascending": "yes"}, {"limit": "0"}, {"offset": "-3"}):
        assert world.get(path, None, **bad).status_code == 400, bad
    assert world.get(f"/repositories/{world.private}/secret/-/synapse/tags").status_code == 404


def test_an_index_with_its_platforms_and_a_moved_tag_in_history(world: World) -> None:
    repo = f"{world.project}/multi"
    children = []
    for arch in ("amd64", "arm64"):
        body = image(world.registry, repo, arch, arch)
        digest = world.registry.put_manifest(repo, str(sha(body)), body, None, actor="editor").digest
        children.append({"mediaType": OCI_MANIFEST, "digest": str(digest), "size": len(body),
                         "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    world.registry.put_manifest(repo, "app", children and image(world.registry, repo, "old"), None, actor="owner")
    world.registry.put_manifest(repo, "app", index, None, actor="editor")
    tag = world.get(f"/repositories/{repo}/-/tags/app", "reader").json()
    assert tag["kind"] == "index" and tag["platforms"] == ["linux/amd64", "linux/arm64"]
    assert [c["platform"] for c in tag["children"]] == ["linux/amd64", "linux/arm64"]
    assert tag["size"] == len(index) + sum(c["size"] for c in tag["children"]) and tag["pushed_by"] == "editor"
    assert tag["config"] is None and tag["layers"] == []
    child = world.get(f"/repositories/{repo}/-/manifests/{children[1]['digest']}", "reader").json()
    assert child["platforms"] == ["linux/arm64"] and child["size"] == tag["children"][1]["size"]
    history = world.get(f"/repositories/{repo}/-/tags/app/history", "reader").json()["history"]
    assert [h["actor"] for h in history] == ["editor", "owner"] and history[0]["digest"] == str(sha(index))


@pytest.mark.parametrize(("who", "status"), [(None, 401), ("outsider", 403), ("reader", 403), ("editor", 403),
                                             ("deleter", 204)])
def test_delete_tag_needs_delete(world: World, who: str | None, status: int) -> None:
    repo = f"{world.project}/deletions"  # public may view it (a grant on the project)
    world.registry.put_manifest(repo, "doomed", image(world.registry, repo, "d"), None, actor="owner")
    r = world.send("DELETE", f"/repositories/{repo}/-/tags/doomed", who)
    assert r.status_code == status, r.text
    assert (world.get(f"/repositories/{repo}/-/tags/doomed", "owner").status_code == 404) == (status == 204)
    hidden = world.send("DELETE", f"/repositories/{world.private}/secret/-/tags/v1", who)
    assert hidden.status_code == 404  # cannot see it: no such repository (anonymous callers too)


def test_sharing(world: World) -> None:
    repo = f"{world.private}/secret"
    assert world.get(f"/repositories/{repo}", "outsider").status_code == 404
    assert world.get(f"/projects/{world.private}/sharing", "reader").status_code == 404
    assert world.get(f"/projects/{world.project}/sharing", "reader").status_code == 403
    assert world.get(f"/projects/{world.project}/sharing", None).status_code == 401
    grants = world.get(f"/projects/{world.project}/sharing", "owner").json()["grants"]
    assert {"principal": "reader", "level": "download", "inherited_from": None, "source": "local",
            "in_force": True} in grants
    r = world.send("PUT", f"/projects/{world.private}/sharing/outsider", "owner", {"level": "view"})
    assert r.status_code == 200 and r.json()["level"] == "view"
    assert world.get(f"/repositories/{repo}", "outsider").json()["permission"] == "view"
    assert world.send("PUT", f"/projects/{world.private}/sharing/outsider", "outsider",
                      {"level": "admin"}).status_code == 403
    assert world.send("PUT", f"/projects/{world.private}/sharing/nobody", "owner", {"level": "view"}).status_code \
        == 400
    assert world.send("PUT", f"/projects/{world.private}/sharing/outsider", "owner", {"level": "god"}).status_code \
        == 400
    repo_grants = world.get(f"/repositories/{repo}/-/sharing", "owner").json()["grants"]
    assert {"principal": "outsider", "level": "view", "inherited_from": world.private, "source": "inherited",
            "in_force": True} in repo_grants
    assert world.send("DELETE", f"/projects/{world.private}/sharing/outsider", "owner").status_code == 204
    assert world.send("DELETE", f"/projects/{world.private}/sharing/outsider", "owner").status_code == 404
    assert world.get(f"/repositories/{repo}", "outsider").status_code == 404
    assert world.send("PUT", f"/repositories/{repo}/-/sharing/public", "root", {"level": "view"}).status_code == 200
    assert world.get(f"/repositories/{repo}").json()["permission"] == "view"
    assert world.send("DELETE", f"/repositories/{repo}/-/sharing/public", "root").status_code == 204


def test_sharing_takes_effect_at_once_for_registry_clients(world: World) -> None:
    repo = f"{world.private}/secret"
    basic = base64.b64encode(f"x:{world.secrets['outsider']}".encode()).decode()

    def pull() -> int:
        r = world.client.get("/token", params={"service": "berth", "scope": f"repository:{repo}:pull"},
                             headers={"Authorization": f"Basic {basic}"})
        token = r.json()["token"]
        return world.client.get(f"/v2/{repo}/manifests/v1", headers={"Authorization": f"Bearer {token}"}).status_code
    assert pull() in (401, 403)
    world.send("PUT", f"/repositories/{repo}/-/sharing/outsider", "owner", {"level": "download"})
    assert pull() == 200
    world.send("DELETE", f"/repositories/{repo}/-/sharing/outsider", "owner")
    assert pull() in (401, 403)


def test_trash_restore_and_purge(world: World) -> None:
    repo = f"{world.project}/trashy"
    world.registry.put_manifest(repo, "v1", image(world.registry, repo, "t"), None, actor="owner")
    assert world.send("POST", f"/repositories/{repo}/-/trash", "reader").status_code == 403
    assert world.send("DELETE", f"/repositories/{repo}", "owner").status_code == 409  # purge needs the trash first
    r = world.send("POST", f"/repositories/{repo}/-/trash", "owner")
    assert r.status_code == 200 and r.json()["trashed"] is True and r.json()["permission"] == "admin"
    r = world.get(f"/repositories/{repo}", "reader")
    assert r.status_code == 404 and "trash" in r.json()["error"]["message"]
    r = world.get(f"/repositories/{repo}", "outsider")  # may view (public), so learns it is in the trash
    assert r.status_code == 404
    assert world.get(f"/repositories/{repo}/-/tags", "owner").json()["tags"][0]["tag"] == "v1"
    assert world.send("DELETE", f"/repositories/{repo}/-/tags/v1", "owner").status_code == 403
    names = [x["name"] for x in world.get(f"/projects/{world.project}/repositories", "reader").json()["repositories"]]
    assert repo not in names
    owner_view = world.get(f"/projects/{world.project}/repositories", "owner").json()["repositories"]
    assert any(x["name"] == repo and x["trashed"] for x in owner_view)
    assert world.send("POST", f"/repositories/{repo}/-/restore", "owner").json()["trashed"] is False
    assert world.get(f"/repositories/{repo}", "reader").status_code == 200
    world.send("POST", f"/repositories/{repo}/-/trash", "owner")
    assert world.send("DELETE", f"/repositories/{repo}", "owner").status_code == 204
    assert world.get(f"/repositories/{repo}", "owner").status_code == 404
    tags = world.registry.tags
    with world.registry.store.index.read() as txn:  # the listing tables went with the repository
        assert not any(True for table in (tags.tags, tags.pushes, tags.times, tags.history)
                       for _ in txn.keys(table, prefix=f"{repo}\0".encode()))


def test_project_trash(world: World) -> None:
    created = world.send("POST", "/projects", "editor", {"name": "throwaway"}).json()
    pid = created["id"]
    world.send("PUT", f"/projects/{pid}/sharing/reader", "editor", {"level": "view"})
    assert world.send("POST", f"/projects/{pid}/trash", "reader").status_code == 403
    assert world.send("POST", f"/projects/{pid}/trash", "editor").json()["trashed"] is True
    r = world.get(f"/projects/{pid}", "reader")
    assert r.status_code == 404 and "trash" in r.json()["error"]["message"]
    assert pid not in {p["id"] for p in world.get("/projects", "reader").json()["projects"]}
    assert pid in {p["id"] for p in world.get("/projects", "editor").json()["projects"]}
    assert world.send("POST", f"/projects/{pid}/restore", "editor").json()["trashed"] is False
    world.send("POST", f"/projects/{pid}/trash", "editor")
    assert world.send("DELETE", f"/projects/{pid}", "editor").status_code == 204
    assert world.get(f"/projects/{pid}", "editor").status_code == 404


def test_tokens(world: World) -> None:
    assert world.get("/tokens").status_code == 401
    _, pull_only = Accounts(world.registry.store).create_token("reader", ["download"])
    r = world.client.get(API + "/tokens", headers={"Authorization": f"Bearer {pull_only}"})
    assert r.status_code == 200  # any scope lets its holder see (as the policy's view)
    r = world.send("POST", "/tokens", "viewonly", {"scopes": ["view"]})
    assert r.status_code == 403  # token management needs modify
    r = world.send("POST", "/tokens", "reader", {"scopes": ["view", "download"], "label": "ci", "expires_in": 3600})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    made = r.json()
    secret = made["secret"]
    assert made["docker_login"] == f"docker login -u reader -p {secret} registry.test"
    assert made["token"]["label"] == "ci" and made["token"]["expires"] is not None
    r = world.client.get(API + "/me", headers={"Authorization": f"Bearer {secret}"})
    assert r.json()["scopes"] == ["download", "view"]
    listed = world.get("/tokens", "reader").json()["tokens"]
    mine = next(t for t in listed if t["id"] == made["token"]["id"])
    assert mine["last_used"] is not None and mine["revoked"] is False and "secret" not in json.dumps(listed)
    assert secret not in json.dumps(listed)
    assert world.send("DELETE", f"/tokens/{made['token']['id']}", "outsider").status_code == 404
    assert world.send("DELETE", f"/tokens/{made['token']['id']}", "reader").status_code == 204
    assert world.client.get(API + "/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    for bad in ({"scopes": []}, {"scopes": ["root"]}, {"scopes": ["view"], "expires_in": -1},
                {"scopes": ["view"], "expires_in": "soon"}, {"scopes": ["view"], "label": 7}, []):
        r = world.send("POST", "/tokens", "reader", bad)
        assert r.status_code == 400 and code(r) == "INVALID", bad


def test_site_administration(world: World) -> None:
    assert world.get("/admin/accounts", "owner").status_code == 403
    assert world.get("/admin/accounts").status_code == 401
    names = {a["name"] for a in world.get("/admin/accounts", "root").json()["accounts"]}
    assert {"owner", "root"} <= names
    r = world.send("POST", "/admin/accounts", "root", {"name": "newbie", "password": "correct horse"})
    assert r.status_code == 201 and r.json()["password"] is True and r.json()["certified"] is False
    assert world.send("POST", "/admin/accounts", "root", {"name": "short", "password": "x"}).status_code == 400
    assert world.get("/admin/accounts", "root").json()["accounts"][0].get("password") is not None
    r = world.send("PATCH", "/admin/accounts/newbie", "root", {"certified": True})
    assert r.json()["certified"] is True
    assert world.send("PATCH", "/admin/accounts/ghost", "root", {"certified": True}).status_code == 404
    assert world.send("PATCH", "/admin/accounts/newbie", "root", {"certified": "yes"}).status_code == 400
    accounts = Accounts(world.registry.store)
    _, secret = accounts.create_token("newbie", ["view"])
    assert world.client.get(API + "/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert world.send("PATCH", "/admin/accounts/newbie", "root", {"disabled": True}).json()["disabled"] is True
    r = world.client.get(API + "/me", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401 and "disabled" in r.json()["error"]["message"]
    assert world.send("PATCH", "/admin/accounts/newbie", "root", {"disabled": False}).status_code == 200
    assert world.client.get(API + "/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_bad_parameters_are_400_never_500(world: World) -> None:
    tags = f"/repositories/{world.repo}/-/tags"
    for params in ({"n": "0"}, {"n": "1001"}, {"n": "abc"}, {"n": "-1"}, {"sort": "size"},
                   {"sort": "time", "last": "x:y"}, {"sort": "time", "last": "nosuchtag"}):
        r = world.get(tags, None, **params)
        assert r.status_code == 400 and code(r) == "INVALID" and r.json()["error"]["message"], params
    assert world.get("/nothing/here").status_code == 404
    assert world.get("/repositories/UPPER/case").status_code == 404


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/repositories/{repo}/-/tags", "/projects", "/projects/{project}/repositories",
                             "/repositories/{repo}/-/tags/{text}", "/repositories/{repo}/-/manifests/{text}",
                             "/repositories/{text}", "/projects/{text}", "/repositories/{repo}/-/tags/{text}/history"]),
       text=st.text(min_size=1, max_size=40).filter(lambda t: "/" not in t and "?" not in t and "#" not in t),
       params=st.dictionaries(st.sampled_from(["n", "last", "sort", "filter"]), st.text(max_size=30), max_size=4))
def test_any_query_answers_in_the_api_shape(world: World, path: str, text: str, params: dict[str, str]) -> None:
    r = world.get(path.format(repo=world.repo, project=world.project, text=quote(text, safe="")), "reader", **params)
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"code", "message"}


def test_throttled_after_failed_tokens(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "data") as registry:
        client = TestClient(create_app(registry, policy="project"))
        bad = {"Authorization": "Bearer berth_0123456789abcdef_" + "B" * 43}
        answers = [client.get(API + "/me", headers=bad).status_code for _ in range(7)]
        assert answers[:5] == [401] * 5 and answers[-1] == 429
        r = client.get(API + "/me", headers=bad)
        assert int(r.headers["retry-after"]) >= 1 and code(r) == "TOO_MANY_REQUESTS"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["/tokens", "/projects", "/admin/accounts", "/projects/{project}/sharing/reader",
                               "/admin/accounts/ghost", "/repositories/{repo}/-/sharing/reader"]),
       body=st.one_of(json_values, st.fixed_dictionaries({}, optional={
           "scopes": json_values, "label": json_values, "expires_in": json_values, "name": json_values,
           "level": json_values, "password": json_values, "certified": json_values, "disabled": json_values})))
def test_any_body_answers_in_the_api_shape(world: World, target: str, body: Any) -> None:
    path = target.format(project=world.private, repo=f"{world.private}/secret")
    method = "PATCH" if "accounts/" in path else "PUT" if "sharing" in path else "POST"
    r = world.send(method, path, "root", body)
    assert r.status_code in (200, 201, 400, 404), r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"code", "message"}
