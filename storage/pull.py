"""Pull: turn the change log (or a snapshot) into one page of put / patch / del.

Memory per request is bounded by the page: at most `limit` distinct rows are grouped,
whatever the backlog. Values always come from the current rows (a change that happens after
the page was read is sent again later, so re-reading is safe); the log says *which* rows
and fields changed and whether a row entered the client's scope (→ full `put`) or only
changed inside it (→ `patch` with just those fields).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.cursor import CursorState, LogCursor, SnapshotCursor
from storage.changelog import ENTERED, LEFT
from storage.models import ChangeLogEntry, SyncMeta
from storage.scopes import Principal
from storage.synced import BY_NAME, LISTINGS, SYNCED_TABLES

TableChanges = dict[str, list[Any]]


@dataclass
class PullPage:
    changes: dict[str, TableChanges]
    next_state: CursorState
    more: bool
    reset: bool = False
    rows: int = 0


class RowChanges:
    """What a page's entries say about one row. A plain slotted class, not a dataclass: a
    page makes one per row, and the generated `__init__` with two default factories was 3 %
    of the server's CPU at 10,000 phones."""

    __slots__ = ("entered", "fields", "in_scope_at_end")

    def __init__(self) -> None:
        self.entered = False
        self.fields: set[str] = set()
        # Per scope, whether the row is in it at the end of the window: the last ENTERED/LEFT
        # decides, and a scope with only updates means the row stayed in it.
        self.in_scope_at_end: dict[str, bool] = {}

    def note(self, scope: str, kind: int, fields: str) -> None:
        if kind == ENTERED:
            self.entered = True
            self.in_scope_at_end[scope] = True
        elif kind == LEFT:
            self.in_scope_at_end[scope] = False
        else:
            self.in_scope_at_end.setdefault(scope, True)
            if fields:
                self.fields.update(fields.split(","))

    @property
    def held_at_end(self) -> bool:
        return any(self.in_scope_at_end.values())


class CursorExpired(Exception):
    """The cursor points into the pruned part of the log, or past its head."""


@dataclass(frozen=True)
class LogBounds:
    """The pruned floor and the newest committed position, as one snapshot sees them."""

    floor: int
    head: int


async def log_bounds(conn: AsyncConnection) -> LogBounds:
    """One round trip. The head is never below the floor, so a snapshot started now is never
    mistaken for an expired one; every position up to the head is visible (see changelog)."""
    floor_value = select(SyncMeta.value).where(SyncMeta.key == "log_floor").scalar_subquery()
    newest, floor = (
        await conn.execute(select(func.coalesce(func.max(ChangeLogEntry.position), 0), floor_value))
    ).one()
    floor = int(floor or 0)
    return LogBounds(floor, max(int(newest), floor))


async def log_head(conn: AsyncConnection) -> int:
    return (await log_bounds(conn)).head


async def pull_page(
    conn: AsyncConnection,
    principal: Principal,
    state: CursorState | None,
    limit: int,
    *,
    full_rows: bool = False,
    max_bytes: int | None = None,
    tables: int | None = None,
) -> PullPage:
    """One page. `full_rows`: changed rows come whole in `patch` (for WatermelonDB, which
    replaces local records instead of merging fields). For a snapshot page, `max_bytes`
    bounds its rows' JSON as well as `limit` their number (a first sync of small rows comes
    in fewer, larger pages, which compress better), and `tables` stops it at that many of
    `SYNCED_TABLES` (the catalogue alone: `tables=1`, then the cursor points at the next).

    Reads run in one REPEATABLE READ snapshot, so the bounds read first hold for every later
    statement of the page."""
    bounds = await log_bounds(conn)
    budget = PageBudget(limit, max_bytes, len(SYNCED_TABLES) if tables is None else tables)
    if state is None:
        return await _snapshot_page(conn, principal, SnapshotCursor(bounds.head, 0, ""), budget)
    # Below the floor: changes were pruned. Above the head: the log is not the one the cursor
    # came from (a database restored from a backup); waiting for the head to pass it would
    # silently skip everything committed until then.
    position = state.head if isinstance(state, SnapshotCursor) else state.position
    if not bounds.floor <= position <= bounds.head:
        raise CursorExpired()
    if isinstance(state, SnapshotCursor):
        return await _snapshot_page(conn, principal, state, budget)
    return await _log_page(
        conn, principal, state.position, limit, head=bounds.head, full_rows=full_rows
    )


