"""Garbage collection without stopping the world.

A blob whose last reference was dropped (or that nobody ever referenced) has a `gcqueue` entry keyed by the time it
became unreferenced. A pass walks the queue in time order up to `now - grace` and, in short write transactions of
BATCH entries (reads and writes go on between them):

1. drops stale entries (the blob was referenced again, re-queued later, or is gone);
2. keeps entries whose blob holds a lease (a stat or dedup hit asked for it recently);
3. otherwise deletes the blob's record and marks it `doomed`: from that commit on, nobody can see or reference it.

Then it moves doomed files into trash/, again under the LMDB writer lock, which `BlobStore.publish` holds while it
renames a new copy into place: a publish of the same digest cancels the doom, so GC can never take a fresh file.
A rename holds the lock ~5x shorter than an unlink on a filesystem that discards freed blocks synchronously; the
unlinks themselves run outside the lock, on UNLINK_THREADS threads (they overlap well), while the next batch is
renamed. A crash after a rename and before its commit leaves a doomed entry whose file is gone (the next pass
finishes it) and files in trash/ (never referenced by anything: the next pass unlinks them).

Last, debris: temp files of crashed ingests, idle upload sessions, and blob files with no record (a crash between
rename-into-place and commit).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from . import crashpoints
from .digest import ALGORITHMS, Digest
from .files import remove_debris
from .index import Transaction, WriteTransaction
from .layout import STATE_INLINE, STORED_STATES, BlobRecord, blob_path, queue_key, queue_key_time

if TYPE_CHECKING:
    from .store import BlobStore

# Entries per write transaction: ~1000 puts commit in a few ms (PERF-NOTES: ~23 k puts/s in batches), and 1000
# renames take ~35 ms here: short enough that a manifest PUT waiting for the writer lock barely notices.
BATCH = 1000
# Measured on ext4 with online discard: one thread unlinks at ~170 us/file, eight at ~64 us/file.
UNLINK_THREADS = 8


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

    def run(self, dry_run: bool = False, sweep_orphans: bool = True) -> GcReport:
        report = GcReport(dry_run=dry_run, grace=self._store.config.grace)
        now = self._store.clock()
        cutoff = now - self._store.config.grace
        if dry_run:
            with self._store.index.read() as txn:
                self._doom(txn, report, now, cutoff, start=b"", limit=None, writer=None)
                self._count_waiting(txn, report, cutoff)
            return report
        start: bytes | None = b""
        while start is not None:
            def batch(txn: WriteTransaction, start: bytes = start) -> bytes | None:
                return self._doom(txn, report, now, cutoff, start=start, limit=BATCH, writer=txn)
            start = self._store.index.transact(batch)
        self._discard_doomed()
        report.expired_uploads = self._store.uploads.expire()
        report.debris_files += self._sweep_temp()
        if sweep_orphans:
            report.debris_files += self._sweep_orphans()
        with self._store.index.read() as txn:
            self._count_waiting(txn, report, cutoff)
        return report

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

    def _doom(self, txn: Transaction, report: GcReport, now: float, cutoff: float, start: bytes,
              limit: int | None, writer: WriteTransaction | None) -> bytes | None:
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
            if record is None or record.refcount > 0 or queue_key(record.zero_since, digest_key) != key:
                report.stale_entries += 1
                if writer is not None:
                    writer.delete(t.gcqueue, key)
                continue
            if record.lease_until > now:
                report.leased += 1
                continue
            report.collected.append((Digest.parse(digest_key.decode("ascii")), record.size))
            if writer is not None:
                writer.delete(t.blobs, digest_key)
                writer.delete(t.gcqueue, key)
                if record.state == STATE_INLINE:
                    writer.delete(t.inline, digest_key)  # gone with the commit: no file to unlink
                else:
                    writer.put(t.doomed, digest_key, b"")
        return None

    def _discard_doomed(self) -> None:
        blobs, trash = f"{self._store.root}/blobs", f"{self._store.root}/trash"

        def batch(txn: WriteTransaction) -> tuple[int, list[str]]:
            keys = [key for key, _ in islice(txn.scan(self._t.doomed), BATCH)]
            moved = []
            for key in keys:
                algorithm, hexdigest = key.decode("ascii").split(":", 1)  # plain strings: pathlib was 20 % here
                target = f"{trash}/{algorithm}-{hexdigest}"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{blobs}/{algorithm}/{hexdigest[:2]}/{hexdigest}", target)
                    moved.append(target)
                crashpoints.reached("gc.after_trash")
                txn.delete(self._t.doomed, key)
            return len(keys), moved

        with ThreadPoolExecutor(UNLINK_THREADS, thread_name_prefix="berth-gc") as pool:
            unlinks = [pool.submit(_unlink_quietly, entry.path) for entry in os.scandir(trash)]  # a crashed pass's
            processed = BATCH
            while processed == BATCH:
                processed, moved = self._store.index.transact(batch)
                unlinks.extend(pool.submit(_unlink_quietly, path) for path in moved)
            for unlink in unlinks:
                unlink.result()  # surface anything but "already gone"

    def _sweep_temp(self) -> int:
        return sum(remove_debris(path) for path in (self._store.root / "tmp").iterdir())

    def _sweep_orphans(self) -> int:
        """Blob files without a record. Checked and removed under the writer lock (see module docstring)."""
        candidates = []
        with self._store.index.read() as txn:
            for digest, _path in iter_blob_files(self._store.root):
                if digest is not None and txn.get(self._t.blobs, digest.key) is None:
                    candidates.append(digest)
        if not candidates:
            return 0

        def remove(txn: WriteTransaction) -> int:
            removed = 0
            for digest in candidates:
                if txn.get(self._t.blobs, digest.key) is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(blob_path(self._store.root, digest))
                        removed += 1
            return removed

        return self._store.index.transact(remove)

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


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def iter_blob_files(root: os.PathLike[str] | str) -> Iterator[tuple[Digest | None, str]]:
    """Every file under blobs/, with its digest if its path is a well-formed blob path (else None)."""
    base = os.path.join(root, "blobs")
    for algorithm in sorted(os.listdir(base)):
        alg_dir = os.path.join(base, algorithm)
        if not os.path.isdir(alg_dir):
            yield None, alg_dir
            continue
        for prefix in sorted(os.listdir(alg_dir)):
            pre_dir = os.path.join(alg_dir, prefix)
            if not os.path.isdir(pre_dir):
                yield None, pre_dir
                continue
            for name in sorted(os.listdir(pre_dir)):
                path = os.path.join(pre_dir, name)
                yield _digest_of(algorithm, prefix, name), path


def _digest_of(algorithm: str, prefix: str, name: str) -> Digest | None:
    if algorithm not in ALGORITHMS or name[:2] != prefix:
        return None
    try:
        return Digest.parse(f"{algorithm}:{name}")
    except ValueError:
        return None

