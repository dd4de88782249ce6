"""The engine's errors: one small hierarchy that adapters map to protocol codes in one table.

Every error carries a message a person can act on. None of them means "something already stored was damaged":
an operation that raises leaves the store as it was before the call.
"""

from __future__ import annotations


class CasError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidDigest(CasError, ValueError):
    """A digest string that does not follow the OCI grammar `algorithm:encoded`."""


class UnsupportedDigest(InvalidDigest):
    """A well-formed digest whose algorithm this store cannot compute."""


class DigestMismatch(CasError):
    """The bytes received do not hash to the digest the caller expected. Nothing was stored."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"content digest {actual} does not match the expected {expected}")
        self.expected = expected
        self.actual = actual


class SizeMismatch(CasError):
    """The bytes received are not as long as the caller declared. Nothing was stored."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"received {actual} bytes where {expected} were declared")
        self.expected = expected
        self.actual = actual


class BlobUnknown(CasError, KeyError):
    """No verified blob with this digest is in the store."""

    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest

    def __str__(self) -> str:
        return f"blob {self.digest} is not in the store"


class UploadUnknown(CasError, KeyError):
    """No open upload session has this id (never created, finished, cancelled or expired)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id

    def __str__(self) -> str:
        return f"upload session {self.session_id!r} is unknown, finished, cancelled or expired"


class OffsetMismatch(CasError):
    """A chunk did not start at the session's current offset (HTTP adapters answer 416)."""

    def __init__(self, session_id: str, expected: int, given: int) -> None:
        super().__init__(f"upload {session_id}: chunk starts at byte {given}, the session is at byte {expected}")
        self.session_id = session_id
        self.expected = expected
        self.given = given


class UploadBusy(CasError):
    """Another writer is appending to or finishing this session right now."""

    def __init__(self, session_id: str, holder: str = "") -> None:
        where = f" ({holder})" if holder else ""
        super().__init__(f"upload {session_id} is being written by another request{where}: send the chunk again "
                         f"once that one is answered (the upload's status says where it stands)")
        self.session_id = session_id


class WriterLeaseLost(UploadBusy):
    """This writer's lease on an upload session ran out and another writer took the session over: what this one
    wrote is not accepted, and it leaves the staged bytes to the new writer."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id, "this request stalled past its writer lease and another request took over")


class InvalidHolder(CasError, ValueError):
    """A reference holder name that cannot be stored (empty, too long, or containing NUL)."""


class IncompatibleStore(CasError):
    """The data directory was written by a format version this code does not read."""


class IndexFull(CasError):
    """A write transaction filled the index map. The map was grown; run the transaction again."""


class UndeclaredTable(CasError, KeyError):
    """A table was opened that no layer declared (Index.declare): a misspelt name, or a missing declaration."""

    def __str__(self) -> str:
        return str(self.args[0])


class StagingGone(CasError):
    """`ensure` found a blob's bytes gone and has nothing to put them back from: a direct write (cas/blobs.py
    BlobBytes.direct) whose object a collector took between the publish's move and its commit (cas/gc.py)."""


class StoreMissing(CasError):
    """No store where one was to be opened, not created (a PostgreSQL schema no Berth ever migrated): a mistyped
    name must not read as an empty registry."""


class StoreUnavailable(CasError):
    """An engine of the store (the PostgreSQL server, the object store) cannot be reached right now. The operation
    may or may not have taken effect (a lost COMMIT answer); retrying it is safe for cas's own operations. Adapters
    answer 503 with Retry-After: service resumes by itself when the engine is back."""
