"""The login throttle: failed logins slow the source they come from, and never lock out a correct token.

Guessing a personal access token is hopeless (256 random bits), so the throttle exists to keep a guesser from
costing the registry much, not to protect the secret. Two rules follow from that:
- A correct token is always accepted, throttled source or not: a valid user behind the same NAT or TLS proxy as a
  guesser is never locked out. The credentials are checked first (one SHA-256 and one index read: cheap), and only a
  failure consults the throttle.
- A source with FAILURE_LIMIT failures inside FAILURE_WINDOW gets 429 with Retry-After for further failures until
  its oldest failure leaves the window.

Failures are counted per source in the index, so that every worker process (and a restart) sees one count: an
attacker cannot multiply the allowance by the number of workers. The table is pruned as it is written: each failure
looks at up to 2 * PRUNE_BATCH entries after its own key and removes those whose newest failure has left the
window, so the table stays about as large as the set of sources that failed within the last minute.

Table:
    login_failures  source address (at most 256 bytes) -> JSON [unix times of its recent failures]
"""

from __future__ import annotations

import json
from collections.abc import Callable

from cas import BlobStore, Table, WriteTransaction

from . import schema
from .schema import LOGIN_TABLE

FAILURE_WINDOW = 60.0  # seconds over which failed logins from one source are counted
FAILURE_LIMIT = 5  # failures allowed in the window (GitLab and Harbor lock after 5-10 failed logins)
PRUNE_BATCH = 32  # stale entries removed per recorded failure: pruning costs a bounded amount per write
SOURCE_MAX = 256  # bytes of a source key (an IPv6 address is at most 45 characters)

TABLE = LOGIN_TABLE  # declared in schema.py


class LoginThrottle:
    def __init__(self, store: BlobStore, clock: Callable[[], float] | None = None) -> None:
        self._store = store
        self._clock = clock or store.clock
        schema.declare(store.index)
        self._table: Table = store.index.table(TABLE)

    def _recent(self, raw: bytes | None, now: float) -> list[float]:
        if raw is None:
            return []
        return [t for t in json.loads(raw) if t > now - FAILURE_WINDOW]

    def wait(self, source: str) -> float:
        """Seconds until `source` may fail again without a 429 (0: not throttled)."""
        now = self._clock()
        with self._store.index.read() as txn:
            recent = self._recent(txn.get(self._table, _key(source)), now)
        if len(recent) < FAILURE_LIMIT:
            return 0.0
        return max(1.0, recent[-FAILURE_LIMIT] + FAILURE_WINDOW - now)

    def failed(self, source: str) -> None:
        """Record a failed login from `source` (and prune a few stale sources)."""
        now = self._clock()

        def work(txn: WriteTransaction) -> None:
            key = _key(source)
            recent = self._recent(txn.get(self._table, key), now)[-FAILURE_LIMIT:] + [now]
            txn.put(self._table, key, json.dumps(recent).encode())
            stale = []
            # Look at a bounded window of entries after this source's key, so the work per failure is bounded
            # however large the table is; sources spread the windows over the whole table as time goes on.
            for seen, (other, raw) in enumerate(txn.scan(self._table, start=key)):
                if seen >= 2 * PRUNE_BATCH:
                    break
                if other != key and not self._recent(raw, now):
                    stale.append(other)
            for other in stale:
                txn.delete(self._table, other)

        self._store.index.transact(work)

    def sources(self) -> int:
        """How many sources the table holds (for tests and operators)."""
        with self._store.index.read() as txn:
            return sum(1 for _ in txn.scan(self._table))


def _key(source: str) -> bytes:
    """At most SOURCE_MAX bytes, cut between characters and without NUL: the key is text (a column in PostgreSQL),
    and a bucket may hold a name someone typed (signins.py: `password:<name>`)."""
    return source.replace("\0", "\ufffd").encode()[:SOURCE_MAX].decode("utf-8", "ignore").encode()
