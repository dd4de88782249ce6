"""The index interface (cas/index.py), against both indexes: keys agree with scan for any keys, prefix and start
(0xff included); reads are snapshots; writes are serial and all-or-nothing; tables must be declared."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import UndeclaredTable
from cas.index import Index, WriteTransaction
from cas.lmdb_index import LmdbIndex
from cas.memory_index import MemoryIndex


@contextmanager
def lmdb_index(tables: tuple[str, ...]) -> Iterator[Index]:
    with tempfile.TemporaryDirectory() as tmp:
        index = LmdbIndex(Path(tmp), map_size=1 << 24, tables=tables)
        try:
            yield index
        finally:
            index.close()


@contextmanager
def memory_index(tables: tuple[str, ...]) -> Iterator[Index]:
    yield MemoryIndex(tables)


INDEXES = pytest.mark.parametrize("make", [lmdb_index, memory_index], ids=["lmdb", "memory"])
Make = Callable[[tuple[str, ...]], AbstractContextManager[Index]]

# Few distinct bytes, the extremes among them, so that prefixes, shared stems and 0xff carries are common.
_byte = st.sampled_from([b"\x00", b"\x01", b"a", b"\xfe", b"\xff"])
_key = st.lists(_byte, min_size=1, max_size=5).map(b"".join)


@INDEXES
@settings(max_examples=100, deadline=None)
@given(keys=st.sets(_key, max_size=30), gone=st.sets(_key, max_size=5),
       prefix=st.lists(_byte, max_size=3).map(b"".join), start=st.none() | _key)
def test_keys_agree_with_scan(make: Make, keys: set[bytes], gone: set[bytes], prefix: bytes,
                              start: bytes | None) -> None:
    with make(("t",)) as index:
        table = index.table("t")
        with index.write() as txn:
            for k in keys | gone:
                txn.put(table, k, b"v" + k)
        with index.write() as txn:
            for k in gone:
                assert txn.delete(table, k)
            assert not txn.delete(table, b"never")
        kept = keys - gone
        with index.read() as txn:
            found = list(txn.scan(table, prefix=prefix, start=start))
            assert list(txn.keys(table, prefix=prefix, start=start)) == [k for k, _ in found]
            assert txn.count(table) == len(kept)
            assert all(v == b"v" + k for k, v in found)
        wanted = sorted(k for k in kept if k.startswith(prefix) and (start is None or k >= start))
        assert [k for k, _ in found] == wanted


@INDEXES
def test_an_undeclared_table_is_refused(make: Make) -> None:
    with make(("t",)) as index:
        index.table("t")
        with pytest.raises(UndeclaredTable, match="'tt' was not declared"):
            index.table("tt")
        index.declare(["tt", "t"])  # idempotent, and late declarations are fine
        assert index.table("tt").name == "tt"


@INDEXES
def test_reads_are_snapshots_even_across_threads(make: Make) -> None:
    with make(("t",)) as index:
        table = index.table("t")
        with index.write() as txn:
            for i in range(100):
                txn.put(table, b"%03d" % i, b"old")
        with index.read() as txn:
            walk = txn.scan(table)
            first = next(walk)

            def rewrite() -> None:  # commits while the reader's scan is half way through
                with index.write() as w:
                    for i in range(100):
                        w.put(table, b"%03d" % i, b"new")
                    w.put(table, b"050x", b"new")
                    w.delete(table, b"099")
            writer = threading.Thread(target=rewrite)
            writer.start()
            writer.join()
            rest = list(walk)
            assert [first, *rest] == [(b"%03d" % i, b"old") for i in range(100)]
            assert txn.get(table, b"000") == b"old" and txn.get(table, b"050x") is None
        with index.read() as txn:
            assert txn.get(table, b"000") == b"new" and txn.get(table, b"099") is None and txn.count(table) == 100


@INDEXES
def test_writes_are_all_or_nothing_and_after_commit_runs_on_commit_only(make: Make) -> None:
    with make(("t",)) as index:
        table = index.table("t")
        ran: list[str] = []
        with pytest.raises(RuntimeError), index.write() as txn:
            txn.put(table, b"k", b"v")
            txn.after_commit(lambda: ran.append("aborted"))
            assert txn.get(table, b"k") == b"v"  # a transaction reads its own writes
            raise RuntimeError
        with index.read() as txn:
            assert txn.get(table, b"k") is None
        assert index.transact(lambda t: (t.put(table, b"k", b"v"), t.after_commit(lambda: ran.append("ok")), 7)[2]) == 7
        assert ran == ["ok"] and index.entries(table) == 1


@INDEXES
def test_writers_are_serial(make: Make) -> None:
    """Read-modify-write from many threads loses no update: write transactions behave as if one at a time."""
    with make(("t",)) as index:
        table = index.table("t")

        def bump(txn: WriteTransaction) -> None:
            value = int(txn.get(table, b"n") or b"0")
            txn.put(table, b"n", str(value + 1).encode())

        def worker() -> None:
            for _ in range(50):
                index.transact(bump)
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with index.read() as txn:
            assert txn.get(table, b"n") == b"200"


@INDEXES
def test_a_named_lock_has_one_holder_and_a_waiter_gets_it_next(make: Make) -> None:
    """exclusive(): one holder per name (each holder here on a thread of its own, as each would be a process); a
    try fails at once while it is held, a wait returns once it is released; other names are independent."""
    with make(("t",)) as index:
        def attempt(name: str) -> bool:
            with index.exclusive(name, wait=False) as taken:
                return taken

        def on_thread(work: Callable[[], bool]) -> bool:
            answers: list[bool] = []
            thread = threading.Thread(target=lambda: answers.append(work()))
            thread.start()
            thread.join(10)
            return answers == [True]

        waited = threading.Event()

        def waiter() -> None:
            with index.exclusive("gc", wait=True) as taken:
                assert taken
                waited.set()

        with index.exclusive("gc", wait=False) as first:
            assert first
            assert not on_thread(lambda: attempt("gc"))
            assert on_thread(lambda: attempt("other"))
            thread = threading.Thread(target=waiter)
            thread.start()
            assert not waited.wait(0.3)
        thread.join(10)
        assert waited.is_set()
        assert on_thread(lambda: attempt("gc"))
