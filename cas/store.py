"""BlobStore: the content-addressed store, over a metadata index (cas/index.py) and a keeper of bytes
(cas/blobs.py). `BlobStore.on_disk(path)` is the embedded default (LMDB + files in one data directory);
`BlobStore.in_memory()` keeps both halves in this process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from . import crashpoints
from .blobs import BlobBytes, Staged
from .digest import DEFAULT_ALGORITHM, Digest, Hasher, new_hasher
from .errors import BlobUnknown, DigestMismatch, IncompatibleStore, SizeMismatch, StagingGone, StoreUnavailable
from .index import Index, Table, Transaction, WriteTransaction
from .layout import (
    FORM_RAW,
    FORMAT_VERSION,
    STATE_DELETING,
    STATE_INLINE,
    STATE_MISSING,
    STATE_PRESENT,
    STORED_STATES,
    TABLE_SHAPES,
    TABLES,
    BlobRecord,
    UploadRecord,
    queue_key,
    superseded_key,
)
from .lmdb_index import DEFAULT_MAP_SIZE
from .reader import BlobReader

READ_CHUNK = 1 << 20  # 1 MiB: 64 KiB reads measured at a quarter of the speed of 1 MiB ones

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class StoreConfig:
    # How long a blob nobody references is kept before GC may take it. Layers are uploaded before the manifest
    # that names them; a slow multi-layer push must not lose its first layers. (Distribution has no online GC.)
    grace: float = 24 * 3600.0
    # How long a stat() or dedup hit protects a zero-reference blob: the window between a client's HEAD and the
    # manifest PUT that references the blob.
    lease: float = 3600.0
    # Idle upload sessions are removed after this long (Distribution's uploadpurging default age is 168 h;
    # a day without a single chunk is abandoned for any real client).
    upload_ttl: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    inline: bool = False  # stored inside the index (no local file: local_path() is None; open() works)
    # How the bytes are kept (cas/layout.py; FRAMES_V1 has no local file to sendfile either) and how many bytes that
    # takes (an object store reads a stored form's trailer by it): not part of what a blob is, so not compared.
    form: int = field(default=FORM_RAW, compare=False)
    stored_size: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Tables:
    meta: Table
    blobs: Table
    inline: Table
    refs: Table
    held: Table
    gcqueue: Table
    doomed: Table
    uploads: Table
    compaction: Table
    superseded: Table


class BlobStore:
    """A store over `index` and `blobs`. Safe to share between threads; several processes may open the same data
    directory (`BlobStore.on_disk`)."""

    def __init__(self, index: Index, blobs: BlobBytes, config: StoreConfig | None = None,
                 clock: Clock = time.time) -> None:
        from .compaction import Compactor
        from .gc import Collector
        from .refs import References
        from .uploads import Uploads

        self.index = index
        self.blobs = blobs
        self.config = config or StoreConfig()
        self.clock = clock
        index.declare(TABLE_SHAPES)
        self.tables = Tables(*(index.table(name) for name in TABLES))
        self.index.transact(self._ensure_format)
        self.refs = References(self)
        self.uploads = Uploads(self)
        self.gc = Collector(self)
        self.compaction = Compactor(self)

    @classmethod
    def on_disk(cls, path: str | os.PathLike[str], *, config: StoreConfig | None = None, clock: Clock = time.time,
             map_size: int = DEFAULT_MAP_SIZE) -> BlobStore:
        """The embedded default over a data directory (created if new): LMDB index + blob files."""
        from .lmdb_index import LmdbIndex
        from .local_blobs import LocalBlobs

        index = LmdbIndex(Path(path) / "index", map_size=map_size, locks=Path(path))  # DATA/gc.lock
        return cls._over(index, LocalBlobs(path), config, clock)

    @classmethod
    def distributed(cls, metadata_url: str, blobs_url: str, *, config: StoreConfig | None = None,
                    clock: Clock = time.time, create: bool = True) -> BlobStore:
        """The distributed store: the index in PostgreSQL (`postgresql://…[?schema=name]`, cas/postgres_index.py),
        the bytes in an S3 bucket (`s3://bucket[/prefix][?endpoint=…&region=…]`, cas/s3_blobs.py); credentials
        from the environment the usual libpq and S3 ways. Any number of processes may open the same pair."""
        from .postgres_index import PostgresIndex
        from .s3_blobs import S3Blobs

        blobs = S3Blobs.from_url(blobs_url)
        index = PostgresIndex.from_url(metadata_url, create=create)  # create False: StoreMissing if there is none
        return cls._over(index, blobs, config, clock)

    @classmethod
    def _over(cls, index: Index, blobs: BlobBytes, config: StoreConfig | None, clock: Clock) -> BlobStore:
        """The store over an index just opened for it, which is closed again if the store refuses to open (an
        incompatible format): nothing is left holding a connection or the LMDB environment."""
        try:
            return cls(index, blobs, config, clock)
        except BaseException:
            index.close()
            raise

    @classmethod
    def in_memory(cls, *, config: StoreConfig | None = None, clock: Clock = time.time) -> BlobStore:
        """A complete store in this process's memory (index and bytes): gone when the process ends."""
        from .memory_blobs import MemoryBlobs
        from .memory_index import MemoryIndex

        return cls(MemoryIndex(), MemoryBlobs(), config, clock)

    @property
    def chunk_min_length(self) -> int:
        """The smallest upload chunk the store keeps without rewriting (OCI-Chunk-Min-Length): S3's 5 MiB part
        minimum on an object store; smaller chunks are accepted all the same."""
        return self.blobs.chunk_min

    @property
    def root(self) -> Path | None:
        """The data directory of a store over local files (None otherwise). Not for serving blobs: see
        local_path()."""
        root: Path | None = getattr(self.blobs, "root", None)
        return root

    def _ensure_format(self, txn: WriteTransaction) -> None:
        meta = self.tables.meta
        stored = txn.get(meta, b"format")
        if stored == str(FORMAT_VERSION).encode():
            return
        if stored == b"1":
            self._migrate_from_1(txn)
        if stored in (b"1", b"2"):
            self._migrate_from_2(txn)
        elif stored is not None:
            raise IncompatibleStore(
                f"the store has format version {stored.decode(errors='replace')}, this Berth reads version "
                f"{FORMAT_VERSION} (and migrates versions 1 and 2); see cas/layout.py")
        txn.put(meta, b"format", str(FORMAT_VERSION).encode())

    def _migrate_from_1(self, txn: WriteTransaction) -> None:
        """Format 1 kept an upload's progress in its partial file's size and mtime: copy them into the records
        (a read of the files, no change to them: this may run twice). `doomed` needs nothing (cas/layout.py)."""
        progress = getattr(self.blobs, "upload_progress", None)
        for key, raw in list(txn.scan(self.tables.uploads)):
            record = UploadRecord.unpack(raw)
            found = progress(key.decode()) if progress is not None else None
            size, mtime = found if found is not None else (0, record.created)
            txn.put(self.tables.uploads, key, replace(record, offset=size, updated=mtime).pack())

    def _migrate_from_2(self, txn: WriteTransaction) -> None:
        """Format 3 records carry their stored form: every record is rewritten as RAW (a format-2 record unpacks
        as one, so this may run twice), and every PRESENT blob waits for its first compaction pass."""
        for key, raw in list(txn.scan(self.tables.blobs)):
            record = BlobRecord.unpack(raw)
            txn.put(self.tables.blobs, key, record.pack())
            if record.state == STATE_PRESENT:
                txn.put(self.tables.compaction, key, b"")

    def close(self) -> None:
        self.index.close()
        self.blobs.close()

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------------------------------
    def stat(self, digest: Digest | str) -> BlobInfo:
        """Size of a stored blob; raises BlobUnknown. Renews the GC lease of a blob nobody references yet."""
        digest = _as_digest(digest)
        with self.index.read() as txn:
            record = self._record(txn, digest)
        if record.refcount == 0 and record.lease_until < self.clock() + self.config.lease / 2:
            self._renew_lease(digest)
        return BlobInfo(digest, record.size, record.state == STATE_INLINE, record.form, record.stored_size)

    def contains(self, digest: Digest | str) -> bool:
        """Whether the blob is stored, without renewing anything (for listings and checks, not for clients)."""
        digest = _as_digest(digest)
        with self.index.read() as txn:
            raw = txn.get(self.tables.blobs, digest.key)
        return raw is not None and BlobRecord.unpack(raw).state in STORED_STATES

    def local_path(self, blob: BlobInfo | Digest) -> Path | None:
        """Optional capability, for sendfile: the local file holding a blob's original bytes; None if there is
        none (inline, kept compressed, or not in local files: then stream `open()`). Given the BlobInfo of a
        stat(), the index is not read again; given a digest, this is a stat() (BlobUnknown, lease renewed). The
        file is immutable; GC may remove it once nothing references it, and a compaction pass once it has switched
        the blob to a compressed form (an open descriptor stays valid either way), so a caller that fails to open
        it falls back to `open()`."""
        if isinstance(blob, Digest):
            blob = self.stat(blob)
        if blob.inline or blob.form != FORM_RAW:
            return None
        return self.blobs.local_path(blob.digest)

    def redirect_url(self, info: BlobInfo, expires: float) -> str | None:
        """Optional capability, for a 307: a URL the client may fetch the blob's original bytes from directly for
        `expires` seconds (a presigned S3 URL); None when there is none (inline, kept compressed, a keeper without
        URLs: then stream `open()`). `info` is a stat()'s answer: the index is not read again."""
        if info.inline or info.form != FORM_RAW:
            return None
        return self.blobs.redirect_url(info.digest, expires)

    def open(self, blob: Digest | str | BlobInfo, offset: int = 0, length: int | None = None) -> BlobReader:
        """A reader over [offset, offset+length) of a blob's original bytes (to its end if length is None),
        whatever form they are kept in. Given the BlobInfo of a stat() just made, it is not stat'ed again."""
        info = blob if isinstance(blob, BlobInfo) else self.stat(blob)
        if info.inline:
            with self.index.read() as txn:
                data = txn.get(self.tables.inline, info.digest.key)
            if data is None:
                raise BlobUnknown(str(info.digest))  # collected since the stat
            return BlobReader(data, info.size, offset, length)
        try:
            return self.blobs.open(info.digest, info.size, offset, length, form=info.form,
                                   stored_size=info.stored_size)
        except BlobUnknown:
            # A compaction pass switched the blob's form between our stat and our open (and removed the raw
            # file): the record now names the other form. Anything else (collected) raises again.
            again = self.stat(info.digest)
            if again.form == info.form or again.inline:
                raise
            return self.blobs.open(again.digest, again.size, offset, length, form=again.form,
                                   stored_size=again.stored_size)

    def info(self, txn: Transaction, digest: Digest) -> BlobInfo:
        """What stat() says, inside the caller's transaction and without renewing a lease (for checks that are
        part of a larger write, such as a manifest PUT verifying the sizes of what it names)."""
        record = self._record(txn, digest)
        return BlobInfo(digest, record.size, record.state == STATE_INLINE, record.form, record.stored_size)

    def inline_bytes(self, txn: Transaction, digest: Digest) -> bytes | None:
        """The bytes of an inline blob read in the caller's transaction; None if the blob is not stored inline."""
        return txn.get(self.tables.inline, digest.key)

    def read_bytes(self, digest: Digest | str) -> bytes:
        with self.open(digest) as reader:
            return reader.read()

    def _record(self, txn: Transaction, digest: Digest) -> BlobRecord:
        raw = txn.get(self.tables.blobs, digest.key)
        if raw is None:
            raise BlobUnknown(str(digest))
        record = BlobRecord.unpack(raw)
        if record.state not in STORED_STATES:
            raise BlobUnknown(str(digest))
        return record

    def _renew_lease(self, digest: Digest) -> None:
        until = self.clock() + self.config.lease

        def renew(txn: WriteTransaction) -> None:  # replayable: an index with conflicts (PostgreSQL) may rerun it
            raw = txn.get(self.tables.blobs, digest.key)
            if raw is None:
                raise BlobUnknown(str(digest))  # GC took it between our read and this write
            record = BlobRecord.unpack(raw)
            if record.refcount == 0:
                txn.put(self.tables.blobs, digest.key, _replace_lease(record, until))
        self.index.transact(renew)

    # -- writing --------------------------------------------------------------------------------------------------
    def ingest(self, source: Iterable[bytes] | BinaryIO | bytes, expected: Digest | str | None = None, *,
               algorithm: str = DEFAULT_ALGORITHM, size: int | None = None,
               also: Callable[[WriteTransaction], None] | None = None) -> BlobInfo:
        """Store bytes from an iterable of chunks, a binary file object or a bytes value.

        With `expected`, the bytes must hash to it (the algorithm is the expected digest's); with `size`, they must
        be that long. On a mismatch, DigestMismatch/SizeMismatch is raised and nothing is left behind. Content
        already stored is not written again: a dedup hit only hashes the incoming bytes to verify them. Named in
        advance, the bytes go straight to the blob's place where the keeper can (an object store: BlobBytes.direct),
        else through staging.
        """
        expected = _as_digest(expected) if expected is not None else None
        if expected is not None:
            algorithm = expected.algorithm
        hasher = new_hasher(algorithm)
        if expected is not None and self._lease_if_present(expected):
            return self._ingest_known(source, expected, hasher, size, also)
        direct = expected is not None and self.blobs.writes_direct
        staged = self.blobs.direct(expected) if direct and expected is not None else self.blobs.stage()
        try:
            writer = staged.writer(hasher, 0, expected_size=size)
            try:
                for chunk in _chunks(source):
                    writer.write(chunk)
                hexdigest = writer.finish(fsync=False)
            except BaseException:
                writer.abort()
                raise
            actual = Digest(algorithm, hexdigest)
            _verify(expected, actual, size, writer.size)
            if self._lease_if_present(actual):  # dedup hit on content we could not name in advance
                if also is not None:
                    self.index.transact(also)
                return BlobInfo(actual, writer.size)
            staged.sync()
            crashpoints.reached("ingest.before_publish")
            return self.publish(actual, writer.size, staged, also=also)
        finally:
            staged.discard()

    def _ingest_known(self, source: Iterable[bytes] | BinaryIO | bytes, expected: Digest, hasher: Hasher,
                      size: int | None, also: Callable[[WriteTransaction], None] | None = None) -> BlobInfo:
        """Dedup with the digest named in advance: verify the bytes, write nothing.

        The lease taken before reading keeps GC away for at least lease/2; the stat after reading proves the blob
        is still there (if an ingest outlasted the lease and GC won, it raises BlobUnknown: nothing is claimed).
        """
        total = 0
        for chunk in _chunks(source):
            hasher.update(chunk)
            total += len(chunk)
        _verify(expected, Digest(expected.algorithm, hasher.hexdigest()), size, total)
        if also is None:
            self.stat(expected)
            return BlobInfo(expected, total)
        lease = self.config.lease

        def confirm(txn: WriteTransaction) -> None:  # stat()'s check and lease, and `also`, in one commit
            record = self._record(txn, expected)
            if record.refcount == 0 and record.lease_until < self.clock() + lease / 2:
                txn.put(self.tables.blobs, expected.key, _replace_lease(record, self.clock() + lease))
            also(txn)

        self.index.transact(confirm)
        return BlobInfo(expected, total)

    def _lease_if_present(self, digest: Digest) -> bool:
        """True if the blob is stored (and, if nobody references it, leased so that GC leaves it alone)."""
        try:
            self.stat(digest)
        except BlobUnknown:
            return False
        return True

    def publish(self, digest: Digest, size: int, staged: Staged,
                also: Callable[[WriteTransaction], None] | None = None) -> BlobInfo:
        """Make verified, synced staged bytes the blob `digest` (internal to cas; uploads use it too). `also` runs
        in the same transaction (the upload session's record is deleted there; the layer above links the blob).

        The bytes move first, outside any transaction (a write function may be replayed); the record commits
        second. A collector racing the same digest is overruled by the state of the record, and `ensure` puts the
        bytes back if it had already taken them: the protocol and its argument are in cas/gc.py.
        """
        self.blobs.publish(staged, digest)
        crashpoints.reached("publish.after_rename")
        now = self.clock()
        tables = self.tables

        def commit(txn: WriteTransaction) -> bool:
            """True if this publish made the record say "stored" (then its bytes must be there)."""
            raw = txn.get(tables.blobs, digest.key)
            record = BlobRecord.unpack(raw) if raw is not None else None
            if also is not None:
                also(txn)
            if record is not None and record.state in STORED_STATES:
                if record.refcount == 0:  # dedup hit: a client will reference this soon
                    txn.put(tables.blobs, digest.key, _replace_lease(record, now + self.config.lease))
                if record.form != FORM_RAW:  # the raw file just linked beside the compressed form is debris
                    txn.put(tables.superseded, superseded_key(digest.key, FORM_RAW), b"")
                return False  # (an INLINE record: the file just published is debris for GC's orphan sweep)
            txn.put(tables.blobs, digest.key, _claimed(txn, tables, digest.key, record, STATE_PRESENT, size, now))
            return True

        claimed = self.index.transact(commit)
        crashpoints.reached("publish.after_commit")
        if claimed:
            try:
                self.blobs.ensure(staged, digest)
            except StagingGone:
                self._lost(digest)
                raise StoreUnavailable(f"blob {digest} was collected while it was being stored (an old copy of the "
                                       f"same bytes, in the same moment): nothing was kept; send it again") from None
        return BlobInfo(digest, size)

    def _lost(self, digest: Digest) -> None:
        """A direct write's claim taken back (cas/gc.py, "Direct writes"): its bytes went with a collector's purge
        between its move and its commit, so the record it made PRESENT says MISSING, as fsck would; the next
        ingest of the bytes heals it, and the caller was not told the blob is stored."""
        def work(txn: WriteTransaction) -> None:
            raw = txn.get(self.tables.blobs, digest.key)
            record = BlobRecord.unpack(raw) if raw is not None else None
            if record is not None and record.state == STATE_PRESENT and record.form == FORM_RAW:
                txn.put(self.tables.blobs, digest.key, replace(record, state=STATE_MISSING).pack())
        self.index.transact(work)

    def ingest_inline(self, txn: WriteTransaction, data: bytes, algorithm: str = DEFAULT_ALGORITHM, *,
                      digest: Digest | None = None) -> BlobInfo:
        """Store a small blob (a manifest, an index) inside the index, in the caller's write transaction.

        No file, no fsync beyond the caller's commit: the bytes become visible, and durable, with the caller's other
        writes (a manifest PUT is one commit). Served, referenced, leased and collected like any blob. Content
        already stored (either way) is not stored again; a MISSING record is healed with its holders intact.
        `digest`: the bytes' digest when the caller has computed it already (they are then not hashed again).
        """
        digest = digest if digest is not None else Digest.of(data, algorithm)
        raw = txn.get(self.tables.blobs, digest.key)
        record = BlobRecord.unpack(raw) if raw is not None else None
        if record is not None and record.state in STORED_STATES:
            return BlobInfo(digest, record.size, record.state == STATE_INLINE)
        txn.put(self.tables.inline, digest.key, data)
        txn.put(self.tables.blobs, digest.key, _claimed(txn, self.tables, digest.key, record, STATE_INLINE, len(data),
                                                        self.clock()))
        return BlobInfo(digest, len(data), True)


