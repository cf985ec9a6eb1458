"""Rate limits, counted in the shared cache so every server instance sees the same numbers.

Per-IP limits apply only to the unauthenticated auth routes (login, registration): many
Mauritian phones share one carrier-grade NAT address, so authenticated traffic (background
sync above all) is limited per user, never per IP.

The per-user limit sits on every authenticated request, including the empty pulls phones
make every 30 s, so it must not cost a Redis round trip each time. Requests are counted in
process and the counts are added to the shared counters in one pipeline every half second;
the decision uses the shared total plus what this process has not flushed yet. Across
instances the limit can therefore overshoot by at most half a second of traffic.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import anyio

from protocol.errors import RateLimited
from storage.cache import Cache
from sync_server.settings import RateLimits

log = logging.getLogger("freshroots.ratelimit")
FLUSH_SECONDS = 0.5


class RateLimiter:
    def __init__(self, cache: Cache, limits: RateLimits) -> None:
        self._cache = cache
        self.limits = limits
        self._unflushed: defaultdict[str, int] = defaultdict(int)
        self._shared: dict[str, int] = {}

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
        if not self.limits.enabled:
            return
        window = self.limits.user_window
        now = time.time()
        key = f"rl:user:{user_id}:{int(now // window)}"
        self._unflushed[key] += 1
        if self._shared.get(key, 0) + self._unflushed[key] > self.limits.requests_per_user:
            raise RateLimited(int(window - now % window) + 1)

    async def flush(self) -> None:
        if not self._unflushed:
            return
        pending, self._unflushed = dict(self._unflushed), defaultdict(int)
        try:
            totals = await self._cache.add_many(pending, ttl=self.limits.user_window * 2)
        except Exception:
            # Keep the counts for the next flush; meanwhile this process still limits alone.
            for key, count in pending.items():
                self._unflushed[key] += count
            raise
        current_window = int(time.time() // self.limits.user_window)
        self._shared = {
            key: total
            for key, total in {**self._shared, **totals}.items()
            if int(key.rsplit(":", 1)[1]) >= current_window - 1
        }

    async def flush_periodically(self) -> None:
        while True:
            await anyio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                log.warning("could not share rate-limit counts; retrying")
