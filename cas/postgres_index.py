"""The metadata index in PostgreSQL: the guarantees of cas/index.py for any number of processes on any machines.

How each guarantee is given:
- Snapshot reads: a read is a REPEATABLE READ READ ONLY transaction (one snapshot for all its statements).
- Serializable writes: a write is a SERIALIZABLE transaction. PostgreSQL aborts one of two transactions that could
  not have run one after the other (SQLSTATE 40001, or a deadlock, 40P01): `transact` runs the work again on a
  fresh transaction, which is exactly why write functions must be replayable. `write()` cannot replay its block:
  it raises IndexConflict for the caller to retry.
- after_commit: actions run once COMMIT returned, never for an aborted or replayed attempt.
- Durability: a COMMIT that returned is durable as the server is configured (synchronous_commit).

A real schema, not LMDB emulated in SQL. A table declared with a TableShape (cas/table_shape.py) becomes a SQL table
with a column per key field (the primary key, in the order of the fields) and per value field: text in COLLATE
"C", integers as bigint, JSON values as jsonb, packed structs as one column per member. `scan(prefix, start)` is a
range query on the primary key (equality on the fields the prefix completes, a row comparison for the lower
bound, keyset pagination in batches), in the byte order of LMDB's keys. A table declared by name only falls back
to (key bytea primary key, value bytea). Key bytes that do not fit a declared shape are refused (ValueError).

Tables live in one PostgreSQL schema (namespace; `berth` unless told otherwise), beside:
    berth_schema  (version, description, applied)  the migrations applied, in order (MIGRATIONS below)
    berth_tables  (name, shape, created)            every declared table and the shape it was created with
Opening applies the missing migrations under an advisory lock; a database migrated by a newer Berth is refused
(IncompatibleStore), and so is a declaration whose shape differs from the table's: that needs a migration.

Named locks (`exclusive`, the collection lock "gc" of every node) are session advisory locks, each held on a
connection of its own opened for the holder (not a pooled one: a pooled connection outlives its user, and so would
its session lock), in autocommit: no transaction is open and no row is locked while it is held, so a collection
pass holding it across its calls to the object store delays no request. PostgreSQL frees the lock when the session
ends: the holder closes it, or its process dies (the socket closes), or its machine vanishes (the server's TCP
keepalives on that session, set below, notice within about a minute). A holder that loses its session (the server
restarted, the network between them cut) loses the lock while it may still be working; a collection pass then
fails at its next transaction, which needs the same server (its claims stay listed in `doomed` for the next pass).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from .errors import CasError, IncompatibleStore, StoreUnavailable
from .index import Index, Table, Transaction, WriteTransaction, undeclared
from .table_shape import (
    KeyField,
    KeyValue,
    TableShape,
    ValueStruct,
    fixed_fields,
    join_key,
    lower_bound,
    parse_key,
    split_key,
)

T = TypeVar("T")

DEFAULT_SCHEMA = "berth"
# Rows per round trip of a scan: the first batch is small (most scans read a handful of keys: a tag, a session's
# holders), later ones larger.
FIRST_BATCH = 64
BATCH = 1000
MAX_ATTEMPTS = 1000  # of one write function, on conflicts; a pathological livelock surfaces instead of hanging
# A named lock's advisory key: "lock" in the high half (the DDL lock has "bert"), the CRC of schema and name below.
LOCK_SPACE = 0x6C6F636B
# The server side of a lock holder's connection probes an idle peer after 30 s, then every 10 s, 3 times: a lock
# whose holder's machine vanished is free in about a minute (PostgreSQL's default follows the OS: 2 hours).
LOCK_KEEPALIVES = (("tcp_keepalives_idle", 30), ("tcp_keepalives_interval", 10), ("tcp_keepalives_count", 3))
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)

# Migrations of the bookkeeping tables, applied in order, each once (berth_schema). The declared tables are created
# by declare() from their shapes; a change of a shape is a migration added here.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "the catalog of declared tables",
     'CREATE TABLE {schema}.berth_tables (name text COLLATE "C" PRIMARY KEY, shape jsonb NOT NULL, '
     "created timestamptz NOT NULL DEFAULT now())"),
)


# How long a request waits for a connection once the server was found unreachable (the pool's own `timeout` applies
# otherwise): while PostgreSQL is down, a request is answered 503 within about this, not after the full wait. The
# pool keeps reconnecting in the background meanwhile; the first transaction that begins ends the fast failing.
FAIL_FAST = 1.0


def _unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable a lost or refused connection stands for (None for any other error)."""
    if isinstance(exc, PoolTimeout) or (isinstance(exc, psycopg.OperationalError) and not isinstance(exc, _RETRYABLE)):
        return StoreUnavailable(f"the PostgreSQL server cannot be reached: {str(exc).strip().splitlines()[0]}")
    return None


