"""Read-only work that a replica may answer (`storage.replicas`), and what it must include.

A read for a person must include what that person wrote: their push, on whichever instance
took it, is in their next pull; an admin's approval is in the list they look at next. Every
write announces the newest position of each scope it touched (`storage.feed`), so the position
a read must include is the newest one announced in the reader's own scopes, read from the
shared cache (not only from this process, which may not have heard yet). (A cached head is an upper
bound of the scope's newest entry: a pull that reached the end remembers its position. So the
rule may ask a replica for a little more than needed, never for less.) A position that is no
longer cached (heads live HEAD_CACHE_SECONDS) is older than any replica in rotation can lag
(REPLICA_MAX_LAG_SECONDS is checked against it at start-up). When the shared cache cannot be
asked, the primary answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from storage.scopes import ADMIN, PUBLIC, Principal
from sync_server.services import Services

T = TypeVar("T")


async def newest_announced(services: Services, scopes: tuple[str, ...]) -> int | None:
    """The newest position announced in `scopes` (0: none), or None when the shared heads
    cannot be asked, or may have lost announcements lately (a Redis failover): then only the
    primary is sure to hold them."""
    if not services.feed.heads_trusted:
        return None
    try:
        return await services.feed.newest(scopes)
    except Exception:
        return None


async def own_writes(services: Services, principal: Principal | None) -> int | None:
    """The position a read for `principal` must include for their own writes to be in it
    (0 for nobody's: an anonymous reader wrote nothing); None when it cannot be known now."""
    if principal is None:
        return 0
    # A buyer writes only their own scope; an admin's writes (listings, decisions) are all in
    # the admin scope as well.
    return await newest_announced(
        services, principal.scopes if principal.is_admin else principal.scopes[1:]
    )


async def read(
    services: Services,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    writer: Principal | None,
    after: int | None = 0,
) -> T:
    """`work(conn)` on a replica when one holds position `after` (a cursor's; None: the
    primary only) and the `writer`'s own writes (the person the answer is for, when what they
    wrote is in it), else on the primary. `work` may run twice: it only reads."""
    if not services.reads.replicas or after is None:
        return await services.reads.run(work, at_least=after)
    own = await own_writes(services, writer)
    return await services.reads.run(work, at_least=None if own is None else max(after, own))


async def catalogue_position(services: Services, principal: Principal | None) -> int | None:
    """The newest change announced in the catalogue the reader sees (public, or admin): what
    a listing page must hold to be cached as current (sync_server/routes/listings.py). 0 with
    no replica (every read is the primary's); None when the heads cannot be asked or trusted."""
    if not services.reads.replicas:
        return 0
    scope = ADMIN if principal is not None and principal.is_admin else PUBLIC
    return await newest_announced(services, (scope,))


def on_primary(services: Services, conn: AsyncConnection) -> bool:
    """Whether `conn` is the primary's (what it read is current as of now, not a moment ago)."""
    return conn.engine is services.db.engine
