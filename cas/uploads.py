"""Resumable upload sessions: a record in the index plus a partial file under uploads/.

The partial file is the session's progress; the record holds only what is fixed at creation (running-hash
algorithm, creation time, the caller's metadata). Rules that keep a session consistent across crashes, restarts and
several processes:
- Only the holder of the partial file's flock() writes to it; a second writer gets UploadBusy, never interleaves.
- The session's offset is the partial file's size, read under that lock. A chunk is accepted only at that offset
  (OffsetMismatch otherwise). A chunk that fails in this process (the client hung up, a declared length was not
  met) is cut off again, so the offset does not move; a process killed mid-chunk leaves an in-order prefix of what
  the client sent, which is where the client resumes (the OCI status request reports it, as Distribution does).
- Idle time is the partial file's mtime, set from the store's clock after every accepted chunk.
- No index commit per chunk: a durable LMDB commit fsyncs through the filesystem journal and, on ext4's ordered
  mode, waits on the upload's own dirty pages. Measured: 571 MiB/s with a commit per 8 MiB chunk, 706 without.
- The running hash lives in this process's memory, keyed by session and offset. A request that lands on another
  process, or after a restart, re-hashes the partial file once; finishing with the same algorithm never re-reads.
- Chunks are not fsynced one by one: a kill -9 keeps the page cache; after a power loss the file holds what
  survived, and the client is told that offset.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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


Check = Callable[[UploadStatus], None]  # the layer above's rule on a session, asked under its lock


@dataclass(frozen=True, slots=True)
class _Session:
    """A session as seen by the holder of its lock."""

    id: str
    record: UploadRecord
    partial: LockedFile
    offset: int
    updated: float


class Uploads:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._table = store.tables.uploads
        self._dir = store.root / "uploads"
        self._hashers: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def create(self, algorithm: str = DEFAULT_ALGORITHM, meta: dict[str, str] | None = None,
               also: Callable[[WriteTransaction, str], None] | None = None) -> UploadStatus:
        """Open a session. `algorithm` is the running hash's (a finish with another digest re-hashes once);
        `meta` is kept with the session for the layer above (owner, repository); `also(txn, session id)` runs in
        the transaction that records the session (the layer above indexes it there: one commit)."""
        new_hasher(algorithm)  # validate now, not at the first chunk
        session_id = uuid.uuid4().hex
        now = self._store.clock()
        record = UploadRecord(algorithm, now, dict(meta or {}))
        # The file is created and locked first, the record committed second: a crash in between leaves an unlocked
        # file with no record, which expire() removes. expire() reads the record only once it holds the lock, so a
        # file whose record is being committed is either locked (skipped) or already has its record.
        partial = LockedFile.create(self._dir, session_id)
        try:
            os.utime(partial.fd, (now, now))
            with self._store.index.write() as txn:
                txn.put(self._table, session_id.encode(), record.pack())
                if also is not None:
                    also(txn, session_id)
        except BaseException:
            partial.remove()
            raise
        partial.close()
        return UploadStatus(session_id, 0, now, now, dict(record.meta))

    def exists(self, session_id: str) -> bool:
        """Whether the session is open (its record exists): one index read, no file system access."""
        with self._store.index.read() as txn:
            return _plausible_id(session_id) and txn.get(self._table, session_id.encode()) is not None

    def status(self, session_id: str, check: Check | None = None) -> UploadStatus:
        """Where the session is. While a chunk is being written this is the bytes received so far. `check` (here
        and below) is the layer above's rule on the session (its owner): it sees the status and may raise."""
        record = self._record(session_id)
        try:
            st = os.stat(self._dir / session_id)
        except FileNotFoundError:
            raise UploadUnknown(session_id) from None
        status = UploadStatus(session_id, st.st_size, record.created, st.st_mtime, dict(record.meta))
        if check is not None:
            check(status)
        return status

    def append(self, session_id: str, chunks: Iterable[bytes], offset: int | None = None,
               length: int | None = None, check: Check | None = None) -> UploadStatus:
        """Append bytes at `offset` (the session's current offset; None means "wherever it is").
        With `length`, the chunk must be exactly that long (a Content-Range promise); else SizeMismatch and the
        session stays where it was."""
        with self._locked(session_id, check) as session:
            session = self._write(session, chunks, offset, length)
            return _status(session)

    def cancel(self, session_id: str, check: Check | None = None) -> None:
        with self._locked(session_id, check) as session:
            self._discard(session)

    def finish(self, session_id: str, expected: Digest | str, chunks: Iterable[bytes] = (),
               offset: int | None = None, length: int | None = None,
               also: Callable[[WriteTransaction], None] | None = None, check: Check | None = None) -> BlobInfo:
        """Append the last bytes (if any), verify the whole against `expected` and publish the blob.
        `also` runs in the publishing transaction (the layer above links the blob to a repository there).

        On DigestMismatch the session is discarded with its bytes: they are not what the client said they are.
        """
        expected = expected if isinstance(expected, Digest) else Digest.parse(expected)
        new_hasher(expected.algorithm)
        with self._locked(session_id, check) as session:
            session = self._write(session, chunks, offset, length)
            cached = self._take_hasher(session.id, session.offset)
            if expected.algorithm == session.record.algorithm and cached is not None:
                actual = Digest(expected.algorithm, cached.hexdigest())
            else:
                rehashed = _hash_file(session.partial.fd, session.offset, expected.algorithm)
                actual = Digest(expected.algorithm, rehashed.hexdigest())
            if actual != expected:
                self._discard(session)
                raise DigestMismatch(str(expected), str(actual))
            os.fsync(session.partial.fd)
            crashpoints.reached("upload.before_publish")

            def end_session(txn: WriteTransaction) -> None:
                txn.delete(self._table, session_id.encode())
                if also is not None:
                    also(txn)

            info = self._store.publish(expected, session.offset, session.partial, also=end_session)
            session.partial.remove()  # a dedup hit left the partial file in place; otherwise it was renamed away
            return info

    def expire(self) -> int:
        """Remove sessions idle for at least config.upload_ttl, and partial files with no session.
        Sessions being written right now are skipped. Returns how many were removed."""
        ttl = self._store.config.upload_ttl
        with self._store.index.read() as txn:
            known = [key.decode() for key, _ in txn.scan(self._table)]
        removed = 0
        for session_id in known:
            try:
                if self.status(session_id).updated + ttl > self._store.clock():
                    continue
                with self._locked(session_id) as session:
                    if session.updated + ttl > self._store.clock():
                        continue  # written to since we looked
                    self._discard(session)
                    removed += 1
            except (UploadBusy, UploadUnknown):
                continue
        for path in self._dir.iterdir():
            with self._store.index.read() as txn:
                has_record = txn.get(self._table, path.name.encode()) is not None
            if not has_record and remove_debris(path):
                removed += 1
        return removed

    # -- internals ------------------------------------------------------------------------------------------------
    def _record(self, session_id: str) -> UploadRecord:
        with self._store.index.read() as txn:
            raw = txn.get(self._table, session_id.encode()) if _plausible_id(session_id) else None
        if raw is None:
            raise UploadUnknown(session_id)
        return UploadRecord.unpack(raw)

    @contextmanager
    def _locked(self, session_id: str, check: Check | None = None) -> Iterator[_Session]:
        self._record(session_id)  # UploadUnknown before touching the file system
        try:
            partial = LockedFile.try_open(self._dir / session_id)
        except BlockingIOError:
            raise UploadBusy(session_id) from None
        if partial is None:
            # A record without its file: a crash between rename-into-place and commit in finish(), or a file
            # removed by hand. The session cannot continue; forget it.
            with self._store.index.write() as txn:
                txn.delete(self._table, session_id.encode())
            raise UploadUnknown(session_id)
        try:
            record = self._record(session_id)  # re-read under the lock: it may have been finished meanwhile
            st = os.fstat(partial.fd)
            session = _Session(session_id, record, partial, st.st_size, st.st_mtime)
            if check is not None:
                check(_status(session))
            yield session
        finally:
            partial.close()

    def _write(self, session: _Session, chunks: Iterable[bytes], offset: int | None,
               length: int | None) -> _Session:
        if offset is not None and offset != session.offset:
            raise OffsetMismatch(session.id, session.offset, offset)
        hasher = self._take_hasher(session.id, session.offset)
        if hasher is None:
            hasher = _hash_file(session.partial.fd, session.offset, session.record.algorithm)
        fd = session.partial.fd
        os.lseek(fd, session.offset, os.SEEK_SET)
        writer = HashingWriter(fd, hasher, expected_size=length)
        try:
            for chunk in chunks:
                writer.write(chunk)
            writer.finish(fsync=False)
            if length is not None and writer.size != length:
                raise SizeMismatch(length, writer.size)
        except BaseException:
            writer.abort()
            # All or nothing while we live: cut the failed chunk off and put the idle clock back. The hasher saw
            # part of the chunk and is dropped; the next request re-hashes.
            os.ftruncate(fd, session.offset)
            os.utime(fd, (session.updated, session.updated))
            raise
        if writer.size == 0:
            self._keep_hasher(session.id, session.offset, hasher)
            return session
        crashpoints.reached("upload.after_chunk")
        now = self._store.clock()
        os.utime(fd, (now, now))
        advanced = _Session(session.id, session.record, session.partial, session.offset + writer.size, now)
        self._keep_hasher(session.id, advanced.offset, hasher)
        return advanced

    def _discard(self, session: _Session) -> None:
        with self._store.index.write() as txn:
            txn.delete(self._table, session.id.encode())
        session.partial.remove()
        self._forget(session.id)

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


def _status(session: _Session) -> UploadStatus:
    return UploadStatus(session.id, session.offset, session.record.created, session.updated,
                        dict(session.record.meta))
