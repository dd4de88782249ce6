"""Purging a project or repository from the trash: its manifests, tags, links and referrer edges go (Registry.
purge_repository, for each repository of a project), then its grants and trash mark (Projects.forget; a project
itself too). cas collects the blobs nothing else holds once their grace period is over (`berth gc`).

One function for every edge that purges (the CLI, the JSON API, the portal's pages), so that they agree on what
may be purged: only what is itself in the trash (a repository of a trashed project is purged with its project).
"""

from __future__ import annotations

from .projects import ProjectError, Projects
from .registry import Registry


class NotInTrash(ProjectError):
    """A purge of something that is not itself in the trash."""


def purge(registry: Registry, target: str, *, actor: str | None = None) -> int:
    """Purge `target` (`syn123` or `syn123/repo`, itself in the trash); returns how many manifests were dropped."""
    projects = Projects(registry.store)
    target = projects.check_target(target)
    if not projects.in_trash(target):
        raise NotInTrash(f"{target} is not in the trash: trash it first, then purge it")
    repositories = [target] if "/" in target else registry.repositories(f"{target}/")
    dropped = 0
    for name in repositories:
        dropped += registry.purge_repository(name, actor=actor)
        projects.forget(name, actor=actor)
    if "/" not in target:
        projects.forget(target, actor=actor)
    return dropped
