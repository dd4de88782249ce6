"""Properties of manifest parsing under arbitrary input: InvalidManifest is the only way to refuse (never a
RecursionError, TypeError or KeyError that would answer 500), and the nesting pre-scan agrees with a model."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cas import Digest
from registry_core.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    MAX_DEPTH,
    OCI_INDEX,
    OCI_MANIFEST,
    InvalidManifest,
    Manifest,
    decode,
    parse,
)

FIELDS = ["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "artifactType", "annotations",
          "digest", "size", "urls", "data", "platform", "os", "architecture", "os.features", "variant", "x"]
CONTENT_TYPES = st.one_of(st.none(), st.sampled_from([*MANIFEST_TYPES, "application/json", "", "text/plain",
                                                      "application/vnd.docker.distribution.manifest.v1+prettyjws",
                                                      f"{OCI_MANIFEST}; charset=utf-8"]), st.text(max_size=40))
# Strings that stress the pre-scan (quotes, escapes, brackets) and the field checks (digests, media types, base64).
STRINGS = st.one_of(
    st.text(max_size=20),
    st.text(alphabet='"\\[]{}/u', max_size=20),
    st.sampled_from([str(Digest.of(b"l")), "sha256:zz", OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST,
                     "application/vnd.oci.image.layer.v1.tar", "bA==", "https://example.com/x", "linux", "amd64"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 1 << 64), st.floats(allow_nan=True), STRINGS)
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=5)), inner, max_size=5)), max_leaves=30)

LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(Digest.of(b"l")), "size": 1}
VALID = [
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": LAYER, "layers": [LAYER], "annotations": {"a": "b"}},
    {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{**LAYER, "mediaType": OCI_MANIFEST,
                                                                "platform": {"os": "linux", "architecture": "x"}}],
     "subject": LAYER, "artifactType": "application/x.sig"},
    {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": LAYER, "layers": []},
    {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": []},
]


def parse_or_refuse(raw: bytes, content_type: str | None) -> Manifest | None:
    """Anything but InvalidManifest (or a subclass) escapes and fails the test."""
    try:
        return parse(raw, content_type)
    except InvalidManifest:
        return None


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300), content_type=CONTENT_TYPES)
@example(raw=b"[" * 100_000, content_type=None)
@example(raw=b'{"a":' * 5000, content_type=OCI_MANIFEST)
@example(raw=b"\xef\xbb\xbf{}", content_type=None)
@example(raw=b'{"schemaVersion":2,"config":{},"config":{}}', content_type=None)
def test_arbitrary_bytes(raw: bytes, content_type: str | None) -> None:
    parse_or_refuse(raw, content_type)


@settings(max_examples=300, deadline=None)
@given(doc=JSONISH, content_type=CONTENT_TYPES)
def test_arbitrary_json(doc: Any, content_type: str | None) -> None:
    parse_or_refuse(json.dumps(doc).encode(), content_type)


def slots(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every place in a document a value can be put: each existing member or item, and each known field name
    added to each object."""
    found = [path] if path else []
    if isinstance(value, dict):
        found += [path + (name,) for name in FIELDS if name not in value]
        for name, item in value.items():
            found += slots(item, path + (name,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += slots(item, path + (i,))
    return found


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(VALID), data=st.data(), value=JSONISH, content_type=CONTENT_TYPES)
def test_a_valid_manifest_with_one_part_replaced(base: dict[str, Any], data: st.DataObject, value: Any,
                                                 content_type: str | None) -> None:
    """Arbitrary values where the parser looks (a field of a descriptor in a list in a manifest), not only at the
    top: random documents rarely get past the first checks."""
    doc = json.loads(json.dumps(base))
    *parents, last = data.draw(st.sampled_from(slots(doc)))
    target: Any = doc
    for step in parents:
        target = target[step]
    target[last] = value
    manifest = parse_or_refuse(json.dumps(doc).encode(), content_type)
    if manifest is not None:  # what parses is whole: every descriptor it returns is well formed
        assert all(type(d.size) is int and d.size >= 0 for d in (*manifest.blobs, *manifest.manifests))


# -- the nesting pre-scan against a model: depth computed on the value, decoded by the standard library -------------
def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


TRICKY_STRINGS = st.text(alphabet='"\\[]{}a/\u00e9', max_size=12)
PLAIN = st.recursive(st.one_of(st.none(), st.integers(), TRICKY_STRINGS), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(TRICKY_STRINGS, inner, max_size=3)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(core=PLAIN, wrappers=st.lists(st.sampled_from(["list", "dict", "list2", "dict2"]), max_size=MAX_DEPTH + 8),
       ensure_ascii=st.booleans(), indent=st.sampled_from([None, 1]))
@example(core=0, wrappers=["list"] * MAX_DEPTH, ensure_ascii=True, indent=None)
@example(core=0, wrappers=["dict"] * (MAX_DEPTH + 1), ensure_ascii=True, indent=None)
@example(core='"[\\', wrappers=["list"] * MAX_DEPTH, ensure_ascii=False, indent=None)
@example(core=[], wrappers=["list2"] * MAX_DEPTH, ensure_ascii=True, indent=None)
@example(core=0, wrappers=["dict2"] * MAX_DEPTH, ensure_ascii=True, indent=None)
def test_nesting_limit_matches_a_model(core: Any, wrappers: list[str], ensure_ascii: bool, indent: int | None) -> None:
    value = core
    for kind in wrappers:  # with a sibling before it ("list2", "dict2"), openers are no longer in one run
        value = {"list": [value], "dict": {"[{\\\"": value}, "list2": [[], value], "dict2": {"a": {}, "b": value}}[kind]
    raw = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    try:
        decoded = decode(raw)
    except InvalidManifest as exc:
        assert depth(value) > MAX_DEPTH, exc
    else:
        assert depth(value) <= MAX_DEPTH and decoded == value
