"""Two `berth serve` processes on one PostgreSQL and one S3 bucket (the engines of tests/engines.py): an image
pushed through one is pulled through the other, byte for byte, and a tag moved on one is seen on the other at once.
(The rest of issue 17's multi-node proofs build on this set-up.)"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engines import Engines
from tests.interop.conftest import Run
from tests.interop.images import write_layout
from tests.interop.test_skopeo import layout_ref, same_blobs
from tests.serving import ROOT, Server, shared_store, start_server


@pytest.fixture(scope="module")
def shared(engines: Engines) -> tuple[str, ...]:
    """The flags naming one PostgreSQL schema and one bucket prefix."""
    return shared_store(engines)


@pytest.fixture(scope="module")
def nodes(shared: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    base = tmp_path_factory.mktemp("nodes")
    first = start_server(base / "one", *shared, workers=1)
    try:
        second = start_server(base / "two", *shared, workers=1)
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


def test_pushed_through_one_node_pulled_through_another(nodes: tuple[Server, Server], skopeo: Run,
                                                        tmp_path: Path) -> None:
    one, two = nodes
    descriptors = write_layout(tmp_path / "img")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'img'}:v1", f"docker://{one.host}/lib/app:v1")
    skopeo("copy", "--src-tls-verify=false", f"docker://{two.host}/lib/app:v1", f"oci:{tmp_path / 'back'}:v1")
    assert layout_ref(tmp_path / "back", "v1") == descriptors["v1"]["digest"]
    assert same_blobs(tmp_path / "img", tmp_path / "back") == 4  # manifest, config, two layers
    # A tag moved through the second node is what the first one lists and serves at once.
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{two.host}/lib/app:v1",
           f"docker://{two.host}/lib/app:v2")
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{one.host}/lib/app").stdout)
    assert tags["Tags"] == ["v1", "v2"]


def test_fsck_and_gc_commands_work_on_the_distributed_store(nodes: tuple[Server, Server], shared: tuple[str, ...],
                                                            tmp_path: Path) -> None:
    """After the pushes above (or on an empty store when run alone): fsck finds nothing wrong; gc runs a pass."""
    def berth(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "adapters.cli", *args, *shared], capture_output=True,
                              text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    checked = berth("fsck")
    assert checked.returncode == 0, checked.stderr
    collected = berth("gc")
    assert collected.returncode == 0, collected.stderr


def test_a_chunked_upload_whose_patches_alternate_between_nodes(nodes: tuple[Server, Server]) -> None:
    """POST on one node, PATCHes alternating between both (chunks below and above S3's 5 MiB part size), the
    closing PUT on the first: the blob is whole on both."""
    one, two = nodes
    data = random.Random(5).randbytes(12 * (1 << 20) + 333)
    cuts = [0, 1000, 6 * (1 << 20), 6 * (1 << 20) + 7, len(data)]

    def call(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(url, data=body if method in ("PATCH", "PUT", "POST") else None,
                                         method=method, headers=headers or {})
        return urllib.request.urlopen(request, timeout=60)

    with call("POST", f"{one.url}/v2/lib/chunked/blobs/uploads/") as answer:
        assert answer.status == 202
        location = answer.headers["Location"]
    path = location if location.startswith("/") else "/" + location.split("/", 3)[3]
    for turn, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        node = (one, two)[turn % 2]
        headers = {"Content-Type": "application/octet-stream", "Content-Range": f"{a}-{b - 1}"}
        with call("PATCH", node.url + path, data[a:b], headers) as answer:
            assert answer.status == 202 and answer.headers["Range"] == f"0-{b - 1}"
            path = answer.headers["Location"]
            path = path if path.startswith("/") else "/" + path.split("/", 3)[3]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    separator = "&" if "?" in path else "?"
    with call("PUT", f"{one.url}{path}{separator}digest={digest}") as answer:
        assert answer.status == 201
    for node in nodes:
        with call("GET", f"{node.url}/v2/lib/chunked/blobs/{digest}") as answer:
            assert hashlib.sha256(answer.read()).hexdigest() == digest.split(":")[1]


def test_berth_compact_on_the_distributed_store_and_both_nodes_serve_the_original(
        nodes: tuple[Server, Server], shared: tuple[str, ...]) -> None:
    """A CSV-like blob pushed through one node; `berth compact` on the shared store keeps it as a .zf1 object; both
    nodes serve it byte for byte, whole and by Range (the frames a range touches, by ranged GETs)."""
    one, two = nodes
    rows = random.Random(11)
    data = b"".join(b"2026-12-02,syn1,%d,%d,alpha beta gamma\n" % (rows.randrange(10**6), i)
                    for i in range(60_000))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    request = urllib.request.Request(f"{one.url}/v2/lib/table/blobs/uploads/?digest={digest}", data=data,
                                     method="POST", headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 201
    compacted = subprocess.run([sys.executable, "-m", "adapters.cli", "compact", *shared], capture_output=True,
                               text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert compacted.returncode == 0, compacted.stderr
    assert f"compressed {digest}" in compacted.stdout
    for node in (two, one):
        with urllib.request.urlopen(f"{node.url}/v2/lib/table/blobs/{digest}", timeout=60) as answer:
            assert answer.read() == data
        ranged = urllib.request.Request(f"{node.url}/v2/lib/table/blobs/{digest}",
                                        headers={"Range": "bytes=300000-1000000"})
        with urllib.request.urlopen(ranged, timeout=60) as answer:
            assert answer.status == 206 and answer.read() == data[300000:1000001]
