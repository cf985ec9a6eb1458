"""PAYMENTS_SANDBOX=on: the stand-in gateway served inside our own server (what `make run`
does), paid through its hosted page like a browser would, over real HTTP end to end."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from starlette.routing import Mount

from integrations.payments.sandbox import GatewayState
from sync_server.app import create_app
from sync_server.routes.payments import IMN_PATH, SANDBOX_PATH
from sync_server.settings import ConfigError, Settings
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.support.api import Api, login, register
from tests.support.live_server import RUNNING, free_port, serve_in_thread


@pytest.fixture
def sandboxed_server(backend: Backend) -> Iterator[str]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    settings = backend.settings(PAYMENTS_SANDBOX="on", PUBLIC_BASE_URL=base_url)
    with serve_in_thread(create_app(settings), port=port) as served:
        assert served == base_url
        yield base_url


class PayForm(HTMLParser):
    """What a browser reads from the hosted page: the form and its buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.method: str | None = None
        self.action: str | None = None
        self.buttons: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form":
            self.method = (attributes.get("method") or "get").lower()
            self.action = attributes.get("action")
        elif tag == "button" and attributes.get("name"):
            self.buttons[str(attributes["name"])] = attributes.get("value") or ""


def approved_order(admin: Api, buyer: Api, price: int, quantity: int) -> str:
    listing = admin.create_listing(stock=10, price=price)
    order_id = "sbx-" + secrets.token_hex(6)
    placed = buyer.post(
        "/api/orders/purchase-request",
        json={
            "order_id": order_id,
            "payment_method": "juice",
            "items": [
                {
                    "item_id": "sbxi-" + secrets.token_hex(6),
                    "listing_id": listing["id"],
                    "quantity": quantity,
                }
            ],
        },
    )
    assert placed.status_code == 201, placed.text
    approved = admin.put(f"/api/admin/orders/{order_id}/approve", json={})
    assert approved.status_code == 200, approved.text
    return order_id


def changes_for(pages: list[dict[str, Any]], table: str, row_id: str) -> list[dict[str, Any]]:
    """Every put or patch of one row (payments: of the row for that order)."""
    rows = [
        row
        for page in pages
        for kind in ("put", "patch")
        for row in page["changes"].get(table, {}).get(kind, [])
    ]
    return [row for row in rows if row_id in (row.get("id"), row.get("order_id"))]


def test_paying_on_the_in_server_sandbox_marks_the_order_paid_once(
    sandboxed_server: str, admin_email: str
) -> None:
    admin = login(sandboxed_server, admin_email, ADMIN_PASSWORD)
    buyer = register(sandboxed_server, "sandbox-payer")
    order_id = approved_order(admin, buyer, price=4550, quantity=2)
    cursor, _ = buyer.pull_all()

    started = buyer.post(f"/api/orders/{order_id}/payments", json={"method": "juice"})
    assert started.status_code == 201, started.text
    payment_url = started.json()["payment_url"]
    assert payment_url.startswith(f"{sandboxed_server}{SANDBOX_PATH}/pay/")

    with httpx.Client(timeout=30, follow_redirects=False) as browser:
        page = browser.get(payment_url)
        assert page.status_code == 200 and "Rs 91.00" in page.text  # 2 x Rs 45.50
        form = PayForm()
        form.feed(page.text)
        assert form.method == "post" and "pay" in form.buttons
        target = str(httpx.URL(payment_url).join(form.action or ""))
        # The gateway posts its IMN to our webhook before it sends the buyer back.
        paid = browser.post(target, data={"pay": form.buttons["pay"]})
    assert paid.status_code == 303, paid.text
    assert paid.headers["location"] == f"{sandboxed_server}/payments/return"
    landing = httpx.get(paid.headers["location"])  # the buyer's browser lands on a real page
    assert landing.status_code == 200 and "Fresh Roots app" in landing.text

    order = buyer.get(f"/api/orders/{order_id}").json()
    assert order["status"] == "paid" and order["payment_status"] == "paid"
    cursor, pages = buyer.pull_all(cursor)
    assert [row["status"] for row in changes_for(pages, "orders", order_id)] == ["paid"]
    payments = changes_for(pages, "payments", order_id)
    assert len(payments) == 1 and payments[0]["status"] == "paid"
    assert payments[0]["amount"] == 9100 and payments[0]["transaction_id"]

    gateway: GatewayState = RUNNING[sandboxed_server][0].state.payments_sandbox
    assert len(gateway.notifications) == 1
    repeat = httpx.post(
        f"{sandboxed_server}{IMN_PATH}", data={"crypted_callback": gateway.notifications[0]}
    )
    assert repeat.status_code == 200 and repeat.text == "success"  # a repeat is acknowledged
    assert buyer.get(f"/api/orders/{order_id}").json() == order
    _, after = buyer.pull_all(cursor)
    assert not changes_for(after, "orders", order_id)
    assert not changes_for(after, "payments", order_id)


