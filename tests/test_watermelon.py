"""The real WatermelonDB client (0.28, LokiJS adapter, in Node) syncing with the server."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import watermelon
from storage.changelog import prune
from storage.db import Database
from tests.conftest import Backend
from tests.support.api import Api, register
from tests.support.services import services_required

DRIVER = Path(__file__).parent / "watermelon"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        if services_required():
            pytest.fail("node and npm are needed to drive WatermelonDB")
        pytest.skip("node and npm are not installed")
    if not (DRIVER / "node_modules" / "@nozbe" / "watermelondb").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=DRIVER,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return DRIVER / "node_modules"


class Device:
    """One phone: a Node process holding a WatermelonDB database in memory."""

    def __init__(self, base_url: str, token: str) -> None:
        self.process = subprocess.Popen(
            ["node", str(DRIVER / "driver.js"), base_url, token],
            cwd=DRIVER,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        return dict(reply)

    def sync(self) -> None:
        reply = self.call(op="sync")
        assert reply["ok"], reply

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in self.call(op="dump")["tables"][table]}

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(10)


async def prune_everything(backend: Backend) -> int:
    db = Database(backend.env["DATABASE_URL"])
    try:
        return await prune(db, retention_ms=-60_000)
    finally:
        await db.dispose()


@pytest.fixture
def devices(node_modules: Path) -> Iterator[list[Device]]:
    opened: list[Device] = []
    yield opened
    for device in opened:
        device.close()


def order(device: Device, listing_id: str, quantity: int) -> str:
    order_id = "wm-" + secrets.token_hex(6)
    reply = device.call(
        op="order",
        order={"id": order_id, "payment_method": "cod", "total": 1},  # the server never trusts this
        items=[
            {"id": "wmi-" + secrets.token_hex(6), "listing_id": listing_id, "quantity": quantity}
        ],
    )
    assert reply["ok"], reply
    return order_id


def test_first_sync_offline_order_second_device_and_server_edits(
    admin: Api, server: str, devices: list[Device]
) -> None:
    buyer = register(server, "melon")
    listing = admin.create_listing(
        title="Watermelon", stock=10, price=12000, images=["freshroots/wm-1"]
    )
    doomed = admin.create_listing(title="Going away", stock=2)
    phone = Device(server, buyer.token)  # type: ignore[arg-type]
    devices.append(phone)
    phone.sync()
    local = phone.rows("listings")
    assert local[listing["id"]]["title"] == "Watermelon"
    assert json.loads(local[listing["id"]]["images"]) == ["freshroots/wm-1"]

    order_id = order(phone, listing["id"], 3)  # made offline, pushed by the next sync
    phone.sync()
    server_order = buyer.get(f"/api/orders/{order_id}").json()
    assert server_order["status"] == "pending" and server_order["total"] == 36000
    assert admin.get(f"/api/listings/{listing['id']}").json()["stock"] == 7
    phone.sync()
    assert phone.rows("orders")[order_id]["total"] == 36000

    tablet = Device(server, buyer.token)  # type: ignore[arg-type]
    devices.append(tablet)
    tablet.sync()
    assert tablet.rows("orders")[order_id]["status"] == "pending"

    admin.patch(f"/api/admin/listings/{listing['id']}", json={"price": 11000})
    admin.delete(f"/api/admin/listings/{doomed['id']}")
    admin.put(f"/api/admin/orders/{order_id}/approve", json={})
    phone.sync()
    assert phone.rows("listings")[listing["id"]]["price"] == 11000
    assert doomed["id"] not in phone.rows("listings")
    assert phone.rows("orders")[order_id]["status"] == "approved"
    assert any(n["type"] == "order_approved" for n in phone.rows("notifications").values())


def test_a_repeated_push_changes_nothing_and_shortage_is_recorded(
    admin: Api, server: str, devices: list[Device]
) -> None:
    buyer = register(server, "melon2")
    listing = admin.create_listing(title="Papaye", stock=2, price=5500)
    phone = Device(server, buyer.token)  # type: ignore[arg-type]
    devices.append(phone)
    phone.sync()
    order_id = "wm-" + secrets.token_hex(6)
    item_id = "wmi-" + secrets.token_hex(6)
    changes = {
        "orders": {
            "created": [{"id": order_id, "payment_method": "cod"}],
            "updated": [],
            "deleted": [],
        },
        "order_items": {
            "created": [
                {"id": item_id, "order_id": order_id, "listing_id": listing["id"], "quantity": 2}
            ],
            "updated": [],
            "deleted": [],
        },
    }
    for _ in range(3):  # the acknowledgement was lost twice
        response = buyer.post("/api/sync/watermelon", params={"last_pulled_at": 1}, json=changes)
        assert response.status_code == 200 and response.json() == {}
    assert admin.get(f"/api/listings/{listing['id']}").json()["stock"] == 0
    assert len([o for o in buyer.get("/api/orders").json()["items"] if o["id"] == order_id]) == 1

    short = order(phone, listing["id"], 1)
    phone.sync()
    phone.sync()
    recorded = phone.rows("orders")[short]
    assert recorded["status"] == "rejected" and recorded["reject_reason"] == "out_of_stock"


def test_unwritable_records_are_rejected_and_conflicts_refused(
    admin: Api, server: str, buyer: Api
) -> None:
    listing = admin.create_listing(stock=5)
    pulled = buyer.get("/api/sync/watermelon", params={"last_pulled_at": "null"}).json()
    assert 1 <= pulled["timestamp"] <= 2**53
    response = buyer.post(
        "/api/sync/watermelon",
        params={"last_pulled_at": pulled["timestamp"]},
        json={
            "listings": {
                "created": [{"id": "fake-listing-1", "title": "x"}],
                "updated": [{"id": listing["id"], "price": 1}],
                "deleted": [],
            }
        },
    )
    assert response.status_code == 200
    assert sorted(response.json()["experimentalRejectedIds"]["listings"]) == sorted(
        ["fake-listing-1", listing["id"]]
    )
    assert admin.get(f"/api/listings/{listing['id']}").json()["price"] == listing["price"]

    order_id = "wm-" + secrets.token_hex(6)
    buyer.post(
        "/api/orders/purchase-request",
        json={
            "order_id": order_id,
            "payment_method": "cod",
            "items": [
                {
                    "item_id": "wmi-" + secrets.token_hex(6),
                    "listing_id": listing["id"],
                    "quantity": 1,
                }
            ],
        },
    )
    stamp = buyer.get(
        "/api/sync/watermelon", params={"last_pulled_at": pulled["timestamp"]}
    ).json()["timestamp"]
    admin.put(f"/api/admin/orders/{order_id}/approve", json={})  # changed after the pull
    conflict = buyer.post(
        "/api/sync/watermelon",
        params={"last_pulled_at": stamp},
        json={
            "orders": {
                "created": [],
                "updated": [{"id": order_id, "status": "cancelled"}],
                "deleted": [],
            }
        },
    )
    assert conflict.status_code == 409
    assert buyer.get(f"/api/orders/{order_id}").json()["status"] == "approved"
    assert buyer.get("/api/sync/watermelon", params={"last_pulled_at": "soon"}).status_code == 422


def test_a_device_past_the_logs_retention_gets_a_replacement_sync(
    admin: Api, server: str, backend: Backend, devices: list[Device]
) -> None:
    """Pruned changes cannot be replayed, deletions included: the server answers with a full
    snapshot marked `experimentalStrategy: "replacement"`, and the real client then drops the
    records the snapshot no longer has."""
    buyer = register(server, "melon-late")
    kept = admin.create_listing(title="Pomme liane")
    hidden = admin.create_listing(title="Hidden while away")
    phone = Device(server, buyer.token)  # type: ignore[arg-type]
    devices.append(phone)
    phone.sync()
    assert hidden["id"] in phone.rows("listings")
    admin.patch(f"/api/admin/listings/{hidden['id']}", json={"status": "draft"})
    assert asyncio.run(prune_everything(backend)) > 0
    phone.sync()
    local = phone.rows("listings")
    assert kept["id"] in local and hidden["id"] not in local
    beyond = buyer.get("/api/sync/watermelon", params={"last_pulled_at": 10**12}).json()
    assert beyond["experimentalStrategy"] == "replacement"  # a restored database, say
    assert beyond["timestamp"] < 10**12


def test_a_record_changed_on_several_pages_reaches_the_device_once(
    admin: Api, server: str, devices: list[Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    buyer = register(server, "melon-pages")
    phone = Device(server, buyer.token)  # type: ignore[arg-type]
    devices.append(phone)
    phone.sync()
    listing = admin.create_listing(title="Bilimbi", price=3000)
    for n in range(3):
        admin.create_listing(title=f"Filler {n}")
    admin.patch(f"/api/admin/listings/{listing['id']}", json={"price": 3500})
    monkeypatch.setattr(watermelon, "PAGE", 2)  # so the put and the patch land on two pages
    phone.sync()  # WatermelonDB refuses a pull that names a record twice
    assert phone.rows("listings")[listing["id"]]["price"] == 3500
