"""The bytes of blobs: the second half of the store's seam (the first is the index, cas/index.py).

A BlobBytes keeps bytes by digest and knows nothing of records, references or time: BlobStore decides, in the
index, what is stored; BlobBytes only holds bytes and moves them when told. `cas/local_blobs.py` keeps them in files
of a data directory (the embedded default), `cas/memory_blobs.py` in this process's memory.

Life of a blob's bytes:
    stage()/create_upload() -> Staged   written while hashed (Staged.writer), held by one writer at a time
    direct(digest) -> Staged            optional: bytes whose digest is named in advance, written straight to
                                        the blob's place (a multipart upload onto its object, completed only by
                                        publish, aborted by discard: wrong bytes never appear there)
    publish(staged, digest)             the staged bytes become the blob's; durable when it returns
    ensure(staged, digest)              after the record's commit: the bytes are under the digest (see below)
    open(digest, ...) / local_path()    read a range; a local file for sendfile, when there is one
    publish_form / drop_form            a compaction pass adds the compressed form, then drops the raw one
    retire / restore / purge            the collector's three steps (cas/gc.py has the protocol and its proof)
    quarantine                          move damaged bytes aside, never to be served or deleted by Berth

Nothing here runs inside an index write transaction: those may be replayed, and a rename may not (cas/index.py).
So the order of a byte move and a record change is the protocol's business, written down in cas/gc.py: a publish
moves the bytes first and commits the record second, then calls `ensure`; a collector commits a state first,
moves the bytes second, and decides their fate in a second commit.

Stored forms (cas/layout.py). A blob's bytes may be kept as they are (FORM_RAW) or in another form (FORM_FRAMES_V1:
zstd frames, cas/frames.py); the record says which, and callers pass it. A keeper stores each form under its own
name and knows nothing of compression: `open` hands the stored bytes to cas/stored_forms.py, which serves the
original bytes. The collector's steps (retire, restore, purge) take every form of a digest at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from .digest import Digest, Hasher
from .layout import FORM_RAW
from .reader import BlobReader


class ChunkWriter(Protocol):
    """Writes chunks while hashing them (cas/writer.py's HashingWriter for files)."""

    size: int

    def write(self, chunk: bytes | bytearray | memoryview) -> None: ...

    def finish(self, fsync: bool = True) -> str:
        """Wait until every chunk is written and hashed (durable with `fsync`); the hex digest."""
        ...

    def abort(self) -> None: ...


class Staged(ABC):
    """Bytes being written: an ingest's, or an upload session's between and during its requests. Held by one
    writer at a time (a file under flock, a buffer under a lock) from stage/create/resume until release/discard."""

    name: str
    consumed: bool  # a publish moved the bytes into the blob: the staging is gone (its holder still reads them)

    @abstractmethod
    def size(self) -> int:
        """How many bytes are staged (for an upload, possibly more than its record's offset after a crash)."""

    @abstractmethod
    def writer(self, hasher: Hasher, offset: int, expected_size: int | None = None) -> ChunkWriter:
        """A writer that writes from `offset` on while feeding `hasher` (bytes past what it writes are left: a
        caller resuming after a crash truncates first)."""

    @abstractmethod
    def truncate(self, size: int) -> None: ...

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset` (fewer at the end): to re-hash what an earlier process wrote."""

    @abstractmethod
    def sync(self) -> None:
        """Make the staged bytes durable (before publishing them)."""

    @abstractmethod
    def release(self) -> None:
        """Let go of the bytes and keep them (an upload session between two requests)."""

    @abstractmethod
    def discard(self) -> None:
        """Remove the bytes (if still staged: a publish may have taken them) and let go."""

    def abandon(self) -> None:
        """Let go without writing anything more: another writer took the staging over (a writer lease that ran
        out, cas/writer_leases.py). Only keepers with a per-process staging lock lose one; the others just release."""
        self.release()


class BlobBytes(ABC):
    # The smallest chunk of an upload this keeper stores without rewriting anything (OCI-Chunk-Min-Length; smaller
    # chunks are accepted all the same). Files take any size: 1 MiB keeps the per-request cost negligible.
    chunk_min: int = 1 << 20
    # Whether the staging lock is this process's only (S3: no flock across nodes): the upload record then carries a
    # writer lease, taken and released in index transactions (cas/writer_leases.py).
    local_staging_lock: bool = False
    # Whether `direct` writes a monolithic upload straight to the blob's place (an object store: no staging
    # segments to copy afterwards). Files have no need: a staged file is renamed into place for free.
    writes_direct: bool = False

    # -- staging ------------------------------------------------------------------------------------------------
    @abstractmethod
    def stage(self) -> Staged:
        """Fresh anonymous staging for an ingest."""

    @abstractmethod
    def create_upload(self, session_id: str) -> Staged:
        """Fresh staging named for an upload session, held by the caller."""

    @abstractmethod
    def resume_upload(self, session_id: str) -> Staged | None:
        """The session's staged bytes, held by the caller; None if there are none; UploadBusy if held."""

    def direct(self, digest: Digest) -> Staged:
        """Optional capability (`writes_direct`): a staging written once, from its start, straight to the place of
        the blob `digest`: `publish` (after the caller verified the digest) makes it the blob's, `discard` leaves
        nothing. It cannot be read, cut back or resumed. `ensure` raises StagingGone when a collector took the
        bytes before the record committed and no retired copy is left (cas/gc.py)."""
        raise NotImplementedError(f"{type(self).__name__} writes through staging only")

    @abstractmethod
    def sweep_staged(self, has_session: Callable[[str], bool]) -> int:
        """Remove staging nobody holds: an ingest's a crash left, and an upload's whose session is gone. Returns
        how many were removed."""

    # -- publishing ---------------------------------------------------------------------------------------------
    @abstractmethod
    def publish(self, staged: Staged, digest: Digest) -> bool:
        """Make the (synced, verified) staged bytes the blob `digest`, durably: True if they were moved there (the
        staging is consumed), False if the blob's bytes were there already (the staging stays). The bytes of a
        digest are the same whoever publishes them."""

    @abstractmethod
    def ensure(self, staged: Staged, digest: Digest) -> None:
        """Called after the record that says "stored" committed, with the staging still held: if a collector
        retired or purged the bytes between `publish` and that commit, put them back (cas/gc.py)."""

    # -- reading ------------------------------------------------------------------------------------------------
    @abstractmethod
    def open(self, digest: Digest, size: int, offset: int = 0, length: int | None = None, *,
             form: int = FORM_RAW, stored_size: int | None = None) -> BlobReader:
        """A reader over a range of the original bytes of a stored blob of `size` bytes, kept in `form` (of
        `stored_size` bytes, from the record: a keeper without files reads a stored form's trailer by it, where
        files and buffers know their own size); BlobUnknown if its bytes are not here in that form (a reader racing
        a collector's retire-and-restore is served from the retired copy). cas/stored_forms.open_form turns the
        stored bytes (a descriptor, a buffer, a ranged read) into the reader."""

    def local_path(self, digest: Digest) -> Path | None:
        """Optional capability: a local file holding the blob's raw form, for sendfile (opening it may still fail
        if the blob is collected or compacted meanwhile: fall back to `open`). None when the bytes are not in
        local files. The store asks only for blobs whose record says RAW."""
        return None

    def redirect_url(self, digest: Digest, expires: float = 600.0) -> str | None:
        """Optional capability: a URL a client may fetch the blob from directly for `expires` seconds (a presigned
        S3 URL, for a 307 instead of streaming). None when the keeper has no such URL."""
        return None

    @abstractmethod
    def contains(self, digest: Digest, form: int = FORM_RAW) -> bool:
        """Whether the blob's bytes are here in `form` (published and not retired)."""

    # -- stored forms -------------------------------------------------------------------------------------------
    @abstractmethod
    def publish_form(self, staged: Staged, digest: Digest, form: int) -> None:
        """Make the (synced) staged bytes the blob's stored form `form` (not RAW), durably, replacing a copy a
        crashed pass may have left. The caller then switches the record, and only after that commit drops the
        form it replaced (cas/compaction.py)."""

    @abstractmethod
    def drop_form(self, digest: Digest, form: int) -> None:
        """Delete the blob's bytes in `form` (nothing if there are none). A reader that opened them keeps them."""

    # -- collecting ---------------------------------------------------------------------------------------------
    @abstractmethod
    def retire(self, digest: Digest) -> bool:
        """Take the bytes out of service, reversibly (a file moves to trash/). False if they were not here."""

    @abstractmethod
    def restore(self, digest: Digest) -> None:
        """Undo `retire`: put the retired copy back unless the blob is here already; drop the retired copy."""

    @abstractmethod
    def purge(self, digest: Digest) -> None:
        """Delete the retired copy for good (nothing if there is none)."""

    @abstractmethod
    def retired(self) -> Iterator[Digest]:
        """Digests with a retired copy (a collection pass that crashed before its last step)."""

    @abstractmethod
    def stored(self) -> Iterator[tuple[Digest | None, int, str]]:
        """Every stored entry with its digest (None for an entry whose name is not a blob's: stray) and form; the
        string names the entry's location for reports, `hash` and `quarantine`."""

    @abstractmethod
    def hash(self, location: str, algorithm: str) -> tuple[str, int]:
        """Re-hash the original bytes of a stored entry, whatever its form: (hex digest, original size); a
        stored form that cannot be decoded gives "" (cas/stored_forms.py). FileNotFoundError if the entry has
        gone since it was listed."""

    @abstractmethod
    def quarantine(self, location: str, label: str) -> str:
        """Move a stored entry aside (never served, never deleted); where it went."""

    @abstractmethod
    def quarantine_bytes(self, data: bytes, label: str) -> str:
        """Keep bytes found damaged elsewhere (an inline blob's) aside; where they went."""

    def debris(self) -> int:
        """How many leftovers (staging, retired copies) are waiting for a collection pass."""
        return 0

    @abstractmethod
    def check_writable(self) -> None:
        """Raise OSError if new bytes cannot be stored right now (readiness probes)."""

    def close(self) -> None:  # noqa: B027 - most keepers of bytes hold nothing to release
        """Release what the keeper holds open."""
