"""Several threads and two processes on one data directory at once."""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import threading
import time
from pathlib import Path

from cas import BlobStore, BlobUnknown, Digest, StoreConfig, UploadBusy, check


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def run_threads(target, count: int) -> list[BaseException]:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def wrapped(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_threads_ingest_same_and_different_content(store: BlobStore) -> None:
    # Sizes on both sides of the pipeline threshold; seeds overlap so every blob is ingested by several threads.
    blobs = {seed: payload(seed, size) for seed, size in zip(range(6), [0, 10, 70_000, 1 << 20, 3 << 20, 5 << 20],
                                                            strict=True)}

    def work(i: int) -> None:
        rng = random.Random(i)
        for seed in rng.sample(sorted(blobs), len(blobs)):
            info = store.ingest(iter([blobs[seed][:1000], blobs[seed][1000:]]))
            assert info.size == len(blobs[seed])

    assert run_threads(work, 8) == []
    for data in blobs.values():
        assert store.read_bytes(Digest.of(data)) == data
    files = list((store.root / "blobs").glob("*/*/*"))
    assert len(files) == len(blobs)  # stored once each
    assert list((store.root / "tmp").iterdir()) == []
    assert not check(store).damaged


def _process_worker(data: str, seeds: list[int]) -> None:
    with BlobStore.on_disk(data) as store:
        for seed in seeds:
            content = payload(seed, 200_000 + seed * 1000)
            store.ingest(content)
            session = store.uploads.create()
            store.uploads.append(session.id, [content[:5000]], offset=0)
            store.uploads.finish(session.id, Digest.of(content), [content[5000:]], offset=5000)
            with store.index.write() as txn:
                store.refs.take(txn, f"pid-{seed % 3}", Digest.of(content))


def test_two_processes_ingest_and_reference_at_once(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    BlobStore.on_disk(data).close()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_process_worker, args=(data, list(range(0, 30)))),
               ctx.Process(target=_process_worker, args=(data, list(range(15, 45))))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    with BlobStore.on_disk(data) as store:
        for seed in range(45):
            content = payload(seed, 200_000 + seed * 1000)
            assert store.read_bytes(Digest.of(content)) == content
        with store.index.read() as txn:
            held = {h: len(list(store.refs.held_by(txn, h))) for h in ("pid-0", "pid-1", "pid-2")}
        assert held == {"pid-0": 15, "pid-1": 15, "pid-2": 15}
        assert not check(store).damaged


def test_gc_racing_ingest_of_the_same_content_never_loses_a_file(tmp_path: Path) -> None:
    """grace = lease = 0: every pass may collect the blob the other threads keep re-ingesting. Whatever the
    interleaving, a record must never point at a missing file (the publish/unlink race is closed by the lock)."""
    store = BlobStore.on_disk(tmp_path / "data", config=StoreConfig(grace=0.0, lease=0.0))
    contents = [payload(seed, 50_000) for seed in range(4)]
    stop = threading.Event()
    collected: list[int] = []

    def ingester(i: int) -> None:
        while not stop.is_set():
            time.sleep(0.001)  # leave the collector windows in which nothing renews a lease
            for content in contents:
                info = store.ingest(content)
                # Collected after we stored it is allowed with grace 0 (BlobUnknown); damage would be an OSError.
                with contextlib.suppress(BlobUnknown):
                    assert store.read_bytes(info.digest) == content

    def collector(i: int) -> None:
        try:
            deadline = time.monotonic() + 20
            while sum(collected) < 50 and time.monotonic() < deadline:
                collected.append(len(store.gc.run(sweep_orphans=False).collected))
        finally:
            stop.set()

    errors = run_threads(lambda i: collector(i) if i == 0 else ingester(i), 4)
    assert errors == []
    assert sum(collected) > 0  # the race was real: GC took blobs the ingesters kept bringing back
    assert not check(store).damaged
    store.close()


def test_two_writers_on_one_upload_session_never_interleave(store: BlobStore) -> None:
    session = store.uploads.create()
    chunk = payload(1, 4 << 20)
    outcomes: list[str] = []

    def append(i: int) -> None:
        try:
            store.uploads.append(session.id, [chunk], offset=0)
            outcomes.append("ok")
        except UploadBusy:
            outcomes.append("busy")
        except KeyError:
            outcomes.append("unknown")
        except Exception as exc:  # OffsetMismatch after the winner committed
            outcomes.append(type(exc).__name__)

    assert run_threads(append, 4) == []
    assert outcomes.count("ok") == 1, outcomes
    assert set(outcomes) <= {"ok", "busy", "OffsetMismatch"}
    assert store.uploads.status(session.id).offset == len(chunk)
    assert store.uploads.finish(session.id, Digest.of(chunk)).size == len(chunk)
