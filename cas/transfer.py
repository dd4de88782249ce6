"""Copying a whole store into another, empty one (`berth move-up`: an embedded data directory into the distributed
store). Every blob's bytes are re-hashed on the way; cas's records and reference tables, and the tables of the
layers above (named by the caller), are copied row by row.

Why rows and not a replay through the APIs: a store holds what no API gives back — secrets kept only as hashes
(personal access tokens, passwords), the token signing key, the times and actors of tag history, event sequence
numbers and each webhook's progress, reference counts and GC's clock. Copying the rows keeps all of it exactly. The
one thing rewritten is a blob record whose bytes did not make it: records say what the target actually holds.

The protocol, and what makes it resumable:
1. The target's index must be empty (every table but the format markers) and its keeper of bytes must hold no blob,
   except after an earlier run that did not finish: its marker (`meta` key `transfer`, naming the source) is
   written before any byte, and a run from the same source goes on from there.
2. Bytes: every PRESENT blob's stored form (raw, or FRAMES_V1 as it is: cas/stored_forms.py) is read from the
   source, its original bytes re-hashed against the digest and the recorded size, and published in the same form
   in the target. A blob the target holds already (the earlier run copied it, verified) is not read again. A blob
   whose bytes fail (corrupt, gone, a stored form that does not decode) is not copied.
3. Rows: one write transaction in the target writes every row (all or nothing) and drops the marker. INLINE blobs
   are verified there. A failed blob that holders still name becomes a MISSING record with its references intact:
   never served, and the next push of the same bytes heals it (what `fsck --repair` does to a corrupt file), so the
   manifests that name it stay, and pulling that blob fails until then. A failed blob nobody references is left
   out, as are DELETING records (a collection pass the source had not finished) and upload sessions (their partial
   bytes are the source's: clients start those uploads again).

The source must not change meanwhile: the caller makes sure that no other process has it open. Memory: one chunk of
one blob at a time (plus the target's staging buffer, cas/s3_blobs.py); only failures are remembered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

from .digest import Digest, new_hasher
from .errors import CasError
from .index import Transaction, WriteTransaction
from .layout import (
    FORM_FRAMES_V1,
    FORM_RAW,
    FORM_SUFFIX,
    STATE_DELETING,
    STATE_INLINE,
    STATE_MISSING,
    STATE_PRESENT,
    BlobRecord,
    blob_path,
)
from .store import BlobStore
from .stored_forms import hash_form

MARKER = b"transfer"  # in the target's `meta` table while a transfer is under way (cas/layout.py)
CHUNK = 1 << 20


class TransferRefused(CasError):
    """The target is not one a transfer may write into (not empty, or another transfer's)."""


@dataclass(frozen=True, slots=True)
class BlobFailure:
    digest: str
    reason: str
    holders: int  # references on it: kept as a MISSING record for them; 0: left out

    def outcome(self) -> str:
        if self.holders:
            return (f"recorded as missing in the target for its {self.holders} holder(s): never served until the "
                    "same bytes are pushed again")
        return "left out (nothing references it)"


@dataclass(slots=True)
class TransferReport:
    blobs: int = 0  # blobs whose bytes are in the target's keeper (copied now, or by an earlier run)
    blob_bytes: int = 0  # their original bytes
    stored_bytes: int = 0  # as kept (a compressed form stays compressed)
    compressed: int = 0  # of them kept in a compressed form
    already: int = 0  # found in the target already: an earlier run that did not finish had copied them
    inline: int = 0  # blobs kept inside the index (manifests), verified and copied with the rows
    inline_bytes: int = 0
    missing: int = 0  # records MISSING in the source already: carried over as they are
    collecting: int = 0  # DELETING records in the source (a collection in progress): left out
    uploads: int = 0  # open upload sessions in the source: not moved
    resumed: bool = False
    failed: list[BlobFailure] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # rows written per table (the layers above's and cas's)
    # Stored sizes that differ from the source's record (its bytes verified, its `stored` wrong): the target's
    # record says what the target holds. Rare: only drift is remembered.
    stored_sizes: dict[bytes, int] = field(default_factory=dict, repr=False)


Progress = Callable[[TransferReport], None]


def occupied(target: BlobStore, tables: Iterable[str]) -> list[str]:
    """What the target holds already, for a refusal: '12 row(s) in users', ...; empty if nothing."""
    t = target.tables
    found: list[str] = []
    with target.index.read() as txn:  # the caller's tables first: what a person recognises (users, repositories)
        for table in (*map(target.index.table, tables), t.blobs, t.inline, t.refs, t.held, t.gcqueue, t.doomed,
                      t.uploads, t.compaction, t.superseded):
            count = txn.count(table)
            if count:
                found.append(f"{count} row(s) in {table.name}")
        extra = [key.decode(errors="replace") for key in txn.keys(t.meta) if key not in (b"format", MARKER)]
    found += [f"meta {name!r}" for name in extra]
    return found


def transfer(source: BlobStore, target: BlobStore, tables: Iterable[str], *, check_empty: Iterable[str] = (),
             progress: Progress | None = None) -> TransferReport:
    """Copy `source` (a store over local files) into the empty `target`: see the module docstring. `tables` are
    the layers above's tables to copy row by row (declared in both stores); `check_empty` further tables that must
    be empty in the target but are not copied. TransferRefused if the target is not empty."""
    root = source.root
    if root is None:
        raise ValueError("a transfer reads its source's blob files: the source must be a store over a data directory")
    tables = tuple(tables)
    report = TransferReport()
    report.resumed = _claim(source, target, (*tables, *check_empty), str(root))
    _copy_bytes(source, target, root, report, progress)
    _copy_rows(source, target, tables, report)
    return report


def _claim(source: BlobStore, target: BlobStore, tables: Iterable[str], origin: str) -> bool:
    """Refuse a target that is not empty; mark it as this transfer's. True if an earlier run from the same source
    had marked it (then the blobs it copied are there already)."""
    meta = target.tables.meta
    with target.index.read() as txn:
        raw = txn.get(meta, MARKER)
    earlier = json.loads(raw) if raw is not None else None
    if earlier is not None and earlier.get("source") != origin:
        raise TransferRefused(f"the target holds an unfinished move from {earlier.get('source')}, not from {origin}: "
                              "run that one again to finish it, or use an empty target")
    there = occupied(target, tables)
    if there:
        raise TransferRefused(f"the target is not empty ({', '.join(there[:6])}"
                              f"{', …' if len(there) > 6 else ''}): a move copies into an empty store only (a new "
                              "PostgreSQL schema or database, a new bucket or prefix)")
    if earlier is None:
        stored = next(iter(target.blobs.stored()), None)
        if stored is not None:
            raise TransferRefused(f"the target's bucket holds blobs already ({stored[2]}, …) though its index is "
                                  "empty: a move copies into an empty store only (a new bucket or prefix)")
        marker = json.dumps({"source": origin, "started": source.clock()}).encode()
        target.index.transact(lambda txn: txn.put(meta, MARKER, marker))
    return earlier is not None


# -- bytes ---------------------------------------------------------------------------------------------------------
def _copy_bytes(source: BlobStore, target: BlobStore, root: Path, report: TransferReport,
                progress: Progress | None) -> None:
    start: bytes | None = None
    while True:  # in batches of records: no read transaction stays open while bytes travel
        with source.index.read() as txn:
            batch = _records(txn, source, start)
        if not batch:
            return
        start = batch[-1][0] + b"\0"
        for key, record in batch:
            if record.state != STATE_PRESENT:
                continue
            digest = Digest.parse(key.decode("ascii"))
            if target.blobs.contains(digest, record.form):
                report.already += 1
                _count(report, record)
                continue
            outcome = _copy_blob(target, root, digest, record)
            if isinstance(outcome, str):
                report.failed.append(BlobFailure(str(digest), outcome, record.refcount))
                continue
            if outcome != record.stored_size:
                report.stored_sizes[key] = outcome
                record = replace(record, stored=outcome)
            _count(report, record)
            if progress is not None:
                progress(report)


def _records(txn: Transaction, store: BlobStore, start: bytes | None) -> list[tuple[bytes, BlobRecord]]:
    """The next (up to) 1000 blob records from `start` on."""
    scan = txn.scan(store.tables.blobs, start=start)
    try:
        return [(key, BlobRecord.unpack(raw)) for key, raw in islice(scan, 1000)]
    finally:
        close = getattr(scan, "close", None)
        if close is not None:
            close()  # (a generator's cursor, closed inside its transaction)


def _count(report: TransferReport, record: BlobRecord) -> None:
    report.blobs += 1
    report.blob_bytes += record.size
    report.stored_bytes += record.stored_size
    report.compressed += record.form != FORM_RAW


def _source_fd(root: Path, digest: Digest, form: int) -> int | None:
    """The stored form's file in the source, or its retired copy (a crash left it in trash/ with the record still
    PRESENT: LocalBlobs.open reads it there too); None if neither is there."""
    suffix = FORM_SUFFIX[form]
    for path in (f"{blob_path(root, digest)}{suffix}", f"{root}/trash/{digest.algorithm}-{digest.hex}{suffix}"):
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
    return None


def _copy_blob(target: BlobStore, root: Path, digest: Digest, record: BlobRecord) -> int | str:
    """Verify a PRESENT blob's stored form and publish it in the target, in the same form: the size of the stored
    form, or what went wrong (then nothing of it is in the target)."""
    if record.form not in FORM_SUFFIX:
        return f"stored form {record.form} is not known to this Berth"
    fd = _source_fd(root, digest, record.form)
    if fd is None:
        return "its file is gone from the source"
    try:
        if record.form == FORM_FRAMES_V1:
            # Decompressed and hashed first; then the same descriptor (an immutable file) is copied as it is.
            hexdigest, size = hash_form(record.form, fd, digest.algorithm, stored_size=os.fstat(fd).st_size)
            if hexdigest != digest.hex or size != record.size:
                return _mismatch(hexdigest, size, digest, record, compressed=True)
        staged = target.blobs.stage()
        try:
            hasher = new_hasher(digest.algorithm)
            writer = staged.writer(hasher, 0)
            offset = 0
            try:
                while chunk := os.pread(fd, CHUNK, offset):
                    writer.write(chunk)
                    offset += len(chunk)
                hexdigest = writer.finish(fsync=False)
            except BaseException:
                writer.abort()
                raise
            if record.form == FORM_RAW and (hexdigest != digest.hex or offset != record.size):
                return _mismatch(hexdigest, offset, digest, record, compressed=False)
            staged.sync()
            if record.form == FORM_RAW:
                target.blobs.publish(staged, digest)
            else:
                target.blobs.publish_form(staged, digest, record.form)
        finally:
            staged.discard()
    finally:
        os.close(fd)
    return offset


def _mismatch(hexdigest: str, size: int, digest: Digest, record: BlobRecord, compressed: bool) -> str:
    if compressed and not hexdigest:
        return "its compressed form cannot be decoded"
    if hexdigest != digest.hex:
        return f"corrupt: its bytes hash to {digest.algorithm}:{hexdigest}"
    return f"its bytes are {size} long, the record says {record.size}"


# -- rows ----------------------------------------------------------------------------------------------------------
def _copy_rows(source: BlobStore, target: BlobStore, tables: tuple[str, ...], report: TransferReport) -> None:
    """Every row, in one write transaction of the target (not replayed: the rows are all or nothing, and a conflict
    surfaces as an error after which the whole transfer may simply run again)."""
    failed = {failure.digest.encode("ascii") for failure in report.failed}
    s, t = source.tables, target.tables
    rows: dict[str, int] = {}
    left_out: set[bytes] = set()  # digests without a record in the target: their queue entries go too

    def copy(txn: Transaction, out: WriteTransaction, name: str, keep: Callable[[bytes], bool] = lambda _: True,
             ) -> None:
        source_table, target_table = source.index.table(name), target.index.table(name)
        count = 0
        for key, value in txn.scan(source_table):
            if keep(key):
                out.put(target_table, key, value)
                count += 1
        rows[name] = count

    with source.index.read() as txn, target.index.write() as out:
        count = 0
        for key, raw in txn.scan(s.blobs):
            record = _target_record(txn, out, source, target, key, BlobRecord.unpack(raw), key in failed, report)
            if record is None:
                left_out.add(key)
            else:
                out.put(t.blobs, key, record.pack())
                count += 1
        rows["blobs"] = count
        for name in ("refs", "held"):
            copy(txn, out, name)
        copy(txn, out, "gcqueue", lambda key: key[8:] not in left_out)
        copy(txn, out, "compaction", lambda key: key not in left_out and key not in failed)
        report.uploads = txn.count(s.uploads)
        for name in tables:
            copy(txn, out, name)
        out.delete(t.meta, MARKER)
    report.rows = rows


def _target_record(txn: Transaction, out: WriteTransaction, source: BlobStore, target: BlobStore, key: bytes,
                   record: BlobRecord, failed: bool, report: TransferReport) -> BlobRecord | None:
    """The record the target gets for a source record (None: none), with an INLINE blob's bytes written beside it
    once verified."""
    if record.state == STATE_DELETING:
        report.collecting += 1
        return None
    if record.state == STATE_MISSING:
        report.missing += 1
    elif record.state == STATE_INLINE and not _inline(txn, out, source, target, key, record, report):
        failed = True
    if failed:
        record = replace(record, state=STATE_MISSING, form=FORM_RAW, stored=record.size)
    elif key in report.stored_sizes:
        record = replace(record, stored=report.stored_sizes[key])
    if record.state == STATE_MISSING and record.refcount == 0:
        return None  # nothing needs a record of bytes we do not have
    return record


def _inline(txn: Transaction, out: WriteTransaction, source: BlobStore, target: BlobStore, key: bytes,
            record: BlobRecord, report: TransferReport) -> bool:
    """An INLINE blob's bytes, verified, into the target's `inline` table; False (and a failure) if they fail."""
    digest = Digest.parse(key.decode("ascii"))
    data = txn.get(source.tables.inline, key)
    if data is None:
        problem = "its bytes are gone from the source's index"
    elif (actual := Digest.of(data, digest.algorithm)) != digest:
        problem = f"corrupt: its bytes hash to {actual}"
    elif len(data) != record.size:
        problem = f"its bytes are {len(data)} long, the record says {record.size}"
    else:
        out.put(target.tables.inline, key, data)
        report.inline += 1
        report.inline_bytes += len(data)
        return True
    report.failed.append(BlobFailure(str(digest), problem, record.refcount))
    return False
