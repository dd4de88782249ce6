"""A blob GET stats the blob once, whichever way it is answered (the file whole, a range, a HEAD)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from adapters.http import create_app
from cas import BlobStore, Digest
from registry_core.names import RepositoryName
from registry_core.registry import Registry

REPO = RepositoryName.parse("syn1/app")


@pytest.mark.parametrize(("method", "headers", "status"), [
    ("GET", [], 200), ("HEAD", [], 200), ("GET", [(b"range", b"bytes=10-19")], 206)])
def test_a_blob_get_stats_the_blob_once(store: BlobStore, method: str, headers: list[tuple[bytes, bytes]],
                                        status: int) -> None:
    registry = Registry(store)
    data = bytes(range(256)) * 64
    registry.ingest_blob(REPO, data, Digest.of(data))
    app = create_app(registry, policy="open")
    stats: list[Digest] = []
    stat = registry.store.stat

    def counting(digest: Digest | str) -> Any:
        stats.append(Digest.parse(str(digest)))
        return stat(digest)

    registry.store.stat = counting  # type: ignore[method-assign]
    sent: list[MutableMapping[str, Any]] = []

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if requested:  # the client stays connected while the answer streams
            await asyncio.Event().wait()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    path = f"/v2/{REPO}/blobs/{Digest.of(data)}"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"registry.test"), *headers], "client": ("127.0.0.1", 4000),
             "server": ("registry.test", 80)}
    async def run() -> None:
        await app(scope, receive, send)

    asyncio.run(run())
    assert sent[0]["status"] == status and stats == [Digest.of(data)]
