"""Docker token authentication: the tokens the token endpoint issues and the registry verifies (PyJWT, ES256).

The signing key is generated on first use and kept in the index (keys.py); its `kid` is the first 16 bytes of the
SHA-256 of the public key (DER), base32. Access tokens live TOKEN_LIFETIME (Docker
Hub's and Distribution's examples use 5 minutes to an hour; short means a revoked grant stops working soon). A
refresh token (asked for with offline_token=true / access_type=offline) is a JWT of its own audience naming the
personal access token it came from: using it re-checks that token (revoked or expired: refused).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

TOKEN_LIFETIME = 300  # seconds
REFRESH_LIFETIME = 30 * 24 * 3600
LEEWAY = 30  # seconds of clock skew tolerated on nbf/exp (several processes, one machine: small)
ISSUER = "berth"


class InvalidToken(Exception):
    """A bearer token that does not verify (signature, issuer, audience, time window, shape)."""


@dataclass(frozen=True, slots=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """`repository:syn1/app:pull,push`; the name may itself contain ':' (`localhost:5000/syn1/app`)."""
        kind, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name or not actions or len(text) > 1024:
            return None
        return cls(kind, name, frozenset(a for a in actions.split(",") if a))

    def to_claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str  # the user, or "" for anonymous
    access: tuple[Scope, ...]
    expires: float
    token_id: str | None  # the personal access token behind it

    def allows(self, kind: str, name: str, action: str) -> bool:
        return any(s.type == kind and s.name == name and (action in s.actions or "*" in s.actions)
                   for s in self.access)


class TokenService:
    def __init__(self, key: ec.EllipticCurvePrivateKey, service: str, lifetime: int = TOKEN_LIFETIME) -> None:
        """`key`: the registry's signing key (keys.signing_key(store))."""
        self.service = service
        self.lifetime = lifetime  # seconds an access token lives (the operator's [limits] token_lifetime)
        self._key = key
        public = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = base64.b32encode(hashlib.sha256(public).digest()[:15]).decode()
        self._public = self._key.public_key()

    def issue(self, subject: str, access: list[Scope], token_id: str | None, now: float) -> tuple[str, int]:
        claims = {"iss": ISSUER, "sub": subject, "aud": self.service, "iat": int(now), "nbf": int(now) - 1,
                  "exp": int(now) + self.lifetime, "jti": secrets.token_hex(12),
                  "access": [s.to_claim() for s in access]}
        if token_id:
            claims["pat"] = token_id
        return jwt.encode(claims, self._key, "ES256", headers={"kid": self.kid}), self.lifetime

    def issue_refresh(self, subject: str, token_id: str, now: float) -> str:
        claims = {"iss": ISSUER, "sub": subject, "aud": f"{self.service}#refresh", "iat": int(now),
                  "exp": int(now) + REFRESH_LIFETIME, "jti": secrets.token_hex(12), "pat": token_id}
        return jwt.encode(claims, self._key, "ES256", headers={"kid": self.kid})

    def verify(self, token: str, now: float, allow_expired_for: float = 0.0) -> Claims:
        """Signature, issuer, audience, nbf/exp and shape. `allow_expired_for` accepts a token that expired at
        most that many seconds ago (an upload session's owner finishing a long push)."""
        try:
            data = jwt.decode(token, self._public, algorithms=["ES256"], audience=self.service, issuer=ISSUER,
                              leeway=LEEWAY, options={"require": ["exp", "nbf", "iat", "sub", "jti"],
                                                      "verify_exp": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        expires = float(data["exp"])
        if now > expires + LEEWAY + allow_expired_for:
            raise InvalidToken("the token has expired")
        access = []
        for item in data.get("access") or []:
            if not isinstance(item, dict) or not isinstance(item.get("actions"), list):
                raise InvalidToken("malformed access claim")
            access.append(Scope(str(item.get("type")), str(item.get("name")), frozenset(map(str, item["actions"]))))
        return Claims(str(data["sub"]), tuple(access), expires, data.get("pat"))

    def verify_refresh(self, token: str) -> tuple[str, str]:
        """(subject, personal token id) of a refresh token."""
        try:
            data = jwt.decode(token, self._public, algorithms=["ES256"], audience=f"{self.service}#refresh",
                              issuer=ISSUER, leeway=LEEWAY, options={"require": ["exp", "sub", "pat"]})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid refresh token: {exc}") from None
        return str(data["sub"]), str(data["pat"])
