"""Compression at rest with real clients (issue 18): skopeo pushes an image whose layers are uncompressed tars of
text and the oras SDK an artifact of CSV files; `berth compact` (the CLI, beside the running server) keeps them
compressed; both pull back byte for byte, digests checked by the clients and here. On both stores: the files of a
data directory and the objects of an S3 bucket."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import oras.provider
import pytest

from benchmarks.compression import csv_rows
from benchmarks.compression_at_rest import OCI_TAR, text_image
from cas import Digest
from cas.layout import FORM_FRAMES_V1
from tests.interop.conftest import Run
from tests.serving import ROOT, Server


def berth_compact(server: Server) -> str:
    done = subprocess.run([sys.executable, "-m", "adapters.cli", "compact", *server.place.flags()], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def forms(server: Server, digests: list[str]) -> list[int]:
    with server.place.open_store() as store:  # a second opening of the server's store, as the CLI's
        return [store.stat(Digest.parse(d)).form for d in digests]


def write_text_layout(root: Path) -> tuple[str, list[str]]:
    """An OCI layout of one image with uncompressed text tar layers; (manifest digest, layer digests)."""
    manifest, blobs = text_image([600_000, 300_000])
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for data, _ in [*blobs, (manifest, "")]:
        (root / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    layers = [layer["digest"] for layer in json.loads(manifest)["layers"]]
    assert all(layer["mediaType"] == OCI_TAR for layer in json.loads(manifest)["layers"])
    return digest, layers


def test_skopeo_image_with_uncompressed_text_layers(server: Server, skopeo: Run, tmp_path: Path) -> None:
    digest, layers = write_text_layout(tmp_path / "img")
    target = f"docker://{server.host}/syn123/textlayers:v1"
    # --preserve-digests: skopeo would otherwise gzip an uncompressed layer on its way to a registry
    skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", f"oci:{tmp_path / 'img'}:v1", target)
    compacted = berth_compact(server)
    assert all(f"compressed {layer}" in compacted for layer in layers), compacted
    assert forms(server, layers) == [FORM_FRAMES_V1, FORM_FRAMES_V1]
    # (and would gzip it on the way into an OCI layout too)
    skopeo("copy", "--preserve-digests", "--src-tls-verify=false", target, f"oci:{tmp_path / 'back'}:v1")
    back = json.loads((tmp_path / "back" / "index.json").read_text())
    assert [m["digest"] for m in back["manifests"]] == [digest]
    for layer in layers:
        name = layer.split(":")[1]
        pulled = (tmp_path / "back" / "blobs" / "sha256" / name).read_bytes()
        assert hashlib.sha256(pulled).hexdigest() == name
        assert pulled == (tmp_path / "img" / "blobs" / "sha256" / name).read_bytes()


@pytest.fixture
def oras_registry(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> oras.provider.Registry:
    monkeypatch.setattr(oras.provider.Registry, "do_request", oras.provider.Registry.do_request.__wrapped__)
    monkeypatch.chdir(tmp_path)  # oras only pushes files under the working directory
    return oras.provider.Registry(hostname=server.host, insecure=True)


def test_oras_csv_artifact(server: Server, oras_registry: oras.provider.Registry, tmp_path: Path) -> None:
    files = {"readings.csv": csv_rows(900_000, 5), "stations.csv": csv_rows(200_000, 6)}
    for name, data in files.items():
        Path(name).write_bytes(data)
    target = f"{server.host}/syn123/dataset:v1"
    pushed = oras_registry.push(target=target, files=[f"{name}:text/csv" for name in files])
    assert pushed.status_code == 201
    digests = ["sha256:" + hashlib.sha256(data).hexdigest() for data in files.values()]
    compacted = berth_compact(server)
    assert all(f"compressed {d}" in compacted for d in digests), compacted
    assert forms(server, digests) == [FORM_FRAMES_V1, FORM_FRAMES_V1]
    pulled = oras_registry.pull(target=target, outdir=str(tmp_path / "pulled"))
    assert {Path(p).name: Path(p).read_bytes() for p in pulled} == files
