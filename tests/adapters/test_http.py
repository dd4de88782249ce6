"""The OCI Distribution endpoints and every error path, in plain HTTP (httpx) against a running `berth serve`."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cas import BlobStore
from registry_core.registry import Registry
from tests.serving import serve_in_process, sha

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"



@pytest.fixture(scope="module")
def in_memory() -> Iterator[str]:
    """The app over the in-memory store (BlobStore.in_memory), served from this process on a loopback port: the
    same requests as against `berth serve` on its data directory."""
    with Registry(BlobStore.in_memory()) as registry:
        server = serve_in_process(registry, policy="open")
        yield server.url
        server.stop()


@pytest.fixture(params=["embedded", "distributed", "memory"])
def http(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A client of `berth serve` on the embedded store (LMDB + files), on the distributed store (PostgreSQL + S3),
    then of the app over the in-memory store (tests/conftest.py `embedded_server`, `distributed_server`)."""
    if request.param == "memory":
        url = request.getfixturevalue("in_memory")
    else:
        url = request.getfixturevalue(f"{request.param}_server").url
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


def error_code(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["code"])


def push_blob(http: httpx.Client, repo: str, data: bytes) -> dict[str, Any]:
    r = http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(data)}, content=data)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == sha(data)
    return {"mediaType": CONFIG, "digest": sha(data), "size": len(data)}


def image(http: httpx.Client, repo: str, seed: bytes = b"a", **extra: Any) -> bytes:
    config = push_blob(http, repo, b'{"config":"' + seed + b'"}')
    layer = push_blob(http, repo, os.urandom(1000)) | {"mediaType": "application/vnd.oci.image.layer.v1.tar"}
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer],
                       **extra}).encode()


def put_manifest(http: httpx.Client, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST
                 ) -> httpx.Response:
    return http.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type})


def test_base_and_version_header(http: httpx.Client) -> None:
    r = http.get("/v2/")
    assert r.status_code == 200 and r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_chunked_upload_status_and_order(http: httpx.Client) -> None:
    data = os.urandom(300_000)
    r = http.post("/v2/syn1/chunks/blobs/uploads/")
    assert r.status_code == 202 and r.headers["Range"] == "0-0" and "OCI-Chunk-Min-Length" in r.headers
    location, uuid = r.headers["Location"], r.headers["Docker-Upload-UUID"]
    assert location.endswith(uuid)
    r = http.patch(location, content=data[:100_000], headers={"Content-Range": "0-99999"})
    assert r.status_code == 202 and r.headers["Range"] == "0-99999"
    # a chunk out of order: 416, and the headers say where the session is
    r = http.patch(location, content=data[200_000:], headers={"Content-Range": "200000-299999"})
    assert r.status_code == 416 and error_code(r) == "BLOB_UPLOAD_INVALID" and r.headers["Range"] == "0-99999"
    r = http.get(location)
    assert r.status_code == 204 and r.headers["Range"] == "0-99999"
    r = http.patch(location, content=data[100_000:200_000], headers={"Content-Range": "bytes=100000-199999"})
    assert r.status_code == 202
    # the last chunk with the PUT; a wrong digest first discards the session
    r = http.put(location, params={"digest": sha(data)}, content=data[200_000:])
    assert r.status_code == 201 and r.headers["Location"] == f"/v2/syn1/chunks/blobs/{sha(data)}"
    assert http.get(f"/v2/syn1/chunks/blobs/{sha(data)}").content == data
    assert http.get(location).status_code == 404  # the session is over


def test_an_answer_before_the_body_is_read_closes_the_connection(http: httpx.Client) -> None:
    """A 416 for a chunk out of order comes before its body is read: `Connection: close` (RFC 9112 section 9), so
    the client opens a new connection for its next request instead of losing it on this one."""
    location = http.post("/v2/syn1/unread/blobs/uploads/").headers["Location"]
    r = http.patch(location, content=b"x" * 1000, headers={"Content-Range": "0-999"})
    assert r.status_code == 202 and "connection" not in r.headers  # read to the end: the connection stays open
    body = os.urandom(32 << 20)  # far more than is read before the offset check refuses it (16 chunks queued)
    r = http.patch(location, content=body, headers={"Content-Range": f"5000-{5000 + len(body) - 1}"})
    assert r.status_code == 416 and r.headers["connection"] == "close"
    assert http.get(location).headers["Range"] == "0-999"  # the next request goes out on a new connection


