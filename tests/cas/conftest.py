"""tests/cas is the white-box layer of the store on disk (files, LMDB records, crash debris): its `store_factory`
opens that store only. The black-box conformance suite that every store passes is tests/cas/test_model.py (it picks
its stores itself); registry_core and HTTP tests run on every store through tests/conftest.py's `store_factory`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cas import BlobStore, StoreConfig
from tests.conftest import StoreFactory


@pytest.fixture(scope="session")
def store_factory() -> StoreFactory:
    def on_disk(root: str | Path, *, config: StoreConfig | None = None,
                clock: Callable[[], float] = time.time) -> BlobStore:
        return BlobStore.on_disk(root, config=config, clock=clock)
    return on_disk
