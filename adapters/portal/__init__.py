"""The portal: the JSON API under /api/v1 (api.py) and, beside it, the pages for people.

`routes(auth)` gives the Starlette routes the app factory (adapters/http/app.py) mounts; `auth` returns the
registry app's Auth once the app has opened its Registry (after a server forks its workers).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.routing import BaseRoute

from adapters.http.auth import Auth


def routes(auth: Callable[[], Auth]) -> list[BaseRoute]:
    from .api import PortalApi

    return PortalApi(auth).routes()
