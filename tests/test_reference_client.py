"""The reference client (protocol/client): offline queue, replay, replica, backoff."""

from __future__ import annotations

import random
import secrets
from pathlib import Path

import pytest

from protocol.client import OfflineQueue, Replica, SyncClient, TransientError
from tests.support.api import Api, purchase_args
from tests.support.replica import build, without_empty


def client_for(
    base_url: str, api: Api, tmp_path: Path, sleeps: list[float] | None = None, name: str = "phone"
) -> SyncClient:
    recorded = sleeps if sleeps is not None else []
    return SyncClient(
        base_url,
        token_provider=lambda refresh: api.token or "",
        queue=OfflineQueue(tmp_path / f"{name}-queue.db"),
        replica=Replica(tmp_path / f"{name}-replica.db"),
        sleep=recorded.append,
        rng=random.Random(7),
        attempts=4,
    )


def test_initial_sync_builds_the_servers_state(admin: Api, buyer: Api, tmp_path: Path) -> None:
    admin.create_listing(title="Replica brède")
    client = client_for(buyer.base_url, buyer, tmp_path)
    client.sync()
    _, pages = buyer.pull_all()
    assert without_empty(client.replica.tables()) == without_empty(build(pages))
    assert client.pull_until_current() == 0  # 304: nothing new


def test_offline_queue_survives_and_replays_exactly_once(
    admin: Api, buyer: Api, tmp_path: Path
) -> None:
    listing = admin.create_listing(stock=9)
    sleeps: list[float] = []
    offline = client_for("http://127.0.0.1:9", buyer, tmp_path, sleeps)
    ids = [
        offline.queue.enqueue("purchase_request", purchase_args(listing["id"])) for _ in range(3)
    ]
    assert ids == [1, 2, 3]
    with pytest.raises(TransientError):
        offline.push_pending()
    assert len(offline.queue) == 3 and len(sleeps) == 3  # backed off, kept everything
    offline.queue.close()

    online = client_for(buyer.base_url, buyer, tmp_path)  # the same files, after a restart
    assert (
        online.queue.enqueue(
            "express_interest",
            {"interest_id": "int-" + secrets.token_hex(6), "listing_id": listing["id"]},
        )
        == 4
    )
    # The first send reached the server but its answer was lost: send the same batch by hand.
    batch = online.queue.pending()
    first = buyer.push(online.queue.client_id, batch).json()["results"]
    outcomes = online.push_pending()
    assert outcomes == first and all(result["ok"] for result in outcomes)
    assert len(online.queue) == 0
    assert admin.get(f"/api/listings/{listing['id']}").json()["stock"] == 6
    mine = [o for o in buyer.get("/api/orders", params={"limit": 100}).json()["items"]]
    assert len(mine) == 3


def test_business_rejections_leave_the_queue_and_are_reported(
    admin: Api, buyer: Api, tmp_path: Path
) -> None:
    listing = admin.create_listing(stock=1)
    client = client_for(buyer.base_url, buyer, tmp_path)
    client.queue.enqueue("purchase_request", purchase_args(listing["id"], 5))
    client.sync()
    assert len(client.queue) == 0
    [rejection] = client.queue.rejected()
    assert rejection["error"]["code"] == "out_of_stock"


def test_the_replica_and_cursor_persist_across_restarts(
    admin: Api, buyer: Api, tmp_path: Path
) -> None:
    client = client_for(buyer.base_url, buyer, tmp_path)
    client.sync()
    cursor = client.replica.cursor
    client.replica.close()
    added = admin.create_listing(title="After restart")
    again = client_for(buyer.base_url, buyer, tmp_path)
    assert again.replica.cursor == cursor
    again.pull_until_current()
    assert added["id"] in again.replica.rows("listings")