class IndexConflict(CasError):
    """A write transaction could not be serialized with a concurrent one and was rolled back: run it again."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A table's statements, built once at declaration."""

    name: str
    fields: tuple[KeyField, ...] | None  # None: the fallback (key bytea, value bytea)
    value: str | ValueStruct
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    get: sql.Composed
    put: sql.Composed
    delete: sql.Composed
    count: sql.Composed
    table: sql.Composed

    def key_values(self, key: bytes) -> tuple[KeyValue, ...]:
        return (bytes(key),) if self.fields is None else split_key(self.fields, key)

    def key_of(self, row: Sequence[Any]) -> bytes:
        if self.fields is None:
            return bytes(row[0])
        return join_key(self.fields, tuple(row[:len(self.fields)]))

    def value_params(self, value: bytes) -> tuple[Any, ...]:
        kind = self.value
        if isinstance(kind, ValueStruct):
            return kind.unpack(value)
        if kind == "":
            if value:
                raise ValueError(f"table {self.name!r} holds empty values only, not {value[:40]!r}")
            return ()
        if kind.startswith("text:") or kind.startswith("json:"):
            return (value.decode("utf-8"),)
        return (bytes(value),)

    def value_of(self, row: Sequence[Any]) -> bytes:
        kind = self.value
        if isinstance(kind, ValueStruct):
            return kind.pack(tuple(row))
        if kind == "":
            return b""
        if kind.startswith("text:") or kind.startswith("json:"):
            text: str = row[0]
            return text.encode("utf-8")
        return bytes(row[0])


_SQL_TYPES = {"text": 'text COLLATE "C"', "bytea": "bytea", "u64": "bigint", "u32": "bigint", "u8": "smallint"}


def _compile(schema: str, shape: TableShape | str) -> tuple[_Compiled, sql.Composed]:
    """The compiled table and its CREATE TABLE statement."""
    name = shape if isinstance(shape, str) else shape.name
    table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    value: str | ValueStruct
    if isinstance(shape, str):
        fields, value = None, "bytes:value"
        key_defs = [("key", "bytea")]
    else:
        fields, value = parse_key(shape.key), shape.value
        key_defs = [(f.name, _SQL_TYPES[f.kind]) for f in fields]
    if isinstance(value, ValueStruct):
        value_defs = list(value.columns)
    elif value == "":
        value_defs = []
    else:
        kind, _, column = value.partition(":")
        value_defs = [(column, {"bytes": "bytea", "json": "jsonb", "text": "text"}[kind])]
    keys = tuple(c for c, _ in key_defs)
    values = tuple(c for c, _ in value_defs)
    ident = [sql.Identifier(c) for c in keys]
    vident = [sql.Identifier(c) for c in values]
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(c) for c in ident)
    selected = [sql.SQL("{}::text").format(c) if t == "jsonb" else c
                for c, (_, t) in zip(vident, value_defs, strict=True)]
    get = sql.SQL("SELECT {} FROM {} WHERE {}").format(
        sql.SQL(", ").join(selected) if selected else sql.SQL("1"), table, where)
    placeholders = sql.SQL(", ").join(
        sql.SQL("%s::jsonb") if t == "jsonb" else sql.SQL("%s") for _, t in key_defs + value_defs)
    put = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO ").format(
        table, sql.SQL(", ").join(ident + vident), placeholders, sql.SQL(", ").join(ident))
    put += (sql.SQL("UPDATE SET {}").format(sql.SQL(", ").join(
        sql.SQL("{} = EXCLUDED.{}").format(c, c) for c in vident)) if vident else sql.SQL("NOTHING"))
    delete = sql.SQL("DELETE FROM {} WHERE {} RETURNING 1").format(table, where)
    count = sql.SQL("SELECT count(*) FROM {}").format(table)
    create = sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
        table, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
                                  for c, t in key_defs + value_defs),
        sql.SQL(", ").join(ident))
    compiled = _Compiled(name, fields, value, keys, values, get, put, delete, count, table)
    return compiled, create


