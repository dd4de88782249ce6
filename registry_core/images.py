"""What a manifest is, in the terms a person browsing a registry asks about: an image, an index or an artifact; its
platforms; its size; its config (entrypoint, labels) and which build step made each layer.

A manifest's digest names its bytes, and an index's size is a function of its children's bytes, which their
digests name: so a Summary is a pure function of the digest, remembered per process (SUMMARIES) and shared by every
repository (and every Images object: the portal builds one per request). Reading one costs a few index gets (the
manifest's bytes; an image's config; an index's children, each a summary of its own) the first time, nothing after.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cas import BlobStore, BlobUnknown, Digest, Transaction

from .manifests import INDEX_TYPES, InvalidManifest, Manifest, parse

# Config media types of container images (image-spec config.md; Docker's image v1 JSON): a manifest with any other
# config (or an explicit artifactType) is an artifact: a signature, an SBOM, a Helm chart.
IMAGE_CONFIGS = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
CONFIG_MAX = 1 << 20  # bytes of a config read for the portal: real ones are 1-30 KiB; a larger "config" is no image's
SUMMARIES_MAX = 16_384  # summaries remembered per process (~0.5 KiB each): a 10 000-tag repository's page stays warm
CHILDREN_MAX = 256  # children of an index summed into its size (a multi-platform index has 2-20; a cache index more)


@dataclass(frozen=True, slots=True)
class Summary:
    """One row of a tags table, without the tag."""
    digest: str
    media_type: str
    kind: str  # "image", "index" or "artifact"
    platforms: tuple[str, ...]  # "os/arch[/variant]"; empty for an artifact
    size: int  # manifest + config + layers, as stored; an index: its own bytes + its children's sizes
    manifest_size: int
    artifact_type: str | None
    # (digest, size) of the manifest's own bytes and every blob it names (an index: its own bytes; its children
    # are manifests of the repository, counted as such): a repository's deduplicated size is their union.
    blobs: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Layer:
    digest: str
    media_type: str
    size: int
    created_by: str | None  # the config history line that made it (empty_layer entries skipped)


@dataclass(frozen=True, slots=True)
class Child:
    digest: str
    media_type: str
    platform: str | None
    size: int
    degraded: bool = False  # its size is the descriptor's: its own bytes could not be read


@dataclass(frozen=True, slots=True)
class Config:
    created: str | None
    os: str | None
    architecture: str | None
    entrypoint: list[str] | None
    cmd: list[str] | None
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class Detail:
    """A manifest as the tag page shows it."""
    summary: Summary
    children: tuple[Child, ...]
    config: Config | None
    layers: tuple[Layer, ...]
    annotations: dict[str, str]


class UnknownImage(LookupError):
    """The manifest's bytes are not stored (or do not parse)."""


