"""Admission control: under overload, pulls and listing reads are shed fast with 503 +
Retry-After, while pushes and admin actions still get a database connection; the edge caps
low-priority requests in flight; what was shed is counted. And the access log's levels.

Overload is made on purpose, never by timing: database slots are held by transactions opened
inside the running server (or, on PostgreSQL, by writes blocked on a row lock held from
outside), so every assertion is about what was answered and what was counted.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from storage.admission import AdmissionGate, Overloaded, Priority, reserved_slots
from sync_server.app import create_app
from sync_server.live import session as live_session
from sync_server.logs import AccessLog, JsonFormatter
from sync_server.middleware import EdgeAdmission
from sync_server.settings import ConfigError, Settings
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.support.api import Api, login, register
from tests.support.live_server import run_in_server, serve_in_thread, submit_in_server
from tests.support.ws import LiveClient

# A generous bound, far below the old pool timeout (10 s) plus lock waits: a shed request
# must come back at once, not after queueing.
FAST = 5.0


def purchase(mutation_id: int, listing_id: str) -> dict[str, Any]:
    return {
        "id": mutation_id,
        "name": "purchase_request",
        "args": {
            "order_id": "ord-" + secrets.token_hex(6),
            "payment_method": "cod",
            "items": [
                {"item_id": "itm-" + secrets.token_hex(6), "listing_id": listing_id, "quantity": 1}
            ],
        },
    }


def shed_count(base_url: str, where: str, priority: str = "low") -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    match = re.search(
        rf'^freshroots_shed_total\{{priority="{priority}",where="{where}"\}} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(match.group(1)) if match else 0.0


def gate_state(base_url: str) -> tuple[int, int]:
    """(slots in use, LOW transactions queued) of the server's admission gate."""

    async def read(app: Any) -> tuple[int, int]:
        gate = app.state.services.db.gate
        return gate.in_use, gate.waiting(Priority.LOW)

    return run_in_server(base_url, read)


