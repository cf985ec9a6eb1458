"""Pull: turn the change log (or a snapshot) into one page of put / patch / del.

Memory per request is bounded by the page: at most `limit` distinct rows are grouped,
whatever the backlog. Values always come from the current rows (a change that happens after
the page was read is sent again later, so re-reading is safe); the log says *which* rows
and fields changed and whether a row entered the client's scope (→ full `put`) or only
changed inside it (→ `patch` with just those fields).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.cursor import CursorState, LogCursor, SnapshotCursor
from storage.changelog import ENTERED, LEFT
from storage.models import ChangeLogEntry, SyncMeta
from storage.scopes import Principal
from storage.synced import BY_NAME, SYNCED_TABLES

TableChanges = dict[str, list[Any]]


@dataclass
class PullPage:
    changes: dict[str, TableChanges]
    next_state: CursorState
    more: bool
    reset: bool = False
    rows: int = 0


@dataclass
class _RowChanges:
    entered: bool = False
    fields: set[str] = field(default_factory=set)


class CursorExpired(Exception):
    """The cursor points before the pruned part of the log."""


async def log_floor(conn: AsyncConnection) -> int:
    value = (
        await conn.execute(select(SyncMeta.value).where(SyncMeta.key == "log_floor"))
    ).scalar_one_or_none()
    return int(value or 0)


async def pull_page(
    conn: AsyncConnection, principal: Principal, state: CursorState | None, limit: int
) -> PullPage:
    if state is None:
        head = await _head(conn)
        return await _snapshot_page(conn, principal, SnapshotCursor(head, 0, ""), limit)
    if isinstance(state, SnapshotCursor):
        if state.head < await log_floor(conn):
            raise CursorExpired()
        return await _snapshot_page(conn, principal, state, limit)
    if state.position < await log_floor(conn):
        raise CursorExpired()
    return await _log_page(conn, principal, state.position, limit)


async def _head(conn: AsyncConnection) -> int:
    from sqlalchemy import func

    query = select(func.coalesce(func.max(ChangeLogEntry.position), 0))
    return int((await conn.execute(query)).scalar_one())


def _add(changes: dict[str, TableChanges], table: str, kind: str, item: Any) -> None:
    changes.setdefault(table, {}).setdefault(kind, []).append(item)


async def _snapshot_page(
    conn: AsyncConnection, principal: Principal, state: SnapshotCursor, limit: int
) -> PullPage:
    changes: dict[str, TableChanges] = {}
    remaining = limit
    table_index, last_id = state.table_index, state.last_id
    while table_index < len(SYNCED_TABLES) and remaining > 0:
        table = SYNCED_TABLES[table_index]
        id_column = table.id_column
        query = (
            table.select_rows()
            .where(table.visible_to(principal), id_column > last_id)
            .order_by(id_column)
            .limit(remaining)
        )
        rows = (await conn.execute(query)).mappings().all()
        for row in rows:
            _add(changes, table.name, "put", table.encode(row))
        remaining -= len(rows)
        if remaining == 0 and rows:
            next_state = SnapshotCursor(state.head, table_index, rows[-1]["id"])
            return PullPage(changes, next_state, more=True, rows=limit)
        table_index, last_id = table_index + 1, ""
    # Snapshot done: continue from the log head it started at. Anything committed since then
    # is replayed from the log on the next page, so more=True only if such changes exist.
    later = await _log_page(conn, principal, state.head, 1, probe_only=True)
    return PullPage(changes, LogCursor(state.head), more=later.more, rows=limit - remaining)


async def _log_page(
    conn: AsyncConnection,
    principal: Principal,
    after: int,
    limit: int,
    *,
    probe_only: bool = False,
) -> PullPage:
    scopes = principal.scopes
    chunk = max(64, limit * 2)
    grouped: dict[tuple[str, str], _RowChanges] = {}
    position = after
    more = False
    while True:
        entries = (
            await conn.execute(
                select(
                    ChangeLogEntry.position,
                    ChangeLogEntry.table_name,
                    ChangeLogEntry.row_id,
                    ChangeLogEntry.kind,
                    ChangeLogEntry.fields,
                )
                .where(ChangeLogEntry.scope.in_(scopes), ChangeLogEntry.position > position)
                .order_by(ChangeLogEntry.position)
                .limit(1 if probe_only else chunk)
            )
        ).all()
        if probe_only:
            return PullPage({}, LogCursor(after), more=bool(entries))
        full = False
        for entry_position, table_name, row_id, kind, fields in entries:
            key = (table_name, row_id)
            row_changes = grouped.get(key)
            if row_changes is None:
                if len(grouped) >= limit:
                    full = True
                    break
                row_changes = grouped[key] = _RowChanges()
            if kind == ENTERED:
                row_changes.entered = True
            elif kind != LEFT and fields:
                row_changes.fields.update(fields.split(","))
            position = entry_position
        if full:
            more = True
            break
        if len(entries) < chunk:
            break

    changes: dict[str, TableChanges] = {}
    ids_by_table: dict[str, list[str]] = defaultdict(list)
    for table_name, row_id in grouped:
        ids_by_table[table_name].append(row_id)
    own_scopes = set(scopes)
    for table_name, ids in ids_by_table.items():
        table = BY_NAME[table_name]
        rows = (
            (await conn.execute(table.select_rows().where(table.id_column.in_(ids))))
            .mappings()
            .all()
        )
        current = {row["id"]: row for row in rows}
        for row_id in ids:
            row = current.get(row_id)
            if row is None or not (table.row_scopes(row) & own_scopes):
                _add(changes, table_name, "del", row_id)
            elif grouped[(table_name, row_id)].entered:
                _add(changes, table_name, "put", table.encode(row))
            else:
                patch = table.encode_fields(row, sorted(grouped[(table_name, row_id)].fields))
                if len(patch) > 1:
                    _add(changes, table_name, "patch", patch)
    return PullPage(changes, LogCursor(position), more=more, rows=len(grouped))
