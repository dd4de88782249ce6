"""Hostile input against a running `berth serve`: every malformed request gets a 4xx and the protocol's code, and
none costs memory in proportion to what it names."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.serving import Server, sha

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"



@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def pss_kib(server: Server) -> int:
    """Proportional set size of the server and its workers (shared pages split between them), in KiB."""
    total = 0
    for pid in [server.process.pid, *_children(server.process.pid)]:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (FileNotFoundError, StopIteration):
            continue
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                found += [int(child), *_children(int(child))]
    return found


@pytest.mark.parametrize(("header", "value"), [
    ("Range", "bytes=²-"), ("Range", "bytes=0-¹²³"), ("Range", "bytes=" + "9" * 5000 + "-"),
])
def test_unicode_and_huge_numbers_in_range(http: httpx.Client, header: str, value: str) -> None:
    data = os.urandom(3000)
    assert http.post("/v2/syn1/hostile/blobs/uploads/", params={"digest": sha(data)}, content=data).status_code == 201
    r = http.get(f"/v2/syn1/hostile/blobs/{sha(data)}", headers={header: value.encode()})
    assert r.status_code == 200 and r.content == data, r.text  # an unparseable Range is ignored (RFC 9110 14.2)


@pytest.mark.parametrize("value", ["²-³", "0-¹²³", "0-" + "9" * 5000, "9" * 5000 + "-1", "bytes 0-1/" + "9" * 99])
def test_unicode_and_huge_numbers_in_content_range(http: httpx.Client, value: str) -> None:
    location = http.post("/v2/syn1/hostile/blobs/uploads/").headers["Location"]
    r = http.patch(location, content=b"xy", headers={"Content-Range": value.encode()})
    assert r.status_code == 416 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"


@pytest.mark.parametrize("n", ["²", "¹²³", "9" * 5000, "-1", "1e3"])
def test_unicode_and_huge_page_sizes(http: httpx.Client, n: str) -> None:
    for path in ("/v2/syn1/hostile/tags/list", "/v2/_catalog"):
        r = http.get(path, params={"n": n})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


def test_range_on_an_inline_blob_is_honoured(http: httpx.Client) -> None:
    config = b'{"inline": true}'
    http.post("/v2/syn1/inline/blobs/uploads/", params={"digest": sha(config)}, content=config)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": []}).encode()
    assert http.put("/v2/syn1/inline/manifests/v1", content=body,
                    headers={"Content-Type": OCI_MANIFEST}).status_code == 201
    url = f"/v2/syn1/inline/blobs/{sha(body)}"  # a manifest is an inline blob: the same Range rules as a file
    r = http.get(url, headers={"Range": "bytes=5-9"})
    assert r.status_code == 206 and r.content == body[5:10] and r.headers["Content-Range"] == f"bytes 5-9/{len(body)}"
    r = http.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert r.status_code == 200 and r.content == body  # several ranges: the whole blob, as for a file


def test_manifest_get_by_a_layer_digest_reads_nothing_large(server: Server, http: httpx.Client) -> None:
    layer = os.urandom(96 << 20)
    r = http.post("/v2/syn1/big/blobs/uploads/", params={"digest": sha(layer)}, content=layer)
    assert r.status_code == 201
    small = os.urandom(1000)
    http.post("/v2/syn1/big/blobs/uploads/", params={"digest": sha(small)}, content=small)
    del layer
    time.sleep(0.5)
    before = pss_kib(server)
    for method in ("HEAD", "GET"):
        for digest in (sha(small),) + (r.headers["Docker-Content-Digest"],) * 3:
            answer = http.request(method, f"/v2/syn1/big/manifests/{digest}")
            assert answer.status_code == 404
            if method == "GET":
                assert answer.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    grown = pss_kib(server) - before
    assert grown < 24 << 10, f"server PSS grew by {grown} KiB answering manifest requests for a 96 MiB layer"
