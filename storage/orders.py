"""Orders: purchase requests that reserve stock atomically, and their status changes.

Stock is reserved with one conditional UPDATE per item (`… SET stock = stock - q WHERE
stock >= q`), never read-then-write: the database decides who gets the last unit, so stock
never goes below zero nor sells twice under any concurrency.

The lock order (PostgreSQL; SQLite has a single writer and takes no row locks). Every
transaction that writes orders, listings or payments takes its row locks in this order, so
no two of them can each hold a lock the other waits for (a deadlock, which PostgreSQL only
breaks after `deadlock_timeout`, a second, by failing one of them):
  1. the request's own dedupe row: the push client (`sync_clients`) or the Idempotency-Key;
  2. orders, in id order: cancellations, admin decisions and payment notifications lock the
     order before anything else they touch;
  3. listings, in id order: a purchase reserves stock, a rejection or cancellation releases
     it; a batch locks every listing it will touch up front (`lock_for_batch`);
  4. payments: a notification or a new attempt locks its payment after its order;
  5. inserts of new rows (order ids, notifications, the outbox), which only wait on a
     transaction inserting the same key, and that one already holds what it needs;
  6. the change-log append lock, last of all (storage/changelog.py).
Why orders before listings: an admin rejecting order Y holds Y and then returns Y's stock,
while a buyer's batch [buy from L, cancel Y] would otherwise hold L and then want Y.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update

from protocol.errors import IllegalTransition, MutationRejected, NotFound
from protocol.mutations import PurchaseItem, PurchaseRequest
from storage.changelog import Tx
from storage.db import insert_for, now_ms
from storage.models import Listing, Order, OrderItem
from storage.records import audit, notify, notify_admins
from storage.scopes import Principal, listing_scopes, owned_scopes

MAX_ORDER_TOTAL = 2**31 - 1  # cents


async def lock_listings(tx: Tx, listing_ids: set[str]) -> None:
    """Lock every listing a batch will touch, in id order, before reserving from any."""
    if tx.dialect != "postgresql" or not listing_ids:
        return  # SQLite's single writer needs no row locks
    await tx.conn.execute(
        select(Listing.id)
        .where(Listing.id.in_(sorted(listing_ids)))
        .order_by(Listing.id)
        .with_for_update()
    )


async def lock_orders(tx: Tx, order_ids: set[str]) -> set[str]:
    """Lock existing orders in id order; returns the listings their items reserve from, which
    the caller locks next (orders before listings: see the lock order above)."""
    if not order_ids:
        return set()
    if tx.dialect == "postgresql":
        await tx.conn.execute(
            select(Order.id)
            .where(Order.id.in_(sorted(order_ids)))
            .order_by(Order.id)
            .with_for_update()
        )
    return set(
        (
            await tx.conn.execute(
                select(OrderItem.listing_id).where(OrderItem.order_id.in_(order_ids)).distinct()
            )
        ).scalars()
    )


async def lock_for_batch(tx: Tx, cancelled: set[str], purchased_from: set[str]) -> None:
    """Take a batch's locks up front, in the one order: the orders it cancels, then every
    listing it reserves from or returns stock to."""
    returned_to = await lock_orders(tx, cancelled)
    await lock_listings(tx, purchased_from | returned_to)


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


async def refuse_taken_ids(tx: Tx, request: PurchaseRequest, *, order: bool = True) -> None:
    if order and await find_order(tx.conn, request.order_id) is not None:
        raise MutationRejected("duplicate_id", "order_id is already in use")
    item_ids = [item.item_id for item in request.items]
    taken = (await tx.conn.execute(select(OrderItem.id).where(OrderItem.id.in_(item_ids)))).first()
    if taken is not None:
        raise MutationRejected("duplicate_id", f"item_id {taken[0]} is already in use")


async def place_purchase_request(
    tx: Tx, buyer: Principal, request: PurchaseRequest
) -> dict[str, Any]:
    """Reserve stock and create a pending order, or raise MutationRejected having undone
    what it wrote, so a push needs no savepoint around it (two round trips a purchase, and
    under load a push waits for the event loop once per statement). `request` comes from
    `protocol.mutations.parse` (or typed decoding), which has checked every field.

    Nothing here fails with a database error for a business reason: a reservation that
    finds too little stock updates no row, a taken id inserts nothing (ON CONFLICT DO
    NOTHING), so the transaction stays usable and a refusal is answered by undoing what
    this call wrote, on rows it already holds locked (`PurchaseWrites.undo`)."""
    writes = PurchaseWrites()
    try:
        return await _place(tx, buyer, request, writes)
    except MutationRejected:
        await writes.undo(tx)
        raise


@dataclass
class PurchaseWrites:
    """What a purchase has written so far: stock reserved, and its order row (with items)."""

    reserved: list[tuple[str, int]] = field(default_factory=list)
    order_id: str | None = None

    async def undo(self, tx: Tx) -> None:
        if self.order_id is not None:
            await tx.conn.execute(delete(OrderItem).where(OrderItem.order_id == self.order_id))
            await tx.conn.execute(delete(Order).where(Order.id == self.order_id))
            self.order_id = None
        for listing_id, quantity in self.reserved:
            await tx.conn.execute(
                update(Listing)
                .where(Listing.id == listing_id)
                .values(stock=Listing.stock + quantity)
            )
        self.reserved.clear()


async def _place(
    tx: Tx, buyer: Principal, request: PurchaseRequest, writes: PurchaseWrites
) -> dict[str, Any]:
    # No look for a taken order or item id first: the inserts below refuse one (ON CONFLICT)
    # and the refusal undoes the stock reserved before them. Two statements fewer a purchase.
    conn = tx.conn
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
            await refuse_taken_ids(tx, request)  # a duplicate says so before the stock does
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
        writes.reserved.append((item.listing_id, item.quantity))
        tx.changed(
            "listings",
            item.listing_id,
            fields=("stock",),
            before=listing_scopes("published", False),
            after=listing_scopes("published", False),
        )

    now = now_ms()
    total = order_total(prices, request.items)
    # The check above cannot see an order with this id that another request is creating right
    # now (a retry racing its original, or two devices): ON CONFLICT waits for that one to
    # commit and then refuses, instead of a primary-key error.
    created = await conn.execute(
        insert_for(tx.dialect)(Order)
        .values(
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
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(Order.id)
    )
    if created.first() is None:
        raise MutationRejected("duplicate_id", "order_id is already in use")
    writes.order_id = request.order_id
    inserted_items = (
        await conn.execute(
            insert_for(tx.dialect)(OrderItem)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(OrderItem.id),
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
    ).all()
    if len(inserted_items) != len(request.items):
        await writes.undo(tx)  # first, so that only the id taken before is still there
        await refuse_taken_ids(tx, request, order=False)  # names it
        raise MutationRejected("duplicate_id", "an item_id is already in use")
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
