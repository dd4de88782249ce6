"""PostgresIndex against a real PostgreSQL (tests/engines.py): the index interface's tests of tests/cas/test_index.py,
and what only a SQL index has — shaped tables whose scans follow LMDB's byte order for any keys, prefixes and starts,
columns an operator reads with psql, replayed writes under real conflicts, versioned migrations."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import IncompatibleStore, StoreUnavailable
from cas.index import Index, Table, WriteTransaction
from cas.layout import TABLE_SHAPES, BlobRecord
from cas.memory_index import MemoryIndex
from cas.postgres_index import MIGRATIONS, PostgresIndex
from cas.table_shape import Chain, Step, TableShape, ValueStruct
from tests.cas import test_index as shared
from tests.engines import Engines
from tests.serving import ROOT


@pytest.fixture(scope="module")
def database(engines: Engines) -> str:
    return engines.postgres.create_database()


@pytest.fixture
def make(database: str) -> Callable[[tuple[str, ...]], Iterator[Index]]:
    """test_index.py's maker: a fresh schema (namespace) per index."""
    @contextmanager
    def postgres_index(tables: tuple[str, ...]) -> Iterator[Index]:
        index = PostgresIndex(database, schema="t" + uuid.uuid4().hex[:10], tables=tables)
        try:
            yield index
        finally:
            index.close()
    return postgres_index  # type: ignore[return-value]


def test_keys_agree_with_scan(make: shared.Make) -> None:
    shared.test_keys_agree_with_scan(make)


def test_an_undeclared_table_is_refused(make: shared.Make) -> None:
    shared.test_an_undeclared_table_is_refused(make)


def test_reads_are_snapshots_even_across_threads(make: shared.Make) -> None:
    shared.test_reads_are_snapshots_even_across_threads(make)


def test_writes_are_all_or_nothing_and_after_commit_runs_on_commit_only(make: shared.Make) -> None:
    shared.test_writes_are_all_or_nothing_and_after_commit_runs_on_commit_only(make)


def test_writers_are_serial(make: shared.Make) -> None:
    shared.test_writers_are_serial(make)


def test_a_named_lock_has_one_holder_and_a_waiter_gets_it_next(make: shared.Make) -> None:
    shared.test_a_named_lock_has_one_holder_and_a_waiter_gets_it_next(make)


def test_a_named_lock_is_freed_when_its_holder_is_killed(database: str) -> None:
    """The collection lock of a node killed mid-pass (kill -9: no unlock runs) is free for the next node at once:
    PostgreSQL ends the session when its socket closes."""
    schema = "t" + uuid.uuid4().hex[:10]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from cas.postgres_index import PostgresIndex\n"
         f"lock = PostgresIndex({database!r}, schema={schema!r}).exclusive('gc', wait=True)\n"
         "lock.__enter__()\nprint('held', flush=True)\ntime.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        index = PostgresIndex(database, schema=schema)
        try:
            with index.exclusive("gc", wait=False) as taken:
                assert not taken
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            deadline = time.monotonic() + 10
            while True:  # the server notices the closed socket within moments
                with index.exclusive("gc", wait=False) as taken:
                    if taken:
                        break
                assert time.monotonic() < deadline, "the dead holder's lock was never freed"
                time.sleep(0.05)
        finally:
            index.close()
    finally:
        holder.kill()
        holder.wait()


# -- shaped tables ----------------------------------------------------------------------------------------------------
SHAPES = (
    TableShape("pairs", "a:text \\0 b:text", ""),
    TableShape("queue", "at:u64 d:text", "json:record"),
    TableShape("history", "r:text \\0 t:text \\0 at:u64 \\0 seq:u32", "bytes:data"),
    TableShape("times", "r:text \\0 minus:rev64 \\0 t:text", "int:n"),
)
# Few characters, among them a multi-byte one, NUL's neighbour \x01 and the largest code point, so that shared
# stems, prefixes cut inside a character and order across byte lengths come up.
_text = st.text(st.sampled_from(["a", "b", "\x01", "é", "€", "\U0010ffff"]), max_size=3)
_u64 = st.sampled_from([0, 1, 255, 256, 2**40, 2**62])
_keys = {
    "pairs": st.tuples(_text, _text).map(lambda p: f"{p[0]}\0{p[1]}".encode()),
    "queue": st.tuples(_u64, _text).map(lambda p: p[0].to_bytes(8, "big") + p[1].encode()),
    "history": st.tuples(_text, _text, _u64, st.sampled_from([0, 1, 2**32 - 1])).map(
        lambda p: f"{p[0]}\0{p[1]}\0".encode() + p[2].to_bytes(8, "big") + b"\0" + p[3].to_bytes(4, "big")),
    "times": st.tuples(_text, _u64 | st.just(2**63 - 1), _text).map(
        lambda p: f"{p[0]}\0".encode() + (2**64 - 1 - p[1]).to_bytes(8, "big") + f"\0{p[2]}".encode()),
}


