"""A blob kept compressed at rest is served over HTTP exactly as it was pushed (issue 18): same bytes, same length,
206 with the right Content-Range for any Range, no Content-Encoding; in process (the ASGI app over a registry)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.http import create_app
from cas.frames import FRAME_SIZE
from cas.layout import FORM_FRAMES_V1, FORM_RAW
from registry_core.registry import Registry
from tests.cas.test_compaction import text
from tests.serving import sha

REPO = "syn1/data"


def exchange(registry: Registry, requests: list[tuple[str, str, dict[str, str], bytes]]) -> list[httpx.Response]:
    app = create_app(registry, policy="open")

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as http:
            out = []
            for method, url, headers, body in requests:
                response = await http.request(method, url, headers=headers, content=body or None)
                await response.aread()
                out.append(response)
            return out

    return asyncio.run(run())


def test_a_compacted_blob_is_served_byte_for_byte_with_ranges(tmp_path: Path) -> None:
    csv = text(21, 5 * FRAME_SIZE + 333)
    noise = random.Random(2).randbytes(FRAME_SIZE + 7)
    with Registry.open(tmp_path / "data") as registry:
        pushed = exchange(registry, [("POST", f"/v2/{REPO}/blobs/uploads/?digest={sha(blob)}", {}, blob)
                                     for blob in (csv, noise)])
        assert [r.status_code for r in pushed] == [201, 201]
        report = registry.store.compaction.run()
        assert [str(d) for d, _, _ in report.compressed] == [sha(csv)]
        assert registry.store.stat(sha(csv)).form == FORM_FRAMES_V1
        assert registry.store.stat(sha(noise)).form == FORM_RAW
        for blob in (csv, noise):
            url = f"/v2/{REPO}/blobs/{sha(blob)}"
            size = len(blob)
            spans = [(0, 0), (0, size - 1), (FRAME_SIZE - 1, FRAME_SIZE), (size // 2, size // 2 + (1 << 20) - 1),
                     (size - 1, size - 1)]
            got = exchange(registry, [("GET", url, {}, b""), ("HEAD", url, {}, b"")]
                           + [("GET", url, {"Range": f"bytes={a}-{b}"}, b"") for a, b in spans]
                           + [("GET", url, {"Range": f"bytes=-{size // 3}"}, b""),
                              ("GET", url, {"Range": f"bytes={size}-"}, b"")])
            full, head, *ranged, suffix, beyond = got
            assert full.status_code == 200 and full.content == blob
            assert full.headers["Content-Length"] == str(size) and "content-encoding" not in full.headers
            assert full.headers["Docker-Content-Digest"] == sha(blob)
            assert head.status_code == 200 and head.headers["Content-Length"] == str(size) and head.content == b""
            for (a, b), response in zip(spans, ranged, strict=True):
                b = min(b, size - 1)
                assert response.status_code == 206, (a, b, response.text)
                assert response.content == blob[a:b + 1]
                assert response.headers["Content-Range"] == f"bytes {a}-{b}/{size}"
                assert "content-encoding" not in response.headers
            assert suffix.status_code == 206 and suffix.content == blob[size - size // 3:]
            assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_any_range_of_a_compacted_blob(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    csv = text(22, 3 * FRAME_SIZE + 1)
    root = tmp_path_factory.mktemp("compressed")
    with Registry.open(root / "data") as registry:
        exchange(registry, [("POST", f"/v2/{REPO}/blobs/uploads/?digest={sha(csv)}", {}, csv)])
        registry.store.compaction.run()
        spans = [(a, data.draw(st.integers(a, len(csv) - 1))) for a in data.draw(
            st.lists(st.integers(0, len(csv) - 1), min_size=1, max_size=5))]
        got = exchange(registry, [("GET", f"/v2/{REPO}/blobs/{sha(csv)}", {"Range": f"bytes={a}-{b}"}, b"")
                                  for a, b in spans])
        for (a, b), response in zip(spans, got, strict=True):
            assert response.status_code == 206 and response.content == csv[a:b + 1]


def test_berth_compact_and_the_stored_bytes_line(tmp_path: Path) -> None:
    from tests.adapters.test_cli import berth, ok

    csv = text(23, 4 * FRAME_SIZE)
    with Registry.open(tmp_path / "data") as registry:
        digest = registry.store.ingest(csv).digest
        registry.store.ingest(random.Random(3).randbytes(50_000))
    before = ok(berth("gc", "--dry-run", "--data", "data", cwd=tmp_path)).stderr
    assert "0 of 2 blob(s) kept compressed; 2 wait for a compaction pass" in before, before
    run = ok(berth("compact", "--data", "data", cwd=tmp_path))
    assert run.stdout.startswith(f"compressed {digest} ({len(csv)} -> "), run.stdout
    assert "assessed 2 blob(s): 1 compressed" in run.stderr and "1 kept as they are" in run.stderr, run.stderr
    after = ok(berth("compact", "--dry-run", "--data", "data", cwd=tmp_path)).stderr
    assert "1 of 2 blob(s) kept compressed" in after and "wait" not in after, after
    with Registry.open(tmp_path / "data") as registry:
        assert registry.store.read_bytes(digest) == csv
    assert "no damage" in ok(berth("fsck", "--data", "data", cwd=tmp_path)).stdout


def test_the_server_compacts_on_its_schedule_and_serves_the_same_bytes(tmp_path: Path) -> None:
    import time

    from adapters.maintenance import compact_once
    from cas import BlobStore
    from tests.serving import start_server

    csv = text(24, 2 * FRAME_SIZE + 99)
    server = start_server(tmp_path / "data", "--gc-interval", "1")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            url = f"/v2/{REPO}/blobs/{sha(csv)}"
            assert http.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": sha(csv)}, content=csv).status_code == 201
            deadline = time.monotonic() + 20
            while True:
                with BlobStore.on_disk(server.data) as store:
                    if store.stat(sha(csv)).form == FORM_FRAMES_V1:
                        break
                assert time.monotonic() < deadline, "the server never compacted the text blob"
                time.sleep(0.3)
            full = http.get(url)
            assert full.content == csv and "content-encoding" not in full.headers
            part = http.get(url, headers={"Range": f"bytes={FRAME_SIZE - 5}-{FRAME_SIZE + 5}"})
            assert part.status_code == 206 and part.content == csv[FRAME_SIZE - 5:FRAME_SIZE + 6]
            with BlobStore.on_disk(server.data) as store, store.gc.exclusive(wait=True):
                assert compact_once(store) is None  # the lock is held: a scheduled pass skips its turn
    finally:
        server.stop()
