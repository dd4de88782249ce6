"""Readiness: whether this worker can serve writes now, as a short reason code (never more detail).

Liveness needs nothing (the process answers /healthz). Readiness, for /readyz: the registry opens, the signing key is
loaded where the policy issues tokens, and the store is writable — an LMDB write transaction touching a `health` key
in the meta table, and a file created and removed in the data directory's temp area (where every blob write begins).
Both are cheap, yet a probe every few ms must not turn into an fsync every few ms: the answer is kept for CACHE_S.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

import anyio.to_thread

from cas import BlobStore

log = logging.getLogger("berth.http")

CACHE_S = 1.0

# What a failure says, by errno: read-only (EROFS, and permissions), full, or something else.
_REASONS = {errno.EROFS: "store-read-only", errno.EACCES: "store-read-only", errno.EPERM: "store-read-only",
            errno.ENOSPC: "store-full", errno.EDQUOT: "store-full"}


class Readiness:
    """`opened()` gives the worker's store and whether its signing key is loaded (raising if it cannot open)."""

    def __init__(self, opened: Callable[[], tuple[BlobStore, bool]], clock: Callable[[], float] = time.monotonic):
        self.opened = opened
        self.clock = clock
        self._last: tuple[float, str | None] | None = None

    async def check(self) -> str | None:
        """None when ready, else the reason code."""
        now = self.clock()
        if self._last is not None and now - self._last[0] < CACHE_S:
            return self._last[1]
        reason = await anyio.to_thread.run_sync(self.probe)
        self._last = (self.clock(), reason)
        return reason

    def probe(self) -> str | None:
        try:
            store, key_loaded = self.opened()
        except Exception:
            log.warning("readiness: the registry does not open", exc_info=True)
            return "store-unavailable"
        if not key_loaded:
            return "signing-key-missing"
        try:
            meta = store.tables.meta
            stamp = str(int(time.time())).encode()
            store.index.transact(lambda txn: txn.put(meta, b"health", stamp))
        except Exception as exc:
            log.warning("readiness: the index refuses a write: %s", exc)
            return "store-read-only" if "read-only" in str(exc).lower() or "permission" in str(exc).lower() else (
                _REASONS.get(getattr(exc, "errno", None) or 0, "index-unwritable"))
        try:
            store.blobs.check_writable()
        except OSError as exc:
            log.warning("readiness: the data directory refuses a file: %s", exc.strerror)
            return _REASONS.get(exc.errno or 0, "store-unwritable")
        return None