@pytest.fixture(scope="module")
def shaped(database: str) -> Iterator[PostgresIndex]:
    index = PostgresIndex(database, schema="shaped", tables=SHAPES)
    yield index
    index.close()


def _cut(key: bytes, at: int) -> bytes:
    return key[:at]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(["pairs", "queue", "history", "times"]))
def test_shaped_scans_follow_byte_order(shaped: PostgresIndex, data: st.DataObject, name: str) -> None:
    """For any keys, a prefix and a start cut anywhere (inside a field, inside a character, on a NUL), scan gives
    exactly the keys LMDB would, in byte order."""
    table = shaped.table(name)
    keys = data.draw(st.sets(_keys[name], max_size=25), label="keys")
    probe = data.draw(_keys[name], label="probe")
    prefix = probe[:data.draw(st.integers(0, len(probe)), label="prefix cut")]
    start = data.draw(st.none() | _keys[name].flatmap(lambda k: st.integers(0, len(k)).map(lambda i: k[:i])),
                      label="start")
    value = {"queue": b'{"x": 1}', "pairs": b"", "times": b"-42"}.get(name, b"\x00\xffdata")

    def fill(txn: WriteTransaction) -> None:
        for key in list(txn.keys(table)):
            txn.delete(table, key)
        for key in keys:
            txn.put(table, key, value)
    shaped.transact(fill)
    low = start if start is not None and start > prefix else prefix
    expected = sorted(k for k in keys if k.startswith(prefix) and k >= low)
    with shaped.read() as txn:
        assert list(txn.keys(table, prefix, start)) == expected
        assert [k for k, _ in txn.scan(table, prefix, start)] == expected
        assert all(v == value for _, v in txn.scan(table, prefix, start))
        assert txn.count(table) == len(keys)
        for key in keys:
            assert txn.get(table, key) == value


CHAIN_SHAPES = (
    TableShape("ctags", "repo:text \\0 tag:text", "text:digest"),
    TableShape("crecords", "repo:text \\0 digest:text", "json:record"),
    TableShape("cbytes", "digest:text", "bytes:data"),
    TableShape("cblobs", "digest:text", ValueStruct("<BQ", (("state", "smallint"), ("size", "bigint")))),
    TableShape("csizes", "n:u64", "text:what"),
)
CHAIN = Chain(("repo", "tag"), (Step(CHAIN_SHAPES[0]), Step(CHAIN_SHAPES[1]), Step(CHAIN_SHAPES[2]),
                                Step(CHAIN_SHAPES[3]), Step(CHAIN_SHAPES[4], using=(("n", "size"),))))


@pytest.fixture(scope="module")
def chained(database: str) -> Iterator[PostgresIndex]:
    index = PostgresIndex(database, schema="chained" + uuid.uuid4().hex[:6], tables=CHAIN_SHAPES)
    yield index
    index.close()


_names = st.sampled_from(["a", "b", "é"])


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(range(5)), _names, _names), max_size=12),
       start=st.tuples(_names, _names))
