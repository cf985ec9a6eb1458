"""Read replicas (`DATABASE_REPLICA_URLS`): a real primary and a real streaming replica, made by
`initdb` and `pg_basebackup -R` (tests/support/pg_cluster.py), behind two server instances.

The guarantees hold with a lagging replica: with its WAL replay paused while writes go on,
pulls through it never skip a change and never go back, a client's own push is in its next
pull, and everything converges with the primary. A stopped replica fails no request.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from protocol.cursor import CursorCodec, LogCursor
from storage.migrate import upgrade
from sync_server.cli import ensure_admin
from sync_server.settings import Settings
from tests.conftest import Backend
from tests.support.api import Api, login, purchase, register
from tests.support.pg_cluster import Cluster, streaming_cluster
from tests.support.processes import ServerProcess, server_processes
from tests.support.replica import Replica, apply_page, build, without_empty

ADMIN_PASSWORD = "replica admin 1"


@dataclass
class Deployment:
    cluster: Cluster
    env: dict[str, str]
    servers: list[ServerProcess]
    admin: Api

    @property
    def urls(self) -> list[str]:
        return [server.base_url for server in self.servers]


@pytest.fixture
def deployment(services_backend: Backend) -> Iterator[Deployment]:
    """Two instances on a private primary + replica (and the test session's Redis). The tail
    is off, so every pull reads the database: the path a replica serves."""
    with streaming_cluster() as cluster:
        env = {
            **services_backend.env,
            "DATABASE_URL": cluster.primary.url("freshroots"),
            "DATABASE_REPLICA_URLS": cluster.replica.url("freshroots"),
            "REDIS_PREFIX": f"frreplica:{secrets.token_hex(4)}:",
            "REPLICA_CHECK_SECONDS": "0.2",
            "REPLICA_MAX_LAG_SECONDS": "3",
            "SYNC_TAIL_ENTRIES": "0",
        }
        upgrade(env["DATABASE_URL"])
        email = f"admin-{secrets.token_hex(4)}@freshroots.test"
        asyncio.run(ensure_admin(Settings.from_environ(env), email, ADMIN_PASSWORD, "Admin"))
        cluster.wait_until_replayed()
        with server_processes(env, 2) as servers:
            deployment = Deployment(cluster, env, servers, login(servers[0].base_url, email,
                                                                 ADMIN_PASSWORD))  # fmt: skip
            for url in deployment.urls:
                wait_for_metric(url, "freshroots_db_replica_in_rotation", 1)
            yield deployment


def metrics(base_url: str) -> str:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def metric(base_url: str, name: str, **labels: str) -> float:
    """The value of one sample (summed over samples matching `labels`); 0 when absent."""
    total = 0.0
    for line in metrics(base_url).splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


def wait_for_metric(base_url: str, name: str, value: float, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while metric(base_url, name) != value:
        assert time.monotonic() < deadline, f"{name} did not become {value} on {base_url}"
        time.sleep(0.1)


def replica_reads(deployment: Deployment) -> float:
    return sum(metric(url, "freshroots_db_reads", outcome="replica") for url in deployment.urls)


class Phone:
    """A buyer's device: pulls from its cursor into its replica, alternating instances, and
    checks that no answer ever hands it a cursor older than the one it sent."""

    def __init__(
        self, deployment: Deployment, codec: CursorCodec, urls: list[str] | None = None
    ) -> None:
        self.urls = urls or deployment.urls
        self.api = register(deployment.urls[0], "replica-phone")
        self.codec = codec
        self.replica: Replica = {}
        self.cursor: str | None = None
        self.position = 0
        self.turn = 0
        self.pulls = 0

    def sync(self, on: str | None = None) -> None:
        """Pull until more=false (each page from the next instance in turn, or all `on` one)."""
        while True:
            self.turn += 1
            api = self.api.on(on or self.urls[self.turn % len(self.urls)])
            params: dict[str, Any] = {"limit": 50}
            if self.cursor:
                params["cursor"] = self.cursor
            response = api.get("/api/sync/pull", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert not page["reset"], "a pull through the replica reset the phone"
            apply_page(self.replica, page)
            state = self.codec.decode(page["cursor"], self.api.user["id"])
            if isinstance(state, LogCursor):
                assert state.position >= self.position, "a cursor went backwards"
                self.position = state.position
            self.cursor = page["cursor"]
            self.pulls += 1
            if not page["more"]:
                return

    def orders(self) -> set[str]:
        return set(self.replica.get("orders", {}))


def test_a_paused_replica_never_costs_a_change_a_cursor_or_a_phones_own_push(
    deployment: Deployment,
) -> None:
    with server_processes({**deployment.env, "DATABASE_REPLICA_URLS": ""}, 1) as (primary,):
        check_a_paused_replica(deployment, primary.base_url)


def check_a_paused_replica(deployment: Deployment, primary_only: str) -> None:
    codec = CursorCodec(deployment.env["JWT_SECRET"].encode())
    admin = deployment.admin
    listings = [admin.create_listing(title=f"Replica {n}", stock=10_000) for n in range(5)]
    phones = [Phone(deployment, codec) for _ in range(4)]
    # A phone that never writes, its polls alternating between an instance with no replica
    # and the two with one: a cursor from the primary, then a pull through the replica (as
    # with two replicas at different lags).
    watcher = Phone(deployment, codec, [primary_only, *deployment.urls])
    for phone in [*phones, watcher]:
        phone.sync()
    deployment.cluster.wait_until_replayed()
    before = replica_reads(deployment)
    for phone in phones:
        phone.sync()
    assert replica_reads(deployment) > before, "pulls did not reach the replica"

    deployment.cluster.pause_replay()
    # Changes the replica lacks: the watcher reads them on the primary, then, once there is
    # something newer still, polls through the replica's instances with a cursor past
    # everything the replica holds.
    for n, url in enumerate(deployment.urls):
        admin.patch(f"/api/admin/listings/{listings[n]['id']}", json={"stock": 9_000 + n})
        watcher.sync(on=primary_only)
        admin.patch(f"/api/admin/listings/{listings[n]['id']}", json={"stock": 8_000 + n})
        watcher.sync(on=url)
    stop = threading.Event()
    pushed: dict[str, set[str]] = {phone.api.user["id"]: set() for phone in phones}

    def admin_keeps_editing() -> int:
        edits = 0
        while not stop.is_set():
            target = listings[edits % len(listings)]
            response = admin.on(deployment.urls[edits % 2]).patch(
                f"/api/admin/listings/{target['id']}", json={"price": 1000 + edits}
            )
            assert response.status_code == 200, response.text
            edits += 1
            time.sleep(0.05)
        return edits

    def phone_buys_and_pulls(phone: Phone) -> None:
        for number in range(6):
            mutation = purchase(number + 1, listings[number % len(listings)]["id"])
            order_id = mutation["args"]["order_id"]
            # The push on one instance, the pull right after on the other.
            api = phone.api.on(deployment.urls[number % 2])
            response = api.push(f"dev-{phone.api.user['id']}", [mutation])
            assert response.status_code == 200, response.text
            pushed[phone.api.user["id"]].add(order_id)
            phone.sync()
            assert order_id in phone.orders(), "the phone's own push was not in its next pull"
            # A poll with nothing of its own since: its cursor (from the primary, past the
            # paused replica and past this push, since the admin edits on) stays where it is.
            time.sleep(0.1)
            phone.sync()

    def watcher_polls() -> None:
        for _ in range(30):
            watcher.sync()
            time.sleep(0.05)

    with ThreadPoolExecutor(len(phones) + 2) as pool:
        editing = pool.submit(admin_keeps_editing)
        try:
            working = [pool.submit(phone_buys_and_pulls, phone) for phone in phones]
            for done in [*working, pool.submit(watcher_polls)]:
                done.result()
        finally:
            stop.set()
        assert editing.result() > 0

    state = deployment.cluster.replica.query("SELECT pg_get_wal_replay_pause_state()")
    assert state[0][0] == "paused", "the replica replayed during the test: nothing lagged"
    behind = sum(metric(url, "freshroots_db_reads", outcome="behind") for url in deployment.urls)
    assert behind > 0, "no read found the replica behind: the lag was never exercised"
    # Three seconds behind (REPLICA_MAX_LAG_SECONDS): out of rotation until it catches up.
    for url in deployment.urls:
        wait_for_metric(url, "freshroots_db_replica_in_rotation", 0)
    # An instance started now has watched the primary for no time at all: a replica behind
    # everything it has seen is not taken for a current one.
    with server_processes(deployment.env, 1) as (newcomer,):
        time.sleep(1.0)  # five checks
        assert metric(newcomer.base_url, "freshroots_db_replica_in_rotation") == 0

    deployment.cluster.resume_replay()
    deployment.cluster.wait_until_replayed()
    for url in deployment.urls:
        wait_for_metric(url, "freshroots_db_replica_in_rotation", 1)
    before = replica_reads(deployment)
    for phone in [*phones, watcher]:
        phone.sync()
        assert phone.orders() >= pushed.get(phone.api.user["id"], set())
        # Converged with the primary: a first sync read there (on the instance with no
        # replica) holds exactly what the phone built page by page.
        _, pages = phone.api.on(primary_only).pull_all()
        assert without_empty(phone.replica) == without_empty(build(pages))
    assert replica_reads(deployment) > before, "the replica did not take reads again"


def test_a_listing_read_from_a_lagging_replica_is_never_cached_as_current(
    deployment: Deployment,
) -> None:
    """An edit the replica lacks: the admin who made it sees it on either instance; a visitor
    may get the listing as the replica has it (a moment old, like a phone's copy), but that
    copy is never cached as current (listing pages are cached under a generation the edit
    renewed, for LISTINGS_CACHE_SECONDS): once the replica has replayed the edit, every
    visitor sees it."""
    admin = deployment.admin
    edited = admin.create_listing(title="Edited while the replica is paused")["id"]
    deployment.cluster.wait_until_replayed()
    deployment.cluster.pause_replay()
    response = admin.patch(f"/api/admin/listings/{edited}", json={"price": 4321})
    assert response.status_code == 200, response.text
    visits = 0
    for url in deployment.urls:
        assert admin.on(url).get(f"/api/listings/{edited}").json()["price"] == 4321
        for _ in range(3):
            visits += httpx.get(f"{url}/api/listings/{edited}", timeout=10).status_code == 200
            listed = httpx.get(f"{url}/api/listings", params={"limit": 100}, timeout=10)
            visits += listed.status_code == 200
    assert visits == 12
    on_replica = replica_reads(deployment)
    assert on_replica > 0, "no visitor's read went to the lagging replica"
    deployment.cluster.resume_replay()
    deployment.cluster.wait_until_replayed()
    for url in deployment.urls:
        shown = httpx.get(f"{url}/api/listings/{edited}", timeout=10).json()
        assert shown["price"] == 4321, "a replica's older copy was cached as current"
        found = httpx.get(f"{url}/api/listings", params={"limit": 100}, timeout=10).json()
        assert [item["price"] for item in found["items"] if item["id"] == edited] == [4321]


def test_a_stopped_replica_fails_no_request(deployment: Deployment) -> None:
    admin = deployment.admin
    listing = admin.create_listing(title="Steady", stock=10_000)
    readers = [register(deployment.urls[n % 2], "reader") for n in range(6)]
    deployment.cluster.wait_until_replayed()
    stop = threading.Event()
    statuses: list[int] = []
    lock = threading.Lock()

    def read_forever(reader: Api, number: int) -> None:
        turn = number
        while not stop.is_set():
            turn += 1
            api = reader.on(deployment.urls[turn % 2])
            found = [
                api.get("/api/sync/pull", params={"limit": 20}).status_code,
                api.get("/api/listings", params={"q": secrets.token_hex(2)}).status_code,
                api.get(f"/api/listings/{listing['id']}").status_code,
            ]
            with lock:
                statuses.extend(found)

    with ThreadPoolExecutor(len(readers)) as pool:
        running = [pool.submit(read_forever, reader, n) for n, reader in enumerate(readers)]
        try:
            stopped_replica_and_back(deployment)
        finally:
            stop.set()
        for done in running:
            done.result()
    assert statuses and set(statuses) == {200}, {code: statuses.count(code) for code in statuses}


def stopped_replica_and_back(deployment: Deployment) -> None:
    """While readers read: the replica stopped (out of rotation on both instances, no read sent
    to it), then started again (back in rotation, taking reads)."""
    time.sleep(1.0)
    assert replica_reads(deployment) > 0, "no read went to the replica before it stopped"
    deployment.cluster.replica.stop("fast")
    for url in deployment.urls:
        wait_for_metric(url, "freshroots_db_replica_in_rotation", 0)
    settled = replica_reads(deployment)
    time.sleep(1.0)
    assert replica_reads(deployment) == settled, "reads still went to a stopped replica"
    deployment.cluster.replica.start()
    for url in deployment.urls:
        wait_for_metric(url, "freshroots_db_replica_in_rotation", 1)
    time.sleep(1.0)
    assert replica_reads(deployment) > settled, "the restarted replica took no reads"
