"""The portal's queries (registry_core/listings.py): paging against a model, and the cost of a page counted in index
reads (never timed)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import BlobStore, Digest, Transaction
from registry_core.accounts import Accounts
from registry_core.errors import RegistryError
from registry_core.listings import SCAN_MAX, InvalidQuery, Listings, NotFound
from registry_core.policy import OpenPolicy, ProjectPolicy
from registry_core.projects import Projects
from registry_core.registry import Registry
from tests.registry_core.values import digest_of, name_of, ref_of
from tests.serving import sha

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def image(registry: Registry, repo: str, seed: str, os_: str = "linux", arch: str = "amd64") -> bytes:
    """Push a config and a layer; return the manifest's bytes (not yet put)."""
    config = json.dumps({"os": os_, "architecture": arch, "created": "2026-01-01T00:00:00Z", "seed": seed,
                         "config": {"Cmd": ["run"], "Labels": {"seed": seed}},
                         "history": [{"created_by": "ENV A=1", "empty_layer": True},
                                     {"created_by": f"RUN make {seed}"}]}).encode()
    layer = f"layer {seed}".encode() * 10
    for blob in (config, layer):
        registry.ingest_blob(name_of(repo), blob, digest_of(sha(blob)))
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                                  "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer),
                                   "size": len(layer)}]}).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Clock, list[Digest]]]:
    clock = Clock()
    registry = Registry(BlobStore.on_disk(tmp_path_factory.mktemp("listings"), clock=clock))
    digests = []
    for seed in "abc":
        body = image(registry, "library/model", seed)
        digests.append(registry.put_manifest(name_of("library/model"), ref_of(f"seed-{seed}"), body, None).digest)
    yield registry, clock, digests
    registry.close()


def pages(listings: Listings, repo: str, n: int, sort: str, contains: str | None = None) -> list[str]:
    seen: list[str] = []
    last = None
    for _ in range(1000):
        page = listings.tag_page(None, repo, n, last, sort, contains)
        assert len(page.items) <= n
        seen += [row.tag for row in page.items]
        if page.next is None:
            return seen
        last = page.next
    raise AssertionError("paging did not end")


tag_names = st.sampled_from([f"t{i}" for i in range(12)] + ["latest", "v1.0", "V1.0", "x_y"])
operations = st.lists(st.tuples(st.sampled_from(["push", "delete"]), tag_names, st.integers(0, 2),
                                st.sampled_from([0.0, 0.0000004, 0.25, 3.0])), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, n=st.integers(1, 7), contains=st.sampled_from([None, "t1", "V", "zz"]))
def test_pages_concatenate_to_the_model(world: tuple[Registry, Clock, list[Digest]], ops: list[Any], n: int,
                                        contains: str | None) -> None:
    """Random pushes, moves and deletions (some in the same microsecond): every page of both sorts, concatenated, is
    the model's list (by name; by push time newest first, ties by name), with and without a filter."""
    registry, clock, digests = world
    repo = f"model/r{os.urandom(4).hex()}"
    model: dict[str, tuple[int, str | None]] = {}
    with registry.store.index.write() as txn:
        txn.put(registry.store.index.table("repos"), repo.encode(), b"{}")
    for op, tag, which, step in ops:
        clock.now += step
        us = int(clock.now * 1_000_000)
        with registry.store.index.write() as txn:
            if op == "push":
                if registry.tags.move(txn, repo, tag, digests[which], clock.now, f"user{which}"):
                    model[tag] = (us, f"user{which}")
            elif registry.tags.remove(txn, repo, tag, clock.now, None) is not None:
                del model[tag]
    listings = Listings(registry, OpenPolicy())
    keep = [t for t in model if contains is None or contains.lower() in t.lower()]
    assert pages(listings, repo, n, "name", contains) == sorted(keep)
    assert pages(listings, repo, n, "time", contains) == sorted(keep, key=lambda t: (-model[t][0], t))
    rows = listings.tag_page(None, repo, 1000, None, "time").items
    assert [(r.tag, r.push.us, r.push.actor) for r in rows] == \
        [(t, *model[t]) for t in sorted(model, key=lambda t: (-model[t][0], t))]
    by_name, by_time = sorted(model), sorted(model, key=lambda t: (-model[t][0], t))
    for sort, ascending, order in (("TAG", True, by_name), ("TAG", False, by_name[::-1]),
                                   ("CREATED_ON", False, by_time), ("CREATED_ON", True, by_time[::-1])):
        for offset in (0, 1, n, len(model) + 1):
            total, slice_rows = listings.tag_slice(None, repo, sort, ascending, n, offset)
            assert total == len(model)
            assert [r.tag for r in slice_rows] == order[offset:offset + n], (sort, ascending, offset)
    view = listings.repository(None, repo)
    assert view.tags == len(model)
    assert (view.last_push.tag if view.last_push else None) == (rows[0].tag if rows else None)


