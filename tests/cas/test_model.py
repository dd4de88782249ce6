"""The blob store against a model: a few dicts and sets that say what every operation must do.

A hypothesis state machine drives a real `BlobStore` and `Model` side by side, through the store's public interface
only; it runs against both stores (`BlobStore.on_disk`: LMDB index and files; `BlobStore.in_memory`), which is what
makes it the conformance suite of the seam (cas/index.py, cas/blobs.py). Every rule runs one operation on both and
compares results and errors; after every step the invariants compare what the interface shows: every digest's
retention (explain), reference edges by digest and by holder, upload sessions, the caller's own table written by the
publish hook, and an fsck pass. For the LMDB store a second layer compares the tables and files themselves.

The model follows the rules written in the engine's docstrings (layout.py, refs.py, gc.py, uploads.py, store.py):
- a blob is stored with zero_since = now; zero_since is reset when its last reference is dropped;
- stat() (and open/path/read_bytes, which call it) of an unreferenced blob extends its lease to now + lease when
  less than lease/2 of it is left; a dedup hit of ingest is such a stat; a dedup hit of an upload's finish extends
  the lease unconditionally (`publish`);
- an ingest that names a stored digest in advance leases it before reading the bytes (store._ingest_known), so the
  lease stays even when the bytes turn out wrong or the source fails; likewise open() renews before it refuses a
  range (both are side effects of calls that raise: see errors.py);
- GC collects a blob iff it is unreferenced, zero_since + grace <= now and lease_until <= now;
- an upload session is expired when updated + upload_ttl <= now; `updated` moves only when bytes are accepted;
- ingest_inline (in the caller's transaction, as every manifest is) stores new bytes inline and renews nothing
  when they are stored already; a finish runs the caller's hook (`also`) in its publishing transaction: the hook's
  writes commit with the blob, and a hook that fails leaves neither: but the published file, debris that fsck
  reports as unindexed and GC's orphan sweep removes (also the file a finish publishes beside an INLINE record),
  and the session, which ends if its bytes were moved into that file and stays where it was otherwise.
"""

from __future__ import annotations

import copy
import io
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cas import (
    ALGORITHMS,
    BlobInfo,
    BlobStore,
    BlobUnknown,
    CasError,
    Digest,
    DigestMismatch,
    InvalidHolder,
    InvalidRange,
    OffsetMismatch,
    SizeMismatch,
    StoreConfig,
    UploadStatus,
    UploadUnknown,
    check,
)
from cas.index import WriteTransaction
from cas.layout import MAX_HOLDER_BYTES, STATE_INLINE, STATE_PRESENT, BlobRecord, queue_key
from cas.writer import PIPELINE_THRESHOLD

CONFIG = StoreConfig(grace=100.0, lease=30.0, upload_ttl=500.0)
START = 1_000_000.0  # whole seconds only: the GC queue keys time in µs, so fractions would round (see layout.py)

# A small pool so that dedup hits, prefixes of one another (an upload's partial content equals a stored blob) and
# the empty blob come up often; one blob is past writer.PIPELINE_THRESHOLD, so the threaded writer runs too.
_BASE = random.Random(2024).randbytes(3000)
BIG = random.Random(11).randbytes(PIPELINE_THRESHOLD + 4096)
POOL = (b"", b"a", _BASE[:100], _BASE[:1000], _BASE[:2048], _BASE, random.Random(7).randbytes(1500), BIG)
LINKS = "model_links"  # the caller's own table, written by the publish hook


def pool(extra: tuple[bytes, ...] = ()) -> st.SearchStrategy[bytes]:
    """A pool entry, drawn by index: hypothesis describes a sampled_from by its elements, a MiB each time."""
    entries = POOL + extra
    return st.integers(0, len(entries) - 1).map(entries.__getitem__)
NEVER_STORED = b"cas model: bytes no rule ever ingests"  # longer than any st.binary below
UNKNOWN_SESSION = "0123456789abcdef0123456789abcdef"  # well-formed, never created
HOLDERS = ("manifest:syn1/app@sha256:00", "tag", "tag:latest", "höld€r", "a b")

algorithms = st.sampled_from(ALGORITHMS)
blob_bytes = st.one_of(pool(), pool(), st.binary(max_size=16))
cut_points = st.lists(st.integers(0, 3000), max_size=4)
# Mostly valid holders; now and then the empty name, which take/drop refuse (InvalidHolder) and so abort the txn.
holders = st.sampled_from(HOLDERS * 8 + ("",))
unknown_digests = algorithms.map(lambda alg: Digest.of(NEVER_STORED, alg))
# Exactly the configured periods (the boundaries are inclusive), or a little time; sessions must live long enough
# to be finished, so a jump past upload_ttl is rare.
clock_steps = st.one_of(
    st.sampled_from([0.0, 1.0, CONFIG.lease / 2, CONFIG.lease, CONFIG.grace, CONFIG.upload_ttl]),
    st.integers(0, 200).map(float),
)


