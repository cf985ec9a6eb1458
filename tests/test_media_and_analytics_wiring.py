"""The server's use of Cloudinary (signed direct uploads, responsive URLs) and PostHog,
each against its local stand-in over real HTTP."""

from __future__ import annotations

import time

import httpx

from integrations.analytics.standin import create_posthog_standin
from integrations.media.settings import CloudinarySettings
from integrations.media.standin import create_cloudinary_standin
from sync_server.app import create_app
from tests.conftest import ADMIN_PASSWORD, Backend
from tests.integrations.test_media_cloudinary import tiny_png
from tests.support.api import Api, client_id, login, register
from tests.support.live_server import serve_in_thread


def test_signed_upload_then_responsive_urls(backend: Backend, admin_email: str) -> None:
    env = {"CLOUDINARY_URL": "cloudinary://key123:secret456@freshroots-test"}
    standin_settings = CloudinarySettings.from_environ(env)
    assert standin_settings is not None
    with serve_in_thread(create_cloudinary_standin(standin_settings)) as cloudinary:
        settings = backend.settings(**env, CLOUDINARY_UPLOAD_PREFIX=cloudinary)
        with serve_in_thread(create_app(settings)) as base_url:
            admin = login(base_url, admin_email, ADMIN_PASSWORD)
            listing = admin.create_listing(title="Photogenic giraumon")
            signed = admin.post("/api/admin/media/sign", json={"folder": "listings"}).json()
            assert signed["upload_url"].startswith(cloudinary)
            uploaded = httpx.post(
                signed["upload_url"],
                data=signed["params"],
                files={"file": ("giraumon.png", tiny_png(), "image/png")},
            )
            assert uploaded.status_code == 200, uploaded.text
            public_id = uploaded.json()["public_id"]
            patched = admin.patch(
                f"/api/admin/listings/{listing['id']}", json={"images": [public_id]}
            )
            assert patched.status_code == 200

            full = admin.get(f"/api/listings/{listing['id']}").json()
            assert full["images"] == [public_id]
            assert "f_auto,q_auto/" in full["image_urls"][0]["medium"]
            eco = admin.get(f"/api/listings/{listing['id']}", headers={"save-data": "on"}).json()
            assert "q_auto:eco" in eco["image_urls"][0]["medium"]
            bad = admin.patch(
                f"/api/admin/listings/{listing['id']}", json={"images": ["../../etc/passwd"]}
            )
            assert bad.status_code == 422

            tampered = dict(signed["params"], folder="somewhere-else")
            refused = httpx.post(
                signed["upload_url"],
                data=tampered,
                files={"file": ("x.png", tiny_png(), "image/png")},
            )
            assert refused.status_code == 401


def test_media_signing_is_off_without_settings(admin: Api) -> None:
    response = admin.post("/api/admin/media/sign", json={})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "integration_off"


def test_product_events_reach_posthog(backend: Backend, admin_email: str) -> None:
    standin = create_posthog_standin("phc_test_key")
    with serve_in_thread(standin) as posthog:
        settings = backend.settings(POSTHOG_HOST=posthog, POSTHOG_API_KEY="phc_test_key")
        with serve_in_thread(create_app(settings)) as base_url:
            admin = login(base_url, admin_email, ADMIN_PASSWORD)
            buyer = register(base_url, "tracked")
            listing = admin.create_listing(stock=3)
            buyer.push(
                client_id(),
                [
                    {
                        "id": 1,
                        "name": "purchase_request",
                        "args": {
                            "order_id": "ph-" + buyer.user["id"][:10],
                            "payment_method": "cod",
                            "items": [
                                {
                                    "item_id": "phi-" + buyer.user["id"][:10],
                                    "listing_id": listing["id"],
                                    "quantity": 1,
                                }
                            ],
                        },
                    }
                ],
            )
            deadline = time.monotonic() + 20
            state = standin.state.posthog
            while not state.events and time.monotonic() < deadline:
                time.sleep(0.2)
    events = [event for event in state.events if event["distinct_id"] == buyer.user["id"]]
    assert [event["event"] for event in events] == ["purchase_initiated"]
    assert events[0]["properties"]["status"] == "pending"
