"""The outbox: every change writes exactly its event, in its own transaction, in order; a refused change none; and
the two wire formats hold to their specs (CloudEvents 1.0, Distribution's notification envelope)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import BlobStore, Digest
from registry_core import events as ev
from registry_core.accounts import Accounts
from registry_core.errors import ManifestBlobUnknown, ManifestUnknown
from registry_core.events import COMPAT_MEDIA_TYPE, EVENT_TYPES, Event, cloudevent, compat_envelope
from registry_core.manifests import OCI_INDEX, OCI_MANIFEST
from registry_core.projects import ProjectError, Projects
from registry_core.registry import Purged, Registry, RegistryConfig
from tests.conftest import FakeClock
from tests.registry_core.values import digest_of, name_of, ref_of

# CloudEvents 1.0 (cloudevents/spec, cloudevents/spec.md "REQUIRED Attributes"): every event has these.
CE_REQUIRED = {"id", "source", "specversion", "type"}
# Its OPTIONAL attributes Berth sets (spec.md "OPTIONAL Attributes"), and the one extension (`berthseq`).
CE_OPTIONAL = {"subject", "time", "datacontenttype", "data", "berthseq"}
# spec.md "Attribute Naming Convention": lower-case ASCII letters and digits only.
CE_NAME = re.compile(r"[a-z0-9]+")
# RFC 3339 date-time (section 5.6), as `time` must be (spec.md "time": Timestamp, RFC 3339).
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")

# distribution/distribution notifications/event.go (and docs/notifications.md "Events"): the JSON fields of an
# Event, of its Target (distribution.Descriptor's mediaType, size, digest + length, repository, url, tag;
# fromRepository for a mount), RequestRecord, ActorRecord and SourceRecord, and the four actions.
DIST_EVENT = {"id", "timestamp", "action", "target", "request", "actor", "source"}
DIST_TARGET = {"mediaType", "size", "digest", "length", "repository", "url"}
DIST_TARGET_OPTIONAL = {"tag", "fromRepository"}
DIST_REQUEST = {"id", "addr", "host", "method", "useragent"}
DIST_ACTOR = {"name"}
DIST_SOURCE = {"addr", "instanceID"}
DIST_ACTIONS = {"pull", "push", "mount", "delete"}


@pytest.fixture
def registry(make_store: Callable[..., BlobStore]) -> Registry:
    return Registry(make_store())


def blob(registry: Registry, repo: str, data: bytes) -> dict[str, Any]:
    info = registry.ingest_blob(name_of(repo), data, Digest.of(data))
    return {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(info.digest), "size": info.size}


def image(config: dict[str, Any], n: int = 0, **extra: Any) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [],
                       "annotations": {"n": str(n)}, **extra}).encode()


def events(registry: Registry, after: int = 0) -> list[Event]:
    return registry.outbox.after(after, 10_000)


def kinds(found: list[Event]) -> list[str]:
    return [e.type.removeprefix("org.berth.") for e in found]


def test_a_push_writes_repository_created_manifest_pushed_and_tag_created(registry: Registry) -> None:
    config = blob(registry, "syn1/app", b"{}")
    assert kinds(events(registry)) == ["repository.created"]
    body = image(config)
    registry.put_manifest(name_of("syn1/app"), ref_of("v1"), body, None, actor="alice")
    pushed, tagged = events(registry, 1)
    digest = str(Digest.of(body))
    assert pushed.type == ev.MANIFEST_PUSHED and pushed.actor == "alice"
    assert pushed.subject == f"syn1/app@{digest}" and pushed.repository == "syn1/app" and pushed.project == "syn1"
    assert pushed.data == {"repository": "syn1/app", "project": "syn1", "digest": digest, "mediaType": OCI_MANIFEST,
                           "size": len(body), "tag": "v1",
                           "artifactType": "application/vnd.oci.image.config.v1+json"}
    assert tagged.type == ev.TAG_CREATED and tagged.subject == "syn1/app:v1" and tagged.data["digest"] == digest


def test_a_tag_moved_carries_the_previous_digest_and_a_delete_untags(registry: Registry) -> None:
    config = blob(registry, "syn1/app", b"{}")
    one, two = image(config, 1), image(config, 2)
    registry.put_manifest(name_of("syn1/app"), ref_of("v1"), one, None)
    start = registry.outbox.last_seq()
    registry.put_manifest(name_of("syn1/app"), ref_of("v1"), one, None)  # the same: a push, no tag event
    registry.put_manifest(name_of("syn1/app"), ref_of("v1"), two, None, actor="bob")
    registry.delete_manifest(name_of("syn1/app"), Digest.of(two), actor="carol")
    found = events(registry, start)
    assert kinds(found) == ["manifest.pushed", "manifest.pushed", "tag.moved", "tag.deleted", "manifest.deleted"]
    moved = found[2]
    assert moved.data["previousDigest"] == str(Digest.of(one)) and moved.data["digest"] == str(Digest.of(two))
    assert found[3].data == {"repository": "syn1/app", "project": "syn1", "tag": "v1", "digest": str(Digest.of(two))}
    assert found[4].actor == "carol" and found[4].data["mediaType"] == OCI_MANIFEST
    registry.put_manifest(name_of("syn1/app"), ref_of("v2"), one, None)
    registry.delete_manifest(name_of("syn1/app"), ref_of("v2"))
    assert kinds(events(registry, found[-1].seq)) == ["manifest.pushed", "tag.created", "tag.deleted"]


def test_a_refused_change_leaves_no_event(registry: Registry) -> None:
    config = blob(registry, "syn1/app", b"{}")
    before = events(registry)
    missing = {"mediaType": "application/octet-stream", "digest": str(Digest.of(b"nowhere")), "size": 7}
    with pytest.raises(ManifestBlobUnknown):  # checked on a snapshot, before the write
        registry.put_manifest(name_of("syn1/app"), ref_of("v1"), image(config, layers=[missing]), None)
    with pytest.raises(ManifestBlobUnknown):
        registry.put_manifest(name_of("syn1/other"), ref_of("v1"), image(config), None)  # not even repository.created
    with pytest.raises(ManifestUnknown):
        registry.delete_manifest(name_of("syn1/app"), ref_of("nope"))
    assert events(registry) == before
    # The blob vanishes between the snapshot check and the write: the write transaction raises, its events with it.
    body = image(config, 5)
    original = registry._check_children
    registry._check_children = lambda repo, m: (registry.delete_blob(name_of(repo), digest_of(config["digest"])),  # type: ignore
                                                original(repo, m))[1]
    with pytest.raises(ManifestBlobUnknown):
        registry.put_manifest(name_of("syn1/app"), ref_of("v9"), body, None)
    assert events(registry) == before
    assert registry.outbox.last_seq() == before[-1].seq  # the rolled-back seq is given again: no gaps


def test_an_index_carries_its_childrens_platforms(registry: Registry) -> None:
    config = blob(registry, "syn1/app", b"{}")
    arm, amd = image(config, 1), image(config, 2)
    for body in (arm, amd):
        registry.put_manifest(name_of("syn1/app"), Digest.of(body), body, None)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(arm)), "size": len(arm),
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(amd)), "size": len(amd),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    registry.put_manifest(name_of("syn1/app"), ref_of("multi"), index, None)
    pushed = [e for e in events(registry) if e.type == ev.MANIFEST_PUSHED][-1]
    assert pushed.data["mediaType"] == OCI_INDEX and pushed.data["tag"] == "multi"
    assert pushed.data["platforms"] == [
        {"digest": str(Digest.of(arm)), "mediaType": OCI_MANIFEST, "architecture": "arm64", "os": "linux",
         "variant": "v8"},
        {"digest": str(Digest.of(amd)), "mediaType": OCI_MANIFEST, "architecture": "amd64", "os": "linux"}]


def test_an_artifact_carries_its_artifact_type(registry: Registry) -> None:
    config = blob(registry, "syn1/app", b"{}")
    subject = image(config)
    registry.put_manifest(name_of("syn1/app"), ref_of("v1"), subject, None)
    empty = blob(registry, "syn1/app", b"{ }")
    sbom = image(empty, artifactType="application/spdx+json",
                 subject={"mediaType": OCI_MANIFEST, "digest": str(Digest.of(subject)), "size": len(subject)})
    registry.put_manifest(name_of("syn1/app"), Digest.of(sbom), sbom, None)
    pushed = events(registry)[-1]
    assert pushed.data["artifactType"] == "application/spdx+json"
    assert pushed.data["subjectDigest"] == str(Digest.of(subject)) and "tag" not in pushed.data


def test_mount_pull_purge_and_the_project_lifecycle(make_store: Callable[..., BlobStore]) -> None:
    registry = Registry(make_store(), RegistryConfig(pull_events=True))
    Accounts(registry.store).add_user("owner")
    Accounts(registry.store).add_user("ann")
    projects = Projects(registry.store)
    pid = projects.create("p", "owner").id
    config = blob(registry, f"{pid}/a", b"{}")
    start = registry.outbox.last_seq()
    assert registry.mount_blob(name_of(f"{pid}/b"), digest_of(config["digest"]), name_of(f"{pid}/a"),
                               actor="ann") is not None
    body = image(config)
    registry.put_manifest(name_of(f"{pid}/b"), ref_of("v1"), body, None)
    registry.get_manifest(name_of(f"{pid}/b"), ref_of("v1"), actor="ann")  # pull=False: a HEAD, or an internal read
    registry.get_manifest(name_of(f"{pid}/b"), ref_of("v1"), actor="ann", pull=True)
    projects.grant(pid, "ann", "view", actor="owner")
    projects.grant(pid, "ann", "view", actor="owner")  # no change, no event
    projects.revoke(pid, "ann", actor="owner")
    projects.trash(f"{pid}/b", actor="owner")
    projects.restore(f"{pid}/b", actor="owner")
    with pytest.raises(ProjectError, match="not in the trash"):
        registry.purge(pid, actor="root")
    projects.trash(pid, actor="owner")
    with pytest.raises(ProjectError, match="no repository"):
        registry.purge(f"{pid}/never-pushed", actor="root")
    assert registry.purge(pid, actor="root") == Purged(pid, 2, 1)  # as `berth purge` does: one call
    found = events(registry, start)
    assert kinds(found) == [
        "repository.created", "blob.mounted", "manifest.pushed", "tag.created", "manifest.pulled",
        "grant.changed", "grant.changed", "repository.trashed", "repository.restored", "project.trashed",
        "repository.purged", "repository.purged", "project.purged"]
    mounted = found[1]
    assert mounted.data["fromRepository"] == f"{pid}/a" and mounted.actor == "ann"
    assert found[4].data["tag"] == "v1" and found[4].actor == "ann"
    assert found[5].data == {"repository": None, "project": pid, "target": pid, "principal": "ann", "level": "view",
                             "previousLevel": None}
    assert found[6].data["level"] is None and found[6].data["previousLevel"] == "view"
    assert found[9].repository is None and found[9].project == pid and found[9].subject == pid
    assert [e.repository for e in found[10:12]] == [f"{pid}/a", f"{pid}/b"]
    assert found[10].data["manifests"] == 0 and found[11].data["manifests"] == 1


def test_pulls_write_nothing_by_default(registry: Registry) -> None:
    config = blob(registry, "syn1/app", b"{}")
    registry.put_manifest(name_of("syn1/app"), ref_of("v1"), image(config), None)
    before = registry.outbox.last_seq()
    registry.get_manifest(name_of("syn1/app"), ref_of("v1"), pull=True)
    assert registry.outbox.last_seq() == before


def test_cloudevent_has_every_required_attribute(registry: Registry, clock: FakeClock) -> None:
    config = blob(registry, "syn1/app", b"{}")
    registry.put_manifest(name_of("syn1/app"), ref_of("v1"), image(config), None, actor="alice")
    for event in events(registry):
        ce = cloudevent(event, "https://registry.example/")
        assert CE_REQUIRED <= ce.keys() <= CE_REQUIRED | CE_OPTIONAL
        assert all(CE_NAME.fullmatch(name) for name in ce)
        assert ce["specversion"] == "1.0" and ce["type"] in EVENT_TYPES and ce["id"] == event.id
        assert ce["source"] == "https://registry.example/syn1" and ce["datacontenttype"] == "application/json"
        assert all(isinstance(ce[a], str) and ce[a] for a in ("id", "source", "type", "subject"))
        assert RFC3339.fullmatch(ce["time"])
        assert datetime.fromisoformat(ce["time"].replace("Z", "+00:00")).timestamp() == pytest.approx(clock.now)
        assert ce["berthseq"] == event.seq and json.loads(json.dumps(ce)) == ce
    assert len({e.id for e in events(registry)}) == len(events(registry))


def test_compat_envelope_has_distributions_fields(registry: Registry) -> None:
    config = blob(registry, "syn1/app", b"{}")
    body = image(config)
    registry.put_manifest(name_of("syn1/app"), ref_of("v1"), body, None, actor="alice")
    registry.mount_blob(name_of("syn1/b"), digest_of(config["digest"]), name_of("syn1/app"))
    registry.delete_manifest(name_of("syn1/app"), ref_of("v1"))
    envelope = compat_envelope(events(registry), source_addr="host:5000", url_base="https://r.example")
    assert COMPAT_MEDIA_TYPE == "application/vnd.docker.distribution.events.v1+json"
    assert list(envelope) == ["events"]
    sent = envelope["events"]
    assert [e["action"] for e in sent] == ["push", "mount", "delete"]  # created/tag events have no equivalent
    for event in sent:
        assert event.keys() == DIST_EVENT and event["action"] in DIST_ACTIONS
        assert DIST_TARGET <= event["target"].keys() <= DIST_TARGET | DIST_TARGET_OPTIONAL
        assert event["request"].keys() == DIST_REQUEST and event["actor"].keys() == DIST_ACTOR
        assert event["source"].keys() == DIST_SOURCE and RFC3339.fullmatch(event["timestamp"])
    push = sent[0]["target"]
    assert push == {"mediaType": OCI_MANIFEST, "size": len(body), "digest": str(Digest.of(body)),
                    "length": len(body), "repository": "syn1/app", "tag": "v1",
                    "url": f"https://r.example/v2/syn1/app/manifests/{Digest.of(body)}"}
    assert sent[0]["actor"] == {"name": "alice"} and sent[1]["target"]["fromRepository"] == "syn1/app"
    assert sent[2]["target"]["tag"] == "v1"


def test_the_feed_page_is_bounded_and_continues(registry: Registry) -> None:
    for i in range(30):
        blob(registry, f"syn1/r{i:02}", b"{}")  # one repository.created each
    found, last, more = registry.outbox.page(0, 5, lambda e: e.repository == "syn1/r29", scan=10)
    assert found == [] and last == 15 and more  # looked at 5 + 10, answered with where to go on
    found, last, more = registry.outbox.page(last, 5, lambda e: e.repository == "syn1/r29", scan=10)
    assert [e.seq for e in found] == [30] and last == 30 and not more
    found, last, more = registry.outbox.page(0, 10, None)
    assert [e.seq for e in found] == list(range(1, 11)) and last == 10 and more


# -- a model: random pushes, tag moves and deletes give exactly the model's events --------------------------------
Step = tuple[str, int, int]  # ("push", tag, manifest) | ("untag", tag, _) | ("delete", _, manifest)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["push", "untag", "delete"]), st.integers(0, 2), st.integers(0, 2)),
                max_size=12))
def test_events_follow_a_model(registry: Registry, steps: list[Step]) -> None:
    repo = f"syn1/m{registry.outbox.last_seq()}"  # the store outlives one example: a fresh repository each time
    config = blob(registry, repo, b"{}")
    bodies = [image(config, i) for i in range(3)]
    digests = [str(Digest.of(b)) for b in bodies]
    start = registry.outbox.last_seq()
    tags: dict[str, str] = {}
    stored: set[str] = set()
    expected: list[tuple[str, dict[str, Any]]] = []
    for action, t, m in steps:
        tag, digest = f"t{t}", digests[m]
        if action == "push":
            registry.put_manifest(name_of(repo), ref_of(tag), bodies[m], None)
            stored.add(digest)
            expected.append((ev.MANIFEST_PUSHED, {"digest": digest, "tag": tag}))
            if tags.get(tag) is None:
                expected.append((ev.TAG_CREATED, {"digest": digest, "tag": tag}))
            elif tags[tag] != digest:
                expected.append((ev.TAG_MOVED, {"digest": digest, "tag": tag, "previousDigest": tags[tag]}))
            tags[tag] = digest
        elif action == "untag":
            if tag in tags:
                registry.delete_manifest(name_of(repo), ref_of(tag))
                expected.append((ev.TAG_DELETED, {"digest": tags.pop(tag), "tag": tag}))
            else:
                with pytest.raises(ManifestUnknown):
                    registry.delete_manifest(name_of(repo), ref_of(tag))
        elif digest in stored:
            registry.delete_manifest(name_of(repo), ref_of(digest))
            for gone in sorted(t for t, d in tags.items() if d == digest):
                expected.append((ev.TAG_DELETED, {"digest": digest, "tag": gone}))
                del tags[gone]
            expected.append((ev.MANIFEST_DELETED, {"digest": digest}))
            stored.discard(digest)
        else:
            with pytest.raises(ManifestUnknown):
                registry.delete_manifest(name_of(repo), ref_of(digest))
    found = events(registry, start)
    assert [e.seq for e in found] == list(range(start + 1, start + 1 + len(found)))  # strictly increasing, no gaps
    assert [(e.type, {k: e.data.get(k) for k in want}) for e, (_, want) in zip(found, expected, strict=False)] \
        == expected
    assert len(found) == len(expected)
