"""The admin dashboard in real Chromium (Debian's package, driven by Playwright): sign in,
see a purchase request made through the sync API appear live, approve it, see the audit
row; the analytics charts (uPlot) with dates, rupees, a tooltip and an empty state.
Screenshots of the queue and of analytics are saved in tests/artifacts/ for review, and the
analytics one also as /tmp/dashboard-analytics.png."""

from __future__ import annotations

import re
import secrets
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import ADMIN_PASSWORD, Backend
from tests.support.api import Api, client_id, purchase
from tests.support.services import services_required

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
MAURITIUS = timezone(timedelta(hours=4))
ORDERS_GREEN = (47, 122, 59)  # #2f7a3b, the orders chart's bars
# Records Content-Security-Policy violations (a refused inline style or script is silent in
# the page otherwise); injected by the browser driver, so the policy does not apply to it.
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


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
    page.wait_for_selector("#orders-chart canvas", timeout=10_000)
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


def sign_in(page: Any, server: str, admin_email: str) -> None:
    page.goto(f"{server}/admin/")
    page.fill("input[name=email]", admin_email)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("#nav:not([hidden])", timeout=10_000)


def backdate(backend: Backend, placed: dict[str, tuple[int, int | None]]) -> None:
    """Move orders into the past (created_at, approved_at): the API only places orders now."""
    url = backend.env["DATABASE_URL"]
    rows = [(created, approved, order_id) for order_id, (created, approved) in placed.items()]
    sql = "UPDATE orders SET created_at = {0}, approved_at = {0} WHERE id = {0}"
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as conn, conn:
            conn.executemany(sql.format("?"), rows)
    else:
        with psycopg.connect(url) as postgres:
            postgres.cursor().executemany(sql.format("%s"), rows)


def noon(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, 12, tzinfo=MAURITIUS).timestamp() * 1000)


def bars(page: Any, chart: str) -> list[tuple[int, int]]:
    """(left, width) in CSS pixels of each run of bar colour along a row of the chart's
    canvas just above the x axis: the bars the chart actually drew."""
    runs: list[list[int]] = page.evaluate(
        """([selector, [r, g, b]]) => {
          const canvas = document.querySelector(selector + ' canvas')
          const over = document.querySelector(selector + ' .u-over')
          const ratio = canvas.width / canvas.clientWidth
          const y = Math.round((over.offsetTop + over.offsetHeight - 3) * ratio)
          const row = canvas.getContext('2d').getImageData(0, y, canvas.width, 1).data
          const runs = []
          for (let x = 0; x < canvas.width; x++) {
            const hit = row[4 * x] === r && row[4 * x + 1] === g && row[4 * x + 2] === b
            if (hit && runs.length && runs[runs.length - 1][1] === x) runs[runs.length - 1][1]++
            else if (hit) runs.push([x, x + 1])
          }
          return runs.map(([a, z]) => [a / ratio, (z - a) / ratio])
        }""",
        [chart, list(ORDERS_GREEN)],
    )
    return [(round(left), round(width)) for left, width in runs]


def hover_day(page: Any, chart: str, index: int, days: int) -> str:
    """Hover the middle of day `index` (of `days` on the x axis) near the bottom of the plot;
    the chart's tooltip text."""
    box = page.locator(f"{chart} .u-over").bounding_box()
    x = box["x"] + (index + 0.5) * box["width"] / days
    page.mouse.move(x, box["y"] + box["height"] - 4)
    tip = page.wait_for_selector(f"{chart} .chart-tip:not([hidden])", timeout=5_000)
    return str(tip.inner_text())