changes = st.lists(st.tuples(st.sampled_from(["tag", "digest", "untag", "delete", "purge", "pull", "other"]),
                              st.sampled_from(["t1", "t2", "t3"]), st.integers(0, 2)), max_size=25)


@given(steps=changes)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_remembered_counts_follow_every_change(world: tuple[Registry, Clock, list[Digest]],
                                               steps: list[tuple[str, str, int]]) -> None:
    """One long-lived Listings (it remembers each repository's tag count and size by outbox seq) against a fresh one
    after each change through the Registry: pushes by tag and by digest, tag and manifest deletions, a purge, pulls
    and changes of another repository. Only a manifest's deletion or a purge may have it walk the manifests again;
    every other change is applied to what it remembers."""
    registry, _, _ = world
    repo, other = f"kept/r{os.urandom(4).hex()}", f"kept/o{os.urandom(4).hex()}"
    bodies = [image(registry, name, seed) for name in (repo, other) for seed in "xyz"]
    registry.put_manifest(name_of(repo), ref_of("t0"), bodies[0], None)
    kept = Listings(registry, OpenPolicy())
    counted: list[str] = []
    walk = kept._blobs
    kept._blobs = lambda txn, name: counted.append(name) or walk(txn, name)  # type: ignore[method-assign]
    kept.repository(None, repo)
    for op, tag, which in steps:
        before = len(counted)
        body, ref = bodies[which], digest_of(sha(bodies[which]))
        try:
            if op == "tag":
                registry.put_manifest(name_of(repo), ref_of(tag), body, None)
            elif op == "digest":
                registry.put_manifest(name_of(repo), ref, body, None)
            elif op == "untag":
                registry.delete_manifest(name_of(repo), ref_of(tag))
            elif op == "delete":
                registry.delete_manifest(name_of(repo), ref)
            elif op == "purge":
                registry.purge_repository(name_of(repo))
                registry.put_manifest(name_of(repo), ref_of("t0"), image(registry, repo, "x"), None)
            elif op == "pull":
                registry.get_manifest(name_of(repo), ref_of(tag))
            else:
                registry.put_manifest(name_of(other), ref_of(tag), bodies[3 + which], None)
        except RegistryError:  # no such tag or manifest: nothing changed
            pass
        fresh = Listings(registry, OpenPolicy()).repository(None, repo)
        view = kept.repository(None, repo)
        assert (view.tags, view.size) == (fresh.tags, fresh.size), (op, tag, which)
        if op not in ("delete", "purge"):  # tags created, moved, deleted, manifests pushed: carried over
            assert len(counted) == before, op
        with registry.store.index.read() as txn:
            assert view.tags == sum(1 for _ in txn.keys(registry.tags.tags, prefix=f"{repo}\0".encode()))


class CountingTransaction:
    """A Transaction that counts the requests it is asked (a scan or keys call is one, however long it runs)."""

    def __init__(self, txn: Transaction, counts: dict[str, int]) -> None:
        self._txn, self._counts = txn, counts

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._txn, name)
        if name in ("get", "scan", "keys", "count"):
            def counted(*args: Any, **kwargs: Any) -> Any:
                self._counts[name] = self._counts.get(name, 0) + 1
                return found(*args, **kwargs)
            return counted
        return found


class CountingReads:
    def __init__(self, read: Any, counts: dict[str, int]) -> None:
        self._read, self._counts = read, counts

    def __call__(self) -> Any:
        reading = self._read()
        counts = self._counts

        class Wrapped:
            def __enter__(self) -> CountingTransaction:
                return CountingTransaction(reading.__enter__(), counts)

            def __exit__(self, *exc: object) -> None:
                reading.__exit__(*exc)
        return Wrapped()