def wait_until(condition: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


@contextmanager
def busy_transactions(base_url: str, count: int) -> Iterator[None]:
    """`count` transactions held open inside the server, as long-running requests would."""
    releases: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def hold(app: Any) -> None:
        release = asyncio.Event()
        releases.append((asyncio.get_running_loop(), release))

        async def one() -> None:
            async with app.state.services.db.read(priority=Priority.NORMAL) as conn:
                await conn.exec_driver_sql("SELECT 1")
                await release.wait()

        await asyncio.gather(*(one() for _ in range(count)))

    before, _ = gate_state(base_url)
    future = submit_in_server(base_url, hold)
    try:
        wait_until(lambda: gate_state(base_url)[0] >= before + count, "slots held")
        yield
    finally:
        wait_until(lambda: bool(releases), "the holder started")
        loop, release = releases[0]
        loop.call_soon_threadsafe(release.set)
        future.result(timeout=30)


@pytest.fixture
def tiny(backend: Backend, admin_email: str) -> Iterator[tuple[str, Api, Api]]:
    """A server with two database connections (one of them reserved for normal work), no
    listing cache; its admin and a buyer, and one published listing made beforehand."""
    settings = backend.settings(DB_POOL_SIZE="2", LISTINGS_CACHE_SECONDS="0")
    with serve_in_thread(create_app(settings)) as base_url:
        admin = login(base_url, admin_email, ADMIN_PASSWORD)
        buyer = register(base_url, "shed")
        yield base_url, admin, buyer


def test_pulls_are_shed_fast_while_pushes_and_admin_edits_get_through(
    tiny: tuple[str, Api, Api],
) -> None:
    base_url, admin, buyer = tiny
    listing = admin.create_listing(stock=50)
    other = admin.create_listing(stock=50)
    shed_before = shed_count(base_url, "database")
    http = httpx.Client(base_url=base_url, timeout=30)
    as_buyer = {"authorization": f"Bearer {buyer.token}"}
    as_admin = {"authorization": f"Bearer {admin.token}"}
    with busy_transactions(base_url, 1):  # the low-priority share (1 of 2) is taken
        started = time.monotonic()
        pull = http.get("/api/sync/pull", headers=as_buyer)  # first sync: needs the database
        search = http.get("/api/listings", params={"q": "pomme"})
        watermelon = http.get("/api/sync/watermelon", headers=as_buyer)
        shed_in = time.monotonic() - started
        # Normal work still has the reserved connection, on the first try.
        push = http.post(
            "/api/sync/push",
            headers=as_buyer,
            json={
                "client_id": "dev-" + secrets.token_hex(6),
                "mutations": [purchase(1, other["id"])],
            },
        )
        edit = http.patch(
            f"/api/admin/listings/{listing['id']}", headers=as_admin, json={"stock": 49}
        )
        me = http.get("/api/me", headers=as_buyer)
    for shed in (pull, search, watermelon):
        assert shed.status_code == 503, shed.text
        assert shed.headers["retry-after"] == "1"
        assert shed.json()["error"]["code"] == "overloaded"
    assert shed_in < FAST
    assert push.status_code == 200 and push.json()["results"][0]["ok"], push.text
    assert edit.status_code == 200 and edit.json()["stock"] == 49, edit.text
    assert me.status_code == 200
    assert shed_count(base_url, "database") >= shed_before + 3
    # Once the load is gone, pulls are served again, and no slot was leaked.
    assert http.get("/api/sync/pull", headers=as_buyer).status_code == 200
    wait_until(lambda: gate_state(base_url) == (0, 0), "every slot given back")


def test_writes_blocked_on_a_row_lock_do_not_starve_the_reserve(
    services_backend: Backend, admin_email: str
) -> None:
    """PostgreSQL: an admin edit waits on a row lock held from outside (a stuck transaction),
    holding its connection. Pulls are shed at once; another edit and a push go through; and the
    pool never opens a connection beyond DB_POOL_SIZE (no overflow)."""
    settings = services_backend.settings(DB_POOL_SIZE="2")
    url = services_backend.env["DATABASE_URL"]
    user, dbname = url.split("//", 1)[1].split("@")[0], url.rsplit("/", 1)[1]

    async def pool_figures(app: Any) -> tuple[int, int]:
        pool = app.state.services.db.engine.pool
        return pool.checkedout(), pool.overflow()

    with serve_in_thread(create_app(settings)) as base_url:
        admin = login(base_url, admin_email, ADMIN_PASSWORD)
        buyer = register(base_url, "locked")
        locked, free = admin.create_listing(stock=20), admin.create_listing(stock=20)
        http = httpx.Client(base_url=base_url, timeout=30)
        as_admin = {"authorization": f"Bearer {admin.token}"}
        as_buyer = {"authorization": f"Bearer {buyer.token}"}
        shed_before = shed_count(base_url, "database")
        with (
            psycopg.connect(host="127.0.0.1", user=user, dbname=dbname) as blocker,
            ThreadPoolExecutor(1) as pool,
        ):
            blocker.execute("SELECT 1 FROM listings WHERE id = %s FOR UPDATE", (locked["id"],))
            stuck: Future[httpx.Response] = pool.submit(
                http.patch,
                f"/api/admin/listings/{locked['id']}",
                headers=as_admin,
                json={"stock": 19},
            )
            wait_until(lambda: gate_state(base_url)[0] >= 1, "the edit waits on the lock")
            pull = http.get("/api/sync/pull", headers=as_buyer)
            edit = http.patch(
                f"/api/admin/listings/{free['id']}", headers=as_admin, json={"stock": 18}
            )
            push = http.post(
                "/api/sync/push",
                headers=as_buyer,
                json={
                    "client_id": "dev-" + secrets.token_hex(6),
                    "mutations": [purchase(1, free["id"])],
                },
            )
            checked_out, overflow = run_in_server(base_url, pool_figures)
            blocker.rollback()  # the stuck transaction ends; the waiting edit proceeds
            assert stuck.result(timeout=30).status_code == 200
        shed_after = shed_count(base_url, "database")
    assert pull.status_code == 503 and pull.headers["retry-after"] == "1"
    assert edit.status_code == 200, edit.text
    assert push.status_code == 200 and push.json()["results"][0]["ok"], push.text
    assert shed_after >= shed_before + 1
    assert checked_out <= 2 and overflow <= 0


def test_the_edge_caps_low_priority_requests_in_flight(backend: Backend, admin_email: str) -> None:
    settings = backend.settings(
        DB_POOL_SIZE="2",
        ADMISSION_MAX_LOW_PRIORITY_IN_FLIGHT="1",
        ADMISSION_LOW_PRIORITY_WAIT_MS="20000",  # the first pull waits for a connection
    )
    with serve_in_thread(create_app(settings)) as base_url:
        buyer = register(base_url, "edge")
        as_buyer = {"authorization": f"Bearer {buyer.token}"}
        http = httpx.Client(base_url=base_url, timeout=60)
        with ThreadPoolExecutor(1) as pool:
            with busy_transactions(base_url, 2):  # every connection busy
                first = pool.submit(http.get, "/api/sync/pull", headers=as_buyer)
                wait_until(lambda: gate_state(base_url)[1] == 1, "the first pull is queued")
                started = time.monotonic()
                second = http.get("/api/sync/pull", headers=as_buyer)
                elapsed = time.monotonic() - started
                # Normal requests are not counted against the cap.
                health = http.get("/healthz")
            assert first.result(timeout=60).status_code == 200  # served once slots freed
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == "overloaded"
        assert second.headers["x-request-id"] and second.headers["cache-control"] == "no-store"
        assert elapsed < FAST
        assert health.status_code == 200
        assert shed_count(base_url, "edge") == 1
        assert shed_count(base_url, "database") == 0
        # The count went back down: the next pull is admitted.
        assert http.get("/api/sync/pull", headers=as_buyer).status_code == 200
        metrics = http.get("/metrics").text
        assert "freshroots_low_priority_in_flight 0.0" in metrics
        waits = re.search(
            r'^freshroots_admission_wait_seconds_count\{priority="low"\} (\S+)$', metrics, re.M
        )
        assert waits and float(waits.group(1)) >= 1  # the first pull's wait was measured


def test_a_live_catch_up_waits_its_turn_when_the_database_is_busy(
    backend: Backend, admin_email: str
) -> None:
    """A socket is open already: its catch-up queues for a slot (a storm of connections)
    instead of being closed and reconnecting, which would only repeat the work."""
    settings = backend.settings(DB_POOL_SIZE="2", ADMISSION_LOW_PRIORITY_WAIT_MS="0")
    with serve_in_thread(create_app(settings)) as base_url:
        buyer = register(base_url, "patient-live")
        with ThreadPoolExecutor(1) as pool:
            with busy_transactions(base_url, 1):
                client = LiveClient(base_url, buyer.token or "")
                catching_up = pool.submit(client.catch_up, 30)
                time.sleep(1)  # busy for a while: an HTTP pull would have been shed by now
                assert not catching_up.done()
            frames = catching_up.result(30)
        assert frames[-1]["more"] is False
        client.close()


def test_a_live_catch_up_out_of_patience_closes_with_try_again_later(
    backend: Backend, admin_email: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_session, "CATCH_UP_PATIENCE_SECONDS", 0.0)
    settings = backend.settings(DB_POOL_SIZE="2", ADMISSION_LOW_PRIORITY_WAIT_MS="0")
    with serve_in_thread(create_app(settings)) as base_url:
        buyer = register(base_url, "live")
        with busy_transactions(base_url, 1):
            client = LiveClient(base_url, buyer.token or "")
            code = client.close_code()
        assert code == 1013
        assert shed_count(base_url, "database") >= 1
        # With the load gone, the same client connects and catches up.
        again = LiveClient(base_url, buyer.token or "")
        frames = again.catch_up()
        assert frames[-1]["more"] is False
        again.close()


def test_polls_that_changed_nothing_are_logged_at_debug(
    server: str, admin: Api, buyer: Api, caplog: pytest.LogCaptureFixture
) -> None:
    admin.create_listing()
    cursor, _ = buyer.pull_all()
    with caplog.at_level(logging.DEBUG, logger="freshroots.access"):
        buyer.get("/api/sync/pull", params={"cursor": cursor})  # 200, nothing new
        buyer.get(
            "/api/sync/pull", params={"cursor": cursor}, headers={"if-none-match": f'"{cursor}"'}
        )  # 304
        buyer.get("/api/sync/pull")  # a first sync: changes
        buyer.get("/api/me", headers={"x-request-id": "trace-level-1"})
    lines = [r for r in caplog.records if r.name == "freshroots.access"]
    pulls = [(r.levelno, r.status) for r in lines if getattr(r, "route", "") == "/api/sync/pull"]  # type: ignore[attr-defined]
    assert pulls == [(logging.DEBUG, 200), (logging.DEBUG, 304), (logging.INFO, 200)]
    me = [r for r in lines if getattr(r, "request_id", "") == "trace-level-1"]
    assert me and me[0].levelno == logging.INFO and me[0].user_id == buyer.user["id"]  # type: ignore[attr-defined]


def test_the_direct_access_line_is_the_formatter_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """`freshroots serve` writes access lines straight to its handler's stream; they must be
    exactly what the JSON formatter writes for the same record."""
    from sync_server import logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    monkeypatch.setattr(logs, "_direct_handler", handler)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    name = "freshroots.access.test-" + secrets.token_hex(3)
    monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    fields = {
        "method": "GET",
        "path": "/api/me",
        "route": "/api/me",
        "status": 200,
        "duration_ms": 1.25,
        "request_id": "abc",
        "user_id": None,
    }
    AccessLog(name).write(logging.INFO, fields)  # direct
    monkeypatch.setattr(logging.root, "handlers", [handler, logging.NullHandler()])
    AccessLog(name).write(logging.INFO, fields)  # another handler is there: through logging
    direct, through_logging = stream.getvalue().splitlines()
    strip_ts = re.compile(r'^\{"ts":[0-9.]+,')
    assert strip_ts.sub("", direct) == strip_ts.sub("", through_logging)
    assert direct.startswith('{"ts":') and '"level":"info","logger":"' + name in direct


def test_access_lines_are_flushed_in_batches_not_one_system_call_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sync_server import logs

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, write_through=False)
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(logs, "_direct_handler", handler)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    name = "freshroots.access.test-" + secrets.token_hex(3)
    monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    access = AccessLog(name)

    async def serve_three() -> tuple[bytes, bytes]:
        for number in range(3):
            access.write(logging.INFO, {"status": 200, "request_id": f"r{number}"})
        waiting = raw.getvalue()
        await asyncio.sleep(logs.FLUSH_SECONDS * 3)
        return waiting, raw.getvalue()

    waiting, flushed = asyncio.run(serve_three())
    assert waiting == b""  # still in the stream's buffer: no write yet
    assert [orjson.loads(line)["request_id"] for line in flushed.splitlines()] == ["r0", "r1", "r2"]


