"""Who may do what, request by request: the rules the protocol edges apply, decided here and nowhere else.

The policy decides at the token endpoint what a token may carry (`grant_scopes`); on every request the edge verifies
the token (tokens.py) and asks `require`, which checks that the token's `access` covers the request and, live, what
must take effect at once: the trash (a trashed repository or project answers nothing, whatever tokens were issued)
and, for writes (push, delete; so also at every step and the finish of an upload), the policy again, so that a
revoked personal access token, grant or certification stops every write at once rather than when the 5-minute access
token expires. Reads keep the token's word (the hot path: no policy call).

Logins (`login`) go through the throttle (logins.py): a correct token is always accepted; failures slow their
source down. Refusals are domain errors with the sentence a user can act on: Unauthorized (a new token or a login
would help: 401 with a challenge naming `scope`), Denied (the policy refuses: 403), LoginThrottled (429).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from .accounts import Accounts, Identity
from .errors import Denied, LoginRefused, LoginThrottled, TooManyScopes, Unauthorized
from .events import Event
from .keys import signing_key
from .logins import LoginThrottle
from .names import RepositoryName
from .policy import ACTIONS, Policy, Resource, refusal, requires_login
from .projects import Projects
from .registry import Registry
from .tokens import TOKEN_LIFETIME, Claims, InvalidToken, Scope, TokenService

SCOPES_MAX = 32  # scopes one token request may ask for (docker, podman and skopeo ask for 1-3; a mount 2)

TRASHED = "repository {} is in the trash: every operation on it is refused until it is restored"


def challenge_scope(name: str, action: str) -> str:
    """The Docker scope a client should ask the token endpoint for to do `action` on repository `name`. "view" is
    Berth's own (clients never ask for it by name): pull admits it; push comes with pull, as clients ask."""
    return f"repository:{name}:{ {'push': 'pull,push', 'view': 'pull'}.get(action, action) }"


