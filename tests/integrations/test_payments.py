"""Paying approved orders through a stand-in MIPS-style gateway over real HTTP."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest

from integrations.payments.sandbox import (
    GatewayState,
    create_mips_standin,
    crypted_callback,
    send_imn,
)
from integrations.payments.settings import MipsSettings
from sync_server.app import create_app
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.support.api import Api, client_id, login, register
from tests.support.live_server import free_port, serve_in_thread
from tests.support.racing import at_once

MIPS_ENV = {
    "MIPS_ID_MERCHANT": "m-1",
    "MIPS_ID_ENTITY": "e-1",
    "MIPS_ID_OPERATOR": "o-1",
    "MIPS_OPERATOR_PASSWORD": "op-secret",
    "MIPS_BASIC_USER": "basic",
    "MIPS_BASIC_PASSWORD": "basic-secret",
    "MIPS_SALT": "salty",
    "MIPS_CIPHER_KEY": "cipher-key",
    "MIPS_AMOUNT_IN_CENTS": "false",
}


@dataclass
class Shop:
    base_url: str
    gateway: GatewayState
    admin: Api
    buyer: Api
    gateway_url: str


@pytest.fixture
def shop(backend: Backend, admin_email: str) -> Iterator[Shop]:
    port = free_port()
    env = {**MIPS_ENV, "MIPS_API_URL": "http://placeholder"}
    settings = MipsSettings.from_environ(env)
    assert settings is not None
    state = GatewayState(settings=settings)
    with serve_in_thread(create_mips_standin(state)) as gateway_url:
        app = create_app(backend.settings(**{**env, "MIPS_API_URL": gateway_url}))
        with serve_in_thread(app, port=port) as base_url:
            state.webhook_url = f"{base_url}/api/webhooks/payments/mips"
            yield Shop(
                base_url,
                state,
                login(base_url, admin_email, ADMIN_PASSWORD),
                register(base_url, "payer"),
                gateway_url,
            )


def approved_order(shop: Shop, price: int = 6000, quantity: int = 2) -> str:
    listing = shop.admin.create_listing(stock=10, price=price)
    order_id = "pay-" + secrets.token_hex(5)
    shop.buyer.push(
        client_id(),
        [
            {
                "id": 1,
                "name": "purchase_request",
                "args": {
                    "order_id": order_id,
                    "payment_method": "juice",
                    "items": [
                        {
                            "item_id": "payi-" + secrets.token_hex(5),
                            "listing_id": listing["id"],
                            "quantity": quantity,
                        }
                    ],
                },
            }
        ],
    )
    assert shop.admin.put(f"/api/admin/orders/{order_id}/approve", json={}).status_code == 200
    return order_id


def imn(shop: Shop, payment_id: str, status: str, amount: Any = None) -> str:
    return asyncio.run(send_imn(shop.gateway, payment_id, status, amount))


def test_pay_with_juice_then_notification_marks_paid_once(shop: Shop) -> None:
    order_id = approved_order(shop)
    started = shop.buyer.post(f"/api/orders/{order_id}/payments", json={"method": "juice"})
    assert started.status_code == 201, started.text
    body = started.json()
    assert body["payment_url"] and body["qr_code"]
    assert shop.gateway.requests[body["payment_id"]]["amount"] == "120.00"  # rupees, 2 dp
    for _ in range(5):  # the gateway repeats itself
        assert imn(shop, body["payment_id"], "success") == "success"
    order = shop.buyer.get(f"/api/orders/{order_id}").json()
    assert order["status"] == "paid" and order["payment_status"] == "paid"
    _, pages = shop.buyer.pull_all()
    payments = [p for page in pages for p in page["changes"].get("payments", {}).get("put", [])]
    mine = [p for p in payments if p["order_id"] == order_id]
    assert len(mine) == 1 and mine[0]["status"] == "paid" and mine[0]["amount"] == 12000
    assert imn(shop, body["payment_id"], "fail") == "success"  # late fail: no downgrade
    assert shop.buyer.get(f"/api/orders/{order_id}").json()["status"] == "paid"


def test_failure_tampering_and_forgery(shop: Shop) -> None:
    failing = approved_order(shop)
    attempt = shop.buyer.post(f"/api/orders/{failing}/payments", json={"method": "myt_money"})
    assert imn(shop, attempt.json()["payment_id"], "fail") == "success"
    assert shop.buyer.get(f"/api/orders/{failing}").json()["status"] == "approved"

    tampered = approved_order(shop)
    attempt = shop.buyer.post(f"/api/orders/{tampered}/payments", json={"method": "juice"})
    assert imn(shop, attempt.json()["payment_id"], "success", amount="1.00") == "success"
    assert shop.buyer.get(f"/api/orders/{tampered}").json()["status"] == "approved"
    alerts = [
        n
        for n in shop.admin.get("/api/notifications").json()["items"]
        if n["type"] == "payment_flagged"
    ]
    assert any(n["data"]["order_id"] == tampered for n in alerts)

    forged = httpx.post(shop.gateway.webhook_url, data={"crypted_callback": "forged.data"})
    assert forged.text == "fail"
    unknown = httpx.post(shop.gateway.webhook_url, data={"crypted_callback": ""})
    assert unknown.status_code == 400
    # No gateway sends a NUL (PostgreSQL text cannot hold one: this was a 500 there).
    with_nul = httpx.post(shop.gateway.webhook_url, data={"crypted_callback": "a\x00b"})
    assert (with_nul.status_code, with_nul.text) == (400, "fail")


def test_gateway_outage_is_503_and_the_retry_reuses_the_attempt(shop: Shop) -> None:
    order_id = approved_order(shop)
    shop.gateway.fail_next = 3  # every retry inside one request fails
    down = httpx.post(
        f"{shop.base_url}/api/orders/{order_id}/payments",
        json={"method": "juice"},
        headers=shop.buyer.headers,
    )  # no client-side retry here
    assert down.status_code == 503 and down.headers["retry-after"]
    up = shop.buyer.post(f"/api/orders/{order_id}/payments", json={"method": "juice"})
    assert up.status_code == 201
    again = shop.buyer.post(f"/api/orders/{order_id}/payments", json={"method": "juice"})
    assert again.json()["payment_id"] == up.json()["payment_id"]  # same id_order, no 2nd charge
    assert len(shop.gateway.requests) == 1


def test_card_zone_and_rules(shop: Shop) -> None:
    order_id = approved_order(shop)
    card = shop.buyer.post(f"/api/orders/{order_id}/payments", json={"method": "card"})
    assert card.status_code == 201 and "<iframe" in card.json()["payment_zone_html"]
    other = register(shop.base_url, "stranger")
    assert (
        other.post(f"/api/orders/{order_id}/payments", json={"method": "card"}).status_code == 404
    )
    listing = shop.admin.create_listing(stock=3)
    pending = "pend-" + secrets.token_hex(5)
    shop.buyer.push(
        client_id(),
        [
            {
                "id": 1,
                "name": "purchase_request",
                "args": {
                    "order_id": pending,
                    "payment_method": "cod",
                    "items": [
                        {
                            "item_id": "pendi-" + secrets.token_hex(5),
                            "listing_id": listing["id"],
                            "quantity": 1,
                        }
                    ],
                },
            }
        ],
    )
    refused = shop.buyer.post(f"/api/orders/{pending}/payments", json={"method": "juice"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "order_not_payable"
    calls = dict(shop.gateway.calls)
    assert (
        shop.buyer.post(f"/api/orders/{order_id}/payments", json={"method": "bitcoin"}).status_code
        == 422
    )
    assert shop.gateway.calls == calls  # no gateway call for refused requests


def test_cash_on_delivery_approve_paid_completed(admin: Api, buyer: Api) -> None:
    listing = admin.create_listing(stock=2)
    order_id = "cod-" + secrets.token_hex(5)
    buyer.push(
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
                            "item_id": "codi-" + secrets.token_hex(5),
                            "listing_id": listing["id"],
                            "quantity": 1,
                        }
                    ],
                },
            }
        ],
    )
    assert admin.put(f"/api/admin/orders/{order_id}/approve", json={}).status_code == 200
    assert admin.put(f"/api/admin/orders/{order_id}/mark-paid", json={}).json()["status"] == "paid"
    assert (
        admin.put(f"/api/admin/orders/{order_id}/complete", json={}).json()["status"] == "completed"
    )
    assert buyer.post(f"/api/orders/{order_id}/payments", json={"method": "juice"}).status_code in (
        409,
        404,
    )


def test_reconcile_settles_a_notification_stored_during_an_outage(
    shop: Shop, backend: Backend
) -> None:
    import os
    import subprocess
    import sys

    order_id = approved_order(shop)
    payment_id = shop.buyer.post(
        f"/api/orders/{order_id}/payments", json={"method": "juice"}
    ).json()["payment_id"]
    shop.gateway.fail_next = 3  # the gateway cannot decrypt right now
    assert imn(shop, payment_id, "success") == "fail"
    assert shop.buyer.get(f"/api/orders/{order_id}").json()["status"] == "approved"
    env = {**os.environ, **backend.env, **MIPS_ENV, "MIPS_API_URL": shop.gateway_url}
    done = subprocess.run(
        [sys.executable, "-m", "sync_server.cli", "payments", "reconcile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "1 applied" in done.stdout
    assert shop.buyer.get(f"/api/orders/{order_id}").json()["status"] == "paid"


def test_a_payment_arriving_during_a_cancellation_is_never_lost(shop: Shop) -> None:
    """The gateway's notification and the buyer's cancel race: one of them wins whole. The
    money is never dropped and the webhook never fails: a payment for an order cancelled
    first is kept as flagged, admins are alerted and the buyer is told of the refund."""
    outcomes = set()
    for _ in range(8):
        order_id = approved_order(shop)
        started = shop.buyer.post(f"/api/orders/{order_id}/payments", json={"method": "juice"})
        payment_id = started.json()["payment_id"]
        token = crypted_callback(shop.gateway, payment_id, "success")
        cancel = {
            "client_id": client_id(),
            "mutations": [{"id": 1, "name": "cancel_order", "args": {"order_id": order_id}}],
        }
        notified, pushed = at_once(
            partial(httpx.post, shop.gateway.webhook_url, data={"crypted_callback": token}),
            partial(
                httpx.post,
                f"{shop.base_url}/api/sync/push",
                json=cancel,
                headers=shop.buyer.headers,
            ),
        )
        assert (notified.status_code, notified.text) == (200, "success")
        assert pushed.status_code == 200, pushed.text
        cancelled = pushed.json()["results"][0]
        order = shop.buyer.get(f"/api/orders/{order_id}").json()
        payment = payment_row(shop.buyer, payment_id)
        if cancelled["ok"]:
            assert (order["status"], payment["status"]) == ("cancelled", "flagged")
            assert payment["transaction_id"]  # kept, so the refund can be made
            assert any(
                n["type"] == "payment_flagged" and n["data"]["payment_id"] == payment_id
                for n in shop.admin.get("/api/notifications").json()["items"]
            )
            assert any(
                n["type"] == "payment_refund_due" and n["data"]["order_id"] == order_id
                for n in shop.buyer.get("/api/notifications").json()["items"]
            )
        else:
            assert cancelled["error"]["code"] == "order_paid"
            assert (order["status"], payment["status"]) == ("paid", "paid")
        outcomes.add(order["status"])
    assert outcomes  # which side wins each round is the race's to decide


def payment_row(api: Api, payment_id: str) -> dict[str, Any]:
    _, pages = api.pull_all()
    rows = {
        row["id"]: row
        for page in pages
        for row in page["changes"].get("payments", {}).get("put", [])
    }
    return rows[payment_id]
