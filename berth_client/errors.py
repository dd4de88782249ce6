"""Typed errors carrying the server's own message (PORTAL-API.md "Errors": `{"error": {"code", "message"}}`).

A script catches what it can act on: `NotFound` (a typo, or a repository in the trash), `NotAllowed` (ask for a
grant), `Unauthorized` (log in again), `Unavailable` (wait `retry_after` seconds). Everything is a `BerthError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BerthError", "Conflict", "Invalid", "NotAllowed", "NotFound", "ProtocolError", "Unauthorized", "Unavailable",
    "error_for",
]


class BerthError(Exception):
    """Any failure the client reports: `message` is the server's (or, without a server answer, the client's)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


class NotFound(BerthError):
    """404: no such project, repository, tag or manifest, or one in the trash (the message says which)."""


class NotAllowed(BerthError):
    """403: the policy refuses (no grant, too low a level, the token's scope); the message names the rule."""


class Unauthorized(BerthError):
    """401: a bad, revoked or expired token, or none where one is needed."""


class Invalid(BerthError):
    """400: the request itself is wrong (a bad name, an unknown sort)."""


class Conflict(BerthError):
    """409: the state forbids it now (e.g. purging what is not in the trash)."""


class Unavailable(BerthError):
    """429/503 (or no connection): try again later; `retry_after` is the server's hint in seconds, when it gave one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class ProtocolError(BerthError):
    """The answer is not what the API promises (not JSON, a field missing): a proxy in the way, or a bug."""


_BY_STATUS: dict[int, type[BerthError]] = {
    400: Invalid, 401: Unauthorized, 403: NotAllowed, 404: NotFound, 409: Conflict, 429: Unavailable,
    502: Unavailable, 503: Unavailable, 504: Unavailable,
}


def _retry_after(header: str | None) -> float | None:
    """RFC 9110 §10.2.3 allows an HTTP date too; Berth sends seconds, and a date is read as 'no hint'."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None


def error_for(status: int, body: Any, retry_after: str | None = None, request: str = "") -> BerthError:
    """The error for a failed answer: its class from the status, its message from the body when it has one (a
    proxy's HTML page has none: then the status and the request say what happened)."""
    code, message = None, None
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        code, message = body["error"].get("code"), body["error"].get("message")
    if not isinstance(message, str) or not message:
        message = f"the server answered HTTP {status}" + (f" to {request}" if request else "")
    kind = _BY_STATUS.get(status, BerthError)
    if kind is Unavailable:
        return Unavailable(message, status=status, code=code, retry_after=_retry_after(retry_after))
    return kind(message, status=status, code=code)
