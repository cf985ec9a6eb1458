"""Admin REST routes: listings, order decisions. Every action writes `admin_actions`.

Authentication and the role check come before the body is read, so a user posting to an
admin route gets 403 whatever the body.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from integrations.media.cloudinary_media import is_valid_public_id
from protocol.cursor import LogCursor
from protocol.errors import NotConfigured, NotFound, ValidationFailed
from storage import listings as listing_store
from storage import orders as order_store
from storage.changelog import Tx
from storage.scopes import Principal
from sync_server import reading
from sync_server.http import (
    doc,
    json_response,
    no_content,
    path_param,
    query_int,
    read_json,
    require_admin,
)
from sync_server.routes.orders import order_with_items, page_orders
from sync_server.services import services_of

UNITS = ("kg", "g", "lb", "piece", "bunch", "dozen", "pack", "litre", "bag", "tray")
STATUSES = ("draft", "published", "archived")


class ListingBody(msgspec.Struct, forbid_unknown_fields=True):
    title: str
    price: int
    unit: str
    stock: int = 0
    description: str = ""
    category: str = "other"
    images: list[str] = []
    status: str = "draft"


class ListingPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    title: str | msgspec.UnsetType = msgspec.UNSET
    price: int | msgspec.UnsetType = msgspec.UNSET
    unit: str | msgspec.UnsetType = msgspec.UNSET
    stock: int | msgspec.UnsetType = msgspec.UNSET
    description: str | msgspec.UnsetType = msgspec.UNSET
    category: str | msgspec.UnsetType = msgspec.UNSET
    images: list[str] | msgspec.UnsetType = msgspec.UNSET
    status: str | msgspec.UnsetType = msgspec.UNSET


class ApproveBody(msgspec.Struct, forbid_unknown_fields=True):
    notes: str | None = None


class RejectBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str


class NotesBody(msgspec.Struct, forbid_unknown_fields=True):
    notes: str | None = None


class SignBody(msgspec.Struct, forbid_unknown_fields=True):
    folder: str = "listings"
    public_id: str | None = None


def check_listing_values(values: dict[str, Any]) -> None:
    checks = {
        "title": lambda v: isinstance(v, str) and 1 <= len(v.strip()) <= 200,
        "price": lambda v: isinstance(v, int) and 0 <= v <= 100_000_000,
        "stock": lambda v: isinstance(v, int) and 0 <= v <= 1_000_000,
        "unit": lambda v: v in UNITS,
        "status": lambda v: v in STATUSES,
        "category": lambda v: isinstance(v, str) and 1 <= len(v) <= 40,
        "description": lambda v: isinstance(v, str) and len(v) <= 5000,
        "images": lambda v: len(v) <= 20 and all(is_valid_public_id(i) for i in v),
    }
    messages = {
        "title": "title must be 1 to 200 characters",
        "price": "price is integer cents, 0 to 100000000",
        "stock": "stock must be 0 to 1000000",
        "unit": f"unit must be one of {', '.join(UNITS)}",
        "status": f"status must be one of {', '.join(STATUSES)}",
        "category": "category must be 1 to 40 characters",
        "description": "description is limited to 5000 characters",
        "images": "images are up to 20 Cloudinary public ids",
    }
    for field, value in values.items():
        if field in checks and not checks[field](value):
            raise ValidationFailed(messages[field], field=field)


async def _listing(request: Request, listing_id: str, admin: Principal) -> dict[str, Any]:
    async def read_listing(conn: AsyncConnection) -> dict[str, Any]:
        return await listing_store.get_listing(conn, admin, listing_id)

    # Often right after this admin's write: a replica answers only once it holds that.
    return await reading.read(services_of(request), read_listing, writer=admin)


@doc(
    "Create a listing", auth="admin", body=ListingBody, status=201, tag="admin", response="Listing"
)
async def create_listing(request: Request) -> Response:
    admin = await require_admin(request)
    body = await read_json(request, ListingBody)
    values = msgspec.structs.asdict(body)
    check_listing_values(values)
    services = services_of(request)
    listing_id = await services.changelog.run(
        lambda tx: listing_store.create_listing(tx, admin, values)
    )
    return json_response(await _listing(request, listing_id, admin), 201)


@doc(
    "Edit, publish, unpublish or archive a listing; adjust stock; reorder images",
    auth="admin",
    body=ListingPatch,
    tag="admin",
    response="Listing",
)
async def patch_listing(request: Request) -> Response:
    admin = await require_admin(request)
    listing_id = path_param(request, "listing_id")
    body = await read_json(request, ListingPatch)
    values = {
        key: value
        for key, value in msgspec.structs.asdict(body).items()
        if value is not msgspec.UNSET
    }
    check_listing_values(values)
    services = services_of(request)
    await services.changelog.run(
        lambda tx: listing_store.update_listing(tx, admin, listing_id, values)
    )
    return json_response(await _listing(request, listing_id, admin))


@doc("Delete a listing (soft: orders keep their items)", auth="admin", status=204, tag="admin")
async def delete_listing(request: Request) -> Response:
    admin = await require_admin(request)
    listing_id = path_param(request, "listing_id")
    await services_of(request).changelog.run(
        lambda tx: listing_store.delete_listing(tx, admin, listing_id)
    )
    return no_content()


@doc(
    "Orders, filtered and keyset paged",
    auth="admin",
    tag="admin",
    query=(
        ("status", "Only orders in this status (pending: the queue)"),
        ("from", "Created at or after (ms)"),
        ("to", "Created before (ms)"),
        ("user_id", "Only this buyer's"),
        ("listing_id", "Only orders of this listing"),
        ("cursor", "next_cursor of the previous page"),
        ("limit", "Orders per page"),
    ),
    response="OrderPage",
)
async def list_orders(request: Request) -> Response:
    admin = await require_admin(request)
    limit = query_int(request, "limit", 50, minimum=1, maximum=200) or 50

    async def read_orders(conn: AsyncConnection) -> tuple[list[dict[str, Any]], str | None]:
        return await page_orders(conn, request, limit)

    items, next_cursor = await reading.read(services_of(request), read_orders, writer=admin)
    return json_response({"items": items, "next_cursor": next_cursor})


@doc(
    "A sync cursor at the current head of the change log, for a live feed that needs no "
    "snapshot (the dashboard)",
    auth="admin",
    tag="admin",
    response="LiveCursor",
)
async def live_cursor(request: Request) -> Response:
    # The dashboard's socket only signals "orders changed" and the page reloads the queue
    # over REST; a hello without a cursor would stream the whole admin scope (every order
    # ever) first. A position is visible only once every lower one has committed (the
    # change log appends under a lock as each transaction's last step), so the head is a
    # cursor that skips nothing.
    admin = await require_admin(request)
    services = services_of(request)
    async with services.db.read() as conn:
        head = await services.changelog.head(conn)
    return json_response({"cursor": services.cursors.encode(LogCursor(head), admin.user_id)})


async def _decide(request: Request, admin: Principal, work: Any) -> Response:
    order_id = path_param(request, "order_id")
    services = services_of(request)

    async def run(tx: Tx) -> None:
        await work(tx, admin, order_id)

    await services.changelog.run(run)
    decision = request.url.path.rsplit("/", 1)[-1]
    if decision in ("approve", "reject"):
        services.track(admin.user_id, f"order_{decision}d", order_id=order_id)
    async with services.db.read() as conn:
        order = await order_with_items(conn, order_id)
    if order is None:
        raise NotFound("No such order.")
    return json_response(order)


@doc(
    "Approve a pending order",
    auth="admin",
    body=ApproveBody,
    tag="admin",
    response="OrderWithItems",
    errors=(409,),
)
async def approve(request: Request) -> Response:
    admin = await require_admin(request)
    body = await read_json(request, ApproveBody) if await request.body() else ApproveBody()
    return await _decide(
        request,
        admin,
        lambda tx, admin, order_id: order_store.approve_order(tx, admin, order_id, body.notes),
    )


@doc(
    "Reject a pending order (releases its stock)",
    auth="admin",
    body=RejectBody,
    tag="admin",
    response="OrderWithItems",
    errors=(409,),
)
async def reject(request: Request) -> Response:
    admin = await require_admin(request)
    body = await read_json(request, RejectBody)
    reason = body.reason.strip()
    if not 1 <= len(reason) <= 1000:
        raise ValidationFailed("reason must be 1 to 1000 characters", field="reason")
    return await _decide(
        request,
        admin,
        lambda tx, admin, order_id: order_store.reject_order(tx, admin, order_id, reason),
    )


@doc(
    "Cash on delivery: record the payment of an approved order",
    auth="admin",
    body=NotesBody,
    tag="admin",
    response="OrderWithItems",
    errors=(409,),
)
async def mark_paid(request: Request) -> Response:
    admin = await require_admin(request)
    body = await read_json(request, NotesBody) if await request.body() else NotesBody()
    return await _decide(
        request,
        admin,
        lambda tx, admin, order_id: order_store.set_payment_state(
            tx, admin, order_id, "mark_paid", body.notes
        ),
    )


@doc(
    "Mark a paid order completed (handed over)",
    auth="admin",
    body=NotesBody,
    tag="admin",
    response="OrderWithItems",
    errors=(409,),
)
async def complete(request: Request) -> Response:
    admin = await require_admin(request)
    body = await read_json(request, NotesBody) if await request.body() else NotesBody()
    return await _decide(
        request,
        admin,
        lambda tx, admin, order_id: order_store.set_payment_state(
            tx, admin, order_id, "complete", body.notes
        ),
    )


@doc(
    "Cloudinary signed direct-upload parameters (valid one hour)",
    auth="admin",
    body=SignBody,
    tag="admin",
    response="MediaSignature",
    errors=(404,),
)
async def sign_media(request: Request) -> Response:
    await require_admin(request)
    body = await read_json(request, SignBody)
    media = services_of(request).media
    if media is None:
        raise NotConfigured("Image upload is off: CLOUDINARY_URL is not set.")
    params: dict[str, str] = {"folder": f"freshroots/{body.folder}"}
    if body.public_id is not None:
        params["public_id"] = body.public_id
    for name, value in params.items():
        if not is_valid_public_id(value):
            raise ValidationFailed(f"{name} has characters Cloudinary ids may not hold", field=name)
    signed = media.sign_upload(params, now=int(time.time()))
    upload_url = signed.pop("upload_url")
    return json_response({"upload_url": upload_url, "params": signed})


routes = [
    Route("/api/admin/listings", create_listing, methods=["POST"]),
    Route("/api/admin/listings/{listing_id}", patch_listing, methods=["PATCH"]),
    Route("/api/admin/listings/{listing_id}", delete_listing, methods=["DELETE"]),
    Route("/api/admin/orders", list_orders, methods=["GET"]),
    Route("/api/admin/live/cursor", live_cursor, methods=["GET"]),
    Route("/api/admin/media/sign", sign_media, methods=["POST"]),
    Route("/api/admin/orders/{order_id}/approve", approve, methods=["PUT"]),
    Route("/api/admin/orders/{order_id}/reject", reject, methods=["PUT"]),
    Route("/api/admin/orders/{order_id}/mark-paid", mark_paid, methods=["PUT"]),
    Route("/api/admin/orders/{order_id}/complete", complete, methods=["PUT"]),
]
