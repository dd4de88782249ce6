"""The portal API's answers: JSON bodies, and every failure as `{"error": {"code", "message"}}` (PORTAL-API.md)
with the codes of ERRORS; nothing answers 500 (an unexpected failure is logged and answered 503 UNAVAILABLE)."""

from __future__ import annotations

import errno
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from adapters.http.errors import no_space, read_only
from cas import IndexFull, InvalidDigest
from registry_core.accounts import AccountError
from registry_core.errors import Denied, ManifestUnknown, NameUnknown
from registry_core.listings import InvalidQuery, NotFound
from registry_core.names import InvalidName, InvalidReference
from registry_core.projects import ProjectError

log = logging.getLogger("berth.portal")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


# Domain errors to API errors, looked up along the exception's MRO.
ERRORS: dict[type[BaseException], tuple[int, str]] = {
    NotFound: (404, "NOT_FOUND"),
    NameUnknown: (404, "NOT_FOUND"),
    ManifestUnknown: (404, "NOT_FOUND"),
    InvalidQuery: (400, "INVALID"),
    InvalidName: (400, "INVALID"),
    InvalidReference: (400, "INVALID"),
    InvalidDigest: (400, "INVALID"),
    ProjectError: (400, "INVALID"),
    AccountError: (400, "INVALID"),
    Denied: (403, "DENIED"),
    IndexFull: (503, "UNAVAILABLE"),
}


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    return Response(body, status, headers, "application/json")


def ok(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(value, separators=(",", ":")).encode(), status, headers, "application/json")


def failure(request: Request, exc: Exception) -> Response:
    """The answer to a request that raised `exc`."""
    if isinstance(exc, ApiError):
        return error(exc.status, exc.code, str(exc), exc.headers)
    if no_space(exc) or read_only(exc) or (isinstance(exc, OSError) and exc.errno == errno.EIO):
        return error(503, "UNAVAILABLE", "the registry's storage cannot take writes now: try again later",
                     {"Retry-After": "60"})
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            status, code = ERRORS[cls]
            return error(status, code, str(exc), {"Retry-After": "1"} if status == 503 else None)
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error(503, "UNAVAILABLE", "internal error (logged on the server): try again later", {"Retry-After": "5"})
