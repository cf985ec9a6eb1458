"""Buyer REST routes: purchase requests (idempotent), orders, interest, notifications."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.errors import IdempotencyKeyReused, MutationRejected, NotFound, ValidationFailed
from protocol.mutations import ExpressInterest, InvalidArgs, PurchaseRequest, parse, same_purchase
from storage.activity import express_interest
from storage.changelog import Tx
from storage.db import insert_for, new_id, now_ms
from storage.listings import decode_page_cursor, encode_page_cursor
from storage.models import IdempotencyKey, Notification, Order, OrderItem
from storage.orders import place_purchase_request
from storage.scopes import Principal
from storage.synced import NOTIFICATIONS, ORDER_ITEMS, ORDERS
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


def _answer(status_code: int, payload: Any) -> tuple[int, bytes]:
    return status_code, orjson.dumps(payload)


async def _earlier(tx: Tx, buyer: Principal, request: PurchaseRequest) -> tuple[int, bytes] | None:
    """The answer when the order id is already taken: the stored order (200) if it is this
    buyer's and exactly what this request asks for, so a retry after a lost answer gets the
    first outcome; otherwise 409 duplicate_id, as push answers."""
    existing = await order_with_items(tx.conn, request.order_id)
    if existing is None:
        return None
    if existing["user_id"] == buyer.user_id and same_purchase(request, existing):
        return _answer(200, existing)
    return _answer(409, MutationRejected("duplicate_id", "order_id is already in use").envelope())


async def _purchase(tx: Tx, buyer: Principal, request: PurchaseRequest) -> tuple[int, bytes]:
    """One attempt: 201 with the new order, the earlier answer for a taken id, else the error."""
    earlier = await _earlier(tx, buyer, request)
    if earlier is not None:
        return earlier
    checkpoint = tx.checkpoint()
    try:
        await place_purchase_request(tx, buyer, request)  # undoes its own writes if refused
    except MutationRejected as rejection:
        tx.restore(checkpoint)
        if rejection.error_code == "duplicate_id":
            # A twin request created the order while this one ran; it is visible now.
            earlier = await _earlier(tx, buyer, request)
            if earlier is not None:
                return earlier
        return rejection.status_code, orjson.dumps(rejection.envelope())
    return _answer(201, await order_with_items(tx.conn, request.order_id))


def fingerprint(request: PurchaseRequest) -> str:
    """What an Idempotency-Key was used for: the request as decoded (so spacing and key
    order in the JSON text do not matter), hashed."""
    return hashlib.sha256(msgspec.json.encode(request)).hexdigest()


async def _claim_key(tx: Tx, user_id: str, key: str, request_hash: str) -> tuple[int, bytes] | None:
    """Claim an Idempotency-Key, or return the answer its first use earned.

    The insert waits while another transaction holds the same key uncommitted, so a retry
    racing the original waits for it and then replays its outcome. A key first used for a
    different request is refused with 422, as the IETF Idempotency-Key draft says: replaying
    an unrelated order's 201 would tell the app its new order exists.
    """
    async with tx.patient():
        claimed = await tx.conn.execute(
            insert_for(tx.dialect)(IdempotencyKey)
            .values(
                user_id=user_id,
                key=key,
                request_hash=request_hash,
                status_code=0,
                body="",
                created_at=now_ms(),
            )
            .on_conflict_do_nothing(index_elements=["user_id", "key"])
            .returning(IdempotencyKey.key)
        )
    if claimed.first() is not None:
        return None
    stored = (
        await tx.conn.execute(
            select(
                IdempotencyKey.request_hash, IdempotencyKey.status_code, IdempotencyKey.body
            ).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
        )
    ).one()
    if stored.request_hash is not None and stored.request_hash != request_hash:
        return _answer(422, IdempotencyKeyReused().envelope())
    return int(stored.status_code), stored.body.encode()


@doc(
    "Place a purchase request (reserves stock); Idempotency-Key makes retries safe",
    auth="user",
    body=PurchaseRequest,
    status=201,
    tag="orders",
    headers=(("Idempotency-Key", "A retry with the same key returns the first outcome"),),
    response="OrderWithItems",
    errors=(409,),
    other=((200, "This order was already placed (a retry): the order as it is", "OrderWithItems"),),
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
            replay = await _claim_key(tx, buyer.user_id, key, fingerprint(body))
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
    query=(
        ("status", "Only orders in this status"),
        ("cursor", "next_cursor of the previous page"),
        ("limit", "Orders per page"),
    ),
    response="OrderPage",
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


@doc(
    "One order with its items (owner or admin)",
    auth="user",
    tag="orders",
    response="OrderWithItems",
)
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


@doc(
    "Express interest in a listing",
    auth="user",
    body=InterestBody,
    status=201,
    tag="orders",
    response="InterestCreated",
    errors=(409,),
)
async def interest(request: Request) -> Response:
    buyer = await authenticate(request)
    services = services_of(request)
    listing_id = path_param(request, "listing_id")
    body = await read_json(request, InterestBody)
    try:
        args = parse(
            {
                "interest_id": body.interest_id or new_id(),
                "listing_id": listing_id,
                "message": body.message,
            },
            ExpressInterest,
        )
    except InvalidArgs as error:
        raise ValidationFailed(str(error)) from None
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
    "The signed-in user's notifications, newest first",
    auth="user",
    tag="orders",
    query=(("limit", "At most this many (up to 200)"),),
    response="NotificationPage",
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
