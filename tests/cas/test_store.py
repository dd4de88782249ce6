from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cas import (
    BlobStore,
    BlobUnknown,
    Digest,
    DigestMismatch,
    IndexFull,
    InvalidRange,
    SizeMismatch,
    WriteTransaction,
    check,
)
from cas.writer import PIPELINE_THRESHOLD
from tests.conftest import FakeClock

ROOT = Path(__file__).resolve().parents[2]


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i:i + size] for i in range(0, len(data), size))


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
@pytest.mark.parametrize("size", [0, 1, PIPELINE_THRESHOLD, PIPELINE_THRESHOLD + 1, 5 << 20])
def test_ingest_round_trip(store: BlobStore, algorithm: str, size: int) -> None:
    data = os.urandom(size)
    info = store.ingest(chunks(data, 256 << 10), algorithm=algorithm)
    assert info.digest == Digest.of(data, algorithm) and info.size == size
    assert store.read_bytes(info.digest) == data
    assert store.local_path(info.digest).read_bytes() == data
    assert store.local_path(info.digest) == store.root / "blobs" / algorithm / info.digest.hex[:2] / info.digest.hex


def test_sources_bytes_file_and_iterable_agree(store: BlobStore) -> None:
    data = os.urandom(3 << 20)
    a = store.ingest(data)
    b = store.ingest(io.BytesIO(data))
    c = store.ingest(chunks(data, 100_000))
    assert a == b == c


def test_mismatch_leaves_nothing_behind(store: BlobStore) -> None:
    data = os.urandom(2 << 20)
    wrong = Digest.of(b"something else")
    with pytest.raises(DigestMismatch):
        store.ingest(chunks(data, 1 << 16), wrong)
    with pytest.raises(SizeMismatch):
        store.ingest(data, size=len(data) + 1)
    assert list((store.root / "blobs").rglob("*.*")) == [] and not list((store.root / "blobs").glob("*/*/*"))
    assert list((store.root / "tmp").iterdir()) == []
    with pytest.raises(BlobUnknown):
        store.stat(wrong)


def test_a_failing_source_leaves_nothing_behind(store: BlobStore) -> None:
    def broken() -> Iterator[bytes]:
        yield os.urandom(3 << 20)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.ingest(broken())
    assert list((store.root / "tmp").iterdir()) == []
    assert not list((store.root / "blobs").glob("*/*/*"))


def test_dedup_never_writes_the_second_copy(store: BlobStore) -> None:
    data = os.urandom(3 << 20)
    first = store.ingest(data)
    path = store.local_path(first.digest)
    before = os.stat(path)
    assert store.ingest(data) == first  # digest not known in advance: written to tmp, never to the final place
    assert store.ingest(chunks(data, 1 << 20), first.digest) == first  # known: only hashed
    session = store.uploads.create()
    store.uploads.append(session.id, [data])
    assert store.uploads.finish(session.id, first.digest) == first
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert list((store.root / "tmp").iterdir()) == [] and list((store.root / "uploads").iterdir()) == []


def test_dedup_with_a_wrong_expected_digest_is_still_a_mismatch(store: BlobStore) -> None:
    data = os.urandom(1000)
    first = store.ingest(data)
    with pytest.raises(DigestMismatch):
        store.ingest(b"other bytes", first.digest)


@pytest.mark.parametrize("offset,length", [(0, None), (0, 0), (10, 5), (99, 1), (100, 0), (0, 100)])
def test_ranges(store: BlobStore, offset: int, length: int | None) -> None:
    data = os.urandom(100)
    info = store.ingest(data)
    with store.open(info.digest, offset, length) as reader:
        end = len(data) if length is None else offset + length
        assert reader.read() == data[offset:end]
        assert reader.read() == b""


@pytest.mark.parametrize("offset,length", [(-1, None), (101, None), (0, 101), (50, 51), (0, -1)])
def test_ranges_outside_the_blob(store: BlobStore, offset: int, length: int | None) -> None:
    info = store.ingest(os.urandom(100))
    with pytest.raises(InvalidRange):
        store.open(info.digest, offset, length)


def test_stat_leases_only_unreferenced_blobs(make_store: Callable[..., BlobStore], clock: FakeClock) -> None:
    store = make_store(grace=10.0, lease=50.0)
    kept, free = store.ingest(b"kept"), store.ingest(b"free")
    with store.index.write() as txn:
        store.refs.take(txn, "m", kept.digest)
    clock.advance(20)  # past the grace of both
    store.stat(free.digest)  # a client checks the blob before pushing the manifest that names it
    assert store.gc.run().collected == []
    clock.advance(51)
    assert [d for d, _ in store.gc.run().collected] == [free.digest]
    assert store.stat(kept.digest).size == 4


def test_contains_does_not_lease(make_store: Callable[..., BlobStore], clock: FakeClock) -> None:
    store = make_store(grace=10.0, lease=50.0)
    info = store.ingest(b"x")
    clock.advance(11)
    assert store.contains(info.digest)
    assert [d for d, _ in store.gc.run().collected] == [info.digest]
    assert not store.contains(info.digest)


def _reference_all(store: BlobStore, txn: WriteTransaction, digests: list[Digest], holder: str) -> None:
    for digest in digests:
        store.refs.take(txn, holder + "x" * 300, digest)


