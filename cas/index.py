"""The metadata index: named tables of byte keys and values, read in snapshots and written in serializable
transactions. This module is the interface; `cas/lmdb_index.py` (the embedded default, LMDB) and
`cas/memory_index.py` (in process, for tests and embedding) and `cas/postgres_index.py` (PostgreSQL, shared by any
number of processes) stand behind it.

The guarantees every implementation gives, and that cas and the layers above rely on:

- Snapshot reads. A read transaction (and a scan generator opened in it, for as long as it is iterated) sees the
  index as of one commit: never half of a write transaction, never a commit made after it began.
- Serializable writes. Write transactions behave as if run one at a time (LMDB: one writer; memory: one lock); a
  write transaction reads its own writes, and commits all of them or none.
- Replays. A write function given to `transact` may run more than once (LMDB re-runs it after growing a full map;
  an optimistic database re-runs it after a conflict). It must have no side effect outside the transaction: no file
  renamed or written, no message sent, no in-process state changed that a second run would change again. What must
  happen once the transaction is durable goes in `after_commit`.
- after_commit. Actions registered with `WriteTransaction.after_commit` run once, in order, after the commit
  returned (not if the transaction aborts or is replayed: a replay registers them again on a fresh transaction).
- Durability. A commit that returned survives a crash of the process (and, for the LMDB index, of the machine).
- Declared tables. Every table is declared once, at start-up, by the layer that owns it (`declare`); `table(name)`
  of an undeclared name raises UndeclaredTable, so a misspelt name fails at once instead of creating a table.
- Named locks. `exclusive(name, wait)` is held by one holder at a time among every process (on every machine) that
  opens the same index, and freed when its holder ends, however it ends (LMDB: a flock; memory: a lock;
  PostgreSQL: a session advisory lock on a connection of its own). It is no transaction and locks no row: holding
  it across slow work (a collection pass's calls to the object store) blocks nobody but the next holder.

Keys are compared as bytes (scan order is byte order). Values are bytes. A table declared with a TableShape takes
only keys and values of that shape (an index with columns refuses others with ValueError).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from .errors import UndeclaredTable
from .table_shape import Chain, KeyValue, TableShape, join_key, value_fields

T = TypeVar("T")


class Table:
    """A declared table, as returned by Index.table(name). `handle` belongs to the index implementation."""

    __slots__ = ("name", "handle")

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle

    def __repr__(self) -> str:
        return f"Table({self.name!r})"


class Lookup:
    """A Chain (cas/table_shape.py) bound to an index's tables, as returned by Index.chain(spec) at start-up.
    `handle` belongs to the index implementation (PostgreSQL: the compiled query)."""

    __slots__ = ("chain", "tables", "handle")

    def __init__(self, chain: Chain, tables: tuple[Table, ...], handle: Any = None) -> None:
        self.chain = chain
        self.tables = tables
        self.handle = handle


class Transaction(ABC):
    """A read view of the index (a snapshot). Valid only inside its `with` block."""

    __slots__ = ()

    @abstractmethod
    def get(self, table: Table, key: bytes) -> bytes | None:
        """The value stored under `key`, or None."""

    @abstractmethod
    def count(self, table: Table) -> int:
        """How many keys the table holds."""

    @abstractmethod
    def scan(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Keys and values in byte order, from `start` (or `prefix`) on, while the keys begin with `prefix`."""

    @abstractmethod
    def keys(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[bytes]:
        """The keys `scan` would give, without the values."""

    def chain(self, lookup: Lookup, start: tuple[KeyValue, ...]) -> tuple[bytes | None, ...]:
        """Each step's value (None: absent) of a chained lookup from the `start` values, in this snapshot. Here a
        get per step, each key joined from what came before; an index with columns answers in one query."""
        chain = lookup.chain
        slots: list[Any] = [*start, *([None] * (chain.slots - len(start)))]
        found: list[bytes | None] = []
        for step, table, sources, outputs in zip(chain.steps, lookup.tables, chain.sources, chain.outputs,
                                                 strict=True):
            parts = tuple(slots[i] for i in sources)
            raw = None if None in parts else self.get(table, join_key(step.shape.fields, parts))
            found.append(raw)
            if raw is not None and outputs:
                for i, value in zip(outputs, value_fields(step.shape, raw), strict=True):
                    slots[i] = value
        return tuple(found)


class WriteTransaction(Transaction):
    """A read-write transaction: reads its own writes; commits all of them or none."""

    __slots__ = ()

    @abstractmethod
    def put(self, table: Table, key: bytes, value: bytes) -> None:
        """Store `value` under `key`, replacing any value."""

    @abstractmethod
    def delete(self, table: Table, key: bytes) -> bool:
        """Remove `key`; True if it was there."""

    @abstractmethod
    def after_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once the transaction has committed (not if it aborts)."""


class Index(ABC):
    """Named tables in snapshot-read, serializable-write transactions (see the module docstring)."""

    # True while the server behind the index is known to be unreachable (cas/postgres_index.py: set by a lost
    # connection, cleared when a transaction begins again). Code that must not wait — on an event loop — leaves the
    # request to code that may (a worker thread), where it ends in StoreUnavailable within about a second.
    unreachable: bool = False

    @abstractmethod
    def declare(self, names: Iterable[TableShape | str]) -> None:
        """Declare tables (idempotent): each layer declares all of its tables once, at start-up. A TableShape
        (cas/table_shape.py) also says how keys and values are built, for an index that keeps them in columns
        (PostgreSQL); the others use only its name."""

    @abstractmethod
    def table(self, name: str) -> Table:
        """A declared table; UndeclaredTable otherwise. Call at start-up, not inside a transaction."""

    @abstractmethod
    def read(self) -> AbstractContextManager[Transaction]:
        """A read transaction (a snapshot) for a `with` block."""

    @abstractmethod
    def write(self) -> AbstractContextManager[WriteTransaction]:
        """One write transaction for a `with` block: commits when the block ends normally, aborts if it raises.
        The block is not replayed; an implementation that cannot commit it raises (LMDB: IndexFull). Prefer
        `transact`."""

    @abstractmethod
    def transact(self, work: Callable[[WriteTransaction], T]) -> T:
        """Run `work` in a write transaction and commit; `work` may be run more than once (see the module
        docstring), so it has no side effects outside the transaction."""

    def chain(self, chain: Chain) -> Lookup:
        """Bind a chained lookup to the declared tables of its steps (at start-up, as `table`)."""
        return Lookup(chain, tuple(self.table(step.shape.name) for step in chain.steps))

    def lookup(self, lookup: Lookup, start: tuple[KeyValue, ...]) -> tuple[bytes | None, ...]:
        """`Transaction.chain` in a read of its own: for the answer that needs nothing else of the snapshot (one
        statement, without a transaction around it, where the index can: PostgreSQL)."""
        with self.read() as txn:
            return txn.chain(lookup, start)

    def entries(self, table: Table) -> int:
        """How many keys `table` holds (for gauges read at every scrape)."""
        with self.read() as txn:
            return txn.count(table)

    @abstractmethod
    def exclusive(self, name: str, wait: bool) -> AbstractContextManager[bool]:
        """Hold the lock `name` (see the module docstring) for a `with` block: True if taken (always, when
        `wait`), False at once if another holder has it. A collection pass holds "gc" (cas/gc.py)."""

    def space(self) -> tuple[int, int] | None:
        """(bytes used, bytes the index may grow to) when the implementation has such a bound, else None."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release the index; no transaction may be open."""


def undeclared(name: str, declared: Iterable[str]) -> UndeclaredTable:
    known = ", ".join(sorted(declared))
    return UndeclaredTable(f"table {name!r} was not declared (declared: {known}); a layer declares its tables "
                           "with Index.declare at start-up")


def table_name(declared: TableShape | str) -> str:
    return declared if isinstance(declared, str) else declared.name
