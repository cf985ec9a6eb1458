"""Orders: purchase requests that reserve stock atomically, and their status changes.

Stock is reserved with one conditional UPDATE per item (`… SET stock = stock - q WHERE
stock >= q`), never read-then-write: the database decides who gets the last unit, so stock
never goes below zero nor sells twice under any concurrency. Items are reserved in listing
id order so two requests for the same listings always lock rows in the same order.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from sqlalchemy import insert, select, update

from storage.changelog import Tx
from storage.db import now_ms
from storage.models import Listing, Order, OrderItem
from storage.records import audit, notify, notify_admins
from storage.scopes import Principal, listing_scopes, owned_scopes
from sync_server.errors import IllegalTransition, MutationRejected, NotFound

CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
PAYMENT_METHODS = ("juice", "myt_money", "card", "cod")
MAX_ITEMS = 50
MAX_QUANTITY = 100_000
MAX_ORDER_TOTAL = 2**31 - 1  # cents


class PurchaseItem(msgspec.Struct, forbid_unknown_fields=True):
    item_id: str
    listing_id: str
    quantity: int


class PurchaseRequest(msgspec.Struct, forbid_unknown_fields=True):
    order_id: str
    items: list[PurchaseItem]
    payment_method: str
    note: str | None = None


def check_client_id(value: str, field: str) -> None:
    if not CLIENT_ID.match(value):
        raise MutationRejected("invalid_args", f"{field} must match [A-Za-z0-9_-]{{8,64}}")


def validate_purchase(request: PurchaseRequest) -> None:
    check_client_id(request.order_id, "order_id")
    if not request.items:
        raise MutationRejected("invalid_args", "items must not be empty")
    if len(request.items) > MAX_ITEMS:
        raise MutationRejected("invalid_args", f"at most {MAX_ITEMS} items per order")
    seen: set[str] = set()
    for item in request.items:
        check_client_id(item.item_id, "items[].item_id")
        if item.item_id in seen:
            raise MutationRejected("invalid_args", "items[].item_id must be unique")
        seen.add(item.item_id)
        if not 0 < item.quantity <= MAX_QUANTITY:
            raise MutationRejected("invalid_args", "items[].quantity must be 1..100000")
    if request.payment_method not in PAYMENT_METHODS:
        raise MutationRejected(
            "invalid_args", f"payment_method must be one of {', '.join(PAYMENT_METHODS)}"
        )
    if request.note is not None and len(request.note) > 1000:
        raise MutationRejected("invalid_args", "note is limited to 1000 characters")


async def lock_listings(tx: Tx, listing_ids: set[str]) -> None:
    """Lock every listing a batch will reserve from, in id order, before reserving any.

    Each request sorts its own items, but a batch of several requests would otherwise lock
    in batch order, and two batches naming the same listings in different orders deadlock.
    """
    if tx.dialect != "postgresql" or not listing_ids:
        return  # SQLite's single writer needs no row locks
    await tx.conn.execute(
        select(Listing.id)
        .where(Listing.id.in_(sorted(listing_ids)))
        .order_by(Listing.id)
        .with_for_update()
    )


def listings_named(args: dict[str, Any]) -> set[str]:
    """The listing ids a purchase_request's raw args name (before validation)."""
    items = args.get("items")
    if not isinstance(items, list):
        return set()
    return {
        item["listing_id"]
        for item in items
        if isinstance(item, dict) and isinstance(item.get("listing_id"), str)
    }


async def find_order(tx_conn: Any, order_id: str, *, for_update: bool = False) -> Any:
    query = select(Order).where(Order.id == order_id)
    if for_update:
        query = query.with_for_update()
    return (await tx_conn.execute(query)).mappings().one_or_none()


