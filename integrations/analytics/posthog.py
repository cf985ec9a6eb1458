"""Server-side PostHog capture, in batches, off the request path.

`capture()` only appends to a bounded in-memory queue: it never awaits, never does I/O and never
raises, so a request handler pays microseconds for analytics. When the queue is full the oldest
event is dropped (and counted): memory stays bounded however long PostHog is down. `flush()`
posts the queue to PostHog's `/batch/` endpoint (`{"api_key", "batch": [...]}`, gzip like
PostHog's own SDKs), retrying network errors, 5xx and 429 a bounded number of times with
exponential backoff and jitter, then logs and drops the batch. Analytics down never fails
anything else.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

logger = logging.getLogger(__name__)

DEFAULT_HOST = "https://us.i.posthog.com"  # PostHog's US cloud ingestion host, as its SDKs use
LIBRARY_NAME = "freshroots-server"
_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class PostHogSettings:
    host: str
    # A project key is write-only, but it still identifies our project: keep it out of logs.
    api_key: str = field(repr=False)

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> PostHogSettings | None:
        """None (analytics off) without `POSTHOG_API_KEY`; `POSTHOG_HOST` defaults to US cloud."""
        api_key = (env.get("POSTHOG_API_KEY") or "").strip()
        if not api_key:
            return None
        host = (env.get("POSTHOG_HOST") or "").strip() or DEFAULT_HOST
        if not host.startswith(("http://", "https://")):
            raise ValueError(f"POSTHOG_HOST must be an http(s) URL, got {host!r}")
        return cls(host=host.rstrip("/"), api_key=api_key)

    @property
    def batch_url(self) -> str:
        return f"{self.host}/batch/"


@dataclass
class PostHogStats:
    captured: int = 0
    sent: int = 0
    dropped_overflow: int = 0  # oldest events pushed out of a full queue
    dropped_failed: int = 0  # events given up on after the retry bound (or refused by PostHog)


class PostHogClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: PostHogSettings,
        *,
        max_queue: int = 10_000,
        batch_size: int = 100,
        max_attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        timeout: float = 10.0,
        compress: bool = True,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or max_attempts < 1:
            raise ValueError("max_queue, batch_size and max_attempts must be at least 1")
        self._http = http
        self._settings = settings
        # A bounded deque drops its oldest item on append, atomically, even across threads.
        self._queue: deque[dict[str, Any]] = deque(maxlen=max_queue)
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._timeout = timeout
        self._compress = compress
        self.stats = PostHogStats()
        self._last_flush_failed = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def capture(
        self,
        distinct_id: str,
        event: str,
        properties: Mapping[str, Any] | None = None,
        *,
        timestamp: datetime | None = None,
    ) -> None:
        """Queue one event; never blocks, never raises for a full queue."""
        if len(self._queue) == self._queue.maxlen:
            self.stats.dropped_overflow += 1
        self._queue.append(
            {
                "event": event,
                "distinct_id": distinct_id,
                "properties": {**(properties or {}), "$lib": LIBRARY_NAME},
                "timestamp": (timestamp or datetime.now(UTC)).isoformat(),
                # A per-event id, as PostHog's SDKs send: a batch re-sent after a lost answer
                # carries the same ids, so PostHog can tell repeats from new events.
                "uuid": str(uuid.uuid4()),
            }
        )
        self.stats.captured += 1

    async def flush(self) -> int:
        """Send what is queued; returns how many events PostHog accepted. Never raises.

        Stops at the first batch given up on, so a flush during an outage costs one retry
        cycle, not one per batch; what is still queued waits for the next flush.
        """
        delivered = 0
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            try:
                accepted = await self._send(batch)
            except Exception:  # analytics must never break its caller, whatever went wrong
                logger.exception("posthog: unexpected error, %d events dropped", len(batch))
                accepted = False
            if not accepted:
                self.stats.dropped_failed += len(batch)
                self._last_flush_failed = True
                return delivered
            delivered += len(batch)
            self.stats.sent += len(batch)
        self._last_flush_failed = False
        return delivered

    async def run_periodic_flush(self, interval: float) -> None:
        """Flush every `interval` seconds, or sooner when a full batch is waiting (but never
        sooner after a flush that gave up: an outage is not hammered). Run it as a background
        task; cancel it on shutdown, then `await flush()` once more if wanted.

        It polls the queue length rather than being woken by `capture()`, so `capture()` stays
        safe to call from any thread (Starlette runs sync endpoints in a thread pool).
        """
        poll = min(interval, _POLL_SECONDS)
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(poll)
            due = loop.time() - last >= interval
            batch_waiting = len(self._queue) >= self._batch_size and not self._last_flush_failed
            if due or batch_waiting:
                await self.flush()
                last = loop.time()

    async def _send(self, batch: list[dict[str, Any]]) -> bool:
        """Post one batch with bounded retries: True if PostHog accepted it."""
        body = json.dumps(
            {"api_key": self._settings.api_key, "historical_migration": False, "batch": batch},
            default=str,  # datetimes, decimals, UUIDs in properties become text, not a failure
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self._compress:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        for attempt in range(1, self._max_attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._http.post(
                    self._settings.batch_url, content=body, headers=headers, timeout=self._timeout
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}"
            else:
                if response.status_code < 300:
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    # Bad key or payload: the same request will be refused again.
                    logger.warning(
                        "posthog refused a batch (%s): %d events dropped", problem, len(batch)
                    )
                    return False
                retry_after = _retry_after(response)
            if attempt == self._max_attempts:
                logger.warning(
                    "posthog unreachable after %d attempts (%s): %d events dropped",
                    attempt,
                    problem,
                    len(batch),
                )
                return False
            await asyncio.sleep(self._backoff(attempt, retry_after))
        return False

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._backoff_max))
        # Full jitter on the upper half: many servers coming back at once do not stampede.
        return delay * random.uniform(0.5, 1.0)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
