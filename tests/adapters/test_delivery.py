"""Webhook delivery, end to end: a real `berth serve` (two workers) POSTing to real HTTP receivers on loopback.

The receivers misbehave as endpoints do (500, an answer slower than the timeout, a reset connection, nothing
listening at all, down while the server is killed) and the tests check what an endpoint's owner relies on: every
event arrives, in order per repository, each `id` at least once with duplicates recognisable by it, signed when a
secret is set; a dead endpoint holds up neither a live one nor pushes; dead letters can be replayed; and an event
committed before a kill -9 is delivered after the restart. Retry settings are shortened through the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adapters.test_http import image, put_manifest
from tests.conftest import PLACES, new_place
from tests.serving import ROOT, Server, free_port, start_server

TIMEOUT = 0.5  # BERTH_WEBHOOK_TIMEOUT below
PUSHED = "org.berth.manifest.pushed"
SECRET = "s3cret-for-hmac"
AUTHORIZATION = "Bearer tok-9f8e7d6c5b4a"
# Distribution's notifications/event.go: Event, RequestRecord, ActorRecord, SourceRecord (the compat envelope)
COMPAT_EVENT = {"id", "timestamp", "action", "target", "request", "actor", "source"}
COMPAT_TARGET = {"mediaType", "size", "digest", "length", "repository", "url", "tag", "fromRepository",
                 "references", "urls", "annotations"}
COMPAT_REQUEST = {"id", "addr", "host", "method", "useragent"}


@pytest.fixture(autouse=True)
def short_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff in tenths of a second, six tries, half a second to answer (the server inherits the environment)."""
    for name, value in (("RETRY_BASE", "0.05"), ("RETRY_CAP", "0.2"), ("RETRY_LIMIT", "6"),
                        ("TIMEOUT", str(TIMEOUT)), ("LEASE", "2"), ("POLL", "0.1")):
        monkeypatch.setenv(f"BERTH_WEBHOOK_{name}", value)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    doc: Any  # a CloudEvent, a compat envelope {"events": [...]} or a CloudEvents batch [...]

    @property
    def id(self) -> str:
        if isinstance(self.doc, list):
            return str(self.doc[0]["id"])
        return str(self.doc["events"][0]["id"] if "events" in self.doc else self.doc["id"])


