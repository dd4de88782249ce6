"""Blob bytes in an S3-compatible bucket (boto3): the keeper of bytes of the distributed store.

Keys, under an optional prefix:
    blobs/<alg>/<hex>                 published blobs, immutable, named by digest (the raw stored form)
    blobs/<alg>/<hex>.zf1             a blob's FRAMES_V1 stored form (cas/layout.py; written by a compaction pass)
    staging/<name>/session            marker of an upload session's staging (absent for an ingest's)
    staging/<name>/<start, 16 hex>    the staged bytes, as segments: objects of consecutive byte ranges
    trash/<alg>-<hex>[.zf1]           blobs a collector retired and has yet to purge or restore (cas/gc.py)
    quarantine/<label>-<time>-<name>  damaged bytes fsck moved aside; never served, never deleted by Berth

Why segments and not one multipart upload per staging: the parts of a multipart upload cannot be read before it
completes, and staged bytes must be readable (an upload continued on another node re-hashes them) and cut back
(a chunk the client abandoned). Segments are plain objects: readable by ranged GET, cut back by rewriting the last
one. Every segment but the last is at least MIN_PART (5 MiB, S3's minimum part size); bytes below that stay in this
process's buffer while a writer holds the staging, and are written as the (small) last segment when a chunk ends,
so an upload session's accepted bytes are in the bucket before its record says so. Publishing assembles the
segments server-side: a multipart upload of UploadPartCopy parts (or one CopyObject, or one PUT of the buffer for a
blob that never left it: small ingests cost one request). Memory per writer: one segment (SEGMENT, 8 MiB) plus a
chunk; a blob may have up to 10,000 segments (S3's part limit): 80 GiB.

A monolithic upload (its digest named in advance: BlobBytes.direct) skips staging altogether: its bytes go to
blobs/<alg>/<hex> as one multipart upload of SEGMENT-sized parts, completed only once the digest was verified and
aborted otherwise (parts are invisible until completed: wrong bytes never appear at the key), or one PUT for a
blob smaller than a part. No copy afterwards; memory: one part. A blob already there is not rewritten. Multipart
uploads a dead process left are aborted by sweep_staged after STALE_DIRECT.

Retire is a copy to trash/ and a delete (a reader that misses blobs/ reads trash/); restore a copy back unless the
blob is there; purge a delete; each for every stored form of the digest. A compressed form is just another object:
`open` reads its frames through ranged GETs (cas/stored_forms.py over cas/frames.py's FrameReader), only the frames
a range touches. Nothing here runs inside an index transaction, and no lock of this process is held
across an S3 call except a staging's own (held by its one writer). The collection lock is the index's
(PostgreSQL's advisory lock, cas/postgres_index.py), not an object here.

The staging lock is this process's (one writer per staging per process); across processes, the upload record's
writer lease does (cas/writer_leases.py: taken and released in index transactions, no lock held across an S3 call).
Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, instance roles).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from .blobs import BlobBytes, Staged
from .digest import ALGORITHMS, Digest, Hasher, new_hasher
from .errors import BlobUnknown, StagingGone, StoreUnavailable, UploadBusy
from .layout import FORM_RAW, FORM_SUFFIX, FORMS, split_form
from .reader import BlobReader
from .stored_forms import hash_form, open_form

MIN_PART = 5 << 20  # S3's smallest part (but the last)
SEGMENT = 8 << 20  # a staging segment is written when the buffer reaches this
_READ = 1 << 20
STALE_STAGING = 3600.0  # an ingest's staging untouched this long is debris (its process died)
STALE_DIRECT = 24 * 3600.0  # a direct write's multipart upload begun this long ago was left (as an idle session)
STALE_SESSION = 60.0  # staging without a session record, older than this, is debris (not one being created)
# Client limits (see S3Blobs.__init__). READ_TIMEOUT is the longest silence within one answer: S3 answers a PUT of a
# segment (8 MiB) or an UploadPartCopy well within it, and a CompleteMultipartUpload keeps its connection alive
# with whitespace while it works.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
ATTEMPTS = 2  # the first try and one retry (botocore's "standard" mode: a backoff of up to 1 s before it)
_MISSING = ("NoSuchKey", "404", "NotFound", "NoSuchUpload")


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


_UNAVAILABLE_CODES = ("SlowDown", "ServiceUnavailable", "503", "RequestTimeout")


def _unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable `exc` stands for: no connection or answer, or an answer the store gives when it cannot
    serve right now — a 5xx (S3's InternalError 500 says "please try again"; SeaweedFS answers it while its filer
    and volume servers are still starting) or a throttling code. A 4xx other than those is a request of ours the
    store refused: a bug, kept an error (500), never a 503."""
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return StoreUnavailable(f"the object store cannot be reached: {exc}")
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if str(exc.response.get("Error", {}).get("Code")) in _UNAVAILABLE_CODES or (
                isinstance(status, int) and status >= 500):
            return StoreUnavailable(f"the object store is unavailable: {exc}")
    return None


