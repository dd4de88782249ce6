"""`Client` (blocking) and `AsyncClient` (asyncio): the same calls (calls.py), the same values (values.py).

    from berth_client import Client
    berth = Client("http://127.0.0.1:5000")          # token: given, BERTH_TOKEN, or what `podman login` stored
    now, before = berth.history("syn123/tools", "latest")[:2]

Listings are lazy: iterating `tags(...)` asks for one page (`n` items, 100 by default) when the previous one is used
up, never one request per tag. Every failure is a `BerthError` (errors.py) with the server's message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from berth_client import calls, credentials
from berth_client.calls import PAGE, Call, Listing, Page
from berth_client.errors import BerthError, ProtocolError, Unavailable, error_for
from berth_client.values import Commit, ImageDetail, Me, Project, Repository, Tag

__all__ = ["AsyncClient", "Client", "registry_url"]

T = TypeVar("T")
TIMEOUT = 30.0  # seconds; a page of 1000 tags is one range scan on the server, far below this
USER_AGENT = "berth-client/0.1"


def _headers(credential: credentials.Credential | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential.token}"
    return headers


def _answer(call: Call[T], response: httpx.Response) -> T:
    """The parsed answer, or the typed error the status and body say."""
    body: Any = None
    if response.content:
        try:
            body = response.json()
        except ValueError as error:
            if response.is_success:
                raise ProtocolError(f"{call.method} {call.path}: the answer is not JSON "
                                    f"({response.headers.get('content-type', 'no content type')})",
                                    status=response.status_code) from error
    if not response.is_success:
        raise error_for(response.status_code, body, response.headers.get("retry-after"), f"{call.method} {call.path}")
    return call.parse(body)


def _unreachable(url: str, error: httpx.HTTPError) -> BerthError:
    return Unavailable(f"cannot reach {url}: {error}")


def registry_url(text: str) -> str:
    """A URL for a registry named as container tools name it (`127.0.0.1:5000`, `registry.example.org`): plain HTTP
    on loopback only, as Docker assumes (README "Using Docker"), HTTPS anywhere else."""
    url = text.rstrip("/")
    if "://" in url:
        return url
    host = urlsplit(f"//{url}").hostname or ""
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    return f"{'http' if loopback else 'https'}://{url}"


class _Base:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = registry_url(url)
        self.credential = credentials.find(self.url, token)


class Client(_Base):
    """A blocking client of one Berth. A context manager, or call `close()`; one connection is reused throughout."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url, token)
        self._http = httpx.Client(base_url=self.url, headers=_headers(self.credential), timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, params=call.params or None,
                                          json=call.body)
        except httpx.HTTPError as error:
            raise _unreachable(self.url, error) from error
        return _answer(call, response)

    def pages(self, listing: Listing[T]) -> Iterator[Page[T]]:
        """Every page of a listing, asked for one at a time as the caller moves on."""
        marker: str | None = None
        while True:
            page = self.send(listing.page(marker))
            yield page
            if page.next is None or page.next == marker:  # the same marker twice would loop for ever
                return
            marker = page.next

    def _items(self, listing: Listing[T]) -> Iterator[T]:
        for page in self.pages(listing):
            yield from page.items

    def me(self) -> Me:
        return self.send(calls.me())

    def projects(self, *, n: int = PAGE) -> Iterator[Project]:
        return self._items(calls.projects(n))

    def project(self, project_id: str) -> Project:
        return self.send(calls.project(project_id))

    def repositories(self, project_id: str, *, filter: str | None = None, n: int = PAGE) -> Iterator[Repository]:
        return self._items(calls.repositories(project_id, filter, n))

    def repository(self, name: str) -> Repository:
        return self.send(calls.repository(name))

    def tags(self, repo: str, *, sort: str = "name", filter: str | None = None, n: int = PAGE) -> Iterator[Tag]:
        return self._items(calls.tags(repo, sort, filter, n))

    def tag(self, repo: str, tag: str = "latest") -> ImageDetail:
        return self.send(calls.tag(repo, tag))

    def digest(self, repo: str, tag: str = "latest") -> str:
        """The digest `repo:tag` points at now: what `skopeo inspect` and the registry's Docker-Content-Digest say."""
        return self.tag(repo, tag).digest

    def history(self, repo: str, tag: str = "latest") -> list[Commit]:
        """Where the tag pointed, newest first: `[0]` is now, `[1]` before (digest None: the tag was removed)."""
        return self.send(calls.history(repo, tag))

    def manifest(self, repo: str, digest: str) -> ImageDetail:
        return self.send(calls.manifest(repo, digest))

    def inspect(self, reference: str, *, platform: str | None = None) -> ImageDetail:
        """`syn123/tools:latest` or `syn123/tools@sha256:…`; with `platform` (`linux/arm64`), that image of an
        index."""
        ref = calls.parse_reference(reference)
        detail = self.manifest(ref.repository, ref.digest) if ref.digest else self.tag(ref.repository, ref.tag or "")
        if platform is None or detail.kind != "index":
            return detail
        return self.manifest(ref.repository, detail.child(platform).digest)

    def delete_tag(self, repo: str, tag: str) -> None:
        self.send(calls.delete_tag(repo, tag))

    def trash(self, target: str, *, restore: bool = False) -> Project | Repository:
        """Trash (or restore) a project (`syn123`) or a repository (`syn123/tools`): in the trash, both answer 404
        to all but their administrators at once."""
        if "/" in target:
            return self.send(calls.trash_repository(target, restore))
        return self.send(calls.trash_project(target, restore))

    def restore(self, target: str) -> Project | Repository:
        return self.trash(target, restore=True)

    def tag_results(self, repo: str, *, sort: str = "CREATED_ON", ascending: bool = False, limit: int | None = None,
                    offset: int = 0) -> dict[str, Any]:
        """The tags in the shape the research platform's Python client returns for a tag listing, so its scripts
        port with one line: `{"totalNumberOfResults": n, "results": [{"tag", "digest", "createdOn"}]}`, newest
        first by default. `limit` None: every tag from `offset` on (asked for 1000 at a time)."""
        if limit is not None:
            return self.send(calls.synapse_tags(repo, sort, ascending, limit, offset))
        first = self.send(calls.synapse_tags(repo, sort, ascending, calls.MAX_PAGE, offset))
        results, total = first["results"], first["totalNumberOfResults"]
        while results and offset + len(results) < total:
            more = self.send(calls.synapse_tags(repo, sort, ascending, calls.MAX_PAGE, offset + len(results)))
            if not more["results"]:
                break
            results += more["results"]
        return {"totalNumberOfResults": total, "results": results}


