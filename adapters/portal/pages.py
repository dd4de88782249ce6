"""The portal's web pages, mounted by adapters/http/app.py beside the registry (/v2/) and the JSON API (/api/v1):
pages at `/`, the stylesheet and script at `/static`.

Server-rendered (Jinja2 templates in templates/), one stylesheet and one plain script in static/ that only enhance
(copy buttons, filter as you type, relative times): every page works without JavaScript.
Modules: site.py (what every page shares), session.py (the cookie and CSRF), account.py (sign-in, tokens),
browse.py (projects, repositories, tags), manage.py (sharing, trash, tag deletion, site administration).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from . import account, browse, manage
from .site import HERE, Site, guarded, templates

if TYPE_CHECKING:
    from adapters.http.app import RegistryApi


def routes(api: Callable[[], RegistryApi]) -> list[BaseRoute]:
    """The pages' routes; `api` gives the app's RegistryApi once the registry is open (after the fork)."""
    env = templates()
    held: dict[str, Site] = {}

    def site() -> Site:
        if "site" not in held:
            held["site"] = Site(api(), env)
        return held["site"]

    everything = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return [*account.routes(site), *manage.routes(site), *browse.routes(site),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            # Anything else outside /v2/ and /api/: the portal's "not found" page (the registry keeps its own).
            Route("/{path:path}", guarded(site, browse.not_a_page), methods=everything)]
