"""Three `berth serve` processes on one PostgreSQL and one SeaweedFS bucket (tests/engines.py): issue 17's multi-node
proofs. skopeo pushes through one node and podman pulls through another; a delete on one node is seen on the others
at once; collection passes run on a node of their own, every few tenths of a second with a one-second grace and
lease, while two other nodes push images sharing layers (and delete some), after which every acknowledged manifest's
blobs are whole and fsck is clean; a node killed with SIGKILL in the middle of a push loses nothing it acknowledged,
and the client's retry through another node completes the image."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.engines import Engines
from tests.interop.conftest import Run
from tests.interop.images import Layout, write_layout
from tests.interop.test_skopeo import layout_ref, same_blobs
from tests.serving import ROOT, Server, sha, shared_store, start_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PUSHING = 20.0  # seconds of pushes beside the collector (issue 17: a bounded time)
KEPT = 3  # images each pusher keeps; it deletes one more after every push
LEASE = "1"  # seconds a HEAD protects a blob nobody references (BERTH_STORE_LEASE), on every node here


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Settings for the servers started inside the block (start_server passes the test's environment on)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def shared(engines: Engines) -> tuple[str, ...]:
    """The flags naming one PostgreSQL schema and one bucket prefix, shared by every node of the module."""
    return shared_store(engines)


@pytest.fixture(scope="module")
def nodes(shared: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, ...]]:
    """Three nodes without a collection schedule of their own (the collector test starts one that has)."""
    base = tmp_path_factory.mktemp("nodes")
    started: list[Server] = []
    try:
        with environment(BERTH_STORE_LEASE=LEASE):
            for name in ("one", "two", "three"):
                started.append(start_server(base / name, *shared, "--gc-interval", "0", workers=1))
        yield tuple(started)
    finally:
        for server in started:
            server.stop()


def berth(shared: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """A `berth` command against the module's store."""
    return subprocess.run([sys.executable, "-m", "adapters.cli", *args, *shared], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)


def assert_fsck_clean(shared: tuple[str, ...]) -> None:
    checked = berth(shared, "fsck")
    assert checked.returncode == 0 and "no damage" in checked.stdout, checked.stdout + checked.stderr


def test_skopeo_pushes_through_one_node_and_podman_pulls_through_another(
        nodes: tuple[Server, ...], skopeo: Run, podman: tuple[Run, str], tmp_path: Path) -> None:
    one, two, _ = nodes
    descriptors = write_layout(tmp_path / "img")
    manifest = json.loads((tmp_path / "img" / "blobs" / "sha256" / descriptors["v1"]["digest"][7:]).read_text())
    image_id = manifest["config"]["digest"][7:]  # podman's image ID is the config digest
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'img'}:v1", f"docker://{one.host}/lib/app:v1")
    run, _ = podman
    run("pull", "--tls-verify=false", f"{two.host}/lib/app:v1")
    # podman checked every layer against the config's diff_ids; the manifest is the one skopeo pushed.
    listed = run("images", "--no-trunc", "--format", "{{.ID}} {{.Digest}}").stdout.split()
    assert listed in ([image_id, descriptors["v1"]["digest"]], [f"sha256:{image_id}", descriptors["v1"]["digest"]])


def test_a_delete_on_one_node_is_seen_on_the_others_at_once(nodes: tuple[Server, ...], skopeo: Run,
                                                             tmp_path: Path) -> None:
    one, two, three = nodes
    descriptors = write_layout(tmp_path / "img")
    digest = descriptors["v1"]["digest"]
    for tag in ("v1", "v2"):
        skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'img'}:v1", f"docker://{one.host}/lib/del:{tag}")
    with httpx.Client(timeout=30) as http:
        # The tag, through the second node: the third lists and serves it no more, with no wait at all.
        assert http.delete(f"{two.url}/v2/lib/del/manifests/v2").status_code == 202
        assert http.get(f"{three.url}/v2/lib/del/manifests/v2").status_code == 404
        assert http.get(f"{three.url}/v2/lib/del/tags/list").json()["tags"] == ["v1"]
        assert http.head(f"{one.url}/v2/lib/del/manifests/v1").status_code == 200
        # The manifest, through the third node: gone on the first, with its remaining tag.
        assert http.delete(f"{three.url}/v2/lib/del/manifests/{digest}").status_code == 202
        for node in (one, two):
            assert http.head(f"{node.url}/v2/lib/del/manifests/{digest}").status_code == 404
            assert http.head(f"{node.url}/v2/lib/del/manifests/v1").status_code == 404


