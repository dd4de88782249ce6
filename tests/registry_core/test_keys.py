"""The token signing key lives in the index: made once, shared by every opener, migrated from an earlier keys/ file.
On disk by nature (a data directory's earlier file, a reopen), so these open the on-disk store themselves rather than
through tests/conftest.py's store_factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cas import BlobStore
from registry_core.keys import LEGACY_FILE, TOKEN_KEY, signing_key
from registry_core.schema import KEY_TABLE
from registry_core.tokens import Scope, TokenService


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[[], BlobStore]]:
    """Open (or reopen) the store on disk in tmp_path/data; everything opened is closed afterwards."""
    opened: list[BlobStore] = []

    def make() -> BlobStore:
        opened.append(BlobStore.on_disk(tmp_path / "data"))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_one_key_for_every_opener_and_after_a_reopen(tmp_path: Path, make_store: Callable[[], BlobStore]) -> None:
    store = make_store()
    first = signing_key(store)
    assert public(signing_key(store)) == public(first)  # asked again: the same, not a new one
    store.close()
    again = signing_key(make_store())  # the next start (or another worker) on the same data directory
    assert public(first) == public(again)
    token, _ = TokenService(first, "berth").issue("alice", [Scope("repository", "syn1/a", frozenset({"pull"}))],
                                                  None, 1_000_000.0)
    assert TokenService(again, "berth").verify(token, 1_000_000.0).subject == "alice"
    assert not (tmp_path / "data" / LEGACY_FILE).exists()  # kept in the index, no file written


def test_an_earlier_keys_file_is_migrated_and_left_in_place(tmp_path: Path) -> None:
    """A data directory of an earlier Berth (the store on disk: only it has such a file)."""
    earlier = ec.generate_private_key(ec.SECP256R1())
    pem = earlier.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path = tmp_path / "data" / LEGACY_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(pem)
    store = BlobStore.on_disk(tmp_path / "data")
    assert public(signing_key(store)) == public(earlier)  # tokens issued before keep verifying
    with store.index.read() as txn:
        assert txn.get(store.index.table(KEY_TABLE), TOKEN_KEY) == pem
    assert path.read_bytes() == pem  # left for an earlier Berth on the same directory
    path.unlink()  # from now on the index is what counts
    store.close()
    with BlobStore.on_disk(tmp_path / "data") as reopened:
        assert public(signing_key(reopened)) == public(earlier)
