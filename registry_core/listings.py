"""What the portal shows: projects, repositories, tags, a tag's history, an image; each filtered by the policy.

Every query asks the policy plugin (policy.py) the same questions the registry protocol does: `view` to see a
repository (its tags and their digests), and on a project resource `view` to see the project. Something in the trash
is shown only to those the policy still grants `admin` on it; to everyone else it does not exist (NotFound), and the
message says "in the trash" only to those the policy tells so (ProjectPolicy: whoever could see it).

Cost. A page is one range scan of a sorted table (tags by name, tag_times by push time, repos, projects) plus a few
gets per item shown; a filter looks at no more than SCAN_MAX tags (HIDDEN_MAX projects or repositories the caller
may not see) past the page before it answers with a shorter page and a marker to go on from (the catalog's rule).
Image summaries are remembered per digest (images.py). Everything is read through the store's Transaction (get,
scan, keys, count) and cas's blob reads: no file paths.

A repository's tag count and deduplicated size walk all its tags and manifests (~35 ms for 10 000 manifests,
~80 ms before Images.remembered; benchmarks/portal.py), so each process remembers them, with the blobs the size is
made of, and the outbox's sequence number they were counted at (events.py: every change appends its event in its
own transaction, no gaps). A later view reads the current number in its own snapshot: unchanged, the figures
stand; otherwise the events since are read (at most STALE_MAX) and applied (a tag created or deleted, a manifest
pushed: its blobs added), and only a change they cannot be applied for (a manifest deleted, a purge) has them
counted again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Generic, TypeVar

from cas import Digest, InvalidDigest, Table, Transaction

from . import events as ev
from .accounts import Identity
from .errors import RegistryError
from .images import Detail, Images, Summary, UnknownImage
from .names import InvalidName, InvalidReference, RepositoryName, parse_project_id, parse_tag
from .policy import Policy, Resource, refusal
from .projects import Project, Projects
from .registry import Registry
from .schema import SEP, HistoryEntry, ManifestRecord, TagPush, key

T = TypeVar("T")

PAGE_DEFAULT = 100
PAGE_MAX = 1000  # PORTAL-API.md: n at most 1000
SCAN_MAX = 10_000  # tag keys a filtered page may pass over before it answers (a key costs ~0.1 µs: a few ms)
HIDDEN_MAX = 1000  # projects or repositories a page may pass over (each asks the policy), as the catalog does
HISTORY_MAX = 1000  # newest history entries a tag's history shows
STALE_MAX = 1000  # events a remembered count may be carried over (each a JSON parse, ~3 µs); more: counted again
COUNTS_KEPT = 4096  # repositories whose counts a process remembers (the oldest remembered is forgotten first)
BLOBS_KEPT = 200_000  # blobs their counts name, all together (~150 B each: ~30 MiB); more: the oldest forgotten
# The events that change no repository's tags or manifests; any other (also a type added later) may.
_NO_COUNT_CHANGE = frozenset({ev.MANIFEST_PULLED, ev.BLOB_MOUNTED, ev.GRANT_CHANGED, ev.REPOSITORY_TRASHED,
                              ev.REPOSITORY_RESTORED, ev.PROJECT_TRASHED, ev.PROJECT_RESTORED})
# The actions that tell a caller's level, strongest first, with the projects module's level names (projects.LEVELS).
LEVEL_BY_ACTION = (("admin", "admin"), ("delete", "edit-delete"), ("push", "edit"), ("pull", "download"),
                   ("view", "view"))
ALL_ACTIONS = frozenset(a for a, _ in LEVEL_BY_ACTION)
SORTS = ("name", "time")


class NotFound(RegistryError, LookupError):
    """No such thing, or the caller may not see it (the same answer: names do not leak)."""


class InvalidQuery(RegistryError, ValueError):
    """A malformed query parameter (a page size, a marker, a sort)."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next: str | None  # the marker of the following page; None on the last


@dataclass(frozen=True, slots=True)
class Access:
    """What the policy grants a caller on a repository or project, now."""
    granted: frozenset[str]
    trashed: bool

    @property
    def permission(self) -> str | None:
        return next((level for action, level in LEVEL_BY_ACTION if action in self.granted), None)

    @property
    def visible(self) -> bool:
        return "admin" in self.granted if self.trashed else "view" in self.granted


@dataclass(frozen=True, slots=True)
class _Counted:
    """A repository's tag count and deduplicated size as of an outbox seq, with the blobs that size is made of."""
    seq: int
    tags: int
    blobs: dict[str, int]  # every blob and manifest a manifest of the repository names -> its size
    size: int  # sum(blobs.values())


