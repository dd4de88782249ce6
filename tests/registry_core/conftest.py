"""registry_core's tests run against every store: `make_store` is the embedded one (LMDB + files), the in-memory
one and the distributed one (PostgreSQL + S3, started by tests/engines.py) in turn. A second call in one test
"reopens" the store: the in-memory one is the same store, as a reopened data directory holds the same data."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cas import BlobStore, StoreConfig
from tests.conftest import FakeClock
from tests.engines import Engines

DEFAULTS = {"grace": 100.0, "lease": 30.0, "upload_ttl": 500.0}


@pytest.fixture(scope="session")
def distributed_places(engines: Engines) -> tuple[str, str, str]:
    """One database and one bucket for all of registry_core's tests on the distributed store."""
    return engines.postgres.create_database(), engines.s3.create_bucket(), engines.s3.endpoint


@pytest.fixture(params=["lmdb", "memory", "distributed"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path,
               clock: FakeClock) -> Iterator[Callable[..., BlobStore]]:
    opened: list[BlobStore] = []
    run = uuid.uuid4().hex[:10]

    def make(**config: float) -> BlobStore:
        settings = StoreConfig(**(DEFAULTS | config))  # type: ignore[arg-type]
        if request.param == "distributed":  # PostgreSQL + S3 (tests/engines.py): a schema and a prefix per test
            database, bucket, endpoint = request.getfixturevalue("distributed_places")
            store = BlobStore.distributed(f"{database}?schema=r{run}", f"s3://{bucket}/{run}?endpoint={endpoint}",
                                          config=settings, clock=clock)
            opened.append(store)
            return store
        if request.param == "memory":
            if not opened:
                opened.append(BlobStore.in_memory(config=settings, clock=clock))
            return opened[0]
        store = BlobStore.on_disk(tmp_path / "data", config=settings, clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        with contextlib.suppress(Exception):
            store.close()
