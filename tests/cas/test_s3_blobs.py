"""S3Blobs on a real S3 server (SeaweedFS, tests/engines.py), in what the conformance suite's small blobs leave out:
blobs of several 5 MiB segments, uploads continued by another process ("node") with chunks of any size, chunks
cut back mid-segment, publish by server-side assembly, ranged reads, the presigned URL,
and the collector's three steps. Two S3Blobs objects on one bucket stand for two nodes."""

from __future__ import annotations

import hashlib
import random
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cas import (
    BlobStore,
    BlobUnknown,
    Digest,
    DigestMismatch,
    MemoryIndex,
    SizeMismatch,
    StoreConfig,
    StoreUnavailable,
    UploadBusy,
    UploadUnknown,
)
from cas.blobs import Staged
from cas.errors import WriterLeaseLost
from cas.layout import FORM_RAW, UploadRecord
from cas.s3_blobs import MIN_PART, S3Blobs, _Guarded
from cas.writer_leases import WRITER_LEASE
from tests.conftest import FakeClock
from tests.engines import Engines, free_ports

MiB = 1 << 20
DATA = random.Random(17).randbytes(19 * MiB + 12345)  # three segments of 8 MiB would be two full and a tail


@pytest.fixture(scope="module")
def bucket(engines: Engines) -> str:
    return engines.s3.create_bucket()


@pytest.fixture
def nodes(engines: Engines, bucket: str) -> Iterator[tuple[S3Blobs, S3Blobs]]:
    prefix = uuid.uuid4().hex[:8]
    yield (S3Blobs(bucket, prefix=prefix, endpoint_url=engines.s3.endpoint),
           S3Blobs(bucket, prefix=prefix, endpoint_url=engines.s3.endpoint))


def keys(blobs: S3Blobs, under: str) -> list[str]:
    return [e["Key"].removeprefix(blobs.prefix) for e in blobs._list(under) if "Key" in e]


def test_a_large_ingest_streams_through_segments_and_reads_back_by_range(nodes: tuple[S3Blobs, S3Blobs]) -> None:
    one, _ = nodes
    store = BlobStore(MemoryIndex(), one)
    chunks = (DATA[i:i + 3 * MiB + 7] for i in range(0, len(DATA), 3 * MiB + 7))
    info = store.ingest(chunks, expected=Digest.of(DATA))
    assert info.size == len(DATA)
    assert keys(one, "staging/") == []  # the segments went with the staging
    assert keys(one, "blobs/") == [f"blobs/sha256/{info.digest.hex}"]
    with store.open(info.digest, 8 * MiB - 5, 10) as reader:  # across a segment boundary
        assert reader.read() == DATA[8 * MiB - 5:8 * MiB + 5]
    assert hashlib.sha256(store.read_bytes(info.digest)).hexdigest() == info.digest.hex
    url = one.redirect_url(info.digest, 60)
    assert url is not None
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=0-9"})) as answer:
        assert answer.read() == DATA[:10]


def test_an_upload_continues_on_another_node_with_any_chunk_sizes(nodes: tuple[S3Blobs, S3Blobs]) -> None:
    """PATCHes alternate between two nodes sharing one index; chunks are small (below the part size), large and
    odd; a node that did not write the last chunk re-hashes what is stored; the finish assembles 5 MiB+ parts."""
    index = MemoryIndex()
    config = StoreConfig()
    stores = [BlobStore(index, node, config) for node in nodes]
    session = stores[0].uploads.create()
    cuts = [0, 100, 1 * MiB, 1 * MiB + 1, 7 * MiB, 7 * MiB + 3, 13 * MiB, len(DATA)]
    for turn, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        status = stores[turn % 2].uploads.append(session.id, [DATA[a:b]], offset=a)
        assert status.offset == b
    staged = keys(nodes[0], f"staging/{session.id}/")
    assert "staging/" + session.id + "/session" in staged
    info = stores[1].uploads.finish(session.id, Digest.of(DATA))
    assert stores[0].read_bytes(info.digest) == DATA
    assert keys(nodes[0], "staging/") == []


