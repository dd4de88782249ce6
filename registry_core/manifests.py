"""Manifests and indexes: parsed by media type to find what they reference; stored byte for byte.

Accepted media types (Content-Type of a PUT, or the body's `mediaType` when Content-Type is missing or generic):
    application/vnd.oci.image.manifest.v1+json                 config + layers, optional subject/artifactType
    application/vnd.oci.image.index.v1+json                    manifests, optional subject/artifactType
    application/vnd.docker.distribution.manifest.v2+json       config + layers
    application/vnd.docker.distribution.manifest.list.v2+json  manifests
Docker schema 1 (signed, deprecated since 2017, refused by Distribution 2.8 by default) is refused.

Parsing enforces the image-spec's MUSTs (descriptor.md, manifest.md, image-index.md, annotations.md; the clause is
quoted where it is checked) and returns what the manifest names: blobs (config, layers) and child manifests, plus
its subject. Whether those exist in the repository is the registry's business (registry.py), not the parser's.

The body is hostile until proven otherwise: every check below is linear in its length, and the decoded document is
bounded (MAX_DEPTH, MAX_CONTAINERS, MAX_DESCRIPTORS) before anything walks it. Any refusal is InvalidManifest.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from cas import DEFAULT_ALGORITHM, Digest, InvalidDigest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
# Distribution-spec: a manifest of at least 4 MiB must be accepted; larger ones may be refused (413).
DEFAULT_MAX_MANIFEST = 4 << 20

# Arrays and objects nested in one another. A real manifest nests 5 deep at most (index > manifests > descriptor >
# platform > os.features); 64 leaves room for extension fields and stays far below Python's recursion limit (1000,
# shared with the server's own frames), so the recursive JSON decoder never meets a RecursionError.
MAX_DEPTH = 64
# Descriptors one manifest names: config + layers, or an index's manifests. Docker runs images of at most 125
# layers (moby layer/layer_store.go, maxLayerDepth: "the 127 max in some graphdrivers" less 2); BuildKit's registry
# cache (an index naming every cached layer, the default before BuildKit 0.21 made image-manifest=true one) and
# attestation-heavy multi-platform indexes reach the hundreds. 10 000 is well above any of them, and it is what
# bounds the per-child work of a PUT (a 4 MiB body could name ~30 000).
MAX_DESCRIPTORS = 10_000
# Arrays and objects in one manifest. A descriptor brings at most 6 (itself, annotations, urls, platform,
# os.features, features), so MAX_DESCRIPTORS of them fit with room for extension fields. It bounds the nesting
# pre-scan (MAX_DEPTH passes over at most 2 * MAX_CONTAINERS bytes) and keeps 4 MiB of `{},{},...` (1.4 million
# dicts, 97 MiB) from being decoded at all. Decoding anything else peaks near 20x the body (measured: 4 MiB of short
# strings 52 MiB; one object of 370 000 short keys 83 MiB), so RegistryConfig.max_manifest is the memory bound.
MAX_CONTAINERS = 100_000
# descriptor.md: size is an int64.
MAX_SIZE = (1 << 63) - 1

# descriptor.md, mediaType: "Values MUST comply with RFC 6838, including the naming requirements in its section 4.2"
# (also artifactType, manifest.md and image-index.md). The pattern is the image-spec's own (schema/defs-descriptor.json
# "mediaType"), which zot validates with too: type/subtype of restricted-name characters, no parameters.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
# descriptor.md, urls: "Each entry MUST conform to RFC 3986": a scheme, then URI characters (RFC 3986 section 2)
# with well-formed percent-encodings. Linear: `%` is not in the character class, so no input has two parses.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
# The nesting pre-scan keeps only the bytes that open or close strings, arrays and objects (none of them can be a
# UTF-8 continuation byte), and folds objects into arrays: only the depth matters.
_STRUCTURE = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))


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
    platform: tuple[tuple[str, str], ...] = ()  # an index child's platform, its string fields (events carry them)

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


def parse(body: bytes, content_type: str | None, algorithm: str = DEFAULT_ALGORITHM) -> Manifest:
    """The manifest in `body` (InvalidManifest otherwise); its digest in `algorithm` (the one it is stored under:
    the body is hashed once)."""
    doc = decode(body)
    if not isinstance(doc, dict):
        raise InvalidManifest("manifest must be a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise InvalidManifest("mediaType must be a string")
    media_type = _media_type(content_type, declared, doc)
    # manifest.md, image-index.md: schemaVersion "MUST be 2" (an int: not 2.0, "2" or true)
    version = doc.get("schemaVersion")
    if type(version) is not int or version != 2:
        raise InvalidManifest(f"schemaVersion must be the integer 2, got {_show(version)}")

    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    artifact_type = _optional_media_type(doc.get("artifactType"), "artifactType")
    if media_type in INDEX_TYPES:
        # image-index.md: manifests "MUST be present"; a child's mediaType is not restricted to manifest types
        # ("An encountered mediaType that is unknown to the implementation MUST be ignored"), and BuildKit's
        # registry cache is an index whose children are layers. So any well-formed descriptor is a child.
        children = _descriptors(doc.get("manifests"), "manifests", required=True, in_index=True)
        blobs: tuple[Descriptor, ...] = ()
        if media_type == DOCKER_LIST and (subject or artifact_type):
            raise InvalidManifest("a Docker manifest list cannot carry subject or artifactType")
    else:
        if "config" not in doc:
            raise InvalidManifest("an image manifest needs a config descriptor")
        config = _descriptor(doc["config"], "config")
        layers = _descriptors(doc.get("layers"), "layers", required=media_type == DOCKER_MANIFEST,
                              room=MAX_DESCRIPTORS - 1)  # the config is one of them
        blobs = (config, *layers)
        children = ()
        if media_type == DOCKER_MANIFEST and (subject or artifact_type):
            raise InvalidManifest("a Docker schema 2 manifest cannot carry subject or artifactType")
        if artifact_type is None and media_type == OCI_MANIFEST:
            # image-spec: "if artifactType is empty or missing, the config descriptor's mediaType is used"
            artifact_type = config.media_type
        if media_type == OCI_MANIFEST and config.media_type == EMPTY_CONFIG and doc.get("artifactType") is None:
            raise InvalidManifest("artifactType is required when the config is the empty descriptor")
    return Manifest(media_type, Digest.of(body, algorithm), len(body), blobs, children, subject, artifact_type,
                    _annotations(doc.get("annotations"), "annotations"))


# -- the JSON text ------------------------------------------------------------------------------------------------
def decode(body: bytes) -> Any:
    """The JSON document of a manifest body, held to RFC 8259 where Python's json module is lenient, and bounded.

    Refused: bytes that are not UTF-8 (RFC 8259 section 8.1: JSON exchanged between systems MUST be UTF-8; Python's
    json would also guess UTF-16 and UTF-32), a byte order mark (section 8.1: senders MUST NOT add one; Go's
    encoding/json, which docker and containerd read manifests with, refuses it, and bodies are served as stored),
    NaN and Infinity (not JSON, section 6), duplicate member names (section 4 leaves their meaning to the reader: Go
    keeps the last, others the first, so a registry and a client could see different layers in the same bytes;
    annotations.md: "Keys MUST be unique"), and anything nested deeper than MAX_DEPTH or holding more than
    MAX_CONTAINERS arrays and objects."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidManifest(f"manifest is not UTF-8 (invalid byte at offset {exc.start}): manifests are UTF-8 "
                              "JSON") from None
    if text.startswith("\ufeff"):
        raise InvalidManifest("manifest starts with a byte order mark, which JSON senders must not add (RFC 8259 "
                              "section 8.1)")
    _check_structure(body)
    try:
        return _DECODER.decode(text)
    except InvalidManifest:
        raise
    except RecursionError:  # not expected after _check_structure; kept so that no input can answer 500
        _too_deep()
    except ValueError as exc:  # JSONDecodeError, and int() refusing more than 4300 digits
        raise InvalidManifest(f"manifest is not valid JSON: {exc}") from None


