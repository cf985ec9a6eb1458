"""Pull, shared by the HTTP route and the WebSocket: cursors, the fast path, one page."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.cursor import CursorState, ForeignCursor, LogCursor, SnapshotCursor
from storage.pull import (
    CursorExpired,
    PullPage,
    TableChanges,
    catalogue_start,
    changed_after,
    pull_page,
)
from storage.scopes import Principal
from sync_server import reading
from sync_server.pages import EncodedPage, SharedAnswer
from sync_server.services import Services


def decode_cursor(
    services: Services, principal: Principal, token: str | None
) -> tuple[CursorState | None, bool]:
    """(state, reset): a cursor we did not issue to this user restarts with a snapshot."""
    if token is None or token == "":
        return None, False
    try:
        return services.cursors.decode(token, principal.user_id), False
    except ForeignCursor:
        return None, True


def start_from_catalogue(
    services: Services, principal: Principal, token: str
) -> tuple[CursorState | None, bool]:
    """(state, reset) for `pull?snapshot=<position>`: a first sync of everything but the
    catalogue, which the device holds as of `position`, then the log from there (later
    listing changes as put/patch/del). Any position we did not sign: a reset snapshot.

    An admin's listings include drafts, which the public document lacks: theirs come again,
    all of them (a put for a row the device holds is allowed)."""
    try:
        position = services.cursors.decode_position(token)
    except ForeignCursor:
        return None, True
    return catalogue_start(position, with_listings=principal.is_admin), False


async def nothing_new(services: Services, principal: Principal, state: CursorState | None) -> bool:
    """Fast path: no change in scope since the cursor, proven with no database read — by the
    heads this process has heard of while they are fresh, else by the process's tail when it
    covers the cursor (it holds every entry up to its head: no Redis round trip), else by
    the shared cached heads."""
    if not isinstance(state, LogCursor):
        return False
    local = services.feed.local
    known = [local.get(scope) for scope in principal.scopes]
    if None not in known:  # what this process has heard of, still fresh: no I/O at all
        return all(head is not None and head <= state.position for head in known)
    tail = services.live.tail
    if tail.covers(state.position):
        await wait_for_tail(services, principal)
        if tail.covers(state.position):
            return not any(tail.has_after(scope, state.position) for scope in principal.scopes)
    try:
        heads = await services.feed.heads(principal.scopes)
    except Exception:
        return False
    return all(head is not None and head <= state.position for head in heads)


# How long a pull that knows of a newer commit waits for the hub's shared read of it, rather
# than answering from a tail a few milliseconds old (which would also be correct, only later).
TAIL_WAIT_SECONDS = 0.5


async def wait_for_tail(services: Services, principal: Principal) -> None:
    """When a commit in the principal's scopes is known (announced) but not yet in the
    tail, wait briefly for the hub's one shared read of it instead of answering without it."""
    # This process's own knowledge only (its commits and pub/sub announcements): the hub reads
    # what this process has heard of, so asking the shared cache would add a round trip for
    # nothing the hub could act on.
    local = services.feed.local
    newest = max((local.get(scope) or 0 for scope in principal.scopes), default=0)
    if newest > services.live.tail.head:
        await services.live.reach(newest, TAIL_WAIT_SECONDS)


async def log_page(
    services: Services, principal: Principal, position: int, limit: int
) -> SharedAnswer | None:
    """The page for a cursor at `position` from the tail, encoded once for everyone who gets
    the same one: a shared chunk with this phone's rows after it, else a page of this user's.
    None when the tail does not cover the cursor (the database answers)."""
    if not services.live.tail.covers(position):
        return None
    await wait_for_tail(services, principal)
    answer = shared_chunk_page(services, principal, position, limit)
    if answer is None:
        answer = users_tail_page(services, principal, position, limit)
    return answer


