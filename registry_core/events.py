"""Events: the transactional outbox of every change, and its two wire formats.

Every change the registry makes appends its event with `Outbox.append` inside the change's own write transaction:
the event commits with the change or rolls back with it, so an acknowledged change always has its event and a
refused one never has (no dual write, no "event sent, change lost"). Readers page the outbox by sequence number
(`after`), which is what both the pull feed (GET /v2/_events) and webhook delivery build on.

Tables (beside schema.py's, opened by Registry and Projects):
    events          u64 big-endian seq -> JSON {"id", "type", "time", "repository", "project", "subject", "actor",
                    "data"}                                         the outbox, in commit order
    event_counters  b"seq" -> the last seq given (decimal)          LMDB has one writer: no gaps among commits

Wire formats:
  - `cloudevent`: CloudEvents 1.0, JSON structured mode (cloudevents/spec cloudevents/spec.md "Context Attributes"
    and cloudevents/formats/json-format.md): required id, source, specversion, type; optional subject, time,
    datacontenttype; `data` as a JSON value since datacontenttype is application/json. Extension attribute names
    are lower-case a-z/0-9 only (spec.md "Attribute Naming Convention"), hence `berthseq`.
  - `compat_envelope`: the classic registry notification envelope (distribution/distribution notifications/event.go
    `Envelope`, `Event`, `RequestRecord`, `ActorRecord`, `SourceRecord`; docs "notifications.md"), sent with media
    type application/vnd.docker.distribution.events.v1+json, actions push / pull / mount / delete. That is the 2.x
    format registry webhook receivers parse; Distribution 3 renamed its media type ...events.v2+json and added
    target.references, which Berth does not send. Target: the Descriptor's mediaType, size, digest (urls left out)
    + length (= size), repository, fromRepository (a mount), url, tag.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cas import BlobStore, Transaction, WriteTransaction

from . import schema
from .schema import EVENT_TABLES

TABLES = EVENT_TABLES  # events: u64 big-endian seq -> JSON record; counters: b"seq" -> decimal

COMPAT_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"  # distribution notifications/event.go
CLOUDEVENTS_MEDIA_TYPE = "application/cloudevents+json"  # json-format.md, structured content mode
CLOUDEVENTS_BATCH_MEDIA_TYPE = "application/cloudevents-batch+json"  # json-format.md "Batched Content Mode": [...]

MANIFEST_PUSHED = "org.berth.manifest.pushed"
MANIFEST_DELETED = "org.berth.manifest.deleted"
MANIFEST_PULLED = "org.berth.manifest.pulled"  # only with RegistryConfig(pull_events=True)
TAG_CREATED = "org.berth.tag.created"
TAG_MOVED = "org.berth.tag.moved"
TAG_DELETED = "org.berth.tag.deleted"
BLOB_MOUNTED = "org.berth.blob.mounted"
REPOSITORY_CREATED = "org.berth.repository.created"
REPOSITORY_TRASHED = "org.berth.repository.trashed"
REPOSITORY_RESTORED = "org.berth.repository.restored"
REPOSITORY_PURGED = "org.berth.repository.purged"
PROJECT_TRASHED = "org.berth.project.trashed"
PROJECT_RESTORED = "org.berth.project.restored"
PROJECT_PURGED = "org.berth.project.purged"
GRANT_CHANGED = "org.berth.grant.changed"

EVENT_TYPES: tuple[str, ...] = (
    MANIFEST_PUSHED, MANIFEST_DELETED, MANIFEST_PULLED, TAG_CREATED, TAG_MOVED, TAG_DELETED, BLOB_MOUNTED,
    REPOSITORY_CREATED, REPOSITORY_TRASHED, REPOSITORY_RESTORED, REPOSITORY_PURGED,
    PROJECT_TRASHED, PROJECT_RESTORED, PROJECT_PURGED, GRANT_CHANGED,
)

# The registry-protocol action of each type that has one (distribution notifications/event.go: EventActionPull,
# EventActionPush, EventActionMount, EventActionDelete). A tag created or moved is part of its manifest's push there
# (the push carries the tag), so it has no envelope event of its own; project and grant events have no equivalent.
_ACTIONS = {MANIFEST_PUSHED: "push", MANIFEST_PULLED: "pull", BLOB_MOUNTED: "mount", MANIFEST_DELETED: "delete",
            TAG_DELETED: "delete"}

FEED_SCAN = 1000  # hidden events a feed page may pass over before it answers (with a marker to go on from)


@dataclass(frozen=True, slots=True)
class Event:
    seq: int                 # per-registry, strictly increasing, no gaps among committed events
    id: str                  # uuid4 hex, unique
    type: str                # one of EVENT_TYPES
    time: float              # unix seconds
    repository: str | None   # "syn123/app" (None for events not about one repository, e.g. a project trashed)
    project: str | None      # "syn123" or None
    subject: str             # CloudEvents subject: "syn123/app:v1" or "syn123/app@sha256:..." or "syn123"
    actor: str | None        # the user, None for anonymous
    data: dict[str, Any]     # registry-protocol event fields + project, previous digest, platforms

    def pack(self) -> bytes:
        return json.dumps({"id": self.id, "type": self.type, "time": self.time, "repository": self.repository,
                           "project": self.project, "subject": self.subject, "actor": self.actor,
                           "data": self.data}, separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, seq: int, raw: bytes) -> Event:
        record: dict[str, Any] = json.loads(raw)
        return cls(seq=seq, **record)


class Outbox:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        schema.declare(store.index)
        self._events = store.index.table(TABLES[0])
        self._counters = store.index.table(TABLES[1])

    def append(self, txn: WriteTransaction, type: str, *, repository: str | None, project: str | None,
               subject: str, actor: str | None, data: dict[str, Any], time: float) -> Event:
        """Inside the change's own write transaction: the event commits or rolls back with it. The counter is read
        and written in that transaction too, and LMDB serialises writers: seqs are strictly increasing, and a
        rolled-back change gives its seq back (no gaps among committed events)."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        last = txn.get(self._counters, b"seq")
        seq = int(last) + 1 if last is not None else 1
        txn.put(self._counters, b"seq", str(seq).encode())
        event = Event(seq, uuid.uuid4().hex, type, time, repository, project, subject, actor, data)
        txn.put(self._events, seq.to_bytes(8, "big"), event.pack())
        return event

    def after(self, seq: int, limit: int, txn: Transaction | None = None) -> list[Event]:
        """Events with seq > `seq`, in order, at most `limit`."""
        if txn is None:
            with self._store.index.read() as own:
                return self.after(seq, limit, own)
        found: list[Event] = []
        if limit <= 0:
            return found
        for k, v in txn.scan(self._events, start=(max(seq, 0) + 1).to_bytes(8, "big")):
            found.append(Event.unpack(int.from_bytes(k, "big"), v))
            if len(found) >= limit:
                break
        return found

    def last_seq(self) -> int:
        with self._store.index.read() as txn:
            last = txn.get(self._counters, b"seq")
        return int(last) if last is not None else 0

    def page(self, after: int, limit: int, visible: Callable[[Event], bool] | None = None,
             scan: int = FEED_SCAN) -> tuple[list[Event], int, bool]:
        """A feed page: up to `limit` events after `after` that `visible` admits, looking at no more than
        limit + `scan` events (as the catalog does: a caller who may see nothing of a busy registry gets an empty
        page quickly). Returns (events, the seq to continue after, whether more may follow)."""
        found: list[Event] = []
        position = max(after, 0)
        looked = 0
        with self._store.index.read() as txn:
            for k, v in txn.scan(self._events, start=(position + 1).to_bytes(8, "big")):
                seq = int.from_bytes(k, "big")
                if len(found) >= limit:
                    return found, position, True
                if looked >= limit + scan:
                    return found, position, True
                event = Event.unpack(seq, v)
                looked += 1
                position = seq
                if visible is None or visible(event):
                    found.append(event)
        return found, position, False


