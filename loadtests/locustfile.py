"""Load profiles from real use (locust, FastHttpUser). Run through loadtests/run_load.py,
which seeds the data, starts the servers on loopback and passes these environment variables:
LOAD_TOKENS (a file of "<access token> <cursor>" lines, one per seeded user), LOAD_LISTINGS
(listing ids), LOAD_ADMIN (an admin token). Only loopback targets; every run is bounded by
--run-time.

Profiles: `BackgroundSyncPhone` (the capacity figure is counted in these; a share of them
is in the foreground and holds the live WebSocket), `OfflineBurstPhone`, `Browser`,
`Admin` (watches the live feed, approves and rejects) and one `Farm` that edits stock every
few seconds, so syncing phones have real changes to pull and sockets real frames to carry.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any

import gevent

# websocket-client: plain sockets, which gevent's monkey-patching makes cooperative.
import websocket
from locust import FastHttpUser, between, constant, events, task

_LINES = [
    line.split()
    for line in Path(os.environ.get("LOAD_TOKENS", "/dev/null")).read_text().splitlines()
]
ACCOUNTS = [(parts[0], parts[1] if len(parts) > 1 else None) for parts in _LINES if parts]
LISTINGS = Path(os.environ.get("LOAD_LISTINGS", "/dev/null")).read_text().split()
ADMIN = os.environ.get("LOAD_ADMIN", "")
# Share of phones that are installed fresh (full initial sync) and that hold a WebSocket.
FRESH_INSTALL_SHARE = float(os.environ.get("LOAD_FRESH_SHARE", "0.05"))
WEBSOCKET_SHARE = float(os.environ.get("LOAD_WS_SHARE", "0.2"))
_next_account = itertools.count()
SEARCHES = [
    "brede",
    "pomme",
    "letchi",
    "giraumon",
    "lalo",
    "chouchou",
    "fraise",
    "miel",
    "carotte",
    "ananas",
    "durian",
]
live_frames = {"frames": 0, "bytes": 0, "changes": 0}


def account() -> tuple[str, str | None]:
    return ACCOUNTS[next(_next_account) % len(ACCOUNTS)]


class LiveSocket:
    """The app's live connection: hello, catch-up until `more: false`, then frames as they
    come, answering pings. Catch-up time and failures go to locust's statistics; frames are
    counted (printed at the end), not timed, because a frame is not a request."""

    def __init__(self, user: FastHttpUser, token: str, cursor: str | None, name: str) -> None:
        self.user, self.token, self.cursor, self.name = user, token, cursor, name
        self.socket: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None

    def _report(self, started: float, length: int, exception: Exception | None) -> None:
        self.user.environment.events.request.fire(
            request_type="WS",
            name=self.name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    def open(self) -> None:
        url = (self.user.host or "").replace("http", "ws", 1) + "/api/sync/ws"
        started, received = time.perf_counter(), 0
        try:
            self.socket = websocket.create_connection(url, timeout=60, enable_multithread=False)
            self.socket.send(
                json.dumps({"type": "hello", "token": self.token, "cursor": self.cursor})
            )
            while True:
                raw = self.socket.recv()
                received += len(raw)
                frame = json.loads(raw)
                if frame["type"] == "ping":
                    self.socket.send('{"type":"pong"}')
                elif frame["type"] == "changes":
                    self.cursor = frame["cursor"]
                    if not frame["more"]:
                        break
        except Exception as exc:  # any failure is the measurement
            self._report(started, received, exc)
            self.close()
            return
        self._report(started, received, None)
        self.socket.settimeout(None)
        self.reader = gevent.spawn(self._listen)

    def _listen(self) -> None:
        assert self.socket is not None
        try:
            while True:
                raw = self.socket.recv()
                if not raw:
                    break
                frame = json.loads(raw)
                if frame["type"] == "ping":
                    self.socket.send('{"type":"pong"}')
                elif frame["type"] == "changes":
                    self.cursor = frame["cursor"]
                    live_frames["frames"] += 1
                    live_frames["bytes"] += len(raw)
                    live_frames["changes"] += len(frame["changes"])
        except (websocket.WebSocketException, OSError) as exc:
            if self.socket is not None:  # not closed by us: the server dropped it
                self._report(time.perf_counter(), 0, exc)

    def close(self) -> None:
        socket, self.socket = self.socket, None
        if socket is not None:
            socket.close()
        if self.reader is not None:
            self.reader.kill(block=False)


@events.spawning_complete.add_listener  # type: ignore[untyped-decorator]
def _reset_stats_once_settled(**_: Any) -> None:
    """Measure steady state: the stampede of every user's first sync is over by then."""
    settle = float(os.environ.get("LOAD_SETTLE_SECONDS", "0"))
    runner = _environment.runner if _environment is not None else None
    if runner is not None:
        gevent.spawn_later(settle, runner.stats.reset_all)


_environment: Any = None


@events.init.add_listener  # type: ignore[untyped-decorator]
def _keep_environment(environment: Any, **_: Any) -> None:
    global _environment
    _environment = environment


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _print_live_totals(environment: Any, **_: Any) -> None:
    print(
        f"live frames received: {live_frames['frames']} "
        f"({live_frames['changes']} changes, {live_frames['bytes']} bytes)",
        flush=True,
    )


