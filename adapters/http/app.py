"""The OCI Distribution Spec v1.1 over Starlette: routing, translation and streaming, nothing that decides.

Endpoints (spec numbering):
    end-1   GET  /v2/                                    end-8a  GET    /v2/<name>/tags/list[?n=&last=]
    end-2   GET/HEAD /v2/<name>/blobs/<digest>           end-9   DELETE /v2/<name>/manifests/<reference>
    end-3   GET/HEAD /v2/<name>/manifests/<reference>    end-10  DELETE /v2/<name>/blobs/<digest>
    end-4a  POST /v2/<name>/blobs/uploads/               end-11  POST   /v2/<name>/blobs/uploads/?mount=&from=
    end-4b  POST /v2/<name>/blobs/uploads/?digest=       end-12  GET    /v2/<name>/referrers/<digest>[?artifactType=]
    end-5   PATCH /v2/<name>/blobs/uploads/<id>          end-13  GET    /v2/<name>/blobs/uploads/<id>
    end-6   PUT  /v2/<name>/blobs/uploads/<id>?digest=   (also)  DELETE /v2/<name>/blobs/uploads/<id>, GET /v2/_catalog
                                                         (Berth) GET /v2/_events[?after=&n=]: the event feed
    end-7   PUT  /v2/<name>/manifests/<reference>

Repository names contain slashes, so one route takes everything under /v2/ and `_route` splits the path from its
end (as Distribution's router does): the last components say which endpoint it is, the rest is the name.
Reads of small metadata (manifests, tags, referrers) run on the event loop: an LMDB read is microseconds and never
blocks. Anything that may write or touch files runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from adapters.logs import configure as configure_logs
from adapters.settings import Settings
from cas import BlobInfo, BlobReader, BlobStore, Digest, InvalidRange, OffsetMismatch, StoreUnavailable, UploadStatus
from registry_core.access import Access
from registry_core.access import challenge_scope as repository_scope
from registry_core.errors import ManifestTooLarge
from registry_core.events import cloudevent
from registry_core.manifests import OCI_INDEX
from registry_core.names import InvalidName, RepositoryName, parse_reference
from registry_core.policy import load_policy
from registry_core.referrers import referrers_index
from registry_core.registry import Registry, RegistryConfig, read_reference
from registry_core.tokens import TOKEN_LIFETIME

from .. import portal
from ..delivery import deliver_events
from ..exposure import EXPOSE_ENV, PUBLIC_ENV
from ..maintenance import collect_garbage, reap_uploads
from ..portal import pages
from ..portal.answers import error as portal_error
from ..portal.api import PREFIX as API_PREFIX
from . import errors
from . import headers as wire  # the request's headers and query, parsed
from .accesslog import AccessLog, note
from .auth import Auth, Caller, Unauthorized
from .fastpath import ManifestFastPath
from .health import Readiness
from .metrics import (
    MANIFESTS_WRITTEN,
    TAGS_WRITTEN,
    UPLOADS_FAILED,
    UPLOADS_FINISHED,
    UPLOADS_STARTED,
    Observed,
    count_safely,
)
from .streaming import ASGIApp, BodyTooLarge, CloseAfterUnreadBody, read_body, stream_body

log = logging.getLogger("berth.http")

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")  # Docker registry v2 API; clients probe /v2/ for it
READ_CHUNK = 1 << 20  # docs/PERFORMANCE.md: 1 MiB reads serve 4-6x faster than Starlette's 64 KiB default
# A range (or a blob without a file) up to this size is opened and read in one thread hop and sent in one piece:
# a 1 MiB Range then costs one hop instead of three (open, read, end) and, compressed, not one per frame.
WHOLE_BODY = 4 << 20
# How long a presigned URL of a 307 stays valid: Distribution's s3 driver signs its redirects for 20 minutes.
REDIRECT_EXPIRES = 20 * 60.0

EVENTS_PAGE = 100  # events per feed page when the client gives no `n`
EVENTS_PAGE_MAX = 1000  # the most one feed page holds (a larger n is cut to it, as the catalog does)

Handler = Callable[["RegistryApi", Request, RepositoryName, str, Caller], Awaitable[Response]]
REGISTRY_WIDE = RepositoryName("", None)  # the `repo` of the registry-wide endpoints (catalog, events): none


class _BlobFile(FileResponse):
    """A whole blob file. Ranges are decided by `_byte_range` alone (one behaviour for files and inline blobs):
    Starlette's own Range handling is kept out of it, or it would answer 400 to a Range we chose to ignore."""

    chunk_size = READ_CHUNK

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k != b"range"])
        await super().__call__(scope, receive, send)