class Access:
    def __init__(self, registry: Registry, policy: Policy, service: str = "berth",
                 token_lifetime: int = TOKEN_LIFETIME) -> None:
        self.registry = registry
        self.policy = policy
        self.login_required = requires_login(policy)
        self.accounts = Accounts(registry.store)
        self.projects = Projects(registry.store)
        self.throttle = LoginThrottle(registry.store)
        # The signing key is read (or made) only when logins exist: the open policy issues no token.
        self.tokens = TokenService(signing_key(registry.store), service, token_lifetime) \
            if self.login_required else None

    # -- every request --------------------------------------------------------------------------------------------
    def require(self, claims: Claims | None, repo: RepositoryName, action: str) -> None:
        """The token (`claims`, None without one) must carry `action` on `repo`, and the repository must not be
        in the trash; writes are asked of the policy again, now. Unauthorized or Denied otherwise."""
        name = repo.text
        if not self.login_required:
            if self.projects.is_trashed(name):
                raise Denied(TRASHED.format(name))
            return
        allowed = claims is not None and (claims.allows("repository", name, action) or (
            action == "view" and claims.allows("repository", name, "pull")))
        if allowed and action in ("push", "delete"):
            allowed = self.still_allowed(claims, repo, action)
        elif allowed:
            allowed = not self.projects.is_trashed(name)
        if not allowed:
            raise self.refused(claims, repo, action)

    def refused(self, claims: Claims | None, repo: RepositoryName, action: str) -> Unauthorized | Denied:
        """The error for a request whose token does not let it do `action` on `repo`. A token that merely did not
        ask for the action (the policy would grant it now) gets a 401 challenge, so the client fetches a new one;
        a refusal by the policy gets 403 DENIED saying which rule refused (anonymous callers get the 401, so their
        client offers to log in); a token revoked or expired since the access token was issued gets 401
        invalid_token."""
        name = repo.text
        scope = challenge_scope(name, action)
        identity = None
        if claims is not None and claims.token_id is not None:
            record = self.accounts.token(claims.token_id)
            problem = self.accounts.inactive_reason(record)
            if problem is not None:
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

    def may(self, claims: Claims | None, repo: RepositoryName, action: str) -> bool:
        try:
            self.require(claims, repo, action)
        except (Unauthorized, Denied):
            return False
        return True

    def identity(self, claims: Claims | None) -> Identity | None:
        """The caller's current identity (flags and token scopes read now: a revoked token has none)."""
        if claims is None or claims.token_id is None:
            return None
        record = self.accounts.token(claims.token_id)
        return self.accounts.identity_for(record) if record is not None else None

    def still_allowed(self, claims: Claims | None, repo: RepositoryName, action: str) -> bool:
        """The policy asked again, now (a write, or an upload that may have outlived its token)."""
        if not self.login_required:
            return True
        identity = self.identity(claims)
        if identity is None and claims is not None and claims.token_id is not None:
            return False  # the personal access token was revoked or expired, or its user removed
        return action in self.policy.grant(identity, Resource("repository", repo.text), frozenset({action}))

    def visible(self, claims: Claims | None) -> Callable[[str], bool]:
        """Which repositories the caller may see listed (the catalog, the event feed): not trashed, and `view`."""
        identity = self.identity(claims)

        def check(name: str) -> bool:
            if self.projects.is_trashed(name):
                return False
            return "view" in self.policy.grant(identity, Resource("repository", name), frozenset({"view"}))
        return check

    def visible_event(self, claims: Claims | None) -> Callable[[Event], bool]:
        """Which events the feed shows the caller: one about a repository if the catalog would list that
        repository (`visible`, asked now: current grants and trash); one about a project only (trashed, restored,
        purged, a project-level grant changed) if the policy grants `view` on Resource("project", id)."""
        identity = self.identity(claims)
        repositories = self.visible(claims)
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

    # -- the token endpoint ---------------------------------------------------------------------------------------
    def login(self, password: str | None, source: str, why: str = "") -> Identity:
        """The identity a personal access token stands for. A wrong one is LoginRefused, counted against `source`
        (the client's address), or LoginThrottled when the source failed too often lately: a correct token is never
        throttled (logins.py). `password` None: the credentials could not be read at all (`why` says how)."""
        identity, reason = self.accounts.login(password) if password is not None else (None, why)
        if identity is None:
            self.failed(source, reason)
        return identity

    def refreshed(self, refresh_token: str, source: str) -> Identity:
        """The identity behind a refresh token, re-checking the personal access token it names (revoked or
        expired: refused, and counted as a failed login)."""
        assert self.tokens is not None
        identity = None
        try:
            subject, token_id = self.tokens.verify_refresh(refresh_token)
        except InvalidToken:
            pass
        else:
            record = self.accounts.token(token_id)
            found = self.accounts.identity_for(record) if record is not None else None
            identity = found if found is not None and found.user == subject else None
        if identity is None:
            self.failed(source, "the refresh token is invalid, or the personal access token behind it was revoked "
                                "or expired")
        return identity

    def failed(self, source: str, why: str) -> NoReturn:
        """A failed login from `source`: LoginThrottled if it failed too often lately, else counted, LoginRefused."""
        wait = self.throttle.wait(source)
        if wait:
            raise LoginThrottled(wait, why)
        self.throttle.failed(source)
        raise LoginRefused(why)

    def grant_scopes(self, identity: Identity | None, asked: list[str]) -> list[Scope]:
        """What a token for `identity` carries: per scope asked for, the actions the policy grants of those asked
        (a partial grant is not an error; a scope that does not parse is left out). At most SCOPES_MAX scopes."""
        if len(asked) > SCOPES_MAX:
            raise TooManyScopes(f"a token request may ask for at most {SCOPES_MAX} scopes, got {len(asked)}")
        access = []
        for text in asked:
            scope = Scope.parse(text)
            if scope is None:
                continue
            granted = self.policy.grant(identity, Resource(scope.type, scope.name), scope.actions & ACTIONS)
            access.append(Scope(scope.type, scope.name, granted))
        return access