def test_the_servers_own_log_stream_batches_access_lines(tmp_path: Path) -> None:
    """What `freshroots serve` sets up, at the file descriptor: access lines reach standard
    error together, not a write each (Python's own stderr writes every line through at
    once), and a warning takes the lines before it along, in order."""
    script = f"""
import asyncio, logging, os, time
from sync_server.logs import AccessLog, FLUSH_SECONDS, configure_logging
configure_logging("INFO")
access = AccessLog("freshroots.access")
async def main():
    for number in range(3):
        access.write(logging.INFO, {{"status": 200, "request_id": f"r{{number}}"}})
    print(os.fstat(2).st_size, file=open({str(tmp_path / "waiting")!r}, "w"))
    await asyncio.sleep(FLUSH_SECONDS * 3)
    print(os.fstat(2).st_size, file=open({str(tmp_path / "flushed")!r}, "w"))
    access.write(logging.INFO, {{"status": 200, "request_id": "r3"}})
    logging.getLogger("freshroots").warning("after r3")
asyncio.run(main())
"""
    with open(tmp_path / "stderr", "wb") as stderr:
        subprocess.run([sys.executable, "-c", script], stderr=stderr, check=True, timeout=30)
    assert (tmp_path / "waiting").read_text().strip() == "0"  # in the buffer, not written
    assert int((tmp_path / "flushed").read_text()) > 0
    lines = [orjson.loads(line) for line in (tmp_path / "stderr").read_bytes().splitlines()]
    assert [line.get("request_id", line["msg"]) for line in lines] == [
        "r0",
        "r1",
        "r2",
        "r3",
        "after r3",
    ]


