"""Faults of the distributed store's engines (issue 17, "Faults"): PostgreSQL or SeaweedFS stopped mid-way through
pushes and pulls, kept down while requests go on, then started again — and SeaweedFS frozen (SIGSTOP) for a few
seconds, the slow engine at its slowest.

One `berth serve` node (two workers) on the engines of tests/engines.py; real HTTP clients (httpx) push images
(a monolithic and a chunked blob upload, then a manifest PUT) and pull acknowledged ones, in threads, for a bounded
time. What must hold:
- every answer is the protocol's normal one or 503 with Retry-After and a JSON OCI error (code UNAVAILABLE) whose
  message names the engine that is down; never a 500, never a traceback, never a request left hanging: a request
  made while an engine is stopped is answered within UNAVAILABLE_WITHIN (seconds, not the minute-long waits of
  the clients' defaults), and one made while it is frozen within the node's S3 client limits;
- after the engine is back, without restarting Berth, pushes and pulls succeed within RECOVERY seconds, and from a
  little later on every request does;
- every manifest acknowledged (201) is there afterwards, and every blob it names verifies by digest; every tag
  listed resolves to a whole image (a manifest PUT answered 503 may have committed: then it is whole too);
- a blob upload refused mid-way (a PATCH answered 503) is absent (HEAD 404); one refused at its closing PUT is
  absent or whole (a COMMIT whose answer was lost may have taken effect), never half-written;
- `berth fsck` against the same URLs finds nothing wrong afterwards.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from cas.s3_blobs import ATTEMPTS as S3_ATTEMPTS
from cas.s3_blobs import CONNECT_TIMEOUT as S3_CONNECT_TIMEOUT
from tests.engines import Engines
from tests.serving import ROOT, Server, sha, shared_store, start_server

WARM_UP = 1.5  # seconds of load before the engine goes down
DOWN = 6.0  # seconds the engine stays down while requests go on
RECOVERY = 30.0  # after the engine is back: a push and a pull must have succeeded within this
SETTLE = 3.0  # after recovery: every request from then on succeeds; the load runs this much longer
FROZEN = 8.0  # seconds SeaweedFS is frozen in the slow case: longer than the node's S3 client waits (below)
S3_READ_TIMEOUT = 3.0  # the node's (`read_timeout` in its --blobs URL; cas/s3_blobs.py's default is longer)
UNAVAILABLE_WITHIN = 4.5  # an engine down is answered 503 this fast (about 1 s: cas/postgres_index.py FAIL_FAST,
#                          and the object store's refused connection retried once, cas/s3_blobs.py ATTEMPTS)
CLIENT_TIMEOUT = 45.0  # a request taking longer than this counts as hanging (Berth's own limits are far shorter)
PUSHERS, PULLERS = 2, 1
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Answer:
    started: float
    ended: float
    what: str  # e.g. "PATCH upload"
    status: int  # 0: no answer (a transport error or a timeout)
    retry_after: str | None = None
    body: bytes = b""
    error: str = ""


@dataclass
class Image:
    repo: str
    tag: str
    digest: str
    manifest: bytes
    blobs: list[str]


@dataclass
class Ledger:
    """What the load saw, shared by its threads."""

    answers: list[Answer] = field(default_factory=list)
    acknowledged: list[Image] = field(default_factory=list)
    refused_mid_way: list[tuple[str, str]] = field(default_factory=list)  # (repo, digest): a PATCH answered 503
    refused_at_close: list[tuple[str, str]] = field(default_factory=list)  # the closing PUT answered 503
    pulled: list[float] = field(default_factory=list)  # when a whole image was pulled and verified
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)


class Refused(Exception):
    """A request of the load answered 503 (or not as it should: the ledger has it): this image is abandoned."""


class Client:
    """One load thread's HTTP client: every answer recorded in the ledger."""

    def __init__(self, server: Server, ledger: Ledger) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT)
        self.ledger = ledger

    def call(self, method: str, path: str, expected: int, what: str, **options: object) -> httpx.Response:
        started = time.monotonic()
        try:
            response = self.http.request(method, path, **options)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.ledger.add(Answer(started, time.monotonic(), what, 0, error=f"{type(exc).__name__}: {exc}"))
            raise Refused(what) from exc
        self.ledger.add(Answer(started, time.monotonic(), what, response.status_code,
                               response.headers.get("Retry-After"), response.content))
        if response.status_code != expected:
            raise Refused(what)
        return response


