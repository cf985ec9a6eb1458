"""The outbox worker: claims due send intents per channel, delivers, records each answer.

Runs inside the server in the embedded default, and as `freshroots worker` in production,
where several may run side by side (claims use `FOR UPDATE SKIP LOCKED`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from storage.db import Database
from storage.outbox import Claimed, Outcome, claim, record
from sync_server.metrics import Metrics

log = logging.getLogger("freshroots.worker")


class Channel(Protocol):
    name: str
    batch_size: int

    async def deliver(self, items: Sequence[Claimed]) -> list[Outcome]:
        """One outcome per item, in order. Raising means: retry them all later."""
        ...


class OutboxWorker:
    def __init__(
        self,
        db: Database,
        channels: Sequence[Channel],
        poll_seconds: float,
        *,
        metrics: Metrics | None = None,
        lease_seconds: float = 60.0,
    ) -> None:
        self.db = db
        self.lease_ms = int(lease_seconds * 1000)
        self.metrics = metrics
        self.channels = list(channels)
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something was queued: deliver now rather than at the next poll."""
        self._wake.set()

    async def run_once(self) -> int:
        handled = 0
        for channel in self.channels:
            items = await claim(self.db, channel.batch_size, (channel.name,), self.lease_ms)
            if not items:
                continue
            try:
                outcomes = await channel.deliver(items)
            except Exception as error:
                log.warning("%s delivery failed: %s", channel.name, error.__class__.__name__)
                outcomes = [Outcome("retry", error=str(error)[:500])] * len(items)
            for item, outcome in zip(items, outcomes, strict=True):
                await record(self.db, item, outcome)
                if self.metrics is not None:
                    self.metrics.deliveries.labels(channel.name, outcome.status).inc()
            handled += len(items)
        return handled

    async def check_receipts(self) -> None:
        for channel in self.channels:
            checker = getattr(channel, "check_receipts", None)
            if checker is not None:
                await checker()

    async def run_forever(self) -> None:
        passes = 0
        while True:
            passes += 1
            try:
                handled = await self.run_once()
                if passes % 30 == 0:  # receipts are read long after sending; no hurry
                    await self.check_receipts()
            except Exception:
                log.exception("outbox pass failed; retrying")
                handled = 0
            if handled == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