async def changed_after(conn: AsyncConnection, scopes: tuple[str, ...], position: int) -> bool:
    """Whether any of `scopes` has a change log entry after `position` (one indexed probe)."""
    found = await conn.execute(
        select(ChangeLogEntry.position)
        .where(ChangeLogEntry.scope.in_(scopes), ChangeLogEntry.position > position)
        .limit(1)
    )
    return found.first() is not None


def catalogue_start(position: int, *, with_listings: bool) -> SnapshotCursor:
    """A first sync for a device that holds the catalogue snapshot (v1.1) at `position`: the
    other tables now, then the log after `position` — the listing changes it lacks, and
    anything else changed meanwhile again (harmless: put is an upsert). The snapshot pages
    read rows as they are now, never older than `position`, so nothing is skipped."""
    assert SYNCED_TABLES[0] is LISTINGS  # the catalogue is the first table of a snapshot
    return SnapshotCursor(position, 0 if with_listings else 1, "")


def add_change(changes: dict[str, TableChanges], table: str, kind: str, item: Any) -> None:
    changes.setdefault(table, {}).setdefault(kind, []).append(item)


@dataclass(frozen=True)
class PageBudget:
    """How much a snapshot page may hold: rows, bytes of their JSON (None: any), tables."""

    rows: int
    max_bytes: int | None = None
    tables: int = len(SYNCED_TABLES)


async def _snapshot_page(
    conn: AsyncConnection, principal: Principal, state: SnapshotCursor, budget: PageBudget
) -> PullPage:
    changes: dict[str, TableChanges] = {}
    remaining = budget.rows
    room = budget.max_bytes
    table_index, last_id = state.table_index, state.last_id
    last_table = min(budget.tables, len(SYNCED_TABLES))
    while table_index < last_table and remaining > 0:
        table = SYNCED_TABLES[table_index]
        id_column = table.id_column
        query = (
            table.select_rows()
            .where(table.visible_to(principal), id_column > last_id)
            .order_by(id_column)
            .limit(remaining)
        )
        rows = (await conn.execute(query)).mappings().all()
        taken = 0
        for row in rows:
            encoded = table.encode(row)
            if room is not None:
                size = len(orjson.dumps(encoded)) + 1
                if size > room and budget.rows - remaining + taken > 0:
                    room = 0  # full: this row opens the next page
                    break
                room -= size
            add_change(changes, table.name, "put", encoded)
            taken += 1
        remaining -= taken
        if taken < len(rows) or (remaining == 0 and rows):
            resume_after = rows[taken - 1]["id"] if taken else last_id
            next_state = SnapshotCursor(state.head, table_index, resume_after)
            return PullPage(changes, next_state, more=True, rows=budget.rows - remaining)
        table_index, last_id = table_index + 1, ""
    if table_index < len(SYNCED_TABLES):
        # Stopped at `budget.tables` (or the page is full just as a table ended): the next
        # page starts at the next table.
        next_state = SnapshotCursor(state.head, table_index, "")
        return PullPage(changes, next_state, more=True, rows=budget.rows - remaining)
    # Snapshot done: continue from the log head it started at. Anything committed since then
    # is replayed from the log on the next page, so more=True only if such changes exist.
    later = await _log_page(conn, principal, state.head, 1, head=state.head, probe_only=True)
    return PullPage(changes, LogCursor(state.head), more=later.more, rows=budget.rows - remaining)


