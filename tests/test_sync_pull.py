"""Pull: snapshots, put/patch/del, scopes, paging, cursors (tampered, foreign, expired), 304."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import httpx

from protocol.cursor import CursorCodec, CursorState, LogCursor, SnapshotCursor
from storage.changelog import prune
from storage.db import Database
from storage.pull import PullPage, log_bounds, pull_page
from storage.scopes import Principal
from tests.conftest import Backend
from tests.support.api import Api, client_id, register
from tests.support.live_server import run_in_server
from tests.support.replica import Replica, apply_page, build, without_empty


def changes_for(pages: list[dict], table: str, kind: str) -> list:
    return [item for page in pages for item in page["changes"].get(table, {}).get(kind, [])]


def test_initial_sync_pages_build_the_same_replica_as_one_page(admin: Api, buyer: Api) -> None:
    for n in range(5):
        admin.create_listing(title=f"Lalo {n}")
    _, one_page = buyer.pull_all(limit=1000)
    _, small_pages = buyer.pull_all(limit=2)
    assert len(small_pages) >= 3
    assert all(
        sum(len(items) for table in page["changes"].values() for items in table.values()) <= 2
        for page in small_pages
    )
    assert build(small_pages) == build(one_page)
    listings = build(one_page)["listings"]
    assert all(row["status"] == "published" for row in listings.values())
    sample = next(iter(listings.values()))
    assert set(sample) == {
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
    }


def test_a_change_arrives_as_a_patch_of_only_its_fields(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(title="Bringelle", stock=9)
    cursor, _ = buyer.pull_all()
    admin.patch(f"/api/admin/listings/{listing['id']}", json={"stock": 4})
    cursor, pages = buyer.pull_all(cursor)
    patches = changes_for(pages, "listings", "patch")
    mine = [patch for patch in patches if patch["id"] == listing["id"]]
    assert len(mine) == 1
    assert set(mine[0]) == {"id", "stock", "updated_at"} and mine[0]["stock"] == 4
    assert not any(item["id"] == listing["id"] for item in changes_for(pages, "listings", "put"))


def test_new_rows_are_put_and_rows_leaving_scope_are_deleted(admin: Api, buyer: Api) -> None:
    cursor, _ = buyer.pull_all()
    fresh = admin.create_listing(title="Carotte")
    hidden = admin.create_listing(title="Chou")
    gone = admin.create_listing(title="Patole")
    cursor, pages = buyer.pull_all(cursor)
    put_ids = {row["id"] for row in changes_for(pages, "listings", "put")}
    assert {fresh["id"], hidden["id"], gone["id"]} <= put_ids

    admin.patch(f"/api/admin/listings/{hidden['id']}", json={"status": "draft"})
    admin.delete(f"/api/admin/listings/{gone['id']}")
    cursor, pages = buyer.pull_all(cursor)
    assert {hidden["id"], gone["id"]} <= set(changes_for(pages, "listings", "del"))

    # Back in scope: the buyer does not hold it any more, so it comes whole.
    admin.patch(
        f"/api/admin/listings/{hidden['id']}", json={"status": "published", "title": "Chou pommé"}
    )
    _, pages = buyer.pull_all(cursor)
    assert [
        row["title"] for row in changes_for(pages, "listings", "put") if row["id"] == hidden["id"]
    ] == ["Chou pommé"]


def test_drafts_reach_admins_but_not_buyers(admin: Api, buyer: Api) -> None:
    buyer_cursor, _ = buyer.pull_all()
    admin_cursor, _ = admin.pull_all()
    draft = admin.create_listing(title="Secret draft", status="draft")
    _, buyer_pages = buyer.pull_all(buyer_cursor)
    _, admin_pages = admin.pull_all(admin_cursor)
    assert draft["id"] not in {row["id"] for row in changes_for(buyer_pages, "listings", "put")}
    assert draft["id"] in {row["id"] for row in changes_for(admin_pages, "listings", "put")}


def test_orders_reach_their_owner_and_admins_only(admin: Api, server: str) -> None:
    alice, bob = register(server, "alice"), register(server, "bob")
    listing = admin.create_listing(stock=10)
    bob_cursor, _ = bob.pull_all()
    admin_cursor, _ = admin.pull_all()
    order_id = "ord-" + secrets.token_hex(6)
    result = alice.push(
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
                            "listing_id": listing["id"],
                            "quantity": 2,
                        }
                    ],
                },
            }
        ],
    ).json()["results"][0]
    assert result["ok"], result
    _, alice_pages = alice.pull_all()
    alice_replica = build(alice_pages)
    assert alice_replica["orders"][order_id]["total"] == 2 * listing["price"]
    assert len(alice_replica["order_items"]) == 1
    assert any(n["type"] == "order_pending" for n in alice_replica["notifications"].values())

    _, bob_pages = bob.pull_all(bob_cursor)
    assert not changes_for(bob_pages, "orders", "put")
    assert not changes_for(bob_pages, "notifications", "put")
    stock_patches = [
        p for p in changes_for(bob_pages, "listings", "patch") if p["id"] == listing["id"]
    ]
    assert stock_patches[-1]["stock"] == 8  # public stock moves for everyone

    _, admin_pages = admin.pull_all(admin_cursor)
    assert order_id in {row["id"] for row in changes_for(admin_pages, "orders", "put")}


def test_tampered_and_foreign_cursors_reset_and_garbage_is_400(admin: Api, server: str) -> None:
    alice, bob = register(server, "alice"), register(server, "bob")
    cursor, _ = alice.pull_all()
    tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    for bad in (tampered, bob.pull_all()[0]):
        page = alice.get("/api/sync/pull", params={"cursor": bad}).json()
        assert page["reset"] is True
        assert "listings" in page["changes"]
    for garbage in ("!!!", "xyz", "A" * 500):
        response = alice.get("/api/sync/pull", params={"cursor": garbage})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "malformed_cursor"
    assert alice.get("/api/sync/pull", params={"limit": "many"}).status_code == 422


def test_if_none_match_with_nothing_new_is_304(admin: Api, buyer: Api) -> None:
    cursor, _ = buyer.pull_all()
    response = buyer.get(
        "/api/sync/pull", params={"cursor": cursor}, headers={"if-none-match": f'"{cursor}"'}
    )
    assert response.status_code == 304 and response.content == b""
    admin.create_listing(title="Citron")
    response = buyer.get(
        "/api/sync/pull", params={"cursor": cursor}, headers={"if-none-match": f'"{cursor}"'}
    )
    assert response.status_code == 200
    assert response.headers["etag"] == f'"{response.json()["cursor"]}"'


def test_an_empty_pull_keeps_the_cursor(buyer: Api) -> None:
    cursor, _ = buyer.pull_all()
    page = buyer.get("/api/sync/pull", params={"cursor": cursor}).json()
    assert page == {"cursor": cursor, "more": False, "reset": False, "changes": {}}


def prune_everything(database_url: str) -> int:
    """Prune the whole change log (but its newest entry), as if every entry had aged out."""

    async def run() -> int:
        db = Database(database_url)
        try:
            return await prune(db, retention_ms=-60_000)
        finally:
            await db.dispose()

    return asyncio.run(run())


def wait_until_pruned_in_tail(base_url: str) -> None:
    async def floors(app: Any) -> tuple[int | None, int]:
        services = app.state.services
        async with services.db.read() as conn:
            bounds = await log_bounds(conn)
        return services.live.tail.floor, bounds.floor

    for _ in range(200):
        tail_floor, database_floor = run_in_server(base_url, floors)
        if tail_floor is None or tail_floor >= database_floor:
            return
        time.sleep(0.05)
    raise AssertionError("the server's tail never learnt of the pruning")


def test_a_cursor_older_than_the_retention_window_gets_a_reset(
    admin: Api, buyer: Api, backend: Backend
) -> None:
    cursor, _ = buyer.pull_all()
    for n in range(3):
        admin.create_listing(title=f"Goyave de Chine {n}")

    assert prune_everything(backend.env["DATABASE_URL"]) > 0
    # The server's shared tail learns the new floor with its next read of the log (at most
    # the hub's poll interval later); until then it could still answer the old cursor exactly.
    wait_until_pruned_in_tail(buyer.base_url)
    page = buyer.get("/api/sync/pull", params={"cursor": cursor, "limit": 1000}).json()
    assert page["reset"] is True
    _, fresh = Api(buyer.base_url, buyer.token).pull_all()
    replica = build([page])
    _, rest = buyer.pull_all(page["cursor"]) if page["more"] else ("", [])
    build(rest, replica)
    assert without_empty(replica) == without_empty(build(fresh))
    # A snapshot over several pages after the whole log was pruned still ends, and writes
    # after the pruning get positions past every cursor handed out before it.
    cursor, small = buyer.pull_all(limit=2)
    assert len(small) >= 2
    added = admin.create_listing(title="After pruning")
    _, pages = buyer.pull_all(cursor)
    assert added["id"] in {row["id"] for row in changes_for(pages, "listings", "put")}
    melon = buyer.get("/api/sync/watermelon", params={"last_pulled_at": 5}).json()
    assert melon["timestamp"] > 1


def test_compressed_pull_is_smaller(buyer: Api) -> None:
    plain = buyer.get(
        "/api/sync/pull", params={"limit": 50}, headers={"accept-encoding": "identity"}
    )
    packed = buyer.get("/api/sync/pull", params={"limit": 50}, headers={"accept-encoding": "br"})
    assert packed.headers.get("content-encoding") == "br"
    # The same page; the cursors may name different starts (first syncs begun a few seconds
    # apart start at different positions: LiveHub.snapshot_origin).
    assert {**packed.json(), "cursor": ""} == {**plain.json(), "cursor": ""}
    assert int(packed.headers["content-length"]) < len(plain.content) / 2


def test_a_row_that_left_and_came_back_across_pages_is_never_patched_unheld(
    admin: Api, buyer: Api
) -> None:
    """Regression: membership is decided as of the page's end, not from the current row."""
    listing = admin.create_listing(title="Boomerang", stock=5)
    cursor, pages = buyer.pull_all()
    replica = build(pages)
    path = f"/api/admin/listings/{listing['id']}"
    # Other rows between the listing's entries make one-row pages stop between them.
    admin.patch(path, json={"price": 6100})
    admin.create_listing(title="Filler one")
    admin.patch(path, json={"stock": 4})
    admin.create_listing(title="Filler two")
    admin.patch(path, json={"status": "draft"})  # leaves the public scope
    page = {"cursor": cursor}
    for _ in range(2):  # pages [price change] and [filler one], read while it is hidden
        page = buyer.get("/api/sync/pull", params={"cursor": page["cursor"], "limit": 1}).json()
        apply_page(replica, page)
    admin.patch(path, json={"status": "published"})  # back, before the [stock change] page
    while True:
        page = buyer.get("/api/sync/pull", params={"cursor": page["cursor"], "limit": 1}).json()
        apply_page(replica, page)  # raises if a patch names a row the replica lacks
        if not page["more"]:
            break
    _, fresh = buyer.pull_all()
    assert without_empty(replica) == without_empty(build(fresh))
    assert replica["listings"][listing["id"]]["stock"] == 4