class Interrupted(Exception):
    """Raised by a source mid-stream: a client that hung up."""


class Rollback(Exception):
    """Raised by a caller inside its own write transaction to abort it."""


class HookFailed(Exception):
    """Raised by a caller's publish hook (`also`): the publishing transaction aborts."""


@dataclass(frozen=True, slots=True)
class Raised:
    error: type[BaseException]


def attempt(action: Callable[[], Any]) -> Any:
    """The result of `action`, or Raised(type) for an engine error: the two sides compare with ==."""
    try:
        return action()
    except (CasError, Interrupted, HookFailed) as exc:
        return Raised(type(exc))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def source_of(kind: str, chunks: list[bytes]) -> Any:
    data = b"".join(chunks)
    if kind == "bytes":
        return data
    if kind == "file":
        return io.BytesIO(data)
    return (chunk for chunk in chunks)


def failing(chunks: list[bytes]) -> Iterator[bytes]:
    yield from chunks
    raise Interrupted


class FailingFile(io.RawIOBase):
    """A file object whose read() fails once `data` is used up (a network stream that broke)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, n: int = -1) -> bytes:
        if not self._data:
            raise Interrupted
        n = len(self._data) if n < 0 else n
        out, self._data = self._data[:n], self._data[n:]
        return out


# -- the model ----------------------------------------------------------------------------------------------------
@dataclass
class Blob:
    data: bytes
    zero_since: float
    lease_until: float = 0.0
    inline: bool = False


@dataclass
class Session:
    algorithm: str
    data: bytes
    created: float
    updated: float
    meta: dict[str, str] = field(default_factory=dict)


class Model:
    def __init__(self, config: StoreConfig, now: float) -> None:
        self.config = config
        self.now = now
        self.blobs: dict[Digest, Blob] = {}
        self.edges: set[tuple[str, Digest]] = set()
        self.sessions: dict[str, Session] = {}
        self.ended: set[str] = set()  # finished, cancelled or expired: UploadUnknown from now on
        self.links: set[Digest] = set()  # keys the publish hook wrote in the caller's table
        self.orphans: set[Digest] = set()  # published bytes without a file record (module docstring): GC debris

    def snapshot(self) -> tuple[dict[Digest, Blob], set[tuple[str, Digest]]]:
        return copy.deepcopy(self.blobs), set(self.edges)

    def restore(self, saved: tuple[dict[Digest, Blob], set[tuple[str, Digest]]]) -> None:
        self.blobs, self.edges = saved

    # -- blobs --------------------------------------------------------------------------------------------------
    def refcount(self, digest: Digest) -> int:
        return sum(1 for _, d in self.edges if d == digest)

    def holders(self, digest: Digest) -> tuple[str, ...]:
        return tuple(sorted((h for h, d in self.edges if d == digest), key=lambda h: h.encode()))

    def stat(self, digest: Digest) -> BlobInfo:
        blob = self.blobs.get(digest)
        if blob is None:
            raise BlobUnknown(str(digest))
        if self.refcount(digest) == 0 and blob.lease_until < self.now + self.config.lease / 2:
            blob.lease_until = max(blob.lease_until, self.now + self.config.lease)
        return BlobInfo(digest, len(blob.data), blob.inline)

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> bytes:
        size = self.stat(digest).size  # the lease is renewed even when the range is refused
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise InvalidRange(f"{offset}+{length} of {size}")
        return self.blobs[digest].data[offset:offset + length]

    def ingest(self, data: bytes, expected: Digest | None, algorithm: str, size: int | None,
               interrupted: bool = False) -> BlobInfo:
        if expected is not None:
            algorithm = expected.algorithm
            if expected in self.blobs:
                # store._ingest_known: the lease is taken *before* the bytes are read (so GC cannot take the blob
                # while they are hashed), and it stays when they turn out wrong. See the report on errors.py's
                # "an operation that raises leaves the store as it was".
                self.stat(expected)
                if interrupted:
                    raise Interrupted
                self._verify(expected, Digest.of(data, algorithm), size, len(data))
                self.stat(expected)
                return BlobInfo(expected, len(data))
        if interrupted:
            raise Interrupted
        actual = Digest.of(data, algorithm)
        self._verify(expected, actual, size, len(data))
        if actual in self.blobs:
            self.stat(actual)
            return BlobInfo(actual, len(data))
        return self._store_new(actual, data)

    def _store_new(self, digest: Digest, data: bytes) -> BlobInfo:
        self.blobs[digest] = Blob(data, zero_since=self.now)
        self.orphans.discard(digest)  # a file left by a failed publish is adopted: the same bytes
        return BlobInfo(digest, len(data))

    def ingest_inline(self, data: bytes, algorithm: str) -> BlobInfo:
        digest = Digest.of(data, algorithm)
        blob = self.blobs.get(digest)
        if blob is not None:  # stored either way: nothing is stored again, nothing renewed
            return BlobInfo(digest, len(data), blob.inline)
        self.blobs[digest] = Blob(data, zero_since=self.now, inline=True)
        return BlobInfo(digest, len(data), True)

    @staticmethod
    def _verify(expected: Digest | None, actual: Digest, size: int | None, actual_size: int) -> None:
        if size is not None and size != actual_size:
            raise SizeMismatch(size, actual_size)
        if expected is not None and expected != actual:
            raise DigestMismatch(str(expected), str(actual))

    # -- references ---------------------------------------------------------------------------------------------
    @staticmethod
    def _check_holder(holder: str) -> None:
        raw = holder.encode()
        if not raw or len(raw) > MAX_HOLDER_BYTES or b"\0" in raw:
            raise InvalidHolder(holder)

    def take(self, holder: str, digest: Digest) -> bool:
        self._check_holder(holder)
        if digest not in self.blobs:
            raise BlobUnknown(str(digest))
        if (holder, digest) in self.edges:
            return False
        self.edges.add((holder, digest))
        return True

    def drop(self, holder: str, digest: Digest) -> bool:
        self._check_holder(holder)
        if (holder, digest) not in self.edges:
            return False
        self.edges.remove((holder, digest))
        if self.refcount(digest) == 0:
            self.blobs[digest].zero_since = self.now
        return True

    def drop_all(self, holder: str) -> int:
        self._check_holder(holder)
        held = [d for h, d in self.edges if h == holder]
        for digest in held:
            self.drop(holder, digest)
        return len(held)

    # -- garbage collection -------------------------------------------------------------------------------------
    def _past_grace(self, digest: Digest) -> bool:
        return self.refcount(digest) == 0 and self.blobs[digest].zero_since + self.config.grace <= self.now

    def collectable(self) -> list[tuple[Digest, int]]:
        return sorted((d, len(b.data)) for d, b in self.blobs.items()
                      if self._past_grace(d) and b.lease_until <= self.now)

    def leased(self) -> int:
        return sum(1 for d, b in self.blobs.items() if self._past_grace(d) and b.lease_until > self.now)

    def waiting(self) -> tuple[int, int, float | None, float | None]:
        """Unreferenced blobs still in their grace period: how many, their bytes, the first and last due time."""
        young = [(len(b.data), max(b.zero_since + self.config.grace, b.lease_until)) for d, b in self.blobs.items()
                 if self.refcount(d) == 0 and not self._past_grace(d)]
        dues = [due for _, due in young]
        return len(young), sum(size for size, _ in young), min(dues, default=None), max(dues, default=None)

    def gc(self, dry_run: bool) -> tuple[list[tuple[Digest, int]], int, int]:
        collected, leased = self.collectable(), self.leased()
        if dry_run:
            return collected, leased, 0
        for digest, _ in collected:
            del self.blobs[digest]
        return collected, leased, self.expire()

    def sweep(self) -> int:
        """GC's orphan sweep: every published file without a file record goes."""
        swept = len(self.orphans)
        self.orphans.clear()
        return swept

    def deadlines(self) -> list[float]:
        """Future moments at which a rule's outcome flips: a blob's grace or lease ends, a stat starts to renew,
        a session becomes idle for too long."""
        moments = {s.updated + self.config.upload_ttl for s in self.sessions.values()}
        for digest, blob in self.blobs.items():
            if self.refcount(digest) == 0:
                moments |= {blob.zero_since + self.config.grace, blob.lease_until,
                            blob.lease_until - self.config.lease / 2}
        return sorted(t for t in moments if t > self.now)

    def explain(self, digest: Digest) -> tuple[bool, int, tuple[str, ...], int, float | None]:
        blob = self.blobs.get(digest)
        if blob is None:
            return False, 0, (), 0, None
        count = self.refcount(digest)
        at = None if count else max(blob.zero_since + self.config.grace, blob.lease_until)
        return True, len(blob.data), self.holders(digest), count, at

    # -- uploads ------------------------------------------------------------------------------------------------
    def create(self, session_id: str, algorithm: str, meta: dict[str, str]) -> UploadStatus:
        self.sessions[session_id] = Session(algorithm, b"", self.now, self.now, dict(meta))
        return self.status(session_id)

    def status(self, session_id: str) -> UploadStatus:
        s = self._session(session_id)
        return UploadStatus(session_id, len(s.data), s.created, s.updated, dict(s.meta))

    def _session(self, session_id: str) -> Session:
        if session_id not in self.sessions:
            raise UploadUnknown(session_id)
        return self.sessions[session_id]

    def _end(self, session_id: str) -> None:
        del self.sessions[session_id]
        self.ended.add(session_id)

    def append(self, session_id: str, chunk: bytes, offset: int | None, length: int | None,
               interrupted: bool = False) -> UploadStatus:
        s = self._session(session_id)
        if offset is not None and offset != len(s.data):
            raise OffsetMismatch(session_id, len(s.data), offset)
        if interrupted:
            raise Interrupted  # the bytes before the failure are cut off: the offset stays
        if length is not None and length != len(chunk):
            raise SizeMismatch(length, len(chunk))
        if chunk:
            s.data += chunk
            s.updated = self.now
        return self.status(session_id)

    def finish(self, session_id: str, expected: Digest, chunk: bytes, offset: int | None,
               interrupted: bool = False, hook: str = "none") -> BlobInfo:
        session = self._session(session_id)
        before = (session.data, session.updated)
        self.append(session_id, chunk, offset, None, interrupted)
        data = session.data
        if Digest.of(data, expected.algorithm) != expected:
            self._end(session_id)  # the bytes are not what the client said they are
            raise DigestMismatch(str(expected), "")
        blob = self.blobs.get(expected)
        # The bytes move before the transaction (and stay if it aborts), unless the digest's file is there already.
        moved = (blob is None or blob.inline) and expected not in self.orphans
        if moved:
            self.orphans.add(expected)
        if hook == "fail":  # the publishing transaction aborts
            if moved:
                self._end(session_id)  # its bytes are gone to the blob: the session cannot go on
            else:
                session.data, session.updated = before  # where its record says
            raise HookFailed
        self._end(session_id)
        if hook == "link":
            self.links.add(expected)
        if blob is None:
            return self._store_new(expected, data)
        if self.refcount(expected) == 0:  # store.publish: a dedup hit leases unconditionally
            blob.lease_until = max(blob.lease_until, self.now + self.config.lease)
        return BlobInfo(expected, len(data))

    def cancel(self, session_id: str) -> None:
        self._session(session_id)
        self._end(session_id)

    def expire(self) -> int:
        idle = [i for i, s in self.sessions.items() if s.updated + self.config.upload_ttl <= self.now]
        for session_id in idle:
            self._end(session_id)
        return len(idle)


