"""Accounts and personal access tokens.

A personal access token (PAT) is `berth_<id>_<secret>`: the id (16 hex) finds the record, the secret (32 random
bytes, URL-safe base64) is checked against its SHA-256, the only thing stored. A slow password hash would buy
nothing here: the secret has 256 bits of entropy, so a stolen table cannot be brute-forced, and the token endpoint
must stay fast. Secrets are shown once, at creation, and never logged.

Tables (in the store's LMDB environment):
    users        name -> JSON {"certified", "admin", "created"}
    pats         token id -> JSON PersonalToken (without the secret)
    pats_by_user user \\0 token id -> b""
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from cas import BlobStore, Transaction, WriteTransaction

from . import schema
from .schema import ACCOUNT_TABLES

TOKEN_SCOPES = ("view", "download", "modify")
PUBLIC = "public"  # in grants, everyone (anonymous callers too): never the name of an account
_USER = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_PAT = re.compile(r"berth_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


class AccountError(ValueError):
    """A bad account or token request (unknown user, bad name, bad scope)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    certified: bool = False
    admin: bool = False
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class PersonalToken:
    id: str
    user: str
    scopes: tuple[str, ...]
    label: str
    created: float
    expires: float | None
    revoked: bool
    digest: str  # sha256 of the secret, hex

    def active(self, now: float) -> bool:
        return not self.revoked and (self.expires is None or now < self.expires)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request acts as: the user's flags and the scopes of the token they presented."""
    user: str
    certified: bool
    admin: bool
    scopes: frozenset[str]
    token_id: str | None = None


