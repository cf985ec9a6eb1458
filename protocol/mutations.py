"""The arguments of every write a client sends, and the one validator they all pass through.

A purchase request reaches the server four ways: REST (`POST /api/orders/purchase-request`),
a push batch over HTTP, a push frame over the WebSocket, and a WatermelonDB push whose
records are mapped onto these same shapes. Each transport decodes into the types below with
`parse()` (or msgspec's typed JSON decoding, which applies the same rules), so a field is
checked one way wherever it comes from: a quantity of 2.5, "2", true or 0 is refused
everywhere, never truncated or coerced. A buyer who asked for 2.5 kg must not be charged
for 2 without knowing.

The rules a type cannot state alone (unique item ids within one order) live in
`__post_init__`, which msgspec runs during decoding and on direct construction alike.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

# Ids a phone makes offline (orders, order items, interest expressions): kept by the server.
# `(?!\n)$`, not `$` alone: Python's `$` also matches before a trailing newline, and
# "order-1\n" must not pass as an id (the pattern also goes into /openapi.json, where
# JavaScript's `$` has no such exception; `\Z` would not mean anything there).
ClientId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{8,64}(?!\n)$")]
# Ids the server made (listings, notifications): any short string; unknown ones are refused
# by the lookup, not by shape.
ServerId = Annotated[str, Meta(min_length=1, max_length=64)]
MAX_ITEMS = 50
MAX_QUANTITY = 100_000
MAX_NOTE = 1000
MAX_READ_IDS = 500
Quantity = Annotated[int, Meta(ge=1, le=MAX_QUANTITY)]
Note = Annotated[str, Meta(max_length=MAX_NOTE)]
PaymentMethod = Literal["juice", "myt_money", "card", "cod"]
PAYMENT_METHODS: tuple[str, ...] = ("juice", "myt_money", "card", "cod")
Platform = Literal["android", "ios", "web"]
ExpoPushToken = Annotated[
    str, Meta(pattern=r"^Expo(nent)?PushToken\[[^\]\s]{1,200}\](?!\n)$", max_length=255)
]


class PurchaseItem(msgspec.Struct, forbid_unknown_fields=True):
    item_id: ClientId
    listing_id: ServerId
    quantity: Quantity


class PurchaseRequest(msgspec.Struct, forbid_unknown_fields=True):
    order_id: ClientId
    items: Annotated[list[PurchaseItem], Meta(min_length=1, max_length=MAX_ITEMS)]
    payment_method: PaymentMethod
    note: Note | None = None

    def __post_init__(self) -> None:
        item_ids = [item.item_id for item in self.items]
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("items[].item_id must be unique within an order")


class ExpressInterest(msgspec.Struct, forbid_unknown_fields=True):
    interest_id: ClientId
    listing_id: ServerId
    message: Note | None = None


class CancelOrder(msgspec.Struct, forbid_unknown_fields=True):
    order_id: ServerId


class MarkNotificationsRead(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[ServerId], Meta(max_length=MAX_READ_IDS)]


class RegisterDevice(msgspec.Struct, forbid_unknown_fields=True):
    expo_push_token: ExpoPushToken
    platform: Platform


class InvalidArgs(ValueError):
    """The arguments break a rule above; `str()` says which field and why."""


Args = TypeVar("Args", bound=msgspec.Struct)


def parse(raw: Any, shape: type[Args]) -> Args:
    """Check decoded JSON against one of the shapes above, strictly (no coercion)."""
    try:
        return msgspec.convert(raw, shape, strict=True)
    except msgspec.ValidationError as error:
        raise InvalidArgs(str(error)) from None


def same_purchase(request: PurchaseRequest, order: dict[str, Any]) -> bool:
    """Whether a stored order (wire form, with `items`) is exactly what `request` asked for:
    then a second request with its id is a retry, not a different order under a taken id."""
    wanted = sorted((item.item_id, item.listing_id, item.quantity) for item in request.items)
    stored = sorted(
        (item["id"], item["listing_id"], item["quantity"]) for item in order.get("items", ())
    )
    return (
        wanted == stored
        and request.payment_method == order.get("payment_method")
        and (request.note or None) == (order.get("note") or None)
    )
