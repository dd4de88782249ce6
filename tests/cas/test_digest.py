from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas import Digest, InvalidDigest, UnsupportedDigest, new_hasher


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


def test_hostile_input_is_rejected_quickly() -> None:
    started = time.perf_counter()
    # inputs just under the 135-character cap reach the grammar; the long ones are refused before it
    near = ["a" * 133 + ":", "a-" * 66 + "!", "a+" * 66 + ":!", "sha256:" + "a" * 127 + "!", "a." * 67]
    assert all(len(text) <= 7 + 128 for text in near)
    for _ in range(500):
        for text in near + ["a" * 100_000 + ":", "sha256:" + "a" * 1_000_000]:
            with pytest.raises(InvalidDigest):
                Digest.parse(text)
    assert time.perf_counter() - started < 1.0


@given(st.text(max_size=200))
def test_parse_never_raises_anything_but_invalid_digest(text: str) -> None:
    try:
        digest = Digest.parse(text)
    except InvalidDigest:
        return
    assert str(digest) == text
