"""registry_core's tests run against both stores: `make_store` is the embedded one (LMDB + files) and the
in-memory one in turn. A second call in one test "reopens" the in-memory store: it is the same store, as a reopened
data directory holds the same data."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cas import BlobStore, StoreConfig
from tests.conftest import FakeClock

DEFAULTS = {"grace": 100.0, "lease": 30.0, "upload_ttl": 500.0}


@pytest.fixture(params=["lmdb", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path,
               clock: FakeClock) -> Iterator[Callable[..., BlobStore]]:
    opened: list[BlobStore] = []

    def make(**config: float) -> BlobStore:
        settings = StoreConfig(**(DEFAULTS | config))  # type: ignore[arg-type]
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
