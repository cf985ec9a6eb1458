"""Payments: attempts on approved orders, and gateway notifications applied exactly once.

Rules a notification never breaks: it is stored raw before anything acts on it; an amount or
currency that differs from the attempt flags the payment (and alerts admins) instead of paying
the order; a repeated success changes nothing; a late failure never downgrades a payment that
is already `paid`; a second successful attempt for an order already paid is flagged, since
someone must refund it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from protocol.errors import IllegalTransition, NotFound
from storage.changelog import Tx
from storage.db import Database, new_id, now_ms
from storage.models import Order, Payment, PaymentEvent
from storage.orders import find_order, set_order_paid
from storage.records import notify, notify_admins
from storage.scopes import Principal, owned_scopes


@dataclass(frozen=True)
class VerifiedNotification:
    """A payment notification the gateway has vouched for (the payments integration makes
    it from the aggregator's callback); what `apply_notification` accepts."""

    status: str  # "success" | "fail"
    attempt_id: str
    transaction_id: str | None
    amount_cents: int
    currency: str
    payment_method: str | None


async def open_attempt(tx: Tx, buyer: Principal, order_id: str, method: str) -> dict[str, Any]:
    """The pending attempt to pay this order with this method: reused if one exists, so a
    retried request sends the gateway the same `id_order` and can never charge twice."""
    # Locked, so two requests at once cannot both find no attempt and open two.
    order = await find_order(tx.conn, order_id, for_update=tx.dialect == "postgresql")
    if order is None or order["user_id"] != buyer.user_id:
        raise NotFound("No such order.")
    if order["status"] != "approved":
        raise IllegalTransition(
            f"Only approved orders can be paid; this one is {order['status']}.",
            code="order_not_payable",
        )
    existing = (
        (
            await tx.conn.execute(
                select(Payment).where(
                    Payment.order_id == order_id,
                    Payment.method == method,
                    Payment.status == "pending",
                )
            )
        )
        .mappings()
        .first()
    )
    if existing is not None:
        return dict(existing)
    now = now_ms()
    payment = {
        "id": new_id(),
        "order_id": order_id,
        "method": method,
        "status": "pending",
        "amount": order["total"],
        "currency": "MUR",
        "transaction_id": None,
        "created_at": now,
        "updated_at": now,
    }
    await tx.conn.execute(insert(Payment).values(**payment))
    tx.created("payments", payment["id"], owned_scopes(order["user_id"]))
    return payment


async def store_event(db: Database, provider: str, raw: str) -> int:
    async with db.write() as conn:
        result = await conn.execute(
            insert(PaymentEvent)
            .values(provider=provider, raw=raw[:10_000], received_at=now_ms())
            .returning(PaymentEvent.id)
        )
        return int(result.scalar_one())


async def mark_event(db: Database, event_id: int, outcome: str, payment_id: str | None) -> None:
    async with db.write() as conn:
        await conn.execute(
            update(PaymentEvent)
            .where(PaymentEvent.id == event_id)
            .values(outcome=outcome, payment_id=payment_id)
        )


async def _set_payment(tx: Tx, payment: Any, owner: str, **values: Any) -> None:
    values["updated_at"] = now_ms()
    await tx.conn.execute(update(Payment).where(Payment.id == payment["id"]).values(**values))
    tx.changed(
        "payments",
        payment["id"],
        fields=values.keys(),
        before=owned_scopes(owner),
        after=owned_scopes(owner),
    )


async def apply_notification(tx: Tx, note: VerifiedNotification) -> tuple[str, str | None]:
    """Returns (outcome, payment id): paid | already_paid | failed | flagged | unknown.

    The order is locked before its payment (the lock order in storage/orders.py), so a
    cancellation racing this notification is either entirely before it (the money arrived
    for a cancelled order: flagged for a refund) or entirely after it (the order is paid and
    can no longer be cancelled) — never a 409 for a payment the gateway already took.
    """
    attempt = (
        await tx.conn.execute(select(Payment.order_id).where(Payment.id == note.attempt_id))
    ).first()
    if attempt is None:
        return "unknown", None
    locking = tx.dialect == "postgresql"
    order = await find_order(tx.conn, attempt.order_id, for_update=locking)
    assert order is not None
    query = select(Payment).where(Payment.id == note.attempt_id)
    if locking:
        query = query.with_for_update()  # two deliveries of one IMN apply it once
    payment = (await tx.conn.execute(query)).mappings().one()
    owner = order["user_id"]
    if payment["status"] == "paid":
        return "already_paid", payment["id"]  # a repeat, or a late failure: never downgrade
    if note.status == "fail":
        if payment["status"] == "pending":
            await _set_payment(tx, payment, owner, status="failed")
        return "failed", payment["id"]
    if payment["status"] == "flagged":
        return "flagged", payment["id"]
    mismatch = note.amount_cents != payment["amount"] or note.currency.upper() != "MUR"
    paid_elsewhere = order["payment_status"] == "paid" or order["status"] != "approved"
    if mismatch or paid_elsewhere:
        # Money the gateway took that cannot pay this order is never dropped: the payment is
        # kept as `flagged` with its transaction id, and admins are told to review or refund.
        await _set_payment(tx, payment, owner, status="flagged", transaction_id=note.transaction_id)
        if mismatch:
            reason = "amount or currency differs from the order"
        elif order["status"] == "cancelled":
            reason = "the order was cancelled: refund due"
        else:
            reason = f"the order is already {order['status']}"
        await notify_admins(
            tx,
            "payment_flagged",
            "Payment needs review",
            f"Payment {payment['id']} for order {order['id']}: {reason}.",
            {"order_id": order["id"], "payment_id": payment["id"]},
        )
        if order["status"] == "cancelled":
            await notify(
                tx,
                owner,
                "payment_refund_due",
                "Payment to be refunded",
                f"Your order was cancelled before your payment of Rs "
                f"{payment['amount'] / 100:,.2f} arrived; we will refund it.",
                {"order_id": order["id"], "payment_id": payment["id"]},
            )
        return "flagged", payment["id"]
    await _set_payment(tx, payment, owner, status="paid", transaction_id=note.transaction_id)
    await set_order_paid(tx, order["id"])
    await notify(
        tx,
        owner,
        "order_paid",
        "Payment received",
        f"We received Rs {payment['amount'] / 100:,.2f}. Thank you!",
        {"order_id": order["id"], "payment_id": payment["id"]},
    )
    return "paid", payment["id"]


async def expire_stale_attempts(tx: Tx, older_than_ms: int) -> int:
    """Attempts nobody paid within the window are failed, so a new one can be started."""
    now = now_ms()
    # One conditional UPDATE, not read-then-write: a payment confirmed between the read and
    # the write must stay paid (it would be failed, then flagged on the gateway's resend).
    expired = (
        await tx.conn.execute(
            update(Payment)
            .where(Payment.status == "pending", Payment.created_at < now - older_than_ms)
            .values(status="failed", updated_at=now)
            .returning(Payment.id, Payment.order_id)
        )
    ).all()
    owners = dict(
        (
            await tx.conn.execute(
                select(Order.id, Order.user_id).where(
                    Order.id.in_({order_id for _id, order_id in expired})
                )
            )
        ).all()
    )
    for payment_id, order_id in expired:
        scopes = owned_scopes(owners[order_id])
        tx.changed(
            "payments", payment_id, fields=("status", "updated_at"), before=scopes, after=scopes
        )
    return len(expired)
