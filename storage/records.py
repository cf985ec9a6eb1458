"""Small shared writes that several flows make: in-app notifications and the audit trail."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, insert, select

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
    # stay in-app. Emails go for the kinds that have a template.
    template = EMAIL_TEMPLATES.get(kind)
    wants_push = bool(data.get("order_id"))
    if not wants_push and template is None:
        return notification_id
    address, devices = await contacts_of(tx, user_id)
    if wants_push:
        for device_id, token in devices:
            await enqueue(
                tx,
                "push",
                f"push:{notification_id}:{device_id}",
                token,
                {"title": title, "body": message, "data": push_data},
            )
    if template is not None and address is not None:
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
        # With their contacts, in the same query: a purchase notifies the buyer and every
        # admin, and a push waits for the event loop once per statement.
        found = await _read_contacts(tx, and_(User.role == "admin", User.deleted_at.is_(None)))
        return list(found)

    admins = await tx.lookup("admins", "", read_admins)
    for admin_id in admins:
        await notify(tx, admin_id, kind, title, message, data)


Contacts = tuple[str | None, list[tuple[str, str]]]  # (email, [(device id, Expo token)])


async def contacts_of(tx: Tx, user_id: str) -> Contacts:
    """A user's email (None once the account is erased) and active devices, read together,
    once per transaction (`register_device` forgets them: a token may change hands)."""

    async def read() -> Contacts:
        return (await _read_contacts(tx, User.id == user_id)).get(user_id, (None, []))

    contacts: Contacts = await tx.lookup("contacts", user_id, read)
    return contacts


async def _read_contacts(tx: Tx, which: ColumnElement[bool]) -> dict[str, Contacts]:
    """The contacts of the users `which` selects, each remembered for `contacts_of`."""
    rows = (
        await tx.conn.execute(
            select(User.id, User.email, User.deleted_at, Device.id, Device.expo_push_token)
            .select_from(User)
            .outerjoin(Device, and_(Device.user_id == User.id, Device.active.is_(True)))
            .where(which)
        )
    ).all()
    found: dict[str, Contacts] = {}
    for user_id, email, deleted_at, device_id, token in rows:
        entry = found.setdefault(user_id, (email if deleted_at is None else None, []))
        if device_id is not None:
            entry[1].append((device_id, token))
    for user_id, contacts in found.items():
        tx.remember("contacts", user_id, contacts)
    return found


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
