"""Where Redis is: one URL (`REDIS_URL`), or a master found through Sentinel
(`REDIS_SENTINELS` + `REDIS_SENTINEL_MASTER`).

With Sentinel, redis-py's `SentinelConnectionPool` asks the sentinels for the master's address
on every new connection and drops a connection that finds itself on a demoted master
(READONLY), so after a failover every user of the client (cache, rate limits, refresh tokens,
pub/sub) reconnects to the new master by itself. Meanwhile commands fail fast (connection
refused, or the short socket timeouts below) and the callers answer 503 + Retry-After.

Replication to Redis replicas is asynchronous: a failover loses the writes the old master had
not yet sent on. See `confirm_replicated` for the writes we do not want to lose that way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

log = logging.getLogger("freshroots.redis")

# A command never waits long: a dead master must turn into a quick 503, not a hung request.
CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
}
# The sentinels answer "where is the master?" at once or not at all.
SENTINEL_OPTIONS: dict[str, Any] = {"socket_timeout": 1, "socket_connect_timeout": 1}
# How long a write that must survive a failover waits for a replica to acknowledge it.
REPLICATED_WAIT_MS = 100


@dataclass(frozen=True)
class RedisTarget:
    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def configured(self) -> bool:
        return self.url is not None or bool(self.sentinels)

    @property
    def through_sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        if self.through_sentinel:
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"Redis master {self.master!r} via Sentinel {hosts}"
        return "Redis"

    def connect(self, **options: Any) -> Redis:
        """A client; `options` override `CLIENT_OPTIONS` (the load tools' bigger pools)."""
        merged = {**CLIENT_OPTIONS, **options}
        if self.through_sentinel:
            assert self.master is not None
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(self.sentinels),
                sentinel_kwargs={**SENTINEL_OPTIONS, "password": self.sentinel_password},
                password=self.password,
                **merged,
            )
            client: Redis = sentinel.master_for(self.master)
            return client
        if self.url is None:
            raise ValueError("no Redis configured")
        return Redis.from_url(self.url, **merged)


async def confirm_replicated(client: Redis) -> None:
    """Wait (briefly) until a replica holds this connection's writes so far (Sentinel only).

    For writes whose loss a failover would turn into a surprise for a person: a rotated or
    revoked refresh token. Sentinel promotes the replica with the most of the stream, so a write
    a replica acknowledged survives the failover. Bounded: with no replica answering within
    `REPLICATED_WAIT_MS` the write stands unconfirmed (availability first; the loss is then
    the one documented in docs/deploy.md)."""
    try:
        acknowledged = await client.wait(1, REPLICATED_WAIT_MS)
    except Exception as error:  # the write itself succeeded: report, do not fail it
        log.warning("could not confirm a write reached a Redis replica: %s", error)
        return
    if not acknowledged:
        log.warning("no Redis replica acknowledged a token write within %d ms", REPLICATED_WAIT_MS)
