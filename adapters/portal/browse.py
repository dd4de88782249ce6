"""The pages that show the registry: projects, a project's repositories, a repository's tags, a tag or image.

What they show comes from registry_core.listings, as values.py writes it: the same queries, values and policy checks
as the JSON API. A repository the viewer may not see answers the same "not found" page as one that does not exist.
Repository names contain `/`, so a repository's sub-pages follow the path segment `-` (never a valid name
component), as in the API: /repositories/syn10001/tools/-/tags/v1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from registry_core.listings import InvalidQuery, NotFound, RepositoryView, TagView, page_size
from registry_core.projects import ProjectError

from . import manage, values
from .site import PageError, Site, SiteGetter, guarded, not_found


@contextmanager
def _answers() -> Iterator[None]:
    """The listings' refusals as pages: not found (also for what the viewer may not see), a bad query."""
    try:
        yield
    except NotFound as exc:  # the listings' message reads the same for hidden and missing (or says "trash" to
        text = str(exc)[:300]  # those the policy tells so)
        text = text[:1].upper() + text[1:]
        raise not_found(f"{text}." if "trash" in text else f"{text}, or you may not see it.") from None
    except InvalidQuery as exc:
        raise PageError(400, "Bad request", str(exc)) from None


def _query(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value if value else None


def _next_url(base: str, marker: str | None, **params: str | None) -> str | None:
    if marker is None:
        return None
    query = {k: v for k, v in params.items() if v} | {"last": marker}
    return f"{base}?{urlencode(query)}"


# -- pages ----------------------------------------------------------------------------------------------------------
async def projects(site: Site, request: Request, **context: Any) -> Response:
    viewer = site.viewer(request)
    with _answers():
        found = site.listings.project_list(viewer.identity, page_size(_query(request, "n")), _query(request, "last"))
    return site.page(request, "projects.html", int(context.pop("status", 200)),
                     projects=[values.project(v) for v in found.items],
                     next_url=_next_url("/", found.next, n=_query(request, "n")), **context)


async def create_project(site: Site, request: Request) -> Response:
    form = await site.form(request)
    viewer = site.signed_in(request, "modify")
    name = str(form.get("name") or "").strip()
    try:
        project = await site.write(site.projects.create, name, viewer.user or "")
    except ProjectError as exc:
        return await projects(site, request, status=400, problem=str(exc))
    return site.redirect(request, f"/projects/{project.id}")


async def project(site: Site, request: Request) -> Response:
    viewer = site.viewer(request)
    project_id = request.path_params["project_id"]
    contains = _query(request, "filter")
    with _answers():
        view = site.listings.project(viewer.identity, project_id)
        found = site.listings.repository_list(viewer.identity, view.project.id, page_size(_query(request, "n")),
                                              _query(request, "last"), contains)
    base = f"/projects/{view.project.id}"
    return site.page(request, "project.html", project=values.project(view), filter=contains or "",
                     repositories=[values.repository(v) for v in found.items], host=site.host(request),
                     may_administer="admin" in view.access.granted,
                     next_url=_next_url(base, found.next, filter=contains, n=_query(request, "n")))


def split(path: str) -> tuple[str, str]:
    """(repository name, sub-path after `/-/`) of a /repositories/ path."""
    name, marker, rest = path.partition("/-/")
    if not marker and path.endswith("/-"):
        name, rest = path[:-2], ""
    return name.strip("/"), rest


async def repository_get(site: Site, request: Request) -> Response:
    name, rest = split(request.path_params["path"])
    if rest == "":
        return await repository(site, request, name)
    if rest.startswith("tags/") and rest.count("/") == 1:
        return await tag(site, request, name, rest[len("tags/"):])
    if rest.startswith("manifests/") and rest.count("/") == 1:
        return await image(site, request, name, rest[len("manifests/"):])
    if rest == "sharing":
        return await manage.repository_sharing(site, request, name)
    raise not_found()


async def repository_post(site: Site, request: Request) -> Response:
    name, rest = split(request.path_params["path"])
    if rest in ("trash", "restore", "purge"):
        return await manage.trash_action(site, request, name, rest)
    if rest == "sharing":
        return await manage.change_sharing(site, request, name)
    if rest.startswith("tags/") and rest.endswith("/delete") and rest.count("/") == 2:
        return await manage.delete_tag(site, request, name, rest.split("/")[1])
    raise not_found()


async def repository(site: Site, request: Request, name: str) -> Response:
    viewer = site.viewer(request)
    sort = _query(request, "sort") or "name"
    contains = _query(request, "filter")
    with _answers():
        view = site.listings.repository(viewer.identity, name)
        found = site.listings.tag_page(viewer.identity, name, page_size(_query(request, "n")), _query(request, "last"),
                                       sort, contains)
    rows = [values.tag(r) for r in found.items]
    example = next((r for r in rows if r["tag"] == "latest"), rows[0] if rows else None)
    base = f"/repositories/{view.name}"
    return site.page(request, "repository.html", repo=values.repository(view), tags=rows, example=example,
                     base=base, sort=sort, filter=contains or "", host=site.host(request),
                     in_trash=site.projects.in_trash(str(view.name)),
                     may_administer="admin" in view.access.granted, may_delete="delete" in view.access.granted,
                     next_url=_next_url(base, found.next, sort=sort if sort != "name" else None, filter=contains,
                                        n=_query(request, "n")))


async def tag(site: Site, request: Request, name: str, tag_name: str) -> Response:
    viewer = site.viewer(request)
    with _answers():
        view = site.listings.repository(viewer.identity, name)
        found = site.listings.tag(viewer.identity, name, tag_name)
        history = site.listings.history(viewer.identity, name, tag_name)
    return _tag_page(site, request, view, found, [values.commit(h) for h in history])


async def image(site: Site, request: Request, name: str, digest: str) -> Response:
    viewer = site.viewer(request)
    with _answers():
        view = site.listings.repository(viewer.identity, name)
        found = site.listings.image(viewer.identity, name, digest)
    return _tag_page(site, request, view, found, None)


def _tag_page(site: Site, request: Request, view: RepositoryView, found: TagView,
              history: list[dict[str, Any]] | None) -> Response:
    return site.page(request, "tag.html", repo=values.repository(view), tag=values.tag_detail(found), history=history,
                     base=f"/repositories/{view.name}", host=site.host(request),
                     may_delete="delete" in view.access.granted)


async def not_a_page(site: Site, request: Request) -> Response:
    raise not_found()


def routes(site: SiteGetter) -> list[BaseRoute]:
    return [
        Route("/", guarded(site, projects), methods=["GET"]),
        Route("/projects", guarded(site, create_project), methods=["POST"]),
        Route("/projects/{project_id}", guarded(site, project), methods=["GET"]),
        Route("/repositories/{path:path}", guarded(site, repository_get), methods=["GET"]),
        Route("/repositories/{path:path}", guarded(site, repository_post), methods=["POST"]),
    ]
