"""The cheap decision: compressed streams cost nothing, random data one sample, and only what saves enough is kept
compressed. Bytes sampled stand in for cost (a timing test on a shared two-core machine would be noise)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
from collections.abc import Callable

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.compressibility import (
    KEEP_RATIO,
    MIN_SIZE,
    SAMPLE_SIZE,
    assess,
    assess_head,
    compressed_format,
    worth_keeping,
)
from cas.frames import compress


def csv(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    rows = (b"%d,station_%03d,temperature,%.3f,OK\n" % (1_764_000_000 + i, rng.randrange(200), rng.gauss(20, 8))
            for i in range(size // 20 + 1))
    return b"".join(rows)[:size]


def reads_of(data: bytes) -> tuple[list[tuple[int, int]], Callable[[int, int], bytes]]:
    calls: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= len(data), "a sample outside the blob"
        calls.append((offset, length))
        return data[offset:offset + length]
    return calls, read


TEXT = csv(1 << 20)
RANDOM = random.Random(2).randbytes(1 << 20)


@pytest.mark.parametrize("name,data", [
    ("gzip", gzip.compress(TEXT, 1)), ("zstd", zstandard.ZstdCompressor().compress(TEXT)),
    ("xz", lzma.compress(TEXT[:100_000])), ("bzip2", bz2.compress(TEXT[:100_000])),
    ("lz4", b"\x04\x22\x4d\x18" + RANDOM),
])
def test_compressed_streams_are_recognised_without_compressing_anything(name: str, data: bytes) -> None:
    assert compressed_format(data) == name
    calls, read = reads_of(data)
    verdict = assess(read, len(data))
    assert not verdict.compress and verdict.sampled == 0 and name in verdict.reason
    assert calls == [(0, min(SAMPLE_SIZE, len(data)))]
    assert not assess_head(data[:1000]).compress


def test_random_data_costs_one_sample() -> None:
    calls, read = reads_of(RANDOM)
    verdict = assess(read, len(RANDOM))
    assert not verdict.compress and verdict.sampled == SAMPLE_SIZE and len(calls) == 1
    assert assess_head(RANDOM).sampled == SAMPLE_SIZE


def test_text_is_sampled_at_start_middle_and_end_and_compressed() -> None:
    calls, read = reads_of(TEXT)
    verdict = assess(read, len(TEXT))
    assert verdict.compress and verdict.sampled == 3 * SAMPLE_SIZE
    assert calls[0][0] == 0 and calls[-1] == (len(TEXT) - SAMPLE_SIZE, SAMPLE_SIZE)
    stored = compress(TEXT)
    assert worth_keeping(len(TEXT), len(stored)) and len(stored) < 0.35 * len(TEXT)


def test_a_compressible_start_does_not_save_a_random_body() -> None:
    """A tar of a text file then a video: the samples may pass (erring towards trying is cheap: zstd passes random
    blocks through at GiB/s, and a wrong "keep raw" would lose the saving for good), the final check sinks it."""
    data = TEXT[:SAMPLE_SIZE] + RANDOM
    assert assess_head(data).compress
    assert not worth_keeping(len(data), len(compress(data)))


def test_small_blobs_stay_raw() -> None:
    small = TEXT[:MIN_SIZE - 1]
    assert not assess(lambda offset, length: small[offset:offset + length], len(small)).compress
    assert not assess_head(small, len(small)).compress
    assert not worth_keeping(len(small), 10)


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(st.binary(max_size=3 * SAMPLE_SIZE), st.binary(min_size=1, max_size=64).map(lambda b: b * 5000)),
       prefix=st.sampled_from([b"", b"\x1f\x8b", b"BZh9", b"\x28\xb5\x2f\xfd"]))
def test_any_blob_is_assessed_within_bounds(data: bytes, prefix: bytes) -> None:
    data = prefix + data
    calls, read = reads_of(data)
    verdict = assess(read, len(data))
    assert verdict.sampled <= 3 * SAMPLE_SIZE and sum(length for _, length in calls) <= 3 * SAMPLE_SIZE
    if verdict.compress:
        assert len(data) >= MIN_SIZE
        assert len(zstandard.ZstdCompressor(level=1).compress(data[:SAMPLE_SIZE])) <= SAMPLE_SIZE
    else:
        assert verdict.reason


def test_keep_ratio_is_the_documented_fifth() -> None:
    assert pytest.approx(0.8) == KEEP_RATIO
    assert worth_keeping(100_000, 80_000) and not worth_keeping(100_000, 90_000)
