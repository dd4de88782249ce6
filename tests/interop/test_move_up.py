"""`berth move-up`: an embedded registry built by real clients (skopeo pushes into `berth serve --data` under the
project policy; accounts, tokens, projects, grants and trash through the CLI) moved into PostgreSQL + SeaweedFS, then
served by `berth serve --metadata … --blobs …`: the same tokens log in, the same pulls come back byte for byte, tags,
history, grants and trash are the same, and fsck finds the target clean. Also: a move is refused while a server has
the source open, and into a target that is not empty."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cas import BlobStore
from registry_core.accounts import Accounts
from registry_core.names import RepositoryName
from registry_core.projects import Projects
from registry_core.registry import Registry
from registry_core.webhooks import Webhooks
from tests.engines import Engines
from tests.interop.conftest import Run
from tests.interop.images import write_layout
from tests.interop.test_skopeo import layout_ref, same_blobs
from tests.serving import ROOT, Server, start_server


def berth(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adapters.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300, input=stdin)


def ok(*args: str, stdin: str | None = None) -> str:
    result = berth(*args, stdin=stdin)
    assert result.returncode == 0, f"berth {' '.join(args)}: {result.stderr}"
    return result.stdout


def request(url: str, *, token: str | None = None, basic: str | None = None, method: str = "GET",
            body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    if body is not None:
        headers["Content-Type"] = "application/octet-stream"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method=method, headers=headers),
                                    timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def bearer(server: Server, secret: str, scope: str) -> str:
    status, body = request(f"{server.url}/token?service=berth&scope={scope}", basic=f"admin:{secret}")
    assert status == 200, body
    token: str = json.loads(body)["token"]
    return token


@dataclass
class Moved:
    source: Path  # the data directory, as the server left it
    layout: Path  # the images pushed into it
    target: tuple[str, ...]  # --metadata URL --blobs URL
    node: Server  # `berth serve` on the target
    project: str
    admin: str  # token secrets
    alice: str
    revoked: str
    jwt: str  # a bearer token the source's server signed before the move
    table: bytes  # a compressible blob the source kept compressed
    before: dict[str, str]  # CLI listings of the source
    before_state: dict[str, Any]  # and what its registry reads
    report: dict[str, Any]  # move-up --json


LISTINGS = ("user list", "project list", "grants {p}/app")


def listings(flags: tuple[str, ...], project: str) -> dict[str, str]:
    """What the CLI lists, as an operator compares it."""
    return {line: ok(*line.format(p=project).split(), *flags) for line in LISTINGS}


def state(registry: Registry, project: str) -> dict[str, Any]:
    """Accounts, tokens, projects, grants, trash and webhooks as the registry reads them (one open of the store:
    a CLI call per listing costs seconds on the distributed store, which declares its tables at every start)."""
    accounts, projects, webhooks = Accounts(registry.store), Projects(registry.store), Webhooks(registry.store)
    targets = (project, f"{project}/app", f"{project}/gone", *(p.id for p in projects.all()))
    state = webhooks.state("ci")
    return {"users": accounts.users(), "tokens": [accounts.tokens(u.name) for u in accounts.users()],
            "projects": projects.all(), "grants": [projects.sharing(t) for t in targets],
            "trash": [projects.is_trashed(t) for t in targets], "webhooks": webhooks.endpoints(),
            "delivered": state.cursor if state else None, "dead": webhooks.dead(),
            "password": accounts.check_password("admin", "a passphrase of our own")[0] is not None}


@pytest.fixture(scope="module")
def moved(engines: Engines, tmp_path_factory: pytest.TempPathFactory, skopeo_module: Run) -> Iterator[Moved]:
    skopeo = skopeo_module
    base = tmp_path_factory.mktemp("move-up")
    data = base / "data"
    server = start_server(data, policy="project", workers=1)
    try:
        flags = ("--data", str(data))
        admin = ok("token", "create", "admin", "--scope", "view,download,modify", *flags).strip()
        ok("user", "add", "alice", "--certified", *flags)
        alice = ok("token", "create", "alice", "--scope", "download,modify", "--label", "laptop", *flags).strip()
        revoked = ok("token", "create", "alice", "--scope", "download", *flags).strip()
        project = ok("project", "create", "demo", "--owner", "admin", *flags).strip()
        ok("grant", project, "alice", "edit", *flags)
        ok("user", "password", "admin", *flags, stdin="a passphrase of our own\n")
        layout = base / "img"
        write_layout(layout)
        creds = f"admin:{admin}"
        registry = f"docker://{server.host}/{project}"
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:v1", f"{registry}/app:v1")
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:v1", f"{registry}/app:latest")
        skopeo("copy", "--all", "--dest-tls-verify=false", "--dest-creds", f"alice:{alice}", f"oci:{layout}:multi",
               f"{registry}/app:latest")  # latest moves: two entries in its history
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:v1", f"{registry}/gone:v1")
        ok("grant", f"{project}/app", "public", "download", *flags)
        ok("trash", f"{project}/gone", *flags)
        old = ok("project", "create", "old", "--owner", "alice", *flags).strip()
        ok("trash", old, *flags)
        ok("webhook", "add", "ci", "http://127.0.0.1:9/", "--secret", "hush", *flags)
        # A compressible blob, kept compressed at rest by `berth compact`: moved in its compressed form.
        rows = random.Random(7)
        table = b"".join(b"2026-12-02,syn1,%d,%d,alpha beta gamma\n" % (rows.randrange(10**6), i)
                         for i in range(30_000))
        digest = "sha256:" + hashlib.sha256(table).hexdigest()
        push = bearer(server, admin, f"repository:{project}/data:push,pull")
        status, _ = request(f"{server.url}/v2/{project}/data/blobs/uploads/?digest={digest}", token=push,
                            method="POST", body=table)
        assert status == 201
        assert f"compressed {digest}" in ok("compact", *flags)
        ok("token", "revoke", _token_id(data, "alice", "download"), *flags)
        jwt = bearer(server, admin, f"repository:{project}/app:pull")
        busy = berth("move-up", *flags, *_target(engines, "busy"))
        assert busy.returncode == 1 and "another process has" in busy.stderr, busy.stderr
    finally:
        server.stop()
    before = listings(flags, project)
    with Registry.open(data) as source:
        before_state = state(source, project)
    target = _target(engines, "moved")
    report = json.loads(ok("move-up", "--json", *flags, *target))
    node = start_server(base / "node", *target, policy="project", workers=1)
    yield Moved(data, layout, target, node, project, admin, alice, revoked, jwt, table, before, before_state, report)
    node.stop()


def _target(engines: Engines, name: str) -> tuple[str, ...]:
    return ("--metadata", f"{engines.postgres.create_database()}?schema={name}",
            "--blobs", f"s3://{engines.s3.create_bucket()}/{uuid.uuid4().hex[:8]}?endpoint={engines.s3.endpoint}")


def _token_id(data: Path, user: str, scopes: str) -> str:
    for line in ok("token", "list", user, "--data", str(data)).splitlines():
        token_id, scope, state, *_ = line.split("\t")
        if scope == scopes and state == "active":
            return token_id
    raise AssertionError(f"no active {scopes} token of {user}")


@pytest.fixture(scope="module")
def skopeo_module(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """skopeo as tests/interop/conftest.py runs it, for a module-scoped fixture (its own blob-info cache)."""
    home = tmp_path_factory.mktemp("skopeo")
    (home / "xdg").mkdir()
    policy = home / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    env = dict(os.environ, _CONTAINERS_ROOTLESS_UID="1000", XDG_DATA_HOME=str(home / "xdg"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["skopeo", "--policy", str(policy), *args], env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"skopeo {' '.join(args)} failed:\n{result.stderr}"
        return result
    return run


def test_the_report_counts_what_was_copied(moved: Moved) -> None:
    report = moved.report
    assert report["failed"] == [] and not report["resumed"]
    assert (report["repositories"], report["accounts"], report["projects"]) == (3, 2, 2)  # app, gone, data
    assert report["tags"] == 3 and report["manifests"] == 5  # app: v1, the index and its two; gone: v1
    assert report["tokens"] == 3 and report["grants"] == 2 and report["in_the_trash"] == 2
    assert report["passwords"] == 1 and report["webhooks"] == 1 and report["events"] > 0
    assert report["files"]["compressed"] == 1 and report["files"]["count"] >= 8
    assert report["blob_bytes"] == report["files"]["bytes"] + report["inline"]["bytes"]


def test_the_same_tokens_pull_the_same_images_byte_for_byte(moved: Moved, skopeo_module: Run,
                                                            tmp_path: Path) -> None:
    node, project = moved.node, moved.project
    app = f"docker://{node.host}/{project}/app"
    skopeo_module("copy", "--src-tls-verify=false", "--src-creds", f"admin:{moved.admin}", f"{app}:v1",
                  f"oci:{tmp_path / 'v1'}:v1")
    assert layout_ref(tmp_path / "v1", "v1") == layout_ref(moved.layout, "v1")
    assert same_blobs(moved.layout, tmp_path / "v1") == 4
    skopeo_module("copy", "--all", "--src-tls-verify=false", "--src-creds", f"alice:{moved.alice}", f"{app}:latest",
                  f"oci:{tmp_path / 'multi'}:latest")
    assert layout_ref(tmp_path / "multi", "latest") == layout_ref(moved.layout, "multi")
    assert same_blobs(moved.layout, tmp_path / "multi") == 8
    skopeo_module("copy", "--src-tls-verify=false", f"{app}:v1", f"oci:{tmp_path / 'anon'}:v1")  # public download
    revoked = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"alice:{moved.revoked}",
                              f"{app}:v1"], capture_output=True, text=True, timeout=60)
    assert revoked.returncode != 0 and "revoked" in revoked.stderr


def test_a_bearer_token_signed_before_the_move_verifies_on_the_node(moved: Moved) -> None:
    status, body = request(f"{moved.node.url}/v2/{moved.project}/app/tags/list", token=moved.jwt)
    assert status == 200 and json.loads(body)["tags"] == ["latest", "v1"]


def test_the_compressed_blob_is_served_whole_and_by_range(moved: Moved) -> None:
    digest = "sha256:" + hashlib.sha256(moved.table).hexdigest()
    pull = bearer(moved.node, moved.admin, f"repository:{moved.project}/data:pull")
    status, body = request(f"{moved.node.url}/v2/{moved.project}/data/blobs/{digest}", token=pull)
    assert status == 200 and body == moved.table


def test_listings_history_grants_and_trash_are_the_same(moved: Moved, skopeo_module: Run) -> None:
    assert listings(moved.target, moved.project) == moved.before
    app, gone = RepositoryName.parse(f"{moved.project}/app"), RepositoryName.parse(f"{moved.project}/gone")
    with Registry.open(moved.source) as source, \
            Registry(BlobStore.distributed(moved.target[1], moved.target[3])) as target:
        assert state(target, moved.project) == moved.before_state
        assert moved.before_state["password"] and moved.before_state["trash"].count(True) == 2
        for repo in (app, gone):
            assert target.list_tags(repo) == source.list_tags(repo)
            for tag in source.list_tags(repo)[0]:
                assert target.tag_history(repo, tag) == source.tag_history(repo, tag)
        assert len(target.tag_history(app, "latest")) == 2
    trashed = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"admin:{moved.admin}",
                              f"docker://{moved.node.host}/{moved.project}/gone:v1"], capture_output=True, text=True,
                             timeout=60)
    assert trashed.returncode != 0 and "trash" in trashed.stderr


def test_fsck_on_the_target_is_clean(moved: Moved) -> None:
    assert ok("fsck", *moved.target).splitlines()[-1] == "no damage"


def test_a_target_that_is_not_empty_is_refused(moved: Moved) -> None:
    again = berth("move-up", "--data", str(moved.source), *moved.target)
    assert again.returncode == 1
    assert "the target is not empty" in again.stderr and "row(s) in users" in again.stderr
