"""Announcing commits: the latest change-log position per scope ("heads"), kept at three levels.

1. In this process (`LocalHeads`): fed by our own commits and by every other instance's
   commits through pub/sub. An empty pull is answered from here, with no I/O at all.
2. In the shared cache (Redis in production): a process that has no fresh local value
   reads it from here.
3. The change log itself: the truth, read when neither of the above knows.

Heads only ever move up (max), so the order messages arrive in does not matter. They are a
hint with a short lifetime: if an announcement is lost (a crash right after commit, a pub/sub
message dropped while Redis reconnects) the value expires and is read again from the level
below, so a change can be late by at most that lifetime, never skipped.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import orjson

from storage.cache import Cache
from storage.pubsub import RESYNC, PubSub

log = logging.getLogger("freshroots.feed")

CHANGES_CHANNEL = "changes"
Listener = Callable[[dict[str, int], set[str]], Awaitable[None]]


class LocalHeads:
    def __init__(self, ttl_seconds: float, max_entries: int = 200_000) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._heads: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def raise_to(self, scope: str, position: int) -> None:
        current = self._heads.get(scope)
        expires = time.monotonic() + self._ttl
        if current is None or current[0] < position or current[1] < time.monotonic():
            self._heads[scope] = (max(position, current[0]) if current else position, expires)
            self._heads.move_to_end(scope)
            if len(self._heads) > self._max_entries:
                self._heads.popitem(last=False)

    def get(self, scope: str) -> int | None:
        entry = self._heads.get(scope)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def clear(self) -> None:
        self._heads.clear()


class ChangeFeed:
    def __init__(self, cache: Cache, pubsub: PubSub, head_ttl: int) -> None:
        self.cache = cache
        self.pubsub = pubsub
        self.head_ttl = head_ttl
        # Shorter than the shared TTL: this copy depends on pub/sub delivery as well.
        self.local = LocalHeads(ttl_seconds=min(5.0, head_ttl))
        self.listeners: list[Listener] = []
        # Called when announcements may have been missed (pub/sub reconnected: a Redis
        # restart or failover), for caches that a lost announcement would leave stale.
        self.resync_listeners: list[Callable[[], Awaitable[object]]] = []
        # Until then (monotonic), the shared heads may lack commits: an announcement failed,
        # or pub/sub reconnected (a Redis restart or failover may have lost the writes of
        # heads). Readers that must see a user's own writes ask the primary meanwhile.
        self.unsure_until = 0.0
        self._subscribed_before = False

    async def announce(self, heads: dict[str, int], tables: set[str]) -> None:
        for scope, position in heads.items():
            self.local.raise_to(scope, position)
        try:
            for scope, position in heads.items():
                await self.cache.set_max(f"head:{scope}", position, self.head_ttl)
            await self.pubsub.publish(CHANGES_CHANNEL, orjson.dumps(heads))
        except Exception:  # committed already; a lost announcement only delays readers
            log.exception("could not announce committed changes")
            self.distrust_heads()
        for listener in self.listeners:
            try:
                await listener(heads, tables)
            except Exception:
                log.exception("change listener failed")

    async def heads(self, scopes: Sequence[str]) -> list[int | None]:
        known = [self.local.get(scope) for scope in scopes]
        missing = [scope for scope, head in zip(scopes, known, strict=True) if head is None]
        if not missing:
            return known
        values = await self.cache.get_many([f"head:{scope}" for scope in missing])
        shared = dict(zip(missing, values, strict=True))
        result: list[int | None] = []
        for scope, head in zip(scopes, known, strict=True):
            if head is None and shared[scope] is not None:
                head = int(shared[scope])  # type: ignore[arg-type]
                self.local.raise_to(scope, head)
            result.append(head)
        return result

    def distrust_heads(self) -> None:
        self.unsure_until = time.monotonic() + self.head_ttl

    @property
    def heads_trusted(self) -> bool:
        """Whether the shared heads hold every announced commit (see `unsure_until`)."""
        return time.monotonic() >= self.unsure_until

    async def newest(self, scopes: Sequence[str]) -> int:
        """The newest position announced in any of `scopes` (0: none known). Asks the shared
        cache even when this process has fresh values: a commit on another instance may not
        have reached us through pub/sub yet, and the caller must not miss it (a read that has
        to include the user's own write). Raises when the shared cache is unreachable."""
        values = await self.cache.get_many([f"head:{scope}" for scope in scopes])
        known = [int(value) for value in values if value is not None]
        known += [head for head in map(self.local.get, scopes) if head is not None]
        return max(known, default=0)

    async def remember_head(self, scope: str, position: int) -> None:
        self.local.raise_to(scope, position)
        await self.cache.set_max(f"head:{scope}", position, self.head_ttl)

    async def follow(self) -> None:
        """Keep local heads current with every instance's commits (runs for the app's life)."""
        async with self.pubsub.subscribe(CHANGES_CHANNEL) as inbox:
            async for message in inbox:
                if message == RESYNC:
                    # We may have missed announcements: forget, and ask the cache again.
                    self.local.clear()
                    if self._subscribed_before:  # not the first connection: a reconnect
                        self.distrust_heads()
                    self._subscribed_before = True
                    for resync_listener in self.resync_listeners:
                        try:
                            await resync_listener()
                        except Exception:
                            log.exception("resync listener failed")
                    continue
                try:
                    for scope, position in orjson.loads(message).items():
                        self.local.raise_to(scope, int(position))
                except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                    log.warning("ignored a malformed change announcement")
