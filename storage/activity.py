"""Small buyer writes: interest expressions, notification read state, push devices."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import insert, select, update

from storage.changelog import Tx
from storage.db import new_id, now_ms
from storage.models import Device, InterestExpression, Listing, Notification
from storage.orders import check_client_id
from storage.scopes import Principal, owned_scopes, personal_scopes
from sync_server.errors import MutationRejected


class ExpressInterest(msgspec.Struct, forbid_unknown_fields=True):
    interest_id: str
    listing_id: str
    message: str | None = None


class MarkNotificationsRead(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str]


class RegisterDevice(msgspec.Struct, forbid_unknown_fields=True):
    expo_push_token: str
    platform: str


async def express_interest(tx: Tx, buyer: Principal, args: ExpressInterest) -> dict[str, Any]:
    check_client_id(args.interest_id, "interest_id")
    if args.message is not None and len(args.message) > 1000:
        raise MutationRejected("invalid_args", "message is limited to 1000 characters")
    existing = (
        await tx.conn.execute(
            select(InterestExpression.user_id, InterestExpression.listing_id).where(
                InterestExpression.id == args.interest_id
            )
        )
    ).first()
    if existing is not None:
        if existing.user_id == buyer.user_id and existing.listing_id == args.listing_id:
            return {"interest_id": args.interest_id}  # a replay of the same expression
        raise MutationRejected("duplicate_id", "interest_id is already in use")
    listing = (
        await tx.conn.execute(
            select(Listing.id).where(
                Listing.id == args.listing_id,
                Listing.status == "published",
                Listing.deleted_at.is_(None),
            )
        )
    ).first()
    if listing is None:
        raise MutationRejected("listing_unavailable", f"listing {args.listing_id} is not available")
    await tx.conn.execute(
        insert(InterestExpression).values(
            id=args.interest_id,
            user_id=buyer.user_id,
            listing_id=args.listing_id,
            message=args.message,
            created_at=now_ms(),
        )
    )
    tx.created("interest_expressions", args.interest_id, owned_scopes(buyer.user_id))
    return {"interest_id": args.interest_id}


async def mark_notifications_read(
    tx: Tx, reader: Principal, args: MarkNotificationsRead
) -> dict[str, Any]:
    if len(args.ids) > 500:
        raise MutationRejected("invalid_args", "at most 500 ids at a time")
    if not args.ids:
        return {"updated": 0}
    changed = (
        (
            await tx.conn.execute(
                update(Notification)
                .where(
                    Notification.id.in_(args.ids),
                    Notification.user_id == reader.user_id,
                    Notification.read.is_(False),
                )
                .values(read=True)
                .returning(Notification.id)
            )
        )
        .scalars()
        .all()
    )
    scopes = personal_scopes(reader.user_id)
    for notification_id in changed:
        tx.changed("notifications", notification_id, fields=("read",), before=scopes, after=scopes)
    return {"updated": len(changed)}


async def register_device(tx: Tx, owner: Principal, args: RegisterDevice) -> dict[str, Any]:
    token = args.expo_push_token
    if not (token.startswith(("ExponentPushToken[", "ExpoPushToken[")) and token.endswith("]")):
        raise MutationRejected(
            "invalid_args", "expo_push_token must look like ExponentPushToken[…]"
        )
    if len(token) > 255 or args.platform not in ("android", "ios", "web"):
        raise MutationRejected("invalid_args", "platform must be android, ios or web")
    now = now_ms()
    existing = (
        await tx.conn.execute(select(Device.id).where(Device.expo_push_token == token))
    ).scalar_one_or_none()
    if existing is None:
        device_id = new_id()
        await tx.conn.execute(
            insert(Device).values(
                id=device_id,
                user_id=owner.user_id,
                expo_push_token=token,
                platform=args.platform,
                active=True,
                created_at=now,
                updated_at=now,
            )
        )
    else:
        # A second-hand phone: the token now belongs to whoever signed in on it last.
        device_id = existing
        await tx.conn.execute(
            update(Device)
            .where(Device.id == existing)
            .values(user_id=owner.user_id, platform=args.platform, active=True, updated_at=now)
        )
    return {"device_id": device_id}