class Accounts:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        schema.declare(store.index)
        self._users, self._pats, self._by_user = (store.index.table(name) for name in ACCOUNT_TABLES)

    # -- users ----------------------------------------------------------------------------------------------------
    def add_user(self, name: str, certified: bool = False, admin: bool = False) -> User:
        if not _USER.fullmatch(name):
            raise AccountError(f"invalid user name {name[:70]!r}: 1..64 of a-z 0-9 . _ -, starting with a letter/digit")
        if name == PUBLIC:
            raise AccountError(f"{PUBLIC!r} cannot be a user name: in grants it stands for everyone")
        user = User(name, certified, admin, self._store.clock())
        with self._store.index.write() as txn:
            if txn.get(self._users, name.encode()) is not None:
                raise AccountError(f"user {name} already exists")
            txn.put(self._users, name.encode(), json.dumps(asdict(user)).encode())
        return user

    def user(self, name: str, txn: Transaction | None = None) -> User | None:
        if txn is None:
            with self._store.index.read() as own:
                return self.user(name, own)
        raw = txn.get(self._users, name.encode())
        return User(**json.loads(raw)) if raw is not None else None

    def users(self) -> list[User]:
        with self._store.index.read() as txn:
            return [User(**json.loads(v)) for _, v in txn.scan(self._users)]

    def update_user(self, name: str, certified: bool | None = None, admin: bool | None = None) -> User:
        with self._store.index.write() as txn:
            raw = txn.get(self._users, name.encode())
            if raw is None:
                raise AccountError(f"no user {name}")
            user = User(**json.loads(raw))
            user = replace(user, certified=user.certified if certified is None else certified,
                           admin=user.admin if admin is None else admin)
            txn.put(self._users, name.encode(), json.dumps(asdict(user)).encode())
        return user

    def remove_user(self, name: str, txn: WriteTransaction | None = None) -> int:
        """Delete the account and its token records: its tokens stop working at once (a token whose record or
        user is gone stands for no one). Returns how many token records went. Grants and project ownership are
        projects.py's (Projects.remove_user removes an account together with its grants)."""
        if txn is None:
            with self._store.index.write() as own:
                return self.remove_user(name, own)
        if not txn.delete(self._users, name.encode()):
            raise AccountError(f"no user {name}")
        owned = [k for k, _ in txn.scan(self._by_user, prefix=f"{name}\0".encode())]
        for key in owned:
            txn.delete(self._pats, key.split(b"\0", 1)[1])
            txn.delete(self._by_user, key)
        return len(owned)

    # -- personal access tokens -----------------------------------------------------------------------------------
    def create_token(self, user: str, scopes: list[str], expires_in: float | None = None,
                     label: str = "") -> tuple[PersonalToken, str]:
        """A new PAT for `user`; returns its record and the secret (shown once: only its hash is kept)."""
        bad = [s for s in scopes if s not in TOKEN_SCOPES]
        if bad or not scopes:
            raise AccountError(f"token scopes must be among {', '.join(TOKEN_SCOPES)}; got {', '.join(scopes)!r}")
        if self.user(user) is None:
            raise AccountError(f"no user {user}")
        token_id = secrets.token_hex(8)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        now = self._store.clock()
        record = PersonalToken(token_id, user, tuple(sorted(set(scopes))), label[:200], now,
                               now + expires_in if expires_in else None, False,
                               hashlib.sha256(secret.encode()).hexdigest())
        with self._store.index.write() as txn:
            txn.put(self._pats, token_id.encode(), json.dumps(asdict(record)).encode())
            txn.put(self._by_user, f"{user}\0{token_id}".encode(), b"")
        return record, f"berth_{token_id}_{secret}"

    def tokens(self, user: str) -> list[PersonalToken]:
        with self._store.index.read() as txn:
            ids = [k.split(b"\0", 1)[1] for k, _ in txn.scan(self._by_user, prefix=f"{user}\0".encode())]
            return [_token(txn.get(self._pats, i)) for i in ids if txn.get(self._pats, i) is not None]

    def token(self, token_id: str) -> PersonalToken | None:
        with self._store.index.read() as txn:
            raw = txn.get(self._pats, token_id.encode())
        return _token(raw) if raw is not None else None

    def revoke(self, token_id: str) -> PersonalToken:
        with self._store.index.write() as txn:
            raw = txn.get(self._pats, token_id.encode())
            if raw is None:
                raise AccountError(f"no token {token_id}")
            record = replace(_token(raw), revoked=True)
            txn.put(self._pats, token_id.encode(), json.dumps(asdict(record)).encode())
        return record

    def authenticate(self, presented: str) -> Identity | None:
        """The identity a PAT stands for, or None (unknown, wrong, revoked, expired, or its user is gone)."""
        return self.login(presented)[0]

    def login(self, presented: str) -> tuple[Identity | None, str]:
        """(identity, "") for a valid PAT; (None, why) otherwise. Why a token is refused (revoked, expired) is
        said only to whoever holds its secret: an unknown id and a wrong secret read the same."""
        match = _PAT.fullmatch(presented.strip())
        if match is None:
            return None, ("the password must be a personal access token (berth_...); create one with "
                          "`berth token create USER` or on the account page")
        token_id, secret = match.groups()
        record = self.token(token_id)
        if record is None or not hmac.compare_digest(record.digest, hashlib.sha256(secret.encode()).hexdigest()):
            return None, "unknown personal access token: check that it was copied whole"
        problem = self.inactive_reason(record)
        if problem is not None:
            return None, problem
        identity = self.identity_for(record)
        return (identity, "") if identity is not None else (None, f"the account {record.user} no longer exists")

    def inactive_reason(self, record: PersonalToken | None) -> str | None:
        """Why a token record no longer stands for anyone (None while it does)."""
        if record is None:
            return "the personal access token no longer exists"
        if record.revoked:
            return f"the personal access token {record.id} was revoked: create a new one"
        if record.expires is not None and self._store.clock() >= record.expires:
            when = datetime.fromtimestamp(record.expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
            return f"the personal access token {record.id} expired on {when}: create a new one"
        if self.user(record.user) is None:
            return f"the account {record.user} no longer exists"
        return None

    def identity_for(self, record: PersonalToken) -> Identity | None:
        """The identity behind a token record, if the token is still active and its user still exists."""
        if not record.active(self._store.clock()):
            return None
        user = self.user(record.user)
        if user is None:
            return None
        return Identity(user.name, user.certified, user.admin, frozenset(record.scopes), record.id)


def _token(raw: bytes | None) -> PersonalToken:
    assert raw is not None
    data = json.loads(raw)
    data["scopes"] = tuple(data["scopes"])
    return PersonalToken(**data)
