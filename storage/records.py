"""Small shared writes that several flows make: in-app notifications and the audit trail."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import insert, select

from storage.changelog import Tx
from storage.db import new_id, now_ms
from storage.models import AdminAction, Device, Notification, User
from storage.outbox import enqueue
from storage.scopes import ADMIN_ONLY, personal_scopes

NOTIFICATION_INSERT = insert(Notification)

# Notification kinds that also go out by email, and the template each uses.
EMAIL_TEMPLATES = {
    "order_pending": "order_confirmation",
    "order_approved": "order_approved",
    "order_rejected": "order_rejected",
    "order_paid": "payment_receipt",
    "order_cancelled": "order_cancelled",
    "order_completed": "order_completed",
    "payment_refund_due": "payment_refund_due",
    "new_purchase_request": "new_request_alert",
    "payment_flagged": "payment_flagged",
}


async def notify(
    tx: Tx, user_id: str, kind: str, title: str, message: str, data: dict[str, Any]
) -> str:
    """Write an in-app notification row (sync delivers it) and, in the same transaction, the
    outbox items that push it to each of the user's devices and, for order events, email it."""
    notification_id = new_id()
    tx.insert_later(
        NOTIFICATION_INSERT,
        {
            "id": notification_id,
            "user_id": user_id,
            "type": kind,
            "title": title,
            "message": message,
            "read": False,
            "data": orjson.dumps({**data, "notification_id": notification_id}).decode(),
            "created_at": now_ms(),
        },
    )
    tx.created("notifications", notification_id, personal_scopes(user_id))
    push_data = {**data, "notification_id": notification_id}
    # Pushes are about orders (a tap opens the order the push names); other notifications
    # stay in-app.
    devices: list[Any] = []
    if data.get("order_id"):

        async def read_devices() -> list[Any]:
            query = select(Device.id, Device.expo_push_token).where(
                Device.user_id == user_id, Device.active.is_(True)
            )
            return list(await tx.conn.execute(query))

        devices = await tx.lookup("devices", user_id, read_devices)
    for device_id, token in devices:
        await enqueue(
            tx,
            "push",
            f"push:{notification_id}:{device_id}",
            token,
            {"title": title, "body": message, "data": push_data},
        )
    template = EMAIL_TEMPLATES.get(kind)
    if template is not None:

        async def read_address() -> str | None:
            query = select(User.email).where(User.id == user_id, User.deleted_at.is_(None))
            return (await tx.conn.execute(query)).scalar_one_or_none()

        address = await tx.lookup("email", user_id, read_address)
        if address is not None:
            await enqueue(
                tx,
                "email",
                f"email:{notification_id}",
                address,
                {"template": template, "title": title, "message": message, "data": push_data},
            )
    return notification_id


async def notify_admins(tx: Tx, kind: str, title: str, message: str, data: dict[str, Any]) -> None:

    async def read_admins() -> list[str]:
        query = select(User.id).where(User.role == "admin", User.deleted_at.is_(None))
        return list((await tx.conn.execute(query)).scalars().all())

    admins = await tx.lookup("admins", "", read_admins)
    for admin_id in admins:
        await notify(tx, admin_id, kind, title, message, data)


async def audit(
    tx: Tx, admin_id: str, action: str, target_table: str, target_id: str, notes: str | None
) -> str:
    action_id = new_id()
    await tx.conn.execute(
        insert(AdminAction).values(
            id=action_id,
            admin_id=admin_id,
            action=action,
            target_table=target_table,
            target_id=target_id,
            notes=notes,
            created_at=now_ms(),
        )
    )
    tx.created("admin_actions", action_id, ADMIN_ONLY)
    return action_id
