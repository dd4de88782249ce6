"""Projects, grants and the trash: the data the project policy decides from.

A project has an id `syn<digits>` assigned by Berth, a name and an owner. A grant gives a principal (a user name,
or `public` for everyone including anonymous callers) a level on a project (`syn123`) or on one repository
(`syn123/app`). A repository with grants of its own uses only those (local sharing settings replace the inherited
ones). A project or repository in the trash answers every operation as if denied; its name stays reserved until it
is purged.

Every principal of a grant is an existing account or `public`; removing an account removes its grants, so a later
account of the same name inherits nothing. An owner has at most one project of a given name.

Tables:
    projects  id -> JSON {"name", "owner", "created"}
    grants    target \\0 principal -> level
    trashed   target -> JSON {"time"}
    counters  b"project" -> the last project number (decimal)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cas import BlobStore, Table, Transaction, WriteTransaction

from . import events as ev
from . import schema
from .accounts import PUBLIC, Accounts
from .names import RepositoryName, parse_project_id
from .schema import PROJECT_TABLES

__all__ = ["IGNORED", "INHERITED", "LEVELS", "LOCAL", "OWNER", "PUBLIC", "Grant", "NotInTrash", "Project",
           "ProjectError", "Projects", "rank"]  # PUBLIC is accounts.py's, and still importable from here

LEVELS = ("view", "download", "edit", "edit-delete", "admin")  # each includes the ones before it
FIRST_PROJECT = 10_000  # ids start at syn10001: short, and clearly not a row number


class ProjectError(ValueError):
    """A bad project, grant or trash request."""


class NotInTrash(ProjectError):
    """A purge of something that is not in the trash (itself or with its project)."""


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    owner: str
    created: float


@dataclass(frozen=True, slots=True)
class Grant:
    """A level a principal has on a target, and where it comes from (see Projects.sharing)."""
    principal: str
    level: str
    source: str  # OWNER, LOCAL, INHERITED or IGNORED


OWNER = "owner"  # the project's owner: admin on the project and everything in it, whatever the grants say
LOCAL = "local"  # a grant on the target itself
INHERITED = "inherited"  # a project's grant, in force on a repository without grants of its own
IGNORED = "ignored"  # a project's grant on a repository with grants of its own: not in force there


def rank(level: str | None) -> int:
    """0-based position in LEVELS; -1 for no level."""
    return LEVELS.index(level) if level in LEVELS else -1


def _target(text: str) -> str:
    """`syn123` or `syn123/repo`, validated."""
    if "/" in text:
        name = RepositoryName.parse(text)
        if name.project is None:
            raise ProjectError(f"{text[:64]!r} is not inside a project: repositories are <project id>/<repository>, "
                               "e.g. syn12345/my-repo")
        return str(name)
    return parse_project_id(text)


class Projects:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        schema.declare(store.index)
        self._projects, self._grants, self._trashed, self._counters = (store.index.table(name)
                                                                       for name in PROJECT_TABLES)
        self._repos: Table = store.index.table("repos")  # schema.py: every repository ever written to
        self._accounts = Accounts(store)
        self._outbox = ev.Outbox(store)

    def _event(self, txn: WriteTransaction, type: str, target: str, actor: str | None,
               data: dict[str, Any]) -> None:
        """The change's event in the change's transaction (events.py). A project-level event has no repository."""
        repo = target if "/" in target else None
        project = target.split("/", 1)[0]
        self._outbox.append(txn, type, repository=repo, project=project, subject=target, actor=actor,
                            data={"repository": repo, "project": project, **data}, time=self._store.clock())

    def create(self, name: str, owner: str) -> Project:
        if not name or len(name) > 200 or "\0" in name:
            raise ProjectError("a project name must be 1..200 characters, none of them NUL")
        created = self._store.clock()

        def work(txn: WriteTransaction) -> Project:
            if self._accounts.user(owner, txn) is None:
                raise ProjectError(f"no user {owner}: a project's owner is an existing account")
            for other in self._all(txn):
                if other.owner == owner and other.name == name:
                    raise ProjectError(f"{owner} already owns a project named {name!r}: {other.id}")
            last = txn.get(self._counters, b"project")
            number = int(last) + 1 if last is not None else FIRST_PROJECT + 1
            txn.put(self._counters, b"project", str(number).encode())
            project = Project(f"syn{number}", name, owner, created)
            txn.put(self._projects, project.id.encode(), json.dumps(
                {"name": name, "owner": owner, "created": project.created}).encode())
            return project
        return self._store.index.transact(work)

    def check_target(self, text: str) -> str:
        """`syn123` or `syn123/repo`, validated (InvalidName, ProjectError), in a project that exists."""
        target = _target(text)
        self._require_project(target)
        return target

    def get(self, project_id: str, txn: Transaction | None = None) -> Project | None:
        if txn is None:
            with self._store.index.read() as own:
                return self.get(project_id, own)
        raw = txn.get(self._projects, project_id.encode())
        return Project(project_id, **json.loads(raw)) if raw is not None else None

    def all(self) -> list[Project]:
        with self._store.index.read() as txn:
            return self._all(txn)

    def _all(self, txn: Transaction) -> list[Project]:
        return [Project(k.decode(), **json.loads(v)) for k, v in txn.scan(self._projects)]

    # -- grants ---------------------------------------------------------------------------------------------------
    def grant(self, target: str, principal: str, level: str, *, actor: str | None = None) -> None:
        target = _target(target)
        if level not in LEVELS:
            raise ProjectError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        self._require_project(target)

        def work(txn: WriteTransaction) -> None:
            if principal != PUBLIC and (not principal or "\0" in principal
                                        or self._accounts.user(principal, txn) is None):
                raise ProjectError(f"no user {principal[:64]}: a grant goes to an existing user or to {PUBLIC!r}")
            key = f"{target}\0{principal}".encode()
            previous = txn.get(self._grants, key)
            txn.put(self._grants, key, level.encode())
            if previous != level.encode():
                self._event(txn, ev.GRANT_CHANGED, target, actor, {
                    "target": target, "principal": principal, "level": level,
                    "previousLevel": previous.decode() if previous is not None else None})
        self._store.index.transact(work)

    def revoke(self, target: str, principal: str, *, actor: str | None = None) -> bool:
        target = _target(target)

        def work(txn: WriteTransaction) -> bool:
            key = f"{target}\0{principal}".encode()
            previous = txn.get(self._grants, key)
            if previous is None:
                return False
            txn.delete(self._grants, key)
            self._event(txn, ev.GRANT_CHANGED, target, actor, {
                "target": target, "principal": principal, "level": None, "previousLevel": previous.decode()})
            return True
        return self._store.index.transact(work)

    def grants(self, target: str, txn: Transaction | None = None) -> dict[str, str]:
        if txn is None:
            with self._store.index.read() as own:
                return self.grants(target, own)
        prefix = f"{target}\0".encode()
        return {k[len(prefix):].decode(): v.decode() for k, v in txn.scan(self._grants, prefix=prefix)}

    def sharing(self, target: str) -> list[Grant]:
        """Every grant that bears on a project or repository, marked as `level` reads them: the owner first, then
        the target's own grants, then (for a repository) its project's, in force only while the repository has
        none of its own."""
        target = _target(target)
        project_id = target.split("/", 1)[0]
        with self._store.index.read() as txn:
            project = self.get(project_id, txn)
            if project is None:
                raise ProjectError(f"no project {project_id}")
            local = self.grants(target, txn)
            inherited = self.grants(project_id, txn) if target != project_id else {}
        found = [Grant(project.owner, "admin", OWNER)]
        found += [Grant(p, level, LOCAL) for p, level in sorted(local.items())]
        found += [Grant(p, level, IGNORED if local else INHERITED) for p, level in sorted(inherited.items())]
        return found

    def level(self, user: str | None, repo: RepositoryName, txn: Transaction) -> int:
        """The best level `user` (None: anonymous) has on the repository: the project's owner is admin; a
        repository with grants of its own ignores its project's."""
        if repo.project is None:
            return -1
        project = self.get(repo.project, txn)
        if project is None:
            return -1
        if user is not None and user == project.owner:
            return rank("admin")
        grants = self.grants(str(repo), txn) or self.grants(repo.project, txn)
        principals = [PUBLIC] + ([user] if user is not None else [])
        return max((rank(grants.get(p)) for p in principals), default=-1)

    # -- trash ----------------------------------------------------------------------------------------------------
    def trash(self, target: str, *, actor: str | None = None) -> bool:
        """Put an existing project, or a repository that was pushed to, in the trash. False if it already was."""
        target = _target(target)
        self._require_project(target)

        def work(txn: WriteTransaction) -> bool:
            # A repository nothing was ever pushed to has nothing to hide: refusing catches a mistyped name.
            if "/" in target and txn.get(self._repos, target.encode()) is None:
                raise ProjectError(f"no repository {target}: nothing was ever pushed there")
            if txn.get(self._trashed, target.encode()) is not None:
                return False
            txn.put(self._trashed, target.encode(), json.dumps({"time": self._store.clock()}).encode())
            self._event(txn, ev.REPOSITORY_TRASHED if "/" in target else ev.PROJECT_TRASHED, target, actor, {})
            return True
        return self._store.index.transact(work)

    def restore(self, target: str, *, actor: str | None = None) -> bool:
        """Take a project or repository out of the trash. False if it was not in it."""
        target = _target(target)
        self._require_project(target)

        def work(txn: WriteTransaction) -> bool:
            if not txn.delete(self._trashed, target.encode()):
                return False
            self._event(txn, ev.REPOSITORY_RESTORED if "/" in target else ev.PROJECT_RESTORED, target, actor, {})
            return True
        return self._store.index.transact(work)

    def is_trashed(self, repo: str, txn: Transaction | None = None) -> bool:
        """Whether the repository or its project is in the trash (cheap: two gets)."""
        if txn is None:
            with self._store.index.read() as own:
                return self.is_trashed(repo, own)
        project = repo.split("/", 1)[0]
        return txn.get(self._trashed, project.encode()) is not None or \
            txn.get(self._trashed, repo.encode()) is not None

    def in_trash(self, target: str) -> bool:
        """Whether the project or repository is itself in the trash (`is_trashed` also says so of a repository
        whose project is)."""
        with self._store.index.read() as txn:
            return txn.get(self._trashed, target.encode()) is not None

    def forget(self, target: str, *, actor: str | None = None) -> None:
        """After a purge: the target's grants and trash mark (and the project itself) go. A project's purge is
        its own event (org.berth.project.purged); a repository's was written by Registry.purge_repository."""
        target = _target(target)

        def work(txn: WriteTransaction) -> None:
            for key, _ in list(txn.scan(self._grants, prefix=f"{target}\0".encode())):
                txn.delete(self._grants, key)
            if "/" not in target:
                for key, _ in list(txn.scan(self._grants, prefix=f"{target}/".encode())):
                    txn.delete(self._grants, key)
                for key, _ in list(txn.scan(self._trashed, prefix=f"{target}/".encode())):
                    txn.delete(self._trashed, key)
                if txn.delete(self._projects, target.encode()):
                    self._event(txn, ev.PROJECT_PURGED, target, actor, {})
            txn.delete(self._trashed, target.encode())
        self._store.index.transact(work)

    def remove_user(self, name: str) -> tuple[int, int]:
        """Remove an account, its token records and its grants, in one transaction; refused while it owns a project
        (a project keeps its owner until it is purged). Returns (token records, grants) removed."""
        def work(txn: WriteTransaction) -> tuple[int, int]:
            owned = [p.id for p in self._all(txn) if p.owner == name]
            if owned:
                raise ProjectError(f"{name} owns {', '.join(owned)}: a project keeps its owner; trash and purge it "
                                   "first, or keep the account")
            suffix = f"\0{name}".encode()
            grants = [k for k, _ in txn.scan(self._grants) if k.endswith(suffix)]
            tokens = self._accounts.remove_user(name, txn)  # AccountError for an unknown name
            for key in grants:
                txn.delete(self._grants, key)
            return tokens, len(grants)
        return self._store.index.transact(work)

    def _require_project(self, target: str) -> None:
        if self.get(target.split("/", 1)[0]) is None:
            raise ProjectError(f"no project {target.split('/', 1)[0]}")
