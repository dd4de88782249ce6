"""Compression at rest through the store's public interface, for both stores (files and memory): whatever a blob
holds and however it is kept, every range served is the original bytes, before and after a compaction pass; GC,
dedup publishes, fsck and the format-2 migration see the stored form."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, rule, run_state_machine_as_test

from cas import BlobStore, Digest, MemoryBlobs, StoreConfig, check
from cas.frames import FRAME_SIZE
from cas.layout import FORM_FRAMES_V1, FORM_RAW, STATE_MISSING, BlobRecord
from tests.conftest import FakeClock

F = FRAME_SIZE
SIZES = [0, 1, 8 << 10, F - 1, F, F + 1, 3 * F + 17, 5 * F]
WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"2026-12-02", b"syn1", b"0.25", b"tar", b"layer", b"\n", b","]


def text(seed: int, size: int) -> bytes:
    """CSV-like text: compresses to about a quarter, as the datasets of issue 18 do."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(WORDS, k=64)) + b"%d\n" % rng.randrange(10**6)
    return bytes(out[:size])


def content(kind: str, seed: int, size: int) -> bytes:
    if kind == "random":
        return random.Random(seed).randbytes(size)
    if kind == "text":
        return text(seed, size)
    # a mixture: text, then random bytes, then text again (compressible overall, not everywhere)
    third = size // 3
    return text(seed, third) + random.Random(seed).randbytes(third) + text(seed + 1, size - 2 * third)


@contextlib.contextmanager
def opened(kind: str) -> Iterator[BlobStore]:
    if kind == "memory":
        with BlobStore.in_memory() as store:
            yield store
        return
    root = tempfile.mkdtemp(prefix="berth-compaction-")
    try:
        with BlobStore.on_disk(root) as store:
            yield store
    finally:
        shutil.rmtree(root, ignore_errors=True)


STORES = ["memory", "disk"]


def assert_serves(store: BlobStore, digest: Digest, data: bytes, ranges: list[tuple[int, int]]) -> None:
    assert store.stat(digest).size == len(data)
    assert store.read_bytes(digest) == data
    for offset, length in ranges:
        with store.open(digest, offset, length) as reader:
            assert reader.read() == data[offset:offset + length], (offset, length)
        with store.open(digest, offset, length) as reader:  # streamed as the HTTP adapter does
            assert b"".join(reader) == data[offset:offset + length], (offset, length)


@st.composite
def ranges(draw: st.DrawFn, size: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(draw(st.integers(1, 6))):
        offset = draw(st.integers(0, size))
        length = draw(st.integers(0, size - offset))
        out.append((offset, length))
    if size:  # across a frame boundary, and the last byte
        boundary = min(F, size - 1)
        out += [(max(boundary - 3, 0), min(7, size - max(boundary - 3, 0))), (size - 1, 1)]
    return out


@pytest.mark.parametrize("kind", STORES)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), what=st.sampled_from(["random", "text", "mixture"]),
       size=st.sampled_from(SIZES) | st.integers(0, 3 * F), seed=st.integers(0, 1000))
def test_any_range_is_the_original_before_and_after_compaction(kind: str, data: st.DataObject, what: str,
                                                               size: int, seed: int) -> None:
    with opened(kind) as store:
        serves_through_a_pass(store, data, what, size, seed)


def serves_through_a_pass(store: BlobStore, data: st.DataObject, what: str, size: int, seed: int) -> None:
    """A blob of `what` content, served by any range before and after a compaction pass, in the form the pass
    chose, counted and checked (tests/cas/test_compaction_distributed.py runs it on PostgreSQL + S3 too)."""
    original = content(what, seed, size)
    digest = store.ingest(original).digest
    chosen = data.draw(ranges(size))
    assert_serves(store, digest, original, chosen)
    report = store.compaction.run()
    assert report.assessed == 1 and not report.damaged
    info = store.stat(digest)
    if what == "text" and size >= 8 << 10:
        assert info.form == FORM_FRAMES_V1 and store.local_path(info) is None
    if what == "random":
        assert info.form == FORM_RAW
    assert_serves(store, digest, original, chosen)
    usage = store.compaction.usage()
    assert usage.original_bytes == size and usage.pending == 0
    assert (usage.stored_bytes < size) == (info.form == FORM_FRAMES_V1)
    fsck = check(store)
    assert not fsck.damaged and fsck.superseded == 0, fsck.lines()
    assert store.compaction.run().assessed == 0  # assessed once, never sampled again