# What reading an answer's body raises when the store goes away (or freezes) while sending it: outside the call
# _Guarded wraps, so mapped where bodies are read (a whole small blob is read before its answer starts: a 503 then).
_CUT_OFF = (HTTPClientError, IncompleteReadError)


def _cut_off(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"the object store stopped answering: {exc}")


class _Guarded:
    """The boto3 client, with a lost or refused connection (after botocore's own retries) raised as
    StoreUnavailable: the adapters answer 503, and the next request simply tries again."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name in ("get_paginator", "generate_presigned_url"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except (BotoConnectionError, HTTPClientError, ClientError) as exc:
                unavailable = _unavailable(exc)
                if unavailable is not None:
                    raise unavailable from exc
                raise
        return call


@dataclass
class _State:
    """What a held staging knows: the segments in the bucket, and the buffer of bytes from `buffer_start` on. When
    `absorbed`, the buffer begins with a copy of the last (small) segment, which the next flush rewrites."""

    segments: list[tuple[int, int]] = field(default_factory=list)  # (start, size), consecutive from 0
    buffer: bytearray = field(default_factory=bytearray)
    buffer_start: int = 0
    absorbed: bool = False
    dirty: bool = False  # the buffer differs from what the bucket holds
    etag: str = ""  # the last segment's ETag as written by this process: a parked state is reused only if it holds

    @property
    def size(self) -> int:
        return self.buffer_start + len(self.buffer)


class _SegmentWriter:
    """The ChunkWriter of a staging: appends to its buffer while hashing, writing a segment when it is full."""

    def __init__(self, staged: S3Staged, hasher: Hasher) -> None:
        self._staged = staged
        self._hasher = hasher
        self.size = 0

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hasher.update(memoryview(chunk))
        state = self._staged.state
        state.buffer += chunk
        state.dirty = True
        self.size += len(chunk)
        if len(state.buffer) >= self._staged._owner.segment:
            self._staged.flush()

    def finish(self, fsync: bool = True) -> str:
        if self._staged.persistent:
            self._staged.flush()  # an upload's chunk is in the bucket before its record accepts it
        return self._hasher.hexdigest()

    def abort(self) -> None:
        pass


class S3Staged(Staged):
    def __init__(self, owner: S3Blobs, name: str, state: _State, lock: threading.Lock, persistent: bool) -> None:
        self.name = name
        self.state = state
        self.persistent = persistent  # an upload session's (kept between requests) rather than an ingest's
        self.consumed = False  # published: its session ends (the segments stay until discard, for `ensure`)
        self._owner = owner
        self._lock = lock

    def _key(self, start: int) -> str:
        return self._owner._key(f"staging/{self.name}/{start:016x}")

    def size(self) -> int:
        return self.state.size

    def writer(self, hasher: Hasher, offset: int, expected_size: int | None = None) -> _SegmentWriter:
        if offset < self.state.size:
            self.truncate(offset)
        return _SegmentWriter(self, hasher)

    def flush(self) -> None:
        """Write the buffer as the last segment (a whole one leaves the buffer; a small one stays absorbed)."""
        state = self.state
        if not state.dirty:
            return
        s3, bucket = self._owner._s3, self._owner.bucket
        if not state.buffer:
            if state.absorbed:  # cut back to nothing past the previous segment: the old tail object goes
                start, _ = state.segments.pop()
                s3.delete_object(Bucket=bucket, Key=self._key(start))
                state.absorbed = False
            state.dirty = False
            return
        state.etag = s3.put_object(Bucket=bucket, Key=self._key(state.buffer_start), Body=bytes(state.buffer))["ETag"]
        if state.absorbed:
            state.segments[-1] = (state.buffer_start, len(state.buffer))
        else:
            state.segments.append((state.buffer_start, len(state.buffer)))
        state.dirty = False
        if len(state.buffer) >= self._owner.min_part:
            state.buffer_start += len(state.buffer)
            state.buffer = bytearray()
            state.absorbed = False
        else:
            state.absorbed = True

    def truncate(self, size: int) -> None:
        state = self.state
        if size >= state.size:
            return
        if size >= state.buffer_start:
            del state.buffer[size - state.buffer_start:]
            state.dirty = True
        else:
            s3, bucket = self._owner._s3, self._owner.bucket
            kept: list[tuple[int, int]] = []
            for start, length in state.segments:
                if start >= size:
                    s3.delete_object(Bucket=bucket, Key=self._key(start))
                else:
                    kept.append((start, length))
            state.segments = kept
            state.buffer, state.absorbed = bytearray(), False
            state.buffer_start = kept[-1][0] + kept[-1][1] if kept else 0
            if kept and kept[-1][0] + kept[-1][1] > size:
                start, _ = kept[-1]  # the segment holding the cut: its head becomes the buffer (one segment)
                state.buffer = bytearray(self._owner._get(self._key(start), 0, size - start))
                state.buffer_start, state.absorbed = start, True
            state.dirty = True
        if self.persistent:
            self.flush()

    def read(self, offset: int, length: int) -> bytes:
        state = self.state
        end = min(offset + length, state.size)
        parts: list[bytes] = []
        position = offset
        for start, size in state.segments:
            if position >= end or position >= state.buffer_start:
                break
            stop = min(start + size, end, state.buffer_start)
            if start <= position < stop:
                parts.append(self._owner._get(self._key(start), position - start, stop - position))
                position = stop
        if position < end:
            at = position - state.buffer_start
            parts.append(bytes(state.buffer[at:at + end - position]))
        return b"".join(parts)

    def sync(self) -> None:
        if self.persistent:
            self.flush()

    def release(self) -> None:
        if self._lock.locked():
            if self.persistent:
                try:
                    self.flush()
                finally:
                    self._owner._park(self.name, self.state)
            self._lock.release()

    def abandon(self) -> None:
        if self._lock.locked():
            self._lock.release()
        self._owner._unpark(self.name)  # what this process knew is stale: the next writer reads the bucket

    def discard(self) -> None:
        try:
            if self.persistent or self.state.segments:  # an ingest that never left its buffer wrote nothing
                self._owner._delete_prefix(f"staging/{self.name}/")
        finally:
            if self._lock.locked():
                self._lock.release()
            self._owner._unpark(self.name)


class _PartWriter:
    """The ChunkWriter of a direct staging: appends to its part buffer while hashing, sending a part when full."""

    def __init__(self, staged: S3Direct, hasher: Hasher) -> None:
        self._staged = staged
        self._hasher = hasher
        self.size = 0

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hasher.update(memoryview(chunk))
        staged = self._staged
        staged.buffer += chunk
        staged.written += len(chunk)
        self.size += len(chunk)
        if len(staged.buffer) >= staged.owner.segment:
            staged.send_part()

    def finish(self, fsync: bool = True) -> str:
        return self._hasher.hexdigest()

    def abort(self) -> None:
        pass


class S3Direct(Staged):
    """A monolithic upload's bytes on their way straight to the blob's object: one multipart upload onto
    blobs/<alg>/<hex> of SEGMENT-sized parts (S3 wants 5 MiB but the last), completed by `publish` once the caller
    verified the digest, aborted by `discard` otherwise; a blob smaller than one part is one PUT at publish. Nothing
    is copied afterwards, and the multipart upload's parts are invisible until completed: wrong bytes never appear
    at the key. Memory: one part buffer."""

    def __init__(self, owner: S3Blobs, digest: Digest) -> None:
        self.name = f"direct-{digest.algorithm}-{digest.hex}"
        self.consumed = False
        self.owner = owner
        self.target = owner._blob_key(digest)
        self.buffer = bytearray()
        self.written = 0
        self._upload: str | None = None
        self._parts: list[dict[str, Any]] = []

    def size(self) -> int:
        return self.written

    def writer(self, hasher: Hasher, offset: int, expected_size: int | None = None) -> _PartWriter:
        if offset != 0 or self.written:
            raise ValueError("a direct staging is written once, from its start")
        return _PartWriter(self, hasher)

    def send_part(self) -> None:
        s3, bucket = self.owner._s3, self.owner.bucket
        if self._upload is None:
            self._upload = s3.create_multipart_upload(Bucket=bucket, Key=self.target)["UploadId"]
        number = len(self._parts) + 1
        sent = s3.upload_part(Bucket=bucket, Key=self.target, UploadId=self._upload, PartNumber=number,
                              Body=bytes(self.buffer))
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self.buffer = bytearray()

    def complete(self) -> None:
        """Make the bytes the object at the blob's key (the caller verified them)."""
        s3, bucket = self.owner._s3, self.owner.bucket
        if self._upload is None:
            s3.put_object(Bucket=bucket, Key=self.target, Body=bytes(self.buffer))
        else:
            if self.buffer:
                self.send_part()
            s3.complete_multipart_upload(Bucket=bucket, Key=self.target, UploadId=self._upload,
                                         MultipartUpload={"Parts": self._parts})
            self._upload = None
        self.buffer = bytearray()
        self.consumed = True

    def truncate(self, size: int) -> None:
        raise ValueError("a direct staging cannot be cut back")

    def read(self, offset: int, length: int) -> bytes:
        raise ValueError("a direct staging cannot be read back")

    def sync(self) -> None:
        pass

    def release(self) -> None:
        self.discard()

    def discard(self) -> None:
        self.buffer = bytearray()
        if self._upload is not None:
            upload, self._upload = self._upload, None
            with contextlib.suppress(ClientError, StoreUnavailable):  # left behind: sweep_staged aborts it later
                self.owner._s3.abort_multipart_upload(Bucket=self.owner.bucket, Key=self.target, UploadId=upload)


