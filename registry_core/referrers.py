"""Referrers: which manifests in a repository name a given digest as their `subject` (OCI distribution-spec v1.1)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cas import Digest, Table, Transaction, WriteTransaction

from .manifests import OCI_INDEX, Manifest
from .schema import key


@dataclass(frozen=True, slots=True)
class ReferrerIndex:
    table: Table

    def add(self, txn: WriteTransaction, repo: str, manifest: Manifest, digest: Digest) -> None:
        assert manifest.subject is not None
        descriptor: dict[str, Any] = {"mediaType": manifest.media_type, "digest": str(digest), "size": manifest.size}
        if manifest.artifact_type:
            descriptor["artifactType"] = manifest.artifact_type
        if manifest.annotations:
            descriptor["annotations"] = dict(manifest.annotations)
        txn.put(self.table, key(repo, manifest.subject.digest.key, digest.key),
                json.dumps(descriptor, separators=(",", ":")).encode())

    def remove(self, txn: WriteTransaction, repo: str, subject: Digest, digest: Digest) -> None:
        txn.delete(self.table, key(repo, subject.key, digest.key))

    def of(self, txn: Transaction, repo: str, subject: Digest, artifact_type: str | None = None) -> list[Any]:
        found = []
        for _, raw in txn.scan(self.table, prefix=key(repo, subject.key, b"")):
            descriptor = json.loads(raw)
            if artifact_type is None or descriptor.get("artifactType") == artifact_type:
                found.append(descriptor)
        return found


def referrers_index(descriptors: list[Any]) -> bytes:
    """The body of a referrers response: an OCI image index listing the descriptors."""
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors},
                      separators=(",", ":")).encode()