def test_the_edge_sheds_on_a_lagging_loop_not_on_a_burst() -> None:
    """Sixty pulls in flight on a free loop are a burst of phones whose timers fired
    together: served. One long pause (a garbage collection) is not overload: served. A loop
    late tick after tick with that many in flight is: shed. A few in flight on a late loop
    are not what slows it: served."""

    async def scenario() -> None:
        edge = EdgeAdmission(max_in_flight=256, lag_limit=0.05)
        watcher = asyncio.create_task(edge.watch_loop(every=0.01))
        edge.in_flight = 60
        for _ in range(100):  # until the loop is seen free (this machine may be busy)
            await asyncio.sleep(0.01)
            if edge.lag < 0.05:
                break
        assert not edge.full()
        time.sleep(0.3)  # noqa: ASYNC251 - one long pause: one late tick
        for _ in range(3):
            await asyncio.sleep(0.001)
            assert not edge.full()
        for _ in range(6):  # behind on every tick
            time.sleep(0.1)  # noqa: ASYNC251 - the point: the loop is kept busy
            await asyncio.sleep(0.001)
        assert edge.lag >= 0.08
        assert edge.full()
        edge.in_flight = 3
        assert not edge.full()
        edge.in_flight = 60
        await asyncio.sleep(0.2)  # free again: on-time ticks bring the lag down
        assert edge.lag < 0.05 and not edge.full()
        edge.in_flight = 256
        assert edge.full()  # the hard cap holds whatever the lag
        watcher.cancel()

    asyncio.run(scenario())


