"""The shape of a table's keys and values, for an index that stores them in columns (cas/postgres_index.py).

The index interface (cas/index.py) deals in byte keys and byte values, in byte order. The layers already build their
keys from fields: UTF-8 names joined by NUL (`repo \\0 tag`), big-endian integers (`u64 µs + digest`), and their
values as JSON, packed structs or nothing at all. A TableShape writes that down, so that a SQL index can keep each
field in a column of its own (an operator reads the tables with psql) and still give the same answers in the same
order as LMDB:

- text fields are compared with COLLATE "C" (byte order of UTF-8 is code point order); they never contain NUL, and
  NUL is the smallest byte, so ordering the columns field by field is ordering the joined keys byte by byte;
- u64/u32 fields are stored as bigint, u8 as smallint: big-endian bytes compare as the unsigned numbers do (a u64
  stays < 2^63: a key with a larger one does not have the shape);
- rev64 is eight bytes holding 2^64-1 - n (a newest-first order of times n, 0 <= n < 2^63): its bigint column holds
  -n, which sorts as the bytes do (registry_core's tag_times);
- a bytea field may only come last (it may contain NUL).

Key spec: fields `name:kind` (kind text | bytea | u64 | u32 | u8 | rev64) separated by ` \\0 ` where the key has a
NUL between them, or by a plain space where it has none (`at:u64 digest:text`: eight bytes then the digest). Value
spec: `bytes:<col>` (bytea), `json:<col>` (jsonb), `text:<col>` (UTF-8 text), `int:<col>` (a decimal number in ASCII,
kept as bigint), `` (always empty: no column), or a ValueStruct (a struct.Struct whose fields become columns).
Tables declared by name only get the fallback shape (key bytea, value bytea) in such an index, and need no shape in
LMDB or memory, which ignore it.

A Chain is a lookup through several tables, each key built from fields found before it (a manifest GET by tag: the
tag's digest, then the manifest's record and bytes under that digest): `Transaction.chain` runs it get by get, an
index with columns as one query (cas/index.py, cas/postgres_index.py).

JSON values come back as PostgreSQL prints jsonb (keys reordered, spaces added): equal as JSON, not as bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import lru_cache

KEY_KINDS = ("text", "bytea", "u64", "u32", "u8", "rev64")
_FIXED = {"u64": 8, "u32": 4, "u8": 1, "rev64": 8}
_TOP = (1 << 64) - 1  # rev64: the bytes hold _TOP - n, the column -n
_BIGINT_MIN, _BIGINT_MAX = -(1 << 63), (1 << 63) - 1
SEP = b"\0"

KeyValue = str | bytes | int


@dataclass(frozen=True, slots=True)
class KeyField:
    name: str
    kind: str
    sep_after: bool  # a NUL follows this field in the key (never after the last)

    @property
    def width(self) -> int | None:
        return _FIXED.get(self.kind)

    def number(self, raw: bytes) -> int:
        """The column value of a fixed-width field's bytes (possibly out of a bigint's range: see `fits`)."""
        n = int.from_bytes(raw, "big")
        return n - _TOP if self.kind == "rev64" else n

    def raw(self, value: int) -> bytes:
        assert self.width is not None
        return (value + _TOP if self.kind == "rev64" else value).to_bytes(self.width, "big")


def fits(value: int) -> bool:
    """Whether a column value fits the bigint it is kept in."""
    return _BIGINT_MIN <= value <= _BIGINT_MAX


@dataclass(frozen=True, slots=True)
class ValueStruct:
    """A value packed with `fmt` (struct module); `columns` are (name, SQL type) per packed field."""

    fmt: str
    columns: tuple[tuple[str, str], ...]

    def unpack(self, raw: bytes) -> tuple[object, ...]:
        return struct.unpack(self.fmt, raw)

    def pack(self, values: tuple[object, ...]) -> bytes:
        return struct.pack(self.fmt, *values)


@dataclass(frozen=True, slots=True)
class TableShape:
    name: str
    key: str
    value: str | ValueStruct = "bytes:value"

    @property
    def fields(self) -> tuple[KeyField, ...]:
        return parse_key(self.key)

    @property
    def value_names(self) -> tuple[str, ...]:
        """The value's columns (none for an always-empty value)."""
        if isinstance(self.value, ValueStruct):
            return tuple(name for name, _ in self.value.columns)
        return (self.value.partition(":")[2],) if self.value else ()

    def describe(self) -> str:
        """A stable description (stored by a SQL index to notice a shape that changed)."""
        value = self.value if isinstance(self.value, str) else json.dumps([self.value.fmt, self.value.columns])
        return json.dumps({"key": self.key, "value": value}, separators=(",", ":"))


