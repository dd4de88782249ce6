"""The server's own housekeeping, on a schedule, in every worker: idle upload sessions reaped, unreferenced blobs
collected once their grace period is over (the online GC of DESIGN: it never stops the world), and compressible
blobs compacted after each collection pass (cas/compaction.py; `berth compact` by hand).

A collection pass runs in one process at a time per store: the first worker (of any node) to take the store's
collection lock runs it, the others skip their turn (and `berth gc` waits for the lock, so a pass by hand never runs
beside the server's). The lock is the index's (cas/index.py `exclusive`): the flock of `DATA/gc.lock` on the
embedded store, a PostgreSQL advisory lock on the distributed one, freed by PostgreSQL if its node dies. cas's
collector is safe beside pushes: a blob is doomed in the same write transaction that checks it is still
unreferenced and past its grace and lease, and a publish of the same digest undoes that.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import anyio.to_thread

from cas import BlobStore, CompactionReport, GcReport, StoreUnavailable
from registry_core.registry import Registry

log = logging.getLogger("berth.maintenance")

UPLOAD_REAP_INTERVAL = 15 * 60.0  # seconds between passes over idle upload sessions (their TTL is a day)
# Seconds of compression per scheduled compaction pass: it holds the collection lock, so a large backlog (a
# store upgraded from format 2, a burst of text pushes) is worked off over several passes instead of keeping the
# collector waiting; at ~250 MiB/s of text (cas/frames.py) a pass compacts ~15 GiB.
COMPACTION_BUDGET = 60.0


def _failed(what: str, exc: Exception) -> None:
    """A pass that failed, logged from its `except` block: one line naming the engine's message while PostgreSQL
    or the object store is down (StoreUnavailable: every pass fails the same way until it is back, and a traceback
    each time would say nothing more), the whole traceback for anything else (a bug must stay loud)."""
    if isinstance(exc, StoreUnavailable):
        log.warning("%s failed, retried next pass: %s", what, exc)
    else:
        log.exception("%s failed", what)


def collect_once(store: BlobStore) -> GcReport | None:
    """One collection pass if no other process is running one (None: skipped)."""
    with store.gc.exclusive(wait=False) as taken:
        return store.gc.run() if taken else None


def compact_once(store: BlobStore, budget: float | None = COMPACTION_BUDGET) -> CompactionReport | None:
    """One compaction pass (cas/compaction.py) under the collection lock, if no other process holds it (None:
    skipped)."""
    with store.gc.exclusive(wait=False) as taken:
        return store.compaction.run(max_seconds=budget) if taken else None


async def collect_garbage(registry: Registry, interval: float) -> None:
    """A collection pass every `interval` seconds (0: never; `berth gc` by hand only)."""
    from .http.metrics import GC_BLOBS, GC_BYTES, GC_PASSES, count_safely  # not at import: the CLI imports this module

    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            report = await anyio.to_thread.run_sync(collect_once, registry.store)
        except Exception as exc:  # a failed pass is retried next time; it must never stop the server
            _failed("collection pass", exc)
            continue
        try:  # compressible blobs kept compressed at rest (issue 18), after the collector freed what it could
            compacted = await anyio.to_thread.run_sync(compact_once, registry.store)
        except Exception as exc:  # as above: retried next time
            _failed("compaction pass", exc)
            compacted = None
        if compacted is not None and compacted.compressed:
            log.info("compacted %d blob(s), %d bytes saved; %d wait for the next pass", len(compacted.compressed),
                     compacted.bytes_saved, compacted.pending)
        if report is None:
            continue
        count_safely(GC_PASSES.labels("blobs").inc)
        count_safely(partial(GC_BLOBS.inc, len(report.collected)))
        count_safely(partial(GC_BYTES.inc, report.bytes_freed))
        if report.collected:
            log.info("collected %d blob(s), %d bytes", len(report.collected), report.bytes_freed)


async def reap_uploads(registry: Registry, interval: float = UPLOAD_REAP_INTERVAL) -> None:
    """Expire idle upload sessions while serving (not only in `berth gc`): an abandoned session's partial file
    goes once it has been idle for the store's upload TTL; a pass every `interval` seconds. Every worker runs
    this; sessions are locked one by one, so passes in two processes skip each other's work."""
    from .http.metrics import GC_PASSES, UPLOADS_FAILED, count_safely

    while True:
        await asyncio.sleep(interval)
        try:
            removed = await anyio.to_thread.run_sync(registry.store.uploads.expire)
        except Exception as exc:  # a failed pass is retried next time; it must never stop the server
            _failed("reaping idle upload sessions", exc)
            continue
        count_safely(GC_PASSES.labels("uploads").inc)
        if removed:  # idle sessions (and partial files left without one)
            count_safely(partial(UPLOADS_FAILED.labels("expired").inc, removed))
            log.info("reaped %d idle upload session(s)", removed)