def _check_structure(body: bytes) -> None:
    """Refuse nesting deeper than MAX_DEPTH and more than MAX_CONTAINERS arrays and objects, before the (recursive)
    decoder runs. Linear: a fixed number of passes of C string methods, never a Python loop over the body.

    Exact for valid JSON, where backslashes occur only in escapes inside strings: dropping escaped backslashes, then
    escaped quotes, leaves quotes that only open and close strings; dropping adjacent quote pairs keeps every other
    byte's inside-or-outside parity; splitting on the rest drops what strings contain. Invalid JSON may be refused
    here with a less precise reason; whatever passes is still decoded, and refused there if malformed."""
    skeleton = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_STRUCTURE, _NOT_STRUCTURE)
    skeleton = skeleton.replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = b"".join(skeleton.split(b'"')[::2])  # even pieces are outside strings
    if b"[" * (MAX_DEPTH + 1) in skeleton:  # that many openers in a row nest that deep, closed or not
        _too_deep()
    containers = skeleton.count(b"[")
    if containers > MAX_CONTAINERS:
        raise InvalidManifest(f"manifest has {containers} arrays and objects; the most this registry accepts is "
                              f"{MAX_CONTAINERS}")
    # Each pass removes every innermost (empty) container, one level of the whole tree; at most 2 * MAX_CONTAINERS
    # bytes are left to scan, MAX_DEPTH times.
    for _ in range(MAX_DEPTH):
        if not skeleton:
            return
        skeleton = skeleton.replace(b"[]", b"")
    # Left over: an empty container, which sat more than MAX_DEPTH deep; or, once there is none, closers then
    # openers: unbalanced, not JSON (the decoder says where), and more than MAX_DEPTH openers still nest too deep.
    if b"[]" in skeleton or b"[" * (MAX_DEPTH + 1) in skeleton:
        _too_deep()