def _describe(shape: TableShape | str) -> str:
    return '{"fallback":"key bytea, value bytea"}' if isinstance(shape, str) else shape.describe()


class PgTransaction(Transaction):
    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def get(self, table: Table, key: bytes) -> bytes | None:
        c: _Compiled = table.handle
        try:
            params = c.key_values(key)
        except ValueError:
            return None  # a key of another shape is in no row
        row = self._conn.execute(c.get, params).fetchone()
        return None if row is None else c.value_of(row)

    def count(self, table: Table) -> int:
        c: _Compiled = table.handle
        row = self._conn.execute(c.count).fetchone()
        assert row is not None
        return int(row[0])

    def scan(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        return self._walk(table, prefix, start, values=True)

    def keys(self, table: Table, prefix: bytes = b"", start: bytes | None = None) -> Iterator[bytes]:
        return (key for key, _ in self._walk(table, prefix, start, values=False))

    def _walk(self, table: Table, prefix: bytes, start: bytes | None,
              values: bool) -> Iterator[tuple[bytes, bytes]]:
        c: _Compiled = table.handle
        low = start if start is not None and start > prefix else prefix
        columns = [sql.Identifier(k) for k in c.key_columns]
        conditions: list[sql.Composable] = []
        params: list[Any] = []
        if c.fields is None:
            bound: list[KeyValue] = [bytes(low)]
        else:
            bound = lower_bound(c.fields, low)
            # Fields the prefix covers whole are equal in every key it matches: an equality narrows the range.
            for column, value in zip(columns, fixed_fields(c.fields, prefix), strict=False):
                conditions.append(sql.SQL("{} = %s").format(column))
                params.append(value)
        selected: list[sql.Composable] = list(columns)
        if values:
            kinds = c.value
            for name in c.value_columns:
                ident = sql.Identifier(name)
                is_json = isinstance(kinds, str) and kinds.startswith("json:")
                selected.append(sql.SQL("{}::text").format(ident) if is_json else ident)
        order = sql.SQL(", ").join(columns)
        base = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(selected), c.table)
        first = True
        while True:
            where = list(conditions)
            query_params = list(params)
            if bound:
                n = len(bound)
                cmp = ">=" if first else ">"
                where.append(sql.SQL("({}) {} ({})").format(
                    sql.SQL(", ").join(columns[:n]), sql.SQL(cmp),
                    sql.SQL(", ").join(sql.Placeholder() * n)))
                query_params.extend(bound)
            limit = FIRST_BATCH if first else BATCH
            query = base + (sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")) + \
                sql.SQL(" ORDER BY {} LIMIT {}").format(order, sql.Literal(limit))
            rows = self._conn.execute(query, query_params).fetchall()
            nkeys = len(c.key_columns)
            for row in rows:
                key = c.key_of(row)
                if key < low:
                    continue  # the SQL bound is looser than `low` where `low` cuts a field (table_shape.py)
                if not key.startswith(prefix):
                    return
                yield key, (c.value_of(row[nkeys:]) if values else b"")
            if len(rows) < limit:
                return
            bound = list(rows[-1][:nkeys])
            first = False


class PgWriteTransaction(PgTransaction, WriteTransaction):
    __slots__ = ("_after_commit",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)
        self._after_commit: list[Callable[[], None]] = []

    def put(self, table: Table, key: bytes, value: bytes) -> None:
        c: _Compiled = table.handle
        self._conn.execute(c.put, (*c.key_values(key), *c.value_params(value)))

    def delete(self, table: Table, key: bytes) -> bool:
        c: _Compiled = table.handle
        try:
            params = c.key_values(key)
        except ValueError:
            return False
        return self._conn.execute(c.delete, params).fetchone() is not None

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after_commit.append(action)


class _Reading:
    __slots__ = ("_index", "_conn")

    def __init__(self, index: PostgresIndex) -> None:
        self._index = index

    def __enter__(self) -> Transaction:
        index = self._index
        self._conn = index._connection()
        try:
            self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except BaseException as exc:
            index._pool.putconn(self._conn)
            unavailable = index._lost(exc)
            if unavailable is not None:
                raise unavailable from exc
            raise
        index._reached()
        return PgTransaction(self._conn)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: object) -> None:
        try:
            self._conn.execute("ROLLBACK")  # read only: nothing to commit, and a rollback cannot fail to serialize
        except psycopg.Error:
            pass  # a broken connection: the pool discards it
        finally:
            self._index._pool.putconn(self._conn)
        unavailable = self._index._lost(exc) if exc is not None else None
        if unavailable is not None:
            raise unavailable from exc


