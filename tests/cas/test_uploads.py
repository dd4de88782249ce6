from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

import cas.uploads
from cas import (
    BlobStore,
    Digest,
    DigestMismatch,
    OffsetMismatch,
    SizeMismatch,
    UnsupportedDigest,
    UploadBusy,
    UploadUnknown,
)
from cas.digest import Hasher, new_hasher
from cas.files import LockedFile
from cas.layout import UploadRecord
from cas.memory_blobs import MemoryBlobs
from cas.memory_index import MemoryIndex
from cas.writer_leases import WRITER_LEASE
from tests.conftest import FakeClock


def test_chunks_in_order_then_finish(store: BlobStore) -> None:
    data = os.urandom(5 << 20)
    session = store.uploads.create(meta={"repository": "syn1/app"})
    offset = 0
    for size in (1, 1 << 20, 3 << 20, (5 << 20) - (4 << 20) - 1):
        status = store.uploads.append(session.id, [data[offset:offset + size]], offset=offset, length=size)
        offset += size
        assert status.offset == offset
    assert store.uploads.status(session.id).meta == {"repository": "syn1/app"}
    info = store.uploads.finish(session.id, Digest.of(data))
    assert store.read_bytes(info.digest) == data
    with pytest.raises(UploadUnknown):
        store.uploads.status(session.id)


def test_wrong_offsets_are_refused_and_change_nothing(store: BlobStore) -> None:
    session = store.uploads.create()
    store.uploads.append(session.id, [b"abc"], offset=0)
    for wrong in (0, 2, 4, 1000):
        with pytest.raises(OffsetMismatch) as info:
            store.uploads.append(session.id, [b"zzz"], offset=wrong)
        assert (info.value.expected, info.value.given) == (3, wrong)
    assert store.uploads.status(session.id).offset == 3
    assert store.uploads.finish(session.id, Digest.of(b"abcdef"), [b"def"], offset=3).size == 6


def test_a_short_chunk_against_its_declared_length_is_refused(store: BlobStore) -> None:
    session = store.uploads.create()
    with pytest.raises(SizeMismatch):
        store.uploads.append(session.id, [b"abc"], offset=0, length=4)
    assert store.uploads.status(session.id).offset == 0
    store.uploads.append(session.id, [b"abcd"], offset=0, length=4)
    assert store.uploads.finish(session.id, Digest.of(b"abcd")).size == 4


def test_client_hanging_up_mid_chunk_keeps_the_session_resumable(store: BlobStore) -> None:
    data = os.urandom(4 << 20)
    session = store.uploads.create()
    store.uploads.append(session.id, [data[:1000]], offset=0)

    def hangs_up() -> Iterator[bytes]:
        yield data[1000:3 << 20]
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        store.uploads.append(session.id, hangs_up(), offset=1000)
    assert store.uploads.status(session.id).offset == 1000
    assert os.path.getsize(store.root / "uploads" / session.id) == 1000  # the failed chunk was cut off
    info = store.uploads.finish(session.id, Digest.of(data), [data[1000:]], offset=1000)
    assert store.read_bytes(info.digest) == data


def test_wrong_digest_discards_the_session(store: BlobStore) -> None:
    session = store.uploads.create()
    store.uploads.append(session.id, [b"abc"])
    with pytest.raises(DigestMismatch):
        store.uploads.finish(session.id, Digest.of(b"abd"))
    with pytest.raises(UploadUnknown):
        store.uploads.status(session.id)
    assert list((store.root / "uploads").iterdir()) == []
    assert not list((store.root / "blobs").glob("*/*/*"))


@pytest.mark.parametrize("algorithm", ["sha512", "blake3"])
def test_finish_with_another_algorithm_rehashes(store: BlobStore, algorithm: str) -> None:
    data = os.urandom(3 << 20)
    session = store.uploads.create()  # running hash: sha256
    store.uploads.append(session.id, [data])
    info = store.uploads.finish(session.id, Digest.of(data, algorithm))
    assert info.digest.algorithm == algorithm and store.read_bytes(info.digest) == data


