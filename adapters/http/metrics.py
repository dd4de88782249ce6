"""Prometheus metrics, and the HTTP edge that counts every request and answers /metrics, /healthz and /readyz.

Where things are counted: every request once, by endpoint kind, method and status, with its latency and its bytes:
here, in `Observed` (the layer around the app), and, for the manifest fast path that answers before it, by the fast
path itself through `Observed.count` (no wrapper around its send: issue 16's budget is ~3 us per request). Domain
events (uploads, manifests, tags, tokens, the upload reaper) are counted where they happen in the adapter layer,
with the counters defined below; registry_core and cas know nothing of Prometheus. What the store holds (blobs,
bytes, open uploads, the index) is read when scraped (`StoreCollector`), never counted.

Worker processes. `berth serve` runs several workers; prometheus-client's multiprocess mode has each write its
values to files in PROMETHEUS_MULTIPROC_DIR, and a scrape sums them. `berth serve` makes that directory (wiped)
before the workers fork; the variable must be set before prometheus_client is imported, which `prepare_serving`
does. Counters of a worker that died stay in the sum (as a counter must); the live gauge of workers drops it.

Exposure (not public by default): with `--metrics`, GET /metrics on the registry's port answers only a loopback peer
whose request carries no proxy header (a reverse proxy on the same host would otherwise make every client loopback);
`--metrics-public` answers everyone; `--metrics-listen HOST:PORT` serves it on a port of its own instead (from the
`berth serve` process itself, not the workers), and the registry's port then has no /metrics.

Label values are bounded: endpoint kinds, methods, statuses and fixed reason words; never a repository or digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from time import perf_counter
from typing import Any

import anyio.to_thread
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cas import BlobStore
from cas.layout import STATE_INLINE, STORED_STATES, BlobRecord

from ..exposure import MULTIPROC_ENV
from .health import Readiness
from .streaming import ASGIApp

log = logging.getLogger("berth.http")


# -- the metrics ------------------------------------------------------------------------------------------------------
# Seconds: a manifest from the fast path takes ~30 µs, a layer upload minutes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0)
REQUESTS = Counter("berth_http_requests", "HTTP requests answered, by endpoint kind, method and status",
                   ["kind", "method", "status"])
LATENCY = Histogram("berth_http_request_duration_seconds", "Time from a request's arrival to the end of its answer",
                    ["kind", "method"], buckets=LATENCY_BUCKETS)
BYTES_IN = Counter("berth_http_received_bytes", "Request body bytes received", ["kind"])
BYTES_OUT = Counter("berth_http_sent_bytes", "Response body bytes sent", ["kind"])

UPLOADS_STARTED = Counter("berth_uploads_started", "Blob uploads started (sessions opened, and monolithic POSTs)")
UPLOADS_FINISHED = Counter("berth_uploads_finished", "Blob uploads that stored their blob")
UPLOADS_FAILED = Counter("berth_uploads_failed", "Blob uploads that ended without a blob: refused (bad digest, "
                         "size, body cut off), cancelled by the client, or expired (idle, reaped)", ["how"])
MANIFESTS_WRITTEN = Counter("berth_manifests_written", "Manifests stored (PUT accepted)")
TAGS_WRITTEN = Counter("berth_tags_written", "Tags set by a manifest PUT")
TOKENS_ISSUED = Counter("berth_tokens_issued", "Access tokens issued by the token endpoint, by how the caller logged "
                        "in (anonymous, password, refresh_token)", ["login"])
TOKEN_REFUSALS = Counter("berth_token_refusals", "Token requests refused, by reason (bad_credentials, throttled, "
                         "too_many_scopes, bad_request, too_large, no_login)", ["reason"])
GC_PASSES = Counter("berth_gc_passes", "Collection passes run by the server (`blobs`: the scheduled GC; `uploads`: "
                    "the upload reaper)",
                    ["collector"])
GC_BLOBS = Counter("berth_gc_blobs_collected", "Blobs deleted by collection passes run by the server")
GC_BYTES = Counter("berth_gc_bytes_collected", "Bytes freed by collection passes run by the server")
WORKERS = Gauge("berth_workers", "Worker processes serving", multiprocess_mode="livesum")

# Bounded label sets, shown at zero from the start (a rate over a series that appears late misses its first value).
for _how in ("refused", "cancelled", "expired"):
    UPLOADS_FAILED.labels(_how)
for _reason in ("bad_credentials", "throttled", "too_many_scopes", "bad_request", "too_large", "no_login"):
    TOKEN_REFUSALS.labels(_reason)
for _login in ("anonymous", "password", "refresh_token"):
    TOKENS_ISSUED.labels(_login)
GC_PASSES.labels("uploads")
GC_PASSES.labels("blobs")

FLUSH_S = 1.0  # how long a worker's request counts may wait before they reach the shared values
_BOUNDS = (*LATENCY_BUCKETS, float("inf"))

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def count_safely(action: Callable[[], object]) -> None:
    """A metric update must never fail a request (e.g. the metrics directory's disk is full)."""
    try:
        action()
    except Exception:  # counted nowhere, logged: the request goes on
        log.warning("a metric could not be updated", exc_info=True)


# -- what the store holds, read at scrape time ------------------------------------------------------------------------
class StoreCollector(Collector):
    """Gauges of the store. What the index counts for us (open upload sessions, its size) is read at every scrape
    (O(1)); the blobs' number and sizes need a walk over every blob record (O(n)), so a walk is reused for 20 times
    as long as it took (at least a second): however large the store, walking takes at most 5 % of a scraping
    worker's time, and a small store's gauges are current."""

    REUSE = 20.0
    MIN_AGE = 1.0

    def __init__(self, store: Callable[[], BlobStore]) -> None:
        self.store = store
        self._walked: tuple[float, dict[str, float]] | None = None  # when it may be walked again, what was found

    def _walk(self, store: BlobStore) -> dict[str, float]:
        found = {"files": 0.0, "file_bytes": 0.0, "inline": 0.0, "inline_bytes": 0.0, "waiting": 0.0,
                 "waiting_bytes": 0.0}
        with store.index.read() as txn:
            for _, raw in txn.scan(store.tables.blobs):
                record = BlobRecord.unpack(raw)
                if record.state not in STORED_STATES:
                    continue
                inline = record.state == STATE_INLINE
                found["inline" if inline else "files"] += 1
                found["inline_bytes" if inline else "file_bytes"] += record.size
                if record.refcount == 0:
                    found["waiting"] += 1
                    found["waiting_bytes"] += record.size
        return found

    def collect(self) -> Iterator[Metric]:
        try:
            store = self.store()
            now = time.monotonic()
            if self._walked is None or now >= self._walked[0]:
                found = self._walk(store)
                took = time.monotonic() - now
                self._walked = (now + max(self.MIN_AGE, self.REUSE * took), found)
            walked = self._walked[1]
            open_uploads = store.index.entries(store.tables.uploads)
            space = store.index.space()
        except Exception:  # a store that cannot be read shows as missing gauges (and /readyz says why)
            log.warning("store metrics could not be read", exc_info=True)
            return
        blobs = GaugeMetricFamily("berth_store_blobs", "Blobs stored, in files or inline in the index",
                                  labels=["where"])
        blobs.add_metric(["files"], walked["files"])
        blobs.add_metric(["inline"], walked["inline"])
        size = GaugeMetricFamily("berth_store_bytes", "Bytes of the blobs stored, in files or inline",
                                 labels=["where"])
        size.add_metric(["files"], walked["file_bytes"])
        size.add_metric(["inline"], walked["inline_bytes"])
        yield blobs
        yield size
        yield GaugeMetricFamily("berth_gc_waiting_blobs", "Blobs nobody references, waiting for their grace period",
                                value=walked["waiting"])
        yield GaugeMetricFamily("berth_gc_waiting_bytes", "Bytes of the blobs nobody references",
                                value=walked["waiting_bytes"])
        yield GaugeMetricFamily("berth_uploads_open", "Upload sessions open", value=open_uploads)
        if space is not None:  # an index with a bound on its size (LMDB's map)
            yield GaugeMetricFamily("berth_index_used_bytes", "Bytes of the index map in use", value=space[0])
            yield GaugeMetricFamily("berth_index_map_bytes", "Size of the index map (grown as needed)",
                                    value=space[1])


def exposition_registry(store: Callable[[], BlobStore]) -> CollectorRegistry:
    """Every worker's counters (summed from the multiprocess directory) and the store's gauges."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(StoreCollector(store))
    return registry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of worker processes that are gone (granian may have replaced them)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            if entry.startswith("gauge_live") and entry.endswith(".db"):
                pid = entry[:-3].rpartition("_")[2]
                if pid.isdigit() and not _alive(int(pid)):
                    multiprocess.mark_process_dead(int(pid), directory)  # type: ignore[no-untyped-call]


class SweepingRegistry(CollectorRegistry):
    """A registry that forgets dead workers before each scrape (for prometheus_client's own HTTP server)."""

    def __init__(self, inner: CollectorRegistry) -> None:
        super().__init__()
        self.inner = inner

    def collect(self) -> Iterator[Metric]:
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            forget_dead_workers(directory)
        yield from self.inner.collect()


def exposition(registry: CollectorRegistry) -> bytes:
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        forget_dead_workers(directory)
    return generate_latest(registry)


# -- the registry's port ---------------------------------------------------------------------------------------------
_LOOPBACK_CACHE: dict[str, bool] = {}
# A request through a reverse proxy on this host comes from loopback too: one carrying a proxy header is not local.
_PROXY_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip",
                            os.environ.get("BERTH_FORWARDED_HEADER", "forwarded").lower().encode()})


