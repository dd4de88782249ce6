"""The registry's domain errors. The HTTP adapter maps each to an OCI error code in one table (adapters/http).

Errors from below keep their own types: cas.BlobUnknown (BLOB_UNKNOWN), cas.UploadUnknown (BLOB_UPLOAD_UNKNOWN),
cas.DigestMismatch / cas.InvalidDigest (DIGEST_INVALID), names.InvalidName (NAME_INVALID), names.InvalidReference
(TAG_INVALID / DIGEST_INVALID), manifests.InvalidManifest (MANIFEST_INVALID).
"""

from __future__ import annotations


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
