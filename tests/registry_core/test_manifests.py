from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from cas import Digest
from registry_core.manifests import (
    DEFAULT_MAX_MANIFEST,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_CONFIG,
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_DESCRIPTORS,
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


# -- strictness: the image-spec's MUSTs, and a hostile body answered with InvalidManifest, never anything else ------
def nested(depth: int, inner: bytes = b"0") -> bytes:
    return b'{"schemaVersion":2,"x":' + b"[" * depth + inner + b"]" * depth + b"}"


def image(layers: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG,
            "layers": [LAYER] if layers is None else layers, **extra}


def index(*children: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(children), **extra}


def refused(raw: bytes, match: str, content_type: str | None = OCI_MANIFEST) -> None:
    with pytest.raises(InvalidManifest, match=match) as caught:
        parse(raw, content_type)
    assert len(str(caught.value)) < 300  # a hostile value is never echoed whole


def test_nesting_up_to_the_limit_parses_and_one_more_is_refused() -> None:
    # nested() adds the top object: MAX_DEPTH - 1 arrays inside it are MAX_DEPTH levels in all
    doc = json.loads(nested(MAX_DEPTH - 1))
    assert parse(body({**image(), "x": doc["x"]}), OCI_MANIFEST).media_type == OCI_MANIFEST
    refused(nested(MAX_DEPTH), f"more than {MAX_DEPTH} deep")
    refused(b'{"schemaVersion":2,"a":' + b'{"a":' * MAX_DEPTH + b"1" + b"}" * (MAX_DEPTH + 1), "deep")


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    refused(nested(depth), "deep")
    refused(b"[" * depth, "deep")  # never closed
    refused(b'{"a":' * depth, "deep")


def test_brackets_inside_strings_do_not_count() -> None:
    tricky = ["[" * 500, "{" * 500, '\\"[[[', '"' * 300 + "]" * 300, "\\" * 7 + "[[", "[\\]\\\\"]
    m = parse(body(image(annotations={s[:20] + str(i): s for i, s in enumerate(tricky)})), OCI_MANIFEST)
    assert dict(m.annotations)["[[[[[[[[[[[[[[[[[[[[0"] == "[" * 500


# Worst cases at the size cap (a timing test under a smaller input never reaches the costly paths). Each is decided
# in ~100 ms here; the bound leaves room for a loaded machine, and fails for anything quadratic (minutes).
NEAR_CAP = DEFAULT_MAX_MANIFEST - 64
HOSTILE = {
    "2M-deep": b"[" * (NEAR_CAP // 2) + b"]" * (NEAR_CAP // 2),
    "100k-deep-padded": b"[" * 100_000 + b'"' + b"x" * (NEAR_CAP - 200_010) + b'"' + b"]" * 100_000,
    "escaped-quotes": b'"' + b'\\"' * (NEAR_CAP // 2 - 1),
    "quotes": b'"' * NEAR_CAP,
    "brackets-in-strings": b"[" + b'"[",' * (NEAR_CAP // 4 - 1) + b"0]",
    "containers-at-cap": b"[" + b",".join([b"[" * 63 + b"]" * 63] * (MAX_CONTAINERS // 64)) + b"," +
                         b" " * (NEAR_CAP - 126 * (MAX_CONTAINERS // 64) - MAX_CONTAINERS // 64 - 2) + b"]",
    "empty-objects": b"[" + b"{}," * (NEAR_CAP // 3 - 1) + b"0]",
    "duplicate-at-end": b'{"schemaVersion":2,' + b'"k":"v",' * (NEAR_CAP // 8 - 4) + b'"k":1}',
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_bodies_at_the_size_cap_are_decided_in_linear_time(name: str) -> None:
    raw = HOSTILE[name]
    assert DEFAULT_MAX_MANIFEST - 256 <= len(raw) <= DEFAULT_MAX_MANIFEST
    started = time.thread_time()  # CPU time: other work on the machine does not count
    with pytest.raises(InvalidManifest):
        parse(raw, OCI_MANIFEST)
    assert time.thread_time() - started < 3.0


@pytest.mark.parametrize("raw", [
    b'{"schemaVersion":2,"schemaVersion":2,"config":{}}',
    # the smuggling case: Go keeps the last "layers", Python the first
    body(image())[:-1] + b',"layers":[]}',
    body(image(annotations={"a": "b"})).replace(b'"a": "b"', b'"a": "b", "a": "c"'),
    body(image()).replace(b'"size": 1', b'"size": 1, "size": 2'),
])
def test_duplicate_keys_are_refused(raw: bytes) -> None:
    refused(raw, "repeats the key")


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_refused(constant: bytes) -> None:
    refused(body(image())[:-1] + b', "x": [1, ' + constant + b"]}", "not a JSON number")


@pytest.mark.parametrize("raw", [
    json.dumps(image(annotations={"a": "é"}), ensure_ascii=False).encode("latin-1"),
    json.dumps(image()).encode("utf-16"),
    json.dumps(image()).encode("utf-32"),
    body(image(annotations={"a": "x"})).replace(b'"x"', b'"\xed\xa0\x80"'),  # an encoded surrogate
])
def test_bodies_that_are_not_utf8_are_refused(raw: bytes) -> None:
    refused(raw, "not UTF-8")


def test_a_byte_order_mark_is_refused() -> None:
    refused(b"\xef\xbb\xbf" + body(image()), "byte order mark")
    assert parse(body(image(annotations={"a": "\ufeff"})), None).annotations == (("a", "\ufeff"),)  # in a string


@pytest.mark.parametrize("version", [2.0, "2", True, None, 3, [2], {"v": 2}, "2e0", "1e400", "20e-1"])
def test_schema_version_must_be_the_integer_2(version: Any) -> None:
    raw = body(image(schemaVersion=version))
    if isinstance(version, str) and "e" in version:  # a number literal, not a string
        raw = raw.replace(f'"{version}"'.encode(), version.encode())
    refused(raw, "schemaVersion must be the integer 2")


def test_an_index_may_name_any_well_formed_descriptor() -> None:
    # image-index.md: an unknown child mediaType "MUST be ignored", not refused; BuildKit's registry cache is an
    # index of layers. The registry still requires every child to exist (registry.py).
    layer_child = parse(body(index(LAYER, {**CONFIG, "platform": {"os": "linux", "architecture": "arm64"}})), None)
    assert [d.media_type for d in layer_child.manifests] == [LAYER["mediaType"], CONFIG["mediaType"]]
    refused(body(index({**LAYER, "mediaType": "not a media type"})), "RFC 6838", None)
    refused(body(index({**LAYER, "platform": {"os": "linux"}})), "architecture is required", None)
    refused(body(index({**LAYER, "platform": {"os": "linux", "architecture": "x", "os.features": "a"}})),
            "list of strings", None)


@pytest.mark.parametrize("field,value,match", [
    ("size", 1.0, "must be an integer"),
    ("size", "1", "must be an integer"),
    ("size", False, "must be an integer"),
    ("size", 1 << 63, "must be an integer"),
    ("size", None, "must be an integer"),
    ("mediaType", "", "RFC 6838"),
    ("mediaType", "application", "RFC 6838"),
    ("mediaType", "application/json; charset=utf-8", "RFC 6838"),
    ("mediaType", "application/x\n", "RFC 6838"),
    ("mediaType", "application/" + "x" * 200, "RFC 6838"),
    ("mediaType", ["a/b"], "RFC 6838"),
    ("artifactType", "sig", "RFC 6838"),
    ("urls", "https://example.com/x", "must be a list"),
    ("urls", ["no scheme"], "must be a list"),
    ("urls", ["https://example.com/%zz"], "must be a list"),
    ("urls", [1], "must be a list"),
    ("annotations", {"a": 1}, "must map strings to strings"),
    ("annotations", ["a"], "must map strings to strings"),
    ("data", "bA", "base64"),
    ("data", "bA==bA==", "base64"),
    ("data", 1, "base64"),
    ("data", "bQ==", "not the content"),  # b"m", not the layer's b"l"
])
def test_descriptor_fields(field: str, value: Any, match: str) -> None:
    refused(body(image([{**LAYER, field: value}])), re.escape(f"layers[0].{field}") + ".*" + match)


def test_valid_optional_descriptor_fields() -> None:
    layer = {**LAYER, "size": (1 << 63) - 1, "urls": ["https://example.com/a%20b?x=1#f"], "annotations": {},
             "artifactType": "application/vnd.example+json"}
    embedded = {**LAYER, "data": "bA=="}  # base64 of b"l", the layer's content
    m = parse(body(image([layer, embedded])), None)
    assert m.blobs[1].size == (1 << 63) - 1 and m.blobs[1].artifact_type == "application/vnd.example+json"


def test_descriptor_cap() -> None:
    layers = [{**LAYER, "digest": str(Digest.of(b"%d" % i))} for i in range(MAX_DESCRIPTORS)]
    m = parse(body(image(layers[:MAX_DESCRIPTORS - 1])), None)  # with the config: exactly the cap
    assert len(m.blobs) == MAX_DESCRIPTORS
    refused(body(image(layers)), f"at most {MAX_DESCRIPTORS}")
    assert len(parse(body(index(*layers)), None).manifests) == MAX_DESCRIPTORS
    refused(body(index(*layers, LAYER)), f"at most {MAX_DESCRIPTORS}", None)


@pytest.mark.parametrize("make", [image, index])
def test_25000_descriptors_are_refused_quickly(make: Callable[..., dict[str, Any]]) -> None:
    many = [{**LAYER, "digest": str(Digest.of(b"%d" % i))} for i in range(25_000)]
    raw = body(make(many) if make is image else make(*many))
    assert len(raw) < DEFAULT_MAX_MANIFEST  # within the size limit: only the cap refuses it
    started = time.thread_time()  # CPU time: other work on the machine does not count
    refused(raw, "25000 descriptors", None)
    assert time.thread_time() - started < 3.0
