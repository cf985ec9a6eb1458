"""Everything a handler needs, opened once in the lifespan and handed down through app state.

No module-level globals: two apps built side by side (two "instances" in one test) each
have their own engine, Redis client and httpx client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from redis.asyncio import Redis
from starlette.requests import HTTPConnection

from integrations.analytics.posthog import PostHogClient, PostHogSettings
from integrations.media.cloudinary_media import CloudinaryAdmin, CloudinaryMedia
from integrations.media.settings import CloudinarySettings
from integrations.payments.base import PaymentProvider
from integrations.payments.mips import MipsProvider
from integrations.payments.settings import MipsSettings
from protocol.cursor import CursorCodec
from storage.cache import Cache, MemoryCache, RedisCache
from storage.changelog import ChangeLog
from storage.codes import CodeBook
from storage.db import Database
from storage.feed import CHANGES_CHANNEL, ChangeFeed
from storage.pubsub import MemoryPubSub, PubSub, RedisPubSub
from storage.replicas import ReadRouter
from storage.tail import ChangeTail
from storage.tokens import DatabaseTokenStore, RedisTokenStore, RefreshTokenStore
from sync_server.catalogue import CatalogueSnapshots
from sync_server.pages import SharedPages
from sync_server.ratelimit import RateLimiter
from sync_server.security import AccessTokens, PasswordHasher
from sync_server.settings import Settings

log = logging.getLogger("freshroots")


class Live(Protocol):
    """What handlers and sessions use of the process's live hub (`sync_server.live.hub.LiveHub`).

    The app's lifespan makes the hub and hands it in (`Services.live`): the hub's sessions run
    the handlers' sync code, which takes `Services`, so `Services` knows the hub only by this
    shape, never by its module (no import circle; pyproject.toml's contract checks it)."""

    @property
    def tail(self) -> ChangeTail: ...
    @property
    def position(self) -> int: ...
    @property
    def sessions(self) -> Collection[Any]: ...
    @property
    def overflows(self) -> int: ...
    @property
    def catch_up_turns(self) -> asyncio.Semaphore: ...
    def add(self, session: Any) -> None: ...
    def discard(self, session: Any) -> None: ...
    def count_overflow(self) -> None: ...
    def snapshot_origin(self) -> int | None: ...
    async def reach(self, position: int, wait_seconds: float) -> bool: ...
    async def run(self) -> None: ...


@dataclass
class Services:
    settings: Settings
    db: Database
    # Read-only work that may run on a replica (storage/replicas.py); the primary when none.
    reads: ReadRouter
    cache: Cache
    pubsub: PubSub
    feed: ChangeFeed
    changelog: ChangeLog
    refresh_tokens: RefreshTokenStore
    access_tokens: AccessTokens
    passwords: PasswordHasher
    limiter: RateLimiter
    cursors: CursorCodec
    http: httpx.AsyncClient
    codes: CodeBook
    media: CloudinaryMedia | None = None
    # Server-side Upload API calls (Facebook pictures by URL); None when Cloudinary is off.
    media_admin: CloudinaryAdmin | None = None
    payments: PaymentProvider | None = None
    analytics: PostHogClient | None = None
    live: Live = field(init=False)  # the lifespan's hub, handed in once it is made
    pages: SharedPages = field(init=False)
    catalogue: CatalogueSnapshots = field(init=False)
    redis: Redis | None = None

    def __post_init__(self) -> None:
        self.pages = SharedPages(self.settings.shared_pages_megabytes * 1024 * 1024)
        self.catalogue = CatalogueSnapshots(
            self.db,
            self.feed,
            self.cursors,
            shared=self.cache if self.redis is not None else None,
            refresh_seconds=self.settings.snapshot_refresh_seconds,
            grace_seconds=self.settings.snapshot_grace_seconds,
        )

    def track(self, distinct_id: str, event: str, **properties: Any) -> None:
        """Product analytics (PostHog), when configured; never blocks or fails a request."""
        if self.analytics is not None:
            self.analytics.capture(distinct_id, event, properties)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, payments_gateway: MipsSettings | None = None
) -> AsyncIterator[Services]:
    """`payments_gateway`: the in-server sandbox's settings, in place of the MIPS_* ones."""
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    reads = ReadRouter.connect(
        db,
        settings.database_replica_urls,
        pool_size=settings.db_pool_size,
        max_lag_seconds=settings.replica_max_lag_seconds,
        check_seconds=settings.replica_check_seconds,
    )
    redis: Redis | None = None
    cache: Cache
    pubsub: PubSub
    refresh_tokens: RefreshTokenStore
    target = settings.redis_target
    if target.configured:
        redis = target.connect()
        cache = RedisCache(redis, settings.redis_prefix)
        pubsub = RedisPubSub(redis, settings.redis_prefix, channels=(CHANGES_CHANNEL,))
        refresh_tokens = RedisTokenStore(
            redis,
            settings.redis_prefix,
            settings.refresh_token_seconds,
            settings.refresh_reuse_grace_seconds,
            replicated=target.through_sentinel,
        )
    else:
        cache = MemoryCache()
        pubsub = MemoryPubSub()
        refresh_tokens = DatabaseTokenStore(
            db, settings.refresh_token_seconds, settings.refresh_reuse_grace_seconds
        )
    feed = ChangeFeed(cache, pubsub, settings.head_cache_seconds)
    cloudinary = CloudinarySettings.from_environ(settings.environ)
    media = CloudinaryMedia(cloudinary) if cloudinary else None
    posthog = PostHogSettings.from_environ(settings.environ)
    mips = payments_gateway or MipsSettings.from_environ(settings.environ)
    for name, configured, variable in (
        ("Cloudinary media", media, "CLOUDINARY_URL"),
        ("Online payments", mips, "MIPS_API_URL"),
        ("PostHog analytics", posthog, "POSTHOG_API_KEY"),
    ):
        if not configured:
            log.info("%s is off: %s is not set", name, variable)
    if not settings.metrics_token and not settings.is_embedded:
        log.warning(
            "/metrics answers anyone who reaches this instance: set METRICS_TOKEN, and keep the "
            "path off the public proxy (deploy/nginx.conf does)"
        )
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0), headers={"user-agent": "freshroots-sync/0.1"}
    )
    services = Services(
        settings=settings,
        db=db,
        reads=reads,
        cache=cache,
        pubsub=pubsub,
        feed=feed,
        changelog=ChangeLog(db, feed),
        refresh_tokens=refresh_tokens,
        access_tokens=AccessTokens(settings.jwt_secret, settings.access_token_seconds),
        passwords=PasswordHasher(settings.bcrypt_rounds),
        limiter=RateLimiter(cache, settings.rate_limits),
        cursors=CursorCodec(settings.jwt_secret.encode()),
        http=http,
        codes=CodeBook(cache, settings.jwt_secret),
        media=media,
        media_admin=CloudinaryAdmin(http, cloudinary, timeout=30.0) if cloudinary else None,
        payments=MipsProvider(http, mips) if mips else None,
        analytics=PostHogClient(http, posthog) if posthog else None,
        redis=redis,
    )
    await pubsub.start()
    try:
        yield services
    finally:
        await pubsub.stop()
        await http.aclose()
        if redis is not None:
            await redis.aclose()
        await reads.dispose()
        await db.dispose()


def services_of(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.services
    return services