def _too_deep() -> NoReturn:
    raise InvalidManifest(f"manifest nests arrays and objects more than {MAX_DEPTH} deep (a real manifest needs "
                          "fewer than 10)") from None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise InvalidManifest(f"manifest repeats the key {_show(name)} in one object; a key may occur once")
            seen.add(name)
    return obj


def _constant(name: str) -> NoReturn:
    raise InvalidManifest(f"manifest contains {name}, which is not a JSON number (RFC 8259 section 6)")


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant)


# -- media types --------------------------------------------------------------------------------------------------
def _media_type(content_type: str | None, declared: str | None, doc: dict[str, Any]) -> str:
    given = (content_type or "").split(";", 1)[0].strip().lower()
    if given in ("", "application/json", "application/octet-stream"):
        given = ""
    if given and given not in MANIFEST_TYPES:
        if "schemaVersion" in doc and doc.get("schemaVersion") == 1 or "signed" in given:
            raise UnsupportedMediaType("Docker schema 1 manifests are not supported; push schema 2 or OCI")
        raise UnsupportedMediaType(f"unsupported manifest media type {_show(given)}")
    if declared and given and declared != given:
        raise InvalidManifest(f"mediaType {_show(declared)} does not match Content-Type {_show(given)}")
    chosen = given or declared
    if not chosen:
        # OCI image-spec allows mediaType to be absent; tell an index from a manifest by its fields.
        chosen = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if chosen not in MANIFEST_TYPES:
        if doc.get("schemaVersion") == 1:
            raise UnsupportedMediaType("Docker schema 1 manifests are not supported; push schema 2 or OCI")
        raise UnsupportedMediaType(f"unsupported manifest media type {_show(chosen)}")
    return chosen