def _location(response: httpx.Response) -> str:
    location = response.headers["Location"]
    return location if location.startswith("/") else "/" + location.split("/", 3)[3]


def push_monolithic(client: Client, repo: str, data: bytes) -> str:
    digest = sha(data)
    try:
        client.call("POST", f"/v2/{repo}/blobs/uploads/", 201, "POST monolithic", params={"digest": digest},
                    content=data, headers={"Content-Type": "application/octet-stream"})
    except Refused:
        with client.ledger.lock:
            client.ledger.refused_at_close.append((repo, digest))
        raise
    return digest


def push_chunked(client: Client, repo: str, data: bytes) -> str:
    digest, ledger = sha(data), client.ledger
    path = _location(client.call("POST", f"/v2/{repo}/blobs/uploads/", 202, "POST upload"))
    cut = len(data) // 2
    for a, b in ((0, cut), (cut, len(data))):
        try:
            path = _location(client.call("PATCH", path, 202, "PATCH upload", content=data[a:b], headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{a}-{b - 1}"}))
        except Refused:
            with ledger.lock:
                ledger.refused_mid_way.append((repo, digest))
            raise
    separator = "&" if "?" in path else "?"
    try:
        client.call("PUT", f"{path}{separator}digest={digest}", 201, "PUT upload")
    except Refused:
        with ledger.lock:
            ledger.refused_at_close.append((repo, digest))
        raise
    return digest


def pusher(server: Server, ledger: Ledger, number: int, stop: threading.Event) -> None:
    client = Client(server, ledger)
    repo = f"faults/w{number}-{uuid.uuid4().hex[:6]}"
    chance = random.Random(repo)  # not the same bytes as in another test of the module: none exists beforehand
    for turn in range(1_000_000):
        if stop.is_set():
            return
        try:  # fresh bytes every time: a refused blob is never pushed again, so its absence can be checked
            layers = [chance.randbytes(chance.randrange(1_000, 100_000)),
                      chance.randbytes(chance.randrange(2_000, 150_000))]
            config_bytes = json.dumps({"turn": turn, "salt": chance.random()}).encode()
            first = push_monolithic(client, repo, layers[0])
            second = push_chunked(client, repo, layers[1])
            config = push_monolithic(client, repo, config_bytes)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                           "size": len(config_bytes)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer),
                            "size": len(layer)} for layer in layers]}).encode()
            tag = f"t{turn}"
            client.call("PUT", f"/v2/{repo}/manifests/{tag}", 201, "PUT manifest", content=manifest,
                        headers={"Content-Type": MANIFEST})
        except Refused:
            time.sleep(0.2)  # as a client would before its retry (not the whole Retry-After: keep probing)
            continue
        with ledger.lock:
            ledger.acknowledged.append(Image(repo, tag, sha(manifest), manifest, [config, first, second]))


def puller(server: Server, ledger: Ledger, number: int, stop: threading.Event) -> None:
    client = Client(server, ledger)
    chance = random.Random(1000 + number)
    while not stop.is_set():
        with ledger.lock:
            images = list(ledger.acknowledged)
        if not images:
            time.sleep(0.1)
            continue
        image = chance.choice(images)
        try:
            got = client.call("GET", f"/v2/{image.repo}/manifests/{image.tag}", 200, "GET manifest",
                              headers={"Accept": MANIFEST})
            assert got.content == image.manifest, f"{image.repo}:{image.tag} changed"
            for digest in image.blobs:
                blob = client.call("GET", f"/v2/{image.repo}/blobs/{digest}", 200, "GET blob")
                assert sha(blob.content) == digest, f"blob {digest} of {image.repo} served wrong bytes"
            client.call("GET", f"/v2/{image.repo}/tags/list", 200, "GET tags")
        except Refused:
            time.sleep(0.2)
            continue
        with ledger.lock:
            ledger.pulled.append(time.monotonic())