class AsyncClient(_Base):
    """The asyncio twin of `Client`: the same methods, awaited; listings are async iterators."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, token)
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(self.credential), timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, params=call.params or None,
                                                json=call.body)
        except httpx.HTTPError as error:
            raise _unreachable(self.url, error) from error
        return _answer(call, response)

    async def pages(self, listing: Listing[T]) -> AsyncIterator[Page[T]]:
        marker: str | None = None
        while True:
            page = await self.send(listing.page(marker))
            yield page
            if page.next is None or page.next == marker:
                return
            marker = page.next

    async def _items(self, listing: Listing[T]) -> AsyncIterator[T]:
        async for page in self.pages(listing):
            for item in page.items:
                yield item

    async def me(self) -> Me:
        return await self.send(calls.me())

    def projects(self, *, n: int = PAGE) -> AsyncIterator[Project]:
        return self._items(calls.projects(n))

    async def project(self, project_id: str) -> Project:
        return await self.send(calls.project(project_id))

    def repositories(self, project_id: str, *, filter: str | None = None,
                     n: int = PAGE) -> AsyncIterator[Repository]:
        return self._items(calls.repositories(project_id, filter, n))

    async def repository(self, name: str) -> Repository:
        return await self.send(calls.repository(name))

    def tags(self, repo: str, *, sort: str = "name", filter: str | None = None,
             n: int = PAGE) -> AsyncIterator[Tag]:
        return self._items(calls.tags(repo, sort, filter, n))

    async def tag(self, repo: str, tag: str = "latest") -> ImageDetail:
        return await self.send(calls.tag(repo, tag))

    async def digest(self, repo: str, tag: str = "latest") -> str:
        return (await self.tag(repo, tag)).digest

    async def history(self, repo: str, tag: str = "latest") -> list[Commit]:
        return await self.send(calls.history(repo, tag))

    async def manifest(self, repo: str, digest: str) -> ImageDetail:
        return await self.send(calls.manifest(repo, digest))

    async def inspect(self, reference: str, *, platform: str | None = None) -> ImageDetail:
        ref = calls.parse_reference(reference)
        detail = (await self.manifest(ref.repository, ref.digest) if ref.digest
                  else await self.tag(ref.repository, ref.tag or ""))
        if platform is None or detail.kind != "index":
            return detail
        return await self.manifest(ref.repository, detail.child(platform).digest)

    async def delete_tag(self, repo: str, tag: str) -> None:
        await self.send(calls.delete_tag(repo, tag))

    async def trash(self, target: str, *, restore: bool = False) -> Project | Repository:
        if "/" in target:
            return await self.send(calls.trash_repository(target, restore))
        return await self.send(calls.trash_project(target, restore))

    async def restore(self, target: str) -> Project | Repository:
        return await self.trash(target, restore=True)

    async def tag_results(self, repo: str, *, sort: str = "CREATED_ON", ascending: bool = False,
                          limit: int | None = None, offset: int = 0) -> dict[str, Any]:
        if limit is not None:
            return await self.send(calls.synapse_tags(repo, sort, ascending, limit, offset))
        first = await self.send(calls.synapse_tags(repo, sort, ascending, calls.MAX_PAGE, offset))
        results, total = first["results"], first["totalNumberOfResults"]
        while results and offset + len(results) < total:
            more = await self.send(calls.synapse_tags(repo, sort, ascending, calls.MAX_PAGE, offset + len(results)))
            if not more["results"]:
                break
            results += more["results"]
        return {"totalNumberOfResults": total, "results": results}
