"""The registry's tables on PostgreSQL (the distributed store): columns an operator reads with psql, a store of an
earlier Berth (bytea tables) reshaped when opened, writes replayed under real conflicts, a manifest GET by tag in
one round trip, tags/list and the catalog as index scans."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cas import BlobStore, Digest
from cas.postgres_index import PgTransaction, PostgresIndex
from registry_core import schema
from registry_core.accounts import Accounts
from registry_core.keys import signing_key
from registry_core.logins import LoginThrottle
from registry_core.manifests import OCI_MANIFEST
from registry_core.projects import Projects
from registry_core.registry import Registry
from registry_core.sessions import Sessions
from registry_core.webhooks import RetryPolicy, Webhooks
from tests.engines import Engines
from tests.registry_core.values import name_of, ref_of

# The registry tables main's Berth (before every table had a shape) kept in columns; the rest were bytea.
EARLIER_SHAPED = {"repos", "links", "manifests", "tags", "tagged", "history", "referrers", "uploading", "tag_pushes",
                  "passwords", "pats_used", "registry_meta"}


@pytest.fixture(scope="module")
def places(engines: Engines) -> tuple[str, str]:
    return engines.postgres.create_database(), f"s3://{engines.s3.create_bucket()}/{{}}?endpoint={engines.s3.endpoint}"


def open_store(places: tuple[str, str], name: str) -> BlobStore:
    database, blobs = places
    return BlobStore.distributed(f"{database}?schema={name}", blobs.format(name))


def pg_index(store: BlobStore) -> PostgresIndex:
    assert isinstance(store.index, PostgresIndex)
    return store.index


def body_of(registry: Registry, repo: str, config: bytes = b"{}") -> bytes:
    """An image manifest whose config blob is in the repository."""
    info = registry.ingest_blob(name_of(repo), config, Digest.of(config))
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(info.digest),
                                  "size": info.size}}).encode()


def push(registry: Registry, repo: str, tag: str, config: bytes = b"{}") -> Digest:
    return registry.put_manifest(name_of(repo), ref_of(tag), body_of(registry, repo, config), OCI_MANIFEST).digest


def snapshot(store: BlobStore) -> dict[str, list[tuple[bytes, Any]]]:
    """Every registry table's keys and values (JSON values compared as JSON: jsonb prints them its own way)."""
    found: dict[str, list[tuple[bytes, Any]]] = {}
    schema.declare(store.index)  # the first open reshapes
    with store.index.read() as txn:
        for name in sorted(schema.DECLARED):
            shape = schema.SHAPES[name]
            is_json = isinstance(shape.value, str) and shape.value.startswith("json:")
            found[name] = [(k, json.loads(v) if is_json else v) for k, v in txn.scan(store.index.table(name))]
    return found


def columns(database: str, place: str, table: str) -> list[tuple[str, str]]:
    with psycopg.connect(database) as conn:
        return [(c, t) for c, t in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND "
            "table_name = %s ORDER BY ordinal_position", (place, table)).fetchall()]


def fill(store: BlobStore) -> None:
    """A bit of everything the registry keeps: an image and its tag, accounts, a token, a project with a grant in
    the trash, a webhook with a dead letter, a login failure, a session, the signing key."""
    registry = Registry(store)
    push(registry, "syn10001/app", "v1")
    accounts = Accounts(store)
    accounts.add_user("ann", certified=True)
    accounts.create_token("ann", ["view"], label="laptop")
    projects = Projects(store)
    project = projects.create("first", "ann")
    projects.grant(project.id, "public", "view")
    projects.trash(project.id)
    hooks = Webhooks(store, registry.outbox)
    hooks.add("ci", "http://127.0.0.1:9/hook")
    assert hooks.acquire("ci", "me", 60)
    event = registry.outbox.after(0, 1)[0]
    hooks.failed("ci", "me", event, False, "refused", RetryPolicy(limit=1), 0.5)
    LoginThrottle(store).failed("192.0.2.1")
    Sessions(store).open("ann", None)
    signing_key(store)


