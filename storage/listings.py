"""Listings: admin writes through the change log, and the public search."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, insert, literal_column, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.errors import BadRequest, NotFound
from storage.changelog import Tx
from storage.db import new_id, now_ms
from storage.models import Listing, ListingImage
from storage.records import audit
from storage.scopes import Principal, listing_scopes
from storage.synced import LISTINGS

EDITABLE = ("title", "description", "price", "unit", "stock", "category", "status", "images")
SEARCH_TOKEN = re.compile(r"\w+", re.UNICODE)


async def _replace_images(tx: Tx, listing_id: str, public_ids: list[str]) -> None:
    await tx.conn.execute(delete(ListingImage).where(ListingImage.listing_id == listing_id))
    if public_ids:
        now = now_ms()
        await tx.conn.execute(
            insert(ListingImage),
            [
                {
                    "id": new_id(),
                    "listing_id": listing_id,
                    "public_id": public_id,
                    "position": position,
                    "created_at": now,
                }
                for position, public_id in enumerate(public_ids)
            ],
        )


async def create_listing(
    tx: Tx,
    admin: Principal | None,
    values: dict[str, Any],
    *,
    source: str = "manual",
    source_ref: str | None = None,
    listing_id: str | None = None,
) -> str:
    listing_id = listing_id or new_id()
    now = now_ms()
    images = list(values.get("images") or [])
    await tx.conn.execute(
        insert(Listing).values(
            id=listing_id,
            title=values["title"],
            description=values.get("description") or "",
            price=values["price"],
            unit=values["unit"],
            stock=values.get("stock", 0),
            category=values.get("category") or "other",
            images=orjson.dumps(images).decode(),
            status=values.get("status", "draft"),
            source=source,
            source_ref=source_ref,
            created_at=now,
            updated_at=now,
        )
    )
    await _replace_images(tx, listing_id, images)
    tx.created("listings", listing_id, listing_scopes(values.get("status", "draft"), False))
    if admin is not None:
        await audit(tx, admin.user_id, "create_listing", "listings", listing_id, None)
    return listing_id


async def locked_listing(tx: Tx, listing_id: str) -> Any:
    """The listing's row as it is now, locked until the transaction ends (PostgreSQL; SQLite
    has one writer)."""
    query = LISTINGS.select_rows().where(Listing.id == listing_id)
    if tx.dialect == "postgresql":
        query = query.with_for_update()
    return (await tx.conn.execute(query)).mappings().one_or_none()


async def update_listing(
    tx: Tx,
    admin: Principal | None,
    listing_id: str,
    values: dict[str, Any],
    *,
    action: str = "update_listing",
) -> None:
    current = await locked_listing(tx, listing_id)
    if current is None or current["deleted_at"] is not None:
        raise NotFound("No such listing.")
    wire = LISTINGS.encode(current)
    changes = {
        key: value for key, value in values.items() if key in EDITABLE and wire[key] != value
    }
    if not changes:
        return
    stored = dict(changes)
    if "images" in changes:
        await _replace_images(tx, listing_id, list(changes["images"]))
        stored["images"] = orjson.dumps(list(changes["images"])).decode()
    stored["updated_at"] = now_ms()
    await tx.conn.execute(update(Listing).where(Listing.id == listing_id).values(**stored))
    tx.changed(
        "listings",
        listing_id,
        fields=stored.keys(),
        before=listing_scopes(current["status"], False),
        after=listing_scopes(changes.get("status", current["status"]), False),
    )
    if admin is not None:  # None: the Facebook import, which is not an admin's action
        await audit(tx, admin.user_id, action, "listings", listing_id, _describe(changes))


def _describe(changes: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in sorted(changes.items()))[:1000]


async def delete_listing(tx: Tx, admin: Principal, listing_id: str) -> None:
    """Soft delete: order items keep pointing at the row; every replica receives a `del`."""
    current = await locked_listing(tx, listing_id)
    if current is None or current["deleted_at"] is not None:
        raise NotFound("No such listing.")
    now = now_ms()
    await tx.conn.execute(
        update(Listing).where(Listing.id == listing_id).values(deleted_at=now, updated_at=now)
    )
    tx.changed(
        "listings",
        listing_id,
        fields=("updated_at",),
        before=listing_scopes(current["status"], False),
        after=listing_scopes("", True),
    )
    await audit(tx, admin.user_id, "delete_listing", "listings", listing_id, None)


@dataclass(frozen=True)
class ListingQuery:
    q: str | None = None
    category: str | None = None
    min_price: int | None = None
    max_price: int | None = None
    in_stock: bool | None = None
    cursor: str | None = None
    limit: int = 20


def encode_page_cursor(created_at: int, listing_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at}:{listing_id}".encode()).rstrip(b"=").decode()


def decode_page_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, listing_id = raw.split(":", 1)
        return int(created_at), listing_id
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("cursor is not valid", code="invalid_cursor") from None


def search_tokens(q: str) -> list[str]:
    return SEARCH_TOKEN.findall(q.lower())[:8]


async def search_listings(
    conn: AsyncConnection, dialect: str, principal: Principal | None, query: ListingQuery
) -> tuple[list[dict[str, Any]], str | None]:
    """Keyset-paged search, newest first; users and anonymous visitors see published only."""
    statement = LISTINGS.select_rows().add_columns(Listing.created_at)
    statement = statement.where(
        LISTINGS.visible_to(principal or Principal(user_id="", role="user"))
    )
    tokens = search_tokens(query.q) if query.q else []
    if query.q is not None and query.q.strip() and not tokens:
        return [], None
    if tokens:
        if dialect == "postgresql":
            statement = statement.where(
                text("listings.search_vector @@ to_tsquery('fr_unaccent', :tsquery)").bindparams(
                    tsquery=" & ".join(f"{token}:*" for token in tokens)
                )
            )
        else:
            match = " ".join('"' + token.replace('"', '""') + '"*' for token in tokens)
            statement = statement.where(
                Listing.id.in_(
                    select(literal_column("listing_id"))
                    .select_from(text("listings_fts"))
                    .where(text("listings_fts MATCH :match").bindparams(match=match))
                )
            )
    if query.category:
        statement = statement.where(Listing.category == query.category)
    if query.min_price is not None:
        statement = statement.where(Listing.price >= query.min_price)
    if query.max_price is not None:
        statement = statement.where(Listing.price <= query.max_price)
    if query.in_stock is True:
        statement = statement.where(Listing.stock > 0)
    elif query.in_stock is False:
        statement = statement.where(Listing.stock == 0)
    if query.cursor:
        created_at, listing_id = decode_page_cursor(query.cursor)
        statement = statement.where(
            (Listing.created_at < created_at)
            | ((Listing.created_at == created_at) & (Listing.id < listing_id))
        )
    statement = statement.order_by(Listing.created_at.desc(), Listing.id.desc()).limit(
        query.limit + 1
    )
    rows = (await conn.execute(statement)).mappings().all()
    items = [LISTINGS.encode(row) for row in rows[: query.limit]]
    next_cursor = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1]
        next_cursor = encode_page_cursor(last["created_at"], last["id"])
    return items, next_cursor


async def get_listing(
    conn: AsyncConnection, principal: Principal | None, listing_id: str
) -> dict[str, Any]:
    viewer = principal or Principal(user_id="", role="user")
    row = (
        (
            await conn.execute(
                LISTINGS.select_rows().where(Listing.id == listing_id, LISTINGS.visible_to(viewer))
            )
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise NotFound("No such listing.")
    return LISTINGS.encode(row)
