"""Signing in and out, and the account page: personal access tokens (create, list, revoke) and the password.

Sign-in takes a user name and password, or a personal access token in the password field (the user name may then be
left empty, as `docker login` ignores it). registry_core/signins.py decides and throttles, with the token endpoint's
counts (registry_core/logins.py): a correct token is never refused; password guesses slow down per address and per
account (429 with Retry-After).
A token's secret is shown once, in the answer to the form that created it (a page, never a URL or a log line).
"""

from __future__ import annotations

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from registry_core.accounts import PASSWORD_MAX, PASSWORD_MIN, TOKEN_SCOPES, AccountError, Identity, PersonalToken
from registry_core.signins import Refused, Throttled

from . import values
from .site import PageError, Site, SiteGetter, guarded

EXPIRY_MAX = 10 * 365 * 86400  # seconds: the longest expiry the form may ask for (it offers at most a year)


def _next(value: str | None) -> str:
    """Where to go after signing in: a path of this site only (never `//host` or `https://...`: no open redirect)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value and len(value) < 2048:
        return value
    return "/"


async def signin_form(site: Site, request: Request) -> Response:
    return site.page(request, "signin.html", next=_next(request.query_params.get("next")), user="")


async def signin(site: Site, request: Request) -> Response:
    form = await site.form(request)
    user, password = str(form.get("user") or "").strip(), str(form.get("password") or "")
    target = _next(str(form.get("next") or ""))
    try:
        identity = await anyio.to_thread.run_sync(_login, site, user, password, site.auth.source(request))
    except Throttled as exc:
        response = site.page(request, "signin.html", 429, next=target, user=user,
                             problem=f"Too many failed sign-ins: wait {exc.retry_after:.0f} s, then try again.")
        response.headers["Retry-After"] = str(int(exc.retry_after + 0.999))
        return response
    except Refused as exc:
        return site.page(request, "signin.html", 401, next=target, user=user, problem=f"Not signed in: {exc}.")
    response = site.redirect(request, target)
    await anyio.to_thread.run_sync(site.cookies.sign_in, request, response, identity.user, identity.token_id)
    return response


def _login(site: Site, user: str, password: str, source: str) -> Identity:
    """The identity a sign-in form names (Refused, Throttled otherwise): a personal access token in the password
    field signs in as its owner, with its scopes."""
    if password.strip().startswith("berth_"):
        identity = site.signer.token(password.strip(), source)
        if user and user != identity.user:
            raise Refused("that personal access token belongs to another account")
        return identity
    if not user:
        raise Refused("give your user name with a password")
    return site.signer.password(user, password, source)


async def signout(site: Site, request: Request) -> Response:
    await site.form(request)
    response = site.redirect(request, "/")
    await anyio.to_thread.run_sync(site.cookies.sign_out, request, response)
    return response


# -- the account page ---------------------------------------------------------------------------------------------
def _token_row(site: Site, token: PersonalToken) -> dict[str, object]:
    now = site.registry.store.clock()
    state = "revoked" if token.revoked else "expired" if token.expires is not None and now >= token.expires \
        else "active"
    return values.token(token, site.accounts.last_used(token.id)) | {"state": state}


def _account_page(site: Site, request: Request, status: int = 200, **context: object) -> Response:
    viewer = site.signed_in(request)
    assert viewer.user is not None
    account = site.accounts.user(viewer.user)
    tokens = sorted(site.accounts.tokens(viewer.user), key=lambda t: t.created, reverse=True)
    return site.page(request, "account.html", status, account=account,
                     tokens=[_token_row(site, t) for t in tokens], password_min=PASSWORD_MIN,
                     password_max=PASSWORD_MAX, has_password=site.accounts.has_password(viewer.user),
                     **context)


async def account(site: Site, request: Request) -> Response:
    if request.query_params.get("changed") == "password":
        return _account_page(site, request, notice="Password set. Your other sessions were signed out.")
    return _account_page(site, request)


async def create_token(site: Site, request: Request) -> Response:
    form = await site.form(request)
    viewer = site.signed_in(request, "modify")
    assert viewer.user is not None and viewer.identity is not None
    scopes = [str(s) for s in form.getlist("scope") if s in TOKEN_SCOPES]
    if not scopes:
        return _account_page(site, request, 400, problem="Pick at least one scope for the token.")
    if not set(scopes) <= viewer.identity.scopes:  # a token makes no token stronger than itself (as the API)
        return _account_page(site, request, 403, problem="You signed in with a token that has only "
                             f"{', '.join(sorted(viewer.identity.scopes))}: it cannot create a token with more.")
    expires_text = str(form.get("expires") or "")
    if expires_text and (not expires_text.isdigit() or not 0 < int(expires_text) <= EXPIRY_MAX):
        return _account_page(site, request, 400, problem="The expiry must be a number of seconds, at most ten years.")
    label = str(form.get("label") or "").strip()[:200]
    try:
        record, secret = await anyio.to_thread.run_sync(
            lambda: site.accounts.create_token(viewer.user or "", scopes, int(expires_text) if expires_text else None,
                                               label))
    except AccountError as exc:
        return _account_page(site, request, 400, problem=str(exc))
    host = site.host(request)
    return _account_page(site, request, created=record, secret=secret,
                         docker_login=f"docker login -u {viewer.user} -p {secret} {host}",
                         podman_login=f"podman login -u {viewer.user} -p {secret} {host}")


async def revoke_token(site: Site, request: Request) -> Response:
    await site.form(request)
    viewer = site.signed_in(request, "modify")
    token_id = request.path_params["token_id"]
    token = site.accounts.token(token_id)
    if token is None or token.user != viewer.user:  # another's token reads as no token
        raise PageError(404, "Not found", f"You have no token {token_id[:32]}.")
    await anyio.to_thread.run_sync(site.accounts.revoke, token_id)
    return _account_page(site, request, notice=f"Token {token_id} revoked: it stops working at once.")


async def set_password(site: Site, request: Request) -> Response:
    """A new password for the signed-in account: every other session of the account ends (a stolen cookie with
    it), this browser gets a new one."""
    form = await site.form(request)
    viewer = site.signed_in(request, "modify")
    assert viewer.user is not None
    password, again = str(form.get("password") or ""), str(form.get("again") or "")
    if password != again:
        return _account_page(site, request, 400, problem="The two passwords differ.")
    try:
        await anyio.to_thread.run_sync(site.accounts.set_password, viewer.user, password)
    except AccountError as exc:
        return _account_page(site, request, 400, problem=str(exc))
    await anyio.to_thread.run_sync(site.cookies.sessions.close_user, viewer.user)
    # To the account page with the new session's cookie (its forms carry the new session's CSRF token).
    response = site.redirect(request, "/account?changed=password")
    token_id = viewer.identity.token_id if viewer.identity is not None else None
    await anyio.to_thread.run_sync(site.cookies.sign_in, request, response, viewer.user, token_id)
    return response


def routes(site: SiteGetter) -> list[BaseRoute]:
    return [
        Route("/signin", guarded(site, signin_form), methods=["GET"]),
        Route("/signin", guarded(site, signin), methods=["POST"]),
        Route("/signout", guarded(site, signout), methods=["POST"]),
        Route("/account", guarded(site, account), methods=["GET"]),
        Route("/account/tokens", guarded(site, create_token), methods=["POST"]),
        Route("/account/tokens/{token_id}/revoke", guarded(site, revoke_token), methods=["POST"]),
        Route("/account/password", guarded(site, set_password), methods=["POST"]),
    ]