class BackgroundSyncPhone(FastHttpUser):
    """A phone in a pocket: syncs every 30-60 s from the cursor it kept, small pages, gzip,
    If-None-Match. A few are fresh installs (full initial sync); a share is in the
    foreground and holds the live WebSocket, resuming from the cursor it pulled to."""

    weight = 80
    wait_time = between(30, 60)

    def on_start(self) -> None:
        token, cursor = account()
        fresh = random.random() < FRESH_INSTALL_SHARE
        self.headers = {"authorization": f"Bearer {token}", "accept-encoding": "gzip"}
        self.cursor: str | None = None if fresh else cursor
        self.live: LiveSocket | None = None
        self.pull_until_current(
            name="/api/sync/pull [initial]" if fresh else "/api/sync/pull [resume]"
        )
        if random.random() < WEBSOCKET_SHARE:
            self.live = LiveSocket(self, token, self.cursor, "/api/sync/ws [catch-up]")
            self.live.open()

    def on_stop(self) -> None:
        if self.live is not None:
            self.live.close()

    def pull_until_current(self, name: str) -> None:
        for _ in range(100):  # bounded even if the server kept saying more
            params = f"?limit=200{'&cursor=' + self.cursor if self.cursor else ''}"
            headers = dict(self.headers)
            if self.cursor:
                headers["if-none-match"] = f'"{self.cursor}"'
            with self.client.get(
                f"/api/sync/pull{params}", headers=headers, name=name, catch_response=True
            ) as response:
                if response.status_code == 304:
                    response.success()
                    return
                if response.status_code != 200:
                    response.failure(f"pull answered {response.status_code}")
                    return
                page = response.json()
                self.cursor = page["cursor"]
                if not page["more"]:
                    return

    @task
    def sync(self) -> None:
        if self.live is not None and self.live.socket is not None:
            return  # in the foreground the socket delivers changes; the app does not poll
        self.pull_until_current(name="/api/sync/pull")


class OfflineBurstPhone(FastHttpUser):
    """Comes back online with 5-20 queued mutations and replays them, some twice."""

    weight = 10
    wait_time = between(60, 120)

    def on_start(self) -> None:
        self.headers = {
            "authorization": f"Bearer {account()[0]}",
            "content-type": "application/json",
        }
        self.client_id = "load-" + secrets.token_hex(8)
        self.next_id = 1

    def mutation(self) -> dict[str, Any]:
        mutation_id, self.next_id = self.next_id, self.next_id + 1
        listing = random.choice(LISTINGS)
        if random.random() < 0.7:
            return {
                "id": mutation_id,
                "name": "purchase_request",
                "args": {
                    "order_id": "lo-" + secrets.token_hex(8),
                    "payment_method": "cod",
                    "items": [
                        {
                            "item_id": "li-" + secrets.token_hex(8),
                            "listing_id": listing,
                            "quantity": 1,
                        }
                    ],
                },
            }
        return {
            "id": mutation_id,
            "name": "express_interest",
            "args": {"interest_id": "lx-" + secrets.token_hex(8), "listing_id": listing},
        }

    @task
    def replay_queue(self) -> None:
        batch = [self.mutation() for _ in range(random.randint(5, 20))]
        body = {"client_id": self.client_id, "mutations": batch}
        first = self.client.post(
            "/api/sync/push", json=body, headers=self.headers, name="/api/sync/push"
        )
        if random.random() < 0.3:  # the answer was "lost": the phone sends it again
            with self.client.post(
                "/api/sync/push",
                json=body,
                headers=self.headers,
                name="/api/sync/push [replay]",
                catch_response=True,
            ) as again:
                if first.status_code == 200 and again.json() != first.json():
                    again.failure("a replay did not get the original outcomes")


class Browser(FastHttpUser):
    weight = 8
    wait_time = between(5, 15)

    @task(3)
    def search(self) -> None:
        self.client.get(
            f"/api/listings?q={random.choice(SEARCHES)}&limit=20", name="/api/listings?q="
        )

    @task(2)
    def filter(self) -> None:
        self.client.get(
            f"/api/listings?in_stock=true&max_price={random.randint(20, 300)}00&limit=20",
            name="/api/listings?filters",
        )

    @task(1)
    def listing(self) -> None:
        self.client.get(f"/api/listings/{random.choice(LISTINGS)}", name="/api/listings/{id}")


class Admin(FastHttpUser):
    weight = 2
    wait_time = between(10, 20)

    def on_start(self) -> None:
        self.headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
        # The dashboard's live feed of arriving orders, from the log's head (no snapshot).
        cursor = self.client.get(
            "/api/admin/live/cursor", headers=self.headers, name="/api/admin/live/cursor"
        ).json()["cursor"]
        self.live = LiveSocket(self, ADMIN, cursor, "/api/sync/ws [admin catch-up]")
        self.live.open()

    def on_stop(self) -> None:
        self.live.close()

    @task
    def review_queue(self) -> None:
        response = self.client.get(
            "/api/admin/orders?status=pending&limit=20",
            headers=self.headers,
            name="/api/admin/orders",
        )
        if response.status_code != 200:
            return
        for order in response.json()["items"][:3]:
            decision = "approve" if random.random() < 0.8 else "reject"
            body = {"notes": "ok"} if decision == "approve" else {"reason": "sold out"}
            with self.client.put(
                f"/api/admin/orders/{order['id']}/{decision}",
                json=body,
                headers=self.headers,
                name=f"/api/admin/orders/{{id}}/{decision}",
                catch_response=True,
            ) as decided:
                if decided.status_code == 409:
                    decided.success()  # another admin decided it first: the expected answer


class Farm(FastHttpUser):
    """The farm updating stock as produce is picked: one change every few seconds, so
    phones pull real changes and live sockets carry real frames."""

    fixed_count = 1
    wait_time = constant(3)

    def on_start(self) -> None:
        self.headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}

    @task
    def restock(self) -> None:
        self.client.patch(
            f"/api/admin/listings/{random.choice(LISTINGS)}",
            json={"stock": random.randint(500_000, 1_000_000)},
            headers=self.headers,
            name="/api/admin/listings/{id} [restock]",
        )
