"""Refresh tokens, kept server-side: in Redis when configured, in the database otherwise.

A token is `<id>.<secret>`; only a SHA-256 of the secret is stored. Every refresh spends the
token and issues its successor in the same *family*. Presenting a spent token again means it
was stolen (or replayed by an attacker), so the whole family is revoked: the thief and the
victim both have to sign in again, and the thief's successor token dies too.

Reuse grace (`REFRESH_REUSE_GRACE_SECONDS`, default 60, 0 = none). On a flaky mobile link the
server can spend a token and issue its successor while the answer never reaches the phone; the
phone retries with the token it still holds, and without grace that honest retry looks exactly
like a thief's replay and signs the user out. The same happens when two requests of one app
refresh at once. So, for that many seconds after a token was *first* spent (the window does not
slide with each retry), presenting it again answers a new successor in the same family and
revokes nothing; after the window, reuse revokes the family as above. Auth0's "reuse interval"
and Okta's "grace period" do the same.

The trade-off: a stolen token replayed within the window also gets a working pair, and nothing
is revoked. The window bounds that exposure (a thief must replay within seconds of the
victim's refresh); anyone presenting the token after the window still kills the family,
including every successor handed out during the window. A revoked family stays dead: grace
never revives it. The check, the decision and the mark are one atomic step in both stores
(the row lock in the database, one Lua script in Redis), so two racing presentations of one
token are decided one after the other, never both as "first spend".
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from sqlalchemy import insert, select, update

from protocol.errors import InvalidToken
from storage.db import Database, now_ms
from storage.models import RefreshToken
from storage.redis_client import confirm_replicated


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
    """Tokens in `refresh_tokens`. A family is dead once any of its rows is revoked (revocation
    always marks the whole family, so a successor inserted by a racing rotation that the
    family UPDATE did not see is refused too)."""

    def __init__(self, db: Database, lifetime_seconds: int, reuse_grace_seconds: int = 0) -> None:
        self._db = db
        self._lifetime_ms = lifetime_seconds * 1000
        self._grace_ms = reuse_grace_seconds * 1000

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
            # The row lock (SQLite: the one writer) makes check, decision and mark one step:
            # a second presentation of the same token waits here and sees the first's spent_at.
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
                and not await self._family_revoked(conn, row["family_id"])
            )
            if row is not None and valid and row["spent_at"] is not None:
                if self._grace_ms > 0 and now - row["spent_at"] <= self._grace_ms:
                    # A retry after a lost answer (or a concurrent refresh): another successor,
                    # spent_at stays at the first spend so the window does not slide.
                    successor = await self._insert(conn, row["user_id"], row["family_id"])
                    return Rotation(row["user_id"], successor)
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

    @staticmethod
    async def _family_revoked(conn: object, family_id: str) -> bool:
        query = (
            select(RefreshToken.id)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_not(None))
            .limit(1)
        )
        return (await conn.execute(query)).first() is not None  # type: ignore[attr-defined]

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


# KEYS[1] the token's hash; ARGV: secret digest, family key prefix, family marker TTL (s),
# grace (ms). `spent` holds the time of the first spend in ms (Redis TIME: one clock for every
# replica); a legacy '1' reads as 1 ms, long past any window. Check, decide and mark in one EVAL.
_ROTATE = """
local fields = redis.call('HMGET', KEYS[1], 'user', 'family', 'hash', 'spent')
if not fields[1] or fields[3] ~= ARGV[1] then return {'invalid'} end
local family_key = ARGV[2] .. fields[2]
if redis.call('EXISTS', family_key) == 1 then return {'invalid'} end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if fields[4] then
  local spent = tonumber(fields[4]) or 0
  local grace = tonumber(ARGV[4])
  if grace > 0 and now - spent <= grace then
    return {'grace', fields[1], fields[2]}
  end
  redis.call('SET', family_key, '1', 'EX', ARGV[3])
  return {'reused'}
