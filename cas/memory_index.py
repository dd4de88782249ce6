"""An index held in this process's memory: the guarantees of cas/index.py without a file.

For tests and for an application that embeds cas and keeps nothing across restarts. Each table is a sorted list of
keys in chunks of a few hundred, each with its values (bisect over the chunks' first keys, then within one). A commit
never changes a table a reader may hold: chunks are immutable (a write makes a new chunk), and a write transaction
copies the list of chunks of each table it writes on its first write and installs the copies when it commits, so a
read transaction (and a scan generator left open while other threads commit) keeps the tables of the commit it
began from. A write costs O(keys / CHUNK + CHUNK), not O(keys): 10^6 keys are fine; still not a database.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from .index import Index, Table, Transaction, WriteTransaction, table_name, undeclared
from .table_shape import TableShape

T = TypeVar("T")


CHUNK = 256  # keys per chunk: a write copies one chunk and the table's list of chunks, never the whole table


class _Data:
    """One table's contents: sorted chunks of keys with their values. A chunk is never changed once made (a write
    makes a new one); `chunks`/`firsts` (the spine) are copied by the first write of a transaction to the table."""

    __slots__ = ("chunks", "firsts", "count")

    def __init__(self, chunks: list[tuple[list[bytes], list[bytes]]], firsts: list[bytes], count: int) -> None:
        self.chunks = chunks  # [(keys, values)], each non-empty, in key order
        self.firsts = firsts  # the first key of each chunk (bisect over chunks)
        self.count = count

    def copy(self) -> _Data:
        return _Data(list(self.chunks), list(self.firsts), self.count)

    def _chunk_of(self, key: bytes) -> int:
        return max(bisect_right(self.firsts, key) - 1, 0)

    def get(self, key: bytes) -> bytes | None:
        if not self.chunks:
            return None
        keys, values = self.chunks[self._chunk_of(key)]
        i = bisect_left(keys, key)
        return values[i] if i < len(keys) and keys[i] == key else None

    def items(self, first: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) from the first key >= `first` on, over the chunks as they are now (a snapshot: chunks are
        immutable, and the list of them is taken here)."""
        chunks = list(self.chunks) if self.chunks else []
        if not chunks:
            return
        ci = self._chunk_of(first)
        keys, values = chunks[ci]
        i = bisect_left(keys, first)
        while True:
            for j in range(i, len(keys)):
                yield keys[j], values[j]
            ci += 1
            if ci >= len(chunks):
                return
            keys, values = chunks[ci]
            i = 0

    def put(self, key: bytes, value: bytes) -> None:
        if not self.chunks:
            self.chunks.append(([key], [value]))
            self.firsts.append(key)
            self.count = 1
            return
        ci = self._chunk_of(key)
        keys, values = self.chunks[ci]
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            values = list(values)
            values[i] = value
            self.chunks[ci] = (keys, values)
            return
        keys, values = keys[:i] + [key] + keys[i:], values[:i] + [value] + values[i:]
        self.count += 1
        if len(keys) > 2 * CHUNK:  # split: chunks stay small, so a write copies little
            half = len(keys) // 2
            self.chunks[ci:ci + 1] = [(keys[:half], values[:half]), (keys[half:], values[half:])]
            self.firsts[ci:ci + 1] = [keys[0], keys[half]]
        else:
            self.chunks[ci] = (keys, values)
            self.firsts[ci] = keys[0]

    def delete(self, key: bytes) -> bool:
        if not self.chunks:
            return False
        ci = self._chunk_of(key)
        keys, values = self.chunks[ci]
        i = bisect_left(keys, key)
        if i >= len(keys) or keys[i] != key:
            return False
        self.count -= 1
        if len(keys) == 1:
            del self.chunks[ci]
            del self.firsts[ci]
            return True
        keys, values = keys[:i] + keys[i + 1:], values[:i] + values[i + 1:]
        self.chunks[ci] = (keys, values)
        self.firsts[ci] = keys[0]
        return True


def _first(prefix: bytes, start: bytes | None) -> bytes:
    return start if start is not None and start > prefix else prefix