def test_the_sandbox_answers_bad_requests_with_4xx(sandboxed_server: str) -> None:
    gateway: GatewayState = RUNNING[sandboxed_server][0].state.payments_sandbox
    s = gateway.settings
    authentify = {
        "id_merchant": s.id_merchant,
        "id_entity": s.id_entity,
        "id_operator": s.id_operator,
        "operator_password": s.operator_password,
    }
    auth = (s.basic_user, s.basic_password)
    for path, body in (
        ("/create_payment_request", b""),
        ("/create_payment_request", b"not json"),
        ("/create_payment_request", b"[1, 2]"),
        ("/load_payment_zone", b"{}"),
    ):
        answer = httpx.post(f"{sandboxed_server}{SANDBOX_PATH}{path}", content=body, auth=auth)
        assert answer.status_code in (400, 401), (path, body, answer.status_code)
    for body_json in ({"authentify": authentify}, {"authentify": authentify, "initial_payment": 7}):
        answer = httpx.post(
            f"{sandboxed_server}{SANDBOX_PATH}/create_payment_request", json=body_json, auth=auth
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["operation_status"] == "fail"
    assert gateway.requests == {}  # nothing was recorded


def test_without_the_setting_nothing_is_mounted(server: str, backend: Backend) -> None:
    for method, path in (
        ("POST", "/create_payment_request"),
        ("POST", "/decrypt_imn_data"),
        ("GET", "/pay/anything"),
    ):
        response = httpx.request(method, f"{server}{SANDBOX_PATH}{path}", json={})
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"

    real_gateway = {
        "PAYMENTS_SANDBOX": "on",
        "MIPS_API_URL": "https://gateway.example",
        "MIPS_ID_MERCHANT": "m",
        "MIPS_ID_ENTITY": "e",
        "MIPS_ID_OPERATOR": "o",
        "MIPS_OPERATOR_PASSWORD": "p",
    }
    app = create_app(backend.settings(**real_gateway))  # real credentials win
    assert app.state.payments_sandbox is None
    assert not [r for r in app.routes if isinstance(r, Mount) and r.path == SANDBOX_PATH]


def test_sandbox_settings_are_validated() -> None:
    base = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "JWT_SECRET": "s" * 32}
    assert Settings.from_environ(base).payments_sandbox is False
    assert Settings.from_environ({**base, "PAYMENTS_SANDBOX": "ON"}).payments_sandbox is True
    with pytest.raises(ConfigError, match="PAYMENTS_SANDBOX"):
        Settings.from_environ({**base, "PAYMENTS_SANDBOX": "yes please"})
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        Settings.from_environ({**base, "PUBLIC_BASE_URL": "127.0.0.1:8000"})
    trimmed = Settings.from_environ({**base, "PUBLIC_BASE_URL": "https://shop.example/"})
    assert trimmed.public_base_url == "https://shop.example"
