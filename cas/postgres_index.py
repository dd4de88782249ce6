"""The metadata index in PostgreSQL: the guarantees of cas/index.py for any number of processes on any machines.

How each guarantee is given:
- Snapshot reads: a read is a REPEATABLE READ READ ONLY transaction (one snapshot for all its statements). Its
  BEGIN goes with its first statement in one round trip (pipeline mode); one that runs nothing sends nothing.
  `lookup` (a chained lookup, cas/table_shape.py) is one SELECT outside any transaction: a statement is a snapshot.
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
    berth_schema    (version, description, applied)  the migrations applied, in order (MIGRATIONS below)
    berth_tables    (name, shape, created)            every declared table and its shape
    berth_reshapes  (name, old_shape, new_shape, rows, applied)   every table rewritten to another shape
Opening applies the missing migrations under an advisory lock; a database migrated by a newer Berth is refused
(IncompatibleStore). A declaration whose shape differs from the table's reshapes it (`_reshape`: the rows through
both shapes' codecs, in the declaring transaction), or is refused when a row does not fit the new shape.

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
import json
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

from .errors import CasError, IncompatibleStore, StoreMissing, StoreUnavailable
from .index import Index, Lookup, Table, Transaction, WriteTransaction, table_name, undeclared
from .table_shape import (
    Chain,
    KeyField,
    KeyValue,
    TableShape,
    ValueStruct,
    fits,
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
    (2, "declared tables are reshaped on open, each reshape logged",
     'CREATE TABLE {schema}.berth_reshapes (name text COLLATE "C" NOT NULL, old_shape jsonb NOT NULL, '
     "new_shape jsonb NOT NULL, rows bigint NOT NULL, applied timestamptz NOT NULL DEFAULT now())"),
)


# How long a request waits for a connection once the server was found unreachable (the pool's own `timeout` applies
# otherwise): while PostgreSQL is down, a request is answered 503 within about this, not after the full wait. The
# pool keeps reconnecting in the background meanwhile; the first transaction that begins ends the fast failing.
FAIL_FAST = 1.0
OPEN_TIMEOUT = 10  # seconds for the first connection of an index being opened (libpq's connect_timeout)


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
    description: str  # the shape as berth_tables keeps it

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
        if kind.startswith("int:"):
            number = int(value)
            if str(number).encode() != value or not fits(number):
                raise ValueError(f"table {self.name!r} holds decimal numbers (a bigint), not {value[:40]!r}")
            return (number,)
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
        if kind.startswith("int:"):
            return str(row[0]).encode()
        return bytes(row[0])


_SQL_TYPES = {"text": 'text COLLATE "C"', "bytea": "bytea", "u64": "bigint", "u32": "bigint", "u8": "smallint",
              "rev64": "bigint"}
_VALUE_TYPES = {"bytes": "bytea", "json": "jsonb", "text": "text", "int": "bigint"}


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
        value_defs = [(column, _VALUE_TYPES[kind])]
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
    compiled = _Compiled(name, fields, value, keys, values, get, put, delete, count, table, _describe(shape))
    return compiled, create


def _describe(shape: TableShape | str) -> str:
    return FALLBACK if isinstance(shape, str) else shape.describe()


FALLBACK = '{"fallback":"key bytea, value bytea"}'


def _shape_of(name: str, described: str) -> TableShape | str:
    """The shape berth_tables describes (TableShape.describe, or the fallback)."""
    data = json.loads(described)
    if "fallback" in data:
        return name
    value = data["value"]
    if value.startswith("["):
        fmt, columns = json.loads(value)
        return TableShape(name, data["key"], ValueStruct(fmt, tuple((c, t) for c, t in columns)))
    return TableShape(name, data["key"], value)


def _renamed(shape: TableShape | str, name: str) -> TableShape | str:
    return name if isinstance(shape, str) else TableShape(name, shape.key, shape.value)


READ_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
WRITE_BEGIN = "BEGIN ISOLATION LEVEL SERIALIZABLE"


class PgTransaction(Transaction):
    __slots__ = ("_conn", "_index", "_begin", "_pipelined")

    def __init__(self, index: PostgresIndex, conn: psycopg.Connection[Any], begin: str,
                 pipelined: bool = False) -> None:
        self._index = index
        self._conn = conn
        # BEGIN is sent with the first statement, in one round trip (psycopg's pipeline mode): a snapshot is taken
        # at the first statement anyway, and a transaction that runs none costs nothing.
        self._begin: str | None = begin
        # A write transaction runs in pipeline mode throughout: a statement whose answer is not needed (a put) goes
        # with the next one that is (a get, a delete, the COMMIT), and its errors are raised there.
        self._pipelined = pipelined

    @property
    def begun(self) -> bool:
        return self._begin is None

    def _run(self, query: sql.Composed, params: Sequence[Any] = (), fetch: bool = True) -> list[tuple[Any, ...]]:
        """One statement, one round trip (its BEGIN rides with the first); none for a statement without an answer
        in a pipelined transaction. Statements in a pipeline are not prepared: psycopg's cache of prepared
        statements can go wrong when one being prepared fails there ("prepared statement does not exist")."""
        conn = self._conn
        if self._pipelined:
            if self._begin is not None:
                conn.execute(self._begin, prepare=False)
                self._begin = None
            cursor = conn.execute(query, params, prepare=False)
            if not fetch:
                return []
            self._index.count_round_trip()
            return cursor.fetchall()
        self._index.count_round_trip()
        if self._begin is not None:
            begin, self._begin = self._begin, None
            with conn.pipeline():
                conn.execute(begin, prepare=False)
                cursor = conn.execute(query, params, prepare=False)
        else:
            cursor = conn.execute(query, params)
        return cursor.fetchall() if fetch else []

    def get(self, table: Table, key: bytes) -> bytes | None:
        c: _Compiled = table.handle
        try:
            params = c.key_values(key)
        except ValueError:
            return None  # a key of another shape is in no row
        rows = self._run(c.get, params)
        return c.value_of(rows[0]) if rows else None

    def count(self, table: Table) -> int:
        c: _Compiled = table.handle
        return int(self._run(c.count)[0][0])

    def chain(self, lookup: Lookup, start: tuple[KeyValue, ...]) -> tuple[bytes | None, ...]:
        """One SELECT with a LEFT JOIN per step (_ChainQuery)."""
        query: _ChainQuery = lookup.handle
        return query.values(self._run(query.select, query.params(start))[0])

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
            rows = self._run(query, query_params)
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

    def __init__(self, index: PostgresIndex, conn: psycopg.Connection[Any]) -> None:
        super().__init__(index, conn, WRITE_BEGIN, pipelined=True)
        self._after_commit: list[Callable[[], None]] = []

    def put(self, table: Table, key: bytes, value: bytes) -> None:
        c: _Compiled = table.handle
        self._run(c.put, (*c.key_values(key), *c.value_params(value)), fetch=False)

    def delete(self, table: Table, key: bytes) -> bool:
        c: _Compiled = table.handle
        try:
            params = c.key_values(key)
        except ValueError:
            return False
        return bool(self._run(c.delete, params))

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after_commit.append(action)

    def end(self, statement: str) -> None:
        """COMMIT or ROLLBACK, when anything began."""
        if self.begun:
            self._index.count_round_trip()
            self._conn.execute(statement, prepare=False)


class _Reading:
    __slots__ = ("_index", "_conn", "_txn")

    def __init__(self, index: PostgresIndex) -> None:
        self._index = index

    def __enter__(self) -> Transaction:
        self._conn = self._index._connection()  # BEGIN rides with the first statement (PgTransaction)
        self._txn = PgTransaction(self._index, self._conn, READ_BEGIN)
        return self._txn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: object) -> None:
        try:
            if self._txn.begun:  # read only: nothing to commit, and a rollback cannot fail to serialize
                self._index.count_round_trip()
                self._conn.execute("ROLLBACK", prepare=False)
        except psycopg.Error:
            pass  # a broken connection: the pool discards it
        finally:
            self._index._pool.putconn(self._conn)
        if exc is None:
            self._index._reached()
            return
        unavailable = self._index._lost(exc)
        if unavailable is not None:
            raise unavailable from exc


@dataclass(frozen=True, slots=True)
class _ChainQuery:
    """A Chain compiled to one SELECT: a LEFT JOIN per step, on key columns equal to a start value (a parameter)
    or to a column of an earlier step; per step, whether its row was found and its value's columns."""

    select: sql.Composed
    order: tuple[int, ...]  # the start value of each placeholder, in order
    steps: tuple[_Compiled, ...]

    def params(self, start: tuple[KeyValue, ...]) -> tuple[KeyValue, ...]:
        return tuple(start[i] for i in self.order)

    def values(self, row: Sequence[Any]) -> tuple[bytes | None, ...]:
        found: list[bytes | None] = []
        pos = 0
        for c in self.steps:
            width = len(c.value_columns)
            found.append(c.value_of(row[pos + 1:pos + 1 + width]) if row[pos] else None)
            pos += 1 + width
        return tuple(found)