def shared_chunk_page(
    services: Services, principal: Principal, position: int, limit: int
) -> SharedAnswer | None:
    """The page for a cursor at `position`, its shared scope's part (public, or admin) encoded
    once per (scope, position, end, limit, removals known) for every phone there, its own
    rows added.

    The page ends where the shared scope's chunk ends (`ChangeTail.chunk_end`), so after a
    first page of its own a phone reads whole chunks that every other phone reads too. None
    when the tail does not cover the cursor, or the page would pass `limit` with the
    phone's own rows (then the next page, from wherever that one ends, is aligned again)."""
    tail = services.live.tail
    shared_scope, *own_scopes = principal.scopes
    end = tail.chunk_end(shared_scope, position, limit)
    if end is None:
        return None
    own = tail.page(tuple(own_scopes), position, limit, until=end)
    if own is None or own.more:
        return None
    key = ("log", shared_scope, position, end, limit, tail.left_epoch(shared_scope))
    encoded = services.pages.get(key)
    if encoded is None:
        page = tail.page((shared_scope,), position, limit, until=end)
        if page is None:
            return None
        encoded = EncodedPage(page)
        if page.changes:  # an empty page is a few bytes: not worth a place in the cache
            services.pages.put(key, encoded)
    if encoded.page.rows + own.rows > limit or own.changes.keys() & encoded.page.changes.keys():
        # Past the page size, or the same table in both parts (an admin's own order is in
        # the admin scope too): the user's own page carries it.
        return None
    more = end < tail.head
    if not more:
        nothing_after(services, principal, end)
    return SharedAnswer(encoded, own.changes, more, LogCursor(end))


def users_tail_page(
    services: Services, principal: Principal, position: int, limit: int
) -> SharedAnswer | None:
    """A page from the tail that the shared chunks could not carry (the user's own rows did
    not fit beside one: a burst of twenty purchases is sixty rows of its own), encoded once
    for every device of that user passing through `position` — a household's phones and the
    ~30 devices of a shared account read the chunks in step, so they meet there too.

    Only a page that stops at `limit` is kept: what it holds, entries in (position, its
    end], never changes (the log only grows; the epochs in the key change when a removal
    could change what it holds back). A page that reaches the head is this moment's, and a
    device that just wrote must read its write: that one is built per request."""
    tail = services.live.tail
    scopes = principal.scopes
    key = ("tail", scopes, position, limit, *(tail.left_epoch(scope) for scope in scopes))
    encoded = services.pages.get(key)
    if encoded is None:
        page = tail.page(scopes, position, limit)
        if page is None:
            return None
        encoded = EncodedPage(page)
        if page.more:
            services.pages.put(key, encoded)
    page = encoded.page
    if not page.more and isinstance(page.next_state, LogCursor):
        nothing_after(services, principal, page.next_state.position)
    return SharedAnswer(encoded, {}, page.more, page.next_state)


def nothing_after(services: Services, principal: Principal, position: int) -> None:
    """A page from the tail reached its head: nothing in any of the principal's scopes after
    `position` (the tail holds every entry up to it), so the next poll from there is answered
    by the fast path."""
    for scope in principal.scopes:
        services.feed.local.raise_to(scope, position)


# A user's own rows up to this much JSON share a first-sync page with the catalogue (a new
# phone has none, a returning one a few orders); more come on the next page.
OWN_ROWS_INLINE_BYTES = 1024


