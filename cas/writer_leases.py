"""Writer leases on upload sessions, for keepers whose staging lock is only this process's (S3: no flock across
nodes; BlobBytes.local_staging_lock).

The lease lives in the session's record (`writer`, `lease_until`: cas/layout.py UploadRecord): taken in an index
transaction before the staged bytes are touched (UploadBusy while another writer holds it), renewed while a long chunk
streams, checked by the commit that accepts a chunk (cas/uploads.py: a writer whose lease was taken over accepts
nothing and writes nothing more to the staging: WriterLeaseLost), released in a last transaction. No lock is held
across an object-store call: a node that dies mid-chunk leaves a lease that simply runs out.

Leases are timed by the store's clock: nodes' clocks must agree to well within WRITER_LEASE (NTP does). What remains
is owned up to: a writer whose segment PUT is still in flight when its lease runs out (a request stalled for most of
WRITER_LEASE after its last renewal) may overwrite a successor's segment; its own commit is then refused. So taking
a session over from a writer that ran out of time is counted (`takeovers`), and the finish of such a session
re-hashes the staged bytes instead of trusting a running hash: overwritten bytes fail the digest.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from .errors import UploadBusy, UploadUnknown, WriterLeaseLost
from .index import WriteTransaction
from .layout import UploadRecord

if TYPE_CHECKING:
    from .store import BlobStore

# A lease lasts this long and is renewed after a third of it while a chunk streams: long enough that a slow
# object-store request (botocore retries 3 times, 60 s read timeout each) ends well inside it, short enough that a
# session whose node died mid-chunk is writable again within two minutes.
WRITER_LEASE = 120.0
_NODE = f"{socket.gethostname()}:{os.getpid()}"  # in the token: an operator reading the record sees who writes


class WriterLeases:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._table = store.tables.uploads

    def take(self, session_id: str) -> str:
        """This writer's lease token; UploadUnknown (no such session) or UploadBusy (another writer holds it)."""
        key, lease = session_id.encode(), f"{_NODE}:{uuid.uuid4().hex[:12]}"

        def take(txn: WriteTransaction) -> None:
            raw = txn.get(self._table, key) if plausible_id(session_id) else None
            if raw is None:
                raise UploadUnknown(session_id)
            record = UploadRecord.unpack(raw)
            now = self._store.clock()
            if record.writer and record.lease_until > now:
                raise UploadBusy(session_id, f"it holds the session for at most {record.lease_until - now:.0f} s more")
            takeovers = record.takeovers + 1 if record.writer else record.takeovers  # its lease ran out
            txn.put(self._table, key, replace(record, writer=lease, lease_until=now + WRITER_LEASE,
                                              takeovers=takeovers).pack())
        self._store.index.transact(take)
        return lease

    def renew(self, session_id: str, lease: str) -> None:
        """Extend the lease (WriterLeaseLost if it ran out and another writer took the session over)."""
        key = session_id.encode()

        def renew(txn: WriteTransaction) -> None:
            raw = txn.get(self._table, key)
            if raw is None:
                raise UploadUnknown(session_id)
            record = UploadRecord.unpack(raw)
            if record.writer != lease:
                raise WriterLeaseLost(session_id)
            txn.put(self._table, key, replace(record, lease_until=self._store.clock() + WRITER_LEASE).pack())
        self._store.index.transact(renew)

    def release(self, session_id: str, lease: str) -> None:
        key = session_id.encode()

        def ours(raw: bytes | None) -> UploadRecord | None:
            record = UploadRecord.unpack(raw) if raw is not None else None
            return record if record is not None and record.writer == lease else None

        def release(txn: WriteTransaction) -> None:
            record = ours(txn.get(self._table, key))
            if record is not None:
                txn.put(self._table, key, replace(record, writer="", lease_until=0.0).pack())

        with self._store.index.read() as txn:
            held = ours(txn.get(self._table, key)) is not None
        if held:  # (not when finished or cancelled: the record is gone; nor when taken over)
            self._store.index.transact(release)


def plausible_id(session_id: str) -> bool:
    return len(session_id) == 32 and all(c in "0123456789abcdef" for c in session_id)