async def _log_page(
    conn: AsyncConnection,
    principal: Principal,
    after: int,
    limit: int,
    *,
    head: int,
    probe_only: bool = False,
    full_rows: bool = False,
) -> PullPage:
    scopes = principal.scopes
    chunk = max(64, limit * 2)
    grouped: dict[tuple[str, str], RowChanges] = {}
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
                    ChangeLogEntry.scope,
                )
                .where(ChangeLogEntry.scope.in_(scopes), ChangeLogEntry.position > position)
                .order_by(ChangeLogEntry.position)
                .limit(1 if probe_only else chunk)
            )
        ).all()
        if probe_only:
            return PullPage({}, LogCursor(after), more=bool(entries))
        full = False
        for entry_position, table_name, row_id, kind, fields, scope in entries:
            key = (table_name, row_id)
            row_changes = grouped.get(key)
            if row_changes is None:
                if len(grouped) >= limit:
                    full = True
                    break
                row_changes = grouped[key] = RowChanges()
            row_changes.note(scope, kind, fields)
            position = entry_position
        if full:
            more = True
            break
        if len(entries) < chunk:
            break

    if not more:
        # Everything in scope up to the newest committed position has been read (positions
        # become visible in order), so the cursor may jump there. Clients idle in a quiet
        # scope then stay near the head, and live sockets can join the shared stream.
        position = max(position, head)
    # A full page ends before the head. A row that was in scope at the window's end but has
    # left since must not be sent yet: not as a put (its current values may be a draft's), and
    # not as a patch either, because the client may never have received it (an earlier page
    # skipped its put for the same reason). Its leaving reaches the client later as a del, and
    # a return after that as a put. The current row cannot tell "left" from "left and came
    # back", so the log decides.
    left_since = await _left_after(conn, scopes, position, grouped) if more else set()
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
            decide_row(
                changes,
                table_name,
                row_id,
                grouped[(table_name, row_id)],
                current.get(row_id),
                held_back=(table_name, row_id) in left_since,
                own_scopes=own_scopes,
                full_rows=full_rows,
            )
    return PullPage(changes, LogCursor(position), more=more, rows=len(grouped))


def decide_row(
    changes: dict[str, TableChanges],
    table_name: str,
    row_id: str,
    seen: RowChanges,
    row: Any,
    *,
    held_back: bool,
    own_scopes: set[str],
    full_rows: bool,
) -> None:
    """One row's part of a page: del, put, patch or nothing. Shared by the database path and
    the in-memory tail (storage/tail.py), so both decide exactly alike.

    Membership is decided as of the window's end, where the cursor will stand: a row that left
    within the window is deleted now even if it is back (its re-entry, later, comes as a put).
    `held_back`: it was in scope at the window's end but left after it (see `_left_after`)."""
    table = BY_NAME[table_name]
    if not seen.held_at_end:
        add_change(changes, table_name, "del", row_id)
    elif held_back or row is None or not (table.row_scopes(row) & own_scopes):
        return  # the last two cannot happen when the log is complete; never leak a row
    elif seen.entered:
        add_change(changes, table_name, "put", table.encode(row))
    elif full_rows:
        add_change(changes, table_name, "patch", table.encode(row))
    else:
        patch = table.encode_fields(row, sorted(seen.fields))
        if len(patch) > 1:
            add_change(changes, table_name, "patch", patch)


async def _left_after(
    conn: AsyncConnection,
    scopes: tuple[str, ...],
    after: int,
    grouped: dict[tuple[str, str], RowChanges],
) -> set[tuple[str, str]]:
    """The rows held at the window's end that left one of these scopes after it (by the
    (row_id, position) index: a few rows, not the rest of the log)."""
    held = {key for key, seen in grouped.items() if seen.held_at_end}
    if not held:
        return set()
    found = await conn.execute(
        select(ChangeLogEntry.table_name, ChangeLogEntry.row_id)
        .where(
            ChangeLogEntry.row_id.in_(sorted({row_id for _table, row_id in held})),
            ChangeLogEntry.position > after,
            ChangeLogEntry.kind == LEFT,
            ChangeLogEntry.scope.in_(scopes),
        )
        .distinct()
    )
    return {(table_name, row_id) for table_name, row_id in found if (table_name, row_id) in held}


