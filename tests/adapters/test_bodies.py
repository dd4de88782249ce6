"""Request bodies under attack, against a real `berth serve`: trickling uploads hold no thread, a stalled body is cut
off by the minimum-rate rule (408, connection closed, nothing partial kept), and one client's bodies are capped (429).
Raw sockets on loopback only (several 127.0.x.y source addresses stand for several clients); every socket is closed
at the end."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serving import Place, Server, sha, start_server

MiB = 1 << 20



def serve(place: Place | Path, **limits: str) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as env:
        for key, value in limits.items():
            env.setenv(f"BERTH_BODY_{key.upper()}", value)
        server = start_server(place, workers=1)  # one process: the per-process caps are exact
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The caps on threads and on one client's bodies are the adapter's, the same on any store: the embedded one."""
    yield from serve(tmp_path_factory.mktemp("bodies") / "data")


STRICT = {"grace": "2", "min_rate": "1000", "idle": "2"}


@pytest.fixture(scope="module")
def strict_server(place: Place) -> Iterator[Server]:
    """On each store (tests/conftest.py `place`): what a cut-off body leaves behind is the store's to keep or drop."""
    yield from serve(place, **STRICT)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    after: float  # seconds from the body's start to the answer


class RawBody:
    """A request whose body the test sends by hand, as slowly as it likes."""

    def __init__(self, server: Server, method: str, path: str, length: int, first: bytes = b"",
                 headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> None:
        host, port = server.host.split(":")
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.connect((host, int(port)))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Length: {length}\r\n{extra}"
                          "\r\n".encode() + first)
        self.started = time.monotonic()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answered(self) -> bool:
        """Whether the server has answered (or closed) yet, without waiting."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    def answer(self, timeout: float = 15) -> Answer:
        """The response (its head, then Content-Length bytes of body)."""
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536) or b"\r\n\r\n"
        after = time.monotonic() - self.started
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            body += self.sock.recv(65536) or b"!"  # a short body shows as a bad JSON below
        return Answer(int(lines[0].split()[1]), headers, body, after)

    def closed(self, timeout: float = 2) -> bool:
        """Whether the server closes the connection (after its answer) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_bodies() -> Iterator[list[RawBody]]:
    opened: list[RawBody] = []
    try:
        yield opened
    finally:
        for body in opened:
            body.close()


def error(answer: Answer) -> dict[str, str]:
    found: dict[str, str] = json.loads(answer.body)["errors"][0]
    return found


def new_session(http: httpx.Client, repo: str) -> str:
    r = http.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    return str(r.headers["Location"])


# -- (1) trickling uploads hold no thread ---------------------------------------------------------------------------
def test_200_trickling_uploads_starve_nothing(default_server: Server) -> None:
    """The issue's attack: 200 uploads trickling one byte every few seconds (from 25 addresses, 8 each: within the
    per-client cap, so every one of them is streaming). A blob HEAD still answers within 1 s and a 1 MiB upload
    succeeds; the trickles stay open (the 20 s grace has not run out), none refused."""
    blob = os.urandom(1000)
    with httpx.Client(base_url=default_server.url, timeout=30) as http, raw_bodies() as trickles:
        assert http.post("/v2/attack/blobs/uploads/", params={"digest": sha(blob)}, content=blob).status_code == 201
        target = sha(os.urandom(32))
        for i in range(200):
            source = f"127.0.1.{1 + i // 8}"
            if i % 2:
                path = new_session(http, "attack")
                trickles.append(RawBody(default_server, "PATCH", path, 1 << 30, b"x", source=source))
            else:
                trickles.append(RawBody(default_server, "POST", f"/v2/attack/blobs/uploads/?digest={target}",
                                        1 << 30, b"x", source=source))
        for _ in range(2):
            time.sleep(2)
            for trickle in trickles:
                trickle.send(b"x")
        for _ in range(3):
            started = time.monotonic()
            r = http.head(f"/v2/attack/blobs/{sha(blob)}")
            latency = time.monotonic() - started
            assert r.status_code == 200 and latency < 1.0, (r.status_code, latency)
        data = os.urandom(MiB)
        r = http.post("/v2/attack/blobs/uploads/", params={"digest": sha(data)}, content=data)
        assert r.status_code == 201, r.text
        assert http.get(f"/v2/attack/blobs/{sha(data)}").content == data
        assert not any(trickle.answered() for trickle in trickles)  # all 200 still streaming: none refused


