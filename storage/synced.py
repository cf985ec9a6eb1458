"""The synced tables: their wire fields, who may see each row, and how a row is encoded.

This is the single description the change log, pull, snapshot and WatermelonDB endpoint
share, so a table's visibility rule is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, false, select, true

from storage import models as m
from storage.scopes import (
    ADMIN_ONLY,
    NO_SCOPES,
    Principal,
    listing_scopes,
    owned_scopes,
    personal_scopes,
)

Row = Any  # a sqlalchemy RowMapping


@dataclass(frozen=True)
class SyncedTable:
    name: str
    model: type[m.Base]
    wire: tuple[str, ...]
    select_rows: Callable[[], Select[Any]]
    row_scopes: Callable[[Row], frozenset[str]]
    visible_to: Callable[[Principal], ColumnElement[bool]]
    json_fields: frozenset[str] = frozenset()

    @property
    def id_column(self) -> Any:
        return self.model.__table__.c.id  # type: ignore[attr-defined]

    def encode(self, row: Row) -> dict[str, Any]:
        return {field: self._value(row, field) for field in self.wire}

    def encode_fields(self, row: Row, fields: Iterable[str]) -> dict[str, Any]:
        patch: dict[str, Any] = {"id": row["id"]}
        for field in fields:
            if field in self.wire:
                patch[field] = self._value(row, field)
        return patch

    def _value(self, row: Row, field: str) -> Any:
        value = row[field]
        if field in self.json_fields and isinstance(value, str):
            return orjson.loads(value)
        return value


def _columns(model: type[m.Base], wire: tuple[str, ...]) -> list[Any]:
    table = model.__table__
    return [table.c[name] for name in wire]  # type: ignore[attr-defined]


LISTING_WIRE = (
    "id",
    "title",
    "description",
    "price",
    "unit",
    "stock",
    "category",
    "images",
    "status",
    "updated_at",
)
ORDER_WIRE = (
    "id",
    "user_id",
    "status",
    "payment_method",
    "payment_status",
    "total",
    "note",
    "reject_reason",
    "created_at",
    "updated_at",
)
ORDER_ITEM_WIRE = ("id", "order_id", "listing_id", "quantity", "price")
INTEREST_WIRE = ("id", "user_id", "listing_id", "message", "created_at")
NOTIFICATION_WIRE = ("id", "type", "title", "message", "read", "data", "created_at")
PAYMENT_WIRE = (
    "id",
    "order_id",
    "method",
    "status",
    "amount",
    "currency",
    "transaction_id",
    "created_at",
    "updated_at",
)
ADMIN_ACTION_WIRE = ("id", "admin_id", "action", "target_table", "target_id", "notes", "created_at")


def _owner_or_admin(column: Any) -> Callable[[Principal], ColumnElement[bool]]:
    def visible(principal: Principal) -> ColumnElement[bool]:
        return true() if principal.is_admin else column == principal.user_id

    return visible


LISTINGS = SyncedTable(
    name="listings",
    model=m.Listing,
    wire=LISTING_WIRE,
    select_rows=lambda: select(*_columns(m.Listing, LISTING_WIRE), m.Listing.deleted_at),
    row_scopes=lambda row: listing_scopes(row["status"], row["deleted_at"] is not None),
    visible_to=lambda p: (
        m.Listing.deleted_at.is_(None)
        if p.is_admin
        else (m.Listing.deleted_at.is_(None) & (m.Listing.status == "published"))
    ),
    json_fields=frozenset({"images"}),
)

ORDERS = SyncedTable(
    name="orders",
    model=m.Order,
    wire=ORDER_WIRE,
    select_rows=lambda: select(*_columns(m.Order, ORDER_WIRE)),
    row_scopes=lambda row: owned_scopes(row["user_id"]),
    visible_to=_owner_or_admin(m.Order.user_id),
)

ORDER_ITEMS = SyncedTable(
    name="order_items",
    model=m.OrderItem,
    wire=ORDER_ITEM_WIRE,
    select_rows=lambda: select(
        *_columns(m.OrderItem, ORDER_ITEM_WIRE), m.Order.user_id.label("owner_id")
    ).join(m.Order, m.Order.id == m.OrderItem.order_id),
    row_scopes=lambda row: owned_scopes(row["owner_id"]),
    visible_to=_owner_or_admin(m.Order.user_id),
)

INTERESTS = SyncedTable(
    name="interest_expressions",
    model=m.InterestExpression,
    wire=INTEREST_WIRE,
    select_rows=lambda: select(*_columns(m.InterestExpression, INTEREST_WIRE)),
    row_scopes=lambda row: owned_scopes(row["user_id"]),
    visible_to=_owner_or_admin(m.InterestExpression.user_id),
)

NOTIFICATIONS = SyncedTable(
    name="notifications",
    model=m.Notification,
    wire=NOTIFICATION_WIRE,
    select_rows=lambda: select(
        *_columns(m.Notification, NOTIFICATION_WIRE), m.Notification.user_id
    ),
    row_scopes=lambda row: personal_scopes(row["user_id"]),
    visible_to=lambda p: m.Notification.user_id == p.user_id,
    json_fields=frozenset({"data"}),
)

PAYMENTS = SyncedTable(
    name="payments",
    model=m.Payment,
    wire=PAYMENT_WIRE,
    select_rows=lambda: select(
        *_columns(m.Payment, PAYMENT_WIRE), m.Order.user_id.label("owner_id")
    ).join(m.Order, m.Order.id == m.Payment.order_id),
    row_scopes=lambda row: owned_scopes(row["owner_id"]),
    visible_to=_owner_or_admin(m.Order.user_id),
)

ADMIN_ACTIONS = SyncedTable(
    name="admin_actions",
    model=m.AdminAction,
    wire=ADMIN_ACTION_WIRE,
    select_rows=lambda: select(*_columns(m.AdminAction, ADMIN_ACTION_WIRE)),
    row_scopes=lambda _row: ADMIN_ONLY,
    visible_to=lambda p: true() if p.is_admin else false(),
)

# Snapshot order: parents before children, so a replica never holds an item without its order.
SYNCED_TABLES: tuple[SyncedTable, ...] = (
    LISTINGS,
    ORDERS,
    ORDER_ITEMS,
    INTERESTS,
    NOTIFICATIONS,
    PAYMENTS,
    ADMIN_ACTIONS,
)
BY_NAME: dict[str, SyncedTable] = {table.name: table for table in SYNCED_TABLES}

__all__ = ["BY_NAME", "NO_SCOPES", "SYNCED_TABLES", "SyncedTable"]
