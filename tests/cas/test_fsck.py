from __future__ import annotations

import os

import pytest

from cas import BlobStore, BlobUnknown, Digest, check


def test_clean_store(store: BlobStore) -> None:
    store.ingest(os.urandom(3 << 20))
    report = check(store)
    assert not report.damaged and report.checked == 1 and report.bytes_hashed == 3 << 20


def test_corrupt_file_is_found_quarantined_and_healed_by_a_repush(store: BlobStore) -> None:
    data = os.urandom(5000)
    info = store.ingest(data)
    with store.index.write() as txn:
        store.refs.take(txn, "m", info.digest)
    path = store.local_path(info.digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(bytes([data[100] ^ 0xFF]))  # flipped: writing a fixed byte left the file intact 1 time in 256
    report = check(store)
    assert report.damaged and [c.split()[0] for c in report.corrupt] == [str(info.digest)]
    check(store, repair=True)
    with pytest.raises(BlobUnknown):  # never served again
        store.stat(info.digest)
    assert len(list((store.root / "quarantine").iterdir())) == 1
    assert store.gc.explain(info.digest).holders == ("m",)  # the holder was not dropped
    store.ingest(data)  # a client pushes the layer again
    assert store.read_bytes(info.digest) == data
    assert store.gc.explain(info.digest).refcount == 1
    assert not check(store).damaged


def test_missing_file_is_marked_missing(store: BlobStore) -> None:
    info = store.ingest(b"abc")
    os.unlink(store.local_path(info.digest))
    report = check(store)
    assert report.missing == [str(info.digest)]
    check(store, repair=True)
    assert not check(store).damaged
    with pytest.raises(BlobUnknown):
        store.stat(info.digest)


def test_unindexed_file_is_debris_and_adopted_on_repair(store: BlobStore) -> None:
    data = b"orphan bytes"
    digest = Digest.of(data)
    path = store.root / "blobs" / "sha256" / digest.hex[:2] / digest.hex
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    report = check(store)
    assert report.unindexed == [str(digest)] and not report.damaged
    check(store, repair=True)
    assert store.read_bytes(digest) == data


def test_stray_file_and_refcount_drift(store: BlobStore) -> None:
    info = store.ingest(b"abc")
    (store.root / "blobs" / "sha256" / "zz").mkdir()
    (store.root / "blobs" / "sha256" / "zz" / "not-a-digest").write_bytes(b"?")
    with store.index.write() as txn:
        store.refs.take(txn, "m", info.digest)
        txn.delete(store.tables.refs, info.digest.key + b"\0m")  # an edge lost behind the count's back
    report = check(store)
    assert report.damaged and report.stray and report.refcount
    repaired = check(store, repair=True)
    assert len(repaired.repaired) == 2
    assert not check(store).damaged
    assert store.gc.explain(info.digest).refcount == 0