def _loopback(host: str) -> bool:
    found = _LOOPBACK_CACHE.get(host)
    if found is None:
        try:
            found = ipaddress.ip_address(host).is_loopback
        except ValueError:
            found = False
        if len(_LOOPBACK_CACHE) < 1024:
            _LOOPBACK_CACHE[host] = found
    return found


async def _answer(scope: Any, send: Any, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class Observed:
    """The layer around the app: /healthz, /readyz and (when enabled) /metrics, and the count of every request
    (those the manifest fast path answers are counted by it, with `count`).

    Counting is the hot path's (a manifest GET takes ~30 µs, and prometheus-client's multiprocess values take a lock
    and write a memory-mapped file per update: ~6 µs for a request's five). So each request only adds to plain
    numbers in this process, by (kind, method, status); they reach the shared values at most FLUSH_S later (a timer
    on the event loop), before this worker answers a scrape, and when the worker shuts down."""

    def __init__(self, app: ASGIApp, kind_of: Callable[[str], str], readiness: Readiness,
                 store: Callable[[], BlobStore], *, expose: str | None, public: bool) -> None:
        self.app = app
        self.kind_of = kind_of
        self.readiness = readiness
        self.counting = expose is not None
        self.serve_here = expose == "port"
        self.public = public
        self.registry = exposition_registry(store) if self.serve_here else None
        # (kind, method, status) -> [requests, seconds, bytes out, bytes in, one count per latency bucket...]
        self._pending: dict[tuple[str, str, int], list[float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._kinds: dict[str, str] = {}  # path -> endpoint kind: a hot manifest is asked for over and over

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, self._lifespan(send) if scope["type"] == "lifespan" else send)
            return
        path = scope["path"]
        if path in ("/healthz", "/readyz", "/metrics") and scope["method"] in ("GET", "HEAD"):
            await self.special(path, scope, send)
            return
        if not self.counting:
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        state: list[Any] = [0, 0, 0, ()]  # status, bytes out, bytes in, the response's headers

        async def sending(message: Any) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                state[1] += len(message.get("body", b""))
            elif kind == "http.response.start":
                state[0] = message["status"]
                state[3] = message.get("headers", ())
            elif kind == "http.response.pathsend":  # a file the server sends by itself: its length was said
                state[1] += next((int(v) for k, v in state[3] if k.lower() == b"content-length"), 0)
            await send(message)

        async def receiving() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                state[2] += len(message.get("body", b""))
            return message

        method = scope["method"]
        try:
            await self.app(scope, receiving if method in ("POST", "PUT", "PATCH") else receive, sending)
        finally:
            self.record(path, method, state[0] or 500, state[1], state[2], perf_counter() - started)

    def record(self, path: str, method: str, status: int, sent: int, received: int, seconds: float) -> None:
        try:
            kind = self._kinds.get(path)
            if kind is None:
                kind = self.kind_of(path)
                if len(self._kinds) >= 4096:  # paths name repositories: unbounded, so the memo is cleared, not grown
                    self._kinds.clear()
                self._kinds[path] = kind
            self.count((kind, method if method in METHODS else "other", status), sent, received, seconds)
        except Exception:
            log.warning("a request could not be counted", exc_info=True)

    def count(self, key: tuple[str, str, int], sent: int, received: int, seconds: float) -> None:
        """One request of `key` (kind, method, status): also called by the manifest fast path, outside this layer,
        for its own answers (it knows their key in advance)."""
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = [0.0] * (4 + len(_BOUNDS))
        entry[0] += 1
        entry[1] += seconds
        entry[2] += sent
        entry[3] += received
        entry[4 + bisect_left(_BOUNDS, seconds)] += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Move what this process counted into the shared (multiprocess) values."""
        self._timer = None
        pending, self._pending = self._pending, {}
        try:
            for (kind, method, status), entry in pending.items():
                REQUESTS.labels(kind, method, str(status)).inc(entry[0])
                latency = LATENCY.labels(kind, method)
                latency._sum.inc(entry[1])  # what observe() does, for many observations at once
                for i, n in enumerate(entry[4:]):
                    if n:
                        latency._buckets[i].inc(n)
                if entry[2]:
                    BYTES_OUT.labels(kind).inc(entry[2])
                if entry[3]:
                    BYTES_IN.labels(kind).inc(entry[3])
        except Exception:
            log.warning("request counts could not be written", exc_info=True)

    def _lifespan(self, send: Any) -> Callable[[Any], Awaitable[None]]:
        async def sending(message: Any) -> None:
            if self.counting and message["type"] == "lifespan.startup.complete":
                count_safely(WORKERS.inc)
            elif self.counting and message["type"] == "lifespan.shutdown.complete":
                if self._timer is not None:
                    self._timer.cancel()
                self.flush()
                count_safely(WORKERS.dec)
            await send(message)
        return sending

    async def special(self, path: str, scope: Any, send: Any) -> None:
        if path == "/healthz":
            await _answer(scope, send, 200, b'{"status":"up"}')
        elif path == "/readyz":
            reason = await self.readiness.check()
            if reason is None:
                await _answer(scope, send, 200, b'{"status":"ready"}')
            else:
                await _answer(scope, send, 503, b'{"status":"not-ready","reason":"' + reason.encode() + b'"}')
        elif self.registry is not None and (self.public or self._local(scope)):
            registry = self.registry
            self.flush()  # this worker's own counts are current; the others' at most FLUSH_S old
            body = await anyio.to_thread.run_sync(lambda: exposition(registry))
            await _answer(scope, send, 200, body, CONTENT_TYPE_LATEST.encode())
        else:  # not here, or not for this client: nothing says that it exists
            await _answer(scope, send, 404, b'{"errors":[{"code":"NOT_FOUND","message":"not found"}]}')

    @staticmethod
    def _local(scope: Any) -> bool:
        client = scope.get("client")
        if not client or not _loopback(str(client[0])):
            return False
        return not any(key in _PROXY_HEADERS for key, _ in scope["headers"])
