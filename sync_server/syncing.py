"""Pull, shared by the HTTP route and the WebSocket: cursors, the fast path, one page."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from protocol.cursor import CursorState, ForeignCursor, LogCursor, SnapshotCursor
from storage.pull import CursorExpired, PullPage, catalogue_start, pull_page
from storage.scopes import Principal
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


async def shared_snapshot_page(
    services: Services, principal: Principal, state: SnapshotCursor | None, limit: int
) -> SharedAnswer | None:
    """A first-sync page that holds only catalogue rows is the same for every phone starting
    from the same position: read from the database once, shared (and a page of a user's own
    rows, by that user's devices). Phones starting a snapshot
    within a few seconds start it at one position (`LiveHub.snapshot_origin`: any committed
    position is a valid start, the log replays what came after it)."""
    if state is None:
        origin = services.live.snapshot_origin()
        if origin is None:
            return None
        state = SnapshotCursor(origin, 0, "")
    where = (state.head, state.table_index, state.last_id, limit)
    # Catalogue pages are everyone's; the pages of a user's own rows are shared by that
    # user's devices (a household's phones, or one phone's reinstall, starting together)
    # while the user's own rows stay as they were: keyed by their newest position, so a
    # first sync after the user's own write reads it (never a page built before it).
    tail = services.live.tail
    await wait_for_tail(services, principal)  # the user's writes this process knows of
    own_heads = tuple(tail.scope_head(scope) for scope in principal.scopes[1:])
    everyone = ("snapshot", principal.scopes[0], *where)
    mine = ("snapshot", principal.scopes, own_heads, *where) if None not in own_heads else None
    start = state

    async def read() -> EncodedPage:
        async with services.db.read() as conn:
            return EncodedPage(await pull_page(conn, principal, start, limit))

    async def build_for_everyone() -> tuple[EncodedPage, bool]:
        cached = services.pages.get(mine) if mine is not None else None
        if cached is not None:
            return cached, False
        encoded = await read()
        following = encoded.page.next_state
        if (
            encoded.page.more
            and isinstance(following, SnapshotCursor)
            and following.table_index == 0
        ):
            return encoded, True
        # Where the catalogue ends and the user's own rows begin: this user's page.
        if mine is not None:
            services.pages.put(mine, encoded)
        return encoded, False

    async def build_for_me() -> tuple[EncodedPage, bool]:
        return await read(), True

    try:
        if state.table_index == 0:
            encoded = await services.pages.shared(everyone, build_for_everyone)
        elif mine is not None:
            encoded = await services.pages.shared(mine, build_for_me)
        else:
            encoded = await read()
    except CursorExpired:
        return None
    return SharedAnswer(encoded, {}, encoded.page.more, encoded.page.next_state)


async def shared_page_at(
    services: Services, principal: Principal, state: CursorState | None, limit: int
) -> SharedAnswer | None:
    """The shared page for any cursor state (log or snapshot), or None."""
    if isinstance(state, LogCursor):
        return await log_page(services, principal, state.position, limit)
    return await shared_snapshot_page(services, principal, state, limit)


async def read_page(
    services: Services, principal: Principal, state: CursorState | None, reset: bool, limit: int
) -> tuple[PullPage, SharedAnswer | None]:
    """The next page from `state`, and its shared encoding when other phones get the same
    one (then only the cursor is this phone's). From the shared pages, the tail, or the
    database, in that order."""
    shared = await shared_page_at(services, principal, state, limit)
    if shared is not None:
        if not reset:
            return shared.page, shared
        # A reset snapshot (a foreign cursor): the same rows, but this answer says so, and
        # the cached page is shared, never changed in place.
        return replace(shared.page, reset=True), None
    # Not from the tail (`log_page` answers every cursor it covers): from the database.
    async with services.db.read() as conn:
        try:
            page = await pull_page(conn, principal, state, limit)
        except CursorExpired:
            page = await pull_page(conn, principal, None, limit)
            reset = True
    page.reset = reset
    if not page.more and isinstance(page.next_state, LogCursor):
        # Nothing in scope after this position when we read it, and every later commit gets a
        # larger position, so it is a safe head for the fast path.
        for scope in principal.scopes:
            try:
                await services.feed.remember_head(scope, page.next_state.position)
            except Exception:
                break
    return page, None


def page_body(services: Services, principal: Principal, page: PullPage) -> dict[str, Any]:
    return {
        "cursor": services.cursors.encode(page.next_state, principal.user_id),
        "more": page.more,
        "reset": page.reset,
        "changes": page.changes,
    }
