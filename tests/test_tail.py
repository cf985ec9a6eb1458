"""The shared tail: pulls inside it cost no database query, and say exactly what the database
path would say; a cursor outside it falls back to the database."""

from __future__ import annotations

import gzip
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from protocol.cursor import LogCursor
from storage.pull import Window, _Entry, log_head, pull_page
from storage.scopes import PUBLIC, Principal
from storage.tail import ChangeTail, window_entries
from sync_server.app import create_app
from sync_server.syncing import read_page
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.support.api import Api, client_id, login, purchase, register
from tests.support.live_server import run_in_server, serve_in_thread
from tests.support.queries import statements
from tests.support.replica import build, without_empty


def hub_state(base_url: str) -> tuple[int, int | None, int]:
    """(hub position, tail floor, log head) of an in-process server."""

    async def read(app: Any) -> tuple[int, int | None, int]:
        services = app.state.services
        async with services.db.read() as conn:
            head = await log_head(conn)
        return services.live.position, services.live.tail.floor, head

    return run_in_server(base_url, read)


def wait_for_hub(base_url: str) -> None:
    """Until the server's hub has read every committed change (one shared read per commit)."""
    for _ in range(400):
        position, _floor, head = hub_state(base_url)
        if position >= head:
            return
        time.sleep(0.025)
    pytest.fail("the hub never read the newest commits")


@pytest.fixture
def own_server(backend: Backend, admin_email: str) -> Iterator[str]:
    """A server of this test's own, so its tail starts where the test says."""
    with serve_in_thread(create_app(backend.settings())) as base_url:
        yield base_url


def test_a_pull_inside_the_tail_reads_nothing_from_the_database(
    own_server: str, admin_email: str
) -> None:
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    buyer = register(own_server, "tailbuyer")
    listings = [admin.create_listing(title=f"Tail {n}", stock=10) for n in range(3)]
    cursor, _ = buyer.pull_all()
    for listing in listings:
        assert admin.patch(f"/api/admin/listings/{listing['id']}", json={"stock": 7}).is_success
    order = buyer.push(
        client_id(),
        [purchase(1, listings[0]["id"], quantity=2)],
    )
    assert order.json()["results"][0]["ok"]
    wait_for_hub(own_server)
    with statements(own_server, lambda _sql, _parameters: True) as seen:
        page = buyer.get("/api/sync/pull", params={"cursor": cursor}).json()
    assert seen == []
    stocks = {row["id"]: row["stock"] for row in page["changes"]["listings"]["patch"]}
    assert stocks == {listings[0]["id"]: 5, listings[1]["id"]: 7, listings[2]["id"]: 7}
    assert len(page["changes"]["orders"]["put"]) == 1  # the buyer's own scope, from memory too
    assert not page["more"]


def test_a_cursor_older_than_the_tail_falls_back_to_the_database(
    backend: Backend, admin_email: str
) -> None:
    with serve_in_thread(create_app(backend.settings(SYNC_TAIL_ENTRIES="4"))) as server:
        admin = login(server, admin_email, ADMIN_PASSWORD)
        buyer = register(server, "oldcursor")
        listing = admin.create_listing(title="Vieux curseur", stock=50)
        cursor, _ = buyer.pull_all()
        for stock in range(40, 30, -1):  # far more entries than the tail keeps
            admin.patch(f"/api/admin/listings/{listing['id']}", json={"stock": stock})
        wait_for_hub(server)
        _position, floor, _head = hub_state(server)
        assert floor is not None and floor > 0
        with statements(server, lambda sql, _parameters: "change_log" in sql) as seen:
            page = buyer.get("/api/sync/pull", params={"cursor": cursor}).json()
        assert seen, "an old cursor must be answered by the database"
        [patch] = page["changes"]["listings"]["patch"]
        assert (patch["id"], patch["stock"]) == (listing["id"], 31)


