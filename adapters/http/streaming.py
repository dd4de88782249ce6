"""Request bodies: read on the event loop under a minimum-rate rule, streamed into the synchronous engine by a worker
thread that starts only when there is work for it, with bounded threads and a bounded number of bodies per client.

Streaming. Chunks go, as they arrive, through a small bounded queue to one worker thread that runs the cas call
(docs/PERFORMANCE.md: the fastest shape measured; re-batching made it slower). The event loop never blocks: when the
queue is full it waits for the worker to take a chunk. When the worker stops early (an unknown session, a wrong offset)
the rest of the body is not read, and the answer closes the connection (CloseAfterUnreadBody, below). When the body ends
early (the client hangs up, or breaks the rule below), the worker's iterator raises, so cas cuts the partial chunk off
again and nothing of it becomes visible.

The rule and the per-client cap are registry_core's decisions (registry_core/bodies.py: BodyLimits, BodyPace,
ClientBodies): this module measures the time each receive waits for the network (only that time counts: while the
worker is behind, the queue full or no thread free yet, the client is not charged for it), asks BodyPace how long the
next may wait, and answers a body that broke the rule 408 with BodyPace's reason and an OCI error (BLOB_UPLOAD_INVALID
for uploads; MANIFEST_INVALID for a manifest, as Distribution answers a manifest body it could not read), closing the
connection.

Waiting for the network holds no thread. The timing runs on the event loop: one timer per body cancels a receive
that waits past the rule (`_Stopwatch`). The worker thread starts only when the queue is full (QUEUE_CHUNKS chunks
wait for it) or the body is complete, so a client that trickles is cut off by the rule before it ever takes a thread.
Once started, the worker may wait for the next chunk when the network is slower than the hashing; the rule bounds each
such wait to `idle` seconds and the whole body to `min_rate` on average, so a client that stalls holds one thread for
at most `idle` seconds (less when its credit under the minimum rate runs out first).

Threads and clients. The workers take their threads under their own limiter (`threads` per process), never anyio's
default one (40 threads) that short operations use (a blob stat or open, a manifest PUT): uploads cannot starve them.
A client over ClientBodies' cap is answered 429 TOOMANYREQUESTS with Retry-After, before any of its body is read.

Every limit can be overridden from the environment when the server starts (BERTH_BODY_GRACE, BERTH_BODY_MIN_RATE,
BERTH_BODY_IDLE in seconds and bytes/s, BERTH_BODY_THREADS, BERTH_BODY_PER_CLIENT): tests use short ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from starlette.requests import ClientDisconnect, Request

from registry_core.bodies import BodyLimits, BodyPace, ClientBodies, TooManyBodies

from . import errors

log = logging.getLogger("berth.http")

T = TypeVar("T")
QUEUE_CHUNKS = 16  # docs/PERFORMANCE.md: ~16 chunks in flight kept the hashing thread busy without growing memory
_END = object()
_WAKE = object()  # wakes a worker waiting for a chunk so that it sees the body was aborted


LIMITS = BodyLimits.from_env(os.environ)  # read when the app is imported, in the server process


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


class BodyStalled(errors.ProtocolError):
    """The body broke the minimum-rate rule. The connection is closed: the rest of the body would follow."""

    def __init__(self, code: str, pace: BodyPace, idle: bool) -> None:
        super().__init__(408, code, pace.stalled(idle), headers={"Connection": "close"})


class _Stopwatch:
    """The rule's timer for one body: one timer handle, re-armed only when it fires. Deadlines never move earlier
    (each receive's deadline is at or after the previous one), so a timer that fires early just re-arms; when it
    fires at the deadline of a receive still waiting, it cancels the task. (An asyncio.timeout around each receive
    cost ~13 us per chunk here, a few % of an upload's receive cost; this costs ~1 us.)"""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.deadline: float | None = None  # while a receive waits: when it breaks the rule
        self.timer: asyncio.TimerHandle | None = None
        self.armed = 0.0  # when the timer fires
        self.expired = False  # the timer cancelled the task

    def waiting_until(self, deadline: float) -> None:
        self.deadline = deadline
        if self.timer is None:
            self._arm(deadline)

    def done_waiting(self) -> None:
        self.deadline = None

    def _arm(self, when: float) -> None:
        self.armed = when
        self.timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.timer = None
        if self.deadline is None:
            return  # not waiting for the network (the worker is behind): the next receive arms it again
        if self.deadline <= self.armed:
            self.expired = True
            self.task.cancel()
        else:
            self._arm(self.deadline)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def _chunks(request: Request, limits: BodyLimits, code: str) -> AsyncGenerator[bytes, None]:
    """The body's chunks as they arrive. BodyStalled when it breaks the rule, ClientDisconnect when the client hangs
    up. The time waited for each receive is measured, and the rule enforced, on the event loop, never in a thread."""
    loop = asyncio.get_running_loop()
    pace = BodyPace(limits)
    watch = _Stopwatch()
    receive = request.receive
    try:
        while True:
            allowance = pace.allowance()
            started = loop.time()
            try:
                if allowance <= 0:
                    raise TimeoutError
                watch.waiting_until(started + allowance)
                try:
                    message = await receive()
                finally:
                    watch.done_waiting()
            except (TimeoutError, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and not (watch.expired and watch.task.uncancel() == 0):
                    raise  # another cancellation (the server stopping), not the rule's
                pace.record(loop.time() - started, 0)
                client = request.client.host if request.client else "?"
                log.warning("cut off a stalled request body from %s on %s %s after %d bytes", client, request.method,
                            request.url.path, pace.received)
                raise BodyStalled(code, pace, idle=allowance >= limits.idle) from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            body: bytes = message.get("body", b"")
            pace.record(loop.time() - started, len(body))
            if body:
                yield body
            if not message.get("more_body", False):
                return
    finally:
        watch.stop()


_streaming = ClientBodies()
_limiter: tuple[asyncio.AbstractEventLoop, CapacityLimiter] | None = None


def _body_threads(limits: BodyLimits) -> CapacityLimiter:
    """The limiter for body workers, one per event loop (a limiter belongs to the loop it was made on)."""
    global _limiter
    loop = asyncio.get_running_loop()
    if _limiter is None or _limiter[0] is not loop:
        _limiter = loop, CapacityLimiter(limits.threads)
    return _limiter[1]


class _Handoff(Generic[T]):
    """One body's chunks, handed from the event loop to the worker thread that runs `consume` on them."""

    def __init__(self, consume: Callable[[Iterator[bytes]], T], limiter: CapacityLimiter) -> None:
        self.loop = asyncio.get_running_loop()
        self.consume = consume
        self.limiter = limiter
        self.chunks: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.space = asyncio.Event()
        self.worker: asyncio.Future[T] | None = None
        self.running = False  # the worker thread has begun
        self.finished = False  # ... and has returned or raised
        self.abort: BaseException | None = None  # set on the loop before the worker is woken to see it

    def _taken(self) -> None:
        self.space.set()

    def _iterate(self) -> Iterator[bytes]:
        while True:
            item = self.chunks.get()
            self.loop.call_soon_threadsafe(self._taken)
            if self.abort is not None:
                raise self.abort
            if item is _END:
                return
            assert isinstance(item, bytes)
            yield item

    def _run(self) -> T:
        self.running = True
        try:
            if self.abort is not None:
                raise self.abort
            return self.consume(self._iterate())
        finally:
            self.finished = True
            self.loop.call_soon_threadsafe(self._taken)

    def start(self) -> asyncio.Future[T]:
        if self.worker is None:
            self.worker = asyncio.ensure_future(anyio.to_thread.run_sync(self._run, limiter=self.limiter))
        return self.worker

    async def put(self, item: object) -> None:
        while not self.finished:
            try:
                self.chunks.put_nowait(item)
                return
            except queue.Full:
                self.start()  # a full queue is work for the worker: only now does the body take a thread
                self.space.clear()
                if self.chunks.full() and not self.finished:
                    await self.space.wait()

    async def result(self) -> T:
        await self.put(_END)
        return await self.start()

    async def abandon(self, reason: BaseException) -> None:
        """The body ended early: the worker's iterator raises `reason`, so cas cuts off what it wrote. A worker still
        waiting for a thread never starts; one running is waited for (the cas call must be over before the answer)."""
        self.abort = reason
        with contextlib.suppress(queue.Full):  # full: the worker is not waiting, its next chunk shows the abort
            self.chunks.put_nowait(_WAKE)
        if self.worker is None:
            return
        if not self.running:
            self.worker.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):  # the request failed for `reason`, not this
            await self.worker


async def stream_body(request: Request, consume: Callable[[Iterator[bytes]], T], subject: str | None = None, *,
                      code: str = "BLOB_UPLOAD_INVALID", limits: BodyLimits | None = None) -> T:
    """Run `consume(chunks)` in a worker thread while the body arrives; return its result (or raise its error).
    `subject` is the caller's (None when anonymous: the client's address counts instead) for the per-client cap."""
    limits = limits or LIMITS
    client = ("subject", subject) if subject else ("address", request.client.host if request.client else "")
    try:
        _streaming.admit(client, limits.per_client)  # ClientBodies decides; only its refusal is answered here
    except TooManyBodies as exc:  # 429, the body unread: the connection closes
        raise errors.ProtocolError(429, "TOOMANYREQUESTS", str(exc), headers={
            "Retry-After": str(exc.retry_after), "Connection": "close"}) from None
    try:
        handoff = _Handoff(consume, _body_threads(limits))
        try:
            async with contextlib.aclosing(_chunks(request, limits, code)) as chunks:
                async for chunk in chunks:
                    if handoff.finished:
                        break
                    await handoff.put(chunk)
        except BaseException as exc:  # hung up (ClientDisconnect), stalled (BodyStalled), or the server is stopping
            await handoff.abandon(ConnectionAbortedError(f"the request body ended early: {exc!r}"))
            raise
        return await handoff.result()
    finally:
        _streaming.release(client)


DRAIN_MAX = 64 << 20  # an oversized body up to this size is read and dropped, so the client gets to read the 413


async def read_body(request: Request, limit: int, *, code: str = "MANIFEST_INVALID",
                    limits: BodyLimits | None = None) -> bytes:
    """The whole body, or BodyTooLarge when it exceeds `limit`. The excess is drained (up to DRAIN_MAX) before the
    error is answered: a client still sending would otherwise see a reset connection instead of the error. Read on
    the event loop under the rule; `code` is the OCI error of a stalled body (its one caller reads manifests)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and (  # ASCII: isdigit takes '²'
            len(declared) > 19 or int(declared) > max(limit, DRAIN_MAX)):
        raise BodyTooLarge(limit)
    parts, total = [], 0
    async with contextlib.aclosing(_chunks(request, limits or LIMITS, code)) as chunks:
        async for chunk in chunks:
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
                headers = list(message.get("headers", ()))
                if not any(key.lower() == b"connection" for key, _ in headers):  # the 408/429 say it already
                    message = dict(message, headers=[*headers, (b"connection", b"close")])
            await send(message)

        await self.app(scope, tracked, guarded)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key == b"content-length":
            return value.strip() not in (b"", b"0")
        if key == b"transfer-encoding":
            return True
    return False
