"""Live sync over WebSocket: catch-up, live frames, pushes, close codes, several instances."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import orjson
import pytest
from websockets.sync.client import connect

from sync_server.app import create_app
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.support.api import Api, client_id, login, register
from tests.support.live_server import RUNNING, free_port, serve_in_thread
from tests.support.processes import server_processes
from tests.support.replica import build, without_empty
from tests.support.services import port_open
from tests.support.ws import LiveClient, ws_url


def holds(table: str, row_id: str, **values: object):  # type: ignore[no-untyped-def]
    def check(client: LiveClient) -> bool:
        row = client.replica.get(table, {}).get(row_id)
        return row is not None and all(row.get(k) == v for k, v in values.items())

    return check


def test_catch_up_then_live_changes(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(title="Live letchi", stock=7)
    client = LiveClient(buyer.base_url, buyer.token)  # type: ignore[arg-type]
    try:
        frames = client.catch_up()
        assert frames[-1]["more"] is False
        assert listing["id"] in client.replica["listings"]

        fresh = admin.create_listing(title="Live mangue")
        client.wait_for(holds("listings", fresh["id"], title="Live mangue"))
        admin.patch(f"/api/admin/listings/{listing['id']}", json={"stock": 3})
        client.wait_for(holds("listings", listing["id"], stock=3))
        admin.patch(f"/api/admin/listings/{fresh['id']}", json={"status": "draft"})
        client.wait_for(lambda c: fresh["id"] not in c.replica["listings"])
        _, pages = buyer.pull_all()
        assert without_empty(client.replica) == without_empty(build(pages))
    finally:
        client.close()


def test_push_over_the_socket_and_admins_see_orders_live(
    admin: Api, buyer: Api, server: str
) -> None:
    listing = admin.create_listing(stock=5)
    watcher = LiveClient(server, admin.token)  # type: ignore[arg-type]
    phone = LiveClient(server, buyer.token)  # type: ignore[arg-type]
    try:
        watcher.catch_up()
        phone.catch_up()
        order_id = "ord-" + secrets.token_hex(6)
        phone.send(
            {
                "type": "push",
                "client_id": client_id(),
                "mutations": [
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
            }
        )
        phone.wait_for(lambda c: bool(c.pushes))
        assert phone.pushes[0]["results"][0]["ok"] is True
        phone.wait_for(holds("orders", order_id, status="pending"))
        watcher.wait_for(holds("orders", order_id, status="pending"))
        admin.put(f"/api/admin/orders/{order_id}/approve", json={})
        phone.wait_for(holds("orders", order_id, status="approved"))
        watcher.wait_for(
            lambda c: any(
                row["target_id"] == order_id for row in c.replica.get("admin_actions", {}).values()
            )
        )
    finally:
        watcher.close()
        phone.close()


def test_the_dashboard_feed_starts_at_the_head_without_a_snapshot(
    admin: Api, buyer: Api, server: str
) -> None:
    old = admin.create_listing(title="Before the dashboard opened", stock=4)
    assert buyer.get("/api/admin/live/cursor").status_code == 403
    response = admin.get("/api/admin/live/cursor")
    assert response.status_code == 200, response.text
    watcher = LiveClient(server, admin.token, cursor=response.json()["cursor"])  # type: ignore[arg-type]
    try:
        frames = watcher.catch_up()
        assert frames[-1]["more"] is False and frames[-1]["reset"] is False
        assert old["id"] not in watcher.replica.get("listings", {})  # no snapshot came
        fresh = admin.create_listing(title="After", stock=2)
        watcher.wait_for(holds("listings", fresh["id"], title="After"))
        # The cursor is bound to its admin, like any other.
        other = LiveClient(server, buyer.token, cursor=response.json()["cursor"])  # type: ignore[arg-type]
        try:
            assert other.catch_up()[0]["reset"] is True
        finally:
            other.close()
    finally:
        watcher.close()


def test_close_codes(server: str, buyer: Api, backend: Backend) -> None:
    def code_after(message: str | None) -> int | None:
        with connect(ws_url(server)) as connection:
            if message is not None:
                connection.send(message)
            try:
                while True:
                    connection.recv(timeout=20)
            except Exception as closed:  # ConnectionClosed
                return getattr(getattr(closed, "rcvd", None), "code", None)

    assert (
        code_after(orjson.dumps({"type": "hello", "token": "forged", "cursor": None}).decode())
        == 4401
    )
    assert code_after("not json") == 4400
    with connect(ws_url(server)) as binary:  # UTF-8 JSON in a binary frame is accepted
        binary.send(orjson.dumps({"type": "hello", "token": buyer.token, "cursor": None}))
        assert orjson.loads(binary.recv(timeout=10))["type"] == "changes"
    assert (
        code_after(orjson.dumps({"type": "hello", "token": buyer.token, "cursor": "!!"}).decode())
        == 4400
    )
    client = LiveClient(server, buyer.token)  # type: ignore[arg-type]
    client.catch_up()
    client.send({"type": "teleport"})
    assert client.close_code() == 4400

    quick_app = create_app(backend.settings(WS_HELLO_SECONDS="0.3"))
    with serve_in_thread(quick_app) as quick, connect(ws_url(quick)) as connection:
        with pytest.raises(Exception) as closed:
            connection.recv(timeout=10)
        assert closed.value.rcvd.code == 4408  # type: ignore[attr-defined]


def test_an_idle_socket_is_pinged_and_closed_when_its_token_expires(backend: Backend) -> None:
    """Pings and expiry are one sweep over every session (no timer per socket): an idle
    socket still gets its pings, and a socket whose token runs out is closed with 4401."""
    app = create_app(backend.settings(WS_PING_SECONDS="0.5"))
    with serve_in_thread(app) as base_url:
        buyer = register(base_url, "pinged")
        tokens = app.state.services.access_tokens
        client = LiveClient(base_url, buyer.token)  # type: ignore[arg-type]
        try:
            client.catch_up()
            pings = 0
            deadline = time.monotonic() + 10
            while pings < 2 and time.monotonic() < deadline:
                pings += client.receive(timeout=5)["type"] == "ping"  # answered with a pong
            assert pings == 2
        finally:
            client.close()
        # A token with two seconds left: the socket is served, then closed when it expires.
        lifetime = tokens.lifetime_seconds
        short = tokens.issue(buyer.user["id"], "user", now=int(time.time()) - lifetime + 2)
        expiring = LiveClient(base_url, short)
        expiring.catch_up()
        started = time.monotonic()
        assert expiring.close_code(timeout=15) == 4401
        assert time.monotonic() - started < 10


def test_a_foreign_cursor_in_hello_gets_a_reset(server: str, admin: Api) -> None:
    alice, bob = register(server, "alice"), register(server, "bob")
    bob_cursor, _ = bob.pull_all()
    client = LiveClient(server, alice.token, cursor=bob_cursor)  # type: ignore[arg-type]
    try:
        frames = client.catch_up()
        assert frames[0]["reset"] is True
    finally:
        client.close()


def test_a_slow_reader_is_bounded_and_loses_nothing(backend: Backend, admin_email: str) -> None:
    settings = backend.settings(WS_QUEUE_FRAMES="2", WS_QUEUE_BYTES="16384")
    # Small socket buffers on both ends: otherwise TCP autotuning can absorb the whole flood
    # and the slow path this test is about is never taken.
    with serve_in_thread(create_app(settings), send_buffer=8192) as base_url:
        admin = login(base_url, admin_email, ADMIN_PASSWORD)
        reader = LiveClient(base_url, admin.token, receive_buffer=4096)  # type: ignore[arg-type]
        reader.catch_up()
        hub = RUNNING[base_url][0].state.services.live
        peak_frames = peak_bytes = 0
        made: list[str] = []
        images = [f"freshroots/flood/{'p' * 180}-{n}" for n in range(20)]

        def flood(worker: int) -> None:
            for n in range(100):  # ~9 KB a frame, more than the socket buffers hold
                made.append(
                    admin.create_listing(
                        title=f"Flood {worker}-{n}", description="x" * 4900, images=images
                    )["id"]
                )

        with ThreadPoolExecutor(4) as pool:
            floods = [pool.submit(flood, worker) for worker in range(4)]
            while not all(f.done() for f in floods):  # the reader reads nothing meanwhile
                for session in list(hub.sessions):
                    peak_frames = max(peak_frames, len(session.frames))
                    peak_bytes = max(peak_bytes, session.queued_bytes)
                time.sleep(0.005)
            for f in floods:
                f.result()
        assert peak_frames <= settings.ws_queue_frames
        assert peak_bytes <= settings.ws_queue_bytes
        # The slow path was taken: frames overflowed the bound, or the client was served from
        # its cursor page by page instead of piling frames up.
        assert sum(s.overflows + s.catch_ups - 1 for s in hub.sessions) > 0
        reader.wait_for(lambda c: all(i in c.replica.get("listings", {}) for i in made), 30)
        reader.close()


def test_changes_cross_instances_and_resume_elsewhere(
    services_backend: Backend, admin_email: str
) -> None:
    with server_processes(services_backend.env, 2) as (a, b):
        admin = login(a.base_url, admin_email, ADMIN_PASSWORD)
        buyer = register(b.base_url, "roamer")
        client = LiveClient(b.base_url, buyer.token)  # type: ignore[arg-type]
        client.catch_up()
        written = admin.create_listing(title="Across instances")
        client.wait_for(holds("listings", written["id"]))
        cursor = client.cursor
        client.close()

        missed = [admin.create_listing(title=f"Missed {n}")["id"] for n in range(5)]
        admin.patch(f"/api/admin/listings/{written['id']}", json={"status": "draft"})
        resumed = LiveClient(a.base_url, buyer.token, cursor=cursor)  # type: ignore[arg-type]
        resumed.replica = client.replica
        frames = resumed.catch_up()
        assert all(i in resumed.replica["listings"] for i in missed)
        assert written["id"] not in resumed.replica["listings"]
        _, pages = buyer.on(a.base_url).pull_all()
        assert without_empty(resumed.replica) == without_empty(build(pages))
        # The other instance resumed from the cursor: no reset, and only what was missed came
        # (a snapshot would resend every listing the buyer already held).
        changes = [frame for frame in frames if frame["type"] == "changes"]
        assert changes and not any(frame["reset"] for frame in changes)
        listings = [frame["changes"].get("listings", {}) for frame in changes]
        assert {row["id"] for page in listings for row in page.get("put", [])} == set(missed)
        assert [row_id for page in listings for row_id in page.get("del", [])] == [written["id"]]
        resumed.close()


@contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    try:
        yield process
    finally:
        process.kill()
        process.wait(10)


def test_clients_converge_across_a_redis_restart(
    services_backend: Backend, admin_email: str
) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for this test")
    port = free_port()
    env = {**services_backend.env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    with private_redis(port) as redis_process, server_processes(env, 2) as (a, b):
        admin = login(a.base_url, admin_email, ADMIN_PASSWORD)
        buyer = register(b.base_url, "steady")
        client = LiveClient(b.base_url, buyer.token)  # type: ignore[arg-type]
        client.catch_up()
        first = admin.create_listing(title="Before the outage")
        client.wait_for(holds("listings", first["id"]))

        redis_process.kill()
        redis_process.wait(10)
        during = [admin.create_listing(title=f"During {n}")["id"] for n in range(3)]
        with private_redis(port):
            after = admin.create_listing(title="After the outage")["id"]
            client.wait_for(
                lambda c: all(i in c.replica.get("listings", {}) for i in [*during, after]), 45
            )
            _, pages = buyer.on(a.base_url).pull_all()
            assert without_empty(client.replica) == without_empty(build(pages))
        client.close()
