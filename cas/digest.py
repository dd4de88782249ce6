"""Digests as values, and the hashers that compute them.

Grammar (OCI image-spec, descriptor.md "Digests"):
    digest                ::= algorithm ":" encoded
    algorithm             ::= algorithm-component (algorithm-separator algorithm-component)*
    algorithm-component   ::= [a-z0-9]+
    algorithm-separator   ::= [+._-]
    encoded               ::= [a-zA-Z0-9=_-]+
Registered algorithms fix the encoded form: sha256 is 64 lower-case hex characters, sha512 is 128. blake3 (256-bit
output, 64 lower-case hex) is first-class here as well.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import blake3 as _blake3

from .errors import InvalidDigest, UnsupportedDigest

# Linear-time patterns: no nested quantifiers over the same characters, so hostile input cannot backtrack.
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_LOWER_HEX = re.compile(r"[a-f0-9]+")
HEX_LENGTH = {"sha256": 64, "sha512": 128, "blake3": 64}

ALGORITHMS: tuple[str, ...] = ("sha256", "sha512", "blake3")
DEFAULT_ALGORITHM = "sha256"

# Longest digest string we accept: "sha512:" + 128 hex. Anything longer is rejected before the regex runs.
_MAX_LEN = 7 + 128


class Hasher(Protocol):
    """What hashlib objects and blake3 have in common. `update` releases the GIL for large inputs."""

    def update(self, data: bytes | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "sha512":
        return hashlib.sha512()
    if algorithm == "blake3":
        # blake3.update releases the GIL for inputs of a page or more; one thread per hasher is enough here
        # because ingest already runs hashing beside the file writes.
        return _blake3.blake3()
    raise UnsupportedDigest(f"unsupported digest algorithm {algorithm!r}; supported: {', '.join(ALGORITHMS)}")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse `algorithm:encoded`; raise InvalidDigest (malformed) or UnsupportedDigest (unknown algorithm)."""
        if not isinstance(text, str):
            raise InvalidDigest(f"digest must be a string, not {type(text).__name__}")
        return _parse(text)

    @classmethod
    def of(cls, data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> Digest:
        hasher = new_hasher(algorithm)
        hasher.update(data)
        return cls(algorithm, hasher.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def key(self) -> bytes:
        """The digest as an index key: its canonical string in ASCII."""
        return f"{self.algorithm}:{self.hex}".encode("ascii")


# Digests are parsed again on every request that names one (and from every index record): the answer is a pure
# function of the text, and a Digest is immutable. Only valid digests are remembered; invalid ones raise each time.
@lru_cache(maxsize=4096)
def _parse(text: str) -> Digest:
    if len(text) > _MAX_LEN or not _GRAMMAR.fullmatch(text):
        raise InvalidDigest(f"malformed digest {_shorten(text)!r}: expected algorithm:hex, e.g. sha256:<64 hex>")
    algorithm, encoded = text.split(":", 1)
    length = HEX_LENGTH.get(algorithm)
    if length is None:
        raise UnsupportedDigest(f"unsupported digest algorithm {algorithm!r}; supported: {', '.join(ALGORITHMS)}")
    if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
        raise InvalidDigest(f"malformed {algorithm} digest {_shorten(text)!r}: "
                            f"expected {length} lower-case hex characters after '{algorithm}:'")
    return Digest(algorithm, encoded)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
