from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cas import BlobStore, StoreConfig
from cas.memory_blobs import MemoryBlobs
from cas.memory_index import MemoryIndex
from tests.engines import Engines, start_engines
from tests.serving import Place, Server, start_server


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StoreFactory = Callable[..., BlobStore]


STORES = ("on_disk", "in_memory", "distributed")


@pytest.fixture(scope="session", params=STORES)
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    """How the registry_core and in-process HTTP tests make a store: the one place that picks which store they run
    on, parametrized over every store (the test ids say which: `[on_disk]`, `[in_memory]`, `[distributed]`).
    `store_factory(root, config=..., clock=...)`: `root` is where a store on disk keeps its files; for the in-memory
    store it names the store, so that opening the same root again reopens the same index and bytes (what an
    embedding application does by keeping its MemoryIndex and MemoryBlobs); for the distributed store (PostgreSQL +
    S3, tests/engines.py) it names a schema and a key prefix of its own, the same again for the same root.
    Session-scoped, so that property tests can make a fresh store per example."""
    if request.param == "on_disk":
        def on_disk(root: str | Path, *, config: StoreConfig | None = None,
                    clock: Callable[[], float] = time.time) -> BlobStore:
            return BlobStore.on_disk(root, config=config, clock=clock)
        return on_disk
    if request.param == "distributed":
        engines: Engines = request.getfixturevalue("engines")
        database, bucket, endpoint = engines.postgres.create_database(), engines.s3.create_bucket(), engines.s3.endpoint
        places: dict[str, str] = {}

        def distributed(root: str | Path, *, config: StoreConfig | None = None,
                        clock: Callable[[], float] = time.time) -> BlobStore:
            place = places.setdefault(str(root), "r" + uuid.uuid4().hex[:12])
            return BlobStore.distributed(f"{database}?schema={place}", f"s3://{bucket}/{place}?endpoint={endpoint}",
                                         config=config, clock=clock)
        return distributed
    kept: dict[str, tuple[MemoryIndex, MemoryBlobs]] = {}

    def in_memory(root: str | Path, *, config: StoreConfig | None = None,
                  clock: Callable[[], float] = time.time) -> BlobStore:
        index, blobs = kept.setdefault(str(root), (MemoryIndex(), MemoryBlobs()))
        return BlobStore(index, blobs, config, clock)
    return in_memory


@pytest.fixture
def make_store(tmp_path: Path, clock: FakeClock, store_factory: StoreFactory) -> Iterator[Callable[..., BlobStore]]:
    """Open (or reopen) the store in tmp_path/data with a fake clock; everything opened is closed afterwards."""
    opened: list[BlobStore] = []

    def make(**config: float) -> BlobStore:
        settings = {"grace": 100.0, "lease": 30.0, "upload_ttl": 500.0} | config
        store = store_factory(tmp_path / "data", config=StoreConfig(**settings), clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        with contextlib.suppress(Exception):
            store.close()


@pytest.fixture
def store(make_store: Callable[..., BlobStore]) -> BlobStore:
    return make_store()


PLACES = ("embedded", "distributed")


def new_place(kind: str, request: pytest.FixtureRequest) -> Place:
    """A fresh place of `kind` (PLACES): a data directory, or a database and a bucket of its own on the engines
    (started on first use)."""
    directory = request.getfixturevalue("tmp_path_factory").mktemp(f"berth-{kind}") / "data"
    if kind == "distributed":
        return Place.distributed(request.getfixturevalue("engines"), directory)
    return Place.embedded(directory)


@pytest.fixture(scope="module", params=PLACES)
def place(request: pytest.FixtureRequest) -> Place:
    """Where a module's server keeps its data, once per store (test ids `[embedded]`, `[distributed]`): the HTTP,
    auth and interop suites prove both stores with the same requests and clients."""
    return new_place(request.param, request)


@pytest.fixture(scope="module")
def embedded_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A running `berth serve` (open policy) on a fresh data directory, shared by one test module."""
    running = start_server(new_place("embedded", request))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def distributed_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A running `berth serve --metadata … --blobs …` (open policy) on a fresh database and bucket, shared by one
    test module."""
    running = start_server(new_place("distributed", request))
    yield running
    running.stop()


@pytest.fixture(scope="module", params=PLACES)
def server(request: pytest.FixtureRequest) -> Server:
    """A running `berth serve` (open policy) shared by one test module, on each store in turn (`[embedded]`,
    `[distributed]`). A module about the files of the embedded store overrides it with `embedded_server`."""
    running: Server = request.getfixturevalue(f"{request.param}_server")
    return running


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    """PostgreSQL and SeaweedFS S3, started once per test session on first use (tests/engines.py), with the S3
    credentials in the environment the usual way (boto3 here, and `berth serve` processes started by tests)."""
    started = start_engines()
    saved = {name: os.environ.get(name) for name in started.s3.environment()}
    os.environ.update(started.s3.environment())
    yield started
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    started.stop()
