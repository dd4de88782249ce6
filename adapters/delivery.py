"""Webhook delivery: the loop every `berth serve` worker runs beside the HTTP app, POSTing the outbox to endpoints.

registry_core/webhooks.py decides (which event is next, what a failure does, who holds an endpoint's lease); this
module does the I/O. Each worker runs one `Delivery`: every POLL seconds it looks at the configured endpoints and
takes the lease of any that no process is delivering to, then runs one task per endpoint it holds. So a slow or dead
endpoint delays only its own task (never another endpoint, never a push: the write path only appends to the
outbox), and with several workers or nodes each endpoint has one deliverer at a time. A deliverer that dies leaves
its leases to expire (LEASE seconds); another worker then takes over at the endpoint's cursor.

Every index call runs in a worker thread (anyio.to_thread): a write transaction waits for LMDB's writer lock, which
a push may hold, and the event loop serves requests meanwhile.

The settings below are overridable through the environment (the tests use short ones):
    BERTH_WEBHOOK_RETRY_BASE, BERTH_WEBHOOK_RETRY_CAP, BERTH_WEBHOOK_RETRY_LIMIT, BERTH_WEBHOOK_TIMEOUT (seconds,
    tries), BERTH_WEBHOOK_LEASE, BERTH_WEBHOOK_POLL (seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import socket
import time
import uuid

import anyio.to_thread

from adapters.hookclient import HookClient, ProtocolError
from cas import StoreUnavailable
from registry_core.events import (
    CLOUDEVENTS_BATCH_MEDIA_TYPE,
    CLOUDEVENTS_MEDIA_TYPE,
    COMPAT_MEDIA_TYPE,
    cloudevent,
    compat_envelope,
)
from registry_core.registry import Registry
from registry_core.webhooks import COMPAT, Endpoint, RetryPolicy, Webhooks, Work

log = logging.getLogger("berth.webhooks")

# A lease outlives several deliveries: it is renewed when less than half of it is left, so at most one index write
# per LEASE/2 seconds per endpoint goes to it, and a dead holder's endpoints wait at most LEASE before another worker
# takes them over. It must exceed the request timeout, or a lease could run out during one POST.
LEASE = 30.0
POLL = 0.5  # seconds between looks for new events and new endpoints: the delivery latency of an idle endpoint
# Progress is kept in memory and recorded (one durable index write, which waits for LMDB's single writer and an
# fsync, as every push does) at most every FLUSH seconds and when caught up or before a failure is recorded, instead
# of once per event: under a stream of pushes, delivery then costs the write path a few commits a second. The price:
# a process killed (kill -9) sends again, after the restart or from another worker, the events acknowledged in its
# last FLUSH seconds (at most BATCH per look): at least once, as before, with duplicates known by their `id`.
FLUSH = 0.25
BATCH = 100  # events read per look; the compat format sends them in one envelope (Distribution batches too)
SIGNATURE_HEADER = "Berth-Signature"  # "sha256=" + hex HMAC-SHA256 of the body, as GitHub's X-Hub-Signature-256
USER_AGENT = "Berth-Webhooks/1"


def _env(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def policy_from_env() -> RetryPolicy:
    default = RetryPolicy()
    return RetryPolicy(base=_env("BERTH_WEBHOOK_RETRY_BASE", default.base),
                       cap=_env("BERTH_WEBHOOK_RETRY_CAP", default.cap),
                       limit=int(_env("BERTH_WEBHOOK_RETRY_LIMIT", default.limit)),
                       timeout=_env("BERTH_WEBHOOK_TIMEOUT", default.timeout))


def signature(secret: str, body: bytes) -> str:
    """The Berth-Signature value: a receiver recomputes it over the raw body with the shared secret and compares in
    constant time (the scheme of GitHub's X-Hub-Signature-256)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Delivery:
    def __init__(self, registry: Registry, public_url: str | None = None) -> None:
        self.webhooks = Webhooks(registry.store, registry.outbox)
        self.policy = policy_from_env()
        self.lease = max(_env("BERTH_WEBHOOK_LEASE", LEASE), 2 * self.policy.timeout + 1)
        self.poll = _env("BERTH_WEBHOOK_POLL", POLL)
        self.instance = uuid.uuid4().hex
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{self.instance[:8]}"
        self.host = socket.gethostname()
        self.public_url = public_url or ""
        self.source = public_url.rstrip("/") if public_url else f"urn:berth:{self.host}"  # CloudEvents `source`
        self._leased_until: dict[str, float] = {}  # our own view of each held lease's expiry (time.time())

    async def run(self) -> None:
        """Until cancelled: take free endpoints, deliver to each in a task of its own."""
        tasks: dict[str, asyncio.Task[None]] = {}
        client = HookClient(USER_AGENT)
        try:
            while True:
                try:
                    for endpoint in await anyio.to_thread.run_sync(self.webhooks.endpoints):
                        running = tasks.get(endpoint.name)
                        if (running is None or running.done()) and await self._renew(endpoint.name, force=True):
                            tasks[endpoint.name] = asyncio.create_task(self._deliver(client, endpoint.name))
                except StoreUnavailable as exc:  # an engine down: one line a poll, not a traceback each time
                    log.warning("webhook delivery: looking for endpoints failed: %s", exc)
                except Exception:  # the index said no (a full disk...): look again later, never stop serving
                    log.exception("webhook delivery: looking for endpoints failed")
                await asyncio.sleep(self.poll)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            held = [name for name, task in tasks.items() if name in self._leased_until]
            with contextlib.suppress(Exception):  # an unreleased lease only expires later
                await anyio.to_thread.run_sync(self._release, held)
            await client.close()

    def _release(self, names: list[str]) -> None:
        for name in names:
            self.webhooks.release(name, self.holder)

    async def _renew(self, name: str, force: bool = False) -> bool:
        """Hold the endpoint's lease for the next step: renewed when less than half is left. False: lost (or the
        endpoint is gone), and this task must stop."""
        if not force and self._leased_until.get(name, 0.0) - time.time() > self.lease / 2:
            return True
        now = time.time()
        if await anyio.to_thread.run_sync(self.webhooks.acquire, name, self.holder, self.lease):
            self._leased_until[name] = now + self.lease
            return True
        self._leased_until.pop(name, None)
        return False

    async def _deliver(self, client: HookClient, name: str) -> None:
        progress = _Progress()
        try:
            while await self._step(client, name, progress):
                pass
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # shutting down: record what was sent (fewer sent twice)
                await asyncio.shield(self._flush(name, progress))
            raise
        except Exception:  # a bug or an index failure: the lease runs out and a worker picks the endpoint up again
            log.exception("webhook %s: delivery stopped", name)
        self._leased_until.pop(name, None)

    async def _flush(self, name: str, progress: _Progress) -> bool:
        """Record the progress kept in memory (one index write); False when the lease was lost."""
        progress.flushed = time.monotonic()
        if progress.cursor <= progress.committed:
            return True
        through = progress.cursor
        if not await anyio.to_thread.run_sync(self.webhooks.acknowledge, name, self.holder, through):
            return False
        progress.committed = through
        return True

    async def _reached(self, name: str, progress: _Progress, seq: int) -> bool:
        """Everything up to `seq` is acknowledged (or unwanted): recorded at most every FLUSH seconds."""
        progress.cursor = max(progress.cursor, seq)
        if time.monotonic() - progress.flushed >= FLUSH:
            return await self._flush(name, progress)
        return True

    async def _step(self, client: HookClient, name: str, progress: _Progress) -> bool:
        """One step of an endpoint's delivery; False when this task should stop (lease lost, endpoint removed)."""
        if not await self._renew(name):
            return False
        batch = await anyio.to_thread.run_sync(self.webhooks.next_batch, name, self.holder, progress.cursor, BATCH)
        if batch is None:
            return False
        if not batch.works:
            if batch.through is not None:  # events it does not want
                return await self._reached(name, progress, batch.through)
            if not await self._flush(name, progress):  # caught up: record where, then look again later
                return False
            await asyncio.sleep(self.poll)
            return True
        first = batch.works[0]
        wait = first.not_before - time.time()
        if wait > 0:  # backing off: sleep in slices, renewing the lease between them
            await asyncio.sleep(min(wait, self.lease / 3))
            return True
        if first.replayed:
            error = await self._post(client, first.endpoint, [first])
            if error is None:
                assert first.event is not None
                return await anyio.to_thread.run_sync(self.webhooks.delivered, name, self.holder, first.event, True)
            return await self._failed(name, progress, first, error)
        # compat carries {"events": [...]}, CloudEvents' batched mode [...]: the batch in one POST. CloudEvents
        # structured mode (the default): one event per POST.
        together = first.endpoint.format == COMPAT or first.endpoint.batch
        groups = [list(batch.works)] if together else [[work] for work in batch.works]
        for group in groups:
            if not await self._renew(name):  # a long batch to a slow receiver outlives half a lease
                return False
            error = await self._post(client, first.endpoint, group)
            if error is not None:
                return await self._failed(name, progress, group[0], error)
            last = group[-1].event
            assert last is not None
            if not await self._reached(name, progress, last.seq):
                return False
        return batch.through is None or await self._reached(name, progress, batch.through)

    async def _failed(self, name: str, progress: _Progress, work: Work, error: str) -> bool:
        event = work.event
        assert event is not None
        if not await self._flush(name, progress):  # the events before this one went through
            return False
        state = await anyio.to_thread.run_sync(self.webhooks.failed, name, self.holder, event, work.replayed, error,
                                               self.policy, random.random())
        if state is None:
            return False
        if state.current == event.seq:
            log.info("webhook %s: event %d failed (%s), try %d of %d in %.1f s", name, event.seq, error,
                     state.attempts + 1, self.policy.limit, max(0.0, state.next_try - time.time()))
        else:
            progress.cursor = progress.committed = max(progress.committed, state.cursor)
            log.warning("webhook %s: event %d dead-lettered after %d tries (%s); `berth webhook replay %s --seq %d` "
                        "sends it again", name, event.seq, self.policy.limit, error, name, event.seq)
        return True

    def body(self, endpoint: Endpoint, works: list[Work]) -> tuple[bytes, str]:
        """One POST's body: the compat envelope of all of `works`, or the CloudEvent of the single one."""
        events = [work.event for work in works if work.event is not None]
        if endpoint.format == COMPAT:
            envelope = compat_envelope(events, source_addr=self.host, instance_id=self.instance,
                                       url_base=self.public_url)
            return json.dumps(envelope).encode(), COMPAT_MEDIA_TYPE
        if endpoint.batch:
            return (json.dumps([cloudevent(event, self.source) for event in events]).encode(),
                    CLOUDEVENTS_BATCH_MEDIA_TYPE)
        assert len(events) == 1
        return json.dumps(cloudevent(events[0], self.source)).encode(), CLOUDEVENTS_MEDIA_TYPE

    async def _post(self, client: HookClient, endpoint: Endpoint, works: list[Work]) -> str | None:
        """POST the events: None on a 2xx answer, else what went wrong (never the request's headers: the
        Authorization value must not reach a log)."""
        body, media_type = self.body(endpoint, works)
        headers = {"Content-Type": media_type}
        if endpoint.secret:
            headers[SIGNATURE_HEADER] = signature(endpoint.secret, body)
        if endpoint.authorization:
            headers["Authorization"] = endpoint.authorization
        try:
            # A total deadline, not httpx's per-read one: a receiver trickling its answer still fails in time.
            async with asyncio.timeout(self.policy.timeout):
                status = await client.post(endpoint.url, body, headers)
        except TimeoutError:
            return f"no answer within {self.policy.timeout:g} s"
        except (OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"


class _Progress:
    """An endpoint deliverer's own view of its cursor: `cursor` acknowledged, `committed` recorded in the index."""
    __slots__ = ("committed", "cursor", "flushed")

    def __init__(self) -> None:
        self.cursor = 0
        self.committed = 0
        self.flushed = time.monotonic()


async def deliver_events(registry: Registry, public_url: str | None = None) -> None:
    """The lifespan task of `berth serve` (adapters/http/app.py)."""
    await Delivery(registry, public_url).run()