def test_a_page_of_a_10000_tag_repository_costs_reads_per_item_not_per_tag(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    registry = Registry(BlobStore.on_disk(tmp_path, clock=clock))
    accounts, projects = Accounts(registry.store), Projects(registry.store)
    accounts.add_user("owner", certified=True)
    project = projects.create("big", "owner").id
    repo = f"{project}/big"
    digests = [registry.put_manifest(name_of(repo), ref_of("first"), image(registry, repo, s), None, "owner").digest
               for s in "abcd"]
    with registry.store.index.write() as txn:  # 10 000 tags in one transaction: TagIndex's own moves
        for i in range(10_000):
            clock.now += 0.001
            registry.tags.move(txn, repo, f"tag-{i:05d}", digests[i % 4], clock.now, "owner")
    listings = Listings(registry, ProjectPolicy(registry))
    identity = accounts.identity_of("owner")
    counts: dict[str, int] = {}
    monkeypatch.setattr(registry.store.index, "read", CountingReads(registry.store.index.read, counts))
    for sort, last in (("name", None), ("name", "tag-05000"), ("time", None), ("time", "tag-05000")):
        for n in (10, 100):
            listings.images._summaries.clear()  # cold: every summary is read again
            counts.clear()
            page = listings.tag_page(identity, repo, n, last, sort)
            assert len(page.items) == n and page.next is not None
            total = sum(counts.values())
            # per item: the tag's digest and its latest push, and (cold) a summary: manifest bytes, config;
            # per page: the scan, the repository's existence, the policy's few gets.
            assert total <= 4 * n + 30, (sort, n, counts)
            assert counts.get("scan", 0) + counts.get("keys", 0) <= 6, counts
    counts.clear()
    page = listings.tag_page(identity, repo, 100, None, "name", contains="777")  # 19 matches, spread out
    assert [r.tag for r in page.items] == sorted({f"tag-{i:05d}" for i in range(10_000) if "777" in f"{i:05d}"})
    assert page.next is None and sum(counts.values()) <= 4 * 19 + 30
    view = listings.repository(identity, repo)  # 10 004 tags on 4 images: each image counted once
    with registry.store.index.read() as txn:
        assert view.size == sum(listings.images.summary(txn, d).size for d in digests)
    assert view.tags == 10_000 + 1 and view.last_push is not None and view.last_push.tag == "tag-09999"
    assert SCAN_MAX >= 10_000
    registry.close()


def test_details_errors_and_trash(world: tuple[Registry, Clock, list[Digest]]) -> None:
    registry, clock, digests = world
    listings = Listings(registry, OpenPolicy())
    view = listings.tag(None, "library/model", "seed-a")
    detail = view.detail
    assert detail.summary.kind == "image" and detail.summary.platforms == ("linux/amd64",)
    assert detail.config is not None and detail.config.cmd == ["run"] and detail.config.labels == {"seed": "a"}
    assert [layer.created_by for layer in detail.layers] == ["RUN make a"]  # the ENV step made no layer
    manifest = json.loads(registry.get_manifest(name_of("library/model"), ref_of("seed-a")).body)
    assert detail.summary.size == detail.summary.manifest_size + manifest["config"]["size"] + \
        sum(layer["size"] for layer in manifest["layers"])
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(d), "size": registry.store.stat(d).size,
         "platform": {"os": "linux", "architecture": arch}}
        for d, arch in zip(digests[:2], ("amd64", "arm64"), strict=True)]})
    registry.put_manifest(name_of("library/model"), ref_of("multi"), index.encode(), None)
    multi = listings.tag(None, "library/model", "multi").detail
    assert multi.summary.kind == "index" and multi.summary.platforms == ("linux/amd64", "linux/arm64")
    assert [c.platform for c in multi.children] == ["linux/amd64", "linux/arm64"]
    assert multi.summary.size == multi.summary.manifest_size + sum(c.size for c in multi.children)
    assert multi.children[0].size == listings.tag(None, "library/model", "seed-a").detail.summary.size
    history = listings.history(None, "library/model", "seed-a")
    assert [e.digest for e in history] == [str(digests[0])]
    for call in (lambda: listings.tag(None, "library/model", "nope"),
                 lambda: listings.tag(None, "library/nope", "seed-a"),
                 lambda: listings.tag(None, "Bad Name", "x"),
                 lambda: listings.image(None, "library/model", "sha256:" + "0" * 64),
                 lambda: listings.image(None, "library/model", "not-a-digest")):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(InvalidQuery):
        listings.tag_page(None, "library/model", 10, None, "size")
    with pytest.raises(InvalidQuery):
        listings.tag_page(None, "library/model", 10, "12x:abc", "time")


def test_tags_written_before_the_push_tables_are_filled_in_once(world: tuple[Registry, Clock, list[Digest]]) -> None:
    registry, clock, digests = world
    repo = "library/older"
    for i, tag in enumerate(("a", "b", "c")):
        clock.now += 1
        with registry.store.index.write() as txn:
            if txn.get(registry.store.index.table("repos"), repo.encode()) is None:
                txn.put(registry.store.index.table("repos"), repo.encode(), b"{}")
            registry.tags.move(txn, repo, tag, digests[i], clock.now, f"user{i}")
    before = [(r.tag, r.push) for r in Listings(registry, OpenPolicy()).tag_page(None, repo, 10, None, "time").items]
    with registry.store.index.write() as txn:  # as a store of the previous format holds them: no push records
        for table in (registry.tags.pushes, registry.tags.times):
            for k in list(txn.keys(table, prefix=f"{repo}\0".encode())):
                txn.delete(table, k)
    after = [(r.tag, r.push) for r in Listings(registry, OpenPolicy()).tag_page(None, repo, 10, None, "time").items]
    assert after == before and [tag for tag, _ in after] == ["c", "b", "a"]
