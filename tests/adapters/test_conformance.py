"""The OCI distribution-spec v1.1 conformance suite (opencontainers/distribution-spec, `conformance/`), ported.

Each test is one spec of the suite (its file and `Specify` text in the docstring), with the suite's requests in the
suite's order and the suite's assertions, no more and no fewer; where the suite says "may" (201 or 202, 202 or 404)
so do we. State handed from spec to spec (a tag, the last response) lives in `Suite.state`, as it lives in the Go
closures. The whole sequence runs on a fresh store each time, a data directory (`[…-embedded]`) and PostgreSQL + S3
(`[…-distributed]`, tests/conftest.py `new_place`): `berth serve --policy open`, and `berth serve --policy project`
where every request first goes out anonymous and follows the Bearer challenge the way the suite's client does
(tests/adapters/oci_suite.py), with a personal access token as the Basic password at the realm.
Every policy and order runs on the embedded store; two runs (open manifests-first, project blobs-first) on the
distributed store, and two more serve `create_app` over `BlobStore.in_memory()` on a thread of the test process
(tests/serving.py `serve_in_process`): the same suite proves the in-memory store.

The suite's environment here: OCI_NAMESPACE `<project>/conformance` (the open policy: `oci/conformance`),
OCI_CROSSMOUNT_NAMESPACE `<project>/crossmount` (open: the suite's own default, `conformance-<uuid>`),
OCI_TEST_PULL/PUSH/CONTENT_DISCOVERY/CONTENT_MANAGEMENT all on, OCI_AUTOMATIC_CROSSMOUNT=0 (Berth never mounts
without `from`: knowing a digest is not a read permission), OCI_DELETE_MANIFEST_BEFORE_BLOBS both ways (the
suite's default, true, and false). Not set: OCI_TAG_NAME/OCI_MANIFEST_DIGEST/OCI_BLOB_DIGEST/OCI_TAG_LIST (they
replace the setup pushes with content already there), OCI_AUTH_SCOPE (it replaces the challenge's scope), and
OCI_HIDE_SKIPPED_WORKFLOWS and OCI_REPORT_DIR, which change the report only.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cas import BlobStore
from registry_core.accounts import Accounts
from registry_core.projects import Projects
from registry_core.registry import Registry
from tests.adapters.oci_suite import (
    ANNOTATION,
    ARTIFACT_TYPE_FILTER,
    EMPTY_JSON_DIGEST,
    EMPTY_LAYER_TAG,
    ERROR_CODES,
    NONEXISTENT_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    TEST_TAG,
    Blob,
    ChunkedBlob,
    Reggie,
    SuiteData,
    error_codes,
    relative_location,
    tag_list,
)
from tests.conftest import new_place
from tests.serving import InProcessServer, Server, serve_in_process, start_server

OCTET = "application/octet-stream"


@dataclass(frozen=True)
class Environment:
    """What one run of the suite is given: the server's policy and the suite's switches."""
    policy: str
    delete_manifest_before_blobs: bool  # OCI_DELETE_MANIFEST_BEFORE_BLOBS
    automatic_crossmount: bool | None = False  # OCI_AUTOMATIC_CROSSMOUNT (None: unset)
    store: str = "embedded"  # `berth serve` on a data directory; "distributed": `berth serve` on PostgreSQL + S3;
    #                          "in-memory": create_app over BlobStore.in_memory()

    def __str__(self) -> str:
        order = "manifests-first" if self.delete_manifest_before_blobs else "blobs-first"
        return f"{self.policy}-{order}-{self.store}"


# Every policy and order on the embedded store; on the others, two runs that between them take each policy and each
# order once (a run on the distributed store costs ~3 times one on the embedded store: kept lean).
RUNS = [Environment("open", True), Environment("project", True), Environment("open", False),
        Environment("project", False)]
RUNS += [Environment("open", True, store=store) for store in ("distributed", "in-memory")]
RUNS += [Environment("project", False, store=store) for store in ("distributed", "in-memory")]


class SuiteWarning(UserWarning):
    """What the suite prints as WARNING without failing (a feature the registry may lack)."""


@dataclass
class Suite:
    env: Environment
    server: Server | InProcessServer
    client: Reggie
    namespace: str
    crossmount: str
    data: SuiteData = field(default_factory=SuiteData)
    state: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        warnings.warn(message, SuiteWarning, stacklevel=2)

    def do(self, method: str, path: str, *, name: str = "", reference: str = "", digest: str = "",
           query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
           body: bytes | None = None) -> httpx.Response:
        request = self.client.new_request(method, path, name=name, reference=reference, digest=digest)
        for key, value in (query or {}).items():
            request.query(key, value)
        for key, value in (headers or {}).items():
            request.header(key, value)
        if body is not None:
            request.body(body)
        return self.client.do(request)


@pytest.fixture(scope="module", params=RUNS, ids=str)
def suite(request: pytest.FixtureRequest) -> Iterator[Suite]:
    env: Environment = request.param
    if env.store == "in-memory":
        registry = Registry(BlobStore.in_memory())
        server: Server | InProcessServer = serve_in_process(registry, policy=env.policy)
    else:
        place = new_place(env.store, request)
        server = start_server(place, policy=env.policy)
        registry = place.open_registry()  # the CLI's way: the same store, the server running
    try:
        if env.policy == "project":
            accounts, projects = Accounts(registry.store), Projects(registry.store)
            accounts.add_user("conformance", certified=True)
            secret = accounts.create_token("conformance", ["view", "download", "modify"])[1]
            project = projects.create("conformance", "conformance").id
            namespace, crossmount = f"{project}/conformance", f"{project}/crossmount"
            client = Reggie(server.url, namespace, "conformance", secret)
        else:
            namespace, crossmount = "oci/conformance", f"conformance-{uuid.uuid4()}"
            client = Reggie(server.url, namespace)
        yield Suite(env, server, client, namespace, crossmount)
        client.close()
    finally:
        server.stop()
        registry.close()


def show(r: httpx.Response) -> str:
    return f"{r.request.method} {r.request.url} -> {r.status_code} {dict(r.headers)} {r.text[:300]!r}"


def success(r: httpx.Response) -> bool:
    return 200 <= r.status_code < 300


def populate(suite: Suite, blob: Blob) -> httpx.Response:
    """The setup specs' push of a blob: POST a session, PUT the blob to its Location with ?digest."""
    r = suite.do("POST", "/v2/<name>/blobs/uploads/")
    return suite.do("PUT", relative_location(r), query={"digest": blob.digest},
                    headers={"Content-Type": OCTET, "Content-Length": blob.length}, body=blob.content)


