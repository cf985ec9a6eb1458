"""Push: each mutation applied at most once, outcomes replayed, business rejections final."""

from __future__ import annotations

import gzip
import secrets

import orjson

from tests.support.api import Api, client_id, register
from tests.support.ws import LiveClient


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def purchase(
    mutation_id: int,
    listing_id: str,
    quantity: int = 1,
    order_id: str | None = None,
    method: str = "cod",
) -> dict:
    return {
        "id": mutation_id,
        "name": "purchase_request",
        "args": {
            "order_id": order_id or new_id("ord"),
            "payment_method": method,
            "items": [{"item_id": new_id("itm"), "listing_id": listing_id, "quantity": quantity}],
        },
    }


def stock_of(api: Api, listing_id: str) -> int:
    return int(api.get(f"/api/listings/{listing_id}").json()["stock"])


def test_a_batch_sent_three_times_is_applied_once(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(stock=10, price=5500)
    device = client_id()
    batch = [purchase(1, listing["id"], 2), purchase(2, listing["id"], 3)]
    outcomes = [buyer.push(device, batch).json() for _ in range(3)]
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert [r["ok"] for r in outcomes[0]["results"]] == [True, True]
    assert outcomes[0]["results"][0]["result"]["total"] == 11000
    assert stock_of(admin, listing["id"]) == 5
    orders = buyer.get("/api/orders").json()["items"]
    assert len(orders) == 2 and {o["status"] for o in orders} == {"pending"}


def test_business_rejections_are_final_and_recorded(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(stock=1)
    draft = admin.create_listing(stock=5, status="draft")
    device = client_id()
    batch = [
        purchase(1, listing["id"], 5),
        purchase(2, draft["id"], 1),
        {"id": 3, "name": "teleport", "args": {}},
        {"id": 4, "name": "purchase_request", "args": {"order_id": "short"}},
        purchase(5, listing["id"], 1),
    ]
    results = buyer.push(device, batch).json()["results"]
    codes = [r.get("error", {}).get("code") for r in results]
    assert codes == [
        "out_of_stock",
        "listing_unavailable",
        "unknown_mutation",
        "invalid_args",
        None,
    ]
    assert stock_of(admin, listing["id"]) == 0
    # Re-sent after the client dropped nothing: the recorded outcomes come back unchanged.
    assert buyer.push(device, batch).json()["results"] == results


def test_skipped_ids_are_stale_and_ids_must_increase(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(stock=5)
    device = client_id()
    assert buyer.push(device, [purchase(5, listing["id"])]).json()["results"][0]["ok"]
    stale = buyer.push(device, [purchase(3, listing["id"])]).json()["results"][0]
    assert stale["ok"] is False and stale["error"]["code"] == "stale_mutation"
    assert stock_of(admin, listing["id"]) == 4
    bad = buyer.push(device, [purchase(7, listing["id"]), purchase(6, listing["id"])])
    assert bad.status_code == 422


def test_duplicate_entity_ids_are_refused(admin: Api, server: str) -> None:
    listing = admin.create_listing(stock=5)
    alice, bob = register(server, "alice"), register(server, "bob")
    order_id = new_id("ord")
    assert alice.push(client_id(), [purchase(1, listing["id"], order_id=order_id)]).json()[
        "results"
    ][0]["ok"]
    taken = bob.push(client_id(), [purchase(1, listing["id"], order_id=order_id)]).json()[
        "results"
    ][0]
    assert taken["error"]["code"] == "duplicate_id"
    assert stock_of(admin, listing["id"]) == 4


def test_a_client_id_belongs_to_its_first_user(admin: Api, server: str) -> None:
    listing = admin.create_listing(stock=5)
    device = client_id()
    alice, bob = register(server, "alice"), register(server, "bob")
    assert alice.push(device, [purchase(1, listing["id"])]).status_code == 200
    response = bob.push(device, [purchase(2, listing["id"])])
    assert response.status_code == 403
    assert stock_of(admin, listing["id"]) == 4


def test_other_mutations(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(stock=6)
    device = client_id()
    order = purchase(1, listing["id"], 4)
    interest_id = new_id("int")
    results = buyer.push(
        device,
        [
            order,
            {
                "id": 2,
                "name": "express_interest",
                "args": {
                    "interest_id": interest_id,
                    "listing_id": listing["id"],
                    "message": "Eski ou ena ankor?",
                },
            },
            {"id": 3, "name": "cancel_order", "args": {"order_id": order["args"]["order_id"]}},
            {
                "id": 4,
                "name": "register_device",
                "args": {"expo_push_token": "ExponentPushToken[abc123]", "platform": "android"},
            },
            {"id": 5, "name": "cancel_order", "args": {"order_id": order["args"]["order_id"]}},
        ],
    ).json()["results"]
    assert [r["ok"] for r in results] == [True, True, True, True, False]
    assert results[4]["error"]["code"] == "order_cancelled"
    assert stock_of(admin, listing["id"]) == 6  # released by the cancellation

    notifications = buyer.get("/api/notifications").json()["items"]
    unread = [n["id"] for n in notifications if not n["read"]]
    assert unread
    read = buyer.push(
        device, [{"id": 6, "name": "mark_notifications_read", "args": {"ids": unread}}]
    ).json()["results"][0]
    assert read["result"]["updated"] == len(unread)
    assert all(n["read"] for n in buyer.get("/api/notifications").json()["items"])


def test_gzip_push_body(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(stock=3)
    body = gzip.compress(
        orjson.dumps({"client_id": client_id(), "mutations": [purchase(1, listing["id"])]})
    )
    response = buyer.post(
        "/api/sync/push",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 200 and response.json()["results"][0]["ok"]


def test_rest_purchase_request_with_idempotency_key(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(stock=3, price=7000)
    body = purchase(1, listing["id"], 2)["args"]
    key = {"idempotency-key": secrets.token_hex(8)}
    first = buyer.post("/api/orders/purchase-request", json=body, headers=key)
    again = buyer.post("/api/orders/purchase-request", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert first.json()["total"] == 14000 and first.json()["status"] == "pending"
    assert len(first.json()["items"]) == 1
    assert stock_of(admin, listing["id"]) == 1
    too_many = buyer.post(
        "/api/orders/purchase-request", json=purchase(1, listing["id"], 2)["args"]
    )
    assert too_many.status_code == 409 and too_many.json()["error"]["code"] == "out_of_stock"


def test_admin_decisions_are_audited_and_transitions_enforced(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(stock=5)
    approved_id, rejected_id = new_id("ord"), new_id("ord")
    buyer.push(
        client_id(),
        [purchase(1, listing["id"], 1, approved_id), purchase(2, listing["id"], 2, rejected_id)],
    )
    assert stock_of(admin, listing["id"]) == 2
    pending = admin.get("/api/admin/orders", params={"status": "pending"}).json()["items"]
    assert {approved_id, rejected_id} <= {order["id"] for order in pending}

    assert (
        admin.put(f"/api/admin/orders/{approved_id}/approve", json={"notes": "ok"}).json()["status"]
        == "approved"
    )
    rejected = admin.put(f"/api/admin/orders/{rejected_id}/reject", json={"reason": "closed"})
    assert rejected.json()["status"] == "rejected" and rejected.json()["reject_reason"] == "closed"
    assert stock_of(admin, listing["id"]) == 4

    again = admin.put(f"/api/admin/orders/{rejected_id}/approve", json={})
    assert again.status_code == 409 and again.json()["error"]["code"] == "order_rejected"
    assert admin.put(f"/api/admin/orders/{rejected_id}/mark-paid", json={}).status_code == 409
    assert (
        admin.put(f"/api/admin/orders/{approved_id}/mark-paid", json={}).json()["payment_status"]
        == "paid"
    )
    assert (
        admin.put(f"/api/admin/orders/{approved_id}/complete", json={}).json()["status"]
        == "completed"
    )
    assert admin.put("/api/admin/orders/nope-nope/approve", json={}).status_code == 404

    _, pages = admin.pull_all()
    actions = [
        row for page in pages for row in page["changes"].get("admin_actions", {}).get("put", [])
    ]
    audited = {(row["action"], row["target_id"]) for row in actions}
    assert {
        ("approve_order", approved_id),
        ("reject_order", rejected_id),
        ("mark_paid", approved_id),
        ("complete", approved_id),
    } <= audited
    kinds = [n["type"] for n in buyer.get("/api/notifications").json()["items"]]
    assert {"order_approved", "order_rejected", "order_paid", "order_completed"} <= set(kinds)


def test_another_users_order_is_not_found(admin: Api, server: str) -> None:
    listing = admin.create_listing(stock=5)
    alice, bob = register(server, "alice"), register(server, "bob")
    order_id = new_id("ord")
    alice.push(client_id(), [purchase(1, listing["id"], order_id=order_id)])
    assert alice.get(f"/api/orders/{order_id}").status_code == 200
    assert bob.get(f"/api/orders/{order_id}").status_code == 404
    cancel = bob.push(
        client_id(), [{"id": 1, "name": "cancel_order", "args": {"order_id": order_id}}]
    ).json()["results"][0]
    assert cancel["ok"] is False and cancel["error"]["code"] == "not_found"


def test_batches_the_database_could_not_store_are_refused_up_front(
    admin: Api, buyer: Api, server: str
) -> None:
    """Each of these used to reach the database and fail there, on every resend."""
    listing = admin.create_listing(stock=100_000, price=5_000_000)  # Rs 50,000 a unit
    device = client_id()
    huge = buyer.push(device, [purchase(1, listing["id"], quantity=1000)]).json()["results"][0]
    assert huge["ok"] is False and huge["error"]["code"] == "invalid_args"  # Rs 50 million
    assert stock_of(admin, listing["id"]) == 100_000
    too_big_id = buyer.push(device, [purchase(2**63, listing["id"])])
    assert too_big_id.status_code == 422
    assert too_big_id.json()["error"]["field"] == "mutations[].id"

    socket = LiveClient(server, buyer.token)  # type: ignore[arg-type]
    socket.catch_up()
    socket.send({"type": "push", "client_id": "x" * 70, "mutations": [purchase(1, listing["id"])]})
    reply = socket.receive()
    while reply["type"] != "push_result":
        reply = socket.receive()
    assert reply["error"]["code"] == "validation_failed"
    mutation = purchase(3, listing["id"])
    mutation["args"]["note"] = "fresh\u0000"
    socket.send({"type": "push", "client_id": device, "mutations": [mutation]})
    reply = socket.receive()
    while reply["type"] != "push_result":
        reply = socket.receive()
    assert reply["error"]["code"] == "validation_failed"
    socket.send({"type": "pong"})  # the session is still open and usable
    socket.close()
    assert stock_of(admin, listing["id"]) == 100_000


def test_a_refused_purchase_leaves_nothing_behind(admin: Api, buyer: Api, server: str) -> None:
    """A purchase undoes its own writes when refused (no savepoint around it): the stock it
    reserved for earlier items, the order row it created before an item id turned out taken;
    the batch's other mutations stand."""
    # Items are reserved in listing id order: the one with plenty comes first.
    plenty, scarce = sorted(
        (admin.create_listing(stock=10), admin.create_listing(stock=10)),
        key=lambda listing: str(listing["id"]),
    )
    assert admin.patch(f"/api/admin/listings/{scarce['id']}", json={"stock": 1}).is_success
    taken_item = new_id("itm")
    other = register(server, "other")
    assert other.push(
        client_id(),
        [
            {
                "id": 1,
                "name": "purchase_request",
                "args": {
                    "order_id": new_id("ord"),
                    "payment_method": "cod",
                    "items": [{"item_id": taken_item, "listing_id": plenty["id"], "quantity": 1}],
                },
            }
        ],
    ).json()["results"][0]["ok"]
    stock_before = {plenty["id"]: 9, scarce["id"]: 1}
    assert {key: stock_of(admin, key) for key in stock_before} == stock_before

    def items(*entries: tuple[str, str, int]) -> list[dict]:
        return [
            {"item_id": item_id, "listing_id": listing_id, "quantity": quantity}
            for item_id, listing_id, quantity in entries
        ]

    short_order, taken_order = new_id("ord"), new_id("ord")
    batch = [
        # Reserved from the first listing (in id order), then too little of the second.
        {
            "id": 1,
            "name": "purchase_request",
            "args": {
                "order_id": short_order,
                "payment_method": "cod",
                "items": items((new_id("itm"), plenty["id"], 1), (new_id("itm"), scarce["id"], 5)),
            },
        },
        # Stock reserved from both and the order row written, then an item id is taken.
        {
            "id": 2,
            "name": "purchase_request",
            "args": {
                "order_id": taken_order,
                "payment_method": "cod",
                "items": items((new_id("itm"), scarce["id"], 1), (taken_item, plenty["id"], 2)),
            },
        },
        purchase(3, plenty["id"], 1),
    ]
    codes = [
        r.get("error", {}).get("code") for r in buyer.push(client_id(), batch).json()["results"]
    ]
    assert codes == ["out_of_stock", "duplicate_id", None]
    assert stock_of(admin, plenty["id"]) == 8 and stock_of(admin, scarce["id"]) == 1
    mine = {order["id"] for order in buyer.get("/api/orders").json()["items"]}
    assert short_order not in mine and taken_order not in mine and len(mine) == 1


def test_a_batch_of_interests_gets_the_outcomes_one_at_a_time_would(
    admin: Api, buyer: Api, server: str
) -> None:
    """On PostgreSQL a batch's interests are inserted in one statement up front
    (`storage.activity.insert_interests`); each keeps its own outcome, in order."""
    listing, draft = admin.create_listing(), admin.create_listing(status="draft")
    theirs = new_id("int")
    other = register(server, "other")
    interest = {"name": "express_interest"}
    assert other.push(
        client_id(),
        [{**interest, "id": 1, "args": {"interest_id": theirs, "listing_id": listing["id"]}}],
    ).json()["results"][0]["ok"]
    mine = [new_id("int") for _ in range(3)]
    batch = [
        {**interest, "id": 1, "args": {"interest_id": mine[0], "listing_id": listing["id"]}},
        {**interest, "id": 2, "args": {"interest_id": mine[1], "listing_id": draft["id"]}},
        purchase(3, listing["id"]),
        {**interest, "id": 4, "args": {"interest_id": theirs, "listing_id": listing["id"]}},
        {**interest, "id": 5, "args": {"interest_id": mine[2], "listing_id": listing["id"]}},
        {**interest, "id": 6, "args": {"interest_id": "x", "listing_id": listing["id"]}},
    ]
    device = client_id()
    results = buyer.push(device, batch).json()["results"]
    codes = [r.get("error", {}).get("code") for r in results]
    assert codes == [None, "listing_unavailable", None, "duplicate_id", None, "invalid_args"]
    assert [
        r["result"]["interest_id"] for r in results if r["ok"] and "interest_id" in r["result"]
    ] == [mine[0], mine[2]]
    assert buyer.push(device, batch).json()["results"] == results
    # The same interests again from another device of the buyer: replays, not duplicates.
    again = buyer.push(client_id(), [batch[0], batch[4]]).json()["results"]
    assert [r["ok"] for r in again] == [True, True]