def many_frames_text() -> bytes:
    return text(7, 40 * F + 123)


@pytest.mark.parametrize("kind", STORES)
def test_many_frames_and_a_reader_opened_before_the_switch(kind: str) -> None:
    original = many_frames_text()
    with opened(kind) as store:
        digest = store.ingest(original).digest
        early = store.open(digest, F - 10, 3 * F)  # opened on the raw form: stays valid after the switch
        report = store.compaction.run()
        assert [d for d, _, _ in report.compressed] == [digest]
        assert report.bytes_saved > len(original) // 2
        assert not store.blobs.contains(digest, FORM_RAW) and store.blobs.contains(digest, FORM_FRAMES_V1)
        with early:
            assert early.read() == original[F - 10:4 * F - 10]
        assert_serves(store, digest, original, [(0, 0), (F * 20 - 1, 2), (len(original) - F, F)])


def test_budget_leaves_the_rest_for_the_next_pass() -> None:
    with opened("memory") as store:
        digests = [store.ingest(text(seed, 64 << 10)).digest for seed in range(3)]
        first = store.compaction.run(max_bytes=1)
        assert first.assessed == 1 and first.pending == 2
        rest = store.compaction.run()
        assert rest.assessed == 2 and rest.pending == 0
        assert all(store.stat(d).form == FORM_FRAMES_V1 for d in digests)


@pytest.mark.parametrize("kind", STORES)
def test_gc_collects_every_form_and_a_push_brings_the_blob_back(kind: str) -> None:
    clock = FakeClock()
    config = StoreConfig(grace=10.0, lease=0.0)
    original = text(3, 2 * F)
    root = tempfile.mkdtemp(prefix="berth-compaction-")
    store = (BlobStore.in_memory(config=config, clock=clock) if kind == "memory"
             else BlobStore.on_disk(root, config=config, clock=clock))
    try:
        digest = store.ingest(original).digest
        store.compaction.run()
        assert store.stat(digest).form == FORM_FRAMES_V1
        clock.advance(11)
        assert [d for d, _ in store.gc.run().collected] == [digest]
        assert not store.contains(digest)
        assert not any(store.blobs.contains(digest, form) for form in (FORM_RAW, FORM_FRAMES_V1))
        assert list(store.blobs.stored()) == [] and list(store.blobs.retired()) == []
        again = store.ingest(original)  # pushed again: raw, queued for compaction again
        assert store.stat(again.digest).form == FORM_RAW
        assert store.compaction.run().compressed and store.read_bytes(digest) == original
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("kind", STORES)
def test_an_upload_of_a_compacted_blob_leaves_debris_the_next_pass_removes(kind: str) -> None:
    original = text(4, 3 * F)
    with opened(kind) as store:
        digest = store.ingest(original).digest
        store.compaction.run()
        session = store.uploads.create()  # an upload publishes its bytes beside the compressed form
        store.uploads.finish(session.id, digest, [original], offset=0)
        assert store.stat(digest).form == FORM_FRAMES_V1 and store.read_bytes(digest) == original
        assert check(store).superseded == 1 or not store.blobs.contains(digest, FORM_RAW)
        assert store.compaction.run().debris in (0, 1)
        assert not store.blobs.contains(digest, FORM_RAW)
        assert not check(store).damaged and store.read_bytes(digest) == original


