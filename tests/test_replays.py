"""Offline replays in the awkward interleavings a fleet of phones produces sooner or later.

Each test really races: threads released together by a barrier, against PostgreSQL through
two server processes (two instances) in production mode, or against the one embedded
server. Answers are read raw (no client-side retry on 503), because "never a 5xx" is the
claim. On PostgreSQL the module also checks that no test here made the database detect a
deadlock (`pg_stat_database.deadlocks` does not move).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import Backend
from tests.support.api import Api, client_id, purchase_args, register
from tests.support.processes import server_processes
from tests.support.racing import at_once, no_new_deadlocks
from tests.support.ws import LiveClient

ROUNDS = 8


@pytest.fixture(scope="module", autouse=True)
def no_deadlocks(backend: Backend) -> Iterator[None]:
    with no_new_deadlocks(backend.env["DATABASE_URL"] if backend.is_services else None):
        yield


def raw(api: Api, base_url: str, method: str, path: str, **kwargs: Any) -> Callable[[], Any]:
    """One request to one instance as `api`'s user, with no retry of any kind."""
    headers = {**api.headers, **kwargs.pop("headers", {})}
    return lambda: httpx.request(method, base_url + path, headers=headers, timeout=90, **kwargs)


def stock_of(api: Api, listing_id: str) -> int:
    return int(api.get(f"/api/listings/{listing_id}").json()["stock"])


def orders_of(api: Api) -> list[dict[str, Any]]:
    return list(api.get("/api/orders", params={"limit": 100}).json()["items"])


# 1. The same new order id in two requests at once, without a shared Idempotency-Key.


def test_one_order_id_in_two_rest_requests_at_once_is_one_order(
    admin: Api, server: str, instances: list[str]
) -> None:
    buyer = register(server, "twin-rest")
    listing = admin.create_listing(title="Letchis", stock=100)
    for _ in range(ROUNDS):
        body = purchase_args(listing["id"], 2)
        answers = at_once(
            *(
                raw(buyer, base, "POST", "/api/orders/purchase-request", json=body)
                for base in instances
            )
        )
        # A retry of the same request (same id, same items): the first outcome, twice.
        assert sorted(answer.status_code for answer in answers) == [200, 201], [
            answer.text for answer in answers
        ]
        assert answers[0].json() == answers[1].json()

        other = purchase_args(listing["id"], 3)
        clash = {**other, "items": [{**other["items"][0], "quantity": 4}]}
        answers = at_once(
            raw(buyer, instances[0], "POST", "/api/orders/purchase-request", json=other),
            raw(buyer, instances[1], "POST", "/api/orders/purchase-request", json=clash),
        )
        # Two different orders under one id: one is placed, the other is told the id is taken.
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [201, 409], [answer.text for answer in answers]
        refused = next(answer for answer in answers if answer.status_code == 409)
        assert refused.json()["error"]["code"] == "duplicate_id"
    assert len(orders_of(buyer)) == 2 * ROUNDS
    placed = sum(item["quantity"] for order in orders_of(buyer) for item in _items(buyer, order))
    assert stock_of(admin, listing["id"]) == 100 - placed


def _items(api: Api, order: dict[str, Any]) -> list[dict[str, Any]]:
    return list(api.get(f"/api/orders/{order['id']}").json()["items"])


def test_one_order_id_pushed_from_two_devices_at_once_is_one_order(
    admin: Api, server: str, instances: list[str]
) -> None:
    buyer = register(server, "twin-push")
    # Different listings, so nothing but the order id itself serialises the two batches.
    first, second = (admin.create_listing(title=f"Pistaches {n}", stock=50) for n in range(2))
    for _ in range(ROUNDS):
        order_id = "ord-" + secrets.token_hex(8)
        batches = [
            {
                "client_id": client_id(),
                "mutations": [
                    {
                        "id": 1,
                        "name": "purchase_request",
                        "args": purchase_args(listing["id"], 1, order_id),
                    }
                ],
            }
            for listing in (first, second)
        ]
        answers = at_once(
            *(
                raw(buyer, base, "POST", "/api/sync/push", json=batch)
                for base, batch in zip(instances, batches, strict=True)
            )
        )
        assert [answer.status_code for answer in answers] == [200, 200], [
            answer.text for answer in answers
        ]
        results = [answer.json()["results"][0] for answer in answers]
        assert sorted(result["ok"] for result in results) == [False, True]
        assert [r["error"]["code"] for r in results if not r["ok"]] == ["duplicate_id"]
    assert stock_of(admin, first["id"]) + stock_of(admin, second["id"]) == 100 - ROUNDS
    assert len(orders_of(buyer)) == ROUNDS


