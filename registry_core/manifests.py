"""Manifests and indexes: parsed by media type to find what they reference; stored byte for byte.

Accepted media types (Content-Type of a PUT, or the body's `mediaType` when Content-Type is missing or generic):
    application/vnd.oci.image.manifest.v1+json                 config + layers, optional subject/artifactType
    application/vnd.oci.image.index.v1+json                    manifests, optional subject/artifactType
    application/vnd.docker.distribution.manifest.v2+json       config + layers
    application/vnd.docker.distribution.manifest.list.v2+json  manifests
Docker schema 1 (signed, deprecated since 2017, refused by Distribution 2.8 by default) is refused.

Parsing validates structure (schemaVersion 2, descriptors with a media type, a valid digest and a non-negative
size) and returns what the manifest names: blobs (config, layers) and child manifests, plus its subject. Whether
those exist in the repository is the repository's business (repositories.py), not the parser's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cas import Digest, InvalidDigest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
# Distribution-spec: a manifest of at least 4 MiB must be accepted; larger ones may be refused (413).
DEFAULT_MAX_MANIFEST = 4 << 20


class InvalidManifest(ValueError):
    """A manifest body that does not parse or validate (MANIFEST_INVALID)."""


class UnsupportedMediaType(InvalidManifest):
    """A manifest media type Berth does not store."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    digest: Digest  # of the bytes as sent
    size: int
    blobs: tuple[Descriptor, ...]  # config and layers
    manifests: tuple[Descriptor, ...]  # children of an index
    subject: Descriptor | None
    artifact_type: str | None  # artifactType, or for an image manifest the config media type (referrers rule)
    annotations: tuple[tuple[str, str], ...]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def parse(body: bytes, content_type: str | None) -> Manifest:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidManifest("manifest must be a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise InvalidManifest("mediaType must be a string")
    media_type = _media_type(content_type, declared, doc)
    if doc.get("schemaVersion") != 2:
        raise InvalidManifest(f"schemaVersion must be 2, got {doc.get('schemaVersion')!r}")

    subject = _descriptor(doc["subject"], "subject") if "subject" in doc and doc["subject"] is not None else None
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise InvalidManifest("artifactType must be a string")
    if media_type in INDEX_TYPES:
        children = _descriptors(doc.get("manifests"), "manifests", required=True)
        blobs: tuple[Descriptor, ...] = ()
        if media_type == DOCKER_LIST and (subject or artifact_type):
            raise InvalidManifest("a Docker manifest list cannot carry subject or artifactType")
    else:
        if "config" not in doc:
            raise InvalidManifest("an image manifest needs a config descriptor")
        config = _descriptor(doc["config"], "config")
        layers = _descriptors(doc.get("layers"), "layers", required=media_type == DOCKER_MANIFEST)
        blobs = (config, *layers)
        children = ()
        if media_type == DOCKER_MANIFEST and (subject or artifact_type):
            raise InvalidManifest("a Docker schema 2 manifest cannot carry subject or artifactType")
        if artifact_type is None and media_type == OCI_MANIFEST:
            # image-spec: "if artifactType is empty or missing, the config descriptor's mediaType is used"
            artifact_type = config.media_type
        if media_type == OCI_MANIFEST and config.media_type == EMPTY_CONFIG and doc.get("artifactType") is None:
            raise InvalidManifest("artifactType is required when the config is the empty descriptor")
    return Manifest(media_type, Digest.of(body), len(body), blobs, children, subject, artifact_type,
                    _annotations(doc.get("annotations"), "annotations"))


def _media_type(content_type: str | None, declared: str | None, doc: dict[str, Any]) -> str:
    given = (content_type or "").split(";", 1)[0].strip().lower()
    if given in ("", "application/json", "application/octet-stream"):
        given = ""
    if given and given not in MANIFEST_TYPES:
        if "schemaVersion" in doc and doc.get("schemaVersion") == 1 or "signed" in given:
            raise UnsupportedMediaType("Docker schema 1 manifests are not supported; push schema 2 or OCI")
        raise UnsupportedMediaType(f"unsupported manifest media type {given!r}")
    if declared and given and declared != given:
        raise InvalidManifest(f"mediaType {declared!r} does not match Content-Type {given!r}")
    chosen = given or declared
    if not chosen:
        # OCI image-spec allows mediaType to be absent; tell an index from a manifest by its fields.
        chosen = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if chosen not in MANIFEST_TYPES:
        if doc.get("schemaVersion") == 1:
            raise UnsupportedMediaType("Docker schema 1 manifests are not supported; push schema 2 or OCI")
        raise UnsupportedMediaType(f"unsupported manifest media type {chosen!r}")
    return chosen


def _descriptors(value: Any, field: str, required: bool) -> tuple[Descriptor, ...]:
    if value is None:
        if required:
            raise InvalidManifest(f"{field} is required")
        return ()
    if not isinstance(value, list):
        raise InvalidManifest(f"{field} must be a list")
    return tuple(_descriptor(item, f"{field}[{i}]") for i, item in enumerate(value))


def _descriptor(value: Any, field: str) -> Descriptor:
    if not isinstance(value, dict):
        raise InvalidManifest(f"{field} must be a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidManifest(f"{field}.mediaType must be a non-empty string")
    if not isinstance(digest, str):
        raise InvalidManifest(f"{field}.digest must be a string")
    try:
        parsed = Digest.parse(digest)
    except InvalidDigest as exc:
        raise InvalidManifest(f"{field}.digest: {exc}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifest(f"{field}.size must be a non-negative integer")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise InvalidManifest(f"{field}.artifactType must be a string")
    return Descriptor(media_type, parsed, size, artifact_type, _annotations(value.get("annotations"), field))


def _annotations(value: Any, field: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidManifest(f"{field}.annotations must map strings to strings")
    return tuple(sorted(value.items()))


def accepts(accepted: list[str], media_type: str) -> bool:
    """Whether an Accept list (media types, parameters stripped) admits `media_type`. No list admits everything.
    Berth keeps one representation, byte for byte, and never converts between formats."""
    if not accepted:
        return True
    family = media_type.split("/", 1)[0] + "/*"
    return any(a in (media_type, "*/*", family) for a in accepted)
