"""The server's own scheduled collection: it collects by itself, one process at a time, and `berth gc` waits."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from adapters.maintenance import collect_garbage, collect_once, reap_uploads
from cas import BlobStore, StoreConfig
from registry_core.registry import Registry
from tests.engines import Engines
from tests.serving import Place, sha, start_server


def test_the_server_collects_unreferenced_blobs_on_its_schedule(tmp_path: Path) -> None:
    env = {"BERTH_STORE_GRACE": "0", "BERTH_STORE_LEASE": "0"}  # collectable as soon as nothing references it
    os.environ.update(env)
    try:
        server = start_server(tmp_path / "data", "--gc-interval", "1")
    finally:
        for key in env:
            del os.environ[key]
    try:
        data = os.urandom(5000)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.post("/v2/syn1/gc/blobs/uploads/", params={"digest": sha(data)},
                             content=data).status_code == 201
            deadline = time.monotonic() + 15
            while http.head(f"/v2/syn1/gc/blobs/{sha(data)}").status_code == 200:
                assert time.monotonic() < deadline, "the server never collected the unreferenced blob"
                time.sleep(0.2)
        assert not any((tmp_path / "data" / "blobs").rglob(sha(data).split(":")[1]))
    finally:
        server.stop()


def test_one_collection_pass_at_a_time(tmp_path: Path) -> None:
    with BlobStore.on_disk(tmp_path / "data", config=StoreConfig(grace=0, lease=0)) as store:
        with store.gc.exclusive(wait=False) as taken:
            assert taken
            assert collect_once(store) is None  # another holder: this pass skips its turn
            waited = threading.Event()

            def by_hand() -> None:  # `berth gc` waits for the lock instead
                with store.gc.exclusive(wait=True):
                    waited.set()

            thread = threading.Thread(target=by_hand)
            thread.start()
            assert not waited.wait(0.3)
        thread.join(5)
        assert waited.is_set()
        assert collect_once(store) is not None


def _run_passes(registry: Registry, done: Callable[[list[logging.LogRecord]], bool],
                caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The scheduled collection and upload-reaping loops, a pass every 0.05 s, until the log lines of
    berth.maintenance satisfy `done` (or 20 s have passed); those lines."""
    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "berth.maintenance"]

    async def passes() -> None:
        loops = [asyncio.ensure_future(collect_garbage(registry, 0.05)),
                 asyncio.ensure_future(reap_uploads(registry, 0.05))]
        deadline = time.monotonic() + 20
        while not done(lines()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="berth.maintenance"):
        asyncio.run(passes())
    return lines()


def _both(records: list[logging.LogRecord]) -> bool:
    """At least two failed passes of each loop logged."""
    said = [r.getMessage() for r in records]
    return (sum("collection pass failed" in m for m in said) >= 2
            and sum("reaping idle upload sessions failed" in m for m in said) >= 2)


def test_a_pass_while_postgresql_is_down_logs_one_line_without_a_traceback(
        engines: Engines, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The distributed store with its PostgreSQL stopped: every collection and upload-reaping pass fails with
    StoreUnavailable until it is back. Each failed pass is one warning naming the engine's message, not a traceback
    a pass, and the loops go on (recovery itself: tests/interop/test_faults.py)."""
    registry = Place.distributed(engines, tmp_path / "data").open_registry()
    try:
        engines.postgres.halt()
        try:
            records = _run_passes(registry, _both, caplog)
        finally:
            engines.postgres.resume()
        assert _both(records), [r.getMessage() for r in records]
        for record in records:
            message = record.getMessage()
            assert record.levelno == logging.WARNING and record.exc_info is None and record.exc_text is None, message
            assert "failed, retried next pass: the PostgreSQL server cannot be reached: " in message, message
            assert "\n" not in message
        assert "Traceback" not in caplog.text
    finally:
        registry.close()


def test_a_pass_failing_for_any_other_reason_logs_its_traceback(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A failure that is no engine down (here: the store closed under the loops, a programming error) stays loud:
    an error with its traceback."""
    registry = Registry.open(tmp_path / "data")
    registry.close()
    records = _run_passes(registry, lambda lines: len(lines) >= 2, caplog)
    assert records, "no failed pass logged"
    for record in records:
        assert record.levelno == logging.ERROR and record.exc_info is not None, record.getMessage()
    assert "Traceback" in caplog.text
