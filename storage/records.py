"""Small shared writes that several flows make: in-app notifications and the audit trail."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import insert

from storage.changelog import Tx
from storage.db import new_id, now_ms
from storage.models import AdminAction, Notification
from storage.scopes import ADMIN_ONLY, personal_scopes


async def notify(
    tx: Tx, user_id: str, kind: str, title: str, message: str, data: dict[str, Any]
) -> str:
    """Write an in-app notification row; sync delivers it, the outbox pushes it."""
    notification_id = new_id()
    await tx.conn.execute(
        insert(Notification).values(
            id=notification_id,
            user_id=user_id,
            type=kind,
            title=title,
            message=message,
            read=False,
            data=orjson.dumps({**data, "notification_id": notification_id}).decode(),
            created_at=now_ms(),
        )
    )
    tx.created("notifications", notification_id, personal_scopes(user_id))
    return notification_id


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
