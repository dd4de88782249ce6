"""Resumable upload sessions: a record in the index plus a partial file under uploads/.

Rules that keep a session consistent across crashes, restarts and several processes:
- Only the holder of the partial file's flock() writes to it; a second writer gets UploadBusy, never interleaves.
- A chunk is accepted only at the recorded offset (OffsetMismatch otherwise). Its bytes are written first and the
  new offset committed after, so the file is never shorter than the record; bytes past the recorded offset (a
  crash, a client that hung up mid-chunk) are cut off before the next chunk is written.
- The running hash lives in this process's memory, keyed by session and offset. A request that lands on another
  process, or after a restart, re-hashes the partial file once; finishing with the same algorithm never re-reads.
- Chunks are not fsynced one by one: a kill -9 keeps the page cache; a power loss may lose the tail, which the next
  request detects (file shorter than the record) and answers by resetting the session to what survived.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import crashpoints
from .digest import DEFAULT_ALGORITHM, Digest, Hasher, new_hasher
from .errors import DigestMismatch, OffsetMismatch, SizeMismatch, UploadBusy, UploadUnknown
from .files import LockedFile, remove_debris
from .index import WriteTransaction
from .layout import UploadRecord
from .writer import HashingWriter

if TYPE_CHECKING:
    from .store import BlobInfo, BlobStore

_REHASH_CHUNK = 1 << 20
_MAX_CACHED_HASHERS = 4096


@dataclass(frozen=True, slots=True)
class UploadStatus:
    id: str
    offset: int
    created: float
    updated: float
    meta: dict[str, str]


class Uploads:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._table = store.tables.uploads
        self._dir = store.root / "uploads"
        self._hashers: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def create(self, algorithm: str = DEFAULT_ALGORITHM, meta: dict[str, str] | None = None) -> UploadStatus:
        """Open a session. `algorithm` is the running hash's (a finish with another digest re-hashes once);
        `meta` is kept with the session for the layer above (owner, repository)."""
        new_hasher(algorithm)  # validate now, not at the first chunk
        session_id = uuid.uuid4().hex
        now = self._store.clock()
        record = UploadRecord(algorithm, 0, now, now, dict(meta or {}))
        # The file is created and locked first, the record committed second: a crash in between leaves an unlocked
        # file with no record, which expire() removes; a file locked by its creator is never taken for debris.
        # expire() reads the record only after it holds the lock, so a file whose record is being committed is
        # either locked (skipped) or already has its record.
        partial = LockedFile.create(self._dir, session_id)
        try:
            with self._store.index.write() as txn:
                txn.put(self._table, session_id.encode(), record.pack())
        except BaseException:
            partial.remove()
            raise
        partial.close()
        return _status(session_id, record)

    def status(self, session_id: str) -> UploadStatus:
        return _status(session_id, self._record(session_id))

    def append(self, session_id: str, chunks: Iterable[bytes], offset: int | None = None,
               length: int | None = None) -> UploadStatus:
        """Append bytes at `offset` (the session's current offset; None means "wherever it is").
        With `length`, the chunk must be exactly that long (a Content-Range promise); else SizeMismatch and the
        session stays where it was."""
        with self._locked(session_id) as (partial, record):
            record = self._write(session_id, partial, record, chunks, offset, length)
            return _status(session_id, record)

    def cancel(self, session_id: str) -> None:
        with self._locked(session_id) as (partial, _record):
            with self._store.index.write() as txn:
                txn.delete(self._table, session_id.encode())
            partial.remove()
            self._forget(session_id)

    def finish(self, session_id: str, expected: Digest | str, chunks: Iterable[bytes] = (),
               offset: int | None = None, length: int | None = None) -> BlobInfo:
        """Append the last bytes (if any), verify the whole against `expected` and publish the blob.

        On DigestMismatch the session is discarded with its bytes: they are not what the client said they are.
        """
        expected = expected if isinstance(expected, Digest) else Digest.parse(expected)
        new_hasher(expected.algorithm)
        with self._locked(session_id) as (partial, record):
            record = self._write(session_id, partial, record, chunks, offset, length)
            cached = self._take_hasher(session_id, record.offset)
            if expected.algorithm == record.algorithm and cached is not None:
                actual = Digest(expected.algorithm, cached.hexdigest())
            else:
                actual = Digest(expected.algorithm, _hash_file(partial.fd, record.offset, expected.algorithm)
                                .hexdigest())
            if actual != expected:
                self._discard(session_id, partial)
                raise DigestMismatch(str(expected), str(actual))
            os.ftruncate(partial.fd, record.offset)
            os.fsync(partial.fd)
            crashpoints.reached("upload.before_publish")

            def end_session(txn: WriteTransaction) -> None:
                txn.delete(self._table, session_id.encode())

            info = self._store.publish(expected, record.offset, partial, also=end_session)
            partial.remove()  # a dedup hit left the partial file in place; otherwise it was renamed away
            return info

    def expire(self) -> int:
        """Remove sessions idle for longer than config.upload_ttl, and partial files with no session.
        Sessions being written right now are skipped. Returns how many were removed."""
        now = self._store.clock()
        ttl = self._store.config.upload_ttl
        with self._store.index.read() as txn:
            idle = [key.decode() for key, raw in txn.scan(self._table)
                    if UploadRecord.unpack(raw).updated + ttl <= now]
        removed = 0
        for session_id in idle:
            try:
                with self._locked(session_id) as (partial, record):
                    if record.updated + ttl > self._store.clock():
                        continue  # written to since we looked
                    self._discard(session_id, partial)
                    removed += 1
            except (UploadBusy, UploadUnknown):
                continue
        for path in self._dir.iterdir():
            with self._store.index.read() as txn:
                known = txn.get(self._table, path.name.encode()) is not None
            if not known and remove_debris(path):
                removed += 1
        return removed

    # -- internals ------------------------------------------------------------------------------------------------
    def _record(self, session_id: str) -> UploadRecord:
        with self._store.index.read() as txn:
            raw = txn.get(self._table, session_id.encode()) if _plausible_id(session_id) else None
        if raw is None:
            raise UploadUnknown(session_id)
        return UploadRecord.unpack(raw)

    class _Locked:
        def __init__(self, uploads: Uploads, session_id: str) -> None:
            self._uploads = uploads
            self._id = session_id
            self._partial: LockedFile | None = None

        def __enter__(self) -> tuple[LockedFile, UploadRecord]:
            uploads, session_id = self._uploads, self._id
            uploads._record(session_id)  # UploadUnknown before touching the file system
            try:
                partial = LockedFile.try_open(uploads._dir / session_id)
            except BlockingIOError:
                raise UploadBusy(session_id) from None
            if partial is None:
                # A record without its file: a crash between rename-into-place and commit in finish(), or a
                # file removed by hand. The session cannot continue; forget it.
                with uploads._store.index.write() as txn:
                    txn.delete(uploads._table, session_id.encode())
                raise UploadUnknown(session_id)
            self._partial = partial
            try:
                record = uploads._record(session_id)  # re-read under the lock: it may have been finished
                size = os.fstat(partial.fd).st_size
                if size < record.offset:  # the tail was lost (power loss): resume from what is on disk
                    record = uploads._reset(session_id, record, size)
            except BaseException:
                partial.close()
                raise
            return partial, record

        def __exit__(self, *exc: object) -> None:
            if self._partial is not None:
                self._partial.close()

    def _locked(self, session_id: str) -> Uploads._Locked:
        return Uploads._Locked(self, session_id)

    def _write(self, session_id: str, partial: LockedFile, record: UploadRecord, chunks: Iterable[bytes],
               offset: int | None, length: int | None) -> UploadRecord:
        if offset is not None and offset != record.offset:
            raise OffsetMismatch(session_id, record.offset, offset)
        hasher = self._take_hasher(session_id, record.offset)
        if hasher is None:
            hasher = _hash_file(partial.fd, record.offset, record.algorithm)
        os.ftruncate(partial.fd, record.offset)  # cut a tail left by a crash or an interrupted chunk
        os.lseek(partial.fd, record.offset, os.SEEK_SET)
        writer = HashingWriter(partial.fd, hasher, expected_size=length)
        try:
            for chunk in chunks:
                writer.write(chunk)
            writer.finish(fsync=False)
        except BaseException:
            writer.abort()
            raise  # the hasher is dropped with the failed chunk; the record still says the old offset
        if length is not None and writer.size != length:
            raise SizeMismatch(length, writer.size)
        if writer.size == 0:
            self._keep_hasher(session_id, record.offset, hasher)
            return record
        crashpoints.reached("upload.before_offset_commit")
        updated = UploadRecord(record.algorithm, record.offset + writer.size, record.created,
                               self._store.clock(), record.meta)
        with self._store.index.write() as txn:
            txn.put(self._table, session_id.encode(), updated.pack())
        self._keep_hasher(session_id, updated.offset, hasher)
        return updated

    def _reset(self, session_id: str, record: UploadRecord, size: int) -> UploadRecord:
        reset = UploadRecord(record.algorithm, size, record.created, record.updated, record.meta)
        with self._store.index.write() as txn:
            txn.put(self._table, session_id.encode(), reset.pack())
        self._forget(session_id)
        return reset

    def _discard(self, session_id: str, partial: LockedFile) -> None:
        with self._store.index.write() as txn:
            txn.delete(self._table, session_id.encode())
        partial.remove()
        self._forget(session_id)

    def _take_hasher(self, session_id: str, offset: int) -> Hasher | None:
        with self._lock:
            cached = self._hashers.pop(session_id, None)
        if cached is None or cached[0] != offset:
            return None
        return cached[1]

    def _keep_hasher(self, session_id: str, offset: int, hasher: Hasher) -> None:
        with self._lock:
            self._hashers[session_id] = (offset, hasher)
            while len(self._hashers) > _MAX_CACHED_HASHERS:
                self._hashers.popitem(last=False)

    def _forget(self, session_id: str) -> None:
        with self._lock:
            self._hashers.pop(session_id, None)


def _hash_file(fd: int, length: int, algorithm: str) -> Hasher:
    hasher = new_hasher(algorithm)
    position = 0
    while position < length:
        data = os.pread(fd, min(_REHASH_CHUNK, length - position), position)
        if not data:
            break
        hasher.update(data)
        position += len(data)
    return hasher


def _plausible_id(session_id: str) -> bool:
    return len(session_id) == 32 and all(c in "0123456789abcdef" for c in session_id)


def _status(session_id: str, record: UploadRecord) -> UploadStatus:
    return UploadStatus(session_id, record.offset, record.created, record.updated, dict(record.meta))
