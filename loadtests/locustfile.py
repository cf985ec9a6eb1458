"""Load profiles from real use (locust, FastHttpUser). Run through loadtests/run_load.py,
which seeds the data, starts the servers on loopback and passes these environment variables:
LOAD_TOKENS (a file of access tokens, one per line), LOAD_LISTINGS (listing ids), LOAD_ADMIN
(an admin token). Only loopback targets; every run is bounded by --run-time."""

from __future__ import annotations

import itertools
import os
import random
import secrets
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, task

TOKENS = Path(os.environ.get("LOAD_TOKENS", "/dev/null")).read_text().split()
LISTINGS = Path(os.environ.get("LOAD_LISTINGS", "/dev/null")).read_text().split()
ADMIN = os.environ.get("LOAD_ADMIN", "")
_next_token = itertools.count()
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


def token() -> str:
    return TOKENS[next(_next_token) % len(TOKENS)]


class BackgroundSyncPhone(FastHttpUser):
    """A phone in a pocket: syncs every 30-60 s, small pages, gzip, If-None-Match."""

    weight = 80
    wait_time = between(30, 60)

    def on_start(self) -> None:
        self.headers = {"authorization": f"Bearer {token()}", "accept-encoding": "gzip"}
        self.cursor: str | None = None
        self.pull_until_current(name="/api/sync/pull [initial]")

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
        self.pull_until_current(name="/api/sync/pull")


class OfflineBurstPhone(FastHttpUser):
    """Comes back online with 5-20 queued mutations and replays them, some twice."""

    weight = 10
    wait_time = between(60, 120)

    def on_start(self) -> None:
        self.headers = {"authorization": f"Bearer {token()}", "content-type": "application/json"}
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
            self.client.put(
                f"/api/admin/orders/{order['id']}/{decision}",
                json=body,
                headers=self.headers,
                name=f"/api/admin/orders/{{id}}/{decision}",
            )
