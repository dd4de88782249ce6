"""Signing a person in with a user name and password, throttled (the portal's sign-in page and form).

Unlike a personal access token (256 random bits: logins.py lets a correct one through even from a throttled source),
a password can be guessed, so a throttled sign-in is refused before the password is looked at: otherwise a guesser
would learn a right guess from the answer whatever the throttle said. Two LoginThrottle buckets count failures: the
source address, and the account (`password:<name>`), so that guesses spread over many addresses still slow down
against one account. The price: someone failing 5 times a minute against an account keeps its owner waiting for up
to a minute (FAILURE_WINDOW), which is what GitLab and Harbor accept too.

    signer = SignIn(Accounts(store), LoginThrottle(store))
    identity = signer.password("alice", "correct horse", source="192.0.2.7")   # or Refused / Throttled
"""

from __future__ import annotations

from .accounts import Accounts, Identity
from .logins import LoginThrottle


class Refused(Exception):
    """Wrong user name or password, or a disabled account (the message says which only for a right password)."""


class Throttled(Exception):
    """Too many failed sign-ins from the source or against the account: wait `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed sign-ins: wait {retry_after:.0f} s")
        self.retry_after = retry_after


class SignIn:
    def __init__(self, accounts: Accounts, throttle: LoginThrottle) -> None:
        self._accounts = accounts
        self._throttle = throttle

    def password(self, name: str, password: str, source: str) -> Identity:
        """The identity of `name` if `password` is theirs; Throttled or Refused otherwise."""
        buckets = (source, f"password:{name[:64]}")
        wait = max(self._throttle.wait(bucket) for bucket in buckets)
        if wait:
            raise Throttled(wait)
        identity, why = self._accounts.check_password(name, password)
        if identity is None:
            for bucket in buckets:
                self._throttle.failed(bucket)
            raise Refused(why)
        return identity

    def token(self, secret: str, source: str) -> Identity:
        """The identity behind a personal access token; a right one is never throttled (logins.py), a wrong one
        counts against the source."""
        identity, why = self._accounts.login(secret)
        if identity is not None:
            return identity
        wait = self._throttle.wait(source)
        if wait:
            raise Throttled(wait)
        self._throttle.failed(source)
        raise Refused(why)