def _response(status: int, body: bytes = b"", media_type: str | None = None,
              headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    headers[API_VERSION[0]] = API_VERSION[1]
    return Response(body, status, headers, media_type)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _created(location: str, digest: Digest) -> Response:
    return _response(201, headers={"Location": location, "Docker-Content-Digest": str(digest)})


def _range_header(status: UploadStatus) -> str:
    # Distribution answers "0-0" for an empty session; clients parse "<start>-<end>" inclusive.
    return f"0-{max(status.offset - 1, 0)}"


def _upload_headers(name: RepositoryName, status: UploadStatus, chunk_min: int | None = None) -> dict[str, str]:
    headers = {"Location": f"/v2/{name}/blobs/uploads/{status.id}", "Range": _range_header(status),
               "Docker-Upload-UUID": status.id}
    if chunk_min is not None:  # OCI-Chunk-Min-Length (spec, end-4a): advisory, the store's own minimum
        headers["OCI-Chunk-Min-Length"] = str(chunk_min)
    return headers


class RegistryApi:
    def __init__(self, registry: Registry, auth: Auth, blobs_redirect: bool = False) -> None:
        self.registry = registry
        self.auth = auth
        self.blobs_redirect = blobs_redirect  # a blob GET answers 307 to the store's URL when it has one

    # -- end-1 ----------------------------------------------------------------------------------------------------
    async def base(self, request: Request) -> Response:
        # with login: any valid token (Unauthorized otherwise)
        note(request.scope, "account", self.auth.caller(request).subject)
        return _response(200, b"{}", "application/json")

    # -- blobs ----------------------------------------------------------------------------------------------------
    def _blob_file(self, info: BlobInfo) -> tuple[Path, os.stat_result] | None:
        """The blob's local file and its stat, for sendfile (the stat is handed to FileResponse, which would make
        it again), when the store keeps the blob's original bytes in a local file (not inline, not compressed: the
        stat's record said so, no second index read); None: stream it from `open_blob`."""
        local = self.registry.store.local_path(info)
        if local is None:
            return None
        try:
            return local, os.stat(local)
        except FileNotFoundError:  # moved aside by a collector that a publish overruled, or compacted since the
            # stat: open_blob reads the record again and that copy or the compressed form
            return None

    def _locate_blob(self, name: RepositoryName, digest: Digest,
                     whole: bool) -> tuple[BlobInfo, tuple[Path, os.stat_result] | None]:
        """One stat of the blob (one index read) and, for a GET of the whole blob, its local file: the BlobInfo
        found here is what the file or the reader is opened from."""
        info = self.registry.stat_blob(name, digest)
        return info, (self._blob_file(info) if whole else None)

    async def get_blob(self, request: Request, name: RepositoryName, reference: str, caller: Caller) -> Response:
        digest = Digest.parse(reference)
        wanted = request.headers.get("range")
        info, file = await anyio.to_thread.run_sync(
            self._locate_blob, name, digest, request.method != "HEAD" and not wanted)
        headers = {"Docker-Content-Digest": str(info.digest), "Accept-Ranges": "bytes",
                   API_VERSION[0]: API_VERSION[1]}
        if request.method == "HEAD":
            return Response(b"", 200, headers | {"Content-Length": str(info.size)}, "application/octet-stream")
        if self.blobs_redirect:  # after the access check and the stat; a Range goes along (S3 honours it)
            url = self.registry.store.redirect_url(info, REDIRECT_EXPIRES)  # signing is local: no request
            if url is not None:
                return Response(b"", 307, {"Location": url, "Docker-Content-Digest": str(info.digest),
                                           API_VERSION[0]: API_VERSION[1]})
        try:
            span = wire.byte_range(wanted, info.size) if wanted else None
        except InvalidRange as exc:
            raise errors.ProtocolError(416, "BLOB_UNKNOWN", str(exc), headers={
                "Content-Range": f"bytes */{info.size}"}) from None
        if span is None and wanted:  # a Range we ignore (RFC 9110 allows it): the whole blob, as without one
            file = await anyio.to_thread.run_sync(self._blob_file, info)
        if span is None and file is not None:
            return _BlobFile(file[0], headers=headers, media_type="application/octet-stream", stat_result=file[1])
        offset, length = span if span is not None else (0, info.size)
        status = 206 if span is not None else 200
        if span is not None:
            headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{info.size}"
        if length <= WHOLE_BODY:  # open and read in one thread hop, sent in one piece
            body = await anyio.to_thread.run_sync(self._read_whole, info, offset, length)
            return Response(body, status, headers, "application/octet-stream")
        reader = await anyio.to_thread.run_sync(self.registry.open_blob, info, offset, length)
        headers["Content-Length"] = str(length)
        return _BlobStream(reader, status, headers)

    def _read_whole(self, info: BlobInfo, offset: int, length: int) -> bytes:
        with self.registry.open_blob(info, offset, length) as reader:
            pieces = [piece for batch in reader.batches() for piece in batch]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)  # a 1 MiB range: one piece, no copy

    async def delete_blob(self, request: Request, name: RepositoryName, reference: str, caller: Caller) -> Response:
        await anyio.to_thread.run_sync(self.registry.delete_blob, name, Digest.parse(reference))
        return _response(202)

    # -- uploads --------------------------------------------------------------------------------------------------
    async def start_upload(self, request: Request, name: RepositoryName, argument: str, caller: Caller) -> Response:
        query = request.query_params
        mount = query.get("mount")
        if mount is not None:
            digest = Digest.parse(mount)
            source = _mount_source(query.get("from"))
            info = None
            if source is not None and self.auth.may(caller, source, "pull"):  # no pull on `from`: an upload
                info = await anyio.to_thread.run_sync(partial(self.registry.mount_blob, name, digest, source,
                                                              actor=caller.subject))
            if info is not None:
                return _created(f"/v2/{name}/blobs/{info.digest}", info.digest)
            # Not readable in `from` (or no `from`): an ordinary upload session instead (spec: 202).
        elif "digest" in query:
            digest = wire.query_digest(request, "digest")
            _, length = wire.content_range(request)
            count_safely(UPLOADS_STARTED.inc)
            with _upload_outcome():
                info = await stream_body(request, partial(self.registry.ingest_blob, name, digest=digest,
                                                          size=length, actor=caller.subject), caller.subject)
            return _created(f"/v2/{name}/blobs/{info.digest}", info.digest)
        status = await anyio.to_thread.run_sync(self.registry.start_upload, name, caller.subject)
        count_safely(UPLOADS_STARTED.inc)
        return _response(202, headers=_upload_headers(name, status, self.registry.store.chunk_min_length))

    async def upload_status(self, request: Request, name: RepositoryName, session_id: str,
                            caller: Caller) -> Response:
        status = await anyio.to_thread.run_sync(self.registry.upload_status, name, session_id, caller.subject)
        return _response(204, headers=_upload_headers(name, status))

    async def patch_upload(self, request: Request, name: RepositoryName, session_id: str,
                           caller: Caller) -> Response:
        offset, length = wire.content_range(request)
        try:
            status = await stream_body(
                request, lambda chunks: self.registry.append_upload(name, session_id, chunks, offset, length,
                                                                    caller.subject, token_expires=caller.expires),
                caller.subject)
        except OffsetMismatch as exc:
            # spec: 416 for a chunk out of order; the headers tell the client where the session really is.
            current = await anyio.to_thread.run_sync(self.registry.upload_status, name, session_id, caller.subject)
            raise errors.ProtocolError(416, "BLOB_UPLOAD_INVALID", str(exc)).with_headers(
                _upload_headers(name, current)) from None
        return _response(202, headers=_upload_headers(name, status, self.registry.store.chunk_min_length))

    async def finish_upload(self, request: Request, name: RepositoryName, session_id: str,
                            caller: Caller) -> Response:
        digest = wire.query_digest(request, "digest")
        offset, length = wire.content_range(request)
        with _upload_outcome():
            info = await stream_body(
                request, lambda chunks: self.registry.finish_upload(name, session_id, digest, chunks, offset, length,
                                                                    caller.subject, token_expires=caller.expires),
                caller.subject)
        return _created(f"/v2/{name}/blobs/{info.digest}", info.digest)

    async def cancel_upload(self, request: Request, name: RepositoryName, session_id: str,
                            caller: Caller) -> Response:
        await anyio.to_thread.run_sync(self.registry.cancel_upload, name, session_id, caller.subject)
        count_safely(UPLOADS_FAILED.labels("cancelled").inc)
        return _response(204)

    # -- manifests ------------------------------------------------------------------------------------------------
    async def get_manifest(self, request: Request, name: RepositoryName, reference: str, caller: Caller) -> Response:
        # In a thread: a manifest kept in a blob file is read from disk (the fast path answers the inline ones).
        # A GET (not a HEAD) is a pull: with RegistryConfig.pull_events it writes its event, in this thread.
        found = await anyio.to_thread.run_sync(partial(
            self.registry.get_manifest, name, read_reference(name, reference), wire.accept(request),
            actor=caller.subject,
            pull=request.method == "GET"))
        headers = {"Docker-Content-Digest": str(found.digest), "ETag": f'"{found.digest}"',
                   API_VERSION[0]: API_VERSION[1]}
        if request.method == "HEAD":
            return Response(b"", 200, headers | {"Content-Length": str(len(found.body))}, found.media_type)
        return Response(found.body, 200, headers, found.media_type)

    async def put_manifest(self, request: Request, name: RepositoryName, reference: str, caller: Caller) -> Response:
        limit = self.registry.config.max_manifest
        try:
            body = await read_body(request, limit)
        except BodyTooLarge:
            raise ManifestTooLarge(int(request.headers.get("content-length") or limit + 1), limit) from None
        ref = parse_reference(reference)
        result = await anyio.to_thread.run_sync(
            self.registry.put_manifest, name, ref, body, request.headers.get("content-type"), caller.subject)
        count_safely(MANIFESTS_WRITTEN.inc)
        if isinstance(ref, str):  # a tag
            count_safely(TAGS_WRITTEN.inc)
        headers = {"Location": f"/v2/{name}/manifests/{result.digest}", "Docker-Content-Digest": str(result.digest)}
        if result.subject is not None:
            headers["OCI-Subject"] = str(result.subject)
        return _response(201, headers=headers)

    async def delete_manifest(self, request: Request, name: RepositoryName, reference: str,
                              caller: Caller) -> Response:
        await anyio.to_thread.run_sync(self.registry.delete_manifest, name, parse_reference(reference),
                                       caller.subject)
        return _response(202)

    # -- listings -------------------------------------------------------------------------------------------------
    async def list_tags(self, request: Request, name: RepositoryName, _: str, caller: Caller) -> Response:
        n, last = wire.page_size(request), request.query_params.get("last")
        tags, more = self.registry.list_tags(name, n, last)
        headers = {}
        if more and tags:
            headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={quote(tags[-1])}>; rel="next"'
        return _response(200, _json({"name": name.text, "tags": tags}), "application/json", headers)

    async def catalog(self, request: Request, _: RepositoryName, __: str, caller: Caller) -> Response:
        n, last = wire.page_size(request), request.query_params.get("last")
        names, after = await anyio.to_thread.run_sync(self.registry.catalog, n, last, self.auth.visible(caller))
        headers = {}
        if after is not None:  # more may follow (a page cut short by hidden names is followed the same way)
            page = f"n={n}&" if n is not None else ""
            headers["Link"] = f'</v2/_catalog?{page}last={quote(after)}>; rel="next"'
        return _response(200, _json({"repositories": names}), "application/json", headers)

    async def events(self, request: Request, _: RepositoryName, __: str, caller: Caller) -> Response:
        """Berth's event feed: CloudEvents after a seq, oldest first, only those the caller may see (Auth.visible,
        as the catalog; project-level events: Auth.may_view_project). A page looks at no more than n + FEED_SCAN
        events; `last` is the seq to ask after next (also when every event looked at was hidden)."""
        after = wire.seq(request.query_params.get("after"))
        n = wire.page_size(request)
        if n == 0:
            raise errors.ProtocolError(400, "PAGINATION_NUMBER_INVALID", "n must be at least 1")
        limit = min(n, EVENTS_PAGE_MAX) if n is not None else EVENTS_PAGE
        found, last, more = await anyio.to_thread.run_sync(
            self.registry.outbox.page, after, limit, self.auth.visible_event(caller))
        source = self.auth.base_url(request)
        headers = {}
        if more:
            headers["Link"] = f'</v2/_events?after={last}&n={limit}>; rel="next"'
        body = {"events": [cloudevent(event, source) for event in found], "last": last}
        return _response(200, _json(body), "application/json", headers)

    async def referrers(self, request: Request, name: RepositoryName, reference: str, caller: Caller) -> Response:
        artifact_type = request.query_params.get("artifactType")
        found = self.registry.list_referrers(name, Digest.parse(reference), artifact_type)
        headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
        return _response(200, referrers_index(found), OCI_INDEX, headers)