def test_wrong_digest_is_never_stored(http: httpx.Client) -> None:
    data, other = b"the bytes", b"other bytes"
    r = http.post("/v2/syn1/wrong/blobs/uploads/", params={"digest": sha(other)}, content=data)
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
    location = http.post("/v2/syn1/wrong/blobs/uploads/").headers["Location"]
    r = http.put(location, params={"digest": sha(other)}, content=data)
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
    for digest in (sha(data), sha(other)):
        r = http.head(f"/v2/syn1/wrong/blobs/{digest}")
        assert r.status_code == 404
    assert http.put(location, params={"digest": sha(data)}).status_code == 404  # discarded with its bytes
    r = http.put(http.post("/v2/syn1/wrong/blobs/uploads/").headers["Location"])
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"  # no digest parameter


def test_blob_get_head_range_and_delete(http: httpx.Client) -> None:
    data = os.urandom(5000)
    push_blob(http, "syn1/ranges", data)
    url = f"/v2/syn1/ranges/blobs/{sha(data)}"
    r = http.head(url)
    assert r.status_code == 200 and r.headers["Content-Length"] == "5000" and not r.content
    r = http.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20] and r.headers["Content-Range"] == "bytes 10-19/5000"
    r = http.get(url, headers={"Range": "bytes=-100"})
    assert r.status_code == 206 and r.content == data[-100:]
    r = http.get(url, headers={"Range": "bytes=4990-"})
    assert r.status_code == 206 and r.content == data[4990:]
    r = http.get(url, headers={"Range": "bytes=5000-5010"})
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */5000"
    # knowing a digest is not a read permission: another repository does not have it
    assert http.get(f"/v2/syn1/other/blobs/{sha(data)}").status_code == 404
    assert http.delete(url).status_code == 202
    r = http.get(url)
    assert r.status_code == 404 and error_code(r) == "BLOB_UNKNOWN"