class Load:
    """The pushers and pullers, running until `finish`."""

    def __init__(self, server: Server) -> None:
        self.ledger = Ledger()
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(work, server, n), daemon=True)
                        for work, count in ((pusher, PUSHERS), (puller, PULLERS)) for n in range(count)]
        for thread in self.threads:
            thread.start()

    def _run(self, work: Callable[[Server, Ledger, int, threading.Event], None], server: Server, n: int) -> None:
        try:
            work(server, self.ledger, n, self.stop)
        except BaseException as exc:  # an assertion of a puller: reported by finish()
            self.failures.append(exc)

    def finish(self) -> Ledger:
        self.stop.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT + 10)
            assert not thread.is_alive(), "a load thread is still waiting for an answer"
        if self.failures:
            raise self.failures[0]
        return self.ledger

    def wait_recovered(self, since: float) -> float:
        """When both a push was acknowledged and a pull verified after `since` (at most RECOVERY seconds on)."""
        deadline = since + RECOVERY
        while time.monotonic() < deadline:
            with self.ledger.lock:
                pushed = any(a.what == "PUT manifest" and a.status == 201 and a.started > since
                             for a in self.ledger.answers)
                pulled = any(t > since for t in self.ledger.pulled)
            if pushed and pulled:
                return time.monotonic()
            if self.failures:
                raise self.failures[0]
            time.sleep(0.1)
        self.finish()
        raise AssertionError(f"no push and pull succeeded within {RECOVERY} s of the engine's return; "
                             f"answers since: {summary(self.ledger, since)}")


def summary(ledger: Ledger, since: float = 0.0) -> str:
    """How many answers of each kind and status (from `since` on), for a failure's message."""
    counts: dict[str, int] = {}
    for answer in ledger.answers:
        if answer.started >= since:
            key = f"{answer.what} {answer.status or answer.error[:60]}"
            counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{key}: {n}" for key, n in sorted(counts.items()))


def check_answers(ledger: Ledger, engine_word: str, fault: tuple[float, float], recovered: float,
                  unavailable_within: float) -> None:
    """Every answer is a normal one or a well-formed 503 naming `engine_word`; a 503, and any answer to a request
    made during the fault, comes within `unavailable_within` seconds (not after a client's long wait); none hangs;
    after `recovered` + a short settling time (connections of the pools found broken and replaced), none is
    refused. One exception: a blob GET under way when the fault began (`fault`: from, to) may be cut off — its 200
    and headers are sent, the body can only stop short (the client sees the length unmet, and a digest would not
    verify)."""
    unavailable = 0
    for answer in ledger.answers:
        seen = f"{answer.what} -> {answer.status} {answer.error} {answer.body[:300]!r}"
        if answer.status == 0 and answer.what == "GET blob" and fault[0] - 1.0 < answer.started < fault[1] \
                and not answer.error.startswith(("ReadTimeout", "ConnectTimeout", "PoolTimeout")):
            continue
        assert answer.status != 0, f"no answer: {seen}"
        took = answer.ended - answer.started
        assert took < CLIENT_TIMEOUT, f"took {took:.1f} s: {seen}"
        if fault[0] <= answer.started < fault[1]:  # asked while the engine was down: not kept waiting for it
            assert took < unavailable_within, f"asked during the fault, answered after {took:.1f} s: {seen}"
        assert b"Traceback" not in answer.body, seen
        if answer.status == 503:
            unavailable += 1
            assert answer.retry_after is not None and int(answer.retry_after) > 0, f"no Retry-After: {seen}"
            error = json.loads(answer.body)["errors"][0]
            assert error["code"] == "UNAVAILABLE", seen
            assert engine_word in error["message"], seen
            assert took < unavailable_within, f"a 503 after {took:.1f} s: {seen}"
            assert answer.started < recovered + 2.0, f"still refused {answer.started - recovered:.1f} s " \
                                                     f"after recovery: {seen}"
        else:
            assert answer.status < 500, seen
            assert answer.status in (200, 201, 202), f"not a normal answer of this load: {seen}"
    assert unavailable, f"no request was answered 503: the fault was never seen ({summary(ledger)})"


