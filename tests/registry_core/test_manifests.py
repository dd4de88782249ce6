from __future__ import annotations

import json
from typing import Any

import pytest

from cas import Digest
from registry_core.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    InvalidManifest,
    UnsupportedMediaType,
    parse,
)

CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of(b"{}")), "size": 2}
LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": str(Digest.of(b"l")), "size": 1}


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_oci_image_manifest() -> None:
    raw = body({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG, "layers": [LAYER, LAYER]})
    m = parse(raw, OCI_MANIFEST)
    assert m.digest == Digest.of(raw) and m.size == len(raw)
    assert [str(d.digest) for d in m.blobs] == [CONFIG["digest"], LAYER["digest"], LAYER["digest"]]
    assert m.manifests == () and m.subject is None
    assert m.artifact_type == CONFIG["mediaType"]  # referrers: the config media type stands in


def test_artifact_with_subject() -> None:
    subject = {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(b"m")), "size": 1}
    empty = {"mediaType": EMPTY_CONFIG, "digest": str(Digest.of(b"{}")), "size": 2}
    raw = body({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.sig",
                "config": empty, "layers": [], "subject": subject, "annotations": {"a": "b"}})
    m = parse(raw, None)
    assert m.subject is not None and str(m.subject.digest) == subject["digest"]
    assert m.artifact_type == "application/x.sig" and m.annotations == (("a", "b"),)


def test_empty_config_needs_artifact_type() -> None:
    empty = {"mediaType": EMPTY_CONFIG, "digest": str(Digest.of(b"{}")), "size": 2}
    with pytest.raises(InvalidManifest, match="artifactType"):
        parse(body({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": empty, "layers": []}), OCI_MANIFEST)


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
def test_indexes(media_type: str) -> None:
    child = {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(b"c")), "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}}
    m = parse(body({"schemaVersion": 2, "mediaType": media_type, "manifests": [child, child]}), media_type)
    assert m.is_index and len(m.manifests) == 2 and m.blobs == ()


def test_docker_manifest_and_generic_content_type() -> None:
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": CONFIG, "layers": [LAYER]}
    assert parse(body(doc), "application/json").media_type == DOCKER_MANIFEST
    assert parse(body(doc), f"{DOCKER_MANIFEST}; charset=utf-8").media_type == DOCKER_MANIFEST


def test_media_type_inferred_when_absent() -> None:
    assert parse(body({"schemaVersion": 2, "manifests": []}), None).media_type == OCI_INDEX
    assert parse(body({"schemaVersion": 2, "config": CONFIG, "layers": []}), None).media_type == OCI_MANIFEST


@pytest.mark.parametrize("raw,content_type,error", [
    (b"not json", OCI_MANIFEST, InvalidManifest),
    (b"[]", OCI_MANIFEST, InvalidManifest),
    (body({"schemaVersion": 1, "config": CONFIG}), OCI_MANIFEST, InvalidManifest),
    (body({"schemaVersion": 2, "config": CONFIG, "layers": []}), "text/plain", UnsupportedMediaType),
    (body({"schemaVersion": 1, "name": "x", "fsLayers": []}),
     "application/vnd.docker.distribution.manifest.v1+prettyjws", UnsupportedMediaType),
    (body({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}), OCI_MANIFEST, InvalidManifest),
    (body({"schemaVersion": 2, "layers": []}), OCI_MANIFEST, InvalidManifest),
    (body({"schemaVersion": 2, "config": {**CONFIG, "digest": "sha256:zz"}, "layers": []}), OCI_MANIFEST,
     InvalidManifest),
    (body({"schemaVersion": 2, "config": {**CONFIG, "size": -1}, "layers": []}), OCI_MANIFEST, InvalidManifest),
    (body({"schemaVersion": 2, "config": {**CONFIG, "size": True}, "layers": []}), OCI_MANIFEST, InvalidManifest),
    (body({"schemaVersion": 2, "config": CONFIG, "layers": {}}), OCI_MANIFEST, InvalidManifest),
    (body({"schemaVersion": 2, "config": CONFIG}), DOCKER_MANIFEST, InvalidManifest),
    (body({"schemaVersion": 2, "mediaType": OCI_INDEX}), OCI_INDEX, InvalidManifest),
    (body({"schemaVersion": 2, "config": CONFIG, "layers": [], "annotations": {"a": 1}}), OCI_MANIFEST,
     InvalidManifest),
])
def test_invalid(raw: bytes, content_type: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse(raw, content_type)