@pytest.mark.parametrize("kind", STORES)
def test_fsck_decompresses_and_quarantines_a_damaged_stored_form(kind: str) -> None:
    original = text(5, 2 * F + 5)
    with opened(kind) as store:
        digest = store.ingest(original).digest
        store.compaction.run()
        stored = _stored_bytes(store, digest)
        # Damage that decompresses cleanly (a swapped-in valid stored form of other bytes of the same size) and
        # damage that does not (a flipped byte in a frame): both are corrupt against the original digest.
        from cas import frames
        for damaged in (frames.compress(original[::-1]), stored[:100] + bytes([stored[100] ^ 1]) + stored[101:]):
            _replace_stored(store, digest, damaged)
            report = check(store)
            assert report.damaged and any(str(digest) in line for line in report.corrupt), report.lines()
        repaired = check(store, repair=True)
        assert any("quarantined corrupt" in line for line in repaired.repaired)
        with store.index.read() as txn:
            raw = txn.get(store.tables.blobs, digest.key)
        assert raw is not None and BlobRecord.unpack(raw).state == STATE_MISSING
        assert not check(store).damaged
        store.ingest(original)  # re-pushing heals it, raw again
        assert store.read_bytes(digest) == original and store.stat(digest).form == FORM_RAW


def _stored_bytes(store: BlobStore, digest: Digest) -> bytes:
    if isinstance(store.blobs, MemoryBlobs):
        found = store.blobs.stored_bytes(digest, FORM_FRAMES_V1)
        assert found is not None
        return found
    assert store.root is not None
    return Path(f"{store.root}/blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}.zf1").read_bytes()


def _replace_stored(store: BlobStore, digest: Digest, data: bytes) -> None:
    if isinstance(store.blobs, MemoryBlobs):
        store.blobs.corrupt(digest, data, FORM_FRAMES_V1)
        return
    assert store.root is not None
    Path(f"{store.root}/blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}.zf1").write_bytes(data)


def test_a_format_2_store_is_migrated_and_queued(tmp_path: Path) -> None:
    original = text(6, 2 * F)
    with BlobStore.on_disk(tmp_path / "data") as store:
        digest = store.ingest(original).digest
        inline = store.index.transact(lambda txn: store.ingest_inline(txn, b'{"manifest": true}')).digest
        with store.index.write() as txn:  # write it back as format 2 had it: 33-byte records, no queue
            for key, raw in list(txn.scan(store.tables.blobs)):
                record = BlobRecord.unpack(raw)
                txn.put(store.tables.blobs, key, raw[:33])
                assert BlobRecord.unpack(raw[:33]) == replace(record, stored=record.size)
            for key in list(txn.keys(store.tables.compaction)):
                txn.delete(store.tables.compaction, key)
            txn.put(store.tables.meta, b"format", b"2")
    with BlobStore.on_disk(tmp_path / "data") as store:
        with store.index.read() as txn:
            assert txn.get(store.tables.meta, b"format") == b"3"
            assert [key for key, _ in txn.scan(store.tables.compaction)] == [digest.key]  # not the inline blob
            assert all(len(raw) == 42 for _, raw in txn.scan(store.tables.blobs))
        assert store.compaction.run().compressed
        assert store.read_bytes(digest) == original and store.stat(inline).inline


