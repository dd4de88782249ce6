"""The body rule and the per-client cap, as registry_core decides them (the adapter's side, against a real server, is
tests/adapters/test_bodies.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry_core.bodies import BodyLimits, BodyPace, ClientBodies, TooManyBodies


@given(rate_factor=st.floats(1.0, 50.0), gaps=st.lists(st.floats(0.0, 1.0), max_size=200),
       grace=st.floats(1.0, 30.0), idle=st.floats(1.0, 90.0), min_rate=st.floats(1.0, 1e6))
def test_a_body_keeping_the_minimum_rate_is_never_cut(rate_factor: float, gaps: list[float], grace: float,
                                                     idle: float, min_rate: float) -> None:
    """A client that sends at least min_rate bytes/s, pausing no longer than the grace and the idle time, always
    finds its next read within the allowance."""
    pace = BodyPace(BodyLimits(grace=grace, min_rate=min_rate, idle=idle))
    longest = min(grace, idle)
    for fraction in gaps:
        gap = fraction * longest
        assert gap <= pace.allowance() + 1e-9
        pace.record(gap, int(gap * min_rate * rate_factor) + 1)


@given(events=st.lists(st.tuples(st.floats(0.0, 100.0), st.integers(0, 10**6)), max_size=100))
def test_a_body_never_waits_beyond_the_rule(events: list[tuple[float, int]]) -> None:
    """Whatever the client does, no wait exceeds the idle time and the total waited never exceeds the grace plus
    1 s per min_rate bytes received (a stall is cut at the allowance)."""
    limits = BodyLimits(grace=20, min_rate=500, idle=60)
    pace = BodyPace(limits)
    for gap, size in events:
        allowance = pace.allowance()
        assert allowance <= limits.idle
        if gap > allowance:  # the server cuts the body off here
            pace.record(max(allowance, 0.0), 0)
            assert pace.waited <= limits.grace + pace.received / limits.min_rate + 1e-6
            return
        pace.record(gap, size)
        assert pace.waited <= limits.grace + (pace.received - size) / limits.min_rate + 1e-6


def test_limits_from_the_environment() -> None:
    limits = BodyLimits.from_env({"BERTH_BODY_GRACE": "2.5", "BERTH_BODY_PER_CLIENT": "3"})
    assert limits == BodyLimits(grace=2.5, per_client=3)
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="BERTH_BODY_IDLE"):
            BodyLimits.from_env({"BERTH_BODY_IDLE": bad})



@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["alice", "bob"])), max_size=60), st.integers(1, 4))
def test_a_client_streams_at_most_its_cap(steps: list[tuple[bool, str]], limit: int) -> None:
    """Model: per client, the bodies admitted and not yet released. A body is admitted exactly while that count is
    under the cap, and a refusal says the cap."""
    bodies, model = ClientBodies(), {"alice": 0, "bob": 0}
    for start, who in steps:
        client = ("subject", who)
        if start:
            if model[who] < limit:
                bodies.admit(client, limit)
                model[who] += 1
            else:
                with pytest.raises(TooManyBodies, match=f"already has {limit} request bodies"):
                    bodies.admit(client, limit)
        elif model[who]:
            bodies.release(client)
            model[who] -= 1
        assert bodies.streaming(client) == model[who]
