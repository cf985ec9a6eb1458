"""A change log for work done outside a server process: the CLI's commands, seeding, the
load tests' set-up. Writes made this way go through the same write path as a server's, and
still move the shared heads and signal running servers (with Redis), or those would answer
"nothing new" from their cache until the heads expire."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from storage.cache import MemoryCache, RedisCache
from storage.changelog import ChangeLog
from storage.db import Database
from storage.feed import CHANGES_CHANNEL, ChangeFeed
from storage.pubsub import MemoryPubSub, RedisPubSub
from storage.redis_client import RedisTarget


@contextlib.asynccontextmanager
async def open_changelog(
    database_url: str,
    redis: RedisTarget | str | None = None,
    *,
    redis_prefix: str = "fr:",
    head_cache_seconds: int = 30,
) -> AsyncIterator[ChangeLog]:
    """A `ChangeLog` on its own small pool (and Redis client), closed on the way out.
    `redis`: a URL, or where the servers' Redis is (Sentinel included)."""
    db = Database(database_url, pool_size=2)
    target = RedisTarget(url=redis) if isinstance(redis, str) else redis
    client: Redis | None = None
    if target is not None and target.configured:
        client = target.connect()
        feed = ChangeFeed(
            RedisCache(client, redis_prefix),
            RedisPubSub(client, redis_prefix, channels=(CHANGES_CHANNEL,)),
            head_cache_seconds,
        )
    else:
        feed = ChangeFeed(MemoryCache(), MemoryPubSub(), head_cache_seconds)
    try:
        yield ChangeLog(db, feed)
    finally:
        if client is not None:
            await client.aclose()
        await db.dispose()
