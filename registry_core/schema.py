"""The registry's tables in the store's index: declared here, in one place (docs/FORMAT.md has every table and file of
a store, with the format versions and their changes).

Tables (beside cas's own, see cas/layout.py; `\\0` separates fields: names, tags and digests never contain NUL)
    repos      repo -> JSON {"created": t}                         every repository that was ever written to
    links      repo \\0 digest -> b""                                blobs uploaded or mounted into the repository
    manifests  repo \\0 digest -> JSON ManifestRecord                 manifests put into the repository
    tags       repo \\0 tag -> digest                                 the tag's manifest (tags/list: a range scan)
    tagged     repo \\0 digest \\0 tag -> b""                          by digest (deleting a manifest untags it)
    history    repo \\0 tag \\0 u64 µs + u32 seq -> JSON HistoryEntry   every move and removal of a tag, in time order
    referrers  repo \\0 subject digest \\0 digest -> JSON descriptor    manifests whose `subject` is that digest
    uploading  actor \\0 session id -> b""                          open upload sessions by owner (the per-account cap;
               an entry whose cas session expired is dropped when next counted)
    tag_pushes repo \\0 tag -> JSON TagPush {"us", "actor"}      the tag's latest move: when (µs), by whom; gone with
               the tag (listings show it without walking the history)
    tag_times  repo \\0 u64 (2^64-1 - µs) \\0 tag -> b""           the repository's tags newest first (a listing by
               push time is one range scan); written with tag_pushes by TagIndex, in the same transaction
Beside them, every other table registry_core opens, declared here too (`DECLARED`: the one list; a table not in it
is never opened, tests/registry_core/test_schema.py holds every module to that), its keys and values written down in
the module that owns it:
    events, event_counters                                events.py: the outbox, opened by Registry (`registry.outbox`)
    webhooks, webhook_state, webhook_leases, webhook_dead  webhooks.py: endpoints and their delivery (`Webhooks(store)`)
    users, pats, pats_by_user, passwords, pats_used      accounts.py: accounts, personal access tokens, passwords
                                                          (argon2id hashes) and tokens' last use
    projects, grants, trashed, counters                   projects.py: projects, grants and the trash
    login_failures                                        logins.py: the login throttle
    signing_keys                                          keys.py: the token signing key (`token-es256` -> PEM) and
                                                          other secrets (`portal-session`: the cookie key)
    sessions                                              sessions.py: the portal's sign-in sessions
Every table has a TableShape below (`TABLE_SHAPES`): on PostgreSQL, columns an operator reads with psql.
`declare(index)` declares them all in the store's index (cas refuses to open a table nobody declared); every class
that opens one calls it first.
(`repo` is the full repository name, `digest` its canonical string, all UTF-8/ASCII.)

References in cas: a manifest in a repository is the holder `m:<repo>@<alg>:<hex, at most 64>` (sha512 hex is cut to
its first 64 characters to fit cas's holder limit; 256 bits keep it unique). It holds the manifest's own bytes (an
inline cas blob), its config and layers, and its child manifests. So "is this blob referenced by a manifest in this
repository" is one range scan of the blob's holders for the prefix `m:<repo>@`, and deleting the manifest is
`refs.drop_all(holder)`. Links hold nothing: a blob uploaded and never used is collected by cas after its grace.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from cas import Digest, Index, TableShape, WriteTransaction
from cas.layout import TABLE_SHAPES as CAS_SHAPES
from cas.table_shape import Chain, Step

from .errors import IncompatibleRegistry

TABLES = ("repos", "links", "manifests", "tags", "tagged", "history", "referrers", "uploading", "tag_pushes",
          "tag_times")  # Registry's own
EVENT_TABLES = ("events", "event_counters")
WEBHOOK_TABLES = ("webhooks", "webhook_state", "webhook_leases", "webhook_dead")
ACCOUNT_TABLES = ("users", "pats", "pats_by_user", "passwords", "pats_used")
PROJECT_TABLES = ("projects", "grants", "trashed", "counters")
LOGIN_TABLE = "login_failures"
KEY_TABLE = "signing_keys"
SESSION_TABLE = "sessions"
META_TABLE = "registry_meta"  # b"format" -> the registry's format version (docs/FORMAT.md)
DECLARED = frozenset((*TABLES, *EVENT_TABLES, *WEBHOOK_TABLES, *ACCOUNT_TABLES, *PROJECT_TABLES, LOGIN_TABLE,
                      KEY_TABLE, SESSION_TABLE, META_TABLE))

# The shape of every table's keys and values (cas/table_shape.py), for an index that keeps fields in columns
# (PostgreSQL: `SELECT tag, digest FROM tags WHERE repo = 'lib/app'` in psql; docs/FORMAT.md). A store written
# before a table had its shape (bytea key and value) is reshaped when it is opened (cas/postgres_index.py).
TABLE_SHAPES = (
    TableShape("repos", "repo:text", "json:record"),
    TableShape("links", "repo:text \\0 digest:text", ""),
    TableShape("manifests", "repo:text \\0 digest:text", "json:record"),
    TableShape("tags", "repo:text \\0 tag:text", "text:digest"),
    TableShape("tagged", "repo:text \\0 digest:text \\0 tag:text", ""),
    TableShape("history", "repo:text \\0 tag:text \\0 at_us:u64 seq:u32", "json:entry"),
    TableShape("referrers", "repo:text \\0 subject:text \\0 digest:text", "json:descriptor"),
    TableShape("uploading", "actor:text \\0 session:text", ""),
    TableShape("tag_pushes", "repo:text \\0 tag:text", "json:push"),
    # minus_us = -µs of the tag's latest move: the key's 2^64-1 - µs, which sorts newest first, as a bigint
    TableShape("tag_times", "repo:text \\0 minus_us:rev64 \\0 tag:text", ""),
    TableShape("events", "seq:u64", "json:event"),
    TableShape("event_counters", "name:text", "int:last"),
    TableShape("webhooks", "name:text", "json:endpoint"),
    TableShape("webhook_state", "name:text", "json:state"),
    TableShape("webhook_leases", "name:text", "json:lease"),
    TableShape("webhook_dead", "name:text \\0 seq:u64", "json:letter"),
    TableShape("users", "name:text", "json:account"),
    TableShape("passwords", "name:text", "text:hash"),
    TableShape("pats", "token:text", "json:record"),
    TableShape("pats_by_user", "user:text \\0 token:text", ""),
    TableShape("pats_used", "token:text", "text:used_at"),
    TableShape("projects", "id:text", "json:project"),
    TableShape("grants", "target:text \\0 principal:text", "text:level"),
    TableShape("trashed", "target:text", "json:mark"),
    TableShape("counters", "name:text", "int:last"),
    TableShape(LOGIN_TABLE, "source:text", "json:failures"),
    # bytea: the token key is PEM text, but the portal's cookie key is 32 random bytes (no text)
    TableShape(KEY_TABLE, "name:text", "bytes:secret"),
    TableShape(SESSION_TABLE, "session_sha256:text", "json:session"),
    TableShape(META_TABLE, "name:text", "text:version"),
)
SHAPES = {shape.name: shape for shape in TABLE_SHAPES}

# A manifest GET's lookups (Registry.get_manifest): by tag, the tag's digest, the manifest's record and its bytes
# (cas's `inline`); by digest, the last two. One query on PostgreSQL, a get per step on LMDB (cas/table_shape.py).
_INLINE = next(shape for shape in CAS_SHAPES if shape.name == "inline")
MANIFEST_BY_TAG = Chain(("repo", "tag"), (Step(SHAPES["tags"]), Step(SHAPES["manifests"]), Step(_INLINE)))
MANIFEST_BY_DIGEST = Chain(("repo", "digest"), (Step(SHAPES["manifests"]), Step(_INLINE)))

# The registry's tables have a format version of their own, beside cas's (cas/layout.py): docs/FORMAT.md lists both
# and their changes. 1: every store before the version was written down (no `registry_meta` entry). 2: the signing
# key in `signing_keys` (copied from keys/ on first use), `tag_pushes`/`tag_times` (filled from the history on first
# listing), `passwords`, `pats_used`, `sessions`. A store of version 1 is read as it is and marked 2 when opened.
FORMAT_VERSION = 2
_checked: weakref.WeakSet[Index] = weakref.WeakSet()


def declare(index: Index) -> None:
    """Declare every table of the registry in the store's index and check the registry's format version (once per
    index; idempotent; at start-up). Raises IncompatibleRegistry for a store written by another version."""
    # Every table has a shape; one without would be declared by its name (bytea key and value on PostgreSQL).
    index.declare((*TABLE_SHAPES, *sorted(DECLARED - {shape.name for shape in TABLE_SHAPES})))
    if index in _checked:
        return
    meta = index.table(META_TABLE)

    def check(txn: WriteTransaction) -> None:  # no side effect but the put: safe to run again
        stored = txn.get(meta, b"format")
        if stored is None or stored == b"1":
            txn.put(meta, b"format", str(FORMAT_VERSION).encode())
        elif stored != str(FORMAT_VERSION).encode():
            raise IncompatibleRegistry(
                f"the registry's tables in this store have format version {stored.decode(errors='replace')}; this "
                f"Berth reads version {FORMAT_VERSION} (and 1): use the Berth that wrote them (docs/FORMAT.md)")

    with index.read() as txn:
        current = txn.get(meta, b"format") == str(FORMAT_VERSION).encode()
    if not current:
        index.transact(check)
    _checked.add(index)


SEP = b"\0"


def key(*parts: str | bytes) -> bytes:
    return SEP.join(p if isinstance(p, bytes) else p.encode("utf-8") for p in parts)


def holder(repo: str, digest: Digest) -> str:
    return f"m:{repo}@{digest.algorithm}:{digest.hex[:64]}"


def holder_prefix(repo: str) -> str:
    return f"m:{repo}@"


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    media_type: str
    size: int
    created: float
    subject: str | None = None  # the subject's digest, when the manifest has one (its referrers edge)
    artifact_type: str | None = None

    def pack(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, raw: bytes) -> ManifestRecord:
        return _unpack_manifest_record(raw)


# Read on every manifest GET; a pure function of the stored bytes, and the record is immutable: remember it.
@lru_cache(maxsize=1024)
def _unpack_manifest_record(raw: bytes) -> ManifestRecord:
    return ManifestRecord(**json.loads(raw))


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    tag: str
    digest: str | None  # None: the tag was removed
    time: float
    actor: str | None

    def pack(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, raw: bytes) -> HistoryEntry:
        data: dict[str, Any] = json.loads(raw)
        return cls(**data)


@dataclass(frozen=True, slots=True)
class TagPush:
    """A tag's latest move (table tag_pushes): the time in whole microseconds, the unit of the tag_times key it
    mirrors, so that the key can be found again exactly."""
    us: int
    actor: str | None

    @property
    def time(self) -> float:
        return self.us / 1_000_000

    def pack(self) -> bytes:
        return json.dumps({"us": self.us, "actor": self.actor}, separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, raw: bytes) -> TagPush:
        data: dict[str, Any] = json.loads(raw)
        return cls(int(data["us"]), data.get("actor"))


NEWEST = (1 << 64) - 1  # tag_times keys hold NEWEST - µs: a forward scan meets the newest push first


def time_key(repo: str, us: int, tag: str) -> bytes:
    return key(repo, (NEWEST - us).to_bytes(8, "big"), tag)
