"""The login throttle: counts per source, a bounded table, and nothing that could lock out a correct token."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from cas import BlobStore
from registry_core.logins import FAILURE_LIMIT, FAILURE_WINDOW, PRUNE_BATCH, LoginThrottle
from tests.conftest import StoreFactory


def test_throttles_after_the_limit_and_forgets_after_the_window(make_store: Callable[..., BlobStore]) -> None:
    now = [1000.0]
    throttle = LoginThrottle(make_store(), clock=lambda: now[0])
    for _ in range(FAILURE_LIMIT - 1):
        throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == FAILURE_WINDOW and throttle.wait("10.0.0.2") == 0
    now[0] += FAILURE_WINDOW / 2
    assert throttle.wait("10.0.0.1") == FAILURE_WINDOW / 2
    now[0] += FAILURE_WINDOW / 2 + 0.001
    assert throttle.wait("10.0.0.1") == 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.floats(0, 30)), max_size=120))
def test_the_table_holds_only_recent_sources(store_factory: StoreFactory, failures: list[tuple[int, float]]) -> None:
    """Model: the set of sources with a failure inside the window. The table holds at least those (a failure is
    never forgotten early) and is swept of the rest by later failures."""
    now = [0.0]
    with tempfile.TemporaryDirectory() as root, store_factory(root) as store:
        check(LoginThrottle(store, clock=lambda: now[0]), failures, now)


def check(throttle: LoginThrottle, failures: list[tuple[int, float]], now: list[float]) -> None:
    last: dict[str, float] = {}
    for source, step in failures:
        now[0] += step
        throttle.failed(f"s{source}")
        last[f"s{source}"] = now[0]
        recent = {s for s, t in last.items() if t > now[0] - FAILURE_WINDOW}
        assert len(recent) <= throttle.sources() <= len(last)
    # a long quiet spell, then failures from sources sorting before all others sweep the whole table
    now[0] += FAILURE_WINDOW * 2
    for i in range(len(last) // PRUNE_BATCH + 2):
        throttle.failed(f"a{i:04d}")
    assert throttle.sources() == len(last) // PRUNE_BATCH + 2  # only the sweepers' own, fresh, entries are left