def _mount_source(text: str | None) -> RepositoryName | None:
    """A mount's `from`; None when absent or no valid name (it mounts nothing: the upload falls back)."""
    if not text:
        return None
    try:
        return RepositoryName.parse(text)
    except InvalidName:
        return None


@contextlib.contextmanager
def _upload_outcome() -> Iterator[None]:
    """Count the end of an upload that stores a blob: finished, or failed (refused: bad digest or size, body cut
    off, no space). An upload the client gave up on in the middle is not seen here; it expires."""
    try:
        yield
    except Exception:
        count_safely(UPLOADS_FAILED.labels("refused").inc)
        raise
    count_safely(UPLOADS_FINISHED.inc)


class _BlobStream(StreamingResponse):
    """A blob (or a long range) read through `open_blob`: there is no file to sendfile (a compressed or inline blob,
    or a range). Each thread hop fetches one batch from the reader (1 MiB of a raw blob; about 1 MiB of a
    compressed one, decompressed into one bytes object) and sends its pieces as they are, without joining them;
    Starlette's iterate_in_threadpool took one hop per piece (per 256 KiB frame). The reader is closed when the response
    ends, however it ends (a client gone mid-body included), not whenever the iterator happens to be collected.

    Measured (issue 18, loaded 2-core machine): decompressing the next batches on a read-ahead executor
    (FrameReader.iter_batches(ahead=...)) while a batch is sent cost ~20 % more server CPU per full GET and was not
    faster there: the second core was never idle. The reader can take one (FramedBlobReader's `ahead`)."""

    def __init__(self, reader: BlobReader, status: int, headers: dict[str, str]) -> None:
        self._reader = reader
        super().__init__(self._pieces(), status, headers, "application/octet-stream")

    async def _pieces(self) -> AsyncIterator[bytes]:
        batches = self._reader.batches()
        while (batch := await anyio.to_thread.run_sync(next, batches, None)) is not None:
            for piece in batch:
                yield piece

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._reader.close)


