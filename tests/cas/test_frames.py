"""The compressed stored form: whatever the data, the chunking and the range, the reader serves exactly the original
bytes; whatever the damage, it raises instead of serving wrong bytes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import InvalidRange
from cas.frames import (
    BATCH_ORIGINAL,
    FOOTER_SIZE,
    FRAME_SIZE,
    FrameReader,
    FrameWriter,
    Source,
    StoredFormCorrupt,
    StoredFormUnsupported,
    compress,
)

# Small frames make "many frames" and every boundary case reachable with a few hundred bytes of data.
frame_sizes = st.integers(min_value=1, max_value=64)
random_bytes = st.binary(max_size=600)
text = st.text(alphabet="abc ,;\n0123456789", max_size=600).map(str.encode)
runs = st.tuples(st.binary(min_size=1, max_size=8), st.integers(1, 80)).map(lambda pair: pair[0] * pair[1])
mixtures = st.lists(st.one_of(random_bytes, text, runs), max_size=6).map(b"".join)
originals = st.one_of(random_bytes, text, runs, mixtures)


@contextlib.contextmanager
def opened(stored: bytes, kind: str, directory: Path) -> Iterator[Source]:
    """The stored form as each kind of source the reader takes: bytes, a file descriptor, a file object."""
    if kind == "bytes":
        yield stored
        return
    path = directory / f"stored-{os.getpid()}-{random.getrandbits(64):x}"
    path.write_bytes(stored)
    try:
        if kind == "fd":
            fd = os.open(path, os.O_RDONLY)
            try:
                yield fd
            finally:
                os.close(fd)
        else:
            with path.open("rb") as file:
                yield file
    finally:
        path.unlink()


def written_in_chunks(data: bytes, cuts: list[int], frame_size: int) -> bytes:
    out = io.BytesIO()
    writer = FrameWriter(out.write, frame_size=frame_size)
    previous = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        writer.write(data[previous:cut])  # empty chunks included
        previous = cut
    summary = writer.finish()
    assert summary.original_size == len(data) and summary.stored_size == len(out.getvalue())
    assert summary.frame_count == -(-len(data) // frame_size)
    return out.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=originals, frame_size=frame_sizes, cuts=st.lists(st.integers(0, 10_000), max_size=5),
       ranges=st.lists(st.tuples(st.integers(0, 700), st.integers(0, 700)), max_size=5),
       kind=st.sampled_from(["bytes", "fd", "file"]))
def test_any_range_serves_the_original_bytes(tmp_path: Path, data: bytes, frame_size: int, cuts: list[int],
                                             ranges: list[tuple[int, int]], kind: str) -> None:
    stored = written_in_chunks(data, cuts, frame_size)
    assert stored == compress(data, frame_size=frame_size)  # how the bytes arrived leaves no trace
    with opened(stored, kind, tmp_path) as source:
        reader = FrameReader(source, original_size=len(data))
        assert reader.size == len(data) and reader.stored_size == len(stored)
        assert reader.read() == data
        for start, length in ranges:
            start = start % (len(data) + 1)
            length = min(length, len(data) - start)
            pieces = list(reader.iter_range(start, length))
            assert b"".join(pieces) == data[start:start + length]
            assert all(0 < len(piece) <= (BATCH_ORIGINAL // frame_size + 1) * frame_size for piece in pieces)


@pytest.mark.parametrize("size", [0, 1, FRAME_SIZE - 1, FRAME_SIZE, FRAME_SIZE + 1, 3 * FRAME_SIZE + 1])
@pytest.mark.parametrize("content", ["random", "text"])
def test_sizes_around_the_real_frame_size(size: int, content: str) -> None:
    rng = random.Random(size)
    if content == "random":
        data = rng.randbytes(size)
    else:
        data = b"".join(b"%d,station_%03d,%.3f\n" % (i, rng.randrange(50), rng.gauss(20, 5))
                        for i in range(size // 10 + 1))[:size]
    hasher = hashlib.sha256()
    parts: list[bytes] = []
    writer = FrameWriter(parts.append, hasher=hasher)
    for offset in range(0, size, 100_000):  # chunks that straddle frame boundaries
        writer.write(memoryview(data)[offset:offset + 100_000])
    summary = writer.finish()
    stored = b"".join(parts)
    assert hasher.digest() == hashlib.sha256(data).digest()  # the original is hashed, not the stored form
    assert summary.frame_count == -(-size // FRAME_SIZE)
    if content == "text" and size > FRAME_SIZE:
        assert summary.ratio < 0.5
    reader = FrameReader(stored, original_size=size)
    assert reader.read() == data
    edges = {0, 1, FRAME_SIZE - 1, FRAME_SIZE, FRAME_SIZE + 1, size // 2, size - 1}
    for start in (e for e in edges if 0 <= e <= size):
        for length in (0, 1, 2, FRAME_SIZE, 1 << 20):
            length = min(length, size - start)
            assert reader.read(start, length) == data[start:start + length]
    # every byte is inside a zstd frame: a plain zstd decoder (zstd -d) recovers the original without Berth
    with zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=True) as plain:
        assert plain.read() == data


def test_read_ahead_on_an_executor_serves_the_same_bytes() -> None:
    data = random.Random(7).randbytes(40_000) * 3
    stored = compress(data, frame_size=1000)
    reader = FrameReader(stored)
    with ThreadPoolExecutor(2) as executor:
        for start, length in ((0, len(data)), (999, 50_001), (5, 0), (len(data) - 1, 1)):
            assert b"".join(reader.iter_range(start, length, ahead=executor)) == data[start:start + length]


@pytest.mark.parametrize("start,length", [(-1, 1), (0, 11), (11, 0), (5, -1), (10, 1)])
def test_a_range_outside_the_blob_is_refused(start: int, length: int) -> None:
    reader = FrameReader(compress(b"0123456789", frame_size=4))
    with pytest.raises(InvalidRange):
        reader.read(start, length)


def test_a_stored_form_of_another_size_is_refused() -> None:
    with pytest.raises(StoredFormCorrupt, match="holds 10 original bytes"):
        FrameReader(compress(b"0123456789"), original_size=11)


def test_a_stored_form_from_a_newer_version_is_refused_by_name() -> None:
    stored = bytearray(compress(b"0123456789", frame_size=4))
    struct.pack_into("<H", stored, len(stored) - FOOTER_SIZE + 20, 2)  # the version field
    with pytest.raises(StoredFormUnsupported, match="version 2"):
        FrameReader(bytes(stored))


def test_writing_after_finish_is_refused() -> None:
    writer = FrameWriter(lambda _: None)
    writer.finish()
    with pytest.raises(ValueError):
        writer.write(b"x")
    with pytest.raises(ValueError):
        writer.finish()


def served_or_refused(stored: bytes, data: bytes) -> None:
    """The one acceptable outcomes of reading a damaged stored form: the exact original, or a clear error."""
    try:
        reader = FrameReader(stored, original_size=len(data))
        served = reader.read()
    except (StoredFormCorrupt, StoredFormUnsupported):
        return
    assert served == data  # a flip zstd does not need (e.g. a larger window size) may be harmless: never wrong


@settings(max_examples=300, deadline=None)
@given(data=originals, frame_size=frame_sizes, where=st.integers(min_value=0), flip=st.integers(1, 255))
def test_a_damaged_byte_is_detected_or_harmless(data: bytes, frame_size: int, where: int, flip: int) -> None:
    stored = bytearray(compress(data, frame_size=frame_size))
    stored[where % len(stored)] ^= flip
    served_or_refused(bytes(stored), data)


@settings(max_examples=200, deadline=None)
@given(data=originals, frame_size=frame_sizes, keep=st.integers(min_value=0), extra=st.binary(min_size=1))
def test_truncated_or_extended_stored_forms_are_refused(data: bytes, frame_size: int, keep: int,
                                                        extra: bytes) -> None:
    stored = compress(data, frame_size=frame_size)
    for damaged in (stored[:keep % len(stored)], stored + extra, extra + stored):
        # refused either way (extra bytes may end in something footer-like that names an unknown version)
        with pytest.raises((StoredFormCorrupt, StoredFormUnsupported)):
            FrameReader(damaged, original_size=len(data)).read()



def test_read_ahead_refuses_a_file_object_it_would_share_between_threads(tmp_path: Path) -> None:
    (tmp_path / "stored").write_bytes(compress(b"abc" * 1000, frame_size=100))
    with (tmp_path / "stored").open("rb") as file, ThreadPoolExecutor(1) as executor, \
            pytest.raises(ValueError, match="read-ahead"):
        list(FrameReader(file).iter_range(ahead=executor))


@settings(max_examples=100, deadline=None)
@given(data=originals, frame_size=frame_sizes, start=st.integers(0, 700), length=st.integers(0, 700))
def test_a_range_costs_the_frames_it_touches(data: bytes, frame_size: int, start: int, length: int) -> None:
    """Over a ranged-read source (how an object store serves bytes), a range fetches the compressed bytes of the
    frames it touches and nothing else: cost in proportion to the range, not to the blob."""
    stored = compress(data, frame_size=frame_size)
    fetched: list[tuple[int, int]] = []

    def read_at(offset: int, size: int) -> bytes:
        fetched.append((offset, size))
        return stored[offset:offset + size]

    reader = FrameReader(read_at, stored_size=len(stored), original_size=len(data))
    start = start % (len(data) + 1)
    length = min(length, len(data) - start)
    fetched.clear()  # the footer and index: a fixed cost per open, paid once
    assert reader.read(start, length) == data[start:start + length]
    touched = {i for i in range(start // frame_size, (start + length - 1) // frame_size + 1)} if length else set()
    frame_bytes = sum(len(compress(data[i * frame_size:(i + 1) * frame_size], frame_size=frame_size))
                      - (8 + 4 + FOOTER_SIZE) for i in touched)
    assert sum(size for _, size in fetched) == frame_bytes


def test_a_ranged_read_source_needs_its_size() -> None:
    with pytest.raises(ValueError, match="stored_size"):
        FrameReader(lambda offset, length: b"")


def test_a_1_mib_range_from_the_middle_is_one_read_and_one_batch() -> None:
    """Issue 18: a 1 MiB range not aligned to frames touches 5 frames of 256 KiB; their compressed bytes are
    fetched with one read and decompressed into one batch (one thread hop of the server)."""
    rng = random.Random(18)
    words = [bytes(rng.choices(b"abcdefghij ,;", k=rng.randint(2, 12))) for _ in range(500)]
    data = b"\n".join(rng.choices(words, k=(8 * FRAME_SIZE) // 7))[:8 * FRAME_SIZE]
    stored = compress(data)
    fetched: list[tuple[int, int]] = []

    def read_at(offset: int, size: int) -> bytes:
        fetched.append((offset, size))
        return stored[offset:offset + size]

    reader = FrameReader(read_at, stored_size=len(stored), original_size=len(data))
    start, length = 3 * FRAME_SIZE + 12345, 1 << 20
    fetched.clear()
    batches = list(reader.iter_batches(start, length))
    assert len(fetched) == 1 and batches == [[data[start:start + length]]]  # one batch of one piece


@settings(max_examples=100, deadline=None)
@given(data=originals, frame_size=frame_sizes, start=st.integers(0, 700), length=st.integers(0, 700))
def test_batches_hold_at_most_a_batch_of_frames(data: bytes, frame_size: int, start: int, length: int) -> None:
    start = start % (len(data) + 1)
    length = min(length, len(data) - start)
    batches = list(FrameReader(compress(data, frame_size=frame_size)).iter_batches(start, length))
    assert b"".join(b"".join(batch) for batch in batches) == data[start:start + length]
    # one piece per batch, of at most the frames a batch may hold
    assert all(len(batch) == 1 and 0 < len(batch[0]) <= (BATCH_ORIGINAL // frame_size + 1) * frame_size
               for batch in batches)
