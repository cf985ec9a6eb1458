"""PostHog batching against the `/batch/` stand-in over real HTTP, and Sentry scrubbing (in
process, and end to end through a local Sentry stand-in in a child process)."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from integrations.analytics import PostHogClient, PostHogSettings, init_sentry, scrub_event
from integrations.analytics.sentry import FILTERED
from integrations.analytics.standin import create_posthog_standin
from tests.support.live_server import free_port, serve_in_thread

API_KEY = "phc_test_project_key"
ROOT = Path(__file__).resolve().parents[2]


def settings_for(base_url: str, api_key: str = API_KEY) -> PostHogSettings:
    settings = PostHogSettings.from_environ({"POSTHOG_HOST": base_url, "POSTHOG_API_KEY": api_key})
    assert settings is not None
    return settings


def counting_client() -> tuple[httpx.AsyncClient, list[int]]:
    """An httpx client that counts the requests it starts (also those that never connect)."""
    attempts: list[int] = []

    async def count(_request: httpx.Request) -> None:
        attempts.append(1)

    return httpx.AsyncClient(event_hooks={"request": [count]}), attempts


# PostHog


def test_posthog_settings() -> None:
    assert PostHogSettings.from_environ({}) is None
    assert PostHogSettings.from_environ({"POSTHOG_HOST": "https://eu.i.posthog.com"}) is None
    default = PostHogSettings.from_environ({"POSTHOG_API_KEY": API_KEY})
    assert default is not None
    assert default.batch_url == "https://us.i.posthog.com/batch/"
    assert API_KEY not in repr(default)
    assert settings_for("http://127.0.0.1:1/").batch_url == "http://127.0.0.1:1/batch/"
    with pytest.raises(ValueError):
        PostHogSettings.from_environ({"POSTHOG_API_KEY": API_KEY, "POSTHOG_HOST": "eu.posthog"})


def test_captured_events_are_delivered_in_one_gzipped_batch() -> None:
    app = create_posthog_standin(API_KEY)
    with serve_in_thread(app) as base_url:

        async def scenario() -> int:
            async with httpx.AsyncClient() as http:
                client = PostHogClient(http, settings_for(base_url))
                client.capture("device-1", "listing_viewed", {"listing_id": "L1"})
                client.capture(
                    "device-1", "listing_search", {"query": "ananas", "results_count": 0}
                )
                client.capture("user-7", "purchase_initiated", {"order_id": "O9", "amount": 6000})
                assert client.queued == 3
                return await client.flush()

        assert asyncio.run(scenario()) == 3
        state = app.state.posthog
        assert (state.requests, state.gzipped_requests) == (1, 1)
        events = state.events
        assert [e["event"] for e in events] == [
            "listing_viewed",
            "listing_search",
            "purchase_initiated",
        ]
        assert events[1]["distinct_id"] == "device-1"
        assert events[1]["properties"]["results_count"] == 0
        assert all(e["timestamp"] and e["uuid"] for e in events)
        assert len({e["uuid"] for e in events}) == 3


def test_batches_are_split_and_plain_json_works_too() -> None:
    app = create_posthog_standin(API_KEY)
    with serve_in_thread(app) as base_url:

        async def scenario() -> int:
            async with httpx.AsyncClient() as http:
                client = PostHogClient(http, settings_for(base_url), batch_size=4, compress=False)
                for n in range(10):
                    client.capture(f"d{n}", "interest_expressed", {"n": n})
                return await client.flush()

        assert asyncio.run(scenario()) == 10
        assert app.state.posthog.requests == 3
        assert app.state.posthog.gzipped_requests == 0
        assert [e["properties"]["n"] for e in app.state.posthog.events] == list(range(10))


def test_full_queue_drops_the_oldest_and_counts_it() -> None:
    app = create_posthog_standin(API_KEY)
    with serve_in_thread(app) as base_url:

        async def scenario() -> PostHogClient:
            async with httpx.AsyncClient() as http:
                client = PostHogClient(http, settings_for(base_url), max_queue=3)
                for n in range(5):
                    client.capture("d", f"e{n}")
                assert client.queued == 3
                await client.flush()
                return client

        client = asyncio.run(scenario())
        assert client.stats.dropped_overflow == 2
        assert client.stats.captured == 5 and client.stats.sent == 3
        assert [e["event"] for e in app.state.posthog.events] == ["e2", "e3", "e4"]


def test_posthog_down_never_raises_and_gives_up_after_the_bound() -> None:
    port = free_port()  # nothing listens there

    async def scenario() -> tuple[int, PostHogClient, int]:
        http, attempts = counting_client()
        async with http:
            client = PostHogClient(
                http, settings_for(f"http://127.0.0.1:{port}"), max_attempts=3, backoff_base=0.01
            )
            client.capture("d", "payment_completed", {"order_id": "O1"})
            client.capture("d", "order_approved")
            delivered = await client.flush()
            return delivered, client, len(attempts)

    delivered, client, attempts = asyncio.run(scenario())
    assert delivered == 0
    assert attempts == 3
    assert client.stats.dropped_failed == 2
    assert client.queued == 0


def test_server_errors_are_retried_then_delivered() -> None:
    app = create_posthog_standin(API_KEY)
    app.state.posthog.fail_next = 2
    with serve_in_thread(app) as base_url:

        async def scenario() -> int:
            async with httpx.AsyncClient() as http:
                client = PostHogClient(
                    http, settings_for(base_url), max_attempts=3, backoff_base=0.01
                )
                client.capture("d", "order_rejected", {"reason": "out of stock"})
                return await client.flush()

        assert asyncio.run(scenario()) == 1
        assert app.state.posthog.requests == 3
        assert [e["event"] for e in app.state.posthog.events] == ["order_rejected"]


def test_persistent_errors_drop_the_batch_after_the_bound_and_keep_the_rest() -> None:
    app = create_posthog_standin(API_KEY)
    app.state.posthog.fail_next = 100
    with serve_in_thread(app) as base_url:

        async def scenario() -> PostHogClient:
            async with httpx.AsyncClient() as http:
                client = PostHogClient(
                    http, settings_for(base_url), batch_size=2, max_attempts=4, backoff_base=0.01
                )
                for n in range(5):
                    client.capture("d", f"e{n}")
                assert await client.flush() == 0
                return client

        client = asyncio.run(scenario())
        # One batch tried 4 times, then dropped; the flush stops there instead of hammering.
        assert app.state.posthog.requests == 4
        assert client.stats.dropped_failed == 2
        assert client.queued == 3
        assert app.state.posthog.events == []


def test_a_wrong_api_key_is_not_retried() -> None:
    app = create_posthog_standin(API_KEY)
    with serve_in_thread(app) as base_url:

        async def scenario() -> PostHogClient:
            async with httpx.AsyncClient() as http:
                client = PostHogClient(http, settings_for(base_url, "phc_wrong"), backoff_base=0.01)
                client.capture("d", "listing_viewed")
                assert await client.flush() == 0
                return client

        client = asyncio.run(scenario())
        assert app.state.posthog.requests == 1
        assert client.stats.dropped_failed == 1


def test_periodic_flush_runs_in_the_background() -> None:
    app = create_posthog_standin(API_KEY)
    with serve_in_thread(app) as base_url:

        async def scenario() -> None:
            async with httpx.AsyncClient() as http:
                client = PostHogClient(http, settings_for(base_url), batch_size=50)
                task = asyncio.create_task(client.run_periodic_flush(0.05))
                client.capture("d", "listing_viewed")
                for _ in range(100):
                    if app.state.posthog.events:
                        break
                    await asyncio.sleep(0.02)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(scenario())
        assert [e["event"] for e in app.state.posthog.events] == ["listing_viewed"]


def test_a_full_batch_is_flushed_before_the_interval() -> None:
    app = create_posthog_standin(API_KEY)
    with serve_in_thread(app) as base_url:

        async def scenario() -> None:
            async with httpx.AsyncClient() as http:
                client = PostHogClient(http, settings_for(base_url), batch_size=2)
                task = asyncio.create_task(client.run_periodic_flush(60))
                # From another thread, as a sync Starlette endpoint would.
                await asyncio.to_thread(client.capture, "d", "order_approved")
                client.capture("d", "payment_completed")
                for _ in range(100):
                    if len(app.state.posthog.events) == 2:
                        break
                    await asyncio.sleep(0.02)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(scenario())
        assert len(app.state.posthog.events) == 2


def test_standin_checks_the_key_and_reads_gzip() -> None:
    with serve_in_thread(create_posthog_standin(API_KEY)) as base_url:
        body = {"api_key": API_KEY, "batch": [{"event": "x", "properties": {"distinct_id": "d"}}]}
        zipped = httpx.post(
            f"{base_url}/batch/",
            content=gzip.compress(json.dumps(body).encode()),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert zipped.status_code == 200 and zipped.json() == {"status": 1}
        wrong = httpx.post(f"{base_url}/batch/", json={**body, "api_key": "nope"})
        assert wrong.status_code == 401
        assert wrong.json()["code"] == "invalid_api_key"
        no_id = httpx.post(
            f"{base_url}/batch/", json={"api_key": API_KEY, "batch": [{"event": "x"}]}
        )
        assert no_id.status_code == 400


# Sentry


SECRETS = [
    "hunter2-password",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJl",
    "refresh-abc123",
    "session-cookie-value",
    "jean.dupont@example.mu",
    "4111 1111 1111 1111",
    "654321",
]


def sample_event() -> dict[str, Any]:
    return {
        "message": f"login failed for {SECRETS[4]} with password={SECRETS[0]}",
        "request": {
            "url": f"https://api.freshroots.mu/api/auth/refresh?refresh_token={SECRETS[2]}",
            "query_string": f"code={SECRETS[6]}&lang=fr",
            "headers": {
                "Authorization": f"Bearer {SECRETS[1]}",
                "Cookie": f"fr_refresh={SECRETS[3]}",
                "User-Agent": "FreshRoots/1.0",
            },
            "cookies": {"fr_refresh": SECRETS[3]},
            "data": {"email": SECRETS[4], "password": SECRETS[0]},
        },
        "user": {"id": "u-7", "email": SECRETS[4]},
        "exception": {
            "values": [
                {
                    "type": "ValueError",
                    "value": f"card {SECRETS[5]} declined",
                    "stacktrace": {
                        "frames": [
                            {
                                "function": "pay",
                                "vars": {
                                    "password": repr(SECRETS[0]),
                                    "access_token": repr(SECRETS[1]),
                                    "payload": {"cardNumber": "4111111111111111", "cvv": "123"},
                                    "code": SECRETS[6],
                                    "status_code": 402,
                                    "listing_id": "L1",
                                },
                            }
                        ]
                    },
                }
            ]
        },
        "breadcrumbs": {
            "values": [{"message": f"GET /x Authorization: Basic dXNlcjpw {SECRETS[4]}"}]
        },
    }


def test_scrub_event_removes_secrets_and_keeps_the_rest() -> None:
    event = sample_event()
    original = json.dumps(event)
    scrubbed = scrub_event(event)
    text = json.dumps(scrubbed)
    for secret in [*SECRETS, "4111111111111111", "dXNlcjpw", '"123"']:
        assert secret not in text, secret
    assert json.dumps(event) == original  # pure: the input is untouched
    assert scrubbed["request"]["headers"]["Authorization"] == FILTERED
    assert scrubbed["request"]["headers"]["User-Agent"] == "FreshRoots/1.0"
    assert scrubbed["user"] == {"id": "u-7", "email": FILTERED}
    frame_vars = scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]["vars"]
    assert frame_vars["status_code"] == 402 and frame_vars["listing_id"] == "L1"
    assert scrubbed["request"]["query_string"] == f"code={FILTERED}&lang=fr"
    assert scrubbed["exception"]["values"][0]["type"] == "ValueError"


def test_init_sentry_without_dsn_does_nothing() -> None:
    assert init_sentry(None, environment="test", release="0") is False
    assert init_sentry("", environment="test", release="0") is False


def test_secrets_never_reach_a_sentry_server() -> None:
    """A child process (Sentry's SDK is process-global) reports an error full of secrets to a
    local Sentry stand-in; what arrives over HTTP holds none of them."""
    received: list[bytes] = []
    arrived = threading.Event()

    async def envelope(request: Request) -> JSONResponse:
        raw = await request.body()
        encoding = request.headers.get("content-encoding", "")
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "br":
            import brotli

            raw = brotli.decompress(raw)
        received.append(raw)
        arrived.set()
        return JSONResponse({"id": "0" * 32})

    app = Starlette(routes=[Route("/api/{project}/envelope/", envelope, methods=["POST"])])
    with serve_in_thread(app) as base_url:
        dsn = base_url.replace("http://", "http://publickey@") + "/42"
        script = textwrap.dedent(
            f"""
            import sentry_sdk
            from integrations.analytics.sentry import init_sentry

            assert init_sentry({dsn!r}, environment="test", release="fr@1")
            secrets = {SECRETS!r}

            def pay(password, access_token, email, card):
                headers = {{"Authorization": "Bearer " + access_token}}
                raise RuntimeError("payment failed for " + email)

            try:
                pay(secrets[0], secrets[1], secrets[4], secrets[5])
            except RuntimeError:
                sentry_sdk.capture_exception()
            sentry_sdk.capture_message("refresh_token=" + secrets[2] + " code " + secrets[4])
            sentry_sdk.flush(timeout=10)
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert arrived.wait(10)
    text = b"\n".join(received).decode()
    assert "RuntimeError" in text and "pay" in text  # the report itself did arrive
    for secret in SECRETS[:5]:
        assert secret not in text, secret
