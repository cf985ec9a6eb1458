"""Listings: search (accents, apostrophes), filters, keyset paging, drafts hidden, caching."""

from __future__ import annotations

import secrets
from typing import Any

from tests.support.api import Api
from tests.support.queries import statements


def test_search_ignores_accents_and_apostrophes(admin: Api, buyer: Api) -> None:
    tag = "zq" + secrets.token_hex(3)
    tomato = admin.create_listing(title=f"Pomme d'amour {tag}")
    brede = admin.create_listing(title=f"Brède songe {tag}", unit="bunch", price=2500)

    def titles(q: str) -> set[str]:
        response = buyer.get("/api/listings", params={"q": f"{q} {tag}"})
        assert response.status_code == 200
        return {item["id"] for item in response.json()["items"]}

    assert titles("pomme d'amour") == {tomato["id"]}
    assert titles("brede") == {brede["id"]}
    assert titles("BRÈDE songe") == {brede["id"]}
    assert titles("bred") == {brede["id"]}  # prefix, for search-as-you-type
    assert titles("mangue") == set()


def test_filters_and_keyset_paging(admin: Api, buyer: Api) -> None:
    category = "cat" + secrets.token_hex(3)
    made = [
        admin.create_listing(
            title=f"Giraumon {n}", price=1000 * (n + 1), category=category, stock=n % 2
        )
        for n in range(7)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"category": category, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = buyer.get("/api/listings", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [listing["id"] for listing in reversed(made)]  # newest first, no repeats

    cheap = buyer.get("/api/listings", params={"category": category, "max_price": 3000}).json()
    assert {item["price"] for item in cheap["items"]} == {1000, 2000, 3000}
    stocked = buyer.get(
        "/api/listings", params={"category": category, "in_stock": "true", "min_price": 2000}
    ).json()["items"]
    # Odd n have stock; of those, n = 1, 3, 5 cost 2000 or more (newest first).
    assert [item["id"] for item in stocked] == [made[n]["id"] for n in (5, 3, 1)]
    assert all(item["stock"] > 0 and item["price"] >= 2000 for item in stocked)
    assert buyer.get("/api/listings", params={"min_price": "cheap"}).status_code == 422


def test_drafts_are_invisible_to_buyers(admin: Api, buyer: Api) -> None:
    draft = admin.create_listing(title="Letchi draft", status="draft")
    assert buyer.get(f"/api/listings/{draft['id']}").status_code == 404
    assert Api(admin.base_url).get(f"/api/listings/{draft['id']}").status_code == 404
    assert admin.get(f"/api/listings/{draft['id']}").status_code == 200


def test_a_cached_page_is_never_served_after_a_change(admin: Api, buyer: Api, server: str) -> None:
    category = "cache" + secrets.token_hex(3)
    listing = admin.create_listing(title="Chouchou", category=category, price=4000)

    def page() -> tuple[dict[str, Any], int]:
        """The page, and how many times the server searched the database to answer it."""
        # The search binds this test's own category, so no other reader is counted.
        with statements(server, lambda sql, params: category in repr(params)) as searches:
            response = buyer.get("/api/listings", params={"category": category})
        assert response.status_code == 200, response.text
        return response.json(), len(searches)

    first, searched = page()
    assert [(item["id"], item["price"]) for item in first["items"]] == [(listing["id"], 4000)]
    assert searched == 1
    again, searched = page()
    assert again == first and searched == 0  # served from the cache, not the database
    patched = admin.patch(f"/api/admin/listings/{listing['id']}", json={"price": 4500})
    assert patched.status_code == 200 and patched.json()["price"] == 4500
    changed, searched = page()
    assert [item["price"] for item in changed["items"]] == [4500] and searched == 1
    assert buyer.get(f"/api/listings/{listing['id']}").json()["price"] == 4500
    admin.patch(f"/api/admin/listings/{listing['id']}", json={"status": "draft"})
    assert buyer.get("/api/listings", params={"category": category}).json()["items"] == []


def test_admin_listing_validation(admin: Api) -> None:
    bad = admin.post("/api/admin/listings", json={"title": "X", "price": -1, "unit": "kg"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "price"
    bad = admin.post("/api/admin/listings", json={"title": "X", "price": 100, "unit": "sack"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "unit"
    listing = admin.create_listing()
    assert admin.delete(f"/api/admin/listings/{listing['id']}").status_code == 204
    assert admin.get(f"/api/listings/{listing['id']}").status_code == 404
    assert admin.delete(f"/api/admin/listings/{listing['id']}").status_code == 404


def test_openapi_describes_every_route(server: str) -> None:
    document = Api(server).get("/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/api/sync/pull",
        "/api/sync/push",
        "/api/auth/login",
        "/api/listings",
        "/api/admin/orders/{order_id}/approve",
        "/healthz",
        "/readyz",
    ):
        assert path in paths
    assert "PushBody" in document["components"]["schemas"]


def test_responses_are_compressed_and_errors_enveloped(server: str) -> None:
    api = Api(server)
    response = api.get("/openapi.json", headers={"accept-encoding": "br"})
    assert response.headers["content-encoding"] == "br"
    response = api.get("/openapi.json", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    missing = api.get("/api/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert api.get("/readyz").json()["status"] == "ok"
    assert response.headers["x-content-type-options"] == "nosniff"
