from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cas import BlobStore, StoreConfig
from tests.engines import Engines, start_engines
from tests.serving import Server, start_server


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


@pytest.fixture
def make_store(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., BlobStore]]:
    """Open (or reopen) the store in tmp_path/data with a fake clock; everything opened is closed afterwards."""
    opened: list[BlobStore] = []

    def make(**config: float) -> BlobStore:
        settings = {"grace": 100.0, "lease": 30.0, "upload_ttl": 500.0} | config
        store = BlobStore.on_disk(tmp_path / "data", config=StoreConfig(**settings), clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        with contextlib.suppress(Exception):
            store.close()


@pytest.fixture
def store(make_store: Callable[..., BlobStore]) -> BlobStore:
    return make_store()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running `berth serve` (open policy) on a fresh data directory, shared by one test module."""
    running = start_server(tmp_path_factory.mktemp("berth") / "data")
    yield running
    running.stop()


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
