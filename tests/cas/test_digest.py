from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas import Digest, InvalidDigest, UnsupportedDigest, new_hasher
from cas import digest as digest_module


@pytest.mark.parametrize("algorithm,length", [("sha256", 64), ("sha512", 128), ("blake3", 64)])
def test_round_trip(algorithm: str, length: int) -> None:
    digest = Digest.of(b"abc", algorithm)
    assert len(digest.hex) == length
    assert Digest.parse(str(digest)) == digest
    assert digest.key == str(digest).encode()


def test_known_values() -> None:
    assert str(Digest.of(b"")) == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert Digest.of(b"", "blake3").hex == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


@pytest.mark.parametrize("text", [
    "", "sha256", "sha256:", ":abc", "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha256:" + "A" * 64,
    "SHA256:" + "a" * 64, "sha256 :" + "a" * 64, "sha256:" + "g" * 64, "sha512:" + "a" * 64,
    "sha256:" + "a" * 64 + "\n", "sha256::" + "a" * 64,
])
def test_malformed(text: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


def test_unsupported_is_distinct_but_still_a_value_error() -> None:
    with pytest.raises(UnsupportedDigest) as info:
        Digest.parse("md5:" + "a" * 32)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnsupportedDigest):
        new_hasher("md5")


class Counting:
    """A compiled pattern recording the length of every text it matches: proof an input reached it (one over the
    length cap is refused before it, and would time nothing)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern, self.lengths = pattern, list[int]()

    def fullmatch(self, text: str) -> re.Match[str] | None:
        self.lengths.append(len(text))
        return self.pattern.fullmatch(text)


# Just under the 135-character cap (7 + 128), built to make a backtracking engine work hardest: long runs of the
# algorithm's separators ([+._-]) with the bad character last, or a long encoded part that is not quite right.
HOSTILE_DIGESTS = ["a" * 134 + ":", "a-" * 66 + "a!!", "a+" * 66 + "a:!", "sha256:" + "a" * 127 + "!",
                   "a." * 67 + "a", "a" + "_" * 132 + ":a", "sha512:" + "a" * 127 + "G"]


def test_hostile_input_reaches_the_grammar_and_is_rejected_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(len(text) == 7 + 128 for text in HOSTILE_DIGESTS)
    counting = Counting(digest_module._GRAMMAR)
    monkeypatch.setattr(digest_module, "_GRAMMAR", counting)
    for text in HOSTILE_DIGESTS:
        counting.lengths.clear()
        with pytest.raises(InvalidDigest):
            Digest.parse(text)
        assert counting.lengths == [len(text)], text  # the whole input went through the grammar
    started = time.thread_time()  # CPU time: other work on the machine does not count
    for _ in range(500):
        for text in HOSTILE_DIGESTS:
            with pytest.raises(InvalidDigest):
                Digest.parse(text)
    assert time.thread_time() - started < 1.0  # 3 500 parses near the cap; linear matching takes ~0.02 s
    counting.lengths.clear()
    for text in ["a" * 100_000 + ":", "sha256:" + "a" * 1_000_000]:  # over the cap: refused before the grammar
        with pytest.raises(InvalidDigest):
            Digest.parse(text)
    assert counting.lengths == []


@given(st.text(max_size=200))
def test_parse_never_raises_anything_but_invalid_digest(text: str) -> None:
    try:
        digest = Digest.parse(text)
    except InvalidDigest:
        return
    assert str(digest) == text
