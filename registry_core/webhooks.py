"""Webhook endpoints and their delivery state: what to send where, how far each endpoint got, what failed for good.

The outbox (events.py) holds every event in `seq` order; this module decides, per endpoint, which event is next,
what a delivery attempt's outcome does to the endpoint's state, and which process may deliver to it. The I/O (HTTP
POSTs, sleeping, the loop) lives in adapters/delivery.py.

At least once, in order: an endpoint's cursor is the last `seq` it acknowledged (or that it does not want); the next
event is the first one after the cursor that passes its filter, and nothing after it is sent before it succeeds or
is given up (dead-lettered). So each repository's events reach an endpoint in the order they were committed. An
acknowledgement that is lost (the process dies after the POST, before the cursor moves) means the event is sent
again: receivers recognise duplicates by the event's `id`.

One deliverer per endpoint: a lease (holder id + expiry) in the index, renewed while delivering. Every Berth process
runs the delivery loop; whoever holds an endpoint's lease delivers to it, and when a process dies its leases expire
and another process takes them over where the cursor stands. A result is recorded only while its lease is still
held (`_held`), so a process that lost its lease (paused past the expiry) cannot move a cursor another one owns.

Tables (see schema.py for the registry's others):
    webhooks         name -> JSON Endpoint
    webhook_state    name -> JSON DeliveryState           (absent: nothing attempted since the endpoint was added)
    webhook_leases   name -> JSON {"holder", "until"}
    webhook_dead     name \\0 u64 big-endian seq -> JSON DeadLetter   events given up, kept for `webhook replay`
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from cas import BlobStore
from cas.index import Transaction, WriteTransaction

from . import schema
from .events import EVENT_TYPES, Event, Outbox, compat_envelope
from .schema import WEBHOOK_TABLES

TABLES = WEBHOOK_TABLES  # schema.py declares them

CLOUDEVENTS = "cloudevents"  # CloudEvents 1.0 structured mode: one event per POST, application/cloudevents+json
COMPAT = "compat"  # the classic Distribution notification envelope {"events": [...]}
FORMATS = (CLOUDEVENTS, COMPAT)

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SCAN_BATCH = 32  # events read per look for the next one an endpoint wants (a run it filters out is skipped)


class WebhookError(ValueError):
    """A webhook command that cannot be done (unknown endpoint, invalid URL...): its message says why."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing delivery is tried again. Exponential backoff with "full jitter" (AWS Architecture Blog,
    "Exponential Backoff and Jitter", 2015): the wait before try n+1 is uniform in [0, min(cap, base * 2**n)], which
    spreads the retries of many failing deliveries instead of having them arrive in waves."""
    base: float = 1.0  # seconds: the first retry comes within a second (a receiver restarting)
    cap: float = 300.0  # 5 min: an endpoint that is down for hours is still tried every few minutes
    limit: int = 10  # tries of one event before it is dead-lettered: with the values above, ~20 min on average
    timeout: float = 10.0  # seconds a receiver has to answer (GitHub's webhooks allow 10 s as well)

    def wait(self, attempts: int, draw: float) -> float:
        """Seconds before the next try after `attempts` failed ones; `draw` is uniform in [0, 1)."""
        return draw * min(self.cap, self.base * 2.0 ** min(attempts - 1, 62))


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    authorization: str | None = None  # a static Authorization header value: stored, never shown or logged in full
    secret: str | None = None  # HMAC-SHA256 key for the Berth-Signature header
    events: tuple[str, ...] = ()  # event types sent; empty: every type
    format: str = CLOUDEVENTS
    created: float = 0.0
    batch: bool = False  # cloudevents: several events per POST, JSON batch mode (application/cloudevents-batch+json)

    def wants(self, event: Event) -> bool:
        if self.events and event.type not in self.events:
            return False
        # compat: an event with no registry-notification equivalent (a grant changed...) has no envelope entry
        return self.format != COMPAT or bool(compat_envelope([event])["events"])

    def shown(self) -> dict[str, Any]:
        """What may be printed: the Authorization value by its scheme only, the secret by its presence only."""
        scheme = None
        if self.authorization is not None:
            first, space, _ = self.authorization.partition(" ")
            scheme = f"{first} ***" if space and len(first) <= 16 else "***"
        return {"name": self.name, "url": self.url, "format": self.format + ("-batch" if self.batch else ""),
                "events": list(self.events) or "all",
                "authorization": scheme, "secret": "set" if self.secret else None}


@dataclass(frozen=True, slots=True)
class DeliveryState:
    cursor: int  # the last seq delivered (or not wanted, or given up)
    current: int = 0  # the seq that `attempts` and `next_try` are about (0: none yet)
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    endpoint: str
    seq: int
    error: str
    attempts: int
    time: float
    replay: bool = False  # re-queued by `webhook replay`: delivered before the cursor's next event


@dataclass(frozen=True, slots=True)
class Work:
    """One event an endpoint's deliverer sends next (not before `not_before`)."""
    endpoint: Endpoint
    event: Event
    attempts: int  # failed tries of this event so far
    not_before: float
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    """Several steps at once (`Webhooks.next_batch`): send `works` in order; once all of them are acknowledged, the
    cursor may move to `through` (the last event looked at, wanted or not). No works and `through` None: caught up."""
    works: tuple[Work, ...]
    through: int | None


