"""Every interleaving of a collection pass with a publish of the same bytes (cas/gc.py: the protocol and its proof).

The actors run in threads that pause at every named crash point (cas/crashpoints.py): a publish between moving its
bytes and committing its record, and after; a pass after its claim, its retire and its decide. A depth-first search
replays the scenario once per schedule, so every order of those steps is run, on both stores. Between any two
steps a reader checks that a record saying "stored" can be read (but in the one window cas/gc.py describes); at the
end, that a publish's bytes are there
whenever its record is, that fsck finds no damage, and that a second pass leaves no debris.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cas import (
    BlobStore,
    BlobUnknown,
    Digest,
    LmdbIndex,
    LocalBlobs,
    MemoryIndex,
    StoreConfig,
    StoreUnavailable,
    check,
    crashpoints,
    new_hasher,
)
from cas.layout import STATE_DELETING, STORED_STATES, BlobRecord
from cas.s3_blobs import S3Blobs
from tests.engines import Engines

CONFIG = StoreConfig(grace=0.0, lease=0.0, upload_ttl=3600.0)
NOW = 1_000_000.0
DATA = b"the same bytes, published twice" * 100
DIGEST = Digest.of(DATA)


class Schedule:
    """Runs actors in threads; each pauses at every crash point until `step` lets it go on to the next one."""

    def __init__(self, actors: list[Callable[[], object]]) -> None:
        self._go = [threading.Semaphore(0) for _ in actors]
        self._paused = threading.Semaphore(0)
        self._who = threading.local()
        self.alive = [True] * len(actors)
        self.at: list[str | None] = [None] * len(actors)  # where each actor is paused
        self.errors: list[BaseException | None] = [None] * len(actors)
        self._threads = [threading.Thread(target=self._run, args=(i, actor), daemon=True)
                         for i, actor in enumerate(actors)]

    def _run(self, i: int, actor: Callable[[], object]) -> None:
        self._who.actor = i
        self._go[i].acquire()
        try:
            actor()
        except BaseException as exc:  # noqa: BLE001 - judged by the test
            self.errors[i] = exc
        finally:
            self.alive[i] = False
            self._paused.release()

    def reached(self, name: str) -> None:
        i = getattr(self._who, "actor", None)
        if i is None:
            return  # the test's own thread, or a purge thread of a pass: not a scheduled step
        self.at[i] = name
        self._paused.release()
        self._go[i].acquire()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def step(self, i: int) -> None:
        self._go[i].release()
        assert self._paused.acquire(timeout=20), "an actor is stuck (a deadlock between steps?)"


@contextmanager
def lmdb_store() -> Iterator[BlobStore]:
    """The embedded store, its index without fsync (hundreds of fresh stores; crashes are test_crash.py's)."""
    with tempfile.TemporaryDirectory() as tmp:
        index = LmdbIndex(Path(tmp) / "index", map_size=1 << 24, durable=False)
        with BlobStore(index, LocalBlobs(tmp), CONFIG, clock=lambda: NOW) as store:
            yield store


@contextmanager
def memory_store() -> Iterator[BlobStore]:
    with BlobStore.in_memory(config=CONFIG, clock=lambda: NOW) as store:
        yield store


def readable_if_stored(store: BlobStore) -> None:
    """What a reader sees between any two steps: a stored record's bytes can be read (from trash/ if retired)."""
    with store.index.read() as txn:
        raw = txn.get(store.tables.blobs, DIGEST.key)
    record = BlobRecord.unpack(raw) if raw is not None else None
    if record is not None and record.state in STORED_STATES:
        with store.blobs.open(DIGEST, record.size) as reader:
            assert reader.read() == DATA


def prepare(store: BlobStore, scenario: str) -> Callable[[], object]:
    """The state before the race; returns the publishing actor."""
    if scenario in ("republish", "reclaimed", "direct-republish"):
        store.ingest(DATA)  # stored, unreferenced, due at once (grace 0): the pass claims it
    if scenario in ("orphan", "direct-orphan"):  # a publish that crashed between its rename and its commit
        staged = store.blobs.stage()
        staged.writer(new_hasher("sha256"), 0).write(DATA)
        store.blobs.publish(staged, DIGEST)
        staged.discard()
    if scenario == "reclaimed":  # a session whose finish publishes the same bytes again (no stat before)
        session = store.uploads.create()
        store.uploads.append(session.id, [DATA])
        return lambda: store.uploads.finish(session.id, DIGEST)
    if scenario.startswith("direct"):  # the digest named in advance: an object store writes straight to the key
        return lambda: store.ingest([DATA], DIGEST)
    return lambda: store.ingest(DATA)


def run(make: Callable[[], contextmanager[BlobStore]], scenario: str,  # type: ignore[type-arg]
        prefix: list[int]) -> list[tuple[list[int], int]]:
    """Run one schedule: `prefix`, then the lowest live actor. Returns the decisions after the prefix (the live
    actors, the one chosen) for the search to branch on."""
    decisions: list[tuple[list[int], int]] = []
    with make() as store:
        publish = prepare(store, scenario)
        published: list[object] = []
        schedule = Schedule([lambda: published.append(publish()), lambda: store.gc.run()])
        original = crashpoints.reached
        crashpoints.reached = schedule.reached  # type: ignore[assignment]
        try:
            schedule.start()
            taken = 0
            while any(schedule.alive):
                live = [i for i, alive in enumerate(schedule.alive) if alive]
                if taken < len(prefix):
                    choice = prefix[taken]
                else:
                    choice = live[0]
                    decisions.append((live, choice))
                taken += 1
                schedule.step(choice)
                if schedule.at[0] != "publish.after_commit" or not schedule.alive[0]:
                    # (the one window cas/gc.py owns up to: a publish that claimed the record and has yet to
                    # `ensure` its bytes, which a pass that decided before that commit may have purged)
                    readable_if_stored(store)
        finally:
            crashpoints.reached = original  # type: ignore[assignment]
        publish_error, gc_error = schedule.errors
        assert gc_error is None, gc_error
        if isinstance(publish_error, StoreUnavailable) and scenario.startswith("direct"):
            # A direct write whose object the pass purged before its commit: it took its claim back, and its
            # caller, told to send the bytes again, was never told they were stored (cas/gc.py, "Direct writes").
            assert "send it again" in str(publish_error) and not store.contains(DIGEST)
        elif publish_error is not None:
            # Only this: an ingest that found the blob stored, leased it (lease 0: no protection) and lost it to
            # the pass before it could confirm, or a finish... never anything else.
            assert isinstance(publish_error, BlobUnknown), publish_error
        finish(store, published)
    return decisions


def finish(store: BlobStore, published: list[object]) -> None:
    with store.index.read() as txn:
        raw = txn.get(store.tables.blobs, DIGEST.key)
    record = BlobRecord.unpack(raw) if raw is not None else None
    assert record is None or record.state != STATE_DELETING  # a pass decides what it claimed before it ends
    if record is not None and record.state in STORED_STATES:  # (MISSING: a direct write took its claim back)
        assert store.blobs.contains(DIGEST), "a stored record without its bytes in place"
        assert store.read_bytes(DIGEST) == DATA
    report = check(store)
    assert not report.damaged, report.lines()
    store.gc.run()  # a second pass, alone: the blob (unreferenced) goes, and nothing is left behind
    report = check(store)
    assert not report.damaged and report.doomed == 0 and report.temp == 0 and not report.unindexed, report.lines()
    assert not store.contains(DIGEST) and not store.blobs.contains(DIGEST)


def explore(make: Callable[[], contextmanager[BlobStore]], scenario: str) -> int:  # type: ignore[type-arg]
    """Depth-first over every schedule; returns how many were run."""
    pending: list[list[int]] = [[]]
    runs = 0
    while pending:
        prefix = pending.pop()
        decisions = run(make, scenario, prefix)
        runs += 1
        path = list(prefix)
        for live, chosen in decisions:
            pending.extend(path + [other] for other in live if other != chosen)
            path.append(chosen)
    return runs


@pytest.mark.parametrize("scenario", ["republish", "reclaimed", "orphan", "fresh"])
@pytest.mark.parametrize("make", [memory_store, lmdb_store], ids=["memory", "lmdb"])
def test_every_interleaving_of_a_pass_and_a_publish(make: Callable[[], contextmanager[BlobStore]],  # type: ignore[type-arg]
                                                    scenario: str) -> None:
    assert explore(make, scenario) >= 10  # the search did branch: both actors have several steps


@pytest.mark.parametrize("scenario", ["direct", "direct-orphan", "direct-republish"])
def test_every_interleaving_of_a_pass_and_a_direct_write(engines: Engines, scenario: str) -> None:
    """The same search on an object store, whose monolithic writes go straight to the blob's key (no staging to
    put back from): a fresh blob, one whose object a crashed publish left, and one the pass claims meanwhile. In
    7 of the 32 schedules of "direct" the pass purges the object before the write's commit: the claim is taken
    back (the assertions of `run`)."""
    bucket = engines.s3.create_bucket()

    @contextmanager
    def s3_store() -> Iterator[BlobStore]:
        blobs = S3Blobs(bucket, prefix=uuid.uuid4().hex[:8], endpoint_url=engines.s3.endpoint)
        with BlobStore(MemoryIndex(), blobs, CONFIG, clock=lambda: NOW) as store:
            yield store

    assert explore(s3_store, scenario) >= 10
