"""The admin dashboard in real Chromium (Debian's package, driven by Playwright): sign in,
see a purchase request made through the sync API appear live, approve it, see the audit
row. Screenshots of the queue and of analytics are saved in tests/artifacts/ for review."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.support.api import Api, client_id
from tests.support.services import services_required

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Function-scoped and requested last: Playwright's sync API keeps an event loop running
    while it is open, and the session fixtures set up with asyncio.run must come first."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        if services_required():
            pytest.fail(
                "Debian's chromium is needed for the dashboard tests (apt-get install chromium)"
            )
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield instance
        instance.close()


def test_dashboard_live_queue_approve_and_audit(
    server: str, admin_email: str, admin: Api, buyer: Api, browser: Any
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    listing = admin.create_listing(title="Dashboard bringelle", stock=10, price=5500)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/admin/")
    page.fill("input[name=email]", admin_email)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Pending orders')")
    page.wait_for_selector("#live.on", timeout=10_000)

    order_id = "dash-" + secrets.token_hex(5)
    result = buyer.push(
        client_id(),
        [
            {
                "id": 1,
                "name": "purchase_request",
                "args": {
                    "order_id": order_id,
                    "payment_method": "cod",
                    "note": "Leave at the gate",
                    "items": [
                        {
                            "item_id": "dash-i-" + secrets.token_hex(5),
                            "listing_id": listing["id"],
                            "quantity": 2,
                        }
                    ],
                },
            }
        ],
    ).json()["results"][0]
    assert result["ok"], result
    row = page.wait_for_selector(f"tr[data-order='{order_id}']", timeout=15_000)  # no reload
    assert "Rs 110.00" in row.inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-queue.png"), full_page=True)

    row.query_selector("input[name=text]").fill("Ready on Saturday")
    row.query_selector("button[name=approve]").click()
    page.wait_for_selector(f"tr[data-order='{order_id}']", state="detached", timeout=10_000)
    assert buyer.get(f"/api/orders/{order_id}").json()["status"] == "approved"

    page.click("a[href='#/audit']")
    page.wait_for_selector(f"#audit td:has-text('{order_id}')", timeout=10_000)
    assert "Ready on Saturday" in page.inner_text("#audit")

    page.click("a[href='#/analytics']")
    page.wait_for_selector("svg.chart", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-analytics.png"), full_page=True)

    page.reload()  # the HttpOnly cookie brings the session back; no token in storage
    page.wait_for_selector("#nav:not([hidden])", timeout=10_000)
    assert page.evaluate("Object.keys(localStorage).length") == 0
    assert errors == []
    page.close()


def test_session_cookies_are_httponly_and_csrf_protected(server: str, admin_email: str) -> None:
    with httpx.Client(base_url=server) as client:
        signed_in = client.post(
            "/admin/session", json={"email": admin_email, "password": ADMIN_PASSWORD}
        )
        assert signed_in.status_code == 200
        cookies = signed_in.headers.get_list("set-cookie")
        refresh = next(c for c in cookies if c.startswith("fr_admin_refresh="))
        assert "HttpOnly" in refresh and "Secure" in refresh and "SameSite=strict" in refresh
        token = refresh.split(";")[0].split("=", 1)[1]
        csrf = signed_in.json()["csrf_token"]
        headers = {"cookie": f"fr_admin_refresh={token}; fr_admin_csrf={csrf}"}
        forged = client.post("/admin/session/refresh", headers=headers)
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "csrf_failed"
        ok = client.post("/admin/session/refresh", headers={**headers, "x-csrf-token": csrf})
        assert ok.status_code == 200 and ok.json()["access_token"]
    page = httpx.get(f"{server}/admin/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
