"""registry_core's registry, catalog and manifest tests again, on the distributed store (PostgreSQL + SeaweedFS S3,
tests/engines.py): the registry's shaped tables (registry_core/schema.py TABLE_SHAPES) must answer as LMDB does —
tags/list pages, history in time order, the catalog, referrers, deletes."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from cas import BlobStore, StoreConfig
from tests.conftest import FakeClock
from tests.engines import Engines
from tests.registry_core.test_catalog import *  # noqa: F403 - the same tests, with make_store below
from tests.registry_core.test_manifests import *  # noqa: F403
from tests.registry_core.test_registry import *  # noqa: F403


@pytest.fixture(scope="module")
def places(engines: Engines) -> tuple[str, str]:
    return engines.postgres.create_database(), engines.s3.create_bucket()


@pytest.fixture
def make_store(places: tuple[str, str], engines: Engines, clock: FakeClock) -> Iterator[Callable[..., BlobStore]]:
    """Open (or reopen) this test's distributed store (a schema and a key prefix of its own) with a fake clock."""
    database, bucket = places
    run = uuid.uuid4().hex[:10]
    opened: list[BlobStore] = []

    def make(**config: float) -> BlobStore:
        settings = {"grace": 100.0, "lease": 30.0, "upload_ttl": 500.0} | config
        store = BlobStore.distributed(f"{database}?schema=r{run}", f"s3://{bucket}/{run}?endpoint={engines.s3.endpoint}",
                                      config=StoreConfig(**settings), clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        with contextlib.suppress(Exception):
            store.close()
