"""The portal's JSON API under /api/v1 (PORTAL-API.md): translation between HTTP and registry_core, nothing more.

Who is calling: callers.py (a personal access token, the session cookie, or nobody). What they may do is the policy
plugin's answer (registry_core/listings.py asks it). Every answer is JSON, every failure `{"error": {"code",
"message"}}` (answers.py), never a 500.

The routes and the OpenAPI document come from one table (ENDPOINTS), so that neither can name what the other lacks.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from adapters.http.accesslog import note
from adapters.http.auth import Auth
from adapters.http.streaming import BodyTooLarge, read_body
from registry_core.accounts import PASSWORD_MAX, PASSWORD_MIN, TOKEN_SCOPES, Identity
from registry_core.listings import Access, Listings, page_size
from registry_core.policy import Resource, refusal
from registry_core.projects import LEVELS, LOCAL, Grant
from registry_core.signins import SignIn

from . import openapi, values
from .answers import ApiError, error, failure, ok
from .callers import identify, signed_in

PREFIX = "/api/v1"
BODY_MAX = 64 << 10  # bytes of a request body: every body here is a small JSON object
EXPIRY_MAX = 10 * 365 * 24 * 3600  # seconds a new token may live (expires_in): ten years


@dataclass(frozen=True, slots=True)
class Call:
    request: Request
    identity: Identity | None

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)


Handler = Callable[["PortalApi", Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str  # Starlette's path, under PREFIX; `{name:path}` is a repository name (with slashes)
    handler: Handler
    summary: str
    response: str | None  # the OpenAPI schema of the answer (openapi.SCHEMAS), None: no body
    status: int = 200
    query: tuple[str, ...] = ()
    body: str | None = None  # the OpenAPI schema of the request body
    extra: dict[str, Any] = field(default_factory=dict)


class PortalApi:
    def __init__(self, auth: Callable[[], Auth]) -> None:
        self._auth = auth
        self._listings: Listings | None = None
        self._signin: SignIn | None = None

    @property
    def auth(self) -> Auth:
        return self._auth()

    @property
    def listings(self) -> Listings:
        if self._listings is None:  # opened on first use: after the server forked its workers
            self._listings = Listings(self.auth.registry, self.auth.policy)
        return self._listings

    @property
    def signin(self) -> SignIn:
        if self._signin is None:
            self._signin = SignIn(self.auth.accounts, self.auth.throttle)
        return self._signin

    def routes(self) -> list[BaseRoute]:
        found: list[BaseRoute] = [Route(PREFIX + e.path, self._endpoint(e), methods=[e.method])
                                  for e in ENDPOINTS]
        found.append(Route(PREFIX + "/openapi.json", self._document, methods=["GET"]))
        found.append(Route(PREFIX + "/{rest:path}", self._unknown, methods=["GET", "POST", "PUT", "PATCH",
                                                                            "DELETE"]))
        return found

    def _endpoint(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                identity = await identify(request, self.auth, self.signin)
                if identity is not None:
                    note(request.scope, "account", identity.user)  # the access log's account field
                return await endpoint.handler(self, Call(request, identity))
            except Exception as exc:  # every failure answers in the API's shape, never a 500
                answer = failure(request, exc)
                if answer.status_code in (401, 403, 429):  # refused: the reason goes on the access log line
                    note(request.scope, "refusal", str(exc))
                return answer
        return run

    async def _document(self, request: Request) -> Response:
        return ok(openapi.document(ENDPOINTS, PREFIX))

    async def _unknown(self, request: Request) -> Response:
        return error(404, "NOT_FOUND", f"no endpoint {request.method} {request.url.path[:200]}: see "
                                       f"{PREFIX}/openapi.json")

    def _require(self, call: Call, access: Access, resource: Resource, action: str) -> None:
        """403 (401 for anonymous callers) unless the policy grants `action`; the refusal says which rule."""
        if action in access.granted:
            return
        if access.trashed:
            raise ApiError(403, "DENIED", f"{resource.name} is in the trash: every operation on it is refused "
                                          "until it is restored")
        why = refusal(self.auth.policy, call.identity, resource, action)
        if call.identity is None:
            raise ApiError(401, "UNAUTHORIZED", why)
        raise ApiError(403, "DENIED", why)

    async def _body(self, call: Call) -> dict[str, Any]:
        try:
            raw = await read_body(call.request, BODY_MAX)
        except BodyTooLarge:
            raise ApiError(400, "INVALID", f"a request body is at most {BODY_MAX} bytes") from None
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise ApiError(400, "INVALID", f"the body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "INVALID", "the body must be a JSON object")
        return doc

    def _paged(self, call: Call, key: str, items: list[Any], marker: str | None) -> Response:
        headers = {}
        if marker is not None:
            params = dict(call.request.query_params)
            params["last"] = marker
            headers["Link"] = f'<{call.request.url.path}?{urlencode(params)}>; rel="next"'
        return ok({key: items, "next": marker}, headers=headers)

    async def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(partial(function, *args, **kwargs))

    # -- me ---------------------------------------------------------------------------------------------------------
    async def me(self, call: Call) -> Response:
        who = call.identity
        return ok({"user": who.user if who else None, "admin": bool(who and who.admin),
                   "certified": bool(who and who.certified), "scopes": sorted(who.scopes) if who else []})

    # -- projects ---------------------------------------------------------------------------------------------------
    async def projects(self, call: Call) -> Response:
        page = await self._run(self.listings.project_list, call.identity, page_size(call.query("n")),
                               call.query("last"))
        return self._paged(call, "projects", [values.project(p) for p in page.items], page.next)

    async def create_project(self, call: Call) -> Response:
        identity = signed_in(call.identity, "modify")
        name = (await self._body(call)).get("name")
        if not isinstance(name, str):
            raise ApiError(400, "INVALID", 'the body must be {"name": "<project name>"}')
        created = await self._run(self.listings.projects.create, name, identity.user)
        return ok(values.project(await self._run(self.listings.project, identity, created.id)), 201)

    async def project(self, call: Call) -> Response:
        return ok(values.project(await self._run(self.listings.project, call.identity, call.path("id"))))

    async def repositories(self, call: Call) -> Response:
        page = await self._run(self.listings.repository_list, call.identity, call.path("id"),
                               page_size(call.query("n")), call.query("last"), call.query("filter"))
        return self._paged(call, "repositories", [values.repository(r) for r in page.items], page.next)

    def _project_admin(self, call: Call) -> str:
        view = self.listings.project(call.identity, call.path("id"))
        self._require(call, view.access, Resource("project", view.project.id), "admin")
        return view.project.id

    def _repository_admin(self, call: Call) -> str:
        view = self.listings.repository(call.identity, call.path("name"))
        self._require(call, view.access, Resource("repository", str(view.name)), "admin")
        return str(view.name)

    async def sharing(self, call: Call, target: str) -> Response:
        grants = await self._run(self.listings.projects.sharing, target)
        return ok({"grants": [values.grant(g, target) for g in grants]})

    async def share(self, call: Call, target: str) -> Response:
        level = (await self._body(call)).get("level")
        if level not in LEVELS:
            raise ApiError(400, "INVALID", f'the body must be {{"level": one of {", ".join(LEVELS)}}}')
        principal = call.path("principal")
        actor = call.identity.user if call.identity else None
        await self._run(self.listings.projects.grant, target, principal, level, actor=actor)
        return ok(values.grant(Grant(principal, level, LOCAL), target))

    async def unshare(self, call: Call, target: str) -> Response:
        actor = call.identity.user if call.identity else None
        if not await self._run(self.listings.projects.revoke, target, call.path("principal"), actor=actor):
            raise ApiError(404, "NOT_FOUND", f"{call.path('principal')[:64]} has no grant of its own on {target}")
        return Response(status_code=204)

    async def project_sharing(self, call: Call) -> Response:
        return await self.sharing(call, await self._run(self._project_admin, call))

    async def project_share(self, call: Call) -> Response:
        signed_in(call.identity, "modify")
        return await self.share(call, await self._run(self._project_admin, call))

    async def project_unshare(self, call: Call) -> Response:
        signed_in(call.identity, "modify")
        return await self.unshare(call, await self._run(self._project_admin, call))

    async def trash_project(self, call: Call) -> Response:
        return await self._trash(call, await self._run(self._project_admin, call), True)

    async def restore_project(self, call: Call) -> Response:
        return await self._trash(call, await self._run(self._project_admin, call), False)

    async def _trash(self, call: Call, target: str, trash: bool) -> Response:
        identity = signed_in(call.identity, "modify")
        change = self.listings.projects.trash if trash else self.listings.projects.restore
        await self._run(change, target, actor=identity.user)
        if "/" in target:
            return ok(values.repository(await self._run(self.listings.repository, identity, target)))
        return ok(values.project(await self._run(self.listings.project, identity, target)))

    async def purge_project(self, call: Call) -> Response:
        identity = signed_in(call.identity, "modify")
        project_id = await self._run(self._project_admin, call)
        await self._run(self._purge, project_id, identity.user)
        return Response(status_code=204)

    def _purge(self, target: str, actor: str) -> None:
        """Purge a trashed project (every repository in it) or repository (trashed itself or with its project), as
        `berth purge` does; 409 when it is not in the trash."""
        projects, registry = self.listings.projects, self.auth.registry
        if not projects.is_trashed(target):
            raise ApiError(409, "CONFLICT", f"{target} is not in the trash: trash it first, then purge it")
        for name in [target] if "/" in target else registry.repositories(f"{target}/"):
            registry.purge_repository(name, actor=actor)
        projects.forget(target, actor=actor)

    # -- repositories -----------------------------------------------------------------------------------------------
    async def repository(self, call: Call) -> Response:
        return ok(values.repository(await self._run(self.listings.repository, call.identity, call.path("name"))))

    async def repository_sharing(self, call: Call) -> Response:
        return await self.sharing(call, await self._run(self._repository_admin, call))

    async def repository_share(self, call: Call) -> Response:
        signed_in(call.identity, "modify")
        return await self.share(call, await self._run(self._repository_admin, call))

    async def repository_unshare(self, call: Call) -> Response:
        signed_in(call.identity, "modify")
        return await self.unshare(call, await self._run(self._repository_admin, call))

    async def trash_repository(self, call: Call) -> Response:
        return await self._trash(call, await self._run(self._repository_admin, call), True)

    async def restore_repository(self, call: Call) -> Response:
        return await self._trash(call, await self._run(self._repository_admin, call), False)

    async def purge_repository(self, call: Call) -> Response:
        identity = signed_in(call.identity, "modify")
        name = await self._run(self._repository_admin, call)
        await self._run(self._purge, name, identity.user)
        return Response(status_code=204)

    async def tags(self, call: Call) -> Response:
        page = await self._run(self.listings.tag_page, call.identity, call.path("name"), page_size(call.query("n")),
                               call.query("last"), call.query("sort") or "name", call.query("filter"))
        return self._paged(call, "tags", [values.tag(row) for row in page.items], page.next)

    async def synapse_tags(self, call: Call) -> Response:
        """The tag listing in the shape Synapse's clients parse (its /entity/dockerRepo/{id}/tags): offset paging."""
        sort = call.query("sort") or "CREATED_ON"
        if sort not in ("CREATED_ON", "TAG"):
            raise ApiError(400, "INVALID", "sort must be CREATED_ON or TAG")
        ascending = (call.query("ascending") or "false").lower()
        if ascending not in ("true", "false"):
            raise ApiError(400, "INVALID", "ascending must be true or false")
        limit, offset = _count(call.query("limit"), "limit", 10, 1, 1000), _count(call.query("offset"), "offset", 0,
                                                                                 0, 10**9)
        total, rows = await self._run(self.listings.tag_slice, call.identity, call.path("name"), sort,
                                      ascending == "true", limit, offset)
        return ok({"totalNumberOfResults": total, "results": [
            {"tag": row.tag, "digest": row.summary.digest, "createdOn": values.time(row.push.time)} for row in rows]})

    async def tag(self, call: Call) -> Response:
        found = await self._run(self.listings.tag, call.identity, call.path("name"), call.path("tag"))
        return ok(values.tag_detail(found))

    async def history(self, call: Call) -> Response:
        found = await self._run(self.listings.history, call.identity, call.path("name"), call.path("tag"))
        return ok({"history": [values.commit(entry) for entry in found]})

    async def delete_tag(self, call: Call) -> Response:
        def work() -> None:
            view = self.listings.repository(call.identity, call.path("name"))
            self._require(call, view.access, Resource("repository", str(view.name)), "delete")
            self.listings.tag(call.identity, str(view.name), call.path("tag"))  # NotFound for no such tag
            self.auth.registry.delete_manifest(str(view.name), call.path("tag"),
                                               call.identity.user if call.identity else None)

        await self._run(work)
        return Response(status_code=204)

    async def image(self, call: Call) -> Response:
        found = await self._run(self.listings.image, call.identity, call.path("name"), call.path("digest"))
        return ok(values.tag_detail(found))

    # -- tokens -----------------------------------------------------------------------------------------------------
    async def tokens(self, call: Call) -> Response:
        identity = signed_in(call.identity)
        accounts = self.auth.accounts

        def listing() -> list[dict[str, Any]]:
            return [values.token(t, accounts.last_used(t.id)) for t in accounts.tokens(identity.user)]
        return ok({"tokens": await self._run(listing)})

    async def create_token(self, call: Call) -> Response:
        identity = signed_in(call.identity, "modify")
        body = await self._body(call)
        scopes, label, expires_in = body.get("scopes"), body.get("label"), body.get("expires_in")
        if not isinstance(scopes, list) or not scopes or not all(s in TOKEN_SCOPES for s in scopes):
            raise ApiError(400, "INVALID", f"scopes must be a non-empty list of {', '.join(TOKEN_SCOPES)}")
        if not set(scopes) <= identity.scopes:  # a token never mints one stronger than itself
            raise ApiError(403, "DENIED", "a token can only create tokens with scopes it has itself")
        if label is not None and not isinstance(label, str):
            raise ApiError(400, "INVALID", "label must be a string")
        if expires_in is not None and (type(expires_in) is not int or not 0 < expires_in <= EXPIRY_MAX):
            raise ApiError(400, "INVALID", f"expires_in must be a number of seconds from 1 to {EXPIRY_MAX}")
        record, secret = await self._run(self.auth.accounts.create_token, identity.user, scopes, expires_in,
                                         label or "")
        host = self.auth.base_url(call.request).partition("://")[2]
        return ok({"token": values.token(record, None), "secret": secret,
                   "docker_login": f"docker login -u {identity.user} -p {secret} {host}"}, 201,
                  {"Cache-Control": "no-store"})

    async def revoke_token(self, call: Call) -> Response:
        identity = signed_in(call.identity, "modify")
        accounts = self.auth.accounts
        record = await self._run(accounts.token, call.path("id")[:64])
        if record is None or record.user != identity.user:
            raise ApiError(404, "NOT_FOUND", f"you have no token {call.path('id')[:64]}")
        await self._run(accounts.revoke, record.id)
        return Response(status_code=204)

    # -- site administration ----------------------------------------------------------------------------------------
    def _site_admin(self, call: Call, scope: str) -> Identity:
        identity = signed_in(call.identity, scope)
        if not identity.admin:
            raise ApiError(403, "DENIED", "only site administrators manage accounts")
        return identity

    async def accounts(self, call: Call) -> Response:
        self._site_admin(call, "view")
        accounts = self.auth.accounts

        def listing() -> list[dict[str, Any]]:
            return [values.account(u, accounts.has_password(u.name)) for u in accounts.users()]
        return ok({"accounts": await self._run(listing)})

    async def create_account(self, call: Call) -> Response:
        self._site_admin(call, "modify")
        body = await self._body(call)
        name = body.get("name")
        if not isinstance(name, str):
            raise ApiError(400, "INVALID", 'the body must be {"name": ..., "certified"?, "admin"?, "password"?}')
        flags = _flags(body, ("certified", "admin"))
        password = _password(body)
        accounts = self.auth.accounts

        def work() -> dict[str, Any]:
            if password is not None and not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:  # before add_user
                raise ApiError(400, "INVALID", f"a password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
            user = accounts.add_user(name, flags.get("certified", False), flags.get("admin", False))
            if password is not None:
                accounts.set_password(name, password)
            return values.account(user, password is not None)
        return ok(await self._run(work), 201)

    async def update_account(self, call: Call) -> Response:
        self._site_admin(call, "modify")
        body = await self._body(call)
        flags = _flags(body, ("certified", "admin", "disabled"))
        password = _password(body)
        name = call.path("name")
        accounts = self.auth.accounts

        def work() -> dict[str, Any]:
            if accounts.user(name) is None:
                raise ApiError(404, "NOT_FOUND", f"no account {name[:64]}")
            if password is not None:
                accounts.set_password(name, password)
            user = accounts.update_user(name, flags.get("certified"), flags.get("admin"), flags.get("disabled"))
            return values.account(user, accounts.has_password(name))
        return ok(await self._run(work))


def _count(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 10 or not low <= int(text) <= high:
        raise ApiError(400, "INVALID", f"{name} must be an integer from {low} to {high}, got {text[:40]!r}")
    return int(text)


def _flags(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, bool]:
    found = {}
    for name in names:
        if name in body and body[name] is not None:
            if not isinstance(body[name], bool):
                raise ApiError(400, "INVALID", f"{name} must be true or false")
            found[name] = body[name]
    return found


def _password(body: dict[str, Any]) -> str | None:
    password = body.get("password")
    if password is not None and not isinstance(password, str):
        raise ApiError(400, "INVALID", "password must be a string")
    return password


_REPO = "/repositories/{name:path}"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/me", PortalApi.me, "Who is calling", "Me"),
    Endpoint("GET", "/projects", PortalApi.projects, "The projects the caller may view", "ProjectPage",
             query=("n", "last")),
    Endpoint("POST", "/projects", PortalApi.create_project, "Create a project (the caller owns it)", "Project",
             201, body="NewProject"),
    Endpoint("GET", "/projects/{id}", PortalApi.project, "A project", "Project"),
    Endpoint("DELETE", "/projects/{id}", PortalApi.purge_project, "Purge a trashed project", None, 204),
    Endpoint("GET", "/projects/{id}/repositories", PortalApi.repositories, "The project's repositories",
             "RepositoryPage", query=("n", "last", "filter")),
    Endpoint("GET", "/projects/{id}/sharing", PortalApi.project_sharing, "The project's grants", "Sharing"),
    Endpoint("PUT", "/projects/{id}/sharing/{principal}", PortalApi.project_share, "Give a principal a level",
             "Grant", body="Level"),
    Endpoint("DELETE", "/projects/{id}/sharing/{principal}", PortalApi.project_unshare, "Remove a grant", None,
             204),
    Endpoint("POST", "/projects/{id}/trash", PortalApi.trash_project, "Put the project in the trash", "Project"),
    Endpoint("POST", "/projects/{id}/restore", PortalApi.restore_project, "Take the project out of the trash",
             "Project"),
    # Sub-resources before the repository itself: `{name:path}` would take `-/tags` into the name.
    Endpoint("GET", _REPO + "/-/tags", PortalApi.tags, "The repository's tags", "TagPage",
             query=("n", "last", "sort", "filter")),
    Endpoint("GET", _REPO + "/-/synapse/tags", PortalApi.synapse_tags,
             "The tags in the shape of Synapse's docker tag listing (offset paging)", "SynapseTags",
             query=("sort_synapse", "ascending", "limit", "offset")),
    Endpoint("GET", _REPO + "/-/tags/{tag}/history", PortalApi.history, "Every move of the tag, newest first",
             "History"),
    Endpoint("GET", _REPO + "/-/tags/{tag}", PortalApi.tag, "A tag and the image it points at", "TagDetail"),
    Endpoint("DELETE", _REPO + "/-/tags/{tag}", PortalApi.delete_tag, "Delete a tag (the manifest stays)", None,
             204),
    Endpoint("GET", _REPO + "/-/manifests/{digest}", PortalApi.image, "An image by digest", "ImageDetail"),
    Endpoint("GET", _REPO + "/-/sharing", PortalApi.repository_sharing, "The repository's grants", "Sharing"),
    Endpoint("PUT", _REPO + "/-/sharing/{principal}", PortalApi.repository_share, "Give a principal a level",
             "Grant", body="Level"),
    Endpoint("DELETE", _REPO + "/-/sharing/{principal}", PortalApi.repository_unshare, "Remove a grant", None,
             204),
    Endpoint("POST", _REPO + "/-/trash", PortalApi.trash_repository, "Put the repository in the trash",
             "Repository"),
    Endpoint("POST", _REPO + "/-/restore", PortalApi.restore_repository, "Take the repository out of the trash",
             "Repository"),
    Endpoint("GET", _REPO, PortalApi.repository, "A repository", "Repository"),
    Endpoint("DELETE", _REPO, PortalApi.purge_repository, "Purge a trashed repository", None, 204),
    Endpoint("GET", "/tokens", PortalApi.tokens, "The caller's personal access tokens", "Tokens"),
    Endpoint("POST", "/tokens", PortalApi.create_token, "Create a personal access token", "NewToken", 201,
             body="TokenRequest"),
    Endpoint("DELETE", "/tokens/{id}", PortalApi.revoke_token, "Revoke one of the caller's tokens", None, 204),
    Endpoint("GET", "/admin/accounts", PortalApi.accounts, "Every account (site administrators)", "Accounts"),
    Endpoint("POST", "/admin/accounts", PortalApi.create_account, "Create an account (site administrators)",
             "Account", 201, body="NewAccount"),
    Endpoint("PATCH", "/admin/accounts/{name}", PortalApi.update_account, "Change an account (site administrators)",
             "Account", body="AccountChange"),
)