# -- the state machine --------------------------------------------------------------------------------------------
live_session = precondition(lambda self: bool(self.model.sessions))


class BlobStoreMachine(RuleBasedStateMachine):
    """Black-box: the public interface of BlobStore only. Subclasses say which store."""

    digests = Bundle("digests")  # everything ever stored: later collected ones too
    sessions = Bundle("sessions")  # every session ever created: later finished, cancelled, expired ones too
    any_digest = st.one_of(digests, digests, digests, unknown_digests)

    def __init__(self) -> None:
        super().__init__()
        self.model = Model(CONFIG, START)
        self.contents: dict[Digest, bytes] = {}  # every digest ever stored, with its bytes
        self.targets: dict[str, bytes] = {}  # what each session is uploading (the model only sees bytes)
        self.store = self._open()

    def _open(self) -> BlobStore:
        raise NotImplementedError

    def _prepared(self, store: BlobStore) -> BlobStore:
        store.index.declare([LINKS])  # the caller's own table, as registry_core declares its tables
        self.links = store.index.table(LINKS)
        return store

    def teardown(self) -> None:
        self.store.close()

    def agree(self, model_action: Callable[[], Any], store_action: Callable[[], Any]) -> Any:
        want = attempt(model_action)
        got = attempt(store_action)
        assert got == want
        return got

    def _stored(self, result: Any) -> Any:
        """A rule's answer to the digests bundle: the digest a successful ingest or finish stored, else nothing."""
        if not isinstance(result, BlobInfo):
            return multiple()
        self.contents[result.digest] = self.model.blobs[result.digest].data
        return result.digest

    def _read(self, digest: Digest, offset: int = 0, length: int | None = None) -> bytes:
        with self.store.open(digest, offset, length) as reader:
            assert (reader.offset, reader.size) == (offset, len(self.contents[digest]))
            return reader.read()

    # -- a start with something in it, so that early steps have blobs and a session to work on ---------------------
    @initialize(target=digests, blobs=st.lists(pool(), min_size=1, max_size=3, unique=True),
                algorithm=algorithms)
    def ingest_some(self, blobs: list[bytes], algorithm: str) -> Any:
        stored = []
        for data in blobs:
            info = self.store.ingest(data, algorithm=algorithm)
            assert info == self.model.ingest(data, None, algorithm, None)
            stored.append(self._stored(info))
        return multiple(*stored)

    @initialize(target=sessions, algorithm=algorithms, target_bytes=pool())
    def create_first_session(self, algorithm: str, target_bytes: bytes) -> str:
        return self._create_session(algorithm, target_bytes, {})

    # -- ingest -------------------------------------------------------------------------------------------------
    def _expected(self, data: bytes, algorithm: str, expect: str, other: bytes, other_alg: str) -> Digest | None:
        if expect == "none":
            return None
        if expect == "right":
            return Digest.of(data, algorithm)
        return Digest.of(other, other_alg)  # wrong unless other == data: the model decides which

    @staticmethod
    def _size(data: bytes, size: str) -> int | None:
        return {"none": None, "right": len(data), "wrong": len(data) + 1 if not data else len(data) - 1}[size]

    @rule(target=digests, data=blob_bytes, algorithm=algorithms,
          expect=st.sampled_from(["none", "right", "wrong"]), other=pool((NEVER_STORED,)),
          other_alg=algorithms, size=st.sampled_from(["none", "none", "right", "wrong"]),
          source=st.sampled_from(["bytes", "file", "chunks"]), cuts=cut_points)
    def ingest(self, data: bytes, algorithm: str, expect: str, other: bytes, other_alg: str, size: str,
               source: str, cuts: list[int]) -> Any:
        expected = self._expected(data, algorithm, expect, other, other_alg)
        declared = self._size(data, size)
        return self._stored(self.agree(
            lambda: self.model.ingest(data, expected, algorithm, declared),
            lambda: self.store.ingest(source_of(source, split(data, cuts)), expected, algorithm=algorithm,
                                      size=declared)))

    @rule(data=blob_bytes, algorithm=algorithms, expect=st.sampled_from(["none", "right", "wrong"]),
          other=pool(), other_alg=algorithms, as_file=st.booleans(), cuts=cut_points,
          keep=st.integers(0, 4))
    def ingest_interrupted(self, data: bytes, algorithm: str, expect: str, other: bytes, other_alg: str,
                           as_file: bool, cuts: list[int], keep: int) -> None:
        """A source that fails mid-stream: the exception reaches the caller; no blob, no temp file is left."""
        expected = self._expected(data, algorithm, expect, other, other_alg)
        sent = b"".join(split(data, cuts)[:keep])
        self.agree(lambda: self.model.ingest(data, expected, algorithm, None, interrupted=True),
                   lambda: self.store.ingest(FailingFile(sent) if as_file else failing([sent]), expected,
                                             algorithm=algorithm))

    # -- reading ------------------------------------------------------------------------------------------------
    @rule(digest=any_digest, how=st.sampled_from(["stat", "read_bytes", "path", "contains"]))
    def read(self, digest: Digest, how: str) -> None:
        model, store = self.model, self.store
        if how == "stat":
            self.agree(lambda: model.stat(digest), lambda: store.stat(digest))
        elif how == "read_bytes":
            self.agree(lambda: model.read(digest), lambda: store.read_bytes(digest))
        elif how == "path":  # what the HTTP adapter does: a local file when the store has one, else a stream
            def via_path() -> bytes:
                info = store.stat(digest)
                path = None if info.inline else store.local_path(info.digest)
                return path.read_bytes() if path is not None else store.read_bytes(digest)
            self.agree(lambda: model.read(digest), via_path)
        else:
            assert store.contains(digest) == (digest in model.blobs)  # and renews nothing (invariants)

    @rule(digest=any_digest, data=st.data())
    def read_range(self, digest: Digest, data: st.DataObject) -> None:
        size = len(self.model.blobs[digest].data) if digest in self.model.blobs else 0
        offset = data.draw(st.integers(-1, size + 1), label="offset")
        length = data.draw(st.none() | st.integers(-1, size + 1), label="length")
        self.agree(lambda: self.model.read(digest, offset, length), lambda: self._read(digest, offset, length))

    @rule(target=digests, data=blob_bytes, algorithm=algorithms, holder=st.none() | holders,
          rollback=st.sampled_from([False, False, False, True]))
    def ingest_inline(self, data: bytes, algorithm: str, holder: str | None, rollback: bool) -> Any:
        """As a manifest PUT: stored inline in the caller's transaction, referenced there too (or not), and gone
        with it when the caller aborts."""
        saved = self.model.snapshot()
        result: Any = multiple()
        try:
            with self.store.index.write() as txn:
                info = self.agree(lambda: self.model.ingest_inline(data, algorithm),
                                  lambda: self.store.ingest_inline(txn, data, algorithm))
                if holder is not None:
                    taken = self.agree(lambda: self.model.take(holder, info.digest),
                                       lambda: self.store.refs.take(txn, holder, info.digest))
                    if isinstance(taken, Raised):
                        raise Rollback
                if rollback:
                    raise Rollback
                result = info
        except Rollback:
            self.model.restore(saved)
            return multiple()
        return self._stored(result)

    # -- references ---------------------------------------------------------------------------------------------
    @rule(data=st.data(), count=st.integers(1, 4), rollback=st.sampled_from([False, False, False, True]))
    def references(self, data: st.DataObject, count: int, rollback: bool) -> None:
        """Takes and drops in one of the caller's write transactions; an error or a Rollback aborts all of it."""
        saved = self.model.snapshot()
        try:
            with self.store.index.write() as txn:
                for _ in range(count):
                    # "again": an edge that exists (taking it is no new reference; dropping it is one less)
                    op, again = data.draw(st.sampled_from([("take", False), ("take", False), ("drop", False),
                                                           ("take", True), ("drop", True)]), label="op")
                    if again and self.model.edges:
                        holder, digest = data.draw(st.sampled_from(sorted(self.model.edges)), label="edge")
                    else:
                        holder, digest = data.draw(holders, label="holder"), data.draw(self.any_digest)
                    model_op = self.model.take if op == "take" else self.model.drop
                    store_op = self.store.refs.take if op == "take" else self.store.refs.drop
                    result = self.agree(lambda: model_op(holder, digest),  # noqa: B023 - called at once
                                        lambda: store_op(txn, holder, digest))  # noqa: B023
                    if isinstance(result, Raised):
                        raise Rollback
                if rollback:
                    raise Rollback
        except Rollback:
            self.model.restore(saved)

    @rule(data=st.data(), any_holder=st.booleans())
    def drop_all(self, data: st.DataObject, any_holder: bool) -> None:
        held = sorted({h for h, _ in self.model.edges})
        holder = data.draw(holders if any_holder or not held else st.sampled_from(held), label="holder")

        def in_txn() -> int:
            with self.store.index.write() as txn:
                return self.store.refs.drop_all(txn, holder)
        self.agree(lambda: self.model.drop_all(holder), in_txn)

    # -- uploads ------------------------------------------------------------------------------------------------
    @rule(target=sessions, algorithm=algorithms, target_bytes=pool(),
          meta=st.sampled_from([{}, {"owner": "alice", "repository": "syn1/app"}]))
    def create_session(self, algorithm: str, target_bytes: bytes, meta: dict[str, str]) -> str:
        return self._create_session(algorithm, target_bytes, meta)

    @rule(target=sessions, like=digests)
    def create_session_for_stored_bytes(self, like: Digest) -> str:
        """An upload of bytes stored (or once stored) under the same algorithm: finishing it is a dedup hit."""
        return self._create_session(like.algorithm, self.contents[like], {})

    def _create_session(self, algorithm: str, target_bytes: bytes, meta: dict[str, str]) -> str:
        status = self.store.uploads.create(algorithm, meta=meta)
        assert status == self.model.create(status.id, algorithm, meta)
        self.targets[status.id] = target_bytes
        return status.id

    @staticmethod
    def _live(data: st.DataObject, model: Model) -> str:
        # In creation order: ids are random uuids, and the draw must mean the same session when hypothesis replays.
        return data.draw(st.sampled_from(list(model.sessions)), label="session")

    def _next_bytes(self, session_id: str, kind: str, n: int, noise: bytes) -> bytes:
        """The next n bytes of the session's target (so finished uploads often dedup), or noise."""
        if kind == "noise":
            return noise
        done = len(self.model.sessions[session_id].data)
        return self.targets[session_id][done:done + n]

    def _offset(self, session_id: str, kind: str) -> int | None:
        current = len(self.model.sessions[session_id].data)
        return {"none": None, "right": current, "behind": current - 1, "ahead": current + 1}[kind]

    @live_session
    @rule(data=st.data(), kind=st.sampled_from(["target", "target", "noise"]), n=st.integers(0, 3000),
          noise=st.binary(max_size=16), cuts=cut_points,
          offset=st.sampled_from(["none", "right", "right", "behind", "ahead"]),
          length=st.sampled_from(["none", "none", "right", "wrong"]))
    def append(self, data: st.DataObject, kind: str, n: int, noise: bytes, cuts: list[int], offset: str,
               length: str) -> None:
        session_id = self._live(data, self.model)
        chunk = self._next_bytes(session_id, kind, n, noise)
        at = self._offset(session_id, offset)
        declared = self._size(chunk, length)
        self.agree(lambda: self.model.append(session_id, chunk, at, declared),
                   lambda: self.store.uploads.append(session_id, split(chunk, cuts), offset=at, length=declared))

    @live_session
    @rule(data=st.data(), n=st.integers(1, 3000), cuts=cut_points, keep=st.integers(0, 4),
          finishing=st.booleans(), algorithm=algorithms)
    def write_interrupted(self, data: st.DataObject, n: int, cuts: list[int], keep: int, finishing: bool,
                          algorithm: str) -> None:
        """A chunk whose source fails mid-stream: the exception reaches the caller, the offset stays, and the
        bytes that did arrive must not leak into the session's running hash."""
        session_id = self._live(data, self.model)
        chunks = split(self._next_bytes(session_id, "target", n, b""), cuts)[:keep] or [b"sent, then hung up"]
        at = self._offset(session_id, "right")
        if finishing:
            expected = Digest.of(b"irrelevant", algorithm)
            self.agree(lambda: self.model.finish(session_id, expected, b"", at, interrupted=True),
                       lambda: self.store.uploads.finish(session_id, expected, failing(chunks), offset=at))
        else:
            self.agree(lambda: self.model.append(session_id, b"", at, None, interrupted=True),
                       lambda: self.store.uploads.append(session_id, failing(chunks), offset=at))

    @live_session
    @rule(target=digests, data=st.data(), kind=st.sampled_from(["target", "target", "noise"]),
          noise=st.binary(max_size=16), cuts=cut_points, offset=st.sampled_from(["none", "right", "right", "behind"]),
          expect=st.sampled_from(["right", "right", "wrong"]), algorithm=st.none() | algorithms,
          other=pool((NEVER_STORED,)), n=st.sampled_from([3000, len(BIG)]),
          hook=st.sampled_from(["none", "none", "link", "fail"]))
    def finish(self, data: st.DataObject, kind: str, noise: bytes, cuts: list[int], offset: str, expect: str,
               algorithm: str | None, other: bytes, n: int, hook: str) -> Any:
        """Finish with the session's algorithm (None) or any (another one re-hashes the partial file), with the
        caller's hook in the publishing transaction (`also`): it writes the caller's table, or fails."""
        session_id = self._live(data, self.model)
        session = self.model.sessions[session_id]
        chunk = self._next_bytes(session_id, kind, n, noise)
        at = self._offset(session_id, offset)
        expected = Digest.of(session.data + chunk if expect == "right" else other, algorithm or session.algorithm)

        def also(txn: WriteTransaction) -> None:
            if hook == "fail":
                raise HookFailed
            txn.put(self.links, expected.key, b"")
        return self._stored(self.agree(
            lambda: self.model.finish(session_id, expected, chunk, at, hook=hook),
            lambda: self.store.uploads.finish(session_id, expected, split(chunk, cuts), offset=at,
                                              also=None if hook == "none" else also)))

    @live_session
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        session_id = self._live(data, self.model)
        self.agree(lambda: self.model.cancel(session_id), lambda: self.store.uploads.cancel(session_id))

    @rule(target=digests, session_id=st.one_of(sessions, st.sampled_from([UNKNOWN_SESSION, "not-a-session-id"])),
          op=st.sampled_from(["status", "append", "finish", "cancel"]))
    def any_session(self, session_id: str, op: str) -> Any:
        """Any session ever created (most of them finished, cancelled or expired by now), or none at all."""
        model, uploads, empty = self.model, self.store.uploads, Digest.of(b"")
        actions: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            "status": (lambda: model.status(session_id), lambda: uploads.status(session_id)),
            "append": (lambda: model.append(session_id, b"x", None, None),
                       lambda: uploads.append(session_id, [b"x"])),
            "finish": (lambda: model.finish(session_id, empty, b"", None), lambda: uploads.finish(session_id, empty)),
            "cancel": (lambda: model.cancel(session_id), lambda: uploads.cancel(session_id)),
        }
        return self._stored(self.agree(*actions[op]))

    @rule()
    def expire_uploads(self) -> None:
        self.agree(self.model.expire, self.store.uploads.expire)

    # -- time, GC, restarts -------------------------------------------------------------------------------------
    @rule(seconds=clock_steps)
    def advance_clock(self, seconds: float) -> None:
        self.model.now += seconds

    @precondition(lambda self: bool(self.model.deadlines()))
    @rule(data=st.data())
    def advance_clock_to_deadline(self, data: st.DataObject) -> None:
        """To the exact second a deadline falls due, where a `<` written for a `<=` would show."""
        self.model.now = data.draw(st.sampled_from(self.model.deadlines()), label="deadline")

    @rule(dry_run=st.booleans())
    def gc(self, dry_run: bool) -> None:
        """A pass takes exactly what the model predicts; a dry run reports the same and changes nothing (the
        invariants compare every record, lease and session afterwards)."""
        collected, leased, expired = self.model.gc(dry_run)
        swept = 0 if dry_run else self.model.sweep()
        report = self.store.gc.run(dry_run=dry_run)
        assert sorted(report.collected) == collected
        assert len(report.collected) == len(collected), "a digest was collected twice"
        assert (report.dry_run, report.leased, report.expired_uploads, report.debris_files) == (
            dry_run, leased, expired, swept)
        assert (report.waiting, report.waiting_bytes, report.first_due, report.last_due) == self.model.waiting()

    @rule(digest=any_digest)
    def explain(self, digest: Digest) -> None:
        stored, size, holders_, refcount, at = self.model.explain(digest)
        retention = self.store.gc.explain(digest)
        assert (retention.digest, retention.stored, retention.size, retention.holders, retention.refcount,
                retention.collectable_at) == (digest, stored, size, holders_, refcount, at)
        if not stored:
            assert retention.reason == "not in the store"
        elif refcount:
            assert retention.reason.startswith("referenced by")
        else:
            assert retention.reason.endswith("the next GC pass deletes it") == (at is not None and
                                                                                 at <= self.model.now)

    # -- invariants: what the interface shows ---------------------------------------------------------------------
    @invariant()
    def retention_matches(self) -> None:
        """Every digest ever stored (and one never stored): stored or not, size, holders, count, when collectable;
        explain() renews nothing, so it can look after every step."""
        for digest in (*self.contents, Digest.of(NEVER_STORED)):
            stored, size, holders_, refcount, at = self.model.explain(digest)
            retention = self.store.gc.explain(digest)
            assert (retention.stored, retention.size, retention.holders, retention.refcount,
                    retention.collectable_at) == (stored, size, holders_, refcount, at), digest
            assert self.store.contains(digest) == stored

    @invariant()
    def edges_match(self) -> None:
        with self.store.index.read() as txn:
            by_digest = {(h, d) for d in self.model.blobs for h in self.store.refs.holders(txn, d)}
            by_holder = {(h, d) for h in HOLDERS for d in self.store.refs.held_by(txn, h)}
        assert by_digest == by_holder == self.model.edges

    @invariant()
    def links_match(self) -> None:
        with self.store.index.read() as txn:
            assert {Digest.parse(k.decode()) for k in txn.keys(self.links)} == self.model.links

    @invariant()
    def sessions_match(self) -> None:
        uploads = self.store.uploads
        for session_id in self.model.sessions:
            assert uploads.exists(session_id)
            assert uploads.status(session_id) == self.model.status(session_id)
        for session_id in (*self.model.ended, UNKNOWN_SESSION):
            assert not uploads.exists(session_id)
            assert attempt(lambda: uploads.status(session_id)) == Raised(UploadUnknown)  # noqa: B023

    @invariant()
    def fsck_finds_nothing(self) -> None:
        report = check(self.store)
        assert not report.damaged, report.lines()
        model = self.model
        assert report.checked == len(model.blobs) + len(model.orphans)
        assert (set(report.unindexed), report.doomed, report.temp) == (
            {str(d) for d in model.orphans if d not in model.blobs}, 0, 0)