def test_tail_pages_are_the_database_pages(own_server: str, admin_email: str) -> None:
    """Random writes of every kind, then every cursor the tail covers, several page sizes,
    three readers: the tail's page must equal the database's, field for field."""
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    buyers = [register(own_server, f"tailcmp{n}") for n in range(2)]
    rng = random.Random(7)
    listings = [
        admin.create_listing(title=f"Cmp {n}", stock=30, status=rng.choice(["published", "draft"]))
        for n in range(6)
    ]
    orders: list[tuple[Api, str]] = []
    devices = {id(buyer): client_id() for buyer in buyers}
    mutation_ids = {id(buyer): iter(range(1, 1000)) for buyer in buyers}
    for _ in range(60):
        listing = rng.choice(listings)
        buyer = rng.choice(buyers)
        action = rng.random()
        if action < 0.3:
            admin.patch(
                f"/api/admin/listings/{listing['id']}",
                json={rng.choice(["stock", "price"]): rng.randint(1, 40) * 100},
            )
        elif action < 0.45:
            admin.patch(
                f"/api/admin/listings/{listing['id']}",
                json={"status": rng.choice(["published", "draft"])},
            )
        elif action < 0.7:
            order_id = "ord-" + secrets.token_hex(6)
            buyer.push(
                devices[id(buyer)],
                [purchase(next(mutation_ids[id(buyer)]), listing["id"], order_id=order_id)],
            )
            orders.append((buyer, order_id))
        elif action < 0.85 and orders:
            owner, order_id = rng.choice(orders)
            admin.put(f"/api/admin/orders/{order_id}/reject", json={"reason": "no"})
        elif orders:
            owner, order_id = rng.choice(orders)
            owner.push(
                devices[id(owner)],
                [
                    {
                        "id": next(mutation_ids[id(owner)]),
                        "name": "cancel_order",
                        "args": {"order_id": order_id},
                    }
                ],
            )
    wait_for_hub(own_server)
    readers = [Principal(api.user["id"], api.user["role"]) for api in [admin, *buyers]]

    async def compare(app: Any) -> int:
        services = app.state.services
        tail = services.live.tail
        assert tail.floor is not None
        compared = 0
        async with services.db.read() as conn:
            assert await log_head(conn) == tail.head  # nothing committed meanwhile
            for principal in readers:
                for after in range(tail.floor, tail.head + 1):
                    for limit in (1, 3, 200):
                        for full_rows in (False, True):
                            memory = tail.page(principal.scopes, after, limit, full_rows=full_rows)
                            database = await pull_page(
                                conn, principal, LogCursor(after), limit, full_rows=full_rows
                            )
                            assert memory is not None
                            assert (memory.changes, memory.next_state, memory.more) == (
                                database.changes,
                                database.next_state,
                                database.more,
                            ), (principal, after, limit, full_rows)
                            compared += 1
        return compared

    assert run_in_server(own_server, compare, timeout=300) > 1000

    async def follow_aligned(app: Any) -> int:
        """The path phones take (shared chunk pages, own rows added, bytes as sent): from
        every cursor, to the end, it must come to what the database's pages come to."""
        services = app.state.services
        tail = services.live.tail
        assert tail.floor is not None
        chains = 0
        async with services.db.read() as conn:
            for principal in readers:
                for after in range(tail.floor, tail.head + 1):
                    database = []
                    state: Any = LogCursor(after)
                    while True:
                        page = await pull_page(conn, principal, state, 200)
                        database.append(page.changes)
                        state = page.next_state
                        if not page.more:
                            break
                    for limit in (1, 3, 200):
                        aligned, position = [], after
                        while True:
                            page, shared = await read_page(
                                services, principal, LogCursor(position), False, limit
                            )
                            changes = page.changes
                            if shared is not None:
                                body, encoding = shared.body("c", "gzip")
                                if encoding == "gzip":
                                    body = gzip.decompress(body)
                                changes = orjson.loads(body)["changes"]
                                assert changes == page.changes
                            assert page.rows <= limit, (principal, after, limit)
                            aligned.append(changes)
                            assert isinstance(page.next_state, LogCursor)
                            assert page.next_state.position > position or not page.more
                            position = page.next_state.position
                            if not page.more:
                                break
                        assert position == tail.head
                        assert net_effect(aligned) == net_effect(database), (
                            principal,
                            after,
                            limit,
                        )
                        chains += 1
        return chains

    hits = pages_counters(own_server)[0]
    assert run_in_server(own_server, follow_aligned, timeout=300) > 300
    assert pages_counters(own_server)[0] > hits  # the chunk pages were shared


