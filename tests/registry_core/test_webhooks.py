"""Webhook delivery decisions (registry_core/webhooks.py) against a model: which event is next, what a failed try
does, when an event is given up, what a replay sends, and who may record a result (the lease)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import BlobStore
from registry_core import events as ev
from registry_core.events import Outbox, compat_envelope
from registry_core.webhooks import FORMATS, RetryPolicy, WebhookError, Webhooks
from tests.conftest import FakeClock, StoreFactory

TYPES = (ev.MANIFEST_PUSHED, ev.TAG_CREATED, ev.GRANT_CHANGED)
POLICY = RetryPolicy(base=1.0, cap=8.0, limit=3, timeout=1.0)


def append(store: BlobStore, outbox: Outbox, kind: str, repo: str) -> None:
    with store.index.write() as txn:
        outbox.append(txn, kind, repository=repo, project="syn1", subject=f"{repo}:v1", actor="alice",
                      data={"tag": "v1", "digest": "sha256:" + "0" * 64, "mediaType": "m", "size": 1},
                      time=store.clock())


def drive(hooks: Webhooks, clock: FakeClock, outcome: Callable[[int], bool], draws: list[float],
          batch: int) -> list[int]:
    """Deliver to endpoint "e" until caught up as adapters/delivery.py does: up to `batch` events per look, the
    cursor kept in memory and recorded now and then; the seq of every try."""
    return drive_batched(hooks, clock, outcome, draws, batch)


def drive_batched(hooks: Webhooks, clock: FakeClock, outcome: Callable[[int], bool], draws: list[float],
                  batch: int) -> list[int]:
    tries: list[int] = []
    cursor = looks = 0
    assert hooks.acquire("e", "h", 60.0)
    while True:
        looks += 1
        if looks % 3 == 0:  # recorded now and then, not after every event
            assert hooks.acknowledge("e", "h", cursor)
        found = hooks.next_batch("e", "h", cursor, batch)
        assert found is not None
        if not found.works:
            if found.through is None:
                assert hooks.acknowledge("e", "h", cursor)
                return tries
            cursor = max(cursor, found.through)
            continue
        clock.now = max(clock.now, found.works[0].not_before)
        for work in found.works:
            assert work.event is not None
            tries.append(work.event.seq)
            if outcome(work.event.seq):
                if work.replayed:
                    assert hooks.delivered("e", "h", work.event, True)
                else:
                    cursor = max(cursor, work.event.seq)
                continue
            assert hooks.acknowledge("e", "h", cursor)  # what went through before the failure
            state = hooks.failed("e", "h", work.event, work.replayed, "HTTP 500", POLICY,
                                 draws[len(tries) % len(draws)])
            assert state is not None
            cursor = max(cursor, state.cursor)
            break
        else:
            cursor = max(cursor, found.through or 0)


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.tuples(st.sampled_from(TYPES), st.sampled_from(("syn1/a", "syn1/b"))), max_size=12),
       wanted=st.sets(st.sampled_from(TYPES)), fmt=st.sampled_from(FORMATS),
       outcomes=st.lists(st.booleans(), min_size=1, max_size=20),
       draws=st.lists(st.floats(0, 0.999), min_size=1, max_size=5), batch=st.sampled_from((1, 3, 100)))
def test_delivery_follows_the_model(store_factory: StoreFactory, kinds: list[tuple[str, str]], wanted: set[str],
                                    fmt: str, outcomes: list[bool], draws: list[float], batch: int) -> None:
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as root, store_factory(root, clock=clock) as store:
        outbox = Outbox(store)
        append(store, outbox, ev.MANIFEST_PUSHED, "syn1/a")  # before the endpoint: never sent to it
        hooks = Webhooks(store, outbox)
        hooks.add("e", "http://127.0.0.1:9/", events=tuple(sorted(wanted)), format=fmt)
        for kind, repo in kinds:
            append(store, outbox, kind, repo)
        events = outbox.after(1, 100)

        # the model: each wanted event in seq order, tried until a success or POLICY.limit failures
        expected_tries: list[int] = []
        dead: list[int] = []
        turn = 0
        for event in events:
            if wanted and event.type not in wanted or fmt == "compat" and not compat_envelope([event])["events"]:
                continue
            for attempt in range(1, POLICY.limit + 1):
                expected_tries.append(event.seq)
                success = outcomes[turn % len(outcomes)]
                turn += 1
                if success:
                    break
                if attempt == POLICY.limit:
                    dead.append(event.seq)

        plan = iter(outcomes * (len(expected_tries) + 1))
        assert drive(hooks, clock, lambda _: next(plan), draws, batch) == expected_tries
        assert [letter.seq for letter in hooks.dead("e")] == dead
        assert all(letter.attempts == POLICY.limit for letter in hooks.dead("e"))
        state = hooks.state("e")
        assert state is not None and state.cursor == (events[-1].seq if events else 1)

        # replay: the dead letters are sent again, in order, and leave the list when acknowledged
        assert hooks.replay("e") == len(dead)
        assert drive(hooks, clock, lambda _: True, draws, batch) == dead
        assert hooks.dead("e") == []


def test_only_the_lease_holder_delivers_and_records(clock: FakeClock,
                                                    make_store: Callable[..., BlobStore]) -> None:
    store = make_store()
    outbox = Outbox(store)
    hooks = Webhooks(store, outbox)
    hooks.add("e", "https://example.org/hook")
    append(store, outbox, ev.MANIFEST_PUSHED, "syn1/a")
    assert hooks.acquire("e", "a", 10.0)
    assert not hooks.acquire("e", "b", 10.0)  # a's lease runs
    found = hooks.next_batch("e", "a", 0, 1)
    assert found is not None and found.works
    work = found.works[0]
    assert work.event is not None
    assert hooks.next_batch("e", "b", 0, 1) is None
    clock.advance(11)  # a paused past its lease: b takes over
    assert hooks.acquire("e", "b", 10.0)
    assert not hooks.delivered("e", "a", work.event, False)  # a's late result changes nothing
    assert hooks.failed("e", "a", work.event, False, "x", POLICY, 0.5) is None
    assert hooks.next_batch("e", "a", 0, 1) is None
    state = hooks.state("e")
    assert state is not None and state.cursor < work.event.seq and state.attempts == 0
    assert hooks.delivered("e", "b", work.event, False)
    hooks.remove("e")
    assert hooks.next_batch("e", "b", 0, 1) is None and not hooks.acquire("e", "b", 10.0)


def test_endpoint_configuration_is_checked_and_secrets_are_not_shown(make_store: Callable[..., BlobStore]) -> None:
    hooks = Webhooks(make_store())
    endpoint = hooks.add("ci", "https://example.org/hook", authorization="Bearer very-secret", secret="hush")
    assert endpoint.shown()["authorization"] == "Bearer ***" and endpoint.shown()["secret"] == "set"
    assert "very-secret" not in repr(endpoint.shown()) and "hush" not in repr(endpoint.shown())
    for bad in ("ftp://example.org/", "http:///nohost", "https://u:p@example.org/"):
        with pytest.raises(WebhookError):
            hooks.add("x", bad)
    with pytest.raises(WebhookError, match="already exists"):
        hooks.add("ci", "https://example.org/other")
    with pytest.raises(WebhookError, match="one non-empty line"):
        hooks.add("y", "https://example.org/", authorization="Bearer a\r\nX-Injected: 1")
