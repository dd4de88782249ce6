"""Accounts and personal access tokens.

A personal access token (PAT) is `berth_<id>_<secret>`: the id (16 hex) finds the record, the secret (32 random
bytes, URL-safe base64) is checked against its SHA-256, the only thing stored. A slow password hash would buy
nothing here: the secret has 256 bits of entropy, so a stolen table cannot be brute-forced, and the token endpoint
must stay fast. Secrets are shown once, at creation, and never logged.

Passwords (for the portal's sign-in page) are another matter: people choose them, so they are hashed with argon2id
(argon2-cffi's defaults, RFC 9106's second recommended profile: 64 MiB, 3 passes, 4 lanes) and a hash is upgraded when
the library's parameters grow. A password signs a person in to the portal; the registry protocol still takes personal
access tokens only. A disabled account can neither sign in nor use its tokens (they stay, and work again when the
account is enabled).

Tables (in the store's LMDB environment):
    users        name -> JSON {"certified", "admin", "created", "disabled"}
    passwords    name -> the argon2id hash of the account's password, in the PHC string format ($argon2id$v=19$...)
    pats         token id -> JSON PersonalToken (without the secret)
    pats_by_user user \\0 token id -> b""
    pats_used    token id -> the unix time the token was last used (written at most every USED_EVERY seconds)
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

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cas import BlobStore, Transaction, WriteTransaction

from . import schema
from .schema import ACCOUNT_TABLES

TOKEN_SCOPES = ("view", "download", "modify")
PUBLIC = "public"  # in grants, everyone (anonymous callers too): never the name of an account
_USER = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_PAT = re.compile(r"berth_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
PASSWORD_MIN = 8  # NIST SP 800-63B 5.1.1.2: at least 8 characters for a memorized secret chosen by its user
PASSWORD_MAX = 1024  # longer passwords buy nothing, and argon2 hashes whatever it is given
USED_EVERY = 60.0  # seconds: a token's last use is recorded at most this often (a write per use would be per pull)
_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
# Verified when the account is unknown or has no password, so that a sign-in takes as long whether it exists or not.
_DUMMY_HASH = _HASHER.hash("no account has this password")


class AccountError(ValueError):
    """A bad account or token request (unknown user, bad name, bad scope)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    certified: bool = False
    admin: bool = False
    created: float = 0.0
    disabled: bool = False  # may neither sign in nor use its tokens


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
        self.store = store
        self._store = store
        schema.declare(store.index)
        self._users, self._pats, self._by_user, self._passwords, self._used = (
            store.index.table(name) for name in ACCOUNT_TABLES)

    # -- users ----------------------------------------------------------------------------------------------------
    def add_user(self, name: str, certified: bool = False, admin: bool = False) -> User:
        if not _USER.fullmatch(name):
            raise AccountError(f"invalid user name {name[:70]!r}: 1..64 of a-z 0-9 . _ -, starting with a letter/digit")
        if name == PUBLIC:
            raise AccountError(f"{PUBLIC!r} cannot be a user name: in grants it stands for everyone")
        user = User(name, certified, admin, self._store.clock())

        def work(txn: WriteTransaction) -> None:
            if txn.get(self._users, name.encode()) is not None:
                raise AccountError(f"user {name} already exists")
            txn.put(self._users, name.encode(), json.dumps(asdict(user)).encode())
        self._store.index.transact(work)
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

    def update_user(self, name: str, certified: bool | None = None, admin: bool | None = None,
                    disabled: bool | None = None) -> User:
        def work(txn: WriteTransaction) -> User:
            raw = txn.get(self._users, name.encode())
            if raw is None:
                raise AccountError(f"no user {name}")
            user = User(**json.loads(raw))
            user = replace(user, certified=user.certified if certified is None else certified,
                           admin=user.admin if admin is None else admin,
                           disabled=user.disabled if disabled is None else disabled)
            txn.put(self._users, name.encode(), json.dumps(asdict(user)).encode())
            return user
        return self._store.index.transact(work)

    def remove_user(self, name: str, txn: WriteTransaction | None = None) -> int:
        """Delete the account and its token records: its tokens stop working at once (a token whose record or
        user is gone stands for no one). Returns how many token records went. Grants and project ownership are
        projects.py's (Projects.remove_user removes an account together with its grants)."""
        if txn is None:
            return self._store.index.transact(lambda own: self.remove_user(name, own))
        if not txn.delete(self._users, name.encode()):
            raise AccountError(f"no user {name}")
        txn.delete(self._passwords, name.encode())
        owned = [k for k, _ in txn.scan(self._by_user, prefix=f"{name}\0".encode())]
        for key in owned:
            txn.delete(self._pats, key.split(b"\0", 1)[1])
            txn.delete(self._used, key.split(b"\0", 1)[1])
            txn.delete(self._by_user, key)
        return len(owned)

    # -- passwords ------------------------------------------------------------------------------------------------
    def set_password(self, name: str, password: str) -> None:
        """Set (or replace) the account's password; AccountError for an unknown account or a password outside
        PASSWORD_MIN..PASSWORD_MAX characters. Hashed before the write transaction: argon2 takes ~50 ms."""
        if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
            raise AccountError(f"a password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long")
        hashed = _HASHER.hash(password)

        def work(txn: WriteTransaction) -> None:
            if txn.get(self._users, name.encode()) is None:
                raise AccountError(f"no user {name}")
            txn.put(self._passwords, name.encode(), hashed.encode())
        self._store.index.transact(work)

    def clear_password(self, name: str) -> bool:
        """Remove the account's password (it signs in with tokens only). False if it had none."""
        return self._store.index.transact(lambda txn: txn.delete(self._passwords, name.encode()))

    def has_password(self, name: str) -> bool:
        with self._store.index.read() as txn:
            return txn.get(self._passwords, name.encode()) is not None

    def check_password(self, name: str, password: str) -> tuple[Identity | None, str]:
        """(identity with every token scope, "") when `password` is the account's; (None, why) otherwise. Takes
        the time of one argon2 verification whether or not the account exists. Throttling is the caller's
        (signins.py)."""
        with self._store.index.read() as txn:
            raw = txn.get(self._users, name.encode()) if len(name) <= 64 else None
            stored = txn.get(self._passwords, name.encode()) if raw is not None else None
        try:
            _HASHER.verify(stored.decode() if stored is not None else _DUMMY_HASH, password[:PASSWORD_MAX])
            matched = stored is not None
        except (VerificationError, InvalidHashError):
            matched = False
        if raw is None or not matched:
            return None, "unknown user name or wrong password"
        user = User(**json.loads(raw))
        if user.disabled:
            return None, f"the account {user.name} is disabled"
        assert stored is not None
        if _HASHER.check_needs_rehash(stored.decode()):
            self.set_password(name, password)
        return self.identity_of(user), ""

    def identity_of(self, user: User | str) -> Identity | None:
        """A signed-in person's identity (password or portal session): every token scope; None for an unknown or
        disabled account."""
        found = self.user(user) if isinstance(user, str) else user
        if found is None or found.disabled:
            return None
        return Identity(found.name, found.certified, found.admin, frozenset(TOKEN_SCOPES))

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
        label = label.replace("\0", "")[:200]  # no NUL: JSON in PostgreSQL (jsonb) cannot hold one
        record = PersonalToken(token_id, user, tuple(sorted(set(scopes))), label, now,
                               now + expires_in if expires_in else None, False,
                               hashlib.sha256(secret.encode()).hexdigest())
        def work(txn: WriteTransaction) -> None:
            txn.put(self._pats, token_id.encode(), json.dumps(asdict(record)).encode())
            txn.put(self._by_user, f"{user}\0{token_id}".encode(), b"")
        self._store.index.transact(work)
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
        def work(txn: WriteTransaction) -> PersonalToken:
            raw = txn.get(self._pats, token_id.encode())
            if raw is None:
                raise AccountError(f"no token {token_id}")
            record = replace(_token(raw), revoked=True)
            txn.put(self._pats, token_id.encode(), json.dumps(asdict(record)).encode())
            return record
        return self._store.index.transact(work)

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
        if identity is None:
            return None, f"the account {record.user} no longer exists"
        self._note_use(record.id)
        return identity, ""

    def inactive_reason(self, record: PersonalToken | None) -> str | None:
        """Why a token record no longer stands for anyone (None while it does)."""
        if record is None:
            return "the personal access token no longer exists"
        if record.revoked:
            return f"the personal access token {record.id} was revoked: create a new one"
        if record.expires is not None and self._store.clock() >= record.expires:
            when = datetime.fromtimestamp(record.expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
            return f"the personal access token {record.id} expired on {when}: create a new one"
        user = self.user(record.user)
        if user is None:
            return f"the account {record.user} no longer exists"
        if user.disabled:
            return f"the account {record.user} is disabled"
        return None

    def identity_for(self, record: PersonalToken) -> Identity | None:
        """The identity behind a token record, if the token is still active and its user still exists."""
        if not record.active(self._store.clock()):
            return None
        user = self.user(record.user)
        if user is None or user.disabled:
            return None
        return Identity(user.name, user.certified, user.admin, frozenset(record.scopes), record.id)

    def last_used(self, token_id: str) -> float | None:
        with self._store.index.read() as txn:
            raw = txn.get(self._used, token_id.encode())
        return float(raw) if raw is not None else None

    def _note_use(self, token_id: str) -> None:
        """Record that the token was used now, unless that was recorded less than USED_EVERY seconds ago."""
        now = self._store.clock()
        before = self.last_used(token_id)
        if before is not None and now - before < USED_EVERY:
            return
        def work(txn: WriteTransaction) -> None:
            if txn.get(self._pats, token_id.encode()) is not None:  # not revived for a token removed meanwhile
                txn.put(self._used, token_id.encode(), b"%.3f" % now)
        self._store.index.transact(work)


def _token(raw: bytes | None) -> PersonalToken:
    assert raw is not None
    data = json.loads(raw)
    data["scopes"] = tuple(data["scopes"])
    return PersonalToken(**data)
