"""fsck: re-hash every stored blob and cross-check the index against the bytes (cas/blobs.py: files or memory).

Damage (what must never happen, reported loudly):
    missing      a record says the blob is stored; its file (or inline bytes) is gone or shorter than recorded
    corrupt      a file (or inline bytes) whose bytes do not hash to its name
    stray        a file under blobs/ whose path is not a blob path
    refcount     a record whose cached reference count disagrees with its `refs` edges
    dangling     `refs` edges naming a digest with no record
Debris (what a crash leaves and GC reclaims; reported, not damage):
    unindexed    a correct blob file without a record
    doomed       records GC claimed (state DELETING) whose collection a pass has yet to finish
    temp         staging and retired copies (files under tmp/ and trash/)
    superseded   bytes of a stored form the record does not use (a compaction pass removes them)

A blob kept compressed (FRAMES_V1, cas/frames.py) is decompressed and hashed: its original digest is the only
truth, so a stored form that decodes cleanly to other bytes is corrupt as surely as one that does not decode.

Repair (only when asked) never drops referenced data silently: a corrupt file is moved to quarantine/ and its
record marked MISSING (never served; holders kept; the next ingest of the right bytes heals it); a missing file is
marked MISSING the same way; an unindexed correct file is adopted (indexed, unreferenced, so GC decides after its
grace); refcounts are recomputed from the edges; dangling edges get a MISSING record so re-pushing the blob heals
them. A stray file is moved to quarantine/. The moves happen outside any index transaction (a write function may be
replayed), before the one transaction that records them: a crash in between leaves records that the next fsck
reports as missing and repairs the same way.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .digest import Digest
from .index import WriteTransaction
from .layout import FORM_RAW, STATE_INLINE, STATE_MISSING, STATE_PRESENT, BlobRecord, queue_key

if TYPE_CHECKING:
    from .store import BlobStore


@dataclass(slots=True)
class FsckReport:
    checked: int = 0
    bytes_hashed: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)
    refcount: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)
    doomed: int = 0
    temp: int = 0
    superseded: int = 0
    repaired: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return bool(self.missing or self.corrupt or self.stray or self.refcount or self.dangling)

    def lines(self) -> list[str]:
        out = [f"checked {self.checked} blob files ({self.bytes_hashed} bytes re-hashed)"]
        for name in ("missing", "corrupt", "stray", "refcount", "dangling", "unindexed"):
            for item in getattr(self, name):
                out.append(f"{name}: {item}")
        if self.doomed:
            out.append(f"debris: {self.doomed} doomed file(s) awaiting GC")
        if self.temp:
            out.append(f"debris: {self.temp} temp file(s)")
        if self.superseded:
            out.append(f"debris: {self.superseded} superseded stored form(s) awaiting compaction")
        out.extend(f"repaired: {item}" for item in self.repaired)
        out.append("damage found" if self.damaged else "no damage")
        return out


def check(store: BlobStore, repair: bool = False, workers: int = 2) -> FsckReport:
    report = FsckReport()
    t = store.tables
    blobs = store.blobs
    entries: dict[Digest, dict[int, str]] = {}
    for digest, form, path in blobs.stored():
        if digest is None:
            report.stray.append(path)
        else:
            entries.setdefault(digest, {})[form] = path

    with store.index.read() as txn:
        records = {Digest.parse(k.decode("ascii")): BlobRecord.unpack(v) for k, v in txn.scan(t.blobs)}
        edges: dict[Digest, int] = {}
        for key, _ in txn.scan(t.refs):
            digest = Digest.parse(key.split(b"\0", 1)[0].decode("ascii"))
            edges[digest] = edges.get(digest, 0) + 1
        doomed = {Digest.parse(k.decode("ascii")) for k, _ in txn.scan(t.doomed)}
        inline_bad: dict[Digest, bytes | None] = {}  # inline records whose bytes are gone (None) or wrong
        for digest, rec in records.items():
            if rec.state == STATE_INLINE:
                data = txn.get(t.inline, digest.key)
                if data is None or Digest.of(data, digest.algorithm) != digest or len(data) != rec.size:
                    inline_bad[digest] = data
                report.checked += 1
                report.bytes_hashed += len(data or b"")
    report.doomed = len(doomed)
    report.temp = blobs.debris()

    # The entry to check per blob: the one in its record's form (without a record: the raw one, else debris).
    files: dict[Digest, str] = {}
    for digest, forms in entries.items():
        record = records.get(digest)
        form = record.form if record is not None and record.state == STATE_PRESENT else FORM_RAW
        if form in forms:
            files[digest] = forms[form]
        report.superseded += len(forms) - (form in forms)
    # Hash in threads: hashlib and zstd release the GIL, so two cores re-hash at once.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = dict(zip(files, pool.map(lambda d: _hash(store, files[d], d.algorithm), files), strict=True))
    hashed = {digest: result for digest, result in results.items() if result is not None}
    for digest in results.keys() - hashed.keys():  # gone since the listing (compacted, or collected)
        del files[digest]
    report.checked += len(hashed)
    report.bytes_hashed += sum(size for _, size in hashed.values())

    corrupt: set[Digest] = set()
    for digest, (hexdigest, size) in hashed.items():
        record = records.get(digest)
        if hexdigest != digest.hex:
            corrupt.add(digest)
            report.corrupt.append(f"{digest} ({files[digest]})")
        elif record is not None and record.state == STATE_PRESENT and size != record.size:
            corrupt.add(digest)
            report.corrupt.append(f"{digest} (size {size}, recorded {record.size})")
        elif record is None and digest not in doomed:
            report.unindexed.append(str(digest))
    missing = [d for d, r in records.items() if r.state == STATE_PRESENT and d not in files
               and not _there_now(store, d)]
    missing += [d for d, data in inline_bad.items() if data is None]
    for digest, data in inline_bad.items():
        if data is not None:
            corrupt.add(digest)
            report.corrupt.append(f"{digest} (inline bytes do not match)")
    report.missing.extend(str(d) for d in missing)
    drift = [d for d, r in records.items() if r.refcount != edges.get(d, 0)]
    report.refcount.extend(f"{d}: recorded {records[d].refcount}, edges {edges.get(d, 0)}" for d in drift)
    dangling = [d for d in edges if d not in records]
    report.dangling.extend(f"{d}: {edges[d]} edge(s) without a record" for d in dangling)

    if repair:
        _repair(store, report, files, hashed, corrupt, missing, drift, dangling, edges, doomed)
    return report


def _hash(store: BlobStore, location: str, algorithm: str) -> tuple[str, int] | None:
    """(hex digest, original size) of a listed entry; None if it went away since the listing: a compaction pass
    dropped a raw file it had just switched (the record, read again, says so) or a collector took it."""
    try:
        return store.blobs.hash(location, algorithm)
    except FileNotFoundError:
        return None


def _there_now(store: BlobStore, digest: Digest) -> bool:
    """Whether a blob whose bytes we did not list (or could not hash) in its recorded form has them now: a
    compaction pass beside this check switched it to another form between the listing and the reading of records
    or the hashing. Its record, read again, names a form whose bytes are there."""
    with store.index.read() as txn:
        raw = txn.get(store.tables.blobs, digest.key)
    record = BlobRecord.unpack(raw) if raw is not None else None
    return record is not None and record.state == STATE_PRESENT and store.blobs.contains(digest, record.form)


def _repair(store: BlobStore, report: FsckReport, files: dict[Digest, str],
            hashed: dict[Digest, tuple[str, int]], corrupt: set[Digest], missing: list[Digest],
            drift: list[Digest], dangling: list[Digest], edges: dict[Digest, int], doomed: set[Digest]) -> None:
    t = store.tables
    now = store.clock()
    # Moved aside first, outside the transaction (it may be replayed); recorded in it second.
    for path in report.stray:
        target = store.blobs.quarantine(path, "stray")
        report.repaired.append(f"moved stray {path} to {target}")
    quarantined: dict[Digest, str] = {}
    with store.index.read() as txn:
        bad_inline = {d: txn.get(t.inline, d.key) for d in corrupt if d not in files}
    for digest in corrupt:
        data = bad_inline.get(digest)
        if digest in files:
            quarantined[digest] = store.blobs.quarantine(files[digest], digest.algorithm)
        elif data is not None:
            quarantined[digest] = store.blobs.quarantine_bytes(data, f"{digest.algorithm}-{digest.hex}")

    def set_record(txn: WriteTransaction, digest: Digest, state: int, size: int) -> None:
        raw = txn.get(t.blobs, digest.key)
        old = BlobRecord.unpack(raw) if raw is not None else None
        count = edges.get(digest, 0)
        zero_since = old.zero_since if old is not None else now
        if count == 0 and (old is None or old.refcount != 0):
            zero_since = now
            txn.put(t.gcqueue, queue_key(now, digest.key), b"")
        # A recount keeps the stored form; any other change records bytes kept raw (or none: MISSING), and raw
        # bytes adopted wait for a compaction pass like any pushed ones.
        kept = old is not None and old.state == state
        if state == STATE_PRESENT and not kept:
            txn.put(t.compaction, digest.key, b"")
        txn.put(t.blobs, digest.key, BlobRecord(state, size, count, zero_since, old.lease_until if old else 0.0,
                                                old.form if kept and old else FORM_RAW,
                                                old.stored_size if kept and old else size).pack())

    def work(txn: WriteTransaction) -> list[str]:
        repaired = []  # a replay starts again: report what the committed run did
        for digest in corrupt:
            if digest not in files:
                txn.delete(t.inline, digest.key)
            raw = txn.get(t.blobs, digest.key)
            size = BlobRecord.unpack(raw).size if raw is not None else 0
            if raw is not None or edges.get(digest):
                set_record(txn, digest, STATE_MISSING, size)
            repaired.append(f"quarantined corrupt {digest} to {quarantined.get(digest)}; record marked missing")
        for digest in missing:
            raw = txn.get(t.blobs, digest.key)
            if raw is not None:
                set_record(txn, digest, STATE_MISSING, BlobRecord.unpack(raw).size)
                repaired.append(f"marked {digest} missing (re-pushing the blob heals it)")
        for digest in map(Digest.parse, report.unindexed):
            set_record(txn, digest, STATE_PRESENT, hashed[digest][1])
            repaired.append(f"adopted unindexed {digest} (unreferenced: GC decides after grace)")
        for digest in drift:
            raw = txn.get(t.blobs, digest.key)
            if raw is not None:
                old = BlobRecord.unpack(raw)
                set_record(txn, digest, old.state, old.size)
                repaired.append(f"recounted references of {digest}: {edges.get(digest, 0)}")
        for digest in dangling:
            if txn.get(t.blobs, digest.key) is None:
                set_record(txn, digest, STATE_MISSING, 0)
                repaired.append(f"recorded {digest} as missing for its {edges[digest]} holder(s)")
        return repaired

    report.repaired.extend(store.index.transact(work))
