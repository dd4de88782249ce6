"""Request bodies: the rule a body must keep to, and how many one client may stream at once. Decisions only: the
adapter reads the network, runs the timers and answers (adapters/http/streaming.py); this module says how long the
next read may wait, when a body has broken the rule and why, and whether a client may start another body.

The rule (`BodyLimits`, after Apache mod_reqtimeout's default `body=20,MinRate=500` and nginx's
`client_body_timeout 60s`): a body gets `grace` seconds to get going, extended by 1 s per `min_rate` bytes received,
and never more than `idle` seconds between two reads. Only the time spent waiting for the network counts (the adapter
records it in a `BodyPace`). A body breaking the rule is cut off (408) with `BodyPace.stalled`'s reason.

One client (the caller's subject, or its address when anonymous) may stream `per_client` bodies at once per process
(`ClientBodies`); more are refused (TooManyBodies: 429 with Retry-After), before any of their body is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from .errors import RegistryError

RETRY_AFTER = 5  # seconds a client over its cap is asked to wait: a layer upload on a good link ends within that


@dataclass(frozen=True, slots=True)
class BodyLimits:
    # Apache mod_reqtimeout's default `body=20,MinRate=500` (httpd 2.4.39+): 20 s to get going, then 1 s more per
    # 500 bytes received (a client must keep up 500 bytes/s on average).
    grace: float = 20.0
    min_rate: float = 500.0
    # nginx's client_body_timeout (and Apache's Timeout): 60 s between two successive reads of the body.
    idle: float = 60.0
    # Threads hashing and writing bodies, per process: beside anyio's default limiter of 40 (stat, open, manifest
    # PUT), so that bodies never take those. Two cores keep ~2 threads busy; the rest absorb disk and network waits.
    threads: int = 32
    # Bodies one client may stream at once, per process: above the parallel layer uploads of the usual clients
    # (docker's max-concurrent-uploads is 5, containers/image copies 6 layers at a time).
    per_client: int = 8

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BodyLimits:
        """BERTH_BODY_GRACE, _MIN_RATE, _IDLE (seconds, bytes/s), _THREADS, _PER_CLIENT; positive numbers."""
        values: dict[str, float | int] = {}
        for field in fields(cls):
            key = f"BERTH_BODY_{field.name.upper()}"
            text = env.get(key)
            if text is None:
                continue
            kind = int if field.type in (int, "int") else float
            try:
                value = kind(text)
            except ValueError:
                value = 0
            if not value > 0:
                raise ValueError(f"{key} must be a positive {kind.__name__}, got {text!r}")
            values[field.name] = value
        return cls(**values)  # type: ignore[arg-type]

    def describe(self) -> str:
        return (f"a request body must start within {self.grace:g} s, then arrive at {self.min_rate:g} bytes/s on "
                f"average, with at most {self.idle:g} s between reads")


class BodyPace:
    """The rule's account of one body: how long the next receive may wait."""

    __slots__ = ("limits", "received", "waited")

    def __init__(self, limits: BodyLimits) -> None:
        self.limits = limits
        self.received = 0  # bytes so far
        self.waited = 0.0  # seconds spent waiting for them

    def allowance(self) -> float:
        """Seconds the next receive may wait; <= 0 when the body is already behind the rule."""
        limits = self.limits
        return min(limits.idle, limits.grace + self.received / limits.min_rate - self.waited)

    def record(self, waited: float, received: int) -> None:
        self.waited += waited
        self.received += received

    def stalled(self, idle: bool) -> str:
        """Why a body that waited past its allowance was cut off (`idle`: the allowance was the idle limit)."""
        what = (f"nothing arrived for {self.limits.idle:g} s after {self.received} bytes" if idle
                else f"{self.received} bytes in {self.waited:.1f} s")
        return f"the request body stalled ({what}); {self.limits.describe()}"


class TooManyBodies(RegistryError):
    """A client already streaming as many bodies as it may (429, Retry-After: `retry_after` seconds)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this client already has {limit} request bodies streaming, the most allowed at once; retry "
                         "when one has ended")
        self.limit, self.retry_after = limit, RETRY_AFTER


class ClientBodies:
    """How many bodies each client is streaming in this process: `admit` counts one in (TooManyBodies over the cap),
    `release` counts it out when its body has ended, whatever the outcome."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], int] = {}

    def admit(self, client: tuple[str, str], limit: int) -> None:
        count = self._open.get(client, 0)
        if count >= limit:
            raise TooManyBodies(limit)
        self._open[client] = count + 1

    def release(self, client: tuple[str, str]) -> None:
        left = self._open[client] - 1
        if left:
            self._open[client] = left
        else:
            del self._open[client]

    def streaming(self, client: tuple[str, str]) -> int:
        return self._open.get(client, 0)
