"""The permission policy plugin: one small interface, two built-in policies.

    class Policy(Protocol):
        def grant(self, identity: Identity | None, resource: Resource, actions: frozenset[str]) -> frozenset[str]

        def refusal(self, identity: Identity | None, resource: Resource, action: str) -> str   # optional

Given who asks (None: anonymous), a resource and the actions asked for, a policy answers the actions it grants (a
subset; a partial grant is not an error). `refusal` says in one sentence which rule refuses an action `grant` did not
grant: the adapters put it in the error a client shows (docker, podman and skopeo print the message) and in the
server's log. It is asked only after a refusal, never on the hot path; a policy without it gets a generic sentence.

Resources and actions follow the Docker token scope grammar: `repository:<name>` with `pull`, `push`, `delete`
(and `view`: list tags, see the repository), `registry:catalog` and `registry:events` with `*`, and (asked by the
event feed, never in a token) `project:<id>` with `view`: may the caller see events about the project itself.
`admin` (never in a token: the token endpoint passes only ACTIONS) is asked by the portal, on a repository or a
project: may the caller change its sharing, trash, restore or purge it. It is the one action a policy may grant on
something in the trash (its administrators see it, and restore it).
`berth serve --policy NAME` picks a built-in one, `--policy module:callable` a third-party one: a callable taking the
Registry and returning an object with `grant`, so it needs no change to Berth.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .accounts import Identity
from .names import InvalidName, RepositoryName
from .projects import LEVELS, PUBLIC, Projects, rank

if TYPE_CHECKING:
    from .registry import Registry

ACTIONS = frozenset({"pull", "push", "delete", "view", "*"})
# The level each repository action needs, and the personal-access-token scope it needs.
NEEDS = {"view": ("view", "view"), "pull": ("download", "download"), "push": ("edit", "modify"),
         "delete": ("edit-delete", "modify"), "admin": ("admin", "modify")}


@dataclass(frozen=True, slots=True)
class Resource:
    type: str  # "repository", "registry" or "project"
    name: str  # a repository name, "catalog" or "events", or a project id


class Policy(Protocol):
    def grant(self, identity: Identity | None, resource: Resource, actions: frozenset[str]) -> frozenset[str]: ...


def refusal(policy: Policy, identity: Identity | None, resource: Resource, action: str) -> str:
    """Why `policy` does not grant `action` on `resource` to `identity`, in a sentence a user can act on."""
    explain = getattr(policy, "refusal", None)
    if explain is not None:
        return str(explain(identity, resource, action))
    who = identity.user if identity is not None else "anonymous callers"
    return f"{action} on {resource.name} is not granted to {who} by the registry's policy"


class OpenPolicy:
    """Everything is allowed, to everyone (local development)."""

    requires_login = False

    def grant(self, identity: Identity | None, resource: Resource, actions: frozenset[str]) -> frozenset[str]:
        return actions


class ProjectPolicy:
    """Projects, grants, certified accounts and the trash (see projects.py and the README's access rules)."""

    requires_login = True

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._projects = Projects(registry.store)

    def grant(self, identity: Identity | None, resource: Resource, actions: frozenset[str]) -> frozenset[str]:
        if resource.type == "registry":
            # The catalog and the event feed are open to anyone who asks; they show only what the caller may view.
            return actions & {"*"} if resource.name in ("catalog", "events") else frozenset()
        if resource.type == "project":
            # What the project's own grants allow (view: see it and its events; admin: its sharing and trash).
            level = self._project_level(identity, resource.name)
            return frozenset(a for a in actions & NEEDS.keys() if _rule(identity, level, a) is None)
        if resource.type != "repository":
            return frozenset()
        found = self._level(identity, resource.name)
        if found is None:
            return frozenset()
        level, trashed = found
        if trashed:  # every operation refused; only its administrators still administer it (restore, purge)
            return frozenset({"admin"}) if "admin" in actions and _rule(identity, level, "admin") is None \
                else frozenset()
        granted = set()
        if "pull" in actions:
            actions = actions | {"view"}  # asking to pull asks to see; clients never ask for "view" by name
        for action in actions & NEEDS.keys():
            if _rule(identity, level, action) is None:
                granted.add(action)
        if "*" in actions and granted >= {"pull", "push", "delete"}:
            granted.add("*")
        return frozenset(granted)

    def refusal(self, identity: Identity | None, resource: Resource, action: str) -> str:
        name = resource.name
        if resource.type != "repository":
            return f"{resource.type}:{name} is not granted to anyone"
        found = self._level(identity, name)
        if found is None:
            return (f"{name} is not inside a project: repositories live under a project id, "
                    f"<project id>/<repository> (e.g. syn12345/{name.rsplit('/', 1)[-1]})")
        level, trashed = found
        if trashed and level >= rank("view"):  # only those who may see it learn that it is in the trash
            return f"{name} is in the trash: every operation on it is refused until it is restored"
        return _rule(identity, level, action, name) or f"{action} on {name} is not granted"

    def _project_level(self, identity: Identity | None, project_id: str) -> int:
        """The level on the project itself: its owner and site admins have admin, others their grant on the project
        (not one on a repository in it). The actions then need the token scopes they need on a repository."""
        with self._registry.store.index.read() as txn:
            project = self._projects.get(project_id, txn)
            if project is None:
                level = -1
            elif identity is not None and identity.user == project.owner:
                level = rank("admin")
            else:
                grants = self._projects.grants(project_id, txn)
                principals = [PUBLIC] + ([identity.user] if identity is not None else [])
                level = max((rank(grants.get(p)) for p in principals), default=-1)
        if identity is not None and identity.admin:
            level = rank("admin")
        return level

    def _level(self, identity: Identity | None, name: str) -> tuple[int, bool] | None:
        """(level, trashed) of `identity` on the repository; None for a name outside any project."""
        try:
            repo = RepositoryName.parse(name)
        except InvalidName:
            return None
        if repo.project is None:
            return None
        with self._registry.store.index.read() as txn:
            trashed = self._projects.is_trashed(str(repo), txn)
            level = self._projects.level(identity.user if identity else None, repo, txn)
        if identity is not None and identity.admin:
            level = rank("admin")
        return level, trashed


def _rule(identity: Identity | None, level: int, action: str, name: str = "") -> str | None:
    """None when the project policy's rules let `identity` with `level` do `action`; else the rule that refuses."""
    if action not in NEEDS:
        return f"{action} is not an action on repositories"
    needed_level, scope = NEEDS[action]
    if level < rank(needed_level):
        if identity is None:
            return (f"anonymous access to {name} ({action}) is not granted: log in with a personal access token "
                    f"(docker login -u <anything> -p <token>)")
        have = f"has only {LEVELS[level]}" if level >= 0 else "has no grant"
        return f"{identity.user} {have} on {name}; {action} needs {needed_level} (ask an administrator of the project)"
    if identity is None:
        if action in ("view", "pull"):  # anonymous callers read what is public
            return None
        return (f"anonymous callers cannot {action} {name}: log in with a personal access token "
                f"(docker login -u <anything> -p <token>)")
    if scope not in identity.scopes and not (scope == "view" and identity.scopes):
        return (f"the personal access token lacks the {scope} scope that {action} needs "
                f"(it has {', '.join(sorted(identity.scopes)) or 'none'}): create one with --scope including {scope}")
    if action in ("push", "delete") and not identity.certified and not identity.admin:
        return f"account {identity.user} is not certified: only certified accounts may {action}"
    return None


BUILT_IN: dict[str, Callable[[Registry], Policy]] = {"open": lambda registry: OpenPolicy(),
                                                     "project": ProjectPolicy}


def load_policy(spec: str, registry: Registry) -> Policy:
    """A built-in name, or `module:callable` (called with the Registry)."""
    if spec in BUILT_IN:
        return BUILT_IN[spec](registry)
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"unknown policy {spec!r}: use {' or '.join(BUILT_IN)} or module:callable")
    factory = getattr(importlib.import_module(module_name), attribute)
    policy: Policy = factory(registry)
    return policy


def requires_login(policy: Policy) -> bool:
    """Whether callers need a token: True unless the policy says otherwise (OpenPolicy does)."""
    return bool(getattr(policy, "requires_login", True))