@lru_cache(maxsize=256)  # a chained lookup joins keys by their fields on every manifest GET: parse a spec once
def parse_key(spec: str) -> tuple[KeyField, ...]:
    tokens = spec.split()
    fields: list[KeyField] = []
    for i, token in enumerate(tokens):
        if token == "\\0":
            continue
        name, _, kind = token.partition(":")
        if kind not in KEY_KINDS or not name.isidentifier():
            raise ValueError(f"bad key field {token!r} in {spec!r}")
        sep = i + 1 < len(tokens) and tokens[i + 1] == "\\0"
        last = all(t == "\\0" for t in tokens[i + 1:])
        if not last and kind in ("text", "bytea") and not sep:
            raise ValueError(f"field {name!r} of variable length must be followed by \\0 in {spec!r}")
        if not last and kind == "bytea":
            raise ValueError(f"a bytea field may only be the last one ({spec!r}): it may contain NUL")
        fields.append(KeyField(name, kind, sep and not last))
    if not fields:
        raise ValueError(f"empty key spec {spec!r}")
    return tuple(fields)


def split_key(fields: tuple[KeyField, ...], key: bytes) -> tuple[KeyValue, ...]:
    """The column values of a whole key; ValueError if the key does not have the shape."""
    values: list[KeyValue] = []
    pos = 0
    for field in fields:
        width = field.width
        if width is not None:
            if len(key) - pos < width:
                raise ValueError(f"key {key!r} is short of field {field.name!r}")
            number = field.number(key[pos:pos + width])
            if not fits(number):
                raise ValueError(f"key {key!r}: field {field.name!r} is beyond a bigint")
            values.append(number)
            pos += width
            if field.sep_after:
                if key[pos:pos + 1] != SEP:
                    raise ValueError(f"key {key!r}: no NUL after field {field.name!r}")
                pos += 1
        elif field.sep_after:
            end = key.find(SEP, pos)
            if end < 0:
                raise ValueError(f"key {key!r}: no NUL after field {field.name!r}")
            values.append(_decode(field, key[pos:end]))
            pos = end + 1
        else:  # the last field: the rest of the key
            values.append(_decode(field, key[pos:]))
            pos = len(key)
    if pos != len(key):
        raise ValueError(f"key {key!r} is longer than the table's shape")
    return tuple(values)


def lower_bound(fields: tuple[KeyField, ...], key: bytes) -> list[KeyValue]:
    """Leading column values such that every key >= `key` (byte order) has its columns >= them (row order).
    `key` is any bytes (a prefix, a start key): where it stops fitting the shape, the bound stops (looser, never
    wrong; the index then checks `key >= bound` on the rows themselves)."""
    values: list[KeyValue] = []
    pos = 0
    for field in fields:
        if pos >= len(key):
            break
        width = field.width
        if width is not None:
            chunk = key[pos:pos + width]
            # Beyond a bigint: the nearest one is still a lower bound (no key of the shape lies between them).
            values.append(min(max(field.number(chunk.ljust(width, b"\0")), _BIGINT_MIN), _BIGINT_MAX))
            pos += width
            if len(chunk) < width or not field.sep_after:
                continue
            if key[pos:pos + 1] not in (SEP, b""):
                break
            pos += 1
            continue
        end = key.find(SEP, pos) if field.sep_after else -1
        raw = key[pos:] if end < 0 else key[pos:end]
        if field.kind == "bytea":
            values.append(bytes(raw))
        elif SEP in raw:  # a NUL inside the last field (`key + b"\0"`: the first key after `key`); text holds none
            values.append(raw[:raw.index(SEP)].decode("utf-8", errors="ignore"))
            break
        else:
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:  # cut inside a character: what comes before it is a lower bound
                values.append(raw[:exc.start].decode("utf-8"))
                break
        if end < 0:
            break
        pos = end + 1
    return values


