"""The catalog: pages bounded by the page, not by the registry, and complete when followed to the end."""

from __future__ import annotations

import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from cas import WriteTransaction
from registry_core.names import RepositoryName
from registry_core.registry import CATALOG_SCAN, Registry
from tests.conftest import StoreFactory


def _create(registry: Registry, names: list[str]) -> None:
    def work(txn: WriteTransaction) -> None:
        for name in names:
            registry._ensure_repo(txn, RepositoryName.parse(name))

    registry.store.index.transact(work)


def test_work_per_page_is_bounded_by_the_page(store_factory: StoreFactory) -> None:
    with tempfile.TemporaryDirectory() as root, Registry(store_factory(root)) as registry:
        # Four pages' worth of scanning and more: what a page reads is bounded whatever lies beyond (50,000 names
        # cost 100,000 round trips on the distributed store: minutes, and no more proof than this).
        _create(registry, [f"syn1/r{i:05d}" for i in range(4 * (10 + CATALOG_SCAN) + 17)])
        asked: list[str] = []

        def hidden(name: str) -> bool:
            asked.append(name)
            return False

        names, after = registry.catalog(10, None, hidden)
        assert names == [] and len(asked) == 10 + CATALOG_SCAN and after == asked[-1]
        asked.clear()
        names, after = registry.catalog(10, after, hidden)  # the Link's marker goes on where the last page stopped
        assert names == [] and asked[0] == f"syn1/r{10 + CATALOG_SCAN:05d}" and len(asked) == 10 + CATALOG_SCAN


@settings(max_examples=40, deadline=None)
@given(st.sets(st.from_regex(r"[a-c]{1,3}(/[a-c]{1,2})?", fullmatch=True), max_size=60),
       st.integers(1, 7), st.sampled_from([0, 1, 2, 3]))
def test_following_the_markers_lists_exactly_the_visible_names(store_factory: StoreFactory, repos: set[str], n: int,
                                                               modulus: int) -> None:
    """Model: the sorted names the caller may see. Pages of at most n, following each marker, list exactly those,
    once each, in order, whatever share of the registry is hidden."""
    def visible(name: str) -> bool:
        return modulus == 0 or len(name) % modulus == 0

    with tempfile.TemporaryDirectory() as root, Registry(store_factory(root)) as registry:
        _create(registry, sorted(repos))
        listed: list[str] = []
        after: str | None = None
        for _ in range(len(repos) + 2):
            page, after = registry.catalog(n, after, visible)
            assert len(page) <= n
            listed += page
            if after is None:
                break
        assert after is None and listed == sorted(r for r in repos if visible(r))
