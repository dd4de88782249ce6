"""Registry: the registry's operations over one cas store, free of any web framework.

Everything a client can do to a repository is a method here; the HTTP adapter only translates. Every change is one
write transaction in the store's LMDB environment (see schema.py): a manifest PUT stores the manifest, takes its
references, records its referrer edge and moves its tag atomically, and is durable when the call returns.

Reachability (the rule that "knowing a digest is not a read permission"): a blob is readable in a repository only if
it was uploaded or mounted there (a link) or a manifest there references it (a cas edge from that repository's
manifest holder).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cas import (
    DEFAULT_ALGORITHM,
    BlobInfo,
    BlobReader,
    BlobStore,
    BlobUnknown,
    Digest,
    DigestMismatch,
    Transaction,
    UploadStatus,
    UploadUnknown,
    WriteTransaction,
)

from . import events as ev
from .errors import (
    ManifestBlobUnknown,
    ManifestTooLarge,
    ManifestUnknown,
    NameUnknown,
    NotAcceptable,
    RegistryError,
    TokenExpired,
    TooManyUploads,
)
from .events import Outbox
from .manifests import DEFAULT_MAX_MANIFEST, InvalidManifest, Manifest, accepts, parse
from .names import InvalidReference, RepositoryName, parse_reference
from .projects import NotInTrash, ProjectError, Projects
from .referrers import ReferrerIndex
from .schema import (
    MANIFEST_BY_DIGEST,
    MANIFEST_BY_TAG,
    TABLES,
    ManifestRecord,
    declare,
    holder,
    holder_prefix,
    key,
)
from .tags import TagIndex
from .tokens import LEEWAY

CATALOG_PAGE = 1000  # catalog entries per page when the client gives no `n` (Distribution: 100)
PAGE_MAX = 10_000  # the most entries one page may ask for
UPLOADS_PER_ACCOUNT = 256  # open upload sessions per actor: docker pushes 3-5 layers at once, skopeo 6 per image
UPLOAD_GRACE_IDLE = 600.0  # seconds a session may idle and still be continued by its owner with an expired token
UPLOAD_GRACE_REFUSAL = ("the access token has expired, and the grace its owner has for an upload covers only the "
                        "owner's own session while it makes progress")
CATALOG_SCAN = 1000  # hidden names a catalog page may pass over before it answers (with a Link to go on)


class ManifestInFile(RegistryError):
    """get_manifest(read_files=False) found the manifest in a blob file: ask again where blocking is fine."""


class BlobInUse(RegistryError):
    """A blob deletion refused: a manifest in the repository still references the blob (delete that first)."""


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    max_manifest: int = DEFAULT_MAX_MANIFEST  # bytes; distribution-spec: at least 4 MiB must be accepted
    pull_events: bool = False  # a manifest GET writes an `org.berth.manifest.pulled` event (a write per pull)


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class PutResult:
    digest: Digest
    subject: Digest | None


@dataclass(frozen=True, slots=True)
class Purged:
    target: str
    repositories: int
    manifests: int


@dataclass(frozen=True, slots=True)
class _Tables:
    repos: Any
    links: Any
    manifests: Any
    uploading: Any


class Registry:
    def __init__(self, store: BlobStore, config: RegistryConfig | None = None) -> None:
        self.store = store
        self.config = config or RegistryConfig()
        declare(store.index)
        tables = {name: store.index.table(name) for name in TABLES}
        self._t = _Tables(tables["repos"], tables["links"], tables["manifests"], tables["uploading"])
        self.tags = TagIndex(tables["tags"], tables["tagged"], tables["history"], tables["tag_pushes"],
                             tables["tag_times"])
        self.referrers = ReferrerIndex(tables["referrers"])
        self.outbox = Outbox(store)  # events.py: its tables, and every change's event in the change's transaction
        self._by_tag = store.index.chain(MANIFEST_BY_TAG)
        self._by_digest = store.index.chain(MANIFEST_BY_DIGEST)

    @classmethod
    def open(cls, root: str | os.PathLike[str], config: RegistryConfig | None = None) -> Registry:
        return cls(BlobStore.on_disk(root), config)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- repositories ---------------------------------------------------------------------------------------------
    def catalog(self, n: int | None = None, last: str | None = None,
                visible: Callable[[str], bool] | None = None) -> tuple[list[str], str | None]:
        """Repository names after `last`, lexically, at most n (CATALOG_PAGE if None), only those `visible` admits;
        and the `last` to continue from (None: nothing follows). The work is bounded by the page, not by the
        registry: at most CATALOG_SCAN names are looked at past the page's size, so a caller who may see none of
        50 000 repositories gets an empty page and a marker to go on from, in the time of a small page."""
        limit = CATALOG_PAGE if n is None else min(n, PAGE_MAX)
        names: list[str] = []
        looked = 0
        with self.store.index.read() as txn:
            start = last.encode() + b"\0" if last is not None else None
            for raw in txn.keys(self._t.repos, start=start):
                name = raw.decode()
                if visible is None or visible(name):
                    if len(names) >= limit:
                        return names, names[-1] if names else None
                    names.append(name)
                looked += 1
                if looked >= limit + CATALOG_SCAN:
                    return names, name
        return names, None

    def purge_repository(self, name: RepositoryName, *, actor: str | None = None) -> int:
        """Drop every manifest, tag, link and referrer edge of the repository, and the repository itself (its name
        becomes free). cas collects what nothing else holds. Returns how many manifests were dropped."""
        repo = name.text
        prefix = key(repo, b"")

        def work(txn: WriteTransaction) -> int:
            manifests = [k for k, _ in txn.scan(self._t.manifests, prefix=prefix)]
            for k in manifests:
                self.store.refs.drop_all(txn, holder(repo, Digest.parse(k[len(prefix):].decode())))
            for table in (self._t.manifests, self._t.links, self.tags.tags, self.tags.tagged, self.tags.history,
                          self.tags.pushes, self.tags.times, self.referrers.table):
                for k, _ in list(txn.scan(table, prefix=prefix)):
                    txn.delete(table, k)
            if txn.delete(self._t.repos, repo.encode()):
                self._event(txn, ev.REPOSITORY_PURGED, name, repo, actor, {"manifests": len(manifests)})
            return len(manifests)

        return self.store.index.transact(work)

    def purge(self, target: str, *, actor: str | None = None) -> Purged:
        """Purge a project or repository in the trash (`syn123` or `syn123/app`): drop every repository of it
        (purge_repository), then its grants and trash mark, and for a project the project itself (projects.py
        `forget`). Refused (ProjectError) for a target not in the trash, an unknown project, or a repository nothing
        was pushed to. Each repository is one transaction and the trash mark goes last: a purge cut short is still
        in the trash, and purging it again finishes it."""
        projects = Projects(self.store)
        target = projects.check_target(target)
        repos = [RepositoryName.parse(target)] if "/" in target else \
            [RepositoryName.parse(name) for name in self.repositories(f"{target}/")]
        if "/" in target and not self.exists(repos[0]):
            raise ProjectError(f"no repository {target}")
        if not projects.is_trashed(target):
            raise NotInTrash(f"{target} is not in the trash: trash it first (`berth trash {target}`), then purge it")
        dropped = sum(self.purge_repository(repo, actor=actor) for repo in repos)
        projects.forget(target, actor=actor)
        return Purged(target, len(repos), dropped)

    def repositories(self, prefix: str = "") -> list[str]:
        with self.store.index.read() as txn:
            return [k.decode() for k, _ in txn.scan(self._t.repos, prefix=prefix.encode())]

    def exists(self, name: RepositoryName) -> bool:
        with self.store.index.read() as txn:
            return txn.get(self._t.repos, name.text.encode()) is not None

    def _ensure_repo(self, txn: WriteTransaction, name: RepositoryName, actor: str | None = None) -> None:
        if txn.get(self._t.repos, name.text.encode()) is None:
            txn.put(self._t.repos, name.text.encode(), b'{"created":%.6f}' % self.store.clock())
            self._event(txn, ev.REPOSITORY_CREATED, name, name.text, actor, {})

    def _event(self, txn: WriteTransaction, type: str, name: RepositoryName, subject: str, actor: str | None,
               data: dict[str, Any]) -> None:
        """The change's event, in the change's own transaction (events.py): it commits or rolls back with it."""
        repo, project = name.text, name.project
        self.outbox.append(txn, type, repository=repo, project=project, subject=subject, actor=actor,
                           data={"repository": repo, "project": project, **data}, time=self.store.clock())

    def _require_repo(self, txn: Transaction, repo: RepositoryName) -> None:
        if txn.get(self._t.repos, repo.text.encode()) is None:
            raise NameUnknown(f"repository {repo} is not known to this registry")

    # -- blobs ----------------------------------------------------------------------------------------------------
    def _reachable(self, txn: Transaction, repo: RepositoryName, digest: Digest) -> bool:
        if txn.get(self._t.links, key(repo.text, digest.key)) is not None:
            return True
        return next(self.store.refs.holders(txn, digest, holder_prefix(repo.text)), None) is not None

    def stat_blob(self, repo: RepositoryName, digest: Digest) -> BlobInfo:
        """The blob's size if it is readable in the repository (BlobUnknown otherwise). Renews its GC lease: a
        client checking a blob before the manifest PUT that names it keeps it alive. A GET stats once: it reads
        the blob with open_blob(info) (or the store's file for it) without another stat."""
        with self.store.index.read() as txn:
            if not self._reachable(txn, repo, digest):
                raise BlobUnknown(f"blob {digest} is not in repository {repo}")
        return self.store.stat(digest)

    def open_blob(self, info: BlobInfo, offset: int = 0, length: int | None = None) -> BlobReader:
        """A reader over a blob that stat_blob found readable in the repository (`info` is its answer)."""
        return self.store.open(info, offset, length)

    def delete_blob(self, repo: RepositoryName, digest: Digest) -> None:
        """Unlink a blob from the repository (cas collects it once nothing holds it). Refused while a manifest in
        the repository references it: the blob would stay readable through that manifest."""

        def work(txn: WriteTransaction) -> None:
            held = next(self.store.refs.holders(txn, digest, holder_prefix(repo.text)), None)
            if held is not None:
                raise BlobInUse(f"blob {digest} is referenced by a manifest in {repo}; delete the manifest first")
            if not txn.delete(self._t.links, key(repo.text, digest.key)):
                raise BlobUnknown(f"blob {digest} is not in repository {repo}")

        self.store.index.transact(work)

    def _link_blob(self, txn: WriteTransaction, repo: RepositoryName, digest: Digest,
                   actor: str | None = None) -> None:
        self._ensure_repo(txn, repo, actor)
        txn.put(self._t.links, key(repo.text, digest.key), b"")

    def ingest_blob(self, repo: RepositoryName, source: Iterable[bytes] | bytes, digest: Digest,
                    size: int | None = None, *, actor: str | None = None) -> BlobInfo:
        """A monolithic upload: the whole blob with its digest in one request, linked into the repository in the
        commit that stores it (or, when it is stored already, that confirms it): one commit."""
        return self.store.ingest(source, digest, size=size,
                                 also=lambda txn: self._link_blob(txn, repo, digest, actor))

    def mount_blob(self, repo: RepositoryName, digest: Digest, source: RepositoryName, *,
                   actor: str | None = None) -> BlobInfo | None:
        """Cross-repository mount: link a blob readable in `source` into `repo`. None when it is not readable
        there: the caller then opens an ordinary upload, as the spec says (and so for a `from` that is no valid
        name, which the edge never parses into a RepositoryName)."""

        def work(txn: WriteTransaction) -> BlobInfo | None:
            if not self._reachable(txn, source, digest):
                return None
            try:
                info = self.store.info(txn, digest)
            except BlobUnknown:
                return None
            self._link_blob(txn, repo, digest, actor)
            # distribution notifications/event.go: a mount is action "mount" with target.fromRepository
            self._event(txn, ev.BLOB_MOUNTED, repo, f"{repo}@{digest}", actor, {
                "digest": str(digest), "size": info.size, "mediaType": "application/octet-stream",
                "fromRepository": source.text})
            return info

        return self.store.index.transact(work)

    # -- uploads --------------------------------------------------------------------------------------------------
    # An upload session belongs to the repository and the actor that opened it: to anyone else it does not exist.
    # That is checked once per request, by cas under the session's lock (`_session_rule`), together with the grace
    # an expired access token gets there.
    def start_upload(self, repo: RepositoryName, actor: str | None = None,
                     algorithm: str = DEFAULT_ALGORITHM) -> UploadStatus:
        """Open an upload session; TooManyUploads when the actor has UPLOADS_PER_ACCOUNT open already. (Two
        processes opening sessions for one actor at the same instant may pass the count together: the cap is a
        bound on abuse, not an exact quota.) The session and its place in the actor's count commit together."""
        owner = (actor or "").encode()
        open_now = self._open_uploads(owner)
        if open_now >= UPLOADS_PER_ACCOUNT:
            raise TooManyUploads(f"{actor or 'anonymous callers'} already ha{'s' if actor else 've'} {open_now} open "
                                 f"upload sessions (at most {UPLOADS_PER_ACCOUNT}): finish or cancel some, or wait "
                                 "for idle ones to expire")
        return self.store.uploads.create(algorithm, {"repo": repo.text, "actor": actor or ""},
                                         also=lambda txn, session_id: txn.put(self._t.uploading,
                                                                              key(owner, session_id), b""))

    @property
    def upload_token_grace(self) -> float:
        """How long after its expiry an access token is still looked at when it continues an upload session (PATCH,
        the finishing PUT): the session's TTL, beyond which no session idles anyway. Whether it is accepted is the
        session's rule (`_session_rule`): only its owner's, only while it makes progress."""
        return self.store.config.upload_ttl

    def _token_expired(self, token_expires: float | None) -> bool:
        return token_expires is not None and self.store.clock() > token_expires + LEEWAY

    def _session_rule(self, repo: RepositoryName, actor: str | None,
                      expired: bool = False) -> Callable[[UploadStatus], None]:
        """The rule cas asks under the session's lock: the session is the actor's, in this repository (else it
        does not exist for them: UploadUnknown); and an access token that expired (`token_expires`, None for no
        token) is accepted only by its owner's session while it makes progress (a chunk within UPLOAD_GRACE_IDLE):
        a push of a large layer over a slow link outlives a 5-minute token, an idle session does not keep an
        expired token alive (TokenExpired)."""

        def rule(status: UploadStatus) -> None:
            if status.meta.get("repo") != repo.text or status.meta.get("actor", "") != (actor or ""):
                raise TokenExpired(UPLOAD_GRACE_REFUSAL) if expired else UploadUnknown(status.id)
            if expired and self.store.clock() - status.updated > UPLOAD_GRACE_IDLE:
                raise TokenExpired(UPLOAD_GRACE_REFUSAL)
        return rule

    def _open_uploads(self, owner: bytes) -> int:
        """The actor's open sessions, dropping entries whose session cas has ended (expired, finished elsewhere)."""
        prefix = key(owner, b"")
        with self.store.index.read() as txn:
            entries = list(txn.keys(self._t.uploading, prefix=prefix))
        gone = [k for k in entries if not self.store.uploads.exists(k[len(prefix):].decode())]
        if gone:
            def drop(txn: WriteTransaction) -> None:  # deletes only: the same on a replay
                for k in gone:
                    txn.delete(self._t.uploading, k)
            self.store.index.transact(drop)
        return len(entries) - len(gone)

    def _end_upload(self, txn: WriteTransaction, actor: str | None, session_id: str) -> None:
        txn.delete(self._t.uploading, key((actor or "").encode(), session_id))

    def upload_status(self, repo: RepositoryName, session_id: str, actor: str | None = None) -> UploadStatus:
        return self.store.uploads.status(session_id, self._session_rule(repo, actor))

    def append_upload(self, repo: RepositoryName, session_id: str, chunks: Iterable[bytes],
                      offset: int | None = None, length: int | None = None, actor: str | None = None, *,
                      token_expires: float | None = None) -> UploadStatus:
        expired = self._token_expired(token_expires)
        with _unknown_to_expired(expired):
            return self.store.uploads.append(session_id, chunks, offset, length,
                                             check=self._session_rule(repo, actor, expired))

    def cancel_upload(self, repo: RepositoryName, session_id: str, actor: str | None = None) -> None:
        self.store.uploads.cancel(session_id, check=self._session_rule(repo, actor))
        self.store.index.transact(lambda txn: self._end_upload(txn, actor, session_id))

    def finish_upload(self, repo: RepositoryName, session_id: str, digest: Digest, chunks: Iterable[bytes] = (),
                      offset: int | None = None, length: int | None = None, actor: str | None = None, *,
                      token_expires: float | None = None) -> BlobInfo:
        def also(txn: WriteTransaction) -> None:
            self._link_blob(txn, repo, digest, actor)
            self._end_upload(txn, actor, session_id)

        expired = self._token_expired(token_expires)
        with _unknown_to_expired(expired):
            return self.store.uploads.finish(session_id, digest, chunks, offset, length, also=also,
                                             check=self._session_rule(repo, actor, expired))

    # -- manifests ------------------------------------------------------------------------------------------------
    def put_manifest(self, repo: RepositoryName, ref: str | Digest, body: bytes, content_type: str | None,
                     actor: str | None = None) -> PutResult:
        """Store a manifest byte for byte, by tag (sha256) or by digest (that digest's algorithm, verified). `ref`
        is a parsed reference (names.parse_reference). The body is hashed once, in the algorithm it is stored
        under."""
        if len(body) > self.config.max_manifest:
            raise ManifestTooLarge(len(body), self.config.max_manifest)
        manifest = parse(body, content_type, ref.algorithm if isinstance(ref, Digest) else DEFAULT_ALGORITHM)
        digest = manifest.digest
        if isinstance(ref, Digest) and ref != digest:
            raise DigestMismatch(str(ref), str(digest))
        tag = ref if isinstance(ref, str) else None
        now = self.store.clock()
        children = self._check_children(repo, manifest)

        pushed: dict[str, Any] = {"digest": str(digest), "mediaType": manifest.media_type, "size": len(body)}
        if tag is not None:
            pushed["tag"] = tag
        if manifest.artifact_type is not None:
            pushed["artifactType"] = manifest.artifact_type
        if manifest.subject is not None:
            pushed["subjectDigest"] = str(manifest.subject.digest)
        if manifest.is_index:
            pushed["platforms"] = [{"digest": str(d.digest), "mediaType": d.media_type, **dict(d.platform)}
                                   for d in manifest.manifests]

        def work(txn: WriteTransaction) -> None:
            self._ensure_repo(txn, repo, actor)
            self.store.ingest_inline(txn, body, digest=digest)
            h = holder(repo.text, digest)
            self.store.refs.take(txn, h, digest)
            for child, what in children:
                self._take_child(txn, repo, h, child, what)
            mkey = key(repo.text, digest.key)
            if txn.get(self._t.manifests, mkey) is None:
                subject = str(manifest.subject.digest) if manifest.subject else None
                record = ManifestRecord(manifest.media_type, len(body), now, subject, manifest.artifact_type)
                txn.put(self._t.manifests, mkey, record.pack())
                if manifest.subject is not None:
                    self.referrers.add(txn, repo.text, manifest, digest)
            # Distribution sends a push for every manifest PUT, also of a manifest already there: so does Berth.
            self._event(txn, ev.MANIFEST_PUSHED, repo, f"{repo}@{digest}", actor, pushed)
            if tag is not None:
                previous = self.tags.get(txn, repo.text, tag)
                if self.tags.move(txn, repo.text, tag, digest, now, actor):
                    moved = {"tag": tag, "digest": str(digest), "mediaType": manifest.media_type,
                             "size": len(body)}
                    if previous is None:
                        self._event(txn, ev.TAG_CREATED, repo, f"{repo}:{tag}", actor, moved)
                    else:
                        self._event(txn, ev.TAG_MOVED, repo, f"{repo}:{tag}", actor,
                                    {**moved, "previousDigest": str(previous)})

        self.store.index.transact(work)
        return PutResult(digest, manifest.subject.digest if manifest.subject else None)

    def _check_children(self, repo: RepositoryName, manifest: Manifest) -> list[tuple[Digest, str]]:
        """Check every child (readable in the repository, stored, of the size the manifest says) on a snapshot, so
        that a manifest naming thousands of blobs, or a refused one, holds no write lock while it is checked. Returns
        the distinct digests, sorted (neighbouring keys: the write transaction touches fewer pages)."""
        children = {(d.digest, d.size): "blob" for d in manifest.blobs}
        children.update({(d.digest, d.size): "manifest" for d in manifest.manifests})
        with self.store.index.read() as txn:
            for (child, size), what in children.items():
                if not self._reachable(txn, repo, child):
                    raise ManifestBlobUnknown(str(child), what)
                try:
                    info = self.store.info(txn, child)
                except BlobUnknown:
                    raise ManifestBlobUnknown(str(child), what) from None
                if info.size != size:
                    raise InvalidManifest(f"{what} {child} is {info.size} bytes, the manifest says {size}")
        return sorted({child: what for (child, _), what in children.items()}.items())

    def _take_child(self, txn: WriteTransaction, repo: RepositoryName, h: str, child: Digest, what: str) -> None:
        """Reference a child checked by _check_children, re-checking inside the write what may have changed since
        that snapshot: the repository may have lost it (blob or manifest deleted, repository purged: one get, or one
        seek, as in _reachable), and GC may have collected it (refs.take refuses a blob no longer stored). Its size
        cannot have changed: a digest names its bytes."""
        if not self._reachable(txn, repo, child):
            raise ManifestBlobUnknown(str(child), what)
        try:
            self.store.refs.take(txn, h, child)
        except BlobUnknown:
            raise ManifestBlobUnknown(str(child), what) from None

    def get_manifest(self, repo: RepositoryName, ref: str | Digest, accept: list[str] | None = None,
                     read_files: bool = True, *, actor: str | None = None,
                     pull: bool = False) -> StoredManifest:
        """The manifest a tag points at, or a manifest by digest (also a child manifest that an index in the
        repository references); `ref` from read_reference. NotAcceptable when `accept` excludes its media type.
        Manifests are kept inline in the index; a digest that names a blob file (a manifest pushed as a blob, or a
        layer) is read only when `read_files` (callers on an event loop pass False and get ManifestInFile, to ask
        again from a thread), and only up to the manifest size limit: a layer's digest never reads the layer."""
        # The usual answer in one lookup (one query on PostgreSQL): the tag's digest, the manifest's record, its
        # bytes. Anything else (no such tag or manifest, bytes in a blob file, a child manifest known only by a
        # reference) is read again in one snapshot.
        size = 0
        if isinstance(ref, str):
            target, raw, body = self.store.index.lookup(self._by_tag, (repo.text, ref))
            digest = Digest.parse(target.decode("ascii")) if target is not None else None
        else:
            digest = ref
            raw, body = self.store.index.lookup(self._by_digest, (repo.text, ref.key.decode("ascii")))
        if digest is None or raw is None or body is None:
            digest, raw, body, size = self._find_manifest(repo, ref)
        if body is None:
            body = self._manifest_file(repo, digest, size, read_files)
        if raw is not None:
            media_type = ManifestRecord.unpack(raw).media_type
        else:
            try:
                media_type = parse(body, None).media_type
            except InvalidManifest:
                raise ManifestUnknown(f"{digest} in repository {repo} is a blob, not a manifest") from None
        if accept and not accepts(accept, media_type):
            raise NotAcceptable(f"manifest {digest} is {media_type}, which the Accept header does not include")
        if pull and self.config.pull_events:
            self._record_pull(repo, ref, digest, media_type, len(body), actor)
        return StoredManifest(digest, media_type, body)

    def _find_manifest(self, repo: RepositoryName, ref: str | Digest) -> tuple[Digest, bytes | None, bytes | None,
                                                                               int]:
        """(digest, record, inline bytes, size) of the manifest `ref` names, in one snapshot; ManifestUnknown or
        NameUnknown when there is none."""
        size = 0
        with self.store.index.read() as txn:
            if isinstance(ref, str):
                digest = self.tags.get(txn, repo.text, ref)
                if digest is None:
                    self._require_repo(txn, repo)
                    raise ManifestUnknown(f"tag {ref} is not in repository {repo}")
            else:
                digest = ref
            raw = txn.get(self._t.manifests, key(repo.text, digest.key))
            if raw is None and not self._reachable(txn, repo, digest):
                self._require_repo(txn, repo)
                raise ManifestUnknown(f"manifest {digest} is not in repository {repo}")
            body = self.store.inline_bytes(txn, digest)
            if body is None:
                try:
                    size = self.store.info(txn, digest).size
                except BlobUnknown:
                    raise ManifestUnknown(f"manifest {digest} is not in repository {repo}") from None
        return digest, raw, body, size

    def _record_pull(self, repo: RepositoryName, ref: str | Digest, digest: Digest, media_type: str, size: int,
                     actor: str | None) -> None:
        """A pull event (only with RegistryConfig.pull_events): reads are read transactions, so this is a write of
        its own after the read, and a pull racing a delete may record a manifest that is gone a moment later."""
        data: dict[str, Any] = {"digest": str(digest), "mediaType": media_type, "size": size}
        if isinstance(ref, str):
            data["tag"] = ref
        self.store.index.transact(
            lambda txn: self._event(txn, ev.MANIFEST_PULLED, repo, f"{repo}@{digest}", actor, data))

    def _manifest_file(self, repo: RepositoryName, digest: Digest, size: int, read_files: bool) -> bytes:
        """A manifest's bytes from a blob file (pushed as a blob first: rare), when its size says it may be one."""
        if size > self.config.max_manifest:
            raise ManifestUnknown(f"{digest} in repository {repo} is a blob of {size} bytes, not a manifest "
                                  f"(manifests are at most {self.config.max_manifest} bytes)")
        if not read_files:
            raise ManifestInFile(f"manifest {digest} is kept in a file")
        try:
            return self.store.read_bytes(digest)
        except BlobUnknown:
            raise ManifestUnknown(f"manifest {digest} is not in repository {repo}") from None

    def delete_manifest(self, name: RepositoryName, ref: str | Digest, actor: str | None = None) -> None:
        """By tag: remove the tag (the manifest stays). By digest: remove the manifest, its tags and its referrer
        edge, and drop its references (cas collects what nothing else holds)."""
        repo = name.text
        now = self.store.clock()

        def untag(txn: WriteTransaction) -> None:
            assert isinstance(ref, str)
            old = self.tags.remove(txn, repo, ref, now, actor)
            if old is None:
                self._require_repo(txn, name)
                raise ManifestUnknown(f"tag {ref} is not in repository {repo}")
            self._tag_deleted(txn, name, ref, old, actor)

        def delete(txn: WriteTransaction) -> None:
            assert isinstance(ref, Digest)
            mkey = key(repo, ref.key)
            raw = txn.get(self._t.manifests, mkey)
            if raw is None:
                self._require_repo(txn, name)
                raise ManifestUnknown(f"manifest {ref} is not in repository {repo}")
            record = ManifestRecord.unpack(raw)
            txn.delete(self._t.manifests, mkey)
            for tag in self.tags.of_manifest(txn, repo, ref):
                self.tags.remove(txn, repo, tag, now, actor)
                self._tag_deleted(txn, name, tag, ref, actor)
            if record.subject is not None:
                self.referrers.remove(txn, repo, Digest.parse(record.subject), ref)
            self.store.refs.drop_all(txn, holder(repo, ref))
            self._event(txn, ev.MANIFEST_DELETED, name, f"{repo}@{ref}", actor, {
                "digest": str(ref), "mediaType": record.media_type, "size": record.size})

        self.store.index.transact(untag if isinstance(ref, str) else delete)

    def _tag_deleted(self, txn: WriteTransaction, repo: RepositoryName, tag: str, digest: Digest,
                     actor: str | None) -> None:
        self._event(txn, ev.TAG_DELETED, repo, f"{repo.text}:{tag}", actor, {"tag": tag, "digest": str(digest)})

    # -- tags and referrers ---------------------------------------------------------------------------------------
    def list_tags(self, repo: RepositoryName, n: int | None = None,
                  last: str | None = None) -> tuple[list[str], bool]:
        with self.store.index.read() as txn:
            self._require_repo(txn, repo)
            return self.tags.page(txn, repo.text, None if n is None else min(n, PAGE_MAX), last)

    def tag_history(self, repo: RepositoryName, tag: str) -> list[Any]:
        with self.store.index.read() as txn:
            return self.tags.entries(txn, repo.text, tag)

    def list_referrers(self, repo: RepositoryName, digest: Digest, artifact_type: str | None = None) -> list[Any]:
        with self.store.index.read() as txn:
            self._require_repo(txn, repo)
            return self.referrers.of(txn, repo.text, digest, artifact_type)


def read_reference(repo: RepositoryName, text: str) -> str | Digest:
    """A manifest reference to read (GET/HEAD): a reference that cannot name anything names nothing here, so it is
    ManifestUnknown (404), as the distribution-spec conformance suite expects (a PUT or DELETE of it parses with
    names.parse_reference: TAG_INVALID / DIGEST_INVALID)."""
    try:
        return parse_reference(text)
    except InvalidReference as exc:
        raise ManifestUnknown(f"no manifest {text[:80]!r} in repository {repo}: {exc}") from None


@contextlib.contextmanager
def _unknown_to_expired(expired: bool) -> Iterator[None]:
    """With an expired access token, a session that does not exist (for this caller) is no reason to tell them so:
    the token is what they lack (401, and the client fetches a new one), as for a session not theirs."""
    try:
        yield
    except UploadUnknown:
        if expired:
            raise TokenExpired(UPLOAD_GRACE_REFUSAL) from None
        raise

