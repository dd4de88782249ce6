"""kill -9 of a serving registry in the middle of pushes: every push that was answered survives intact, nothing
half-done is visible, and fsck finds the store consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serving import ROOT, sha, start_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"



def pusher(url: str, worker: int, acknowledged: list[tuple[str, bytes, bytes]], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                layer = os.urandom(200_000)
                location = http.post("/v2/syn1/crash/blobs/uploads/").headers["Location"]
                http.patch(location, content=layer[:100_000]).raise_for_status()
                http.put(location, params={"digest": sha(layer)}, content=layer[100_000:]).raise_for_status()
                config = json.dumps({"worker": worker, "i": i}).encode()
                http.post("/v2/syn1/crash/blobs/uploads/", params={"digest": sha(config)},
                          content=config).raise_for_status()
                body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                              "digest": sha(config), "size": len(config)},
                                   "layers": [{"mediaType": "application/octet-stream", "digest": sha(layer),
                                               "size": len(layer)}]}).encode()
                tag = f"w{worker}-{i}"
                r = http.put(f"/v2/syn1/crash/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
                r.raise_for_status()
                acknowledged.append((tag, body, layer))
            except (httpx.HTTPError, KeyError):
                return  # the server died under us


@pytest.mark.crash
def test_kill_9_during_pushes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    acknowledged: list[tuple[str, bytes, bytes]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=pusher, args=(server.url, w, acknowledged, stop)) for w in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # in the middle of uploads, chunk writes and manifest commits
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acknowledged) >= 20, "too few pushes before the kill to prove anything"

    server = start_server(data)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for tag, body, layer in acknowledged:
                assert http.get(f"/v2/syn1/crash/manifests/{tag}").content == body
                assert http.get(f"/v2/syn1/crash/blobs/{sha(layer)}").content == layer
            tags = http.get("/v2/syn1/crash/tags/list").json()["tags"]
            assert {t for t, _, _ in acknowledged} <= set(tags)
            assert len(tags) <= len(acknowledged) + 3  # at most one unanswered PUT per pusher committed
    finally:
        server.stop()
    fsck = subprocess.run([sys.executable, "-m", "adapters.cli", "fsck", "--data", str(data)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert fsck.returncode == 0 and "no damage" in fsck.stdout, fsck.stdout
