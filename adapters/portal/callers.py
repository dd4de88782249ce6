"""Who calls the portal's API: a personal access token (`Authorization: Bearer`, or `Basic` with the token as the
password), the portal's session cookie (session.py; then unsafe methods need its CSRF token in `X-CSRF-Token`), or
nobody (the `public` principal). A wrong token counts against the caller's address (LoginThrottle, via SignIn)."""

from __future__ import annotations

import hmac

import anyio.to_thread
from starlette.requests import Request

from adapters.http.auth import Auth, _basic_password
from registry_core.accounts import Identity
from registry_core.signins import Refused, SignIn, Throttled

from . import session
from .answers import ApiError

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def identify(request: Request, auth: Auth, signin: SignIn) -> Identity | None:
    """The caller's identity, None for anonymous; ApiError 401 (bad token), 403 (no CSRF token), 429 (throttled)."""
    header = request.headers.get("authorization")
    if header:
        kind = header.partition(" ")[0].lower()
        if kind == "bearer":
            secret: str | None = header.partition(" ")[2].strip()
        elif kind == "basic":
            secret = _basic_password(header)
        else:
            raise ApiError(401, "UNAUTHORIZED", "Authorization must be Bearer <personal access token> or Basic "
                                                "with the token as the password")
        try:
            return await anyio.to_thread.run_sync(signin.token, secret or "", auth.source(request))
        except Throttled as exc:
            raise ApiError(429, "TOO_MANY_REQUESTS", str(exc),
                           {"Retry-After": str(int(exc.retry_after + 0.999))}) from None
        except Refused as exc:
            raise ApiError(401, "UNAUTHORIZED", f"invalid credentials: {exc}") from None
    found = session.current(request, auth.accounts)
    if found is None:
        return None
    if request.method in UNSAFE:
        sent = request.headers.get(session.CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), found.csrf.encode()):
            raise ApiError(403, "DENIED", f"a request signed in by the session cookie needs the session's CSRF "
                                          f"token in the {session.CSRF_HEADER} header")
    return found.identity


def signed_in(identity: Identity | None, scope: str = "view") -> Identity:
    """The caller's identity, which must exist and (for a token) carry `scope` (any scope lets one see, as
    policy.py's rule for view)."""
    if identity is None:
        raise ApiError(401, "UNAUTHORIZED", "sign in, or send a personal access token (Authorization: Bearer)")
    if scope not in identity.scopes and not (scope == "view" and identity.scopes):
        raise ApiError(403, "DENIED", f"the personal access token lacks the {scope} scope this needs")
    return identity
