"""Repository names, tags and references.

Grammar (OCI distribution-spec v1.1, "Pulling manifests"):
    <name>      [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*
    <reference> a tag [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127} or a digest
The spec lets registries limit a name's length; clients commonly cap hostname + "/" + name at 255 characters,
and Distribution refuses names over 255 (reference.NameTotalLengthMax): so do we.

Every valid OCI name is a repository name here (`myorg/app`, `app`, `a/b/c/d`). Berth's project rule — the first
component is a project id, `syn` followed by digits, and at least one more component follows it (`syn12345/my-repo`)
— belongs to the project policy (policy.py), which refuses a name outside any project; `RepositoryName.project` says
whether a name is inside one.

Every pattern here is checked after a length cap, and none has nested quantifiers over overlapping characters,
so hostile input is rejected in linear time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from cas import Digest, InvalidDigest

NAME_MAX = 255  # Distribution's reference.NameTotalLengthMax
TAG_MAX = 128  # distribution-spec: at most 128 characters

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_PROJECT = re.compile(r"syn[0-9]{1,18}")


class InvalidName(ValueError):
    """A repository name outside the grammar or the project rule (NAME_INVALID)."""


class InvalidReference(ValueError):
    """A tag that is malformed (TAG_INVALID)."""


class InvalidDigestReference(InvalidReference):
    """A reference with ':' that is no valid digest (DIGEST_INVALID)."""


@dataclass(frozen=True, slots=True)
class RepositoryName:
    text: str  # the whole name, as the client sent it: `syn123/team/app`, `myorg/app`, `app`
    project: str | None  # `syn123` when the name lies inside a project (the project rule), else None

    @classmethod
    def parse(cls, text: str) -> RepositoryName:
        return _parse_name(text)

    @property
    def path(self) -> str:
        """The part after the project id (`team/app`); the whole name outside a project."""
        return self.text[len(self.project) + 1:] if self.project is not None else self.text

    def __str__(self) -> str:
        return self.text


# A pure function of its text, asked again on every request for the same few names: remember the answers (only
# valid names are remembered; an invalid one raises each time).
@lru_cache(maxsize=1024)
def _parse_name(text: str) -> RepositoryName:
    if not text or len(text) > NAME_MAX:
        raise InvalidName(f"repository name must be 1..{NAME_MAX} characters, got {len(text)}")
    components = text.split("/")
    for component in components:
        if not _COMPONENT.fullmatch(component):
            raise InvalidName(f"invalid repository name {text!r}: component {component[:64]!r} must be lower-case "
                              "letters and digits, separated by '.', '_', '__' or dashes")
    inside = len(components) >= 2 and _PROJECT.fullmatch(components[0]) is not None
    return RepositoryName(text, components[0] if inside else None)


def parse_project_id(text: str) -> str:
    """A project id, `syn` followed by 1..18 digits (InvalidName otherwise)."""
    if not _PROJECT.fullmatch(text):
        raise InvalidName(f"invalid project id {text[:64]!r}: expected syn followed by digits, e.g. syn12345")
    return text


def parse_tag(text: str) -> str:
    if len(text) > TAG_MAX or not _TAG.fullmatch(text):
        raise InvalidReference(f"invalid tag {text[:64]!r}: 1..128 of [a-zA-Z0-9_.-], not starting with '.' or '-'")
    return text


def parse_reference(text: str) -> str | Digest:
    """A manifest reference: a Digest if it contains ':', else a tag."""
    if ":" in text:
        try:
            return Digest.parse(text)
        except InvalidDigest as exc:
            raise InvalidDigestReference(str(exc)) from None
    return parse_tag(text)