def _compile_chain(chain: Chain, tables: tuple[Table, ...]) -> _ChainQuery:
    sources: list[sql.Composable | int] = [*range(len(chain.start)), *([0] * (chain.slots - len(chain.start)))]
    selected: list[sql.Composable] = []
    joins: list[sql.Composable] = []
    order: list[int] = []
    steps: list[_Compiled] = []
    for j, (table, wanted, outputs) in enumerate(zip(tables, chain.sources, chain.outputs, strict=True)):
        c: _Compiled = table.handle
        assert c.fields is not None
        alias = sql.Identifier(f"s{j}")
        conditions: list[sql.Composable] = []
        for field, column, slot in zip(c.fields, c.key_columns, wanted, strict=True):
            source = sources[slot]
            left = sql.SQL("{}.{}").format(alias, sql.Identifier(column))
            if isinstance(source, int):
                conditions.append(sql.SQL("{} = %s").format(left))
                order.append(source)
            else:  # a value column of an earlier step; text in the key's collation, so the key's index serves
                collate = sql.SQL(' COLLATE "C"' if field.kind == "text" else "")
                conditions.append(sql.SQL("{} = {}{}").format(left, source, collate))
        joins.append(sql.SQL(" LEFT JOIN {} AS {} ON {}").format(c.table, alias, sql.SQL(" AND ").join(conditions)))
        selected.append(sql.SQL("{}.{} IS NOT NULL").format(alias, sql.Identifier(c.key_columns[0])))
        is_json = isinstance(c.value, str) and c.value.startswith("json:")
        for column in c.value_columns:
            ident = sql.SQL("{}.{}").format(alias, sql.Identifier(column))
            selected.append(sql.SQL("{}::text").format(ident) if is_json else ident)
        for slot, column in zip(outputs, c.value_columns if outputs else (), strict=True):  # JSON: none
            sources[slot] = sql.SQL("{}.{}").format(alias, sql.Identifier(column))
        steps.append(c)
    select = sql.SQL("SELECT {} FROM (VALUES (1)) AS start (one)").format(sql.SQL(", ").join(selected))
    return _ChainQuery(select + sql.Composed(joins), tuple(order), tuple(steps))