def test_a_chunk_cut_back_mid_segment_leaves_exactly_the_accepted_bytes(nodes: tuple[S3Blobs, S3Blobs]) -> None:
    one, two = nodes
    staged = one.create_upload("s" + uuid.uuid4().hex)
    writer = staged.writer(hashlib.sha256(), 0)  # type: ignore[arg-type]
    writer.write(DATA[:18 * MiB])
    writer.finish()
    staged.truncate(MIN_PART + 10)  # inside the first segment: it is rewritten from its head
    assert staged.size() == MIN_PART + 10
    staged.release()
    again = two.resume_upload(staged.name)
    assert again is not None and again.size() == MIN_PART + 10
    assert again.read(MIN_PART - 3, 20) == DATA[MIN_PART - 3:MIN_PART + 10]
    writer = again.writer(hashlib.sha256(), MIN_PART + 10)  # type: ignore[arg-type]
    writer.write(DATA[MIN_PART + 10:9 * MiB])
    writer.finish()
    assert again.read(0, 9 * MiB) == DATA[:9 * MiB]
    again.discard()
    assert keys(one, f"staging/{staged.name}/") == []
    assert one.resume_upload(staged.name) is None


def test_collector_steps_and_quarantine(nodes: tuple[S3Blobs, S3Blobs]) -> None:
    one, two = nodes
    store = BlobStore(MemoryIndex(), one)
    info = store.ingest(b"retire me")
    assert one.retire(info.digest) and not one.contains(info.digest)
    assert list(two.retired()) == [info.digest]
    with two.open(info.digest, info.size) as reader:  # served from the retired copy meanwhile
        assert reader.read() == b"retire me"
    two.restore(info.digest)
    assert one.contains(info.digest) and list(one.retired()) == []
    assert one.retire(info.digest)
    one.purge(info.digest)
    assert not one.retire(info.digest)
    with pytest.raises(BlobUnknown):
        one.open(info.digest, info.size)
    kept = store.ingest(b"damaged")
    [(digest, form, location)] = list(one.stored())
    assert form == FORM_RAW
    assert digest == kept.digest and one.hash(location, "sha256") == (kept.digest.hex, 7)
    moved = one.quarantine(location, "corrupt")
    assert moved.startswith(f"s3://{one.bucket}/{one.prefix}quarantine/corrupt-")
    assert list(one.stored()) == []


