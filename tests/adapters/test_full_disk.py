"""A full disk: a real `berth serve` on a small tmpfs (mounted by the test; the suite runs as root, as CI does)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving import Server, sha, start_server

SIZE_MIB = 48



@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"mounting a tmpfs needs root (the test command runs as root): {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def server(small_disk: Path) -> Iterator[Server]:
    running = start_server(small_disk / "data")
    yield running
    running.stop()


def test_a_full_disk_answers_507_and_loses_nothing(server: Server) -> None:
    kept = os.urandom(1 << 20)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post("/v2/syn1/full/blobs/uploads/", params={"digest": sha(kept)},
                         content=kept).status_code == 201
        too_big = os.urandom(SIZE_MIB << 20)
        for attempt in ("monolithic", "chunked"):
            if attempt == "monolithic":
                r = http.post("/v2/syn1/full/blobs/uploads/", params={"digest": sha(too_big)}, content=too_big)
            else:
                location = http.post("/v2/syn1/full/blobs/uploads/").headers["Location"]
                r = http.patch(location, content=too_big)
            assert r.status_code == 507, r.text
            error = r.json()["errors"][0]
            assert "storage is full" in error["message"] and str(server.data) not in error["message"]
            assert http.head(f"/v2/syn1/full/blobs/{sha(too_big)}").status_code == 404
        # what was stored before is intact, and the registry goes on working once the partial upload is gone
        assert http.get(f"/v2/syn1/full/blobs/{sha(kept)}").content == kept
        http.delete(location)
        small = os.urandom(1000)
        assert http.post("/v2/syn1/full/blobs/uploads/", params={"digest": sha(small)},
                         content=small).status_code == 201
    assert "Traceback" not in server.log_text()
