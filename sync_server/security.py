"""Passwords (bcrypt) and access tokens (HS256 JWTs)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import anyio
import bcrypt
import jwt

from protocol.errors import InvalidToken, ValidationFailed
from storage.scopes import Principal

# bcrypt only reads the first 72 bytes; longer passwords are refused rather than truncated.
MAX_PASSWORD_BYTES = 72


def check_password_shape(password: str) -> None:
    if len(password) < 8:
        raise ValidationFailed("password must be at least 8 characters", field="password")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValidationFailed("password must be at most 72 bytes", field="password")


class PasswordHasher:
    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self._dummy_hash: bytes | None = None

    async def hash(self, password: str) -> str:
        salt = bcrypt.gensalt(self.rounds)
        hashed = await anyio.to_thread.run_sync(bcrypt.hashpw, password.encode(), salt)
        return hashed.decode()

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Constant-ish time whether or not the account exists (no enumeration by timing)."""
        encoded = password.encode()[:MAX_PASSWORD_BYTES]
        if password_hash is None or not password_hash.startswith("$2"):
            await anyio.to_thread.run_sync(bcrypt.checkpw, encoded, self._dummy())
            return False
        return await anyio.to_thread.run_sync(bcrypt.checkpw, encoded, password_hash.encode())

    def _dummy(self) -> bytes:
        if self._dummy_hash is None:
            self._dummy_hash = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(self.rounds))
        return self._dummy_hash


class AccessTokens:
    """Short-lived HS256 JWTs: `sub`, `role`, `iat`, `exp`. Only HS256 is ever accepted."""

    ALGORITHM = "HS256"

    def __init__(self, secret: str, lifetime_seconds: int, cache_size: int = 20_000) -> None:
        self._secret = secret
        self.lifetime_seconds = lifetime_seconds
        # A phone presents the same token on every request for its whole lifetime; verifying
        # the signature once and remembering the outcome (never past `exp`) takes JWT parsing
        # off the hot path of background sync.
        self._verified: OrderedDict[str, tuple[Principal, int]] = OrderedDict()
        self._cache_size = cache_size

    def issue(self, user_id: str, role: str, *, now: int | None = None) -> str:
        issued_at = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "sub": user_id,
            "role": role,
            "iat": issued_at,
            "exp": issued_at + self.lifetime_seconds,
        }
        return jwt.encode(claims, self._secret, algorithm=self.ALGORITHM)

    def verify(self, token: str) -> Principal:
        remembered = self._verified.get(token)
        if remembered is not None and remembered[1] > time.time():
            return remembered[0]
        principal, expires_at = self._decode(token)
        self._verified[token] = (principal, expires_at)
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return principal

    def expires_at(self, token: str) -> float:
        """When a token verified earlier expires (a WebSocket closes with 4401 then)."""
        remembered = self._verified.get(token)
        if remembered is None:
            self.verify(token)
            remembered = self._verified[token]
        return float(remembered[1])

    def _decode(self, token: str) -> tuple[Principal, int]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self.ALGORITHM],
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken(
                "The access token has expired; refresh it.", code="token_expired"
            ) from None
        except jwt.PyJWTError:
            raise InvalidToken() from None
        role = claims.get("role")
        if role not in ("user", "admin") or not isinstance(claims["sub"], str):
            raise InvalidToken()
        return Principal(user_id=claims["sub"], role=role), int(claims["exp"])