def test_malformed_input_is_4xx_never_500(http: httpx.Client) -> None:
    cases = [
        ("GET", "/v2/UPPER/x/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/noproject/tags/list", 404, "NAME_UNKNOWN"),  # any OCI name is valid under the open policy
        ("GET", "/v2/a//b/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/syn1/" + "a" * 300 + "/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/syn1/a--b__c/blobs/sha256:zz", 400, "DIGEST_INVALID"),
        ("GET", "/v2/syn1/x/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"),
        # a GET of a reference that cannot name anything finds nothing (conformance: 404); a PUT of it is invalid
        ("GET", "/v2/syn1/x/manifests/-bad-tag", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/syn1/x/manifests/sha256:abc", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/syn1/x/manifests/" + "a" * 129, 404, "MANIFEST_UNKNOWN"),
        ("PUT", "/v2/syn1/x/manifests/-bad-tag", 400, "TAG_INVALID"),
        ("PUT", "/v2/syn1/x/manifests/sha256:abc", 400, "DIGEST_INVALID"),
        ("GET", "/v2/syn1/x/manifests/latest", 404, "NAME_UNKNOWN"),
        ("GET", f"/v2/syn1/x/blobs/{sha(b'nothing')}", 404, "BLOB_UNKNOWN"),
        ("GET", "/v2/syn1/x/blobs/uploads/0123456789abcdef0123456789abcdef", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PATCH", "/v2/syn1/x/blobs/uploads/not-a-session", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("GET", "/v2/syn1/x/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"),
        ("POST", "/v2/syn1/x/manifests/latest", 405, "UNSUPPORTED"),
        ("GET", "/v2/syn1/x/nothing/here", 404, "NOT_FOUND"),
        ("POST", "/v2/syn1/x/blobs/uploads/?digest=sha256:short", 400, "DIGEST_INVALID"),
    ]
    for method, path, status, code in cases:
        r = http.request(method, path)
        assert (r.status_code, error_code(r)) == (status, code), (method, path, r.text)
        assert r.json()["errors"][0]["message"]


def test_head_of_an_invalid_reference_is_404(http: httpx.Client) -> None:
    for reference in ("-bad-tag", "sha256:abc", "a" * 129):
        r = http.head(f"/v2/syn1/x/manifests/{reference}")
        assert r.status_code == 404 and r.content == b""


@pytest.mark.parametrize("repo", ["myorg/myrepo", "single", "a/b/c/d/e", "my.org/my_repo/x-y"])
def test_open_policy_takes_every_oci_name(http: httpx.Client, repo: str) -> None:
    body = image(http, repo)
    assert put_manifest(http, repo, "v1", body).status_code == 201
    r = http.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == body
    assert http.get(f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": ["v1"]}
    assert repo in http.get("/v2/_catalog").json()["repositories"]


def test_manifest_put_get_tags_and_delete(http: httpx.Client) -> None:
    repo = "syn1/app"
    r = put_manifest(http, repo, "v1", b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", '
                     b'"config": {"mediaType": "x/y", "digest": "' + sha(b"none").encode() + b'", "size": 4}}')
    assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    assert put_manifest(http, repo, "v1", b"{not json").json()["errors"][0]["code"] == "MANIFEST_INVALID"
    body = image(http, repo)
    r = put_manifest(http, repo, "v1", body)
    assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == sha(body)
    assert r.headers["Location"] == f"/v2/{repo}/manifests/{sha(body)}"
    for ref in ("v1", sha(body)):
        r = http.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.content == body and r.headers["Content-Type"] == OCI_MANIFEST  # byte for byte
        assert r.headers["Docker-Content-Digest"] == sha(body)
        r = http.head(f"/v2/{repo}/manifests/{ref}")
        assert r.status_code == 200 and r.headers["Content-Length"] == str(len(body)) and not r.content
    r = http.get(f"/v2/{repo}/manifests/v1", headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert r.status_code == 404 and error_code(r) == "MANIFEST_UNKNOWN"  # never converted
    assert http.get(f"/v2/{repo}/blobs/{sha(body)}").content == body  # a manifest is a blob too
    # a digest reference must match the body
    r = put_manifest(http, repo, sha(b"other"), body)
    assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
    r = put_manifest(http, repo, "sha512:" + hashlib.sha512(body).hexdigest(), body)
    assert r.status_code == 201 and r.headers["Docker-Content-Digest"].startswith("sha512:")
    # tags: sorted, paginated with Link
    for tag in ("b", "a", "c", "B"):
        assert put_manifest(http, repo, tag, body).status_code == 201
    assert http.get(f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": ["B", "a", "b", "c", "v1"]}
    r = http.get(f"/v2/{repo}/tags/list", params={"n": 2})
    assert r.json()["tags"] == ["B", "a"] and r.headers["Link"] == f'</v2/{repo}/tags/list?n=2&last=a>; rel="next"'
    r = http.get(f"/v2/{repo}/tags/list", params={"n": 2, "last": "b"})
    assert r.json()["tags"] == ["c", "v1"] and "Link" not in r.headers
    assert http.get("/v2/_catalog").json()["repositories"].count(repo) == 1
    r = http.get("/v2/_catalog", params={"n": 1})
    first = r.json()["repositories"]
    assert len(first) == 1 and r.headers["Link"] == f'</v2/_catalog?n=1&last={first[0]}>; rel="next"'
    assert http.get("/v2/_catalog", params={"n": 1, "last": first[0]}).json()["repositories"][0] > first[0]
    # delete a tag, then the manifest (which untags the rest)
    assert http.delete(f"/v2/{repo}/manifests/a").status_code == 202
    assert http.get(f"/v2/{repo}/manifests/a").status_code == 404
    assert http.delete(f"/v2/{repo}/manifests/{sha(body)}").status_code == 202
    assert http.get(f"/v2/{repo}/tags/list").json()["tags"] == []
    r = http.get(f"/v2/{repo}/manifests/{sha(body)}")
    assert r.status_code == 404 and error_code(r) == "MANIFEST_UNKNOWN"


def test_manifest_size_limit(http: httpx.Client) -> None:
    repo = "syn1/big"
    base = json.loads(image(http, repo))
    limit = 4 << 20
    pad = limit - len(json.dumps(base | {"annotations": {"pad": ""}}).encode())
    body = json.dumps(base | {"annotations": {"pad": "x" * pad}}).encode()
    assert len(body) == limit
    assert put_manifest(http, repo, "big", body).status_code == 201  # the spec's 4 MiB is accepted
    body = json.dumps(base | {"annotations": {"pad": "x" * (pad + 1)}}).encode()
    r = put_manifest(http, repo, "bigger", body)
    assert r.status_code == 413 and error_code(r) == "SIZE_INVALID"
    assert http.get(f"/v2/{repo}/manifests/big").status_code == 200


def test_hostile_manifests_answer_400_not_500(http: httpx.Client) -> None:
    repo = "syn1/hostile"
    valid = json.loads(image(http, repo))
    layer = valid["layers"][0]
    many = [layer | {"digest": sha(b"%d" % i)} for i in range(25_000)]
    cases = {
        "1000 deep": b'{"schemaVersion":2,"x":' + b"[" * 1000 + b"]" * 1000 + b"}",
        "100 000 deep, never closed": b"[" * 100_000,
        "duplicate key": json.dumps(valid).encode()[:-1] + b', "layers": []}',
        "NaN": json.dumps(valid | {"x": float("nan")}).encode(),
        "Latin-1": json.dumps(valid | {"annotations": {"a": "\u00e9"}}, ensure_ascii=False).encode("latin-1"),
        "schemaVersion 2.0": json.dumps(valid | {"schemaVersion": 2.0}).encode(),
        "25 000 layers": json.dumps(valid | {"layers": many}).encode(),
    }
    for what, body in cases.items():
        r = put_manifest(http, repo, "v1", body)
        assert (r.status_code, error_code(r)) == (400, "MANIFEST_INVALID"), (what, r.text[:300])
    assert put_manifest(http, repo, "v1", json.dumps(valid).encode()).status_code == 201


def test_index_needs_its_children_and_referrers(http: httpx.Client) -> None:
    repo = "syn1/refs"
    child = image(http, repo, b"child")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(child), "size": len(child)}]}).encode()
    r = put_manifest(http, repo, "multi", index, OCI_INDEX)
    assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    assert put_manifest(http, repo, sha(child), child).status_code == 201
    assert put_manifest(http, repo, "multi", index, OCI_INDEX).status_code == 201
    empty = push_blob(http, repo, b"{}") | {"mediaType": "application/vnd.oci.empty.v1+json"}
    subject = {"mediaType": OCI_MANIFEST, "digest": sha(child), "size": len(child)}
    sig = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
                      "config": empty, "layers": [empty], "subject": subject,
                      "annotations": {"org.example": "1"}}).encode()
    r = put_manifest(http, repo, sha(sig), sig)
    assert r.status_code == 201 and r.headers["OCI-Subject"] == sha(child)
    r = http.get(f"/v2/{repo}/referrers/{sha(child)}")
    assert r.status_code == 200 and r.headers["Content-Type"] == OCI_INDEX
    assert r.json()["manifests"] == [{"mediaType": OCI_MANIFEST, "digest": sha(sig), "size": len(sig),
                                      "artifactType": "application/vnd.example.sig",
                                      "annotations": {"org.example": "1"}}]
    r = http.get(f"/v2/{repo}/referrers/{sha(child)}", params={"artifactType": "application/vnd.other"})
    assert r.json()["manifests"] == [] and r.headers["OCI-Filters-Applied"] == "artifactType"
    assert http.get(f"/v2/{repo}/referrers/{sha(b'none')}").json()["manifests"] == []
    assert http.delete(f"/v2/{repo}/manifests/{sha(sig)}").status_code == 202
    assert http.get(f"/v2/{repo}/referrers/{sha(child)}").json()["manifests"] == []