# -- the gate itself -------------------------------------------------------------------------


def test_the_reserve_is_a_quarter_of_the_pool() -> None:
    assert [reserved_slots(n) for n in (1, 2, 4, 8, 10, 20)] == [0, 1, 1, 2, 2, 5]
    assert AdmissionGate(10).low_slots == 8 and AdmissionGate(1).low_slots == 1


def test_low_priority_is_shed_and_normal_work_takes_the_reserve() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(4, low_wait=0.01, wait=0.01)
        shed: list[Priority] = []
        gate.on_shed = shed.append
        for _ in range(3):
            await gate.acquire(Priority.LOW)
        with pytest.raises(Overloaded) as refused:
            await gate.acquire(Priority.LOW)
        assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "1"
        await gate.acquire(Priority.NORMAL)  # the reserved slot
        with pytest.raises(Overloaded):
            await gate.acquire(Priority.NORMAL)
        assert shed == [Priority.LOW, Priority.NORMAL] and gate.in_use == 4
        for priority in (Priority.LOW,) * 3 + (Priority.NORMAL,):
            gate.release(priority)
        assert gate.in_use == 0 and gate.waiting(Priority.LOW) == gate.waiting(Priority.NORMAL) == 0

    asyncio.run(scenario())


def test_queued_normal_work_is_served_before_queued_low_work() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(2, low_wait=30, wait=30)  # one slot for LOW, one reserved
        await gate.acquire(Priority.NORMAL)
        await gate.acquire(Priority.NORMAL)
        order: list[str] = []

        async def take(priority: Priority, name: str) -> None:
            await gate.acquire(priority)
            order.append(name)

        low = asyncio.create_task(take(Priority.LOW, "low"))
        await asyncio.sleep(0)
        normal = asyncio.create_task(take(Priority.NORMAL, "normal"))
        await asyncio.sleep(0)
        gate.release(Priority.NORMAL)  # handed to the NORMAL waiter, although LOW queued first
        await normal
        assert order == ["normal"] and gate.in_use == 2
        gate.release(Priority.NORMAL)  # 1 in use: still the LOW share's limit, LOW keeps waiting
        await asyncio.sleep(0)
        assert order == ["normal"] and gate.in_use == 1
        gate.release(Priority.NORMAL)
        await low
        assert order == ["normal", "low"] and gate.in_use == 1

    asyncio.run(scenario())


