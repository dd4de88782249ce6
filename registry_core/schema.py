"""The registry's tables in the cas store's LMDB environment: the one place their keys and values are written down.

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
Beside them, events.py's outbox (events, event_counters: EVENT_TABLES), opened by Registry as `registry.outbox`;
webhooks.py's endpoints and their delivery (WEBHOOK_TABLES; keys and values written down there), opened by
`Webhooks(store)`; accounts.py's users and tokens, projects.py's projects, grants, trash and counters, and logins.py's
throttle (ACCOUNT_TABLES, PROJECT_TABLES, LOGIN_TABLES). ALL_TABLES is every table of the registry: `declare(index)`
declares them (cas refuses a table nobody declared), and every class that opens one calls it first.
(`repo` is the full repository name, `digest` its canonical string, all UTF-8/ASCII.)

References in cas: a manifest in a repository is the holder `m:<repo>@<alg>:<hex, at most 64>` (sha512 hex is cut to
its first 64 characters to fit cas's holder limit; 256 bits keep it unique). It holds the manifest's own bytes (an
inline cas blob), its config and layers, and its child manifests. So "is this blob referenced by a manifest in this
repository" is one range scan of the blob's holders for the prefix `m:<repo>@`, and deleting the manifest is
`refs.drop_all(holder)`. Links hold nothing: a blob uploaded and never used is collected by cas after its grace.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from cas import Digest, Index, TableShape

# The shapes of these tables' keys and values (cas/table_shape.py), for an index that keeps fields in columns
# (PostgreSQL: `SELECT tag, digest FROM tags WHERE repo = 'lib/app'` in psql). The other tables below are declared
# by name only for now (one bytea key, one bytea value there).
TABLE_SHAPES = (
    TableShape("repos", "repo:text", "json:record"),
    TableShape("links", "repo:text \\0 digest:text", ""),
    TableShape("manifests", "repo:text \\0 digest:text", "json:record"),
    TableShape("tags", "repo:text \\0 tag:text", "text:digest"),
    TableShape("tagged", "repo:text \\0 digest:text \\0 tag:text", ""),
    TableShape("history", "repo:text \\0 tag:text \\0 at_us:u64 seq:u32", "json:entry"),
    TableShape("referrers", "repo:text \\0 subject:text \\0 digest:text", "json:descriptor"),
    TableShape("uploading", "actor:text \\0 session:text", ""),
)
TABLES = tuple(shape.name for shape in TABLE_SHAPES)
EVENT_TABLES = ("events", "event_counters")
WEBHOOK_TABLES = ("webhooks", "webhook_state", "webhook_leases", "webhook_dead")
ACCOUNT_TABLES = ("users", "pats", "pats_by_user")
PROJECT_TABLES = ("projects", "grants", "trashed", "counters")
LOGIN_TABLES = ("login_failures",)
ALL_TABLES = TABLES + EVENT_TABLES + WEBHOOK_TABLES + ACCOUNT_TABLES + PROJECT_TABLES + LOGIN_TABLES


def declare(index: Index) -> None:
    """Declare every table of the registry in the store's index (idempotent; at start-up)."""
    index.declare((*TABLE_SHAPES, *ALL_TABLES[len(TABLES):]))
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
