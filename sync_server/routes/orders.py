"""Buyer REST routes: purchase requests (idempotent), orders, interest, notifications."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from storage.activity import ExpressInterest, express_interest
from storage.changelog import Tx
from storage.db import new_id, now_ms
from storage.listings import decode_page_cursor, encode_page_cursor
from storage.models import IdempotencyKey, Notification, Order, OrderItem
from storage.orders import PurchaseRequest, place_purchase_request
from storage.scopes import Principal
from storage.synced import NOTIFICATIONS, ORDER_ITEMS, ORDERS
from sync_server.errors import MutationRejected, NotFound, ValidationFailed
from sync_server.http import (
    authenticate,
    doc,
    json_response,
    path_param,
    query_int,
    read_json,
)
from sync_server.services import services_of


async def order_with_items(conn: AsyncConnection, order_id: str) -> dict[str, Any] | None:
    row = (
        (await conn.execute(ORDERS.select_rows().where(Order.id == order_id)))
        .mappings()
        .one_or_none()
    )
    if row is None:
        return None
    items = (
        (
            await conn.execute(
                ORDER_ITEMS.select_rows()
                .where(OrderItem.order_id == order_id)
                .order_by(OrderItem.id)
            )
        )
        .mappings()
        .all()
    )
    return {**ORDERS.encode(row), "items": [ORDER_ITEMS.encode(item) for item in items]}


async def _purchase(tx: Tx, buyer: Principal, request: PurchaseRequest) -> tuple[int, bytes]:
    """One attempt: 201 with the order, 200 for a replay of the same order id, else the error."""
    existing = await order_with_items(tx.conn, request.order_id)
    if existing is not None and existing["user_id"] == buyer.user_id:
        return 200, orjson.dumps(existing)
    checkpoint = tx.checkpoint()
    savepoint = await tx.conn.begin_nested()
    try:
        await place_purchase_request(tx, buyer, request)
    except MutationRejected as rejection:
        await savepoint.rollback()
        tx.restore(checkpoint)
        return rejection.status_code, orjson.dumps(rejection.envelope())
    await savepoint.commit()
    order = await order_with_items(tx.conn, request.order_id)
    return 201, orjson.dumps(order)


async def _claim_key(tx: Tx, user_id: str, key: str) -> tuple[int, bytes] | None:
    """Claim an Idempotency-Key, or return the outcome stored by the request that claimed it.

    The insert blocks while another transaction holds the same key uncommitted, so a retry
    racing the original waits for it and then replays its outcome.
    """
    insert_for = postgresql.insert if tx.dialect == "postgresql" else sqlite.insert
    claimed = (
        await tx.conn.execute(
            insert_for(IdempotencyKey)
            .values(user_id=user_id, key=key, status_code=0, body="", created_at=now_ms())
            .on_conflict_do_nothing(index_elements=["user_id", "key"])
            .returning(IdempotencyKey.key)
        )
    ).first()
    if claimed is not None:
        return None
    stored = (
        await tx.conn.execute(
            select(IdempotencyKey.status_code, IdempotencyKey.body).where(
                IdempotencyKey.user_id == user_id, IdempotencyKey.key == key
            )
        )
    ).one()
    return int(stored.status_code), stored.body.encode()


@doc(
    "Place a purchase request (reserves stock); Idempotency-Key makes retries safe",
    auth="user",
    body=PurchaseRequest,
    status=201,
    tag="orders",
)
async def purchase_request(request: Request) -> Response:
    buyer = await authenticate(request)
    services = services_of(request)
    body = await read_json(request, PurchaseRequest)
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 200 characters", field="Idempotency-Key"
        )

    async def work(tx: Tx) -> tuple[int, bytes]:
        if key is not None:
            replay = await _claim_key(tx, buyer.user_id, key)
            if replay is not None:
                return replay
        status_code, payload = await _purchase(tx, buyer, body)
        if key is not None:
            await tx.conn.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.user_id == buyer.user_id, IdempotencyKey.key == key)
                .values(status_code=status_code, body=payload.decode())
            )
        return status_code, payload

    status_code, payload = await services.changelog.run(work)
    if status_code == 201:
        services.track(buyer.user_id, "purchase_initiated", order_id=body.order_id)
    return Response(payload, status_code=status_code, media_type="application/json")


@doc(
    "The signed-in user's orders, newest first",
    auth="user",
    tag="orders",
    query=("status", "cursor", "limit"),
)
async def list_orders(request: Request) -> Response:
    buyer = await authenticate(request)
    services = services_of(request)
    limit = query_int(request, "limit", 20, minimum=1, maximum=100) or 20
    async with services.db.read() as conn:
        items, next_cursor = await page_orders(conn, request, limit, user_id=buyer.user_id)
    return json_response({"items": items, "next_cursor": next_cursor})


async def page_orders(
    conn: AsyncConnection, request: Request, limit: int, *, user_id: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    query = ORDERS.select_rows()
    if user_id is not None:
        query = query.where(Order.user_id == user_id)
    status = request.query_params.get("status")
    if status:
        query = query.where(Order.status == status)
    buyer = request.query_params.get("user_id")
    if buyer and user_id is None:
        query = query.where(Order.user_id == buyer)
    since, until = query_int(request, "from", minimum=0), query_int(request, "to", minimum=0)
    if since is not None:
        query = query.where(Order.created_at >= since)
    if until is not None:
        query = query.where(Order.created_at < until)
    listing_id = request.query_params.get("listing_id")
    if listing_id:
        query = query.where(
            Order.id.in_(select(OrderItem.order_id).where(OrderItem.listing_id == listing_id))
        )
    cursor = request.query_params.get("cursor")
    if cursor:
        created_at, order_id = decode_page_cursor(cursor)
        query = query.where(
            (Order.created_at < created_at)
            | ((Order.created_at == created_at) & (Order.id < order_id))
        )
    rows = (
        (
            await conn.execute(
                query.order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
            )
        )
        .mappings()
        .all()
    )
    items = [ORDERS.encode(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_page_cursor(last["created_at"], last["id"])
    return items, next_cursor


@doc("One order with its items (owner or admin)", auth="user", tag="orders")
async def get_order(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    order_id = path_param(request, "order_id")
    async with services.db.read() as conn:
        order = await order_with_items(conn, order_id)
    # Someone else's order is answered like a missing one: ids are not confirmed to strangers.
    if order is None or (order["user_id"] != principal.user_id and not principal.is_admin):
        raise NotFound("No such order.")
    return json_response(order)


class InterestBody(msgspec.Struct, forbid_unknown_fields=True):
    interest_id: str | None = None
    message: str | None = None


@doc("Express interest in a listing", auth="user", body=InterestBody, status=201, tag="orders")
async def interest(request: Request) -> Response:
    buyer = await authenticate(request)
    services = services_of(request)
    listing_id = path_param(request, "listing_id")
    body = await read_json(request, InterestBody)
    args = ExpressInterest(
        interest_id=body.interest_id or new_id(), listing_id=listing_id, message=body.message
    )
    result = await services.changelog.run(lambda tx: express_interest(tx, buyer, args))
    services.track(buyer.user_id, "interest_expressed", listing_id=listing_id)
    return json_response(
        {
            "id": result["interest_id"],
            "listing_id": listing_id,
            "user_id": buyer.user_id,
            "message": body.message,
        },
        201,
    )


@doc(
    "The signed-in user's notifications, newest first", auth="user", tag="orders", query=("limit",)
)
async def notifications(request: Request) -> Response:
    reader = await authenticate(request)
    services = services_of(request)
    limit = query_int(request, "limit", 50, minimum=1, maximum=200) or 50
    async with services.db.read() as conn:
        rows = (
            (
                await conn.execute(
                    NOTIFICATIONS.select_rows()
                    .where(Notification.user_id == reader.user_id)
                    .order_by(Notification.created_at.desc(), Notification.id.desc())
                    .limit(limit)
                )
            )
            .mappings()
            .all()
        )
    return json_response(
        {"items": [NOTIFICATIONS.encode(row) for row in rows], "next_cursor": None}
    )


routes = [
    Route("/api/orders/purchase-request", purchase_request, methods=["POST"]),
    Route("/api/orders", list_orders, methods=["GET"]),
    Route("/api/orders/{order_id}", get_order, methods=["GET"]),
    Route("/api/listings/{listing_id}/interest", interest, methods=["POST"]),
    Route("/api/notifications", notifications, methods=["GET"]),
]
