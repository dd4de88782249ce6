"""Access control over HTTP against `berth serve --policy project`: the Docker token flow and the project rules."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from adapters.http.auth import CACHE_BYTES, FORM_MAX, TOKEN_MAX
from registry_core.access import SCOPES_MAX
from registry_core.accounts import Accounts
from registry_core.keys import signing_key
from registry_core.projects import Projects
from registry_core.registry import Registry
from registry_core.tokens import Claims, Scope, TokenService
from tests.registry_core.values import name_of
from tests.serving import ROOT, Place, Server, sha, start_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"



@dataclass
class Setup:
    server: Server
    registry: Registry
    secrets: dict[str, str]
    project: str
    other: str

    def token(self, who: str | None, *scopes: str) -> str:
        auth = ("x", self.secrets[who]) if who else None
        r = httpx.get(f"{self.server.url}/token", params={"service": "berth", "scope": list(scopes)}, auth=auth)
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def client(self, who: str | None, *scopes: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(who, *scopes)}"}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def setup(place: Place) -> Iterator[Setup]:
    """On each store in turn (tests/conftest.py `place`): accounts, tokens, grants and trash are written beside
    the running server, as the CLI writes them, and the server sees them at the next request."""
    server = start_server(place, policy="project")
    registry = place.open_registry()  # the CLI's way: the same store, while the server runs
    accounts, projects = Accounts(registry.store), Projects(registry.store)
    secrets = {}
    for name, certified in (("owner", True), ("alice", True), ("carol", False), ("dave", True), ("erin", True)):
        accounts.add_user(name, certified=certified)
        secrets[name] = accounts.create_token(name, ["view", "download", "modify"])[1]
    secrets["reader"] = accounts.create_token("alice", ["download"])[1]  # alice, but a read-only token
    project = projects.create("main", "owner").id
    other = projects.create("other", "owner").id
    projects.grant(project, "alice", "edit")
    projects.grant(project, "carol", "edit")
    projects.grant(project, "dave", "download")
    projects.grant(project, "erin", "edit-delete")
    projects.grant(project, "public", "view")
    yield Setup(server, registry, secrets, project, other)
    server.stop()
    registry.close()


def push(client: httpx.Client, repo: str, tag: str = "v1") -> tuple[int, bytes]:
    config = json.dumps({"tag": tag, "n": os.urandom(4).hex()}).encode()
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(config)}, content=config)
    if r.status_code != 201:
        return r.status_code, b""
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": []}).encode()
    r = client.put(f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
    return r.status_code, body


def denied(r: httpx.Response, *words: str) -> bool:
    """A 403 DENIED whose message names the rule that refused (each of `words` appears in it)."""
    if r.status_code != 403:
        return False
    error = r.json()["errors"][0]
    return error["code"] == "DENIED" and all(w in error["message"] for w in words)


def push_refusal(client: httpx.Client, repo: str, tag: str = "v1") -> httpx.Response:
    """The first answer of a push (the blob upload) when it is refused."""
    config = b"{}"
    return client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(config)}, content=config)


def test_challenge_and_anonymous_token(setup: Setup) -> None:
    r = httpx.get(f"{setup.server.url}/v2/")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == f'Bearer realm="{setup.server.url}/token",service="berth"'
    repo = f"{setup.project}/app"
    r = httpx.get(f"{setup.server.url}/v2/{repo}/tags/list")
    assert r.status_code == 401 and f'scope="repository:{repo}:pull"' in r.headers["WWW-Authenticate"]
    with setup.client(None) as anonymous:
        assert anonymous.get("/v2/").status_code == 200
    r = httpx.get(f"{setup.server.url}/v2/", headers={"Authorization": "Bearer not.a.jwt"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_a_challenge_to_a_request_with_a_body_closes_the_connection(setup: Setup) -> None:
    """The 401 is answered without reading the body: `Connection: close`, or the client's next request (the token
    the challenge sent it to fetch) may go out on a connection the server then drops."""
    with httpx.Client(base_url=setup.server.url) as client:
        r = client.patch(f"/v2/{setup.project}/app/blobs/uploads/abc", content=os.urandom(1 << 20))
        assert r.status_code == 401 and r.headers["connection"] == "close"
        assert client.get("/token", params={"service": "berth"}).status_code == 200
        assert "connection" not in client.get("/v2/").headers  # nothing to read there: the connection stays open


def test_token_endpoint_grants_the_intersection(setup: Setup) -> None:
    repo = f"{setup.project}/app"
    r = httpx.get(f"{setup.server.url}/token", auth=("ignored", setup.secrets["dave"]), params={
        "service": "berth", "scope": [f"repository:{repo}:pull,push", "repository:localhost:5000/syn1/x:pull"]})
    answer = r.json()
    assert answer["token"] == answer["access_token"] and answer["expires_in"] == 300 and "issued_at" in answer
    service = TokenService(signing_key(setup.registry.store), "berth")
    claims = service.verify(answer["token"], time.time())
    assert claims.subject == "dave" and claims.access == (
        Scope("repository", repo, frozenset({"pull", "view"})),  # partial (no push), not an error
        Scope("repository", "localhost:5000/syn1/x", frozenset()))  # host:port in a scope name parses
    assert "refresh_token" not in answer


def test_project_rules(setup: Setup) -> None:
    repo = f"{setup.project}/rules"
    everything = f"repository:{repo}:pull,push,delete"
    with setup.client("alice", everything) as alice:
        status, body = push(alice, repo)
        assert status == 201  # edit + certified + modify: push creates the repository
        # the policy refuses (edit is not edit-delete): 403 saying so, not a challenge the client would retry
        assert denied(alice.delete(f"/v2/{repo}/manifests/{sha(body)}"), "alice has only edit", "edit-delete")
    with setup.client("carol", everything) as carol:
        assert denied(push_refusal(carol, repo), "carol is not certified")
    with setup.client("reader", everything) as reader:
        assert denied(push_refusal(reader, repo), "lacks the modify scope")  # alice's download-only token
        assert reader.get(f"/v2/{repo}/manifests/v1").status_code == 200
    with setup.client("dave", everything) as dave:
        assert dave.get(f"/v2/{repo}/manifests/v1").status_code == 200
        r = dave.put(f"/v2/{repo}/manifests/v2", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert denied(r, "dave has only download", "push needs edit")
    with setup.client("alice", f"repository:{repo}:pull") as alice:  # the token did not ask for push: 401
        r = push_refusal(alice, repo)
        assert r.status_code == 401 and 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
        assert f'scope="repository:{repo}:pull,push"' in r.headers["WWW-Authenticate"]
    with setup.client(None, everything) as anonymous:
        assert anonymous.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]  # public view
        r = anonymous.get(f"/v2/{repo}/manifests/v1")
        assert r.status_code == 401 and "log in" in r.json()["errors"][0]["message"]  # but no download
    with setup.client("erin", everything) as erin:
        status, body = push(erin, repo, "gone")
        assert status == 201
        assert erin.delete(f"/v2/{repo}/manifests/{sha(body)}").status_code == 202
    with setup.client("alice", f"repository:{setup.other}/x:pull,push") as alice:
        assert denied(push_refusal(alice, f"{setup.other}/x"), "alice has no grant")  # not on the other project
    with setup.client("alice", "repository:syn99999999/x:pull,push") as alice:
        assert denied(push_refusal(alice, "syn99999999/x"), "alice has no grant")  # a project that does not exist
    with setup.client("alice", "repository:myorg/app:pull,push") as alice:  # a valid OCI name, but no project
        assert denied(push_refusal(alice, "myorg/app"), "not inside a project", "syn12345/app")


def test_revoked_token_stops_writes_at_once(setup: Setup) -> None:
    accounts = Accounts(setup.registry.store)
    record, secret = accounts.create_token("alice", ["view", "download", "modify"])
    repo = f"{setup.project}/revoked"
    token = httpx.get(f"{setup.server.url}/token", auth=("x", secret),
                      params={"service": "berth", "scope": f"repository:{repo}:pull,push"}).json()["token"]
    with httpx.Client(base_url=setup.server.url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert push(client, repo)[0] == 201
        accounts.revoke(record.id)
        r = push_refusal(client, repo)  # the access token is still valid for minutes: the write is refused now
        assert r.status_code == 401 and "was revoked" in r.json()["errors"][0]["message"]
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = httpx.get(f"{setup.server.url}/token", auth=("x", secret))
    assert r.status_code == 401 and "was revoked" in r.json()["errors"][0]["message"]
    r = httpx.get(f"{setup.server.url}/token", auth=("x", "not-a-token"))
    assert r.status_code == 401 and "personal access token" in r.json()["errors"][0]["message"]


def test_local_grants_replace_inherited_ones(setup: Setup) -> None:
    repo = f"{setup.project}/private"
    projects = Projects(setup.registry.store)
    projects.grant(repo, "dave", "edit")
    scope = f"repository:{repo}:pull,push"
    with setup.client("dave", scope) as dave:
        assert push(dave, repo)[0] == 201
    with setup.client("alice", scope) as alice:
        # the project's grant does not reach here
        assert denied(alice.get(f"/v2/{repo}/manifests/v1"), "alice has no grant")
    with setup.client("owner", scope) as owner:
        assert owner.get(f"/v2/{repo}/manifests/v1").status_code == 200  # the owner always does


def test_catalog_lists_only_what_the_caller_may_view(setup: Setup) -> None:
    with setup.client("owner", f"repository:{setup.other}/hidden:pull,push") as owner:
        assert push(owner, f"{setup.other}/hidden")[0] == 201
    with setup.client("alice", "registry:catalog:*") as alice:
        names = alice.get("/v2/_catalog").json()["repositories"]
    assert f"{setup.other}/hidden" not in names and all(n.startswith(setup.project) for n in names) and names
    with setup.client("owner", "registry:catalog:*") as owner:
        assert f"{setup.other}/hidden" in owner.get("/v2/_catalog").json()["repositories"]


def test_trash_answers_as_denied_at_once_and_purge_drops_it(setup: Setup) -> None:
    repo = f"{setup.project}/trashed"
    scope = f"repository:{repo}:pull,push"
    with setup.client("alice", scope) as alice:
        assert push(alice, repo)[0] == 201
        projects = Projects(setup.registry.store)
        projects.trash(repo)
        # a token issued before the trash: refused at once, saying why
        assert denied(alice.get(f"/v2/{repo}/manifests/v1"), "in the trash")
        assert denied(push_refusal(alice, repo), "in the trash")  # the name stays reserved
        projects.restore(repo)
        assert alice.get(f"/v2/{repo}/manifests/v1").status_code == 200
        projects.trash(repo)
        assert setup.registry.purge_repository(name_of(repo)) == 1
        projects.forget(repo)
    with setup.client("alice", scope) as alice:
        assert alice.get(f"/v2/{repo}/manifests/v1").status_code == 404  # purged: the name is free again
        assert push(alice, repo, "v1")[0] == 201


def test_mount_needs_pull_on_the_source(setup: Setup) -> None:
    data = os.urandom(3000)
    hidden, target = f"{setup.other}/source", f"{setup.project}/mounted"
    with setup.client("owner", f"repository:{hidden}:pull,push") as owner:
        assert owner.post(f"/v2/{hidden}/blobs/uploads/", params={"digest": sha(data)},
                          content=data).status_code == 201
    with setup.client("alice", f"repository:{target}:pull,push", f"repository:{hidden}:pull") as alice:
        r = alice.post(f"/v2/{target}/blobs/uploads/", params={"mount": sha(data), "from": hidden})
        assert r.status_code == 202  # no pull on `from`: an ordinary upload, and the blob stays out of reach
        assert alice.head(f"/v2/{target}/blobs/{sha(data)}").status_code == 404
    with setup.client("owner", f"repository:{target}:pull,push", f"repository:{hidden}:pull") as owner:
        r = owner.post(f"/v2/{target}/blobs/uploads/", params={"mount": sha(data), "from": hidden})
        assert r.status_code == 201


def test_mount_challenge_asks_for_pull_on_the_source(setup: Setup) -> None:
    data = os.urandom(2000)
    source, target = f"{setup.project}/mount-source", f"{setup.project}/mount-target"
    with setup.client("alice", f"repository:{source}:pull,push") as alice:
        assert alice.post(f"/v2/{source}/blobs/uploads/", params={"digest": sha(data)},
                          content=data).status_code == 201
    url = f"{setup.server.url}/v2/{target}/blobs/uploads/"
    r = httpx.post(url, params={"mount": sha(data), "from": source})
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    assert f'scope="repository:{target}:pull,push repository:{source}:pull"' in challenge
    # a client that asks for exactly what the challenge named gets the mount (201), not a fallback upload
    scopes = challenge.split('scope="', 1)[1].split('"', 1)[0].split(" ")
    with setup.client("alice", *scopes) as alice:
        r = alice.post(f"/v2/{target}/blobs/uploads/", params={"mount": sha(data), "from": source})
        assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == sha(data)


def test_upload_sessions_belong_to_their_owner(setup: Setup) -> None:
    repo = f"{setup.project}/uploads"
    scope = f"repository:{repo}:pull,push"
    data = os.urandom(10_000)
    with setup.client("alice", scope) as alice, setup.client("erin", scope) as erin:
        location = alice.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        assert alice.patch(location, content=data[:5000]).status_code == 202
        r = erin.patch(location, content=data[5000:])
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        assert erin.put(location, params={"digest": sha(data)}).status_code == 404
    # alice's token expires during a long push: she may still finish it; the same token opens nothing new
    service = TokenService(signing_key(setup.registry.store), "berth")
    identity = Accounts(setup.registry.store).authenticate(setup.secrets["alice"])
    assert identity is not None
    old, _ = service.issue("alice", [Scope("repository", repo, frozenset({"pull", "push"}))], identity.token_id,
                           time.time() - 400)
    with httpx.Client(base_url=setup.server.url, headers={"Authorization": f"Bearer {old}"}) as expired:
        assert expired.get("/v2/").status_code == 401
        assert expired.post(f"/v2/{repo}/blobs/uploads/").status_code == 401
        assert expired.patch(location, content=data[5000:]).status_code == 202
        assert expired.put(location, params={"digest": sha(data)}).status_code == 201


def test_refresh_tokens_and_revocation(setup: Setup) -> None:
    accounts = Accounts(setup.registry.store)
    record, secret = accounts.create_token("dave", ["download"], label="refresh test")
    repo = f"{setup.project}/rules"
    r = httpx.post(f"{setup.server.url}/token", data={
        "grant_type": "password", "username": "dave", "password": secret, "service": "berth",
        "scope": f"repository:{repo}:pull", "access_type": "offline", "client_id": "test"})
    refresh = r.json()["refresh_token"]
    form = {"grant_type": "refresh_token", "refresh_token": refresh, "service": "berth",
            "scope": f"repository:{repo}:pull"}
    assert httpx.post(f"{setup.server.url}/token", data=form).status_code == 200
    accounts.revoke(record.id)
    assert httpx.post(f"{setup.server.url}/token", data=form).status_code == 401
    assert httpx.get(f"{setup.server.url}/token", auth=("dave", secret)).status_code == 401


def test_failed_logins_are_slowed_down_and_secrets_never_logged(setup: Setup) -> None:
    url = f"{setup.server.url}/token"
    token = setup.token("alice", f"repository:{setup.project}/rules:pull")  # before this address gets throttled
    statuses = [httpx.get(url, auth=("x", f"berth_{i:016x}_{'A' * 43}")).status_code for i in range(12)]
    # counted in the index, so both workers see one count (earlier tests' refused logins are in it too)
    assert statuses == sorted(statuses) and statuses.count(401) <= 5 and statuses[-1] == 429
    r = httpx.get(url, auth=("x", "wrong"))
    assert r.status_code in (401, 429) and "wrong" not in r.text
    assert statuses[-1] == 429 and int(httpx.get(url, auth=("x", "wrong")).headers["Retry-After"]) >= 1
    # a correct token is never throttled: a valid user behind the guesser's NAT or proxy still logs in
    assert httpx.get(url, auth=("x", setup.secrets["alice"])).status_code == 200
    marker = f"/v2/{setup.project}/logged-{os.urandom(4).hex()}/tags/list"
    httpx.get(f"{setup.server.url}{marker}", headers={"Authorization": f"Bearer {token}"})
    log = setup.server.wait_for_log(marker)  # every request before it is in the log too
    assert all(secret.split("_", 2)[2] not in log for secret in setup.secrets.values())  # (the secret part)
    assert token not in log and token.split(".")[2] not in log


def test_hostile_token_requests_are_bounded(setup: Setup) -> None:
    url = f"{setup.server.url}/token"
    many = [f"repository:{setup.project}/r{i}:pull" for i in range(SCOPES_MAX + 1)]
    r = httpx.get(url, params={"service": "berth", "scope": many})
    assert r.status_code == 400 and f"at most {SCOPES_MAX} scopes" in r.json()["errors"][0]["message"]
    r = httpx.post(url, data={"grant_type": "password", "password": "x" * (FORM_MAX + 10)})
    assert r.status_code == 413
    r = httpx.post(url, content=b"\xff\xfe=\xff", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    huge = "a" * (TOKEN_MAX + 1)
    r = httpx.get(f"{setup.server.url}/v2/", headers={"Authorization": f"Bearer {huge}"})
    assert r.status_code == 401 and "longer than" in r.json()["errors"][0]["message"]


def test_the_first_start_hint_names_the_store_it_runs_on(setup: Setup) -> None:
    """On an empty store the server created the site admin and printed how to go on: the token command it printed,
    run as printed, makes a token of the admin's on the store the server runs on (the data directory, or the
    distributed store's two URLs), and the server honours it."""
    printed = next(line for line in setup.server.log_text().splitlines() if "token create admin" in line)
    command = shlex.split(printed.strip().removeprefix("TOKEN=$(").removesuffix(")"))
    assert command[:3] == ["scripts/berth", "token", "create"]
    assert (command[-4:] == ["--metadata", setup.server.place.metadata, "--blobs", setup.server.place.blobs]
            if setup.server.place.is_distributed else command[-2:] == ["--data", str(setup.server.data)])
    done = subprocess.run([sys.executable, "-m", "adapters.cli", *command[1:]], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert done.returncode == 0, done.stderr
    r = httpx.get(f"{setup.server.url}/token", auth=("admin", done.stdout.strip()),
                  params={"service": "berth", "scope": "registry:catalog:*"})
    assert r.status_code == 200 and TokenService(signing_key(setup.registry.store), "berth").verify(
        r.json()["token"], time.time()).subject == "admin"


def test_realm_never_echoes_a_hostile_host(setup: Setup) -> None:
    for host in (b'evil" ,x="y', b"a b", b"x" * 300, "h\u00e9st".encode()):
        r = httpx.get(f"{setup.server.url}/v2/", headers={b"Host": host})
        challenge = r.headers["WWW-Authenticate"]
        assert r.status_code == 401 and challenge.startswith(f'Bearer realm="http://{setup.server.host}/token"')
    r = httpx.get(f"{setup.server.url}/v2/", headers={"Host": "registry.example.org:443"})
    assert 'realm="http://registry.example.org:443/token"' in r.headers["WWW-Authenticate"]


def test_token_cache_is_bounded_by_bytes() -> None:
    """The verified-token cache holds at most CACHE_BYTES of tokens, however large and many they are."""
    from adapters.http import auth as module

    cache = module.Auth.__new__(module.Auth)
    cache._verified, cache._verified_bytes = OrderedDict(), 0
    claims = Claims("u", (), time.time() + 300, None)
    for i in range(3000):
        cache._remember(f"{i:08d}" + "t" * 8000, claims)
        assert cache._verified_bytes <= CACHE_BYTES
    assert cache._verified_bytes == sum(map(len, cache._verified)) and "00002999" + "t" * 8000 in cache._verified
