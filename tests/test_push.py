"""Expo push through the outbox: one push per event and device, with the order id in data;
dead tokens deactivated; throttling retried; receipts read later."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from integrations.notifications.standin_expo import ExpoStandinState, create_expo_standin
from storage.db import Database
from storage.models import Device, OutboxItem
from sync_server.app import create_app
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.support.api import Api, client_id, login, purchase, register
from tests.support.live_server import serve_in_thread
from tests.support.queries import statements


@pytest.fixture
def expo() -> Iterator[tuple[ExpoStandinState, str]]:
    state = ExpoStandinState(access_token="expo-access-token")
    with serve_in_thread(create_expo_standin(state)) as base_url:
        yield state, base_url


def until(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def query(backend: Backend, statement: Any) -> list[Any]:
    async def run() -> list[Any]:
        db = Database(backend.env["DATABASE_URL"])
        try:
            async with db.read() as conn:
                return list((await conn.execute(statement)).all())
        finally:
            await db.dispose()

    return asyncio.run(run())


def settings_for(backend: Backend, expo_url: str) -> Any:
    return backend.settings(
        EXPO_PUSH_URL=expo_url,
        EXPO_ACCESS_TOKEN="expo-access-token",
        OUTBOX_WORKER="on",
        OUTBOX_POLL_SECONDS="0.2",
        PUSH_RECEIPT_DELAY_SECONDS="0",
    )


def register_device(api: Api, token: str) -> None:
    result = api.push(
        client_id(),
        [
            {
                "id": 1,
                "name": "register_device",
                "args": {"expo_push_token": token, "platform": "android"},
            }
        ],
    ).json()["results"][0]
    assert result["ok"], result


def order(api: Api, listing_id: str) -> str:
    order_id = "push-" + secrets.token_hex(5)
    api.push(
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
                            "item_id": "pushi-" + secrets.token_hex(5),
                            "listing_id": listing_id,
                            "quantity": 1,
                        }
                    ],
                },
            }
        ],
    )
    return order_id


def test_order_events_are_pushed_once_per_device(
    backend: Backend, admin_email: str, expo: tuple[ExpoStandinState, str]
) -> None:
    state, expo_url = expo
    with serve_in_thread(create_app(settings_for(backend, expo_url))) as base_url:
        admin = login(base_url, admin_email, ADMIN_PASSWORD)
        buyer = register(base_url, "pushed")
        token = f"ExponentPushToken[{secrets.token_hex(8)}]"
        register_device(buyer, token)
        listing = admin.create_listing(stock=3)
        order_id = order(buyer, listing["id"])
        admin.put(f"/api/admin/orders/{order_id}/approve", json={})
        until(lambda: len([m for m in state.messages if m["to"] == token]) >= 2)
        time.sleep(0.5)
        mine = [m for m in state.messages if m["to"] == token]
        assert sorted(m["title"] for m in mine) == ["Order approved", "Purchase request received"]
        assert all(m["data"]["order_id"] == order_id and m["data"]["notification_id"] for m in mine)
        notification_ids = {n["id"] for n in buyer.get("/api/notifications").json()["items"]}
        assert {m["data"]["notification_id"] for m in mine} <= notification_ids
        until(lambda: len(state.requests_to("getReceipts")) > 0)
        receipts = select(OutboxItem.receipt_status).where(OutboxItem.recipient == token)
        # One outbox item per event for this device, each with Expo's "ok" receipt recorded.
        until(lambda: [row[0] for row in query(backend, receipts)] == ["ok", "ok"])


def test_an_uninstalled_app_is_deactivated_and_throttling_retried(
    backend: Backend, admin_email: str, expo: tuple[ExpoStandinState, str]
) -> None:
    state, expo_url = expo
    with serve_in_thread(create_app(settings_for(backend, expo_url))) as base_url:
        admin = login(base_url, admin_email, ADMIN_PASSWORD)
        gone, kept = register(base_url, "uninstalled"), register(base_url, "patient")
        gone_token = f"ExponentPushToken[{secrets.token_hex(8)}]"
        kept_token = f"ExponentPushToken[{secrets.token_hex(8)}]"
        register_device(gone, gone_token)
        register_device(kept, kept_token)
        state.unregistered.add(gone_token)
        listing = admin.create_listing(stock=5)
        order(gone, listing["id"])
        until(
            lambda: (
                query(backend, select(Device.active).where(Device.expo_push_token == gone_token))
                == [(False,)]
            )
        )

        # Two 429s, so that a receipt check the worker happens to make first (the stand-in
        # throttles every path) cannot take the only one.
        state.throttle_next = 2
        sends_before = len(state.requests_to("push/send"))
        order(kept, listing["id"])
        until(lambda: any(m["to"] == kept_token for m in state.messages), timeout=30)
        until(
            lambda: (
                [
                    row[0]
                    for row in query(
                        backend, select(OutboxItem.status).where(OutboxItem.recipient == kept_token)
                    )
                ]
                == ["sent"]
            )
        )
        # Expo really answered 429 to a send of this push, and a later send got it in.
        statuses = [r.status for r in state.requests_to("push/send")[sends_before:]]
        assert 429 in statuses and 200 in statuses[statuses.index(429) + 1 :], statuses


def test_a_worker_killed_mid_batch_loses_nothing_and_repeats_only_the_unanswered(
    backend: Backend,
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from storage.cache import MemoryCache
    from storage.changelog import ChangeLog
    from storage.feed import ChangeFeed
    from storage.outbox import enqueue
    from storage.pubsub import MemoryPubSub

    state = ExpoStandinState()
    standin = create_expo_standin(state)

    arrived: list[float] = []

    async def slow_expo(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/push/send"):
            arrived.append(time.monotonic())
            await asyncio.sleep(1.0)  # long enough to kill the worker while it waits
        await standin(scope, receive, send)

    tag = secrets.token_hex(4)
    intents = [(f"ExponentPushToken[{tag}-{n}]", f"{tag}-n{n}") for n in range(250)]

    async def queue_intents() -> None:
        db = Database(backend.env["DATABASE_URL"])
        log = ChangeLog(db, ChangeFeed(MemoryCache(), MemoryPubSub(), 30))
        async with log.transaction() as tx:
            for token, notification_id in intents:
                await enqueue(
                    tx,
                    "push",
                    f"push:{notification_id}",
                    token,
                    {
                        "title": "Order approved",
                        "body": "Your order was approved.",
                        "data": {"order_id": f"o-{tag}", "notification_id": notification_id},
                    },
                )
        await db.dispose()

    asyncio.run(queue_intents())
    with serve_in_thread(slow_expo) as expo_url:
        env = {
            **os.environ,
            **backend.env,
            "EXPO_PUSH_URL": expo_url,
            "OUTBOX_POLL_SECONDS": "0.1",
            "OUTBOX_LEASE_SECONDS": "2",
        }
        command = [sys.executable, "-m", "sync_server.cli", "worker"]
        worker = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            until(lambda: len(arrived) >= 2, timeout=30)
            worker.send_signal(signal.SIGKILL)  # batch 1 answered and recorded; 2 in flight
            worker.wait(10)
            answered = [
                (m["to"], m["data"]["notification_id"])
                for m in state.messages
                if m["data"]["order_id"] == f"o-{tag}"
            ]  # batch 2 is still sleeping
            worker = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

            def delivered() -> set[tuple[str, str]]:
                return {
                    (m["to"], m["data"]["notification_id"])
                    for m in state.messages
                    if m["data"]["order_id"] == f"o-{tag}"
                }

            until(lambda: delivered() == set(intents), timeout=60)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
    mine = [m for m in state.messages if m["data"]["order_id"] == f"o-{tag}"]
    seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for message in mine:
        seen.setdefault((message["to"], message["data"]["notification_id"]), []).append(message)
    repeated = {key: copies for key, copies in seen.items() if len(copies) > 1}
    # Only the batch that was in flight when the worker died can come twice, identically.
    assert len(repeated) <= 100
    assert all(copies[0] == copies[1] for copies in repeated.values())
    assert len(answered) == 100 and not set(answered) & set(repeated)  # recorded: never again


def test_a_token_reported_dead_in_receipts_is_deactivated(
    backend: Backend, admin_email: str, expo: tuple[ExpoStandinState, str]
) -> None:
    state, expo_url = expo
    with serve_in_thread(create_app(settings_for(backend, expo_url))) as base_url:
        admin = login(base_url, admin_email, ADMIN_PASSWORD)
        buyer = register(base_url, "uninstalls-later")
        token = f"ExponentPushToken[{secrets.token_hex(8)}]"
        register_device(buyer, token)
        state.unregistered_on_receipt.add(token)  # accepted now, refused by Google later
        listing = admin.create_listing(stock=3)
        order(buyer, listing["id"])
        until(lambda: any(m["to"] == token for m in state.messages))
        until(
            lambda: (
                query(backend, select(Device.active).where(Device.expo_push_token == token))
                == [(False,)]
            ),
            timeout=30,
        )


def reads_devices(sql: str) -> bool:
    return sql.lstrip().upper().startswith("SELECT") and " devices" in sql


def test_a_device_registered_mid_batch_gets_the_batchs_later_pushes(
    backend: Backend, admin_email: str
) -> None:
    """A batch reads its buyer's devices once (ten purchases, one read), but a device
    registered in the batch is there for the purchases after it."""
    with serve_in_thread(create_app(backend.settings())) as base_url:
        admin = login(base_url, admin_email, ADMIN_PASSWORD)
        buyer = register(base_url, "midbatch")
        first, second = (f"ExponentPushToken[{secrets.token_hex(8)}]" for _ in range(2))
        register_device(buyer, first)
        listing = admin.create_listing(stock=10)
        batch = [
            purchase(1, listing["id"]),
            purchase(2, listing["id"]),
            {
                "id": 3,
                "name": "register_device",
                "args": {"expo_push_token": second, "platform": "android"},
            },
            purchase(4, listing["id"]),
        ]
        with statements(base_url, lambda sql, _parameters: reads_devices(sql)) as reads:
            results = buyer.push(client_id(), batch).json()["results"]
        assert all(result["ok"] for result in results), results
        # The buyer's and the admin's devices (each purchase notifies both; the admin's with
        # the list of admins), read once before the registration and once after it: 4, where
        # reading per purchase would be 6.
        assert len(reads) == 4
    order_ids = [batch[n]["args"]["order_id"] for n in (0, 1, 3)]
    pushes = query(
        backend,
        select(OutboxItem.recipient, OutboxItem.payload).where(
            OutboxItem.channel == "push", OutboxItem.recipient.in_([first, second])
        ),
    )
    to: dict[str, set[str]] = {order_id: set() for order_id in order_ids}
    for recipient, payload in pushes:
        to[json.loads(payload)["data"]["order_id"]].add(recipient)
    assert to == {order_ids[0]: {first}, order_ids[1]: {first}, order_ids[2]: {first, second}}
