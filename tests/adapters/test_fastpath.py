"""The manifest fast path (adapters/http/fastpath.py) answers exactly as the full app would, errors included.

Both are driven in-process through ASGI on the same requests, generated: GET and HEAD; tags, digests, an index, a
manifest kept in a blob file, a layer's digest; unknown repositories, tags and digests, references that cannot name
anything, invalid names, names outside any project; no token, a valid one, one without the scope, one expired, one
that does not verify, Basic credentials; a trashed repository and a trashed project; Accept headers that include or
exclude the stored type. The fast path answers only plain successes and passes everything else to the full app, so
"identical" holds for errors by construction, and the test proves the part that is not: that the fast path never
answers what the full app would answer otherwise, and that its successes carry the same status, headers and body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters.http import create_app
from adapters.http.fastpath import ManifestFastPath
from cas import BlobStore, Digest
from registry_core.accounts import Accounts
from registry_core.keys import signing_key
from registry_core.manifests import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from registry_core.names import RepositoryName, parse_reference
from registry_core.projects import Projects
from registry_core.registry import Registry
from registry_core.tokens import Scope, TokenService

CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclass(frozen=True)
class World:
    fast: ManifestFastPath
    full: Any  # the app behind the fast path: what answers whatever the fast path does not
    repos: dict[str, str]  # role -> repository name
    references: dict[str, str]  # role -> reference text
    tokens: dict[str, str]  # role -> Authorization header value


def _push(registry: Registry, repo: str, tag: str, seed: bytes) -> tuple[Digest, Digest, Digest]:
    """An image and an index over it, tagged; returns (image digest, index digest, config digest)."""
    name = RepositoryName.parse(repo)
    config = b'{"seed":"' + seed + b'"}'
    registry.ingest_blob(name, config, Digest.of(config))
    image = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": CONFIG, "digest": str(Digest.of(config)), "size": len(config)}, "layers": []}).encode()
    registry.put_manifest(name, parse_reference(tag), image, OCI_MANIFEST)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(image)), "size": len(image)}]}).encode()
    registry.put_manifest(name, parse_reference(f"{tag}-index"), index, OCI_INDEX)
    return Digest.of(image), Digest.of(index), Digest.of(config)


@pytest.fixture
def world(store: BlobStore) -> Iterator[World]:
    registry = Registry(store)
    accounts, projects = Accounts(store), Projects(store)
    accounts.add_user("owner", certified=True)
    accounts.add_user("reader")
    project = projects.create("p", "owner").id
    gone = projects.create("gone", "owner").id
    repos = {"pushed": f"{project}/app", "trashed": f"{project}/old", "trashed-project": f"{gone}/app",
             "unknown": f"{project}/none", "outside": "library/app", "invalid": "Not/A/Name",
             "public": f"{project}/open"}
    image, index, config = _push(registry, repos["pushed"], "v1", b"a")
    _push(registry, repos["trashed"], "v1", b"b")
    _push(registry, repos["trashed-project"], "v1", b"c")
    _push(registry, repos["public"], "v1", b"d")
    projects.trash(repos["trashed"])
    projects.trash(gone)
    projects.grant(repos["public"], "public", "download")
    projects.grant(project, "reader", "download")
    # a manifest pushed as a blob (kept in a file, not inline): the fast path leaves it to the full app
    as_blob = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json", "digest": str(config), "size": 12},
        "layers": []}).encode()
    registry.ingest_blob(RepositoryName.parse(repos["pushed"]), as_blob, Digest.of(as_blob))
    references = {"tag": "v1", "index-tag": "v1-index", "image": str(image), "index": str(index),
                  "config": str(config), "as-blob": str(Digest.of(as_blob)), "unknown-tag": "v2",
                  "unknown-digest": str(Digest.of(b"nothing")), "bad-tag": "-bad", "bad-digest": "sha256:short",
                  "sha512": str(Digest.of(b"x", "sha512")), "long-tag": "t" * 129}
    _, secret = accounts.create_token("reader", ["download"])
    identity = accounts.authenticate(secret)
    assert identity is not None
    service = TokenService(signing_key(store), "berth")
    now = time.time()  # the edge checks access tokens against the real clock

    def bearer(names: list[str], issued: float = now) -> str:
        access = [Scope("repository", repos[n], frozenset({"pull", "view"})) for n in names]
        return "Bearer " + service.issue("reader", access, identity.token_id, issued)[0]

    tokens = {"none": "", "all": bearer(list(repos)), "pushed-only": bearer(["pushed"]), "no-scope": bearer([]),
              "expired": bearer(list(repos), now - 3600), "garbage": "Bearer not.a.token", "basic": "Basic YTpi",
              "anonymous": "Bearer " + service.issue("", [Scope("repository", repos["public"], frozenset({"pull"}))],
                                                     None, now)[0]}
    app = create_app(registry, policy="project")
    assert isinstance(app, ManifestFastPath)
    yield World(app, app.app, repos, references, tokens)
    registry.close()


async def _call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, str],
                                                                                                  bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"registry.test"), *headers], "client": ("127.0.0.1", 4000),
             "server": ("registry.test", 80)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


ACCEPTS = [[], [], [], [OCI_MANIFEST], [OCI_INDEX], [DOCKER_MANIFEST], ["application/*"],
           [f"{OCI_MANIFEST}, {OCI_INDEX}"], [OCI_MANIFEST, OCI_INDEX], ["text/html"], [f"{OCI_INDEX};q=0.5"]]


# Weighted towards requests that succeed (listed several times), so that both ways of answering are exercised often.
REPOS = ["pushed"] * 6 + ["public"] * 2 + ["trashed", "trashed-project", "unknown", "outside", "invalid"]
REFERENCES = ["tag", "index-tag", "image", "index"] * 3 + ["config", "as-blob", "unknown-tag", "unknown-digest",
                                                           "bad-tag", "bad-digest", "sha512", "long-tag"]
TOKENS = ["all"] * 6 + ["pushed-only"] * 2 + ["none", "no-scope", "expired", "garbage", "basic", "anonymous"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "HEAD"]), repo=st.sampled_from(REPOS), reference=st.sampled_from(REFERENCES),
       token=st.sampled_from(TOKENS), accept=st.sampled_from(ACCEPTS))
def test_the_fast_path_answers_as_the_full_app(world: World, method: str, repo: str, reference: str, token: str,
                                               accept: list[str]) -> None:
    path = f"/v2/{world.repos[repo]}/manifests/{world.references[reference]}"
    headers = [(b"accept", value.encode()) for value in accept]
    if world.tokens[token]:
        headers.append((b"authorization", world.tokens[token].encode()))
    fast = asyncio.run(_call(world.fast, method, path, headers))
    full = asyncio.run(_call(world.full, method, path, headers))
    assert fast == full, (method, path, token, accept)
    if method == "HEAD":
        assert fast[2] == b""
    answered_fast = world.fast.answer({"type": "http", "method": method, "path": path, "headers": headers})
    assert (answered_fast is not None) == (fast[0] == 200 and reference != "as-blob")  # every inline success
    event("the fast path answered" if answered_fast is not None else f"the full app answered {fast[0]}")


def test_the_fast_path_answers_the_plain_successes_itself(world: World) -> None:
    """The comparison above is not vacuous: the fast path does answer (it does not hand every request over)."""
    tag = f"/v2/{world.repos['pushed']}/manifests/v1"
    for method in ("GET", "HEAD"):
        answer = world.fast.answer({"type": "http", "method": method, "path": tag,
                                    "headers": [(b"authorization", world.tokens["all"].encode())]})
        assert answer is not None
    assert world.fast.answer({"type": "http", "method": "GET", "path": tag, "headers": []}) is None  # a challenge
