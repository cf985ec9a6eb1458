"""Pull, shared by the HTTP route and the WebSocket: cursors, the fast path, one page."""

from __future__ import annotations

from typing import Any

from protocol.cursor import CursorState, ForeignCursor, LogCursor
from storage.pull import CursorExpired, PullPage, pull_page
from storage.scopes import Principal
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


async def nothing_new(services: Services, principal: Principal, state: CursorState | None) -> bool:
    """Fast path: the cached heads prove no change in scope since the cursor (no database)."""
    if not isinstance(state, LogCursor):
        return False
    try:
        heads = await services.feed.heads(principal.scopes)
    except Exception:
        return False
    return all(head is not None and head <= state.position for head in heads)


async def read_page(
    services: Services, principal: Principal, state: CursorState | None, reset: bool, limit: int
) -> PullPage:
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
    return page


def page_body(services: Services, principal: Principal, page: PullPage) -> dict[str, Any]:
    return {
        "cursor": services.cursors.encode(page.next_state, principal.user_id),
        "more": page.more,
        "reset": page.reset,
        "changes": page.changes,
    }
