"""Blob bytes in this process's memory: a dict of bytes by digest and stored form, for tests and embedding."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

from .blobs import BlobBytes, Staged
from .digest import Digest, Hasher
from .errors import BlobUnknown, UploadBusy
from .layout import FORM_NAMES, FORM_RAW, FORMS
from .reader import BlobReader
from .stored_forms import hash_form, open_form

Key = tuple[Digest, int]  # a digest and a stored form


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
        self._blobs: dict[Key, bytes] = {}
        self._trash: dict[Key, bytes] = {}
        self._staged: dict[str, tuple[bytearray, threading.Lock]] = {}
        self._quarantine: dict[str, bytes] = {}

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
            if (digest, FORM_RAW) in self._blobs:
                return False
            self._blobs[digest, FORM_RAW] = bytes(staged.buffer)
            self._staged.pop(staged.name, None)
        staged.consumed = True
        return True

    def ensure(self, staged: Staged, digest: Digest) -> None:
        assert isinstance(staged, StagedBuffer)
        with self._guard:
            key = (digest, FORM_RAW)
            if key not in self._blobs:
                self._blobs[key] = self._trash.get(key) or bytes(staged.buffer)

    def open(self, digest: Digest, size: int, offset: int = 0, length: int | None = None, *,
             form: int = FORM_RAW, stored_size: int | None = None) -> BlobReader:
        data = self._blobs.get((digest, form))
        if data is None:
            data = self._trash.get((digest, form))
            if data is None:
                raise BlobUnknown(str(digest))
        return open_form(form, data, size, offset, length)

    def contains(self, digest: Digest, form: int = FORM_RAW) -> bool:
        return (digest, form) in self._blobs

    def publish_form(self, staged: Staged, digest: Digest, form: int) -> None:
        assert isinstance(staged, StagedBuffer) and form != FORM_RAW
        data = bytes(staged.buffer)
        with self._guard:
            self._blobs[digest, form] = data
            self._staged.pop(staged.name, None)
        staged.consumed = True

    def drop_form(self, digest: Digest, form: int) -> None:
        with self._guard:
            self._blobs.pop((digest, form), None)

    def retire(self, digest: Digest) -> bool:
        with self._guard:
            keys = [key for key in ((digest, form) for form in FORMS) if key in self._blobs]  # not a walk of all
            for key in keys:
                self._trash[key] = self._blobs.pop(key)
            return bool(keys)

    def restore(self, digest: Digest) -> None:
        with self._guard:
            for key in [key for key in ((digest, form) for form in FORMS) if key in self._trash]:
                self._blobs.setdefault(key, self._trash.pop(key))

    def purge(self, digest: Digest) -> None:
        with self._guard:
            for key in [key for key in ((digest, form) for form in FORMS) if key in self._trash]:
                del self._trash[key]

    def retired(self) -> Iterator[Digest]:
        with self._guard:
            return iter(list(dict.fromkeys(digest for digest, _ in self._trash)))

    def stored(self) -> Iterator[tuple[Digest | None, int, str]]:
        with self._guard:
            keys = sorted(self._blobs, key=lambda key: (str(key[0]), key[1]))
        return ((digest, form, _location(digest, form)) for digest, form in keys)

    def hash(self, location: str, algorithm: str) -> tuple[str, int]:
        data = self._blobs.get(_key(location))
        if data is None:  # as a file would: gone since it was listed
            raise FileNotFoundError(location)
        return hash_form(_key(location)[1], data, algorithm)

    def quarantine(self, location: str, label: str) -> str:
        with self._guard:
            data = self._blobs.pop(_key(location), b"")
        return self.quarantine_bytes(data, label)

    def quarantine_bytes(self, data: bytes, label: str) -> str:
        name = f"quarantine:{label}-{uuid.uuid4().hex[:8]}"
        with self._guard:
            self._quarantine[name] = bytes(data)
        return name

    def debris(self) -> int:
        return len(self._trash)

    def check_writable(self) -> None:
        pass

    def corrupt(self, digest: Digest, data: bytes, form: int = FORM_RAW) -> None:
        """Replace a blob's bytes in `form` (tests of fsck: damage a file-less store)."""
        with self._guard:
            self._blobs[digest, form] = data

    def stored_bytes(self, digest: Digest, form: int) -> bytes | None:
        """The bytes kept for a blob in `form` (tests)."""
        return self._blobs.get((digest, form))


def _location(digest: Digest, form: int) -> str:
    return f"memory:{digest}" if form == FORM_RAW else f"memory:{digest}:{FORM_NAMES[form]}"


def _key(location: str) -> Key:
    text = location.removeprefix("memory:")
    for form, name in FORM_NAMES.items():
        if form != FORM_RAW and text.endswith(":" + name):
            return Digest.parse(text[:-len(name) - 1]), form
    return Digest.parse(text), FORM_RAW