def put_manifest(suite: Suite, reference: str, manifest: Blob, media_type: str = OCI_MANIFEST) -> httpx.Response:
    return suite.do("PUT", "/v2/<name>/manifests/<reference>", reference=reference,
                    headers={"Content-Type": media_type}, body=manifest.content)


def delete(suite: Suite, kind: str, digest: str, allowed: tuple[int, ...]) -> None:
    """A teardown delete: any 2xx, or one of `allowed` (the suite's 404/405 escapes, which differ per spec)."""
    r = suite.do("DELETE", f"/v2/<name>/{kind}/<digest>", digest=digest)
    assert success(r) or r.status_code in allowed, show(r)


def index_of(r: httpx.Response) -> dict[str, Any]:
    value = json.loads(r.content)
    assert isinstance(value, dict)
    return value


# ---------------------------------------------------------------------------------------------------- 01 Pull ----

def test_pull_setup_populate_blobs_layer_and_manifests(suite: Suite) -> None:
    """01_pull_test.go › Setup: "Populate registry with test blob" (configs[0], configs[1]), "Populate registry with
    test layer", "Populate registry with test manifest" (manifests[0] as tag tagtest0; manifests[1] by digest)."""
    d = suite.data
    for blob in (d.configs[0], d.configs[1], d.layer):
        r = populate(suite, blob)
        assert success(r), show(r)
    suite.state["tag"] = TEST_TAG
    r = put_manifest(suite, TEST_TAG, d.manifests[0])
    assert success(r), show(r)
    r = put_manifest(suite, d.manifests[1].digest, d.manifests[1])
    assert success(r), show(r)


def test_pull_head_nonexistent_blob(suite: Suite) -> None:
    """01_pull_test.go › Pull blobs: "HEAD request to nonexistent blob should result in 404 response"."""
    r = suite.do("HEAD", "/v2/<name>/blobs/<digest>", digest=suite.data.dummy_digest)
    assert r.status_code == 404, show(r)


def test_pull_head_existing_blob(suite: Suite) -> None:
    """01_pull_test.go › Pull blobs: "HEAD request to existing blob should yield 200"."""
    digest = suite.data.configs[0].digest
    r = suite.do("HEAD", "/v2/<name>/blobs/<digest>", digest=digest)
    assert r.status_code == 200, show(r)
    if r.headers.get("Docker-Content-Digest"):
        assert r.headers["Docker-Content-Digest"] == digest


def test_pull_get_nonexistent_blob(suite: Suite) -> None:
    """01_pull_test.go › Pull blobs: "GET nonexistent blob should result in 404 response"."""
    r = suite.do("GET", "/v2/<name>/blobs/<digest>", digest=suite.data.dummy_digest)
    assert r.status_code == 404, show(r)


def test_pull_get_existing_blob(suite: Suite) -> None:
    """01_pull_test.go › Pull blobs: "GET request to existing blob URL should yield 200"."""
    r = suite.do("GET", "/v2/<name>/blobs/<digest>", digest=suite.data.configs[0].digest)
    assert r.status_code == 200, show(r)


