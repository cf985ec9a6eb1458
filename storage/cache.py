"""Cache backends behind one tiny interface, chosen by `REDIS_URL`.

Unset: `MemoryCache`, in-process (the embedded default, one server process).
`redis://…`: `RedisCache`, shared by every server instance.
The interface also carries the two atomic operations the server needs: a fixed-window
counter for rate limits and a monotonic "set if greater" for change-log heads.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from redis.asyncio import Redis


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes, ttl: int) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def pop(self, key: str) -> bytes | None:
        """Get and delete in one step."""
        ...

    async def incr(self, key: str, ttl: int) -> int:
        """Increment a counter that expires `ttl` seconds after it was created."""
        ...

    async def ttl(self, key: str) -> int: ...
    async def set_max(self, key: str, value: int, ttl: int) -> None:
        """Store `value` unless the key already holds a larger integer."""
        ...

    async def add_many(self, counts: dict[str, int], ttl: int) -> dict[str, int]:
        """Add to several counters at once; returns their new totals."""
        ...

    async def ping(self) -> None: ...


class MemoryCache:
    """A bounded LRU with expiry; enough for one process, never grows past `max_entries`."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._max_entries = max_entries

    def _live(self, key: str) -> tuple[bytes, float] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def _store(self, key: str, value: bytes, expires_at: float) -> None:
        self._entries[key] = (value, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key)
        return entry[0] if entry else None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self._store(key, value, time.monotonic() + ttl)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def pop(self, key: str) -> bytes | None:
        entry = self._live(key)
        self._entries.pop(key, None)
        return entry[0] if entry else None

    async def incr(self, key: str, ttl: int) -> int:
        entry = self._live(key)
        if entry is None:
            self._store(key, b"1", time.monotonic() + ttl)
            return 1
        count = int(entry[0]) + 1
        self._store(key, str(count).encode(), entry[1])
        return count

    async def ttl(self, key: str) -> int:
        entry = self._live(key)
        return max(0, int(entry[1] - time.monotonic() + 0.999)) if entry else 0

    async def set_max(self, key: str, value: int, ttl: int) -> None:
        entry = self._live(key)
        if entry is None or int(entry[0]) < value:
            self._store(key, str(value).encode(), time.monotonic() + ttl)

    async def add_many(self, counts: dict[str, int], ttl: int) -> dict[str, int]:
        totals: dict[str, int] = {}
        for key, count in counts.items():
            entry = self._live(key)
            total = (int(entry[0]) if entry else 0) + count
            self._store(key, str(total).encode(), entry[1] if entry else time.monotonic() + ttl)
            totals[key] = total
        return totals

    async def ping(self) -> None:
        return None


_SET_MAX = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 0
"""

_INCR = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


def _as_bytes(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode()


class RedisCache:
    """Keys are prefixed so several deployments (or test runs) can share one Redis."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._set_max = client.register_script(_SET_MAX)
        self._incr = client.register_script(_INCR)

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> bytes | None:
        return _as_bytes(await self._redis.get(self._key(key)))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._redis.mget([self._key(key) for key in keys])
        return [_as_bytes(value) for value in values]

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await self._redis.set(self._key(key), value, ex=max(1, ttl))

    async def delete(self, key: str) -> None:
        await self._redis.delete(self._key(key))

    async def pop(self, key: str) -> bytes | None:
        return _as_bytes(await self._redis.getdel(self._key(key)))

    async def incr(self, key: str, ttl: int) -> int:
        return int(await self._incr(keys=[self._key(key)], args=[max(1, ttl)]))

    async def ttl(self, key: str) -> int:
        remaining = int(await self._redis.ttl(self._key(key)))
        return max(0, remaining)

    async def set_max(self, key: str, value: int, ttl: int) -> None:
        await self._set_max(keys=[self._key(key)], args=[value, max(1, ttl)])

    async def add_many(self, counts: dict[str, int], ttl: int) -> dict[str, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, count in counts.items():
                pipe.incrby(self._key(key), count)
                pipe.expire(self._key(key), max(1, ttl), nx=True)
            results = await pipe.execute()
        return {key: int(total) for key, total in zip(counts, results[::2], strict=True)}

    async def ping(self) -> None:
        await self._redis.ping()
