"""Admin read-only views: the audit log and business analytics."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.errors import ValidationFailed
from storage.analytics import MAURITIUS_OFFSET_SECONDS, report
from storage.db import now_ms
from storage.listings import decode_page_cursor, encode_page_cursor
from storage.models import AdminAction
from storage.synced import ADMIN_ACTIONS
from sync_server import reading
from sync_server.http import doc, json_response, query_int, require_admin
from sync_server.services import services_of

DAY_MS = 86_400_000
# Longer ranges keep only the days that had orders: a range from 1970 would otherwise answer
# with twenty thousand empty days.
MAX_FILLED_DAYS = 366
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def every_day(rows: list[dict[str, Any]], since: int, until: int) -> list[dict[str, Any]]:
    """Per-day rows with every Mauritius day of [since, until) present, the days without an
    order as zeros: a chart of them has a slot per day, and one busy day is one bar among
    empty ones rather than the whole width."""
    offset_ms = MAURITIUS_OFFSET_SECONDS * 1000
    first, last = (since + offset_ms) // DAY_MS, (until - 1 + offset_ms) // DAY_MS
    if last - first + 1 > MAX_FILLED_DAYS or EPOCH_ORDINAL + last > date.max.toordinal():
        return rows
    by_day = {row["day"]: row for row in rows}
    days = (date.fromordinal(EPOCH_ORDINAL + n).isoformat() for n in range(first, last + 1))
    return [by_day.get(day) or {"day": day, "orders": 0, "revenue": 0} for day in days]


@doc(
    "The audit log, newest first, filtered and keyset paged",
    auth="admin",
    tag="admin",
    query=(
        ("admin_id", "Only this admin's actions"),
        ("action", "Only this action (approve, reject, create_listing, …)"),
        ("target_id", "Only actions on this order or listing"),
        ("from", "At or after (ms)"),
        ("to", "Before (ms)"),
        ("cursor", "next_cursor of the previous page"),
        ("limit", "Rows per page"),
    ),
    response="AuditPage",
)
async def audit(request: Request) -> Response:
    admin = await require_admin(request)
    limit = query_int(request, "limit", 50, minimum=1, maximum=200) or 50
    query = ADMIN_ACTIONS.select_rows()
    params = request.query_params
    for name, column in (
        ("admin_id", AdminAction.admin_id),
        ("action", AdminAction.action),
        ("target_id", AdminAction.target_id),
    ):
        if params.get(name):
            query = query.where(column == params[name])
    since, until = query_int(request, "from", minimum=0), query_int(request, "to", minimum=0)
    if since is not None:
        query = query.where(AdminAction.created_at >= since)
    if until is not None:
        query = query.where(AdminAction.created_at < until)
    if params.get("cursor"):
        created_at, action_id = decode_page_cursor(params["cursor"])
        query = query.where(
            (AdminAction.created_at < created_at)
            | ((AdminAction.created_at == created_at) & (AdminAction.id < action_id))
        )
    query = query.order_by(AdminAction.created_at.desc(), AdminAction.id.desc()).limit(limit + 1)

    async def read_actions(conn: AsyncConnection) -> Sequence[RowMapping]:
        found: Sequence[RowMapping] = (await conn.execute(query)).mappings().all()
        return found

    rows = await reading.read(services_of(request), read_actions, writer=admin)
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_page_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"])
    return json_response(
        {"items": [ADMIN_ACTIONS.encode(row) for row in rows[:limit]], "next_cursor": next_cursor}
    )


@doc(
    "Orders and revenue per day (every day of the range up to a year, zeros included), "
    "approval rate and time, conversion, top listings, searches with no results, "
    "active devices",
    auth="admin",
    tag="admin",
    query=(("from", "Start (ms; default 30 days ago)"), ("to", "End (ms; default now)")),
    response="Analytics",
)
async def analytics(request: Request) -> Response:
    admin = await require_admin(request)
    until = query_int(request, "to", minimum=0) or now_ms()
    since = query_int(request, "from", minimum=0)
    since = until - 30 * DAY_MS if since is None else since
    if since >= until:
        raise ValidationFailed("from must be before to", field="from")
    services = services_of(request)

    async def read_report(conn: AsyncConnection) -> dict[str, Any]:
        return await report(conn, services.db.dialect, since, until)

    body = await reading.read(services, read_report, writer=admin)
    body["orders_per_day"] = every_day(body["orders_per_day"], since, until)
    return json_response(body)


routes = [
    Route("/api/admin/audit", audit, methods=["GET"]),
    Route("/api/admin/analytics", analytics, methods=["GET"]),
]
