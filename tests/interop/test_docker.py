"""Docker, the client users actually run: `docker login` with a personal access token, build, tag, push, pull by
tag, by the default tag and by digest, and the refusals as docker prints them. A project-policy `berth serve` and
a dockerd of the module's own (tests/interop/dockerd.py); nothing comes from the internet (images are FROM scratch).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry_core.accounts import Accounts
from registry_core.projects import Projects
from tests.interop.dockerd import Dockerd, tool
from tests.serving import Place, Server, start_server

# What `docker push` prints last: "<tag>: digest: sha256:<hex> size: <manifest bytes>".
_PUSHED = re.compile(r"^(\S+): digest: (sha256:[0-9a-f]{64}) size: (\d+)$", re.MULTILINE)
_MANIFEST_TYPES = ", ".join(["application/vnd.docker.distribution.manifest.v2+json",
                             "application/vnd.oci.image.manifest.v1+json"])


@dataclass(frozen=True)
class Site:
    """pusher (certified) owns `project`; reader may download it; novice (not certified) may edit it; outsider
    (certified) has no grant on it. `tokens` maps a name to a personal access token (pusher-download: pusher's
    download-only token)."""
    server: Server
    project: str
    tokens: dict[str, str]

    @property
    def host(self) -> str:
        return self.server.host


@pytest.fixture(scope="module")
def site(place: Place) -> Iterator[Site]:
    """On each store in turn (tests/conftest.py `place`)."""
    server = start_server(place, policy="project")
    with place.open_registry() as registry:
        accounts, projects = Accounts(registry.store), Projects(registry.store)
        for name, certified in (("pusher", True), ("reader", False), ("novice", False), ("outsider", True)):
            accounts.add_user(name, certified=certified)
        everything = ["view", "download", "modify"]
        tokens = {name: accounts.create_token(name, everything)[1] for name in ("pusher", "novice", "outsider")}
        tokens["reader"] = accounts.create_token("reader", ["download"])[1]
        tokens["pusher-download"] = accounts.create_token("pusher", ["download"])[1]
        project = projects.create("docker", "pusher").id
        projects.grant(project, "reader", "download")
        projects.grant(project, "novice", "edit")
    yield Site(server, project, tokens)
    server.stop()


class Docker:
    """The docker CLI as one user: a DOCKER_CONFIG of its own, which is where `docker login` writes."""

    def __init__(self, daemon: Dockerd, config: Path) -> None:
        self.config = config
        self._env = daemon.env(config)
        self._binary = tool("docker")

    def attempt(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self._binary, *args], input=stdin, capture_output=True, text=True, timeout=120,
                              env=self._env)

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = self.attempt(*args, stdin=stdin)
        assert result.returncode == 0, f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def refused(self, *args: str) -> str:
        """Run a command that must fail with docker's words for a refusal; return its stderr."""
        result = self.attempt(*args)
        assert result.returncode != 0, f"docker {' '.join(args)} succeeded:\n{result.stdout}"
        assert re.search(r"denied|unauthorized", result.stderr, re.IGNORECASE), result.stderr
        return result.stderr

    def login(self, host: str, token: str) -> None:
        # The user name is ignored by Berth: the token says who logs in.
        assert "Login Succeeded" in self("login", "-u", "anything", "--password-stdin", host, stdin=token).stdout

    def build(self, context: Path, tag: str) -> str:
        """Build a FROM-scratch image of two small files (unique content) and return its image id."""
        context.mkdir(parents=True, exist_ok=True)
        (context / "hello.txt").write_text(f"hello from {tag}\n")
        (context / "data.bin").write_bytes(os.urandom(512))
        (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\nCOPY data.bin /data/data.bin\n")
        self("build", "-q", "-t", tag, str(context))
        return self.image_id(tag)

    def image_id(self, reference: str) -> str:
        return self("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()

    def push(self, reference: str) -> tuple[str, str, int]:
        """Push and return (tag, digest, size) as docker printed them."""
        printed = _PUSHED.findall(self("push", reference).stdout)
        assert len(printed) == 1, printed
        tag, digest, size = printed[0]
        return tag, digest, int(size)


@pytest.fixture(scope="module")
def docker_as(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Docker]:
    """One docker CLI per user name, each with its own config dir; all share the module's daemon."""
    base = tmp_path_factory.mktemp("docker-config")
    return lambda user: Docker(dockerd, base / user)


def served_manifest(site: Site, name: str, reference: str, token: str) -> tuple[int, str, bytes]:
    """(status, Docker-Content-Digest, body) of GET /v2/<name>/manifests/<reference>, with a bearer token obtained
    the way every client does: the challenge of /v2/, then its realm with the personal access token as password."""
    try:
        urllib.request.urlopen(f"{site.server.url}/v2/", timeout=10)
        raise AssertionError("/v2/ answered without a challenge under the project policy")
    except urllib.error.HTTPError as error:
        challenge = dict(re.findall(r'(\w+)="([^"]*)"', error.headers["WWW-Authenticate"]))
    query = urllib.parse.urlencode({"service": challenge["service"], "scope": f"repository:{name}:pull"})
    basic = base64.b64encode(f"anything:{token}".encode()).decode()
    request = urllib.request.Request(f"{challenge['realm']}?{query}", headers={"Authorization": f"Basic {basic}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        bearer = json.loads(response.read())["token"]
    request = urllib.request.Request(f"{site.server.url}/v2/{name}/manifests/{reference}",
                                     headers={"Authorization": f"Bearer {bearer}", "Accept": _MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Docker-Content-Digest"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, "", error.read()


@dataclass(frozen=True)
class Published:
    name: str  # <project>/app, pushed as :v1 and as the default tag (latest)
    image_id: str
    pushed: dict[str, tuple[str, int]]  # tag -> (digest, size) as `docker push` printed them


@pytest.fixture(scope="module")
def published(site: Site, docker_as: Callable[[str], Docker], tmp_path_factory: pytest.TempPathFactory) -> Published:
    """pusher logs in, builds <project>/app:v1, tags it without a tag (= latest) and pushes both references."""
    pusher = docker_as("pusher")
    pusher.login(site.host, site.tokens["pusher"])
    name = f"{site.project}/app"
    image_id = pusher.build(tmp_path_factory.mktemp("context"), f"{site.host}/{name}:v1")
    pusher("tag", f"{site.host}/{name}:v1", f"{site.host}/{name}")
    pushed = {}
    for reference in (f"{site.host}/{name}:v1", f"{site.host}/{name}"):
        tag, digest, size = pusher.push(reference)
        pushed[tag] = (digest, size)
    assert set(pushed) == {"v1", "latest"}
    return Published(name, image_id, pushed)


def test_login_takes_the_token_as_password_and_refuses_a_wrong_one(site: Site,
                                                                   docker_as: Callable[[str], Docker]) -> None:
    stranger = docker_as("stranger")
    wrong = "berth_0123456789abcdef_" + "A" * 43  # well formed, never issued
    refused = stranger.attempt("login", "-u", "pusher", "--password-stdin", site.host, stdin=wrong)
    assert refused.returncode != 0 and "unknown personal access token" in refused.stderr, refused.stderr
    assert not (stranger.config / "config.json").exists() or site.host not in (
        json.loads((stranger.config / "config.json").read_text()).get("auths", {}))
    stranger.login(site.host, site.tokens["reader"])
    assert site.host in json.loads((stranger.config / "config.json").read_text())["auths"]


def test_push_prints_the_digest_the_registry_serves(site: Site, published: Published) -> None:
    for tag, (digest, size) in published.pushed.items():
        status, served, body = served_manifest(site, published.name, tag, site.tokens["reader"])
        assert status == 200, body
        assert served == digest == "sha256:" + hashlib.sha256(body).hexdigest()
        assert size == len(body)
        assert json.loads(body)["config"]["digest"] == published.image_id  # the image id is the config's digest
    assert published.pushed["v1"] == published.pushed["latest"]  # one image under two tags


def test_pull_by_tag_by_the_default_tag_and_by_digest(site: Site, published: Published,
                                                      docker_as: Callable[[str], Docker]) -> None:
    reader = docker_as("reader")  # a download-only token is all a pull needs
    reader.login(site.host, site.tokens["reader"])
    remote = f"{site.host}/{published.name}"
    digest = published.pushed["v1"][0]
    for reference, shown in ((f"{remote}:v1", "v1: Pulling from"), (remote, "Using default tag: latest"),
                             (f"{remote}@{digest}", f"{digest}: Pulling from")):
        reader("rmi", "--force", published.image_id)  # every tag and digest of the image, so the pull is real
        assert reader.attempt("image", "inspect", published.image_id).returncode != 0
        pulled = reader("pull", reference).stdout
        assert shown in pulled and f"Digest: {digest}" in pulled, pulled
        assert reader.image_id(reference) == published.image_id
    repo_digests = json.loads(reader("image", "inspect", "--format", "{{json .RepoDigests}}", remote + "@" + digest
                                     ).stdout)
    assert repo_digests == [f"{remote}@{digest}"]


def test_refusals_as_docker_shows_them(site: Site, published: Published, docker_as: Callable[[str], Docker],
                                       tmp_path: Path) -> None:
    outsider = docker_as("outsider")
    outsider.login(site.host, site.tokens["outsider"])
    no_grant = outsider.refused("pull", f"{site.host}/{published.name}:v1")

    # One local image for the refused pushes, under a tag of each refused pusher's.
    pushers = {"reader": "reader", "novice": "novice", "download-token": "pusher-download"}
    local = docker_as("builder").build(tmp_path / "context", "berth-test/refused:v1")
    refusals = {"pull without a grant": no_grant}
    for tag, token in pushers.items():
        docker = docker_as(f"refused-{tag}")
        docker.login(site.host, site.tokens[token])
        docker("tag", local, f"{site.host}/{site.project}/app:{tag}")
        refusals[f"push by {tag}"] = docker.refused("push", f"{site.host}/{site.project}/app:{tag}")
        status, _, _ = served_manifest(site, published.name, tag, site.tokens["pusher"])
        assert status == 404, f"a refused push by {tag} left its tag"
    # docker prints the registry's message: each names the rule that refused
    expected = {"pull without a grant": "denied: outsider has no grant on",
                "push by reader": "denied: reader has only download on",
                "push by novice": "denied: account novice is not certified",
                "push by download-token": "denied: the personal access token lacks the modify scope"}
    for case, words in expected.items():
        assert words in refusals[case], f"{case}: docker said {refusals[case]!r}"
