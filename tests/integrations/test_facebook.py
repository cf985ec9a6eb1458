"""Facebook import: the parser (our fixtures and the shared sample), the Graph client against a
stand-in Graph API over real HTTP, the signed webhook, and the command line."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from integrations.facebook.graph import FacebookTokenExpired, GraphClient
from integrations.facebook.parser import parse_feed_page, parse_message
from integrations.facebook.settings import FacebookSettings
from integrations.facebook.standin import GraphState, create_graph_standin
from integrations.facebook.webhook import changed_posts, handshake, verify_signature
from integrations.media.settings import CloudinarySettings
from integrations.media.standin import create_cloudinary_standin
from storage.drafts import Draft
from storage.imports import ImportReport, _revisit
from storage.standalone import open_changelog
from sync_server.app import create_app
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.integrations.test_media_cloudinary import tiny_png
from tests.support.api import login
from tests.support.live_server import serve_in_thread

FIXTURES = Path(__file__).parents[1] / "fixtures" / "facebook" / "posts.json"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def plain(text: str) -> str:
    return "".join(
        c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn"
    )


def matches(got: list[tuple[str, int, str]], expected: list[Any]) -> bool:
    return len(got) == len(expected) and all(
        price == want[1]
        and unit == want[2]
        and all(w in plain(title) for w in plain(want[0]).split())
        for (title, price, unit), want in zip(got, expected, strict=True)
    )


@pytest.mark.parametrize(
    "case", json.loads(FIXTURES.read_text()), ids=lambda case: case["message"][:30]
)
def test_parser_on_our_own_posts(case: dict[str, Any]) -> None:
    got = [(d.title, d.price, d.unit) for d in parse_message(case["message"])]
    assert matches(got, case["expect"]), got


def test_parser_on_the_shared_sample() -> None:
    if not (SHARED / "facebook_feed_sample.json").exists():
        pytest.skip("../shared/data is not beside this clone")
    page = json.loads((SHARED / "facebook_feed_sample.json").read_text())
    expected = {
        e["post_id"]: e["listings"]
        for e in json.loads((SHARED / "facebook_feed_sample.expected.json").read_text())
    }
    misses = []
    for post in parse_feed_page(page):
        got = [(d.title, d.price, d.unit) for d in post.drafts]
        want = [[x["title"], x["price"], x["unit"]] for x in expected[post.post_id]]
        if not matches(got, want):
            misses.append((post.post_id, got, want))
    assert misses == []


def test_cli_parse_prints_one_object_per_post(tmp_path: Path) -> None:
    feed = {"data": [{"id": "p_1", "message": "Lalo Rs 90/kg"}, {"id": "p_2", "message": "Hi!"}]}
    path = tmp_path / "feed.json"
    path.write_bytes(orjson.dumps(feed))
    output = subprocess.run(
        [sys.executable, "-m", "sync_server.cli", "facebook", "parse", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in output.stdout.splitlines()]
    assert lines == [
        {"post_id": "p_1", "listings": [{"title": "Lalo", "price": 9000, "unit": "kg"}]},
        {"post_id": "p_2", "listings": []},
    ]


def posts(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"104857600012345_{n}",
            "message": f"Brède {n} Rs {20 + n} la botte",
            "created_time": "2026-11-20T06:00:00+0000",
            "permalink_url": f"https://www.facebook.com/freshroots/posts/{n}",
        }
        for n in range(count)
    ]


def read_feed(base_url: str, token: str, sleeps: list[float]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        settings = FacebookSettings(graph_url=base_url, page_token=token)

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async with httpx.AsyncClient() as http:
            client = GraphClient(http, settings, sleep=sleep)
            return [post async for post in client.iter_feed("104857600012345", page_size=2)]

    return asyncio.run(run())


def test_graph_client_pages_through_empty_pages_and_backs_off() -> None:
    state = GraphState(
        posts=posts(5), token="page-token", rate_limit_next=1, regain_minutes=2, fail_next=1
    )
    sleeps: list[float] = []
    with serve_in_thread(create_graph_standin(state)) as base_url:
        got = read_feed(base_url, "page-token", sleeps)
    assert [p["id"] for p in got] == [p["id"] for p in posts(5)]
    assert any("was_empty" in url for url in state.requests)  # went through the empty page
    assert 120.0 in sleeps  # waited the advertised estimated_time_to_regain_access
    state.usage_percent = 95
    sleeps.clear()
    with serve_in_thread(create_graph_standin(state)) as base_url:
        read_feed(base_url, "page-token", sleeps)
    assert sleeps and all(s > 0 for s in sleeps)  # slowed down near the allowance


def test_graph_client_stops_on_an_expired_token() -> None:
    state = GraphState(posts=posts(3), token="page-token")
    with (
        serve_in_thread(create_graph_standin(state)) as base_url,
        pytest.raises(FacebookTokenExpired, match="FACEBOOK_PAGE_TOKEN"),
    ):
        read_feed(base_url, "stale-token", [])


def test_signature_and_handshake() -> None:
    body = b'{"entry": []}'
    good = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    assert verify_signature("app-secret", body, good)
    assert not verify_signature("app-secret", body + b" ", good)
    assert not verify_signature("app-secret", body, None)
    params = {"hub.mode": "subscribe", "hub.verify_token": "vt", "hub.challenge": "42"}
    assert handshake(params, "vt") == "42" and handshake(params, "nope") is None
    payload = {
        "entry": [
            {
                "changes": [
                    {"field": "feed", "value": {"post_id": "1_2", "verb": "add", "item": "status"}}
                ]
            }
        ]
    }
    assert changed_posts(payload) == [("1_2", "add")]


def test_signed_webhook_imports_drafts_once(backend: Backend, admin_email: str) -> None:
    feed = [
        {
            "id": "104857600012345_777",
            "message": "Giraumon Rs 35/kg, Calebasse Rs 45 pièce",
            "permalink_url": "https://www.facebook.com/freshroots/posts/777",
        }
    ]
    state = GraphState(posts=feed, token="page-token")
    with serve_in_thread(create_graph_standin(state)) as graph:
        settings = backend.settings(
            FACEBOOK_GRAPH_URL=graph,
            FACEBOOK_PAGE_TOKEN="page-token",
            FACEBOOK_APP_SECRET="app-secret",
            FACEBOOK_VERIFY_TOKEN="vt",
        )
        with serve_in_thread(create_app(settings)) as base_url:
            check = httpx.get(
                f"{base_url}/api/webhooks/facebook",
                params={
                    "hub.mode": "subscribe",
                    "hub.verify_token": "vt",
                    "hub.challenge": "1158201444",
                },
            )
            assert check.status_code == 200 and check.text == "1158201444"
            body = orjson.dumps(
                {
                    "object": "page",
                    "entry": [
                        {
                            "id": "104857600012345",
                            "changes": [
                                {
                                    "field": "feed",
                                    "value": {
                                        "post_id": "104857600012345_777",
                                        "verb": "add",
                                        "item": "status",
                                    },
                                }
                            ],
                        }
                    ],
                }
            )
            signature = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
            forged = httpx.post(
                f"{base_url}/api/webhooks/facebook",
                content=body,
                headers={"x-hub-signature-256": "sha256=00"},
            )
            assert forged.status_code == 403
            for _ in range(2):  # Facebook may deliver the same change twice
                delivered = httpx.post(
                    f"{base_url}/api/webhooks/facebook",
                    content=body,
                    headers={"x-hub-signature-256": signature},
                )
                assert delivered.status_code == 200
            admin = login(base_url, admin_email, ADMIN_PASSWORD)
            mine = [
                item
                for item in admin.get("/api/listings", params={"limit": 100}).json()["items"]
                if "posts/777" in item["description"]
            ]
    assert sorted((i["title"], i["price"], i["unit"], i["status"]) for i in mine) == [
        ("Calebasse", 4500, "piece", "draft"),
        ("Giraumon", 3500, "kg", "draft"),
    ]


def test_admin_import_updates_drafts_and_suggests_prices_for_published(
    backend: Backend, admin_email: str
) -> None:
    post_id = f"104857600012345_{int.from_bytes(__import__('os').urandom(3), 'big')}"
    feed = [
        {
            "id": post_id,
            "message": "Chouchou Rs 30/kg, Pipengaille Rs 50/kg",
            "permalink_url": f"https://www.facebook.com/freshroots/posts/{post_id}",
        }
    ]
    state = GraphState(posts=feed, token="page-token")
    with serve_in_thread(create_graph_standin(state)) as graph:
        settings = backend.settings(
            FACEBOOK_GRAPH_URL=graph,
            FACEBOOK_PAGE_TOKEN="page-token",
            FACEBOOK_PAGE_ID="104857600012345",
        )
        with serve_in_thread(create_app(settings)) as base_url:
            admin = login(base_url, admin_email, ADMIN_PASSWORD)
            first = admin.post("/api/admin/facebook/import", json={"limit": 10}).json()
            assert first["created"] >= 2
            mine = {
                i["title"]: i
                for i in admin.get("/api/listings", params={"limit": 100}).json()["items"]
                if post_id in i["description"]
            }
            assert set(mine) == {"Chouchou", "Pipengaille"}
            admin.patch(
                f"/api/admin/listings/{mine['Pipengaille']['id']}", json={"status": "published"}
            )
            feed[0]["message"] = "Chouchou Rs 32/kg, Pipengaille Rs 55/kg"  # the post edited
            again = admin.post("/api/admin/facebook/import", json={"limit": 10}).json()
            assert again["created"] == 0 and again["updated_drafts"] == 1
            assert again["suggestions"] == 1
            assert admin.get(f"/api/listings/{mine['Chouchou']['id']}").json()["price"] == 3200
            published = admin.get(f"/api/listings/{mine['Pipengaille']['id']}").json()
            assert published["price"] == 5000  # never overwritten
            notes = admin.get("/api/notifications").json()["items"]
            assert any(
                n["type"] == "listing_suggestion" and n["data"]["suggested_price"] == 5500
                for n in notes
            )


def test_post_pictures_go_to_cloudinary_by_url_and_a_failed_one_is_retried(
    backend: Backend, admin_email: str
) -> None:
    post_id = f"104857600012345_{secrets.randbelow(10**9)}"
    feed = [
        {
            "id": post_id,
            "message": "Pomme d'amour Rs 60/kg, Piment Rs 10 la barquette",
            "permalink_url": f"https://www.facebook.com/freshroots/posts/{post_id}",
            "full_picture": "",  # set once the stand-in's address is known
        }
    ]
    graph_state = GraphState(posts=feed, token="page-token")
    cloudinary_env = {"CLOUDINARY_URL": "cloudinary://key123:secret456@freshroots-test"}
    cloudinary_settings = CloudinarySettings.from_environ(cloudinary_env)
    assert cloudinary_settings is not None
    cloudinary_app = create_cloudinary_standin(cloudinary_settings)
    stored_images = cloudinary_app.state.cloudinary.images
    with (
        serve_in_thread(create_graph_standin(graph_state)) as graph,
        serve_in_thread(cloudinary_app) as cloudinary,
    ):
        # An expired CDN link first: the drafts are created anyway, without a picture.
        feed[0]["full_picture"] = f"{graph}/cdn/tomatoes.png?oe=expired"
        settings = backend.settings(
            **cloudinary_env,
            CLOUDINARY_UPLOAD_PREFIX=cloudinary,
            FACEBOOK_GRAPH_URL=graph,
            FACEBOOK_PAGE_TOKEN="page-token",
            FACEBOOK_PAGE_ID="104857600012345",
        )
        with serve_in_thread(create_app(settings)) as base_url:
            admin = login(base_url, admin_email, ADMIN_PASSWORD)

            def drafts() -> dict[str, dict[str, Any]]:
                items = admin.get("/api/listings", params={"limit": 100}).json()["items"]
                return {i["title"]: i for i in items if post_id in i["description"]}

            first = admin.post("/api/admin/facebook/import", json={"limit": 10}).json()
            assert (first["created"], first["pictures_stored"], first["pictures_failed"]) == (
                2,
                0,
                1,
            )
            assert [d["images"] for d in drafts().values()] == [[], []]

            graph_state.pictures["tomatoes.png"] = tiny_png(4, 3)  # the link works again
            again = admin.post("/api/admin/facebook/import", json={"limit": 10}).json()
            assert (again["created"], again["pictures_stored"]) == (0, 1)  # once per post
            public_id = "facebook/" + post_id
            assert {title: d["images"] for title, d in drafts().items()} == {
                "Pomme d'amour": [public_id],
                "Piment": [public_id],
            }
            assert (stored_images[public_id].width, stored_images[public_id].height) == (4, 3)

            third = admin.post("/api/admin/facebook/import", json={"limit": 10}).json()
            assert third["pictures_stored"] == 0  # nothing left to fetch


def test_a_draft_published_while_an_import_revisits_it_is_never_overwritten(
    admin: Any, buyer: Any, backend: Backend
) -> None:
    """The import reads a post's listing, then writes in a transaction of its own: an admin
    who publishes the draft in between must find it as they published it, and buyers must
    never receive a change the import made for admins' eyes only."""
    listing = admin.create_listing(title="Chouchou", price=3000, unit="kg", status="draft")
    stale = SimpleNamespace(  # the row as the import read it: still a draft
        id=listing["id"],
        status="draft",
        deleted_at=None,
        images='["freshroots/chouchou"]',
        title="Chouchou",
        price=3000,
        unit="kg",
    )
    assert (
        admin.patch(
            f"/api/admin/listings/{listing['id']}", json={"status": "published"}
        ).status_code
        == 200
    )
    cursor, _ = buyer.pull_all()

    async def revisit() -> ImportReport:
        report = ImportReport()
        async with open_changelog(
            backend.env["DATABASE_URL"],
            backend.env.get("REDIS_URL"),
            redis_prefix=backend.env.get("REDIS_PREFIX", "fr:"),
        ) as changelog:
            edited = Draft(title="Chouchou frais", price=3500, unit="kg")
            await _revisit(changelog, stale, edited, report, None)  # type: ignore[arg-type]
        return report

    report = asyncio.run(revisit())
    assert report.updated_drafts == 0 and report.suggestions == 1
    published = admin.get(f"/api/listings/{listing['id']}").json()
    assert (published["title"], published["price"]) == ("Chouchou", 3000)
    _, pages = buyer.pull_all(cursor)
    assert not any("listings" in page["changes"] for page in pages)