def test_a_reader_with_a_stale_record_finds_the_compressed_form(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    original = text(8, 2 * F)
    with BlobStore.on_disk(tmp_path / "data") as store:
        digest = store.ingest(original).digest
        stale = store.stat(digest)
        store.compaction.run()
        calls: list[int] = []
        real_stat: Callable[..., object] = store.stat

        def stat_once_stale(d: Digest | str) -> object:  # the first stat happened before the switch
            calls.append(1)
            return stale if len(calls) == 1 else real_stat(d)
        monkeypatch.setattr(store, "stat", stat_once_stale)
        with store.open(digest, 5, 100) as reader:
            assert reader.read() == original[5:105]
        assert len(calls) == 2
    assert not os.path.exists(tmp_path / "data" / "blobs" / "sha256" / digest.hex[:2] / digest.hex)


class CompactionMachine(RuleBasedStateMachine):
    """Pushes, references, collections and compaction passes in any order, on either store: a reader never sees a
    difference (the model is a dict of original bytes), and fsck never finds damage or leftover forms."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="berth-compaction-")
        config = StoreConfig(grace=0.0, lease=0.0)
        self.store = BlobStore.in_memory(config=config) if kind == "memory" else BlobStore.on_disk(
            self.root, config=config)
        self.blobs: dict[Digest, bytes] = {}
        self.held: dict[str, set[Digest]] = {}

    stored = Bundle("stored")

    @rule(target=stored, what=st.sampled_from(["random", "text", "mixture"]),
          size=st.sampled_from([0, 1, 9000, F - 1, F + 1, 2 * F + 5]), seed=st.integers(0, 3), upload=st.booleans())
    def push(self, what: str, size: int, seed: int, upload: bool) -> Digest:
        data = content(what, seed, size)
        if upload:
            session = self.store.uploads.create()
            digest = Digest.of(data)
            self.store.uploads.finish(session.id, digest, [data], offset=0)
        else:
            digest = self.store.ingest(data).digest
        self.blobs[digest] = data
        return digest

    @rule(digest=stored, holder=st.sampled_from(["a", "b"]))
    def reference(self, digest: Digest, holder: str) -> None:
        if digest in self.blobs:
            self.store.index.transact(lambda txn: self.store.refs.take(txn, holder, digest))
            self.held.setdefault(holder, set()).add(digest)

    @rule(holder=st.sampled_from(["a", "b"]))
    def release(self, holder: str) -> None:
        self.store.index.transact(lambda txn: self.store.refs.drop_all(txn, holder))
        self.held.pop(holder, None)

    @rule()
    def collect(self) -> None:
        self.store.gc.run()
        kept = set().union(*self.held.values()) if self.held else set()
        self.blobs = {d: data for d, data in self.blobs.items() if d in kept}

    @rule(budget=st.sampled_from([None, 1]))
    def compact(self, budget: int | None) -> None:
        assert not self.store.compaction.run(max_bytes=budget).damaged

    @rule(digest=stored, data=st.data())
    def read(self, digest: Digest, data: st.DataObject) -> None:
        if digest not in self.blobs:
            assert not self.store.contains(digest)
            return
        original = self.blobs[digest]
        info = self.store.stat(digest)
        assert info.size == len(original)
        if info.form != FORM_RAW:  # never a file of compressed bytes to sendfile
            assert self.store.local_path(info) is None
        offset = data.draw(st.integers(0, len(original)))
        length = data.draw(st.integers(0, len(original) - offset))
        with self.store.open(digest, offset, length) as reader:
            assert reader.read() == original[offset:offset + length]

    def teardown(self) -> None:
        try:
            self.store.compaction.run()
            self.store.compaction.run()
            report = check(self.store)
            assert not report.damaged and report.superseded == 0, report.lines()
            for digest, original in self.blobs.items():
                assert self.store.read_bytes(digest) == original
        finally:
            self.store.close()
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.mark.parametrize("kind", STORES)
def test_compaction_beside_pushes_references_and_collection(kind: str) -> None:
    run_state_machine_as_test(lambda: CompactionMachine(kind), settings=settings(
        max_examples=25, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]))


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("when", ["after the listing", "before the hashing"])
def test_fsck_beside_a_compaction_pass_finds_no_damage(kind: str, when: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original = text(9, 2 * F)
    with opened(kind) as store:
        digest = store.ingest(original).digest
        listed = store.blobs.stored
        hashed = store.blobs.hash

        def stored_then_compact() -> Iterator[tuple[Digest | None, int, str]]:
            entries = list(listed())
            store.compaction.run()  # switches the blob and drops the raw bytes just listed
            return iter(entries)

        def compact_then_hash(location: str, algorithm: str) -> tuple[str, int]:
            store.compaction.run()
            return hashed(location, algorithm)

        if when == "after the listing":
            monkeypatch.setattr(store.blobs, "stored", stored_then_compact)
        else:
            monkeypatch.setattr(store.blobs, "hash", compact_then_hash)
        report = check(store, repair=True)
        assert not report.damaged and not report.repaired, report.lines()
        monkeypatch.undo()
        assert store.stat(digest).form == FORM_FRAMES_V1 and store.read_bytes(digest) == original
        assert not check(store).damaged
