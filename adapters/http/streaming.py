"""Request bodies streamed into the synchronous engine: chunks go, as they arrive, through a small bounded queue to
one worker thread that runs the cas call (PERF-NOTES: the fastest shape measured; re-batching made it slower).

The event loop never blocks: when the queue is full it waits for the worker to take a chunk. When the worker stops
early (an unknown session, a wrong offset) the rest of the body is not read, and the answer closes the connection
(CloseAfterUnreadBody). When the client hangs up, the worker's iterator raises, so cas cuts the partial chunk off
again and nothing of it becomes visible.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, TypeVar

import anyio.to_thread
from starlette.requests import Request

T = TypeVar("T")
QUEUE_CHUNKS = 16  # PERF-NOTES: ~16 chunks in flight kept the hashing thread busy without growing memory
_END = object()


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


async def stream_body(request: Request, consume: Callable[[Iterator[bytes]], T]) -> T:
    """Run `consume(chunks)` in a worker thread while the body arrives; return its result (or raise its error)."""
    loop = asyncio.get_running_loop()
    chunks: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
    space = asyncio.Event()
    finished = False

    def taken() -> None:
        space.set()

    def iterate() -> Iterator[bytes]:
        while True:
            item = chunks.get()
            loop.call_soon_threadsafe(taken)
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    def run() -> T:
        nonlocal finished
        try:
            return consume(iterate())
        finally:
            finished = True
            loop.call_soon_threadsafe(taken)

    worker = asyncio.ensure_future(anyio.to_thread.run_sync(run))

    async def put(item: object) -> None:
        while not finished:
            try:
                chunks.put_nowait(item)
                return
            except queue.Full:
                space.clear()
                if chunks.full() and not finished:
                    await space.wait()

    end: object = _END
    try:
        async for chunk in request.stream():
            if finished:
                break
            if chunk:
                await put(chunk)
    except BaseException as exc:  # the client hung up (ClientDisconnect) or the server is stopping
        end = exc
        await put(ConnectionAbortedError(f"the request body ended early: {exc!r}"))
        try:
            await worker
        finally:
            raise end
    await put(end)
    return await worker


DRAIN_MAX = 64 << 20  # an oversized body up to this size is read and dropped, so the client gets to read the 413


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge when it exceeds `limit`. The excess is drained (up to DRAIN_MAX) before the
    error is answered: a client still sending would otherwise see a reset connection instead of the error."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and (  # ASCII: isdigit takes '²'
            len(declared) > 19 or int(declared) > max(limit, DRAIN_MAX)):
        raise BodyTooLarge(limit)
    parts, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > DRAIN_MAX:
            break
        if total <= limit:
            parts.append(chunk)
    if total > limit:
        raise BodyTooLarge(limit)
    return b"".join(parts)


Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class CloseAfterUnreadBody:
    """An answer given before its request's body was read to the end (a Bearer challenge, a refusal, a 416 for a
    chunk out of order) says `Connection: close`. RFC 9112 section 9: a server must read the whole body or close
    the connection after its response, else the rest would be read as the next request; saying so in the response
    (section 9.6) tells the client not to send its next request on it. granian usually closes such connections
    itself, but not always after saying so: of 60 PATCHes of 1 MiB answered 401 unread, 27 promised keep-alive and
    2 of those were dropped anyway, so the client's next request (the token it was told to fetch) failed with
    "Server disconnected without sending a response"."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or not _has_body(scope["headers"]):
            await self.app(scope, receive, send)
            return
        read_all = False

        async def tracked() -> Message:
            nonlocal read_all
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                read_all = True  # the last chunk, or the client is gone
            return message

        async def guarded(message: Message) -> None:
            if message["type"] == "http.response.start" and not read_all:
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, tracked, guarded)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key == b"content-length":
            return value.strip() not in (b"", b"0")
        if key == b"transfer-encoding":
            return True
    return False
