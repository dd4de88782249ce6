"""Whether a blob is worth keeping compressed, decided cheaply: a magic number first, then a few small samples.

Most container layers arrive gzip- or zstd-compressed; they are recognised by their first bytes and cost nothing.
Random-looking data (encrypted, already-compressed formats without a known magic, media) fails the first sample and
costs one 64 KiB compression (0.03 ms measured: zstd passes incompressible blocks through quickly; a gzip layer
0.002 ms). Only what passes the
samples is compressed in full, and kept compressed only if the whole still saves enough (`worth_keeping`), since a
blob can start compressible and continue random (a tar of a text file followed by a video).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zstandard

from .frames import FOOTER_SIZE, LEVEL

# docs/PERFORMANCE.md: text-like data (CSV, logs) keeps ~0.25 of its size at level 1, ELF
# binaries 0.17-0.55, float32/float16 model weights ~0.92, gzip layers 1.0. Every read of a compressed blob pays
# decompression (~1 GiB/s per core) instead of a zero-copy sendfile, which an 8 % saving does not repay: keep the
# compressed form when it is at most 0.8 of the original (a saving of a fifth or more).
KEEP_RATIO = 0.80
# Bytes per sample: big enough for zstd to find the repetitions of text (its level-1 window sees them within a few
# KiB), small enough that a sample of random data costs a fraction of a millisecond.
SAMPLE_SIZE = 64 << 10
# A first sample that saves almost nothing ends the assessment: the blob is random-looking, do not sample further.
HOPELESS_RATIO = 0.97
# Below this size compression cannot free even one 4 KiB filesystem block after the trailer; keep such blobs raw.
MIN_SIZE = 8 << 10

# Formats that are one compressed stream from the first byte (zip is not here: its members may be stored raw).
_COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip"),  # RFC 1952 §2.3.1
    (b"\x28\xb5\x2f\xfd", "zstd"),  # RFC 8878 §3.1.1
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x04\x22\x4d\x18", "lz4"),
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision and why, for stats and logs ("gzip stream", "samples keep 0.98 > 0.80")."""

    compress: bool
    reason: str
    sampled: int = 0  # original bytes compressed to decide


def compressed_format(head: bytes | memoryview) -> str | None:
    """The name of the compressed format `head` starts with, if any."""
    start = bytes(head[:6])
    for magic, name in _COMPRESSED_MAGIC:
        if start.startswith(magic):
            return name
    if start[:3] == b"BZh" and start[3:4].isdigit() and bytes(head[4:10]) == b"1AY&SY":  # bzip2 block header
        return "bzip2"
    return None


def assess(read: Callable[[int, int], bytes | memoryview], size: int) -> Verdict:
    """Decide for a stored blob of `size` bytes, reading samples through `read(offset, length)`: its start, then
    (unless the start is hopeless) its middle and its end."""
    if size < MIN_SIZE:
        return Verdict(False, f"{size} bytes: too small to gain a filesystem block")
    return _judge(read(0, min(SAMPLE_SIZE, size)), (read(offset, SAMPLE_SIZE) for offset in _later_samples(size)))


def assess_head(head: bytes | memoryview, size: int | None = None) -> Verdict:
    """Decide from the first bytes of a blob as they arrive (an upload's first chunk), where no later samples
    exist yet. `size`, when declared, refuses a small blob before anything is compressed."""
    if size is not None and size < MIN_SIZE:
        return Verdict(False, f"{size} bytes: too small to gain a filesystem block")
    return _judge(head[:SAMPLE_SIZE], iter(()))


def _judge(first: bytes | memoryview, later: Iterator[bytes | memoryview]) -> Verdict:
    if not first:
        return Verdict(False, "no bytes to sample")
    known = compressed_format(first)
    if known is not None:
        return Verdict(False, f"{known} stream")
    compressor = zstandard.ZstdCompressor(level=LEVEL)
    sampled, kept = len(first), len(compressor.compress(first))
    if kept > HOPELESS_RATIO * sampled:
        return Verdict(False, f"first sample keeps {kept / sampled:.2f}", sampled)
    for sample in later:
        sampled += len(sample)
        kept += len(compressor.compress(sample))
    ratio = kept / sampled
    if ratio > KEEP_RATIO:
        return Verdict(False, f"samples keep {ratio:.2f} > {KEEP_RATIO:.2f}", sampled)
    return Verdict(True, f"samples keep {ratio:.2f}", sampled)


def _later_samples(size: int) -> list[int]:
    """Offsets of the middle and end samples, when they do not overlap the first."""
    if size < 3 * SAMPLE_SIZE:
        return [SAMPLE_SIZE] if size >= 2 * SAMPLE_SIZE else []
    return [size // 2 - SAMPLE_SIZE // 2, size - SAMPLE_SIZE]


def worth_keeping(original_size: int, stored_size: int) -> bool:
    """The final word once the whole blob was compressed: keep the stored form only if it saves enough."""
    return original_size >= MIN_SIZE and stored_size <= KEEP_RATIO * original_size + FOOTER_SIZE