@dataclass
class Receiver:
    """An endpoint on loopback. The first `fail_first` tries of each event fail in turn by a 500, an answer after
    the timeout and a reset connection; while `down`, every try gets a 503. `accepted` holds what it answered 200."""
    fail_first: int = 0
    port: int = 0
    down: bool = False
    tries: Counter[str] = field(default_factory=Counter)
    accepted: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got = Received({k.lower(): v for k, v in self.headers.items()}, body, json.loads(body))
                receiver.tries[got.id] += 1
                n = receiver.tries[got.id]
                if receiver.down:
                    self.send_response(503)
                elif n <= receiver.fail_first and n % 3 == 1:
                    self.send_response(500)
                elif n <= receiver.fail_first and n % 3 == 2:
                    time.sleep(TIMEOUT + 0.4)  # the server has given up by now: a try that failed
                    self.send_response(200)
                elif n <= receiver.fail_first:  # reset: RST instead of an answer
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                else:
                    receiver.accepted.append(got)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *_: Any) -> None:  # the reset connections
                pass

        self.httpd = Quiet(("127.0.0.1", self.port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def first_arrivals(self) -> list[Received]:
        seen: set[str] = set()
        return [r for r in self.accepted if not (r.id in seen or seen.add(r.id))]  # type: ignore[func-returns-value]


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]
    yield make
    for r in made:
        r.close()


@pytest.fixture(params=PLACES)
def served(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server on a fresh store of each kind (`[embedded]`, `[distributed]`): webhooks, their outbox and their
    delivery state live in the store."""
    server = start_server(new_place(request.param, request))
    yield server
    server.stop()


def berth(server: Server | Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A berth command on the server's store (a path: on that data directory)."""
    flags = server.place.flags() if isinstance(server, Server) else ("--data", str(server))
    return subprocess.run([sys.executable, "-m", "adapters.cli", *args, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def push(server: Server, repo: str, tag: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = put_manifest(http, repo, tag, image(http, repo, tag.encode()))
        assert r.status_code == 201, r.text


def pushed_subjects(receiver: Receiver) -> list[str]:
    """repo:tag of each manifest-pushed event, in order of first arrival (its subject is repo@digest)."""
    return [f'{r.doc["subject"].split("@")[0]}:{r.doc["data"].get("tag")}' for r in receiver.first_arrivals()
            if r.doc.get("type") == PUSHED]


def test_every_event_arrives_in_order_through_failures(served: Server, receivers: Callable[..., Receiver]) -> None:
    flaky = receivers(fail_first=3)  # each event: 500, too slow, reset, then accepted
    ok(berth(served, "webhook", "add", "flaky", flaky.url, "--secret", SECRET, "--events", PUSHED))
    expected = {"syn1/a": ["syn1/a:v1", "syn1/a:v2", "syn1/a:v3"], "syn1/b": ["syn1/b:v1", "syn1/b:v2"]}
    for tag in ("v1", "v2", "v3"):
        push(served, "syn1/a", tag)
        if tag != "v3":
            push(served, "syn1/b", tag)
    wait_for(lambda: len(pushed_subjects(flaky)) >= 5, 40, f"5 events through the failures: {flaky.tries}")

    firsts = flaky.first_arrivals()
    for repo, subjects in expected.items():  # in push order, per repository
        assert [s for s in pushed_subjects(flaky) if s.startswith(repo + ":")] == subjects
    seqs = [r.doc["berthseq"] for r in firsts]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # one endpoint: in seq order overall
    assert all(flaky.tries[r.id] >= 4 for r in firsts)  # every one went through the three failures
    for got in flaky.accepted:
        assert got.headers["content-type"] == "application/cloudevents+json"
        expected_sig = "sha256=" + hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(got.headers["berth-signature"], expected_sig)
        assert got.doc["specversion"] == "1.0" and got.doc["type"] == PUSHED
    by_id: dict[str, bytes] = {}
    for got in flaky.accepted:  # a duplicate is the same event: same id, same body
        assert by_id.setdefault(got.id, got.body) == got.body


@pytest.mark.parametrize("served", ["embedded"], indirect=True)  # the format of a batch: no store's business
def test_cloudevents_batches_arrive_whole_signed_and_in_order(served: Server,
                                                              receivers: Callable[..., Receiver]) -> None:
    batched = receivers()
    ok(berth(served, "webhook", "add", "b", batched.url, "--batch", "--secret", SECRET, "--events", PUSHED))
    assert "cloudevents-batch" in ok(berth(served, "webhook", "list"))
    for tag in ("v1", "v2", "v3", "v4"):
        push(served, "syn4/app", tag)

    def tags() -> list[str]:
        return [event["data"]["tag"] for got in batched.accepted for event in got.doc]
    wait_for(lambda: len(tags()) >= 4, 10, f"4 events in batches, got {tags()}")
    assert tags() == ["v1", "v2", "v3", "v4"]
    seqs = [event["berthseq"] for got in batched.accepted for event in got.doc]
    assert seqs == sorted(seqs) and len({e["id"] for got in batched.accepted for e in got.doc}) == 4
    for got in batched.accepted:
        assert got.headers["content-type"] == "application/cloudevents-batch+json"
        expected_sig = "sha256=" + hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(got.headers["berth-signature"], expected_sig)
        assert all(event["specversion"] == "1.0" and event["type"] == PUSHED for event in got.doc)
    refused = berth(served, "webhook", "add", "c", batched.url, "--batch", "--format", "compat")
    assert refused.returncode == 1 and "--batch is for the cloudevents format" in refused.stderr


def test_a_dead_endpoint_beside_a_live_one_then_dead_letters_and_replay(
        served: Server, receivers: Callable[..., Receiver]) -> None:
    dead_port = free_port()  # nothing listens there: connection refused
    live = receivers()
    ok(berth(served, "webhook", "add", "dead", f"http://127.0.0.1:{dead_port}/hook", "--events", PUSHED))
    ok(berth(served, "webhook", "add", "live", live.url, "--format", "compat", "--authorization", AUTHORIZATION))
    started = time.monotonic()
    for tag in ("v1", "v2", "v3"):
        push(served, "syn2/app", tag)
    pushes = time.monotonic() - started
    assert pushes < 5, f"three pushes took {pushes:.1f} s"

    def live_tags() -> list[str]:
        return [e["target"].get("tag") for r in live.first_arrivals() for e in r.doc["events"]
                if e["action"] == "push"]
    wait_for(lambda: live_tags() == ["v1", "v2", "v3"], 3, f"the live endpoint's 3 pushes, got {live_tags()}")

    for got in live.accepted:  # the Distribution envelope, field for field
        assert got.headers["content-type"] == "application/vnd.docker.distribution.events.v1+json"
        assert got.headers["authorization"] == AUTHORIZATION
        assert "berth-signature" not in got.headers
        assert set(got.doc) == {"events"}
        for event in got.doc["events"]:
            assert set(event) == COMPAT_EVENT
            assert set(event["target"]) <= COMPAT_TARGET and {"mediaType", "digest", "size", "repository"} \
                <= set(event["target"])
            assert set(event["request"]) == COMPAT_REQUEST and set(event["actor"]) == {"name"}
            assert set(event["source"]) == {"addr", "instanceID"}
            assert event["target"]["repository"] == "syn2/app"

    listing = ok(berth(served, "webhook", "list"))
    assert "live" in listing and "dead" in listing and "authorization=Bearer ***" in listing
    assert AUTHORIZATION.split()[1] not in listing and AUTHORIZATION.split()[1] not in served.log_text()

    def dead_letters() -> list[str]:
        return ok(berth(served, "webhook", "dead", "dead")).splitlines()
    wait_for(lambda: len(dead_letters()) == 3, 20, "3 dead letters after 6 tries each")
    assert all("6 tries" in line for line in dead_letters())

    late = receivers(port=dead_port)  # the endpoint comes up; its dead letters are sent again on request
    ok(berth(served, "webhook", "replay", "dead", "--all"))
    wait_for(lambda: len(pushed_subjects(late)) == 3, 5, "the replayed events")
    assert pushed_subjects(late) == ["syn2/app:v1", "syn2/app:v2", "syn2/app:v3"]
    wait_for(lambda: dead_letters() == [], 3, "no dead letters left")
    push(served, "syn2/app", "v4")  # and the endpoint goes on with new events
    wait_for(lambda: pushed_subjects(late)[-1:] == ["syn2/app:v4"], 5, "a new event after the replay")

    removed = berth(served, "webhook", "remove", "nosuch")
    assert removed.returncode == 1 and removed.stderr.startswith("berth: no webhook nosuch")
    assert len(removed.stderr.splitlines()) == 1


def test_an_event_committed_before_a_kill_is_delivered_after_the_restart(
        tmp_path: Path, receivers: Callable[..., Receiver]) -> None:
    endpoint = receivers()
    endpoint.down = True
    server = start_server(tmp_path / "data")
    try:
        ok(berth(server, "webhook", "add", "hook", endpoint.url, "--events", PUSHED))
        push(server, "syn3/app", "v1")  # committed; the endpoint answers 503
        wait_for(lambda: sum(endpoint.tries.values()) >= 1, 5, "a first try")
        server.kill()
    finally:
        server.stop()
    assert endpoint.accepted == []
    endpoint.down = False
    server = start_server(tmp_path / "data")
    try:
        wait_for(lambda: pushed_subjects(endpoint) == ["syn3/app:v1"], 10, "the event after the restart")
    finally:
        server.stop()


def test_webhook_commands_say_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    start_server(tmp_path / "data").stop()  # a data directory
    data = tmp_path / "data"
    for args, message in (
            (("add", "x", "ftp://example.org/"), "a webhook URL is http:// or https://"),
            (("add", "x", "http://u:p@127.0.0.1/"), "cannot carry credentials"),
            (("add", "x", "http://127.0.0.1/", "--events", "org.berth.nope"), "unknown event type"),
            (("add", "Bad Name", "http://127.0.0.1/"), "invalid webhook name"),
            (("dead", "nosuch"), "no webhook nosuch"),
            (("replay", "nosuch", "--all"), "no webhook nosuch")):
        result = berth(data, "webhook", *args)
        assert result.returncode == 1 and message in result.stderr and len(result.stderr.splitlines()) == 1, \
            result.stderr
    ok(berth(data, "webhook", "add", "x", "http://127.0.0.1:9/", "--secret", "hush"))
    assert "hush" not in ok(berth(data, "webhook", "list"))
    again = berth(data, "webhook", "add", "x", "http://127.0.0.1:9/")
    assert again.returncode == 1 and "already exists" in again.stderr
    replay = berth(data, "webhook", "replay", "x")
    assert replay.returncode == 1 and "--seq N or --all" in replay.stderr
