"""The Registry facade over a real store: reachability, atomic manifest PUTs, tags and history, deletion and GC."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import BlobStore, BlobUnknown, Digest, UploadUnknown
from registry_core.errors import (
    ManifestBlobUnknown,
    ManifestUnknown,
    NameUnknown,
    NotAcceptable,
    TokenExpired,
    TooManyUploads,
)
from registry_core.manifests import OCI_INDEX, OCI_MANIFEST, InvalidManifest
from registry_core.registry import UPLOAD_GRACE_IDLE, UPLOADS_PER_ACCOUNT, BlobInUse, Registry
from registry_core.tokens import LEEWAY
from tests.conftest import FakeClock, StoreFactory
from tests.registry_core.values import digest_of, name_of, ref_of


@pytest.fixture
def registry(make_store: Callable[..., BlobStore]) -> Iterator[Registry]:
    yield Registry(make_store(grace=100.0))


def blob(registry: Registry, repo: str, data: bytes, media_type: str = "application/octet-stream") -> dict[str, Any]:
    info = registry.ingest_blob(name_of(repo), data, Digest.of(data))
    return {"mediaType": media_type, "digest": str(info.digest), "size": info.size}


def manifest(*blobs: dict[str, Any], **extra: Any) -> bytes:
    config, *layers = blobs
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers,
                       **extra}).encode()


def test_blobs_are_readable_only_where_they_were_pushed_or_referenced(registry: Registry) -> None:
    config = blob(registry, "syn1/a", b"{}")
    with pytest.raises(BlobUnknown):
        registry.stat_blob(name_of("syn1/b"), digest_of(config["digest"]))
    body = manifest(config)
    with pytest.raises(ManifestBlobUnknown):
        registry.put_manifest(name_of("syn1/b"), ref_of("v1"), body, None)  # knowing the digest is not enough
    assert not registry.exists(name_of("syn1/b"))  # the failed PUT left nothing behind, not even the repository
    assert registry.mount_blob(name_of("syn1/b"), digest_of(config["digest"]), name_of("syn1/a")) is not None
    registry.put_manifest(name_of("syn1/b"), ref_of("v1"), body, None)
    assert registry.stat_blob(name_of("syn1/b"), digest_of(config["digest"])).size == 2


def test_sizes_in_a_manifest_must_match(registry: Registry) -> None:
    config = blob(registry, "syn1/a", b"{}")
    with pytest.raises(InvalidManifest, match="2 bytes"):
        registry.put_manifest(name_of("syn1/a"), ref_of("v1"), manifest(config | {"size": 3}), None)


def test_tag_moves_are_recorded_with_their_actor(registry: Registry, clock: FakeClock) -> None:
    config = blob(registry, "syn1/a", b"{}")
    one, two = manifest(config, annotations={"n": "1"}), manifest(config, annotations={"n": "2"})
    registry.put_manifest(name_of("syn1/a"), ref_of("latest"), one, None, actor="alice")
    registry.put_manifest(name_of("syn1/a"), ref_of("latest"), one, None, actor="alice")  # no move, no entry
    clock.advance(5)
    registry.put_manifest(name_of("syn1/a"), ref_of("latest"), two, None, actor="bob")
    registry.delete_manifest(name_of("syn1/a"), ref_of("latest"), actor="carol")
    history = registry.tag_history(name_of("syn1/a"), "latest")
    assert [(h.digest, h.actor) for h in history] == [
        (str(Digest.of(one)), "alice"), (str(Digest.of(two)), "bob"), (None, "carol")]
    assert history[1].time == history[0].time + 5
    with pytest.raises(ManifestUnknown):
        registry.get_manifest(name_of("syn1/a"), ref_of("latest"))
    assert registry.get_manifest(name_of("syn1/a"), Digest.of(two)).body == two  # untagging keeps the manifest


def test_deleting_a_manifest_lets_gc_take_what_nothing_else_holds(registry: Registry, clock: FakeClock) -> None:
    config = blob(registry, "syn1/a", b"{}")
    shared = blob(registry, "syn1/a", os.urandom(100))
    own = blob(registry, "syn1/a", os.urandom(100))
    first, second = manifest(config, shared, own), manifest(config, shared)
    registry.put_manifest(name_of("syn1/a"), ref_of("one"), first, None)
    registry.put_manifest(name_of("syn1/a"), ref_of("two"), second, None)
    with pytest.raises(BlobInUse):
        registry.delete_blob(name_of("syn1/a"), digest_of(own["digest"]))
    registry.delete_manifest(name_of("syn1/a"), Digest.of(first))
    assert registry.list_tags(name_of("syn1/a")) == (["two"], False)
    clock.advance(99)
    assert registry.store.gc.run().collected == []  # the grace period runs from the drop
    clock.advance(1)
    collected = {str(d) for d, _ in registry.store.gc.run().collected}
    assert collected == {own["digest"], str(Digest.of(first))}  # a link to the repository holds nothing
    with pytest.raises(BlobUnknown):
        registry.stat_blob(name_of("syn1/a"), digest_of(own["digest"]))
    assert registry.get_manifest(name_of("syn1/a"), ref_of("two")).body == second
    info = registry.stat_blob(name_of("syn1/a"), digest_of(shared["digest"]))
    assert registry.open_blob(info).read() == registry.store.read_bytes(shared["digest"])


def test_an_index_keeps_its_children_readable(registry: Registry) -> None:
    child = manifest(blob(registry, "syn1/a", b"{}"))
    registry.put_manifest(name_of("syn1/a"), Digest.of(child), child, None)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(child)), "size": len(child)}]}).encode()
    registry.put_manifest(name_of("syn1/a"), ref_of("multi"), index, OCI_INDEX)
    registry.delete_manifest(name_of("syn1/a"), Digest.of(child))
    found = registry.get_manifest(name_of("syn1/a"), Digest.of(child))  # still named by the tagged index
    assert found.body == child and found.media_type == OCI_MANIFEST
    with pytest.raises(NotAcceptable):
        registry.get_manifest(name_of("syn1/a"), ref_of("multi"),
                              ["application/vnd.docker.distribution.manifest.v2+json"])
    assert registry.get_manifest(name_of("syn1/a"), ref_of("multi"), ["application/*"]).body == index


def test_unknown_repository(registry: Registry) -> None:
    with pytest.raises(NameUnknown):
        registry.list_tags(name_of("syn1/none"))
    with pytest.raises(NameUnknown):
        registry.get_manifest(name_of("syn1/none"), ref_of("v1"))


@settings(max_examples=30, deadline=None)
@given(tags=st.sets(st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}", fullmatch=True), min_size=1, max_size=25),
       n=st.integers(1, 30))
def test_tag_pages_concatenate_to_the_sorted_list(tmp_path_factory: pytest.TempPathFactory,
                                                  store_factory: StoreFactory, tags: set[str], n: int) -> None:
    with Registry(store_factory(tmp_path_factory.mktemp("tags"))) as registry:
        body = manifest(blob(registry, "syn1/a", b"{}"))
        for tag in tags:
            registry.put_manifest(name_of("syn1/a"), ref_of(tag), body, None)
        pages, last, more = [], None, True
        while more:
            page, more = registry.list_tags(name_of("syn1/a"), n, last)
            assert len(page) <= n and (page or not more)
            pages.extend(page)
            last = page[-1] if page else last
        assert pages == sorted(tags, key=lambda t: t.encode())
        assert registry.list_tags(name_of("syn1/a"))[0] == pages


def test_open_upload_sessions_are_capped_per_account(tmp_path_factory: pytest.TempPathFactory,
                                                     store_factory: StoreFactory) -> None:
    with Registry(store_factory(tmp_path_factory.mktemp("cap"))) as registry:
        sessions = [registry.start_upload(name_of("syn1/app"), "alice") for _ in range(UPLOADS_PER_ACCOUNT)]
        with pytest.raises(TooManyUploads, match="alice already has 256 open upload sessions"):
            registry.start_upload(name_of("syn1/app"), "alice")
        registry.start_upload(name_of("syn1/app"), "bob")  # a cap per account: others are not affected
        registry.cancel_upload(name_of("syn1/app"), sessions[0].id, "alice")  # an ended session frees its place
        data = b"finished"
        registry.finish_upload(name_of("syn1/app"), sessions[1].id, Digest.of(data), [data], actor="alice")
        registry.store.uploads.cancel(sessions[2].id)  # ended below the registry (as by expiry): noticed too
        for _ in range(3):
            registry.start_upload(name_of("syn1/app"), "alice")
        with pytest.raises(TooManyUploads):
            registry.start_upload(name_of("syn1/app"), "alice")


def test_an_expired_token_continues_only_its_owners_session_while_it_progresses(
        tmp_path_factory: pytest.TempPathFactory, store_factory: StoreFactory, clock: FakeClock) -> None:
    with Registry(store_factory(tmp_path_factory.mktemp("grace"), clock=clock)) as registry:
        app, other = name_of("syn1/app"), name_of("syn1/other")
        session = registry.start_upload(app, "alice")
        registry.append_upload(app, session.id, [b"x" * 100], 0, actor="alice")
        expired, valid = clock() - LEEWAY - 1, clock() + 60
        assert registry.append_upload(app, session.id, [b"y"], 100, actor="alice", token_expires=expired).offset == 101
        for repo, session_id, actor in [(app, session.id, "mallory"),  # not hers
                                        (other, session.id, "alice"),  # not in that repository
                                        (app, "0" * 32, "alice")]:  # no such session
            with pytest.raises(TokenExpired):
                registry.append_upload(repo, session_id, [b"z"], 101, actor=actor, token_expires=expired)
            with pytest.raises(UploadUnknown):  # with a valid token: the session does not exist for them
                registry.append_upload(repo, session_id, [b"z"], 101, actor=actor, token_expires=valid)
        clock.advance(UPLOAD_GRACE_IDLE + 1)
        with pytest.raises(TokenExpired):  # idle: the grace is over, and the refused chunk left nothing
            registry.append_upload(app, session.id, [b"z"], 101, actor="alice", token_expires=expired)
        registry.append_upload(app, session.id, [b"z"], 101, actor="alice")  # progress (a new token) renews it
        data = b"x" * 100 + b"yz!"
        info = registry.finish_upload(app, session.id, Digest.of(data), [b"!"], actor="alice", token_expires=expired)
        assert info.size == len(data) and registry.stat_blob(app, info.digest).size == len(data)
