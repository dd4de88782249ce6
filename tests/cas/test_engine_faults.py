"""The distributed store's engines failing, seen from cas (issue 17, "Faults"; the HTTP view is
tests/interop/test_faults.py): what is StoreUnavailable (a 503 for HTTP clients) and how soon it comes."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from cas import StoreUnavailable
from cas.postgres_index import FAIL_FAST, PostgresIndex
from cas.s3_blobs import _unavailable
from tests.cas.test_postgres_index import write_once_back
from tests.engines import Engines


def test_requests_fail_fast_while_postgresql_is_down_even_those_already_waiting(engines: Engines) -> None:
    """With the pool's full wait (10 s, for a busy pool), PostgreSQL stopped: every read and write ends in
    StoreUnavailable within about FAIL_FAST — those that found a broken connection, those that found none
    (the pool's reconnects fail), and one already waiting for a connection when the server went away. Started
    again: the same index works without being reopened."""
    index = PostgresIndex(engines.postgres.create_database(), schema="f" + uuid.uuid4().hex[:6], tables=("t",),
                          max_size=1, timeout=10.0)
    table = index.table("t")
    try:
        index.transact(lambda txn: txn.put(table, b"k", b"before"))
        held = index.read()
        held.__enter__()  # the pool's one connection, held: the next request waits for it
        waited: list[float | BaseException] = []

        def wait_for_a_connection() -> None:
            started = time.monotonic()
            try:
                with index.read() as txn:
                    txn.get(table, b"k")
            except StoreUnavailable:
                waited.append(time.monotonic() - started)
                return
            waited.append(AssertionError("read while the server was down"))

        waiter = threading.Thread(target=wait_for_a_connection)
        waiter.start()
        time.sleep(0.5)
        engines.postgres.halt()
        try:
            held.__exit__(None, None, None)  # a broken connection back to the pool: discarded, a new one fails
            waiter.join(10)
            assert waited and isinstance(waited[0], float), waited
            # 0.5 s before the stop, about 1 s for it, FAIL_FAST, a margin for a loaded machine: not the 10 s wait
            assert waited[0] < 0.5 + 1.0 + FAIL_FAST + 3.0, f"waited {waited[0]:.1f} s (the full wait is 10 s)"
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    index.transact(lambda txn: txn.put(table, b"k", b"during"))
                assert time.monotonic() - started < FAIL_FAST + 1.5
        finally:
            engines.postgres.resume()
        write_once_back(index, table)
        assert not index.unreachable
        with index.read() as txn:
            assert txn.get(table, b"k") == b"after"
    finally:
        index.close()


@given(status=st.integers(300, 599), code=st.sampled_from(
    ["InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "AccessDenied", "InvalidArgument",
     "NoSuchBucket", "MalformedXML", "EntityTooSmall"]))
def test_an_object_store_answer_is_unavailable_when_the_store_cannot_serve_now(status: int, code: str) -> None:
    """A 5xx or a throttling code: the store cannot serve right now (503, retry later). Any other refusal is of a
    request of ours: an error to fix, never a 503 that hides it."""
    error = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                        "GetObject")
    transient = status >= 500 or code in ("SlowDown", "ServiceUnavailable", "RequestTimeout")
    assert (_unavailable(error) is not None) == transient