def test_a_put_held_back_while_a_new_row_is_hidden_is_not_followed_by_a_patch(
    admin: Api, buyer: Api
) -> None:
    """Regression (found by review, then reproduced): a page ending while a new row is
    hidden again holds its put back; a later page, read once the row is back, must not send
    the row's in-between changes as a patch, because the client never received the row."""
    cursor, pages = buyer.pull_all()
    replica = build(pages)
    listing = admin.create_listing(title="Pipengaille")  # enters the public scope
    path = f"/api/admin/listings/{listing['id']}"
    admin.create_listing(title="Filler one")
    admin.patch(path, json={"price": 7200})  # changes inside the scope
    admin.create_listing(title="Filler two")
    admin.patch(path, json={"status": "draft"})  # leaves it
    # One-row pages: [enters] [filler one] [price] [filler two] [leaves] ...
    page = buyer.get("/api/sync/pull", params={"cursor": cursor, "limit": 1}).json()
    apply_page(replica, page)  # [enters], read while hidden: held back
    admin.patch(path, json={"status": "published"})  # back before the [price] page is read
    while page["more"]:
        page = buyer.get("/api/sync/pull", params={"cursor": page["cursor"], "limit": 1}).json()
        apply_page(replica, page)  # raises on a patch for a row the replica lacks
    _, fresh = buyer.pull_all()
    assert without_empty(replica) == without_empty(build(fresh))
    assert replica["listings"][listing["id"]]["price"] == 7200