def _optional_media_type(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _MEDIA_TYPE.fullmatch(value):
        raise InvalidManifest(f"{field} must be a media type as RFC 6838 names them (type/subtype), got "
                              f"{_show(value)}")
    return value


# -- descriptors --------------------------------------------------------------------------------------------------
def _descriptors(value: Any, field: str, required: bool, in_index: bool = False,
                 room: int = MAX_DESCRIPTORS) -> tuple[Descriptor, ...]:
    if value is None:
        if required:
            raise InvalidManifest(f"{field} is required")
        return ()
    if not isinstance(value, list):
        raise InvalidManifest(f"{field} must be a list")
    if len(value) > room:  # counted before any is validated: a refusal costs no more than the decoding did
        raise InvalidManifest(f"{field} has {len(value)} descriptors; this registry accepts at most {room} "
                              f"(at most {MAX_DESCRIPTORS} descriptors per manifest)")
    return tuple(_descriptor(item, f"{field}[{i}]", in_index) for i, item in enumerate(value))


def _descriptor(value: Any, field: str, in_index: bool = False) -> Descriptor:
    """descriptor.md: mediaType, digest and size are REQUIRED; urls, annotations, data, artifactType OPTIONAL."""
    if not isinstance(value, dict):
        raise InvalidManifest(f"{field} must be a descriptor object")
    media_type = _optional_media_type(value.get("mediaType"), f"{field}.mediaType")
    if media_type is None:
        raise InvalidManifest(f"{field}.mediaType is required")
    digest = value.get("digest")
    if not isinstance(digest, str):
        raise InvalidManifest(f"{field}.digest must be a string")
    try:
        parsed = Digest.parse(digest)
    except InvalidDigest as exc:
        raise InvalidManifest(f"{field}.digest: {exc}") from None
    size = value.get("size")
    if type(size) is not int or not 0 <= size <= MAX_SIZE:  # type(): true and 7.0 are no sizes
        raise InvalidManifest(f"{field}.size must be an integer from 0 to 2^63-1, got {_show(size)}")
    urls = value.get("urls")
    if urls is not None and (not isinstance(urls, list)
                             or not all(isinstance(u, str) and _URI.fullmatch(u) for u in urls)):
        raise InvalidManifest(f"{field}.urls must be a list of URIs (RFC 3986)")
    if value.get("data") is not None:
        _check_data(value["data"], parsed, size, field)
    platform: tuple[tuple[str, str], ...] = ()
    if in_index and value.get("platform") is not None:
        _check_platform(value["platform"], f"{field}.platform")
        platform = tuple((k, v) for k, v in value["platform"].items() if isinstance(v, str))
    artifact_type = _optional_media_type(value.get("artifactType"), f"{field}.artifactType")
    annotations = _annotations(value.get("annotations"), f"{field}.annotations")
    return Descriptor(media_type, parsed, size, artifact_type, annotations, platform)


def _check_data(data: Any, digest: Digest, size: int, field: str) -> None:
    """descriptor.md, data: "Values MUST conform to the Base 64 encoding, as defined in RFC 4648. The decoded data
    MUST be identical to the referenced content". Hashing it costs no more than reading the body did."""
    try:
        content = binascii.a2b_base64(data, strict_mode=True) if isinstance(data, str) else None
    except (binascii.Error, ValueError):
        content = None
    if content is None:
        raise InvalidManifest(f"{field}.data must be base64 (RFC 4648 section 4)")
    if len(content) != size or Digest.of(content, digest.algorithm) != digest:
        raise InvalidManifest(f"{field}.data is not the content its digest and size describe")


def _check_platform(value: Any, field: str) -> None:
    """image-index.md, platform: architecture and os are REQUIRED strings; os.version and variant strings;
    os.features and features arrays of strings."""
    if not isinstance(value, dict):
        raise InvalidManifest(f"{field} must be an object")
    for name in ("architecture", "os"):
        if not isinstance(value.get(name), str):
            raise InvalidManifest(f"{field}.{name} is required and must be a string")
    for name in ("os.version", "variant"):
        if value.get(name) is not None and not isinstance(value[name], str):
            raise InvalidManifest(f"{field}.{name} must be a string")
    for name in ("os.features", "features"):
        items = value.get(name)
        if items is not None and (not isinstance(items, list) or not all(isinstance(i, str) for i in items)):
            raise InvalidManifest(f"{field}.{name} must be a list of strings")


def _annotations(value: Any, field: str) -> tuple[tuple[str, str], ...]:
    # annotations.md: "a key-value map where both the key and value MUST be strings"; unique keys are enforced
    # while decoding.
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidManifest(f"{field} must map strings to strings")
    return tuple(sorted(value.items()))


def _show(value: Any, limit: int = 60) -> str:
    """A client's value in an error message: its repr, cut short (a hostile value may be megabytes long)."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value[:limit + 1] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[:limit] + "…"


def accepts(accepted: list[str], media_type: str) -> bool:
    """Whether an Accept list (media types, parameters stripped) admits `media_type`. No list admits everything.
    Berth keeps one representation, byte for byte, and never converts between formats."""
    if not accepted:
        return True
    family = media_type.split("/", 1)[0] + "/*"
    return any(a in (media_type, "*/*", family) for a in accepted)
