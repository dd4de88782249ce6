from __future__ import annotations

import os
from collections.abc import Callable

from cas import BlobStore, Digest
from cas.gc import BATCH
from tests.conftest import FakeClock


def test_grace_references_and_dry_run(make_store: Callable[..., BlobStore], clock: FakeClock) -> None:
    store = make_store(grace=100.0)
    a, b, c = (store.ingest(os.urandom(n)) for n in (10, 20, 30))
    with store.index.write() as txn:
        store.refs.take(txn, "m1", a.digest)
        store.refs.take(txn, "m2", b.digest)
    clock.advance(99)
    assert store.gc.run().collected == []  # c is still in its grace period
    clock.advance(1)
    dry = store.gc.run(dry_run=True)
    assert dry.collected == [(c.digest, 30)] and dry.bytes_freed == 30
    assert store.contains(c.digest)  # a dry run deletes nothing
    with store.index.write() as txn:
        store.refs.drop(txn, "m2", b.digest)
    report = store.gc.run()
    assert report.collected == [(c.digest, 30)]
    assert not store.contains(c.digest) and store.contains(b.digest)  # b's grace restarted at the drop
    clock.advance(100)
    assert store.gc.run().collected == [(b.digest, 20)]
    assert store.read_bytes(a.digest)


def test_references_are_edges_not_counters(store: BlobStore) -> None:
    info = store.ingest(b"x")
    with store.index.write() as txn:
        assert store.refs.take(txn, "m", info.digest) is True
        assert store.refs.take(txn, "m", info.digest) is False  # a retried transaction cannot skew the count
        assert store.refs.take(txn, "n", info.digest) is True
    assert store.gc.explain(info.digest).refcount == 2
    with store.index.write() as txn:
        assert store.refs.drop(txn, "m", info.digest) is True
        assert store.refs.drop(txn, "m", info.digest) is False
        assert store.refs.drop_all(txn, "n") == 1
    assert store.gc.explain(info.digest).refcount == 0


def test_explain_says_why(make_store: Callable[..., BlobStore], clock: FakeClock) -> None:
    store = make_store(grace=100.0, lease=500.0)
    info = store.ingest(b"x")
    assert "grace" in store.gc.explain(info.digest).reason
    with store.index.write() as txn:
        store.refs.take(txn, "manifest:syn1/app@sha256:abc", info.digest)
    why = store.gc.explain(info.digest)
    assert why.holders == ("manifest:syn1/app@sha256:abc",) and why.collectable_at is None
    with store.index.write() as txn:
        store.refs.drop_all(txn, "manifest:syn1/app@sha256:abc")
    clock.advance(200)
    assert "next GC" in store.gc.explain(info.digest).reason
    store.stat(info.digest)
    assert "leased" in store.gc.explain(info.digest).reason
    assert store.gc.explain(Digest.of(b"never")).reason == "not in the store"


def test_more_than_one_batch(make_store: Callable[..., BlobStore], clock: FakeClock) -> None:
    store = make_store(grace=10.0, lease=1000.0)
    infos = [store.ingest(i.to_bytes(4, "big")) for i in range(BATCH * 2 + 7)]
    leased = infos[BATCH + 3]
    clock.advance(11)
    store.stat(leased.digest)  # one leased entry in the middle of the queue must not stop the pass
    report = store.gc.run()
    assert len(report.collected) == len(infos) - 1 and report.leased == 1
    assert store.contains(leased.digest)
    assert len(list((store.root / "blobs").glob("*/*/*"))) == 1


def test_stale_queue_entries_are_dropped(make_store: Callable[..., BlobStore], clock: FakeClock) -> None:
    store = make_store(grace=10.0)
    info = store.ingest(b"x")
    with store.index.write() as txn:
        store.refs.take(txn, "m", info.digest)
    clock.advance(5)
    with store.index.write() as txn:
        store.refs.drop(txn, "m", info.digest)  # queued again, later: the first entry is stale
    clock.advance(6)
    report = store.gc.run()
    assert report.collected == [] and report.stale_entries == 1
    clock.advance(5)
    assert [d for d, _ in store.gc.run().collected] == [info.digest]