def net_effect(pages: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str, Any]]:
    """What a run of pages does to each row, merged: ("put", row), ("patch", fields) or
    ("del", None). A patch of a row the pages deleted is a defect (the client lacks it)."""
    effect: dict[tuple[str, str], tuple[str, Any]] = {}
    for changes in pages:
        for table, kinds in changes.items():
            for row in kinds.get("put", []):
                effect[(table, row["id"])] = ("put", dict(row))
            for patch in kinds.get("patch", []):
                kind, known = effect.get((table, patch["id"]), ("patch", {}))
                assert kind != "del", f"patch after del: {table} {patch}"
                effect[(table, patch["id"])] = (kind, {**known, **patch})
            for row_id in kinds.get("del", []):
                effect[(table, row_id)] = ("del", None)
    return effect


def pages_counters(base_url: str) -> tuple[int, int]:
    async def read(app: Any) -> tuple[int, int]:
        pages = app.state.services.pages
        return pages.hits, pages.misses

    return run_in_server(base_url, read)


@pytest.mark.parametrize("encoding", ["br", "gzip", "identity"])
def test_phones_at_one_position_share_one_encoded_page(
    own_server: str, admin_email: str, encoding: str
) -> None:
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    phones = [register(own_server, f"sharer{n}") for n in range(3)]
    listings = [admin.create_listing(title=f"Partagé {n}", stock=40) for n in range(12)]
    wait_for_hub(own_server)
    # Everyone at one position: the head (an empty pull of an up-to-date cursor keeps it).
    cursors = {id(phone): phone.pull_all()[0] for phone in phones}
    for listing in listings:
        admin.patch(f"/api/admin/listings/{listing['id']}", json={"stock": 39})
    wait_for_hub(own_server)
    hits, misses = pages_counters(own_server)
    pages = []
    for phone in phones:
        response = phone.get(
            "/api/sync/pull",
            params={"cursor": cursors[id(phone)]},
            headers={"accept-encoding": encoding},
        )
        assert response.status_code == 200
        assert response.headers.get("content-encoding", "identity") == encoding
        pages.append(response.json())  # httpx decodes br and gzip like a phone's client
    assert pages_counters(own_server) == (hits + len(phones) - 1, misses + 1)
    changes = [page["changes"] for page in pages]
    assert changes[0] == changes[1] == changes[2]
    assert {row["id"]: row["stock"] for row in changes[0]["listings"]["patch"]} == {
        listing["id"]: 39 for listing in listings
    }
    # Each phone's cursor is its own, and works only for it.
    assert len({page["cursor"] for page in pages}) == len(phones)
    for phone, page in zip(phones, pages, strict=True):
        again = phone.get("/api/sync/pull", params={"cursor": page["cursor"]}).json()
        assert again == {"cursor": page["cursor"], "more": False, "reset": False, "changes": {}}
    stranger = phones[1].get("/api/sync/pull", params={"cursor": pages[0]["cursor"]}).json()
    assert stranger["reset"] is True


def test_phones_at_different_cursors_converge_on_the_same_pages(
    own_server: str, admin_email: str
) -> None:
    """The log is cut into chunks: each phone's first page is its own, every later page is
    a whole chunk, built once and shared, whatever cursor each phone started from."""
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    listings = [admin.create_listing(title=f"Chunk {n}", stock=90) for n in range(30)]
    phones = [register(own_server, f"chunker{n}") for n in range(3)]
    cursors = []
    for phone in phones:  # each phone current at a different position
        wait_for_hub(own_server)
        cursors.append(phone.pull_all()[0])
        for listing in listings[:2]:
            admin.patch(f"/api/admin/listings/{listing['id']}", json={"stock": 80})
    for stock in (70, 60):
        for listing in listings:
            admin.patch(f"/api/admin/listings/{listing['id']}", json={"stock": stock})
    wait_for_hub(own_server)
    runs = []
    for phone, cursor in zip(phones, cursors, strict=True):
        hits = pages_counters(own_server)[0]
        _, pages = phone.pull_all(cursor, limit=10)
        runs.append((pages, pages_counters(own_server)[0] - hits))
        assert all(
            sum(len(v) for t in p["changes"].values() for v in t.values()) <= 10 for p in pages
        )
        final = build(pages, {"listings": {row["id"]: dict(row) for row in listings}})
        assert {row["stock"] for row in final["listings"].values()} == {60}
    first_run = [page["changes"] for page in runs[0][0][1:]]
    for pages, hits in runs[1:]:
        # After its first page, each later phone reads the very pages the first one did.
        assert [page["changes"] for page in pages[1:]] == first_run
        assert hits >= len(pages) - 1
    assert len(first_run) >= 4