class MemoryTransaction(Transaction):
    __slots__ = ("_tables",)

    def __init__(self, tables: dict[str, _Data]) -> None:
        self._tables = tables

    def _data(self, table: Table) -> _Data:
        return self._tables[table.name]

    def get(self, table: Table, key: bytes) -> bytes | None:
        return self._data(table).get(key)

    def count(self, table: Table) -> int:
        return self._data(table).count

    def scan(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        # This snapshot's table: later commits install new spines and chunks, never change these.
        for key, value in self._data(table).items(_first(prefix, start)):
            if not key.startswith(prefix):
                return
            yield key, value

    def keys(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[bytes]:
        return (key for key, _ in self.scan(table, prefix, start))


class MemoryWriteTransaction(MemoryTransaction, WriteTransaction):
    __slots__ = ("_written", "_after_commit")

    def __init__(self, tables: dict[str, _Data]) -> None:
        super().__init__(dict(tables))
        self._written: set[str] = set()
        self._after_commit: list[Callable[[], None]] = []

    def _writable(self, table: Table) -> _Data:
        if table.name not in self._written:
            # Copy the spine on first write: readers (and this transaction's own open scans) keep the committed
            # table; chunks are shared until a write replaces one.
            self._tables[table.name] = self._tables[table.name].copy()
            self._written.add(table.name)
        return self._tables[table.name]

    def scan(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        # A scan in a write transaction that then writes the same table (GC deletes what it walks) must not see
        # its keys shift under it: walk the chunks as they were when the scan began, read each value as it is now
        # (LMDB cursors do alike).
        data = self._data(table)
        for key, _ in data.items(_first(prefix, start)):
            if not key.startswith(prefix):
                return
            value = self._data(table).get(key)
            if value is not None:
                yield key, value

    def put(self, table: Table, key: bytes, value: bytes) -> None:
        self._writable(table).put(key, bytes(value))

    def delete(self, table: Table, key: bytes) -> bool:
        return self._writable(table).delete(key)

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after_commit.append(action)


class _Reading:
    __slots__ = ("_index",)

    def __init__(self, index: MemoryIndex) -> None:
        self._index = index

    def __enter__(self) -> Transaction:
        return MemoryTransaction(self._index._committed)  # one reference read: atomic under the GIL

    def __exit__(self, *_: object) -> None:
        pass


class _Writing:
    __slots__ = ("_index", "_txn")

    def __init__(self, index: MemoryIndex) -> None:
        self._index = index

    def __enter__(self) -> WriteTransaction:
        self._index._writer.acquire()
        self._txn = MemoryWriteTransaction(self._index._committed)
        return self._txn

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is None:
                self._index._committed = self._txn._tables  # the commit: one reference swap
        finally:
            self._index._writer.release()
        if kind is None:
            for action in self._txn._after_commit:
                action()


class MemoryIndex(Index):
    """Snapshot reads, one writer at a time (a lock), commits that swap in a new set of tables."""

    def __init__(self, tables: Iterable[TableShape | str] = ()) -> None:
        self._writer = threading.Lock()
        self._committed: dict[str, _Data] = {}
        self._declared: dict[str, Table] = {}
        self._locks: dict[str, threading.Lock] = {}  # exclusive(): this process is every holder there is
        self._guard = threading.Lock()
        self.declare(tables)

    def declare(self, names: Iterable[TableShape | str]) -> None:
        with self._writer:
            fresh = dict(self._committed)
            for name in map(table_name, names):
                if name not in self._declared:
                    self._declared[name] = Table(name, None)
                    fresh[name] = _Data([], [], 0)
            self._committed = fresh

    def table(self, name: str) -> Table:
        found = self._declared.get(name)
        if found is None:
            raise undeclared(name, self._declared)
        return found

    def read(self) -> _Reading:
        return _Reading(self)

    def write(self) -> _Writing:
        return _Writing(self)

    def transact(self, work: Callable[[WriteTransaction], T]) -> T:
        with self.write() as txn:
            return work(txn)

    @contextmanager
    def exclusive(self, name: str, wait: bool) -> Iterator[bool]:
        with self._guard:  # not the writer lock: a holder may take a named lock inside a write transaction
            lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(blocking=wait):
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def close(self) -> None:
        pass
