"""The embedded metadata index: one LMDB environment with named tables, shared by threads and processes.

The interface and its guarantees are in cas/index.py. LMDB gives them so: a read transaction is an MVCC snapshot;
LMDB has one writer at a time (a lock shared by every process that opens the environment), so writes are serial;
`transact` re-runs its work after MapFullError, which is why write functions must be replayable.

Map size. LMDB needs its maximum size up front and may only be resized while no transaction is open in the
process (mdb_env_set_mapsize). We reserve a large map once (address space only: without writemap the file grows as
pages are written), grow it by doubling before a write when it is over half full, and after MapFullError in
`Index.transact`. A process-wide gate (shared for transactions, exclusive for a resize) enforces the "no open
transaction" rule for threads; other processes adopt a bigger map on MapResizedError (set_mapsize(0)).

Named locks (`exclusive`) are flock()s of `<name>.lock` files in the directory given as `locks` (the data
directory: DATA/gc.lock, cas/layout.py): every process on the machine that opens the directory shares them, and the
kernel frees one when its holder dies.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import takewhile
from pathlib import Path
from typing import TypeVar, cast

import lmdb

from .errors import IndexFull
from .index import Index, Table, Transaction, WriteTransaction, table_name, undeclared
from .table_shape import TableShape

T = TypeVar("T")

# 64 GiB of address space: far beyond what the metadata of millions of blobs needs, and free until used.
DEFAULT_MAP_SIZE = 64 << 30
# Readers: every worker × concurrent requests; LMDB's default of 126 is too small for a busy server.
MAX_READERS = 1024
MAX_TABLES = 64


class _Gate:
    """Many transactions or one resize, per process. Entering and leaving take a plain lock and nothing else (they
    are on every read); the condition is only waited on, and only notified, while a resize is pending."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._waiting = 0  # threads waiting in enter() or exclusive()
        self._resizing = False

    def enter(self) -> None:
        with self._lock:
            while self._resizing:
                self._wait()
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._waiting:
                self._cond.notify_all()

    def _wait(self) -> None:
        self._waiting += 1
        try:
            self._cond.wait()
        finally:
            self._waiting -= 1

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock:
            while self._resizing or self._active:
                self._wait()
            self._resizing = True
        try:
            yield
        finally:
            with self._lock:
                self._resizing = False
                self._cond.notify_all()


