"""One GC pass over many zero-reference blobs past their grace period: records, queue, doomed, unlinks."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.stores import open_store
from cas import BlobStore, Digest, StoreConfig
from cas.layout import STATE_PRESENT, BlobRecord, blob_path, queue_key


def seed_unreferenced(store: BlobStore, count: int, when: float) -> None:
    """Put `count` small unreferenced blobs in place as ingest would leave them, without paying for `count`
    durable ingests (this is set-up, not what is measured)."""
    t = store.tables
    records = []
    if store.root is None:  # a store without files (in memory): ingest, then date the records back to `when`
        ingested = store.clock()
        digests = [store.ingest(i.to_bytes(8, "big")).digest for i in range(count)]

        def backdate(txn: Any) -> None:
            for digest in digests:
                txn.delete(t.gcqueue, queue_key(ingested, digest.key))
                txn.put(t.blobs, digest.key, BlobRecord(STATE_PRESENT, 8, 0, when, 0.0).pack())
                txn.put(t.gcqueue, queue_key(when, digest.key), b"")

        store.index.transact(backdate)
        return
    for i in range(count):
        data = i.to_bytes(8, "big")
        digest = Digest.of(data)
        path = blob_path(store.root, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        records.append(digest)

    def commit(txn: Any) -> None:
        for digest in records:
            txn.put(t.blobs, digest.key, BlobRecord(STATE_PRESENT, 8, 0, when, 0.0).pack())
            txn.put(t.gcqueue, queue_key(when, digest.key), b"")

    store.index.transact(commit)


def test_gc_100k_unreferenced_blobs(benchmark: Any, figures: Any) -> None:
    count = 100_000 if not benchmark.disabled else 2_000
    work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    now = [1_000_000.0]
    state: dict[str, BlobStore] = {}

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        if "store" in state:
            state["store"].close()
            shutil.rmtree(work / "data", ignore_errors=True)  # (the store in memory has no files)
        store = open_store(work / "data", config=StoreConfig(grace=60.0), clock=lambda: now[0])
        seed_unreferenced(store, count, now[0] - 120.0)
        os.sync()
        state["store"] = store
        return (), {}

    def collect() -> None:
        report = state["store"].gc.run()
        assert len(report.collected) == count

    try:
        benchmark.pedantic(collect, setup=setup, rounds=3 if not benchmark.disabled else 1, iterations=1)
        if not benchmark.disabled:
            figures.add("GC of 100 000 unreferenced blobs", "s", benchmark.stats.stats.median)
            figures.add("GC rate", "k blobs/s", count / benchmark.stats.stats.median / 1000)
    finally:
        state["store"].close()
        shutil.rmtree(work)