def test_dashboard_analytics_charts(
    backend: Backend,
    server: str,
    admin_email: str,
    admin: Api,
    buyer: Api,
    tmp_path: Path,
    browser: Any,
) -> None:
    # Orders over several past days (price Rs 55): (days ago, quantity, what became of it).
    listing = admin.create_listing(title="Chart pipangaille", stock=50, price=5500)
    plan = [
        (6, 2, "approve"),
        (6, 1, "pending"),
        (4, 3, "approve"),
        (3, 1, "approve"),
        (3, 4, "approve"),
        (3, 1, "reject"),
        (1, 2, "approve"),
    ]
    batch = [purchase(n + 1, listing["id"], quantity=q) for n, (_, q, _) in enumerate(plan)]
    results = buyer.push(client_id(), batch).json()["results"]
    assert all(result["ok"] for result in results), results
    today = datetime.now(MAURITIUS).date()
    placed: dict[str, tuple[int, int | None]] = {}
    for mutation, (ago, _, fate) in zip(batch, plan, strict=True):
        order_id = mutation["args"]["order_id"]
        if fate == "approve":
            assert admin.put(f"/api/admin/orders/{order_id}/approve", json={}).status_code == 200
        elif fate == "reject":
            response = admin.put(f"/api/admin/orders/{order_id}/reject", json={"reason": "late"})
            assert response.status_code == 200
        created = noon(today - timedelta(days=ago))
        placed[order_id] = (created, created + 25 * 60_000 if fate == "approve" else None)
    backdate(backend, placed)

    # The API: every day of the range present, the days without an order as zeros.
    start = noon(today - timedelta(days=7)) - 12 * 3_600_000
    week = admin.get(
        "/api/admin/analytics", params={"from": start, "to": start + 7 * 86_400_000}
    ).json()["orders_per_day"]
    assert [(row["day"], row["orders"], row["revenue"]) for row in week] == [
        ((today - timedelta(days=7)).isoformat(), 0, 0),
        ((today - timedelta(days=6)).isoformat(), 2, 11000),
        ((today - timedelta(days=5)).isoformat(), 0, 0),
        ((today - timedelta(days=4)).isoformat(), 1, 16500),
        ((today - timedelta(days=3)).isoformat(), 3, 27500),
        ((today - timedelta(days=2)).isoformat(), 0, 0),
        ((today - timedelta(days=1)).isoformat(), 1, 11000),
    ]

    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.add_init_script(WATCH_CSP)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def console_error(message: Any) -> None:
        if message.type == "error":  # a failed load, an uncaught error, a CSP refusal
            errors.append(message.text)

    page.on("console", console_error)
    sign_in(page, server, admin_email)

    # The last 30 days: two charts, a bar per day with orders, dates and rupees on the axes.
    page.click("a[href='#/analytics']")
    page.wait_for_selector("#revenue-chart canvas", timeout=10_000)
    month = admin.get(
        "/api/admin/analytics",
        params={"from": noon(today - timedelta(days=29)) - 12 * 3_600_000},
    ).json()["orders_per_day"]
    assert len(month) == 30 and month[-1]["day"] == today.isoformat()
    busy = [row for row in month if row["orders"]]
    assert len(bars(page, "#orders-chart")) == len(busy) >= 4
    orders_chart = page.locator("#orders-chart .plot")
    x_labels = orders_chart.get_attribute("data-x-labels").split("|")
    assert len(x_labels) >= 6 and all(
        re.fullmatch(r"\d{1,2} [A-Z][a-z]{2,3}( \d{4})?", label) for label in x_labels
    ), x_labels
    y_labels = orders_chart.get_attribute("data-y-labels").split("|")
    assert y_labels[0] == "0" and all(label.isdigit() for label in y_labels), y_labels
    revenue_y = page.locator("#revenue-chart .plot").get_attribute("data-y-labels").split("|")
    assert revenue_y[0] == "Rs 0" and all(label.startswith("Rs ") for label in revenue_y)
    assert "Rs 275.00" in page.text_content("#per-day")  # the same figures, as a table

    # Hover three days ago: the tooltips give the date and the value, with units.
    long_date = f"{(today - timedelta(days=3)).day} "
    tip = hover_day(page, "#orders-chart", 26, 30)
    assert long_date in tip and "3 orders" in tip, tip
    page.screenshot(path=str(tmp_path / "analytics.png"), full_page=True)
    shutil.copy(tmp_path / "analytics.png", "/tmp/dashboard-analytics.png")
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "analytics.png", ARTIFACTS / "dashboard-analytics-charts.png")
    tip = hover_day(page, "#revenue-chart", 26, 30)
    assert long_date in tip and "Rs 275.00" in tip, tip
    page.mouse.move(5, 5)
    page.wait_for_selector("#revenue-chart .chart-tip[hidden]", state="attached")
    wide = page.locator("#orders-chart .uplot").bounding_box()["width"]
    page.set_viewport_size({"width": 900, "height": 900})  # the charts follow the window
    page.wait_for_function(
        "(wide) => document.querySelector('#orders-chart .uplot').offsetWidth < wide - 200",
        arg=wide,
    )
    page.set_viewport_size({"width": 1366, "height": 900})

    # One day of data: one narrow bar with its date under it, not a block across the chart.
    one = (today - timedelta(days=4)).isoformat()
    page.goto(f"{server}/admin/#/analytics?from={one}&to={one}")
    page.wait_for_selector("#orders-chart canvas", timeout=10_000)
    assert page.locator("#range input[name=from]").input_value() == one
    (only,) = bars(page, "#orders-chart")
    plot_width = page.locator("#orders-chart .u-over").bounding_box()["width"]
    assert 8 <= only[1] <= 48 < plot_width / 10, only
    assert page.locator("#orders-chart .plot").get_attribute("data-x-labels") == (
        page.evaluate(
            "(day) => new Intl.DateTimeFormat('en-GB', {day: 'numeric', month: 'short', "
            "timeZone: 'UTC'}).format(new Date(day))",
            one,
        )
    )
    assert "1 order" in hover_day(page, "#orders-chart", 0, 1)
    page.screenshot(path=str(tmp_path / "analytics-one-day.png"), full_page=True)
    shutil.copy(tmp_path / "analytics-one-day.png", "/tmp/dashboard-analytics-one-day.png")

    # Over a year the server sends only the days with orders; the axis still spans the range,
    # in months, with the years.
    long_ago = (today - timedelta(days=800)).isoformat()
    one_day_labels = page.locator("#orders-chart .plot").get_attribute("data-x-labels")
    page.fill("#range input[name=from]", long_ago)
    page.click("#range button")
    # The new range's chart, not the one-day chart still on the page while it loads (the
    # hash changes first: reading then gave the old labels under load).
    page.wait_for_function(
        "([day, old]) => location.hash.includes(day) && "
        "document.querySelector('#orders-chart canvas') && "
        "[undefined, '', old].indexOf("
        "document.querySelector('#orders-chart .plot')?.dataset.xLabels) < 0",
        arg=[long_ago, one_day_labels],
    )
    x_labels = page.locator("#orders-chart .plot").get_attribute("data-x-labels").split("|")
    assert re.fullmatch(r"1 [A-Z][a-z]{2,3} \d{4}", x_labels[0]), x_labels
    assert all(label.startswith("1 ") for label in x_labels) and len(x_labels) >= 6, x_labels

    # A period without orders says so instead of drawing an empty chart.
    page.fill("#range input[name=from]", "2001-01-01")
    page.fill("#range input[name=to]", "2001-01-31")
    page.click("#range button")
    page.wait_for_selector(".empty:has-text('No orders in this period.')", timeout=10_000)
    assert page.locator(".uplot").count() == 0
    assert "#/analytics?from=2001-01-01&to=2001-01-31" in page.url
    page.screenshot(path=str(tmp_path / "analytics-empty.png"), full_page=True)
    shutil.copy(tmp_path / "analytics-empty.png", "/tmp/dashboard-analytics-empty.png")

    # The logo is an inline SVG (Debian's Chromium has no emoji font: 🌱 was an empty box).
    assert page.locator("header .brand svg.logo").count() == 1
    assert "🌱" not in page.inner_text("header")
    assert page.evaluate("window.__csp") == []
    assert errors == []
    page.close()
