"""Garbage collection without stopping the world, and without a lock shared with publishing.

A blob whose last reference was dropped (or that nobody ever referenced) has a `gcqueue` entry keyed by the time it
became unreferenced. A pass walks the queue in time order up to `now - grace` and, in short write transactions of
BATCH entries (reads and writes go on between them):

1. drops stale entries (the blob was referenced again, re-queued later, or is gone);
2. keeps entries whose blob holds a lease (a stat or dedup hit asked for it recently);
3. otherwise claims the blob: an inline blob's record and bytes are deleted there and then (they live in the
   index); a file's record goes to state DELETING, listed in `doomed`. From that commit on nobody can see or
   reference the blob, and its bytes are the collector's business.

Then, per batch of claimed blobs, outside any transaction (a write function may be replayed; a rename may not):
   retire   move the bytes out of service, reversibly (cas/blobs.py; files: a rename into trash/)
   decide   one write transaction: a record still DELETING is deleted (with its `doomed` entry) -> purge;
            a record a publish turned back into PRESENT keeps its bytes -> restore; anything else -> purge
   purge / restore   delete the retired copy, or put it back (a link into blobs/ unless a copy is there already)

Publishing (BlobStore.publish) is the other side: it moves its bytes into place first, commits the record second
(absent, MISSING or DELETING -> PRESENT), and then, if it was that commit that made the blob stored, calls
`blobs.ensure`, which puts the bytes back if they are not in place (from the retired copy, or from its own staging,
still held).

Why no bytes of a stored blob are ever lost. Take a publish P of digest D that made D's record PRESENT at commit
time c, and any collector step on D. A collector purges only a copy it retired itself, and only after its decide
transaction saw D's record not PRESENT; its retire precedes its decide. If that decide came after c, it saw
PRESENT (or a later, legitimate claim of D by a later pass) and restores. If it came before c, its retire came
before c too, hence before P's `ensure`, which runs after c: ensure finds D's bytes missing and puts them back from
the retired copy or from P's own staging, which P holds until ensure returns. A retire after ensure belongs to a
decide after c: restore. So once publish returns, D's bytes are in place, or are being restored by a collector
that will restore them, or D was claimed again by a pass that began after c (unreferenced past its grace: a
legitimate collection). Readers: a retired-then-restored file is missing from blobs/ for a moment while its record
is PRESENT; BlobBytes.open then reads the retired copy. One window remains, and is owned up to: when a pass decides
and purges between a publish's move and its commit, the bytes are back only once that publish's `ensure` returns,
microseconds after its commit; a read in between answers BlobUnknown (a 404 the client retries). It takes a blob
unreferenced past its grace and lease, collected in the very moment the same bytes are published again.
tests/cas/test_gc_protocol.py runs every interleaving of the steps of one publish and one collection.

Direct writes (an object store's monolithic upload, BlobBytes.direct) move their bytes by completing a multipart
upload onto the blob's key: once completed there is no staging left to put back from. The argument above holds
with one change: when ensure finds neither the object nor a retired copy (a pass retired and purged the very
object between that publish's move and its commit), it cannot put the bytes back, so the publish takes its claim
back (the record it made PRESENT becomes MISSING, as fsck would mark it) and its caller is told to send the bytes
again (StoreUnavailable; no success was answered); the next ingest heals the record. A direct write that found the
blob's object already there completes nothing and keeps its upload open until ensure returns: its parts are then
its staging.

The same three steps remove debris, with the same argument: a blob file without a record (a crash between a
publish's rename and its commit, or a publish in flight: the protocol overrules the sweep) or beside an INLINE
record. Recovery from a crash mid-pass: `doomed` lists the claims not yet decided, and retired copies left behind
are decided again (restored if their record is PRESENT, purged otherwise) at the start of the next pass.

Last, debris of staging: files of crashed ingests, idle upload sessions and staging without a session.

One pass at a time per store, among all processes and machines: callers hold `exclusive()`, the index's named lock
"gc" (cas/index.py; a PostgreSQL advisory lock on the distributed store), which is no transaction. Every index
transaction of a pass is short and none is open across a call to the keeper of bytes (an S3 request on the
distributed store): claims and decisions commit before the bytes are touched, and the orphan sweep lists the bytes
first and reads their records after, a batch at a time.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import TYPE_CHECKING

from . import crashpoints
from .digest import Digest
from .index import Transaction, WriteTransaction
from .layout import (
    STATE_DELETING,
    STATE_INLINE,
    STATE_PRESENT,
    STORED_STATES,
    BlobRecord,
    queue_key,
    queue_key_time,
)

if TYPE_CHECKING:
    from .store import BlobStore

# Entries per write transaction: ~1000 puts commit in a few ms (measured ~23 k puts/s in batches); the renames of
# a batch run between two transactions, holding no lock a manifest PUT waits for.
BATCH = 1000
# Measured on ext4 with online discard: one thread unlinks at ~170 us/file, eight at ~64 us/file.
PURGE_THREADS = 8


@dataclass(slots=True)
class GcReport:
    dry_run: bool
    collected: list[tuple[Digest, int]] = field(default_factory=list)  # deleted (or, dry run, would be)
    leased: int = 0  # unreferenced and past their grace, but kept by a lease
    stale_entries: int = 0
    debris_files: int = 0  # temp files, orphan blob files and partial files removed
    expired_uploads: int = 0
    grace: float = 0.0  # the store's grace period, seconds
    waiting: int = 0  # unreferenced blobs still in their grace period (or a lease): a later pass may take them
    waiting_bytes: int = 0
    first_due: float | None = None  # when the first / last of them may be collected (None: none waiting)
    last_due: float | None = None

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.collected)


@dataclass(frozen=True, slots=True)
class Retention:
    """Why a blob is (or is not) still here."""

    digest: Digest
    stored: bool
    size: int
    holders: tuple[str, ...]
    refcount: int
    collectable_at: float | None  # None while referenced (or not stored)
    reason: str


class Collector:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._t = store.tables
        self._blobs = store.blobs
        # One pass at a time in this process (exclusive() across processes); a compaction pass holds it too, so
        # that a blob is never compacted while it is collected (cas/compaction.py).
        self.one_pass = threading.Lock()

    def exclusive(self, wait: bool) -> AbstractContextManager[bool]:
        """The store's collection lock, shared by every process that opens it: True if taken (always, when
        `wait`), False if another pass holds it. Hold it around run() when several processes may collect. It is
        the index's named lock "gc" (cas/index.py: a flock of DATA/gc.lock, or a PostgreSQL advisory lock), not a
        transaction: the pass's own transactions stay short, and none is open across a call to the bytes."""
        return self._store.index.exclusive("gc", wait)

    def run(self, dry_run: bool = False, sweep_orphans: bool = True) -> GcReport:
        report = GcReport(dry_run=dry_run, grace=self._store.config.grace)
        now = self._store.clock()
        cutoff = now - self._store.config.grace
        if dry_run:
            with self._store.index.read() as txn:
                self._claim(txn, report, now, cutoff, start=b"", limit=None, writer=None)
                self._count_waiting(txn, report, cutoff)
            return report
        with self.one_pass, ThreadPoolExecutor(PURGE_THREADS, thread_name_prefix="berth-gc") as pool:
            self._recover(pool)
            start: bytes | None = b""
            while start is not None:
                claimed: list[Digest] = []

                def batch(txn: WriteTransaction, start: bytes = start, claimed: list[Digest] = claimed,
                          mark: int = len(report.collected)) -> bytes | None:
                    claimed.clear()  # a replayed transaction claims again from scratch
                    del report.collected[mark:]
                    return self._claim(txn, report, now, cutoff, start=start, limit=BATCH, writer=txn,
                                       claimed=claimed)
                start = self._store.index.transact(batch)
                crashpoints.reached("gc.after_claim")
                self._settle(claimed, pool, retire=True)
            report.expired_uploads = self._store.uploads.expire()
            if sweep_orphans:
                report.debris_files += self._sweep_orphans(pool)
        with self._store.index.read() as txn:
            self._count_waiting(txn, report, cutoff)
        return report

    def _settle(self, digests: list[Digest], pool: ThreadPoolExecutor, retire: bool) -> int:
        """Retire (if asked), decide and purge or restore: the protocol of the module docstring. Returns how
        many copies were purged."""
        if not digests:
            return 0
        if retire:
            # On the pool: a retire is a rename of a file, or three requests to an object store (copy, a miss for
            # the other form, delete: ~0.1 s measured on SeaweedFS beside pushes, one blob after another).
            list(pool.map(self._blobs.retire, digests))
            crashpoints.reached("gc.after_trash")
        t = self._t

        def decide(txn: WriteTransaction) -> list[bool]:
            keep = []
            for digest in digests:
                raw = txn.get(t.blobs, digest.key)
                state = BlobRecord.unpack(raw).state if raw is not None else None
                if state == STATE_DELETING:
                    txn.delete(t.blobs, digest.key)
                txn.delete(t.doomed, digest.key)
                keep.append(state == STATE_PRESENT)
            return keep

        keep = self._store.index.transact(decide)
        crashpoints.reached("gc.after_decide")
        steps = [pool.submit(self._blobs.restore if kept else self._blobs.purge, digest)
                 for digest, kept in zip(digests, keep, strict=True)]
        for step in steps:
            step.result()  # surface anything but "already gone"
        return keep.count(False)

    def _recover(self, pool: ThreadPoolExecutor) -> None:
        """Finish what a crashed pass left: claims not yet decided, retired copies not yet purged or restored."""
        with self._store.index.read() as txn:
            doomed = [Digest.parse(key.decode("ascii")) for key in txn.keys(self._t.doomed)]
        for at in range(0, len(doomed), BATCH):
            self._settle(doomed[at:at + BATCH], pool, retire=True)
        leftover = list(self._blobs.retired())
        for at in range(0, len(leftover), BATCH):
            self._settle(leftover[at:at + BATCH], pool, retire=False)

    def _count_waiting(self, txn: Transaction, report: GcReport, cutoff: float) -> None:
        """The queue entries younger than `cutoff` (the part a pass does not reach) that stand for a blob nobody
        references: how many, their bytes, and when the first and last of them fall due."""
        grace = self._store.config.grace
        start = max(0, int(cutoff * 1_000_000) - 1).to_bytes(8, "big")  # a little early, then _doom's own test
        for key, _ in txn.scan(self._t.gcqueue, start=start):
            if queue_key_time(key) <= cutoff:
                continue  # a pass reached it: collected, or counted as leased
            raw = txn.get(self._t.blobs, key[8:])
            record = BlobRecord.unpack(raw) if raw is not None else None
            if record is None or record.refcount > 0 or queue_key(record.zero_since, key[8:]) != key:
                continue  # stale: the blob was referenced again, re-queued later, or is gone
            due = max(record.zero_since + grace, record.lease_until)
            report.waiting += 1
            report.waiting_bytes += record.size
            report.first_due = due if report.first_due is None else min(report.first_due, due)
            report.last_due = due if report.last_due is None else max(report.last_due, due)

    def _claim(self, txn: Transaction, report: GcReport, now: float, cutoff: float, start: bytes,
               limit: int | None, writer: WriteTransaction | None,
               claimed: list[Digest] | None = None) -> bytes | None:
        """Process queue entries from `start`; return where to continue, or None when the queue is done.
        With `writer` (the same transaction as `txn`), act; without, only report (dry run)."""
        t = self._t
        seen = 0
        for key, _ in txn.scan(t.gcqueue, start=start):
            if limit is not None and seen >= limit:
                return key
            seen += 1
            if queue_key_time(key) > cutoff:
                return None  # the queue is in time order: everything after this is younger
            digest_key = key[8:]
            raw = txn.get(t.blobs, digest_key)
            record = BlobRecord.unpack(raw) if raw is not None else None
            if (record is None or record.refcount > 0 or record.state == STATE_DELETING
                    or queue_key(record.zero_since, digest_key) != key):
                report.stale_entries += 1
                if writer is not None:
                    writer.delete(t.gcqueue, key)
                continue
            if record.lease_until > now:
                report.leased += 1
                continue
            digest = Digest.parse(digest_key.decode("ascii"))
            report.collected.append((digest, record.size))
            if writer is not None:
                writer.delete(t.gcqueue, key)
                if record.state == STATE_INLINE:
                    writer.delete(t.blobs, digest_key)
                    writer.delete(t.inline, digest_key)  # gone with the commit: no bytes elsewhere
                else:  # PRESENT or MISSING: claimed; the bytes (if any) are settled outside the transaction
                    writer.put(t.blobs, digest_key, replace(record, state=STATE_DELETING, refcount=0).pack())
                    writer.put(t.doomed, digest_key, b"")
                    if claimed is not None:
                        claimed.append(digest)
        return None

    def _sweep_orphans(self, pool: ThreadPoolExecutor) -> int:
        """Blob bytes with no record, or beside an INLINE record: settled by the same protocol as a claim, which
        a publish in flight overrules (module docstring)."""
        candidates: list[Digest] = []
        listed: list[Digest] = []

        def check() -> None:
            # The records of a batch listed, in a read transaction of their own: listing the bytes is a walk of a
            # directory or of a bucket (S3 calls), and no index transaction is held across that.
            with self._store.index.read() as txn:
                for digest in listed:
                    raw = txn.get(self._t.blobs, digest.key)
                    if raw is None or BlobRecord.unpack(raw).state == STATE_INLINE:
                        candidates.append(digest)
            listed.clear()

        last: Digest | None = None
        for digest, _form, _location in self._blobs.stored():
            if digest is None or digest == last:
                continue  # a stray name (fsck reports it), or the other form of a blob just seen
            listed.append(digest)
            last = digest
            if len(listed) >= BATCH:
                check()
        check()
        return sum(self._settle(candidates[at:at + BATCH], pool, retire=True)
                   for at in range(0, len(candidates), BATCH))

    def explain(self, digest: Digest | str) -> Retention:
        digest = digest if isinstance(digest, Digest) else Digest.parse(digest)
        grace = self._store.config.grace
        with self._store.index.read() as txn:
            raw = txn.get(self._t.blobs, digest.key)
            holders = tuple(islice(self._store.refs.holders(txn, digest), 20))
        if raw is None:
            return Retention(digest, False, 0, holders, 0, None, "not in the store")
        record = BlobRecord.unpack(raw)
        stored = record.state in STORED_STATES
        if record.refcount > 0:
            more = "" if len(holders) == record.refcount else f" (first {len(holders)} shown)"
            return Retention(digest, stored, record.size, holders, record.refcount, None,
                             f"referenced by {record.refcount} holder(s){more}")
        at = max(record.zero_since + grace, record.lease_until)
        if record.lease_until > record.zero_since + grace:
            reason = f"unreferenced; leased until {utc(record.lease_until)} (a client checked it recently)"
        else:
            reason = f"unreferenced; in its grace period until {utc(at)}"
        if at <= self._store.clock():
            reason = "unreferenced and past its grace period: the next GC pass deletes it"
        return Retention(digest, stored, record.size, holders, 0, at, reason)


def utc(moment: float) -> str:
    """A time as people read it in a report: `2026-11-22 14:03:12 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))
