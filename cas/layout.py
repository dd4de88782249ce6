"""The on-disk format of a Berth data directory: the one place it is written down.

Format version 1. The version is stored in the index (`meta` table, key `format`) when a directory is created;
opening a directory written by another version raises IncompatibleStore rather than guessing.

Directory
---------
    DATA/
      index/data.mdb, index/lock.mdb   the LMDB environment (all metadata; see tables below)
      blobs/<alg>/<hh>/<hex>            immutable blob files, named by digest; <hh> = first two hex characters
      uploads/<session-id>              partial files of open upload sessions; flock()ed while written
      tmp/<random>                      files being ingested; flock()ed while in use, debris otherwise
      */.creating-<name>                a file between creation and lock (cas/files.py); debris after a minute
      trash/<alg>-<hex>                 files GC took out of blobs/ and has yet to unlink (debris after a crash)
      quarantine/<name>                 files fsck moved aside (corrupt or stray); never read, never deleted by Berth
      gc.lock                           flock()ed by whoever runs a collection pass (the server's schedule, berth gc)

A blob file exists under blobs/ only after its bytes were verified against its name, fsynced and renamed into
place; the rename and the index commit happen while the LMDB writer lock is held, so a file that is under blobs/
but has no index record while one holds that lock is debris from a crash (GC removes it).

Index tables (LMDB named databases; all keys and values are bytes)
------------------------------------------------------------------
    meta      b"format" -> b"1"
    blobs     digest key -> BlobRecord (struct "<BQQdd": state, size, refcount, zero_since, lease_until)
    inline    digest key -> the blob's bytes, for blobs stored inside the index (state INLINE: small blobs such as
              manifests, written in the caller's transaction; no file under blobs/)
    refs      digest key + b"\\0" + holder -> b""        who holds a reference on a digest
    held      holder + b"\\0" + digest key -> b""        the same edges, by holder
    gcqueue   u64 big-endian (zero_since in µs) + digest key -> b""   blobs whose refcount reached zero
    doomed    digest key -> b""                         records already removed, files still to unlink
    uploads   session id (ASCII) -> JSON UploadRecord (fixed at creation; progress is the partial file's size,
              idle time its mtime: see cas/uploads.py)

A *digest key* is the canonical digest string in ASCII (`sha256:<64 hex>`). A *holder* is an opaque UTF-8 name
chosen by the layer above (e.g. `manifest:syn1/app@sha256:…`), without NUL, at most MAX_HOLDER_BYTES long.

Invariants
----------
- BlobRecord.refcount == number of `refs` keys with that digest prefix (fsck checks and repairs this).
- A blob with refcount 0 has a `gcqueue` entry whose time equals its `zero_since`; stale queue entries (the blob was
  referenced again, or re-queued later) are dropped by GC when it reaches them.
- state PRESENT has its bytes in a file under blobs/; state INLINE in the `inline` table, never also in a file.
  Both count as stored: a blob is stored once, whichever way came first (a later file ingest of an inline blob's
  bytes is a dedup hit).
- state MISSING marks a record whose file was lost or quarantined while holders still named it: it is never
  served, and the next ingest of the same bytes heals it with the references intact.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .digest import Digest

FORMAT_VERSION = 1

TABLES = ("meta", "blobs", "inline", "refs", "held", "gcqueue", "doomed", "uploads")

# LMDB's compiled-in maximum key size is 511 bytes; a refs key is a sha512 digest key (135) + NUL + holder.
MAX_HOLDER_BYTES = 511 - 136 - 1

STATE_PRESENT = 1
STATE_MISSING = 2
STATE_INLINE = 3
STORED_STATES = (STATE_PRESENT, STATE_INLINE)

_BLOB = struct.Struct("<BQQdd")


@dataclass(frozen=True, slots=True)
class BlobRecord:
    state: int
    size: int
    refcount: int
    zero_since: float  # when refcount last became 0 (or the blob was first stored); meaningless while > 0
    lease_until: float  # a stat or dedup hit keeps a zero-reference blob alive until then

    def pack(self) -> bytes:
        return _BLOB.pack(self.state, self.size, self.refcount, self.zero_since, self.lease_until)

    @classmethod
    def unpack(cls, raw: bytes) -> BlobRecord:
        return cls(*_BLOB.unpack(raw))


@dataclass(frozen=True, slots=True)
class UploadRecord:
    algorithm: str  # the running hash's algorithm (finishing with another re-hashes the file once)
    created: float
    meta: dict[str, str] = field(default_factory=dict)  # opaque to cas: owner, repository, …

    def pack(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, raw: bytes) -> UploadRecord:
        return cls(**json.loads(raw))


def blob_path(root: Path, digest: Digest) -> Path:
    return root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex


def queue_key(zero_since: float, digest_key: bytes) -> bytes:
    return int(zero_since * 1_000_000).to_bytes(8, "big") + digest_key


def queue_key_time(key: bytes) -> float:
    return int.from_bytes(key[:8], "big") / 1_000_000
