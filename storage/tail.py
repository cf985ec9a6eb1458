"""The shared tail: the recent change log and the rows it names, in memory, once per process.

Every phone behind the same catalogue asks for nearly the same thing: the changes after its
cursor. Reading them from the database per phone costs a round trip, a log scan and a row
read per pull, thousands of times per commit. The systems built for many clients read once
per change instead (Electric's shape log served at an offset, PowerSync's checkpoint
broadcast, Centrifugo's in-memory history with offset and epoch); this is ours.

The live hub reads each committed window once (it already did, for WebSocket frames) and
feeds it here: the entries, per scope, and the current rows they name. A pull, a WebSocket
catch-up or a WatermelonDB pull whose cursor lies inside the tail is answered from memory
with the same decisions `storage.pull` makes from the database — membership as of the page's
end, `patch` only for rows the client holds, held back when a row left after a full page —
and no query at all. A cursor older than the tail, a fresh process, or a window the hub
could not read whole falls back to the database path: the tail is an accelerator, never the
truth.

Why it is exact, not approximate: a window is read in one snapshot up to the newest
committed position, and positions become visible strictly in order (storage/changelog.py),
so after feeding a window the tail holds *every* entry in (floor, head] and each row as it
is at `head`. Entries are evicted oldest first past `max_entries` (raising the floor), and a
row is dropped with the last entry that names it, so memory is bounded by the setting.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from protocol.cursor import LogCursor
from storage.changelog import LEFT
from storage.pull import PullPage, RowChanges, TableChanges, Window, decide_row

RowKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class TailEntry:
    position: int
    scope: str
    table: str
    row_id: str
    kind: int
    fields: str


class _ScopeLog:
    """One scope's entries in position order; evicted from the front without copying.

    Its removals (LEFT entries) are indexed apart: a page asks which of its rows leave the
    scope after its end, and scanning every later entry for the few removals cost a first
    page from an old cursor a walk over the rest of the tail."""

    __slots__ = ("entries", "left_positions", "lefts", "positions", "start")

    def __init__(self) -> None:
        self.entries: list[TailEntry] = []
        self.positions: list[int] = []
        self.start = 0
        self.lefts: list[TailEntry] = []
        self.left_positions: list[int] = []

    def append(self, entry: TailEntry) -> None:
        self.entries.append(entry)
        self.positions.append(entry.position)
        if entry.kind == LEFT:
            self.lefts.append(entry)
            self.left_positions.append(entry.position)

    def left_after(self, position: int) -> list[TailEntry]:
        return self.lefts[bisect_right(self.left_positions, position) :]

    def after(self, position: int) -> list[TailEntry]:
        index = max(self.start, bisect_right(self.positions, position))
        return self.entries[index:]

    def any_after(self, position: int) -> bool:
        return len(self) > 0 and self.positions[-1] > position

    def evict_to(self, floor: int) -> None:
        index = max(self.start, bisect_right(self.positions, floor))
        self.start = index
        if self.start > 1024 and self.start * 2 > len(self.entries):
            del self.entries[: self.start]
            del self.positions[: self.start]
            self.start = 0
        gone = bisect_right(self.left_positions, floor)
        if gone:
            del self.lefts[:gone]
            del self.left_positions[:gone]

    def __len__(self) -> int:
        return len(self.entries) - self.start


# Page sizes (per scope) for which chunk ends are kept; clients use one or two.
MAX_CHUNKINGS = 8


def chunk_rows(limit: int) -> int:
    """Distinct shared rows in a chunk for pages of `limit`: a tenth less, so that a phone's
    own rows (its orders, notifications) usually fit beside a whole chunk in one page. A
    page that holds both must stay within `limit`; with chunks of `limit` rows any phone
    with one row of its own would fall off the shared pages onto a page of its own."""
    return max(1, limit - limit // 10)


class _Chunks:
    """One scope's log cut into runs of at most `chunk_rows(limit)` distinct rows (see
    `chunk_end`)."""

    __slots__ = ("ends", "limit", "open_rows", "scanned")

    def __init__(self, limit: int, start: int) -> None:
        self.limit = chunk_rows(limit)
        self.ends: list[int] = []  # the last position of each closed chunk, ascending
        self.open_rows: set[RowKey] = set()
        self.scanned = start

    def extend(self, entries: list[TailEntry]) -> None:
        last = self.scanned
        for entry in entries:
            key = (entry.table, entry.row_id)
            if key not in self.open_rows:
                if len(self.open_rows) >= self.limit:
                    self.ends.append(last)
                    self.open_rows = set()
                self.open_rows.add(key)
            last = entry.position
        self.scanned = last

    def forget_to(self, floor: int) -> None:
        del self.ends[: bisect_right(self.ends, floor)]


class ChangeTail:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        # Every entry in (floor, head] is here; None until the first window arrives.
        self.floor: int | None = None
        self.head = 0
        self._order: list[TailEntry] = []  # all entries, position order (eviction)
        self._order_start = 0
        self._scopes: dict[str, _ScopeLog] = {}
        self._rows: dict[RowKey, Any] = {}  # the row as of `head`; None: gone
        self._row_refs: dict[RowKey, int] = defaultdict(int)
        self._chunks: dict[tuple[str, int], _Chunks] = {}
        self._started = 0
        self._left_at: dict[str, int] = {}  # per scope, the newest LEFT entry

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._order) - self._order_start

    # -- feeding (the hub, once per committed window) ----------------------------------------

    def start_at(self, position: int) -> None:
        """Begin (or begin again, after a gap) empty at a position every later window follows."""
        self._order, self._order_start = [], 0
        self._scopes.clear()
        self._rows.clear()
        self._row_refs.clear()
        self._chunks.clear()
        self._left_at.clear()
        self._started = position
        self.floor = self.head = position

    def feed(self, window: Window, entries: Iterable[TailEntry]) -> None:
        """Add a window read whole in one snapshot: its entries and the rows they name."""
        if not self.enabled:
            return
        if self.floor is None or window.start != self.head:
            # Not contiguous with what we hold (first window, or the hub skipped a range):
            # only what this window covers is known.
            self.start_at(window.start)
        for entry in entries:
            self._order.append(entry)
            scope_log = self._scopes.get(entry.scope)
            if scope_log is None:
                scope_log = self._scopes[entry.scope] = _ScopeLog()
            scope_log.append(entry)
            self._row_refs[(entry.table, entry.row_id)] += 1
            if entry.kind == LEFT:
                self._left_at[entry.scope] = entry.position
        for key in window.entries:
            self._rows[key] = window.rows.get(key)
        self.head = window.end
        self._evict()

    def raise_floor(self, floor: int) -> None:
        """The database pruned its log up to `floor`: a cursor below it is expired there, so
        it is here too (every instance answers it the same way: with a reset snapshot)."""
        if self.floor is None or floor <= self.floor:
            return
        if floor > self.head:
            self.floor = None  # pruned past what we hold (a restore?): start again
            return
        held = self._order[self._order_start :]
        self._drop(bisect_right([entry.position for entry in held], floor))
        self.floor = floor

    def _evict(self) -> None:
        excess = len(self) - self.max_entries
        if excess > 0:
            self.floor = self._order[self._order_start + excess - 1].position
            self._drop(excess)

    def _drop(self, count: int) -> None:
        """Forget the oldest `count` entries, and the rows no remaining entry names."""
        if count <= 0:
            return
        dropped = self._order[self._order_start : self._order_start + count]
        self._order_start += count
        if self._order_start > 4096 and self._order_start * 2 > len(self._order):
            del self._order[: self._order_start]
            self._order_start = 0
        through = dropped[-1].position
        for entry in dropped:
            key = (entry.table, entry.row_id)
            refs = self._row_refs[key] - 1
            if refs:
                self._row_refs[key] = refs
            else:
                del self._row_refs[key]
                self._rows.pop(key, None)
        for chunks in self._chunks.values():
            chunks.forget_to(through)
        for scope in {entry.scope for entry in dropped}:
            scope_log = self._scopes[scope]
            scope_log.evict_to(through)
            if not scope_log:
                del self._scopes[scope]

    # -- answering ---------------------------------------------------------------------------

    def covers(self, position: int) -> bool:
        return self.floor is not None and self.floor <= position <= self.head

    def has_after(self, scope: str, position: int) -> bool:
        """Whether `scope` has an entry after `position` (a covered one)."""
        scope_log = self._scopes.get(scope)
        return scope_log is not None and scope_log.any_after(position)

    def _since(self, scopes: Iterable[str], position: int) -> Iterator[TailEntry]:
        streams = [
            scope_log.after(position)
            for scope in scopes
            if (scope_log := self._scopes.get(scope)) is not None
        ]
        if len(streams) == 1:
            return iter(streams[0])
        return heapq.merge(*streams, key=lambda entry: entry.position)

    def page(
        self,
        scopes: tuple[str, ...],
        after: int,
        limit: int,
        *,
        full_rows: bool = False,
        until: int | None = None,
    ) -> PullPage | None:
        """The page `storage.pull` would answer for a cursor at `after`, or None when the
        tail does not hold everything after it (then the database answers).

        `until`: the page ends there at the latest (a chunk's end, see `chunk_end`), as if
        the log stopped at it; rows that leave the scope after it are held back for the page
        that carries their removal, as for a page that stops at its limit."""
        if not self.covers(after):
            return None
        end = self.head if until is None else min(until, self.head)
        grouped: dict[RowKey, RowChanges] = {}
        position = after
        more = False
        for entry in self._since(scopes, after):
            if entry.position > end:
                break
            key = (entry.table, entry.row_id)
            row_changes = grouped.get(key)
            if row_changes is None:
                if len(grouped) >= limit:
                    more = True
                    break
                row_changes = grouped[key] = RowChanges()
            row_changes.note(entry.scope, entry.kind, entry.fields)
            position = entry.position
        if not more:
            position = end
        left_since = self._left_after(scopes, position, grouped) if position < self.head else set()
        own_scopes = set(scopes)
        changes: dict[str, TableChanges] = {}
        for key, seen in grouped.items():
            # The rows as they are at `head` (the database path reads them at its snapshot).
            decide_row(
                changes,
                key[0],
                key[1],
                seen,
                self._rows.get(key),
                held_back=key in left_since,
                own_scopes=own_scopes,
                full_rows=full_rows,
            )
        return PullPage(changes, LogCursor(position), more=more, rows=len(grouped))

    def scope_head(self, scope: str) -> int | None:
        """A value that changes whenever `scope` gets an entry: its newest position here, or
        the floor when the tail holds none of its entries. None before the first window."""
        if self.floor is None:
            return None
        scope_log = self._scopes.get(scope)
        return scope_log.positions[-1] if scope_log else self.floor

    def left_epoch(self, scope: str) -> int:
        """Changes whenever a row leaves `scope`, and only then.

        A page holds back a row that leaves the scope after the page's end (the page that
        carries its removal deals with it), so what a page says depends on which removals
        were known when it was built. A phone must not get a page built before a removal
        after one built since: the first would patch a row the second held back. Keyed by
        this epoch, every shared page served at one time was built knowing the same
        removals. (Not below where the tail began: epochs never repeat across restarts.)"""
        return max(self._left_at.get(scope, 0), self._started)

    def chunk_end(self, scope: str, after: int, limit: int) -> int | None:
        """Where a page of `scope` from `after` ends so that phones converge on shared pages.

        The scope's log is cut, from where the tail began, into chunks of at most
        `chunk_rows(limit)` distinct rows. A page ends at the end of the chunk its cursor is
        in (or at the head, in the chunk still growing), so a phone's first page is its own,
        and every page after it is a whole chunk, the same bytes for every phone that passes
        through it, however different their cursors were. None: not covered, or too many
        page sizes in use."""
        if not self.covers(after):
            return None
        chunks = self._chunks.get((scope, limit))
        if chunks is None:
            if len(self._chunks) >= MAX_CHUNKINGS:
                return None
            assert self.floor is not None
            chunks = self._chunks[(scope, limit)] = _Chunks(limit, self.floor)
        scope_log = self._scopes.get(scope)
        if scope_log is not None:
            chunks.extend(scope_log.after(chunks.scanned))
        index = bisect_right(chunks.ends, after)
        return chunks.ends[index] if index < len(chunks.ends) else self.head

    def _left_after(
        self, scopes: tuple[str, ...], after: int, grouped: dict[RowKey, RowChanges]
    ) -> set[RowKey]:
        held = {key for key, seen in grouped.items() if seen.held_at_end}
        if not held:
            return set()
        left: set[RowKey] = set()
        for scope in scopes:
            scope_log = self._scopes.get(scope)
            if scope_log is not None:
                for entry in scope_log.left_after(after):
                    if (entry.table, entry.row_id) in held:
                        left.add((entry.table, entry.row_id))
        return left


def window_entries(window: Window) -> list[TailEntry]:
    """A window's entries in position order (the window groups them by row)."""
    return sorted(
        (
            TailEntry(entry.position, entry.scope, table, row_id, entry.kind, entry.fields)
            for (table, row_id), entries in window.entries.items()
            for entry in entries
        ),
        key=lambda entry: entry.position,
    )
