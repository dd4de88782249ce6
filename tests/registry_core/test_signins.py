"""Password sign-in (registry_core/signins.py, accounts.py): argon2id hashes, the throttle refusing before it looks
at a password, disabled accounts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cas import BlobStore
from registry_core.accounts import AccountError, Accounts
from registry_core.logins import FAILURE_LIMIT, FAILURE_WINDOW, LoginThrottle
from registry_core.signins import Refused, SignIn, Throttled


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_passwords_and_the_throttle(tmp_path: Path) -> None:
    clock = Clock()
    with BlobStore(tmp_path, clock=clock) as store:
        accounts = Accounts(store)
        accounts.add_user("alice", certified=True)
        accounts.add_user("bob")
        with pytest.raises(AccountError):
            accounts.set_password("alice", "short")
        with pytest.raises(AccountError):
            accounts.set_password("nobody", "long enough")
        accounts.set_password("alice", "correct horse")
        with store.index.read() as txn:
            stored = txn.get(store.index.table("passwords"), b"alice")
        assert stored is not None and stored.startswith(b"$argon2id$") and b"correct horse" not in stored
        signer = SignIn(accounts, LoginThrottle(store))
        identity = signer.password("alice", "correct horse", "192.0.2.1")
        assert identity.user == "alice" and identity.certified and "modify" in identity.scopes
        for source in ("192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6"):
            with pytest.raises(Refused):
                signer.password("alice", "guess", source)
        # Five failures against the account from five addresses: the account's bucket is full, so even the right
        # password is not looked at until the window has passed (a guesser learns nothing from the answer).
        with pytest.raises(Throttled) as caught:
            signer.password("alice", "correct horse", "192.0.2.9")
        assert 1 <= caught.value.retry_after <= FAILURE_WINDOW
        with pytest.raises(Refused):  # another account is not slowed by alice's guessers (bob has no password)
            signer.password("bob", "anything at all", "192.0.2.10")
        clock.now += FAILURE_WINDOW + 1
        assert signer.password("alice", "correct horse", "192.0.2.9").user == "alice"
        for _ in range(FAILURE_LIMIT):
            with pytest.raises(Refused):
                signer.password(f"ghost{_}", "x" * 10, "198.51.100.1")
        with pytest.raises(Throttled):  # the source's bucket: many accounts from one address
            signer.password("alice", "correct horse", "198.51.100.1")
        accounts.update_user("alice", disabled=True)
        clock.now += FAILURE_WINDOW + 1
        with pytest.raises(Refused, match="disabled"):
            signer.password("alice", "correct horse", "192.0.2.1")
        _, secret = accounts.create_token("alice", ["view"])
        assert accounts.login(secret)[0] is None and "disabled" in accounts.login(secret)[1]
        accounts.update_user("alice", disabled=False)
        assert accounts.login(secret)[0] is not None
        assert accounts.clear_password("alice") and not accounts.has_password("alice")
        with pytest.raises(Refused):
            signer.password("alice", "correct horse", "192.0.2.1")