def test_a_chain_is_one_query_that_answers_as_its_gets_do(chained: PostgresIndex, rows: list[tuple[int, str, str]],
                                                          start: tuple[str, str]) -> None:
    """Any rows present or absent along the way: the one SELECT (LEFT JOINs, keys from earlier steps' values:
    text, struct members) gives each step's value as the get-by-get default does in memory."""
    memory = MemoryIndex()
    memory.declare(CHAIN_SHAPES)

    def put(index: Index) -> None:
        def work(txn: WriteTransaction) -> None:
            for table in CHAIN_SHAPES:
                for key in list(txn.keys(index.table(table.name))):
                    txn.delete(index.table(table.name), key)
            for which, x, y in rows:
                table = index.table(CHAIN_SHAPES[which].name)
                if which == 0:
                    txn.put(table, f"{x}\0{y}".encode(), f"d{x}".encode())
                elif which == 1:
                    txn.put(table, f"{x}\0d{y}".encode(), b'{"x": 1}')
                elif which == 2:
                    txn.put(table, f"d{x}".encode(), b"\0" + y.encode())
                elif which == 3:
                    txn.put(table, f"d{x}".encode(), struct.pack("<BQ", 1, len(y.encode())))
                else:
                    txn.put(table, len(x.encode()).to_bytes(8, "big"), y.encode())
        index.transact(work)
    put(memory)
    put(chained)
    expected = memory.lookup(memory.chain(CHAIN), start)
    before = chained.round_trips
    assert _as_json(chained.lookup(chained.chain(CHAIN), start)) == _as_json(expected)
    assert chained.round_trips - before == 1
    with chained.read() as txn:
        assert _as_json(txn.chain(chained.chain(CHAIN), start)) == _as_json(expected)


def test_a_chain_names_only_what_comes_before_each_step() -> None:
    with pytest.raises(ValueError, match="nothing before it gives tag"):
        Chain(("repo",), (Step(CHAIN_SHAPES[0]),))
    with pytest.raises(ValueError, match="nothing before it gives record"):  # JSON is no key material
        Chain(("repo", "digest"), (Step(CHAIN_SHAPES[1]), Step(TableShape("x", "record:text"))))


def _as_json(found: tuple[bytes | None, ...]) -> list[object]:
    return [json.loads(v) if i == 1 and v is not None else v for i, v in enumerate(found)]


def test_long_scans_page_through_batches(shaped: PostgresIndex) -> None:
    table = shaped.table("pairs")
    keys = sorted(f"r\0{i:05d}".encode() for i in range(2500))

    def fill(txn: WriteTransaction) -> None:
        for key in list(txn.keys(table)):
            txn.delete(table, key)
        for key in keys:
            txn.put(table, key, b"")
    shaped.transact(fill)
    with shaped.read() as txn:
        assert list(txn.keys(table, b"r\0")) == keys
        assert list(txn.keys(table, b"r\x000", start=b"r\x0001000")) == keys[1000:]
        # The first key after a given one (tags/list's `last`): the start ends in a NUL no text field holds.
        assert list(txn.keys(table, b"r\0", start=b"r\x0001000\0")) == keys[1001:]


def test_a_key_of_another_shape_is_refused(shaped: PostgresIndex) -> None:
    table = shaped.table("queue")
    with pytest.raises(ValueError), shaped.write() as txn:
        txn.put(table, b"short", b"{}")
    with shaped.read() as txn:
        assert txn.get(table, b"short") is None
    with pytest.raises(ValueError), shaped.write() as txn:
        txn.put(shaped.table("pairs"), b"a\0b", b"a value where none is kept")