def _verify(expected: Digest | None, actual: Digest, size: int | None, actual_size: int) -> None:
    if size is not None and size != actual_size:
        raise SizeMismatch(size, actual_size)
    if expected is not None and expected != actual:
        raise DigestMismatch(str(expected), str(actual))


def _claimed(txn: WriteTransaction, tables: Tables, key: bytes, record: BlobRecord | None, state: int, size: int,
             now: float) -> bytes:
    """The record of a blob just stored: new (queued for GC from now), a MISSING one healed with its holders
    intact, or a DELETING one taken back from a collector (queued again from now: the collector dropped its queue
    entry when it claimed it)."""
    if state == STATE_PRESENT:  # raw bytes just stored: a compaction pass assesses them
        txn.put(tables.compaction, key, b"")
    if record is None or record.state == STATE_DELETING:
        txn.put(tables.gcqueue, queue_key(now, key), b"")
        return BlobRecord(state, size, 0, now, 0.0, FORM_RAW, size).pack()
    return BlobRecord(state, size, record.refcount, record.zero_since, record.lease_until, FORM_RAW, size).pack()


def _replace_lease(record: BlobRecord, lease_until: float) -> bytes:
    return replace(record, lease_until=max(lease_until, record.lease_until)).pack()


def _as_digest(value: Digest | str) -> Digest:
    return value if isinstance(value, Digest) else Digest.parse(value)


def _chunks(source: Iterable[bytes] | BinaryIO | bytes) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(READ_CHUNK):
            yield chunk
        return
    yield from source