def test_a_phone_with_rows_of_its_own_still_reads_the_shared_chunks(
    own_server: str, admin_email: str
) -> None:
    """Chunks leave room for a phone's own rows: a buyer whose order falls inside a full
    chunk reads the same shared pages as a phone with nothing of its own (before, the chunk
    plus its order passed `limit` and the buyer fell back to pages of its own)."""
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    listings = [admin.create_listing(title=f"Réserve {n}", stock=50) for n in range(40)]
    watcher, buyer = register(own_server, "watcher"), register(own_server, "reserver")
    wait_for_hub(own_server)
    cursors = [watcher.pull_all()[0], buyer.pull_all()[0]]
    order_id = "ord-" + secrets.token_hex(6)
    buyer.push(client_id(), [purchase(1, listings[0]["id"], order_id=order_id)])
    for stock in (45, 40):
        for listing in listings:
            admin.patch(f"/api/admin/listings/{listing['id']}", json={"stock": stock})
    wait_for_hub(own_server)
    _, watched = watcher.pull_all(cursors[0], limit=20)
    hits = pages_counters(own_server)[0]
    _, bought = buyer.pull_all(cursors[1], limit=20)
    assert pages_counters(own_server)[0] - hits == len(bought)  # every page shared
    assert [page["changes"].get("listings") for page in bought] == [
        page["changes"].get("listings") for page in watched
    ]
    assert all(
        sum(len(rows) for table in page["changes"].values() for rows in table.values()) <= 20
        for page in bought
    )
    final = build(bought, {"listings": {row["id"]: dict(row) for row in listings}})
    assert order_id in final["orders"]
    assert {row["stock"] for row in final["listings"].values()} == {40}