class CountingHasher:
    """A hasher that counts the bytes it is fed (the running hash of an upload is one of these in the test)."""

    fed = 0

    def __init__(self, inner: Hasher) -> None:
        self._inner = inner

    def update(self, data: bytes | memoryview, /) -> object:
        CountingHasher.fed += len(data)
        return self._inner.update(data)

    def hexdigest(self) -> str:
        return self._inner.hexdigest()

    def copy(self) -> Hasher:
        return CountingHasher(self._inner.copy())


def test_sessions_survive_reopen_and_rehash_once(make_store: Callable[..., BlobStore],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cas.uploads, "new_hasher", lambda algorithm: CountingHasher(new_hasher(algorithm)))
    data = os.urandom(3 << 20)
    store = make_store()
    session = store.uploads.create(algorithm="blake3")
    store.uploads.append(session.id, [data[:100_000]])
    assert CountingHasher.fed == 100_000  # the chunk, hashed as it was written
    store.close()
    again = make_store()  # a restart: the running hash is gone with the process
    assert again.uploads.status(session.id).offset == 100_000
    CountingHasher.fed = 0
    again.uploads.append(session.id, [data[100_000:]], offset=100_000)
    assert CountingHasher.fed == len(data)  # the first 100 000 bytes re-hashed once from the file, the rest as written
    assert again.uploads.finish(session.id, Digest.of(data, "blake3")).size == len(data)
    assert CountingHasher.fed == len(data)  # finishing with the session's algorithm reads nothing again


def test_a_tail_lost_to_power_failure_resets_the_session_to_what_survived(store: BlobStore) -> None:
    session = store.uploads.create()
    store.uploads.append(session.id, [b"a" * 1000])
    os.truncate(store.root / "uploads" / session.id, 600)  # as if the page cache never reached the disk
    assert store.uploads.status(session.id).offset == 1000  # the record's word, until the session is next written
    with pytest.raises(OffsetMismatch) as refused:
        store.uploads.append(session.id, [b"b"], offset=1000)
    assert refused.value.expected == 600 and store.uploads.status(session.id).offset == 600
    store.uploads.append(session.id, [b"a" * 400], offset=600)
    assert store.uploads.finish(session.id, Digest.of(b"a" * 1000)).size == 1000


def test_busy_session_is_refused_not_interleaved(store: BlobStore) -> None:
    session = store.uploads.create()
    held = LockedFile.try_open(store.root / "uploads" / session.id)  # another writer holds it
    assert held is not None
    with pytest.raises(UploadBusy):
        store.uploads.append(session.id, [b"x"], offset=0)
    held.close()
    store.uploads.append(session.id, [b"x"], offset=0)


@pytest.mark.parametrize("bad", ["", "../../etc/passwd", "0" * 31, "g" * 32, "0" * 33])
def test_unknown_and_malformed_ids(store: BlobStore, bad: str) -> None:
    for call in (lambda: store.uploads.status(bad), lambda: store.uploads.append(bad, [b"x"]),
                 lambda: store.uploads.finish(bad, Digest.of(b"x")), lambda: store.uploads.cancel(bad)):
        with pytest.raises(UploadUnknown):
            call()


def test_cancel(store: BlobStore) -> None:
    session = store.uploads.create()
    store.uploads.append(session.id, [b"abc"])
    store.uploads.cancel(session.id)
    with pytest.raises(UploadUnknown):
        store.uploads.append(session.id, [b"d"], offset=3)
    assert list((store.root / "uploads").iterdir()) == []


def test_unsupported_algorithm_is_refused_at_create(store: BlobStore) -> None:
    with pytest.raises(UnsupportedDigest):
        store.uploads.create(algorithm="md5")