def test_low_priority_work_gets_a_quarter_of_the_pool_beside_normal_work() -> None:
    """While a write holds a slot, reads may hold only a quarter of the pool (the database's
    CPU is what a write waits for behind them); the last write out lifts the cap."""

    async def scenario() -> None:
        gate = AdmissionGate(8, low_wait=30, wait=30)  # 6 LOW slots alone, 2 beside NORMAL
        await gate.acquire(Priority.NORMAL)
        readers = [asyncio.create_task(gate.acquire(Priority.LOW)) for _ in range(5)]
        await asyncio.sleep(0)
        assert sum(reader.done() for reader in readers) == 2 and gate.waiting(Priority.LOW) == 3
        gate.release(Priority.LOW)  # beside the write: the next reader takes its place
        await asyncio.sleep(0)
        assert sum(reader.done() for reader in readers) == 3 and gate.waiting(Priority.LOW) == 2
        gate.release(Priority.NORMAL)  # the write is done: every waiting reader goes in
        await asyncio.wait_for(asyncio.gather(*readers), 1)
        assert gate.in_use == 4
        await gate.acquire(Priority.LOW)  # up to the LOW share of 6 ...
        await gate.acquire(Priority.LOW)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gate.acquire(Priority.LOW), 0.05)  # ... and no further
        await gate.acquire(Priority.NORMAL)  # the reserve is still there for writes

    asyncio.run(scenario())


def test_a_read_replicas_gate_gives_reads_every_slot() -> None:
    """Nothing writes on a replica: its reads get the whole pool, beside a normal-priority
    read (an admin's list) too; past it they are shed as anywhere."""

    async def scenario() -> None:
        gate = AdmissionGate(8, low_wait=0.05, wait=30, reads_only=True)
        await gate.acquire(Priority.NORMAL)
        for _ in range(7):
            await asyncio.wait_for(gate.acquire(Priority.LOW), 1)
        assert gate.in_use == 8
        with pytest.raises(Overloaded):
            await gate.acquire(Priority.LOW)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaks_no_slot() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(1, low_wait=30, wait=30)
        await gate.acquire(Priority.NORMAL)
        waiter = asyncio.create_task(gate.acquire(Priority.NORMAL))
        await asyncio.sleep(0)
        gate.release(Priority.NORMAL)  # handed to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs: the slot is passed on
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.in_use == 0
        await asyncio.wait_for(gate.acquire(Priority.LOW), 1)

    asyncio.run(scenario())


def test_admission_settings_are_checked_and_documented() -> None:
    secret = {"JWT_SECRET": "s" * 32}
    defaults = Settings.from_environ(secret)
    assert defaults.admission_low_priority_wait_ms == 250
    assert defaults.admission_wait_ms == 3000
    assert defaults.admission_max_low_priority_in_flight == 256
    assert defaults.admission_loop_lag_ms == 50
    assert defaults.sync_tail_entries == 50_000
    assert Settings.from_environ({**secret, "SYNC_TAIL_ENTRIES": "0"}).sync_tail_entries == 0
    for name in (
        "ADMISSION_LOW_PRIORITY_WAIT_MS",
        "ADMISSION_WAIT_MS",
        "ADMISSION_MAX_LOW_PRIORITY_IN_FLIGHT",
        "ADMISSION_LOOP_LAG_MS",
        "SYNC_TAIL_ENTRIES",
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_environ({**secret, name: "-1"})