def test_devices_of_a_user_with_a_burst_of_its_own_share_their_pages(
    own_server: str, admin_email: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of the user's own rows does not fit beside a shared chunk: those pages are the
    user's, built from the tail once and read by every device of that user passing through
    the same place (a shared account has dozens), not built again per device."""
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    listings = [admin.create_listing(title=f"Rafale {n}", stock=50) for n in range(12)]
    phone = register(own_server, "burst")
    tablet = login(own_server, phone.user["email"], "correct horse 1")
    wait_for_hub(own_server)
    cursor = phone.pull_all()[0]
    order_ids = ["ord-" + secrets.token_hex(6) for _ in range(8)]
    phone.push(
        client_id(),
        [
            purchase(number, listings[number]["id"], order_id=order_id)
            for number, order_id in enumerate(order_ids, 1)
        ],
    )
    for listing in listings:
        admin.patch(f"/api/admin/listings/{listing['id']}", json={"price": 6100})
    wait_for_hub(own_server)
    _, first = phone.pull_all(cursor, limit=10)
    built: list[tuple[str, ...]] = []
    page = ChangeTail.page

    def counted(self: ChangeTail, scopes: tuple[str, ...], *args: Any, **kwargs: Any) -> Any:
        if PUBLIC in scopes:  # a page holding the catalogue's rows, not only the user's
            built.append(scopes)
        return page(self, scopes, *args, **kwargs)

    monkeypatch.setattr(ChangeTail, "page", counted)
    _, second = tablet.pull_all(cursor, limit=10)
    assert [page["changes"] for page in second] == [page["changes"] for page in first]
    # Every page but the last (it reaches the head: built per request) is read from cache.
    assert len(second) >= 4
    assert len(built) <= 1, built
    final = build(second, {"listings": {row["id"]: dict(row) for row in listings}})
    assert set(order_ids) <= set(final["orders"])
    assert {row["price"] for row in final["listings"].values()} == {6100}


@pytest.mark.parametrize("encoding", ["br", "gzip", "identity"])
def test_a_phone_with_changes_of_its_own_gets_them_after_the_shared_part(
    own_server: str, admin_email: str, encoding: str
) -> None:
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    buyer, other = register(own_server, "ownpage"), register(own_server, "otherpage")
    listings = [admin.create_listing(title=f"À moi {n}", stock=40) for n in range(12)]
    wait_for_hub(own_server)
    mine, theirs = buyer.pull_all()[0], other.pull_all()[0]
    order_ids = ["ord-" + secrets.token_hex(6) for _ in listings[:4]]
    buyer.push(
        client_id(),
        [
            purchase(number, listing["id"], order_id=order_id, note="à la porte, merci " * number)
            for number, (order_id, listing) in enumerate(
                zip(order_ids, listings[:4], strict=True), 1
            )
        ],
    )
    for listing in listings:
        admin.patch(f"/api/admin/listings/{listing['id']}", json={"price": 7000})
    wait_for_hub(own_server)
    hits = pages_counters(own_server)[0]
    headers = {"accept-encoding": encoding}
    shared = other.get("/api/sync/pull", params={"cursor": theirs}, headers=headers)
    own = buyer.get("/api/sync/pull", params={"cursor": mine}, headers=headers)
    # One encoding of the listings for both (the second phone's is a hit), each phone's rows
    # after it: the body is still one ordinary stream of that encoding.
    assert pages_counters(own_server)[0] == hits + 1
    assert own.headers.get("content-encoding", "identity") == encoding
    own_page, shared_page = own.json(), shared.json()
    assert sorted(row["id"] for row in own_page["changes"]["orders"]["put"]) == sorted(order_ids)
    assert "orders" not in shared_page["changes"]
    assert own_page["changes"]["listings"] == shared_page["changes"]["listings"]
    assert {row["price"] for row in own_page["changes"]["listings"]["patch"]} == {7000}
    assert own_page["more"] is shared_page["more"] is False
    again = buyer.get("/api/sync/pull", params={"cursor": own_page["cursor"]}).json()
    assert again["changes"] == {}


def test_a_phone_with_changes_of_its_own_gets_its_own_page(
    own_server: str, admin_email: str
) -> None:
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    buyer, other = register(own_server, "ownpage"), register(own_server, "otherpage")
    listing = admin.create_listing(title="À moi", stock=40)
    wait_for_hub(own_server)
    mine, theirs = buyer.pull_all()[0], other.pull_all()[0]
    order_id = "ord-" + secrets.token_hex(6)
    buyer.push(
        client_id(),
        [purchase(1, listing["id"], order_id=order_id)],
    )
    wait_for_hub(own_server)
    own = buyer.get("/api/sync/pull", params={"cursor": mine}).json()
    shared = other.get("/api/sync/pull", params={"cursor": theirs}).json()
    assert [row["id"] for row in own["changes"]["orders"]["put"]] == [order_id]
    assert "orders" not in shared["changes"]
    assert own["changes"]["listings"] == shared["changes"]["listings"]


def test_the_tail_keeps_at_most_its_setting_and_forgets_rows_with_their_last_entry() -> None:
    tail = ChangeTail(max_entries=100)
    tail.start_at(0)
    position = 0
    for _ in range(50):
        entries: dict[tuple[str, str], list[Any]] = {}
        for _step in range(7):
            position += 1
            key = ("listings", f"row-{position % 40}")  # rows touched again and again
            entries.setdefault(key, []).append(_Entry(position, PUBLIC, 0, "stock"))
        window = Window(
            position - 7, position, entries, {key: {"id": key[1]} for key in entries}, False
        )
        tail.feed(window, window_entries(window))
        assert len(tail) <= 100
        assert tail.floor is not None and tail.head == position
        assert tail.covers(tail.floor) and not tail.covers(tail.floor - 1)
    held_rows = {f"row-{p % 40}" for p in range(tail.floor + 1, position + 1)}
    assert set(key[1] for key in tail._rows) == held_rows
    tail.raise_floor(position - 10)  # the database pruned its log
    assert len(tail) == 10 and tail.floor == position - 10


def test_phones_starting_a_first_sync_together_read_the_catalogue_once(
    own_server: str, admin_email: str
) -> None:
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    for n in range(25):
        admin.create_listing(title=f"Premier {n}", stock=5)
    wait_for_hub(own_server)
    phones = [register(own_server, f"first{n}") for n in range(3)]
    replicas, listing_reads = [], []
    for phone in phones:
        with statements(own_server, lambda sql, _parameters: "FROM listings" in sql) as seen:
            _, pages = phone.pull_all(limit=10)
        listing_reads.append(len(seen))
        replicas.append(without_empty(build(pages)))
    # The first phone reads every catalogue page; the others none: the last one too, where the
    # catalogue ends and their own rows begin, is shared (their own rows are read apart).
    assert listing_reads[0] >= 3 and listing_reads[1] == listing_reads[2] == 0, listing_reads
    _, whole = phones[0].pull_all(limit=1000)
    assert replicas[0] == replicas[1] == replicas[2] == without_empty(build(whole))


def test_a_users_devices_starting_a_first_sync_together_read_its_rows_once(
    own_server: str, admin_email: str
) -> None:
    admin = login(own_server, admin_email, ADMIN_PASSWORD)
    listing = admin.create_listing(title="Maison", stock=50)
    buyer = register(own_server, "household")
    buyer.push(
        client_id(),
        [purchase(number, listing["id"]) for number in range(1, 8)],
    )
    wait_for_hub(own_server)
    devices = [Api(own_server) for _ in range(3)]
    replicas, reads = [], []
    for device in devices:
        device.token = buyer.token
        with statements(own_server, lambda sql, _parameters: "SELECT" in sql) as seen:
            _, pages = device.pull_all(limit=3)
        reads.append(len(seen))
        replicas.append(without_empty(build(pages)))
    assert len(replicas[0]["orders"]) == 7
    assert replicas[0] == replicas[1] == replicas[2]
    # The first device read the catalogue and the user's rows; its siblings read next to
    # nothing (under a loaded full run, one page is now and then read again: one transaction
    # of two statements, against the hundreds the first device read).
    assert reads[0] >= 10 and reads[1] <= 2 and reads[2] <= 2, reads
    # Once the user writes, a device starting now gets the write in its first sync (read your
    # writes): never a page of the user's rows built before it.
    order_id = "ord-" + secrets.token_hex(6)
    buyer.push(
        client_id(),
        [purchase(1, listing["id"], order_id=order_id)],
    )
    late = Api(own_server)
    late.token = buyer.token
    assert order_id in build(late.pull_all(limit=3)[1])["orders"]


def test_chunks_hold_at_most_a_page_and_survive_eviction() -> None:
    """Whatever the cursor, a page to its chunk's end holds at most `limit` rows, ends past
    the cursor, and pages from two cursors meet at the same chunk ends."""
    tail = ChangeTail(max_entries=60)
    tail.start_at(0)
    rng = random.Random(3)
    position = 0
    for _ in range(40):
        entries: dict[tuple[str, str], list[Any]] = {}
        for _step in range(rng.randint(1, 4)):
            position += 1
            key = ("listings", f"row-{rng.randint(0, 14)}")
            entries.setdefault(key, []).append(_Entry(position, PUBLIC, 0, "stock"))
        window = Window(
            position - sum(map(len, entries.values())),
            position,
            entries,
            {
                key: {"id": key[1], "stock": 1, "status": "published", "deleted_at": None}
                for key in entries
            },
            False,
        )
        tail.feed(window, window_entries(window))
        assert tail.floor is not None
        for limit in (1, 4):
            ends = set()
            for after in range(tail.floor, tail.head + 1):
                end = tail.chunk_end(PUBLIC, after, limit)
                assert end is not None and (after < end or end == tail.head)
                page = tail.page((PUBLIC,), after, limit, until=end)
                assert page is not None and not page.more and page.rows <= limit
                chain, at = [], after
                while at < tail.head:
                    at = tail.chunk_end(PUBLIC, at, limit) or tail.head
                    chain.append(at)
                ends.add(tuple(chain[1:]))
            # After the first page, the chains from every cursor share their chunk ends.
            longest = max(ends, key=len)
            assert all(longest[len(longest) - len(chain) :] == chain for chain in ends)
    assert len(tail) <= 60 and tail.floor > 0  # eviction happened along the way