def watermelon_order(order_id: str, listing_id: str, quantity: Any) -> dict[str, Any]:
    return {
        "orders": {
            "created": [{"id": order_id, "status": "pending", "payment_method": "cod"}],
            "updated": [],
            "deleted": [],
        },
        "order_items": {
            "created": [
                {
                    "id": "wmi-" + secrets.token_hex(6),
                    "order_id": order_id,
                    "listing_id": listing_id,
                    "quantity": quantity,
                }
            ],
            "updated": [],
            "deleted": [],
        },
    }


def test_a_watermelon_push_resent_while_in_flight_is_one_order(
    admin: Api, server: str, instances: list[str]
) -> None:
    buyer = register(server, "twin-melon")
    listing = admin.create_listing(title="Goyaves", stock=100)
    for _ in range(ROUNDS):
        changes = watermelon_order("wmo-" + secrets.token_hex(6), listing["id"], 3)
        answers = at_once(
            *(
                raw(buyer, base, "POST", "/api/sync/watermelon?last_pulled_at=1", json=changes)
                for base in instances
            )
        )
        assert [answer.status_code for answer in answers] == [200, 200], [
            answer.text for answer in answers
        ]
        assert [answer.json() for answer in answers] == [{}, {}]  # applied, both times
    assert stock_of(admin, listing["id"]) == 100 - 3 * ROUNDS
    assert len(orders_of(buyer)) == ROUNDS


def test_interests_and_devices_replayed_at_once_are_stored_once(
    admin: Api, server: str, instances: list[str]
) -> None:
    buyer = register(server, "twin-misc")
    listing = admin.create_listing(title="Bananes", stock=5)
    for _ in range(ROUNDS):
        interest = {"interest_id": "int-" + secrets.token_hex(6), "message": "Encore?"}
        answers = at_once(
            *(
                raw(buyer, base, "POST", f"/api/listings/{listing['id']}/interest", json=interest)
                for base in instances
            )
        )
        assert [answer.status_code for answer in answers] == [201, 201]
        token = f"ExponentPushToken[{secrets.token_hex(8)}]"
        batches = [
            {
                "client_id": client_id(),
                "mutations": [
                    {
                        "id": 1,
                        "name": "register_device",
                        "args": {"expo_push_token": token, "platform": "android"},
                    }
                ],
            }
            for _ in instances
        ]
        answers = at_once(
            *(
                raw(buyer, base, "POST", "/api/sync/push", json=batch)
                for base, batch in zip(instances, batches, strict=True)
            )
        )
        results = [answer.json()["results"][0] for answer in answers]
        assert all(result["ok"] for result in results), results
        assert results[0]["result"]["device_id"] == results[1]["result"]["device_id"]
    _, pages = buyer.pull_all()
    # By id: a first sync may put a row twice (the snapshot, then the log replayed from the
    # snapshot's shared starting position: `LiveHub.snapshot_origin`), which is the same row.
    interests = {
        row["id"]
        for page in pages
        for row in page["changes"].get("interest_expressions", {}).get("put", [])
    }
    assert len(interests) == ROUNDS


# 2. Idempotency-Key: another body is refused; the same body at once is one order.


def test_an_idempotency_key_reused_for_another_body_is_refused(admin: Api, server: str) -> None:
    buyer = register(server, "keyreuse")
    listing = admin.create_listing(title="Mangues", stock=10)
    key = {"idempotency-key": "k-" + secrets.token_hex(6)}
    original = purchase_args(listing["id"], 1)
    first = buyer.post("/api/orders/purchase-request", json=original, headers=key)
    assert first.status_code == 201
    for reused_for in (
        purchase_args(listing["id"], 2),  # a new order under an old key
        {**original, "note": "and some limes"},  # the same order id, another body
    ):
        second = buyer.post("/api/orders/purchase-request", json=reused_for, headers=key)
        assert second.status_code == 422, second.text
        assert second.json()["error"]["code"] == "idempotency_key_reused"
    assert buyer.get(f"/api/orders/{reused_for['order_id']}").json()["note"] is None
    assert len(orders_of(buyer)) == 1
    assert stock_of(admin, listing["id"]) == 9
    # The first request again, with its key, still gets its first outcome.
    again = buyer.post("/api/orders/purchase-request", json=original, headers=key)
    assert (again.status_code, again.json()) == (201, first.json())


