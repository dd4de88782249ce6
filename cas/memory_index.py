"""An index held in this process's memory: the guarantees of cas/index.py without a file.

For tests and for an application that embeds cas and keeps nothing across restarts. Each table is a sorted list of
keys (bisect) beside a dict of values. A commit never changes a table a reader may hold: a write transaction copies
each table it writes on its first write and installs the copies when it commits, so a read transaction (and a scan
generator left open while other threads commit) keeps the tables of the commit it began from. Copying is O(keys)
per written table per transaction: fine for ~10^5 keys, not a database.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .index import Index, Table, Transaction, WriteTransaction, table_name, undeclared
from .table_shape import TableShape

T = TypeVar("T")


class _Data:
    """One table's contents: never mutated once committed."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: list[bytes], values: dict[bytes, bytes]) -> None:
        self.keys = keys
        self.values = values

    def copy(self) -> _Data:
        return _Data(list(self.keys), dict(self.values))


def _first(data: _Data, prefix: bytes, start: bytes | None) -> int:
    return bisect_left(data.keys, start if start is not None and start > prefix else prefix)


class MemoryTransaction(Transaction):
    __slots__ = ("_tables",)

    def __init__(self, tables: dict[str, _Data]) -> None:
        self._tables = tables

    def _data(self, table: Table) -> _Data:
        return self._tables[table.name]

    def get(self, table: Table, key: bytes) -> bytes | None:
        return self._data(table).values.get(key)

    def count(self, table: Table) -> int:
        return len(self._data(table).keys)

    def scan(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        data = self._data(table)  # this snapshot's table: later commits install new lists, never change this one
        keys, values = data.keys, data.values
        for i in range(_first(data, prefix, start), len(keys)):
            key = keys[i]
            if not key.startswith(prefix):
                return
            yield key, values[key]

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
            # Copy on first write: readers (and this transaction's own open scans) keep the committed table.
            self._tables[table.name] = self._tables[table.name].copy()
            self._written.add(table.name)
        return self._tables[table.name]

    def scan(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        # A scan in a write transaction that then writes the same table (GC deletes what it walks) must not see
        # its list shift under it: walk a copy of the keys, read values as they are now (LMDB cursors do alike).
        data = self._data(table)
        for key in data.keys[_first(data, prefix, start):]:
            if not key.startswith(prefix):
                return
            value = self._data(table).values.get(key)
            if value is not None:
                yield key, value

    def put(self, table: Table, key: bytes, value: bytes) -> None:
        data = self._writable(table)
        if key not in data.values:
            data.keys.insert(bisect_left(data.keys, key), key)
        data.values[key] = bytes(value)

    def delete(self, table: Table, key: bytes) -> bool:
        data = self._writable(table)
        if data.values.pop(key, None) is None:
            return False
        del data.keys[bisect_left(data.keys, key)]
        return True

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
        self.declare(tables)

    def declare(self, names: Iterable[TableShape | str]) -> None:
        with self._writer:
            fresh = dict(self._committed)
            for name in map(table_name, names):
                if name not in self._declared:
                    self._declared[name] = Table(name, None)
                    fresh[name] = _Data([], {})
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

    def close(self) -> None:
        pass