def test_a_row_hidden_while_the_snapshot_passed_it_is_not_patched_after_the_snapshot(
    admin: Api, buyer: Api, backend: Backend
) -> None:
    """The snapshot reads rows as they are when it reaches them, then replays the log from
    where it started; a row hidden when the snapshot reached it, and back since, must come
    as a put, never as a patch of changes made before it was hidden."""
    principal = Principal(buyer.user["id"], "user")
    candidates = [admin.create_listing(title=f"Calebasse {n}")["id"] for n in range(2)]

    async def run() -> tuple[Replica, str]:
        db = Database(backend.env["DATABASE_URL"])
        try:

            async def page(state: CursorState | None, limit: int) -> PullPage:
                async with db.read() as conn:
                    return await pull_page(conn, principal, state, limit)

            replica: Replica = {}
            first = await page(None, 1)  # the snapshot's first row: the smallest id
            apply_page(replica, {"changes": first.changes})
            sent = {row["id"] for row in first.changes.get("listings", {}).get("put", [])}
            hidden = next(row_id for row_id in candidates if row_id not in sent)
            path = f"/api/admin/listings/{hidden}"
            admin.patch(path, json={"price": 8800})  # after the snapshot's head
            admin.create_listing(title="Filler")
            admin.patch(path, json={"status": "draft"})  # hidden when the snapshot reaches it
            state: CursorState = first.next_state
            while isinstance(state, SnapshotCursor):
                current = await page(state, 50)
                apply_page(replica, {"changes": current.changes})
                state = current.next_state
            assert hidden not in replica.get("listings", {})
            admin.patch(path, json={"status": "published"})
            more = True
            while more:  # one-row pages from the snapshot's head: [price] [filler] ...
                current = await page(state, 1)
                apply_page(replica, {"changes": current.changes})  # raises on an unheld patch
                state, more = current.next_state, current.more
            return replica, hidden
        finally:
            await db.dispose()

    replica, hidden = asyncio.run(run())
    _, fresh = buyer.pull_all()
    assert without_empty(replica) == without_empty(build(fresh))
    assert replica["listings"][hidden]["price"] == 8800