class MemoryStoreMachine(BlobStoreMachine):
    def _open(self) -> BlobStore:
        return self._prepared(BlobStore.in_memory(config=CONFIG, clock=lambda: self.model.now))


class LmdbStoreMachine(BlobStoreMachine):
    """The embedded store, and a second, white-box layer: its tables and files as cas/layout.py describes them."""

    def __init__(self, base: Path) -> None:
        self.root = Path(tempfile.mkdtemp(dir=base))
        super().__init__()

    def _open(self) -> BlobStore:
        return self._prepared(BlobStore.on_disk(self.root, config=CONFIG, clock=lambda: self.model.now))

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(self.root, ignore_errors=True)

    @rule()
    def reopen(self) -> None:
        """A restart: the index and files stay, the in-memory running hashes of upload sessions are gone."""
        self.store.close()
        self.store = self._open()

    @invariant()
    def blob_records_match(self) -> None:
        tables = self.store.tables
        with self.store.index.read() as txn:
            records = {Digest.parse(k.decode()): BlobRecord.unpack(v) for k, v in txn.scan(tables.blobs)}
            queued = {k for k, _ in txn.scan(tables.gcqueue)}
            inline = {Digest.parse(k.decode()) for k in txn.keys(tables.inline)}
            edges = txn.count(tables.refs)
        assert set(records) == set(self.model.blobs)
        assert inline == {d for d, b in self.model.blobs.items() if b.inline}
        assert edges == len(self.model.edges)
        for digest, record in records.items():
            blob = self.model.blobs[digest]
            count = self.model.refcount(digest)
            assert (record.state, record.size, record.refcount, record.lease_until) == (
                STATE_INLINE if blob.inline else STATE_PRESENT, len(blob.data), count, blob.lease_until), digest
            if count == 0:  # zero_since means nothing while the blob is referenced
                assert record.zero_since == blob.zero_since, digest
                assert queue_key(blob.zero_since, digest.key) in queued, f"{digest} is not queued for GC"

    @invariant()
    def files_match(self) -> None:
        """A file under blobs/ per file record, plus the orphans the model expects; partial files per session."""
        files = {f"{p.parent.parent.name}:{p.name}" for p in (self.root / "blobs").glob("*/*/*")}
        assert files == ({str(d) for d, b in self.model.blobs.items() if not b.inline}
                         | {str(d) for d in self.model.orphans})
        ids = set(self.model.sessions)
        assert set(os.listdir(self.root / "uploads")) == ids  # a partial file per session, no leftovers
        for session_id, session in self.model.sessions.items():
            with self.store.index.read() as txn:
                raw = txn.get(self.store.tables.uploads, session_id.encode())
            assert raw is not None
            # layout.py: the partial file may be longer than the offset (a chunk cut off mid-stream), never shorter
            with open(self.root / "uploads" / session_id, "rb") as partial:
                assert partial.read(len(session.data)) == session.data


def test_memory_store_agrees_with_model() -> None:
    run_state_machine_as_test(MemoryStoreMachine,  # type: ignore[no-untyped-call]
                              settings=settings(max_examples=100, stateful_step_count=50, deadline=None))


def test_lmdb_store_agrees_with_model(tmp_path: Path) -> None:
    run_state_machine_as_test(lambda: LmdbStoreMachine(tmp_path),  # type: ignore[no-untyped-call]
                              settings=settings(max_examples=100, stateful_step_count=50, deadline=None))