class PostgresIndex(Index):
    """Tables in one PostgreSQL schema of the database at `conninfo` (a libpq URL or key=value string; the usual
    PG* environment variables and ~/.pgpass apply)."""

    def __init__(self, conninfo: str, *, schema: str = DEFAULT_SCHEMA, min_size: int = 1, max_size: int = 16,
                 timeout: float = 10.0, tables: Iterable[TableShape | str] = ()) -> None:
        self.schema = schema
        self._conninfo = conninfo
        # timeout: how long a request waits for a connection before it is answered 503 (StoreUnavailable).
        self._pool = ConnectionPool(conninfo, min_size=min_size, max_size=max_size, open=False, timeout=timeout,
                                    kwargs={"autocommit": True}, name=f"berth-{schema}")
        self._pool.open(wait=True, timeout=30)
        self._timeout = timeout
        # The pool's count of failed connection attempts when the server was last reached.
        self._connect_errors = self._pool.get_stats().get("connections_errors", 0)
        self._tables: dict[str, Table] = {}
        self._declaring = threading.Lock()
        try:
            self._migrate()
            self.declare(tables)
        except BaseException:
            self._pool.close()
            raise

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresIndex:
        """`postgresql://user@host:port/database[?schema=name&…]`: libpq's URL (its parameters, PG* variables and
        ~/.pgpass apply), plus `schema`, the PostgreSQL schema (namespace) the tables live in."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = next((v for k, v in query if k == "schema"), DEFAULT_SCHEMA)
        rest = urlencode([(k, v) for k, v in query if k != "schema"])
        return cls(urlunsplit(parts._replace(query=rest)), schema=schema, **options)

    # -- schema -------------------------------------------------------------------------------------------------
    @contextmanager
    def _ddl(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction holding this schema's DDL lock (processes opening the same schema create tables once)."""
        with self._pool.connection() as conn, conn.transaction():
            # One bigint key: "bert" and the schema name's CRC (the two-int4 form would overflow on CRCs >= 2^31).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x62657274 << 32 | zlib.crc32(self.schema.encode()),))
            yield conn

    def _migrate(self) -> None:
        schema = sql.Identifier(self.schema)
        with self._ddl() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.berth_schema (version integer PRIMARY KEY, "
                                 "description text NOT NULL, applied timestamptz NOT NULL DEFAULT now())")
                         .format(schema))
            row = conn.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}.berth_schema").format(schema)
                               ).fetchone()
            current = int(row[0]) if row is not None else 0
            known = MIGRATIONS[-1][0]
            if current > known:
                raise IncompatibleStore(
                    f"the PostgreSQL schema {self.schema!r} was migrated to version {current} by a newer Berth; "
                    f"this one knows versions up to {known} (cas/postgres_index.py)")
            for version, description, statement in MIGRATIONS:
                if version > current:
                    conn.execute(sql.SQL(statement).format(schema=schema))
                    conn.execute(sql.SQL("INSERT INTO {}.berth_schema (version, description) VALUES (%s, %s)")
                                 .format(schema), (version, description))

    def declare(self, names: Iterable[TableShape | str]) -> None:
        fresh = [shape for shape in names
                 if (shape if isinstance(shape, str) else shape.name) not in self._tables]
        if not fresh:
            return
        with self._declaring, self._ddl() as conn:
            catalog = sql.SQL("{}.berth_tables").format(sql.Identifier(self.schema))
            for shape in fresh:
                compiled, create = _compile(self.schema, shape)
                described = _describe(shape)
                row = conn.execute(sql.SQL("SELECT shape::text FROM {} WHERE name = %s").format(catalog),
                                   (compiled.name,)).fetchone()
                if row is None:
                    conn.execute(create)
                    conn.execute(sql.SQL("INSERT INTO {} (name, shape) VALUES (%s, %s::jsonb)").format(catalog),
                                 (compiled.name, described))
                else:
                    stored = conn.execute("SELECT %s::jsonb::text", (described,)).fetchone()
                    if stored is None or stored[0] != row[0]:
                        raise IncompatibleStore(
                            f"table {compiled.name!r} in schema {self.schema!r} has the shape {row[0]}, this Berth "
                            f"declares {described}: a migration is needed (cas/postgres_index.py)")
                self._tables[compiled.name] = Table(compiled.name, compiled)

    def table(self, name: str) -> Table:
        found = self._tables.get(name)
        if found is None:
            raise undeclared(name, self._tables)
        return found

    # -- transactions -------------------------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        """A connection of the pool, waiting up to the pool's timeout for one — in slices of FAIL_FAST, so that a
        request already waiting when the server is found unreachable (by another request, or by the pool's own
        connection attempts failing) gives up then too, rather than at the end of its full wait."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return self._pool.getconn(max(0.001, min(FAIL_FAST, deadline - time.monotonic())))
            except PoolTimeout as exc:  # a busy pool, or no server: only the latter ends the wait early
                failed = self._pool.get_stats().get("connections_errors", 0) > self._connect_errors
                if failed:
                    self.unreachable = True
                if self.unreachable or time.monotonic() >= deadline:
                    raise _unavailable(exc) from exc  # type: ignore[misc]

    def _reached(self) -> None:
        """A transaction began: the server is there (and connection errors counted so far are past)."""
        if self.unreachable:
            self._connect_errors = self._pool.get_stats().get("connections_errors", 0)
            self.unreachable = False

    def _lost(self, exc: BaseException) -> StoreUnavailable | None:
        """The StoreUnavailable `exc` stands for, if any. A lost connection means the server went away (or is going):
        the other idle connections of the pool are checked now (a restart broke them all), so that the requests
        after its return do not each find one broken, and requests fail fast until a transaction begins again."""
        unavailable = _unavailable(exc)
        if unavailable is not None and not isinstance(exc, PoolTimeout):
            self.unreachable = True
            with contextlib.suppress(Exception):  # a check that fails changes nothing: the pool reconnects anyway
                self._pool.check()
        return unavailable

    def read(self) -> _Reading:
        return _Reading(self)

    @contextmanager
    def write(self) -> Iterator[WriteTransaction]:
        """One SERIALIZABLE transaction; IndexConflict if it could not be serialized (nothing of it committed)."""
        pool = self._pool
        conn = self._connection()
        try:
            txn = PgWriteTransaction(conn)
            try:
                conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                self._reached()
                yield txn
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(psycopg.Error):  # a broken connection: the pool discards it
                    conn.execute("ROLLBACK")
                if isinstance(exc, _RETRYABLE):
                    raise IndexConflict(str(exc).strip()) from exc
                unavailable = self._lost(exc)
                if unavailable is not None:
                    raise unavailable from exc
                raise
        finally:
            pool.putconn(conn)
        for action in txn._after_commit:
            action()

    def transact(self, work: Callable[[WriteTransaction], T]) -> T:
        """Run `work` in a SERIALIZABLE transaction, again on a fresh one after each serialization failure."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                with self.write() as txn:
                    return work(txn)
            except IndexConflict:
                # Back off a little, at random: two transactions that conflicted once would conflict again.
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
        raise IndexConflict(f"a write transaction failed to serialize {MAX_ATTEMPTS} times")

    # -- named locks ------------------------------------------------------------------------------------------------
    @contextmanager
    def exclusive(self, name: str, wait: bool) -> Iterator[bool]:
        """A session advisory lock on a connection of its own (module docstring); StoreUnavailable if the server
        cannot be reached."""
        key = LOCK_SPACE << 32 | zlib.crc32(f"{self.schema}\0{name}".encode())
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc  # type: ignore[misc]
        try:
            try:
                for setting, value in LOCK_KEEPALIVES:  # ignored (and harmless) on a Unix socket
                    conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(setting), sql.Literal(value)))
                if wait:
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                    taken = True
                else:
                    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                    taken = row is not None and bool(row[0])
            except psycopg.OperationalError as exc:
                unavailable = _unavailable(exc)
                if unavailable is not None:
                    raise unavailable from exc
                raise
            yield taken
        finally:
            conn.close()  # ends the session: PostgreSQL releases the lock (no unlock to forget or to fail)

    def close(self) -> None:
        self._pool.close()