def rfc3339(moment: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-12-02T01:43:59.123456Z (CloudEvents `time`; Distribution's
    `timestamp` is Go's time.Time, which marshals as RFC 3339 too)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cloudevent(event: Event, source: str) -> dict[str, Any]:
    """CloudEvents 1.0 structured JSON: specversion "1.0", id, source (`source` + "/" + project or registry),
    type, subject, time (RFC 3339 UTC), datacontenttype "application/json", data; extension attribute
    `berthseq` = seq (lower-case alphanumerics only, per the CloudEvents naming rule)."""
    base = source.rstrip("/")
    return {
        "specversion": "1.0",
        "id": event.id,
        "source": f"{base}/{event.project}" if event.project else base,
        "type": event.type,
        "subject": event.subject,
        "time": rfc3339(event.time),
        "datacontenttype": "application/json",
        "berthseq": event.seq,
        "data": event.data,
    }


def compat_envelope(events: list[Event], *, source_addr: str = "", instance_id: str = "",
                    url_base: str = "") -> dict[str, Any]:
    """The classic registry notification envelope {"events": [...]} as Distribution sends with media type
    application/vnd.docker.distribution.events.v1+json (fields: id, timestamp, action, target{mediaType, size,
    digest, length, repository, url, tag}, request{id, addr, host, method, useragent}, actor{name}, source{addr,
    instanceID}). Events with no registry-protocol equivalent (grant changed...) are left out of this format.
    The outbox keeps no request record (a change is not always a request): `request` carries what the event's data
    has of it, empty strings otherwise. `url_base` (e.g. https://registry.example) makes target.url."""
    out: list[dict[str, Any]] = []
    for event in events:
        action = _ACTIONS.get(event.type)
        if action is None or event.repository is None:
            continue
        data = event.data
        digest = data.get("digest", "")
        target: dict[str, Any] = {
            "mediaType": data.get("mediaType", ""),
            "size": data.get("size", 0),
            "digest": digest,
            "length": data.get("size", 0),  # event.go: Length is deprecated, "same as Size"
            "repository": event.repository,
            "url": f"{url_base.rstrip('/')}/v2/{event.repository}/manifests/{digest}" if url_base and digest
            else "",
        }
        if data.get("tag"):
            target["tag"] = data["tag"]
        if event.type == BLOB_MOUNTED and data.get("fromRepository"):
            target["fromRepository"] = data["fromRepository"]
        if event.type == BLOB_MOUNTED and url_base and digest:
            target["url"] = f"{url_base.rstrip('/')}/v2/{event.repository}/blobs/{digest}"
        request = data.get("request") or {}
        out.append({
            "id": event.id,
            "timestamp": rfc3339(event.time),
            "action": action,
            "target": target,
            "request": {name: str(request.get(name, "")) for name in ("id", "addr", "host", "method", "useragent")},
            "actor": {"name": event.actor or ""},
            "source": {"addr": source_addr, "instanceID": instance_id},
        })
    return {"events": out}