def order_total(prices: dict[str, int], items: list[PurchaseItem]) -> int:
    """The total in cents, refused past what `orders.total` (32-bit on PostgreSQL) holds:
    Rs 21 million is no produce order, and a database error would repeat on every resend."""
    total = sum(prices[item.item_id] * item.quantity for item in items)
    if total > MAX_ORDER_TOTAL:
        raise MutationRejected("invalid_args", "the order total is larger than allowed")
    return total


async def place_purchase_request(
    tx: Tx, buyer: Principal, request: PurchaseRequest
) -> dict[str, Any]:
    """Reserve stock and create a pending order, or raise MutationRejected (nothing written)."""
    validate_purchase(request)
    conn = tx.conn
    if await find_order(conn, request.order_id) is not None:
        raise MutationRejected("duplicate_id", "order_id is already in use")
    item_ids = [item.item_id for item in request.items]
    taken = (await conn.execute(select(OrderItem.id).where(OrderItem.id.in_(item_ids)))).first()
    if taken is not None:
        raise MutationRejected("duplicate_id", f"item_id {taken[0]} is already in use")

    prices: dict[str, int] = {}
    for item in sorted(request.items, key=lambda entry: (entry.listing_id, entry.item_id)):
        reserved = (
            await conn.execute(
                update(Listing)
                .where(
                    Listing.id == item.listing_id,
                    Listing.status == "published",
                    Listing.deleted_at.is_(None),
                    Listing.stock >= item.quantity,
                )
                .values(stock=Listing.stock - item.quantity)
                .returning(Listing.price)
            )
        ).first()
        if reserved is None:
            listing = (
                await conn.execute(
                    select(Listing.status, Listing.deleted_at).where(Listing.id == item.listing_id)
                )
            ).first()
            if listing is None or listing.status != "published" or listing.deleted_at is not None:
                raise MutationRejected(
                    "listing_unavailable", f"listing {item.listing_id} is not available"
                )
            raise MutationRejected("out_of_stock", f"not enough stock of listing {item.listing_id}")
        prices[item.item_id] = int(reserved.price)
        tx.changed(
            "listings",
            item.listing_id,
            fields=("stock",),
            before=listing_scopes("published", False),
            after=listing_scopes("published", False),
        )

    now = now_ms()
    total = order_total(prices, request.items)
    await conn.execute(
        insert(Order).values(
            id=request.order_id,
            user_id=buyer.user_id,
            status="pending",
            payment_method=request.payment_method,
            payment_status="unpaid",
            total=total,
            note=request.note,
            created_at=now,
            updated_at=now,
        )
    )
    await conn.execute(
        insert(OrderItem),
        [
            {
                "id": item.item_id,
                "order_id": request.order_id,
                "listing_id": item.listing_id,
                "quantity": item.quantity,
                "price": prices[item.item_id],
            }
            for item in request.items
        ],
    )
    scopes = owned_scopes(buyer.user_id)
    tx.created("orders", request.order_id, scopes)
    for item in request.items:
        tx.created("order_items", item.item_id, scopes)
    await notify(
        tx,
        buyer.user_id,
        "order_pending",
        "Purchase request received",
        f"We received your order of Rs {total / 100:,.2f}; it awaits approval.",
        {"order_id": request.order_id},
    )
    await notify_admins(
        tx,
        "new_purchase_request",
        "New purchase request",
        f"A buyer asks for {len(request.items)} item(s), Rs {total / 100:,.2f}.",
        {"order_id": request.order_id},
    )
    return {"order_id": request.order_id, "status": "pending", "total": total}


async def _release_stock(tx: Tx, order_id: str) -> None:
    items = (
        await tx.conn.execute(
            select(OrderItem.listing_id, OrderItem.quantity)
            .where(OrderItem.order_id == order_id)
            .order_by(OrderItem.listing_id)
        )
    ).all()
    for listing_id, quantity in items:
        row = (
            await tx.conn.execute(
                update(Listing)
                .where(Listing.id == listing_id)
                .values(stock=Listing.stock + quantity)
                .returning(Listing.status, Listing.deleted_at)
            )
        ).first()
        if row is not None:
            scopes = listing_scopes(row.status, row.deleted_at is not None)
            tx.changed("listings", listing_id, fields=("stock",), before=scopes, after=scopes)