# -- (2) a stalled body is cut off ----------------------------------------------------------------------------------
def test_stalled_bodies_are_cut_off_and_leave_nothing(strict_server: Server) -> None:
    """Under grace 2 s, min_rate 1000 bytes/s, idle 2 s: a body that stops, whether after 10 bytes or after 16 MiB
    (when a worker thread is already writing it), is answered 408 and closed within the rule's bound. The upload
    session stays at its verified offset and no partial blob or manifest becomes visible."""
    server = strict_server
    with httpx.Client(base_url=server.url, timeout=30) as http, raw_bodies() as bodies:
        data = os.urandom(20 * MiB)
        verified = 100_000
        early = new_session(http, "stall/early")
        late = new_session(http, "stall/late")
        for session in (early, late):
            r = http.patch(session, content=data[:verified], headers={"Content-Range": f"0-{verified - 1}"})
            assert r.status_code == 202
        rest = len(data) - verified
        content_range = {"Content-Range": f"{verified}-{len(data) - 1}"}
        bodies += [
            RawBody(server, "PATCH", early, rest, data[verified:verified + 10], content_range),
            RawBody(server, "PATCH", late, rest, data[verified:verified + 16 * MiB], content_range),
            RawBody(server, "POST", f"/v2/stall/mono/blobs/uploads/?digest={sha(data)}", len(data), data[:10]),
            RawBody(server, "PUT", "/v2/stall/manifest/manifests/v1", 1000, b'{"schemaVersion": 2',
                    {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}),
        ]
        answers = [body.answer() for body in bodies]
        for answer in answers:
            assert answer.status == 408 and answer.headers.get("connection") == "close"
            assert 1.5 <= answer.after <= 8, answer.after  # grace/idle 2 s, plus scheduling on a busy machine
            assert "stalled" in error(answer)["message"] and "must start within 2 s" in error(answer)["message"]
        assert [error(a)["code"] for a in answers] == ["BLOB_UPLOAD_INVALID"] * 3 + ["MANIFEST_INVALID"]
        assert "nothing arrived for 2 s after" in error(answers[1])["message"]
        assert all(body.closed() for body in bodies)
        for session in (early, late):  # still at the verified offset: the rest appends there and completes
            r = http.get(session)
            assert r.status_code == 204 and r.headers["Range"] == f"0-{verified - 1}"
            r = http.put(session, params={"digest": sha(data)}, content=data[verified:], headers=content_range)
            assert r.status_code == 201, r.text
        assert http.head(f"/v2/stall/mono/blobs/{sha(data)}").status_code == 404
        assert http.head("/v2/stall/manifest/manifests/v1").status_code == 404


def test_a_slow_body_above_the_minimum_rate_completes(strict_server: Server) -> None:
    """Past the 2 s grace, a body arriving at 1500 bytes/s (above the 1000 bytes/s minimum) completes; one at
    500 bytes/s is cut off once its 2 s grace plus 1 s per 1000 bytes is spent (at ~4 s)."""
    fast, slow = os.urandom(4500), os.urandom(4500)
    with httpx.Client(base_url=strict_server.url, timeout=30) as http, raw_bodies() as bodies:
        bodies += [RawBody(strict_server, "POST", f"/v2/slow/ok/blobs/uploads/?digest={sha(fast)}", len(fast)),
                   RawBody(strict_server, "POST", f"/v2/slow/cut/blobs/uploads/?digest={sha(slow)}", len(slow))]
        for i in range(15):  # 300 and 100 bytes every 0.2 s, for 3 s
            bodies[0].send(fast[i * 300:(i + 1) * 300])
            if not bodies[1].answered():
                bodies[1].send(slow[i * 100:(i + 1) * 100])
            time.sleep(0.2)
        ok = bodies[0].answer()
        assert ok.status == 201 and ok.after >= 2.8
        with contextlib.suppress(OSError):  # the server may close it while we send
            while not bodies[1].answered():
                bodies[1].send(slow[1500:1600])
                time.sleep(0.2)
        cut = bodies[1].answer()
        assert cut.status == 408 and 3.0 <= cut.after <= 9 and bodies[1].closed(), cut.after
        assert http.get(f"/v2/slow/ok/blobs/{sha(fast)}").content == fast
        assert http.head(f"/v2/slow/cut/blobs/{sha(slow)}").status_code == 404


# -- (3) one client's bodies are capped -----------------------------------------------------------------------------
def test_one_client_has_at_most_8_bodies_streaming(default_server: Server) -> None:
    """The 9th body of one client (an address, anonymous here) answers 429 TOOMANYREQUESTS with Retry-After at once;
    other clients are not affected; a body that ends frees its place."""
    source = "127.0.2.1"
    data = os.urandom(1000)
    path = f"/v2/capped/blobs/uploads/?digest={sha(data)}"
    with httpx.Client(base_url=default_server.url, timeout=30) as http, raw_bodies() as bodies:
        bodies += [RawBody(default_server, "POST", path, len(data), data[:1], source=source) for _ in range(8)]
        time.sleep(0.5)
        refused = RawBody(default_server, "POST", path, len(data), data[:1], source=source)
        bodies.append(refused)
        answer = refused.answer()
        assert answer.status == 429 and answer.after < 2 and answer.headers["retry-after"].isdigit()
        assert refused.closed()
        assert error(answer)["code"] == "TOOMANYREQUESTS" and "8 request bodies" in error(answer)["message"]
        assert not any(body.answered() for body in bodies[:8])
        r = http.post("/v2/capped/blobs/uploads/", params={"digest": sha(data)}, content=data)  # another client
        assert r.status_code == 201
        bodies[0].send(data[1:])  # one body ends: its place is free again
        assert bodies[0].answer().status == 201
        again = RawBody(default_server, "POST", path, len(data), data, source=source)
        bodies.append(again)
        assert again.answer().status == 201
        bodies[1].close()  # a client hanging up frees its place too
        deadline, statuses = time.monotonic() + 5, []
        while not statuses or statuses[-1] != 201 and time.monotonic() < deadline:
            late = RawBody(default_server, "POST", path, len(data), data, source=source)
            bodies.append(late)
            statuses.append(late.answer().status)
            time.sleep(0.1)
        assert statuses[-1] == 201 and set(statuses) <= {201, 429}, statuses