class S3Reader(BlobReader):
    """A BlobReader over the body of a ranged GET (streamed: never more than one read's bytes in memory)."""

    __slots__ = ("_body",)

    def __init__(self, size: int, offset: int, length: int | None) -> None:
        super().__init__(b"", size, offset, length)  # validates the range (InvalidRange) before any request
        self._body: Any = None

    def read(self, n: int = -1) -> bytes:
        remaining = self.length - self._pos
        if n < 0 or n > remaining:
            n = remaining
        if n == 0:
            return b""
        parts = []
        while n > 0:
            try:
                data = self._body.read(n)
            except _CUT_OFF as exc:
                raise _cut_off(exc) from exc
            if not data:
                raise OSError(f"blob object ended {n} bytes early")
            parts.append(data)
            self._pos += len(data)
            n -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


class S3Blobs(BlobBytes):
    local_staging_lock = True  # the staging lock is this process's: the record holds a lease (cas/writer_leases.py)
    writes_direct = True  # a monolithic upload goes straight to its object (S3Direct)

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, client: Any = None, segment: int = SEGMENT,
                 min_part: int = MIN_PART, read_timeout: float = READ_TIMEOUT) -> None:
        if not 0 < min_part <= segment:
            raise ValueError("0 < min_part <= segment")
        self.bucket = bucket
        self.segment = segment  # (tests make both small to exercise many segments; S3 itself wants 5 MiB parts)
        self.min_part = min_part
        self.chunk_min = min_part  # a chunk below a part's minimum is buffered and its segment rewritten later
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            # Timeouts of our own: botocore waits 60 s to connect and 60 s for each read by default, and tries
            # 4 times in all, so an object store that is down or frozen held a request for minutes. A refused
            # connection fails at once (retried once after a backoff under 1 s, then 503); a server that accepts
            # and never answers costs at most ATTEMPTS x (CONNECT_TIMEOUT + read_timeout) before the 503.
            config = Config(s3={"addressing_style": "path"} if endpoint_url else {},
                            connect_timeout=CONNECT_TIMEOUT, read_timeout=read_timeout,
                            retries={"total_max_attempts": ATTEMPTS, "mode": "standard"}, max_pool_connections=64)
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region or None, config=config)
        self._s3 = _Guarded(client)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}  # staging name -> its writer's lock, in this process
        self._parked: dict[str, _State] = {}  # upload staging released by this process: no GET on resume

    @classmethod
    def from_url(cls, url: str) -> S3Blobs:
        """`s3://bucket[/prefix][?endpoint=http://host:port&region=…&read_timeout=seconds]`."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket URL: {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        read_timeout = float(query.get("read_timeout", READ_TIMEOUT))
        if not 0 < read_timeout < float("inf"):
            raise ValueError(f"read_timeout: seconds above 0, not {query['read_timeout']!r}")
        return cls(parts.netloc, prefix=parts.path, endpoint_url=query.get("endpoint"), region=query.get("region"),
                   read_timeout=read_timeout)

    # -- keys and small helpers -----------------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        return self.prefix + name

    def _blob_key(self, digest: Digest, form: int = FORM_RAW) -> str:
        return f"{self.prefix}blobs/{digest.algorithm}/{digest.hex}{FORM_SUFFIX[form]}"

    def _trash_key(self, digest: Digest, form: int = FORM_RAW) -> str:
        return f"{self.prefix}trash/{digest.algorithm}-{digest.hex}{FORM_SUFFIX[form]}"

    def _get(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        body = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")["Body"]
        with contextlib.closing(body):
            try:
                data: bytes = body.read()
            except _CUT_OFF as exc:
                raise _cut_off(exc) from exc
        return data

    def _exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return False
            raise
        return True

    def _list(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        """Objects (and, with a delimiter, {"Prefix": …} entries) under `prefix`, in key order (ListObjectsV2)."""
        paginator = self._s3.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        pages = iter(paginator.paginate(**kwargs))
        while True:
            try:
                page = next(pages, None)
            except (BotoConnectionError, HTTPClientError, ClientError) as exc:
                unavailable = _unavailable(exc)
                if unavailable is not None:
                    raise unavailable from exc
                raise
            if page is None:
                return
            yield from page.get("CommonPrefixes", [])
            yield from page.get("Contents", [])

    def _delete_prefix(self, prefix: str) -> int:
        keys = [entry["Key"] for entry in self._list(prefix) if "Key" in entry]
        for at in range(0, len(keys), 1000):
            self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[at:at + 1000]],
                                                                "Quiet": True})
        return len(keys)

    def _copy(self, source: str, target: str) -> None:
        self._s3.copy_object(Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source})

    # -- staging --------------------------------------------------------------------------------------------------
    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def stage(self) -> S3Staged:
        name = "tmp-" + uuid.uuid4().hex
        lock = self._lock_for(name)
        lock.acquire()
        return S3Staged(self, name, _State(), lock, persistent=False)

    def direct(self, digest: Digest) -> S3Direct:
        return S3Direct(self, digest)

    def create_upload(self, session_id: str) -> S3Staged:
        lock = self._lock_for(session_id)
        if not lock.acquire(blocking=False):
            raise UploadBusy(session_id)
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(f"staging/{session_id}/session"), Body=b"")
        except BaseException:
            lock.release()
            raise
        return S3Staged(self, session_id, _State(), lock, persistent=True)

    def resume_upload(self, session_id: str) -> S3Staged | None:
        lock = self._lock_for(session_id)
        if not lock.acquire(blocking=False):
            raise UploadBusy(session_id)
        try:
            state = self._load(session_id)
        except BaseException:
            lock.release()
            raise
        if state is None:
            lock.release()
            return None
        return S3Staged(self, session_id, state, lock, persistent=True)

    def _load(self, name: str) -> _State | None:
        """The staging's state from the bucket (its segments; the small last one read into the buffer), or the
        state this process parked if the bucket still holds exactly that. None without a session marker."""
        marker, segments, etags = False, [], {}
        for entry in self._list(f"staging/{name}/"):
            tail = entry["Key"].rsplit("/", 1)[-1]
            if tail == "session":
                marker = True
            elif len(tail) == 16:
                with contextlib.suppress(ValueError):
                    segments.append((int(tail, 16), int(entry["Size"])))
                    etags[segments[-1][0]] = entry.get("ETag", "")
        if not marker:
            self._unpark(name)
            return None
        segments.sort()
        kept, end = [], 0
        for start, size in segments:
            if start != end:
                break  # bytes after a gap are debris (a cut whose deletes did not all happen): dropped below
            kept.append((start, size))
            end += size
        with self._guard:
            parked = self._parked.pop(name, None)
        # Another node may have rewritten the last segment since (cut back, then the same length again): the ETag
        # (the content's MD5 for a plain PUT) tells.
        if (parked is not None and parked.segments == kept and not parked.dirty
                and (not kept or etags.get(kept[-1][0]) == parked.etag)):
            return parked
        for start, _ in segments[len(kept):]:
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(f"staging/{name}/{start:016x}"))
        state = _State(segments=kept, buffer_start=end)
        if kept and kept[-1][1] < self.min_part:
            start, size = kept[-1]
            state.buffer = bytearray(self._get(self._key(f"staging/{name}/{start:016x}"), 0, size))
            state.buffer_start, state.absorbed = start, True
        return state

    def _park(self, name: str, state: _State) -> None:
        with self._guard:
            self._parked[name] = state

    def _unpark(self, name: str) -> None:
        with self._guard:
            self._parked.pop(name, None)
            lock = self._locks.get(name)
            if lock is not None and not lock.locked():
                del self._locks[name]

    def sweep_staged(self, has_session: Callable[[str], bool]) -> int:
        removed = 0
        now = time.time()
        for entry in list(self._list("staging/", delimiter="/")):
            name = entry.get("Prefix", "").rstrip("/").rsplit("/", 1)[-1]
            if not name:
                continue
            lock = self._lock_for(name)
            if not lock.acquire(blocking=False):
                continue  # held by a writer of this process
            stale = False
            try:
                objects = [e for e in self._list(f"staging/{name}/") if "Key" in e]
                newest = max((e["LastModified"].timestamp() for e in objects), default=0.0)
                if name.startswith("tmp-"):
                    stale = now - newest > STALE_STAGING  # an ingest of a live process writes more often
                else:
                    stale = now - newest > STALE_SESSION and not has_session(name)
                if stale and objects:
                    self._delete_prefix(f"staging/{name}/")
                    removed += 1
            finally:
                lock.release()
            if stale:
                self._unpark(name)
        return removed + self._abort_stale_direct(now)

    def _abort_stale_direct(self, now: float) -> int:
        """Multipart uploads of direct writes whose process died before completing or aborting them (their parts
        cost storage until aborted), begun more than STALE_DIRECT ago."""
        aborted = 0
        listed = self._s3.list_multipart_uploads(Bucket=self.bucket, Prefix=self._key("blobs/"))
        for upload in listed.get("Uploads", []):
            if now - upload["Initiated"].timestamp() > STALE_DIRECT:
                with contextlib.suppress(ClientError):  # completed or aborted meanwhile
                    self._s3.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
        return aborted

    # -- publishing -------------------------------------------------------------------------------------------------
    def publish(self, staged: Staged, digest: Digest) -> bool:
        """Assemble the staging into the blob's object (a direct staging: complete its multipart upload). As with
        files, the staging counts as consumed once it is (its session ends even if the record's commit fails),
        but its segments stay until `discard`: `ensure` may need them if a collector takes the blob before that
        commit (cas/gc.py). A direct staging has no segments: see `ensure`."""
        assert isinstance(staged, S3Staged | S3Direct)
        target = self._blob_key(digest)
        if self._exists(target):
            return False  # the same bytes, published by someone else: not rewritten
        if isinstance(staged, S3Direct):
            staged.complete()
            return True
        self._assemble(staged, target)
        staged.consumed = True
        return True

    def _assemble(self, staged: S3Staged, target: str) -> None:
        state = staged.state
        whole = state.segments[:-1] if state.absorbed else list(state.segments)  # the absorbed one is in the buffer
        s3, bucket = self._s3, self.bucket
        if not whole:
            s3.put_object(Bucket=bucket, Key=target, Body=bytes(state.buffer))
            return
        if len(whole) == 1 and not state.buffer:
            self._copy(staged._key(whole[0][0]), target)
            return
        upload = s3.create_multipart_upload(Bucket=bucket, Key=target)["UploadId"]
        try:
            parts = []
            for number, (start, _) in enumerate(whole, 1):
                copied = s3.upload_part_copy(Bucket=bucket, Key=target, UploadId=upload, PartNumber=number,
                                             CopySource={"Bucket": bucket, "Key": staged._key(start)})
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            if state.buffer:
                number = len(parts) + 1
                sent = s3.upload_part(Bucket=bucket, Key=target, UploadId=upload, PartNumber=number,
                                      Body=bytes(state.buffer))
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            s3.complete_multipart_upload(Bucket=bucket, Key=target, UploadId=upload,
                                         MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(ClientError):
                s3.abort_multipart_upload(Bucket=bucket, Key=target, UploadId=upload)
            raise

    def ensure(self, staged: Staged, digest: Digest) -> None:
        assert isinstance(staged, S3Staged | S3Direct)
        target = self._blob_key(digest)
        if self._exists(target):
            return
        # A collector retired the blob between our publish and our commit (cas/gc.py): its retired copy, or else
        # our staging (still held), has the bytes.
        try:
            self._copy(self._trash_key(digest), target)
        except ClientError as exc:
            if not _missing(exc):
                raise
            if isinstance(staged, S3Direct):
                if staged.consumed:  # its parts became the object the collector took: nothing left to copy
                    raise StagingGone(str(digest)) from None
                staged.complete()  # publish found the blob there and kept its multipart upload open
                return
            self._assemble(staged, target)

    # -- reading ----------------------------------------------------------------------------------------------------
    def open(self, digest: Digest, size: int, offset: int = 0, length: int | None = None, *,
             form: int = FORM_RAW, stored_size: int | None = None) -> BlobReader:
        if form != FORM_RAW:
            return self._open_form(digest, form, size, offset, length, stored_size)
        reader = S3Reader(size, offset, length)
        for key in (self._blob_key(digest), self._trash_key(digest)):  # trash: retired, a publish may restore it
            try:
                if reader.length == 0:
                    self._s3.head_object(Bucket=self.bucket, Key=key)
                else:
                    last = reader.offset + reader.length - 1
                    reader._body = self._s3.get_object(Bucket=self.bucket, Key=key,
                                                       Range=f"bytes={reader.offset}-{last}")["Body"]
                return reader
            except ClientError as exc:
                if not _missing(exc):
                    raise
        raise BlobUnknown(str(digest))

    def _open_form(self, digest: Digest, form: int, size: int, offset: int, length: int | None,
                   stored_size: int | None) -> BlobReader:
        """A stored form other than RAW: its frames read by ranged GETs as the reader needs them (the trailer
        first, by the record's stored size), from blobs/ or else, once a collector retired it, from trash/."""
        keys = [self._blob_key(digest, form), self._trash_key(digest, form)]

        def read_at(at: int, count: int) -> bytes:
            while True:
                try:
                    return self._get(keys[0], at, count)
                except ClientError as exc:
                    if not _missing(exc):
                        raise
                    if len(keys) == 1:
                        raise BlobUnknown(str(digest)) from exc
                    keys.pop(0)  # retired since: its copy in trash/ (the same bytes)

        if stored_size is None:
            stored_size = self._stored_size(keys)
            if stored_size is None:
                raise BlobUnknown(str(digest))
        return open_form(form, read_at, size, offset, length, stored_size)

    def _stored_size(self, keys: list[str]) -> int | None:
        while keys:
            try:
                return int(self._s3.head_object(Bucket=self.bucket, Key=keys[0])["ContentLength"])
            except ClientError as exc:
                if not _missing(exc):
                    raise
                keys.pop(0)
        return None

    def contains(self, digest: Digest, form: int = FORM_RAW) -> bool:
        return self._exists(self._blob_key(digest, form))

    # -- stored forms -----------------------------------------------------------------------------------------------
    def publish_form(self, staged: Staged, digest: Digest, form: int) -> None:
        """Assemble the staging into the form's object, over a copy a crashed pass may have left (the same bytes:
        nobody reads this key while the record names another form)."""
        assert isinstance(staged, S3Staged) and form != FORM_RAW
        self._assemble(staged, self._blob_key(digest, form))
        staged.consumed = True

    def drop_form(self, digest: Digest, form: int) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._blob_key(digest, form))

    def redirect_url(self, digest: Digest, expires: float = 600.0) -> str | None:
        """A presigned GET URL of the blob's raw object, valid `expires` seconds (for a 307 instead of streaming;
        a blob compacted to another form has no raw object: only for a record that says RAW)."""
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._blob_key(digest)}, ExpiresIn=int(expires))
        return url

    # -- collecting -------------------------------------------------------------------------------------------------
    def retire(self, digest: Digest) -> bool:
        retired = False
        for form in FORMS:
            try:
                self._copy(self._blob_key(digest, form), self._trash_key(digest, form))
            except ClientError as exc:
                if _missing(exc):
                    continue
                raise
            self._s3.delete_object(Bucket=self.bucket, Key=self._blob_key(digest, form))
            retired = True
        return retired

    def restore(self, digest: Digest) -> None:
        for form in FORMS:
            trash = self._trash_key(digest, form)
            if not self._exists(self._blob_key(digest, form)):  # a copy a publish put back is as good as ours
                try:
                    self._copy(trash, self._blob_key(digest, form))
                except ClientError as exc:
                    if not _missing(exc):
                        raise
            self._s3.delete_object(Bucket=self.bucket, Key=trash)

    def purge(self, digest: Digest) -> None:
        for form in FORMS:
            self._s3.delete_object(Bucket=self.bucket, Key=self._trash_key(digest, form))

    def retired(self) -> Iterator[Digest]:
        seen: set[Digest] = set()
        for entry in list(self._list("trash/")):
            algorithm, _, name = entry["Key"].rsplit("/", 1)[-1].partition("-")
            hexdigest, form = split_form(name)
            digest = None
            if form is not None:
                with contextlib.suppress(ValueError):
                    digest = Digest.parse(f"{algorithm}:{hexdigest}")
            if digest is None:  # not a retired blob: nothing of ours
                self._s3.delete_object(Bucket=self.bucket, Key=entry["Key"])
            elif digest not in seen:
                seen.add(digest)
                yield digest

    def stored(self) -> Iterator[tuple[Digest | None, int, str]]:
        for entry in self._list("blobs/"):
            key: str = entry["Key"]
            algorithm, _, name = key[len(self.prefix) + len("blobs/"):].partition("/")
            hexdigest, form = split_form(name)
            digest = None
            if algorithm in ALGORITHMS and form is not None:
                with contextlib.suppress(ValueError):
                    digest = Digest.parse(f"{algorithm}:{hexdigest}")
            yield digest, FORM_RAW if form is None else form, key

    def hash(self, location: str, algorithm: str) -> tuple[str, int]:
        form = split_form(location.rsplit("/", 1)[-1])[1]
        try:
            if form not in (None, FORM_RAW):
                head = self._s3.head_object(Bucket=self.bucket, Key=location)
                return hash_form(form, lambda at, count: self._get(location, at, count), algorithm,
                                 stored_size=int(head["ContentLength"]))
            hasher = new_hasher(algorithm)
            size = 0
            body = self._s3.get_object(Bucket=self.bucket, Key=location)["Body"]
            with contextlib.closing(body):
                try:
                    while chunk := body.read(_READ):
                        hasher.update(chunk)
                        size += len(chunk)
                except _CUT_OFF as exc:
                    raise _cut_off(exc) from exc
            return hasher.hexdigest(), size
        except ClientError as exc:  # as a file would: gone since it was listed (a compaction or collection pass)
            if _missing(exc):
                raise FileNotFoundError(location) from exc
            raise

    def quarantine(self, location: str, label: str) -> str:
        target = self._key(f"quarantine/{label}-{int(time.time())}-{location.rsplit('/', 1)[-1]}")
        self._copy(location, target)
        self._s3.delete_object(Bucket=self.bucket, Key=location)
        return f"s3://{self.bucket}/{target}"

    def quarantine_bytes(self, data: bytes, label: str) -> str:
        target = self._key(f"quarantine/{label}-{int(time.time())}-{uuid.uuid4().hex[:8]}")
        self._s3.put_object(Bucket=self.bucket, Key=target, Body=data)
        return f"s3://{self.bucket}/{target}"

    def debris(self) -> int:
        return sum(1 for _ in self._list("trash/"))

    def check_writable(self) -> None:
        key = self._key(f"probe/{socket.gethostname()}-{os.getpid()}")
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, StoreUnavailable) as exc:  # readiness probes expect OSError
            raise OSError(f"the bucket {self.bucket!r} refused a write: {exc}") from exc