# (kind, method) -> handler. HEAD goes wherever GET goes.
ROUTES: dict[tuple[str, str], Handler] = {
    ("blob", "GET"): RegistryApi.get_blob,
    ("blob", "DELETE"): RegistryApi.delete_blob,
    ("uploads", "POST"): RegistryApi.start_upload,
    ("upload", "GET"): RegistryApi.upload_status,
    ("upload", "PATCH"): RegistryApi.patch_upload,
    ("upload", "PUT"): RegistryApi.finish_upload,
    ("upload", "DELETE"): RegistryApi.cancel_upload,
    ("manifest", "GET"): RegistryApi.get_manifest,
    ("manifest", "PUT"): RegistryApi.put_manifest,
    ("manifest", "DELETE"): RegistryApi.delete_manifest,
    ("tags", "GET"): RegistryApi.list_tags,
    ("catalog", "GET"): RegistryApi.catalog,
    ("events", "GET"): RegistryApi.events,
    ("referrers", "GET"): RegistryApi.referrers,
}


def _route(path: str) -> tuple[str, str, str]:
    """(kind, name, argument) for the path after /v2/; kind "" if no endpoint matches."""
    if path == "_catalog":
        return "catalog", "", ""
    if path == "_events":  # before repository names: `_events` is no valid name, so nothing is shadowed
        return "events", "", ""
    parts = path.split("/")
    n = len(parts)
    if n >= 4 and parts[-3] == "blobs" and parts[-2] == "uploads":
        return ("uploads" if parts[-1] == "" else "upload"), "/".join(parts[:-3]), parts[-1]
    if n >= 3 and parts[-2] == "blobs" and parts[-1] == "uploads":
        return "uploads", "/".join(parts[:-2]), ""
    if n >= 3 and parts[-2] == "tags" and parts[-1] == "list":
        return "tags", "/".join(parts[:-2]), ""
    if n >= 3 and parts[-2] in ("manifests", "blobs", "referrers"):
        return {"manifests": "manifest", "blobs": "blob", "referrers": "referrers"}[parts[-2]], \
            "/".join(parts[:-2]), parts[-1]
    return "", "", ""