def test_one_idempotency_key_sent_at_once_is_one_order(
    admin: Api, server: str, instances: list[str]
) -> None:
    buyer = register(server, "keyrace")
    listing = admin.create_listing(title="Ananas", stock=100)
    for _ in range(ROUNDS):
        body = purchase_args(listing["id"], 1)
        key = {"idempotency-key": "k-" + secrets.token_hex(6)}
        answers = at_once(
            *(
                raw(buyer, base, "POST", "/api/orders/purchase-request", json=body, headers=key)
                for base in [*instances, *instances]
            )
        )
        assert [answer.status_code for answer in answers] == [201] * 4, [
            answer.text for answer in answers
        ]
        assert all(answer.json() == answers[0].json() for answer in answers)
    assert stock_of(admin, listing["id"]) == 100 - ROUNDS
    assert len(orders_of(buyer)) == ROUNDS


# 3. One validator: every transport refuses the same bad field, and nothing is created.

BAD_PURCHASES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("fractional quantity", lambda args: args["items"][0].update(quantity=2.5)),
    ("integral float quantity", lambda args: args["items"][0].update(quantity=2.0)),
    ("quantity as text", lambda args: args["items"][0].update(quantity="2")),
    ("quantity as boolean", lambda args: args["items"][0].update(quantity=True)),
    ("zero quantity", lambda args: args["items"][0].update(quantity=0)),
    ("negative quantity", lambda args: args["items"][0].update(quantity=-3)),
    ("huge quantity", lambda args: args["items"][0].update(quantity=2**40)),
    ("short item id", lambda args: args["items"][0].update(item_id="abc")),
    ("long listing id", lambda args: args["items"][0].update(listing_id="L" * 65)),
    ("listing id as number", lambda args: args["items"][0].update(listing_id=7)),
    ("unknown payment method", lambda args: args.update(payment_method="bitcoin")),
    ("note too long", lambda args: args.update(note="n" * 1001)),
    ("note as number", lambda args: args.update(note=5)),
    ("two items with one id", lambda args: args["items"].append(dict(args["items"][0]))),
]


@pytest.mark.parametrize(("case", "spoil"), BAD_PURCHASES, ids=[c for c, _ in BAD_PURCHASES])
def test_a_bad_purchase_field_is_refused_the_same_way_everywhere(
    admin: Api, server: str, case: str, spoil: Callable[[dict[str, Any]], None]
) -> None:
    buyer = register(server, "validator")
    listing = admin.create_listing(title="Fruit à pain", stock=50)

    def bad_args() -> dict[str, Any]:
        args = purchase_args(listing["id"], 2)
        spoil(args)
        return args

    rest = buyer.post("/api/orders/purchase-request", json=bad_args())
    assert rest.status_code == 422, rest.text
    assert rest.json()["error"]["code"] == "validation_failed"

    mutation = {"id": 1, "name": "purchase_request", "args": bad_args()}
    pushed = buyer.push(client_id(), [mutation]).json()["results"][0]
    assert not pushed["ok"] and pushed["error"]["code"] == "invalid_args", pushed

    assert buyer.token is not None
    live = LiveClient(server, buyer.token)
    try:
        live.catch_up()
        live.send({"type": "push", "client_id": client_id(), "mutations": [mutation]})
        live.wait_for(lambda client: client.pushes)
    finally:
        live.close()
    assert live.pushes[0]["results"][0]["error"]["code"] == "invalid_args", live.pushes

    args = bad_args()
    record = {
        "id": args["order_id"],
        "status": "pending",
        "payment_method": args["payment_method"],
        "note": args.get("note"),
    }
    items = [
        {**item, "id": item.pop("item_id"), "order_id": args["order_id"]} for item in args["items"]
    ]
    changes = {
        "orders": {"created": [record], "updated": [], "deleted": []},
        "order_items": {"created": items, "updated": [], "deleted": []},
    }
    melon = buyer.post("/api/sync/watermelon?last_pulled_at=1", json=changes)
    if melon.status_code == 200:
        assert args["order_id"] in melon.json()["experimentalRejectedIds"]["orders"], melon.text
    else:  # a record without a usable id is refused whole
        assert melon.status_code == 400, melon.text

    assert orders_of(buyer) == []
    assert stock_of(admin, listing["id"]) == 50


