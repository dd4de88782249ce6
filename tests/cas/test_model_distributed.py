"""The store conformance suite (tests/cas/test_model.py's black-box state machine) on the distributed engines: the
PostgreSQL index with S3 bytes in SeaweedFS (the distributed store), and each half beside an in-process one.

Fewer examples than the embedded stores, and no shrinking (minutes against two servers): every step is a few round
trips. The model's blobs stay below S3's 5 MiB part size, so staging here is one buffer and its small last segment;
tests/cas/test_s3_blobs.py drives the multi-segment paths with real 5 MiB parts."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import rule, run_state_machine_as_test

from cas import BlobStore, MemoryBlobs, MemoryIndex
from cas.blobs import BlobBytes
from cas.index import Index
from cas.postgres_index import PostgresIndex
from cas.s3_blobs import S3Blobs
from tests.cas.test_model import CONFIG, BlobStoreMachine
from tests.engines import Engines

SETTINGS = settings(max_examples=8, stateful_step_count=30, deadline=None,
                    phases=(Phase.explicit, Phase.reuse, Phase.generate))


@pytest.fixture(scope="module")
def places(engines: Engines) -> tuple[str, str]:
    """One database and one bucket for the module; each state machine run gets its own schema and key prefix."""
    return engines.postgres.create_database(), engines.s3.create_bucket()


class DistributedMachine(BlobStoreMachine):
    """Subclasses choose the halves; `reopen` is a restart of the process (the engines keep everything)."""

    metadata: str
    bucket: str
    endpoint: str
    use_postgres = True
    use_s3 = True

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:10]
        self.memory_index: Index | None = None
        self.memory_blobs: BlobBytes | None = None
        super().__init__()

    def _open(self) -> BlobStore:
        if self.use_postgres:
            index: Index = PostgresIndex(self.metadata, schema="m" + self.run, max_size=4)
        else:
            self.memory_index = self.memory_index or MemoryIndex()
            index = self.memory_index
        if self.use_s3:
            blobs: BlobBytes = S3Blobs(self.bucket, prefix=self.run, endpoint_url=self.endpoint)
        else:
            self.memory_blobs = self.memory_blobs or MemoryBlobs()
            blobs = self.memory_blobs
        return self._prepared(BlobStore(index, blobs, CONFIG, clock=lambda: self.model.now))

    @rule()
    def reopen(self) -> None:
        """A restart: the engines keep the index and the bytes, the running hashes of upload sessions are gone."""
        if self.use_postgres and self.use_s3:
            self.store.close()
            self.store = self._open()


def _machine(engines: Engines, places: tuple[str, str], postgres: bool, s3: bool) -> Any:
    class Machine(DistributedMachine):
        metadata, bucket = places
        endpoint = engines.s3.endpoint
        use_postgres, use_s3 = postgres, s3
    return Machine


def test_distributed_store_agrees_with_model(engines: Engines, places: tuple[str, str]) -> None:
    run_state_machine_as_test(_machine(engines, places, True, True), settings=SETTINGS)  # type: ignore[no-untyped-call]


def test_postgres_index_with_memory_bytes_agrees_with_model(engines: Engines, places: tuple[str, str]) -> None:
    run_state_machine_as_test(_machine(engines, places, True, False), settings=SETTINGS)  # type: ignore[no-untyped-call]


def test_memory_index_with_s3_bytes_agrees_with_model(engines: Engines, places: tuple[str, str]) -> None:
    run_state_machine_as_test(_machine(engines, places, False, True), settings=SETTINGS)  # type: ignore[no-untyped-call]
