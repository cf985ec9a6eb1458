"""The transactional outbox: send intents written with their cause, delivered at least once
by workers that claim them with `FOR UPDATE SKIP LOCKED`, and recorded as soon as answered.

A claim is a lease: a worker that dies mid-send leaves items `sending` with an expired
lease, and the next worker takes them again. Each item is one send intent (event, channel,
recipient) with a unique `dedupe_key`, so replaying the cause never queues a second one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.changelog import Tx
from storage.db import Database, now_ms
from storage.models import OutboxItem

MAX_ATTEMPTS = 8
LEASE_MS = 60_000


@dataclass(frozen=True)
class Claimed:
    id: int
    channel: str
    dedupe_key: str
    recipient: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What a channel says about one item: sent, retry later, or give up (dead)."""

    status: str  # "sent" | "retry" | "dead"
    provider_ref: str | None = None
    error: str | None = None
    retry_after: float | None = None


# One statement object per dialect, so a transaction's items go out in one multi-row insert.
OUTBOX_INSERTS = {
    "postgresql": postgresql.insert(OutboxItem).on_conflict_do_nothing(
        index_elements=["dedupe_key"]
    ),
    "sqlite": sqlite.insert(OutboxItem).on_conflict_do_nothing(index_elements=["dedupe_key"]),
}


async def enqueue(
    tx: Tx, channel: str, dedupe_key: str, recipient: str, payload: dict[str, Any]
) -> None:
    now = now_ms()
    tx.insert_later(
        OUTBOX_INSERTS[tx.dialect],
        {
            "channel": channel,
            "dedupe_key": dedupe_key[:200],
            "recipient": recipient,
            "payload": orjson.dumps(payload).decode(),
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    )


async def claim(
    db: Database, limit: int, channels: tuple[str, ...], lease_ms: int = LEASE_MS
) -> list[Claimed]:
    now = now_ms()
    due = or_(
        and_(OutboxItem.status == "pending", OutboxItem.next_attempt_at <= now),
        and_(OutboxItem.status == "sending", OutboxItem.lease_until < now),
    )
    async with db.write() as conn:
        candidates = (
            select(OutboxItem.id)
            .where(due, OutboxItem.channel.in_(channels))
            .order_by(OutboxItem.id)
            .limit(limit)
        )
        if not db.is_sqlite:
            candidates = candidates.with_for_update(skip_locked=True)
        ids = list((await conn.execute(candidates)).scalars())
        if not ids:
            return []
        rows = await conn.execute(
            update(OutboxItem)
            .where(OutboxItem.id.in_(ids))
            .values(status="sending", lease_until=now + lease_ms, attempts=OutboxItem.attempts + 1)
            .returning(
                OutboxItem.id,
                OutboxItem.channel,
                OutboxItem.dedupe_key,
                OutboxItem.recipient,
                OutboxItem.payload,
                OutboxItem.attempts,
            )
        )
        claimed = [
            Claimed(
                row.id,
                row.channel,
                row.dedupe_key,
                row.recipient,
                orjson.loads(row.payload),
                row.attempts,
            )
            for row in rows
        ]
    return sorted(claimed, key=lambda item: item.id)


def backoff_ms(attempts: int, retry_after: float | None) -> int:
    """Exponential with full jitter, 5 s up to 1 h; a provider's Retry-After is a floor."""
    ceiling = min(3_600_000, 5_000 * 2 ** max(0, attempts - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after * 1000)
    return int(delay)


async def record(db: Database, item: Claimed, outcome: Outcome) -> None:
    now = now_ms()
    values: dict[str, Any] = {"lease_until": None, "last_error": outcome.error}
    if outcome.status == "sent":
        values.update(status="sent", sent_at=now, provider_ref=outcome.provider_ref)
    elif outcome.status == "dead" or item.attempts >= MAX_ATTEMPTS:
        values.update(status="dead")
    else:
        values.update(
            status="pending", next_attempt_at=now + backoff_ms(item.attempts, outcome.retry_after)
        )
    async with db.write() as conn:
        await conn.execute(update(OutboxItem).where(OutboxItem.id == item.id).values(**values))


async def stats(db: Database) -> dict[str, float]:
    """Backlog figures for /metrics: counts by status and the age of the oldest pending item."""
    async with db.read() as conn:
        counts = dict(
            (
                await conn.execute(
                    select(OutboxItem.status, func.count()).group_by(OutboxItem.status)
                )
            ).all()
        )
        oldest = (
            await conn.execute(
                select(func.min(OutboxItem.created_at)).where(
                    OutboxItem.status.in_(("pending", "sending"))
                )
            )
        ).scalar_one_or_none()
    lag = max(0.0, (now_ms() - oldest) / 1000) if oldest else 0.0
    return {
        "pending": float(counts.get("pending", 0)),
        "sending": float(counts.get("sending", 0)),
        "sent": float(counts.get("sent", 0)),
        "dead": float(counts.get("dead", 0)),
        "lag_seconds": lag,
    }