async def shared_snapshot_page(
    services: Services, principal: Principal, state: SnapshotCursor | None, limit: int
) -> SharedAnswer | None:
    """A first-sync page: its catalogue part is the same for every phone starting from the
    same position — read from the database once, encoded and compressed once at near-best
    quality (in a worker thread), shared; where the catalogue ends within the page, the
    user's own rows fill the rest of it (shared by that user's devices while those rows stay
    as they were). Phones starting a snapshot within a few seconds start it at one position
    (`LiveHub.snapshot_origin`: any committed position is a valid start, the log replays what
    came after it).

    Pages are sized in bytes as well as rows (`PULL_PAGE_BYTES`): with no `limit` from the
    client, a catalogue of a few hundred listings is one page, one compressed stream."""
    if state is None:
        origin = services.live.snapshot_origin()
        if origin is None:
            return None
        state = SnapshotCursor(origin, 0, "")
    max_bytes = services.settings.pull_page_bytes
    try:
        if state.table_index > 0:
            own = await own_rows_page(services, principal, state, limit, max_bytes)
            more = await more_now(services, principal, own.page)
            return SharedAnswer(own, {}, more, own.page.next_state)
        catalogue = await catalogue_page(services, principal, state, limit, max_bytes)
        page = catalogue.page
        following = page.next_state
        room = (limit - page.rows, max_bytes - catalogue.json_bytes)
        if (
            not isinstance(following, SnapshotCursor)
            or following.table_index == 0  # more of the catalogue follows
            or min(room) <= 0
        ):
            return SharedAnswer(catalogue, {}, page.more, following)
        # The catalogue ended within this page: the user's own rows fill the rest of it.
        own = await own_rows_page(services, principal, following, *room)
    except CursorExpired:
        return None
    if own.json_bytes > OWN_ROWS_INLINE_BYTES:
        # They would follow the shared bytes uncompressed (see sync_server.pages): a page of
        # their own, compressed on its own, costs the phone less.
        return SharedAnswer(catalogue, {}, True, following)
    more = await more_now(services, principal, own.page)
    return SharedAnswer(catalogue, own.page.changes, more, own.page.next_state)


async def more_now(services: Services, principal: Principal, page: PullPage) -> bool:
    """Whether a page of a user's own rows is followed by more. A page that ends the snapshot
    (its cursor is the log position the snapshot started from) said so when it was built, and
    it is shared by the user's devices for a while: a change committed since must not be
    answered with `more: false` (the device would take itself for complete without it). So
    that end is looked up again now: in the tail when it covers the position, else in the
    log."""
    following = page.next_state
    if not isinstance(following, LogCursor) or page.more:
        return page.more
    tail = services.live.tail
    if tail.covers(following.position):
        await wait_for_tail(services, principal)
        if tail.covers(following.position):
            return any(tail.has_after(scope, following.position) for scope in principal.scopes)

    async def probe(conn: AsyncConnection) -> bool:
        return await changed_after(conn, principal.scopes, following.position)

    return await reading.read(services, probe, writer=principal, after=following.position)


async def catalogue_page(
    services: Services, principal: Principal, state: SnapshotCursor, limit: int, max_bytes: int
) -> EncodedPage:
    """The catalogue part of a first-sync page from `state`, built once for every phone of the
    principal's shared scope (public, or admin: drafts included), compressed ahead at near-best
    quality, its listings in catalogue order (put is an upsert: the order within a page is
    free, and neighbours alike compress better)."""
    key = ("catalogue", principal.scopes[0], state.head, state.last_id, limit, max_bytes)

    async def build() -> tuple[EncodedPage, bool]:
        async def read_catalogue_part(conn: AsyncConnection) -> PullPage:
            return await pull_page(conn, principal, state, limit, max_bytes=max_bytes, tables=1)

        # Any replica that has replayed the snapshot's start will do: the page is the same
        # for every phone, so no one's own writes are in it.
        page = await services.reads.run(read_catalogue_part, at_least=state.head)
        in_catalogue_order(page.changes)
        encoded = EncodedPage(page, best=True)
        await asyncio.to_thread(encoded.compress_ahead)
        return encoded, True

    return await services.pages.shared(key, build)


async def own_rows_page(
    services: Services, principal: Principal, state: SnapshotCursor, limit: int, max_bytes: int
) -> EncodedPage:
    """A first-sync page of the user's own rows from `state`, shared by that user's devices
    (a household's phones, or one phone's reinstall, starting together) while the user's own
    rows stay as they were: keyed by their newest position, so a first sync after the user's
    own write reads it (never a page built before it)."""
    tail = services.live.tail
    await wait_for_tail(services, principal)  # the user's writes this process knows of
    own_heads = tuple(tail.scope_head(scope) for scope in principal.scopes[1:])
    where = (state.head, state.table_index, state.last_id, limit, max_bytes)

    async def build() -> tuple[EncodedPage, bool]:
        async def read_own_rows(conn: AsyncConnection) -> PullPage:
            return await pull_page(conn, principal, state, limit, max_bytes=max_bytes)

        page = await reading.read(services, read_own_rows, writer=principal, after=state.head)
        return EncodedPage(page), True

    if None in own_heads:
        encoded, _shared = await build()
        return encoded
    return await services.pages.shared(("own", principal.scopes, own_heads, *where), build)


