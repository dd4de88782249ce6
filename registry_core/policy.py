"""The permission policy plugin: one small interface, two built-in policies.

    class Policy(Protocol):
        def grant(self, identity: Identity | None, resource: Resource, actions: frozenset[str]) -> frozenset[str]

Given who asks (None: anonymous), a resource and the actions asked for, a policy answers the actions it grants (a
subset; a partial grant is not an error). Resources and actions follow the Docker token scope grammar:
`repository:<name>` with `pull`, `push`, `delete` (and `view`: list tags, see the repository), and
`registry:catalog` with `*`. `berth serve --policy NAME|module:callable` picks one; a third-party policy is a callable
taking the Registry and returning an object with `grant`, so it needs no change to Berth.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .accounts import Identity
from .names import InvalidName, RepositoryName
from .projects import Projects, rank

if TYPE_CHECKING:
    from .registry import Registry

ACTIONS = frozenset({"pull", "push", "delete", "view", "*"})
# The level each repository action needs, and the personal-access-token scope it needs.
NEEDS = {"view": ("view", "view"), "pull": ("download", "download"), "push": ("edit", "modify"),
         "delete": ("edit-delete", "modify")}


@dataclass(frozen=True, slots=True)
class Resource:
    type: str  # "repository" or "registry"
    name: str  # a repository name, or "catalog"


class Policy(Protocol):
    def grant(self, identity: Identity | None, resource: Resource, actions: frozenset[str]) -> frozenset[str]: ...


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
            # The catalog itself is open to anyone who asks; it lists only what the caller may view.
            return actions & {"*"} if resource.name == "catalog" else frozenset()
        if resource.type != "repository":
            return frozenset()
        try:
            repo = RepositoryName.parse(resource.name)
        except InvalidName:
            return frozenset()
        store = self._registry.store
        with store.index.read() as txn:
            if self._projects.is_trashed(str(repo), txn):
                return frozenset()
            level = self._projects.level(identity.user if identity else None, repo, txn)
        if identity is not None and identity.admin:
            level = rank("admin")
        granted = set()
        if "pull" in actions:
            actions = actions | {"view"}  # asking to pull asks to see; clients never ask for "view" by name
        for action in actions & NEEDS.keys():
            needed_level, scope = NEEDS[action]
            if level < rank(needed_level):
                continue
            if identity is None:
                if action in ("view", "pull"):  # anonymous callers read what is public
                    granted.add(action)
                continue
            if scope not in identity.scopes and not (scope == "view" and identity.scopes):
                continue
            if action in ("push", "delete") and not identity.certified:
                continue
            granted.add(action)
        if "*" in actions and granted >= {"pull", "push", "delete"}:
            granted.add("*")
        return frozenset(granted)


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
