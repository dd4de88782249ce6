"""Purging from the trash (Registry.purge): only what is in the trash (itself or with its project); a project
goes with every repository in it, and their grants; the names become free."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cas import BlobStore, Digest
from registry_core.accounts import Accounts
from registry_core.projects import NotInTrash, Projects
from registry_core.registry import Registry
from tests.registry_core.values import name_of


def test_purge_takes_only_what_is_itself_in_the_trash(make_store: Callable[..., BlobStore]) -> None:
    registry = Registry(make_store())
    Accounts(registry.store).add_user("owner")
    projects = Projects(registry.store)
    project = projects.create("p", "owner").id
    config = b"{}"
    for name in ("a", "b"):
        registry.ingest_blob(name_of(f"{project}/{name}"), config, Digest.of(config))
    projects.grant(f"{project}/a", "public", "view")

    with pytest.raises(NotInTrash):
        registry.purge(f"{project}/a")
    projects.trash(project)
    assert projects.is_trashed(f"{project}/a") and not projects.in_trash(f"{project}/a")
    registry.purge(f"{project}/a", actor="owner")  # in the trash with its project: may go alone
    assert registry.repositories(f"{project}/") == [f"{project}/b"] and projects.grants(f"{project}/a") == {}
    projects.restore(project)
    with pytest.raises(NotInTrash):
        registry.purge(f"{project}/b")

    projects.trash(project)
    registry.purge(project, actor="owner")
    assert registry.repositories(f"{project}/") == [] and projects.get(project) is None