# -- collection beside pushes ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Pushed:
    repo: str
    digest: str
    body: bytes
    blobs: tuple[tuple[str, int], ...]  # (digest, size) of the config and layers


class Pusher(threading.Thread):
    """Pushes images through one node until a deadline, as a registry client does: HEAD each blob, upload the ones
    missing, PUT the manifest; a manifest refused for a blob the collector took meanwhile (MANIFEST_BLOB_UNKNOWN)
    is pushed again from the start. Every image has two layers of a pool shared by all pushers and, every other
    time, one of its own; the pusher keeps its last few images and deletes one more, so that layers lose their last
    reference while others still push them: with a small pool and few images kept, shared layers often have no
    reference left for longer than the grace period, are collected, and are pushed again right after (or while)."""

    def __init__(self, node: Server, seed: int, pool: list[bytes], deadline: float,
                 seen: set[tuple[str, str]]) -> None:
        super().__init__(name=f"pusher-{seed}")
        self.node, self.rng, self.pool, self.deadline = node, random.Random(seed), pool, deadline
        self.seen = seen  # (repository, digest) of every blob any pusher uploaded
        self.seed = seed
        self.kept: list[Pushed] = []  # acknowledged and not deleted
        self.deleted = 0
        self.refused = 0  # manifests refused because a blob was collected between its upload and the PUT
        self.again = 0  # blobs uploaded before (by any pusher) and found gone (collected) when pushed again
        self.failure: BaseException | None = None
        self.broken: list[str] = []  # what was found missing or damaged of an image before it was deleted

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.node.url, timeout=60) as http:
                count = 0
                while time.monotonic() < self.deadline:
                    count += 1
                    self.push_one(http, count)
                    if len(self.kept) > KEPT:
                        gone = self.kept.pop(self.rng.randrange(len(self.kept)))
                        self.broken.extend(damage(http, gone))  # whole until the moment it is deleted
                        answer = http.delete(f"/v2/{gone.repo}/manifests/{gone.digest}")
                        assert answer.status_code == 202, answer.text
                        self.deleted += 1
        except BaseException as exc:  # reported by the test, with the thread's name
            self.failure = exc

    def push_one(self, http: httpx.Client, count: int) -> None:
        repo = self.rng.choice(["gc/a", "gc/b"])
        layers = self.rng.sample(self.pool, 2)
        if count % 2:
            layers.append(random.Random(f"{self.seed}-{count}").randbytes(100_000))
        config = json.dumps({"pusher": self.seed, "image": count}).encode()
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                               "size": len(config)},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer),
                                "size": len(layer)} for layer in layers]}
        body = json.dumps(manifest).encode()
        for _ in range(20):
            for blob in (config, *layers):
                if http.head(f"/v2/{repo}/blobs/{sha(blob)}").status_code != 200:
                    self.again += (repo, sha(blob)) in self.seen
                    self.seen.add((repo, sha(blob)))
                    answer = http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(blob)}, content=blob,
                                       headers={"Content-Type": "application/octet-stream"})
                    assert answer.status_code == 201, answer.text
            answer = http.put(f"/v2/{repo}/manifests/{sha(body)}", content=body,
                              headers={"Content-Type": OCI_MANIFEST})
            if answer.status_code == 201:
                self.kept.append(Pushed(repo, sha(body), body,
                                        tuple((sha(b), len(b)) for b in (config, *layers))))
                return
            assert answer.status_code == 400 and "MANIFEST_BLOB_UNKNOWN" in answer.text, answer.text
            self.refused += 1
        raise AssertionError(f"image {count} of {self.name} was refused 20 times in a row")


def damage(http: httpx.Client, image: Pushed) -> list[str]:
    """What is missing or damaged of an acknowledged image: its manifest and each of its blobs, byte for byte."""
    answer = http.get(f"/v2/{image.repo}/manifests/{image.digest}")
    if answer.status_code != 200 or answer.content != image.body:
        return [f"{image.repo}@{image.digest}: manifest {answer.status_code}"]
    found = []
    for digest, size in image.blobs:
        blob = http.get(f"/v2/{image.repo}/blobs/{digest}")
        if blob.status_code != 200 or len(blob.content) != size or sha(blob.content) != digest:
            found.append(f"{image.repo}@{image.digest}: blob {digest} {blob.status_code}")
    return found


