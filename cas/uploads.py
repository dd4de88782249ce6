"""Resumable upload sessions: a record in the index plus staged bytes (cas/blobs.py: a partial file under
uploads/ for the local store).

The record holds what is fixed at creation (running-hash algorithm, creation time, the caller's metadata) and the
session's progress: `offset`, the bytes accepted so far, and `updated`, its last activity by the store's clock.
Rules that keep a session consistent across crashes, restarts and several processes:
- Only the holder of the staged bytes (a flock()ed file, a locked buffer) writes to them; a second writer gets
  UploadBusy, never interleaves. Where that lock is only this process's (S3 staging: BlobBytes.local_staging_lock),
  the record carries a writer lease too (cas/writer_leases.py): taken before the staged bytes are touched, renewed
  while a long chunk streams, checked by the commit that accepts the chunk, released last.
- A chunk is accepted only at the record's offset (OffsetMismatch otherwise), and accepted when the record with the
  new offset commits: one index write per chunk (format 1 kept the offset in the file's size and wrote none; it
  measured 571 MiB/s with a durable commit per 8 MiB chunk against 706 without, before writeback was started
  during the upload, cas/writer.py). A chunk that fails in this process (the client hung up, a
  declared length was not met) is cut off again; a process killed mid-chunk leaves bytes past the record's offset,
  which the next writer cuts off: the client resumes where the record says (the OCI status request reports it).
  After a power loss the staged bytes may be shorter than the record says (chunks are not fsynced one by one):
  then they are the truth, and the client is told that offset.
- The running hash lives in this process's memory, keyed by session and offset. A request that lands on another
  process, or after a restart, re-hashes the staged bytes once; finishing with the same algorithm never re-reads.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from . import crashpoints
from .blobs import Staged
from .digest import DEFAULT_ALGORITHM, Digest, Hasher, new_hasher
from .errors import DigestMismatch, OffsetMismatch, SizeMismatch, UploadBusy, UploadUnknown, WriterLeaseLost
from .index import WriteTransaction
from .layout import UploadRecord
from .writer_leases import WRITER_LEASE, WriterLeases, plausible_id

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
    staged: Staged
    lease: str = ""  # this writer's lease token (the record's `writer`), "" where the staging lock suffices

    @property
    def offset(self) -> int:
        return self.record.offset


class Uploads:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._table = store.tables.uploads
        self._blobs = store.blobs
        self._hashers: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()
        self._lock = threading.Lock()
        self._leases = WriterLeases(store) if store.blobs.local_staging_lock else None

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def create(self, algorithm: str = DEFAULT_ALGORITHM, meta: dict[str, str] | None = None,
               also: Callable[[WriteTransaction, str], None] | None = None) -> UploadStatus:
        """Open a session. `algorithm` is the running hash's (a finish with another digest re-hashes once);
        `meta` is kept with the session for the layer above (owner, repository); `also(txn, session id)` runs in
        the transaction that records the session (the layer above indexes it there: one commit)."""
        new_hasher(algorithm)  # validate now, not at the first chunk
        session_id = uuid.uuid4().hex
        now = self._store.clock()
        record = UploadRecord(algorithm, now, dict(meta or {}), 0, now)
        # The staging is created and held first, the record committed second: a crash in between leaves staging
        # nobody holds and no record names, which expire() removes; it looks for the record only once it holds
        # the staging, so staging whose record is being committed is either held (skipped) or has its record.
        staged = self._blobs.create_upload(session_id)
        try:
            def record_session(txn: WriteTransaction) -> None:  # replayable (an index with conflicts reruns it)
                txn.put(self._table, session_id.encode(), record.pack())
                if also is not None:
                    also(txn, session_id)
            self._store.index.transact(record_session)
        except BaseException:
            staged.discard()
            raise
        staged.release()
        return UploadStatus(session_id, 0, now, now, dict(record.meta))

    def exists(self, session_id: str) -> bool:
        """Whether the session is open (its record exists): one index read."""
        with self._store.index.read() as txn:
            return plausible_id(session_id) and txn.get(self._table, session_id.encode()) is not None

    def status(self, session_id: str, check: Check | None = None) -> UploadStatus:
        """Where the session is: the bytes accepted so far (a chunk being written counts once it is accepted).
        `check` (here and below) is the layer above's rule on the session (its owner): it sees the status and may
        raise."""
        record = self._record(session_id)
        status = UploadStatus(session_id, record.offset, record.created, record.updated, dict(record.meta))
        if check is not None:
            check(status)
        return status

    def append(self, session_id: str, chunks: Iterable[bytes], offset: int | None = None,
               length: int | None = None, check: Check | None = None) -> UploadStatus:
        """Append bytes at `offset` (the session's current offset; None means "wherever it is").
        With `length`, the chunk must be exactly that long (a Content-Range promise); else SizeMismatch and the
        session stays where it was."""
        with self._locked(session_id, check) as session:
            advanced = self._write(session, chunks, offset, length)
            if advanced is not session:
                self._commit_progress(advanced)
                crashpoints.reached("upload.after_progress")
            return _status(advanced)

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
        if self._blobs.writes_direct and self._record(session_id).offset == 0:
            # A whole blob to a fresh session: it never touches the staged bytes, so it takes no writer lease (one
            # commit, as on any store); its commit checks that the session is still fresh and nobody writes it.
            with self._locked(session_id, check, leased=False) as session:
                if session.offset != 0:
                    raise UploadBusy(session_id, "it wrote a chunk while this request began")
                return self._finish_whole(session, expected, chunks, offset, length, also)
        with self._locked(session_id, check) as session:
            session = self._write(session, chunks, offset, length)
            cached = self._take_hasher(session.id, session.offset)
            if expected.algorithm == session.record.algorithm and cached is not None and not session.record.takeovers:
                actual = Digest(expected.algorithm, cached.hexdigest())
            else:
                rehashed = _hash_staged(session.staged, session.offset, expected.algorithm)
                actual = Digest(expected.algorithm, rehashed.hexdigest())
            if actual != expected:
                self._discard(session)
                raise DigestMismatch(str(expected), str(actual))
            session.staged.sync()
            if session.lease and self._store.clock() >= session.record.lease_until - WRITER_LEASE * 2 / 3:
                self._renew(session)  # the publish below must end inside the lease: renewed (or lost) here
            crashpoints.reached("upload.before_publish")

            def end_session(txn: WriteTransaction) -> None:
                txn.delete(self._table, session_id.encode())
                if also is not None:
                    also(txn)

            try:
                info = self._store.publish(expected, session.offset, session.staged, also=end_session)
            except BaseException:
                if session.staged.consumed:  # the bytes went to the blob (debris for GC): the session cannot go on
                    self._discard(session)
                raise
            session.staged.discard()  # a publish moved the bytes away, or found them stored already: drop ours
            self._forget(session.id)
            return info

    def _finish_whole(self, session: _Session, expected: Digest, chunks: Iterable[bytes], offset: int | None,
                      length: int | None, also: Callable[[WriteTransaction], None] | None) -> BlobInfo:
        """A whole blob PUT to a fresh session, on a keeper that writes straight to the blob's place: a monolithic
        ingest (no staging segments, no copy), the session ending in the commit that stores the blob."""
        if offset is not None and offset != 0:
            raise OffsetMismatch(session.id, 0, offset)

        def end_session(txn: WriteTransaction) -> None:
            key = session.id.encode()
            raw = txn.get(self._table, key)
            if raw is None:
                raise UploadUnknown(session.id)
            record = UploadRecord.unpack(raw)
            if record.offset != 0 or (record.writer and record.lease_until > self._store.clock()):
                # A chunk on another node meanwhile: the session is its writer's (the blob's object just
                # completed is debris for GC's orphan sweep, cas/gc.py).
                raise UploadBusy(session.id, "it took the session while this request sent the whole blob")
            txn.delete(self._table, key)
            if also is not None:
                also(txn)

        # As a chunked finish does (its bytes are written, verified, then published, whatever the store holds): the
        # same outcomes on every store, only without the staging segments and the copy.
        staged = self._blobs.direct(expected)
        try:
            writer = staged.writer(new_hasher(expected.algorithm), 0, expected_size=length)
            for chunk in chunks:
                writer.write(chunk)
            actual = Digest(expected.algorithm, writer.finish(fsync=False))
            if length is not None and writer.size != length:
                raise SizeMismatch(length, writer.size)
            if actual != expected:
                self._discard(session)  # the bytes are not what the client said they are
                raise DigestMismatch(str(expected), str(actual))
            crashpoints.reached("upload.before_publish")
            try:
                info = self._store.publish(expected, writer.size, staged, also=end_session)
            except UploadBusy:
                raise  # the session is another writer's now
            except BaseException:
                if staged.consumed:  # the bytes went to the blob (debris for GC): the session cannot go on
                    self._discard(session)
                raise
        finally:
            staged.discard()  # (nothing once published: else the multipart upload is aborted)
        session.staged.discard()  # the session's (empty) staging
        self._forget(session.id)
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
                    if session.record.updated + ttl > self._store.clock():
                        continue  # written to since we looked
                    self._discard(session)
                    removed += 1
            except (UploadBusy, UploadUnknown):
                continue
        return removed + self._blobs.sweep_staged(self.exists)

    # -- internals ------------------------------------------------------------------------------------------------
    def _record(self, session_id: str) -> UploadRecord:
        with self._store.index.read() as txn:
            raw = txn.get(self._table, session_id.encode()) if plausible_id(session_id) else None
        if raw is None:
            raise UploadUnknown(session_id)
        return UploadRecord.unpack(raw)

    @contextmanager
    def _locked(self, session_id: str, check: Check | None = None, leased: bool = True) -> Iterator[_Session]:
        if self._leases is not None and leased:
            lease = self._leases.take(session_id)  # UploadUnknown or UploadBusy before touching the bytes
        else:
            lease = ""
            self._record(session_id)  # UploadUnknown before touching the bytes
        try:
            staged = self._blobs.resume_upload(session_id)
            if staged is None:
                # A record without its bytes: a crash between publishing and committing in finish(), or a file
                # removed by hand. The session cannot continue; forget it.
                self._store.index.transact(lambda txn: txn.delete(self._table, session_id.encode()))
                raise UploadUnknown(session_id)
            abandoned = False
            try:
                record = self._record(session_id)  # re-read while holding the bytes: it may have been finished
                session = _Session(session_id, record, staged, lease)
                if check is not None:
                    check(_status(session))
                yield session
            except WriterLeaseLost:
                abandoned = True
                staged.abandon()  # the bytes are the new writer's: write nothing more
                raise
            finally:
                if not abandoned:
                    staged.release()  # (an S3 staging writes its buffered tail here: still under the lease)
        finally:
            if lease and self._leases is not None:
                self._leases.release(session_id, lease)

    def _renew(self, session: _Session) -> None:
        assert self._leases is not None
        self._leases.renew(session.id, session.lease)

    def _commit_progress(self, session: _Session) -> None:
        def work(txn: WriteTransaction) -> None:
            key = session.id.encode()
            raw = txn.get(self._table, key)
            if raw is None:
                raise UploadUnknown(session.id)  # discarded by hand meanwhile (the bytes' holder would be us)
            record = session.record
            if session.lease:
                current = UploadRecord.unpack(raw)
                if current.writer != session.lease:  # fenced: another writer took the session over
                    raise WriterLeaseLost(session.id)
                record = replace(record, writer=session.lease, lease_until=current.lease_until)
            txn.put(self._table, key, record.pack())
        self._store.index.transact(work)

    def _write(self, session: _Session, chunks: Iterable[bytes], offset: int | None,
               length: int | None) -> _Session:
        """Write the chunks after the session's bytes; the advanced session (not yet committed), or `session`
        itself if nothing was written."""
        if offset is not None and offset != session.offset:
            raise OffsetMismatch(session.id, session.offset, offset)
        staged = session.staged
        start = session.offset
        held = staged.size()  # (format 1 read this size as the offset: the same one fstat)
        if held < start:
            # A power loss took bytes the record had accepted (chunks are not fsynced): the staged bytes are the
            # truth. The client learns the offset from the refusal (or, without an offset, just goes on).
            self._forget(session.id)
            start = held
            session = replace(session, record=replace(session.record, offset=held))
            self._commit_progress(session)
            if offset is not None and offset != start:
                raise OffsetMismatch(session.id, start, offset)
        elif held > start:
            staged.truncate(start)  # a writer killed mid-chunk, before its progress committed
        hasher = self._take_hasher(session.id, start)
        if hasher is None:
            hasher = _hash_staged(staged, start, session.record.algorithm)
        writer = staged.writer(hasher, start, expected_size=length)
        renew_at = self._store.clock() + WRITER_LEASE / 3 if session.lease else float("inf")
        try:
            for chunk in chunks:
                if renew_at <= self._store.clock():  # a long chunk: keep the session ours while it streams
                    self._renew(session)
                    renew_at = self._store.clock() + WRITER_LEASE / 3
                writer.write(chunk)
            writer.finish(fsync=False)
            if length is not None and writer.size != length:
                raise SizeMismatch(length, writer.size)
        except BaseException as exc:
            writer.abort()
            # All or nothing while we live: cut the failed chunk off (unless the session is another writer's now).
            # The hasher saw part of the chunk and is dropped; the next request re-hashes.
            if not isinstance(exc, WriterLeaseLost):
                staged.truncate(start)
            raise
        if writer.size == 0:
            self._keep_hasher(session.id, start, hasher)
            return session
        crashpoints.reached("upload.after_chunk")
        record = replace(session.record, offset=start + writer.size, updated=self._store.clock())
        self._keep_hasher(session.id, record.offset, hasher)
        return replace(session, record=record)

    def _discard(self, session: _Session) -> None:
        self._store.index.transact(lambda txn: txn.delete(self._table, session.id.encode()))
        session.staged.discard()
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


def _hash_staged(staged: Staged, length: int, algorithm: str) -> Hasher:
    hasher = new_hasher(algorithm)
    position = 0
    while position < length:
        data = staged.read(position, min(_REHASH_CHUNK, length - position))
        if not data:
            break
        hasher.update(data)
        position += len(data)
    return hasher


def _status(session: _Session) -> UploadStatus:
    return UploadStatus(session.id, session.offset, session.record.created, session.record.updated,
                        dict(session.record.meta))
