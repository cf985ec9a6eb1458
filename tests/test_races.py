"""The guarantees that break sync servers, proven by really racing.

Against PostgreSQL these run on two server *processes* (two instances) sharing the database
and Redis; on the embedded default, against the one server (SQLite has a single writer).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from storage.listings import create_listing
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.support.api import Api, client_id, login, register
from tests.support.live_server import submit_in_server
from tests.support.processes import ServerProcess, start_server
from tests.support.racing import no_new_deadlocks
from tests.support.replica import Replica, apply_page, build, without_empty


@pytest.fixture(scope="module", autouse=True)
def no_deadlocks(backend: Backend) -> Iterator[None]:
    with no_new_deadlocks(backend.env["DATABASE_URL"] if backend.is_services else None):
        yield


def purchase(mutation_id: int, listing_id: str, quantity: int = 1) -> dict[str, Any]:
    return {
        "id": mutation_id,
        "name": "purchase_request",
        "args": {
            "order_id": "ord-" + secrets.token_hex(8),
            "payment_method": "cod",
            "items": [
                {
                    "item_id": "itm-" + secrets.token_hex(8),
                    "listing_id": listing_id,
                    "quantity": quantity,
                }
            ],
        },
    }


def stock_of(api: Api, listing_id: str) -> int:
    return int(api.get(f"/api/listings/{listing_id}").json()["stock"])


def test_out_of_order_commit_is_not_skipped(admin: Api, buyer: Api, server: str) -> None:
    """A transaction that started first and commits last still reaches the pulling client."""
    cursor, _ = buyer.pull_all()
    held_id = "held-" + secrets.token_hex(6)
    written = threading.Event()
    release = threading.Event()

    async def slow_writer(app: Any) -> None:
        async with app.state.services.changelog.transaction() as tx:
            await create_listing(
                tx,
                None,
                {
                    "title": "Held open",
                    "price": 100,
                    "unit": "kg",
                    "stock": 1,
                    "status": "published",
                },
                listing_id=held_id,
            )
            written.set()
            await asyncio.to_thread(release.wait, 30)

    held = submit_in_server(server, slow_writer)
    assert written.wait(10)
    with ThreadPoolExecutor(4) as pool:
        later = [pool.submit(admin.create_listing, title=f"Later {n}") for n in range(3)]
        time.sleep(0.5)  # PostgreSQL: they commit now; SQLite: they queue behind the writer
        cursor, pages = buyer.pull_all(cursor)
        seen = {
            row["id"]
            for page in pages
            for row in page["changes"].get("listings", {}).get("put", [])
        }
        assert held_id not in seen
        release.set()
        held.result(10)
        later_ids = {future.result(30)["id"] for future in later}
    cursor, pages = buyer.pull_all(cursor)
    seen |= {
        row["id"] for page in pages for row in page["changes"].get("listings", {}).get("put", [])
    }
    assert held_id in seen and later_ids <= seen


def test_replicas_from_small_pages_converge_under_concurrent_writes(
    backend: Backend, instances: list[str], admin_email: str
) -> None:
    admins = [login(url, admin_email, ADMIN_PASSWORD) for url in instances]
    readers = [
        register(instances[0], "reader"),
        login(instances[1], admin_email, ADMIN_PASSWORD),
        register(instances[1], "lagging"),
    ]
    # The third reader pauses between pulls, so it stays several pages behind the writers:
    # that is where a page's end and the current rows disagree most.
    pauses = [0.0, 0.0, 0.5]
    writes_per_thread, threads = (125, 8) if backend.is_services else (40, 4)
    stop = threading.Event()
    live: list[str] = []
    lock = threading.Lock()

    def write(worker: int) -> None:
        rng = random.Random(worker)
        api = admins[worker % 2]
        for _ in range(writes_per_thread):
            with lock:
                target = rng.choice(live) if live and rng.random() < 0.7 else None
            if target is None:
                listing = api.create_listing(
                    title=f"Race {worker}", status=rng.choice(["published", "draft"])
                )
                with lock:
                    live.append(listing["id"])
                continue
            action = rng.random()
            if action < 0.1:
                if api.delete(f"/api/admin/listings/{target}").status_code == 204:
                    with lock:
                        if target in live:
                            live.remove(target)
            else:
                change = rng.choice(
                    [
                        {"price": rng.randint(1, 900) * 100},
                        {"stock": rng.randint(0, 50)},
                        {"status": rng.choice(["published", "draft"])},
                        {"title": f"Renamed {rng.randint(0, 99)}"},
                    ]
                )
                response = api.patch(f"/api/admin/listings/{target}", json=change)
                assert response.status_code in (200, 404), response.text

    def follow(reader: Api, replica: Replica, pause: float) -> tuple[str, int]:
        cursor: str | None = None
        pulls = 0
        rng = random.Random(pause)
        while not stop.is_set():
            time.sleep(rng.random() * pause)
            on = reader.on(rng.choice(instances))
            params: dict[str, Any] = {"limit": 7}
            if cursor:
                params["cursor"] = cursor
            response = on.get("/api/sync/pull", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            apply_page(replica, page)
            cursor = page["cursor"]
            pulls += 1
        assert cursor is not None
        return cursor, pulls

    replicas: list[Replica] = [{}, {}, {}]
    with ThreadPoolExecutor(threads + len(readers)) as pool:
        followers = [
            pool.submit(follow, reader, replica, pause)
            for reader, replica, pause in zip(readers, replicas, pauses, strict=True)
        ]
        try:
            writers = [pool.submit(write, worker) for worker in range(threads)]
            for writer in writers:
                writer.result(300)
        finally:
            stop.set()  # followers must end even when a writer failed
        finished = [follower.result(60) for follower in followers]
    for (cursor, pulls), reader, replica in zip(finished, readers, replicas, strict=True):
        assert pulls > 5
        _, pages = reader.on(instances[1]).pull_all(cursor, limit=7)
        for page in pages:
            apply_page(replica, page)
        _, snapshot = reader.pull_all(limit=1000)
        assert without_empty(replica) == without_empty(build(snapshot))


def test_one_batch_sent_thirteen_times_is_applied_once(
    admin: Api, buyer: Api, instances: list[str]
) -> None:
    listings = [admin.create_listing(title=f"Batch {n}", stock=10) for n in range(5)]
    device = client_id()
    batch = [purchase(n + 1, listing["id"], 2) for n, listing in enumerate(listings)]
    barrier = threading.Barrier(10)

    def send(attempt: int) -> dict[str, Any]:
        api = buyer.on(instances[attempt % 2])
        barrier.wait()
        response = api.push(device, batch)
        assert response.status_code == 200, response.text
        return dict(response.json())

    with ThreadPoolExecutor(10) as pool:
        concurrent_outcomes = list(pool.map(send, range(10)))
    sequential = [buyer.on(instances[n % 2]).push(device, batch).json() for n in range(3)]
    outcomes = concurrent_outcomes + sequential
    assert all(outcome == outcomes[0] for outcome in outcomes)
    assert all(result["ok"] for result in outcomes[0]["results"])
    assert [stock_of(admin, listing["id"]) for listing in listings] == [8] * 5
    orders = buyer.get("/api/orders", params={"limit": 100}).json()["items"]
    assert len(orders) == 5


def test_sixty_buyers_race_for_twenty_units(admin: Api, server: str, instances: list[str]) -> None:
    listing = admin.create_listing(title="Ananas Victoria", stock=20)
    with ThreadPoolExecutor(8) as pool:
        buyers = list(pool.map(lambda n: register(instances[n % 2], f"racer{n}"), range(60)))
    barrier = threading.Barrier(60)

    def buy(api: Api) -> dict[str, Any]:
        barrier.wait()
        response = api.push(client_id(), [purchase(1, listing["id"], 1)])
        assert response.status_code == 200, response.text
        return dict(response.json()["results"][0])

    with ThreadPoolExecutor(60) as pool:
        results = list(pool.map(buy, buyers))
    accepted = [result for result in results if result["ok"]]
    refused = [result["error"]["code"] for result in results if not result["ok"]]
    assert len(accepted) == 20
    assert refused == ["out_of_stock"] * 40
    assert stock_of(admin, listing["id"]) == 0

    for result in accepted[:5]:
        order_id = result["result"]["order_id"]
        response = admin.put(f"/api/admin/orders/{order_id}/reject", json={"reason": "bruised"})
        assert response.status_code == 200
    assert stock_of(admin, listing["id"]) == 5


def test_server_killed_mid_push_then_retried_applies_exactly_once(
    services_backend: Backend, admin: Api, buyer: Api
) -> None:
    backend = services_backend
    listings = [admin.create_listing(title=f"Kill {n}", stock=10) for n in range(5)]
    device = client_id()
    batch = [purchase(n + 1, listing["id"], 1) for n, listing in enumerate(listings)]
    url = backend.env["DATABASE_URL"]
    server: ServerProcess = start_server(backend.env)
    try:
        with psycopg.connect(url) as blocker:
            # Hold the third listing's row: the push applies mutations 1 and 2, then waits here.
            blocker.execute(
                "SELECT id FROM listings WHERE id = %s FOR UPDATE", (listings[2]["id"],)
            )
            with ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(buyer.on(server.base_url).push, device, batch)
                with psycopg.connect(url, autocommit=True) as observer:
                    for _ in range(200):
                        waiting = observer.execute(
                            "SELECT count(*) FROM pg_locks WHERE NOT granted"
                        ).fetchone()
                        if waiting and waiting[0] > 0:
                            break
                        time.sleep(0.05)
                    else:
                        pytest.fail("the push never reached the held row")
                server.kill()
                with pytest.raises(Exception):  # noqa: B017 - the connection dies with the server
                    in_flight.result(10)
            blocker.rollback()
        assert [stock_of(admin, listing["id"]) for listing in listings] == [10] * 5
        assert buyer.get("/api/orders").json()["items"] == []

        restarted = start_server(backend.env)
        try:
            first = buyer.on(restarted.base_url).push(device, batch).json()
            again = buyer.on(restarted.base_url).push(device, batch).json()
        finally:
            restarted.process.terminate()
            restarted.process.wait(10)
        assert first == again and all(result["ok"] for result in first["results"])
        assert [stock_of(admin, listing["id"]) for listing in listings] == [9] * 5
        assert len(buyer.get("/api/orders").json()["items"]) == 5
    finally:
        if server.process.poll() is None:
            server.kill()
