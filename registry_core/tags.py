"""Tags: a sorted index per repository (listing and pagination are range scans) with the history of every move.

Beside the tags themselves, each tag's latest move (tag_pushes) and the repository's tags by push time (tag_times),
so that a listing sorted by name or by time is one range scan plus one get per tag shown (schema.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from cas import Digest, Table, Transaction, WriteTransaction

from .schema import NEWEST, SEP, HistoryEntry, TagPush, key, time_key


@dataclass(frozen=True, slots=True)
class TagIndex:
    tags: Table
    tagged: Table
    history: Table
    pushes: Table
    times: Table

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

    def pushed(self, txn: Transaction, repo: str, tag: str) -> TagPush | None:
        """The tag's latest move (None: no such tag)."""
        raw = txn.get(self.pushes, key(repo, tag))
        return TagPush.unpack(raw) if raw is not None else None

    def newest(self, txn: Transaction, repo: str) -> tuple[str, TagPush] | None:
        """The repository's most recently moved tag that still exists, and its move (one seek and one get)."""
        prefix = key(repo, b"")
        for k in txn.keys(self.times, prefix=prefix):
            tag = k[len(prefix) + 9:].decode("utf-8")
            push = self.pushed(txn, repo, tag)
            return (tag, push) if push is not None else None
        return None

    def page_by_time(self, txn: Transaction, repo: str, after: tuple[int, str] | None, n: int,
                     admit: Callable[[str], bool], scan: int) -> tuple[list[str], tuple[int, str] | None]:
        """Up to n tags newest first after the marker `after` = (µs, tag), those `admit` lets through, looking at
        no more than n + `scan` keys; and the marker to go on from (None: nothing follows). Ties in time go by
        name."""
        prefix = key(repo, b"")
        start = time_key(repo, after[0], after[1]) + SEP if after is not None else None
        found: list[tuple[int, str]] = []
        looked: tuple[int, str] | None = None
        for seen, k in enumerate(txn.keys(self.times, prefix=prefix, start=start)):
            if seen >= n + scan:
                return [tag for _, tag in found], looked
            looked = (NEWEST - int.from_bytes(k[len(prefix):len(prefix) + 8], "big"),
                      k[len(prefix) + 9:].decode("utf-8"))
            if admit(looked[1]):
                if len(found) == n:  # one more than the page: more follow
                    return [tag for _, tag in found], found[-1]
                found.append(looked)
        return [tag for _, tag in found], None

    def backfill(self, txn: WriteTransaction) -> int:
        """Write tag_pushes and tag_times for tags that have none (stores written before those tables existed),
        from each tag's last history entry. Returns how many were written; cheap to call when none are missing
        (two counts)."""
        if txn.count(self.pushes) == txn.count(self.tags):
            return 0
        written = 0
        for k, _ in list(txn.scan(self.tags)):
            if txn.get(self.pushes, k) is not None:
                continue
            repo, tag = (part.decode("utf-8") for part in k.split(SEP, 1))
            last = None
            for _, raw in txn.scan(self.history, prefix=key(repo, tag, b"")):
                last = HistoryEntry.unpack(raw)
            push = TagPush(int(last.time * 1_000_000), last.actor) if last is not None else TagPush(0, None)
            txn.put(self.pushes, k, push.pack())
            txn.put(self.times, time_key(repo, push.us, tag), b"")
            written += 1
        return written

    def _record(self, txn: WriteTransaction, entry: HistoryEntry, repo: str) -> None:
        us = int(entry.time * 1_000_000)
        stamp = key(repo, entry.tag, us.to_bytes(8, "big"))
        seq = sum(1 for _ in txn.scan(self.history, prefix=stamp))  # moves within one µs (a frozen test clock)
        txn.put(self.history, stamp + seq.to_bytes(4, "big"), entry.pack())
        # The latest move and the by-time index follow the history in the same transaction.
        previous = self.pushed(txn, repo, entry.tag)
        if previous is not None:
            txn.delete(self.times, time_key(repo, previous.us, entry.tag))
        if entry.digest is None:
            txn.delete(self.pushes, key(repo, entry.tag))
        else:
            txn.put(self.pushes, key(repo, entry.tag), TagPush(us, entry.actor).pack())
            txn.put(self.times, time_key(repo, us, entry.tag), b"")
