"""What a request does once (STYLE: one hash of a manifest body, one commit of a monolithic upload or of a session's
start; one stat of a blob per GET is tests/adapters/test_blob_get.py's): counted, so that a second one coming back
fails here."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cas import BlobStore, Digest
from registry_core.manifests import OCI_MANIFEST
from registry_core.names import RepositoryName, parse_reference
from registry_core.registry import Registry

REPO = RepositoryName.parse("syn1/app")


class Commits:
    """Counts the index's outermost write transactions (a `transact` runs a `write` inside: one commit)."""

    def __init__(self, store: BlobStore) -> None:
        self.count, self._depth = 0, 0
        index = store.index
        write, transact = index.write, index.transact

        @contextlib.contextmanager
        def counted_write() -> Iterator[Any]:
            with self._outermost(), write() as txn:
                yield txn

        def counted_transact(work: Callable[[Any], Any]) -> Any:
            with self._outermost():
                return transact(work)

        index.write = counted_write  # type: ignore[method-assign]
        index.transact = counted_transact  # type: ignore[method-assign]

    @contextlib.contextmanager
    def _outermost(self) -> Iterator[None]:
        self.count += self._depth == 0
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1


@pytest.fixture
def registry(store: BlobStore) -> Registry:
    return Registry(store)


def _image(registry: Registry) -> bytes:
    config = b'{"a":1}'
    registry.ingest_blob(REPO, config, Digest.of(config))
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of(config)),
        "size": len(config)}, "layers": []}).encode()


@pytest.mark.parametrize("reference", ["v1", "sha256", "sha512", "blake3"])
def test_a_manifest_put_hashes_its_body_once(registry: Registry, monkeypatch: pytest.MonkeyPatch,
                                             reference: str) -> None:
    body = _image(registry)
    ref = parse_reference(reference) if reference == "v1" else Digest.of(body, reference)
    hashed: list[str] = []
    of = Digest.of

    def counting(data: bytes, algorithm: str = "sha256") -> Digest:
        if data == body:
            hashed.append(algorithm)
        return of(data, algorithm)

    monkeypatch.setattr(Digest, "of", staticmethod(counting))
    commits = Commits(registry.store)
    result = registry.put_manifest(REPO, ref, body, OCI_MANIFEST)
    assert hashed == [result.digest.algorithm] and commits.count == 1


@pytest.mark.parametrize("stored_before", [False, True])
def test_a_monolithic_upload_commits_once(registry: Registry, stored_before: bool) -> None:
    data = b"layer bytes" * 1000
    if stored_before:  # a dedup hit (a base layer another image uses): the bytes are verified, the link commits
        # (A blob nobody references is leased first, one commit more, so that GC leaves it alone while the bytes
        # are verified: cas.BlobStore.ingest.)
        other = RepositoryName.parse("syn1/other")
        registry.ingest_blob(other, data, Digest.of(data))
        config = json.loads(_image(registry))["config"]
        registry.mount_blob(other, Digest.parse(config["digest"]), REPO)
        registry.put_manifest(other, "base", json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(Digest.of(data)),
                "size": len(data)}]}).encode(), OCI_MANIFEST)
    commits = Commits(registry.store)
    registry.ingest_blob(REPO, data, Digest.of(data))
    assert commits.count == 1 and registry.stat_blob(REPO, Digest.of(data)).size == len(data)


def test_an_upload_session_starts_with_one_commit_and_finishes_with_one(registry: Registry) -> None:
    commits = Commits(registry.store)
    session = registry.start_upload(REPO, "alice")
    assert commits.count == 1
    data = b"chunk" * 100
    registry.finish_upload(REPO, session.id, Digest.of(data), [data], actor="alice")
    assert commits.count == 2 and registry.stat_blob(REPO, Digest.of(data)).size == len(data)
