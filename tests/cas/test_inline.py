"""Inline blobs: small blobs stored inside the index in the caller's transaction (manifests)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from cas import BlobStore, BlobUnknown, Digest, InvalidRange, check
from tests.conftest import FakeClock


def test_inline_blob_is_stored_with_the_callers_commit(store: BlobStore) -> None:
    body = b'{"schemaVersion":2}'
    with pytest.raises(RuntimeError), store.index.write() as txn:
        store.ingest_inline(txn, body)
        raise RuntimeError("abort")  # the caller's transaction aborts: nothing was stored
    assert not store.contains(Digest.of(body))
    with store.index.write() as txn:
        info = store.ingest_inline(txn, body, "sha512")
        store.refs.take(txn, "manifest:x", info.digest)
    assert info.inline and info.digest == Digest.of(body, "sha512")
    assert store.stat(info.digest).inline and store.read_bytes(info.digest) == body
    with store.open(info.digest, 2, 5) as reader:
        assert reader.read() == body[2:7] and reader.fileno() == -1
    with pytest.raises(InvalidRange):
        store.open(info.digest, 5, len(body))
    assert store.local_path(info.digest) is None  # no file behind it
    assert all(p.is_dir() for p in (store.root / "blobs").rglob("*"))  # no file was written


def test_inline_and_file_ingest_deduplicate_both_ways(store: BlobStore) -> None:
    first, second = os.urandom(100), os.urandom(100)
    with store.index.write() as txn:
        a = store.ingest_inline(txn, first)
    assert store.ingest(first).digest == a.digest and store.stat(a.digest).inline  # no file written
    b = store.ingest(second)
    with store.index.write() as txn:
        assert store.ingest_inline(txn, second).inline is False  # already a file: kept as it is
    assert store.read_bytes(b.digest) == second


def test_inline_blobs_are_collected_like_files(make_store: Callable[..., BlobStore], clock: FakeClock) -> None:
    store = make_store(grace=100.0)
    with store.index.write() as txn:
        kept = store.ingest_inline(txn, b"kept")
        store.refs.take(txn, "h", kept.digest)
        gone = store.ingest_inline(txn, b"gone")
    clock.advance(100)
    assert store.gc.run().collected == [(gone.digest, 4)]
    assert not store.contains(gone.digest) and store.read_bytes(kept.digest) == b"kept"
    with store.index.read() as txn:
        assert txn.get(store.tables.inline, gone.digest.key) is None  # the bytes went with the record
    with store.index.write() as txn:
        store.refs.drop(txn, "h", kept.digest)
    clock.advance(100)
    assert store.gc.run().collected == [(kept.digest, 4)]
    assert check(store).damaged is False


def test_fsck_finds_and_repairs_damaged_inline_bytes(store: BlobStore) -> None:
    with store.index.write() as txn:
        info = store.ingest_inline(txn, b"manifest bytes")
        store.refs.take(txn, "h", info.digest)
        lost = store.ingest_inline(txn, b"lost bytes")
        txn.put(store.tables.inline, info.digest.key, b"tampered bytes")
        txn.delete(store.tables.inline, lost.digest.key)
    report = check(store)
    assert report.damaged and len(report.corrupt) == 1 and report.missing == [str(lost.digest)]
    check(store, repair=True)
    assert not check(store).damaged
    with pytest.raises(BlobUnknown):
        store.read_bytes(info.digest)  # never served once known to be wrong
    assert store.gc.explain(info.digest).holders == ("h",)  # holders kept: re-pushing heals
    with store.index.write() as txn:
        store.ingest_inline(txn, b"manifest bytes")
    assert store.read_bytes(info.digest) == b"manifest bytes"
    assert any((store.root / "quarantine").iterdir())
