"""What the OCI distribution-spec v1.1 conformance suite (opencontainers/distribution-spec, `conformance/`) sends and
how: its HTTP client and its test content, rebuilt in Python for tests/adapters/test_conformance.py.

The suite is Go (ginkgo + gomega) over bloodorangeio/reggie, a thin layer on go-resty and Go's net/http. What matters
to a registry is what reaches the wire, so `Reggie` reproduces that, not reggie's API:

- Paths are templates: `<name>` (the default namespace unless a request names another), `<reference>`, `<digest>`;
  one leading "/" is dropped and the rest joined to the root URL. A URL still holding a placeholder or "///" is an
  error before anything is sent (reggie's validateRequest).
- Query parameters are appended to the URL's own query, keys sorted and escaped as Go's url.Values.Encode does.
- A body goes out with its own length: Go writes `Content-Length` from the bytes it is given and ignores the header
  a spec sets (the streamed upload's closing PUT says `Content-Length: <blob size>` and sends no body, which reaches
  the registry as `Content-Length: 0`). Without a body, POST/PUT/PATCH/DELETE carry `Content-Length: 0`; GET and
  HEAD never carry a body (resty drops a GET payload).
- A 401 with `WWW-Authenticate` is followed once: for Bearer, `GET <realm>?service=<service>&scope=<scope>` (the
  challenge's scope, space-separated scopes in one parameter as they came) with Basic `username:password`, then the
  same request again, body and headers intact (reggie's own test checks that), with `Authorization: Bearer <token>`
  (`token`, else `access_token`); for Basic, the same request with Basic credentials. Nothing is remembered: the
  next request starts anonymous and is challenged again.

The content mirrors the suite's setup.go: per workflow a config (unique by a random author) and an image manifest
naming it and one gzip layer, with a `data` field and a field no spec defines (registries must store and serve
manifests as sent); blobs for streamed and chunked uploads; artifacts with a `subject` for the referrers API. Values
(texts, media types, the layer's bytes) are our own; shapes, sizes and order follow the suite.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import secrets
import tarfile
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, unquote, urlsplit

import httpx

USER_AGENT = "distribution-spec-conformance-tests"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # image-spec
ERROR_CODES = ("BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
               "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_UNVERIFIED", "NAME_INVALID",
               "NAME_UNKNOWN", "SIZE_INVALID", "TAG_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED")
NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"  # not even a valid tag
TEST_TAG = "tagtest0"
EMPTY_LAYER_TAG = "emptylayer"
ANNOTATION = "org.opencontainers.conformance.test"  # the key the referrers checks read back
ARTIFACT_TYPE_FILTER = "artifactType"  # the value of OCI-Filters-Applied when a registry filtered
_PLACEHOLDER = re.compile(r"<name>|<reference>|<digest>|<session_id>|//{2,}")
_AUTH_KIND = re.compile(r"(?i).*(bearer|basic).*")
_AUTH_PARAM = re.compile(r'([a-zA-z]+)="(.+?)"')  # reggie's own pattern, A-z range and all


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def go_json(value: Any) -> bytes:
    """json.MarshalIndent(v, "", "\\t"): tab indents, `"key": value`; the bytes are what the registry must keep."""
    return json.dumps(value, indent="\t").encode()


class SuiteError(AssertionError):
    """Where the Go client returns an error (and the spec's `Expect(err).To(BeNil())` fails)."""


@dataclass
class Request:
    method: str
    url: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None

    def query(self, name: str, value: str) -> Request:
        self.params[name] = value
        return self

    def header(self, name: str, value: str) -> Request:
        self.headers[name] = value
        return self

    def body(self, content: bytes) -> Request:
        self.content = content
        return self

    def final_url(self) -> str:
        if not self.params:
            return self.url
        encoded = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(self.params.items()))
        return f"{self.url}{'&' if urlsplit(self.url).query else '?'}{encoded}"


