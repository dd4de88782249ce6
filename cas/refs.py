"""References: who holds which blob. Holders take and drop references inside a write transaction they own.

A reference is an edge (holder, digest); taking the same edge twice is one reference, dropping a missing edge is
a no-op, so a caller that retries a transaction cannot skew a count. The blob record caches the number of edges so
that "is it unreferenced?" is one read; `refs` and `held` hold the edges by digest and by holder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from .digest import Digest
from .errors import BlobUnknown, InvalidHolder
from .index import Transaction, WriteTransaction
from .layout import MAX_HOLDER_BYTES, STORED_STATES, BlobRecord, queue_key

if TYPE_CHECKING:
    from .store import BlobStore


def holder_key(holder: str) -> bytes:
    raw = holder.encode("utf-8")
    if not raw or len(raw) > MAX_HOLDER_BYTES or b"\0" in raw:
        raise InvalidHolder(f"a holder name must be 1..{MAX_HOLDER_BYTES} UTF-8 bytes without NUL: {holder[:60]!r}")
    return raw


class References:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._t = store.tables

    def take(self, txn: WriteTransaction, holder: str, digest: Digest) -> bool:
        """Reference a stored blob (BlobUnknown if it is not stored). True if the edge is new."""
        h = holder_key(holder)
        raw = txn.get(self._t.blobs, digest.key)
        record = BlobRecord.unpack(raw) if raw is not None else None
        if record is None or record.state not in STORED_STATES:
            raise BlobUnknown(str(digest))
        edge = digest.key + b"\0" + h
        if txn.get(self._t.refs, edge) is not None:
            return False
        txn.put(self._t.refs, edge, b"")
        txn.put(self._t.held, h + b"\0" + digest.key, b"")
        txn.put(self._t.blobs, digest.key, replace(record, refcount=record.refcount + 1).pack())
        return True

    def drop(self, txn: WriteTransaction, holder: str, digest: Digest) -> bool:
        """Drop one reference. True if it existed. A blob left with none is queued for GC (after its grace)."""
        h = holder_key(holder)
        if not txn.delete(self._t.refs, digest.key + b"\0" + h):
            return False
        txn.delete(self._t.held, h + b"\0" + digest.key)
        raw = txn.get(self._t.blobs, digest.key)
        if raw is None:  # fsck reports dangling edges; dropping one is all there is to do
            return True
        record = BlobRecord.unpack(raw)
        count = max(record.refcount - 1, 0)
        zero_since = record.zero_since
        if count == 0:
            zero_since = self._store.clock()
            txn.put(self._t.gcqueue, queue_key(zero_since, digest.key), b"")
        txn.put(self._t.blobs, digest.key, replace(record, refcount=count, zero_since=zero_since).pack())
        return True

    def drop_all(self, txn: WriteTransaction, holder: str) -> int:
        """Drop every reference `holder` has (a manifest being deleted). Returns how many."""
        h = holder_key(holder) + b"\0"
        digests = [Digest.parse(key[len(h):].decode("ascii")) for key, _ in txn.scan(self._t.held, prefix=h)]
        for digest in digests:
            self.drop(txn, holder, digest)
        return len(digests)

    def holders(self, txn: Transaction, digest: Digest, prefix: str = "") -> Iterator[str]:
        """Who holds `digest`, in byte order; with `prefix`, only holders whose names start with it (a range scan:
        the layer above names its holders so that "held by anything of mine" is one seek)."""
        prefix_key = digest.key + b"\0"
        for key, _ in txn.scan(self._t.refs, prefix=prefix_key + prefix.encode("utf-8")):
            yield key[len(prefix_key):].decode("utf-8")

    def held_by(self, txn: Transaction, holder: str) -> Iterator[Digest]:
        prefix = holder_key(holder) + b"\0"
        for key, _ in txn.scan(self._t.held, prefix=prefix):
            yield Digest.parse(key[len(prefix):].decode("ascii"))