class PostgresIndex(Index):
    """Tables in one PostgreSQL schema of the database at `conninfo` (a libpq URL or key=value string; the usual
    PG* environment variables and ~/.pgpass apply)."""

    def __init__(self, conninfo: str, *, schema: str = DEFAULT_SCHEMA, min_size: int = 1, max_size: int = 16,
                 timeout: float = 10.0, tables: Iterable[TableShape | str] = (), create: bool = True) -> None:
        self.schema = schema
        self._conninfo = conninfo
        # One connection first, on its own: a server that is down, a database that does not exist or a refused
        # login is StoreUnavailable with PostgreSQL's own reason at once (a `berth` command says it in one line),
        # where the pool's opening would retry for its 30 s and end in a PoolTimeout that names no reason.
        try:
            psycopg.connect(conninfo, connect_timeout=OPEN_TIMEOUT).close()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the PostgreSQL server cannot be reached: {' '.join(str(exc).split())}") from exc
        # timeout: how long a request waits for a connection before it is answered 503 (StoreUnavailable).
        self._pool = ConnectionPool(conninfo, min_size=min_size, max_size=max_size, open=False, timeout=timeout,
                                    kwargs={"autocommit": True}, name=f"berth-{schema}")
        self._pool.open(wait=True, timeout=30)
        self._timeout = timeout
        # The pool's count of failed connection attempts when the server was last reached.
        self._connect_errors = self._pool.get_stats().get("connections_errors", 0)
        self._tables: dict[str, Table] = {}
        self._declaring = threading.Lock()
        self._counting = threading.Lock()
        self.round_trips = 0  # statements sent and answered, BEGIN riding with the first (tests, a metric)
        try:
            self._migrate(create)
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

    def _migrate(self, create: bool = True) -> None:
        """Create the schema and its bookkeeping tables, or bring them up to date. `create` False: StoreMissing
        unless Berth created them before (a command on an existing store, where a mistyped schema name must not
        read as an empty registry)."""
        schema = sql.Identifier(self.schema)
        with self._ddl() as conn:
            if not create and conn.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND "
                                           "table_name = 'berth_schema'", (self.schema,)).fetchone() is None:
                raise StoreMissing(f"no Berth store in the PostgreSQL schema {self.schema!r} of the database "
                                   f"{conn.info.dbname!r}")
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
                        self._reshape(conn, _shape_of(compiled.name, row[0]), shape, row[0])
                self._tables[compiled.name] = Table(compiled.name, compiled)

    def _reshape(self, conn: psycopg.Connection[Any], old: TableShape | str, new: TableShape | str,
                 old_described: str) -> None:
        """Rewrite a table declared with another shape (a table of an earlier Berth kept as bytea, a shape that
        changed), in the declaring transaction: every row goes through the old shape's codec to the bytes LMDB
        would hold, and through the new one's back to columns. A row the new shape cannot hold refuses the
        reshape (IncompatibleStore) and leaves the table as it was."""
        name = table_name(old)
        before, _ = _compile(self.schema, old)
        temporary = f"{name}__reshaping"
        after, create = _compile(self.schema, _renamed(new, temporary))
        conn.execute(create)
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in (*after.key_columns, *after.value_columns))
        selected: list[sql.Composable] = [sql.Identifier(c) for c in before.key_columns]
        is_json = isinstance(before.value, str) and before.value.startswith("json:")
        selected += [sql.SQL("{}::text").format(sql.Identifier(c)) if is_json else sql.Identifier(c)
                     for c in before.value_columns]
        nkeys = len(before.key_columns)
        rows = 0
        copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(after.table, columns)
        with conn.cursor(name=f"reshape_{name}") as source:
            source.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(selected), before.table))
            while batch := source.fetchmany(BATCH):  # a batch at a time: the connection does one thing at once
                converted = []
                for row in batch:
                    key, value = before.key_of(row), before.value_of(row[nkeys:])
                    try:
                        converted.append((*after.key_values(key), *after.value_params(value)))
                    except ValueError as exc:
                        raise IncompatibleStore(
                            f"table {name!r} in schema {self.schema!r} cannot take the shape {after.description}: "
                            f"the row {key[:80]!r} does not fit it ({exc}); this Berth cannot open the store"
                        ) from None
                with conn.cursor().copy(copy_in) as copy:
                    for values in converted:
                        copy.write_row(values)
                rows += len(converted)
        conn.execute(sql.SQL("DROP TABLE {}").format(before.table))
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(after.table, sql.Identifier(name)))
        conn.execute(sql.SQL("ALTER INDEX {}.{} RENAME TO {}").format(
            sql.Identifier(self.schema), sql.Identifier(f"{temporary}_pkey"), sql.Identifier(f"{name}_pkey")))
        conn.execute(sql.SQL("UPDATE {}.berth_tables SET shape = %s::jsonb WHERE name = %s").format(
            sql.Identifier(self.schema)), (_describe(new), name))
        conn.execute(sql.SQL("INSERT INTO {}.berth_reshapes (name, old_shape, new_shape, rows) "
                             "VALUES (%s, %s::jsonb, %s::jsonb, %s)").format(sql.Identifier(self.schema)),
                     (name, old_described, _describe(new), rows))

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

    def count_round_trip(self) -> None:
        with self._counting:
            self.round_trips += 1

    def read(self) -> _Reading:
        return _Reading(self)

    def chain(self, chain: Chain) -> Lookup:
        tables = tuple(self.table(step.shape.name) for step in chain.steps)
        for step, table in zip(chain.steps, tables, strict=True):
            declared: _Compiled = table.handle
            if declared.fields is None or declared.description != step.shape.describe():
                raise ValueError(f"chain step {step.shape.name!r}: the table is declared with another shape")
        return Lookup(chain, tables, _compile_chain(chain, tables))

    def lookup(self, lookup: Lookup, start: tuple[KeyValue, ...]) -> tuple[bytes | None, ...]:
        """One SELECT on a connection outside any transaction (a statement is its own snapshot): one round
        trip, no BEGIN, no ROLLBACK."""
        query: _ChainQuery = lookup.handle
        pool = self._pool
        conn = self._connection()
        try:
            self.count_round_trip()
            row = conn.execute(query.select, query.params(start)).fetchone()
        except BaseException as exc:
            unavailable = self._lost(exc)
            if unavailable is not None:
                raise unavailable from exc
            raise
        finally:
            pool.putconn(conn)
        self._reached()
        assert row is not None
        return query.values(row)

    @contextmanager
    def write(self) -> Iterator[WriteTransaction]:
        """One SERIALIZABLE transaction; IndexConflict if it could not be serialized (nothing of it committed)."""
        pool = self._pool
        conn = self._connection()
        try:
            txn = PgWriteTransaction(self, conn)
            try:
                with conn.pipeline():
                    yield txn
                    txn.end("COMMIT")  # sent with the puts before it as the pipeline ends: one round trip
                self._reached()
            except BaseException as exc:
                with contextlib.suppress(psycopg.Error):  # a broken connection: the pool discards it
                    txn.end("ROLLBACK")
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
