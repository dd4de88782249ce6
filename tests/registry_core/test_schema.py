"""Every table registry_core opens is declared in registry_core/schema.py, the one place its tables are listed."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cas import BlobStore, Table
from registry_core.access import Access
from registry_core.errors import IncompatibleRegistry
from registry_core.policy import load_policy
from registry_core.registry import Registry
from registry_core.schema import DECLARED, FORMAT_VERSION, META_TABLE, SHAPES
from registry_core.webhooks import Webhooks

ROOT = Path(__file__).resolve().parents[2] / "registry_core"


def test_every_table_opened_is_declared(make_store: Callable[..., BlobStore]) -> None:
    store = make_store()
    opened: list[str] = []
    table = store.index.table

    def recording(name: str) -> Table:
        opened.append(name)
        return table(name)

    store.index.table = recording  # type: ignore[method-assign]
    registry = Registry(store)
    access = Access(registry, load_policy("project", registry))  # accounts, projects, the throttle, the key
    Webhooks(store, registry.outbox)
    assert access.tokens is not None
    assert set(opened) <= DECLARED | {"inline"}, set(opened) - DECLARED  # inline: cas's, in a manifest GET's chain
    assert {"repos", "login_failures", "signing_keys", "users", "projects", "events", "webhooks"} <= set(opened)


def test_every_table_has_a_shape() -> None:
    """Every registry table is columns an operator reads on PostgreSQL, none a bytea key/value pair."""
    assert set(SHAPES) == DECLARED


def test_no_module_names_a_table_the_schema_does_not_declare() -> None:
    for path in ROOT.glob("*.py"):
        for name in re.findall(r"index\.table\(\s*\"([^\"]+)\"", path.read_text()):
            assert name in DECLARED, f"{path.name} opens {name!r}, which schema.py does not declare"


def test_the_registry_checks_its_format_version(tmp_path: Path) -> None:
    """A new store is marked with the registry's format version; one of version 1 (before the version was written)
    is read and marked; one of an unknown version is refused with a message naming both versions."""
    with Registry(BlobStore.on_disk(tmp_path / "new")) as registry, registry.store.index.read() as txn:
        assert txn.get(registry.store.index.table(META_TABLE), b"format") == str(FORMAT_VERSION).encode()
    for stored, refused in ((b"1", False), (b"7", True), (None, False)):
        root = tmp_path / f"v{stored!r}"
        with BlobStore.on_disk(root) as store:  # written by hand below the registry, as another Berth would
            store.index.declare([META_TABLE])
            meta = store.index.table(META_TABLE)
            if stored is not None:
                store.index.transact(lambda txn, meta=meta, stored=stored: txn.put(meta, b"format", stored))
        if refused:
            with BlobStore.on_disk(root) as store, pytest.raises(
                    IncompatibleRegistry, match=f"format version 7; this Berth reads version {FORMAT_VERSION}"):
                Registry(store)
            continue
        with Registry(BlobStore.on_disk(root)) as registry, registry.store.index.read() as txn:
            assert txn.get(registry.store.index.table(META_TABLE), b"format") == str(FORMAT_VERSION).encode()
