"""Accounts: creation, lookup, export and erasure (Data Protection Act 2017)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.errors import EmailTaken, NotFound
from storage.changelog import Tx
from storage.db import new_id, now_ms
from storage.models import (
    Device,
    InterestExpression,
    Notification,
    Order,
    SyncClient,
    User,
)
from storage.scopes import owned_scopes
from storage.synced import INTERESTS, NOTIFICATIONS, ORDER_ITEMS, ORDERS, PAYMENTS

USER_WIRE = ("id", "email", "name", "phone", "role", "email_verified", "created_at")


def user_to_wire(row: Any) -> dict[str, Any]:
    return {field: row[field] for field in USER_WIRE}


async def create_user(
    tx: Tx, *, email: str, password_hash: str, name: str, phone: str | None, role: str = "user"
) -> dict[str, Any]:
    now = now_ms()
    values = {
        "id": new_id(),
        "email": email.lower(),
        "password_hash": password_hash,
        "name": name,
        "phone": phone,
        "role": role,
        "email_verified": False,
        "created_at": now,
        "updated_at": now,
    }
    savepoint = await tx.conn.begin_nested()
    try:
        await tx.conn.execute(insert(User).values(**values))
    except IntegrityError:
        await savepoint.rollback()
        raise EmailTaken() from None
    await savepoint.commit()
    return user_to_wire(values)


async def find_by_email(conn: AsyncConnection, email: str) -> Any:
    return (
        (
            await conn.execute(
                select(User).where(User.email == email.lower(), User.deleted_at.is_(None))
            )
        )
        .mappings()
        .one_or_none()
    )


async def find_by_id(conn: AsyncConnection, user_id: str) -> Any:
    return (
        (await conn.execute(select(User).where(User.id == user_id, User.deleted_at.is_(None))))
        .mappings()
        .one_or_none()
    )


async def set_role(tx: Tx, user_id: str, role: str, password_hash: str | None = None) -> None:
    values: dict[str, Any] = {"role": role, "updated_at": now_ms()}
    if password_hash is not None:
        values["password_hash"] = password_hash
    await tx.conn.execute(update(User).where(User.id == user_id).values(**values))


async def export_user(conn: AsyncConnection, user_id: str) -> dict[str, Any]:
    """Everything we hold about a person, as JSON (the right of access)."""
    user = await find_by_id(conn, user_id)
    if user is None:
        raise NotFound("No such user.")

    async def rows(table: Any, condition: Any) -> list[dict[str, Any]]:
        result = await conn.execute(table.select_rows().where(condition))
        return [table.encode(row) for row in result.mappings()]

    devices = await conn.execute(
        select(Device.id, Device.platform, Device.active, Device.created_at).where(
            Device.user_id == user_id
        )
    )
    return {
        "user": user_to_wire(user),
        "orders": await rows(ORDERS, Order.user_id == user_id),
        "order_items": await rows(ORDER_ITEMS, Order.user_id == user_id),
        "payments": await rows(PAYMENTS, Order.user_id == user_id),
        "interest_expressions": await rows(INTERESTS, InterestExpression.user_id == user_id),
        "notifications": await rows(NOTIFICATIONS, Notification.user_id == user_id),
        "devices": [dict(row._mapping) for row in devices],
    }


async def erase_user(tx: Tx, user_id: str) -> None:
    """Erase personal data; keep order records (accounting law) without the person in them.

    The account row stays as an anonymous tombstone so orders keep a valid owner; name,
    email, phone, notes, interest messages, notifications and devices are removed.
    """
    now = now_ms()
    # The lock order of storage/orders.py: the user's push clients, then their orders in id
    # order, so an erasure never deadlocks with a batch the same phone is still pushing.
    await tx.conn.execute(delete(SyncClient).where(SyncClient.user_id == user_id))
    if tx.dialect == "postgresql":
        await tx.conn.execute(
            select(Order.id).where(Order.user_id == user_id).order_by(Order.id).with_for_update()
        )
    await tx.conn.execute(
        update(User)
        .where(User.id == user_id)
        .values(
            email=f"erased-{user_id}@invalid",
            name="Erased user",
            phone=None,
            password_hash="!",  # noqa: S106 - no password can match
            deleted_at=now,
            updated_at=now,
        )
    )
    scopes = owned_scopes(user_id)
    order_ids = (
        (
            await tx.conn.execute(
                update(Order)
                .where(Order.user_id == user_id, Order.note.is_not(None))
                .values(note=None, updated_at=now)
                .returning(Order.id)
            )
        )
        .scalars()
        .all()
    )
    for order_id in order_ids:
        tx.changed("orders", order_id, fields=("note", "updated_at"), before=scopes, after=scopes)
    interest_ids = (
        (
            await tx.conn.execute(
                update(InterestExpression)
                .where(InterestExpression.user_id == user_id)
                .values(message=None)
                .returning(InterestExpression.id)
            )
        )
        .scalars()
        .all()
    )
    for interest_id in interest_ids:
        tx.changed(
            "interest_expressions", interest_id, fields=("message",), before=scopes, after=scopes
        )
    notification_ids = (
        (
            await tx.conn.execute(
                delete(Notification)
                .where(Notification.user_id == user_id)
                .returning(Notification.id)
            )
        )
        .scalars()
        .all()
    )
    for notification_id in notification_ids:
        tx.changed(
            "notifications", notification_id, before=frozenset({f"u:{user_id}"}), after=frozenset()
        )
    await tx.conn.execute(delete(Device).where(Device.user_id == user_id))
