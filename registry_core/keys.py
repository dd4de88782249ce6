"""The token signing key: kept in the index, so that every store holds it and every worker signs with the same key.

An ES256 (P-256) private key, generated on first use. It lives in the table `signing_keys` (`token-es256` -> PKCS#8
PEM), not in a file: an in-memory store, and later a store in PostgreSQL shared by several machines, hold it as the
embedded one does, and several processes starting at once agree on one key (the first write wins, inside one write
transaction). `secret()` keeps other secrets the same way (`portal-session`: the key that signs the portal's
session cookies). The index already holds secrets of the same kind (webhook secrets and authorization values).

A data directory written by an earlier Berth keeps its key in `keys/token-es256.pem`. The first open copies that file
into the index, so tokens issued before keep verifying; the file stays (an earlier Berth on the same directory signs
with the same key), and from then on the index is what counts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cas import BlobStore, WriteTransaction

from . import schema
from .schema import KEY_TABLE

TOKEN_KEY = b"token-es256"
LEGACY_FILE = Path("keys") / "token-es256.pem"  # where an earlier Berth kept it, under the data directory


def signing_key(store: BlobStore) -> ec.EllipticCurvePrivateKey:
    """The registry's token signing key: the one in the index, else the earlier file's, else a new one."""
    pem = secret(store, TOKEN_KEY, lambda: _legacy_pem(store) or _new_pem())
    loaded = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"the index's {TOKEN_KEY.decode()} is not an EC private key")
    return loaded


def secret(store: BlobStore, name: bytes, make: Callable[[], bytes]) -> bytes:
    """The secret kept in the index under `name` (e.g. the portal's session-cookie key), made by `make` on first
    use. Several processes starting at once agree: the first write wins, inside one write transaction."""
    schema.declare(store.index)
    table = store.index.table(KEY_TABLE)
    with store.index.read() as txn:
        found = txn.get(table, name)
    if found is not None:
        return found
    candidate = make()

    def keep(txn: WriteTransaction) -> bytes:  # no side effect but the put: safe to run again
        first = txn.get(table, name)
        if first is not None:
            return first  # another process was first: its secret is the registry's
        txn.put(table, name, candidate)
        return candidate

    return store.index.transact(keep)


def _legacy_pem(store: BlobStore) -> bytes | None:
    root = getattr(store, "root", None)  # a store without a data directory (in memory) has no earlier file
    if root is None:
        return None
    try:
        return (Path(root) / LEGACY_FILE).read_bytes()
    except FileNotFoundError:
        return None


def _new_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
