"""The portal's session cookie, as the JSON API sees it.

The cookie itself (signing, flags, sign-in and sign-out) belongs to the portal's pages (helper `portal-web` fills
`current` in). The API asks one question of it: who is signed in on this request, and which CSRF token their pages
carry. A request authenticated by the cookie alone must send that token in `X-CSRF-Token` for every unsafe method
(POST, PUT, PATCH, DELETE): a cookie is sent by the browser on a cross-site request too, a custom header is not.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from registry_core.accounts import Accounts, Identity

CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class Session:
    user: str  # the signed-in account's name
    csrf: str  # the session's CSRF token
    identity: Identity  # who the session acts as, read now (flags; a token session: that token's scopes)


def current(request: Request, accounts: Accounts) -> Session | None:
    """The session the request's cookie stands for, if it is valid and not expired; None otherwise. (A stub until
    the portal's pages provide sessions: no cookie is recognised.)"""
    return None