def fixed_fields(fields: tuple[KeyField, ...], prefix: bytes) -> list[KeyValue]:
    """The values of the leading fields that every key starting with `prefix` has (the fields the prefix covers
    whole): an equality on each narrows a scan. Stops at the first field the prefix cuts, or does not fit."""
    values: list[KeyValue] = []
    pos = 0
    for field in fields:
        width = field.width
        if width is not None:
            if len(prefix) - pos < width:
                break
            number = field.number(prefix[pos:pos + width])
            if not fits(number):
                break  # no key of the shape has it: the scan's own check on the rows ends it
            values.append(number)
            pos += width
            if field.sep_after:
                if prefix[pos:pos + 1] != SEP:
                    break
                pos += 1
            continue
        end = prefix.find(SEP, pos) if field.sep_after else -1
        if end < 0:
            break
        try:
            values.append(_decode(field, prefix[pos:end]))
        except ValueError:
            break
        pos = end + 1
    return values


def _decode(field: KeyField, raw: bytes) -> KeyValue:
    if field.kind == "bytea":
        return bytes(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"field {field.name!r} is not UTF-8: {raw!r}") from None


def join_key(fields: tuple[KeyField, ...], values: tuple[KeyValue, ...]) -> bytes:
    parts: list[bytes] = []
    for field, value in zip(fields, values, strict=True):
        if field.width is not None:
            assert isinstance(value, int)
            parts.append(field.raw(value))
        elif isinstance(value, str):
            parts.append(value.encode("utf-8"))
        else:
            assert isinstance(value, bytes | memoryview)
            parts.append(bytes(value))
        if field.sep_after:
            parts.append(SEP)
    return b"".join(parts)


ValueField = str | bytes | int | float


@dataclass(frozen=True, slots=True)
class Step:
    """One get of a Chain: in the table of `shape`, under the key whose fields take the values of the names in
    `using` ((key field, name) pairs; a field not listed takes the value of its own name). Names are the chain's
    start values and the value columns of earlier steps (text, bytes, int or struct members: not JSON)."""

    shape: TableShape
    using: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Chain:
    """A lookup through several tables, each key built from what the start and earlier steps found: one query in
    an index with columns, a get per step elsewhere. A step whose key needs a value that was not found (its row is
    absent) is absent too. Checked once, when built (ValueError for a name nothing provides)."""

    start: tuple[str, ...]
    steps: tuple[Step, ...]
    # Derived: per step, the slot (start names, then every step's value names) of each key field, and the slots
    # its value fills.
    sources: tuple[tuple[int, ...], ...] = ()
    outputs: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        names = list(self.start)
        sources: list[tuple[int, ...]] = []
        outputs: list[tuple[int, ...]] = []
        for step in self.steps:
            using = dict(step.using)
            wanted = [using.get(field.name, field.name) for field in step.shape.fields]
            missing = [name for name in wanted if name not in names]
            if missing:
                raise ValueError(f"chain step {step.shape.name!r}: nothing before it gives {', '.join(missing)}")
            sources.append(tuple(names.index(name) for name in wanted))
            value = step.shape.value
            if isinstance(value, str) and value.startswith("json:"):
                given: tuple[str, ...] = ()  # JSON is read by the caller, not used as a key
            else:
                given = step.shape.value_names
            outputs.append(tuple(range(len(names), len(names) + len(given))))
            names.extend(given)
        object.__setattr__(self, "sources", tuple(sources))
        object.__setattr__(self, "outputs", tuple(outputs))

    @property
    def slots(self) -> int:
        return len(self.start) + sum(len(out) for out in self.outputs)


def value_fields(shape: TableShape, raw: bytes) -> tuple[ValueField, ...]:
    """A value's columns as a chain passes them on to the next step's key."""
    value = shape.value
    if isinstance(value, ValueStruct):
        unpacked: tuple[ValueField, ...] = value.unpack(raw)  # type: ignore[assignment]
        return unpacked
    kind = value.partition(":")[0]
    if kind == "text":
        return (raw.decode("utf-8"),)
    if kind == "int":
        return (int(raw),)
    if kind == "bytes":
        return (raw,)
    return ()
