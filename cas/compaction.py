"""Compaction: the background pass that keeps compressible blobs compressed at rest (issue 18).

Uploads store the original bytes as they always did (cas/frames.py explains why compressing at ingest was measured
and rejected), and every blob that becomes PRESENT is queued in the `compaction` table. A pass takes queued blobs
one at a time:

1. reads the record; a blob no longer PRESENT and RAW leaves the queue (collected, already compacted, or missing);
2. asks compressibility.assess() for a verdict from a magic number and a few 64 KiB samples: a gzip layer or
   random data costs a fraction of a millisecond and leaves the queue, kept raw;
3. streams the raw bytes through a FrameWriter into a staging (BlobBytes.stage), hashing the original on the way:
   bytes that do not hash to the blob's digest are not compacted (fsck's business); a result not worth keeping
   (compressibility.worth_keeping) is dropped;
4. syncs the staging and publishes it as the blob's FRAMES_V1 form (BlobBytes.publish_form: for files, a rename
   to `<hex>.zf1` and an fsync of the directory);
5. in ONE index transaction: if the record is still PRESENT and RAW, switches it to FRAMES_V1 with the stored size
   and lists the raw bytes in `superseded`; the queue entry goes either way. No byte moves inside it (a write
   function may be replayed, cas/index.py);
6. after the commit, drops the raw bytes (BlobBytes.drop_form); the next pass drops them again if a publish's
   `ensure` put them back in the meantime, and clears their `superseded` entry.

Crashes (tests/cas/test_compaction_crash.py kills a pass at each named point). Before the commit of step 5 the record
names the raw bytes, which are untouched: a staging or a `.zf1` left behind is debris, swept with staging by GC, or
replaced or dropped when the blob's queue entry (still there) is processed again. After it the record names a
complete, fsynced stored form; the raw bytes left behind are listed in `superseded` and dropped at the start of the
next pass. Never a mix: the record names exactly one form, and that form's bytes were durable before it did.

Races. A pass holds the collector's `one_pass` lock (in this process) and its callers the collection lock
(`store.gc.exclusive()`, across processes), so a blob is never compacted while a collector claims, retires or
restores it. Publishing needs no lock: a publish only changes records that are not stored (absent, MISSING,
DELETING), which step 5 leaves alone, and the raw file a dedup publish links beside a compressed form is listed in
`superseded` by that publish. Readers: a descriptor opened on the raw file stays valid after the unlink; a reader
that read the record before the switch and finds the raw file gone reads the record again (BlobStore.open), and
the HTTP adapter falls back from sendfile to open() when the file has gone. One window is owned up to: a whole-blob
GET that stat()ed the raw file hands its path to the server's sendfile, which opens it a moment later; a switch
that unlinks the file in between breaks that one response (the client retries and is served the compressed form).
It is the window GC has for a blob collected while it is read, opened here for referenced blobs too, once per blob.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from . import crashpoints
from .compressibility import assess, worth_keeping
from .digest import Digest, new_hasher
from .errors import BlobUnknown
from .frames import FrameWriter
from .index import WriteTransaction
from .layout import (
    FORM_FRAMES_V1,
    FORM_RAW,
    STATE_INLINE,
    STATE_PRESENT,
    STORED_STATES,
    BlobRecord,
    superseded_key,
)

if TYPE_CHECKING:
    from .store import BlobStore

# Queue entries read per index snapshot; each blob is then compacted on its own (one short write transaction).
BATCH = 256


class _Unhashed:
    """The staging writer's hasher: the stored form is named by the original's digest, hashed by the FrameWriter;
    hashing the compressed bytes too would be work for nothing."""

    def update(self, data: bytes | memoryview, /) -> object:
        return None

    def hexdigest(self) -> str:
        return ""

    def copy(self) -> _Unhashed:
        return self


@dataclass(slots=True)
class CompactionReport:
    assessed: int = 0  # queued blobs given a verdict
    compressed: list[tuple[Digest, int, int]] = field(default_factory=list)  # (digest, original, stored) switched
    kept_raw: int = 0  # assessed and kept as they are (incompressible, too small, or not worth it in full)
    damaged: list[str] = field(default_factory=list)  # raw bytes that did not hash to their digest: see fsck
    debris: int = 0  # superseded stored forms removed
    pending: int = 0  # blobs still queued after this pass (its budget ran out)

    @property
    def bytes_saved(self) -> int:
        return sum(original - stored for _, original, stored in self.compressed)


@dataclass(frozen=True, slots=True)
class Usage:
    """Stored bytes against original bytes over every stored blob (files and inline), from the records alone."""

    blobs: int = 0
    original_bytes: int = 0
    stored_bytes: int = 0
    compressed: int = 0  # blobs kept in a compressed form
    pending: int = 0  # blobs waiting for a compaction pass

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.original_bytes if self.original_bytes else 1.0


class Compactor:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._t = store.tables
        self._blobs = store.blobs

    def run(self, *, max_seconds: float | None = None, max_bytes: int | None = None) -> CompactionReport:
        """One pass over the queue, until it is empty or a budget (seconds of work, original bytes compressed) is
        spent; the rest waits for the next pass. Hold `store.gc.exclusive()` around it when other processes may
        collect or compact the same store."""
        report = CompactionReport()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        spent = 0
        with self._store.gc.one_pass:
            report.debris += self._drop_superseded()
            start = b""
            while True:
                with self._store.index.read() as txn:
                    batch = [key for key, _ in zip(txn.keys(self._t.compaction, start=start), range(BATCH),
                                                   strict=False)]
                if not batch:
                    break
                for key in batch:
                    if (deadline is not None and time.monotonic() >= deadline
                            or max_bytes is not None and spent >= max_bytes):
                        break
                    spent += self._compact(Digest.parse(key.decode("ascii")), report)
                else:
                    start = batch[-1] + b"\0"
                    continue
                break
        with self._store.index.read() as txn:
            report.pending = txn.count(self._t.compaction)
        return report

    def usage(self) -> Usage:
        blobs = original = stored = compressed = 0
        with self._store.index.read() as txn:
            for _, raw in txn.scan(self._t.blobs):
                record = BlobRecord.unpack(raw)
                if record.state not in STORED_STATES:
                    continue
                blobs += 1
                original += record.size
                stored += record.size if record.state == STATE_INLINE else record.stored_size
                compressed += record.form != FORM_RAW
            pending = txn.count(self._t.compaction)
        return Usage(blobs, original, stored, compressed, pending)

    # -- one blob -------------------------------------------------------------------------------------------------
    def _compact(self, digest: Digest, report: CompactionReport) -> int:
        """Assess one queued blob and compact it if it pays; the original bytes read (for the budget)."""
        with self._store.index.read() as txn:
            raw = txn.get(self._t.blobs, digest.key)
        record = BlobRecord.unpack(raw) if raw is not None else None
        if record is None or record.state != STATE_PRESENT or record.form != FORM_RAW:
            self._dequeue(digest)
            return 0
        report.assessed += 1
        try:
            verdict = assess(lambda offset, length: self._sample(digest, record.size, offset, length), record.size)
            if not verdict.compress:
                self._keep_raw(digest, report)
                return 0
            return self._compress(digest, record, report)
        except (BlobUnknown, OSError) as exc:  # the raw bytes are gone or short: fsck names and repairs that
            report.damaged.append(f"{digest}: {exc}")
            self._dequeue(digest)
            return 0

    def _sample(self, digest: Digest, size: int, offset: int, length: int) -> bytes:
        with self._blobs.open(digest, size, offset, min(length, size - offset)) as reader:
            return reader.read()

    def _compress(self, digest: Digest, record: BlobRecord, report: CompactionReport) -> int:
        staged = self._blobs.stage()
        try:
            out = staged.writer(_Unhashed(), 0)
            hasher = new_hasher(digest.algorithm)
            frames = FrameWriter(out.write, hasher=hasher)
            try:
                with self._blobs.open(digest, record.size) as reader:
                    for chunk in reader:
                        frames.write(chunk)
                summary = frames.finish()
                out.finish(fsync=False)
            except BaseException:
                out.abort()
                raise
            if hasher.hexdigest() != digest.hex or summary.original_size != record.size:
                report.damaged.append(f"{digest}: the raw bytes do not hash to the digest")
                self._dequeue(digest)
                return summary.original_size
            if not worth_keeping(summary.original_size, summary.stored_size):
                self._keep_raw(digest, report)
                return summary.original_size
            staged.sync()
            crashpoints.reached("compact.before_publish")
            self._blobs.publish_form(staged, digest, FORM_FRAMES_V1)
            crashpoints.reached("compact.after_publish")
            switched, form_now = self._store.index.transact(
                lambda txn: self._switch(txn, digest, record.size, summary.stored_size))
            crashpoints.reached("compact.after_commit")
            if not switched:
                if form_now != FORM_FRAMES_V1:
                    self._blobs.drop_form(digest, FORM_FRAMES_V1)  # the blob changed under us: ours is debris
                return summary.original_size
            self._blobs.drop_form(digest, FORM_RAW)
            crashpoints.reached("compact.after_drop")
            # The `superseded` entry stays until the next pass drops the raw bytes again and clears it: a publish
            # that made the record PRESENT just before our switch may still be in its `ensure`, which puts raw
            # bytes back if they are missing (cas/gc.py), microseconds after its commit.
            report.compressed.append((digest, summary.original_size, summary.stored_size))
            return summary.original_size
        finally:
            staged.discard()

    def _switch(self, txn: WriteTransaction, digest: Digest, size: int, stored: int) -> tuple[bool, int | None]:
        """The one transaction of step 5: (switched, the form the record names now)."""
        txn.delete(self._t.compaction, digest.key)
        raw = txn.get(self._t.blobs, digest.key)
        record = BlobRecord.unpack(raw) if raw is not None else None
        if record is None or record.state != STATE_PRESENT or record.form != FORM_RAW or record.size != size:
            return False, record.form if record is not None and record.state == STATE_PRESENT else None
        txn.put(self._t.blobs, digest.key, replace(record, form=FORM_FRAMES_V1, stored=stored).pack())
        txn.put(self._t.superseded, superseded_key(digest.key, FORM_RAW), b"")
        return True, FORM_FRAMES_V1

    def _keep_raw(self, digest: Digest, report: CompactionReport) -> None:
        report.kept_raw += 1
        # A crashed pass may have left a compressed copy of this (still RAW) blob: debris, since it stays raw.
        self._blobs.drop_form(digest, FORM_FRAMES_V1)
        self._dequeue(digest)

    def _dequeue(self, digest: Digest) -> None:
        self._store.index.transact(lambda txn: txn.delete(self._t.compaction, digest.key))

    # -- debris ---------------------------------------------------------------------------------------------------
    def _drop_superseded(self) -> int:
        """Drop the bytes `superseded` lists, where the record still names another form (a crash after a switch's
        commit, or a raw file a dedup publish linked beside a compressed form). Without a PRESENT record the bytes
        are the collector's (its orphan sweep, or the claim in progress)."""
        dropped = 0
        with self._store.index.read() as txn:
            entries = list(txn.keys(self._t.superseded))
            forms_now = {}
            for key in entries:
                raw = txn.get(self._t.blobs, key[:-2])
                record = BlobRecord.unpack(raw) if raw is not None else None
                forms_now[key] = record.form if record is not None and record.state == STATE_PRESENT else None
        for key in entries:
            form, now = key[-1], forms_now[key]
            if now is not None and now != form:
                self._blobs.drop_form(Digest.parse(key[:-2].decode("ascii")), form)
                dropped += 1
        if entries:
            def forget(txn: WriteTransaction) -> None:
                for key in entries:
                    txn.delete(self._t.superseded, key)
            self._store.index.transact(forget)
        return dropped
