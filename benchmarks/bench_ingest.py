"""Ingest and chunked upload of one large blob, each beside the raw limit measured on the same bytes in the same
run: sha256 of the data plus a plain file write and fsync, in one thread (what a straightforward implementation
does). Rounds alternate raw, engine, raw, engine… so both see the same machine load.

Targets (issue #2): ingest >= 0.9x the raw limit, chunked upload (8 MiB chunks) >= 0.85x.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.stores import open_store
from cas import BlobStore, Digest

MIB = 1 << 20
CHUNK = MIB  # what the engine is handed per call: a server's receive buffer batches
PATCH = 8 * MIB


def blob_size(benchmark: Any) -> int:
    return 256 * MIB if not benchmark.disabled else 16 * MIB


@pytest.fixture(scope="module")
def payload() -> dict[int, bytes]:
    return {}


def data_of(payload: dict[int, bytes], size: int) -> memoryview:
    if size not in payload:
        payload[size] = os.urandom(size)
    return memoryview(payload[size])


def chunks(data: memoryview, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
    end = len(data) if end is None else end
    for offset in range(start, end, CHUNK):
        yield data[offset:min(offset + CHUNK, end)]


def raw_limit_seconds(data: memoryview, directory: Path) -> float:
    started = time.perf_counter()
    hasher = hashlib.sha256()
    fd = os.open(directory / "raw", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in chunks(data):
            hasher.update(chunk)
            os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    hasher.hexdigest()
    elapsed = time.perf_counter() - started
    os.unlink(directory / "raw")
    return elapsed


def run_against_raw(benchmark: Any, figures: Any, name: str, data: memoryview,
                    engine: Callable[[BlobStore], object]) -> None:
    """pytest-benchmark times `engine`; the untimed setup of each round measures the raw limit just before."""
    work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    state: dict[str, Any] = {}
    mib = len(data) / MIB
    raw_name = f"  raw limit beside {name}"

    def record(name: str, unit: str, value: float, reference: str | None = None) -> None:
        if not benchmark.disabled:  # a smoke run inside the test suite exercises the code, records nothing
            figures.add(name, unit, value, reference)

    def setup() -> tuple[tuple[BlobStore], dict[str, Any]]:
        if "store" in state:
            state["store"].close()
            shutil.rmtree(work / "data", ignore_errors=True)  # (the store in memory has no files)
        record(raw_name, "MiB/s", mib / raw_limit_seconds(data, work))
        state["store"] = open_store(work / "data")
        state["cpu"] = time.process_time()
        return (state["store"],), {}

    def timed(store: BlobStore) -> None:
        started = time.perf_counter()
        engine(store)
        elapsed = time.perf_counter() - started
        record(name, "MiB/s", mib / elapsed, reference=raw_name)
        record(f"{name}: CPU s per GiB", "s", (time.process_time() - state["cpu"]) / (mib / 1024))

    try:
        benchmark.pedantic(timed, setup=setup, rounds=7 if not benchmark.disabled else 1, iterations=1)
    finally:
        if "store" in state:
            state["store"].close()
        shutil.rmtree(work)


def test_ingest_256mib(benchmark: Any, figures: Any, payload: dict[int, bytes]) -> None:
    data = data_of(payload, blob_size(benchmark))
    expected = Digest.of(bytes(data))

    def engine(store: BlobStore) -> None:
        assert store.ingest(chunks(data)).digest == expected

    run_against_raw(benchmark, figures, "ingest (digest unknown in advance)", data, engine)


def test_ingest_256mib_with_expected_digest(benchmark: Any, figures: Any, payload: dict[int, bytes]) -> None:
    data = data_of(payload, blob_size(benchmark))
    expected = Digest.of(bytes(data))

    def engine(store: BlobStore) -> None:
        assert store.ingest(chunks(data), expected).digest == expected

    run_against_raw(benchmark, figures, "ingest (expected digest given)", data, engine)


def test_chunked_upload_256mib_in_8mib_chunks(benchmark: Any, figures: Any, payload: dict[int, bytes]) -> None:
    data = data_of(payload, blob_size(benchmark))
    expected = Digest.of(bytes(data))

    def engine(store: BlobStore) -> None:
        session = store.uploads.create()
        for offset in range(0, len(data), PATCH):
            end = min(offset + PATCH, len(data))
            store.uploads.append(session.id, chunks(data, offset, end), offset=offset, length=end - offset)
        assert store.uploads.finish(session.id, expected).digest == expected

    run_against_raw(benchmark, figures, "chunked upload (8 MiB chunks)", data, engine)
