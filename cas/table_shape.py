"""The shape of a table's keys and values, for an index that stores them in columns (cas/postgres_index.py).

The index interface (cas/index.py) deals in byte keys and byte values, in byte order. The layers already build their
keys from fields: UTF-8 names joined by NUL (`repo \\0 tag`), big-endian integers (`u64 µs + digest`), and their
values as JSON, packed structs or nothing at all. A TableShape writes that down, so that a SQL index can keep each
field in a column of its own (an operator reads the tables with psql) and still give the same answers in the same
order as LMDB:

- text fields are compared with COLLATE "C" (byte order of UTF-8 is code point order); they never contain NUL, and
  NUL is the smallest byte, so ordering the columns field by field is ordering the joined keys byte by byte;
- u64/u32 fields are stored as bigint, u8 as smallint: big-endian bytes compare as the unsigned numbers do (values
  stay < 2^63);
- a bytea field may only come last (it may contain NUL).

Key spec: fields `name:kind` (kind text | bytea | u64 | u32 | u8) separated by ` \\0 ` where the key has a NUL between
them, or by a plain space where it has none (`at:u64 digest:text`: eight bytes then the digest). Value spec:
`bytes:<col>` (bytea), `json:<col>` (jsonb), `text:<col>` (UTF-8 text), `` (always empty: no column), or a
ValueStruct (a struct.Struct whose fields become columns). Tables declared by name only get the fallback shape
(key bytea, value bytea) in such an index, and need no shape in LMDB or memory, which ignore it.

JSON values come back as PostgreSQL prints jsonb (keys reordered, spaces added): equal as JSON, not as bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

KEY_KINDS = ("text", "bytea", "u64", "u32", "u8")
_FIXED = {"u64": 8, "u32": 4, "u8": 1}
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

    def describe(self) -> str:
        """A stable description (stored by a SQL index to notice a shape that changed)."""
        value = self.value if isinstance(self.value, str) else json.dumps([self.value.fmt, self.value.columns])
        return json.dumps({"key": self.key, "value": value}, separators=(",", ":"))


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
            values.append(int.from_bytes(key[pos:pos + width], "big"))
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
            values.append(int.from_bytes(chunk.ljust(width, b"\0"), "big"))
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
            values.append(int.from_bytes(prefix[pos:pos + width], "big"))
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
            parts.append(value.to_bytes(field.width, "big"))
        elif isinstance(value, str):
            parts.append(value.encode("utf-8"))
        else:
            assert isinstance(value, bytes | memoryview)
            parts.append(bytes(value))
        if field.sep_after:
            parts.append(SEP)
    return b"".join(parts)
