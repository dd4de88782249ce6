"""Metrics and health against a real `berth serve` with two workers: a real client's push and pull move the counters
by the right amounts summed over both workers, /metrics is not for everyone, nothing in it names a repository or a
digest, and /readyz follows whether the data directory can be written (a read-only bind mount: the suite runs as
root, and root ignores file permissions)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from adapters.exposure import multiproc_dir
from adapters.http.metrics import FLUSH_S
from tests.interop.conftest import Run, client_env, skopeo  # noqa: F401  (fixtures)
from tests.interop.images import write_layout
from tests.serving import Server, free_port, start_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[str, Samples]:
    """The exposition, once every worker's counts have reached it (each worker flushes within FLUSH_S)."""
    time.sleep(FLUSH_S + 0.3)
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200, answer.text
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return answer.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    return sum(v for (n, found), v in samples.items()
               if n == name and set(labels.items()) <= set(found))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = start_server(tmp_path / "data", "--metrics")
    yield running
    running.stop()


def test_a_push_and_a_pull_are_counted_across_both_workers(server: Server, skopeo: Run,  # noqa: F811
                                                           tmp_path: Path) -> None:
    metrics = f"{server.url}/metrics"
    _, before = scrape(metrics)
    assert value(before, "berth_workers") == 2
    descriptors = write_layout(tmp_path / "img")
    target = f"docker://{server.host}/syn123/counted:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'img'}:v1", target)
    _, pushed = scrape(metrics)

    def moved(name: str, samples: Samples, since: Samples, **labels: str) -> float:
        return total(samples, name, **labels) - total(since, name, **labels)

    layers = json.loads((tmp_path / "img" / "blobs" / "sha256" / descriptors["v1"]["digest"][7:]).read_text())
    blobs = [layers["config"], *layers["layers"]]
    assert moved("berth_http_requests_total", pushed, before, kind="manifest", method="PUT", status="201") == 1
    assert moved("berth_manifests_written_total", pushed, before) == 1
    assert moved("berth_tags_written_total", pushed, before) == 1
    assert moved("berth_uploads_started_total", pushed, before) == len(blobs)
    assert moved("berth_uploads_finished_total", pushed, before) == len(blobs)
    assert moved("berth_uploads_failed_total", pushed, before) == 0
    assert moved("berth_http_received_bytes_total", pushed, before, kind="upload") + moved(
        "berth_http_received_bytes_total", pushed, before, kind="uploads") == sum(b["size"] for b in blobs)
    assert value(pushed, "berth_store_blobs", where="files") + value(pushed, "berth_store_blobs", where="inline") \
        >= len(blobs) + 1  # the blobs and the manifest

    skopeo("copy", "--src-tls-verify=false", target, f"oci:{tmp_path / 'back'}:v1")
    _, pulled = scrape(metrics)
    assert moved("berth_http_requests_total", pulled, pushed, kind="manifest", method="GET", status="200") >= 1
    assert moved("berth_http_requests_total", pulled, pushed, kind="blob", method="GET", status="200") == len(blobs)
    assert moved("berth_http_sent_bytes_total", pulled, pushed, kind="blob") == sum(b["size"] for b in blobs)
    assert moved("berth_http_request_duration_seconds_count", pulled, pushed, kind="blob", method="GET") == \
        len(blobs)

    # Both workers answer and are summed: 40 requests on 40 connections (the kernel spreads connections over the
    # two SO_REUSEPORT sockets) are counted exactly, and each worker's own file counts some of them.
    for _ in range(40):
        with httpx.Client(timeout=10) as fresh:
            assert fresh.get(f"{server.url}/v2/").status_code == 200
    _, many = scrape(metrics)
    assert moved("berth_http_requests_total", many, pulled, kind="base", method="GET", status="200") == 40
    directory = multiproc_dir(str(server.data), server.host)
    per_worker = []
    for name in os.listdir(directory):
        if name.startswith("counter_"):
            merged = MultiProcessCollector.merge([os.path.join(directory, name)])  # type: ignore[no-untyped-call]
            per_worker.append(sum(s.value for m in merged for s in m.samples
                                  if s.name == "berth_http_requests_total" and s.labels.get("kind") == "base"))
    served = [n for n in per_worker if n]
    assert len(served) == 2 and sum(served) == total(many, "berth_http_requests_total", kind="base"), per_worker


