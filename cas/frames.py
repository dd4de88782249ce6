"""The compressed stored form of a blob: independent zstd frames of a fixed original size, then an index, so that any
range of the original bytes is served by decompressing only the frames it touches.

Design (issue 18). Figures: one run of `python -m benchmarks.compression` (64 MiB, 2 shared cores, load 3.5)
---------------------------------------------------------------------------------------------------------
- **Background, not ingest.** zstd level 1 compresses text-like data at ~255 MiB/s in one thread: hashing and
  writing text in the same pass as compressing it ran at 206 MiB/s against 416 MiB/s raw. Compressing at ingest
  would halve text uploads and, on two cores, take the CPU that incompressible uploads (which must not slow down)
  use for hashing and writing. So an upload stores the original exactly as today (no change, no cost), and a
  compaction pass compresses afterwards: it asks `compressibility.assess()` (0.002 ms on a gzip layer, 0.032 ms on
  random data: 0.03 % of ingesting 64 MiB), streams the original through FrameWriter and swaps the stored form.
  The writer fits the ingest path as well (chunks in, original hashed, compressed bytes out to a staging write),
  should a faster machine make ingest-time compression pay for small blobs; the store decides, not this module.
- **Reads.** A full read decompresses at ~970 MiB/s in one thread with 256 KiB frames (1150 with 1 MiB frames;
  level 3 and 128 KiB frames are slower, level -1 misses the 0.35 ratio), against the issue's 1 GiB/s. zstd
  releases the GIL (checked: a pure-Python thread keeps running during decompress()), so `iter_range(ahead=...)`
  decompresses on a second thread; on the loaded machine it had no idle core to use and measured slower (~600
  MiB/s); through `berth serve` (one granian worker, same loaded machine) it cost ~20 % more server CPU per full
  GET for no measurable gain, so the server passes no executor (a quiet machine may decide otherwise). Serving
  cost is in batches (`iter_batches`): one pread and one bytes object per ~1 MiB of original bytes, decompressed
  in place across frames (no bytes per frame, no join), one thread hop and one send each: server CPU per full GET
  of a 128 MiB text blob went from ~300 to ~200 ms (raw sendfile: ~65 ms). 256 KiB frames stay the
  default because a 1 MiB range from the middle then decompresses at most 1.25 MiB (1.4-1.9 ms measured) where
  1 MiB frames decompress up to 2 MiB (4.6 ms unaligned); a raw pread from the page cache is 0.03 ms, so the
  issue's "<= 2x the uncompressed range" holds only at the HTTP level, where the request's own cost counts.
- **Where it plugs in.** Compression is a property of how bytes are kept, so it sits on the blob-bytes side of the seam
  and works for every store (local files, memory, object storage): the blob record gains a stored-form field (RAW,
  FRAMES_V1) and the stored size; blobs not yet assessed wait in a `compaction` table, so that no pass samples a blob
  twice nor scans every record (cas/layout.py, format 3; cas/compaction.py). Opening a range of a FRAMES_V1 blob wraps
  the stored bytes (an fd, a bytes object, a ranged object-store reader) in FrameReader; RAW blobs keep the zero-copy
  sendfile path (a FRAMES_V1 blob answers "no local path" when that capability is asked for). The index is read per open
  (16 KiB for a 1 GiB blob); stored forms are immutable, so a store may cache it by digest if Range requests show it. A
  wrapper BlobBytes would hide the flag from the index, but then a HEAD (which must answer the original size from the
  record alone) and stats (stored vs original bytes) could not see it: the flag belongs in the record.
- **fsck** verifies a FRAMES_V1 blob by streaming FrameReader.iter_range() into the hasher of the blob's digest: the
  original digest is the only truth, so a stored form that decompresses cleanly to the wrong bytes is still caught.
  Every frame also carries zstd's content checksum and the index a crc32, so damage is named by frame.
- **Crash rule.** The compaction writes the stored form under a fresh temp name, fsyncs it, renames it to the blob's
  compressed name (`<hex>.zf1` next to `<hex>`), fsyncs the directory, then in one index transaction flips the record to
  FRAMES_V1 and queues the raw file for unlinking (table `superseded`); only after the commit is the raw file unlinked.
  A kill -9 at any point leaves the record naming a complete file: before the commit the raw original (a `.zf1` or temp
  file without a record is debris), after it the fsynced compressed form (a leftover raw file is unlinked by the next
  pass). Readers that opened the raw file before the flip keep a valid descriptor.

Stored form, version 1 (integers little-endian)
-----------------------------------------------
    frame 0 .. frame n-1   independent zstd frames, each with its content size and content checksum in the frame
                           header; frame i holds original bytes [i*F, min((i+1)*F, size)), F = frame size,
                           n = ceil(size / F) (0 frames for an empty blob)
    trailer                one zstd skippable frame (RFC 8878 §3.1.2):
      u32  0x184D2A5B        skippable-frame magic
      u32  4*n + 32          length of the rest of the trailer
      u32 × n                the compressed length of each frame; frame i starts at the sum of the lengths before it
      footer, 32 bytes       struct "<QIIIHH8s": original size, frame size F, frame count n, crc32 of the n lengths,
                             format version (1), flags (0; a reader refuses flags it does not know), magic "BERTHZFR"

Every byte belongs to a zstd frame, so `zstd -d` turns a stored form back into the original without Berth. A reader
reads the footer (last 32 bytes), then the index, and checks that sizes, counts, crc and file length agree before it
serves a byte; a frame that fails to decompress (zstd checks each frame's content checksum) to exactly its expected
length raises StoredFormCorrupt. Damage never comes back as wrong bytes; the one thing a per-frame check cannot see,
intact frames of equal length swapped in place, is the original digest's to catch (fsck).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import BinaryIO

import zstandard

from .digest import Hasher
from .errors import CasError
from .reader import InvalidRange

FORMAT_VERSION = 1
MAGIC = b"BERTHZFR"
SKIPPABLE_MAGIC = 0x184D2A5B  # one of the 16 skippable-frame magics 0x184D2A50..5F that zstd decoders step over
_SKIPPABLE = struct.Struct("<II")
_FOOTER = struct.Struct("<QIIIHH8s")
FOOTER_SIZE = _FOOTER.size  # 32

# docs/PERFORMANCE.md: 256 KiB frames compress text-like data as well as 1-4 MiB frames (ratio
# 0.253 vs 0.254 at level 1), and a 1 MiB range from the middle decompresses at most 1.25 MiB instead of 2 MiB;
# full reads pay ~15 % for it (970 vs 1150 MiB/s in one thread). See the design note above.
FRAME_SIZE = 256 << 10
# docs/PERFORMANCE.md: level 1 beat level 3 on text-like data at these frame sizes (ratio 0.253 vs 0.258-0.274),
# compressing ~1.7x and decompressing 1.4-3x faster (probes and the benchmark run); level -1 lost a third of the
# saving (ratio 0.367) for no faster reads.
LEVEL = 1
# A footer naming bigger frames is refused: a corrupt footer must not make a reader allocate gigabytes.
MAX_FRAME_SIZE = 64 << 20
# A batch (one read of compressed bytes, decompressed and handed over in one go: one thread hop of a server) spans
# at most READ_BATCH compressed bytes and BATCH_ORIGINAL original bytes plus one frame, so that a 1 MiB range, which
# touches up to 5 frames of 256 KiB when it is not aligned, is one read. Measured (issue 18, full GETs of a 128 MiB
# text blob through `berth serve`, loaded 2-core machine): batches of ~1 MiB of original bytes beat ~4 MiB ones
# (about 10-15 % less server CPU per GET, faster too): decompressed frames are still in the cache when the server
# copies them out, and the reader holds less memory.
READ_BATCH = 1 << 20
BATCH_ORIGINAL = 1 << 20
# Batches a reader keeps in flight on a read-ahead executor beyond the one the caller consumes: two, so that an
# executor of two threads has both at work.
AHEAD_BATCHES = 2


class StoredFormCorrupt(CasError):
    """The stored form of a blob is damaged or truncated: its bytes cannot be served. fsck names such blobs."""


class StoredFormUnsupported(CasError):
    """A stored form written by a newer format version (or with flags) this code does not read."""


@dataclass(frozen=True, slots=True)
class FramedSummary:
    """What a FrameWriter produced: the original's size, the stored form's size and its frame layout."""

    original_size: int
    stored_size: int
    frame_size: int
    frame_count: int

    @property
    def ratio(self) -> float:
        """Stored bytes per original byte (1.0 for an empty blob: nothing was saved)."""
        return self.stored_size / self.original_size if self.original_size else 1.0


Chunk = bytes | bytearray | memoryview


class FrameWriter:
    """Turns original bytes, handed over in chunks of any size as an upload or a compaction reads them, into the
    stored form, passing compressed bytes to `sink` (a file's write, a BlobBytes staging's write) as each frame
    completes. With `hasher`, the original bytes are hashed on the way: the digest names the original, never the
    stored form. Memory held: less than one frame of original bytes. Not thread-safe.
    """

    def __init__(self, sink: Callable[[bytes], object], *, hasher: Hasher | None = None,
                 frame_size: int = FRAME_SIZE, level: int = LEVEL) -> None:
        if not 0 < frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"frame size {frame_size} is outside 1..{MAX_FRAME_SIZE}")
        self._sink = sink
        self._hasher = hasher
        self._frame_size = frame_size
        self._compressor = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
        self._pending = bytearray()
        self._lengths: list[int] = []
        self.original_size = 0
        self.stored_size = 0
        self._finished = False

    def write(self, chunk: Chunk) -> None:
        if self._finished:
            raise ValueError("write after finish")
        view = memoryview(chunk)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not view:
            return
        if self._hasher is not None:
            self._hasher.update(view)
        self.original_size += len(view)
        size = self._frame_size
        pending = self._pending
        if pending:
            take = size - len(pending)
            pending += view[:take]
            view = view[take:]
            if len(pending) < size:
                return
            self._emit(pending)
            pending.clear()
        while len(view) >= size:  # whole frames straight from the caller's buffer: no copy
            self._emit(view[:size])
            view = view[size:]
        if view:
            pending += view

    def _emit(self, original: bytearray | memoryview) -> None:
        frame = self._compressor.compress(original)
        self._sink(frame)
        self._lengths.append(len(frame))
        self.stored_size += len(frame)

    def finish(self) -> FramedSummary:
        """Compress what is pending, write the trailer and say what was written. The caller fsyncs."""
        if self._finished:
            raise ValueError("finish called twice")
        if self._pending:
            self._emit(self._pending)
            self._pending.clear()
        trailer = _trailer(self._lengths, self.original_size, self._frame_size)
        self._sink(trailer)
        self.stored_size += len(trailer)
        self._finished = True
        return FramedSummary(self.original_size, self.stored_size, self._frame_size, len(self._lengths))


def _trailer(lengths: list[int], original_size: int, frame_size: int) -> bytes:
    index = struct.pack(f"<{len(lengths)}I", *lengths)
    footer = _FOOTER.pack(original_size, frame_size, len(lengths), zlib.crc32(index), FORMAT_VERSION, 0, MAGIC)
    return _SKIPPABLE.pack(SKIPPABLE_MAGIC, len(index) + len(footer)) + index + footer


def compress(data: Chunk, *, frame_size: int = FRAME_SIZE, level: int = LEVEL) -> bytes:
    """The whole stored form of `data` in memory (the in-memory store; tests)."""
    parts: list[bytes] = []
    writer = FrameWriter(parts.append, frame_size=frame_size, level=level)
    writer.write(data)
    writer.finish()
    return b"".join(parts)


# read_at(offset, length) -> bytes: how a store without files (an object store's ranged GET) hands over its bytes.
RangedRead = Callable[[int, int], bytes | memoryview]
Source = bytes | bytearray | memoryview | BinaryIO | int | RangedRead


def _positional(source: Source, stored_size: int | None) -> tuple[RangedRead, int, bool]:
    """A positional read function over the stored form, its length, and whether threads may call it at once."""
    if callable(source):
        if stored_size is None:
            raise ValueError("a ranged-read source needs stored_size")
        return source, stored_size, True
    if isinstance(source, int):  # a file descriptor: pread leaves no shared position behind
        def pread_fd(offset: int, length: int) -> bytes:
            parts = []
            while length > 0:
                data = os.pread(source, length, offset)
                if not data:
                    break
                parts.append(data)
                offset += len(data)
                length -= len(data)
            return b"".join(parts)
        return pread_fd, os.fstat(source).st_size, True
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        return (lambda offset, length: view[offset:offset + length]), len(view), True
    size = source.seek(0, os.SEEK_END)

    def pread_file(offset: int, length: int) -> bytes:  # seek + read: one reader per file object at a time
        source.seek(offset)
        parts = []
        while length > 0:
            data = source.read(length)
            if not data:
                break
            parts.append(data)
            length -= len(data)
        return b"".join(parts)
    return pread_file, size, False


class FrameReader:
    """Serves ranges of the original bytes from a stored form held in a file descriptor, a bytes-like object, a
    binary file object (seek + read: use one reader per file object at a time) or a ranged-read function with its
    `stored_size` (safe to call from several threads).

    A reader serves one caller at a time (it owns one decompressor): open one per request, as with BlobReader.
    The footer and index are read and checked once, here; `original_size`, when the caller knows it (the blob
    record), must match the footer, so a stored form swapped for another blob's is refused too.
    """

    __slots__ = ("_pread", "_concurrent", "_offsets", "_decompressor", "size", "frame_size", "stored_size")

    def __init__(self, source: Source, *, original_size: int | None = None, stored_size: int | None = None) -> None:
        self._pread, self.stored_size, self._concurrent = _positional(source, stored_size)
        stored = self.stored_size
        if stored < _SKIPPABLE.size + FOOTER_SIZE:
            raise StoredFormCorrupt(f"stored form of {stored} bytes is shorter than its trailer")
        footer = self._read_exact(stored - FOOTER_SIZE, FOOTER_SIZE)
        size, frame_size, count, crc, version, flags, magic = _FOOTER.unpack(footer)
        if magic != MAGIC:
            raise StoredFormCorrupt("no stored-form footer at the end (magic number missing)")
        if version != FORMAT_VERSION or flags:
            raise StoredFormUnsupported(f"stored form version {version} with flags {flags:#x}; this code reads "
                                        f"version {FORMAT_VERSION} without flags")
        if not 0 < frame_size <= MAX_FRAME_SIZE or count != -(-size // frame_size):
            raise StoredFormCorrupt(f"footer is inconsistent: {size} bytes in {count} frames of {frame_size}")
        if original_size is not None and size != original_size:
            raise StoredFormCorrupt(f"stored form holds {size} original bytes, the blob has {original_size}")
        trailer_size = _SKIPPABLE.size + 4 * count + FOOTER_SIZE
        if trailer_size > stored:
            raise StoredFormCorrupt(f"index of {count} frames does not fit in {stored} bytes")
        head = self._read_exact(stored - trailer_size, _SKIPPABLE.size + 4 * count)
        skippable_magic, skippable_length = _SKIPPABLE.unpack_from(head)
        if skippable_magic != SKIPPABLE_MAGIC or skippable_length != trailer_size - _SKIPPABLE.size:
            raise StoredFormCorrupt("the trailer's frame header does not match its footer")
        index = head[_SKIPPABLE.size:]
        if zlib.crc32(index) != crc:
            raise StoredFormCorrupt("the frame index fails its checksum")
        offsets = list(accumulate(struct.unpack(f"<{count}I", index), initial=0))  # C speed: this runs per open
        if offsets[-1] + trailer_size != stored:
            raise StoredFormCorrupt(f"frames and trailer add up to {offsets[-1] + trailer_size} bytes, the stored "
                                    f"form has {stored} (truncated or extended)")
        self._offsets = offsets
        self._decompressor = zstandard.ZstdDecompressor()
        self.size = size
        self.frame_size = frame_size

    @property
    def frame_count(self) -> int:
        return len(self._offsets) - 1

    def _read_exact(self, offset: int, length: int) -> bytes | memoryview:
        data = self._pread(offset, length)
        if len(data) != length:
            raise StoredFormCorrupt(f"stored form ended early: {len(data)} of {length} bytes at offset {offset}")
        return data

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        return b"".join(self.iter_range(offset, length))

    def iter_range(self, offset: int = 0, length: int | None = None, *,
                   ahead: Executor | None = None) -> Iterator[bytes]:
        """The original bytes [offset, offset + length) in pieces of one batch each (see iter_batches),
        decompressing only the frames the range touches (the range is checked here, before any read). With `ahead`
        (a file descriptor or bytes source only: a file object has one position), the next AHEAD_BATCHES batches
        are read and decompressed on that executor while the caller consumes the current one (zstd releases the
        GIL)."""
        return chain.from_iterable(self.iter_batches(offset, length, ahead=ahead))

    def iter_batches(self, offset: int = 0, length: int | None = None, *,
                     ahead: Executor | None = None) -> Iterator[list[bytes]]:
        """As iter_range, one list of pieces per batch of frames: one read of their compressed bytes, about
        1 MiB of original bytes (see BATCH_ORIGINAL). A server hands each batch over in one go (one thread hop, not
        one per frame). Closing the iterator early waits for the batches in flight on `ahead`, so that the caller
        may close the source (a descriptor) right after: no thread reads it any more."""
        if length is None:
            length = self.size - offset
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidRange(f"range of {length} bytes at offset {offset} is outside a blob of {self.size} bytes")
        if ahead is not None and not self._concurrent:
            raise ValueError("read-ahead needs a file descriptor or bytes: a file object has a single position")
        if length == 0:
            return iter(())
        return self._batch_pieces(offset, offset + length, ahead)

    def _batch_pieces(self, offset: int, end: int, ahead: Executor | None) -> Iterator[list[bytes]]:
        batches = self._batches(offset // self.frame_size, (end - 1) // self.frame_size)
        if ahead is None:
            for first, stop in batches:
                yield self._decompress_batch(self._decompressor, first, stop, offset, end)
            return
        pending: deque[Future[list[bytes]]] = deque()
        try:
            for first, stop in batches:
                # a fresh decompressor per task: a ZstdDecompressor must not be used by two threads at once
                pending.append(ahead.submit(self._decompress_batch, zstandard.ZstdDecompressor(), first, stop,
                                            offset, end))
                if len(pending) > AHEAD_BATCHES:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # closed early (a client went away) or failed: let no task outlive the caller's source
            for future in pending:
                future.cancel()
            wait(pending)

    def _batches(self, first: int, last: int) -> Iterator[tuple[int, int]]:
        """Frame index ranges [first, stop) of at most READ_BATCH compressed bytes and BATCH_ORIGINAL original bytes
        plus one frame (at least one frame each)."""
        offsets = self._offsets
        most = BATCH_ORIGINAL // self.frame_size + 1
        while first <= last:
            stop = first + 1
            while stop <= last and stop - first < most and offsets[stop + 1] - offsets[first] <= READ_BATCH:
                stop += 1
            yield first, stop
            first = stop

    def _decompress_batch(self, decompressor: zstandard.ZstdDecompressor, first: int, stop: int,
                          offset: int, end: int) -> list[bytes]:
        """Frames [first, stop) read with one pread and decompressed straight into one bytes object of exactly
        their part of [offset, end): the batch as one piece. The part before the range is decompressed and dropped,
        the part after it decompressed to the frame's end so that zstd checks the last frame's checksum. Measured:
        a 1 MiB range from the middle 1.3 ms, against 2.9 ms for decompress() per frame and a join."""
        offsets, frame_size = self._offsets, self.frame_size
        base = offsets[first]
        raw = memoryview(self._read_exact(base, offsets[stop] - base))
        origin = first * frame_size
        total = min(stop * frame_size, self.size) - origin
        for i in range(first, stop):  # headers first: a damaged one must not make us decompress its claim
            start = i * frame_size
            expected = min(frame_size, self.size - start)
            frame = raw[offsets[i] - base:offsets[i + 1] - base]
            try:
                declared = zstandard.frame_content_size(frame)
            except zstandard.ZstdError as exc:
                raise StoredFormCorrupt(f"frame {i} (original bytes {start}..{start + expected}) is damaged: "
                                        f"{exc}") from exc
            if declared != expected:
                raise StoredFormCorrupt(f"frame {i} holds {declared} bytes where {expected} belong")
        low, high = max(offset - origin, 0), min(end - origin, total)
        try:
            # zstd checks each frame's content size and checksum as it reaches the frame's end
            with decompressor.stream_reader(raw, read_across_frames=True) as reader:
                skipped = len(reader.read(low)) if low else 0
                data = reader.read(high - low)
                after = len(reader.read(total - high)) if high < total else 0
                extra = reader.read(1)
        except zstandard.ZstdError as exc:
            raise StoredFormCorrupt(f"frames {first}..{stop - 1} (original bytes {origin}..{origin + total}) are "
                                    f"damaged: {exc}") from exc
        if skipped != low or len(data) != high - low or after != total - high or extra:
            raise StoredFormCorrupt(f"frames {first}..{stop - 1} do not hold the {total} bytes they declare")
        return [data]
