"""The access log as an operator reads it: a real `berth serve --access-log --log-format json` under the project
policy, a push and a pull with a personal access token, then the real log file: one JSON line per request with the
account and the refusal reason, and no secret anywhere in it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.http.accesslog import AccessLog, note
from adapters.logs import AccessLines, Formatter
from registry_core.accounts import Accounts
from registry_core.projects import Projects
from registry_core.registry import Registry
from tests.serving import sha, start_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FIELDS = {"time", "kind", "client", "method", "path", "status", "bytes_in", "bytes_out", "duration_ms", "account",
          "refusal"}



def access_lines(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line["kind"] == "access"]


def test_a_push_and_a_pull_are_logged_one_json_line_each_without_a_secret(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, "--log-format", "json", "--forwarded-header", "X-Real-Client", policy="project")
    try:
        with Registry.open(data) as registry:
            accounts, projects = Accounts(registry.store), Projects(registry.store)
            accounts.add_user("alice", certified=True)
            accounts.add_user("mallory", certified=True)
            secret = accounts.create_token("alice", ["view", "download", "modify"])[1]
            other = accounts.create_token("mallory", ["view", "download", "modify"])[1]
            project = projects.create("main", "alice").id
        repo = f"{project}/app"
        basic = "Basic " + base64.b64encode(f"alice:{secret}".encode()).decode()
        sent = []  # (method, path, status) of every request, in order

        def call(client: httpx.Client, method: str, url: str, **kw: Any) -> httpx.Response:
            r = client.request(method, url, **kw)
            sent.append((method, r.request.url.path, r.status_code))
            return r

        with httpx.Client(base_url=server.url, timeout=30, headers={"X-Real-Client": "203.0.113.7"}) as anon:
            r = call(anon, "GET", "/token", params={"service": "berth", "scope": f"repository:{repo}:pull,push"},
                     headers={"Authorization": basic})
            token = r.json()["token"]
            denied = call(anon, "GET", "/token", params={"service": "berth", "password": "hunter2-in-a-query"},
                          auth=("alice", "berth_0000000000000000_" + "B" * 43))  # a wrong one: refused
            assert denied.status_code == 401
            mallory = call(anon, "GET", "/token", params={"service": "berth", "scope": f"repository:{repo}:push"},
                           auth=("mallory", other)).json()["token"]
        bearer = {"Authorization": f"Bearer {token}", "X-Real-Client": "203.0.113.7"}
        with httpx.Client(base_url=server.url, timeout=30, headers=bearer) as alice:
            config = json.dumps({"n": 1}).encode()
            layer = b"layer bytes " * 1000
            for blob in (config, layer):
                assert call(alice, "POST", f"/v2/{repo}/blobs/uploads/", params={"digest": sha(blob)},
                            content=blob).status_code == 201
            manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer),
                            "size": len(layer)}]}).encode()
            assert call(alice, "PUT", f"/v2/{repo}/manifests/v1", content=manifest,
                        headers={"Content-Type": OCI_MANIFEST}).status_code == 201
            assert call(alice, "GET", f"/v2/{repo}/manifests/v1?password=hunter2-in-a-query",
                        headers={"Accept": OCI_MANIFEST}).content == manifest  # the fast path
            assert call(alice, "GET", f"/v2/{repo}/blobs/{sha(layer)}").content == layer
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {mallory}"}) as m:
            assert call(m, "POST", f"/v2/{repo}/blobs/uploads/").status_code in (401, 403)
    finally:
        server.stop()

    log = server.log_text()
    lines = access_lines(log)
    probes = [line for line in lines if line["path"] == "/v2/"]  # start_server's readiness probes
    lines = [line for line in lines if line["path"] != "/v2/"]
    assert probes and all(line["refusal"] for line in probes)
    # One line per request. Each worker writes its lines in batches (adapters/logs.py), so the file holds each
    # worker's lines in order, not all of them: compared without their order.
    assert sorted((line["method"], line["path"], line["status"]) for line in lines) == sorted(sent)
    assert all(set(line) == FIELDS for line in lines)
    refused_post = next(line for line in lines if line["method"] == "POST" and line["status"] in (401, 403))
    assert refused_post["client"] == "127.0.0.1"  # no header: the peer
    assert {line["client"] for line in lines if line is not refused_post} == {"203.0.113.7"}  # the header's last hop
    by = {(line["method"], line["path"]): line for line in lines}
    tokens = [line for line in lines if line["path"] == "/token"]
    assert sorted(line["account"] for line in tokens if line["status"] == 200) == ["alice", "mallory"]
    assert all(line["refusal"] is None for line in tokens if line["status"] == 200)
    denied_line = next(line for line in tokens if line["status"] == 401)
    assert denied_line["account"] == "-" and denied_line["refusal"].startswith("login refused")
    put = by[("PUT", f"/v2/{repo}/manifests/v1")]
    assert put["account"] == "alice" and put["bytes_in"] == len(manifest) and put["status"] == 201
    pulled = by[("GET", f"/v2/{repo}/manifests/v1")]
    assert pulled["account"] == "alice" and pulled["bytes_out"] == len(manifest)
    assert by[("GET", f"/v2/{repo}/blobs/{sha(layer)}")]["bytes_out"] == len(layer)
    assert sorted(line["bytes_in"] for line in lines if line["method"] == "POST") == sorted(
        [len(config), len(layer), 0])
    assert refused_post["account"] == "mallory" and refused_post["refusal"], refused_post
    assert all(line["duration_ms"] > 0 for line in lines)
    for leaked in (secret, secret.split("_", 2)[2], other.split("_", 2)[2], token, token.split(".")[2], mallory,
                   basic, basic.split(" ")[1], "hunter2", "B" * 43, "password="):
        assert leaked not in log, leaked


# -- in process: the middleware and the formatter ---------------------------------------------------------------------
async def _run(app: Any, scope: dict[str, Any], body: bytes = b"") -> None:
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, receive, send)


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    body = (await receive())["body"]
    note(scope, "account", "alice")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@given(path=st.text(min_size=1, max_size=60).map(lambda t: "/v2/" + t),
       refusal=st.none() | st.text(max_size=20), form=st.sampled_from(["plain", "json"]))
def test_a_line_is_one_line_whatever_the_path(path: str, refusal: str | None, form: str) -> None:
    read, write = os.pipe()
    try:
        lines = AccessLines(write, form)

        async def refused(scope: Any, receive: Any, send: Any) -> None:
            note(scope, "refusal", refusal)
            await _echo(scope, receive, send)

        asyncio.run(_run(AccessLog(refused, lines=lines), {"type": "http", "method": "POST", "path": path,
                                                            "headers": [], "client": ("10.0.0.1", 5)}, b"abc"))
        lines.flush()  # asyncio.run's loop ended before the batch's timer: written here
        text = os.read(read, 1 << 16).decode()
    finally:
        os.close(read)
        os.close(write)
    assert text.count("\n") == 1 and text.endswith("\n")
    if form == "plain":
        assert " 10.0.0.1 alice " in text and " 200 in=3 out=3 " in text
        assert ("refused=" in text) == bool(refusal)
    else:
        line = json.loads(text)
        assert set(line) == FIELDS and line["path"] == path and line["refusal"] == refusal
        assert (line["client"], line["account"], line["status"], line["bytes_in"], line["bytes_out"]) == \
            ("10.0.0.1", "alice", 200, 3, 3)


def test_lines_go_in_batches_of_whole_lines_and_a_write_that_fails_is_counted(tmp_path: Path) -> None:
    read, write = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(read, 1 << 16), b"")))
    reader.start()
    lines = AccessLines(write, "json")
    long = "/v2/" + "p" * 1000  # several lines to a PIPE_BUF piece, and pieces cut between lines

    async def requests() -> None:
        for i in range(AccessLines.BATCH - 1):
            lines.add((1.5e9 + i, 0.001, "127.0.0.1", "GET", long, 200, 0, i, "-", None))
        assert len(lines.pending) == AccessLines.BATCH - 1  # held for the timer
        lines.add((1.5e9, 0.001, "127.0.0.1", "GET", long, 200, 0, 0, "-", None))  # the batch is full: written
        assert not lines.pending
        lines.add((1.5e9, 0.001, "127.0.0.1", "GET", long, 200, 0, 7, "-", None))
        await asyncio.sleep(AccessLines.FLUSH_S * 2)  # the timer writes it
        assert not lines.pending

    asyncio.run(requests())
    os.close(write)
    reader.join(10)
    os.close(read)
    text = b"".join(got).decode()
    assert [json.loads(line)["bytes_out"] for line in text.splitlines()] == [*range(AccessLines.BATCH - 1), 0, 7]
    lines.pending.append((1.5e9, 0.001, "127.0.0.1", "GET", "/v2/", 200, 0, 0, "-", None))
    lines.flush()  # to a closed descriptor: lost, and counted
    assert lines.dropped == 1 and not lines.pending
    lines.fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    lines.flush()
    os.close(lines.fd)
    assert "1 access lines could not be written" in (tmp_path / "log").read_text() and lines.dropped == 0


@pytest.mark.parametrize("form", ["plain", "json"])
def test_application_lines_take_the_same_form(form: str) -> None:
    record = logging.LogRecord("berth.http", logging.ERROR, __file__, 1, "storage full on %s", ("/v2/x\ny",), None)
    line = Formatter(form).format(record)
    assert "\n" not in line
    if form == "json":
        assert json.loads(line)["message"] == "storage full on /v2/x\ny" and json.loads(line)["level"] == "error"
    else:
        assert line.endswith("error berth.http: storage full on /v2/x\\ny")