class _Remembered:
    """The process's summaries, least recently used first (threads share it: the portal reads in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: OrderedDict[str, Summary] = OrderedDict()

    def get(self, digest: str) -> Summary | None:
        with self._lock:
            found = self._found.get(digest)
            if found is not None:
                self._found.move_to_end(digest)
            return found

    def put(self, summary: Summary) -> None:
        with self._lock:
            self._found[summary.digest] = summary
            while len(self._found) > SUMMARIES_MAX:
                self._found.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._found.clear()


SUMMARIES = _Remembered()


class Images:
    """Summaries and details of stored manifests, read through the cas store's Transaction and blob reads."""

    def __init__(self, store: BlobStore, max_manifest: int = 4 << 20) -> None:
        self._store = store
        self._max_manifest = max_manifest
        self._summaries = SUMMARIES

    def remembered(self, digest: str) -> Summary | None:
        """The summary of a digest (its canonical text) if this process has it, without parsing the digest: a
        repository's size looks up every manifest of it (listings.py), where the parse was most of the cost."""
        return self._summaries.get(digest)

    def summary(self, txn: Transaction, digest: Digest) -> Summary:
        cached = self._summaries.get(str(digest))
        if cached is not None:
            return cached
        manifest = self._manifest(txn, digest)
        degraded = False  # a child that could not be read: not remembered, so that it is read again next time
        if manifest.is_index:
            children = [self._child(txn, d.digest, d.media_type, d.platform, d.size)
                        for d in manifest.manifests[:CHILDREN_MAX]]
            degraded = any(c.degraded for c in children)
            platforms = tuple(dict.fromkeys(c.platform for c in children if c.platform))
            kind = "artifact" if manifest.artifact_type else "index"
            size = manifest.size + sum(c.size for c in children)
        else:
            kind = "image" if manifest.artifact_type in (None, *IMAGE_CONFIGS) else "artifact"
            config = self._config(txn, manifest) if kind == "image" else {}
            platform = _platform(config)
            platforms = (platform,) if platform else ()
            size = manifest.size + sum(d.size for d in manifest.blobs)
        # An image's "artifact type" is its config's media type (the referrers rule); an image is no artifact.
        blobs = ((str(digest), manifest.size), *((str(d.digest), d.size) for d in manifest.blobs))
        found = Summary(str(digest), manifest.media_type, kind, platforms, size, manifest.size,
                        manifest.artifact_type if kind != "image" else None, blobs)
        if not degraded:
            self._summaries.put(found)
        return found

    def detail(self, txn: Transaction, digest: Digest) -> Detail:
        summary = self.summary(txn, digest)
        manifest = self._manifest(txn, digest)
        if manifest.is_index:
            children = tuple(self._child(txn, d.digest, d.media_type, d.platform, d.size)
                             for d in manifest.manifests)
            return Detail(summary, children, None, (), dict(manifest.annotations))
        raw = self._config(txn, manifest) if summary.kind == "image" else {}
        found = raw.get("config")
        inner: dict[str, Any] = found if isinstance(found, dict) else {}
        config = Config(_str(raw.get("created")), _str(raw.get("os")), _str(raw.get("architecture")),
                        _strings(inner.get("Entrypoint")), _strings(inner.get("Cmd")),
                        {k: v for k, v in (inner.get("Labels") or {}).items() if isinstance(v, str)}
                        if isinstance(inner.get("Labels"), dict) else {}) if raw else None
        steps = _layer_steps(raw)
        layers = tuple(Layer(str(d.digest), d.media_type, d.size, steps[i] if i < len(steps) else None)
                       for i, d in enumerate(manifest.blobs[1:]))
        return Detail(summary, (), config, layers, dict(manifest.annotations))

    # -- reading ------------------------------------------------------------------------------------------------------
    def _manifest(self, txn: Transaction, digest: Digest) -> Manifest:
        body = self._bytes(txn, digest, self._max_manifest)
        try:
            return parse(body, None)
        except InvalidManifest as exc:
            raise UnknownImage(f"{digest} is not a manifest: {exc}") from None

    def _child(self, txn: Transaction, digest: Digest, media_type: str, platform: tuple[tuple[str, str], ...],
               size: int) -> Child:
        fields = dict(platform)
        name = _platform(fields) or None
        try:
            return Child(str(digest), media_type, name,
                         self.summary(txn, digest).size if media_type in _MANIFESTS else size)
        except UnknownImage:  # not stored (never for a pushed index's child): a listing does not fail on it
            return Child(str(digest), media_type, name, size, degraded=True)

    def _config(self, txn: Transaction, manifest: Manifest) -> dict[str, Any]:
        config = manifest.blobs[0] if manifest.blobs else None
        if config is None or config.size > CONFIG_MAX:
            return {}
        try:
            doc = json.loads(self._bytes(txn, config.digest, CONFIG_MAX))
        except (UnknownImage, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _bytes(self, txn: Transaction, digest: Digest, limit: int) -> bytes:
        body = self._store.inline_bytes(txn, digest)
        if body is not None:
            return body
        try:  # kept in a blob file (a config; a manifest pushed as a blob): read through cas, never by path
            if self._store.info(txn, digest).size > limit:
                raise UnknownImage(f"{digest} is larger than {limit} bytes")
            return self._store.read_bytes(digest)
        except BlobUnknown:
            raise UnknownImage(f"{digest} is not stored") from None


_MANIFESTS = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
              "application/vnd.docker.distribution.manifest.v2+json",
              "application/vnd.docker.distribution.manifest.list.v2+json", *INDEX_TYPES)


def _platform(fields: dict[str, Any]) -> str:
    """`os/architecture[/variant]`, or "" when the config or descriptor does not say."""
    os_, arch = fields.get("os"), fields.get("architecture")
    if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
        return ""
    variant = fields.get("variant")
    return f"{os_}/{arch}/{variant}" if isinstance(variant, str) and variant else f"{os_}/{arch}"


def _layer_steps(config: dict[str, Any]) -> list[str | None]:
    """The history lines that made layers, in layer order: image-spec config.md, history: `empty_layer` marks an
    entry that made no layer (ENV, CMD, ...), so the others pair with the layers one by one."""
    history = config.get("history")
    if not isinstance(history, list):
        return []
    return [_str(h.get("created_by")) for h in history if isinstance(h, dict) and not h.get("empty_layer")]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _strings(value: Any) -> list[str] | None:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else None