def test_map_grows_instead_of_failing(tmp_path: Path) -> None:
    store = BlobStore.on_disk(tmp_path / "data", map_size=256 << 10)
    digests = [store.ingest(os.urandom(16)).digest for _ in range(2000)]
    grown = store.index.map_size
    assert grown > 256 << 10  # grown ahead of writes
    # One transaction that writes more than the whole map holds: transact grows the map and runs it again.
    store.index.transact(lambda txn: _reference_all(store, txn, digests, "first"))
    assert store.index.map_size > grown
    store.close()
    with BlobStore.on_disk(tmp_path / "data", map_size=256 << 10) as again:
        with again.index.read() as txn:
            assert len(list(again.refs.held_by(txn, "first" + "x" * 300))) == 2000
        assert not check(again).damaged


def test_a_with_block_that_fills_the_map_grows_it_and_asks_for_a_retry(tmp_path: Path) -> None:
    store = BlobStore.on_disk(tmp_path / "data", map_size=256 << 10)
    digests = [store.ingest(os.urandom(16)).digest for _ in range(500)]
    size = store.index.map_size
    with pytest.raises(IndexFull), store.index.write() as txn:  # a with-block cannot be replayed
        for holder in ("big", "bigger", "biggest"):
            _reference_all(store, txn, digests, holder)
    assert store.index.map_size > size
    with store.index.read() as txn:  # nothing of the failed block was committed
        assert list(store.refs.held_by(txn, "big" + "x" * 300)) == []
    with store.index.write() as txn:  # the retry fits
        _reference_all(store, txn, digests, "big")
    store.close()


def test_a_process_adopts_a_map_another_process_grew(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = BlobStore.on_disk(data, map_size=256 << 10)
    first = store.ingest(b"before")
    script = ("import os, sys; from cas import BlobStore\n"
              "s = BlobStore.on_disk(sys.argv[1], map_size=256 << 10)\n"
              "[s.ingest(os.urandom(32)) for _ in range(3000)]\n"
              "print(s.index.map_size)")
    out = subprocess.run([sys.executable, "-c", script, str(data)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) > 256 << 10
    assert store.read_bytes(first.digest) == b"before"
    assert store.ingest(b"after").size == 5  # a write after the other process grew the map
    assert not check(store).damaged
    store.close()


def test_format_version_is_checked(tmp_path: Path) -> None:
    from cas import IncompatibleStore
    store = BlobStore.on_disk(tmp_path / "data")
    with store.index.write() as txn:
        txn.put(store.tables.meta, b"format", b"99")
    store.close()
    with pytest.raises(IncompatibleStore, match="format version 99, this Berth reads version 2"):
        BlobStore.on_disk(tmp_path / "data")


def test_a_format_1_directory_is_migrated_on_open(tmp_path: Path) -> None:
    """Format 1 kept an upload's progress in its partial file (size, mtime): opening copies them into the record."""
    import json
    store = BlobStore.on_disk(tmp_path / "data")
    kept = store.ingest(b"kept")
    session = store.uploads.create(meta={"owner": "ann"})
    store.uploads.append(session.id, [b"x" * 1234])
    key = session.id.encode()
    with store.index.write() as txn:  # back to what format 1 wrote
        record = json.loads(txn.get(store.tables.uploads, key) or b"")
        format_1 = {k: record[k] for k in ("algorithm", "created", "meta")}
        txn.put(store.tables.uploads, key, json.dumps(format_1).encode())
        txn.put(store.tables.meta, b"format", b"1")
    store.close()
    os.utime(tmp_path / "data" / "uploads" / session.id, (1234567.0, 1234567.0))
    with BlobStore.on_disk(tmp_path / "data") as again:
        status = again.uploads.status(session.id)
        assert (status.offset, status.updated, status.meta) == (1234, 1234567.0, {"owner": "ann"})
        again.uploads.append(session.id, [b"y"], offset=1234)
        assert again.uploads.finish(session.id, Digest.of(b"x" * 1234 + b"y")).size == 1235
        assert again.read_bytes(kept.digest) == b"kept"
        with again.index.read() as txn:
            assert txn.get(again.tables.meta, b"format") == b"2"


def test_cas_imports_nothing_of_berth_or_any_web_framework() -> None:
    script = ("import sys, cas\n"
              "bad = [m for m in sys.modules if m.split('.')[0] in "
              "('registry_core', 'adapters', 'starlette', 'uvicorn', 'granian', 'httpx')]\n"
              "print(bad)")
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pipeline_workers_survive_a_fork(tmp_path: Path) -> None:
    """A server may fork workers after the parent used the engine; the child must not wait on the parent's threads."""
    store = BlobStore.on_disk(tmp_path / "data")
    store.ingest(os.urandom(3 << 20))  # the parent's pipeline workers now exist (idle, in the pool)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            child = BlobStore.on_disk(tmp_path / "child")  # LMDB environments are opened after a fork, never inherited
            data = os.urandom(3 << 20)
            code = 0 if child.ingest(data).digest == Digest.of(data) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if waited[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the parent's pipeline workers")
    assert os.waitstatus_to_exitcode(waited[1]) == 0
    store.close()
