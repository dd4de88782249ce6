"""The policy plugin: built-ins by name, a third-party policy by module:callable, and the project rules directly."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cas import BlobStore
from registry_core.accounts import Accounts, Identity
from registry_core.policy import OpenPolicy, ProjectPolicy, Resource, load_policy, requires_login
from registry_core.projects import Projects
from registry_core.registry import Registry

ALL = frozenset({"pull", "push", "delete"})


class PullOnly:
    """A third-party policy: anyone may pull, nobody may change anything."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def grant(self, identity: Identity | None, resource: Resource, actions: frozenset[str]) -> frozenset[str]:
        return actions & {"pull"}


def test_loading_policies(make_store: Callable[..., BlobStore]) -> None:
    registry = Registry(make_store())
    assert isinstance(load_policy("open", registry), OpenPolicy) and not requires_login(load_policy("open", registry))
    assert isinstance(load_policy("project", registry), ProjectPolicy)
    custom = load_policy("tests.registry_core.test_policy:PullOnly", registry)
    assert custom.grant(None, Resource("repository", "syn1/x"), ALL) == {"pull"} and requires_login(custom)
    with pytest.raises(ValueError):
        load_policy("nonsense", registry)


def test_project_rules(make_store: Callable[..., BlobStore]) -> None:
    registry = Registry(make_store())
    projects = Projects(registry.store)
    policy = ProjectPolicy(registry)
    for name in ("owner", "ed"):
        Accounts(registry.store).add_user(name)
    project = projects.create("p", "owner").id
    repo = Resource("repository", f"{project}/app")

    def who(name: str, certified: bool = True, scopes: tuple[str, ...] = ("download", "modify"),
            admin: bool = False) -> Identity:
        return Identity(name, certified, admin, frozenset(scopes))

    assert policy.grant(who("owner"), repo, ALL) == ALL | {"view"}
    assert policy.grant(who("stranger"), repo, ALL) == frozenset()
    assert policy.grant(who("root", admin=True), repo, ALL) == ALL | {"view"}  # site admin
    projects.grant(project, "ed", "edit")
    assert policy.grant(who("ed"), repo, ALL) == {"pull", "push", "view"}
    assert policy.grant(who("ed", certified=False), repo, ALL) == {"pull", "view"}
    assert policy.grant(who("ed", scopes=("download",)), repo, ALL) == {"pull", "view"}
    assert policy.grant(who("ed", scopes=("view",)), repo, ALL) == {"view"}
    projects.grant(project, "public", "download")
    assert policy.grant(None, repo, ALL) == {"pull", "view"}
    projects.trash(project)
    assert policy.grant(who("owner"), repo, ALL) == frozenset()
    projects.restore(project)
    assert policy.grant(who("owner"), Resource("repository", "syn424242/app"), ALL) == frozenset()  # no project
    assert policy.grant(who("owner"), Resource("repository", "NOT A NAME"), ALL) == frozenset()
