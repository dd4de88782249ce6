"""Blob bytes in this process's memory: a dict of bytes by digest, for tests and embedding."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .blobs import BlobBytes, Staged
from .digest import Digest, Hasher, new_hasher
from .errors import BlobUnknown, UploadBusy
from .reader import BlobReader


class _BufferWriter:
    """Appends to a buffer while hashing (the in-memory ChunkWriter)."""

    def __init__(self, buffer: bytearray, hasher: Hasher) -> None:
        self._buffer = buffer
        self._hasher = hasher
        self.size = 0

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hasher.update(memoryview(chunk))
        self._buffer += chunk
        self.size += len(chunk)

    def finish(self, fsync: bool = True) -> str:
        return self._hasher.hexdigest()

    def abort(self) -> None:
        pass


class StagedBuffer(Staged):
    def __init__(self, owner: MemoryBlobs, name: str, buffer: bytearray, lock: threading.Lock) -> None:
        self.name = name
        self.buffer = buffer
        self.consumed = False
        self._owner = owner
        self._lock = lock  # held from stage/create/resume until release/discard
        self._held = True

    def size(self) -> int:
        return len(self.buffer)

    def writer(self, hasher: Hasher, offset: int, expected_size: int | None = None) -> _BufferWriter:
        del self.buffer[offset:]
        return _BufferWriter(self.buffer, hasher)

    def truncate(self, size: int) -> None:
        del self.buffer[size:]

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.buffer[offset:offset + length])

    def sync(self) -> None:
        pass

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()

    def discard(self) -> None:
        with self._owner._guard:
            if self._owner._staged.get(self.name, (None,))[0] is self.buffer:
                del self._owner._staged[self.name]
        self.release()


class MemoryBlobs(BlobBytes):
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._blobs: dict[Digest, bytes] = {}
        self._trash: dict[Digest, bytes] = {}
        self._staged: dict[str, tuple[bytearray, threading.Lock]] = {}
        self._quarantine: dict[str, bytes] = {}
        self._locks: dict[str, threading.Lock] = {}

    def _new(self, name: str) -> StagedBuffer:
        buffer, lock = bytearray(), threading.Lock()
        lock.acquire()
        with self._guard:
            self._staged[name] = (buffer, lock)
        return StagedBuffer(self, name, buffer, lock)

    def stage(self) -> StagedBuffer:
        return self._new("tmp-" + uuid.uuid4().hex)

    def create_upload(self, session_id: str) -> StagedBuffer:
        return self._new(session_id)

    def resume_upload(self, session_id: str) -> StagedBuffer | None:
        with self._guard:
            found = self._staged.get(session_id)
        if found is None:
            return None
        buffer, lock = found
        if not lock.acquire(blocking=False):
            raise UploadBusy(session_id)
        return StagedBuffer(self, session_id, buffer, lock)

    def sweep_staged(self, has_session: Callable[[str], bool]) -> int:
        removed = 0
        with self._guard:
            names = list(self._staged)
        for name in names:
            if name.startswith("tmp-") or has_session(name):
                continue  # an ingest of this process (a dead process leaves no memory behind), or a live session
            try:
                staged = self.resume_upload(name)
            except UploadBusy:
                continue  # being created or written: its record is on the way
            if staged is not None:
                staged.discard()
                removed += 1
        return removed

    def publish(self, staged: Staged, digest: Digest) -> bool:
        assert isinstance(staged, StagedBuffer)
        with self._guard:  # as files do: bytes already here stay (and so does the staging); else they move
            if digest in self._blobs:
                return False
            self._blobs[digest] = bytes(staged.buffer)
            self._staged.pop(staged.name, None)
        staged.consumed = True
        return True

    def ensure(self, staged: Staged, digest: Digest) -> None:
        assert isinstance(staged, StagedBuffer)
        with self._guard:
            if digest not in self._blobs:
                self._blobs[digest] = self._trash.get(digest) or bytes(staged.buffer)

    def open(self, digest: Digest, size: int, offset: int = 0, length: int | None = None) -> BlobReader:
        data = self._blobs.get(digest)
        if data is None:
            data = self._trash.get(digest)
            if data is None:
                raise BlobUnknown(str(digest))
        return BlobReader(data, size, offset, length)

    def contains(self, digest: Digest) -> bool:
        return digest in self._blobs

    def retire(self, digest: Digest) -> bool:
        with self._guard:
            data = self._blobs.pop(digest, None)
            if data is None:
                return False
            self._trash[digest] = data
            return True

    def restore(self, digest: Digest) -> None:
        with self._guard:
            data = self._trash.pop(digest, None)
            if data is not None:
                self._blobs.setdefault(digest, data)

    def purge(self, digest: Digest) -> None:
        with self._guard:
            self._trash.pop(digest, None)

    def retired(self) -> Iterator[Digest]:
        with self._guard:
            return iter(list(self._trash))

    def stored(self) -> Iterator[tuple[Digest | None, str]]:
        with self._guard:
            digests = sorted(self._blobs, key=str)
        return ((digest, f"memory:{digest}") for digest in digests)

    def hash(self, location: str, algorithm: str) -> tuple[str, int]:
        data = self._blobs.get(Digest.parse(location.removeprefix("memory:")), b"")
        hasher = new_hasher(algorithm)
        hasher.update(data)
        return hasher.hexdigest(), len(data)

    def quarantine(self, location: str, label: str) -> str:
        with self._guard:
            data = self._blobs.pop(Digest.parse(location.removeprefix("memory:")), b"")
        return self.quarantine_bytes(data, label)

    def quarantine_bytes(self, data: bytes, label: str) -> str:
        name = f"quarantine:{label}-{uuid.uuid4().hex[:8]}"
        with self._guard:
            self._quarantine[name] = bytes(data)
        return name

    def debris(self) -> int:
        return len(self._trash)

    @contextmanager
    def exclusive(self, name: str, wait: bool) -> Iterator[bool]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(blocking=wait):
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def check_writable(self) -> None:
        pass

    def corrupt(self, digest: Digest, data: bytes) -> None:
        """Replace a blob's bytes (tests of fsck: damage a file-less store)."""
        with self._guard:
            self._blobs[digest] = data
