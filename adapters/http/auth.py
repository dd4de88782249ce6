"""Docker token authentication at the HTTP edge: the challenge, the token endpoint, and the check on every request.

The policy decides at the token endpoint (what a token may carry); on every request the registry only verifies the
token (signature, issuer, audience, time window) and that its `access` covers the request. Two things are checked
live as well, because they must take effect at once: the trash, and the policy again when an upload is finished.
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
from pathlib import Path
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from registry_core.accounts import Accounts, Identity
from registry_core.errors import Denied
from registry_core.events import Event
from registry_core.logins import LoginThrottle
from registry_core.policy import ACTIONS, Policy, Resource, refusal, requires_login
from registry_core.projects import Projects
from registry_core.registry import Registry
from registry_core.tokens import TOKEN_LIFETIME, Claims, InvalidToken, Scope, TokenService

from . import errors
from .accesslog import client_address, note
from .metrics import TOKEN_REFUSALS, TOKENS_ISSUED, count_safely
from .streaming import BodyTooLarge, read_body

CACHE_BYTES = 4 << 20  # bytes of verified tokens remembered per process (ECDSA verification is the hot path's
#                        largest cost; a token Berth issues is ~0.5-2 KiB, so this holds thousands)
TOKEN_MAX = 64 << 10  # longest bearer token looked at: SCOPES_MAX scopes of 1 KiB (Scope.parse's cap), base64, fit
SCOPES_MAX = 32  # scopes one token request may ask for (docker, podman and skopeo ask for 1-3; a mount 2)
FORM_MAX = 64 << 10  # bytes of a token request's form body (POST /token)
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


class Unauthorized(Exception):
    """No valid token, or a token without the access the request needs (401 with a Bearer challenge)."""

    def __init__(self, message: str, scope: str | None, error: str | None = None) -> None:
        super().__init__(message)
        self.scope, self.error = scope, error


@dataclass(frozen=True, slots=True)
class Caller:
    subject: str | None  # the user; None for anonymous (or for everyone, under the open policy)
    claims: Claims | None


class Auth:
    def __init__(self, registry: Registry, policy: Policy, service: str = "berth", public_url: str | None = None,
                 forwarded_header: str | None = None, token_lifetime: int = TOKEN_LIFETIME) -> None:
        self.registry = registry
        self.policy = policy
        self.login = requires_login(policy)
        self.accounts = Accounts(registry.store)
        self.projects = Projects(registry.store)
        self.tokens = TokenService(_key_directory(registry), service, token_lifetime) if self.login else None
        self.public_url = public_url.rstrip("/") if public_url else None
        self.forwarded_header = forwarded_header.lower() if forwarded_header else None
        self.throttle = LoginThrottle(registry.store)
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

    def require(self, caller: Caller, name: str, action: str) -> None:
        """The caller's token must carry `action` on repository `name`, and the repository must not be in the
        trash (a trashed repository answers as if denied). Writes (push, delete) are also asked of the policy
        again, now: a revoked personal access token or grant stops every write at once, not when the 5-minute
        access token expires. Reads keep the token's word (the hot path: no policy call)."""
        if not self.login:
            if self.projects.is_trashed(name):
                raise Denied(f"repository {name} is in the trash: every operation on it is refused until it is "
                             "restored")
            return
        claims = caller.claims
        allowed = claims is not None and (claims.allows("repository", name, action) or (
            action == "view" and claims.allows("repository", name, "pull")))
        if allowed and action in ("push", "delete"):
            allowed = self.still_allowed(caller, name, action)
        elif allowed:
            allowed = not self.projects.is_trashed(name)
        if not allowed:
            raise self.refused(caller, name, action)

    def refused(self, caller: Caller, name: str, action: str) -> Exception:
        """The error for a request whose token does not let it do `action` on `name`. A token that merely did not
        ask for the action (the policy would grant it now) gets a 401 challenge, so the client fetches a new one;
        a refusal by the policy gets 403 DENIED saying which rule refused (anonymous callers get the 401, so their
        client offers to log in); a token revoked or expired since the access token was issued gets 401
        invalid_token."""
        scope = f"repository:{name}:{ {'push': 'pull,push', 'view': 'pull'}.get(action, action) }"
        claims = caller.claims
        identity = None
        if claims is not None and claims.token_id is not None:
            record = self.accounts.token(claims.token_id)
            problem = self.accounts.inactive_reason(record)
            if problem is not None:  # the reason reaches the access log through the error (app.py dispatch)
                return Unauthorized(problem, scope, "invalid_token")
            identity = self.accounts.identity_for(record) if record is not None else None
        resource = Resource("repository", name)
        if action in self.policy.grant(identity, resource, frozenset({action})):
            return Unauthorized(f"this access token does not carry {action} on {name}: ask the token endpoint for "
                                f"{scope}", scope, "insufficient_scope")
        reason = refusal(self.policy, identity, resource, action)
        if identity is None:
            return Unauthorized(reason, scope, "insufficient_scope")
        return Denied(reason)

    def may(self, caller: Caller, name: str, action: str) -> bool:
        try:
            self.require(caller, name, action)
        except (Unauthorized, Denied):
            return False
        return True

    def identity(self, caller: Caller) -> Identity | None:
        """The caller's current identity (flags and token scopes read now: a revoked token has none)."""
        if caller.claims is None or caller.claims.token_id is None:
            return None
        record = self.accounts.token(caller.claims.token_id)
        return self.accounts.identity_for(record) if record is not None else None

    def still_allowed(self, caller: Caller, name: str, action: str) -> bool:
        """The policy asked again, now (a write, or finishing an upload that may have outlived its token)."""
        if not self.login:
            return True
        identity = self.identity(caller)
        if identity is None and caller.claims is not None and caller.claims.token_id is not None:
            return False  # the personal access token was revoked or expired, or its user removed
        return action in self.policy.grant(identity, Resource("repository", name), frozenset({action}))

    def visible(self, caller: Caller) -> Callable[[str], bool]:
        identity = self.identity(caller)

        def check(name: str) -> bool:
            if self.projects.is_trashed(name):
                return False
            return "view" in self.policy.grant(identity, Resource("repository", name), frozenset({"view"}))
        return check

    def visible_event(self, caller: Caller) -> Callable[[Event], bool]:
        """Which events the feed shows the caller: one about a repository if the catalog would list that
        repository (`visible`, asked now: current grants and trash); one about a project only (trashed, restored,
        purged, a project-level grant changed) if the policy grants `view` on Resource("project", id)."""
        identity = self.identity(caller)
        repositories = self.visible(caller)
        projects: dict[str, bool] = {}  # a page asks about few projects, many times

        def check(event: Event) -> bool:
            if event.repository is not None:
                return repositories(event.repository)
            if event.project is None:
                return False
            if event.project not in projects:
                projects[event.project] = "view" in self.policy.grant(
                    identity, Resource("project", event.project), frozenset({"view"}))
            return projects[event.project]
        return check

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
        failed, why = False, ""
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
            if grant_type in ("password", "refresh_token"):
                said[0] = grant_type
            if grant_type == "password":
                identity, why = self.accounts.login(field("password"))
                failed = identity is None
            elif grant_type == "refresh_token":
                identity = self._from_refresh(field("refresh_token"))
                failed = identity is None
                why = "the refresh token is invalid, or the personal access token behind it was revoked or expired"
            else:
                return _error(400, "UNSUPPORTED", "grant_type must be password or refresh_token")
        else:
            scopes = [s for value in request.query_params.getlist("scope") for s in value.split(" ") if s]
            offline = request.query_params.get("offline_token", "").lower() == "true"
            header = request.headers.get("authorization")
            if header is not None:
                said[0] = "password"
                password = _basic_password(header)
                identity, why = self.accounts.login(password) if password is not None else (
                    None, "malformed Authorization header: expected Basic credentials")
                failed = identity is None
        if failed:  # a correct token never gets here: the throttle slows guessing, never a valid user
            wait = self.throttle.wait(source)
            if wait:
                note(request.scope, "refusal", f"login refused (throttled): {why}")
                return _error(429, "TOOMANYREQUESTS", f"too many failed logins from this address: wait {wait:.0f} s",
                              {"Retry-After": str(int(wait + 0.999))})
            await anyio.to_thread.run_sync(self.throttle.failed, source)
            note(request.scope, "refusal", f"login refused: {why}")
            return _error(401, "UNAUTHORIZED", f"invalid credentials: {why}")
        if len(scopes) > SCOPES_MAX:
            said[0] = "too_many_scopes"
            return _error(400, "UNSUPPORTED", f"a token request may ask for at most {SCOPES_MAX} scopes, "
                                              f"got {len(scopes)}")

        access = []
        for text in scopes:
            scope = Scope.parse(text)
            if scope is None:
                continue
            granted = self.policy.grant(identity, Resource(scope.type, scope.name), scope.actions & ACTIONS)
            access.append(Scope(scope.type, scope.name, granted))
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

    def _from_refresh(self, token: str) -> Identity | None:
        assert self.tokens is not None
        try:
            subject, token_id = self.tokens.verify_refresh(token)
        except InvalidToken:
            return None
        record = self.accounts.token(token_id)
        identity = self.accounts.identity_for(record) if record is not None else None
        return identity if identity is not None and identity.user == subject else None


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


def _key_directory(registry: Registry) -> Path:
    # The signing key is kept beside the store's files (seam-core moves it into registry_core, off any path).
    root = registry.store.root
    if root is None:
        raise ValueError("login needs a store over a data directory (the signing key is kept there)")
    return root
