"""The API's requests as values, without I/O (h11's way): `Client` and `AsyncClient` send the same `Call`s and parse
the answers with the same functions, so the two can never disagree about a path or a field.

Paths follow PORTAL-API.md: a repository name keeps its slashes, and its sub-resources come after the segment `-`
(`/api/v1/repositories/syn123/tools/-/tags`), which no OCI name component can be.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from berth_client.errors import Invalid, ProtocolError
from berth_client.values import Commit, ImageDetail, Me, Project, Repository, Tag

__all__ = ["PAGE", "Call", "Listing", "Page", "Reference", "parse_reference"]

T = TypeVar("T")
PREFIX = "/api/v1"
PAGE = 100  # the API's default page; its maximum is 1000 (PORTAL-API.md "Paging")
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: Mapping[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next: str | None  # the marker of the following page; None on the last


@dataclass(frozen=True, slots=True)
class Listing(Generic[T]):
    """A paged listing: the same path asked again with `last` set to the previous page's `next` marker."""

    path: str
    key: str  # the answer's list: "tags", "repositories", "projects"
    item: Callable[[Any], T]
    params: Mapping[str, str]

    def page(self, marker: str | None) -> Call[Page[T]]:
        params = dict(self.params) | ({"last": marker} if marker is not None else {})
        return Call("GET", self.path, self._parse, params)

    def _parse(self, data: Any) -> Page[T]:
        items = data.get(self.key) if isinstance(data, Mapping) else None
        if not isinstance(items, list):
            raise ProtocolError(f"the server's answer lacks the list {self.key!r}")
        marker = data.get("next")
        if marker is not None and not isinstance(marker, str):
            raise ProtocolError("the server's 'next' marker is not a string")
        return Page(tuple(self.item(entry) for entry in items), marker)


def _size(n: int) -> str:
    if not 1 <= n <= MAX_PAGE:
        raise Invalid(f"a page holds 1 to {MAX_PAGE} items, not {n}")
    return str(n)


# distribution-spec's <name>: path components of lowercase letters and digits joined by separators.
_NAME = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")


def repository_name(text: str) -> str:
    """A repository name, checked here so a typo is a usage error rather than a request."""
    name = text.strip("/")
    if not _NAME.fullmatch(name):
        raise Invalid(f"not a repository name: {text!r} (expected e.g. syn123/tools)")
    return name


def _repo(name: str) -> str:
    return f"{PREFIX}/repositories/{quote(repository_name(name), safe='/')}"


def _segment(text: str) -> str:
    return quote(text, safe="")


def _nothing(_: Any) -> None:
    return None


def me() -> Call[Me]:
    return Call("GET", f"{PREFIX}/me", Me.from_json)


def projects(n: int = PAGE) -> Listing[Project]:
    return Listing(f"{PREFIX}/projects", "projects", Project.from_json, {"n": _size(n)})


def project(project_id: str) -> Call[Project]:
    return Call("GET", f"{PREFIX}/projects/{_segment(project_id)}", Project.from_json)


def repositories(project_id: str, filter: str | None = None, n: int = PAGE) -> Listing[Repository]:
    params = {"n": _size(n)} | ({"filter": filter} if filter else {})
    return Listing(f"{PREFIX}/projects/{_segment(project_id)}/repositories", "repositories", Repository.from_json,
                   params)


def repository(name: str) -> Call[Repository]:
    return Call("GET", _repo(name), Repository.from_json)


SORTS = ("name", "time")


def tags(repo: str, sort: str = "name", filter: str | None = None, n: int = PAGE) -> Listing[Tag]:
    if sort not in SORTS:
        raise Invalid(f"tags sort by {' or '.join(SORTS)}, not {sort!r}")
    params = {"n": _size(n), "sort": sort} | ({"filter": filter} if filter else {})
    return Listing(f"{_repo(repo)}/-/tags", "tags", Tag.from_json, params)


SYNAPSE_SORTS = ("CREATED_ON", "TAG")


def _synapse_listing(data: Any) -> dict[str, Any]:
    if not (isinstance(data, Mapping) and isinstance(data.get("totalNumberOfResults"), int)
            and isinstance(data.get("results"), list)):
        raise ProtocolError("the server's answer is not {totalNumberOfResults, results}")
    return {"totalNumberOfResults": data["totalNumberOfResults"], "results": list(data["results"])}


def synapse_tags(repo: str, sort: str = "CREATED_ON", ascending: bool = False, limit: int = 10,
                 offset: int = 0) -> Call[dict[str, Any]]:
    """The research platform's tag listing shape (its /entity/{id}/dockerTag), offset-paged as there."""
    if sort not in SYNAPSE_SORTS:
        raise Invalid(f"the platform's listing sorts by {' or '.join(SYNAPSE_SORTS)}, not {sort!r}")
    if offset < 0:
        raise Invalid(f"offset must be 0 or more, not {offset}")
    params = {"sort": sort, "ascending": "true" if ascending else "false", "limit": _size(limit),
              "offset": str(offset)}
    return Call("GET", f"{_repo(repo)}/-/synapse/tags", _synapse_listing, params)


def tag(repo: str, name: str) -> Call[ImageDetail]:
    return Call("GET", f"{_repo(repo)}/-/tags/{_segment(name)}", ImageDetail.from_json)


def _history(data: Any) -> list[Commit]:
    entries = data.get("history") if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise ProtocolError("the server's answer lacks the list 'history'")
    return [Commit.from_json(entry) for entry in entries]


def history(repo: str, name: str) -> Call[list[Commit]]:
    return Call("GET", f"{_repo(repo)}/-/tags/{_segment(name)}/history", _history)


def manifest(repo: str, digest: str) -> Call[ImageDetail]:
    return Call("GET", f"{_repo(repo)}/-/manifests/{_segment(digest)}", ImageDetail.from_json)


def delete_tag(repo: str, name: str) -> Call[None]:
    return Call("DELETE", f"{_repo(repo)}/-/tags/{_segment(name)}", _nothing)


def trash_repository(name: str, restore: bool = False) -> Call[Repository]:
    return Call("POST", f"{_repo(name)}/-/{'restore' if restore else 'trash'}", Repository.from_json)


def trash_project(project_id: str, restore: bool = False) -> Call[Project]:
    return Call("POST", f"{PREFIX}/projects/{_segment(project_id)}/{'restore' if restore else 'trash'}",
                Project.from_json)


# A tag (OCI distribution-spec: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}) or a digest (algorithm:encoded).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+")


@dataclass(frozen=True, slots=True)
class Reference:
    """`syn123/tools:latest` or `syn123/tools@sha256:…` (a bare `syn123/tools` means `:latest`, as docker reads it)."""

    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}"


def parse_reference(text: str) -> Reference:
    repo, at, digest = text.partition("@")
    if at:
        if not _DIGEST.fullmatch(digest):
            raise Invalid(f"not a digest: {digest!r} (expected e.g. sha256:0123…)")
        return Reference(repository_name(repo), None, digest)
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        repo, name = text[:colon], text[colon + 1:]
        if not _TAG.fullmatch(name):
            raise Invalid(f"not a tag: {name!r}")
    else:
        repo, name = text, "latest"
    return Reference(repository_name(repo), name, None)
