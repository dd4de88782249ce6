"""Purging a project or repository from the trash: its manifests, tags, links and referrer edges go (Registry.
purge_repository, for each repository of a project), then its grants and trash mark (Projects.forget; a project
itself too). cas collects the blobs nothing else holds once their grace period is over (`berth gc`).

One function for every edge that purges (the CLI, the JSON API, the portal's pages), so that they agree on what
may be purged: what is in the trash, itself or with its project (as `berth purge` has it).
"""

from __future__ import annotations

from .projects import ProjectError, Projects
from .registry import Registry


class NotInTrash(ProjectError):
    """A purge of something that is not in the trash."""


def purge(registry: Registry, target: str, *, actor: str | None = None) -> int:
    """Purge `target` (`syn123` or `syn123/repo`, in the trash); returns how many manifests were dropped."""
    projects = Projects(registry.store)
    target = projects.check_target(target)
    if not projects.is_trashed(target):
        raise NotInTrash(f"{target} is not in the trash: trash it first, then purge it")
    repositories = [target] if "/" in target else registry.repositories(f"{target}/")
    dropped = sum(registry.purge_repository(name, actor=actor) for name in repositories)
    projects.forget(target, actor=actor)  # a project's forget drops the grants and trash marks under it too
    return dropped