def test_a_cursor_past_the_logs_head_gets_a_reset(buyer: Api, backend: Backend) -> None:
    """Say the database was restored from a backup: positions handed out since are gone, and
    waiting for the head to pass the cursor would skip every change until then."""
    codec = CursorCodec(backend.env["JWT_SECRET"].encode())
    ahead = codec.encode(LogCursor(10**12), buyer.user["id"])
    page = buyer.get("/api/sync/pull", params={"cursor": ahead, "limit": 1000}).json()
    assert page["reset"] is True
    replica = build([page])
    if page["more"]:
        build(buyer.pull_all(page["cursor"])[1], replica)
    _, fresh = buyer.pull_all()
    assert without_empty(replica) == without_empty(build(fresh))


def test_the_pull_lane_answers_as_the_whole_stack_does(
    buyer: Api, server: str, monkeypatch: Any, caplog: Any
) -> None:
    """GET /api/sync/pull skips the router and the body middleware (sync_server.pull_lane):
    the edge, the envelopes and the labels must be what every other route gets."""
    with caplog.at_level(logging.DEBUG, logger="freshroots.access"):  # an empty pull is DEBUG
        page = buyer.get("/api/sync/pull", headers={"x-request-id": "lane-1"})
    assert page.status_code == 200 and page.headers["x-request-id"] == "lane-1"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    line = [r for r in caplog.records if getattr(r, "request_id", "") == "lane-1"]
    assert line and line[0].route == "/api/sync/pull" and line[0].user_id == buyer.user["id"]  # type: ignore[attr-defined]
    metrics = httpx.get(f"{server}/metrics").text
    assert 'freshroots_responses_total{route="/api/sync/pull",status="2xx"}' in metrics

    anonymous = httpx.get(f"{server}/api/sync/pull")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    nul = buyer.get("/api/sync/pull?cursor=%00")
    assert nul.status_code == 400 and nul.json()["error"]["code"] == "invalid_parameter"
    garbage = buyer.get("/api/sync/pull?cursor=not-a-cursor")
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "malformed_cursor"
    wrong_method = buyer.post("/api/sync/pull", json={})
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the pull path")

    monkeypatch.setattr("sync_server.routes.sync.read_page", crash)
    monkeypatch.setattr("sync_server.routes.sync.nothing_new", crash)
    with caplog.at_level(logging.ERROR, logger="freshroots"):
        crashed = buyer.get("/api/sync/pull")
    assert crashed.status_code == 500 and crashed.json()["error"]["code"] == "internal_error"
    assert crashed.headers["x-request-id"]  # the edge still wrapped it
    assert any("unhandled error" in r.getMessage() for r in caplog.records)


def test_a_first_sync_shared_by_a_users_devices_still_ends_with_what_came_after(
    admin: Api, buyer: Api
) -> None:
    """Devices of one user starting a first sync within seconds share its pages (same start
    position). The last one said `more: false` when it was built; a change committed since
    must still reach a device that reads that page later, before it is told it is complete."""
    _, first_device = buyer.pull_all()
    added = admin.create_listing(title="Songe de Chamarel")
    _, second_device = buyer.pull_all()  # the same user, seconds later: the same start
    assert added["id"] in build(second_device)["listings"]
    assert added["id"] not in build(first_device).get("listings", {})
