"""stat() and contains() rates over a store of referenced blobs: the work behind every blob HEAD."""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.stores import open_store
from cas import Digest


def test_stat_and_contains_rate(benchmark: Any, figures: Any) -> None:
    count = 20_000 if not benchmark.disabled else 500
    work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    store = open_store(work / "data")
    try:
        digests = [store.ingest(i.to_bytes(8, "big")).digest for i in range(min(count, 2000))]
        # Referenced blobs: stat() stays a pure read (leases are only written for unreferenced ones).
        store.index.transact(lambda txn: [store.refs.take(txn, "bench", d) for d in digests])
        probes = [random.Random(1).choice(digests) for _ in range(count)]
        unknown = [Digest.of(i.to_bytes(8, "big") + b"?") for i in range(count)]

        def stat_all() -> None:
            for digest in probes:
                store.stat(digest)

        benchmark.pedantic(stat_all, rounds=5 if not benchmark.disabled else 1, iterations=1)
        if not benchmark.disabled:
            figures.add("stat, referenced blob", "k ops/s", count / benchmark.stats.stats.median / 1000)
            import time
            for _ in range(5):
                started = time.perf_counter()
                for digest in probes:
                    store.contains(digest)
                figures.add("contains, stored blob", "k ops/s", count / (time.perf_counter() - started) / 1000)
                started = time.perf_counter()
                for digest in unknown:
                    store.contains(digest)
                figures.add("contains, unknown digest", "k ops/s", count / (time.perf_counter() - started) / 1000)
    finally:
        store.close()
        shutil.rmtree(work)