class LmdbTransaction(Transaction):
    """A read view: an LMDB read transaction (a snapshot)."""

    __slots__ = ("_txn",)

    def __init__(self, txn: lmdb.Transaction) -> None:
        self._txn = txn

    def get(self, table: Table, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=table.handle)
        return None if value is None else bytes(value)

    def count(self, table: Table) -> int:
        """How many keys the table holds (LMDB keeps the count: O(1))."""
        entries: int = self._txn.stat(table.handle)["entries"]
        return entries

    def scan(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Keys in byte order, from `start` (or `prefix`) on, while they begin with `prefix`."""
        with self._txn.cursor(db=table.handle) as cursor:
            first = start if start is not None and start > prefix else prefix
            if not cursor.set_range(first):
                return
            for key, value in cursor:
                if not bytes(key).startswith(prefix):
                    return
                yield bytes(key), bytes(value)

    def keys(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[bytes]:
        """The keys `scan` would give, without reading the values. The walk runs in C (py-lmdb's iterator, bounded
        by the first key past the prefix): listings of thousands of keys pay no Python call per key."""
        cursor = self._txn.cursor(db=table.handle)  # closed with the transaction
        first = start if start is not None and start > prefix else prefix
        if not cursor.set_range(first):
            return iter(())
        # bytes, not memoryviews: this index never opens transactions with buffers=True.
        keys = cast(Iterator[bytes], cursor.iternext(keys=True, values=False))
        bound = _past(prefix)
        return keys if bound is None else takewhile(bound.__gt__, keys)


def _past(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with `prefix` (None: no such key, all keys qualify)."""
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else None


class LmdbWriteTransaction(LmdbTransaction, WriteTransaction):
    __slots__ = ("_after_commit",)

    def __init__(self, txn: lmdb.Transaction) -> None:
        super().__init__(txn)
        self._after_commit: list[Callable[[], None]] = []

    def put(self, table: Table, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=table.handle)

    def delete(self, table: Table, key: bytes) -> bool:
        deleted: bool = self._txn.delete(key, db=table.handle)
        return deleted

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once the transaction has committed (not if it aborts)."""
        self._after_commit.append(action)


class _Reading:
    __slots__ = ("_index", "_txn")

    def __init__(self, index: LmdbIndex) -> None:
        self._index = index

    def __enter__(self) -> Transaction:
        gate = self._index._gate
        gate.enter()
        try:
            self._txn = self._index._begin(write=False)
        except BaseException:
            gate.leave()
            raise
        return LmdbTransaction(self._txn)

    def __exit__(self, *_: object) -> None:
        try:
            self._txn.abort()
        finally:
            self._index._gate.leave()


def open_elsewhere(path: Path) -> bool:
    """Whether another process has the LMDB environment at `path` open (a running `berth serve`, a CLI command).
    LMDB holds a shared fcntl lock on the first byte of lock.mdb for as long as a process has the environment open
    (mdb_env_excl_lock / mdb_env_share_locks): a write lock on it is refused exactly then. Call it before this
    process opens the environment: closing any descriptor of the file drops this process's own fcntl locks."""
    try:
        fd = os.open(path / "lock.mdb", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        return True
    finally:
        os.close(fd)  # (releases the probe's lock with the descriptor)
    return False


class LmdbIndex(Index):
    def __init__(self, path: Path, *, map_size: int = DEFAULT_MAP_SIZE, durable: bool = True,
                 tables: tuple[TableShape | str, ...] = (), locks: Path | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._locks = locks or path  # where the named locks' files are (module docstring)
        # sync=True (the default): a commit is durable when it returns. metasync may be relaxed without risking
        # corruption (LMDB then may lose the last commit on power loss), which we do not want either.
        self._env = lmdb.open(
            str(path), map_size=map_size, max_dbs=MAX_TABLES, max_readers=MAX_READERS,
            readahead=False, lock=True, sync=durable, metasync=durable, writemap=False,
        )
        self._env.reader_check()  # free reader slots left by crashed processes
        self._gate = _Gate()
        self._tables: dict[str, Table] = {}
        self.declare(tables)

    # -- tables -----------------------------------------------------------------------------------------------
    def declare(self, names: Iterable[TableShape | str]) -> None:
        """Open (creating if new) each named LMDB sub-database. Call at start-up, not inside a transaction."""
        for name in map(table_name, names):
            if name in self._tables:
                continue
            if len(self._tables) >= MAX_TABLES:
                raise ValueError(f"at most {MAX_TABLES} tables: raise MAX_TABLES (cas/lmdb_index.py)")
            self._gate.enter()
            try:
                self._tables[name] = Table(name, self._env.open_db(name.encode(), create=True))
            finally:
                self._gate.leave()

    def table(self, name: str) -> Table:
        found = self._tables.get(name)
        if found is None:
            raise undeclared(name, self._tables)
        return found

    # -- transactions -------------------------------------------------------------------------------------------
    def read(self) -> _Reading:
        """A read transaction for a `with` block. A class, not a generator context manager: reads are on every
        request's path, and this costs a third as much."""
        return _Reading(self)

    @contextmanager
    def write(self) -> Iterator[WriteTransaction]:
        """One write transaction: commits when the block ends normally, aborts if it raises.

        A block cannot be replayed: if it fills the map, the map is grown and IndexFull is raised for the caller
        to retry. Prefer `transact(work)`, which retries by itself; the map is grown ahead of writes anyway, so
        only a single transaction writing more than the free half of the map ever sees this.
        """
        self._grow_if_needed()
        self._gate.enter()
        try:
            txn = self._begin(write=True)
            wrapped = LmdbWriteTransaction(txn)
            try:
                yield wrapped
                txn.commit()
            except lmdb.MapFullError:
                txn.abort()
                full = True
            except BaseException:
                txn.abort()
                raise
            else:
                full = False
        finally:
            self._gate.leave()
        if full:
            self._grow(factor=2)
            raise IndexFull("the index map was full and has been grown; retry the transaction")
        for action in wrapped._after_commit:
            action()

    def transact(self, work: Callable[[WriteTransaction], T]) -> T:
        """Run `work` in a write transaction, growing the map and retrying if it filled up."""
        while True:
            try:
                with self.write() as txn:
                    return work(txn)
            except IndexFull:
                continue

    def _begin(self, write: bool) -> lmdb.Transaction:
        try:
            return self._env.begin(write=write)
        except lmdb.MapResizedError:
            # Another process grew the map. Adopting the new size needs this process to have no open
            # transaction; our caller holds the gate shared, so step out, adopt under exclusion, step back in.
            self._gate.leave()
            try:
                with self._gate.exclusive():
                    self._env.set_mapsize(0)
            finally:
                self._gate.enter()
            return self._env.begin(write=write)

    def _grow_if_needed(self) -> None:
        info = self._env.info()
        used = (info["last_pgno"] + 1) * self._env.stat()["psize"]
        if used * 2 > info["map_size"]:
            self._grow(factor=2)

    def _grow(self, factor: int) -> None:
        with self._gate.exclusive():
            self._env.set_mapsize(self._env.info()["map_size"] * factor)

    @contextmanager
    def exclusive(self, name: str, wait: bool) -> Iterator[bool]:
        fd = os.open(self._locks / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock (a flock belongs to the open file, so threads exclude too)

    def space(self) -> tuple[int, int]:
        return self.used_bytes(), self.map_size

    def used_bytes(self) -> int:
        """Bytes of the map in use (the pages written so far), without a transaction."""
        info = self._env.info()
        used: int = (info["last_pgno"] + 1) * self._env.stat()["psize"]
        return used

    @property
    def map_size(self) -> int:
        size: int = self._env.info()["map_size"]
        return size

    def close(self) -> None:
        self._env.close()
