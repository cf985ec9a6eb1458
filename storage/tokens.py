"""Refresh tokens, kept server-side: in Redis when configured, in the database otherwise.

A token is `<id>.<secret>`; only a SHA-256 of the secret is stored. Every refresh spends the
token and issues its successor in the same *family*. Presenting a spent token again means it
was stolen (or replayed by an attacker), so the whole family is revoked: the thief and the
victim both have to sign in again, and the thief's successor token dies too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from sqlalchemy import insert, select, update

from storage.db import Database, now_ms
from storage.models import RefreshToken
from sync_server.errors import InvalidToken


@dataclass(frozen=True)
class Rotation:
    user_id: str
    token: str


def _split(token: str) -> tuple[str, str]:
    token_id, _, secret = token.partition(".")
    if len(token_id) != 32 or not secret or len(token) > 200:
        raise InvalidToken("The refresh token is invalid.")
    return token_id, secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_token() -> tuple[str, str, str]:
    token_id, secret = secrets.token_hex(16), secrets.token_urlsafe(32)
    return token_id, secret, f"{token_id}.{secret}"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class RefreshTokenStore(Protocol):
    async def issue(self, user_id: str, family_id: str | None = None) -> str: ...
    async def rotate(self, token: str) -> Rotation: ...
    async def revoke(self, token: str) -> None: ...
    async def revoke_user(self, user_id: str) -> None: ...


class DatabaseTokenStore:
    def __init__(self, db: Database, lifetime_seconds: int) -> None:
        self._db = db
        self._lifetime_ms = lifetime_seconds * 1000

    async def issue(self, user_id: str, family_id: str | None = None) -> str:
        async with self._db.write() as conn:
            return await self._insert(conn, user_id, family_id or secrets.token_hex(16))

    async def _insert(self, conn: object, user_id: str, family_id: str) -> str:
        token_id, secret, token = _new_token()
        now = now_ms()
        await conn.execute(  # type: ignore[attr-defined]
            insert(RefreshToken).values(
                id=token_id,
                family_id=family_id,
                user_id=user_id,
                secret_hash=_digest(secret),
                expires_at=now + self._lifetime_ms,
                created_at=now,
            )
        )
        return token

    async def rotate(self, token: str) -> Rotation:
        token_id, secret = _split(token)
        reused = False
        async with self._db.write() as conn:
            query = select(RefreshToken).where(RefreshToken.id == token_id)
            if not self._db.is_sqlite:
                query = query.with_for_update()
            row = (await conn.execute(query)).mappings().one_or_none()
            now = now_ms()
            valid = (
                row is not None
                and hmac.compare_digest(row["secret_hash"], _digest(secret))
                and row["revoked_at"] is None
                and row["expires_at"] > now
            )
            if row is not None and valid and row["spent_at"] is not None:
                await conn.execute(
                    update(RefreshToken)
                    .where(RefreshToken.family_id == row["family_id"])
                    .values(revoked_at=now)
                )
                reused = True
            elif row is not None and valid:
                await conn.execute(
                    update(RefreshToken).where(RefreshToken.id == token_id).values(spent_at=now)
                )
                successor = await self._insert(conn, row["user_id"], row["family_id"])
                return Rotation(row["user_id"], successor)
        if reused:
            raise InvalidToken(
                "This refresh token was already used; sign in again.", code="refresh_token_reused"
            )
        raise InvalidToken("The refresh token is invalid or expired.")

    async def revoke(self, token: str) -> None:
        token_id, secret = _split(token)
        async with self._db.write() as conn:
            row = (
                (await conn.execute(select(RefreshToken).where(RefreshToken.id == token_id)))
                .mappings()
                .one_or_none()
            )
            if row is None or not hmac.compare_digest(row["secret_hash"], _digest(secret)):
                raise InvalidToken("The refresh token is invalid.")
            await conn.execute(
                update(RefreshToken)
                .where(RefreshToken.family_id == row["family_id"])
                .values(revoked_at=now_ms())
            )

    async def revoke_user(self, user_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(RefreshToken)
                .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=now_ms())
            )


_ROTATE = """
local fields = redis.call('HMGET', KEYS[1], 'user', 'family', 'hash', 'spent')
if not fields[1] or fields[3] ~= ARGV[1] then return {'invalid'} end
local family_key = ARGV[2] .. fields[2]
if redis.call('EXISTS', family_key) == 1 then return {'invalid'} end
if fields[4] == '1' then
  redis.call('SET', family_key, '1', 'EX', ARGV[3])
  return {'reused'}
end
redis.call('HSET', KEYS[1], 'spent', '1')
return {'ok', fields[1], fields[2]}
"""


class RedisTokenStore:
    """Same contract as DatabaseTokenStore; the spend check is one atomic Lua script."""

    def __init__(self, client: Redis, prefix: str, lifetime_seconds: int) -> None:
        self._redis = client
        self._prefix = prefix
        self._lifetime = lifetime_seconds
        self._rotate = client.register_script(_ROTATE)

    def _token_key(self, token_id: str) -> str:
        return f"{self._prefix}rt:{token_id}"

    def _family_key(self, family_id: str) -> str:
        return f"{self._prefix}rtf:{family_id}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._prefix}rtu:{user_id}"

    async def issue(self, user_id: str, family_id: str | None = None) -> str:
        family_id = family_id or secrets.token_hex(16)
        token_id, secret, token = _new_token()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._token_key(token_id),
                mapping={"user": user_id, "family": family_id, "hash": _digest(secret)},
            )
            pipe.expire(self._token_key(token_id), self._lifetime)
            pipe.sadd(self._user_key(user_id), family_id)
            pipe.expire(self._user_key(user_id), self._lifetime)
            await pipe.execute()
        return token

    async def rotate(self, token: str) -> Rotation:
        token_id, secret = _split(token)
        answer = await self._rotate(
            keys=[self._token_key(token_id)],
            args=[_digest(secret), f"{self._prefix}rtf:", self._lifetime],
        )
        status = _text(answer[0])
        if status == "reused":
            raise InvalidToken(
                "This refresh token was already used; sign in again.", code="refresh_token_reused"
            )
        if status != "ok":
            raise InvalidToken("The refresh token is invalid or expired.")
        user_id, family_id = (_text(value) for value in answer[1:3])
        return Rotation(user_id, await self.issue(user_id, family_id))

    async def revoke(self, token: str) -> None:
        token_id, secret = _split(token)
        family, digest = (
            _text(value)
            for value in await self._redis.hmget(self._token_key(token_id), ["family", "hash"])
        )
        if not family or digest != _digest(secret):
            raise InvalidToken("The refresh token is invalid.")
        await self._redis.set(self._family_key(family), "1", ex=self._lifetime)

    async def revoke_user(self, user_id: str) -> None:
        families = await self._redis.smembers(self._user_key(user_id))
        if families:
            async with self._redis.pipeline(transaction=True) as pipe:
                for family in families:
                    pipe.set(self._family_key(_text(family)), "1", ex=self._lifetime)
                await pipe.execute()
