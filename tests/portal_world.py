"""A running `berth serve --policy project` with accounts, tokens, a project and images pushed through the registry
API (httpx), for the portal's tests (tests/adapters/test_portal_pages.py, tests/interop/test_portal_browser.py)."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from registry_core.accounts import Accounts
from registry_core.projects import Projects
from registry_core.registry import Registry
from tests.serving import Server, sha, start_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PASSWORD = "correct horse battery staple"  # every account's password in these tests


@dataclass
class World:
    server: Server
    registry: Registry
    accounts: Accounts
    projects: Projects
    project: str  # owned by `owner`, public may view
    secrets: dict[str, str] = field(default_factory=dict)  # user -> a personal access token with every scope

    def token(self, who: str | None, *scopes: str) -> str:
        auth = ("x", self.secrets[who]) if who else None
        r = httpx.get(f"{self.server.url}/token", params={"service": "berth", "scope": list(scopes)}, auth=auth)
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def client(self, who: str | None, repo: str, actions: str = "pull,push") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(who, f'repository:{repo}:{actions}')}"}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=30)

    def push_image(self, repo: str, tag: str, who: str = "owner", arch: str = "amd64",
                   step: str = "COPY hello.txt /hello.txt", labels: dict[str, str] | None = None) -> str:
        """An image of one layer (a tar with one random file), its config naming the build step; the registry's
        Docker-Content-Digest of the manifest."""
        with self.client(who, repo) as client:
            return _push_manifest(client, repo, tag, _image(client, repo, arch, step, labels or {}), OCI_MANIFEST)

    def push_index(self, repo: str, tag: str, arches: tuple[str, ...], who: str = "owner") -> tuple[str, list[str]]:
        """A multi-platform index of one image per architecture: (the index's digest, the children's digests)."""
        with self.client(who, repo) as client:
            children = []
            for arch in arches:
                body = _image(client, repo, arch, f"RUN build for {arch}", {})
                digest = _push_manifest(client, repo, sha(body), body, OCI_MANIFEST)
                children.append((digest, len(body), arch))
            index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d, "size": n, "platform": {"os": "linux", "architecture": a}}
                for d, n, a in children]}).encode()
            return _push_manifest(client, repo, tag, index, OCI_INDEX), [d for d, _, _ in children]


def _blob(client: httpx.Client, repo: str, data: bytes) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(data)}, content=data)
    assert r.status_code == 201, r.text


def _image(client: httpx.Client, repo: str, arch: str, step: str, labels: dict[str, str]) -> bytes:
    content = os.urandom(64).hex().encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({
        "created": "2026-12-01T10:00:00Z", "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/bin/hello"], "Cmd": ["--greet"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [sha(raw.getvalue())]},
        "history": [{"created_by": "ENV GREETING=hi", "empty_layer": True}, {"created_by": step}]}).encode()
    _blob(client, repo, layer)
    _blob(client, repo, config)
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
                       "layers": [{"mediaType": OCI_LAYER, "digest": sha(layer), "size": len(layer)}]}).encode()


def _push_manifest(client: httpx.Client, repo: str, reference: str, body: bytes, media_type: str) -> str:
    r = client.put(f"/v2/{repo}/manifests/{reference}", content=body, headers={"Content-Type": media_type})
    assert r.status_code == 201, r.text
    return r.headers["Docker-Content-Digest"]


def open_world(data: Path) -> World:
    """A server on `data` with accounts owner (certified, owns the project), alice (certified), bob (not
    certified) and the site admin `admin` (made by the first start), each with a password and a full token; the
    project `main` that `public` may view."""
    server = start_server(data, policy="project")
    registry = Registry.open(data)  # the CLI's way: the same data directory, while the server runs
    accounts, projects = Accounts(registry.store), Projects(registry.store)
    world = World(server, registry, accounts, projects, "")
    for name, certified in (("owner", True), ("alice", True), ("bob", False)):
        accounts.add_user(name, certified=certified)
    for name in ("admin", "owner", "alice", "bob"):
        accounts.set_password(name, PASSWORD)
        world.secrets[name] = accounts.create_token(name, ["view", "download", "modify"], label="tests")[1]
    world.project = projects.create("main", "owner").id
    projects.grant(world.project, "public", "view")
    return world
