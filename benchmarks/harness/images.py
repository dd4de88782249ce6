"""Deterministic OCI image layouts, generated (never committed): the interop tests' images and the benchmark sets.

`write_layout(dir)` writes an OCI image layout with two tags: `v1` (an image manifest: config + layers, gzip tar
layers with fixed mtimes so digests are stable) and `multi` (an image index of linux/amd64 and linux/arm64, one layer
shared). podman needs a real config (rootfs.diff_ids) to pull.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import zlib
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs: list[dict[str, Any]] = []

    def put(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}

    def layer(self, seed: int, size: int) -> tuple[dict[str, Any], str]:
        payload = random.Random(seed).randbytes(size)
        tar = _tar({f"data-{seed}.bin": payload, f"etc/seed-{seed}": str(seed).encode()})
        return self.put(gzip.compress(tar, mtime=0), OCI_LAYER), "sha256:" + hashlib.sha256(tar).hexdigest()

    def image(self, seeds: list[int], arch: str = "amd64", size: int = 300_000) -> dict[str, Any]:
        layers, diff_ids = zip(*(self.layer(seed, size) for seed in seeds), strict=True)
        config = {"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/usr/bin"]},
                  "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": self.put(json.dumps(config).encode(), OCI_CONFIG), "layers": list(layers)}
        return self.put(json.dumps(manifest, indent=2).encode(), OCI_MANIFEST)

    def tag(self, descriptor: dict[str, Any], name: str) -> None:
        self.refs.append(descriptor | {"annotations": {"org.opencontainers.image.ref.name": name}})
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.refs}))

    def raw_layer(self, seed: int, size: int) -> dict[str, Any]:
        """A layer of `size` incompressible bytes, written straight to the layout as a gzip stream of stored
        (level 0) deflate blocks. It has to be gzip: skopeo compresses a layer it finds uncompressed before pushing
        it to a registry (measured: a 1 GiB push then timed skopeo's gzip, not the registry). No tar inside: clients
        copying between layout and registry never look in. Streams in 16 MiB pieces, so a 1 GiB layer never sits in
        memory. The descriptor carries the uncompressed digest as `diff_id` for the image config."""
        rng = random.Random(seed)
        hasher, raw = hashlib.sha256(), hashlib.sha256()
        packer = zlib.compressobj(0, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
        temp = self.root / "blobs" / "sha256" / f".tmp-{seed}"
        written = 0
        with open(temp, "wb") as f:

            def emit(out: bytes) -> None:
                nonlocal written
                hasher.update(out)
                f.write(out)
                written += len(out)

            left = size
            while left:
                piece = rng.randbytes(min(left, 16 << 20))
                left -= len(piece)
                raw.update(piece)
                emit(packer.compress(piece))
            emit(packer.flush())
        digest = hasher.hexdigest()
        temp.rename(self.root / "blobs" / "sha256" / digest)
        return {"mediaType": OCI_LAYER, "digest": f"sha256:{digest}", "size": written,
                "diff_id": f"sha256:{raw.hexdigest()}"}

    def raw_image(self, layers: list[dict[str, Any]], arch: str = "amd64", note: str = "") -> dict[str, Any]:
        config = {"architecture": arch, "os": "linux", "config": {"Labels": {"note": note}},
                  "rootfs": {"type": "layers", "diff_ids": [d["diff_id"] for d in layers]}}
        descriptors = [{k: v for k, v in d.items() if k != "diff_id"} for d in layers]
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": self.put(json.dumps(config).encode(), OCI_CONFIG), "layers": descriptors}
        return self.put(json.dumps(manifest).encode(), OCI_MANIFEST)

    def unique_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "blobs" / "sha256").iterdir())


def write_layout(root: Path) -> dict[str, Any]:
    """Tags `v1` and `multi`; returns their descriptors."""
    layout = Layout(root)
    v1 = layout.image([1, 2])
    layout.tag(v1, "v1")
    amd64 = layout.image([10, 11], "amd64") | {"platform": {"architecture": "amd64", "os": "linux"}}
    arm64 = layout.image([10, 12], "arm64") | {"platform": {"architecture": "arm64", "os": "linux"}}
    index = layout.put(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                   "manifests": [amd64, arm64]}).encode(), OCI_INDEX)
    layout.tag(index, "multi")
    return {"v1": v1, "multi": index, "amd64": amd64, "arm64": arm64}
