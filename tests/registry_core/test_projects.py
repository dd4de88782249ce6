"""Accounts and projects keep to their rules: grants name real principals, `public` is nobody's name, an owner's
project names are unique, the trash takes only what exists, a removed account leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import BlobStore, Digest
from registry_core.accounts import PUBLIC, AccountError, Accounts
from registry_core.names import InvalidName, RepositoryName
from registry_core.projects import IGNORED, INHERITED, LEVELS, LOCAL, OWNER, Grant, ProjectError, Projects, rank
from registry_core.registry import Registry
from tests.registry_core.values import name_of


@pytest.fixture
def registry(make_store: Callable[..., BlobStore]) -> Registry:
    registry = Registry(make_store())
    accounts = Accounts(registry.store)
    for name in ("owner", "ann", "bob"):
        accounts.add_user(name, certified=True)
    return registry


def push(registry: Registry, repo: str) -> None:
    registry.ingest_blob(name_of(repo), b"{}", Digest.of(b"{}"))  # writing to a repository makes it exist


def test_public_is_no_user_name(registry: Registry) -> None:
    with pytest.raises(AccountError, match="stands for everyone"):
        Accounts(registry.store).add_user(PUBLIC)


def test_grants_go_to_existing_users_or_public(registry: Registry) -> None:
    projects = Projects(registry.store)
    project = projects.create("p", "owner").id
    for stranger in ("carol", "", "x\0y", "Public"):
        with pytest.raises(ProjectError, match="no user"):
            projects.grant(project, stranger, "view")
    projects.grant(project, PUBLIC, "view")
    projects.grant(project, "ann", "edit")
    assert projects.grants(project) == {PUBLIC: "view", "ann": "edit"}
    with pytest.raises(ProjectError, match="no project"):
        projects.grant("syn424242", "ann", "view")


def test_a_project_needs_an_existing_owner_and_a_name_of_its_own(registry: Registry) -> None:
    projects = Projects(registry.store)
    with pytest.raises(ProjectError, match="no user carol"):
        projects.create("p", "carol")
    first = projects.create("p", "owner")
    with pytest.raises(ProjectError, match=first.id):
        projects.create("p", "owner")
    assert projects.create("p", "ann").owner == "ann"  # another owner may use the name
    assert projects.create("q", "owner").name == "q"
    assert [p.name for p in projects.all()] == ["p", "p", "q"]


def test_trash_and_restore_refuse_what_does_not_exist(registry: Registry) -> None:
    projects = Projects(registry.store)
    project = projects.create("p", "owner").id
    with pytest.raises(ProjectError, match="no project"):
        projects.trash("syn424242")
    with pytest.raises(ProjectError, match="no project"):
        projects.restore("syn424242")
    with pytest.raises(ProjectError, match="nothing was ever pushed"):
        projects.trash(f"{project}/never-pushed")
    with pytest.raises(InvalidName):
        projects.trash("Not A Name")
    push(registry, f"{project}/app")
    assert projects.trash(f"{project}/app") is True
    assert projects.trash(f"{project}/app") is False  # already there
    assert projects.is_trashed(f"{project}/app") and not projects.is_trashed(project)
    assert projects.restore(f"{project}/app") is True
    assert projects.restore(f"{project}/app") is False
    assert projects.trash(project) is True and projects.is_trashed(f"{project}/app") and projects.is_trashed(project)


def test_removing_a_user_removes_its_tokens_and_grants(registry: Registry) -> None:
    accounts, projects = Accounts(registry.store), Projects(registry.store)
    project = projects.create("p", "owner").id
    projects.grant(project, "ann", "edit")
    projects.grant(f"{project}/app", "ann", "download")
    projects.grant(f"{project}/app", "bob", "download")
    record, secret = accounts.create_token("ann", ["download"])
    accounts.create_token("ann", ["view"])
    assert accounts.authenticate(secret) is not None
    assert projects.remove_user("ann") == (2, 2)
    assert accounts.user("ann") is None and accounts.token(record.id) is None and accounts.tokens("ann") == []
    assert accounts.authenticate(secret) is None
    assert projects.grants(project) == {} and projects.grants(f"{project}/app") == {"bob": "download"}
    accounts.add_user("ann")  # a new account of the same name inherits nothing
    with registry.store.index.read() as txn:
        assert projects.level("ann", RepositoryName.parse(f"{project}/other"), txn) == -1
    with pytest.raises(AccountError, match="no user carol"):
        projects.remove_user("carol")
    with pytest.raises(ProjectError, match=f"owner owns {project}"):
        projects.remove_user("owner")
    assert accounts.user("owner") is not None


def test_sharing_lists_what_level_reads(registry: Registry) -> None:
    projects = Projects(registry.store)
    project = projects.create("p", "owner").id
    repo = f"{project}/app"
    projects.grant(project, "ann", "edit")
    projects.grant(project, PUBLIC, "view")
    assert projects.sharing(project) == [Grant("owner", "admin", OWNER), Grant("ann", "edit", LOCAL),
                                         Grant(PUBLIC, "view", LOCAL)]
    assert projects.sharing(repo) == [Grant("owner", "admin", OWNER), Grant("ann", "edit", INHERITED),
                                      Grant(PUBLIC, "view", INHERITED)]
    projects.grant(repo, "bob", "download")
    assert projects.sharing(repo) == [Grant("owner", "admin", OWNER), Grant("bob", "download", LOCAL),
                                      Grant("ann", "edit", IGNORED), Grant(PUBLIC, "view", IGNORED)]
    with pytest.raises(ProjectError, match="no project"):
        projects.sharing("syn424242/app")


principals = st.sampled_from(["owner", "ann", "bob", PUBLIC])
grant_lists = st.lists(st.tuples(st.booleans(), principals, st.sampled_from(LEVELS)), max_size=8)


# One store for every example (a function-scoped fixture, on purpose): each example makes a project of its own.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grants=grant_lists, user=st.sampled_from(["owner", "ann", "bob", None]))
def test_sharing_agrees_with_level(registry: Registry, grants: list[tuple[bool, str, str]], user: str | None) -> None:
    """What `berth grants` shows in force is what the policy decides from: the best level in force for the user
    (or `public`) is the level `level` computes."""
    projects = Projects(registry.store)
    project = projects.create(f"p{len(projects.all())}", "owner").id
    repo = f"{project}/app"
    for on_repo, principal, level in grants:
        projects.grant(repo if on_repo else project, principal, level)
    in_force = [g for g in projects.sharing(repo) if g.source != IGNORED]
    expected = max((rank(g.level) for g in in_force
                    if g.principal == PUBLIC or (user is not None and g.principal == user)), default=-1)
    with registry.store.index.read() as txn:
        assert projects.level(user, RepositoryName.parse(repo), txn) == expected