def test_a_store_of_bytea_tables_is_reshaped_when_opened(places: tuple[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL store written by a Berth that kept most registry tables as (key bytea, value bytea) opens with
    every table in columns, every row carried over through the shapes' codecs, each reshape logged; and it works."""
    database, _ = places
    place = "old" + uuid.uuid4().hex[:8]
    with monkeypatch.context() as earlier:
        earlier.setattr(schema, "TABLE_SHAPES", tuple(s for s in schema.TABLE_SHAPES if s.name in EARLIER_SHAPED))
        with open_store(places, place) as store:
            fill(store)
            before = snapshot(store)
    assert columns(database, place, "events") == [("key", "bytea"), ("value", "bytea")]
    assert all(before[name] for name in ("events", "users", "grants", "webhook_dead", "tag_times", "signing_keys"))
    with open_store(places, place) as store:
        assert snapshot(store) == before
        registry = Registry(store)
        digest = push(registry, "syn10001/app", "v2", b'{"a":1}')
        assert registry.get_manifest(name_of("syn10001/app"), "v2").digest == digest
        assert Projects(store).create("second", "ann").id == "syn10002"  # the counter came along
    assert columns(database, place, "events") == [("seq", "bigint"), ("event", "jsonb")]
    assert columns(database, place, "tag_times") == [("repo", "text"), ("minus_us", "bigint"), ("tag", "text")]
    with psycopg.connect(database) as conn:
        reshaped = {name for (name,) in conn.execute(f"SELECT name FROM {place}.berth_reshapes").fetchall()}
        assert reshaped == schema.DECLARED - EARLIER_SHAPED
        # What an operator reads: the tags newest first, with their push times; who may see what.
        times = conn.execute(f"SELECT t.tag, -t.minus_us = (p.push->>'us')::bigint FROM {place}.tag_times t "
                             f"JOIN {place}.tag_pushes p USING (repo, tag) ORDER BY t.repo, t.minus_us").fetchall()
        assert times == [("v2", True), ("v1", True)]
        assert conn.execute(f"SELECT target, principal, level FROM {place}.grants").fetchall() == [
            ("syn10001", "public", "view")]
        assert conn.execute(f"SELECT last FROM {place}.counters WHERE name = 'project'").fetchone() == (10002,)


@pytest.fixture
def store(places: tuple[str, str]) -> Iterator[BlobStore]:
    with open_store(places, "s" + uuid.uuid4().hex[:10]) as opened:
        yield opened


def test_a_manifest_get_is_one_round_trip_and_a_put_one_write_transaction(store: BlobStore,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(store)
    index = pg_index(store)
    writes = [0]
    write = index.write

    def counted() -> Any:
        writes[0] += 1
        return write()
    monkeypatch.setattr(index, "write", counted)
    body = body_of(registry, "syn1/app")
    writes[0] = 0
    digest = registry.put_manifest(name_of("syn1/app"), "v1", body, OCI_MANIFEST).digest
    assert writes[0] == 1  # the manifest, its references, its tag, its events: one transaction
    before = index.round_trips
    found = registry.get_manifest(name_of("syn1/app"), "v1")
    assert (found.digest, index.round_trips - before) == (digest, 1)
    before = index.round_trips
    assert registry.get_manifest(name_of("syn1/app"), digest).digest == digest
    assert index.round_trips - before == 1
    # A read transaction begins with its first statement, and one that runs none costs nothing.
    before = index.round_trips
    with index.read() as txn:
        pass
    with index.read() as txn:
        assert txn.get(index.table("tags"), b"syn1/app\0v1") == digest.key
    assert index.round_trips - before == 2  # the get (BEGIN with it), the ROLLBACK


def test_concurrent_writers_on_the_same_rows_are_replayed_not_refused(store: BlobStore) -> None:
    """Threads create projects (one counter), grant on one project and flip one account's flags at once: on
    PostgreSQL serialization failures are replayed inside transact; nothing escapes, nothing is lost."""
    accounts, projects = Accounts(store), Projects(store)
    for name in ("owner", *(f"u{i}" for i in range(6))):
        accounts.add_user(name)
    shared = projects.create("shared", "owner").id
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for round in range(4):
                projects.create(f"p{i}-{round}", "owner")
                projects.grant(shared, f"u{i}", "view" if round % 2 else "edit")
                accounts.update_user("owner", admin=bool(round % 2))
                accounts.create_token(f"u{i}", ["view"])
        except BaseException as exc:  # noqa: BLE001 - any escape fails the test below
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ids = sorted(int(p.id[3:]) for p in projects.all())
    assert ids == list(range(ids[0], ids[0] + 25))  # 1 + 6 × 4 projects, no number given twice or lost
    assert projects.grants(shared) == {f"u{i}": "view" for i in range(6)}
    assert all(len(accounts.tokens(f"u{i}")) == 4 for i in range(6))
    events = registry_events(store)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # the outbox's counter: no gap


def registry_events(store: BlobStore) -> list[Any]:
    return Registry(store).outbox.after(0, 10_000)


def test_tags_list_and_the_catalog_are_index_scans(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """On tables of thousands of rows (planner statistics up to date), the statements a tags/list page and a
    catalog page send are index scans on the primary key, not sequential scans."""
    registry = Registry(store)
    index = pg_index(store)
    push(registry, "syn1/app", "v0")
    with psycopg.connect(store_database(index)) as conn:
        conn.execute(f"INSERT INTO {index.schema}.tags SELECT 'syn1/app', 't' || i, 'sha256:' || md5(i::text) "
                     f"|| md5(i::text) FROM generate_series(1, 20000) AS i")
        conn.execute(f"INSERT INTO {index.schema}.repos SELECT 'syn1/r' || i, '{{}}' FROM generate_series(1, 20000) "
                     "AS i")
        conn.execute(f"ANALYZE {index.schema}.tags")
        conn.execute(f"ANALYZE {index.schema}.repos")
    sent: list[tuple[Any, Any]] = []
    run = PgTransaction._run

    def recording(self: PgTransaction, query: Any, params: Any = (), fetch: bool = True) -> Any:
        sent.append((query, params))
        return run(self, query, params, fetch)
    monkeypatch.setattr(PgTransaction, "_run", recording)
    tags, more = registry.list_tags(name_of("syn1/app"), 50, "t500")
    assert len(tags) == 50 and more
    names, _ = registry.catalog(50, "syn1/r77")
    assert len(names) == 50
    monkeypatch.undo()
    scans = [(q, p) for q, p in sent if "ORDER BY" in q.as_string()]
    assert len(scans) == 2
    with psycopg.connect(store_database(index)) as conn:
        for query, params in scans:
            plan = "\n".join(row[0] for row in conn.execute(b"EXPLAIN " + query.as_bytes(conn), params).fetchall())
            assert "Index" in plan and "Seq Scan" not in plan, plan


def store_database(index: PostgresIndex) -> str:
    return index._pool.conninfo
