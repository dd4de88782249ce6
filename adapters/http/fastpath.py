"""The hottest route, manifest GET/HEAD, answered in bare ASGI before Starlette (docs/PERFORMANCE.md: routing and the
Request/Response objects cost 20-70 % of such a request). It answers only plain successes; everything else falls
through to the full app (adapters/http/app.py), which answers it with the right error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from registry_core.names import RepositoryName
from registry_core.registry import read_reference

from . import headers as wire
from .accesslog import AccessLog
from .metrics import Observed
from .streaming import ASGIApp

if TYPE_CHECKING:
    from .app import RegistryApi

log = logging.getLogger("berth.http")


class ManifestFastPath:
    """The hottest route, manifest GET/HEAD, answered in bare ASGI before Starlette (docs/PERFORMANCE.md: routing
    and the Request/Response objects cost 20-70 % of such a request). The same checks in the same order as `dispatch`;
    anything other than a plain success (an error, a challenge) falls through to the full app, which answers it.
    It is the outermost layer, so its answers are counted (`observed`) and logged (`logged`) here, each with one
    call and no wrapper around `send`."""

    _KEYS = {"GET": ("manifest", "GET", 200), "HEAD": ("manifest", "HEAD", 200)}  # metric labels of its answers

    def __init__(self, app: ASGIApp, api: Callable[[], RegistryApi], observed: Observed | None = None,
                 logged: AccessLog | None = None) -> None:
        self.app = app
        self.api = api
        self.observed = observed
        self.logged = logged

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            started = perf_counter()
            answer = self.answer(scope)
            if answer is not None:
                headers, body, account = answer
                if scope["method"] != "GET":
                    body = b""
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                if self.observed is not None or self.logged is not None:
                    seconds = perf_counter() - started
                    try:
                        if self.observed is not None:
                            self.observed.count(self._KEYS[scope["method"]], len(body), 0, seconds)
                        if self.logged is not None:
                            self.logged.answered(scope, 200, len(body), seconds, account)
                    except Exception:  # the answer is sent; what is not counted is said once here
                        log.warning("a manifest answer could not be counted or logged", exc_info=True)
                return
        await self.app(scope, receive, send)

    def answer(self, scope: Any) -> tuple[list[tuple[bytes, bytes]], bytes, str] | None:
        """The headers, the body and the caller's account of a manifest answered here; None: the full app answers."""
        path: str = scope["path"]
        name, marker, reference = path.rpartition("/manifests/")
        if not marker or not name.startswith("/v2/") or "/" in reference:
            return None
        authorization, accept = "", []
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"accept":
                accept.append(value.decode("latin-1"))
        api = self.api()
        if api.registry.config.pull_events and scope["method"] == "GET":
            return None  # a pull writes its event: in the full app's worker thread, not on the event loop
        if api.registry.store.index.unreachable:
            return None  # PostgreSQL is down: waiting for a connection here would stall the whole event loop
        try:
            repo = RepositoryName.parse(name[4:])
            caller = api.auth.caller_from(authorization)
            api.auth.require(caller, repo, "pull")
            found = api.registry.get_manifest(repo, read_reference(repo, reference), wire.media_types(accept),
                                              read_files=False)
        except Exception:  # the full app answers it, with the right error
            return None
        digest = str(found.digest).encode()
        return [(b"content-type", found.media_type.encode()), (b"content-length", str(len(found.body)).encode()),
                (b"docker-content-digest", digest), (b"etag", b'"' + digest + b'"'),
                (b"docker-distribution-api-version", b"registry/2.0")], found.body, caller.subject or "-"