class Reggie:
    """The suite's client as the registry sees it (see the module docstring)."""

    def __init__(self, root_url: str, default_name: str, username: str = "", password: str = "") -> None:
        self.root = root_url.rstrip("/")
        self.default_name = default_name
        self.username, self.password = username, password
        self.http = httpx.Client(timeout=60, follow_redirects=True)
        self.challenges: list[str] = []  # every WWW-Authenticate followed, in order
        self.calls = 0  # requests the suite made (each may become three on the wire: challenge, token, retry)

    def close(self) -> None:
        self.http.close()

    def new_request(self, method: str, path: str, *, name: str = "", reference: str = "",
                    digest: str = "") -> Request:
        for placeholder, value in (("<name>", name or self.default_name), ("<reference>", reference),
                                   ("<digest>", digest)):
            if value:
                path = path.replace(placeholder, value)
        return Request(method, f"{self.root}/{path.removeprefix('/')}")

    def do(self, request: Request) -> httpx.Response:
        url = request.final_url()
        if _PLACEHOLDER.search(url):
            raise SuiteError(f"request is invalid: {url}")
        self.calls += 1
        response = self._send(request, url, None)
        if response.status_code == 401:
            response = self._retry_with_auth(request, url, response)
        return response

    def _send(self, request: Request, url: str, authorization: str | None) -> httpx.Response:
        headers = {"User-Agent": USER_AGENT}
        headers.update((k, v) for k, v in request.headers.items() if k.lower() != "content-length")
        if authorization:
            headers["Authorization"] = authorization
        content: bytes | None = None
        if request.method not in ("GET", "HEAD"):
            content = request.content or b""
            if not content:
                headers["Content-Length"] = "0"  # httpx leaves it out on DELETE; Go's transport does not
        return self.http.request(request.method, url, headers=headers, content=content)

    def _retry_with_auth(self, request: Request, url: str, response: httpx.Response) -> httpx.Response:
        raw = response.headers.get("www-authenticate", "")
        if not raw:
            return response
        self.challenges.append(raw)
        kind = _AUTH_KIND.sub(r"\1", raw).lower()
        basic = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if kind == "basic":
            return self._send(request, url, basic)
        if kind != "bearer":
            raise SuiteError("something went wrong with authorization")
        fields = {key.lower(): value for key, value in _AUTH_PARAM.findall(raw)}  # mapstructure: case-insensitive
        params = {"service": fields.get("service", "")}
        if fields.get("scope"):
            params["scope"] = fields["scope"]
        answer = self.http.get(fields.get("realm", ""), params=params, headers={
            "Accept": "application/json", "User-Agent": USER_AGENT, "Authorization": basic})
        try:
            info = answer.json()
        except ValueError:
            raise SuiteError(f"the token endpoint answered {answer.status_code} without JSON: {answer.text[:200]}") \
                from None
        token = info.get("token") or info.get("access_token") or ""
        return self._send(request, url, f"Bearer {token}" if token else None)


def relative_location(response: httpx.Response | None) -> str:
    """reggie's GetRelativeLocation: the Location's (decoded) path and its raw query."""
    if response is None:
        return ""
    parts = urlsplit(response.headers.get("location", ""))
    path = unquote(parts.path)
    return f"{path}?{parts.query}" if parts.query else path


def error_codes(response: httpx.Response) -> list[str]:
    """reggie's Errors(): the codes of an OCI error body; SuiteError when it is not one."""
    try:
        errors = response.json()["errors"]
    except (ValueError, KeyError, TypeError):
        raise SuiteError(f"not an OCI error body: {response.text[:200]!r}") from None
    if not errors:
        raise SuiteError("body was valid json but could not be parsed")
    return [str(e.get("code")) for e in errors]


def tag_list(response: httpx.Response) -> list[str]:
    """getTagList: the tags of a tags/list answer ([] when it is not one)."""
    try:
        tags = response.json()["tags"]
    except (ValueError, KeyError, TypeError):
        return []
    return list(tags) if isinstance(tags, list) else []


@dataclass(frozen=True)
class Blob:
    content: bytes

    @property
    def digest(self) -> str:
        return sha256(self.content)

    @property
    def length(self) -> str:
        return str(len(self.content))


def _descriptor(media_type: str, content: bytes, **extra: Any) -> dict[str, Any]:
    """A descriptor as the suite's Go struct marshals it: fields in struct order, `data` only when set, and the
    unspecified field always (null when unset: the struct tag has no omitempty)."""
    value: dict[str, Any] = {"mediaType": media_type, "digest": sha256(content), "size": len(content)}
    if "data" in extra:
        value["data"] = base64.b64encode(extra["data"]).decode()
    if "artifact_type" in extra:
        value["artifactType"] = extra["artifact_type"]
    value["newUnspecifiedField"] = (base64.b64encode(extra["unspecified"]).decode()
                                    if "unspecified" in extra else None)
    return value


