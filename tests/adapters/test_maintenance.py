"""The server's own scheduled collection: it collects by itself, one process at a time, and `berth gc` waits."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx

from adapters.maintenance import collect_once
from cas import BlobStore, StoreConfig
from tests.serving import sha, start_server


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
