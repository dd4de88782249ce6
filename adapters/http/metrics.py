"""Prometheus metrics, and the HTTP edge that counts every request and answers /metrics, /healthz and /readyz.

Where things are counted: every request once, here, in `Observed` (the outermost ASGI layer, so the manifest fast
path is counted too): by endpoint kind, method and status, with its latency and its bytes. Domain events (uploads,
manifests, tags, tokens, the upload reaper) are counted where they happen in the adapter layer, with the counters
defined below; registry_core and cas know nothing of Prometheus. What the store holds (blobs, bytes, open uploads,
the index) is read when scraped (`StoreCollector`), never counted.

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

import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterator
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
GC_PASSES = Counter("berth_gc_passes", "Collection passes run by the server (the upload reaper: `uploads`)",
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

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def count_safely(action: Callable[[], object]) -> None:
    """A metric update must never fail a request (e.g. the metrics directory's disk is full)."""
    try:
        action()
    except Exception:  # counted nowhere, logged: the request goes on
        log.warning("a metric could not be updated", exc_info=True)


# -- what the store holds, read at scrape time ------------------------------------------------------------------------
class StoreCollector(Collector):
    """Gauges of the store. The counts the index keeps (open uploads, blob records) are read at every scrape (O(1));
    the sizes need a walk over every blob record (O(n)), kept for `ttl` seconds."""

    def __init__(self, store: Callable[[], BlobStore], ttl: float = 30.0) -> None:
        self.store = store
        self.ttl = ttl
        self._walked: tuple[float, dict[str, float]] | None = None

    def _walk(self, store: BlobStore) -> dict[str, float]:
        found = {"files": 0.0, "file_bytes": 0.0, "inline": 0.0, "inline_bytes": 0.0, "waiting": 0.0,
                 "waiting_bytes": 0.0}
        with store.index.read() as txn:
            for _, raw in txn.scan(store.tables.blobs):
                record = BlobRecord.unpack(raw)
                if record.state not in STORED_STATES:
                    continue
                where = "inline" if record.state == STATE_INLINE else "files"
                found[where] += 1
                found[where + "_bytes" if where == "inline" else "file_bytes"] += record.size
                if record.refcount == 0:
                    found["waiting"] += 1
                    found["waiting_bytes"] += record.size
        return found

    def collect(self) -> Iterator[Metric]:
        try:
            store = self.store()
            now = time.monotonic()
            if self._walked is None or now - self._walked[0] > self.ttl:
                self._walked = (now, self._walk(store))
            walked = self._walked[1]
            open_uploads = store.index.entries(store.tables.uploads)
            used, mapped = store.index.used_bytes(), store.index.map_size
        except Exception:  # a store that cannot be read shows as missing gauges (and /readyz says why)
            log.warning("store metrics could not be read", exc_info=True)
            return
        blobs = GaugeMetricFamily("berth_store_blobs", "Blobs stored, in files or inline in the index "
                                  f"(sizes refreshed every {self.ttl:.0f} s)", labels=["where"])
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
        yield GaugeMetricFamily("berth_index_used_bytes", "Bytes of the index map in use", value=used)
        yield GaugeMetricFamily("berth_index_map_bytes", "Size of the index map (grown as needed)", value=mapped)


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
    """The outermost ASGI layer: /healthz, /readyz and (when enabled) /metrics, and the count of every request."""

    def __init__(self, app: ASGIApp, kind_of: Callable[[str], str], readiness: Readiness,
                 store: Callable[[], BlobStore], *, expose: str | None, public: bool) -> None:
        self.app = app
        self.kind_of = kind_of
        self.readiness = readiness
        self.counting = expose is not None
        self.serve_here = expose == "port"
        self.public = public
        self.registry = exposition_registry(store) if self.serve_here else None
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.counting:
                count_safely(WORKERS.inc)
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in ("/healthz", "/readyz", "/metrics") and scope["method"] in ("GET", "HEAD"):
            await self.special(path, scope, send)
            return
        if not self.counting:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = [0, 0, 0]  # status, bytes out, bytes in
        method = scope["method"]

        async def sending(message: Any) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                state[1] += len(message.get("body", b""))
            elif kind == "http.response.start":
                state[0] = message["status"]
            elif kind == "http.response.pathsend":  # a blob file sent by the server itself: its length said it
                for key, value in state_headers[0]:
                    if key.lower() == b"content-length":
                        state[1] += int(value)
            if kind == "http.response.start":
                state_headers[0] = message.get("headers", ())
            await send(message)

        state_headers: list[Any] = [()]

        async def receiving() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                state[2] += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, receiving if method in ("POST", "PUT", "PATCH") else receive, sending)
        finally:
            self.record(path, method, state, time.perf_counter() - started)

    def record(self, path: str, method: str, state: list[int], seconds: float) -> None:
        try:
            kind = self.kind_of(path)
            child_key = (kind, method, state[0])
            children = self._children.get(child_key)
            if children is None:
                label = method if method in METHODS else "other"
                children = (REQUESTS.labels(kind, label, str(state[0] or 499)), LATENCY.labels(kind, label),
                            BYTES_OUT.labels(kind), BYTES_IN.labels(kind))
                if len(self._children) < 4096:  # bounded anyway (kinds x methods x statuses); a guard all the same
                    self._children[child_key] = children
            requests, latency, out, received = children
            requests.inc()
            latency.observe(seconds)
            if state[1]:
                out.inc(state[1])
            if state[2]:
                received.inc(state[2])
        except Exception:
            log.warning("a request could not be counted", exc_info=True)

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
