"""Tags: a sorted index per repository (listing and pagination are range scans) with the history of every move."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from cas import Digest, Table, Transaction, WriteTransaction

from .schema import SEP, HistoryEntry, key


@dataclass(frozen=True, slots=True)
class TagIndex:
    tags: Table
    tagged: Table
    history: Table

    def get(self, txn: Transaction, repo: str, tag: str) -> Digest | None:
        raw = txn.get(self.tags, key(repo, tag))
        return Digest.parse(raw.decode("ascii")) if raw is not None else None

    def move(self, txn: WriteTransaction, repo: str, tag: str, digest: Digest, now: float,
             actor: str | None) -> bool:
        """Point `tag` at `digest`; a no-op (and no history entry) if it already does. True if it moved."""
        old = self.get(txn, repo, tag)
        if old == digest:
            return False
        if old is not None:
            txn.delete(self.tagged, key(repo, old.key, tag))
        txn.put(self.tags, key(repo, tag), digest.key)
        txn.put(self.tagged, key(repo, digest.key, tag), b"")
        self._record(txn, HistoryEntry(tag, str(digest), now, actor), repo)
        return True

    def remove(self, txn: WriteTransaction, repo: str, tag: str, now: float, actor: str | None) -> Digest | None:
        old = self.get(txn, repo, tag)
        if old is not None:
            txn.delete(self.tags, key(repo, tag))
            txn.delete(self.tagged, key(repo, old.key, tag))
            self._record(txn, HistoryEntry(tag, None, now, actor), repo)
        return old

    def of_manifest(self, txn: Transaction, repo: str, digest: Digest) -> list[str]:
        prefix = key(repo, digest.key, b"")
        return [k[len(prefix):].decode("utf-8") for k, _ in txn.scan(self.tagged, prefix=prefix)]

    def page(self, txn: Transaction, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Up to n tags (all if n is None) after `last`, in byte order (= lexical for the tag grammar's ASCII),
        and whether more follow."""
        prefix = key(repo, b"")
        start = key(repo, last) + SEP if last is not None else None  # the first key after `last` itself
        keys = txn.keys(self.tags, prefix=prefix, start=start)
        if n is not None:
            keys = islice(keys, n + 1)  # one more than the page: whether more follow
        cut = len(prefix)
        tags = [k[cut:].decode("utf-8") for k in keys]
        if n is not None and len(tags) > n:
            return tags[:n], True
        return tags, False

    def entries(self, txn: Transaction, repo: str, tag: str) -> list[HistoryEntry]:
        """The tag's history, oldest first."""
        return [HistoryEntry.unpack(v) for _, v in txn.scan(self.history, prefix=key(repo, tag, b""))]

    def _record(self, txn: WriteTransaction, entry: HistoryEntry, repo: str) -> None:
        stamp = key(repo, entry.tag, int(entry.time * 1_000_000).to_bytes(8, "big"))
        seq = sum(1 for _ in txn.scan(self.history, prefix=stamp))  # moves within one µs (a frozen test clock)
        txn.put(self.history, stamp + seq.to_bytes(4, "big"), entry.pack())