def collected_blobs(http: httpx.Client) -> float:
    """berth_gc_blobs_collected on the collector node's /metrics."""
    text = http.get("/metrics").text
    found = re.search(r"^berth_gc_blobs_collected_total ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_collection_passes_on_one_node_while_two_others_push_lose_no_blob(
        nodes: tuple[Server, ...], shared: tuple[str, ...], tmp_path: Path) -> None:
    _, two, three = nodes
    with environment(BERTH_STORE_GRACE="1", BERTH_STORE_LEASE=LEASE):
        collector = start_server(tmp_path / "collector", *shared, "--gc-interval", "0.3", "--metrics", workers=1)
    try:
        pool = [random.Random(f"shared-{i}").randbytes(50_000) for i in range(24)]
        deadline = time.monotonic() + PUSHING
        seen: set[tuple[str, str]] = set()
        pushers = [Pusher(node, seed, pool, deadline, seen) for seed, node in enumerate((two, three, two, three))]
        for pusher in pushers:
            pusher.start()
        for pusher in pushers:
            pusher.join(PUSHING + 120)
            assert not pusher.is_alive(), f"{pusher.name} did not finish"
        failures = [f"{p.name}: {p.failure!r}" for p in pushers if p.failure is not None]
        assert not failures, failures
        # Every image acknowledged was whole until its pusher deleted it (checked just before), and the ones kept
        # are whole now (checked through the collector's own node, which serves as any other).
        broken = [line for pusher in pushers for line in pusher.broken]
        kept = [image for pusher in pushers for image in pusher.kept]
        with httpx.Client(base_url=collector.url, timeout=60) as http:
            collected = collected_blobs(http)
            for image in kept:
                broken.extend(damage(http, image))
        summary = (f"{len(kept)} images kept, {sum(p.deleted for p in pushers)} deleted, "
                   f"{sum(p.refused for p in pushers)} manifest PUTs refused, {collected:.0f} blobs collected, "
                   f"{sum(p.again for p in pushers)} pushed again after their collection")
        assert not broken, f"{len(broken)} manifests with a missing blob ({summary}): {broken[:5]}"
        # The collector did work beside the pushes, shared layers among it (3 to 11 pushed again after their
        # collection, in runs of 20 s here), or the test proves nothing.
        pushed = len(kept) + sum(p.deleted for p in pushers)
        assert pushed >= 20 and collected >= 20 and sum(p.again for p in pushers) >= 1, summary
    finally:
        collector.stop()
    assert_fsck_clean(shared)


# -- a node killed mid-push -----------------------------------------------------------------------------------------
def location(answer: httpx.Response) -> str:
    """The upload URL's path (a Location may be absolute or relative)."""
    value = answer.headers["Location"]
    return value if value.startswith("/") else "/" + value.split("/", 3)[3]


