"""The on-disk format of a Berth data directory, cas's half (docs/FORMAT.md is the whole of it: every table and file,
both format versions and their changes; what is here says the same for the code beside it).

Format version 3. The version is stored in the index (`meta` table, key `format`) when a store is created;
opening one written by another version raises IncompatibleStore rather than guessing, except that a version 1
or 2 directory is migrated when opened (below). The index and the bytes are two interfaces (cas/index.py, cas/blobs.py);
this file describes the embedded default (LMDB + files, `BlobStore.on_disk`). The in-memory store
(`BlobStore.in_memory`) keeps the same tables and records, and the bytes in a dict; the distributed store
(`BlobStore.distributed`) keeps them in PostgreSQL, a column per field as TABLE_SHAPES below says
(cas/postgres_index.py), and the bytes in an S3 bucket (key layout in cas/s3_blobs.py).

Changes
-------
    1 -> 2  Upload records carry their progress (`offset`) and last activity (`updated`); format 1 read them from
            the partial file's size and mtime. Blob records gain state DELETING (a collector's claim, cas/gc.py);
            `doomed` lists the records in that state instead of records already deleted. Migration on open: each
            upload record gets its partial file's size and mtime; a format-1 `doomed` entry (its record already
            gone) is finished by the next collection pass as a DELETING one whose record vanished.
    2 -> 3  Compression at rest (issue 18; cas/compaction.py, the stored form in cas/frames.py). Blob records gain
            their stored form (`form`: RAW or FRAMES_V1) and the size of the stored bytes (`stored`); `size` stays
            the original's. Tables `compaction` (blobs not yet assessed) and `superseded` (stored bytes of a form a
            record no longer uses, to remove) are new. Migration on open, in one transaction that may run twice:
            each record is rewritten with form RAW and stored = size, and each PRESENT one is queued in
            `compaction`. A format-2 record (33 bytes) also unpacks as RAW, so the rewrite is idempotent.

Directory
---------
    DATA/
      index/data.mdb, index/lock.mdb   the LMDB environment (all metadata; see tables below)
      blobs/<alg>/<hh>/<hex>            immutable blob files, named by digest; <hh> = first two hex characters
      blobs/<alg>/<hh>/<hex>.zf1        the same blob in stored form FRAMES_V1 (zstd frames + index, cas/frames.py):
                                        decompresses to the bytes named by <hex>; served when the record says so
      uploads/<session-id>              partial files of open upload sessions; flock()ed while written
      tmp/<random>                      files being ingested; flock()ed while in use, debris otherwise
      */.creating-<name>                a file between creation and lock (cas/files.py); debris after a minute
      trash/<alg>-<hex>[.zf1]           files GC took out of blobs/ and has yet to unlink (debris after a crash)
      quarantine/<name>                 files fsck moved aside (corrupt or stray); never read, never deleted by Berth
      gc.lock                           flock()ed by whoever runs a collection pass (the server's schedule, berth gc)

A blob file exists under blobs/ only after its bytes were verified against its name, fsynced and renamed into
place. The rename happens before the index commit that records the blob, outside any transaction: a file under
blobs/ without a record is a publish in flight or a crash's debris, and GC removes it only by the retire/decide/
purge protocol of cas/gc.py, which a publish in flight overrules. trash/ holds retired files: a reader that misses
a file in blobs/ for a stored record reads the trash/ copy.

Stored forms. The record's `form` names the file that holds a blob's bytes: `<hex>` (RAW) or `<hex>.zf1`
(FRAMES_V1). Only a compaction pass changes the form of a PRESENT record, holding the collection lock (gc.lock): it
writes and fsyncs `<hex>.zf1` first, then in one transaction switches the record and lists the raw file in
`superseded`, and unlinks the raw file after the commit. A crash leaves the record naming a complete file; the file
of the other form is debris, removed by the next compaction pass (listed in `superseded`, or found when the blob's
`compaction` entry is processed again) or, without a record, by GC's orphan sweep. A reader that opened the raw
file before the switch keeps a valid descriptor; one that read the record before the switch and finds the file
gone reads the record again.

Index tables (LMDB named databases; all keys and values are bytes)
------------------------------------------------------------------
    meta      b"format" -> b"3"; b"transfer" -> JSON {source, started} only while a transfer (cas/transfer.py,
              `berth move-up`) copies a store into this one
    blobs     digest key -> BlobRecord (struct "<BQQddBQ": state, size, refcount, zero_since, lease_until, form,
              stored); size is the original's, stored the size of the bytes kept in the record's form
    inline    digest key -> the blob's bytes, for blobs stored inside the index (state INLINE: small blobs such as
              manifests, written in the caller's transaction; no file under blobs/)
    refs      digest key + b"\\0" + holder -> b""        who holds a reference on a digest
    held      holder + b"\\0" + digest key -> b""        the same edges, by holder
    gcqueue   u64 big-endian (zero_since in µs) + digest key -> b""   blobs whose refcount reached zero
    doomed    digest key -> b""                         records in state DELETING (a collection in progress)
    compaction  digest key -> b""                       PRESENT blobs a compaction pass has yet to assess (queued
              when a record becomes PRESENT, dropped once assessed whatever the verdict)
    superseded  digest key + b"\0" + form (one byte) -> b""   stored bytes of a form the record no longer uses,
              to be removed by the next compaction pass (a crash between a switch's commit and its unlink)
    uploads   session id (ASCII) -> JSON UploadRecord {algorithm, created, meta, offset, updated, writer,
              lease_until, takeovers}: the running hash's algorithm, creation time, the caller's metadata, bytes
              accepted so far, last activity, and the writer lease on a store without a cross-process staging lock
              (see cas/uploads.py; the partial file may be longer than `offset` after a crash: cut back on resume)

A *digest key* is the canonical digest string in ASCII (`sha256:<64 hex>`). A *holder* is an opaque UTF-8 name
chosen by the layer above (e.g. `manifest:syn1/app@sha256:…`), without NUL, at most MAX_HOLDER_BYTES long.

Invariants
----------
- BlobRecord.refcount == number of `refs` keys with that digest prefix (fsck checks and repairs this).
- A blob with refcount 0 has a `gcqueue` entry whose time equals its `zero_since`; stale queue entries (the blob was
  referenced again, or re-queued later) are dropped by GC when it reaches them.
- state PRESENT has its bytes in a file under blobs/, the one of its record's form (`<hex>` for RAW, `<hex>.zf1`
  for FRAMES_V1; `stored` is that file's size, `size` the original's); state INLINE in the `inline` table, never
  also in a file, always RAW. Both count as stored: a blob is stored once, whichever way came first (a later file
  ingest of an inline blob's bytes is a dedup hit).
- A PRESENT record is RAW until a compaction pass switches it, and never switches back; a record that becomes
  PRESENT again (collected, or marked MISSING, then pushed again) starts RAW. A PRESENT RAW blob not yet assessed
  has a `compaction` entry.
- state MISSING marks a record whose file was lost or quarantined while holders still named it: it is never
  served, and the next ingest of the same bytes heals it with the references intact.
- state DELETING marks an unreferenced record a collector claimed (cas/gc.py): not served, not referenceable; a
  publish of the same bytes turns it back into PRESENT, and the collector then restores the file instead of
  deleting it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .digest import Digest
from .table_shape import TableShape, ValueStruct

FORMAT_VERSION = 3

# The shapes of the tables' keys and values (cas/table_shape.py): an index with columns (PostgreSQL) keeps each field
# in a column of its own; LMDB and memory use only the names.
TABLE_SHAPES = (
    TableShape("meta", "name:text", "text:value"),
    TableShape("blobs", "digest:text", ValueStruct("<BQQddBQ", (
        ("state", "smallint"), ("size", "bigint"), ("refcount", "bigint"), ("zero_since", "double precision"),
        ("lease_until", "double precision"), ("form", "smallint"), ("stored", "bigint")))),
    TableShape("inline", "digest:text", "bytes:data"),
    TableShape("refs", "digest:text \\0 holder:text", ""),
    TableShape("held", "holder:text \\0 digest:text", ""),
    TableShape("gcqueue", "zero_since_us:u64 digest:text", ""),
    TableShape("doomed", "digest:text", ""),
    TableShape("uploads", "session:text", "json:record"),
    TableShape("compaction", "digest:text", ""),
    TableShape("superseded", "digest:text \\0 form:u8", ""),
)
TABLES = tuple(shape.name for shape in TABLE_SHAPES)

# LMDB's compiled-in maximum key size is 511 bytes; a refs key is a sha512 digest key (135) + NUL + holder.
MAX_HOLDER_BYTES = 511 - 136 - 1

STATE_PRESENT = 1
STATE_MISSING = 2
STATE_INLINE = 3
STATE_DELETING = 4
STORED_STATES = (STATE_PRESENT, STATE_INLINE)

# Stored forms of a PRESENT blob's bytes (format 3): the original bytes as they were pushed, or zstd frames with an
# index (cas/frames.py, its own version 1). INLINE blobs are always RAW.
FORM_RAW = 0
FORM_FRAMES_V1 = 1
FORMS = (FORM_RAW, FORM_FRAMES_V1)
FORM_SUFFIX = {FORM_RAW: "", FORM_FRAMES_V1: ".zf1"}  # the file of a form: blobs/<alg>/<hh>/<hex><suffix>
FORM_NAMES = {FORM_RAW: "raw", FORM_FRAMES_V1: "frames-v1"}

_BLOB = struct.Struct("<BQQddBQ")
_BLOB_V2 = struct.Struct("<BQQdd")  # format 2: no form (RAW), stored size = size


@dataclass(frozen=True, slots=True)
class BlobRecord:
    state: int
    size: int  # the original bytes' (what HEAD and GET answer, what the digest names)
    refcount: int
    zero_since: float  # when refcount last became 0 (or the blob was first stored); meaningless while > 0
    lease_until: float  # a stat or dedup hit keeps a zero-reference blob alive until then
    form: int = FORM_RAW  # how the bytes are kept (format 3)
    stored: int = -1  # bytes kept in that form; -1 (only before packing): the same as size

    def pack(self) -> bytes:
        stored = self.size if self.stored < 0 else self.stored
        return _BLOB.pack(self.state, self.size, self.refcount, self.zero_since, self.lease_until, self.form, stored)

    @classmethod
    def unpack(cls, raw: bytes) -> BlobRecord:
        if len(raw) == _BLOB_V2.size:
            state, size, refcount, zero_since, lease_until = _BLOB_V2.unpack(raw)
            return cls(state, size, refcount, zero_since, lease_until, FORM_RAW, size)
        return cls(*_BLOB.unpack(raw))

    @property
    def stored_size(self) -> int:
        return self.size if self.stored < 0 else self.stored


@dataclass(frozen=True, slots=True)
class UploadRecord:
    algorithm: str  # the running hash's algorithm (finishing with another re-hashes the file once)
    created: float
    meta: dict[str, str] = field(default_factory=dict)  # opaque to cas: owner, repository, …
    offset: int = 0  # bytes accepted so far (format 2)
    updated: float = 0.0  # last activity, by the store's clock (format 2)
    # The writer lease of a store whose staging lock is per process (S3): who writes the session now, and until
    # when (cas/writer_leases.py). "" / 0: nobody. Older records lack both: nobody.
    writer: str = ""
    lease_until: float = 0.0
    takeovers: int = 0  # leases taken from a writer whose lease ran out: the finish then re-hashes what is stored

    def pack(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, raw: bytes) -> UploadRecord:
        return cls(**json.loads(raw))


def blob_path(root: Path, digest: Digest) -> Path:
    """The file of a published blob in a local data directory (cas/local_blobs.py)."""
    return root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex


def superseded_key(digest_key: bytes, form: int) -> bytes:
    return digest_key + b"\0" + bytes((form,))


def queue_key(zero_since: float, digest_key: bytes) -> bytes:
    return int(zero_since * 1_000_000).to_bytes(8, "big") + digest_key


def queue_key_time(key: bytes) -> float:
    return int.from_bytes(key[:8], "big") / 1_000_000


def split_form(name: str) -> tuple[str, int | None]:
    """A stored blob's name (a file's, an object's) without its form's suffix, and the form (None: a suffix no
    form has)."""
    stem, dot, suffix = name.partition(".")
    if not dot:
        return name, FORM_RAW
    for form, known in FORM_SUFFIX.items():
        if known and known == dot + suffix:
            return stem, form
    return name, None
