"""Every table registry_core opens is declared in registry_core/schema.py, the one place its tables are listed."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from cas import BlobStore, Table
from registry_core.access import Access
from registry_core.policy import load_policy
from registry_core.registry import Registry
from registry_core.schema import DECLARED
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
    assert set(opened) <= DECLARED, set(opened) - DECLARED
    assert {"repos", "login_failures", "signing_keys", "users", "projects", "events", "webhooks"} <= set(opened)


def test_no_module_names_a_table_the_schema_does_not_declare() -> None:
    for path in ROOT.glob("*.py"):
        for name in re.findall(r"index\.table\(\s*\"([^\"]+)\"", path.read_text()):
            assert name in DECLARED, f"{path.name} opens {name!r}, which schema.py does not declare"
