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


@contextlib.asynccontextmanager
async def open_changelog(
    database_url: str,
    redis_url: str | None = None,
    *,
    redis_prefix: str = "fr:",
    head_cache_seconds: int = 30,
) -> AsyncIterator[ChangeLog]:
    """A `ChangeLog` on its own small pool (and Redis client), closed on the way out."""
    db = Database(database_url, pool_size=2)
    redis: Redis | None = None
    if redis_url:
        redis = Redis.from_url(redis_url)
        feed = ChangeFeed(
            RedisCache(redis, redis_prefix),
            RedisPubSub(redis, redis_prefix, channels=(CHANGES_CHANNEL,)),
            head_cache_seconds,
        )
    else:
        feed = ChangeFeed(MemoryCache(), MemoryPubSub(), head_cache_seconds)
    try:
        yield ChangeLog(db, feed)
    finally:
        if redis is not None:
            await redis.aclose()
        await db.dispose()