@dataclass(frozen=True, slots=True)
class ProjectView:
    project: Project
    access: Access
    repositories: int


@dataclass(frozen=True, slots=True)
class LastPush:
    tag: str
    push: TagPush


@dataclass(frozen=True, slots=True)
class RepositoryView:
    name: RepositoryName
    access: Access
    tags: int
    size: int  # deduplicated bytes of the manifests and every blob they name
    last_push: LastPush | None


@dataclass(frozen=True, slots=True)
class TagRow:
    tag: str
    summary: Summary
    push: TagPush


@dataclass(frozen=True, slots=True)
class TagView:
    tag: str | None  # None: an image asked for by digest
    push: TagPush | None
    detail: Detail
    referrers: list[dict[str, object]]


def page_size(text: str | None) -> int:
    """`n`: 1..PAGE_MAX, PAGE_DEFAULT when absent."""
    if text is None:
        return PAGE_DEFAULT
    if not text.isascii() or not text.isdigit() or len(text) > 9 or not 1 <= int(text) <= PAGE_MAX:
        raise InvalidQuery(f"n must be an integer from 1 to {PAGE_MAX}, got {text[:40]!r}")
    return int(text)


class Listings:
    def __init__(self, registry: Registry, policy: Policy) -> None:
        store = registry.store
        self._store = store
        self._policy = policy
        self._registry = registry
        self._tags = registry.tags
        self._manifests: Table = store.index.table("manifests")
        self._repos: Table = store.index.table("repos")
        self._projects_table: Table = store.index.table("projects")
        self._trashed: Table = store.index.table("trashed")
        self.projects = Projects(store)
        self.images = Images(store, registry.config.max_manifest)
        self._event_counters: Table = store.index.table(ev.TABLES[1])
        self._counts: dict[str, _Counted] = {}  # by repository, the oldest remembered first
        self._counts_lock = threading.Lock()
        self._blobs_kept = 0  # blobs named in self._counts, all repositories together
        with store.index.read() as txn:
            behind = txn.count(self._tags.pushes) != txn.count(self._tags.tags)
        if behind:  # a store written before tag_pushes existed: filled in once
            store.index.transact(self._tags.backfill)

    # -- access ---------------------------------------------------------------------------------------------------
    def repository_access(self, identity: Identity | None, name: str) -> Access:
        granted = self._policy.grant(identity, Resource("repository", name), ALL_ACTIONS)
        return Access(frozenset(granted), self.projects.is_trashed(name))

    def project_access(self, identity: Identity | None, project_id: str, txn: Transaction) -> Access:
        granted = self._policy.grant(identity, Resource("project", project_id), ALL_ACTIONS)
        return Access(frozenset(granted), txn.get(self._trashed, project_id.encode()) is not None)

    def repository(self, identity: Identity | None, name: str) -> RepositoryView:
        repo = _repository_name(name)
        with self._store.index.read() as txn:
            access = self._visible_repository(identity, repo, txn)
            return self._repository_view(txn, repo, access)

    def _visible_repository(self, identity: Identity | None, repo: RepositoryName, txn: Transaction) -> Access:
        """The caller's access to an existing repository they may see; NotFound otherwise."""
        if txn.get(self._repos, str(repo).encode()) is None:
            raise NotFound(f"no repository {repo}")
        access = self.repository_access(identity, str(repo))
        if not access.visible:
            raise NotFound(self._hidden(identity, Resource("repository", str(repo)), access, f"repository {repo}"))
        return access

    def _hidden(self, identity: Identity | None, resource: Resource, access: Access, what: str) -> str:
        if access.trashed:
            why = refusal(self._policy, identity, resource, "view")
            if "trash" in why:  # the policy tells this caller that it is in the trash (they could see it)
                return f"{what} is in the trash: only its administrators see it until it is restored"
        return f"no {what}"

    # -- projects -------------------------------------------------------------------------------------------------
    def project(self, identity: Identity | None, project_id: str) -> ProjectView:
        try:
            project_id = parse_project_id(project_id)
        except InvalidName:
            raise NotFound(f"no project {project_id[:64]}") from None
        with self._store.index.read() as txn:
            project = self.projects.get(project_id, txn)
            if project is None:
                raise NotFound(f"no project {project_id}")
            access = self.project_access(identity, project_id, txn)
            if not access.visible:
                if access.trashed and "view" in access.granted:
                    raise NotFound(f"project {project_id} is in the trash: only its administrators see it until it "
                                   "is restored")
                raise NotFound(f"no project {project_id}")
            return ProjectView(project, access, self._count(txn, self._repos, f"{project_id}/".encode()))

    def project_list(self, identity: Identity | None, n: int, last: str | None) -> Page[ProjectView]:
        found: list[ProjectView] = []
        with self._store.index.read() as txn:
            start = last.encode() + SEP if last else None
            looked = None
            for seen, raw_id in enumerate(txn.keys(self._projects_table, start=start)):
                if seen >= n + HIDDEN_MAX:
                    return Page(found, looked)
                looked = raw_id.decode()
                access = self.project_access(identity, looked, txn)
                if access.visible:
                    if len(found) == n:
                        return Page(found, found[-1].project.id)
                    project = self.projects.get(looked, txn)
                    assert project is not None
                    found.append(ProjectView(project, access, self._count(txn, self._repos, f"{looked}/".encode())))
        return Page(found, None)

    def repository_list(self, identity: Identity | None, project_id: str, n: int, last: str | None,
                        contains: str | None) -> Page[RepositoryView]:
        self.project(identity, project_id)  # NotFound unless the caller may see the project
        prefix = f"{project_id}/".encode()
        found: list[RepositoryView] = []
        with self._store.index.read() as txn:
            start = last.encode() + SEP if last else None
            looked = None
            for seen, raw in enumerate(txn.keys(self._repos, prefix=prefix, start=start)):
                if seen >= n + HIDDEN_MAX:
                    return Page(found, looked)
                looked = raw.decode()
                if contains and contains.lower() not in looked.lower():
                    continue
                access = self.repository_access(identity, looked)
                if access.visible:
                    if len(found) == n:
                        return Page(found, str(found[-1].name))
                    found.append(self._repository_view(txn, RepositoryName.parse(looked), access))
        return Page(found, None)

    def _repository_view(self, txn: Transaction, repo: RepositoryName, access: Access) -> RepositoryView:
        name = str(repo)
        newest = self._tags.newest(txn, name)
        tags, size = self._counted(txn, name)
        return RepositoryView(repo, access, tags, size, LastPush(*newest) if newest is not None else None)

    def _counted(self, txn: Transaction, repo: str) -> tuple[int, int]:
        """(tags, deduplicated size) of the repository in this snapshot: remembered, and brought up to date over
        the events since. Entries are replaced whole, never changed (threads of one process share them): a racing
        view that counted at an older seq may put its entry back, which is still true at its seq."""
        raw = txn.get(self._event_counters, b"seq")
        seq = int(raw) if raw is not None else 0
        kept = self._counts.get(repo)
        if kept is not None and kept.seq != seq:
            kept = self._carried(txn, repo, kept, seq)
            if kept is not None:
                self._remember(repo, kept)
        if kept is None:
            blobs = self._blobs(txn, repo)
            kept = _Counted(seq, self._count(txn, self._tags.tags, key(repo, b"")), blobs, sum(blobs.values()))
            self._remember(repo, kept)
        return kept.tags, kept.size

    def _remember(self, repo: str, counted: _Counted) -> None:
        with self._counts_lock:
            old = self._counts.pop(repo, None)
            self._blobs_kept -= len(old.blobs) if old is not None else 0
            while self._counts and (len(self._counts) >= COUNTS_KEPT or
                                    self._blobs_kept + len(counted.blobs) > BLOBS_KEPT):
                self._blobs_kept -= len(self._counts.pop(next(iter(self._counts))).blobs)  # the oldest first
            if len(counted.blobs) <= BLOBS_KEPT:
                self._counts[repo] = counted
                self._blobs_kept += len(counted.blobs)

    def _carried(self, txn: Transaction, repo: str, kept: _Counted, now: int) -> _Counted | None:
        """`kept` brought from its seq to `now` over the events between, or None when they must be counted again:
        too many events, one missing (seqs have no gaps among commits), or one that is not a tag's creation, move
        or deletion or a manifest's push (a manifest deleted or a repository purged: which blobs are still named
        is not known without the walk)."""
        since = kept.seq
        if not since < now <= since + STALE_MAX:
            return None
        found = self._registry.outbox.after(since, now - since, txn)
        if len(found) != now - since or found[0].seq != since + 1:
            return None
        tags, blobs, size = kept.tags, kept.blobs, kept.size
        for event in found:
            if event.type in _NO_COUNT_CHANGE or (event.repository != repo and event.repository is not None):
                continue
            if event.repository is None:  # a change of a whole project (a purge) or of the registry
                return None
            if event.type == ev.TAG_CREATED:
                tags += 1
            elif event.type == ev.TAG_DELETED:
                tags -= 1
            elif event.type == ev.MANIFEST_PUSHED:
                # a manifest already there names only blobs already counted (its own digest among them): no change
                try:
                    named = self.images.summary(txn, Digest.parse(str(event.data["digest"]))).blobs
                except (UnknownImage, InvalidDigest, KeyError):
                    return None
                fresh = {blob: bytes_ for blob, bytes_ in named if blob not in blobs}
                if fresh:
                    blobs = dict(blobs) if blobs is kept.blobs else blobs
                    blobs.update(fresh)
                    size += sum(fresh.values())
            elif event.type != ev.TAG_MOVED:
                return None
        return _Counted(now, tags, blobs, size)

    def _blobs(self, txn: Transaction, repo: str) -> dict[str, int]:
        """Every blob (and manifest) that a manifest of the repository names, with its size: one range scan of its
        manifests, whose summaries (with their blobs) are remembered per digest after the first look."""
        prefix = key(repo, b"")
        cut, remembered = len(prefix), self.images.remembered
        seen: dict[str, int] = {}
        for k in txn.keys(self._manifests, prefix=prefix):
            text = k[cut:].decode()
            summary = remembered(text)
            if summary is None:
                try:
                    summary = self.images.summary(txn, Digest.parse(text))
                except (UnknownImage, InvalidDigest):
                    continue
            seen.update(summary.blobs)
        return seen

    @staticmethod
    def _count(txn: Transaction, table: Table, prefix: bytes) -> int:
        return sum(1 for _ in txn.keys(table, prefix=prefix))

    # -- tags -----------------------------------------------------------------------------------------------------
    def tag_page(self, identity: Identity | None, name: str, n: int, last: str | None, sort: str = "name",
                 contains: str | None = None) -> Page[TagRow]:
        """Tags by name (ascending) or by push time (newest first). `contains` keeps the tags whose name contains
        it (case-insensitive). The marker of a time-sorted page is `<µs>:<tag>`; a bare tag name is accepted too
        (its current push time is looked up)."""
        if sort not in SORTS:
            raise InvalidQuery(f"sort must be one of {', '.join(SORTS)}, got {sort[:40]!r}")
        repo = _repository_name(name)
        needle = contains.lower() if contains else None

        def admit(tag: str) -> bool:
            return needle is None or needle in tag.lower()

        with self._store.index.read() as txn:
            self._visible_repository(identity, repo, txn)
            text = str(repo)
            if sort == "name":
                names, marker = self._by_name(txn, text, n, last, admit)
            else:
                names, stop = self._tags.page_by_time(txn, text, self._time_marker(txn, text, last), n, admit,
                                                      SCAN_MAX)
                marker = f"{stop[0]}:{stop[1]}" if stop is not None else None
            rows = [self._row(txn, text, tag) for tag in names]
        return Page([row for row in rows if row is not None], marker)

    def tag_slice(self, identity: Identity | None, name: str, sort: str, ascending: bool, limit: int,
                  offset: int) -> tuple[int, list[TagRow]]:
        """(how many tags, `limit` rows from `offset`) in Synapse's order: sort "TAG" (by name) or "CREATED_ON"
        (by push time), ascending or not. Offsets cost a walk of that many keys (in C, ~0.1 µs each); Berth's own
        listing pages by marker instead."""
        repo = _repository_name(name)
        with self._store.index.read() as txn:
            self._visible_repository(identity, repo, txn)
            text = str(repo)
            prefix = key(text, b"")
            total = self._count(txn, self._tags.tags, prefix)
            table = self._tags.tags if sort == "TAG" else self._tags.times
            forward = ascending if sort == "TAG" else not ascending  # tag_times holds newest first
            begin = offset if forward else max(total - offset - limit, 0)
            end = offset + limit if forward else max(total - offset, 0)
            keys = list(islice(txn.keys(table, prefix=prefix), begin, end))
            cut = len(prefix) if sort == "TAG" else len(prefix) + 9
            names = [k[cut:].decode("utf-8") for k in (keys if forward else reversed(keys))]
            rows = [self._row(txn, text, tag) for tag in names]
        return total, [row for row in rows if row is not None]

    def _by_name(self, txn: Transaction, repo: str, n: int, last: str | None,
                 admit: Callable[[str], bool]) -> tuple[list[str], str | None]:
        prefix = key(repo, b"")
        start = key(repo, last) + SEP if last is not None else None
        names: list[str] = []
        looked = None
        for seen, k in enumerate(txn.keys(self._tags.tags, prefix=prefix, start=start)):
            if seen >= n + SCAN_MAX:
                return names, looked
            looked = k[len(prefix):].decode("utf-8")
            if admit(looked):
                if len(names) == n:  # one more than the page: more follow
                    return names, names[-1]
                names.append(looked)
        return names, None

    def _time_marker(self, txn: Transaction, repo: str, last: str | None) -> tuple[int, str] | None:
        if last is None:
            return None
        us, colon, tag = last.partition(":")
        if colon:
            if not us.isascii() or not us.isdigit() or len(us) > 19:
                raise InvalidQuery(f"last must be a marker from `next` (<µs>:<tag>) or a tag, got {last[:80]!r}")
            return int(us), tag
        pushed = self._tags.pushed(txn, repo, last)
        if pushed is None:
            raise InvalidQuery(f"last names no tag of {repo}: pass the `next` marker of the previous page")
        return pushed.us, last

    def _row(self, txn: Transaction, repo: str, tag: str) -> TagRow | None:
        digest = self._tags.get(txn, repo, tag)
        push = self._tags.pushed(txn, repo, tag)
        if digest is None or push is None:
            return None
        try:
            summary = self.images.summary(txn, digest)
        except UnknownImage:
            summary = self._unreadable(txn, repo, digest)
        return TagRow(tag, summary, push)

    def _unreadable(self, txn: Transaction, repo: str, digest: Digest) -> Summary:
        """A row for a manifest whose bytes cannot be read (never for a pushed one; a listing does not fail)."""
        raw = txn.get(self._manifests, key(repo, digest.key))
        record = ManifestRecord.unpack(raw) if raw is not None else None
        media_type = record.media_type if record else "application/octet-stream"
        size = record.size if record else 0
        return Summary(str(digest), media_type, "artifact", (), size, size, None)

    def tag(self, identity: Identity | None, name: str, tag: str) -> TagView:
        repo = _repository_name(name)
        tag = _tag(tag, repo)
        with self._store.index.read() as txn:
            self._visible_repository(identity, repo, txn)
            digest = self._tags.get(txn, str(repo), tag)
            if digest is None:
                raise NotFound(f"no tag {tag} in {repo}")
            return TagView(tag, self._tags.pushed(txn, str(repo), tag), self._detail(txn, str(repo), digest),
                           self._registry.referrers.of(txn, str(repo), digest))

    def history(self, identity: Identity | None, name: str, tag: str) -> list[HistoryEntry]:
        """Every move of the tag (also its removals, and its life before a re-push), newest first."""
        repo = _repository_name(name)
        tag = _tag(tag, repo)
        with self._store.index.read() as txn:
            self._visible_repository(identity, repo, txn)
            entries = list(_newest(self._tags.entries(txn, str(repo), tag), HISTORY_MAX))
        if not entries:
            raise NotFound(f"no tag {tag} in {repo}, now or before")
        return entries

    def image(self, identity: Identity | None, name: str, digest: str) -> TagView:
        repo = _repository_name(name)
        try:
            parsed = Digest.parse(digest)
        except InvalidDigest:
            raise NotFound(f"no manifest {digest[:80]} in {repo}") from None
        with self._store.index.read() as txn:
            self._visible_repository(identity, repo, txn)
            if txn.get(self._manifests, key(str(repo), parsed.key)) is None:
                raise NotFound(f"no manifest {parsed} in {repo}")
            return TagView(None, None, self._detail(txn, str(repo), parsed),
                           self._registry.referrers.of(txn, str(repo), parsed))

    def _detail(self, txn: Transaction, repo: str, digest: Digest) -> Detail:
        try:
            return self.images.detail(txn, digest)
        except UnknownImage:
            return Detail(self._unreadable(txn, repo, digest), (), None, (), {})


def _repository_name(name: str) -> RepositoryName:
    try:
        return RepositoryName.parse(name)
    except InvalidName:
        raise NotFound(f"no repository {name[:255]}") from None


def _tag(text: str, repo: RepositoryName) -> str:
    try:
        return parse_tag(text)
    except InvalidReference:
        raise NotFound(f"no tag {text[:128]} in {repo}") from None


def _newest(entries: list[HistoryEntry], limit: int) -> Iterator[HistoryEntry]:
    return iter(entries[::-1][:limit])
