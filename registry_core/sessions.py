"""Sign-in sessions of the portal: who signed in, how, and until when; ended at sign-out.

A session is kept here, not only in the browser's cookie, so that signing out ends it everywhere (a copied cookie
stops working) and a new id is issued at every sign-in (no session fixation). The browser holds the session id; only
its SHA-256 is stored, so a copy of the table opens no session. A session made with a personal access token names
that token: revoking the token ends the session at once (the identity is derived from the token on every request).

Sessions live SESSION_LIFETIME from sign-in, whatever the activity (no sliding renewal: a stolen cookie is worth at
most that long). Expired records are pruned as new ones are written, a bounded number per sign-in, as logins.py does.

Table:
    sessions  sha256(session id) hex -> JSON {"user", "token_id" (null: signed in with a password), "csrf",
              "created", "expires"}
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cas import BlobStore, Table, WriteTransaction

from . import schema

SESSION_LIFETIME = 8 * 3600.0  # seconds: a working day (GitLab's default is a week, Harbor's 30 min idle)
PRUNE_BATCH = 32  # expired records removed per sign-in: bounded work per write
TABLE = schema.SESSION_TABLE


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    token_id: str | None  # the personal access token signed in with; None: a password
    csrf: str  # the token every form and unsafe API call of this session must carry
    created: float
    expires: float


class Sessions:
    def __init__(self, store: BlobStore, clock: Callable[[], float] | None = None) -> None:
        self._store = store
        self._clock = clock or store.clock
        schema.declare(store.index)
        self._table: Table = store.index.table(TABLE)

    def open(self, user: str, token_id: str | None) -> tuple[str, Session]:
        """A new session: its id (for the cookie; shown nowhere else) and record."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        record = Session(user, token_id, secrets.token_urlsafe(32), now, now + SESSION_LIFETIME)
        key = _key(session_id)

        def work(txn: WriteTransaction) -> None:
            txn.put(self._table, key, json.dumps(asdict(record)).encode())
            stale = []
            for seen, (other, raw) in enumerate(txn.scan(self._table, start=key)):
                if seen >= 2 * PRUNE_BATCH:
                    break
                if json.loads(raw)["expires"] <= now:
                    stale.append(other)
            for other in stale:
                txn.delete(self._table, other)

        self._store.index.transact(work)
        return session_id, record

    def get(self, session_id: str) -> Session | None:
        """The live session with this id, or None (unknown, ended or expired)."""
        if not session_id or len(session_id) > 128:
            return None
        with self._store.index.read() as txn:
            raw = txn.get(self._table, _key(session_id))
        if raw is None:
            return None
        record = Session(**json.loads(raw))
        return record if self._clock() < record.expires else None

    def close(self, session_id: str) -> bool:
        """End a session (sign-out). False if there was none."""
        def work(txn: WriteTransaction) -> bool:
            return txn.delete(self._table, _key(session_id))
        return self._store.index.transact(work)

    def close_user(self, user: str) -> int:
        """End every session of `user` (a password changed, an account disabled). Returns how many ended."""
        def work(txn: WriteTransaction) -> int:
            mine = [k for k, raw in txn.scan(self._table) if json.loads(raw)["user"] == user]
            for key in mine:
                txn.delete(self._table, key)
            return len(mine)
        return self._store.index.transact(work)


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).hexdigest().encode()