def _layer() -> bytes:
    """A small gzip tarball of one text file (the suite's layer is the same kind of thing)."""
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w") as tar:
        text = b"a layer pushed by the conformance checks\n"
        info = tarfile.TarInfo("test.txt")
        info.size, info.mtime = len(text), 0
        tar.addfile(info, io.BytesIO(text))
    return gzip.compress(tarball.getvalue(), mtime=0)


@dataclass
class ChunkedBlob:
    """testBlobB and its two chunks; rebuilt larger when the registry states a minimum chunk length."""
    blob: Blob
    chunk1: bytes
    chunk2: bytes

    @classmethod
    def random(cls, size: int) -> ChunkedBlob:
        content = secrets.token_bytes(size)
        return cls(Blob(content), content[:size // 2 + 1], content[size // 2 + 1:])

    @property
    def chunk1_range(self) -> str:
        return f"0-{len(self.chunk1) - 1}"

    @property
    def chunk2_range(self) -> str:
        return f"{len(self.chunk1)}-{len(self.blob.content) - 1}"


class SuiteData:
    """setup.go's content. Index i of `configs` and `manifests` belongs to one workflow: 0 and 1 pull (1 also push),
    2 and 4 content discovery, 3 content management (and the subject nobody pushes in discovery)."""

    def __init__(self) -> None:
        self.configs = [Blob(go_json({"author": secrets.token_urlsafe(12)[:16], "architecture": "amd64",
                                      "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}))
                        for _ in range(5)]
        self.layer = Blob(_layer())
        layers = [_descriptor(OCI_LAYER, self.layer.content)]
        self.manifests = [Blob(go_json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config.content, data=config.content, unspecified=b"any content"),
            "layers": layers})) for config in self.configs]
        # no mediaType field at all (the suite's struct omits it when empty): the Content-Type says what it is
        self.empty_layer_manifest = Blob(go_json({
            "schemaVersion": 2,
            "config": _descriptor(OCI_CONFIG, self.configs[1].content, data=self.configs[1].content,
                                  unspecified=b"any content"),
            "layers": []}))
        self.invalid_manifest = b"not a manifest at all"
        self.blob_a = Blob(secrets.token_bytes(42))
        self.chunked = ChunkedBlob.random(42)
        self.dummy_digest = sha256(b"hello world")  # nothing has it

        self.empty_json = Blob(b"{}")
        self.ref_blob_a = Blob(b"a first referring artifact's payload")
        self.ref_blob_b = Blob(b"a second referring artifact's payload, pushed later")
        self.type_a = "application/vnd.berth.conformance.a"
        self.type_b = "application/vnd.berth.conformance.b"
        self.type_index = "application/vnd.berth.conformance.index"
        empty = _descriptor(OCI_EMPTY, self.empty_json.content)
        subject4 = _descriptor(OCI_MANIFEST, self.manifests[4].content)
        subject3 = _descriptor(OCI_MANIFEST, self.manifests[3].content)
        self.annotations: dict[str, str] = {}

        def artifact(note: str | None, doc: dict[str, Any]) -> Blob:
            body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST} | doc
            if note is not None:
                body["annotations"] = {ANNOTATION: note}
            blob = Blob(go_json(body))
            if note is not None:
                self.annotations[blob.digest] = note
            return blob

        # the artifact type given by the config's media type
        self.a_config = artifact("config a", {"config": _descriptor(self.type_a, self.ref_blob_a.content),
                                              "layers": [empty], "subject": subject4})
        self.b_config = artifact("config b", {"config": _descriptor(self.type_b, self.ref_blob_b.content),
                                              "layers": [empty], "subject": subject4})
        # the artifact type given by artifactType, with the empty config
        self.a_layer = artifact("layer a", {"artifactType": self.type_a, "config": empty, "layers": [
            _descriptor(self.type_a, self.ref_blob_a.content)], "subject": subject4})
        self.b_layer = artifact("layer b", {"artifactType": self.type_b, "config": empty, "layers": [
            _descriptor(self.type_b, self.ref_blob_b.content)], "subject": subject4})
        # a subject that is never pushed (in this workflow)
        self.c_layer = artifact(None, {"artifactType": self.type_b, "config": empty, "layers": [
            _descriptor(self.type_b, self.ref_blob_b.content)], "subject": subject3})
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": self.type_index, "manifests": [
            _descriptor(OCI_MANIFEST, self.a_config.content), _descriptor(OCI_MANIFEST, self.a_layer.content)],
            "subject": subject4, "annotations": {ANNOTATION: "index"}}
        self.index = Blob(go_json(index))
        self.annotations[self.index.digest] = "index"
