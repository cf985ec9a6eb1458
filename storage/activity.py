"""Small buyer writes: interest expressions, notification read state, push devices."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, column, literal, select, update, values

from protocol.errors import MutationRejected
from protocol.mutations import ExpressInterest, MarkNotificationsRead, RegisterDevice
from storage.changelog import Tx
from storage.db import insert_for, new_id, now_ms
from storage.models import Device, InterestExpression, Listing, Notification
from storage.scopes import Principal, owned_scopes, personal_scopes


async def _replayed_interest(tx: Tx, buyer: Principal, args: ExpressInterest) -> bool:
    """True for a replay of the same expression; raises for an id someone else's row holds."""
    existing = (
        await tx.conn.execute(
            select(InterestExpression.user_id, InterestExpression.listing_id).where(
                InterestExpression.id == args.interest_id
            )
        )
    ).first()
    if existing is None:
        return False
    if existing.user_id == buyer.user_id and existing.listing_id == args.listing_id:
        return True
    raise MutationRejected("duplicate_id", "interest_id is already in use")


async def insert_interests(tx: Tx, buyer: Principal, batch: list[ExpressInterest]) -> None:
    """A push batch's interest expressions inserted up front, in one statement, as
    `express_interest` inserts each (only for a published listing, only if the id is free);
    `express_interest` then finds its row made. What did not go in is left to it (it tries
    again and reads the reason), so the outcomes are the ones one at a time would give.
    PostgreSQL only (a VALUES list as a table); a batch naming an id twice is left alone."""
    ids = [interest.interest_id for interest in batch]
    if tx.dialect != "postgresql" or len(batch) < 2 or len(set(ids)) != len(ids):
        return
    wanted = values(
        column("id", String), column("listing_id", String), column("message", String), name="wanted"
    ).data([(interest.interest_id, interest.listing_id, interest.message) for interest in batch])
    published = (
        select(
            wanted.c.id,
            literal(buyer.user_id, InterestExpression.user_id.type),
            Listing.id,
            wanted.c.message,
            literal(now_ms(), InterestExpression.created_at.type),
        )
        .select_from(wanted)
        .join(Listing, Listing.id == wanted.c.listing_id)
        .where(Listing.status == "published", Listing.deleted_at.is_(None))
    )
    made = await tx.conn.execute(
        insert_for(tx.dialect)(InterestExpression)
        .from_select(["id", "user_id", "listing_id", "message", "created_at"], published)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(InterestExpression.id)
    )
    for interest_id in made.scalars():
        tx.remember("interest_made", interest_id, True)


async def express_interest(tx: Tx, buyer: Principal, args: ExpressInterest) -> dict[str, Any]:
    """One statement when it is new: the row is inserted only if the listing is published
    (INSERT ... SELECT) and only if the id is free (ON CONFLICT: a twin racing this one, a
    replay while the original is in flight, is waited for). The reasons for no row are read
    only then. Nothing is written before a rejection, so it needs no savepoint
    (`storage.push.NO_SAVEPOINT`). When its push inserted it already (`insert_interests`),
    only recorded."""
    if tx.recall("interest_made", args.interest_id):
        tx.created("interest_expressions", args.interest_id, owned_scopes(buyer.user_id))
        return {"interest_id": args.interest_id}
    published = select(
        literal(args.interest_id, InterestExpression.id.type),
        literal(buyer.user_id, InterestExpression.user_id.type),
        Listing.id,
        literal(args.message, InterestExpression.message.type),
        literal(now_ms(), InterestExpression.created_at.type),
    ).where(
        Listing.id == args.listing_id,
        Listing.status == "published",
        Listing.deleted_at.is_(None),
    )
    created = (
        await tx.conn.execute(
            insert_for(tx.dialect)(InterestExpression)
            .from_select(["id", "user_id", "listing_id", "message", "created_at"], published)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(InterestExpression.id)
        )
    ).first()
    if created is None:
        if await _replayed_interest(tx, buyer, args):
            return {"interest_id": args.interest_id}
        raise MutationRejected("listing_unavailable", f"listing {args.listing_id} is not available")
    tx.created("interest_expressions", args.interest_id, owned_scopes(buyer.user_id))
    return {"interest_id": args.interest_id}


async def mark_notifications_read(
    tx: Tx, reader: Principal, args: MarkNotificationsRead
) -> dict[str, Any]:
    if not args.ids:
        return {"updated": 0}
    await tx.flush_inserts()  # notifications this transaction made are readable too
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
    now = now_ms()
    tx.forget("contacts")  # this token may move between users: every device list may change
    # One row per token, whoever registers it at the same moment: an upsert, not a check
    # then an insert that a second registration racing this one would break.
    # A second-hand phone: the token now belongs to whoever signed in on it last.
    statement = insert_for(tx.dialect)(Device).values(
        id=new_id(),
        user_id=owner.user_id,
        expo_push_token=token,
        platform=args.platform,
        active=True,
        created_at=now,
        updated_at=now,
    )
    device_id = (
        await tx.conn.execute(
            statement.on_conflict_do_update(
                index_elements=["expo_push_token"],
                set_={
                    "user_id": statement.excluded.user_id,
                    "platform": statement.excluded.platform,
                    "active": True,
                    "updated_at": statement.excluded.updated_at,
                },
            ).returning(Device.id)
        )
    ).scalar_one()
    return {"device_id": device_id}