def test_a_watermelon_push_of_the_wrong_shape_is_a_400_that_changes_nothing(
    admin: Api, buyer: Api
) -> None:
    listing = admin.create_listing(title="Citrons", stock=10)
    good = watermelon_order("wmo-" + secrets.token_hex(6), listing["id"], 1)
    for spoiled in (
        {**good, "interest_expressions": {"created": [5]}},
        {**good, "notifications": {"updated": [{"id": 7, "read": True}]}},
        {**good, "orders": {"created": good["orders"]["created"], "updated": ["x"]}},
        {**good, "listings": {"deleted": [{"id": "x"}]}},
    ):
        answer = buyer.post("/api/sync/watermelon?last_pulled_at=1", json=spoiled)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_changes"
    assert orders_of(buyer) == []
    assert stock_of(admin, listing["id"]) == 10


# 4. One lock order: a buyer's [buy from L, cancel Y] racing an admin's reject of Y.


def test_a_purchase_and_cancel_batch_racing_a_reject_never_deadlocks(
    admin: Api, server: str, instances: list[str]
) -> None:
    buyer = register(server, "lockorder")
    listing = admin.create_listing(title="Papayes", stock=1000)
    device = client_id()
    next_id = iter(range(1, 10_000))
    bought = 0
    for _ in range(12):
        placed = purchase_args(listing["id"], 2)
        assert buyer.push(
            device, [{"id": next(next_id), "name": "purchase_request", "args": placed}]
        ).json()["results"][0]["ok"]
        batch = {
            "client_id": device,
            "mutations": [
                {
                    "id": next(next_id),
                    "name": "purchase_request",
                    "args": purchase_args(listing["id"], 1),
                },
                {
                    "id": next(next_id),
                    "name": "cancel_order",
                    "args": {"order_id": placed["order_id"]},
                },
            ],
        }
        pushed, rejected = at_once(
            raw(buyer, instances[0], "POST", "/api/sync/push", json=batch),
            raw(
                admin,
                instances[1],
                "PUT",
                f"/api/admin/orders/{placed['order_id']}/reject",
                json={"reason": "sold at the market"},
            ),
        )
        assert pushed.status_code == 200 and rejected.status_code in (200, 409), (
            pushed.text,
            rejected.text,
        )
        bought_now, cancelled = pushed.json()["results"]
        assert bought_now["ok"]
        bought += 1
        # Exactly one of the two decisions won, and the other was told so.
        assert cancelled["ok"] != (rejected.status_code == 200), (cancelled, rejected.text)
    assert stock_of(admin, listing["id"]) == 1000 - bought


# 5. A payment arriving during a cancellation; a duplicate batch that waits long.


def test_a_duplicate_batch_waiting_past_the_lock_timeout_gets_the_original_outcome(
    services_backend: Backend, admin: Api, server: str
) -> None:
    buyer = register(server, "patient")
    first, second = sorted(
        (admin.create_listing(title=f"Patates douces {n}", stock=10) for n in range(2)),
        key=lambda listing: listing["id"],
    )
    device = client_id()
    batch = {
        "client_id": device,
        "mutations": [
            {"id": 1, "name": "purchase_request", "args": purchase_args(first["id"])},
            {"id": 2, "name": "purchase_request", "args": purchase_args(second["id"])},
        ],
    }
    url = services_backend.env["DATABASE_URL"]
    with server_processes(services_backend.env, 2) as processes:
        bases = [process.base_url for process in processes]
        with psycopg.connect(url) as hold_first, psycopg.connect(url) as hold_second:
            # The original waits 4 s for one listing, then 4 s for the other: each wait is
            # under the 5 s lock_timeout, so it succeeds after 8 s. Its duplicate waits for
            # it the whole time, longer than any single lock_timeout.
            hold_first.execute("SELECT 1 FROM listings WHERE id = %s FOR UPDATE", (first["id"],))
            hold_second.execute("SELECT 1 FROM listings WHERE id = %s FOR UPDATE", (second["id"],))
            with ThreadPoolExecutor(2) as pool:
                original = pool.submit(raw(buyer, bases[0], "POST", "/api/sync/push", json=batch))
                wait_for_lock_waiters(url, 1)
                duplicate = pool.submit(raw(buyer, bases[1], "POST", "/api/sync/push", json=batch))
                wait_for_lock_waiters(url, 2)
                time.sleep(4)
                hold_first.rollback()
                time.sleep(4)
                hold_second.rollback()
                answers = [original.result(60), duplicate.result(60)]
    assert [answer.status_code for answer in answers] == [200, 200], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    assert all(result["ok"] for result in answers[0].json()["results"])
    assert stock_of(admin, first["id"]) == stock_of(admin, second["id"]) == 9


def wait_for_lock_waiters(database_url: str, count: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as observer:
        for _ in range(400):
            row = observer.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
            if row and row[0] >= count:
                return
            time.sleep(0.025)
    pytest.fail(f"never saw {count} requests waiting on a lock")
