"""Portal sign-in sessions (registry_core/sessions.py) against a model: a dict of live sessions and their deadlines."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from cas import BlobStore
from registry_core.sessions import SESSION_LIFETIME, Sessions
from tests.conftest import FakeClock

# Steps: open a session for a user, close the i-th opened one, close every session of a user, let time pass.
steps = st.lists(st.one_of(
    st.tuples(st.just("open"), st.sampled_from(["alice", "bob"]), st.booleans()),
    st.tuples(st.just("close"), st.integers(0, 20), st.none()),
    st.tuples(st.just("close_user"), st.sampled_from(["alice", "bob"]), st.none()),
    st.tuples(st.just("wait"), st.sampled_from([1.0, SESSION_LIFETIME / 2, SESSION_LIFETIME]), st.none()),
), max_size=25)


@settings(max_examples=25, deadline=None)
@given(steps=steps)
def test_sessions_follow_the_model(steps: list[tuple[str, object, object]]) -> None:
    with tempfile.TemporaryDirectory() as root, BlobStore.on_disk(root) as store:
        _run(Sessions(store, FakeClock()), steps)


def _run(sessions: Sessions, steps: list[tuple[str, object, object]]) -> None:
    clock = sessions._clock
    assert isinstance(clock, FakeClock)
    opened: list[tuple[str, str]] = []  # (id, user) in opening order
    live: dict[str, tuple[str, float]] = {}  # the model: id -> (user, expires)
    for step, arg, with_token in steps:
        if step == "open":
            assert isinstance(arg, str)
            session_id, record = sessions.open(arg, "0123456789abcdef" if with_token else None)
            assert record.user == arg and record.expires == clock.now + SESSION_LIFETIME and len(record.csrf) >= 40
            assert session_id not in live  # a new id every time (no fixation)
            opened.append((session_id, arg))
            live[session_id] = (arg, record.expires)
        elif step == "close" and opened:
            assert isinstance(arg, int)
            session_id = opened[arg % len(opened)][0]
            was_live = session_id in live and clock.now < live[session_id][1]
            closed = sessions.close(session_id)
            assert closed or not was_live  # an expired one may already have been pruned
            live.pop(session_id, None)
        elif step == "close_user":
            sessions.close_user(str(arg))
            live = {k: v for k, v in live.items() if v[0] != arg}
        elif step == "wait":
            assert isinstance(arg, float)
            clock.advance(arg)
        for session_id, user in opened:
            found = sessions.get(session_id)
            expected = live.get(session_id)
            if expected is None or clock.now >= expected[1]:
                assert found is None
            else:
                assert found is not None and found.user == user
    assert sessions.get("") is None and sessions.get("x" * 500) is None


def test_the_table_keeps_no_session_id(make_store: Callable[..., BlobStore], clock: FakeClock) -> None:
    """Only a hash of the id is stored: a copy of the table opens no session."""
    store = make_store()
    session_id, _ = Sessions(store, clock).open("alice", None)
    with store.index.read() as txn:
        keys = [k for k, _ in txn.scan(store.index.table("sessions"))]
    assert keys and all(session_id.encode() not in k for k in keys)


def test_expired_sessions_are_pruned_as_new_ones_open(make_store: Callable[..., BlobStore], clock: FakeClock) -> None:
    store = make_store()
    sessions = Sessions(store, clock)
    for _ in range(10):
        sessions.open("alice", None)
    clock.advance(SESSION_LIFETIME + 1)
    for _ in range(3):
        sessions.open("bob", None)
    with store.index.read() as txn:
        left = sum(1 for _ in txn.scan(store.index.table("sessions")))
    assert left < 13  # pruning looks at a bounded window after each new key: some of the stale ones went
