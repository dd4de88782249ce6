"""The values the Registry takes, from the strings tests write (the edge parses once; these stand in for it)."""

from __future__ import annotations

from cas import Digest
from registry_core.names import RepositoryName, parse_reference


def name_of(text: str | RepositoryName) -> RepositoryName:
    return text if isinstance(text, RepositoryName) else RepositoryName.parse(text)


def digest_of(value: str | Digest) -> Digest:
    return value if isinstance(value, Digest) else Digest.parse(value)


def ref_of(value: str | Digest) -> str | Digest:
    return value if isinstance(value, Digest) else parse_reference(value)
