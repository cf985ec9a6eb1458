"""Sync loop: push the queue, then pull until current; retry what is transient, with jitter.

Transient means the request may not have been applied (network error, timeout, 429, 5xx):
the mutations stay queued and are sent again, which is safe because the server applies each
mutation id at most once. Waits grow exponentially with full jitter ("AWS backoff"), so a
neighbourhood of phones coming back online does not hammer the server in step.
"""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from protocol.client.queue import OfflineQueue
from protocol.client.replica import Replica

GZIP_ABOVE_BYTES = 1024


class TransientError(Exception):
    """Nothing final happened; try again later."""


class SyncClient:
    def __init__(
        self,
        base_url: str,
        *,
        token_provider: Callable[[bool], str],
        queue: OfflineQueue,
        replica: Replica,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
    ) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=20)
        self.token_provider = token_provider
        self.queue = queue
        self.replica = replica
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request with backoff on transient failures and one token refresh on 401."""
        refreshed = False
        for attempt in range(self.attempts):
            headers = {
                "authorization": f"Bearer {self.token_provider(False)}",
                "accept-encoding": "gzip, br",
                **kwargs.pop("headers", {}),
            }
            kwargs["headers"] = headers
            retry_after: float | None = None
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                response = None
            if response is not None:
                if response.status_code == 401 and not refreshed:
                    self.token_provider(True)
                    refreshed = True
                    continue
                if response.status_code != 429 and response.status_code < 500:
                    return response
                header = response.headers.get("retry-after")
                retry_after = float(header) if header and header.isdigit() else None
            if attempt == self.attempts - 1:
                break
            ceiling = min(self.max_delay, self.base_delay * 2**attempt)
            delay = self.rng.uniform(0, ceiling)
            self.sleep(max(delay, retry_after or 0.0))
        raise TransientError(f"{method} {path} did not get a final answer")

    def push_pending(self, batch_size: int = 50) -> list[dict[str, Any]]:
        """Send queued mutations until the queue is empty; returns every outcome."""
        outcomes: list[dict[str, Any]] = []
        while True:
            batch = self.queue.pending(batch_size)
            if not batch:
                return outcomes
            body = orjson.dumps({"client_id": self.queue.client_id, "mutations": batch})
            headers = {"content-type": "application/json"}
            if len(body) > GZIP_ABOVE_BYTES:  # the uplink is the slow direction
                body = gzip.compress(body)
                headers["content-encoding"] = "gzip"
            response = self._send("POST", "/api/sync/push", content=body, headers=headers)
            if response.status_code != 200:
                raise TransientError(f"push answered {response.status_code}: {response.text}")
            results = response.json()["results"]
            self.queue.acknowledge(results)
            outcomes.extend(results)

    def pull_until_current(self, limit: int = 200) -> int:
        """Pull pages until `more` is false; returns how many pages changed the replica."""
        changed = 0
        while True:
            cursor = self.replica.cursor
            params: dict[str, Any] = {"limit": limit}
            headers: dict[str, str] = {}
            if cursor:
                params["cursor"] = cursor
                headers["if-none-match"] = f'"{cursor}"'
            response = self._send("GET", "/api/sync/pull", params=params, headers=headers)
            if response.status_code == 304:
                return changed
            if response.status_code != 200:
                raise TransientError(f"pull answered {response.status_code}")
            page = response.json()
            if page["changes"] or page["reset"] or page["cursor"] != cursor:
                self.replica.apply(page)
                changed += 1 if page["changes"] or page["reset"] else 0
            if not page["more"]:
                return changed

    def sync(self) -> None:
        """What the app runs in the background: send what was queued, then catch up."""
        self.push_pending()
        self.pull_until_current()