def test_cas_tables_are_columns_an_operator_reads_with_psql(database: str) -> None:
    index = PostgresIndex(database, schema="operator", tables=TABLE_SHAPES)
    try:
        with index.write() as txn:
            txn.put(index.table("blobs"), b"sha256:" + b"a" * 64, BlobRecord(1, 1234, 2, 5.0, 0.0).pack())
            txn.put(index.table("refs"), b"sha256:" + b"a" * 64 + b"\0m:lib/app@sha256:b", b"")
    finally:
        index.close()
    out = subprocess.run(
        ["psql", database, "-AtF", "|", "-c", "SELECT digest, state, size, refcount FROM operator.blobs",
         "-c", "SELECT holder FROM operator.refs"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"sha256:{'a' * 64}|1|1234|2", "m:lib/app@sha256:b"]


def test_conflicting_writes_are_replayed_until_serial(database: str) -> None:
    """Eight threads increment one counter 25 times each in read-modify-write transactions: SERIALIZABLE aborts
    the losers, transact replays them, and no increment is lost; after_commit runs once per commit."""
    index = PostgresIndex(database, schema="counter" + uuid.uuid4().hex[:6], tables=("c",), max_size=8)
    table = index.table("c")
    commits: list[int] = []
    runs = [0]

    def increment(txn: WriteTransaction) -> int:
        runs[0] += 1
        value = int(txn.get(table, b"n") or b"0") + 1
        txn.put(table, b"n", str(value).encode())
        txn.after_commit(lambda: commits.append(value))
        return value

    def worker() -> None:
        for _ in range(25):
            index.transact(increment)
    try:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with index.read() as txn:
            assert txn.get(table, b"n") == b"200"
        assert sorted(commits) == list(range(1, 201))
        assert runs[0] > 200  # some were replayed: the test exercised conflicts
    finally:
        index.close()


def test_migrations_are_recorded_a_changed_shape_is_reshaped_and_a_newer_schema_is_refused(database: str) -> None:
    """A table declared with another shape than it has is rewritten through both shapes' codecs (and the reshape
    logged); one whose rows the new shape cannot hold is refused and left as it was; a newer schema is refused."""
    schema = "m" + uuid.uuid4().hex[:8]
    with contextlib.closing(PostgresIndex(database, schema=schema, tables=("x",))) as index:  # bytea, as before
        table = index.table("x")
        index.transact(lambda txn: [txn.put(table, f"k{i}".encode(), b"%d" % (i * 7)) for i in range(2500)])
    PostgresIndex(database, schema=schema, tables=("x",)).close()  # idempotent
    with psycopg.connect(database) as conn:
        versions = conn.execute(f"SELECT version FROM {schema}.berth_schema ORDER BY version").fetchall()
        assert [v for (v,) in versions] == [m[0] for m in MIGRATIONS]
    with contextlib.closing(PostgresIndex(database, schema=schema, tables=(TableShape("x", "k:text", "int:v"),))
                            ) as index, index.read() as txn:
        assert txn.get(index.table("x"), b"k3") == b"21"
        assert sum(1 for _ in txn.scan(index.table("x"))) == 2500
    with psycopg.connect(database) as conn:
        assert conn.execute(f"SELECT v FROM {schema}.x WHERE k = 'k4'").fetchone() == (28,)
        assert conn.execute(f"SELECT name, old_shape->>'fallback', rows FROM {schema}.berth_reshapes"
                            ).fetchall() == [("x", "key bytea, value bytea", 2500)]
    with contextlib.closing(PostgresIndex(database, schema=schema, tables=("y",))) as index:
        index.transact(lambda txn: txn.put(index.table("y"), b"\xff\x00", b"v"))
    with pytest.raises(IncompatibleStore, match="cannot take the shape"):
        PostgresIndex(database, schema=schema, tables=(TableShape("y", "k:text", "text:v"),))
    with contextlib.closing(PostgresIndex(database, schema=schema, tables=("y",))) as index, index.read() as txn:
        assert txn.get(index.table("y"), b"\xff\x00") == b"v"  # left as it was
    with psycopg.connect(database) as conn:
        conn.execute(f"INSERT INTO {schema}.berth_schema (version, description) VALUES (999, 'future')")
    with pytest.raises(IncompatibleStore, match="newer Berth"):
        PostgresIndex(database, schema=schema)


def test_a_server_down_is_store_unavailable_and_service_resumes_by_itself(engines: Engines, database: str) -> None:
    """PostgreSQL stopped: reads and writes raise StoreUnavailable (503 for HTTP clients), promptly; started again:
    the same index works, without being reopened (the pool replaces its broken connections)."""
    index = PostgresIndex(database, schema="down" + uuid.uuid4().hex[:6], tables=("t",), max_size=2, timeout=1.0)
    table = index.table("t")
    try:
        index.transact(lambda txn: txn.put(table, b"k", b"before"))
        engines.postgres.halt()
        try:
            for _ in range(2):  # a broken pooled connection, then failed connection attempts: all the same error
                with pytest.raises(StoreUnavailable), index.read() as txn:
                    txn.get(table, b"k")
                with pytest.raises(StoreUnavailable):
                    index.transact(lambda txn: txn.put(table, b"k", b"during"))
        finally:
            engines.postgres.resume()
        write_once_back(index, table)
        with index.read() as txn:
            assert txn.get(table, b"k") == b"after"
    finally:
        index.close()


def write_once_back(index: PostgresIndex, table: Table) -> None:
    """Write b"after" at b"k" as soon as the index answers again: within 30 s of its server's return, or fail."""
    deadline = time.monotonic() + 30
    while True:
        try:
            index.transact(lambda txn: txn.put(table, b"k", b"after"))
            return
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the index did not recover within 30 s"
            time.sleep(0.2)