@dataclass
class _Entry:
    position: int
    scope: str
    kind: int
    fields: str


@dataclass
class Window:
    """Every log entry in (start, end], all scopes, with the current rows they name."""

    start: int
    end: int
    entries: dict[tuple[str, str], list[_Entry]]
    rows: dict[tuple[str, str], Any]
    overflow: bool
    floor: int = 0  # the pruned floor when the window was read


async def read_window(conn: AsyncConnection, start: int, limit: int) -> Window:
    """One read for all live sockets: the change log after `start`, whatever the scope."""
    bounds = await log_bounds(conn)
    head = bounds.head
    result = (
        await conn.execute(
            select(
                ChangeLogEntry.position,
                ChangeLogEntry.scope,
                ChangeLogEntry.table_name,
                ChangeLogEntry.row_id,
                ChangeLogEntry.kind,
                ChangeLogEntry.fields,
            )
            .where(ChangeLogEntry.position > start, ChangeLogEntry.position <= head)
            .order_by(ChangeLogEntry.position)
            .limit(limit + 1)
        )
    ).all()
    if len(result) > limit:
        return Window(start, head, {}, {}, overflow=True, floor=bounds.floor)
    entries: dict[tuple[str, str], list[_Entry]] = defaultdict(list)
    for position, scope, table_name, row_id, kind, fields in result:
        entries[(table_name, row_id)].append(_Entry(position, scope, kind, fields))
    rows: dict[tuple[str, str], Any] = {}
    ids_by_table: dict[str, list[str]] = defaultdict(list)
    for table_name, row_id in entries:
        ids_by_table[table_name].append(row_id)
    for table_name, ids in ids_by_table.items():
        table = BY_NAME[table_name]
        query = table.select_rows().where(table.id_column.in_(ids))
        for row in (await conn.execute(query)).mappings():
            rows[(table_name, row["id"])] = row
    return Window(start, head, dict(entries), rows, overflow=False, floor=bounds.floor)


class WindowView:
    """What each principal sees of a window, encoded once per distinct view.

    Buyers who only share the public scope get byte-identical changes; the encoded JSON is
    cached by the list of decisions, so a listing change fanned out to thousands of phones
    is serialised once, not once per socket.
    """

    def __init__(self, window: Window) -> None:
        self.window = window
        self._encoded: dict[tuple[Any, ...], str] = {}

    def changes_json(self, principal: Principal) -> str | None:
        own = set(principal.scopes)
        decisions: list[tuple[str, str, str, tuple[str, ...]]] = []
        for key, entries in self.window.entries.items():
            mine = [entry for entry in entries if entry.scope in own]
            if not mine:
                continue
            table = BY_NAME[key[0]]
            row = self.window.rows.get(key)
            if row is None or not (table.row_scopes(row) & own):
                decisions.append((key[0], key[1], "del", ()))
            elif any(entry.kind == ENTERED for entry in mine):
                decisions.append((key[0], key[1], "put", ()))
            else:
                changed = {
                    name
                    for entry in mine
                    if entry.fields
                    for name in entry.fields.split(",")
                    if name in table.wire
                }
                if changed:
                    decisions.append((key[0], key[1], "patch", tuple(sorted(changed))))
        if not decisions:
            return None
        cache_key = tuple(decisions)
        encoded = self._encoded.get(cache_key)
        if encoded is None:
            changes: dict[str, TableChanges] = {}
            for table_name, row_id, kind, fields in decisions:
                table = BY_NAME[table_name]
                if kind == "del":
                    add_change(changes, table_name, "del", row_id)
                    continue
                row = self.window.rows[(table_name, row_id)]
                item = table.encode(row) if kind == "put" else table.encode_fields(row, fields)
                add_change(changes, table_name, kind, item)
            encoded = orjson.dumps(changes).decode()
            self._encoded[cache_key] = encoded
        return encoded