def _dead_key(name: str, seq: int) -> bytes:
    return name.encode() + b"\0" + struct.pack(">Q", seq)


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if "\0" in url:
        raise WebhookError("a webhook URL cannot contain NUL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"a webhook URL is http:// or https:// with a host, not {url[:100]!r}")
    if parts.username is not None or parts.password is not None:
        raise WebhookError("a webhook URL cannot carry credentials (user:password@): it is shown in listings and "
                           "logs; use --authorization instead")
    return url


class Webhooks:
    def __init__(self, store: BlobStore, outbox: Outbox | None = None) -> None:
        self._store = store
        self._outbox = outbox or Outbox(store)
        schema.declare(store.index)
        self._endpoints, self._state, self._leases, self._dead = (store.index.table(name) for name in TABLES)

    # -- configuration --------------------------------------------------------------------------------------------
    def add(self, name: str, url: str, *, authorization: str | None = None, secret: str | None = None,
            events: tuple[str, ...] = (), format: str = CLOUDEVENTS, batch: bool = False) -> Endpoint:
        """A new endpoint. It receives the events committed from now on (the feed serves the ones before)."""
        if not _NAME.fullmatch(name):
            raise WebhookError(f"invalid webhook name {name[:70]!r}: 1..64 of a-z 0-9 . _ -, starting with a "
                               "letter/digit")
        unknown = [t for t in events if t not in EVENT_TYPES]
        if unknown:
            raise WebhookError(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
        if format not in FORMATS:
            raise WebhookError(f"format is {' or '.join(FORMATS)}, not {format!r}")
        if batch and format != CLOUDEVENTS:
            raise WebhookError("--batch is for the cloudevents format (compat envelopes carry several events anyway)")
        if authorization is not None and (not authorization.strip() or any(c in authorization for c in "\r\n\0")):
            raise WebhookError("an Authorization value is one non-empty line")
        if secret is not None and "\0" in secret:
            raise WebhookError("a secret cannot contain NUL")
        endpoint = Endpoint(name, check_url(url), authorization, secret or None, tuple(dict.fromkeys(events)),
                            format, self._store.clock(), batch)
        # Read before the write: an event committed in between is simply the endpoint's first (or not); no loss.
        cursor = self._outbox.last_seq()

        def work(txn: WriteTransaction) -> None:
            if txn.get(self._endpoints, name.encode()) is not None:
                raise WebhookError(f"webhook {name} already exists (`berth webhook remove {name}` first)")
            txn.put(self._endpoints, name.encode(), json.dumps(asdict(endpoint)).encode())
            txn.put(self._state, name.encode(), json.dumps(asdict(DeliveryState(cursor))).encode())
            txn.delete(self._leases, name.encode())
        self._store.index.transact(work)
        return endpoint

    def remove(self, name: str) -> int:
        """Drop the endpoint with its state and dead letters (how many there were); a deliverer stops at its next
        step."""
        def work(txn: WriteTransaction) -> int:
            if not txn.delete(self._endpoints, name.encode()):
                raise WebhookError(f"no webhook {name} (see `berth webhook list`)")
            txn.delete(self._state, name.encode())
            txn.delete(self._leases, name.encode())
            dead = list(txn.keys(self._dead, name.encode() + b"\0"))
            for key in dead:
                txn.delete(self._dead, key)
            return len(dead)
        return self._store.index.transact(work)

    def endpoint(self, name: str, txn: Transaction | None = None) -> Endpoint | None:
        if txn is None:
            with self._store.index.read() as own:
                return self.endpoint(name, own)
        raw = txn.get(self._endpoints, name.encode())
        return _endpoint(raw) if raw is not None else None

    def endpoints(self) -> list[Endpoint]:
        with self._store.index.read() as txn:
            return [_endpoint(v) for _, v in txn.scan(self._endpoints)]

    def state(self, name: str, txn: Transaction | None = None) -> DeliveryState | None:
        if txn is None:
            with self._store.index.read() as own:
                return self.state(name, own)
        raw = txn.get(self._state, name.encode())
        return DeliveryState(**json.loads(raw)) if raw is not None else None

    # -- dead letters ---------------------------------------------------------------------------------------------
    def dead(self, name: str | None = None) -> list[DeadLetter]:
        with self._store.index.read() as txn:
            if name is not None and txn.get(self._endpoints, name.encode()) is None:
                raise WebhookError(f"no webhook {name} (see `berth webhook list`)")
            prefix = name.encode() + b"\0" if name is not None else b""
            return [DeadLetter(**json.loads(v)) for _, v in txn.scan(self._dead, prefix)]

    def replay(self, name: str, seq: int | None = None) -> int:
        """Re-queue the endpoint's dead letters (one, or all when `seq` is None): its deliverer sends them, in seq
        order and with fresh tries, before the next event after its cursor. How many were re-queued."""
        def work(txn: WriteTransaction) -> int:
            if txn.get(self._endpoints, name.encode()) is None:
                raise WebhookError(f"no webhook {name} (see `berth webhook list`)")
            if seq is not None:
                raw = txn.get(self._dead, _dead_key(name, seq))
                if raw is None:
                    raise WebhookError(f"webhook {name} has no dead letter with seq {seq} (see `berth webhook dead "
                                       f"{name}`)")
                found = [(_dead_key(name, seq), raw)]
            else:
                found = list(txn.scan(self._dead, name.encode() + b"\0"))
            for key, raw in found:
                letter = DeadLetter(**json.loads(raw))
                txn.put(self._dead, key, json.dumps(asdict(replace(letter, replay=True))).encode())
            return len(found)
        return self._store.index.transact(work)

    # -- leases ---------------------------------------------------------------------------------------------------
    def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the endpoint's lease for `ttl` seconds: True when `holder` now holds it (it was free,
        expired or already its own), False while another holder's lease runs or the endpoint is gone."""
        with self._store.index.read() as txn:  # every worker asks every POLL: a busy lease costs no write
            raw = txn.get(self._leases, name.encode())
            if raw is not None:
                lease = json.loads(raw)
                if lease["holder"] != holder and lease["until"] > self._store.clock():
                    return False

        def work(txn: WriteTransaction) -> bool:
            if txn.get(self._endpoints, name.encode()) is None:
                return False
            now = self._store.clock()
            raw = txn.get(self._leases, name.encode())
            if raw is not None:
                lease = json.loads(raw)
                if lease["holder"] != holder and lease["until"] > now:
                    return False
            txn.put(self._leases, name.encode(), json.dumps({"holder": holder, "until": now + ttl}).encode())
            return True
        return self._store.index.transact(work)

    def release(self, name: str, holder: str) -> None:
        def work(txn: WriteTransaction) -> None:
            if self._held(txn, name, holder):
                txn.delete(self._leases, name.encode())
        self._store.index.transact(work)

    def _held(self, txn: Transaction, name: str, holder: str) -> bool:
        raw = txn.get(self._leases, name.encode())
        return raw is not None and json.loads(raw)["holder"] == holder

    # -- delivery -------------------------------------------------------------------------------------------------
    def next_batch(self, name: str, holder: str, after: int, limit: int) -> Batch | None:
        """Up to `limit` next steps in one read, as a deliverer that keeps its progress in memory (`after`: the seq
        it got to, beyond the stored cursor) and records it now and then with `acknowledge`. A replayed dead letter
        or an event being retried comes alone, so failures are counted per event. None
        when `holder` no longer holds the lease."""
        with self._store.index.read() as txn:
            endpoint = self.endpoint(name, txn)
            state = self.state(name, txn)
            if endpoint is None or state is None or not self._held(txn, name, holder):
                return None
            for _, raw in txn.scan(self._dead, name.encode() + b"\0"):
                letter = DeadLetter(**json.loads(raw))
                if not letter.replay:
                    continue
                found = self._outbox.after(letter.seq - 1, 1, txn)
                if found and found[0].seq == letter.seq:
                    return Batch((self._work(endpoint, state, found[0], replayed=True),), None)
            events = self._outbox.after(max(state.cursor, after), max(limit, SCAN_BATCH), txn)
        works: list[Work] = []
        through = None
        for event in events:
            if endpoint.wants(event):
                works.append(self._work(endpoint, state, event))
                if works[0].attempts or len(works) >= limit:
                    return Batch((works[0],), None) if works[0].attempts else Batch(tuple(works), event.seq)
            through = event.seq
        return Batch(tuple(works), through)

    def acknowledge(self, name: str, holder: str, through: int) -> bool:
        """Move the cursor to `through`: every event up to it was acknowledged by the endpoint or not wanted by it.
        False: the lease was lost, nothing changed (whoever holds it now sends those events again: at least once)."""
        def work(txn: WriteTransaction) -> bool:
            state = self.state(name, txn)
            if state is None or not self._held(txn, name, holder):
                return False
            if through > state.cursor:
                if state.current and state.current <= through:  # the event being retried went through
                    state = DeliveryState(cursor=through)
                else:
                    state = replace(state, cursor=through)
                txn.put(self._state, name.encode(), json.dumps(asdict(state)).encode())
            return True
        return self._store.index.transact(work)

    @staticmethod
    def _work(endpoint: Endpoint, state: DeliveryState, event: Event, replayed: bool = False) -> Work:
        if state.current == event.seq:
            return Work(endpoint, event, state.attempts, state.next_try, replayed=replayed)
        return Work(endpoint, event, 0, 0.0, replayed=replayed)

    def delivered(self, name: str, holder: str, event: Event, replayed: bool) -> bool:
        """The endpoint acknowledged `event` (a 2xx answer). False: the lease was lost, nothing changed (whoever
        holds it now sends the event again: at least once)."""
        def work(txn: WriteTransaction) -> bool:
            state = self.state(name, txn)
            if state is None or not self._held(txn, name, holder):
                return False
            if replayed:
                txn.delete(self._dead, _dead_key(name, event.seq))
                state = replace(state, current=0, attempts=0, next_try=0.0, last_error="")
            else:
                state = DeliveryState(cursor=max(state.cursor, event.seq))
            txn.put(self._state, name.encode(), json.dumps(asdict(state)).encode())
            return True
        return self._store.index.transact(work)

    def failed(self, name: str, holder: str, event: Event, replayed: bool, error: str, policy: RetryPolicy,
               draw: float) -> DeliveryState | None:
        """A try of `event` failed with `error`: schedule the next try (backoff with jitter, `draw` in [0, 1)), or,
        at the policy's limit, dead-letter it and move on. The new state; None when the lease was lost."""
        error = error.replace("\0", "")[:500]  # no NUL: JSON in PostgreSQL (jsonb) cannot hold one

        def work(txn: WriteTransaction) -> DeliveryState | None:
            state = self.state(name, txn)
            if state is None or not self._held(txn, name, holder):
                return None
            now = self._store.clock()
            attempts = (state.attempts if state.current == event.seq else 0) + 1
            if attempts >= policy.limit:
                letter = DeadLetter(name, event.seq, error, attempts, now)
                txn.put(self._dead, _dead_key(name, event.seq), json.dumps(asdict(letter)).encode())
                cursor = state.cursor if replayed else max(state.cursor, event.seq)
                state = DeliveryState(cursor=cursor, last_error=error)
            else:
                state = replace(state, current=event.seq, attempts=attempts,
                                next_try=now + policy.wait(attempts, draw), last_error=error)
            txn.put(self._state, name.encode(), json.dumps(asdict(state)).encode())
            return state
        return self._store.index.transact(work)


def _endpoint(raw: bytes) -> Endpoint:
    data = json.loads(raw)
    data["events"] = tuple(data["events"])
    return Endpoint(**data)