def check_store(server: Server, ledger: Ledger) -> None:
    """Everything acknowledged is there and whole; nothing refused mid-way is visible (fsck: the module's last
    test)."""
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as http:
        verified: set[tuple[str, str]] = set()

        def whole(repo: str, reference: str, expected: bytes | None = None) -> None:
            got = http.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST})
            assert got.status_code == 200, f"{repo}:{reference} -> {got.status_code} {got.text[:200]}"
            if expected is not None:
                assert got.content == expected
            if (repo, sha(got.content)) in verified:
                return
            verified.add((repo, sha(got.content)))
            body = json.loads(got.content)
            for descriptor in [body["config"], *body["layers"]]:
                blob = http.get(f"/v2/{repo}/blobs/{descriptor['digest']}")
                assert blob.status_code == 200 and sha(blob.content) == descriptor["digest"], \
                    f"{repo}:{reference} names {descriptor['digest']}: {blob.status_code}"

        assert ledger.acknowledged, "no push was acknowledged at all"
        for image in ledger.acknowledged:
            whole(image.repo, image.tag, image.manifest)
            whole(image.repo, image.digest, image.manifest)
        for repo in {image.repo for image in ledger.acknowledged}:
            tags = http.get(f"/v2/{repo}/tags/list", params={"n": 10000})
            assert tags.status_code == 200
            for tag in tags.json()["tags"]:  # a manifest PUT answered 503 that did commit is whole too
                whole(repo, tag)
        for repo, digest in ledger.refused_mid_way:
            head = http.head(f"/v2/{repo}/blobs/{digest}")
            assert head.status_code == 404, f"{digest}: refused mid-way, yet HEAD says {head.status_code}"
        for repo, digest in ledger.refused_at_close:
            blob = http.get(f"/v2/{repo}/blobs/{digest}")
            assert blob.status_code == 404 or (blob.status_code == 200 and sha(blob.content) == digest), \
                f"{digest}: refused at its close, yet half-written ({blob.status_code})"


@pytest.fixture(scope="module")
def shared(engines: Engines) -> tuple[str, ...]:
    return shared_store(engines, f"&read_timeout={S3_READ_TIMEOUT}")


@pytest.fixture(scope="module")
def node(shared: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("faults") / "node", *shared, workers=2)
    yield server
    server.stop()


def under_load(node: Server, begin: Callable[[], None], end: Callable[[], None], seconds: float,
               engine_word: str, unavailable_within: float) -> None:
    """The load on `node`; after WARM_UP, the fault `begin`s, lasts `seconds`, `end`s (the engine is back when
    `end` returns); the load goes on until it recovered and SETTLE seconds more. Then the checks above."""
    load = Load(node)
    try:
        time.sleep(WARM_UP)
        began = time.monotonic()
        begin()
        try:
            time.sleep(seconds)
        finally:
            end()
        back = time.monotonic()
        recovered = load.wait_recovered(back)
        time.sleep(SETTLE)
    finally:
        ledger = load.finish()
    check_answers(ledger, engine_word, (began, back), recovered, unavailable_within)
    check_store(node, ledger)


def test_postgresql_stopped_and_started_under_pushes_and_pulls(node: Server, engines: Engines) -> None:
    under_load(node, engines.postgres.halt, engines.postgres.resume, DOWN, "PostgreSQL", UNAVAILABLE_WITHIN)


def test_object_store_stopped_and_started_under_pushes_and_pulls(node: Server, engines: Engines) -> None:
    under_load(node, engines.s3.halt, engines.s3.resume, DOWN, "object store", UNAVAILABLE_WITHIN)


def test_object_store_frozen_requests_end_in_bounded_time(node: Server, engines: Engines) -> None:
    """SeaweedFS frozen (SIGSTOP) for FROZEN seconds: connections are accepted and never answered. Every request
    ends in bounded time: a success once the engine goes on, or a 503 when the node's read timeout (shortened to
    S3_READ_TIMEOUT for this module) runs out first; and the node serves normally once the engine goes on.
    A frozen store is given up on after ATTEMPTS x (a connection, when the frozen server's backlog is full, and an
    answer) plus botocore's backoff between them (under 1 s), and a little more for the rest of the request."""
    under_load(node, engines.s3.pause, engines.s3.unpause, FROZEN, "object store",
               S3_ATTEMPTS * (S3_CONNECT_TIMEOUT + S3_READ_TIMEOUT) + 3.0)


def test_fsck_finds_nothing_wrong_after_the_faults(node: Server, shared: tuple[str, ...]) -> None:
    """Last in the module: `berth fsck` against the same URLs re-hashes every blob the faults above left and
    cross-checks the index (once for all of them: it costs seconds)."""
    checked = subprocess.run([sys.executable, "-m", "adapters.cli", "fsck", *shared], capture_output=True,
                             text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
