from __future__ import annotations

import os
from collections.abc import Callable, Iterator

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