end
redis.call('HSET', KEYS[1], 'spent', tostring(now))
return {'ok', fields[1], fields[2]}
"""


# KEYS: the token's hash, the user's family set; ARGV: user, family, secret digest, TTL (s).
# One command (not a MULTI pipeline) so that WAIT on the same connection covers it.
_STORE = """
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'family', ARGV[2], 'hash', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# KEYS: family revocation markers to set; ARGV: their TTL (s).
_MARK_FAMILIES = """
for _, key in ipairs(KEYS) do redis.call('SET', key, '1', 'EX', ARGV[1]) end
return #KEYS
"""


class RedisTokenStore:
    """Same contract as DatabaseTokenStore; the spend check is one atomic Lua script. A revoked
    family is a marker key checked by that script, so a successor issued for a family being
    revoked at the same moment is dead too.

    `replicated` (Redis behind Sentinel): each change is confirmed on a replica before it is
    answered (`storage.redis_client.confirm_replicated`), so a failover right after a
    refresh does not bring the spent token back and lose its successor, and a sign-out is
    not undone."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        lifetime_seconds: int,
        reuse_grace_seconds: int = 0,
        *,
        replicated: bool = False,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._lifetime = lifetime_seconds
        self._grace_ms = reuse_grace_seconds * 1000
        self._rotate = client.register_script(_ROTATE)
        self._store = client.register_script(_STORE)
        self._mark_families = client.register_script(_MARK_FAMILIES)
        self._replicated = replicated

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[Redis]:
        """The client to write with: when replicated, one connection, confirmed on a replica
        at the end, also when the block refuses the token after writing (a reuse revokes the
        family). WAIT covers only the writes of the connection it is sent on, so every write
        in the block goes through this client as a single command (a script): a pipeline
        would take another connection from the pool."""
        if not self._replicated:
            yield self._redis
            return
        async with self._redis.client() as single:
            try:
                yield single
            finally:
                await confirm_replicated(single)

    def _token_key(self, token_id: str) -> str:
        return f"{self._prefix}rt:{token_id}"

    def _family_key(self, family_id: str) -> str:
        return f"{self._prefix}rtf:{family_id}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._prefix}rtu:{user_id}"

    async def issue(self, user_id: str, family_id: str | None = None) -> str:
        async with self._writing() as client:
            return await self._issue(client, user_id, family_id)

    async def _issue(self, client: Redis, user_id: str, family_id: str | None) -> str:
        family_id = family_id or secrets.token_hex(16)
        token_id, secret, token = _new_token()
        await self._store(
            keys=[self._token_key(token_id), self._user_key(user_id)],
            args=[user_id, family_id, _digest(secret), self._lifetime],
            client=client,
        )
        return token

    async def rotate(self, token: str) -> Rotation:
        token_id, secret = _split(token)
        async with self._writing() as client:
            answer = await self._rotate(
                keys=[self._token_key(token_id)],
                args=[_digest(secret), f"{self._prefix}rtf:", self._lifetime, self._grace_ms],
                client=client,
            )
            status = _text(answer[0])
            if status == "reused":
                raise InvalidToken(
                    "This refresh token was already used; sign in again.",
                    code="refresh_token_reused",
                )
            if status not in ("ok", "grace"):
                raise InvalidToken("The refresh token is invalid or expired.")
            user_id, family_id = (_text(value) for value in answer[1:3])
            return Rotation(user_id, await self._issue(client, user_id, family_id))

    async def revoke(self, token: str) -> None:
        token_id, secret = _split(token)
        family, digest = (
            _text(value)
            for value in await self._redis.hmget(self._token_key(token_id), ["family", "hash"])
        )
        if not family or digest != _digest(secret):
            raise InvalidToken("The refresh token is invalid.")
        async with self._writing() as client:
            await client.set(self._family_key(family), "1", ex=self._lifetime)

    async def revoke_user(self, user_id: str) -> None:
        families = await self._redis.smembers(self._user_key(user_id))
        if families:
            async with self._writing() as client:
                await self._mark_families(
                    keys=[self._family_key(_text(family)) for family in families],
                    args=[self._lifetime],
                    client=client,
                )
