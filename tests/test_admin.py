"""Admin views: the audit log and analytics, on both databases."""

from __future__ import annotations

import secrets

from tests.support.api import Api, client_id, register


def buy(api: Api, listing_id: str, quantity: int) -> str:
    order_id = "ord-" + secrets.token_hex(6)
    result = api.push(
        client_id(),
        [
            {
                "id": 1,
                "name": "purchase_request",
                "args": {
                    "order_id": order_id,
                    "payment_method": "cod",
                    "items": [
                        {
                            "item_id": "itm-" + secrets.token_hex(6),
                            "listing_id": listing_id,
                            "quantity": quantity,
                        }
                    ],
                },
            }
        ],
    ).json()["results"][0]
    assert result["ok"], result
    return order_id


def test_audit_log_filters_and_pages(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(stock=20)
    orders = [buy(buyer, listing["id"], 1) for _ in range(3)]
    for order_id in orders:
        admin.put(f"/api/admin/orders/{order_id}/approve", json={"notes": "fresh"})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"action": "approve_order", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = admin.get("/api/admin/audit", params=params).json()
        seen += [item["target_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(orders) <= set(seen) and len(seen) == len(set(seen))
    one = admin.get("/api/admin/audit", params={"target_id": orders[0]}).json()["items"]
    assert [(row["action"], row["notes"]) for row in one] == [("approve_order", "fresh")]
    assert buyer.get("/api/admin/audit").status_code == 403


def test_analytics(admin: Api, server: str) -> None:
    tag = secrets.token_hex(3)
    listing = admin.create_listing(title=f"Analytique {tag}", stock=50, price=1000)
    alice, bob = register(server, "alice"), register(server, "bob")
    alice.post(f"/api/listings/{listing['id']}/interest", json={"message": "ena?"})
    bob.post(f"/api/listings/{listing['id']}/interest", json={})
    approved = buy(alice, listing["id"], 3)
    rejected = buy(bob, listing["id"], 1)
    admin.put(f"/api/admin/orders/{approved}/approve", json={})
    admin.put(f"/api/admin/orders/{rejected}/reject", json={"reason": "no delivery there"})
    admin.get("/api/listings", params={"q": f"durian{tag}"})  # a search with no result

    body = admin.get("/api/admin/analytics").json()
    assert body["orders_per_day"] and all(
        {"day", "orders", "revenue"} <= set(row) for row in body["orders_per_day"]
    )
    assert sum(row["revenue"] for row in body["orders_per_day"]) >= 3000
    assert 0 < body["approval_rate"] < 1
    assert body["mean_time_to_approve_seconds"] is not None
    mine = [row for row in body["interest_conversion"] if row["listing_id"] == listing["id"]]
    assert mine == [
        {
            "listing_id": listing["id"],
            "title": listing["title"],
            "interested": 2,
            "purchased": 2,
            "rate": 1.0,
        }
    ]
    assert any(row["query"] == f"durian{tag}" for row in body["searches_without_results"])
    assert any(row["listing_id"] == listing["id"] for row in body["top_listings"])
    assert admin.get("/api/admin/analytics", params={"from": 10, "to": 5}).status_code == 422
