"""A manifest PUT checks its children on a snapshot, outside the single LMDB writer, and re-checks in the write only
what can change in between: here, each such change lands exactly in between, and the PUT must still refuse."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from cas import BlobStore, Digest, WriteTransaction
from registry_core.errors import ManifestBlobUnknown
from registry_core.manifests import OCI_INDEX, OCI_MANIFEST, InvalidManifest
from registry_core.registry import Registry
from tests.conftest import FakeClock
from tests.registry_core.values import digest_of, name_of, ref_of

T = TypeVar("T")
REPO = "syn1/app"


@pytest.fixture
def registry(make_store: Callable[..., BlobStore]) -> Iterator[Registry]:
    yield Registry(make_store(grace=100.0, lease=30.0))


def blob(registry: Registry, data: bytes) -> dict[str, Any]:
    info = registry.ingest_blob(name_of(REPO), data, Digest.of(data))
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(info.digest), "size": info.size}


def image(config: dict[str, Any], *layers: dict[str, Any]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": list(layers)}
                      ).encode()


def before_the_write(registry: Registry, meanwhile: Callable[[], object]) -> list[int]:
    """Run `meanwhile` once, after the PUT's snapshot checks and before its write transaction begins (it is the
    PUT's only write). Returns a list that counts the write transactions the PUT itself opened."""
    transact = registry.store.index.transact
    opened: list[int] = []

    def hooked(work: Callable[[WriteTransaction], T]) -> T:
        if not opened:
            opened.append(1)
            registry.store.index.transact = transact  # type: ignore[method-assign]
            meanwhile()
        return transact(work)

    registry.store.index.transact = hooked  # type: ignore[method-assign]
    return opened


def assert_nothing_stored(registry: Registry, body: bytes) -> None:
    with pytest.raises(LookupError):
        registry.get_manifest(name_of(REPO), Digest.of(body))
    assert registry.list_tags(name_of(REPO))[0] == []


def test_a_blob_unlinked_after_the_check_is_caught_in_the_write(registry: Registry) -> None:
    config, layer = blob(registry, b"{}"), blob(registry, b"layer")
    body = image(config, layer)
    before_the_write(registry, lambda: registry.delete_blob(name_of(REPO), digest_of(layer["digest"])))
    with pytest.raises(ManifestBlobUnknown, match=layer["digest"]):
        registry.put_manifest(name_of(REPO), ref_of("v1"), body, OCI_MANIFEST)
    assert_nothing_stored(registry, body)


def test_a_blob_collected_after_the_check_is_caught_in_the_write(registry: Registry, clock: FakeClock) -> None:
    config, layer = blob(registry, b"{}"), blob(registry, b"layer")
    clock.advance(1000)  # past grace and lease: nothing holds the layer but its link, which holds nothing
    body = image(config, layer)

    def collect() -> None:
        report = registry.store.gc.run()
        assert Digest.parse(layer["digest"]) in [digest for digest, _ in report.collected]

    before_the_write(registry, collect)
    with pytest.raises(ManifestBlobUnknown):
        registry.put_manifest(name_of(REPO), ref_of("v1"), body, OCI_MANIFEST)


def test_a_child_manifest_deleted_after_the_check_is_caught_in_the_write(registry: Registry) -> None:
    child = image(blob(registry, b"{}"))
    registry.put_manifest(name_of(REPO), Digest.of(child), child, OCI_MANIFEST)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(child)), "size": len(child)}]}).encode()
    before_the_write(registry, lambda: registry.delete_manifest(name_of(REPO), Digest.of(child)))
    with pytest.raises(ManifestBlobUnknown, match=str(Digest.of(child))):
        registry.put_manifest(name_of(REPO), ref_of("multi"), index, OCI_INDEX)
    assert_nothing_stored(registry, index)


def test_a_refused_manifest_never_opens_a_write(registry: Registry) -> None:
    config = blob(registry, b"{}")
    missing = {**config, "digest": str(Digest.of(b"never pushed")), "size": 12}
    opened = before_the_write(registry, lambda: None)
    with pytest.raises(ManifestBlobUnknown):
        registry.put_manifest(name_of(REPO), ref_of("v1"), image(config, missing), OCI_MANIFEST)
    with pytest.raises(InvalidManifest, match="2 bytes"):
        registry.put_manifest(name_of(REPO), ref_of("v1"), image(config | {"size": 3}), OCI_MANIFEST)
    assert opened == []


def test_a_layer_named_twice_is_checked_with_each_size_and_held_once(registry: Registry) -> None:
    config, layer = blob(registry, b"{}"), blob(registry, b"layer")
    with pytest.raises(InvalidManifest, match="5 bytes"):
        registry.put_manifest(name_of(REPO), ref_of("v1"), image(config, layer, layer | {"size": 6}), OCI_MANIFEST)
    body = image(config, layer, layer, layer)
    digest = registry.put_manifest(name_of(REPO), ref_of("v1"), body, OCI_MANIFEST).digest
    retention = registry.store.gc.explain(layer["digest"])
    assert retention.refcount == 1 and len(retention.holders) == 1 and str(digest.hex[:64]) in retention.holders[0]