STORE_RETRY_AFTER = 5  # seconds: an engine restart (PostgreSQL, the object store) takes about that


def error_response(request: Request, exc: BaseException) -> Response:
    found = errors.lookup(exc)
    if found is None:
        log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        status, code, message = 500, "UNKNOWN", "internal error (logged on the server)"
    else:
        (status, code), message = found, errors.message(exc)
        if status in (401, 403, 429):  # refused: the reason goes on the access log line
            note(request.scope, "refusal", message)
        if status == 507:
            log.error("storage full on %s %s: %s", request.method, request.url.path, exc)
        elif errors.read_only(exc):
            log.error("storage read-only on %s %s: %s", request.method, request.url.path, exc)
    headers = dict(exc.headers) if isinstance(exc, errors.ProtocolError) else {}
    if status == 503 and isinstance(exc, StoreUnavailable):
        log.error("store unavailable on %s %s: %s", request.method, request.url.path, exc)
        headers["Retry-After"] = str(STORE_RETRY_AFTER)
    headers[API_VERSION[0]] = API_VERSION[1]
    detail = getattr(exc, "detail", None)
    payload = b"" if request.method == "HEAD" else errors.body(code, message, detail)
    if request.method == "HEAD":
        headers["Content-Length"] = "0"
    return Response(payload, status, headers, "application/json")