def test_the_exposition_names_no_repository_or_digest(server: Server) -> None:
    blob = b"x" * 300
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post("/v2/syn9/secret-name/blobs/uploads/", params={"digest": digest},
                         content=blob).status_code == 201
        assert http.get(f"/v2/syn9/secret-name/blobs/{digest}").status_code == 200
        assert http.get("/v2/syn9/secret-name/manifests/nope").status_code == 404
        assert http.get("/v2/syn9/secret-name/tags/list").status_code in (200, 404)
        http.get("/v2/syn9/secret-name/unknown/thing")
    text, samples = scrape(f"{server.url}/metrics")
    assert "secret-name" not in text and "syn9" not in text and "sha256" not in text
    kinds = {dict(labels).get("kind") for name, labels in samples if name == "berth_http_requests_total"}
    assert kinds <= {"blob", "manifest", "uploads", "upload", "tags", "catalog", "referrers", "base", "token",
                     "other"}
    assert "other" in kinds


def test_metrics_are_not_public_by_default(server: Server, tmp_path: Path) -> None:
    # Through a reverse proxy on the same host (a proxy header): refused like any other remote client.
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        assert httpx.get(f"{server.url}/metrics", headers={header: "203.0.113.9"}).status_code == 404
    off = start_server(tmp_path / "off")
    try:
        assert httpx.get(f"{off.url}/metrics").status_code == 404  # without --metrics: no /metrics at all
        assert httpx.get(f"{off.url}/healthz").json() == {"status": "up"}
    finally:
        off.stop()


def test_a_port_of_its_own(tmp_path: Path) -> None:
    port = free_port()
    running = start_server(tmp_path / "data", "--metrics-listen", f"127.0.0.1:{port}")
    try:
        assert httpx.get(f"{running.url}/v2/").status_code == 200
        assert httpx.get(f"{running.url}/metrics").status_code == 404  # not on the registry's port
        _, samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(samples, "berth_workers") == 2
        assert total(samples, "berth_http_requests_total", kind="base") >= 1
        assert value(samples, "berth_uploads_open") == 0
    finally:
        running.stop()


@pytest.fixture
def remountable(tmp_path: Path) -> Iterator[Path]:
    """A data directory on a tmpfs of its own. It cannot be remounted read-only while the server has its index open
    for writing (the kernel answers EBUSY), so the test binds the directory over itself and makes that mount
    read-only: every file the server opens from then on is on a read-only mount (EROFS, root or not)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"mounting a tmpfs needs root (the test command runs as root): {done.stderr}"
    try:
        yield mount / "data"
    finally:
        subprocess.run(["umount", "-R", "-l", str(mount)], capture_output=True)


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _ready(url: str, expected: int) -> httpx.Response:
    for _ in range(40):  # the answer is cached for 1 s per worker
        answer = httpx.get(f"{url}/readyz", timeout=10)
        if answer.status_code == expected:
            return answer
        time.sleep(0.1)
    raise AssertionError(f"/readyz answered {answer.status_code} {answer.text}, not {expected}")


def test_readiness_follows_a_read_only_data_directory(remountable: Path) -> None:
    running = start_server(remountable)
    data = str(remountable)
    try:
        assert _ready(running.url, 200).json() == {"status": "ready"}
        _mount("--bind", data, data)
        _mount("-o", "remount,bind,ro", data)
        try:
            for _ in range(4):  # both workers say so (connections spread over them)
                with httpx.Client(timeout=10) as fresh:
                    answer = _ready(running.url, 503)
                    assert answer.json() == {"status": "not-ready", "reason": "store-read-only"}
                    assert fresh.get(f"{running.url}/healthz").status_code == 200  # alive all the same
            blob = b"y" * 2000
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            refused = httpx.post(f"{running.url}/v2/syn1/ro/blobs/uploads/", params={"digest": digest},
                                 content=blob, timeout=10)
            assert refused.status_code == 503, refused.text  # the store really cannot be written
            assert "read-only" in refused.json()["errors"][0]["message"] and data not in refused.text
        finally:
            subprocess.run(["umount", data], capture_output=True)
        assert _ready(running.url, 200).json() == {"status": "ready"}
        for _ in range(4):
            with httpx.Client(timeout=10):
                assert _ready(running.url, 200).status_code == 200
    finally:
        running.stop()
    assert "Traceback" not in running.log_text()


@pytest.mark.parametrize(("client", "public", "status"), [
    ("203.0.113.9", False, 404), ("10.1.2.3", False, 404), ("::1", False, 200), ("127.0.0.1", False, 200),
    ("203.0.113.9", True, 200)])
def test_who_may_read_metrics_on_the_registry_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: str,
                                                   public: bool, status: int) -> None:
    """The rule in-process (a real server listens on loopback only here): a remote peer gets 404 unless public."""
    from adapters.http import create_app
    from registry_core.registry import Registry

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with Registry.open(tmp_path / "data") as registry:
        app = create_app(registry, policy="open", metrics="port", metrics_public=public)
        transport = httpx.ASGITransport(app=app, client=(client, 5000))

        async def get() -> int:
            async with httpx.AsyncClient(transport=transport, base_url="http://registry") as http:
                return (await http.get("/metrics")).status_code

        assert asyncio.run(get()) == status