def test_staging_nobody_holds_is_swept_only_when_stale(nodes: tuple[S3Blobs, S3Blobs],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = nodes
    session = "s" + uuid.uuid4().hex
    staged = one.create_upload(session)
    staged.release()
    assert two.sweep_staged(lambda _: False) == 0  # too young: it may be a session being created elsewhere
    monkeypatch.setattr("cas.s3_blobs.STALE_SESSION", -1.0)
    assert two.sweep_staged(lambda _: True) == 0  # its session exists
    assert two.sweep_staged(lambda _: False) == 1
    assert two.resume_upload(session) is None


def test_a_node_does_not_trust_its_parked_tail_after_another_node_rewrote_it(nodes: tuple[S3Blobs, S3Blobs]) -> None:
    """Node one keeps the small tail it wrote (no GET when it resumes); node two cuts it back and writes other bytes
    of the same length: node one must read node two's bytes."""
    one, two = nodes
    name = "s" + uuid.uuid4().hex
    staged = one.create_upload(name)
    writer = staged.writer(hashlib.sha256(), 0)  # type: ignore[arg-type]
    writer.write(b"a" * 100)
    writer.finish()
    staged.release()
    other = two.resume_upload(name)
    assert other is not None
    writer = other.writer(hashlib.sha256(), 50)  # type: ignore[arg-type]
    writer.write(b"b" * 50)
    writer.finish()
    other.release()
    again = one.resume_upload(name)
    assert again is not None and again.read(0, 100) == b"a" * 50 + b"b" * 50
    again.discard()


def test_an_unreachable_object_store_is_store_unavailable() -> None:
    """Nothing listens at the endpoint: every kind of call raises StoreUnavailable (503 for HTTP clients)."""
    dead = S3Blobs("bucket", endpoint_url=f"http://127.0.0.1:{free_ports(1)[0]}")
    digest = Digest.of(b"x")
    for call in (lambda: dead.contains(digest), lambda: dead.open(digest, 1), lambda: list(dead.stored()),
                 lambda: BlobStore(MemoryIndex(), dead).ingest(b"x"), dead.check_writable):
        with pytest.raises((StoreUnavailable, OSError)) as raised:
            call()
        assert isinstance(raised.value, StoreUnavailable) or isinstance(raised.value.__cause__, StoreUnavailable)


def _paused(chunks: list[bytes], started: threading.Event, go: threading.Event) -> Iterator[bytes]:
    """The chunks of one request body, stalling after the first until `go` (a slow client mid-PATCH)."""
    yield chunks[0]
    started.set()
    assert go.wait(30)
    yield from chunks[1:]


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_chunk_on_another_node_is_refused_while_one_writes_and_the_upload_stays_whole(
        nodes: tuple[S3Blobs, S3Blobs]) -> None:
    """Node one streams a chunk (stalled mid-body); node two's chunk on the same session is refused with
    UploadBusy (its staging lock is its own process's: the record's writer lease refuses it) and writes nothing;
    one's chunk is then accepted, two continues from there, and the blob verifies."""
    clock = FakeClock()
    index = MemoryIndex()
    one, two = (BlobStore(index, node, StoreConfig(), clock) for node in nodes)
    session = one.uploads.create()
    started, go = threading.Event(), threading.Event()
    first = [DATA[:3 * MiB], DATA[3 * MiB:6 * MiB]]
    thread, outcome = _in_thread(lambda: one.uploads.append(session.id, _paused(first, started, go), offset=0))
    assert started.wait(30)
    for offset in (0, 3 * MiB):
        with pytest.raises(UploadBusy, match="being written by another request"):
            two.uploads.append(session.id, [DATA[offset:offset + MiB]], offset=offset)
    with pytest.raises(UploadBusy):
        two.uploads.finish(session.id, Digest.of(DATA[:MiB]), [DATA[:MiB]], offset=0)
    assert two.uploads.status(session.id).offset == 0
    go.set()
    thread.join(60)
    assert "error" not in outcome, outcome
    two.uploads.append(session.id, [DATA[6 * MiB:11 * MiB]], offset=6 * MiB)
    info = one.uploads.finish(session.id, Digest.of(DATA), [DATA[11 * MiB:]], offset=11 * MiB)
    assert two.read_bytes(info.digest) == DATA


def test_a_writer_whose_lease_ran_out_is_fenced_and_leaves_the_staging_to_its_successor(
        nodes: tuple[S3Blobs, S3Blobs]) -> None:
    """A node stalls mid-chunk past WRITER_LEASE (a dead node looks the same): another node takes the session
    over; the stalled writer then writes and accepts nothing, and the successor's bytes stand."""
    clock = FakeClock()
    index = MemoryIndex()
    one, two = (BlobStore(index, node, StoreConfig(), clock) for node in nodes)
    session = one.uploads.create()
    one.uploads.append(session.id, [DATA[:MiB]], offset=0)
    started, go = threading.Event(), threading.Event()
    stalled = [DATA[MiB:2 * MiB], b"x" * MiB]  # the stalled writer's bytes differ from the successor's
    thread, outcome = _in_thread(lambda: one.uploads.append(session.id, _paused(stalled, started, go), offset=MiB))
    assert started.wait(30)
    clock.advance(WRITER_LEASE + 1)
    two.uploads.append(session.id, [DATA[MiB:7 * MiB]], offset=MiB)
    go.set()
    thread.join(60)
    assert isinstance(outcome.get("error"), WriterLeaseLost), outcome
    assert two.uploads.status(session.id).offset == 7 * MiB
    with index.read() as txn:  # counted: the finish re-hashes what is stored rather than trust a running hash
        raw = txn.get(two.tables.uploads, session.id.encode())
    assert raw is not None and UploadRecord.unpack(raw).takeovers == 1
    info = one.uploads.finish(session.id, Digest.of(DATA), [DATA[7 * MiB:]], offset=7 * MiB)
    assert one.read_bytes(info.digest) == DATA


class _Recording:
    """A boto3 client that notes every call (operation, key): what a direct write sends, and what it does not."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name in ("get_paginator", "generate_presigned_url"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, str(kwargs.get("Key", ""))))
            return attr(*args, **kwargs)
        return call


def _recorded(blobs: S3Blobs) -> _Recording:
    recording = _Recording(blobs._s3._client)
    blobs._s3 = _Guarded(recording)
    return recording


def _pending_uploads(blobs: S3Blobs) -> list[str]:
    listed = blobs._s3.list_multipart_uploads(Bucket=blobs.bucket, Prefix=blobs.prefix)
    return [upload["Key"] for upload in listed.get("Uploads", [])]


def test_a_monolithic_upload_streams_straight_to_its_object(nodes: tuple[S3Blobs, S3Blobs]) -> None:
    """With the digest named in advance, the bytes go to blobs/<alg>/<hex> as one multipart upload of 8 MiB
    parts, completed once verified: no staging object, no copy. A blob below one part is one PUT."""
    one, _ = nodes
    calls = _recorded(one)
    store = BlobStore(MemoryIndex(), one)
    chunks = (DATA[i:i + MiB + 3] for i in range(0, len(DATA), MiB + 3))
    info = store.ingest(chunks, expected=Digest.of(DATA))
    target = f"{one.prefix}blobs/sha256/{info.digest.hex}"
    writes = [(op, key) for op, key in calls.calls if op not in ("head_object", "get_object")]
    assert writes == [("create_multipart_upload", target)] + [("upload_part", target)] * 3 + [
        ("complete_multipart_upload", target)]
    assert keys(one, "staging/") == [] and _pending_uploads(one) == []
    assert store.read_bytes(info.digest) == DATA
    calls.calls.clear()
    small = store.ingest([b"a small ", b"blob"], expected=Digest.of(b"a small blob"))
    assert [c for c in calls.calls if c[0] not in ("head_object", "get_object")] == [
        ("put_object", f"{one.prefix}blobs/sha256/{small.digest.hex}")]


@pytest.mark.parametrize("size", [10, 9 * MiB])
def test_a_wrong_digest_never_leaves_an_object_at_the_final_key(nodes: tuple[S3Blobs, S3Blobs], size: int) -> None:
    one, _ = nodes
    store = BlobStore(MemoryIndex(), one)
    claimed = Digest.of(b"something else")
    with pytest.raises(DigestMismatch):
        store.ingest([DATA[:size]], expected=claimed)
    assert keys(one, "blobs/") == [] and keys(one, "staging/") == []
    assert _pending_uploads(one) == []  # the parts went with the aborted multipart upload
    with pytest.raises(SizeMismatch):
        store.ingest([DATA[:size]], expected=Digest.of(DATA[:size]), size=size + 1)
    assert keys(one, "blobs/") == [] and _pending_uploads(one) == []


def test_a_blob_already_in_the_bucket_is_not_rewritten(nodes: tuple[S3Blobs, S3Blobs]) -> None:
    """An object at the blob's key with no record (a crashed publish's): the direct write finds it there, keeps it
    and completes nothing."""
    one, _ = nodes
    digest = Digest.of(DATA[:9 * MiB])
    target = f"{one.prefix}blobs/sha256/{digest.hex}"
    one._s3.put_object(Bucket=one.bucket, Key=target, Body=DATA[:9 * MiB])
    calls = _recorded(one)
    store = BlobStore(MemoryIndex(), one)
    store.ingest([DATA[:9 * MiB]], expected=digest)
    assert not [c for c in calls.calls if c[0] in ("complete_multipart_upload", "put_object", "copy_object")]
    assert _pending_uploads(one) == [] and store.read_bytes(digest) == DATA[:9 * MiB]


class _CollectedInTheMoment(S3Blobs):
    """A keeper whose blob a collector retires and purges between the publish's move and its commit (the one
    interleaving of cas/gc.py where `ensure` must put the bytes back itself)."""

    def publish(self, staged: Staged, digest: Digest) -> bool:
        moved = super().publish(staged, digest)
        if self.retire(digest):
            self.purge(digest)
        return moved


def test_a_direct_write_collected_before_its_commit_takes_its_claim_back(engines: Engines, bucket: str) -> None:
    """Its parts became the object the collector purged: nothing to put back. The record says MISSING (not
    served, never PRESENT without bytes), the caller gets StoreUnavailable (503: send it again), and the next
    ingest heals the record."""
    prefix = uuid.uuid4().hex[:8]
    racing = _CollectedInTheMoment(bucket, prefix=prefix, endpoint_url=engines.s3.endpoint)
    index = MemoryIndex()
    store = BlobStore(index, racing)
    digest = Digest.of(DATA[:6 * MiB])
    with pytest.raises(StoreUnavailable, match="send it again"):
        store.ingest([DATA[:6 * MiB]], expected=digest)
    assert not store.contains(digest)
    with pytest.raises(BlobUnknown):
        store.stat(digest)
    calm = BlobStore(index, S3Blobs(bucket, prefix=prefix, endpoint_url=engines.s3.endpoint))
    calm.ingest([DATA[:6 * MiB]], expected=digest)
    assert calm.read_bytes(digest) == DATA[:6 * MiB]


def test_a_direct_write_that_found_the_blob_there_puts_it_back_from_its_open_upload(engines: Engines,
                                                                                    bucket: str) -> None:
    """The object was there (a crashed publish's), so publish kept its multipart upload open; a collector purged
    that object before the commit: `ensure` completes the upload, and the blob is whole."""
    prefix = uuid.uuid4().hex[:8]
    racing = _CollectedInTheMoment(bucket, prefix=prefix, endpoint_url=engines.s3.endpoint)
    digest = Digest.of(DATA[:9 * MiB])
    racing._s3.put_object(Bucket=bucket, Key=racing._blob_key(digest), Body=DATA[:9 * MiB])
    store = BlobStore(MemoryIndex(), racing)
    store.ingest([DATA[:9 * MiB]], expected=digest)
    assert store.read_bytes(digest) == DATA[:9 * MiB] and _pending_uploads(racing) == []


def test_a_whole_blob_put_to_a_fresh_session_goes_straight_to_its_object(nodes: tuple[S3Blobs, S3Blobs]) -> None:
    """POST then one PUT with the whole body (what skopeo and docker do): no staging segment, the session ends
    in the blob's commit; a wrong digest ends the session and leaves nothing at the key."""
    one, two = nodes
    index = MemoryIndex()
    store, other = BlobStore(index, one), BlobStore(index, two)
    calls = _recorded(one)
    session = store.uploads.create()
    info = store.uploads.finish(session.id, Digest.of(DATA), iter([DATA[:4 * MiB], DATA[4 * MiB:]]), offset=0)
    segments = [key for op, key in calls.calls if "/staging/" in key and op == "put_object"]
    assert segments == [f"{one.prefix}staging/{session.id}/session"]  # the POST's marker, and no segment
    assert not [op for op, _ in calls.calls if op in ("copy_object", "upload_part_copy")]
    assert keys(one, "staging/") == [] and other.read_bytes(info.digest) == DATA
    with pytest.raises(UploadUnknown):
        store.uploads.status(session.id)
    wrong = store.uploads.create()
    with pytest.raises(DigestMismatch):
        other.uploads.finish(wrong.id, Digest.of(b"not these bytes"), [DATA[:MiB]])
    with pytest.raises(UploadUnknown):
        store.uploads.status(wrong.id)
    assert keys(one, "blobs/") == [f"blobs/sha256/{info.digest.hex}"] and _pending_uploads(one) == []
