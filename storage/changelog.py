"""The one write path: every change to a synced table is logged in its own transaction.

Storage functions take a `Tx` and call `tx.changed(...)` for every synced row they touch;
`ChangeLog.transaction()` appends those records when the work is done and commits them with
it. Nothing writes a synced table any other way.

Why positions never skip (PostgreSQL): a sequence value is handed out before commit, so
transaction A can take position 10, B position 11, and B commit first; a reader that saw 11
and moved its cursor past 10 would never see A. We serialise the *append* with a
transaction-scoped advisory lock taken at the very end of the transaction, after all its row
locks: the position is assigned while holding the lock and the lock is released only by
COMMIT, so positions become visible strictly in order. The critical section is just the
append and the commit, so it costs little, and taking it last means it can never be part of
a lock cycle with row locks. (The alternative, capping reads at
`pg_snapshot_xmin(pg_current_snapshot())` with xid8 stamps, avoids the lock but makes every
pull lag behind the oldest open transaction, including unrelated long ones.)
SQLite has a single writer (`BEGIN IMMEDIATE`), so commit order is append order already.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database, now_ms
from storage.feed import ChangeFeed
from storage.models import ChangeLogEntry, SyncMeta

log = logging.getLogger("freshroots.changelog")
T = TypeVar("T")

# Any fixed 64-bit key; only the change-log append takes it.
APPEND_LOCK_KEY = 0x46524C4F47  # "FRLOG"

UPDATED, ENTERED, LEFT = 0, 1, 2

# How long a duplicate request waits for its original (`Tx.patient`).
TWIN_WAIT = "60s"


@dataclass
class _Pending:
    kind: int
    fields: set[str] = field(default_factory=set)


@dataclass
class Checkpoint:
    pending: dict[tuple[str, str, str], _Pending]
    deferred: int


class Tx:
    """A write transaction with its change records, appended at commit."""

    def __init__(self, conn: AsyncConnection, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self.after_commit: list[Callable[[], Awaitable[None]]] = []
        # Reads that many writes of one transaction repeat (a batch of ten purchases notifies
        # the same buyer and the same admins ten times): read once, by (kind, key). A write
        # that changes what a kind reads forgets that kind (`forget`).
        self._lookups: dict[tuple[str, str], Any] = {}
        # Rows nothing reads back in this transaction (notifications, outbox items), written
        # together just before the change records: one statement per target, not per row.
        self._deferred: list[tuple[Any, dict[str, Any]]] = []

    def insert_later(self, statement: Any, row: dict[str, Any]) -> None:
        """Insert `row` with `statement` (a module-level insert, so rows for one target share
        it) before commit. A savepoint rolled back drops the rows deferred inside it."""
        self._deferred.append((statement, row))

    async def flush_inserts(self) -> None:
        """Write the deferred rows now (before anything in the transaction reads them)."""
        batches: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
        for statement, row in self._deferred:
            batches.setdefault(id(statement), (statement, []))[1].append(row)
        self._deferred = []
        for statement, rows in batches.values():
            await self.conn.execute(statement, rows)

    async def lookup(self, kind: str, key: str, read: Callable[[], Awaitable[Any]]) -> Any:
        """`read()`'s result, read once per transaction for this (kind, key)."""
        try:
            return self._lookups[(kind, key)]
        except KeyError:
            value = self._lookups[(kind, key)] = await read()
            return value

    def recall(self, kind: str, key: str) -> Any:
        """What this transaction remembered of (kind, key), or None."""
        return self._lookups.get((kind, key))

    def remember(self, kind: str, key: str, value: Any) -> None:
        """What a read made for other lookups learned of (kind, key): no read of its own."""
        self._lookups.setdefault((kind, key), value)

    def forget(self, kind: str) -> None:
        for remembered in [entry for entry in self._lookups if entry[0] == kind]:
            del self._lookups[remembered]

    def changed(
        self,
        table: str,
        row_id: str,
        *,
        fields: Iterable[str] = (),
        before: frozenset[str],
        after: frozenset[str],
    ) -> None:
        """Record that a row changed. `before`/`after` are the scopes it was/is visible in."""
        changed_fields = set(fields)
        for scope in before | after:
            if scope in before and scope in after:
                kind = UPDATED
            elif scope in after:
                kind = ENTERED
            else:
                kind = LEFT
            key = (scope, table, row_id)
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = _Pending(kind, set(changed_fields))
                continue
            # Merge several writes to one row in one transaction into one record.
            if kind != UPDATED:
                pending.kind = kind
            pending.fields |= changed_fields

    def created(self, table: str, row_id: str, scopes: frozenset[str]) -> None:
        self.changed(table, row_id, before=frozenset(), after=scopes)

    def checkpoint(self) -> Checkpoint:
        """A copy of the records so far, to restore when a savepoint is rolled back."""
        pending = {key: _Pending(p.kind, set(p.fields)) for key, p in self._pending.items()}
        return Checkpoint(pending, len(self._deferred))

    def restore(self, checkpoint: Checkpoint) -> None:
        self._pending = checkpoint.pending
        del self._deferred[checkpoint.deferred :]

    @asynccontextmanager
    async def patient(self) -> AsyncIterator[None]:
        """Statements in this block may wait for a twin request still in flight (a duplicate
        batch for its original, a retried Idempotency-Key for its first use) longer than the
        server-wide lock_timeout: the contract gives a duplicate the original's outcome,
        never a 503, and the original is itself bounded (each of its lock waits by
        lock_timeout, each statement by statement_timeout)."""
        if self.dialect != "postgresql":
            yield  # one writer at a time: nothing to wait for
            return
        await self.conn.execute(text(f"SET LOCAL lock_timeout = '{TWIN_WAIT}'"))
        yield
        await self.conn.execute(text("SET LOCAL lock_timeout TO DEFAULT"))

    @property
    def has_changes(self) -> bool:
        return bool(self._pending)

    async def append(self) -> tuple[dict[str, int], set[str]]:
        """Write the change records; returns the head position per scope and the tables."""
        if not self._pending:
            return {}, set()
        if self.dialect == "postgresql":
            await self.conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY}
            )
        committed_at = now_ms()
        records = [
            {
                "scope": scope,
                "table_name": table,
                "row_id": row_id,
                "kind": pending.kind,
                "fields": ",".join(sorted(pending.fields)),
                "committed_at": committed_at,
            }
            for (scope, table, row_id), pending in self._pending.items()
        ]
        result = await self.conn.execute(
            insert(ChangeLogEntry).returning(ChangeLogEntry.position, ChangeLogEntry.scope),
            records,
        )
        heads: dict[str, int] = {}
        for position, scope in result.all():
            if position > heads.get(scope, 0):
                heads[scope] = position
        return heads, {table for (_scope, table, _row) in self._pending}


