"""The pages that change things: sharing settings, the trash, deleting a tag, and site administration.

Each asks the policy first, through the listings' Access (the same answer the JSON API gets): `admin` on a project
or repository for its sharing and its trash (the one action a policy grants on something in the trash), `delete` on
the repository to delete a tag, the account's site-admin flag for the administration page. Changes apply at once,
to registry clients too: the registry asks the same tables on its next request.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from registry_core.accounts import AccountError
from registry_core.errors import ManifestUnknown
from registry_core.listings import Access, NotFound
from registry_core.names import InvalidReference, RepositoryName, parse_reference
from registry_core.projects import LEVELS, NotInTrash, ProjectError

from . import values
from .site import PageError, Site, SiteGetter, guarded, not_found


def _refused(site: Site, request: Request, what: str) -> PageError:
    """403 for a signed-in viewer; an anonymous one is sent to sign in first (401)."""
    if site.viewer(request).identity is None:
        return PageError(401, "Sign in first", f"Sign in to {what}.")
    return PageError(403, "Not allowed", f"You may not {what}: ask an administrator of the project.")


def _project_access(site: Site, request: Request, project_id: str) -> tuple[str, Access]:
    viewer = site.viewer(request)
    try:
        view = site.listings.project(viewer.identity, project_id)
    except NotFound:
        raise not_found() from None
    return view.project.id, view.access


def _repository_access(site: Site, request: Request, name: str) -> tuple[str, Access]:
    viewer = site.viewer(request)
    try:
        view = site.listings.repository(viewer.identity, name)
    except NotFound:
        raise not_found() from None
    return str(view.name), view.access


# -- sharing --------------------------------------------------------------------------------------------------------
def _sharing_page(site: Site, request: Request, target: str, status: int = 200, **context: Any) -> Response:
    is_repository = "/" in target
    back = f"/repositories/{target}" if is_repository else f"/projects/{target}"
    return site.page(request, "sharing.html", status, target=target, back=back, is_repository=is_repository,
                     action=f"{back}/-/sharing" if is_repository else f"{back}/sharing", levels=LEVELS,
                     grants=[values.grant(g, target) for g in site.projects.sharing(target)], **context)


async def project_sharing(site: Site, request: Request) -> Response:
    target, access = _project_access(site, request, request.path_params["project_id"])
    if "admin" not in access.granted:
        raise _refused(site, request, f"see or change the sharing of {target}")
    return _sharing_page(site, request, target)


async def repository_sharing(site: Site, request: Request, name: str) -> Response:
    target, access = _repository_access(site, request, name)
    if "admin" not in access.granted:
        raise _refused(site, request, f"see or change the sharing of {target}")
    return _sharing_page(site, request, target)


async def change_project_sharing(site: Site, request: Request) -> Response:
    target, access = _project_access(site, request, request.path_params["project_id"])
    return await _change(site, request, target, access)


async def change_sharing(site: Site, request: Request, name: str) -> Response:
    target, access = _repository_access(site, request, name)
    return await _change(site, request, target, access)


async def _change(site: Site, request: Request, target: str, access: Access) -> Response:
    form = await site.form(request)
    if "admin" not in access.granted:
        raise _refused(site, request, f"change the sharing of {target}")
    actor = site.viewer(request).user
    principal = str(form.get("principal") or "").strip()
    level = str(form.get("level") or "")
    try:
        if level:
            await site.write(lambda: site.projects.grant(target, principal, level, actor=actor))
            notice = f"{principal} now has {level} on {target}."
        else:
            removed = await site.write(lambda: site.projects.revoke(target, principal, actor=actor))
            notice = f"{principal} no longer has a grant on {target}." if removed else \
                f"{principal} had no grant on {target}."
    except ProjectError as exc:
        return _sharing_page(site, request, target, 400, problem=str(exc))
    return _sharing_page(site, request, target, notice=notice)


# -- the trash ------------------------------------------------------------------------------------------------------
async def project_trash_action(site: Site, request: Request) -> Response:
    action = request.path_params["action"]
    if action not in ("trash", "restore", "purge"):
        raise not_found()
    target, access = _project_access(site, request, request.path_params["project_id"])
    return await _trash(site, request, target, access, action)


async def trash_action(site: Site, request: Request, name: str, action: str) -> Response:
    target, access = _repository_access(site, request, name)
    return await _trash(site, request, target, access, action)


async def _trash(site: Site, request: Request, target: str, access: Access, action: str) -> Response:
    await site.form(request)
    if "admin" not in access.granted:
        raise _refused(site, request, f"{action} {target}")
    actor = site.viewer(request).user
    page = f"/repositories/{target}" if "/" in target else f"/projects/{target}"
    try:
        if action == "trash":
            await site.write(lambda: site.projects.trash(target, actor=actor))
        elif action == "restore":
            await site.write(lambda: site.projects.restore(target, actor=actor))
        else:
            await site.write(lambda: site.registry.purge(target, actor=actor))
            page = f"/projects/{target.split('/', 1)[0]}" if "/" in target else "/"
    except NotInTrash as exc:
        raise PageError(409, "Not in the trash", str(exc)) from None
    except ProjectError as exc:
        raise PageError(400, "Refused", str(exc)) from None
    return site.redirect(request, page)


# -- tags -----------------------------------------------------------------------------------------------------------
async def delete_tag(site: Site, request: Request, name: str, tag: str) -> Response:
    target, access = _repository_access(site, request, name)
    await site.form(request)
    if "delete" not in access.granted:
        raise _refused(site, request, f"delete tags of {target}")
    try:
        await site.write(lambda: site.registry.delete_manifest(
            RepositoryName.parse(target), parse_reference(tag), site.viewer(request).user))
    except (ManifestUnknown, InvalidReference):
        raise not_found(f"{target} has no tag {tag[:128]}.") from None
    return site.redirect(request, f"/repositories/{target}")


# -- site administration --------------------------------------------------------------------------------------------
def _admin(site: Site, request: Request, scope: str = "view") -> None:
    if not site.signed_in(request, scope).admin:
        raise not_found()  # the page's existence is no secret, but a non-admin has nothing to do there


def _admin_page(site: Site, request: Request, status: int = 200, **context: Any) -> Response:
    accounts = [values.account(u, site.accounts.has_password(u.name)) for u in site.accounts.users()]
    projects = [{"id": p.id, "name": p.name, "owner": p.owner, "created": values.time(p.created),
                 "trashed": site.projects.is_trashed(p.id)} for p in site.projects.all()]
    return site.page(request, "admin.html", status, accounts=accounts, projects=projects, **context)


async def admin(site: Site, request: Request) -> Response:
    _admin(site, request)
    return _admin_page(site, request)


async def create_account(site: Site, request: Request) -> Response:
    form = await site.form(request)
    _admin(site, request, "modify")
    name = str(form.get("name") or "").strip()
    password = str(form.get("password") or "")
    try:
        await site.write(site.accounts.add_user, name, form.get("certified") == "true", form.get("admin") == "true")
        if password:
            await site.write(site.accounts.set_password, name, password)
    except AccountError as exc:
        return _admin_page(site, request, 400, problem=str(exc))
    return _admin_page(site, request, notice=f"Account {name} created.")


async def change_account(site: Site, request: Request) -> Response:
    form = await site.form(request)
    _admin(site, request, "modify")
    name = request.path_params["name"]
    try:
        if "certified" in form:
            certified = form.get("certified") == "true"
            await site.write(lambda: site.accounts.update_user(name, certified=certified))
            notice = f"{name} is {'now' if certified else 'no longer'} certified."
        elif "disabled" in form:
            disabled = form.get("disabled") == "true"
            await site.write(lambda: site.accounts.update_user(name, disabled=disabled))
            if disabled:  # its sessions end with it (its tokens stop working through the accounts' check)
                await site.write(site.cookies.sessions.close_user, name)
            notice = f"{name} is {'disabled: it can neither sign in nor use its tokens' if disabled else 'enabled'}."
        elif form.get("password"):
            await site.write(site.accounts.set_password, name, str(form.get("password")))
            await site.write(site.cookies.sessions.close_user, name)
            notice = f"Password of {name} set; its sessions were signed out."
        else:
            return _admin_page(site, request, 400, problem="Nothing to change.")
    except AccountError as exc:
        return _admin_page(site, request, 400, problem=str(exc))
    return _admin_page(site, request, notice=notice)


def routes(site: SiteGetter) -> list[BaseRoute]:
    return [
        Route("/projects/{project_id}/sharing", guarded(site, project_sharing), methods=["GET"]),
        Route("/projects/{project_id}/sharing", guarded(site, change_project_sharing), methods=["POST"]),
        Route("/projects/{project_id}/{action:str}", guarded(site, project_trash_action), methods=["POST"]),
        Route("/admin", guarded(site, admin), methods=["GET"]),
        Route("/admin/accounts", guarded(site, create_account), methods=["POST"]),
        Route("/admin/accounts/{name}", guarded(site, change_account), methods=["POST"]),
    ]
