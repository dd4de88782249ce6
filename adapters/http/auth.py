"""Docker token authentication at the HTTP edge: the challenge, the token endpoint, and the token on every request.

What a token may carry, whether a request is allowed, the trash, the policy re-asked on writes and the login throttle
are registry_core's (registry_core/access.py); this module reads credentials from requests, verifies and caches
access tokens, and writes the answers (challenges, token responses).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from registry_core.access import Access
from registry_core.accounts import Identity
from registry_core.errors import LoginRefused, LoginThrottled, TooManyScopes, Unauthorized
from registry_core.events import Event
from registry_core.names import RepositoryName
from registry_core.tokens import Claims, InvalidToken

from . import errors
from .accesslog import client_address, note
from .metrics import TOKEN_REFUSALS, TOKENS_ISSUED, count_safely
from .streaming import BodyTooLarge, read_body

__all__ = ["Auth", "Caller", "Unauthorized"]  # Unauthorized is registry_core's, importable from here

CACHE_BYTES = 4 << 20  # bytes of verified tokens remembered per process (ECDSA verification is the hot path's
#                        largest cost; a token Berth issues is ~0.5-2 KiB, so this holds thousands)
TOKEN_MAX = 64 << 10  # longest bearer token looked at: SCOPES_MAX scopes of 1 KiB (Scope.parse's cap), base64, fit
FORM_MAX = 64 << 10  # bytes of a token request's form body (POST /token)
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class Caller:
    subject: str | None  # the user; None for anonymous (or for everyone, under the open policy)
    claims: Claims | None

    @property
    def expires(self) -> float | None:
        """When the caller's access token expires (None: no token). Whether an expired one is still accepted is
        the registry's rule (an upload's owner, while it makes progress)."""
        return self.claims.expires if self.claims is not None else None


class Auth:
    def __init__(self, access: Access, public_url: str | None = None, forwarded_header: str | None = None) -> None:
        self.access = access
        self.login = access.login_required
        self.tokens = access.tokens
        self.public_url = public_url.rstrip("/") if public_url else None
        self.forwarded_header = forwarded_header.lower() if forwarded_header else None
        self._verified: OrderedDict[str, Claims] = OrderedDict()  # least recently used first
        self._verified_bytes = 0

    # -- every request --------------------------------------------------------------------------------------------
    def caller(self, request: Request, grace: float = 0.0) -> Caller:
        """Who is calling. Without login: everyone is the anonymous caller. With login: a valid bearer token is
        required (Unauthorized otherwise); `grace` accepts one expired that long ago (upload sessions)."""
        return self.caller_from(request.headers.get("authorization", ""), grace)

    def caller_from(self, header: str, grace: float = 0.0) -> Caller:
        """caller() from the Authorization header's value."""
        if not self.login:
            return Caller(None, None)
        assert self.tokens is not None
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token:
            raise Unauthorized("authentication required", None)
        if len(token) > TOKEN_MAX:  # refused before any parsing: no token Berth issues is this long
            raise Unauthorized(f"the bearer token is longer than {TOKEN_MAX} bytes", None, "invalid_token")
        now = time.time()
        claims = self._verified.get(token)
        if claims is None or now > claims.expires + 30:
            try:
                claims = self.tokens.verify(token.strip(), now, allow_expired_for=grace)
            except InvalidToken as exc:
                raise Unauthorized(str(exc), None, "invalid_token") from None
            if now <= claims.expires:
                self._remember(token, claims)
        else:
            self._verified.move_to_end(token)
        return Caller(claims.subject or None, claims)

    def _remember(self, token: str, claims: Claims) -> None:
        """Keep a verified token, evicting the least recently used ones beyond CACHE_BYTES (a bound by bytes: a
        bound by count let large tokens take gigabytes)."""
        old = self._verified.pop(token, None)
        if old is not None:
            self._verified_bytes -= len(token)
        self._verified[token] = claims
        self._verified_bytes += len(token)
        while self._verified_bytes > CACHE_BYTES and self._verified:
            evicted, _ = self._verified.popitem(last=False)
            self._verified_bytes -= len(evicted)

    def require(self, caller: Caller, repo: RepositoryName, action: str) -> None:
        """Access.require for the caller's token: Unauthorized (a challenge) or Denied when it may not."""
        self.access.require(caller.claims, repo, action)

    def may(self, caller: Caller, repo: RepositoryName, action: str) -> bool:
        return self.access.may(caller.claims, repo, action)

    def visible(self, caller: Caller) -> Callable[[str], bool]:
        return self.access.visible(caller.claims)

    def visible_event(self, caller: Caller) -> Callable[[Event], bool]:
        return self.access.visible_event(caller.claims)

    def challenge(self, request: Request, exc: Unauthorized) -> Response:
        realm = f"{self.base_url(request)}/token"
        value = f'Bearer realm="{realm}",service="{self.tokens.service if self.tokens else "berth"}"'
        if exc.scope:
            value += f',scope="{exc.scope}"'
        if exc.error:
            value += f',error="{exc.error}"'
        code = "DENIED" if exc.error == "insufficient_scope" else "UNAUTHORIZED"
        body = b"" if request.method == "HEAD" else errors.body(code, str(exc))
        return Response(body, 401, {"WWW-Authenticate": value, "Docker-Distribution-API-Version": "registry/2.0"},
                        "application/json")

    def base_url(self, request: Request) -> str:
        """The registry's URL as clients reach it: the configured public URL, else the request's scheme and Host —
        only when Host is a plain host[:port] (it goes into a header; anything else would let a client inject
        text), falling back to the address the server listens on."""
        if self.public_url:
            return self.public_url
        host = request.headers.get("host", "")
        if not _HOST.fullmatch(host):
            server = request.scope.get("server") or ("localhost", None)
            host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
        return f"{request.url.scheme}://{host}"

    def source(self, request: Request) -> str:
        return client_address(request.scope, self.forwarded_header)

    # -- the token endpoint ---------------------------------------------------------------------------------------
    async def token_endpoint(self, request: Request) -> Response:
        said = ["anonymous"]
        answer = await self._token_endpoint(request, said)
        if answer.status_code == 200:
            count_safely(TOKENS_ISSUED.labels(said[0]).inc)
        else:
            reason = said[0] if said[0] == "too_many_scopes" else _REFUSALS.get(answer.status_code, "bad_request")
            count_safely(TOKEN_REFUSALS.labels(reason).inc)
        return answer

    async def _token_endpoint(self, request: Request, said: list[str]) -> Response:
        """The token endpoint; `said[0]` is left saying how the caller logged in (or too_many_scopes), for the
        metrics."""
        if self.tokens is None:
            return JSONResponse({"errors": [{"code": "UNSUPPORTED", "message": "this registry needs no login"}]}, 404)
        source = self.source(request)
        offline = False
        identity: Identity | None = None
        try:
            if request.method == "POST":
                try:
                    form = parse_qs((await read_body(request, FORM_MAX)).decode("utf-8"), max_num_fields=64)
                except BodyTooLarge:
                    return _error(413, "SIZE_INVALID", f"a token request's form is at most {FORM_MAX} bytes")
                except (UnicodeDecodeError, ValueError) as exc:
                    return _error(400, "UNSUPPORTED", f"malformed token request form: {exc}")

                def field(name: str) -> str:
                    return form.get(name, [""])[-1]

                grant_type = field("grant_type")
                scopes = [s for s in field("scope").split(" ") if s]
                offline = field("access_type") == "offline"
                if grant_type == "password":
                    said[0] = grant_type
                    identity = await anyio.to_thread.run_sync(self.access.login, field("password"), source)
                elif grant_type == "refresh_token":
                    said[0] = grant_type
                    identity = await anyio.to_thread.run_sync(self.access.refreshed, field("refresh_token"), source)
                else:
                    return _error(400, "UNSUPPORTED", "grant_type must be password or refresh_token")
            else:
                scopes = [s for value in request.query_params.getlist("scope") for s in value.split(" ") if s]
                offline = request.query_params.get("offline_token", "").lower() == "true"
                header = request.headers.get("authorization")
                if header is not None:
                    said[0] = "password"
                    identity = await anyio.to_thread.run_sync(
                        self.access.login, _basic_password(header), source,
                        "malformed Authorization header: expected Basic credentials")
        except LoginThrottled as exc:  # a correct token never gets here: the throttle slows guessing only
            note(request.scope, "refusal", f"login refused (throttled): {exc.why}")
            return _error(429, "TOOMANYREQUESTS", str(exc), {"Retry-After": str(int(exc.wait + 0.999))})
        except LoginRefused as exc:
            note(request.scope, "refusal", f"login refused: {exc}")
            return _error(401, "UNAUTHORIZED", f"invalid credentials: {exc}")
        try:
            access = self.access.grant_scopes(identity, scopes)
        except TooManyScopes as exc:
            said[0] = "too_many_scopes"
            return _error(400, "UNSUPPORTED", str(exc))
        if identity is not None:
            note(request.scope, "account", identity.user)
        now = time.time()
        token, lifetime = self.tokens.issue(identity.user if identity else "", access,
                                            identity.token_id if identity else None, now)
        answer = {"token": token, "access_token": token, "expires_in": lifetime,
                  "issued_at": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")}
        if offline and identity is not None and identity.token_id is not None:
            answer["refresh_token"] = self.tokens.issue_refresh(identity.user, identity.token_id, now)
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})


# A refused token request's metric reason, by its status: 401 bad credentials, 429 throttled (too many failed
# logins from the address), 404 no login under this policy, 413 a form too large; 400 says the request was malformed
# or asked for too many scopes (told apart where it is answered).
_REFUSALS = {401: "bad_credentials", 429: "throttled", 404: "no_login", 413: "too_large", 400: "bad_request"}


def _basic_password(header: str) -> str | None:
    kind, _, encoded = header.partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(errors.body(code, message), status, headers, "application/json")