def in_catalogue_order(changes: dict[str, TableChanges]) -> None:
    listings = changes.get("listings", {}).get("put")
    if listings:
        listings.sort(key=lambda row: (row["category"], row["title"], row["id"]))


async def shared_page_at(
    services: Services,
    principal: Principal,
    state: CursorState | None,
    limit: int,
    first_sync_limit: int | None = None,
) -> SharedAnswer | None:
    """The shared page for any cursor state (log or snapshot), or None."""
    if isinstance(state, LogCursor):
        return await log_page(services, principal, state.position, limit)
    return await shared_snapshot_page(services, principal, state, first_sync_limit or limit)


async def read_page(
    services: Services,
    principal: Principal,
    state: CursorState | None,
    reset: bool,
    limit: int,
    first_sync_limit: int | None = None,
) -> tuple[PullPage, SharedAnswer | None]:
    """The next page from `state`, and its shared encoding when other phones get the same
    one (then only the cursor is this phone's). From the shared pages, the tail, or the
    database, in that order. `first_sync_limit`: rows per page of a first sync (snapshot
    pages), when it differs from `limit` (sized in bytes when the client gave no limit)."""
    shared = await shared_page_at(services, principal, state, limit, first_sync_limit)
    if shared is not None:
        if not reset:
            return shared.page, shared
        # A reset snapshot (a foreign cursor): the same rows, but this answer says so, and
        # the cached page is shared, never changed in place.
        return replace(shared.page, reset=True), None
    # Not from the tail (`log_page` answers every cursor it covers): from the database.
    snapshot_rows, max_bytes = first_sync_limit or limit, services.settings.pull_page_bytes

    async def read_from_log(conn: AsyncConnection) -> tuple[PullPage, bool, bool]:
        """(page, expired, current): `current` when read on the primary."""
        current = reading.on_primary(services, conn)
        try:
            if isinstance(state, LogCursor):
                return await pull_page(conn, principal, state, limit), False, current
            page = await pull_page(conn, principal, state, snapshot_rows, max_bytes=max_bytes)
            return page, False, current
        except CursorExpired:
            page = await pull_page(conn, principal, None, snapshot_rows, max_bytes=max_bytes)
            return page, True, current

    # A replica that has replayed the cursor's position and the user's own writes answers as
    # the primary would (storage/replicas.py); the primary answers otherwise.
    page, expired, current = await reading.read(
        services, read_from_log, writer=principal, after=position_of(state)
    )
    page.reset = reset or expired
    if current and not page.more and isinstance(page.next_state, LogCursor):
        # Nothing in scope after this position when we read it, and every later commit gets a
        # larger position, so it is a safe head for the fast path. (Not from a replica: what
        # it lacks may already be committed, and the heads must never be below a commit.)
        for scope in principal.scopes:
            try:
                await services.feed.remember_head(scope, page.next_state.position)
            except Exception:
                break
    return page, None


def position_of(state: CursorState | None) -> int:
    """The log position a pull from `state` must include: its cursor's, or the position its
    snapshot's rows must be at least as new as (0 for a new snapshot: any moment will do)."""
    if isinstance(state, LogCursor):
        return state.position
    if isinstance(state, SnapshotCursor):
        return state.head
    return 0


def page_body(services: Services, principal: Principal, page: PullPage) -> dict[str, Any]:
    return {
        "cursor": services.cursors.encode(page.next_state, principal.user_id),
        "more": page.more,
        "reset": page.reset,
        "changes": page.changes,
    }
