"""Domain errors to OCI distribution-spec errors, in one table.

Body: {"errors": [{"code": ..., "message": ..., "detail": ...}]} (distribution-spec v1.1, "Error Codes").
A class is looked up along its MRO, so a subclass can have its own row or inherit its parent's.
"""

from __future__ import annotations

import errno
import json
from typing import Any

from cas import (
    BlobUnknown,
    DigestMismatch,
    IndexFull,
    InvalidDigest,
    InvalidRange,
    OffsetMismatch,
    SizeMismatch,
    StoreUnavailable,
    UploadBusy,
    UploadUnknown,
)
from registry_core.errors import (
    Denied,
    ManifestBlobUnknown,
    ManifestTooLarge,
    ManifestUnknown,
    NameUnknown,
    TooManyUploads,
)
from registry_core.manifests import InvalidManifest
from registry_core.names import InvalidDigestReference, InvalidName, InvalidReference
from registry_core.registry import BlobInUse

ERRORS: dict[type[BaseException], tuple[int, str]] = {
    NameUnknown: (404, "NAME_UNKNOWN"),
    ManifestUnknown: (404, "MANIFEST_UNKNOWN"),  # NotAcceptable too: Distribution's answer to an excluded type
    BlobUnknown: (404, "BLOB_UNKNOWN"),
    UploadUnknown: (404, "BLOB_UPLOAD_UNKNOWN"),
    InvalidName: (400, "NAME_INVALID"),
    InvalidReference: (400, "TAG_INVALID"),
    InvalidDigestReference: (400, "DIGEST_INVALID"),
    InvalidDigest: (400, "DIGEST_INVALID"),  # UnsupportedDigest (an algorithm Berth does not know) too
    DigestMismatch: (400, "DIGEST_INVALID"),
    SizeMismatch: (400, "SIZE_INVALID"),
    InvalidManifest: (400, "MANIFEST_INVALID"),  # UnsupportedMediaType too (Distribution: 400 MANIFEST_INVALID)
    ManifestBlobUnknown: (400, "MANIFEST_BLOB_UNKNOWN"),
    ManifestTooLarge: (413, "SIZE_INVALID"),
    OffsetMismatch: (416, "BLOB_UPLOAD_INVALID"),  # a chunk not at the session's offset (spec: 416)
    UploadBusy: (409, "BLOB_UPLOAD_INVALID"),  # another request is writing the session right now
    InvalidRange: (416, "BLOB_UNKNOWN"),
    BlobInUse: (405, "UNSUPPORTED"),
    IndexFull: (507, "UNKNOWN"),
    StoreUnavailable: (503, "UNAVAILABLE"),  # PostgreSQL or the object store unreachable: retry (Retry-After)
    Denied: (403, "DENIED"),
    TooManyUploads: (429, "TOOMANYREQUESTS"),
}


class ProtocolError(Exception):
    """An error the adapter itself finds in a request (a bad header or parameter)."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.detail = status, code, detail
        self.headers = dict(headers or {})

    def with_headers(self, headers: dict[str, str]) -> ProtocolError:
        self.headers.update(headers)
        return self


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_MESSAGE = ("the registry's storage is full: nothing of this request was stored; try again once an "
                    "operator has freed space (berth gc)")


def lookup(exc: BaseException) -> tuple[int, str] | None:
    if isinstance(exc, ProtocolError):
        return exc.status, exc.code
    if no_space(exc):
        return 507, "UNKNOWN"  # RFC 4918 11.5 Insufficient Storage; the distribution-spec has no code of its own
    if read_only(exc):
        return 503, "UNAVAILABLE"  # the storage went read-only (an operator's mount, a failing disk): /readyz says so
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return None


def no_space(exc: BaseException) -> bool:
    """A full disk or quota, raised by a file write (OSError) or by LMDB (its message carries the errno's text)."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return True
    return type(exc).__module__ == "lmdb" and "No space left" in str(exc)


READ_ONLY_MESSAGE = ("the registry's storage is read-only: nothing of this request was stored; try again once an "
                     "operator has made it writable")


def read_only(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return True
    return type(exc).__module__ == "lmdb" and "Read-only file system" in str(exc)


def message(exc: BaseException) -> str:
    """What the client is told: the exception's own message, or for a full or read-only disk one without file
    paths."""
    if no_space(exc):
        return NO_SPACE_MESSAGE
    return READ_ONLY_MESSAGE if read_only(exc) else str(exc)


def body(code: str, message: str, detail: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return json.dumps({"errors": [error]}, separators=(",", ":")).encode()
