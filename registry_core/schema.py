"""The registry's tables in the cas store's LMDB environment: the one place their keys and values are written down.

Tables (beside cas's own, see cas/layout.py; `\\0` separates fields: names, tags and digests never contain NUL)
    repos      repo -> JSON {"created": t}                         every repository that was ever written to
    links      repo \\0 digest -> b""                                blobs uploaded or mounted into the repository
    manifests  repo \\0 digest -> JSON ManifestRecord                 manifests put into the repository
    tags       repo \\0 tag -> digest                                 the tag's manifest (tags/list: a range scan)
    tagged     repo \\0 digest \\0 tag -> b""                          by digest (deleting a manifest untags it)
    history    repo \\0 tag \\0 u64 µs \\0 u32 seq -> JSON HistoryEntry  every move and removal of a tag, in time order
    referrers  repo \\0 subject digest \\0 digest -> JSON descriptor    manifests whose `subject` is that digest
    uploading  actor \\0 session id -> b""                          open upload sessions by owner (the per-account cap;
               an entry whose cas session expired is dropped when next counted)
    tag_pushes repo \\0 tag -> JSON TagPush {"us", "actor"}      the tag's latest move: when (µs), by whom; gone with
               the tag (listings show it without walking the history)
    tag_times  repo \\0 u64 (2^64-1 - µs) \\0 tag -> b""           the repository's tags newest first (a listing by
               push time is one range scan); written with tag_pushes by TagIndex, in the same transaction
Beside them, events.py's outbox (events, event_counters: events.TABLES), opened by Registry as `registry.outbox`.
And webhooks.py's endpoints and their delivery (webhooks, webhook_state, webhook_leases, webhook_dead:
webhooks.TABLES; keys and values written down there), opened by `Webhooks(store)`.
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

from cas import Digest

TABLES = ("repos", "links", "manifests", "tags", "tagged", "history", "referrers", "uploading", "tag_pushes",
          "tag_times")
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
