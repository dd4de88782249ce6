"""The JSON values of the portal's API (PORTAL-API.md "Values"), from registry_core's listings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from registry_core.accounts import PersonalToken, User
from registry_core.images import Detail, Summary
from registry_core.listings import ProjectView, RepositoryView, TagRow, TagView
from registry_core.projects import IGNORED, INHERITED, OWNER, Grant
from registry_core.schema import HistoryEntry


def time(moment: float | None) -> str | None:
    """RFC 3339 UTC with microseconds, e.g. 2026-12-02T03:40:00.000000Z."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def project(view: ProjectView) -> dict[str, Any]:
    p = view.project
    return {"id": p.id, "name": p.name, "owner": p.owner, "trashed": view.access.trashed, "created": time(p.created),
            "permission": view.access.permission, "repositories": view.repositories}


def repository(view: RepositoryView) -> dict[str, Any]:
    last = view.last_push
    return {"name": str(view.name), "project": view.name.project, "tags": view.tags, "size": view.size,
            "last_push": {"time": time(last.push.time), "actor": last.push.actor, "tag": last.tag} if last else None,
            "trashed": view.access.trashed, "permission": view.access.permission}


def _summary(summary: Summary) -> dict[str, Any]:
    return {"digest": summary.digest, "media_type": summary.media_type, "kind": summary.kind,
            "platforms": list(summary.platforms), "size": summary.size}


def tag(row: TagRow) -> dict[str, Any]:
    return {"tag": row.tag, **_summary(row.summary), "pushed_at": time(row.push.time), "pushed_by": row.push.actor}


def _detail(detail: Detail) -> dict[str, Any]:
    config = detail.config
    return {
        **_summary(detail.summary),
        "manifest_size": detail.summary.manifest_size,
        "artifact_type": detail.summary.artifact_type,
        "annotations": detail.annotations,
        "children": [{"digest": c.digest, "media_type": c.media_type, "platform": c.platform, "size": c.size}
                     for c in detail.children],
        "config": {"created": config.created, "os": config.os, "architecture": config.architecture,
                   "entrypoint": config.entrypoint, "cmd": config.cmd, "labels": config.labels} if config else None,
        "layers": [{"digest": layer.digest, "media_type": layer.media_type, "size": layer.size,
                    "created_by": layer.created_by} for layer in detail.layers],
    }


def tag_detail(view: TagView) -> dict[str, Any]:
    """TagDetail (with a tag) or ImageDetail (by digest: no tag, no pushed_*)."""
    out: dict[str, Any] = {}
    if view.tag is not None:
        out["tag"] = view.tag
    out.update(_detail(view.detail))
    if view.tag is not None:
        out["pushed_at"] = time(view.push.time) if view.push else None
        out["pushed_by"] = view.push.actor if view.push else None
    out["referrers"] = [{"digest": r.get("digest"), "media_type": r.get("mediaType"),
                         "artifact_type": r.get("artifactType"), "size": r.get("size")} for r in view.referrers]
    return out


def commit(entry: HistoryEntry) -> dict[str, Any]:
    return {"digest": entry.digest, "time": time(entry.time), "actor": entry.actor}


def grant(found: Grant, target: str) -> dict[str, Any]:
    """A grant as the sharing settings show it: `source` says whether it is the owner's, the target's own (local),
    the project's in force on a repository (inherited) or the project's not in force there (ignored: the repository
    has grants of its own)."""
    project_id = target.split("/", 1)[0]
    inherited = found.source in (INHERITED, IGNORED) or (found.source == OWNER and "/" in target)
    return {"principal": found.principal, "level": found.level, "inherited_from": project_id if inherited else None,
            "source": found.source, "in_force": found.source != IGNORED}


def token(record: PersonalToken, last_used: float | None) -> dict[str, Any]:
    return {"id": record.id, "label": record.label or None, "scopes": list(record.scopes),
            "created": time(record.created), "expires": time(record.expires), "last_used": time(last_used),
            "revoked": record.revoked}


def account(user: User, has_password: bool) -> dict[str, Any]:
    return {"name": user.name, "certified": user.certified, "admin": user.admin, "disabled": user.disabled,
            "created": time(user.created), "password": has_password}
