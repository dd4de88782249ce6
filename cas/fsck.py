"""fsck: re-hash every blob file and cross-check the index against the files.

Damage (what must never happen, reported loudly):
    missing      a record says the blob is stored; its file (or inline bytes) is gone or shorter than recorded
    corrupt      a file (or inline bytes) whose bytes do not hash to its name
    stray        a file under blobs/ whose path is not a blob path
    refcount     a record whose cached reference count disagrees with its `refs` edges
    dangling     `refs` edges naming a digest with no record
Debris (what a crash leaves and GC reclaims; reported, not damage):
    unindexed    a correct blob file without a record
    doomed       records already deleted by GC whose files are still to be unlinked
    temp         files under tmp/ and trash/

Repair (only when asked) never drops referenced data silently: a corrupt file is moved to quarantine/ and its
record marked MISSING (never served; holders kept; the next ingest of the right bytes heals it); a missing file is
marked MISSING the same way; an unindexed correct file is adopted (indexed, unreferenced, so GC decides after its
grace); refcounts are recomputed from the edges; dangling edges get a MISSING record so re-pushing the blob heals
them. A stray file is moved to quarantine/.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .digest import Digest, new_hasher
from .index import WriteTransaction
from .layout import STATE_INLINE, STATE_MISSING, STATE_PRESENT, BlobRecord, queue_key

if TYPE_CHECKING:
    from .store import BlobStore

_CHUNK = 1 << 20


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
        out.extend(f"repaired: {item}" for item in self.repaired)
        out.append("damage found" if self.damaged else "no damage")
        return out


def _hash_path(path: str, algorithm: str) -> tuple[str, int]:
    hasher = new_hasher(algorithm)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


def check(store: BlobStore, repair: bool = False, workers: int = 2) -> FsckReport:
    from .gc import iter_blob_files

    report = FsckReport()
    t = store.tables
    files: dict[Digest, str] = {}
    for digest, path in iter_blob_files(store.root):
        if digest is None:
            report.stray.append(path)
        else:
            files[digest] = path

    # Hash in threads: hashlib releases the GIL, so two cores re-hash at once.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashed = dict(zip(files, pool.map(lambda d: _hash_path(files[d], d.algorithm), files), strict=True))
    report.checked += len(hashed)
    report.bytes_hashed += sum(size for _, size in hashed.values())

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
    report.temp = sum(1 for sub in ("tmp", "trash") for _ in (store.root / sub).iterdir())

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
    missing = [d for d, r in records.items() if r.state == STATE_PRESENT and d not in files]
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


def _repair(store: BlobStore, report: FsckReport, files: dict[Digest, str],
            hashed: dict[Digest, tuple[str, int]], corrupt: set[Digest], missing: list[Digest],
            drift: list[Digest], dangling: list[Digest], edges: dict[Digest, int], doomed: set[Digest]) -> None:
    t = store.tables
    quarantine = store.root / "quarantine"
    now = store.clock()

    def set_record(txn: WriteTransaction, digest: Digest, state: int, size: int) -> None:
        raw = txn.get(t.blobs, digest.key)
        old = BlobRecord.unpack(raw) if raw is not None else None
        count = edges.get(digest, 0)
        zero_since = old.zero_since if old is not None else now
        if count == 0 and (old is None or old.refcount != 0):
            zero_since = now
            txn.put(t.gcqueue, queue_key(now, digest.key), b"")
        txn.put(t.blobs, digest.key, BlobRecord(state, size, count, zero_since,
                                                old.lease_until if old else 0.0).pack())

    def work(txn: WriteTransaction) -> None:
        for path in report.stray:
            target = quarantine / f"stray-{int(time.time())}-{os.path.basename(path)}"
            shutil.move(path, target)
            report.repaired.append(f"moved stray {path} to {target}")
        for digest in corrupt:
            target = quarantine / f"{digest.algorithm}-{digest.hex}-{int(time.time())}"
            bad_inline = txn.get(t.inline, digest.key) if digest not in files else None
            if bad_inline is not None:
                target.write_bytes(bad_inline)
                txn.delete(t.inline, digest.key)
            else:
                os.replace(files[digest], target)
            raw = txn.get(t.blobs, digest.key)
            size = BlobRecord.unpack(raw).size if raw is not None else 0
            if raw is not None or edges.get(digest):
                set_record(txn, digest, STATE_MISSING, size)
            report.repaired.append(f"quarantined corrupt {digest} to {target}; record marked missing")
        for digest in missing:
            raw = txn.get(t.blobs, digest.key)
            if raw is not None:
                set_record(txn, digest, STATE_MISSING, BlobRecord.unpack(raw).size)
                report.repaired.append(f"marked {digest} missing (re-pushing the blob heals it)")
        for digest in map(Digest.parse, report.unindexed):
            set_record(txn, digest, STATE_PRESENT, hashed[digest][1])
            report.repaired.append(f"adopted unindexed {digest} (unreferenced: GC decides after grace)")
        for digest in drift:
            raw = txn.get(t.blobs, digest.key)
            if raw is not None:
                old = BlobRecord.unpack(raw)
                set_record(txn, digest, old.state, old.size)
                report.repaired.append(f"recounted references of {digest}: {edges.get(digest, 0)}")
        for digest in dangling:
            if txn.get(t.blobs, digest.key) is None:
                set_record(txn, digest, STATE_MISSING, 0)
                report.repaired.append(f"recorded {digest} as missing for its {edges[digest]} holder(s)")

    store.index.transact(work)