# The action each endpoint needs on its repository (Docker token scopes; `view` also admits `pull`).
ACTIONS: dict[tuple[str, str], str] = {
    ("blob", "GET"): "pull", ("blob", "DELETE"): "delete", ("uploads", "POST"): "push", ("upload", "GET"): "push",
    ("upload", "PATCH"): "push", ("upload", "PUT"): "push", ("upload", "DELETE"): "push",
    ("manifest", "GET"): "pull", ("manifest", "PUT"): "push", ("manifest", "DELETE"): "delete",
    ("tags", "GET"): "view", ("referrers", "GET"): "pull",
}


def challenge_scope(kind: str, method: str, name: str, mount_from: str | None = None) -> str:
    """The scope a 401 challenge names (clients ask the token endpoint for exactly that). A cross-repository mount
    also needs pull on the `from` repository: name it too (space-separated, RFC 6750 section 3), or the client's
    token never carries it and the mount falls back to an upload."""
    if kind in ("catalog", "events"):
        return f"registry:{kind}:*"
    scope = repository_scope(name, ACTIONS[(kind, method)])
    source = _mount_source(mount_from)  # None: an invalid `from` mounts nothing, no scope to ask for
    if source is not None and source.text != name:
        scope += f" repository:{source}:pull"
    return scope