class ChangeLog:
    def __init__(self, db: Database, feed: ChangeFeed) -> None:
        self.db = db
        self.feed = feed

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.db.write() as conn:
            tx = Tx(conn, self.db.dialect)
            yield tx
            await tx.flush_inserts()
            heads, tables = await tx.append()
        if heads:
            await self.feed.announce(heads, tables)
        for hook in tx.after_commit:
            try:
                await hook()
            except Exception:
                log.exception("after-commit hook failed")

    async def run(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `work` in one transaction, again from scratch after a serialisation conflict."""

        async def attempt() -> T:
            async with self.transaction() as tx:
                return await work(tx)

        return await self.db.retrying(attempt)

    async def head(self, conn: AsyncConnection, scopes: Sequence[str] | None = None) -> int:
        query = select(func.coalesce(func.max(ChangeLogEntry.position), 0))
        if scopes is not None:
            query = query.where(ChangeLogEntry.scope.in_(scopes))
        return int((await conn.execute(query)).scalar_one())


async def prune(db: Database, retention_ms: int, *, now: int | None = None) -> int:
    """Delete log entries older than the retention window; raise the floor past them.

    A cursor below the floor may have missed pruned changes, so pull answers it with a
    reset snapshot instead of a silent gap. Returns how many entries were removed.
    """
    cutoff = (now_ms() if now is None else now) - retention_ms
    async with db.write() as conn:
        # The newest entry is never pruned: SQLite allocates max(rowid) + 1, so deleting the
        # newest row would hand its position out again and clients past it would miss the
        # next change. Keeping it keeps positions increasing forever, on both databases.
        newest = (await conn.execute(select(func.max(ChangeLogEntry.position)))).scalar()
        if newest is None:
            return 0
        newest_pruned = (
            await conn.execute(
                select(func.max(ChangeLogEntry.position)).where(
                    ChangeLogEntry.committed_at < cutoff, ChangeLogEntry.position < newest
                )
            )
        ).scalar_one_or_none()
        if newest_pruned is None:
            return 0
        removed = (
            await conn.execute(
                delete(ChangeLogEntry).where(ChangeLogEntry.position <= newest_pruned)
            )
        ).rowcount
        floor = (
            await conn.execute(select(SyncMeta.value).where(SyncMeta.key == "log_floor"))
        ).scalar_one_or_none()
        if floor is None:
            await conn.execute(insert(SyncMeta).values(key="log_floor", value=newest_pruned))
        elif floor < newest_pruned:
            await conn.execute(
                update(SyncMeta).where(SyncMeta.key == "log_floor").values(value=newest_pruned)
            )
        return int(removed or 0)
