"""Business figures for the admin dashboard, computed by SQL on either database.

Days are Mauritius days (UTC+4, no daylight saving), so "today" matches the shop's clock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, case, cast, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from storage.models import (
    AdminAction,
    Device,
    InterestExpression,
    Listing,
    Order,
    OrderItem,
    SearchLog,
)

MAURITIUS_OFFSET_SECONDS = 4 * 3600
REVENUE_STATUSES = ("approved", "paid", "completed")


def day_of(column: Any, dialect: str) -> ColumnElement[str]:
    seconds = column / 1000 + MAURITIUS_OFFSET_SECONDS
    if dialect == "postgresql":
        return func.to_char(func.to_timestamp(seconds).op("AT TIME ZONE")("UTC"), "YYYY-MM-DD")
    return func.date(cast(seconds, Integer), "unixepoch")


async def report(conn: AsyncConnection, dialect: str, since: int, until: int) -> dict[str, Any]:
    in_range = (Order.created_at >= since) & (Order.created_at < until)
    day = day_of(Order.created_at, dialect).label("day")
    per_day = (
        (
            await conn.execute(
                select(
                    day,
                    func.count().label("orders"),
                    func.coalesce(
                        func.sum(case((Order.status.in_(REVENUE_STATUSES), Order.total), else_=0)),
                        0,
                    ).label("revenue"),
                )
                .where(in_range)
                .group_by(day)
                .order_by(day)
            )
        )
        .mappings()
        .all()
    )

    decided = (
        (
            await conn.execute(
                select(
                    func.count().filter(Order.approved_at.is_not(None)).label("approved"),
                    func.count().filter(Order.status == "rejected").label("rejected"),
                    func.avg(Order.approved_at - Order.created_at).label("approve_ms"),
                ).where(in_range)
            )
        )
        .mappings()
        .one()
    )
    decisions = int(decided["approved"]) + int(decided["rejected"])

    interested = func.count(distinct(InterestExpression.user_id)).label("interested")
    interest_rows = (
        await conn.execute(
            select(InterestExpression.listing_id, Listing.title, interested)
            .join(Listing, Listing.id == InterestExpression.listing_id)
            .where(InterestExpression.created_at >= since, InterestExpression.created_at < until)
            .group_by(InterestExpression.listing_id, Listing.title)
        )
    ).all()
    conversion = []
    for listing_id, title, people in interest_rows:
        bought = (
            await conn.execute(
                select(func.count(distinct(Order.user_id)))
                .join(OrderItem, OrderItem.order_id == Order.id)
                .join(
                    InterestExpression,
                    (InterestExpression.user_id == Order.user_id)
                    & (InterestExpression.listing_id == OrderItem.listing_id),
                )
                .where(
                    OrderItem.listing_id == listing_id,
                    in_range,
                    Order.created_at >= InterestExpression.created_at,
                )
            )
        ).scalar_one()
        conversion.append(
            {
                "listing_id": listing_id,
                "title": title,
                "interested": people,
                "purchased": int(bought),
                "rate": round(int(bought) / people, 3) if people else 0.0,
            }
        )

    quantity = func.sum(OrderItem.quantity).label("quantity")
    top = (
        (
            await conn.execute(
                select(
                    OrderItem.listing_id,
                    Listing.title,
                    quantity,
                    func.sum(OrderItem.quantity * OrderItem.price).label("revenue"),
                )
                .join(Order, Order.id == OrderItem.order_id)
                .join(Listing, Listing.id == OrderItem.listing_id)
                .where(in_range, Order.status.in_(REVENUE_STATUSES))
                .group_by(OrderItem.listing_id, Listing.title)
                .order_by(quantity.desc())
                .limit(10)
            )
        )
        .mappings()
        .all()
    )

    searches = func.count().label("searches")
    empty_searches = (
        (
            await conn.execute(
                select(func.lower(SearchLog.query).label("query"), searches)
                .where(
                    SearchLog.results == 0,
                    SearchLog.created_at >= since,
                    SearchLog.created_at < until,
                )
                .group_by(func.lower(SearchLog.query))
                .order_by(searches.desc())
                .limit(20)
            )
        )
        .mappings()
        .all()
    )

    active_devices = (
        await conn.execute(
            select(func.count())
            .select_from(Device)
            .where(Device.active.is_(True), Device.updated_at >= since)
        )
    ).scalar_one()
    actions = (
        await conn.execute(
            select(func.count())
            .select_from(AdminAction)
            .where(AdminAction.created_at >= since, AdminAction.created_at < until)
        )
    ).scalar_one()

    return {
        "from": since,
        "to": until,
        "orders_per_day": [dict(row) for row in per_day],
        "approval_rate": round(int(decided["approved"]) / decisions, 3) if decisions else None,
        "mean_time_to_approve_seconds": (
            round(float(decided["approve_ms"]) / 1000, 1) if decided["approve_ms"] else None
        ),
        "interest_conversion": conversion,
        "top_listings": [dict(row) for row in top],
        "searches_without_results": [dict(row) for row in empty_searches],
        "active_devices": int(active_devices),
        "admin_actions": int(actions),
    }
