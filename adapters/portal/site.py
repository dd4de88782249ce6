"""What every portal page shares: the registry's parts, the templates, the viewer, forms with their CSRF check, and
the answers for what went wrong (a page, never a traceback).

Pages are rendered on the event loop: everything they read is a few LMDB reads (microseconds). Writes (a sign-in, a
grant, a token) run in a worker thread, as the registry protocol's do.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import anyio.to_thread
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from registry_core.accounts import Accounts
from registry_core.listings import Listings
from registry_core.projects import Projects
from registry_core.registry import Registry
from registry_core.signins import SignIn

from .session import CSRF_FIELD, SessionCookies, Viewer

if TYPE_CHECKING:
    from adapters.http.app import RegistryApi
    from adapters.http.auth import Auth

log = logging.getLogger("berth.portal")
T = TypeVar("T")

HERE = Path(__file__).resolve().parent
FORM_MAX_FIELDS = 64  # the largest form (the account page's) has 8 fields
# Pages may hold a token's secret or private names: never kept by a shared cache, nor by the browser's back button
# cache. Framing is refused (clickjacking a revoke or grant button).
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; "
                                           "frame-ancestors 'none'; form-action 'self'"}


class PageError(Exception):
    """An answer other than the page asked for: a status, a heading and a sentence for the reader."""

    def __init__(self, status: int, heading: str, message: str) -> None:
        super().__init__(message)
        self.status, self.heading, self.message = status, heading, message


def not_found(message: str = "There is nothing here, or you may not see it.") -> PageError:
    # One answer for "missing" and "hidden": a name that exists must not be told apart from one that does not.
    return PageError(404, "Not found", message)


def _utc(text: str | None) -> str:
    """An RFC 3339 time as a reader's text: `2026-12-02 03:40:00 UTC` (whole seconds)."""
    return f"{text[:19].replace('T', ' ')} UTC" if text else ""


def _short(digest: str | None) -> str:
    """`sha256:0123456789ab`: the algorithm and 12 hex digits (Docker's short id length)."""
    if not digest:
        return ""
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm}:{hex_[:12]}"


def _bytes(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # not reached


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True, auto_reload=False)  # templates ship with the code
    env.filters.update(utc=_utc, short=_short, bytes=_bytes)
    return env


@dataclass
class Site:
    """The registry's parts the pages use, opened with the registry (after the server forked its workers)."""
    api: RegistryApi
    env: Environment

    @property
    def registry(self) -> Registry:
        return self.api.registry

    @property
    def auth(self) -> Auth:
        return self.api.auth

    @cached_property
    def accounts(self) -> Accounts:
        return self.auth.access.accounts

    @cached_property
    def projects(self) -> Projects:
        return self.auth.access.projects

    @cached_property
    def listings(self) -> Listings:
        return Listings(self.registry, self.auth.access.policy)

    @cached_property
    def signer(self) -> SignIn:
        return SignIn(self.accounts, self.auth.access.throttle)

    @cached_property
    def cookies(self) -> SessionCookies:
        cookies = SessionCookies.of(self.registry.store, self.accounts)
        cookies.tls_proxy = bool(self.auth.public_url and self.auth.public_url.startswith("https://"))
        return cookies

    def viewer(self, request: Request) -> Viewer:
        return self.cookies.viewer(request)

    async def write(self, work: Callable[..., T], *args: Any) -> T:
        """A change, in a worker thread (a write transaction may wait for another process's)."""
        return await anyio.to_thread.run_sync(work, *args)

    def host(self, request: Request) -> str:
        """The registry's host[:port] as clients name it in image references."""
        return self.auth.base_url(request).split("://", 1)[-1]

    # -- answers --------------------------------------------------------------------------------------------------
    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        viewer = self.viewer(request)
        body = self.env.get_template(template).render(viewer=viewer, **context)
        response = HTMLResponse(body, status, headers=PAGE_HEADERS)
        self.cookies.keep(request, response)
        return response

    def message(self, request: Request, status: int, heading: str, message: str) -> Response:
        return self.page(request, "message.html", status, heading=heading, message=message)

    def redirect(self, request: Request, url: str) -> Response:
        """303 after a form: the browser GETs the page again (a reload does not repeat the post)."""
        response = RedirectResponse(url, 303, headers=PAGE_HEADERS)
        self.cookies.keep(request, response)
        return response

    async def form(self, request: Request) -> FormData:
        """The posted form, once its CSRF token matched the viewer's (PageError 403 otherwise)."""
        try:
            form = await request.form(max_files=0, max_fields=FORM_MAX_FIELDS)
        except Exception:  # a body that is no form (multipart errors, bad encodings): the reader gets a page
            raise PageError(400, "Bad request", "The form could not be read.") from None
        presented = form.get(CSRF_FIELD)
        if not self.cookies.csrf_ok(request, presented if isinstance(presented, str) else ""):
            raise PageError(403, "Form refused", "This form was not sent from a page of this site, or the page was "
                                                 "too old (your session changed since). Reload the page and send "
                                                 "it again.")
        return form

    def signed_in(self, request: Request, scope: str = "view") -> Viewer:
        """The signed-in viewer (401: to the sign-in form). A change needs `modify`: a session signed in with a
        personal access token has that token's scopes, as the JSON API does (a password session has every scope)."""
        viewer = self.viewer(request)
        if viewer.identity is None:
            raise PageError(401, "Sign in first", "This page is for signed-in users: sign in, then try again.")
        if scope not in viewer.identity.scopes:
            raise PageError(403, "Not allowed", f"You signed in with a personal access token without the {scope} "
                                                "scope this needs: sign in with your password, or with a token "
                                                f"that has {scope}.")
        return viewer


Handler = Callable[[Site, Request], Awaitable[Response]]
SiteGetter = Callable[[], Site]


def guarded(site: SiteGetter, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route's endpoint: the handler with every failure turned into a page (PageError; anything unexpected is
    logged and answered 500 without details)."""
    async def endpoint(request: Request) -> Response:
        current = site()
        try:
            return await handler(current, request)
        except PageError as exc:
            if exc.status == 401 and request.method == "GET":  # to the sign-in form, and back here after it
                return current.redirect(request, f"/signin?next={quote(request.url.path)}")
            return current.message(request, exc.status, exc.heading, exc.message)
        except Exception:
            log.exception("portal: internal error on %s %s", request.method, request.url.path)
            return current.message(request, 500, "Something went wrong",
                                   "The server could not show this page (the error is in its log).")
    return endpoint
