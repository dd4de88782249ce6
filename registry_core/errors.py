"""The registry's domain errors. The HTTP adapter maps each to an OCI error code in one table (adapters/http).

Errors from below keep their own types: cas.BlobUnknown (BLOB_UNKNOWN), cas.UploadUnknown (BLOB_UPLOAD_UNKNOWN),
cas.DigestMismatch / cas.InvalidDigest (DIGEST_INVALID), names.InvalidName (NAME_INVALID), names.InvalidReference
(TAG_INVALID / DIGEST_INVALID), manifests.InvalidManifest (MANIFEST_INVALID).
"""

from __future__ import annotations

from cas import IncompatibleStore


class RegistryError(Exception):
    """Base of the registry's own errors."""


class NameUnknown(RegistryError, LookupError):
    """The repository does not exist (NAME_UNKNOWN)."""


class ManifestUnknown(RegistryError, LookupError):
    """No such manifest or tag in the repository (MANIFEST_UNKNOWN)."""


class ManifestBlobUnknown(RegistryError, LookupError):
    """A manifest names a blob or child manifest that is not in the repository (MANIFEST_BLOB_UNKNOWN)."""

    def __init__(self, digest: str, what: str = "blob") -> None:
        super().__init__(f"{what} {digest} is not in this repository: push it before the manifest that names it")
        self.digest = digest


class ManifestTooLarge(RegistryError):
    """A manifest body over the configured limit (413)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"manifest of {size} bytes exceeds the limit of {limit} bytes")
        self.size, self.limit = size, limit


class NotAcceptable(ManifestUnknown):
    """The manifest exists, but the client's Accept header excludes its media type (Berth stores one
    representation and never converts it; Distribution answers MANIFEST_UNKNOWN here too)."""


class Denied(RegistryError):
    """A request refused whatever the token says: the repository or its project is in the trash (DENIED)."""


class TooManyUploads(RegistryError):
    """An account already has as many open upload sessions as it may (TOOMANYREQUESTS)."""




class Unauthorized(RegistryError):
    """No valid token, or a token without the access the request needs: a new token or a login would help (401 with
    a Bearer challenge naming `scope`, the Docker scope to ask for; `error` the RFC 6750 error code)."""

    def __init__(self, message: str, scope: str | None, error: str | None = None) -> None:
        super().__init__(message)
        self.scope, self.error = scope, error


class LoginRefused(RegistryError):
    """Credentials that stand for no one (401): the message says why, to whoever holds them."""


class LoginThrottled(RegistryError):
    """Credentials refused, from a source that failed too often lately (429 with Retry-After: `wait` seconds)."""

    def __init__(self, wait: float, why: str) -> None:
        super().__init__(f"too many failed logins from this address: wait {wait:.0f} s")
        self.wait, self.why = wait, why


class TooManyScopes(RegistryError):
    """A token request asking for more scopes than one token may carry (400)."""


class TokenExpired(Unauthorized):
    """An expired access token used where it is not (or no longer) accepted: continuing an upload session that is not
    its owner's, or that made no progress lately (401 invalid_token: a new token helps)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None, "invalid_token")


class IncompatibleRegistry(RegistryError, IncompatibleStore):
    """The registry's tables in the store were written by a format version this code does not read."""
