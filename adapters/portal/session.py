"""The portal's session cookie and CSRF tokens, shared by the pages and the JSON API.

The cookie holds, signed with itsdangerous (a key kept in the index: registry_core/keys.py `secret`), the id of
a server-side session (registry_core/sessions.py) and a CSRF token. Signed in, the CSRF token is the session
record's; anonymous, it is the cookie's own (the sign-in form needs one before any session exists). A form carries it
in the hidden field `csrf`, a script or API call in the header `X-CSRF-Token`; `csrf_ok` compares in constant time.

Cookie flags: HttpOnly (no script reads it), SameSite=Lax (a cross-site form post arrives without it, a link
followed from elsewhere keeps the reader signed in), Secure when the portal is reached over https (the request's
scheme, or a `--public-url https://...` saying a TLS proxy is in front), Path=/.

Who the session stands for is derived again on every request: a session made with a personal access token ends
when the token is revoked or expires; one made with a password ends when the account goes (or is disabled).
"""

from __future__ import annotations

import hmac
import secrets
import weakref
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from cas import BlobStore
from registry_core.accounts import Accounts, Identity
from registry_core.keys import secret
from registry_core.sessions import SESSION_LIFETIME, Sessions
from registry_core.sessions import Session as Record

COOKIE = "berth_session"
CSRF_FIELD = "csrf"  # the hidden form field
CSRF_HEADER = "x-csrf-token"  # the header scripts and API clients using the cookie send
_SALT = "berth.portal.session"
SESSION_KEY = b"portal-session"  # its signing key, in the index beside the token key (registry_core/keys.py)


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in session as the JSON API sees it (adapters/portal/api.py)."""
    user: str
    csrf: str  # unsafe API calls made with the cookie alone must send it in X-CSRF-Token
    identity: Identity  # who the session stands for, read now (a token's scopes; every scope for a password)


def current(request: Request, accounts: Accounts) -> Session | None:
    """The signed-in session of the request's cookie, or None (no cookie, a bad signature, signed out, expired, or
    its token or account gone)."""
    viewer = SessionCookies.of(accounts.store, accounts).viewer(request)
    if viewer.identity is None:
        return None
    return Session(viewer.identity.user, viewer.csrf, viewer.identity)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking at a page: a signed-in user (with the identity the policy is asked about) or anonymous."""
    identity: Identity | None
    csrf: str
    session_id: str | None = None
    session: Record | None = None
    fresh: bool = False  # the CSRF token was made for this request: the response must set the cookie

    @property
    def user(self) -> str | None:
        return self.identity.user if self.identity is not None else None

    @property
    def admin(self) -> bool:
        return self.identity is not None and self.identity.admin


class SessionCookies:
    # One per open store and process, shared by the pages and the API (the store's tables, the key read once).
    _opened: weakref.WeakKeyDictionary[BlobStore, SessionCookies] = weakref.WeakKeyDictionary()

    def __init__(self, store: BlobStore, accounts: Accounts) -> None:
        key = secret(store, SESSION_KEY, lambda: secrets.token_bytes(32))
        self._signer = URLSafeTimedSerializer(key, salt=_SALT)
        self._accounts = accounts
        self.sessions = Sessions(store)
        self.tls_proxy = False  # set when `--public-url https://...` says a TLS proxy is in front

    @classmethod
    def of(cls, store: BlobStore, accounts: Accounts) -> SessionCookies:
        found = cls._opened.get(store)
        if found is None:
            found = cls._opened[store] = cls(store, accounts)
        return found

    # -- reading ----------------------------------------------------------------------------------------------------
    def viewer(self, request: Request) -> Viewer:
        """The request's viewer, read once per request (kept on request.state)."""
        known = getattr(request.state, "viewer", None)
        if isinstance(known, Viewer):
            return known
        found = self._read(request.cookies.get(COOKIE, ""))
        request.state.viewer = found
        return found

    def _read(self, cookie: str) -> Viewer:
        payload: Any = None
        if cookie and len(cookie) < 4096:
            try:
                payload = self._signer.loads(cookie, max_age=int(SESSION_LIFETIME))
            except BadSignature:  # also an expired signature (SignatureExpired is a BadSignature)
                payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("c"), str):
            return Viewer(None, secrets.token_urlsafe(32), fresh=True)
        session_id = payload.get("s")
        if isinstance(session_id, str):
            record = self.sessions.get(session_id)
            identity = self._identity(record) if record is not None else None
            if record is not None and identity is not None:
                return Viewer(identity, record.csrf, session_id, record)
            return Viewer(None, secrets.token_urlsafe(32), fresh=True)  # ended: a new anonymous cookie
        return Viewer(None, payload["c"])

    def _identity(self, record: Record) -> Identity | None:
        if record.token_id is not None:
            token = self._accounts.token(record.token_id)
            identity = self._accounts.identity_for(token) if token is not None else None
            return identity if identity is not None and identity.user == record.user else None
        return self._accounts.identity_of(record.user)

    def csrf_ok(self, request: Request, presented: str | None) -> bool:
        """Whether `presented` (the form field, or the X-CSRF-Token header when None) is this session's token."""
        if presented is None:
            presented = request.headers.get(CSRF_HEADER)
        viewer = self.viewer(request)
        if not presented or viewer.fresh:  # a fresh token was made for this request: none was sent with it
            return False
        return hmac.compare_digest(presented.encode(), viewer.csrf.encode())

    # -- writing ----------------------------------------------------------------------------------------------------
    def sign_in(self, request: Request, response: Response, user: str, token_id: str | None) -> Viewer:
        """Open a new session (always a new id: whatever session the browser had is ended) and set its cookie."""
        old = self.viewer(request)
        if old.session_id is not None:
            self.sessions.close(old.session_id)
        session_id, record = self.sessions.open(user, token_id)
        self._set(request, response, {"s": session_id, "c": record.csrf}, int(SESSION_LIFETIME))
        viewer = Viewer(self._identity(record), record.csrf, session_id, record)
        request.state.viewer = viewer
        return viewer

    def sign_out(self, request: Request, response: Response) -> None:
        viewer = self.viewer(request)
        if viewer.session_id is not None:
            self.sessions.close(viewer.session_id)
        fresh = Viewer(None, secrets.token_urlsafe(32), fresh=True)
        request.state.viewer = fresh
        self.keep(request, response)

    def keep(self, request: Request, response: Response) -> None:
        """Set the anonymous cookie when this request made a new CSRF token (every page calls it)."""
        viewer = self.viewer(request)
        if viewer.fresh:
            self._set(request, response, {"c": viewer.csrf}, None)

    def _set(self, request: Request, response: Response, payload: dict[str, str], max_age: int | None) -> None:
        response.set_cookie(COOKIE, self._signer.dumps(payload), max_age=max_age, path="/", httponly=True,
                            samesite="lax", secure=self.tls_proxy or request.url.scheme == "https")
