"""The oras Python SDK: push an artifact, push a second one with that artifact as its `subject`, discover it
through the referrers API (the SDK has no referrers call: it is plain HTTP through the SDK's session)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import oras.defaults
import oras.oci
import oras.provider
import pytest

from tests.serving import Server

SIG = "application/vnd.berth.test.signature"


@pytest.fixture
def registry(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[oras.provider.Registry]:
    # oras retries any 500 or connection error for ~2 minutes: a failure must fail now, not after the retries.
    monkeypatch.setattr(oras.provider.Registry, "do_request", oras.provider.Registry.do_request.__wrapped__)
    monkeypatch.chdir(tmp_path)  # oras only pushes files under the working directory
    yield oras.provider.Registry(hostname=server.host, insecure=True)


def referrers(registry: oras.provider.Registry, server: Server, repo: str, digest: str,
              artifact_type: str | None = None) -> tuple[Any, Any]:
    url = f"{server.url}/v2/{repo}/referrers/{digest}"
    if artifact_type:
        url += f"?artifactType={quote(artifact_type, safe='')}"  # '+' would arrive as a space
    response = registry.do_request(url, "GET", headers={"Accept": oras.defaults.default_index_media_type})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == oras.defaults.default_index_media_type
    return response.json(), response.headers


def test_artifact_with_subject_is_discovered(registry: oras.provider.Registry, server: Server,
                                             tmp_path: Path) -> None:
    payload = os.urandom(50_000)
    Path("hello.bin").write_bytes(payload)
    Path("sig.txt").write_text("signed, sealed, delivered")
    repo = "syn123/artifact"
    pushed = registry.push(target=f"{server.host}/{repo}:v1", files=["hello.bin:application/octet-stream"])
    assert pushed.status_code == 201
    subject_digest = pushed.headers["Docker-Content-Digest"]
    raw = registry.do_request(f"{server.url}/v2/{repo}/manifests/v1", "GET",
                              headers={"Accept": oras.defaults.default_manifest_media_type})
    assert "sha256:" + hashlib.sha256(raw.content).hexdigest() == subject_digest
    subject = oras.oci.Subject(mediaType=raw.headers["Content-Type"], digest=subject_digest, size=len(raw.content))

    signed = registry.push(target=f"{server.host}/{repo}:sig", files=[f"sig.txt:{SIG}"], subject=subject)
    assert signed.status_code == 201 and signed.headers["OCI-Subject"] == subject_digest
    signature_digest = signed.headers["Docker-Content-Digest"]

    index, _ = referrers(registry, server, repo, subject_digest)
    assert index["mediaType"] == oras.defaults.default_index_media_type
    assert [m["digest"] for m in index["manifests"]] == [signature_digest]
    # oras sets no artifactType: by the image-spec rule the config's media type stands in for it
    config_type = index["manifests"][0]["artifactType"]
    assert config_type == oras.defaults.unknown_config_media_type
    filtered, headers = referrers(registry, server, repo, subject_digest, config_type)
    assert len(filtered["manifests"]) == 1 and headers["OCI-Filters-Applied"] == "artifactType"
    assert referrers(registry, server, repo, subject_digest, SIG)[0]["manifests"] == []

    # and the artifact itself comes back byte for byte
    out = tmp_path / "pulled"
    files = registry.pull(target=f"{server.host}/{repo}:v1", outdir=str(out))
    assert [Path(f).read_bytes() for f in files] == [payload]
    manifest = json.loads(raw.content)
    assert manifest["layers"][0]["annotations"]["org.opencontainers.image.title"] == "hello.bin"
