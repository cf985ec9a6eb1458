"""Rate limits, counted in the shared cache so every server instance sees the same numbers.

Per-IP limits apply only to the unauthenticated auth routes (login, registration): many
Mauritian phones share one carrier-grade NAT address, so authenticated traffic (background
sync above all) is limited per user, never per IP.
"""

from __future__ import annotations

from storage.cache import Cache
from sync_server.errors import RateLimited
from sync_server.settings import RateLimits


class RateLimiter:
    def __init__(self, cache: Cache, limits: RateLimits) -> None:
        self._cache = cache
        self.limits = limits

    async def hit(self, key: str, limit: int, window: int, message: str | None = None) -> None:
        """Count one request; refuse it once the window's budget is spent."""
        if not self.limits.enabled:
            return
        count = await self._cache.incr(f"rl:{key}", window)
        if count > limit:
            raise RateLimited(await self._cache.ttl(f"rl:{key}") or window, message)

    async def refuse_if_exhausted(
        self, key: str, limit: int, window: int, message: str | None = None
    ) -> None:
        """Refuse without counting (used before checking a password, to skip the bcrypt work)."""
        if not self.limits.enabled:
            return
        current = await self._cache.get(f"rl:{key}")
        if current is not None and int(current) >= limit:
            raise RateLimited(await self._cache.ttl(f"rl:{key}") or window, message)

    async def count(self, key: str, window: int) -> None:
        if self.limits.enabled:
            await self._cache.incr(f"rl:{key}", window)

    async def clear(self, key: str) -> None:
        await self._cache.delete(f"rl:{key}")

    async def per_user(self, user_id: str) -> None:
        await self.hit(f"user:{user_id}", self.limits.requests_per_user, self.limits.user_window)
