"""WatermelonDB's sync protocol on our change log: pull as created/updated/deleted, push as
one transaction of purchase requests, interests and read receipts.

`timestamp` is a change-log position plus one (WatermelonDB wants a number of at least 1 and
never sees an empty log's position 0), so it never skips a change committed out of order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.cursor import CursorState, LogCursor
from protocol.errors import BadRequest, Conflict, MutationRejected
from protocol.mutations import (
    MAX_READ_IDS,
    ExpressInterest,
    InvalidArgs,
    MarkNotificationsRead,
    PurchaseRequest,
    parse,
)
from storage.activity import express_interest, mark_notifications_read
from storage.changelog import Tx
from storage.db import insert_for, now_ms
from storage.models import ChangeLogEntry, Listing, Order, OrderItem
from storage.orders import (
    MAX_ORDER_TOTAL,
    cancel_order,
    find_order,
    lock_for_batch,
    place_purchase_request,
)
from storage.pull import CursorExpired, PullPage, pull_page
from storage.records import notify
from storage.scopes import Principal, owned_scopes
from storage.synced import BY_NAME
from storage.tail import ChangeTail

PAGE = 1000
WRITABLE_CREATE = {"orders", "order_items", "interest_expressions"}


def to_raw(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """WatermelonDB columns hold scalars: arrays and objects travel as JSON strings."""
    json_fields = BY_NAME[table].json_fields
    return {
        key: orjson.dumps(value).decode() if key in json_fields else value
        for key, value in row.items()
    }


def cursor_of(last_pulled_at: int | None) -> LogCursor | None:
    """`timestamp` is a log position plus one; none (or 0) means a first sync."""
    if last_pulled_at is None or last_pulled_at <= 0:
        return None
    return LogCursor(last_pulled_at - 1)


async def pull(
    conn: AsyncConnection, principal: Principal, last_pulled_at: int | None
) -> dict[str, Any]:
    """From the database, every page in one snapshot."""

    async def page_at(state: CursorState | None) -> PullPage:
        return await pull_page(conn, principal, state, PAGE, full_rows=True)

    return await _assemble(page_at, cursor_of(last_pulled_at))


def pull_from_tail(tail: ChangeTail, principal: Principal, after: int) -> dict[str, Any] | None:
    """The same answer from the process's shared tail, or None when it does not cover
    `after`. Every page comes from the tail as it is now (no await between pages)."""
    if not tail.covers(after):
        return None
    pages: list[PullPage] = []
    state = LogCursor(after)
    while True:
        page = tail.page(principal.scopes, state.position, PAGE, full_rows=True)
        assert page is not None and isinstance(page.next_state, LogCursor)
        pages.append(page)
        state = page.next_state
        if not page.more:
            break
    return _decide(pages, state, replacement=False)


async def _assemble(
    page_at: Callable[[CursorState | None], Awaitable[PullPage]], state: CursorState | None
) -> dict[str, Any]:
    pages: list[PullPage] = []
    replacement = False
    while True:
        try:
            page = await page_at(state)
        except CursorExpired:
            if replacement:  # cannot happen inside one snapshot; never loop on it
                raise
            # Older than the log keeps, or newer than its head (a restored database): a full
            # snapshot, which the app must treat as the whole truth, so rows it holds that are
            # gone meanwhile are deleted too (WatermelonDB's replacement sync).
            replacement = True
            page = await page_at(None)
        pages.append(page)
        state = page.next_state
        if not page.more:
            break
    assert isinstance(state, LogCursor)
    return _decide(pages, state, replacement=replacement)


def _decide(pages: list[PullPage], end: LogCursor, *, replacement: bool) -> dict[str, Any]:
    # One decision per record, whatever number of pages it took: WatermelonDB fails a sync
    # that names a record twice ("Cannot update a record with pending changes"). Pages are
    # read in order from one state, so a later page's decision supersedes an earlier one.
    decided: dict[str, dict[str, tuple[str, Any]]] = {}
    for page in pages:
        for table, table_changes in page.changes.items():
            records = decided.setdefault(table, {})
            for row in table_changes.get("put", []):
                records[row["id"]] = ("created", row)
            for row in table_changes.get("patch", []):
                earlier = records.get(row["id"])
                records[row["id"]] = (
                    "created" if earlier and earlier[0] == "created" else "updated",
                    row,
                )
            for row_id in table_changes.get("del", []):
                records[row_id] = ("deleted", row_id)
    changes: dict[str, dict[str, list[Any]]] = {}
    for table, records in decided.items():
        bucket = changes[table] = {"created": [], "updated": [], "deleted": []}
        for kind, value in records.values():
            bucket[kind].append(value if kind == "deleted" else to_raw(table, value))
    result: dict[str, Any] = {"changes": changes, "timestamp": end.position + 1}
    if replacement:
        result["experimentalStrategy"] = "replacement"
    return result


def _records(changes: dict[str, Any], table: str, kind: str) -> list[Any]:
    """One list of a push, checked for shape: objects with a string id, or (deleted) ids.
    A malformed push is a 400 that changes nothing, never a crash halfway through."""
    bucket = changes.get(table) or {}
    if not isinstance(bucket, dict):
        raise BadRequest(f"changes.{table} must be an object", code="invalid_changes")
    records = bucket.get(kind) or []
    if not isinstance(records, list):
        raise BadRequest(f"changes.{table}.{kind} must be a list", code="invalid_changes")
    for record in records:
        if kind == "deleted":
            record_id = record
        elif isinstance(record, dict):
            record_id = record.get("id")
        else:
            raise BadRequest(f"changes.{table}.{kind} holds a non-object", code="invalid_changes")
        if not isinstance(record_id, str) or not 0 < len(record_id) <= 64:
            raise BadRequest(
                f"changes.{table}.{kind} holds a record without a string id",
                code="invalid_changes",
            )
    return records


async def _changed_since(tx: Tx, table: str, row_id: str, position: int | None) -> bool:
    if position is None:
        return True
    found = (
        await tx.conn.execute(
            select(ChangeLogEntry.position)
            .where(
                ChangeLogEntry.table_name == table,
                ChangeLogEntry.row_id == row_id,
                ChangeLogEntry.position > position,
            )
            .limit(1)
        )
    ).first()
    return found is not None


async def _record_rejected_order(
    tx: Tx, buyer: Principal, request: PurchaseRequest, reason: str
) -> None:
    """An unfulfillable request is kept as a `rejected` order so the next pull shows why."""
    prices = dict(
        (
            await tx.conn.execute(
                select(Listing.id, Listing.price).where(
                    Listing.id.in_([item.listing_id for item in request.items])
                )
            )
        ).all()
    )
    items = [item for item in request.items if item.listing_id in prices]
    total = sum(prices[item.listing_id] * item.quantity for item in items)
    now = now_ms()
    recorded = (
        await tx.conn.execute(
            insert_for(tx.dialect)(Order)
            .values(
                id=request.order_id,
                user_id=buyer.user_id,
                status="rejected",
                payment_method=request.payment_method,
                payment_status="unpaid",
                total=total if total <= MAX_ORDER_TOTAL else 0,  # a record of a refusal
                note=request.note,
                reject_reason=reason,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(Order.id)
        )
    ).first()
    if recorded is None:
        return  # a twin push of the same record recorded it (or placed it) meanwhile
    if items:
        await tx.conn.execute(
            insert_for(tx.dialect)(OrderItem).on_conflict_do_nothing(index_elements=["id"]),
            [
                {
                    "id": item.item_id,
                    "order_id": request.order_id,
                    "listing_id": item.listing_id,
                    "quantity": item.quantity,
                    "price": prices[item.listing_id],
                }
                for item in items
            ],
        )
    scopes = owned_scopes(buyer.user_id)
    tx.created("orders", request.order_id, scopes)
    for item in items:
        tx.created("order_items", item.item_id, scopes)
    await notify(
        tx,
        buyer.user_id,
        "order_rejected",
        "Order could not be placed",
        f"Your order could not be placed: {reason.replace('_', ' ')}.",
        {"order_id": request.order_id},
    )


async def push(
    tx: Tx, buyer: Principal, changes: dict[str, Any], last_pulled_at: int | None
) -> dict[str, list[str]]:
    """Apply a WatermelonDB push in one transaction; returns the ids refused per table.

    Every record is mapped onto the mutation shapes of `protocol.mutations` and checked by
    the same validator as REST and push: a record that fails it (a quantity of 2.5, a wrong
    type) is refused by id, never coerced."""
    if not isinstance(changes, dict):
        raise BadRequest("the body must be a changes object", code="invalid_changes")
    since = None if last_pulled_at is None else last_pulled_at - 1
    rejected: dict[str, list[str]] = defaultdict(list)
    for table in changes:
        if table not in BY_NAME:
            raise BadRequest(f"unknown table {table!r}", code="invalid_changes")
        for kind in ("created", "updated", "deleted"):
            records = _records(changes, table, kind)
            if table in WRITABLE_CREATE and kind == "created":
                continue
            if table in ("orders", "notifications") and kind == "updated":
                continue
            rejected[table].extend(
                record if isinstance(record, str) else record["id"] for record in records
            )

    created_items = _records(changes, "order_items", "created")
    updated_orders = _records(changes, "orders", "updated")
    # The one lock order (storage/orders.py): orders this push may cancel, then every listing
    # it reserves from or returns stock to, before touching any.
    await lock_for_batch(
        tx,
        cancelled={raw["id"] for raw in updated_orders if raw.get("status") == "cancelled"},
        purchased_from={
            item["listing_id"] for item in created_items if isinstance(item.get("listing_id"), str)
        },
    )

    items_by_order: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in created_items:
        items_by_order[str(item.get("order_id"))].append(item)
    for raw in _records(changes, "orders", "created"):
        order_id = raw["id"]
        items = items_by_order.pop(order_id, [])
        outcome = await _purchase(tx, buyer, raw, items)
        if outcome == "refused":
            rejected["orders"].append(order_id)
            rejected["order_items"].extend(item["id"] for item in items)
    for items in items_by_order.values():  # items whose order was not in this push
        rejected["order_items"].extend(item["id"] for item in items)

    for raw in _records(changes, "interest_expressions", "created"):
        try:
            args = parse(
                {
                    "interest_id": raw["id"],
                    "listing_id": raw.get("listing_id"),
                    "message": raw.get("message") or None,
                },
                ExpressInterest,
            )
        except InvalidArgs:
            rejected["interest_expressions"].append(raw["id"])
            continue
        savepoint = await tx.conn.begin_nested()
        checkpoint = tx.checkpoint()
        try:
            await express_interest(tx, buyer, args)
            await savepoint.commit()
        except MutationRejected:
            await savepoint.rollback()
            tx.restore(checkpoint)
            rejected["interest_expressions"].append(args.interest_id)

    read_ids = [
        raw["id"]
        for raw in _records(changes, "notifications", "updated")
        if raw.get("read") is True
    ]
    for start in range(0, len(read_ids), MAX_READ_IDS):
        chunk = read_ids[start : start + MAX_READ_IDS]
        await mark_notifications_read(tx, buyer, parse({"ids": chunk}, MarkNotificationsRead))

    for raw in updated_orders:
        order_id = raw["id"]
        # Locked before the conflict check: an admin's approval committing between the check
        # and the cancel would otherwise be overwritten without the app ever seeing it.
        order = await find_order(tx.conn, order_id, for_update=tx.dialect == "postgresql")
        if order is None or order["user_id"] != buyer.user_id:
            rejected["orders"].append(order_id)
            continue
        if raw.get("status") == order["status"]:
            continue
        if await _changed_since(tx, "orders", order_id, since):
            raise Conflict(
                "The order changed on the server since your last pull; pull first.",
                code="sync_conflict",
            )
        if raw.get("status") != "cancelled":
            rejected["orders"].append(order_id)
            continue
        try:
            await cancel_order(tx, buyer, order_id)
        except MutationRejected:
            rejected["orders"].append(order_id)
    return {table: ids for table, ids in rejected.items() if ids}


def _purchase_request(raw: dict[str, Any], items: list[dict[str, Any]]) -> PurchaseRequest:
    """The purchase a created order and its items ask for, through the one validator."""
    return parse(
        {
            "order_id": raw["id"],
            # WatermelonDB keeps unset string columns as "": no method means cash on delivery.
            "payment_method": raw.get("payment_method") or "cod",
            "note": raw.get("note") or None,
            "items": [
                {
                    "item_id": item["id"],
                    "listing_id": item.get("listing_id"),
                    "quantity": item.get("quantity"),
                }
                for item in items
            ],
        },
        PurchaseRequest,
    )


async def _purchase(
    tx: Tx, buyer: Principal, raw: dict[str, Any], items: list[dict[str, Any]]
) -> str:
    """applied (now or by an earlier push of the same record), recorded (kept as a rejected
    order), or refused (the record goes back in experimentalRejectedIds)."""
    existing = await find_order(tx.conn, raw["id"])
    if existing is not None:
        # A push repeated after a lost acknowledgement: already applied, change nothing.
        return "applied" if existing["user_id"] == buyer.user_id else "refused"
    try:
        request = _purchase_request(raw, items)
    except InvalidArgs:
        return "refused"
    checkpoint = tx.checkpoint()
    try:
        await place_purchase_request(tx, buyer, request)  # undoes its own writes if refused
    except MutationRejected as rejection:
        tx.restore(checkpoint)
        if rejection.error_code == "duplicate_id":
            # The same record pushed again while this push ran (a retry racing the original):
            # its order is committed and visible now.
            twin = await find_order(tx.conn, request.order_id)
            return "applied" if twin is not None and twin["user_id"] == buyer.user_id else "refused"
        if rejection.error_code in ("out_of_stock", "listing_unavailable"):
            await _record_rejected_order(tx, buyer, request, rejection.error_code)
            return "recorded"
        return "refused"
    return "applied"
