"""Uploads and downloads across two `berth serve` nodes on one PostgreSQL and one S3 bucket (issue 17, "Uploads
across nodes" and "Downloads"): PATCHes racing on one session through both nodes, the chunk minimum each node
advertises, monolithic uploads written straight to the blob's object, and blob GETs answered with 307 to a
presigned URL (`--blobs-redirect`, on the second node) that skopeo follows byte for byte."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from cas.s3_blobs import MIN_PART
from tests.engines import Engines, free_ports
from tests.interop.conftest import Run
from tests.interop.images import write_layout
from tests.interop.test_skopeo import layout_ref, same_blobs
from tests.serving import ROOT, Server, start_server

MiB = 1 << 20


@pytest.fixture(scope="module")
def place(engines: Engines) -> tuple[str, str, str]:
    """(metadata URL, bucket, key prefix) of one store of this module's own."""
    return (engines.postgres.create_database() + "?schema=registry", engines.s3.create_bucket(),
            uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def nodes(engines: Engines, place: tuple[str, str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Two nodes on the store; the second answers blob GETs with 307 to the bucket."""
    metadata, bucket, prefix = place
    shared = ("--metadata", metadata, "--blobs", f"s3://{bucket}/{prefix}?endpoint={engines.s3.endpoint}")
    base = tmp_path_factory.mktemp("nodes")
    one = start_server(base / "one", *shared, workers=1)
    try:
        two = start_server(base / "two", *shared, "--blobs-redirect", workers=1)
    except BaseException:
        one.stop()
        raise
    yield one, two
    two.stop()
    one.stop()


def _keys(engines: Engines, place: tuple[str, str, str], under: str) -> list[str]:
    _, bucket, prefix = place
    s3 = boto3.client("s3", endpoint_url=engines.s3.endpoint, region_name="us-east-1")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{under}")
    return [entry["Key"].removeprefix(f"{prefix}/") for entry in listed.get("Contents", [])]


def _path(location: str) -> str:
    return location if location.startswith("/") else "/" + location.split("/", 3)[3]


def _patch(node: Server, path: str, start: int, body: bytes, pace: float) -> tuple[int, dict[str, str], bytes]:
    """A PATCH whose body arrives in 24 pieces over `pace` seconds (a slow client mid-chunk): (status, headers,
    body). A node that refuses early may close the connection while the rest is being sent: the answer is read
    all the same."""
    host, port = node.host.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("PATCH", path)
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Range", f"{start}-{start + len(body) - 1}")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        piece = -(-len(body) // 24)
        try:
            for at in range(0, len(body), piece):
                connection.send(body[at:at + piece])
                time.sleep(pace / 24)
        except OSError:
            pass  # answered (and closed) before the whole body was read
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def test_concurrent_patches_on_one_session_through_two_nodes(nodes: tuple[Server, Server]) -> None:
    """Each round, both nodes get a chunk for the same range of one session, with different bytes, at the same
    time: exactly one is accepted, the other is refused (409 while the first writes, or 416 once the session
    moved on), never a 500, and no node's bytes overwrite the other's: the blob the accepted chunks make is the
    one that verifies and is served."""
    one, two = nodes
    answer = httpx.post(f"{one.url}/v2/lib/race/blobs/uploads/", timeout=60)
    assert answer.status_code == 202
    path = _path(answer.headers["Location"])
    rng = random.Random(23)
    accepted: list[bytes] = []
    refusals: list[tuple[int, bytes]] = []
    for turn in range(4):  # bounded: four rounds of two 6 MiB chunks (above S3's part minimum)
        start = sum(map(len, accepted))
        bodies = [rng.randbytes(6 * MiB + 11), rng.randbytes(6 * MiB + 11)]
        slow = turn % 2  # the slow one starts first and streams for 3 s; the other arrives meanwhile
        results: dict[int, tuple[int, dict[str, str], bytes]] = {}

        def send(which: int, pace: float, start: int = start, bodies: list[bytes] = bodies,
                 results: dict[int, tuple[int, dict[str, str], bytes]] = results) -> None:
            results[which] = _patch(nodes[which], path, start, bodies[which], pace)

        first = threading.Thread(target=send, args=(slow, 3.0))
        first.start()
        time.sleep(1.0)
        second = threading.Thread(target=send, args=(1 - slow, 0.0))
        second.start()
        first.join(120)
        second.join(120)
        statuses = sorted(results[which][0] for which in (0, 1))
        assert statuses in ([202, 409], [202, 416]), results
        winner = next(which for which in (0, 1) if results[which][0] == 202)
        accepted.append(bodies[winner])
        assert results[winner][1]["range"] == f"0-{start + len(bodies[winner]) - 1}"
        loser = results[1 - winner]
        refusals.append((loser[0], loser[2]))
    busy = [body for status, body in refusals if status == 409]
    assert busy, f"no PATCH met another one mid-chunk in four rounds: {refusals}"
    assert all(b"BLOB_UPLOAD_INVALID" in body and b"being written by another request" in body for body in busy)
    data = b"".join(accepted)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    done = httpx.put(f"{two.url}{path}", params={"digest": digest}, timeout=120)
    assert done.status_code == 201, done.text
    for node in (one, two):
        served = httpx.get(f"{node.url}/v2/lib/race/blobs/{digest}", follow_redirects=True, timeout=120)
        assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == digest[7:]


def test_each_node_advertises_the_object_stores_chunk_minimum(nodes: tuple[Server, Server]) -> None:
    """OCI-Chunk-Min-Length is S3's 5 MiB part minimum on POST and PATCH answers; a smaller chunk is still
    accepted (buffered, its segment rewritten by the next one), and the upload finishes whole."""
    one, two = nodes
    started = httpx.post(f"{one.url}/v2/lib/minimum/blobs/uploads/", timeout=60)
    assert started.status_code == 202 and started.headers["OCI-Chunk-Min-Length"] == str(MIN_PART)
    path = _path(started.headers["Location"])
    data = random.Random(3).randbytes(MIN_PART + 500)
    small = httpx.patch(f"{two.url}{path}", content=data[:100], timeout=60,
                        headers={"Content-Type": "application/octet-stream", "Content-Range": "0-99"})
    assert small.status_code == 202 and small.headers["OCI-Chunk-Min-Length"] == str(MIN_PART)
    rest = httpx.patch(f"{one.url}{_path(small.headers['Location'])}", content=data[100:], timeout=60,
                       headers={"Content-Type": "application/octet-stream", "Content-Range": f"100-{len(data) - 1}"})
    assert rest.status_code == 202 and rest.headers["Range"] == f"0-{len(data) - 1}"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.put(f"{two.url}{path}", params={"digest": digest}, timeout=60).status_code == 201
    assert httpx.get(f"{one.url}/v2/lib/minimum/blobs/{digest}", timeout=60).content == data


def test_monolithic_uploads_go_straight_to_the_blobs_object(nodes: tuple[Server, Server], engines: Engines,
                                                           place: tuple[str, str, str]) -> None:
    """A POST ?digest= and a PUT of the whole blob to a fresh session leave no staging segment behind and no
    pending multipart upload; a wrong digest is refused (400) and leaves no object at either key."""
    one, two = nodes
    data = random.Random(8).randbytes(11 * MiB + 5)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    posted = httpx.post(f"{one.url}/v2/lib/mono/blobs/uploads/", params={"digest": digest}, content=data,
                        headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert posted.status_code == 201, posted.text
    other = data[::-1]
    other_digest = "sha256:" + hashlib.sha256(other).hexdigest()
    session = httpx.post(f"{two.url}/v2/lib/mono/blobs/uploads/", timeout=60)
    put = httpx.put(f"{one.url}{_path(session.headers['Location'])}", params={"digest": other_digest},
                    content=other, headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert put.status_code == 201, put.text
    assert _keys(engines, place, "staging/") == []
    wrong = random.Random(9).randbytes(7 * MiB)
    claimed = "sha256:" + hashlib.sha256(b"not these bytes").hexdigest()
    refused = httpx.post(f"{two.url}/v2/lib/mono/blobs/uploads/", params={"digest": claimed}, content=wrong,
                         headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "DIGEST_INVALID"
    blobs = _keys(engines, place, "blobs/")
    assert f"blobs/sha256/{claimed[7:]}" not in blobs
    assert f"blobs/sha256/{hashlib.sha256(wrong).hexdigest()}" not in blobs
    for node, want, name in ((two, data, digest), (one, other, other_digest)):
        assert httpx.get(f"{node.url}/v2/lib/mono/blobs/{name}", follow_redirects=True, timeout=120).content == want
    _, bucket, prefix = place
    s3 = boto3.client("s3", endpoint_url=engines.s3.endpoint, region_name="us-east-1")
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/").get("Uploads", []) == []


def test_skopeo_pulls_through_a_node_that_redirects_to_the_bucket(nodes: tuple[Server, Server], skopeo: Run,
                                                                  tmp_path: Path) -> None:
    """Pushed through the first node, pulled through the second (--blobs-redirect): byte for byte, the blob GETs
    answered 307 (the access log says so); a HEAD is answered by the node itself; a Range is redirected too."""
    one, two = nodes
    descriptors = write_layout(tmp_path / "img")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'img'}:v1", f"docker://{one.host}/lib/app:v1")
    skopeo("copy", "--src-tls-verify=false", f"docker://{two.host}/lib/app:v1", f"oci:{tmp_path / 'back'}:v1")
    assert layout_ref(tmp_path / "back", "v1") == descriptors["v1"]["digest"]
    assert same_blobs(tmp_path / "img", tmp_path / "back") == 4
    manifest = json.loads((tmp_path / "back" / "blobs" / "sha256" /
                           descriptors["v1"]["digest"].split(":")[1]).read_bytes())
    layer = manifest["layers"][0]["digest"]
    log = two.wait_for_log(f'"GET /v2/lib/app/blobs/{layer}" 307')
    assert f'"GET /v2/lib/app/blobs/{manifest["config"]["digest"]}" 307' in log
    head = httpx.head(f"{two.url}/v2/lib/app/blobs/{layer}", timeout=60)
    assert head.status_code == 200 and head.headers["Docker-Content-Digest"] == layer
    ranged = httpx.get(f"{two.url}/v2/lib/app/blobs/{layer}", headers={"Range": "bytes=1-10"}, timeout=60)
    assert ranged.status_code == 307
    followed = httpx.get(ranged.headers["Location"], headers={"Range": "bytes=1-10"}, timeout=60)
    whole = (tmp_path / "img" / "blobs" / "sha256" / layer.split(":")[1]).read_bytes()
    assert followed.status_code == 206 and followed.content == whole[1:11]


def test_redirect_without_an_object_store_is_refused_at_start_up(tmp_path: Path) -> None:
    [port] = free_ports(1)
    started = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--data", str(tmp_path / "data"),
                              "--listen", f"127.0.0.1:{port}", "--blobs-redirect"], capture_output=True, text=True,
                             cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert started.returncode != 0
    assert "--blobs-redirect" in started.stderr and "distributed store" in started.stderr
    assert "Traceback" not in started.stderr