def test_pull_head_nonexistent_manifest(suite: Suite) -> None:
    """01_pull_test.go › Pull manifests: "HEAD request to nonexistent manifest should return 404"."""
    r = suite.do("HEAD", "/v2/<name>/manifests/<reference>", reference=NONEXISTENT_MANIFEST)
    assert r.status_code == 404, show(r)


@pytest.mark.parametrize("i", [0, 1])
def test_pull_head_manifest_by_digest(suite: Suite, i: int) -> None:
    """01_pull_test.go › Pull manifests: "HEAD request to manifest[0] path (digest) should yield 200 response",
    "HEAD request to manifest[1] path (digest) should yield 200 response"."""
    digest = suite.data.manifests[i].digest
    r = suite.do("HEAD", "/v2/<name>/manifests/<digest>", digest=digest, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, show(r)
    if r.headers.get("Docker-Content-Digest"):
        assert r.headers["Docker-Content-Digest"] == digest


def test_pull_head_manifest_by_tag(suite: Suite) -> None:
    """01_pull_test.go › Pull manifests: "HEAD request to manifest path (tag) should yield 200 response"."""
    tag = suite.state.get("tag", "")
    assert tag
    r = suite.do("HEAD", "/v2/<name>/manifests/<reference>", reference=tag, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, show(r)
    if r.headers.get("Docker-Content-Digest"):
        assert r.headers["Docker-Content-Digest"] == suite.data.manifests[0].digest


def test_pull_get_nonexistent_manifest(suite: Suite) -> None:
    """01_pull_test.go › Pull manifests: "GET nonexistent manifest should return 404"."""
    r = suite.do("GET", "/v2/<name>/manifests/<reference>", reference=NONEXISTENT_MANIFEST)
    assert r.status_code == 404, show(r)


@pytest.mark.parametrize("i", [0, 1])
def test_pull_get_manifest_by_digest(suite: Suite, i: int) -> None:
    """01_pull_test.go › Pull manifests: "GET request to manifest[0] path (digest) should yield 200 response",
    "GET request to manifest[1] path (digest) should yield 200 response"."""
    r = suite.do("GET", "/v2/<name>/manifests/<digest>", digest=suite.data.manifests[i].digest,
                 headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, show(r)


def test_pull_get_manifest_by_tag(suite: Suite) -> None:
    """01_pull_test.go › Pull manifests: "GET request to manifest path (tag) should yield 200 response"."""
    tag = suite.state.get("tag", "")
    assert tag
    r = suite.do("GET", "/v2/<name>/manifests/<reference>", reference=tag, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, show(r)


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_pull_error_codes(suite: Suite, method: str) -> None:
    """01_pull_test.go › Error codes: "400 response body should contain OCI-conforming JSON message". The suite
    sends a GET to the reference `sha256:totallywrong` (the Content-Type and invalid body it sets do not go out:
    resty drops a GET's payload); its v1.0 form sent a PUT with them, which is run too."""
    r = suite.do(method, "/v2/<name>/manifests/<reference>", reference="sha256:totallywrong",
                 headers={"Content-Type": OCI_MANIFEST}, body=suite.data.invalid_manifest)
    assert r.status_code in (400, 404), show(r)
    if r.status_code == 400:
        assert error_codes(r)[0] in ERROR_CODES, show(r)


def test_pull_teardown(suite: Suite) -> None:
    """01_pull_test.go › Teardown: "Delete manifest[0] created in setup", "Delete manifest[1] created in setup"
    (2xx or 405; before the blobs when OCI_DELETE_MANIFEST_BEFORE_BLOBS, after them otherwise), "Delete config[0]
    blob created in setup", "Delete config[1] blob created in setup", "Delete layer blob created in setup" (2xx,
    404 or 405)."""
    d = suite.data

    def manifests() -> None:
        for manifest in d.manifests[:2]:
            delete(suite, "manifests", manifest.digest, (405,))

    if suite.env.delete_manifest_before_blobs:
        manifests()
    for blob in (d.configs[0], d.configs[1], d.layer):
        delete(suite, "blobs", blob.digest, (404, 405))
    if not suite.env.delete_manifest_before_blobs:
        manifests()


# ---------------------------------------------------------------------------------------------------- 02 Push ----

def test_push_streamed_patch(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Streamed: "PATCH request with blob in body should yield 202 response"."""
    r = suite.do("POST", "/v2/<name>/blobs/uploads/")
    assert r.headers.get("Location"), show(r)
    r = suite.do("PATCH", relative_location(r), headers={"Content-Type": OCTET}, body=suite.data.blob_a.content)
    assert r.status_code == 202, show(r)
    suite.state["last"] = r


def test_push_streamed_put(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Streamed: "PUT request to session URL with digest should yield 201 response"
    (the Content-Length the spec sets is the blob's; no body follows, so Go sends `Content-Length: 0`)."""
    last = suite.state.get("last")
    assert last is not None
    blob = suite.data.blob_a
    r = suite.do("PUT", relative_location(last), query={"digest": blob.digest},
                 headers={"Content-Type": OCTET, "Content-Length": blob.length})
    assert r.status_code == 201, show(r)
    assert r.headers.get("Location"), show(r)


def test_push_monolithic_get_nonexistent_blob(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Monolithic: "GET nonexistent blob should result in 404 response"."""
    r = suite.do("GET", "/v2/<name>/blobs/<digest>", digest=suite.data.dummy_digest)
    assert r.status_code == 404, show(r)


def test_push_monolithic_post_with_digest(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Monolithic: "POST request with digest and blob should yield a 201 or 202"."""
    blob = suite.data.configs[1]
    r = suite.do("POST", "/v2/<name>/blobs/uploads/", query={"digest": blob.digest},
                 headers={"Content-Length": blob.length, "Content-Type": OCTET}, body=blob.content)
    assert r.headers.get("Location"), show(r)
    assert r.status_code in (201, 202), show(r)
    suite.state["last"] = r


def test_push_monolithic_get_blob_after_post(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Monolithic: "GET request to blob URL from prior request should yield 200 or
    404 based on response code" (404 after a 202, 200 after a 201)."""
    last = suite.state.get("last")
    assert last is not None
    r = suite.do("GET", "/v2/<name>/blobs/<digest>", digest=suite.data.configs[1].digest)
    assert r.status_code == (404 if last.status_code == 202 else 200), show(r)


def test_push_monolithic_post_session(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Monolithic: "POST request should yield a session ID"."""
    r = suite.do("POST", "/v2/<name>/blobs/uploads/")
    assert r.status_code == 202, show(r)
    suite.state["last"] = r


def test_push_monolithic_put(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Monolithic: "PUT upload of a blob should yield a 201 Response"."""
    blob = suite.data.configs[1]
    r = suite.do("PUT", relative_location(suite.state.get("last")), query={"digest": blob.digest},
                 headers={"Content-Length": blob.length, "Content-Type": OCTET}, body=blob.content)
    assert r.headers.get("Location"), show(r)
    assert r.status_code == 201, show(r)


def test_push_monolithic_get_existing_blob(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Monolithic: "GET request to existing blob should yield 200 response"."""
    r = suite.do("GET", "/v2/<name>/blobs/<digest>", digest=suite.data.configs[1].digest)
    assert r.status_code == 200, show(r)


def test_push_monolithic_put_layer(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Monolithic: "PUT upload of a layer blob should yield a 201 Response"."""
    r = populate(suite, suite.data.layer)
    assert r.headers.get("Location"), show(r)
    assert r.status_code == 201, show(r)


def test_push_monolithic_get_existing_layer(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Monolithic: "GET request to existing layer should yield 200 response"."""
    r = suite.do("GET", "/v2/<name>/blobs/<digest>", digest=suite.data.layer.digest)
    assert r.status_code == 200, show(r)


def test_push_chunked_out_of_order(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Chunked: "Out-of-order blob upload should return 416". When the registry
    states OCI-Chunk-Min-Length above the first chunk, the suite rebuilds its blob (2 x minimum - 2 bytes), as
    here."""
    r = suite.do("POST", "/v2/<name>/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.headers.get("Location"), show(r)
    minimum = r.headers.get("OCI-Chunk-Min-Length")
    if minimum:
        assert minimum.isdigit(), show(r)  # strconv.Atoi
        if int(minimum) > len(suite.data.chunked.chunk1):
            suite.data.chunked = ChunkedBlob.random(int(minimum) * 2 - 2)
    chunked = suite.data.chunked
    r = suite.do("PATCH", relative_location(r), body=chunked.chunk2, headers={
        "Content-Type": OCTET, "Content-Length": str(len(chunked.chunk2)), "Content-Range": chunked.chunk2_range})
    assert r.status_code == 416, show(r)


def test_push_chunked_first_chunk(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Chunked: "PATCH request with first chunk should return 202" (and its Range is
    the chunk's)."""
    r = suite.do("POST", "/v2/<name>/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.headers.get("Location"), show(r)
    suite.state["previous"] = r
    chunked = suite.data.chunked
    r = suite.do("PATCH", relative_location(r), body=chunked.chunk1, headers={
        "Content-Type": OCTET, "Content-Length": str(len(chunked.chunk1)), "Content-Range": chunked.chunk1_range})
    assert r.status_code == 202, show(r)
    assert r.headers.get("Range") == chunked.chunk1_range, show(r)
    suite.state["last"] = r


def test_push_chunked_retry_previous_chunk(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Chunked: "Retry previous blob chunk should return 416"."""
    chunked = suite.data.chunked
    r = suite.do("PATCH", relative_location(suite.state.get("previous")), body=chunked.chunk1, headers={
        "Content-Type": OCTET, "Content-Length": str(len(chunked.chunk1)), "Content-Range": chunked.chunk1_range})
    assert r.status_code == 416, show(r)


def test_push_chunked_status(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Chunked: "Get on stale blob upload should return 204 with a range and
    location"."""
    r = suite.do("GET", relative_location(suite.state.get("previous")))
    assert r.status_code == 204, show(r)
    assert r.headers.get("Location"), show(r)
    assert r.headers.get("Range") == suite.data.chunked.chunk1_range, show(r)
    suite.state["last"] = r


def test_push_chunked_second_chunk(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Chunked: "PATCH request with second chunk should return 202"."""
    chunked = suite.data.chunked
    r = suite.do("PATCH", relative_location(suite.state.get("last")), body=chunked.chunk2, headers={
        "Content-Length": str(len(chunked.chunk2)), "Content-Range": chunked.chunk2_range, "Content-Type": OCTET})
    assert r.status_code == 202, show(r)
    assert r.headers.get("Location"), show(r)
    suite.state["last"] = r


def test_push_chunked_close(suite: Suite) -> None:
    """02_push_test.go › Blob Upload Chunked: "PUT request with digest should return 201"."""
    r = suite.do("PUT", relative_location(suite.state.get("last")), query={"digest": suite.data.chunked.blob.digest},
                 headers={"Content-Length": "0", "Content-Type": OCTET})
    assert r.status_code == 201, show(r)
    assert r.headers.get("Location"), show(r)


def test_push_mount_without_from(suite: Suite) -> None:
    """02_push_test.go › Cross-Repository Blob Mount: "Cross-mounting of a blob without the from argument should
    yield session id"."""
    r = suite.do("POST", "/v2/<name>/blobs/uploads/", name=suite.crossmount,
                 query={"mount": suite.data.dummy_digest})
    assert r.status_code == 202, show(r)
    assert r.headers.get("Location"), show(r)


def test_push_mount_from_namespace(suite: Suite) -> None:
    """02_push_test.go › Cross-Repository Blob Mount: "POST request to mount another repository's blob should return
    201 or 202" (the blob of the streamed upload, from OCI_NAMESPACE into OCI_CROSSMOUNT_NAMESPACE)."""
    r = suite.do("POST", "/v2/<name>/blobs/uploads/", name=suite.crossmount,
                 query={"mount": suite.data.blob_a.digest, "from": suite.namespace})
    assert r.status_code in (201, 202), show(r)
    suite.state["last"] = r
    suite.state["mounted"] = r.status_code


def test_push_mount_result(suite: Suite) -> None:
    """02_push_test.go › Cross-Repository Blob Mount: "GET request to test digest within cross-mount namespace should
    return 200" (run after a 201) and "Cross-mounting of nonexistent blob should yield session id" (after a 202)."""
    last = suite.state.get("last")
    assert last is not None
    if last.status_code == 201:
        assert relative_location(last) == f"/v2/{suite.crossmount}/blobs/{suite.data.blob_a.digest}", show(last)
        r = suite.do("GET", relative_location(last))
        assert r.status_code == 200, show(r)
    else:
        assert relative_location(last).startswith(f"/v2/{suite.crossmount}/blobs/uploads/"), show(last)


def test_push_automatic_crossmount(suite: Suite) -> None:
    """02_push_test.go › Cross-Repository Blob Mount: "Cross-mounting without from, and automatic content discovery
    enabled should return a 201" / "... disabled should return a 202" (run when OCI_AUTOMATIC_CROSSMOUNT is set and
    the mount above answered 201; with it false, as Berth runs, the second)."""
    if suite.env.automatic_crossmount is None or suite.state.get("mounted") != 201:
        return  # the suite runs neither spec (RunOnlyIf)
    r = suite.do("POST", "/v2/<name>/blobs/uploads/", name=suite.crossmount,
                 query={"mount": suite.data.blob_a.digest})
    assert r.status_code == (201 if suite.env.automatic_crossmount else 202), show(r)


def test_push_mount_was_a_mount(suite: Suite) -> None:
    """Not the suite's: Berth mounts a blob the caller may read in `from` (the suite accepts 202 as well), so the
    201 branch above, with its Location and GET, is the one that must have run."""
    assert suite.state.get("mounted") == 201


def test_push_manifest_get_nonexistent(suite: Suite) -> None:
    """02_push_test.go › Manifest Upload: "GET nonexistent manifest should return 404"."""
    r = suite.do("GET", "/v2/<name>/manifests/<reference>", reference=NONEXISTENT_MANIFEST)
    assert r.status_code == 404, show(r)


def test_push_manifest_put(suite: Suite) -> None:
    """02_push_test.go › Manifest Upload: "PUT should accept a manifest upload" (manifests[1] as test0..test3)."""
    for i in range(4):
        r = put_manifest(suite, f"test{i}", suite.data.manifests[1])
        assert r.headers.get("Location"), show(r)
        assert r.status_code == 201, show(r)


def test_push_manifest_without_layers(suite: Suite) -> None:
    """02_push_test.go › Manifest Upload: "Registry should accept a manifest upload with no layers" (anything but
    201 is a warning: "image manifest with no layers is not supported")."""
    r = put_manifest(suite, EMPTY_LAYER_TAG, suite.data.empty_layer_manifest)
    if r.status_code == 201:
        suite.state["empty layer ref"] = r.headers.get("Location", "")
        assert r.headers.get("Location"), show(r)
    else:
        suite.warn(f"image manifest with no layers is not supported: {show(r)}")


def test_push_manifest_get_by_digest(suite: Suite) -> None:
    """02_push_test.go › Manifest Upload: "GET request to manifest URL (digest) should yield 200 response"."""
    r = suite.do("GET", "/v2/<name>/manifests/<digest>", digest=suite.data.manifests[1].digest,
                 headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, show(r)


def test_push_teardown(suite: Suite) -> None:
    """02_push_test.go › Teardown: "Delete manifest created in tests" (manifests[1], then the manifest without
    layers if it was accepted; 2xx or 405; before or after the blobs per OCI_DELETE_MANIFEST_BEFORE_BLOBS), "Delete
    config blob created in tests" and "Delete layer blob created in setup" (2xx, 404 or 405)."""
    d = suite.data

    def manifests() -> None:
        delete(suite, "manifests", d.manifests[1].digest, (405,))
        if suite.state.get("empty layer ref"):
            delete(suite, "manifests", d.empty_layer_manifest.digest, (405,))

    if suite.env.delete_manifest_before_blobs:
        manifests()
    for blob in (d.configs[1], d.layer):
        delete(suite, "blobs", blob.digest, (404, 405))
    if not suite.env.delete_manifest_before_blobs:
        manifests()


# ---------------------------------------------------------------------------------------- 03 Content Discovery ----

def test_discovery_setup_blobs_and_tags(suite: Suite) -> None:
    """03_discovery_test.go › Setup: "Populate registry with test blob" (configs[2]), "Populate registry with test
    layer", "Populate registry with test tags" (manifests[2] as test0..test3, then the tag list is read)."""
    d = suite.data
    for blob in (d.configs[2], d.layer):
        r = populate(suite, blob)
        assert success(r), show(r)
    for i in range(4):
        r = put_manifest(suite, f"test{i}", d.manifests[2])
        assert success(r), show(r)
    suite.state["tags"] = tag_list(suite.do("GET", "/v2/<name>/tags/list"))


def test_discovery_setup_references(suite: Suite) -> None:
    """03_discovery_test.go › Setup: "References setup": the empty JSON blob and a first artifact blob; two
    artifacts and an index naming manifests[4] as subject before it exists (OCI-Subject must name it); then
    configs[4], the layer and manifests[4] itself (tag tagtest0); a second artifact blob and two artifacts more;
    one artifact whose subject (manifests[3]) is never pushed here."""
    d = suite.data
    assert d.empty_json.digest == EMPTY_JSON_DIGEST
    for blob in (d.empty_json, d.ref_blob_a):
        r = populate(suite, blob)
        assert success(r), show(r)
    for manifest, media_type in ((d.a_config, OCI_MANIFEST), (d.a_layer, OCI_MANIFEST), (d.index, OCI_INDEX)):
        r = put_manifest(suite, manifest.digest, manifest, media_type)
        assert success(r), show(r)
        assert r.headers.get("OCI-Subject") == d.manifests[4].digest, show(r)
    for blob in (d.configs[4], d.layer):
        r = populate(suite, blob)
        assert success(r), show(r)
    r = put_manifest(suite, TEST_TAG, d.manifests[4])
    assert success(r), show(r)
    r = populate(suite, d.ref_blob_b)
    assert success(r), show(r)
    for manifest in (d.b_config, d.b_layer):
        r = put_manifest(suite, manifest.digest, manifest)
        assert success(r), show(r)
        assert r.headers.get("OCI-Subject") == d.manifests[4].digest, show(r)
    r = put_manifest(suite, d.c_layer.digest, d.c_layer)
    assert success(r), show(r)
    assert r.headers.get("OCI-Subject") == d.manifests[3].digest, show(r)


def test_discovery_list_tags(suite: Suite) -> None:
    """03_discovery_test.go › Test content discovery endpoints (listing tags): "GET request to list tags should yield
    200 response"."""
    r = suite.do("GET", "/v2/<name>/tags/list")
    assert r.status_code == 200, show(r)
    suite.state["tags"] = tag_list(r)
    suite.state["number of tags"] = len(suite.state["tags"])


def test_discovery_list_tags_n(suite: Suite) -> None:
    """03_discovery_test.go › (listing tags): "GET number of tags should be limitable by `n` query parameter"."""
    n = suite.state.get("number of tags", 4) // 2
    r = suite.do("GET", "/v2/<name>/tags/list", query={"n": str(n)})
    assert r.status_code == 200, show(r)
    suite.state["tags"] = tag_list(r)
    assert len(suite.state["tags"]) == n, show(r)


def test_discovery_list_tags_last(suite: Suite) -> None:
    """03_discovery_test.go › (listing tags): "GET start of tag is set by `last` query parameter": a page of n after
    the n-th tag holds at most n tags and not that one (the suite's later form; an earlier one checked the first
    page again, which this implies)."""
    n = suite.state.get("number of tags", 4) // 2
    r = suite.do("GET", "/v2/<name>/tags/list", query={"n": str(n)})
    assert r.status_code == 200, show(r)
    tags = tag_list(r)
    assert len(tags) >= n, show(r)  # Go would panic indexing tagList[n-1]
    last = tags[n - 1]
    r = suite.do("GET", "/v2/<name>/tags/list", query={"n": str(n), "last": last})
    assert r.status_code == 200, show(r)
    tags = tag_list(r)
    assert len(tags) <= n, show(r)
    assert last not in tags, show(r)


def test_discovery_referrers_of_unknown_digest(suite: Suite) -> None:
    """03_discovery_test.go › Test content discovery endpoints (listing references): "GET request to nonexistent blob
    should result in empty 200 response"."""
    r = suite.do("GET", "/v2/<name>/referrers/<digest>", digest=suite.data.dummy_digest)
    assert r.status_code == 200, show(r)
    assert r.headers.get("Content-Type") == OCI_INDEX, show(r)
    assert not index_of(r).get("manifests"), show(r)


def _check_annotations(suite: Suite, index: dict[str, Any]) -> None:
    for descriptor in index["manifests"]:
        annotations = descriptor.get("annotations") or {}
        assert len(annotations) == 1, descriptor
        assert annotations.get(ANNOTATION) == suite.data.annotations.get(
            descriptor["digest"], ""), descriptor


def test_discovery_referrers(suite: Suite) -> None:
    """03_discovery_test.go › (listing references): "GET request to existing blob should yield 200": five
    referrers, each with its one annotation."""
    r = suite.do("GET", "/v2/<name>/referrers/<digest>", digest=suite.data.manifests[4].digest)
    assert r.status_code == 200, show(r)
    assert r.headers.get("Content-Type") == OCI_INDEX, show(r)
    index = index_of(r)
    assert len(index["manifests"]) == 5, show(r)
    assert index["manifests"][0]["digest"] != index["manifests"][1]["digest"]
    _check_annotations(suite, index)


def test_discovery_referrers_filtered(suite: Suite) -> None:
    """03_discovery_test.go › (listing references): "GET request to existing blob with filter should yield 200":
    with OCI-Filters-Applied (= artifactType) the two of that type, without it all five and a warning ("filtering
    by artifact-type is not implemented")."""
    r = suite.do("GET", "/v2/<name>/referrers/<digest>", digest=suite.data.manifests[4].digest,
                 query={"artifactType": suite.data.type_a})
    assert r.status_code == 200, show(r)
    assert r.headers.get("Content-Type") == OCI_INDEX, show(r)
    index = index_of(r)
    if r.headers.get("OCI-Filters-Applied"):
        assert len(index["manifests"]) == 2, show(r)
        assert r.headers["OCI-Filters-Applied"] == ARTIFACT_TYPE_FILTER, show(r)
    else:
        assert len(index["manifests"]) == 5, show(r)
        suite.warn("filtering by artifact-type is not implemented")
    _check_annotations(suite, index)


def test_discovery_referrers_of_missing_manifest(suite: Suite) -> None:
    """03_discovery_test.go › (listing references): "GET request to missing manifest should yield 200": the one
    artifact whose subject was never pushed."""
    r = suite.do("GET", "/v2/<name>/referrers/<digest>", digest=suite.data.manifests[3].digest)
    assert r.status_code == 200, show(r)
    assert r.headers.get("Content-Type") == OCI_INDEX, show(r)
    index = index_of(r)
    assert len(index["manifests"]) == 1, show(r)
    assert index["manifests"][0]["digest"] == suite.data.c_layer.digest, show(r)


def test_discovery_teardown(suite: Suite) -> None:
    """03_discovery_test.go › Teardown: "Delete created manifest & associated tags" (the index, manifests[2] and [4]
    and the five artifacts; before or after the blobs per OCI_DELETE_MANIFEST_BEFORE_BLOBS), "Delete config blob
    created in tests", "Delete layer blob created in setup", "References teardown" (its manifests again, then
    configs[4], both artifact blobs and the empty JSON blob). Any 2xx, 404 or 405."""
    d = suite.data
    everything = [d.index, d.manifests[2], d.manifests[4], d.a_config, d.a_layer, d.b_config, d.b_layer, d.c_layer]
    again = [d.index, d.a_config, d.a_layer, d.manifests[4], d.b_config, d.b_layer]
    before = suite.env.delete_manifest_before_blobs
    if before:
        for manifest in everything:
            delete(suite, "manifests", manifest.digest, (404, 405))
    for blob in (d.configs[2], d.layer):
        delete(suite, "blobs", blob.digest, (404, 405))
    if not before:
        for manifest in everything:
            delete(suite, "manifests", manifest.digest, (405, 404))
    if before:
        for manifest in again:
            delete(suite, "manifests", manifest.digest, (404, 405))
    for blob in (d.configs[4], d.ref_blob_a, d.ref_blob_b, d.empty_json):
        delete(suite, "blobs", blob.digest, (404, 405))
    if not before:
        for manifest in again:
            delete(suite, "manifests", manifest.digest, (404, 405))


# -------------------------------------------------------------------------------------- 04 Content Management ----

def test_management_setup(suite: Suite) -> None:
    """04_management_test.go › Setup: "Populate registry with test config blob" (configs[3]), "Populate registry
    with test layer", "Populate registry with test tag" (manifests[3] as tagtest0), "Check how many tags there are
    before anything gets deleted"."""
    d = suite.data
    for blob in (d.configs[3], d.layer):
        r = populate(suite, blob)
        assert success(r), show(r)
    suite.state["tag to delete"] = TEST_TAG
    r = put_manifest(suite, TEST_TAG, d.manifests[3])
    assert success(r), show(r)
    r = suite.do("GET", "/v2/<name>/tags/list")
    assert r.status_code == 200, show(r)
    suite.state["number of tags"] = len(json.loads(r.content).get("tags") or [])  # json.Unmarshal: null is none


def test_management_delete_tag(suite: Suite) -> None:
    """04_management_test.go › Manifest delete: "DELETE request to manifest tag should return 202, unless tag
    deletion is disallowed (400/405)" (a 400 must say UNSUPPORTED)."""
    r = suite.do("DELETE", "/v2/<name>/manifests/<reference>", reference=suite.state.get("tag to delete", ""))
    assert r.status_code in (400, 202, 405), show(r)
    if r.status_code == 400:
        assert error_codes(r)[0] == "UNSUPPORTED", show(r)


def test_management_delete_manifest(suite: Suite) -> None:
    """04_management_test.go › Manifest delete: "DELETE request to manifest (digest) should yield 202 response unless
    already deleted"."""
    r = suite.do("DELETE", "/v2/<name>/manifests/<digest>", digest=suite.data.manifests[3].digest)
    assert r.status_code in (202, 404), show(r)


def test_management_get_deleted_manifest(suite: Suite) -> None:
    """04_management_test.go › Manifest delete: "GET request to deleted manifest URL should yield 404 response,
    unless delete is disallowed"."""
    r = suite.do("GET", "/v2/<name>/manifests/<digest>", digest=suite.data.manifests[3].digest)
    assert r.status_code in (404, 200), show(r)


def test_management_tags_after_delete(suite: Suite) -> None:
    """04_management_test.go › Manifest delete: "GET request to tags list should reflect manifest deletion"."""
    r = suite.do("GET", "/v2/<name>/tags/list")
    assert r.status_code == 200, show(r)
    assert len(json.loads(r.content).get("tags") or []) < suite.state.get("number of tags", 0), show(r)


def test_management_delete_blobs(suite: Suite) -> None:
    """04_management_test.go › Blob delete: "DELETE request to blob URL should yield 202 response" (the config, then
    the layer; 202, 404 or 405, and a 405 on the layer means blob deletion is disallowed) and "GET request to deleted
    blob URL should yield 404 response" (run unless it was)."""
    d = suite.data
    r = suite.do("DELETE", "/v2/<name>/blobs/<digest>", digest=d.configs[3].digest)
    assert r.status_code in (202, 404, 405), show(r)
    r = suite.do("DELETE", "/v2/<name>/blobs/<digest>", digest=d.layer.digest)
    assert r.status_code in (202, 404, 405), show(r)
    if r.status_code != 405:
        r = suite.do("GET", "/v2/<name>/blobs/<digest>", digest=d.configs[3].digest)
        assert r.status_code == 404, show(r)


# ------------------------------------------------------------------------------------------ what ran, and how ----

def test_no_suite_warnings(suite: Suite) -> None:
    """Not the suite's: it only warns when a registry refuses a manifest without layers or does not filter
    referrers by artifactType; Berth claims both, so here they are failures."""
    assert suite.warnings == []


def test_the_token_flow_was_followed(suite: Suite) -> None:
    """Not the suite's: under the project policy every request went out anonymous and was answered with a Bearer
    challenge naming a scope (so each got its own token: nothing of the project is public); under the open policy
    none was challenged."""
    challenges = suite.client.challenges
    if suite.env.policy == "open":
        assert challenges == []
    else:
        assert len(challenges) == suite.client.calls > 100
        assert all(c.startswith("Bearer realm=") and 'scope="repository:' in c for c in challenges), challenges
        mount = f'scope="repository:{suite.crossmount}:pull,push repository:{suite.namespace}:pull"'
        assert any(mount in c for c in challenges)