def test_idle_sessions_expire_and_active_ones_do_not(make_store: Callable[..., BlobStore],
                                                     clock: FakeClock) -> None:
    store = make_store(upload_ttl=100.0)
    idle, active = store.uploads.create(), store.uploads.create()
    store.uploads.append(idle.id, [b"x"])
    clock.advance(60)
    store.uploads.append(active.id, [b"y"])
    clock.advance(50)
    assert store.uploads.expire() == 1
    with pytest.raises(UploadUnknown):
        store.uploads.status(idle.id)
    assert store.uploads.status(active.id).offset == 1
    assert [p.name for p in (store.root / "uploads").iterdir()] == [active.id]


def test_partial_files_without_a_session_are_debris(store: BlobStore) -> None:
    orphan = store.root / "uploads" / ("f" * 32)
    orphan.write_bytes(b"left by a crash between file creation and record commit")
    locked = LockedFile.create(store.root / "uploads", "e" * 32)  # being created right now: not debris
    assert store.uploads.expire() == 1
    assert not orphan.exists() and locked.path.exists()
    locked.remove()


class _NodeLocalBlobs(MemoryBlobs):
    """Bytes whose staging lock is this process's only (as S3's): the upload record's writer lease decides."""

    local_staging_lock = True


def test_a_writer_lease_left_by_a_dead_node_refuses_until_it_runs_out(clock: FakeClock) -> None:
    """A node died mid-chunk, its lease in the record: other writers get UploadBusy (409) until the lease runs
    out, then one takes the session over (counted), goes on, and its finish re-hashes what is stored."""
    store = BlobStore(MemoryIndex(), _NodeLocalBlobs(), clock=clock)
    session = store.uploads.create()
    store.uploads.append(session.id, [b"a" * 1000], offset=0)
    key = session.id.encode()

    def record() -> UploadRecord:
        with store.index.read() as txn:
            raw = txn.get(store.tables.uploads, key)
        assert raw is not None
        return UploadRecord.unpack(raw)

    assert record().writer == "" and record().offset == 1000  # released after the chunk
    dead = replace(record(), writer="elsewhere:1:dead", lease_until=clock() + 30)
    store.index.transact(lambda txn: txn.put(store.tables.uploads, key, dead.pack()))
    for call in (lambda: store.uploads.append(session.id, [b"b"], offset=1000),
                 lambda: store.uploads.finish(session.id, Digest.of(b"a" * 1000)),
                 lambda: store.uploads.cancel(session.id)):
        with pytest.raises(UploadBusy, match="at most 30 s more"):
            call()
    assert store.uploads.status(session.id).offset == 1000
    clock.advance(31)
    store.uploads.append(session.id, [b"b" * 10], offset=1000)
    assert record().takeovers == 1 and record().writer == ""
    info = store.uploads.finish(session.id, Digest.of(b"a" * 1000 + b"b" * 10))
    assert store.read_bytes(info.digest) == b"a" * 1000 + b"b" * 10


def test_a_second_writer_is_refused_by_the_lease_while_the_first_streams(clock: FakeClock) -> None:
    store = BlobStore(MemoryIndex(), _NodeLocalBlobs(), clock=clock)
    session = store.uploads.create()
    started, go = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:
        yield b"x" * 100
        started.set()
        assert go.wait(30)
        yield b"y" * 100

    outcome: list[object] = []
    writer = threading.Thread(target=lambda: outcome.append(store.uploads.append(session.id, body(), offset=0)))
    writer.start()
    assert started.wait(30)
    with pytest.raises(UploadBusy, match="being written by another request"):
        store.uploads.append(session.id, [b"z"], offset=0)
    clock.advance(WRITER_LEASE / 2)  # past a third of the lease: the writer renews it at its next chunk
    go.set()
    writer.join(30)
    assert len(outcome) == 1 and store.uploads.status(session.id).offset == 200
    info = store.uploads.finish(session.id, Digest.of(b"x" * 100 + b"y" * 100))
    assert info.size == 200