def test_cross_repository_mount(http: httpx.Client) -> None:
    data = os.urandom(2000)
    push_blob(http, "syn1/source", data)
    r = http.post("/v2/syn1/target/blobs/uploads/", params={"mount": sha(data), "from": "syn1/source"})
    assert r.status_code == 201 and r.headers["Location"] == f"/v2/syn1/target/blobs/{sha(data)}"
    assert http.get(f"/v2/syn1/target/blobs/{sha(data)}").content == data
    # not readable in `from`: an ordinary upload session instead
    r = http.post("/v2/syn1/target2/blobs/uploads/", params={"mount": sha(data), "from": "syn1/nowhere"})
    assert r.status_code == 202 and "Docker-Upload-UUID" in r.headers
    assert http.delete(r.headers["Location"]).status_code == 204
    assert http.get(r.headers["Location"]).status_code == 404


def test_client_hanging_up_mid_upload(http: httpx.Client) -> None:
    data = os.urandom(4 << 20)
    location = http.post("/v2/syn1/hangup/blobs/uploads/").headers["Location"]
    assert http.patch(location, content=data[:1 << 20]).status_code == 202
    # a raw client promises 3 MiB, sends 1 MiB, and hangs up
    host, port = http.base_url.host, http.base_url.port or 80
    with socket.create_connection((host, port)) as raw:
        raw.sendall(f"PATCH {location} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {3 << 20}\r\n"
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data[1 << 20:2 << 20])
    # the partial chunk is invisible: the session resumes where it was once the server has seen the hang-up
    # (until then the dead request still holds the session: 409)
    assert http.get(f"/v2/syn1/hangup/blobs/{sha(data)}").status_code == 404
    rest = {"Content-Range": f"{1 << 20}-{len(data) - 1}"}
    for _ in range(100):
        r = http.patch(location, content=data[1 << 20:], headers=rest)
        if r.status_code != 409:
            break
        time.sleep(0.1)
    assert r.status_code == 202, r.text
    assert http.put(location, params={"digest": sha(data)}).status_code == 201
    assert http.get(f"/v2/syn1/hangup/blobs/{sha(data)}").content == data
