"""FramedBlobReader (cas/stored_forms.py): a compressed blob's range read through every way a server consumes it
(read() of any sizes, then batches or pieces), and closing it while batches are decompressed ahead."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import InvalidRange
from cas.frames import FrameReader, compress
from cas.stored_forms import FramedBlobReader

originals = st.one_of(st.binary(max_size=600),
                      st.text(alphabet="abc ,;\n0123456789", max_size=600).map(str.encode))


@settings(max_examples=150, deadline=None)
@given(data=originals, frame_size=st.integers(1, 64), start=st.integers(0, 700), length=st.integers(0, 700),
       reads=st.lists(st.integers(0, 200), max_size=5), then=st.sampled_from(["batches", "pieces", "read"]),
       ahead=st.booleans())
def test_reads_then_batches_serve_the_range_once(data: bytes, frame_size: int, start: int, length: int,
                                                 reads: list[int], then: str, ahead: bool) -> None:
    start = start % (len(data) + 1)
    length = min(length, len(data) - start)
    with ThreadPoolExecutor(2) as executor:
        reader = FramedBlobReader(FrameReader(compress(data, frame_size=frame_size)), start, length,
                                  ahead=executor if ahead else None)
        with reader:
            got = b"".join(reader.read(n) for n in reads)
            if then == "batches":
                batches = list(reader.batches())
                assert all(batches)  # a batch is never empty: a server ends on the first empty one
                got += b"".join(b"".join(batch) for batch in batches)
            elif then == "pieces":
                got += b"".join(reader)
            else:
                got += reader.read()
            assert got == data[start:start + length]
            assert reader.read() == b""


def test_a_range_outside_the_blob_is_refused_at_open_and_the_source_released() -> None:
    released: list[bool] = []
    with pytest.raises(InvalidRange):
        FramedBlobReader(FrameReader(compress(b"x" * 100, frame_size=10)), 90, 20, lambda: released.append(True))
    assert released == [True]


def test_closing_mid_read_ahead_releases_the_source_after_the_last_read_of_it() -> None:
    """A client gone mid-body: the reader closes while batches are decompressed on the executor. The source (a
    descriptor, in a store) is released only once no thread reads it any more."""
    data = bytes(range(256)) * (16 << 12)  # 16 frames of 256 KiB: 4 batches
    stored = compress(data)
    late: list[int] = []
    closed = threading.Event()

    def read_at(offset: int, size: int) -> bytes:
        time.sleep(0.01)  # slow storage: batches are still in flight when the reader closes
        if closed.is_set():
            late.append(offset)
        return stored[offset:offset + size]

    with ThreadPoolExecutor(2) as executor:
        reader = FramedBlobReader(FrameReader(read_at, stored_size=len(stored)), ahead=executor,
                                  release=closed.set)
        first = next(reader.batches())
        assert b"".join(first) == data[:len(b"".join(first))]
        reader.close()
        assert closed.is_set()
        executor.shutdown(wait=True)
    assert late == []