def test_a_node_killed_mid_push_loses_nothing_acknowledged_and_the_retry_elsewhere_succeeds(
        nodes: tuple[Server, ...], shared: tuple[str, ...], tmp_path: Path) -> None:
    """Through node A: the config and a small layer uploaded (201), a large layer's first chunk accepted (202), its
    second chunk half sent when A is killed with SIGKILL. fsck finds nothing wrong. Through node B, the client asks
    where the upload stands (exactly the acknowledged bytes), sends the rest, closes it and puts the manifest; node C
    serves the image byte for byte."""
    _, b, c = nodes
    with environment(BERTH_STORE_LEASE=LEASE):
        a = start_server(tmp_path / "a", *shared, "--gc-interval", "0", workers=1)
    rng = random.Random(17)
    config, small, large = b'{"architecture":"amd64","os":"linux"}', rng.randbytes(50_000), rng.randbytes(14 << 20)
    first = 6 << 20  # above S3's 5 MiB part size: the chunk is in the bucket when it is acknowledged
    repo = "lib/killed"
    sent_half = threading.Event()
    killed = threading.Event()

    def second_chunk() -> Iterator[bytes]:
        rest = large[first:]
        yield rest[:1 << 20]
        yield rest[1 << 20:2 << 20]
        sent_half.set()
        killed.wait(30)
        yield rest[2 << 20:]

    try:
        with httpx.Client(base_url=a.url, timeout=60) as http:
            for blob in (config, small):
                assert http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(blob)}, content=blob,
                                 headers={"Content-Type": "application/octet-stream"}).status_code == 201
            started = http.post(f"/v2/{repo}/blobs/uploads/")
            assert started.status_code == 202
            path = location(started)
            accepted = http.patch(path, content=large[:first], headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"0-{first - 1}"})
            assert accepted.status_code == 202 and accepted.headers["Range"] == f"0-{first - 1}"
            path = location(accepted)
            outcome: list[BaseException | int] = []

            def send() -> None:
                try:
                    outcome.append(http.patch(path, content=second_chunk(), headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{first}-{len(large) - 1}"}).status_code)
                except BaseException as exc:
                    outcome.append(exc)

            sender = threading.Thread(target=send)
            sender.start()
            assert sent_half.wait(30)
            time.sleep(0.2)  # the server is reading the chunk's body
            a.kill()
            killed.set()
            sender.join(60)
            assert outcome and isinstance(outcome[0], httpx.TransportError), outcome  # never acknowledged
    finally:
        killed.set()
        if a.process.poll() is None:
            a.kill()
    assert_fsck_clean(shared)

    with httpx.Client(base_url=b.url, timeout=60) as http:
        status = http.get(path)  # the retry: where does the upload stand, asked of another node
        assert status.status_code == 204 and status.headers["Range"] == f"0-{first - 1}", status.headers
        done = http.put(location(status), params={"digest": sha(large)}, content=large[first:],
                        headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(blob),
                        "size": len(blob)} for blob in (small, large)]}).encode()
        assert http.put(f"/v2/{repo}/manifests/v1", content=manifest,
                        headers={"Content-Type": OCI_MANIFEST}).status_code == 201
    with httpx.Client(base_url=c.url, timeout=60) as http:
        assert http.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}).content == manifest
        for blob in (config, small, large):
            answer = http.get(f"/v2/{repo}/blobs/{sha(blob)}")
            assert answer.status_code == 200 and hashlib.sha256(answer.content).digest() == \
                hashlib.sha256(blob).digest()


def test_skopeo_killed_with_its_node_mid_layer_pushes_again_through_another(
        nodes: tuple[Server, ...], shared: tuple[str, ...], engines: Engines, skopeo: Run,
        client_env: dict[str, str], tmp_path: Path) -> None:
    """skopeo pushes an image with a 48 MiB layer through node A, killed with SIGKILL once the layer's first staged
    segment is in the bucket (so surely mid-layer): skopeo fails, fsck is clean, the same copy through node B
    succeeds, and node C serves the image back byte for byte."""
    _, b, c = nodes
    layout = Layout(tmp_path / "img")
    layout.tag(layout.raw_image([layout.raw_layer(48, 48 << 20)], note="killed"), "v1")
    parts = urlsplit(shared[shared.index("--blobs") + 1])
    bucket, staging = parts.netloc, parts.path.strip("/") + "/staging/"
    s3 = engines.s3.client()
    a = start_server(tmp_path / "a", *shared, "--gc-interval", "0", workers=1)
    try:
        push = subprocess.Popen(
            [shutil.which("skopeo") or "skopeo", "--policy", client_env["BERTH_POLICY"], "copy",
             "--dest-tls-verify=false", f"oci:{tmp_path / 'img'}:v1", f"docker://{a.host}/lib/big:v1"],
            env=client_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not any(item["Key"].rsplit("/", 1)[-1] != "session"
                          for item in s3.list_objects_v2(Bucket=bucket, Prefix=staging).get("Contents", [])):
                assert push.poll() is None, f"skopeo ended before its layer was staged: {push.stderr}"
                assert time.monotonic() < deadline, "the layer's first segment never reached the bucket"
                time.sleep(0.02)
            a.kill()
            _, errors = push.communicate(timeout=120)
            assert push.returncode != 0, "skopeo finished before its node was killed: nothing was tested"
        finally:
            if push.poll() is None:
                push.kill()
                push.wait()
    finally:
        if a.process.poll() is None:
            a.kill()
    assert_fsck_clean(shared)
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'img'}:v1", f"docker://{b.host}/lib/big:v1")
    skopeo("copy", "--src-tls-verify=false", f"docker://{c.host}/lib/big:v1", f"oci:{tmp_path / 'back'}:v1")
    assert layout_ref(tmp_path / "back", "v1") == layout_ref(tmp_path / "img", "v1")
    assert same_blobs(tmp_path / "img", tmp_path / "back") == 3  # manifest, config, the layer
