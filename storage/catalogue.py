"""The public catalogue as one document: every published listing, column by column, and the
change-log position it stands at (the v1.1 catalogue snapshot).

The position is derived from the log, not from the moment of the read, so two instances
reading the same catalogue produce the same document byte for byte: it is the newest entry
of the `public` scope (every change a phone could see in the catalogue is one), or the
pruned floor when the pruning took them all (the catalogue has then not changed since the
floor). A phone that holds the document and pulls from that position replays exactly the
catalogue changes it lacks (see `storage.pull`: a snapshot cursor at that head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import ChangeLogEntry, Listing
from storage.pull import log_bounds
from storage.scopes import PUBLIC
from storage.synced import LISTINGS

# The catalogue's order: by category then title, as a phone lists it. Neighbours alike
# compress better (a sixth smaller than in id order on the demo catalogue), and the id
# breaks ties so the order, and the bytes, are the same on every instance.
CATALOGUE_ORDER = (Listing.category, Listing.title, Listing.id)


@dataclass(frozen=True)
class Catalogue:
    position: int
    columns: dict[str, list[Any]]  # one list per listing wire field, all of one length

    @property
    def size(self) -> int:
        return len(self.columns["id"])


@dataclass(frozen=True)
class CataloguePosition:
    position: int  # where the published catalogue stands (see the module doc)
    head: int  # the newest committed position of the whole log, read at the same time


async def catalogue_position(conn: AsyncConnection) -> CataloguePosition:
    """Where the published catalogue stands now: two indexed reads."""
    bounds = await log_bounds(conn)
    newest = (
        await conn.execute(
            select(func.max(ChangeLogEntry.position)).where(ChangeLogEntry.scope == PUBLIC)
        )
    ).scalar()
    return CataloguePosition(max(int(newest or 0), bounds.floor), bounds.head)


async def read_catalogue(conn: AsyncConnection) -> Catalogue:
    """The published listings and their position, read in one snapshot (the caller's
    transaction: `Database.read`, REPEATABLE READ on PostgreSQL)."""
    position = (await catalogue_position(conn)).position
    query = (
        LISTINGS.select_rows()
        .where(Listing.deleted_at.is_(None), Listing.status == "published")
        .order_by(*CATALOGUE_ORDER)
    )
    columns: dict[str, list[Any]] = {field: [] for field in LISTINGS.wire}
    for row in (await conn.execute(query)).mappings():
        for field, value in LISTINGS.encode(row).items():
            columns[field].append(value)
    return Catalogue(position, columns)