def create_app(registry: Registry | Callable[[], Registry], *, policy: str,
               service: str = "berth", public_url: str | None = None,
               forwarded_header: str | None = None, token_lifetime: int = TOKEN_LIFETIME,
               access_log: bool = False, metrics: str | None = None, metrics_public: bool = False,
               gc_interval: float = 0.0, blobs_redirect: bool = False) -> ASGIApp:
    """The ASGI app. Pass a Registry, or a callable that opens one when the app starts (after a server forked its
    workers: py-lmdb refuses an environment inherited across fork). `policy` is a built-in policy name or
    `module:callable` (see registry_core/policy.py). `public_url` is how clients reach the registry (the token
    realm names it; default: the request's own Host when it is a plain host:port); `forwarded_header` names the
    header a trusted proxy puts the client's address in (unset: the peer's address counts); `access_log` writes a
    line per request (adapters/http/accesslog.py). `metrics`: None (not counted), "port" (counted, /metrics served
    here) or "listen" (counted, served elsewhere); see metrics.py."""
    holder: dict[str, RegistryApi] = {}
    opened_here: list[Registry] = []

    def api() -> RegistryApi:
        if "api" not in holder:
            if isinstance(registry, Registry):
                reg = registry
            else:
                reg = registry()
                opened_here.append(reg)
            access = Access(reg, load_policy(policy, reg), service, token_lifetime)
            holder["api"] = RegistryApi(reg, Auth(access, public_url, forwarded_header), blobs_redirect)
        return holder["api"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        current = api()
        reaper = asyncio.ensure_future(reap_uploads(current.registry))
        collector = asyncio.ensure_future(collect_garbage(current.registry, gc_interval))
        delivery = asyncio.ensure_future(deliver_events(current.registry, public_url))  # webhooks (adapters/delivery)
        try:
            yield
        finally:
            for task in (reaper, collector, delivery):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for reg in opened_here:
                reg.close()

    async def base(request: Request) -> Response:
        try:
            return await api().base(request)
        except Unauthorized as exc:
            note(request.scope, "refusal", str(exc))
            return api().auth.challenge(request, exc)

    async def token(request: Request) -> Response:
        return await api().auth.token_endpoint(request)

    async def dispatch(request: Request) -> Response:
        kind, name, argument = _route(request.path_params["path"])
        method = "GET" if request.method == "HEAD" else request.method
        handler = ROUTES.get((kind, method))
        current = api()
        try:
            if handler is None:
                if kind:
                    raise errors.ProtocolError(405, "UNSUPPORTED", f"{request.method} is not supported here")
                raise errors.ProtocolError(404, "NOT_FOUND", f"no endpoint at {request.url.path}")
            # An upload session may outlive the token that opened it: an expired token is looked at, and the session
            # decides (Registry._session_rule, under its lock) whether it is its owner's and still in grace.
            grace = current.registry.upload_token_grace if kind == "upload" and method in ("PATCH", "PUT") else 0
            registry_wide = kind in ("catalog", "events")  # filtered by what the caller may view, not required
            repo = REGISTRY_WIDE if registry_wide else RepositoryName.parse(name)
            name = repo.text
            try:
                caller = current.auth.caller(request, grace)
            except Unauthorized as exc:  # say what the request needs, so the client asks for it
                exc.scope = challenge_scope(kind, method, name, request.query_params.get("from")
                                            if "mount" in request.query_params else None)
                raise
            note(request.scope, "account", caller.subject)
            if not registry_wide:
                current.auth.require(caller, repo, ACTIONS[(kind, method)])
            return await handler(current, request, repo, argument, caller)
        except Unauthorized as exc:  # also an expired token an upload session does not accept (TokenExpired)
            note(request.scope, "refusal", str(exc))
            return current.auth.challenge(request, exc)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:
            return error_response(request, exc)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(routes=[Route("/v2/", base, methods=["GET", "HEAD"]),
                            Route("/v2/{path:path}", dispatch, methods=methods),
                            Route("/token", token, methods=["GET", "POST"]),
                            *portal.routes(lambda: api().auth),  # the portal: its JSON API (adapters/portal)
                            *pages.routes(api)], lifespan=lifespan)  # and its pages: last (they end in a catch-all)
    app.router.default = _unmatched
    def opened() -> tuple[BlobStore, bool]:
        current = api()
        return current.registry.store, not current.auth.login or current.auth.tokens is not None

    observed = Observed(CloseAfterUnreadBody(app), endpoint_kind, Readiness(opened),
                        lambda: api().registry.store, expose=metrics, public=metrics_public)
    logged = AccessLog(observed, forwarded_header) if access_log else None
    # The fast path goes first and counts and logs its own answers: the layers' wrappers around send and receive
    # cost more than the answer itself (issue 16).
    return ManifestFastPath(logged or observed, api, observed if metrics is not None else None, logged)


async def _unmatched(scope: Any, receive: Any, send: Any) -> None:
    """A path no route matches: Starlette's `{path:path}` stops at a line break, so a path holding one ends here.
    Answered in the shape of the API it was meant for, never Starlette's plain-text 404."""
    path = scope.get("path", "")
    where = repr(path[:200])
    if path.startswith(API_PREFIX):
        response = portal_error(404, "NOT_FOUND", f"no endpoint at {where}: see {API_PREFIX}/openapi.json")
    elif path.startswith("/v2/"):
        response = Response(errors.body("NAME_INVALID", f"no repository or endpoint at {where}"), 400,
                            {API_VERSION[0]: API_VERSION[1]}, "application/json")
    else:
        response = Response(f"No page at {where}.\n", 404, media_type="text/plain")
    await response(scope, receive, send)


def endpoint_kind(path: str) -> str:
    """The endpoint a request path is for, as a metric label: one of ROUTES' kinds, base, token or other."""
    if path.startswith("/v2/"):
        return _route(path[4:])[0] or ("base" if path == "/v2/" else "other")
    return "token" if path == "/token" else "other"


def app_from_env() -> ASGIApp:
    """The factory `berth serve` gives the ASGI server: settings come from the environment (BERTH_*, set by `berth
    serve` from its flags and file: adapters/settings.py), so that every worker process opens its own Registry
    after the fork. The worker's logs are configured here, once."""
    settings = Settings.load(env=os.environ)
    configure_logs(settings.log.format, settings.log.level, settings.access_log)
    store, server = settings.store, settings.server

    def open_registry() -> Registry:
        return Registry(store.open_store(),
                        RegistryConfig(max_manifest=store.max_manifest,
                                                                   pull_events=server.pull_events))

    return create_app(open_registry, policy=server.policy, service=server.service,
                      public_url=server.public_url or None, forwarded_header=server.forwarded_header or None,
                      token_lifetime=settings.limits.token_lifetime, access_log=settings.access_log,
                      metrics=os.environ.get(EXPOSE_ENV) or None, metrics_public=bool(os.environ.get(PUBLIC_ENV)),
                      gc_interval=store.gc_interval, blobs_redirect=store.blobs_redirect)
