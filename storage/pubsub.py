"""Pub/sub behind one tiny interface (the broadcaster pattern), chosen by `REDIS_URL`.

Pub/sub only ever says "something changed"; the change log stays the truth. So a lost or
late message costs latency, never data: a subscriber that may have missed messages (queue
overflow, Redis reconnect) receives `RESYNC` and re-reads from its cursor.

Unlike broadcaster, queues are bounded and the Redis reader reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from redis.asyncio import Redis

log = logging.getLogger("freshroots.pubsub")

RESYNC = b"\x00resync"


class Subscription:
    """A bounded inbox. When it overflows, its backlog is replaced by one RESYNC."""

    def __init__(self, max_queued: int) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(max_queued)

    def offer(self, message: bytes) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(RESYNC)

    async def get(self) -> bytes:
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        return await self._queue.get()


class PubSub(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, channel: str, message: bytes) -> None: ...
    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...


class _Fanout:
    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self.subscribers: dict[str, set[Subscription]] = {}

    def deliver(self, channel: str, message: bytes) -> None:
        for subscription in self.subscribers.get(channel, ()):
            subscription.offer(message)

    def deliver_all(self, message: bytes) -> None:
        for subscriptions in self.subscribers.values():
            for subscription in subscriptions:
                subscription.offer(message)

    @asynccontextmanager
    async def attach(self, channel: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(self.max_queued)
        self.subscribers.setdefault(channel, set()).add(subscription)
        try:
            yield subscription
        finally:
            members = self.subscribers.get(channel)
            if members is not None:
                members.discard(subscription)
                if not members:
                    del self.subscribers[channel]


class MemoryPubSub:
    def __init__(self, max_queued: int = 256) -> None:
        self._fanout = _Fanout(max_queued)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(self, channel: str, message: bytes) -> None:
        self._fanout.deliver(channel, message)

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._fanout.attach(channel)


class RedisPubSub:
    """One Redis subscription per process, fanned out in-process to bounded inboxes."""

    def __init__(
        self, client: Redis, prefix: str, channels: tuple[str, ...], max_queued: int = 256
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._channels = channels
        self._fanout = _Fanout(max_queued)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read_forever(), name="redis-pubsub-reader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def publish(self, channel: str, message: bytes) -> None:
        await self._redis.publish(self._prefix + channel, message)

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._fanout.attach(channel)

    async def _read_forever(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*(self._prefix + name for name in self._channels))
                self.connected.set()
                # Anything published while we were away is unknown: tell everyone to re-read.
                self._fanout.deliver_all(RESYNC)
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is None:
                        await pubsub.ping()  # notices a dead connection between messages
                        continue
                    delay = 0.1  # healthy again: the next failure retries quickly
                    if message["type"] != "message":
                        continue  # pong and (un)subscribe confirmations
                    channel = message["channel"].decode()[len(self._prefix) :]
                    self._fanout.deliver(channel, bytes(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any Redis failure: reconnect, never die silently
                self.connected.clear()
                log.warning(
                    "redis pub/sub lost (%s); reconnecting in %.1fs",
                    error.__class__.__name__,
                    delay,
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
