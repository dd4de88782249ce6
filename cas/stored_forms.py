"""Reading a blob's original bytes from any stored form (cas/layout.py: RAW, FRAMES_V1), for every keeper of
bytes (cas/blobs.py): a keeper hands over its stored bytes (a file descriptor, a bytes object, a ranged read of an
object) and this module turns them into what the store serves — a BlobReader over the original bytes — or hashes
them (fsck). Keeping it here, not in each keeper, is what makes compression a property of how bytes are kept and
not of where.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor
from itertools import chain

from .digest import Hasher, new_hasher
from .frames import FrameReader, RangedRead, Source, StoredFormCorrupt, StoredFormUnsupported
from .layout import FORM_FRAMES_V1, FORM_RAW
from .reader import CHUNK, BlobReader


class FramedBlobReader(BlobReader):
    """A BlobReader over [offset, offset + length) of the original bytes of a FRAMES_V1 stored form: only the
    frames the range touches are read and decompressed (cas/frames.py). No descriptor to sendfile (fileno -1).
    With `ahead`, the next batches are decompressed on that executor while the caller sends the current one."""

    __slots__ = ("_batches", "_left", "_release")

    def __init__(self, frames: FrameReader, offset: int = 0, length: int | None = None,
                 release: Callable[[], None] | None = None, ahead: Executor | None = None) -> None:
        if length is None:
            length = frames.size - offset
        try:  # checks the range (InvalidRange) before any read
            self._batches: Iterator[list[bytes]] | None = frames.iter_batches(offset, length, ahead=ahead)
        except BaseException:
            if release is not None:
                release()
            raise
        self._fd = -1
        self._data = b""
        self.size = frames.size
        self.offset = offset
        self.length = length
        self._pos = 0
        self._left: deque[memoryview] = deque()  # pieces decompressed, not handed out yet
        self._release = release

    def read(self, n: int = -1) -> bytes:
        remaining = self.length - self._pos
        if n < 0 or n > remaining:
            n = remaining
        parts: list[memoryview] = []
        wanted = n
        while wanted > 0:
            if not self._left:
                assert self._batches is not None, "read after close"
                self._left.extend(map(memoryview, next(self._batches)))
            piece = self._left.popleft()
            if len(piece) > wanted:
                self._left.appendleft(piece[wanted:])
                piece = piece[:wanted]
            parts.append(piece)
            wanted -= len(piece)
        self._pos += n
        return b"".join(parts)

    def batches(self) -> Iterator[Sequence[bytes]]:
        # One batch of frames (about 1 MiB of original bytes, one bytes object) at a time, after what a read() left
        # over. Sent as they are: a server copying out of a memoryview may do it byte by byte (granian does).
        if self._left:
            left = [bytes(piece) for piece in self._left]
            self._left.clear()
            self._pos += sum(map(len, left))
            yield left
        while self._batches is not None:
            batch = next(self._batches, None)
            if batch is None:
                return
            self._pos += sum(map(len, batch))
            yield batch

    def __iter__(self) -> Iterator[bytes]:
        # Pieces of about 1 MiB (one per batch of frames) as they are decompressed.
        return chain.from_iterable(self.batches())

    def close(self) -> None:
        batches, self._batches = self._batches, None
        if isinstance(batches, Generator):
            batches.close()  # waits for the batches in flight on a read-ahead executor: they read our source
        release, self._release = self._release, None
        if release is not None:
            release()


def open_form(form: int, source: int | bytes | RangedRead, size: int, offset: int = 0, length: int | None = None,
              stored_size: int | None = None) -> BlobReader:
    """A reader over a range of the original bytes of a blob kept in `form`, from `source`: a file descriptor
    (owned by the reader from here on, closed with it), the stored bytes themselves, or (FRAMES_V1 only: an object
    store's ranged GET) a `read_at(offset, length)` function with the record's `stored_size`."""
    if form == FORM_RAW:
        if callable(source):
            raise TypeError("raw bytes are read by their keeper's own BlobReader, not through a ranged read")
        return BlobReader(source, size, offset, length)
    release = (lambda: os.close(source)) if isinstance(source, int) else None
    try:
        if form != FORM_FRAMES_V1:
            raise StoredFormUnsupported(f"stored form {form} is not known to this Berth")
        frames = FrameReader(source, original_size=size, stored_size=stored_size)
    except BaseException:
        if release is not None:
            release()
        raise
    return FramedBlobReader(frames, offset, length, release)


def hash_form(form: int, source: Source, algorithm: str, stored_size: int | None = None) -> tuple[str, int]:
    """(hex digest, size) of the original bytes of a stored form: what fsck compares with the blob's name. A
    FRAMES_V1 form that cannot be decoded hashes to "" (it matches no digest: fsck calls it corrupt)."""
    hasher: Hasher = new_hasher(algorithm)
    size = 0
    if form == FORM_RAW and isinstance(source, int):
        while chunk := os.pread(source, CHUNK, size):
            hasher.update(chunk)
            size += len(chunk)
        return hasher.hexdigest(), size
    if form == FORM_RAW and isinstance(source, bytes | bytearray | memoryview):
        hasher.update(memoryview(source))
        return hasher.hexdigest(), len(source)
    try:
        frames = FrameReader(source, stored_size=stored_size)
        for piece in frames.iter_range():
            hasher.update(piece)
            size += len(piece)
    except (StoredFormCorrupt, StoredFormUnsupported):
        return "", size
    return hasher.hexdigest(), size