async def _transition(
    tx: Tx, order_id: str, allowed_from: tuple[str, ...], target: str, **values: Any
) -> Any:
    """Move an order to `target` only if it is in one of `allowed_from`, atomically."""
    now = now_ms()
    row = (
        await tx.conn.execute(
            update(Order)
            .where(Order.id == order_id, Order.status.in_(allowed_from))
            .values(status=target, updated_at=now, **values)
            .returning(Order.user_id, Order.total)
        )
    ).first()
    if row is None:
        current = await find_order(tx.conn, order_id)
        if current is None:
            raise NotFound("No such order.")
        raise IllegalTransition(
            f"An order that is {current['status']} cannot become {target}.",
            code=f"order_{current['status']}",
        )
    fields = ("status", "updated_at", *values)
    tx.changed(
        "orders",
        order_id,
        fields=fields,
        before=owned_scopes(row.user_id),
        after=owned_scopes(row.user_id),
    )
    return row


async def approve_order(tx: Tx, admin: Principal, order_id: str, notes: str | None) -> None:
    row = await _transition(tx, order_id, ("pending",), "approved", approved_at=now_ms())
    await audit(tx, admin.user_id, "approve_order", "orders", order_id, notes)
    await notify(
        tx,
        row.user_id,
        "order_approved",
        "Order approved",
        "Your order was approved." + (f" {notes}" if notes else ""),
        {"order_id": order_id},
    )


async def reject_order(tx: Tx, admin: Principal, order_id: str, reason: str) -> None:
    row = await _transition(tx, order_id, ("pending",), "rejected", reject_reason=reason)
    await _release_stock(tx, order_id)
    await audit(tx, admin.user_id, "reject_order", "orders", order_id, reason)
    await notify(
        tx,
        row.user_id,
        "order_rejected",
        "Order rejected",
        f"Your order was rejected: {reason}",
        {"order_id": order_id},
    )


async def cancel_order(tx: Tx, actor: Principal, order_id: str) -> dict[str, Any]:
    order = await find_order(tx.conn, order_id)
    if order is None or (order["user_id"] != actor.user_id and not actor.is_admin):
        raise MutationRejected("not_found", "No such order.")
    try:
        row = await _transition(tx, order_id, ("pending", "approved"), "cancelled")
    except IllegalTransition as error:
        raise MutationRejected(error.error_code, error.message) from None
    await _release_stock(tx, order_id)
    if actor.is_admin and actor.user_id != order["user_id"]:
        await audit(tx, actor.user_id, "cancel_order", "orders", order_id, None)
    await notify(
        tx,
        row.user_id,
        "order_cancelled",
        "Order cancelled",
        "Your order was cancelled.",
        {"order_id": order_id},
    )
    return {"order_id": order_id, "status": "cancelled"}


async def set_order_paid(tx: Tx, order_id: str) -> None:
    """A verified online payment: approved → paid (the notification is written by the caller)."""
    await _transition(tx, order_id, ("approved",), "paid", payment_status="paid")


async def set_payment_state(
    tx: Tx, admin: Principal, order_id: str, action: str, notes: str | None
) -> None:
    """Cash on delivery: an admin records the cash (`mark_paid`) and the hand-over (`complete`)."""
    if action == "mark_paid":
        row = await _transition(tx, order_id, ("approved",), "paid", payment_status="paid")
        message, kind = "We received your payment. Thank you!", "order_paid"
    else:
        row = await _transition(tx, order_id, ("paid",), "completed")
        message, kind = "Your order is complete. Enjoy!", "order_completed"
    await audit(tx, admin.user_id, action, "orders", order_id, notes)
    await notify(
        tx, row.user_id, kind, kind.replace("_", " ").capitalize(), message, {"order_id": order_id}
    )
