"""One real `berth serve` (project policy) with content pushed by real clients, for the Python and R client tests.

Accounts, tokens, projects and grants are made with the `berth` command, as an administrator would; images go in
with skopeo (an image, a multi-arch index), the artifact with the oras SDK, and extra tags of one manifest through
the registry protocol itself (a manifest PUT per tag: seconds fewer than a skopeo run each).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import oras.defaults
import oras.oci
import oras.provider
import pytest

from tests.interop.images import Layout, write_layout
from tests.serving import ROOT, Server, start_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIGNATURE = "application/vnd.berth.test.signature"
MANY = 7  # tags in the paging repository: pages of 2 and 3 end mid-way and on the boundary


@dataclass
class Site:
    server: Server
    project: str  # the owner's project, e.g. syn10001
    owner: str  # certified, owns the project
    owner_token: str
    reader_token: str  # `download` on the project: sees everything, may not delete or trash
    stranger_token: str  # no grant at all
    image: str  # digests as the registry computed them (Docker-Content-Digest)
    index: str
    artifact: str
    signature: str  # a referrer of the artifact
    arm64: str  # the index's linux/arm64 manifest
    built: str  # `built:v1`, an image whose config has history lines
    layout: Path  # the OCI layout the images came from

    @property
    def url(self) -> str:
        return self.server.url

    def repo(self, name: str) -> str:
        return f"{self.project}/{name}"


def berth(data: Path, *args: str) -> str:
    """The server's own command on its data directory (as `scripts/berth ...` in the README); its stdout."""
    result = subprocess.run([sys.executable, "-m", "adapters.cli", *args, "--data", str(data)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, f"berth {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout.strip()


def skopeo_env(where: Path) -> dict[str, str]:
    """skopeo isolated from the machine as tests/interop/conftest.py isolates it: its own blob-info cache and a
    permissive trust policy."""
    (where / "xdg").mkdir(parents=True, exist_ok=True)
    policy = where / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return dict(os.environ, _CONTAINERS_ROOTLESS_UID="1000", XDG_DATA_HOME=str(where / "xdg"),
                BERTH_POLICY=str(policy))


def skopeo(env: dict[str, str], *args: str) -> str:
    binary = shutil.which("skopeo")
    assert binary, "skopeo is not installed: run the suite through scripts/test, which installs it from Debian"
    result = subprocess.run([binary, "--policy", env["BERTH_POLICY"], *args], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"skopeo {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def registry_token(server: Server, secret: str, repo: str, actions: str = "pull,push") -> str:
    """A registry bearer token for `repo`, from the token endpoint, as docker gets one."""
    basic = base64.b64encode(f"x:{secret}".encode()).decode()
    answer = httpx.get(f"{server.url}/token", params={"scope": f"repository:{repo}:{actions}"},
                       headers={"Authorization": f"Basic {basic}"}, timeout=30)
    answer.raise_for_status()
    return str(answer.json()["token"])


def put_manifest(server: Server, secret: str, repo: str, reference: str, body: bytes, media_type: str) -> str:
    """PUT a manifest through the registry protocol; the registry's Docker-Content-Digest."""
    answer = httpx.put(f"{server.url}/v2/{repo}/manifests/{reference}", content=body, timeout=30,
                       headers={"Content-Type": media_type,
                                "Authorization": f"Bearer {registry_token(server, secret, repo)}"})
    assert answer.status_code == 201, answer.text
    return answer.headers["Docker-Content-Digest"]


def content_digest(server: Server, secret: str, repo: str, reference: str) -> str:
    """The registry's Docker-Content-Digest for a reference (HEAD, accepting every manifest type)."""
    accept = ", ".join(["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json"])
    answer = httpx.head(f"{server.url}/v2/{repo}/manifests/{reference}", timeout=30,
                        headers={"Accept": accept,
                                 "Authorization": f"Bearer {registry_token(server, secret, repo, 'pull')}"})
    assert answer.status_code == 200, answer.status_code
    return answer.headers["Docker-Content-Digest"]


def push_artifact(server: Server, secret: str, repo: str, where: Path) -> tuple[str, str]:
    """An artifact pushed by the oras SDK as `repo:v1` (a file of its own media type, oras's empty config), and a
    signature of it (`repo:sig`, its `subject` the artifact): their digests."""
    registry = oras.provider.Registry(hostname=server.host, insecure=True)
    # oras-py keeps the first (pull) token it got and only asks again on a 401, while a registry answers a token
    # short of push with 403 (distribution-spec): it starts with a pull,push token, as `oras login` scripts do.
    registry.auth.set_token_auth(registry_token(server, secret, repo))
    cwd = Path.cwd()
    os.chdir(where)  # oras only pushes files under the working directory
    try:
        Path("results.csv").write_text("sample,value\na,1\n")
        pushed = registry.push(target=f"{server.host}/{repo}:v1", files=["results.csv:text/csv"])
        assert pushed.status_code == 201
        digest = str(pushed.headers["Docker-Content-Digest"])
        raw = registry.do_request(f"{server.url}/v2/{repo}/manifests/v1", "GET",
                                  headers={"Accept": oras.defaults.default_manifest_media_type})
        subject = oras.oci.Subject(mediaType=raw.headers["Content-Type"], digest=digest, size=len(raw.content))
        Path("signature.txt").write_text("signed by the lab")
        signed = registry.push(target=f"{server.host}/{repo}:sig", files=[f"signature.txt:{SIGNATURE}"],
                               subject=subject)
        assert signed.status_code == 201
    finally:
        os.chdir(cwd)
    return digest, str(signed.headers["Docker-Content-Digest"])


def podman_login(host: str, token: str, authfile: Path, where: Path) -> None:
    """A real `podman login` (as root, plain HTTP) writing `authfile`."""
    podman = shutil.which("podman")
    assert podman, "podman is not installed: run the suite through scripts/test, which installs it from Debian"
    short = Path(tempfile.mkdtemp(prefix="berth-", dir="/tmp"))  # podman refuses a runroot over 50 characters
    try:
        login = subprocess.run(
            [podman, "--root", str(where / "storage"), "--runroot", str(short), "--storage-driver", "vfs", "login",
             "--tls-verify=false", "-u", "owner", "--password-stdin", host],
            input=token, env=dict(os.environ, REGISTRY_AUTH_FILE=str(authfile)), capture_output=True, text=True,
            timeout=120)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert login.returncode == 0, login.stderr
    assert host in json.loads(authfile.read_text())["auths"]


HISTORY = ["COPY data-20.bin /", "ENV STAGE=analysis", "RUN make results"]  # the middle line made no layer


def built_image(root: Path) -> dict[str, Any]:
    """An image whose config carries the history lines that made its layers (as `docker build` writes them), in
    an OCI layout at `root` tagged `built`."""
    layout = Layout(root)
    (first, first_id), (second, second_id) = layout.layer(20, 5_000), layout.layer(21, 5_000)
    config = {"architecture": "amd64", "os": "linux", "created": "2026-12-01T10:00:00Z",
              "config": {"Entrypoint": ["/bin/analyse"], "Cmd": ["--all"], "Labels": {"lab": "genomics"}},
              "rootfs": {"type": "layers", "diff_ids": [first_id, second_id]},
              "history": [{"created_by": HISTORY[0]}, {"created_by": HISTORY[1], "empty_layer": True},
                          {"created_by": HISTORY[2]}]}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": layout.put(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
                "layers": [first, second]}
    descriptor = layout.put(json.dumps(manifest).encode(), OCI_MANIFEST)
    layout.tag(descriptor, "built")
    return descriptor


@pytest.fixture(scope="package")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("clients")
    data = base / "data"
    server = start_server(data, policy="project")
    try:
        berth(data, "user", "add", "owner", "--certified")
        berth(data, "user", "add", "reader", "--certified")
        berth(data, "user", "add", "stranger", "--certified")
        owner_token = berth(data, "token", "create", "owner", "--scope", "view,download,modify")
        reader_token = berth(data, "token", "create", "reader", "--scope", "view,download,modify")
        stranger_token = berth(data, "token", "create", "stranger", "--scope", "view,download,modify")
        project = berth(data, "project", "create", "analysis", "--owner", "owner")
        berth(data, "grant", project, "reader", "download")

        layout = base / "layout"
        descriptors = write_layout(layout)
        env = skopeo_env(base / "skopeo")
        creds = f"owner:{owner_token}"
        remote = f"docker://{server.host}/{project}"

        def copy(tag: str, target: str, *flags: str) -> None:
            skopeo(env, "copy", *flags, "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:{tag}",
                   f"{remote}/{target}")

        copy("v1", "tools:v1")
        copy("v1", "tools:latest")  # first the image...
        copy("multi", "tools:latest", "--all")  # ...then latest moves to the index: a history of two
        copy("multi", "tools:multi", "--all")
        copy("v1", "old:v1")  # the repository the trash tests put away
        copy("v1", "many:tag-0")
        built = built_image(base / "built")
        skopeo(env, "copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{base / 'built'}:built",
               f"{remote}/built:v1")
        manifest = (layout / "blobs" / "sha256" / descriptors["v1"]["digest"].split(":")[1]).read_bytes()
        for i in range(1, MANY):
            put_manifest(server, owner_token, f"{project}/many", f"tag-{i}", manifest, OCI_MANIFEST)
        artifact, signature = push_artifact(server, owner_token, f"{project}/results", base)
        image = content_digest(server, owner_token, f"{project}/tools", "v1")
        index = content_digest(server, owner_token, f"{project}/tools", "multi")
        assert (image, index) == (descriptors["v1"]["digest"], descriptors["multi"]["digest"])
        yield Site(server, project, "owner", owner_token, reader_token, stranger_token, image, index, artifact,
                   signature, descriptors["arm64"]["digest"], built["digest"], layout)
    finally:
        server.stop()
